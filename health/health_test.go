package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Outcomes as failover.Classify gives them (health cannot import failover:
// failover imports health). The classifier's own table is failover's test.
var (
	success     = Outcome{Kind: Success, Status: 200}               // 200, 101
	clientErr   = Outcome{Kind: Success, Status: 400}               // other 4xx: the client's mistake
	refused503  = Outcome{Kind: Failure, Shrink: true, Status: 503} // full, or no container up
	badGateway  = Outcome{Kind: Failure, Status: 502}               // also 500, 504
	unreachable = Outcome{Kind: Failure}                            // connect error, reset
	timedOut    = Outcome{Kind: Failure, Timeout: true}             // connect, handshake or answer timed out
	cutShort    = Outcome{Kind: Failure, Status: 200}               // the answer broke off after it began
	clientGone  = Outcome{Kind: Canceled}                           // says nothing of the region
	tooMany     = Outcome{Kind: Full, Shrink: true, Status: 429}    // 429 without Retry-After
	okLatency   = func(d time.Duration) Outcome { o := success; o.Latency = d; return o }
	tooManyFor  = func(d time.Duration) Outcome { o := tooMany; o.RetryAfter = d; return o }
	neverTrips  = BreakerOptions{ConsecutiveFailures: 1 << 30, MinRequests: 1 << 30}
	withLatency = func(o Outcome, d time.Duration) Outcome { o.Latency = d; return o }
)

// hold takes n units with TryAcquire, failing the test if any is refused.
func hold(t *testing.T, r *Region, n int) {
	t.Helper()
	for i := range n {
		if !r.TryAcquire() {
			t.Fatalf("TryAcquire #%d of %d refused with %d in flight, capacity %d", i+1, n, r.InFlight(), r.Capacity())
		}
	}
}

// free gives back n units taken with TryAcquire or Acquire.
func free(r *Region, n int) {
	for range n {
		r.release()
	}
}

func TestTryAcquireRespectsCapacity(t *testing.T) {
	r := NewRegion("eu-west", 3)
	if r.Name() != "eu-west" || r.Configured() != 3 || r.Capacity() != 3 || r.InFlight() != 0 {
		t.Fatalf("new region: name %q, configured %d, capacity %d, in flight %d",
			r.Name(), r.Configured(), r.Capacity(), r.InFlight())
	}
	hold(t, r, 3)
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted a fourth with capacity 3")
	}
	if got := r.InFlight(); got != 3 {
		t.Fatalf("InFlight = %d after a refusal, want 3: a refusal must reserve nothing", got)
	}
	free(r, 1)
	if got := r.InFlight(); got != 2 {
		t.Fatalf("InFlight = %d after a release, want 2", got)
	}
	if !r.TryAcquire() {
		t.Fatal("TryAcquire refused with room for one")
	}
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted beyond capacity after a release")
	}
	free(r, 3)
	if got := r.InFlight(); got != 0 {
		t.Fatalf("InFlight = %d after every release, want 0", got)
	}

	// Admit sees the same room.
	var leases []*Lease
	for range 3 {
		leases = append(leases, admit(t, r))
	}
	if l, why := r.Admit(false); why != RefusedFull || l != nil {
		t.Fatalf("Admit = %v, %d with 3 of 3 held, want nil, RefusedFull", l, why)
	}
	if got := r.InFlight(); got != 3 {
		t.Fatalf("InFlight = %d after a refused Admit, want 3", got)
	}
	leases[0].Done(success)
	leases[0] = admit(t, r)
	for _, l := range leases {
		l.Done(success)
	}
	if got := r.InFlight(); got != 0 {
		t.Fatalf("InFlight = %d after every lease is done, want 0", got)
	}
}

