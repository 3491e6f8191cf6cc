package health

import (
	"sync"
	"sync/atomic"
	"time"
)

// rttFilter tells how much slower than usual a region answers its probes.
//
// "Usual" is the smallest probe round trip in the last baselineSpan (kept
// as one minimum per baselineBucket, as BBR keeps its min RTT): the time
// the region takes when nothing is wrong. "Now" is a fast EWMA of the
// probe round trips (weight 1/2), so that a region 200 ms slower shows
// 150 ms of it within two probes and recovers as fast. Probes are used,
// not requests: their cost does not grow with the audio's length, and they
// arrive at a steady rate whether or not traffic flows.
type rttFilter struct {
	mu      sync.Mutex
	fast    time.Duration
	buckets [baselineSpan / baselineBucket]struct {
		start time.Time
		min   time.Duration
	}
	slowdown atomic.Int64 // fast - baseline, nanoseconds; read lock-free
}

const (
	baselineSpan   = 10 * time.Minute
	baselineBucket = time.Minute
)

func (f *rttFilter) observe(d time.Duration, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fast == 0 {
		f.fast = d
	} else {
		f.fast += (d - f.fast) / 2
	}
	start := at.Truncate(baselineBucket)
	b := &f.buckets[(start.Unix()/int64(baselineBucket/time.Second))%int64(len(f.buckets))]
	if !b.start.Equal(start) {
		b.start, b.min = start, d
	} else {
		b.min = min(b.min, d)
	}
	base := d
	for _, b := range f.buckets {
		if !b.start.IsZero() && at.Sub(b.start) < baselineSpan {
			base = min(base, b.min)
		}
	}
	f.slowdown.Store(int64(max(0, f.fast-base)))
}

// Slowdown is how much slower than its usual the region answers its probes
// now (0 without probes).
func (r *Region) Slowdown() time.Duration { return time.Duration(r.rtt.slowdown.Load()) }
