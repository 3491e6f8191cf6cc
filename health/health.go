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
//
// Capacity is learned as well as configured. A region that answers 429 or
// 503 ("full") while the router thought it had room was configured too
// high: its capacity drops to below what was in flight, and then grows back
// by one for every capacity's worth of successes (additive increase,
// multiplicative decrease, as TCP's congestion window), never above the
// configured number.
package health

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Region is one region's live state.
type Region struct {
	name     string
	capacity int64 // configured; 0: unlimited

	learned atomic.Int64 // capacity learned from answers, in thousandths

	inFlight atomic.Int64
	ewmaNano atomic.Int64 // smoothed latency of successful attempts and probes

	opts       Options
	breaker    *gobreaker.TwoStepCircuitBreaker[struct{}]
	cool       deadline     // out of rotation until then, after a timeout
	busy       deadline     // full until then, after a Retry-After
	fullStreak atomic.Int64 // "full" answers in a row
	probe      probeState

	// Totals by outcome, for status pages and tests.
	counts [numKinds]atomic.Uint64
}

// Options configure a Region.
type Options struct {
	// Capacity is how many concurrent requests and streams the region takes;
	// 0 is unlimited.
	Capacity int
	Breaker  BreakerOptions
	// OnBreakerChange is called when the breaker changes state.
	OnBreakerChange func(from, to BreakerState)
}

// NewRegion returns the state of a region that takes capacity concurrent
// requests and streams (0: unlimited), with the default breaker.
func NewRegion(name string, capacity int) *Region {
	return New(name, Options{Capacity: capacity})
}

// New returns the state of a region.
func New(name string, o Options) *Region {
	o.Breaker.defaults()
	r := &Region{name: name, capacity: int64(o.Capacity), opts: o}
	r.learned.Store(int64(o.Capacity) * milli)
	r.breaker = newBreaker(name, o.Breaker, o.OnBreakerChange)
	return r
}

const milli = 1000

// Name is the region's configured name.
func (r *Region) Name() string { return r.name }

// Capacity is the concurrent capacity now believed: the configured one, or
// less after the region said it was full. 0 means unlimited.
func (r *Region) Capacity() int {
	if r.capacity == 0 {
		return 0
	}
	return int(max(1, r.learned.Load()/milli))
}

// Configured is the configured capacity; 0 means unlimited.
func (r *Region) Configured() int { return int(r.capacity) }

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
	if c := r.Capacity(); c > 0 && n > int64(c) {
		r.inFlight.Add(-1)
		return false
	}
	return true
}

// Acquire reserves one unit of capacity even when the region is full: for
// when every region is full and the least loaded must take the work.
func (r *Region) Acquire() { r.inFlight.Add(1) }

// Load is the fraction of capacity in use; 0 for an unlimited region.
// The work in flight is this router's, or the region's own count from its
// last probe when that is higher (other routers send it work too).
func (r *Region) Load() float64 {
	c := r.Capacity()
	if c == 0 {
		return 0
	}
	return float64(max(r.InFlight(), r.ReportedActive())) / float64(c)
}

// Done gives back a reservation and records how the attempt ended.
func (r *Region) Done(o Outcome) {
	held := r.inFlight.Add(-1) + 1 // in flight when the answer came, this one included
	k := o.Kind()
	r.counts[k].Add(1)
	switch k {
	case Success:
		if o.Latency > 0 {
			r.observeLatency(o.Latency)
		}
		r.grow()
	case Full:
		r.shrink(held)
	}
}

// shrink lowers the learned capacity after a "full" answer that came with
// held attempts in flight: to under held, and at least by a tenth.
func (r *Region) shrink(held int64) {
	if r.capacity == 0 {
		return
	}
	for {
		old := r.learned.Load()
		next := max(milli, min(old*9/10, (held-1)*milli))
		if next >= old || r.learned.CompareAndSwap(old, next) {
			return
		}
	}
}

// grow raises the learned capacity by one per capacity's worth of
// successes, up to the configured capacity.
func (r *Region) grow() {
	limit := r.capacity * milli
	for {
		old := r.learned.Load()
		if old >= limit {
			return
		}
		next := min(limit, old+milli*milli/max(old, milli))
		if r.learned.CompareAndSwap(old, next) {
			return
		}
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
	// RetryAfter is the region's Retry-After with a 429 or 503, if any: the
	// region gets no new work from this router until it has passed.
	RetryAfter time.Duration
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
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