func TestUnlimitedRegion(t *testing.T) {
	r := NewRegion("any", 0)
	if r.Capacity() != 0 || r.Configured() != 0 {
		t.Fatalf("Capacity %d, Configured %d; want 0, 0", r.Capacity(), r.Configured())
	}
	hold(t, r, 10000)
	if got := r.InFlight(); got != 10000 {
		t.Fatalf("InFlight = %d, want 10000", got)
	}
	if got := r.Load(); got != 0 {
		t.Errorf("Load = %v for an unlimited region, want 0", got)
	}
	free(r, 10000)
	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d, want 0", got)
	}
	var leases []*Lease
	for range 1000 {
		leases = append(leases, admit(t, r))
	}
	for _, l := range leases {
		l.Done(success)
	}
	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d after 1000 leases done, want 0", got)
	}
}

func TestAcquireExceedsCapacity(t *testing.T) {
	r := NewRegion("us-east", 2)
	hold(t, r, 2)
	r.Acquire()
	r.Acquire()
	if got := r.InFlight(); got != 4 {
		t.Fatalf("InFlight = %d after two Acquires over capacity 2, want 4", got)
	}
	if got := r.Load(); got != 2 {
		t.Errorf("Load = %v, want 2", got)
	}
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted while over capacity")
	}
	if _, why := r.Admit(false); why != RefusedFull {
		t.Fatalf("Admit(false) = %d while over capacity, want RefusedFull", why)
	}
	over, why := r.Admit(true)
	if why != Admitted {
		t.Fatalf("Admit(true) = %d while over capacity, want Admitted", why)
	}
	if got := r.InFlight(); got != 5 {
		t.Fatalf("InFlight = %d after Admit(true), want 5", got)
	}
	over.Done(success)
	free(r, 3)
	if got := r.InFlight(); got != 1 {
		t.Fatalf("InFlight = %d, want 1", got)
	}
	if !r.TryAcquire() {
		t.Fatal("TryAcquire refused with 1 of 2 in flight")
	}
	free(r, 2)
}

func TestLoad(t *testing.T) {
	// In a bubble: the learned capacity recovers with time, and the fake
	// clock holds it where the cut left it.
	synctest.Test(t, func(t *testing.T) {
		r := NewRegion("ap-south", 4)
		if got := r.Load(); got != 0 {
			t.Errorf("idle Load = %v, want 0", got)
		}
		a := admit(t, r)
		if got := r.Load(); got != 0.25 {
			t.Errorf("Load = %v with 1 of 4, want 0.25", got)
		}
		b, c := admit(t, r), admit(t, r)
		if got := r.Load(); got != 0.75 {
			t.Errorf("Load = %v with 3 of 4, want 0.75", got)
		}
		// A 429 with 3 in flight believes 2: 2 of 2 once it is released.
		a.Done(tooMany)
		if r.Capacity() != 2 {
			t.Fatalf("Capacity = %d after 429 with 3 in flight, want 2", r.Capacity())
		}
		if got := r.Load(); got != 1 {
			t.Errorf("Load = %v with 2 of a learned 2, want 1", got)
		}
		// The region's own count, from its probes, wins when it is higher.
		r.observeProbe(ProbeResult{At: time.Now(), OK: true, Health: "Healthy", Active: 6}, 1, 1)
		if got := r.Load(); got != 3 {
			t.Errorf("Load = %v with the region reporting 6 active of 2, want 3", got)
		}
		b.Done(success)
		c.Done(success)
		r.observeProbe(ProbeResult{At: time.Now(), OK: true, Health: "Healthy", Active: 0}, 1, 1)
		if got := r.Load(); got != 0 {
			t.Errorf("Load = %v idle, want 0", got)
		}
	})
}

// timeoutErr is a net.Error that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		Success: "success", Full: "full", Failure: "failure", Canceled: "canceled", Kind(42): "unknown",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

