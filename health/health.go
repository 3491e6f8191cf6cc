// Package health keeps each region's state as the router sees it: the work
// in flight against its capacity, and what every attempt sent to it and
// every active probe of it said.
//
// A Region is shared by every request to that region and is safe for
// concurrent use; the hot path (Admit, Capacity, Load) takes no lock.
//
// Admission is a reservation: Admit takes one unit of capacity when the
// region is in rotation, its circuit breaker lets the attempt through and it
// has room; the Lease it returns is reported (Report: what the answer says
// about the region) and released (Release: the unit goes back) once each.
// What an answer means is not decided here: the failover package classifies
// it into an Outcome, and this package only applies it.
//
// Capacity is learned as well as configured. A region that refuses for lack
// of room (429 or 503) while the router thought it had some was configured
// too high: its capacity drops to what it held when it refused, at most
// halving, never below a tenth of the configured number, and at most once
// a second (one cut per round of refusals, as TCP cuts once per window).
// It then recovers with time, whether or not traffic flows: the gap to the
// configured capacity shrinks by e (63%) every 10 s, so it is within 10% of
// configured 25 s after the deepest cut.
//
// A region is out of rotation while its probes say it is down, its breaker
// is open, or it is cooling down after letting an attempt time out. When
// probes declare it down because it does not answer at all, Outage's
// context is cancelled with ErrDown, so that work in flight there (a request
// waiting on a hung region, an open stream) is moved or ended at once
// instead of waiting out a timeout. Probes that bring it back give it a
// closed breaker at once.
package health

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrDown is the cause of an Outage context: probes declared the region down.
var ErrDown = errors.New("region declared down by its health checks")

// Region is one region's live state.
type Region struct {
	name     string
	capacity int64 // configured; 0: unlimited

	cut      atomic.Pointer[capacityCut] // nil: the configured capacity holds
	inFlight atomic.Int64
	ewmaNano atomic.Int64 // smoothed latency of successful attempts and probes
	rtt      rttFilter    // probe round trips: how much slower than usual

	opts       Options
	breaker    atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	cool       deadline     // out of rotation until then, after a timeout
	busy       deadline     // full until then, after a Retry-After
	fullStreak atomic.Int64 // 429s in a row
	probe      probeState
	outage     atomic.Pointer[outage]
	drained    atomic.Bool // taken out for maintenance

	// Totals by outcome, for status pages and tests.
	counts [numKinds]atomic.Uint64
	cuts   atomic.Uint64 // times the learned capacity was cut
}

// Options configure a Region.
type Options struct {
	// Capacity is how many concurrent requests and streams the region takes;
	// 0 is unlimited.
	Capacity int
	Breaker  BreakerOptions
	// OnBreakerChange is called when the breaker changes state.
	OnBreakerChange func(from, to BreakerState)
	// OnCapacityCut is called when a refusal lowers the learned capacity.
	OnCapacityCut func(c CapacityInfo)
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
	r.breaker.Store(r.newBreaker())
	r.outage.Store(newOutage())
	return r
}

// newBreaker makes a breaker whose changes are reported only while it is
// the region's (recovered replaces it; leases may still finish on the old).
func (r *Region) newBreaker() *gobreaker.TwoStepCircuitBreaker[struct{}] {
	var cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	cb = newBreaker(r.name, r.opts.Breaker, func(from, to BreakerState) {
		if f := r.opts.OnBreakerChange; f != nil && r.breaker.Load() == cb {
			f(from, to)
		}
	})
	return cb
}

// Name is the region's configured name.
func (r *Region) Name() string { return r.name }

// Capacity recovery: the gap to the configured capacity shrinks by e every
// recoveryTau; cuts are at most one per cutEvery and never below a tenth.
const (
	recoveryTau = 10 * time.Second
	cutEvery    = time.Second
	floorShare  = 10 // the floor is capacity / floorShare
)

// capacityCut is the learned capacity's last cut: from there it recovers.
type capacityCut struct {
	at     time.Time
	to     float64 // the capacity right after the cut
	held   int64   // in flight when the region refused
	status int     // what it refused with
}

// CapacityInfo describes the capacity now believed and why.
type CapacityInfo struct {
	Configured int
	Learned    int       // what admission uses now
	CutAt      time.Time // zero if never cut, or recovered since
	CutTo      int       // the capacity right after the last cut
	Held       int       // in flight when the region refused
	Status     int       // the refusal's status (429, 503)
}

// Reason says why the capacity is what it is, in a few words.
func (c CapacityInfo) Reason() string {
	if c.CutAt.IsZero() || c.Learned >= c.Configured {
		return "configured"
	}
	return "recovering after a " + strconv.Itoa(c.Status) + " with " + strconv.Itoa(c.Held) + " in flight"
}

// Capacity is the concurrent capacity now believed: the configured one, or
// less while recovering from a refusal. 0 means unlimited.
func (r *Region) Capacity() int { return r.capacityAt(time.Now()) }

