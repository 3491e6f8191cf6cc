package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// admit takes a lease or fails the test.
func admit(t *testing.T, r *Region) *Lease {
	t.Helper()
	l, why := r.Admit(false)
	if why != Admitted {
		t.Fatalf("refused (%d), want admitted; breaker %s", why, r.Breaker())
	}
	return l
}

// The breaker's timing runs on synctest's fake clock: open exactly for
// OpenTimeout, then half-open for HalfOpenRequests trials.
func TestBreakerOpensAndRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var changes []string
		r := New("r", Options{
			Breaker: BreakerOptions{ConsecutiveFailures: 3, OpenTimeout: 10 * time.Second, HalfOpenRequests: 2},
			OnBreakerChange: func(from, to BreakerState) {
				mu.Lock()
				changes = append(changes, string(from)+">"+string(to))
				mu.Unlock()
			},
		})
		for i := range 2 {
			admit(t, r).Done(badGateway)
			if r.Breaker() != BreakerClosed {
				t.Fatalf("open after %d failures, want 3", i+1)
			}
		}
		admit(t, r).Done(refused503) // a 503 is a failure
		if r.Breaker() != BreakerOpen || r.InRotation() {
			t.Fatalf("breaker %s after 3 failures, want open and out of rotation", r.Breaker())
		}
		if _, why := r.Admit(false); why != RefusedOut {
			t.Fatalf("an open breaker admitted (%d)", why)
		}
		time.Sleep(10*time.Second - time.Millisecond)
		if _, why := r.Admit(false); why != RefusedOut {
			t.Fatal("admitted before OpenTimeout passed")
		}
		time.Sleep(2 * time.Millisecond) // just past OpenTimeout
		a, b := admit(t, r), admit(t, r)
		if _, why := r.Admit(false); why != RefusedOut {
			t.Fatal("half-open admitted more than HalfOpenRequests trials")
		}
		a.Done(success)
		b.Done(success)
		if r.Breaker() != BreakerClosed {
			t.Fatalf("breaker %s after 2 good trials, want closed", r.Breaker())
		}
		// A failed trial opens it again.
		for range 3 {
			admit(t, r).Done(unreachable)
		}
		time.Sleep(10*time.Second + time.Millisecond)
		admit(t, r).Done(badGateway) // a 504
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s after a failed trial, want open", r.Breaker())
		}
		mu.Lock()
		defer mu.Unlock()
		want := "closed>open open>half-open half-open>closed closed>open open>half-open half-open>open"
		if got := strings.Join(changes, " "); got != want {
			t.Errorf("changes %s\nwant    %s", got, want)
		}
	})
}

func TestBreakerFailureRatio(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{Breaker: BreakerOptions{ConsecutiveFailures: 100, FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second}})
		// Alternate: never two failures in a row, but half of all attempts.
		for i := range 9 {
			o := success
			if i%2 == 0 {
				o = badGateway
			}
			admit(t, r).Done(o)
		}
		if r.Breaker() != BreakerClosed {
			t.Fatal("tripped before MinRequests were counted")
		}
		admit(t, r).Done(success)    // 10 counted, 5 failed... not a failure: no trip check
		admit(t, r).Done(badGateway) // 11 counted, 6 failed
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s at 6 of 11 failed, want open", r.Breaker())
		}
		// Counts age out of the rolling window.
		r2 := New("r2", Options{Breaker: BreakerOptions{ConsecutiveFailures: 100, FailureRatio: 0.5, MinRequests: 4, Window: 10 * time.Second}})
		for range 3 {
			admit(t, r2).Done(badGateway)
		}
		time.Sleep(11 * time.Second)
		admit(t, r2).Done(badGateway)
		if r2.Breaker() != BreakerClosed {
			t.Error("failures older than the window still counted")
		}
	})
}