func TestIsTimeout(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("handshake: %w", context.DeadlineExceeded), true},
		{timeoutErr{}, true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}, true},
		{context.Canceled, false},
		{errors.New("connection refused"), false},
		{ErrDown, false},
	} {
		if got := IsTimeout(tt.err); got != tt.want {
			t.Errorf("IsTimeout(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestReportCountsKinds(t *testing.T) {
	// Unlimited, so that refusals do not shrink what may be held; every
	// lease is taken before any is reported, so the breaker opening on the
	// failures refuses nothing here.
	r := NewRegion("us-west", 0)
	outcomes := []Outcome{
		success, success, clientErr, // 3 successes
		tooMany,                                                 // 1 full
		refused503, badGateway, unreachable, timedOut, cutShort, // 5 failures
		clientGone, clientGone, // 2 canceled, and a third released unreported
	}
	leases := make([]*Lease, len(outcomes)+1)
	for i := range leases {
		leases[i] = admit(t, r)
	}
	for i, o := range outcomes {
		leases[i].Done(o)
		if got, want := r.InFlight(), len(leases)-i-1; got != want {
			t.Fatalf("after Done #%d: InFlight = %d, want %d", i+1, got, want)
		}
	}
	leases[len(outcomes)].Release()
	if got := r.InFlight(); got != 0 {
		t.Fatalf("InFlight = %d after every lease, want 0", got)
	}
	for k, want := range map[Kind]uint64{Success: 3, Full: 1, Failure: 5, Canceled: 3} {
		if got := r.Count(k); got != want {
			t.Errorf("Count(%v) = %d, want %d", k, got, want)
		}
	}
}

func TestLatencyEWMA(t *testing.T) {
	r := New("eu-west", Options{Capacity: 100, Breaker: neverTrips})
	if got := r.Latency(); got != 0 {
		t.Fatalf("Latency = %v before any answer, want 0", got)
	}
	steps := []struct {
		o    Outcome
		want time.Duration
	}{
		{okLatency(100 * time.Millisecond), 100 * time.Millisecond},      // the first sample sets it
		{okLatency(180 * time.Millisecond), 110 * time.Millisecond},      // + 80/8
		{okLatency(30 * time.Millisecond), 100 * time.Millisecond},       // - 80/8
		{success, 100 * time.Millisecond},                                // no latency: no sample
		{withLatency(badGateway, 5*time.Second), 100 * time.Millisecond}, // failures are not samples
		{withLatency(refused503, 5*time.Second), 100 * time.Millisecond},
		{withLatency(tooMany, 5*time.Second), 100 * time.Millisecond}, // nor "full" answers
		{withLatency(unreachable, 5*time.Second), 100 * time.Millisecond},
		{withLatency(clientGone, 5*time.Second), 100 * time.Millisecond},
		{withLatency(clientErr, 900*time.Millisecond), 200 * time.Millisecond}, // + 800/8
	}
	for i, s := range steps {
		admit(t, r).Done(s.o)
		if got := r.Latency(); got != s.want {
			t.Fatalf("step %d (%+v): Latency = %v, want %v", i+1, s.o, got, s.want)
		}
	}
	// Many equal samples converge on the sample.
	for range 200 {
		admit(t, r).Done(okLatency(40 * time.Millisecond))
	}
	if got := r.Latency(); got < 40*time.Millisecond || got > 40*time.Millisecond+time.Microsecond {
		t.Errorf("Latency = %v after 200 samples of 40ms", got)
	}
}

// TestLearnedCapacityCut: what one refusal teaches, by what was in flight.
func TestLearnedCapacityCut(t *testing.T) {
	tests := []struct {
		name       string
		configured int
		held       int // in flight when the region answers, the answered one included
		o          Outcome
		want       int // the capacity right after
		cut        bool
	}{
		{"503 alone halves", 200, 1, refused503, 100, true},
		{"429 alone halves", 200, 1, tooMany, 100, true},
		{"429 with Retry-After halves too", 200, 1, tooManyFor(time.Second), 100, true},
		{"150 in flight: 149", 200, 150, refused503, 149, true},
		{"at capacity: one less", 200, 200, tooMany, 199, true},
		{"small region", 10, 6, tooMany, 5, true},
		{"3 alone: 2", 3, 1, refused503, 2, true},
		{"capacity 1 stays 1", 1, 1, refused503, 1, false},
		{"more in flight than configured: nothing to learn", 10, 12, refused503, 10, false},
		{"502 teaches nothing", 200, 150, badGateway, 200, false},
		{"timeout teaches nothing", 200, 150, timedOut, 200, false},
		{"success teaches nothing", 200, 150, success, 200, false},
		{"client gone teaches nothing", 200, 150, clientGone, 200, false},
		{"unlimited never learns", 0, 50, refused503, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var got []CapacityInfo
				r := New("r", Options{Capacity: tt.configured, Breaker: neverTrips,
					OnCapacityCut: func(c CapacityInfo) { got = append(got, c) }})
				leases := make([]*Lease, tt.held)
				for i := range leases {
					l, why := r.Admit(tt.configured > 0 && i >= tt.configured) // over capacity past it
					if why != Admitted {
						t.Fatalf("lease #%d refused (%d)", i+1, why)
					}
					leases[i] = l
				}
				leases[0].Done(tt.o)
				if c := r.Capacity(); c != tt.want {
					t.Errorf("Capacity = %d, want %d", c, tt.want)
				}
				info := r.CapacityInfo()
				if !tt.cut {
					if r.Cuts() != 0 || len(got) != 0 || info.Reason() != "configured" || !info.CutAt.IsZero() {
						t.Errorf("no cut wanted: Cuts %d, OnCapacityCut %d times, info %+v (%q)", r.Cuts(), len(got), info, info.Reason())
					}
				} else {
					want := CapacityInfo{Configured: tt.configured, Learned: tt.want, CutAt: time.Now(),
						CutTo: tt.want, Held: tt.held, Status: tt.o.Status}
					if info != want {
						t.Errorf("CapacityInfo = %+v, want %+v", info, want)
					}
					if r.Cuts() != 1 || len(got) != 1 || got[0] != want {
						t.Errorf("Cuts %d, OnCapacityCut got %+v; want one cut, %+v", r.Cuts(), got, want)
					}
					reason := info.Reason()
					if !strings.Contains(reason, fmt.Sprint(tt.o.Status)) || !strings.Contains(reason, fmt.Sprintf("%d in flight", tt.held)) {
						t.Errorf("Reason = %q, want the status %d and the %d in flight", reason, tt.o.Status, tt.held)
					}
				}
				for _, l := range leases {
					l.Release()
				}
				if n := r.InFlight(); n != 0 {
					t.Errorf("InFlight = %d after every release, want 0", n)
				}
			})
		})
	}
}