func (r *Region) capacityAt(now time.Time) int {
	if r.capacity == 0 {
		return 0
	}
	c := r.cut.Load()
	if c == nil {
		return int(r.capacity)
	}
	return int(c.recovered(float64(r.capacity), now))
}

// recovered is the learned capacity at now, out of full.
func (c *capacityCut) recovered(full float64, now time.Time) float64 {
	if now.Sub(c.at) < cutEvery {
		return c.to // the cut holds for its round
	}
	gap := (full - c.to) * math.Exp(-float64(now.Sub(c.at))/float64(recoveryTau))
	return math.Min(full, math.Ceil(full-gap))
}

// CapacityInfo returns the learned capacity and the cut it recovers from.
func (r *Region) CapacityInfo() CapacityInfo {
	now := time.Now()
	ci := CapacityInfo{Configured: int(r.capacity), Learned: r.capacityAt(now)}
	if c := r.cut.Load(); c != nil && ci.Learned < ci.Configured {
		ci.CutAt, ci.CutTo, ci.Held, ci.Status = c.at, int(c.to), int(c.held), c.status
	}
	return ci
}

// Cuts is how many times a refusal lowered the learned capacity.
func (r *Region) Cuts() uint64 { return r.cuts.Load() }

// Configured is the configured capacity; 0 means unlimited.
func (r *Region) Configured() int { return int(r.capacity) }

// InFlight is the number of requests and streams now held.
func (r *Region) InFlight() int { return int(r.inFlight.Load()) }

// Latency is the smoothed latency of recent successful attempts and probes.
func (r *Region) Latency() time.Duration { return time.Duration(r.ewmaNano.Load()) }

// Count is how many attempts ended with kind.
func (r *Region) Count(k Kind) uint64 { return r.counts[k].Load() }

// TryAcquire reserves one unit of capacity. It reports false, reserving
// nothing, when the region is full. Every true must be paired with one
// release.
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

// release gives back one unit of capacity.
func (r *Region) release() { r.inFlight.Add(-1) }

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

// record counts an outcome and applies what it says about capacity and
// latency. held is the work in flight when the answer came, this one
// included.
func (r *Region) record(o Outcome, held int64) {
	r.counts[o.Kind].Add(1)
	if o.Kind == Success && o.Latency > 0 {
		r.observeLatency(o.Latency)
	}
	if o.Shrink {
		r.shrink(held, o.Status, time.Now())
	}
}

// shrink lowers the learned capacity after a refusal for lack of room
// that came with held attempts in flight (see the package doc).
func (r *Region) shrink(held int64, status int, now time.Time) {
	if r.capacity == 0 {
		return
	}
	full := float64(r.capacity)
	for {
		old := r.cut.Load()
		cur := full
		if old != nil {
			if now.Sub(old.at) < cutEvery {
				return // this round of refusals has been counted
			}
			cur = old.recovered(full, now)
		}
		to := math.Max(float64(held-1), math.Max(math.Ceil(cur/2), math.Max(1, math.Ceil(full/floorShare))))
		if to >= cur {
			return // it held more than we believed it could: nothing to learn
		}
		if r.cut.CompareAndSwap(old, &capacityCut{at: now, to: to, held: held, status: status}) {
			r.cuts.Add(1)
			if f := r.opts.OnCapacityCut; f != nil {
				f(r.CapacityInfo())
			}
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

// Outcome is what one attempt's answer says about the region, as the
// failover package's classifier decided. This package only applies it.
type Outcome struct {
	// Kind is counted, and is what the breaker hears: a Success closes, a
	// Failure counts towards opening, Full and Canceled are not counted
	// (but FullStreak Fulls in a row count as a failure).
	Kind Kind
	// Shrink: the region refused for lack of room; learn its capacity.
	Shrink bool
	// Status is the region's status, if it answered (for the capacity's
	// reason and the Retry-After rule).
	Status int
	// RetryAfter: the region asked for no new work this long; it counts as
	// full until then (bounded by the breaker's open timeout).
	RetryAfter time.Duration
	// Timeout: the region let an attempt time out; it is kept out of
	// rotation for the breaker's open timeout at once.
	Timeout bool
	// Latency is a sample of how long the region takes to answer; 0: none.
	Latency time.Duration
}

// Kind is how an attempt ended, for counting and for the breaker.
type Kind int

// Outcome kinds.
const (
	Success  Kind = iota // the region answered, and not with a failure
	Full                 // the region is at its limit (429)
	Failure              // the region failed the attempt
	Canceled             // the client went away; says nothing of the region
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

// IsTimeout reports whether err is a timeout.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// outage is one period in rotation; its context is cancelled when probes
// declare the region down.
type outage struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func newOutage() *outage {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &outage{ctx: ctx, cancel: cancel}
}

// Outage returns a context that is cancelled, with cause ErrDown, when the
// region's probes declare it down because it does not answer at all: work
// in flight there should stop waiting. Once cancelled, it stays so until
// probes bring the region back, when a new one is returned.
func (r *Region) Outage() context.Context { return r.outage.Load().ctx }
