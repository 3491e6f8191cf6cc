package health

import (
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

// Lease is one admitted attempt. Its Done must be called exactly once.
type Lease struct {
	r    *Region
	done func(error)
}

// Region returns the leased region.
func (l Lease) Region() *Region { return l.r }

// Admit asks the region to take one attempt: it must be in rotation, its
// breaker must let the attempt through, and it must have room (unless over
// is set, for when every region is full and the least loaded must serve).
func (r *Region) Admit(over bool) (Lease, Refusal) {
	if !r.inRotation(time.Now()) {
		return Lease{}, RefusedOut
	}
	done, err := r.breaker.Allow()
	if err != nil {
		return Lease{}, RefusedOut
	}
	if over {
		r.Acquire()
	} else if r.busy.active(time.Now()) || !r.TryAcquire() {
		done(errIgnored)
		return Lease{}, RefusedFull
	}
	return Lease{r: r, done: done}, Admitted
}

// Done reports how the attempt ended and gives back its capacity.
func (l Lease) Done(o Outcome) {
	r := l.r
	r.Done(o)
	switch o.Kind() {
	case Success:
		r.fullStreak.Store(0)
		l.done(nil)
	case Full:
		if o.RetryAfter > 0 && o.Status == 429 {
			// The region asked for no new work for a while: it counts as
			// full until then, so work spills over while anywhere has room.
			// (A 503 is a failure: the breaker, not its Retry-After, decides
			// when to try the region again.)
			r.busy.extend(time.Now().Add(clampDuration(o.RetryAfter, r.opts.Breaker.OpenTimeout)))
		}
		// Both lower the learned capacity (in Done), but for the breaker a
		// 503 is a failure, as in Envoy's outlier detection, and a 429 is
		// only full until it persists.
		if streak := r.fullStreak.Add(1); o.Status == 503 || streak >= int64(r.opts.Breaker.FullStreak) {
			l.done(errFailed)
		} else {
			l.done(errFull)
		}
	case Failure:
		if o.Err != nil && IsTimeout(o.Err) {
			// A region that lets a connect or handshake time out costs every
			// attempt that long: keep it out for the breaker's open period
			// at once rather than after several more timeouts.
			r.cool.extend(time.Now().Add(r.opts.Breaker.OpenTimeout))
		}
		l.done(errFailed)
	default:
		l.done(errIgnored)
	}
}

// inRotation reports whether the region may be offered new work: its
// probes do not say it is down, it is not cooling down, and its breaker is
// not open.
func (r *Region) inRotation(now time.Time) bool {
	return r.probe.up() && !r.cool.active(now) && r.breaker.State() != gobreaker.StateOpen
}

// InRotation reports whether the region may be offered new work now.
func (r *Region) InRotation() bool { return r.inRotation(time.Now()) }

// Breaker is the breaker's state.
func (r *Region) Breaker() BreakerState { return breakerState(r.breaker.State()) }

// CoolingFor is how long the region stays out after a timeout; 0 when it
// is not cooling down.
func (r *Region) CoolingFor() time.Duration { return r.cool.left(time.Now()) }

// Degraded reports whether the region's probes say it is degraded: it
// serves, but ranks after regions that are not.
func (r *Region) Degraded() bool { return r.probe.degraded() }