// TestDefaultOpenTimeout: an open breaker, and a region that let an
// attempt time out, are out for 3s by default.
func TestDefaultOpenTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRegion("r", 0)
		if got := r.opts.Breaker.OpenTimeout; got != 3*time.Second {
			t.Fatalf("default OpenTimeout = %v, want 3s", got)
		}
		for range 5 {
			admit(t, r).Done(badGateway)
		}
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s after 5 failures in a row, want open", r.Breaker())
		}
		time.Sleep(3*time.Second - time.Millisecond)
		if _, why := r.Admit(false); why != RefusedOut {
			t.Fatalf("admitted (%d) before the 3s open timeout passed", why)
		}
		time.Sleep(2 * time.Millisecond)
		admit(t, r).Done(success)
		if r.Breaker() != BreakerHalfOpen {
			t.Fatalf("breaker %s after a good trial, want half-open until 3", r.Breaker())
		}

		r2 := NewRegion("r2", 0)
		admit(t, r2).Done(timedOut)
		if got := r2.CoolingFor(); got != 3*time.Second {
			t.Fatalf("CoolingFor = %v after a timeout, want 3s", got)
		}
		time.Sleep(3 * time.Second)
		admit(t, r2).Done(success)
	})
}

func TestFullAnswersAndTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{Capacity: 10, Breaker: BreakerOptions{ConsecutiveFailures: 3, FullStreak: 4, OpenTimeout: 5 * time.Second}})
		// 429s are spillover, not sickness, until they persist.
		for range 3 {
			admit(t, r).Done(tooMany)
		}
		if r.Breaker() != BreakerClosed {
			t.Fatal("three 429s tripped the breaker")
		}
		admit(t, r).Done(tooMany) // the fourth in a row is a failure
		admit(t, r).Done(tooMany)
		admit(t, r).Done(tooMany)
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s after persistent 429s, want open", r.Breaker())
		}
		if got := r.Count(Full); got != 6 {
			t.Errorf("Count(Full) = %d, want 6: the breaker's view does not change the count", got)
		}

		// A success ends the streak.
		rs := New("rs", Options{Breaker: BreakerOptions{ConsecutiveFailures: 1, FullStreak: 2}})
		admit(t, rs).Done(tooMany)
		admit(t, rs).Done(success)
		admit(t, rs).Done(tooMany)
		if rs.Breaker() != BreakerClosed {
			t.Fatal("two 429s with a success between tripped the breaker")
		}

		// A client that gives up says nothing about the region.
		r2 := New("r2", Options{Breaker: BreakerOptions{ConsecutiveFailures: 1}})
		admit(t, r2).Done(clientGone)
		admit(t, r2).Release()
		if r2.Breaker() != BreakerClosed || r2.Count(Canceled) != 2 {
			t.Fatalf("cancellations counted against the region: breaker %s", r2.Breaker())
		}

		// A 429 with Retry-After makes the region full until then.
		r3 := New("r3", Options{Capacity: 10})
		admit(t, r3).Done(tooManyFor(2 * time.Second))
		if _, why := r3.Admit(false); why != RefusedFull {
			t.Fatalf("admitted (%d) during Retry-After", why)
		}
		if !r3.Busy() {
			t.Fatal("not busy during Retry-After")
		}
		if l, why := r3.Admit(true); why != Admitted {
			t.Fatal("the last resort refused a busy region")
		} else {
			l.Done(success)
		}
		time.Sleep(2*time.Second - time.Millisecond)
		if _, why := r3.Admit(false); why != RefusedFull {
			t.Fatalf("admitted (%d) before Retry-After ended", why)
		}
		time.Sleep(time.Millisecond)
		admit(t, r3).Done(success)

		// A Retry-After is bounded (30s): past it the region is tried again.
		r5 := New("r5", Options{})
		admit(t, r5).Done(tooManyFor(time.Hour))
		time.Sleep(30*time.Second - time.Millisecond)
		if _, why := r5.Admit(false); why != RefusedFull {
			t.Fatalf("admitted (%d) before 30s of an hour's Retry-After", why)
		}
		time.Sleep(time.Millisecond)
		admit(t, r5).Done(success)

		// A timeout keeps the region out for the open timeout at once.
		r4 := New("r4", Options{Breaker: BreakerOptions{OpenTimeout: 5 * time.Second}})
		admit(t, r4).Done(timedOut)
		if _, why := r4.Admit(false); why != RefusedOut || r4.CoolingFor() != 5*time.Second {
			t.Fatalf("after a timeout: refusal %d, cooling %v; want out for 5s", why, r4.CoolingFor())
		}
		time.Sleep(5 * time.Second)
		admit(t, r4).Done(success)
	})
}

