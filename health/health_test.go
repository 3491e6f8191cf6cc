package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
	r.Done(Outcome{Status: 200})
	if got := r.InFlight(); got != 2 {
		t.Fatalf("InFlight = %d after Done, want 2", got)
	}
	if !r.TryAcquire() {
		t.Fatal("TryAcquire refused with room for one")
	}
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted beyond capacity after a Done")
	}
	for range 3 {
		r.Done(Outcome{Status: 200})
	}
	if got := r.InFlight(); got != 0 {
		t.Fatalf("InFlight = %d after every Done, want 0", got)
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
	for range 10000 {
		r.Done(Outcome{Status: 200})
	}
	if got := r.InFlight(); got != 0 {
		t.Errorf("InFlight = %d, want 0", got)
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
	for range 3 {
		r.Done(Outcome{Status: 200})
	}
	if got := r.InFlight(); got != 1 {
		t.Fatalf("InFlight = %d, want 1", got)
	}
	if !r.TryAcquire() {
		t.Fatal("TryAcquire refused with 1 of 2 in flight")
	}
}

func TestLoad(t *testing.T) {
	r := NewRegion("ap-south", 4)
	if got := r.Load(); got != 0 {
		t.Errorf("idle Load = %v, want 0", got)
	}
	hold(t, r, 1)
	if got := r.Load(); got != 0.25 {
		t.Errorf("Load = %v with 1 of 4, want 0.25", got)
	}
	hold(t, r, 2)
	if got := r.Load(); got != 0.75 {
		t.Errorf("Load = %v with 3 of 4, want 0.75", got)
	}
	// A "full" answer with 3 in flight (2 after it) believes 2: 2 of 2.
	r.Done(Outcome{Status: 429})
	if r.Capacity() != 2 {
		t.Fatalf("Capacity = %d after 429 with 3 in flight, want 2", r.Capacity())
	}
	if got := r.Load(); got != 1 {
		t.Errorf("Load = %v with 2 of a learned 2, want 1", got)
	}
}

// timeoutErr is a net.Error that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestOutcomeKind(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errors.New("connection refused"))}
	tests := []struct {
		name string
		o    Outcome
		want Kind
	}{
		{"client gone", Outcome{ClientGone: true}, Canceled},
		{"client gone beats a status", Outcome{ClientGone: true, Status: 503}, Canceled},
		{"client gone beats an error", Outcome{ClientGone: true, Err: refused}, Canceled},
		{"context.Canceled", Outcome{Err: context.Canceled}, Canceled},
		{"wrapped context.Canceled", Outcome{Err: fmt.Errorf("dial: %w", context.Canceled)}, Canceled},
		{"connect error", Outcome{Err: refused}, Failure},
		{"deadline exceeded", Outcome{Err: context.DeadlineExceeded}, Failure},
		{"net timeout", Outcome{Err: timeoutErr{}}, Failure},
		{"error beats a good status", Outcome{Err: errors.New("reset"), Status: 200}, Failure},
		{"error beats a full status", Outcome{Err: errors.New("reset"), Status: 429}, Failure},
		{"429", Outcome{Status: 429}, Full},
		{"503", Outcome{Status: 503}, Full},
		{"502", Outcome{Status: 502}, Failure},
		{"504", Outcome{Status: 504}, Failure},
		{"200", Outcome{Status: 200}, Success},
		{"101 switching protocols", Outcome{Status: 101}, Success},
		{"400", Outcome{Status: 400}, Success},
		{"401", Outcome{Status: 401}, Success},
		{"404", Outcome{Status: 404}, Success},
	}
	for _, tt := range tests {
		if got := tt.o.Kind(); got != tt.want {
			t.Errorf("%s: Kind() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

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
	} {
		if got := IsTimeout(tt.err); got != tt.want {
			t.Errorf("IsTimeout(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestDoneCountsKinds(t *testing.T) {
	// Unlimited, so that "full" answers do not shrink what may be held.
	r := NewRegion("us-west", 0)
	outcomes := []Outcome{
		{Status: 200}, {Status: 200}, {Status: 400}, // 3 successes
		{Status: 429}, {Status: 503}, // 2 full
		{Status: 502}, {Status: 504}, {Err: errors.New("refused")}, {Err: context.DeadlineExceeded}, // 4 failures
		{ClientGone: true}, {Err: context.Canceled}, {ClientGone: true, Status: 200}, // 3 canceled
	}
	hold(t, r, len(outcomes))
	for i, o := range outcomes {
		r.Done(o)
		if got, want := r.InFlight(), len(outcomes)-i-1; got != want {
			t.Fatalf("after Done #%d: InFlight = %d, want %d", i+1, got, want)
		}
	}
	for k, want := range map[Kind]uint64{Success: 3, Full: 2, Failure: 4, Canceled: 3} {
		if got := r.Count(k); got != want {
			t.Errorf("Count(%v) = %d, want %d", k, got, want)
		}
	}
}

func TestLatencyEWMA(t *testing.T) {
	r := NewRegion("eu-west", 100)
	if got := r.Latency(); got != 0 {
		t.Fatalf("Latency = %v before any answer, want 0", got)
	}
	steps := []struct {
		o    Outcome
		want time.Duration
	}{
		{Outcome{Status: 200, Latency: 100 * time.Millisecond}, 100 * time.Millisecond}, // the first sample sets it
		{Outcome{Status: 200, Latency: 180 * time.Millisecond}, 110 * time.Millisecond}, // + 80/8
		{Outcome{Status: 200, Latency: 30 * time.Millisecond}, 100 * time.Millisecond},  // - 80/8
		{Outcome{Status: 200}, 100 * time.Millisecond},                                  // no latency: no sample
		{Outcome{Status: 502, Latency: 5 * time.Second}, 100 * time.Millisecond},        // failures are not samples
		{Outcome{Status: 503, Latency: 5 * time.Second}, 100 * time.Millisecond},        // nor "full" answers
		{Outcome{Err: errors.New("reset"), Latency: 5 * time.Second}, 100 * time.Millisecond},
		{Outcome{ClientGone: true, Status: 200, Latency: 5 * time.Second}, 100 * time.Millisecond},
		{Outcome{Status: 400, Latency: 900 * time.Millisecond}, 200 * time.Millisecond}, // + 800/8
	}
	for i, s := range steps {
		hold(t, r, 1)
		r.Done(s.o)
		if got := r.Latency(); got != s.want {
			t.Fatalf("step %d (%+v): Latency = %v, want %v", i+1, s.o, got, s.want)
		}
	}
	// Many equal samples converge on the sample.
	for range 200 {
		hold(t, r, 1)
		r.Done(Outcome{Status: 200, Latency: 40 * time.Millisecond})
	}
	if got := r.Latency(); got < 40*time.Millisecond || got > 40*time.Millisecond+time.Microsecond {
		t.Errorf("Latency = %v after 200 samples of 40ms", got)
	}
}

func TestLearnedCapacityShrinks(t *testing.T) {
	r := NewRegion("eu-west", 10)
	hold(t, r, 6)
	r.Done(Outcome{Status: 429}) // full with 6 in flight: below 6
	if got := r.Capacity(); got != 5 {
		t.Fatalf("Capacity = %d after 429 with 6 in flight, want 5", got)
	}
	if got := r.Configured(); got != 10 {
		t.Errorf("Configured = %d, want 10", got)
	}
	// 5 in flight now: the learned capacity is full.
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted a sixth with a learned capacity of 5")
	}

	// Every further "full" answer takes at least a tenth off, even with more
	// in flight than the learned capacity; never below 1.
	prev := r.learned.Load()
	for i := range 40 {
		r.Acquire()
		r.Done(Outcome{Status: 503})
		cur := r.learned.Load()
		if want := max(milli, prev*9/10); cur > want {
			t.Fatalf("full #%d: learned %d → %d, want at most %d", i+1, prev, cur, want)
		}
		if cur < milli || r.Capacity() < 1 {
			t.Fatalf("full #%d: learned %d, Capacity %d; want at least 1", i+1, cur, r.Capacity())
		}
		prev = cur
	}
	if got := r.Capacity(); got != 1 {
		t.Errorf("Capacity = %d after 40 full answers, want 1", got)
	}
	if got := r.InFlight(); got != 5 {
		t.Errorf("InFlight = %d, want the 5 still held", got)
	}
	// A learned capacity of 1 still admits one.
	for range 5 {
		r.Done(Outcome{ClientGone: true})
	}
	if !r.TryAcquire() {
		t.Fatal("TryAcquire refused on an idle region with a learned capacity of 1")
	}
	if r.TryAcquire() {
		t.Fatal("TryAcquire admitted a second with a learned capacity of 1")
	}
}

func TestLearnedCapacityShrinkCases(t *testing.T) {
	tests := []struct {
		name       string
		configured int
		held       int // including the one answered
		want       int
	}{
		{"alone: straight to 1", 10, 1, 1},
		{"two in flight: 1", 10, 2, 1},
		{"near capacity: the tenth", 10, 10, 9},
		{"held at capacity, large", 1000, 1000, 900},
		{"held far below capacity", 1000, 11, 10},
		{"capacity 1 stays 1", 1, 1, 1},
	}
	for _, tt := range tests {
		r := NewRegion("r", tt.configured)
		hold(t, r, tt.held)
		r.Done(Outcome{Status: 503})
		if got := r.Capacity(); got != tt.want {
			t.Errorf("%s: Capacity = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestOtherOutcomesDoNotShrink(t *testing.T) {
	for _, o := range []Outcome{{Status: 502}, {Status: 504}, {Err: errors.New("refused")}, {ClientGone: true, Status: 503}, {Status: 200}} {
		r := NewRegion("r", 10)
		hold(t, r, 6)
		r.Done(o)
		if got := r.Capacity(); got != 10 {
			t.Errorf("%+v: Capacity = %d, want 10", o, got)
		}
	}
}

func TestLearnedCapacityGrowsBack(t *testing.T) {
	r := NewRegion("eu-west", 10)
	hold(t, r, 6)
	r.Done(Outcome{Status: 503})
	if r.Capacity() != 5 {
		t.Fatalf("Capacity = %d, want 5", r.Capacity())
	}
	for range 5 {
		r.Done(Outcome{ClientGone: true}) // says nothing: no growth
	}
	if r.Capacity() != 5 || r.InFlight() != 0 {
		t.Fatalf("Capacity %d, InFlight %d; want 5, 0", r.Capacity(), r.InFlight())
	}

	successes, last := 0, r.Capacity()
	for r.Capacity() < 10 {
		if successes > 1000 {
			t.Fatalf("Capacity = %d after 1000 successes, never back to 10", r.Capacity())
		}
		hold(t, r, 1)
		r.Done(Outcome{Status: 200, Latency: time.Millisecond})
		successes++
		c := r.Capacity()
		if c < last || c > last+1 {
			t.Fatalf("success %d: Capacity %d → %d, want +0 or +1", successes, last, c)
		}
		last = c
	}
	// One per capacity's worth of successes: 5+6+7+8+9 = 35, and a few more
	// for the rounding down of each step.
	if successes < 35 || successes > 40 {
		t.Errorf("%d successes took the capacity from 5 to 10, want 35 to 40", successes)
	}
	for range 100 {
		hold(t, r, 1)
		r.Done(Outcome{Status: 200})
	}
	if got, learned := r.Capacity(), r.learned.Load(); got != 10 || learned != 10*milli {
		t.Errorf("Capacity %d (learned %d) after many successes, want exactly the configured 10", got, learned)
	}
}

func TestUnlimitedNeverLearns(t *testing.T) {
	r := NewRegion("any", 0)
	hold(t, r, 50)
	for range 20 {
		r.Done(Outcome{Status: 429})
	}
	if got, learned := r.Capacity(), r.learned.Load(); got != 0 || learned != 0 {
		t.Fatalf("Capacity %d (learned %d) after full answers, want unlimited", got, learned)
	}
	hold(t, r, 1000)
	for range 30 {
		r.Done(Outcome{Status: 200})
	}
	if got, learned := r.Capacity(), r.learned.Load(); got != 0 || learned != 0 {
		t.Fatalf("Capacity %d (learned %d) after successes, want unlimited", got, learned)
	}
	if got := r.Load(); got != 0 {
		t.Errorf("Load = %v, want 0", got)
	}
}

func TestConcurrentTryAcquireDone(t *testing.T) {
	const (
		capacity   = 8
		goroutines = 32
		iterations = 2000
	)
	r := NewRegion("eu-west", capacity)
	outcomes := []Outcome{
		{Status: 200, Latency: 20 * time.Millisecond},
		{Status: 200, Latency: 40 * time.Millisecond},
		{Status: 400},
		{Status: 429},
		{Status: 503},
		{Status: 502},
		{Err: errors.New("reset")},
		{ClientGone: true},
		{Err: context.Canceled},
		{Status: 101, Latency: 30 * time.Millisecond},
	}
	var (
		holders, maxHolders atomic.Int64 // admitted and not yet Done
		admitted, refused   atomic.Int64
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
				if !r.TryAcquire() {
					refused.Add(1)
					continue
				}
				admitted.Add(1)
				raise(&maxHolders, holders.Add(1))
				raise(&maxInFlight, int64(r.InFlight()))
				if c := r.Capacity(); c < 1 || c > capacity {
					t.Errorf("Capacity = %d, want 1 to %d", c, capacity)
				}
				holders.Add(-1)
				r.Done(outcomes[(g+i)%len(outcomes)])
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
	if counted != uint64(admitted.Load()) {
		t.Errorf("%d outcomes counted, want one per admission: %d", counted, admitted.Load())
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

// TestConcurrentAcquireBalances: Acquire and TryAcquire mixed, every
// reservation given back: nothing leaks.
func TestConcurrentAcquireBalances(t *testing.T) {
	r := NewRegion("us-east", 4)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 16 {
		wg.Go(func() {
			<-start
			for i := range 1000 {
				if g%2 == 0 {
					r.Acquire()
				} else if !r.TryAcquire() {
					continue
				}
				r.Done(Outcome{Status: []int{200, 429, 503, 502}[(g+i)%4]})
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
