package health

import (
	"errors"
	"math"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerOptions configure a region's circuit breaker (github.com/sony/gobreaker/v2,
// two-step: an attempt is admitted first and its outcome reported when the
// answer is known). Zero fields take the defaults in parentheses.
type BreakerOptions struct {
	// ConsecutiveFailures trips the breaker (5).
	ConsecutiveFailures uint32
	// FailureRatio trips it once MinRequests attempts in the Window have
	// been counted (0.5 of 20).
	FailureRatio float64
	MinRequests  uint32
	// Window is the rolling window of the counts, in ten buckets (10s).
	Window time.Duration
	// OpenTimeout is how long an open breaker refuses before it lets trial
	// attempts through (3s). A timed-out attempt also keeps the
	// region out this long.
	OpenTimeout time.Duration
	// HalfOpenRequests trial attempts are let through; that many successes
	// in a row close the breaker, one failure opens it again (3).
	HalfOpenRequests uint32
	// FullStreak is how many "full" answers (429s) in a row count as
	// failures: a region that is only full spills over, one that stays full
	// is treated as sick (20). A 503 is a failure at once.
	FullStreak uint32
}

func (o *BreakerOptions) defaults() {
	set := func(p *uint32, v uint32) {
		if *p == 0 {
			*p = v
		}
	}
	set(&o.ConsecutiveFailures, 5)
	set(&o.MinRequests, 20)
	set(&o.HalfOpenRequests, 3)
	set(&o.FullStreak, 20)
	if o.FailureRatio <= 0 {
		o.FailureRatio = 0.5
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 3 * time.Second
	}
}

// Outcomes as the breaker sees them.
var (
	errFailed  = errors.New("failed")
	errFull    = errors.New("full")     // excluded: spillover, not sickness
	errIgnored = errors.New("not sent") // excluded: canceled, or never sent
)

func newBreaker(name string, o BreakerOptions, onChange func(from, to BreakerState)) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         name,
		MaxRequests:  o.HalfOpenRequests,
		Interval:     o.Window,
		BucketPeriod: o.Window / 10,
		Timeout:      o.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			counted := c.TotalSuccesses + c.TotalFailures
			return c.ConsecutiveFailures >= o.ConsecutiveFailures ||
				(counted >= o.MinRequests && float64(c.TotalFailures) >= o.FailureRatio*float64(counted))
		},
		IsExcluded: func(err error) bool { return err == errFull || err == errIgnored },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if onChange != nil {
				onChange(breakerState(from), breakerState(to))
			}
		},
	})
}

// BreakerState is a circuit breaker's state.
type BreakerState string

// Breaker states.
const (
	BreakerClosed   BreakerState = "closed"
	BreakerHalfOpen BreakerState = "half-open"
	BreakerOpen     BreakerState = "open"
)

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// deadline is a time before which something holds, readable without a lock.
type deadline struct{ unixNano atomic.Int64 }

func (d *deadline) extend(until time.Time) {
	n := until.UnixNano()
	for {
		old := d.unixNano.Load()
		if old >= n || d.unixNano.CompareAndSwap(old, n) {
			return
		}
	}
}

func (d *deadline) clear() { d.unixNano.Store(0) }

func (d *deadline) active(now time.Time) bool { return now.UnixNano() < d.unixNano.Load() }

func (d *deadline) left(now time.Time) time.Duration {
	return max(0, time.Duration(d.unixNano.Load()-now.UnixNano()))
}

// clampDuration bounds a region's Retry-After to something sane.
func clampDuration(d, limit time.Duration) time.Duration {
	return time.Duration(math.Max(0, math.Min(float64(d), float64(limit))))
}