// fakeRegion answers probes from a script, one step per probe.
type fakeRegion struct {
	mu    sync.Mutex
	steps []string // "healthy", "degraded", "critical", "500", "hang", "refuse"
	times []time.Duration
	start time.Time
}

func (f *fakeRegion) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	step := "healthy"
	if len(f.steps) > 0 {
		step, f.steps = f.steps[0], f.steps[1:]
	}
	f.times = append(f.times, time.Since(f.start))
	f.mu.Unlock()
	body := func(h string) *http.Response {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(
			`{"system_health":"` + h + `","active_batch_requests":2,"active_stream_requests":5,"active_listen_v2_stream_requests":1}`))}
	}
	switch step {
	case "degraded":
		return body("Degraded"), nil
	case "critical":
		return body("Critical"), nil
	case "500":
		return &http.Response{StatusCode: 500, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("oops"))}, nil
	case "hang":
		<-req.Context().Done()
		return nil, req.Context().Err()
	case "refuse":
		return nil, errors.New("connection refused")
	}
	return body("Healthy"), nil
}

func TestProbeTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeRegion{start: time.Now(), steps: []string{
			"healthy", "degraded", "hang", "critical", "healthy", "healthy", "500", "refuse",
		}}
		r := New("r", Options{})
		var mu sync.Mutex
		var changes []string
		p := &Prober{Region: r, URL: "http://region.invalid/v1/status", Client: &http.Client{Transport: fake},
			Interval: 5 * time.Second, Timeout: 2 * time.Second, Healthy: 2, Unhealthy: 2,
			OnChange: func(from, to ProbeState, res ProbeResult) {
				mu.Lock()
				changes = append(changes, from.String()+">"+to.String()+"@"+res.At.Sub(fake.start).String()+":"+res.Err)
				mu.Unlock()
			}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		stop := sync.OnceFunc(func() { cancel(); <-done })
		defer stop() // also when the test fails: a bubble must end with no goroutine left

		synctest.Wait() // the first probe, at once
		if st, last := r.Probe(); st != ProbeUp || !last.OK || r.ReportedActive() != 8 {
			t.Fatalf("after a healthy probe: %s %+v active %d", st, last, r.ReportedActive())
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if !r.Degraded() || !r.InRotation() {
			t.Fatal("a Degraded probe should rank the region down but keep it in rotation")
		}
		time.Sleep(5*time.Second + 2*time.Second) // the hung probe times out
		synctest.Wait()
		if st, last := r.Probe(); st != ProbeDegraded || last.Err != "timeout" {
			t.Fatalf("one failure took it out (%s, %+v); the threshold is 2", st, last)
		}
		first := r.Outage()
		time.Sleep(3 * time.Second) // Critical, 5s after the hung probe started: the second failure
		synctest.Wait()
		if r.InRotation() {
			t.Fatal("still in rotation after 2 failed probes")
		}
		if first.Err() != nil {
			t.Fatal("Outage cancelled by a region that answers it is Critical: its work may still finish")
		}
		time.Sleep(5 * time.Second) // one success is not enough to come back
		synctest.Wait()
		if r.InRotation() {
			t.Fatal("back after 1 good probe; the threshold is 2")
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if !r.InRotation() || r.Degraded() {
			t.Fatal("not back after 2 good probes")
		}
		second := r.Outage()
		if second.Err() != nil {
			t.Fatal("no live Outage context after the region came back")
		}
		time.Sleep(10 * time.Second) // a 500, then refused: out again
		synctest.Wait()
		if r.InRotation() {
			t.Fatal("in rotation after a 500 and a refused connection")
		}
		if context.Cause(second) != ErrDown {
			t.Fatalf("Outage cause %v once down and not answering, want ErrDown", context.Cause(second))
		}
		stop()

		mu.Lock()
		defer mu.Unlock()
		want := "up>degraded@5s: degraded>down@15s:system_health \"Critical\" down>up@25s: up>down@35s:unreachable"
		if got := strings.Join(changes, " "); got != want {
			t.Errorf("changes %s\nwant    %s", got, want)
		}
		wantTimes := "[0s 5s 10s 15s 20s 25s 30s 35s]"
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if got := fmtDurations(fake.times); got != wantTimes {
			t.Errorf("probe times %s, want %s (intervals run from start to start, a timed-out probe included)", got, wantTimes)
		}
	})
}