// TestLearnedCapacityBurst: a burst of refusals is one round, cut once;
// the next round, a second later, cuts from where the first recovered to.
func TestLearnedCapacityBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{Capacity: 200, Breaker: neverTrips})
		for range 3 {
			admit(t, r).Done(refused503) // 1 in flight each time
		}
		if c, n := r.Capacity(), r.Cuts(); c != 100 || n != 1 {
			t.Fatalf("three 503s in a burst: Capacity %d, Cuts %d; want 100, 1", c, n)
		}
		// The cut capacity is what admission uses.
		leases := make([]*Lease, 100)
		for i := range leases {
			leases[i] = admit(t, r)
		}
		if _, why := r.Admit(false); why != RefusedFull {
			t.Fatalf("Admit = %d with 100 of a learned 100 held, want RefusedFull", why)
		}
		for _, l := range leases {
			l.Done(success)
		}

		time.Sleep(cutEvery - time.Nanosecond)
		admit(t, r).Done(tooMany)
		if n := r.Cuts(); n != 1 {
			t.Fatalf("Cuts = %d after a refusal within a second of the cut, want 1", n)
		}
		time.Sleep(time.Nanosecond)
		if c := r.Capacity(); c != 110 {
			t.Fatalf("Capacity = %d a second after the cut to 100, want 110 (ceil(200 - 100/e^0.1))", c)
		}
		admit(t, r).Done(refused503)
		if c, n := r.Capacity(), r.Cuts(); c != 55 || n != 2 {
			t.Fatalf("a second round: Capacity %d, Cuts %d; want 55 (half of 110), 2", c, n)
		}
	})
}

