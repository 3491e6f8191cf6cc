package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// admit takes a lease or fails the test.
func admit(t *testing.T, r *Region) Lease {
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
			admit(t, r).Done(Outcome{Status: 502})
			if r.Breaker() != BreakerClosed {
				t.Fatalf("open after %d failures, want 3", i+1)
			}
		}
		admit(t, r).Done(Outcome{Status: 503}) // a 503 is a failure
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
		a.Done(Outcome{Status: 200})
		b.Done(Outcome{Status: 200})
		if r.Breaker() != BreakerClosed {
			t.Fatalf("breaker %s after 2 good trials, want closed", r.Breaker())
		}
		// A failed trial opens it again.
		for range 3 {
			admit(t, r).Done(Outcome{Err: errors.New("connection refused")})
		}
		time.Sleep(10*time.Second + time.Millisecond)
		admit(t, r).Done(Outcome{Status: 504})
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
			o := Outcome{Status: 200}
			if i%2 == 0 {
				o = Outcome{Status: 502}
			}
			admit(t, r).Done(o)
		}
		if r.Breaker() != BreakerClosed {
			t.Fatal("tripped before MinRequests were counted")
		}
		admit(t, r).Done(Outcome{Status: 200}) // 10 counted, 5 failed... not a failure: no trip check
		admit(t, r).Done(Outcome{Status: 502}) // 11 counted, 6 failed
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s at 6 of 11 failed, want open", r.Breaker())
		}
		// Counts age out of the rolling window.
		r2 := New("r2", Options{Breaker: BreakerOptions{ConsecutiveFailures: 100, FailureRatio: 0.5, MinRequests: 4, Window: 10 * time.Second}})
		for range 3 {
			admit(t, r2).Done(Outcome{Status: 502})
		}
		time.Sleep(11 * time.Second)
		admit(t, r2).Done(Outcome{Status: 502})
		if r2.Breaker() != BreakerClosed {
			t.Error("failures older than the window still counted")
		}
	})
}

func TestFullAnswersAndTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New("r", Options{Capacity: 10, Breaker: BreakerOptions{ConsecutiveFailures: 3, FullStreak: 4, OpenTimeout: 5 * time.Second}})
		// 429s are spillover, not sickness, until they persist.
		for range 3 {
			admit(t, r).Done(Outcome{Status: 429})
		}
		if r.Breaker() != BreakerClosed {
			t.Fatal("three 429s tripped the breaker")
		}
		admit(t, r).Done(Outcome{Status: 429}) // the fourth in a row is a failure
		admit(t, r).Done(Outcome{Status: 429})
		admit(t, r).Done(Outcome{Status: 429})
		if r.Breaker() != BreakerOpen {
			t.Fatalf("breaker %s after persistent 429s, want open", r.Breaker())
		}

		// A client that gives up says nothing about the region.
		r2 := New("r2", Options{Breaker: BreakerOptions{ConsecutiveFailures: 1}})
		admit(t, r2).Done(Outcome{Err: context.Canceled})
		admit(t, r2).Done(Outcome{ClientGone: true, Status: 502})
		if r2.Breaker() != BreakerClosed || r2.Count(Canceled) != 2 {
			t.Fatalf("cancellations counted against the region: breaker %s", r2.Breaker())
		}

		// A 429 with Retry-After makes the region full until then.
		r3 := New("r3", Options{Capacity: 10})
		admit(t, r3).Done(Outcome{Status: 429, RetryAfter: 2 * time.Second})
		if _, why := r3.Admit(false); why != RefusedFull {
			t.Fatalf("admitted (%d) during Retry-After", why)
		}
		if l, why := r3.Admit(true); why != Admitted {
			t.Fatal("over-capacity admission refused a busy region")
		} else {
			l.Done(Outcome{Status: 200})
		}
		time.Sleep(2 * time.Second)
		admit(t, r3).Done(Outcome{Status: 200})

		// A timeout keeps the region out for the open timeout at once.
		r4 := New("r4", Options{Breaker: BreakerOptions{OpenTimeout: 5 * time.Second}})
		admit(t, r4).Done(Outcome{Err: timeoutErr{}})
		if _, why := r4.Admit(false); why != RefusedOut || r4.CoolingFor() != 5*time.Second {
			t.Fatalf("after a timeout: refusal %d, cooling %v; want out for 5s", why, r4.CoolingFor())
		}
		time.Sleep(5 * time.Second)
		admit(t, r4).Done(Outcome{Status: 200})
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
		time.Sleep(5 * time.Second) // Critical: the second failure
		synctest.Wait()
		if r.InRotation() {
			t.Fatal("still in rotation after 2 failed probes")
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
		time.Sleep(10 * time.Second) // a 500, then refused: out again
		synctest.Wait()
		if r.InRotation() {
			t.Fatal("in rotation after a 500 and a refused connection")
		}
		cancel()
		<-done

		mu.Lock()
		defer mu.Unlock()
		want := "up>degraded@5s: degraded>down@17s:system_health \"Critical\" down>up@27s: up>down@37s:unreachable"
		if got := strings.Join(changes, " "); got != want {
			t.Errorf("changes %s\nwant    %s", got, want)
		}
		wantTimes := "[0s 5s 10s 17s 22s 27s 32s 37s]"
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if got := fmtDurations(fake.times); got != wantTimes {
			t.Errorf("probe times %s, want %s (each interval starts after the previous probe ends)", got, wantTimes)
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