func fmtDurations(ds []time.Duration) string {
	var b strings.Builder
	b.WriteString("[")
	for i, d := range ds {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(d.String())
	}
	b.WriteString("]")
	return b.String()
}

func TestProbeJitterStaysInBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &fakeRegion{start: time.Now()}
		p := &Prober{Region: New("r", Options{}), URL: "http://region.invalid/v1/status", Client: &http.Client{Transport: fake},
			Interval: 10 * time.Second, Timeout: time.Second, Jitter: 0.2, Healthy: 1, Unhealthy: 1}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		time.Sleep(10 * time.Minute)
		cancel()
		<-done
		fake.mu.Lock()
		defer fake.mu.Unlock()
		distinct := map[time.Duration]bool{}
		for i := 1; i < len(fake.times); i++ {
			gap := fake.times[i] - fake.times[i-1]
			distinct[gap] = true
			if gap < 8*time.Second || gap > 12*time.Second {
				t.Errorf("gap %v outside 10s ± 20%%", gap)
			}
		}
		if len(distinct) < 5 {
			t.Errorf("only %d distinct gaps in %d probes: no jitter", len(distinct), len(fake.times))
		}
	})
}

// probeOK, noAnswer and unwell are probe results at the bubble's now.
func probeOK(health string, rtt time.Duration) ProbeResult {
	return ProbeResult{At: time.Now(), Latency: rtt, OK: true, Health: health}
}

// noAnswer: the region did not answer the probe at all.
func noAnswer(why string) ProbeResult { return ProbeResult{At: time.Now(), Err: why, NoAnswer: true} }

// unwell: the region answered that it is not well.
func unwell(why string) ProbeResult { return ProbeResult{At: time.Now(), Err: why} }

// TestOutageFollowsProbeState: the Outage context is cancelled, with
// ErrDown, when probes take the region down because it does not answer at
// all, and only then; a region that comes back has a new one.
func TestOutageFollowsProbeState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{})
		const (
			same      = iota // the Outage context is the one before the probe
			fresh            // a new one
			unchecked        // not checked
		)
		steps := []struct {
			res       func() ProbeResult
			want      ProbeState
			cancelled bool // the Outage context returned after the probe
			ctx       int
		}{
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeUp, false, same},
			{func() ProbeResult { return probeOK("Degraded", time.Millisecond) }, ProbeDegraded, false, same},
			{func() ProbeResult { return noAnswer("timeout") }, ProbeDegraded, false, same},              // 1 of 2 failures
			{func() ProbeResult { return noAnswer("unreachable") }, ProbeDown, true, same},               // down, not answering: cancelled
			{func() ProbeResult { return unwell("status 500") }, ProbeDown, true, same},                  // still down: still cancelled
			{func() ProbeResult { return probeOK("Degraded", time.Millisecond) }, ProbeDown, true, same}, // 1 of 2 successes
			{func() ProbeResult { return probeOK("Degraded", time.Millisecond) }, ProbeDegraded, false, fresh},
			{func() ProbeResult { return noAnswer("timeout") }, ProbeDegraded, false, same},
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeUp, false, same},
			{func() ProbeResult { return unwell(`system_health "Critical"`) }, ProbeUp, false, same},
			// Down, but answering that it is unwell: out of rotation, and
			// the work already there may still finish.
			{func() ProbeResult { return unwell("status 500") }, ProbeDown, false, same},
			// Then it stops answering: now what waits on it must stop.
			{func() ProbeResult { return noAnswer("timeout") }, ProbeDown, true, same},
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeDown, true, same},
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeUp, false, fresh},
			{func() ProbeResult { return unwell("status 503") }, ProbeUp, false, same},
			{func() ProbeResult { return unwell("status 503") }, ProbeDown, false, same},
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeDown, false, same},
			{func() ProbeResult { return probeOK("Healthy", time.Millisecond) }, ProbeUp, false, unchecked},
		}
		var ends atomic.Int64 // AfterFuncs run on the cancelled contexts
		watch := func(ctx context.Context) { context.AfterFunc(ctx, func() { ends.Add(1) }) }
		ctx := r.Outage()
		if ctx.Err() != nil {
			t.Fatal("a new region's Outage context is cancelled")
		}
		watch(ctx)
		for i, s := range steps {
			res := s.res()
			r.observeProbe(res, 2, 2)
			now := r.Outage()
			if st, _ := r.Probe(); st != s.want {
				t.Fatalf("step %d (%+v): state %s, want %s", i+1, res, st, s.want)
			}
			if got := now.Err() != nil; got != s.cancelled {
				t.Fatalf("step %d (%+v): Outage cancelled %v, want %v", i+1, res, got, s.cancelled)
			}
			if s.cancelled && !errors.Is(context.Cause(now), ErrDown) {
				t.Fatalf("step %d: Outage cause %v, want ErrDown", i+1, context.Cause(now))
			}
			if got := now != ctx; s.ctx != unchecked && got != (s.ctx == fresh) {
				t.Fatalf("step %d (%+v): a new Outage context %v, want %v", i+1, res, got, s.ctx == fresh)
			}
			if now != ctx {
				watch(now)
			}
			ctx = now
			time.Sleep(time.Second)
		}
		synctest.Wait()
		if got := ends.Load(); got != 2 {
			t.Errorf("%d Outage contexts ended, want 2: one per time the region went down not answering", got)
		}
	})
}