// TestLearnedCapacityFloorAndRecovery: refusals round after round never
// take the capacity below a tenth of the configured one, and it recovers
// without any traffic.
func TestLearnedCapacityFloorAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		r := New("r", Options{Capacity: 200, Breaker: neverTrips,
			OnCapacityCut: func(CapacityInfo) { calls.Add(1) }})
		const rounds = 60
		lowest := r.Capacity()
		for i := range rounds {
			if i > 0 {
				time.Sleep(time.Second)
			}
			for range 3 {
				admit(t, r).Done(refused503)
				c := r.Capacity()
				if c < 20 {
					t.Fatalf("round %d: Capacity = %d, below a tenth of 200", i+1, c)
				}
				lowest = min(lowest, c)
			}
		}
		if lowest != 20 {
			t.Errorf("lowest Capacity = %d after %d rounds of refusals, want the floor, 20", lowest, rounds)
		}
		// Each round cuts once: from where it recovered to, halved, down to the floor.
		if n := r.Cuts(); n != rounds || calls.Load() != rounds {
			t.Errorf("Cuts = %d, OnCapacityCut called %d times; want %d each", n, calls.Load(), rounds)
		}
		if info := r.CapacityInfo(); info.Learned != 20 || info.CutTo != 20 || info.Held != 1 || info.Status != 503 {
			t.Errorf("CapacityInfo = %+v after the deepest cut", info)
		}

		// Recovery, with no traffic at all: the gap shrinks by e every 10s.
		steps := []struct {
			after time.Duration // since the deepest cut
			want  int           // ceil(200 - 180/e^(after/10s))
		}{
			{time.Second, 38},
			{5 * time.Second, 91},
			{10 * time.Second, 134},
			{20 * time.Second, 176},
			{25 * time.Second, 186}, // within 10%, as the package doc says
			{30 * time.Second, 192},
			{51 * time.Second, 199},
			{52 * time.Second, 200},
		}
		cutAt, last := time.Now(), 20
		for _, s := range steps {
			time.Sleep(time.Until(cutAt.Add(s.after)))
			c := r.Capacity()
			if c != s.want || c < last {
				t.Errorf("%v after the deepest cut: Capacity = %d, want %d (and never less than before, %d)", s.after, c, s.want, last)
			}
			if s.after >= 25*time.Second && c < 180 {
				t.Errorf("%v after the deepest cut: Capacity = %d, not within 10%% of 200", s.after, c)
			}
			if reason := r.CapacityInfo().Reason(); c < 200 && !strings.Contains(reason, "503") {
				t.Errorf("%v after: Reason = %q while recovering, want it to mention the 503", s.after, reason)
			}
			last = c
		}
		info := r.CapacityInfo()
		if info.Reason() != "configured" || info.Learned != 200 || !info.CutAt.IsZero() || info.Status != 0 {
			t.Errorf("fully recovered: CapacityInfo %+v, Reason %q; want configured", info, info.Reason())
		}
		if n := r.Cuts(); n != rounds {
			t.Errorf("Cuts = %d after recovering, want still %d: recovery is not a cut", n, rounds)
		}
	})
}

func TestUnlimitedNeverLearns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("any", Options{Breaker: neverTrips})
		hold(t, r, 50)
		for range 20 {
			admit(t, r).Done(tooMany)
			admit(t, r).Done(refused503)
			time.Sleep(time.Second)
		}
		if c, n := r.Capacity(), r.Cuts(); c != 0 || n != 0 {
			t.Fatalf("Capacity %d, Cuts %d after refusals, want unlimited, no cut", c, n)
		}
		if got := r.Load(); got != 0 {
			t.Errorf("Load = %v, want 0", got)
		}
		if reason := r.CapacityInfo().Reason(); reason != "configured" {
			t.Errorf("Reason = %q, want configured", reason)
		}
		free(r, 50)
	})
}

