package health

import (
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Refusal says why a region did not admit an attempt.
type Refusal int

// Refusals.
const (
	Admitted    Refusal = iota
	RefusedFull         // at capacity, or asked for no work until its Retry-After: spill over
	RefusedOut          // out of rotation: breaker open, probes failing, or cooling down
)

// Lease is one admitted attempt: one unit of the region's capacity and one
// pass of its breaker. Report and Release each take effect once, whoever
// calls them and however often, so an owner can release on every path.
type Lease struct {
	r     *Region
	held  atomic.Bool // the capacity unit is still held
	fresh atomic.Bool // the breaker has not heard of the attempt yet
	done  func(error) // the breaker's second step
}

// Region returns the leased region.
func (l *Lease) Region() *Region { return l.r }

// Admit asks the region to take one attempt: it must be in rotation, its
// breaker must let the attempt through, and it must have room (unless over
// is set, for when every region is full and the least loaded must serve).
func (r *Region) Admit(over bool) (*Lease, Refusal) {
	now := time.Now()
	if !r.inRotation(now) {
		return nil, RefusedOut
	}
	done, err := r.breaker.Load().Allow()
	if err != nil {
		return nil, RefusedOut
	}
	if over {
		r.Acquire()
	} else if r.busy.active(now) || !r.TryAcquire() {
		done(errIgnored)
		return nil, RefusedFull
	}
	l := &Lease{r: r, done: done}
	l.held.Store(true)
	l.fresh.Store(true)
	return l, Admitted
}

// Report tells the region what the attempt's answer says about it. The
// first report is the attempt's outcome; a later Failure (a stream dropped
// or a body cut short after a good answer) counts as one more failure.
// Anything else reported again is ignored.
func (l *Lease) Report(o Outcome) {
	r := l.r
	if !l.fresh.CompareAndSwap(true, false) {
		if o.Kind == Failure {
			r.counts[Failure].Add(1)
			r.failLater()
		}
		return
	}
	held := r.inFlight.Load()
	if !l.held.Load() {
		held++ // released already: it was in flight when the answer came
	}
	r.record(o, held)
	switch o.Kind {
	case Success:
		r.fullStreak.Store(0)
		l.done(nil)
	case Full:
		if o.RetryAfter > 0 {
			// The region asked for no new work for a while: it counts as
			// full until then, so work spills over while anywhere has room.
			r.busy.extend(time.Now().Add(clampDuration(o.RetryAfter, maxRetryAfter)))
		}
		if r.fullStreak.Add(1) >= int64(r.opts.Breaker.FullStreak) {
			l.done(errFailed) // full for so long it is sick
		} else {
			l.done(errFull)
		}
	case Failure:
		if o.Timeout {
			// A region that lets an attempt time out costs every attempt
			// that long: keep it out for the breaker's open period at once
			// rather than after several more timeouts.
			r.cool.extend(time.Now().Add(r.opts.Breaker.OpenTimeout))
		}
		l.done(errFailed)
	default:
		l.done(errIgnored)
	}
}

// Release gives the attempt's unit of capacity back. An attempt released
// before it was reported is reported as Canceled.
func (l *Lease) Release() {
	if l.held.CompareAndSwap(true, false) {
		l.r.release()
	}
	if l.fresh.Load() {
		l.Report(Outcome{Kind: Canceled})
	}
}

// Done reports o and releases the lease.
func (l *Lease) Done(o Outcome) {
	l.Report(o)
	l.Release()
}

// maxRetryAfter bounds how long a region's Retry-After keeps work away:
// past it, the region is tried again (and can ask again).
const maxRetryAfter = 30 * time.Second

// failLater counts a failure found after the attempt was reported a
// success, as one more attempt through the breaker.
func (r *Region) failLater() {
	if done, err := r.breaker.Load().Allow(); err == nil {
		done(errFailed)
	}
}

// inRotation reports whether the region may be offered new work: it is not
// drained, its probes do not say it is down, it is not cooling down, and
// its breaker is not open.
func (r *Region) inRotation(now time.Time) bool {
	return !r.drained.Load() && r.probe.up() && !r.cool.active(now) && r.breaker.Load().State() != gobreaker.StateOpen
}

// SetDrained takes the region out of rotation for maintenance (true) or
// puts it back (false); probes and breakers go on as before.
func (r *Region) SetDrained(d bool) { r.drained.Store(d) }

// Drained reports whether the region was taken out for maintenance.
func (r *Region) Drained() bool { return r.drained.Load() }

// InRotation reports whether the region may be offered new work now.
func (r *Region) InRotation() bool { return r.inRotation(time.Now()) }

// Breaker is the breaker's state.
func (r *Region) Breaker() BreakerState { return breakerState(r.breaker.Load().State()) }

// Busy reports whether the region asked for no new work (a 429's
// Retry-After) and that time has not passed.
func (r *Region) Busy() bool { return r.busy.active(time.Now()) }

// CoolingFor is how long the region stays out after a timeout; 0 when it
// is not cooling down.
func (r *Region) CoolingFor() time.Duration { return r.cool.left(time.Now()) }

// Degraded reports whether the region's probes say it is degraded: it
// serves, but ranks after regions that are not.
func (r *Region) Degraded() bool { return r.probe.degraded() }

// recovered starts the region afresh when probes bring it back after they
// had declared it down: a closed breaker (the probes have just shown it
// answers), no cooling down, and a new outage context.
func (r *Region) recovered() {
	s := r.breaker.Load().State() // its due changes are reported while it is current
	r.breaker.Store(r.newBreaker())
	if s != gobreaker.StateClosed && r.opts.OnBreakerChange != nil {
		r.opts.OnBreakerChange(breakerState(s), BreakerClosed)
	}
	r.cool.clear()
	if r.outage.Load().ctx.Err() != nil {
		r.outage.Store(newOutage())
	}
}

// wentDown cancels the outage context: work in flight stops waiting.
func (r *Region) wentDown() { r.outage.Load().cancel(ErrDown) }