// TestRecoveryStartsAfresh: a region the probes bring back has a closed
// breaker and is not cooling down, whatever it was when it went down.
func TestRecoveryStartsAfresh(t *testing.T) {
	tests := []struct {
		name        string
		failures    []Outcome     // reported before the probes take it down
		downFor     time.Duration // between going down and the probe that brings it back
		wantChanges string
	}{
		{"breaker closed", nil, time.Second, ""}, // one failure: the attempt the Outage ended
		{"breaker open", []Outcome{badGateway, timedOut}, time.Second, "closed>open open>closed"},
		{"breaker open, its timeout passed while down", []Outcome{badGateway, timedOut}, 5 * time.Second,
			"closed>open open>half-open half-open>closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var mu sync.Mutex
				var changes []string
				r := New("r", Options{Capacity: 10, Breaker: BreakerOptions{ConsecutiveFailures: 2},
					OnBreakerChange: func(from, to BreakerState) {
						mu.Lock()
						changes = append(changes, string(from)+">"+string(to))
						mu.Unlock()
					}})
				// An attempt in flight when the region goes down, told by
				// its Outage context, as failover's attempts are.
				held := admit(t, r)
				before := r.Outage()
				stop := context.AfterFunc(before, func() { held.Done(Outcome{Kind: Failure}) })
				defer stop()
				for _, o := range tt.failures {
					admit(t, r).Done(o)
				}
				for range 2 {
					r.observeProbe(noAnswer("timeout"), 1, 2)
				}
				if r.InRotation() || context.Cause(before) != ErrDown {
					t.Fatalf("after 2 unanswered probes: in rotation %v, Outage cause %v", r.InRotation(), context.Cause(before))
				}
				synctest.Wait() // the AfterFunc ends the attempt
				if got := r.InFlight(); got != 0 {
					t.Fatalf("InFlight = %d once the Outage ended the attempt, want 0", got)
				}
				if _, why := r.Admit(true); why != RefusedOut {
					t.Fatalf("a down region admitted (%d)", why)
				}
				time.Sleep(tt.downFor)
				if from, to := r.observeProbe(probeOK("Healthy", 10*time.Millisecond), 1, 2); from != ProbeDown || to != ProbeUp {
					t.Fatalf("a good probe: %s>%s, want down>up", from, to)
				}
				after := r.Outage()
				if after == before || after.Err() != nil {
					t.Fatalf("after recovery: the same Outage context %v, cancelled %v; want a new, live one", after == before, after.Err())
				}
				if r.Breaker() != BreakerClosed || r.CoolingFor() != 0 || !r.InRotation() {
					t.Fatalf("after recovery: breaker %s, cooling %v, in rotation %v; want closed, 0, true",
						r.Breaker(), r.CoolingFor(), r.InRotation())
				}
				admit(t, r).Done(success)
				// The new breaker counts afresh: one failure does not open it.
				admit(t, r).Done(badGateway)
				if r.Breaker() != BreakerClosed {
					t.Errorf("breaker %s after one failure since recovery, want closed", r.Breaker())
				}
				if got := r.InFlight(); got != 0 {
					t.Errorf("InFlight = %d, want 0", got)
				}
				mu.Lock()
				defer mu.Unlock()
				if got := strings.Join(changes, " "); got != tt.wantChanges {
					t.Errorf("breaker changes %q, want %q", got, tt.wantChanges)
				}
			})
		})
	}
}