// TestLeaseReportAndRelease: a lease gives its unit back once and is
// reported once, whatever its owner calls and however often.
func TestLeaseReportAndRelease(t *testing.T) {
	type op struct {
		name string
		do   func(*Lease)
		ends bool // releases the unit
	}
	report := func(name string, o Outcome) op {
		return op{"Report(" + name + ")", func(l *Lease) { l.Report(o) }, false}
	}
	done := func(name string, o Outcome) op { return op{"Done(" + name + ")", func(l *Lease) { l.Done(o) }, true} }
	release := op{"Release", (*Lease).Release, true}
	tests := []struct {
		name string
		ops  []op
		want map[Kind]uint64
	}{
		{"done", []op{done("success", success)}, map[Kind]uint64{Success: 1}},
		{"report, release", []op{report("success", success), release}, map[Kind]uint64{Success: 1}},
		{"release unreported is canceled", []op{release}, map[Kind]uint64{Canceled: 1}},
		{"release twice", []op{release, release}, map[Kind]uint64{Canceled: 1}},
		{"done, release", []op{done("failure", badGateway), release}, map[Kind]uint64{Failure: 1}},
		{"done twice", []op{done("success", success), done("success", success)}, map[Kind]uint64{Success: 1}},
		{"report twice", []op{report("success", success), report("success", success), release}, map[Kind]uint64{Success: 1}},
		{"report after release is ignored", []op{release, report("success", success)}, map[Kind]uint64{Canceled: 1}},
		{"later failure counts", []op{report("success", success), report("cut", cutShort), release}, map[Kind]uint64{Success: 1, Failure: 1}},
		{"later failure after done counts", []op{done("success", success), report("cut", cutShort)}, map[Kind]uint64{Success: 1, Failure: 1}},
		{"later failure after release counts", []op{release, report("cut", cutShort)}, map[Kind]uint64{Canceled: 1, Failure: 1}},
		{"failure twice: two", []op{report("unreachable", unreachable), done("unreachable", unreachable)}, map[Kind]uint64{Failure: 2}},
		{"later full is ignored", []op{done("success", success), report("429", tooMany)}, map[Kind]uint64{Success: 1}},
		{"later success is ignored", []op{done("429", tooMany), report("success", success)}, map[Kind]uint64{Full: 1}},
		{"later canceled is ignored", []op{report("failure", badGateway), done("client gone", clientGone)}, map[Kind]uint64{Failure: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New("r", Options{Capacity: 2, Breaker: neverTrips})
			l := admit(t, r)
			if l.Region() != r {
				t.Fatal("Lease.Region is not the region that admitted it")
			}
			other := admit(t, r) // held throughout: the lease must only give back its own unit
			released := false
			for _, op := range tt.ops {
				op.do(l)
				released = released || op.ends
				want := 2
				if released {
					want = 1
				}
				if got := r.InFlight(); got != want {
					t.Fatalf("after %s: InFlight = %d, want %d", op.name, got, want)
				}
			}
			for k := range numKinds {
				if got := r.Count(k); got != tt.want[k] {
					t.Errorf("Count(%v) = %d, want %d", k, got, tt.want[k])
				}
			}
			other.Release()
			if got := r.InFlight(); got != 0 {
				t.Errorf("InFlight = %d at the end, want 0", got)
			}
		})
	}
}

// TestLaterFailureMovesBreaker: a failure found after a good answer (a
// stream cut short) counts against the region like any other.
func TestLaterFailureMovesBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{Breaker: BreakerOptions{ConsecutiveFailures: 2}})
		a, b := admit(t, r), admit(t, r)
		a.Done(success)
		b.Done(success)
		a.Report(cutShort)
		if r.Count(Failure) != 1 || r.Breaker() != BreakerClosed {
			t.Fatalf("after one later failure: %d failures, breaker %s; want 1, closed", r.Count(Failure), r.Breaker())
		}
		b.Report(cutShort)
		if r.Count(Failure) != 2 || r.Breaker() != BreakerOpen {
			t.Fatalf("after two later failures: %d failures, breaker %s; want 2, open", r.Count(Failure), r.Breaker())
		}

		// Anything else reported late moves nothing.
		r2 := New("r2", Options{Breaker: BreakerOptions{ConsecutiveFailures: 1}})
		l := admit(t, r2)
		l.Done(success)
		for _, o := range []Outcome{success, tooMany, clientGone, clientErr} {
			l.Report(o)
		}
		if r2.Breaker() != BreakerClosed || r2.Count(Success) != 1 || r2.Count(Full) != 0 || r2.Count(Canceled) != 0 {
			t.Fatalf("late non-failures counted: breaker %s, counts %d/%d/%d",
				r2.Breaker(), r2.Count(Success), r2.Count(Full), r2.Count(Canceled))
		}
		l.Report(cutShort)
		if r2.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s after a later failure with ConsecutiveFailures 1, want open", r2.Breaker())
		}
	})
}

