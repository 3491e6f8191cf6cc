// Package health keeps each region's state as the router sees it: the work
// in flight against its capacity, and the outcome of every attempt sent to it.
//
// A Region is shared by every request to that region and is safe for
// concurrent use; its counters are atomics, so the hot path takes no lock.
//
// Admission is a reservation: TryAcquire takes one unit of capacity if one is
// free and the caller gives it back with Done, reporting how the attempt
// ended. Later stages feed the same outcomes to active probes and circuit
// breakers; callers do not change.
package health

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Region is one region's live state.
type Region struct {
	name     string
	capacity int64 // 0: unlimited

	inFlight atomic.Int64
	ewmaNano atomic.Int64 // smoothed latency of successful attempts

	// Totals by outcome, for status pages and tests.
	counts [numKinds]atomic.Uint64
}

// NewRegion returns the state of a region that takes capacity concurrent
// requests and streams (0: unlimited).
func NewRegion(name string, capacity int) *Region {
	return &Region{name: name, capacity: int64(capacity)}
}

// Name is the region's configured name.
func (r *Region) Name() string { return r.name }

// Capacity is the configured concurrent capacity; 0 means unlimited.
func (r *Region) Capacity() int { return int(r.capacity) }

// InFlight is the number of requests and streams now held.
func (r *Region) InFlight() int { return int(r.inFlight.Load()) }

// Latency is the smoothed latency of recent successful attempts.
func (r *Region) Latency() time.Duration { return time.Duration(r.ewmaNano.Load()) }

// Count is how many attempts ended with kind.
func (r *Region) Count(k Kind) uint64 { return r.counts[k].Load() }

// TryAcquire reserves one unit of capacity. It reports false, reserving
// nothing, when the region is full. Every true must be paired with one Done.
func (r *Region) TryAcquire() bool {
	n := r.inFlight.Add(1)
	if r.capacity > 0 && n > r.capacity {
		r.inFlight.Add(-1)
		return false
	}
	return true
}

// Done gives back a reservation and records how the attempt ended.
func (r *Region) Done(o Outcome) {
	r.inFlight.Add(-1)
	k := o.Kind()
	r.counts[k].Add(1)
	if k == Success && o.Latency > 0 {
		r.observeLatency(o.Latency)
	}
}

// observeLatency folds d into the EWMA with weight 1/8, as TCP's SRTT.
func (r *Region) observeLatency(d time.Duration) {
	for {
		old := r.ewmaNano.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if r.ewmaNano.CompareAndSwap(old, next) {
			return
		}
	}
}

// Outcome is how one attempt against a region ended.
type Outcome struct {
	// Status is the HTTP status the region answered (the handshake status for
	// a stream), or 0 if it did not answer.
	Status int
	// Err is the transport error, if any.
	Err error
	// Latency is the time to the region's response headers.
	Latency time.Duration
	// ClientGone is set when the client cancelled; such an attempt says
	// nothing about the region.
	ClientGone bool
}

// Kind classifies an Outcome.
type Kind int

// Outcome kinds.
const (
	Success  Kind = iota // the region answered, and not with a failure status
	Full                 // 429, or 503: the region is at its limit
	Failure              // connect error, timeout, 502, 504
	Canceled             // the client went away; not counted against the region
	numKinds
)

func (k Kind) String() string {
	switch k {
	case Success:
		return "success"
	case Full:
		return "full"
	case Failure:
		return "failure"
	case Canceled:
		return "canceled"
	}
	return "unknown"
}

// Kind classifies the outcome. It is the one place that decides what an
// answer says about a region's health.
func (o Outcome) Kind() Kind {
	switch {
	case o.ClientGone || errors.Is(o.Err, context.Canceled):
		return Canceled
	case o.Err != nil:
		return Failure
	case o.Status == 429 || o.Status == 503:
		return Full
	case o.Status == 502 || o.Status == 504:
		return Failure
	}
	return Success
}

// IsTimeout reports whether err is a timeout.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