// TestSlowdown: probe round trips against the smallest of the last ten
// minutes, smoothed fast.
func TestSlowdown(t *testing.T) {
	r := New("r", Options{})
	if got := r.Slowdown(); got != 0 {
		t.Fatalf("Slowdown = %v without probes, want 0", got)
	}
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	probe := func(rtt time.Duration) time.Duration {
		at = at.Add(10 * time.Second)
		r.observeProbe(ProbeResult{At: at, Latency: rtt, OK: true, Health: "Healthy"}, 2, 2)
		return r.Slowdown()
	}
	const usual, slow = 100 * time.Millisecond, 300 * time.Millisecond
	phases := []struct {
		name   string
		gap    time.Duration // without probes, before the phase
		rtt    time.Duration
		probes int
		// want checks the slowdown after probe i (from 1) of the phase.
		want func(i int, s time.Duration) bool
		says string
	}{
		{"steady", 0, usual, 30, func(_ int, s time.Duration) bool { return s <= time.Millisecond }, "~0"},
		{"200ms slower", 0, slow, 5, func(i int, s time.Duration) bool {
			return s <= 200*time.Millisecond && (i < 2 || s >= 150*time.Millisecond)
		},
			">= 150ms from the second probe, at most 200ms"},
		{"back to usual", 0, usual, 5, func(i int, s time.Duration) bool {
			return i < 2 || s < 50*time.Millisecond && (i < 3 || s <= 25*time.Millisecond)
		}, "< 50ms from the second probe, <= 25ms from the third"},
		{"jitter below usual", 0, 90 * time.Millisecond, 1, func(_ int, s time.Duration) bool { return s <= 10*time.Millisecond }, "~0"},
		// A lasting change becomes the usual once the faster round trips
		// are ten minutes old.
		{"slower for 11 minutes", 0, slow, 66, func(i int, s time.Duration) bool { return i < 62 || s <= time.Millisecond }, "~0 after 10 minutes"},
		{"back to usual", 0, usual, 30, func(int, time.Duration) bool { return true }, "anything"},
		// Round trips older than ten minutes are forgotten even when no
		// probe has come since to take their place.
		{"slower after 20 minutes without probes", 20 * time.Minute, slow, 3, func(_ int, s time.Duration) bool { return s <= time.Millisecond }, "~0"},
	}
	for _, ph := range phases {
		at = at.Add(ph.gap)
		for i := 1; i <= ph.probes; i++ {
			if s := probe(ph.rtt); !ph.want(i, s) {
				t.Fatalf("%s, probe %d of %v: Slowdown = %v, want %s", ph.name, i, ph.rtt, s, ph.says)
			}
		}
	}

	// Failed probes are not round trips.
	before := r.Slowdown()
	for range 3 {
		at = at.Add(10 * time.Second)
		r.observeProbe(ProbeResult{At: at, Latency: 5 * time.Second, Err: "status 500"}, 2, 2)
	}
	if got := r.Slowdown(); got != before {
		t.Errorf("Slowdown %v → %v after failed probes, want unchanged", before, got)
	}
	if got := r.Latency(); got < 100*time.Millisecond || got > slow {
		t.Errorf("Latency = %v, want the probes' round trips folded in", got)
	}
}

// rttRegion answers probes healthy after a round trip of rtt, or hangs
// until the probe's context ends.
type rttRegion struct {
	rtt   atomic.Int64 // nanoseconds
	hung  atomic.Bool
	mu    sync.Mutex
	times []time.Time // when each probe started
}