// TestEveryAdmitReleases: admissions and endings in a random order; the
// units in flight are always those of the leases not yet released.
func TestEveryAdmitReleases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		r := New("r", Options{Capacity: 5, Breaker: neverTrips})
		outcomes := []Outcome{success, clientErr, tooMany, refused503, badGateway, unreachable, cutShort, clientGone}
		var open []*Lease
		reported := uint64(0)
		for i := range 5000 {
			if len(open) == 0 || rng.IntN(2) == 0 {
				before := r.InFlight()
				l, why := r.Admit(rng.IntN(4) == 0)
				switch {
				case why == Admitted && l != nil:
					open = append(open, l)
				case why != Admitted && l == nil:
					if got := r.InFlight(); got != before {
						t.Fatalf("op %d: a refusal (%d) changed InFlight %d → %d", i, why, before, got)
					}
				default:
					t.Fatalf("op %d: Admit = %v, %d", i, l, why)
				}
			} else {
				j := rng.IntN(len(open))
				l, o := open[j], outcomes[rng.IntN(len(outcomes))]
				open = append(open[:j], open[j+1:]...)
				switch rng.IntN(5) {
				case 0:
					l.Done(o)
				case 1:
					l.Report(o)
					l.Release()
				case 2:
					l.Release() // unreported: Canceled
				case 3:
					l.Release()
					l.Release()
				case 4:
					l.Done(o)
					l.Done(o)
					if o.Kind == Failure {
						reported++ // a later failure counts once more
					}
				}
				reported++
			}
			if got := r.InFlight(); got != len(open) {
				t.Fatalf("op %d: InFlight = %d with %d leases open", i, got, len(open))
			}
		}
		for _, l := range open {
			l.Release()
			reported++
		}
		if got := r.InFlight(); got != 0 {
			t.Fatalf("InFlight = %d after every lease, want 0", got)
		}
		var counted uint64
		for k := range numKinds {
			counted += r.Count(k)
		}
		if counted != reported {
			t.Errorf("%d outcomes counted, want %d", counted, reported)
		}
	})
}

func TestConcurrentAdmitDone(t *testing.T) {
	const (
		capacity   = 8
		goroutines = 32
		iterations = 2000
	)
	r := New("eu-west", Options{Capacity: capacity, Breaker: neverTrips})
	outcomes := []Outcome{
		okLatency(20 * time.Millisecond),
		okLatency(40 * time.Millisecond),
		clientErr,
		tooMany,
		refused503,
		badGateway,
		unreachable,
		clientGone,
		withLatency(Outcome{Kind: Success, Status: 101}, 30*time.Millisecond),
	}
	var (
		holders, maxHolders atomic.Int64 // admitted and not yet released
		admitted, refused   atomic.Int64
		extra               atomic.Int64 // later failures, counted once more
		maxInFlight         atomic.Int64 // InFlight as seen by a holder
		start               = make(chan struct{})
		wg                  sync.WaitGroup
	)
	raise := func(m *atomic.Int64, v int64) {
		for {
			old := m.Load()
			if v <= old || m.CompareAndSwap(old, v) {
				return
			}
		}
	}
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for i := range iterations {
				l, why := r.Admit(false)
				if why != Admitted {
					if why != RefusedFull {
						t.Errorf("refused %d, want only RefusedFull", why)
					}
					refused.Add(1)
					continue
				}
				admitted.Add(1)
				raise(&maxHolders, holders.Add(1))
				raise(&maxInFlight, int64(r.InFlight()))
				if c := r.Capacity(); c < 1 || c > capacity {
					t.Errorf("Capacity = %d, want 1 to %d", c, capacity)
				}
				o := outcomes[(g+i)%len(outcomes)]
				switch i % 4 {
				case 0:
					holders.Add(-1)
					l.Done(o)
				case 1:
					l.Report(o)
					holders.Add(-1)
					l.Release()
				case 2:
					holders.Add(-1)
					l.Release()
					l.Release()
				case 3:
					l.Report(o)
					l.Report(o)
					if o.Kind == Failure {
						extra.Add(1)
					}
					holders.Add(-1)
					l.Done(o)
					if o.Kind == Failure {
						extra.Add(1)
					}
				}
			}
		})
	}
	close(start)
	wg.Wait()

	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d at the end, want 0", got)
	}
	if got := maxHolders.Load(); got < 1 || got > capacity {
		t.Errorf("at most %d held at once, want 1 to %d", got, capacity)
	}
	// InFlight also counts, for an instant, TryAcquires that are about to be
	// refused; it is bounded by the holders plus every other goroutine.
	if got := maxInFlight.Load(); got > capacity+goroutines {
		t.Errorf("InFlight reached %d, want at most %d", got, capacity+goroutines)
	}
	if a, f := admitted.Load(), refused.Load(); a+f != goroutines*iterations || a == 0 {
		t.Errorf("%d admitted + %d refused, want %d in all and some admitted", a, f, goroutines*iterations)
	}
	var counted uint64
	for k := range numKinds {
		counted += r.Count(k)
	}
	if want := uint64(admitted.Load() + extra.Load()); counted != want {
		t.Errorf("%d outcomes counted, want one per admission and one per later failure: %d", counted, want)
	}
	if r.Count(Success) == 0 || r.Count(Full) == 0 || r.Count(Failure) == 0 || r.Count(Canceled) == 0 {
		t.Errorf("counts %d/%d/%d/%d, want every kind", r.Count(Success), r.Count(Full), r.Count(Failure), r.Count(Canceled))
	}
	if got := r.Latency(); got < 20*time.Millisecond || got > 40*time.Millisecond {
		t.Errorf("Latency = %v, want between the samples, 20ms to 40ms", got)
	}
	if c := r.Capacity(); c < 1 || c > capacity {
		t.Errorf("Capacity = %d at the end, want 1 to %d", c, capacity)
	}
}

// TestConcurrentReportRelease: an owner's Report racing its own Release
// (a handler returning while a stream's reader reports): one outcome, one
// unit back, every time.
func TestConcurrentReportRelease(t *testing.T) {
	const leases = 2000
	r := New("r", Options{Capacity: leases, Breaker: neverTrips})
	var wg sync.WaitGroup
	for range leases {
		l := admit(t, r)
		start := make(chan struct{})
		wg.Go(func() { <-start; l.Report(success) })
		wg.Go(func() { <-start; l.Release() })
		wg.Go(func() { <-start; l.Release() })
		close(start)
	}
	wg.Wait()
	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d at the end, want 0", got)
	}
	if s, c := r.Count(Success), r.Count(Canceled); s+c != leases || r.Count(Failure) != 0 || r.Count(Full) != 0 {
		t.Errorf("%d successes + %d canceled, want %d in all", s, c, leases)
	}
}

// TestConcurrentAcquireBalances: Acquire, TryAcquire and Admit mixed, every
// reservation given back: nothing leaks.
func TestConcurrentAcquireBalances(t *testing.T) {
	r := New("us-east", Options{Capacity: 4, Breaker: neverTrips})
	var wg sync.WaitGroup
	start := make(chan struct{})
	outcomes := []Outcome{success, tooMany, refused503, badGateway}
	for g := range 16 {
		wg.Go(func() {
			<-start
			for i := range 1000 {
				switch g % 4 {
				case 0:
					r.Acquire()
					r.release()
				case 1:
					if r.TryAcquire() {
						r.release()
					}
				case 2:
					if l, why := r.Admit(true); why == Admitted {
						l.Done(outcomes[(g+i)%4])
					}
				case 3:
					if l, why := r.Admit(false); why == Admitted {
						l.Done(outcomes[(g+i)%4])
					}
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d at the end, want 0", got)
	}
	if c := r.Capacity(); c < 1 || c > 4 {
		t.Errorf("Capacity = %d, want 1 to 4", c)
	}
}