func (f *rttRegion) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.times = append(f.times, time.Now())
	f.mu.Unlock()
	if f.hung.Load() {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	select {
	case <-time.After(time.Duration(f.rtt.Load())):
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(
		`{"system_health":"Healthy","active_batch_requests":0,"active_stream_requests":0,"active_listen_v2_stream_requests":0}`))}, nil
}

// TestProberFeedsSlowdown: a region whose status answers 200ms slower
// shows it within two probes, through the prober.
func TestProberFeedsSlowdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := &rttRegion{}
		fake.rtt.Store(int64(50 * time.Millisecond))
		r := New("r", Options{})
		p := &Prober{Region: r, URL: "http://region.invalid/v1/status", Client: &http.Client{Transport: fake},
			Interval: time.Second, Timeout: time.Second, Healthy: 2, Unhealthy: 2}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()

		time.Sleep(10*time.Second + 500*time.Millisecond)
		if s, l := r.Slowdown(), r.Latency(); s != 0 || l != 50*time.Millisecond {
			t.Fatalf("steady 50ms: Slowdown %v, Latency %v; want 0, 50ms", s, l)
		}
		fake.rtt.Store(int64(250 * time.Millisecond))
		time.Sleep(2 * time.Second) // two probes, at 11s and 12s
		if s := r.Slowdown(); s < 150*time.Millisecond {
			t.Fatalf("200ms slower for 2 probes: Slowdown %v, want >= 150ms", s)
		}
		fake.rtt.Store(int64(50 * time.Millisecond))
		time.Sleep(3 * time.Second)
		if s := r.Slowdown(); s > 25*time.Millisecond {
			t.Fatalf("back to 50ms for 3 probes: Slowdown %v, want <= 25ms", s)
		}
	})
}

// TestHungRegionDeclaredDown: a region that stops answering (its probes
// hang until they time out) is down within Unhealthy × Interval plus one
// Interval, because intervals run from start to start; and its Outage
// context ends then.
func TestHungRegionDeclaredDown(t *testing.T) {
	for _, hangAfter := range []time.Duration{0, 300 * time.Millisecond, 999 * time.Millisecond} {
		t.Run("hung "+hangAfter.String()+" after a probe", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := &rttRegion{}
				r := New("r", Options{})
				var downAt atomic.Int64
				p := &Prober{Region: r, URL: "http://region.invalid/v1/status", Client: &http.Client{Transport: fake},
					Interval: time.Second, Timeout: time.Second, Healthy: 2, Unhealthy: 2,
					OnChange: func(from, to ProbeState, res ProbeResult) {
						if to == ProbeDown {
							downAt.Store(time.Now().UnixNano())
						}
					}}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { p.Run(ctx); close(done) }()
				defer func() { cancel(); <-done }()

				start := time.Now()
				time.Sleep(10 * time.Second) // the probe at 10s has answered
				synctest.Wait()
				outage := r.Outage()
				time.Sleep(hangAfter)
				hungAt := time.Now()
				fake.hung.Store(true)

				time.Sleep(2*time.Second - time.Nanosecond)
				synctest.Wait()
				if !r.InRotation() {
					t.Fatalf("down %v after hanging: one timed-out probe cannot take it out", time.Since(hungAt))
				}
				time.Sleep(hungAt.Add(3 * time.Second).Sub(time.Now()))
				synctest.Wait()
				if st, last := r.Probe(); st != ProbeDown || last.Err != "timeout" {
					t.Fatalf("3s after hanging: %s (%+v), want down after timeouts", st, last)
				}
				if took := time.Unix(0, downAt.Load()).Sub(hungAt); took > 3*time.Second || took < 2*time.Second {
					t.Errorf("declared down %v after hanging, want 2s to 3s", took)
				}
				if context.Cause(outage) != ErrDown {
					t.Errorf("Outage cause %v once down, want ErrDown", context.Cause(outage))
				}
				// Probes started every second, the hung ones included.
				fake.mu.Lock()
				defer fake.mu.Unlock()
				for i, at := range fake.times {
					if want := start.Add(time.Duration(i) * time.Second); !at.Equal(want) {
						t.Errorf("probe %d started at %v, want %v", i, at.Sub(start), want.Sub(start))
					}
				}
			})
		})
	}
}
