package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	errReset   = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	errTimeout = timeoutErr{}
)

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		res    Result
		kind   health.Kind
		shrink bool
		retry  bool
		cause  Cause
	}{
		{"200", Result{Status: 200}, health.Success, false, false, CauseNone},
		{"101", Result{Status: 101}, health.Success, false, false, CauseNone},
		{"400 is the client's", Result{Status: 400}, health.Success, false, false, CauseNone},
		{"401", Result{Status: 401}, health.Success, false, false, CauseNone},
		{"429 is full", Result{Status: 429, RetryAfter: time.Second}, health.Full, true, true, CauseFull},
		{"503 is a failure that teaches capacity", Result{Status: 503}, health.Failure, true, true, CauseUnavailable},
		{"500", Result{Status: 500}, health.Failure, false, true, CauseInternal},
		{"502", Result{Status: 502}, health.Failure, false, true, CauseBadGateway},
		{"504", Result{Status: 504}, health.Failure, false, true, CauseGatewayTimeout},
		{"connect error", Result{Err: errRefused}, health.Failure, false, true, CauseConnect},
		{"reset before an answer", Result{Err: errReset}, health.Failure, false, true, CauseReset},
		{"timeout", Result{Err: errTimeout}, health.Failure, false, true, CauseTimeout},
		{"deadline", Result{Err: fmt.Errorf("dial: %w", context.DeadlineExceeded)}, health.Failure, false, true, CauseTimeout},
		{"region declared down", Result{Err: health.ErrDown}, health.Failure, false, true, CauseDown},
		{"cut after the answer began", Result{Status: 200, Err: errReset}, health.Failure, false, false, CauseCut},
		{"client gone", Result{Err: context.Canceled}, health.Canceled, false, false, CauseNone},
		{"client gone wrapped", Result{Err: fmt.Errorf("dial: %w", context.Canceled)}, health.Canceled, false, false, CauseNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Classify(tt.res)
			if v.Outcome.Kind != tt.kind || v.Outcome.Shrink != tt.shrink || v.Retry != tt.retry || v.Cause != tt.cause {
				t.Errorf("Classify(%+v) = %+v, want kind %s shrink %v retry %v cause %q",
					tt.res, v, tt.kind, tt.shrink, tt.retry, tt.cause)
			}
			if tt.res.Status == 429 && v.Outcome.RetryAfter != tt.res.RetryAfter {
				t.Errorf("Retry-After not passed on: %+v", v.Outcome)
			}
			if v.Outcome.Timeout != (tt.cause == CauseTimeout) {
				t.Errorf("Timeout = %v for %s", v.Outcome.Timeout, tt.name)
			}
		})
	}
}

// fleet is a set of regions for one test, named r0, r1, ...
type fleet []*health.Region

func newFleet(n, capacity int) fleet {
	f := make(fleet, n)
	for i := range f {
		f[i] = health.New(fmt.Sprintf("r%d", i), health.Options{Capacity: capacity,
			Breaker: health.BreakerOptions{ConsecutiveFailures: 100, MinRequests: 1000}})
	}
	return f
}

// inFlight is every region's in-flight count.
func (f fleet) inFlight() []int {
	n := make([]int, len(f))
	for i, r := range f {
		n[i] = r.InFlight()
	}
	return n
}

func (f fleet) idle(t *testing.T) {
	t.Helper()
	if n := f.inFlight(); slices.ContainsFunc(n, func(v int) bool { return v != 0 }) {
		t.Errorf("in flight after the run: %v, want all 0", n)
	}
}

// counts is a region's outcome counts, "success/full/failure/canceled".
func counts(r *health.Region) string {
	return fmt.Sprintf("%d/%d/%d/%d", r.Count(health.Success), r.Count(health.Full), r.Count(health.Failure), r.Count(health.Canceled))
}

// send is a fake transport: what each region does with an attempt. A nil
// entry hangs until the attempt's context ends.
type send map[int]func(ctx context.Context) Result

func answer(status int) func(context.Context) Result {
	return func(context.Context) Result { return Result{Status: status} }
}

func fail(err error) func(context.Context) Result {
	return func(context.Context) Result { return Result{Err: err} }
}

func hang(ctx context.Context) Result {
	<-ctx.Done()
	return Result{Err: ctx.Err()}
}

func slow(d time.Duration, status int) func(context.Context) Result {
	return func(ctx context.Context) Result {
		select {
		case <-time.After(d):
			return Result{Status: status}
		case <-ctx.Done():
			return Result{Err: ctx.Err()}
		}
	}
}

// serve drives a run as the HTTP forwarder does: one attempt at a time,
// asking Retry after each; the last answer is reported and released.
func serve(run *Run, s send, replayable bool) (*Attempt, Result) {
	defer run.End()
	a := run.First()
	if a == nil {
		return nil, Result{}
	}
	for {
		f := s[a.Index]
		if f == nil {
			f = hang
		}
		res := f(a.Context())
		if next := run.Retry(a, res, replayable); next != nil {
			a.Release()
			a = next
			continue
		}
		run.Served(a)
		a.Done(res)
		return a, res
	}
}

func TestRunHTTP(t *testing.T) {
	tests := []struct {
		name       string
		send       send
		replayable bool
		policy     Policy
		served     int // -1: none
		status     int
		reason     routing.Reason
		counts     []string // each region's outcome counts
		failovers  uint64
	}{
		{"first answers", send{0: answer(200)}, true, Policy{}, 0, 200, routing.Nearest,
			[]string{"1/0/0/0", "0/0/0/0"}, 0},
		{"503 moves on", send{0: answer(503), 1: answer(200)}, true, Policy{}, 1, 200, routing.Failover,
			[]string{"0/0/1/0", "1/0/0/0"}, 1},
		{"500 moves on", send{0: answer(500), 1: answer(200)}, true, Policy{}, 1, 200, routing.Failover,
			[]string{"0/0/1/0", "1/0/0/0"}, 1},
		{"429 moves on", send{0: answer(429), 1: answer(200)}, true, Policy{}, 1, 200, routing.Failover,
			[]string{"0/1/0/0", "1/0/0/0"}, 1},
		{"connect error, then reset, then an answer", send{0: fail(errRefused), 1: fail(errReset), 2: answer(200)}, true, Policy{}, 2, 200, routing.Failover,
			[]string{"0/0/1/0", "0/0/1/0", "1/0/0/0"}, 1},
		{"400 is the answer", send{0: answer(400)}, true, Policy{}, 0, 400, routing.Nearest,
			[]string{"1/0/0/0", "0/0/0/0"}, 0},
		{"a body that cannot be replayed stays", send{0: answer(503)}, false, Policy{}, 0, 503, routing.Nearest,
			[]string{"0/0/1/0", "0/0/0/0"}, 0},
		{"attempts bound the walk", send{0: answer(503), 1: answer(502), 2: answer(200)}, true, Policy{Attempts: 2}, 1, 502, routing.Failover,
			[]string{"0/0/1/0", "0/0/1/0", "0/0/0/0"}, 1},
		{"every region refuses: the last answer", send{0: answer(503), 1: answer(503), 2: answer(503)}, true, Policy{}, 2, 503, routing.Failover,
			[]string{"0/0/1/0", "0/0/1/0", "0/0/1/0"}, 1},
		{"no retry past the deadline", send{0: slow(time.Minute, 503), 1: answer(200)}, true, Policy{Deadline: 30 * time.Second}, 0, 503, routing.Nearest,
			[]string{"0/0/1/0", "0/0/0/0"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFleet(len(tt.counts), 10)
				p := Policy{Attempts: 3, Deadline: time.Minute, MinRetries: 10}
				if tt.policy.Attempts > 0 {
					p.Attempts = tt.policy.Attempts
				}
				if tt.policy.Deadline > 0 {
					p.Deadline = tt.policy.Deadline
				}
				e := New(p)
				a, res := serve(e.Begin(t.Context(), Plan{Regions: f, Reason: routing.Nearest}, time.Now()), tt.send, tt.replayable)
				if a.Index != tt.served || res.Status != tt.status || a.Reason != tt.reason {
					t.Errorf("served by r%d with %d (%s), want r%d with %d (%s)", a.Index, res.Status, a.Reason, tt.served, tt.status, tt.reason)
				}
				for i, r := range f {
					if got := counts(r); got != tt.counts[i] {
						t.Errorf("r%d outcomes %s, want %s", i, got, tt.counts[i])
					}
				}
				if got := e.Stats().Failovers; got != tt.failovers {
					t.Errorf("failovers %d, want %d", got, tt.failovers)
				}
				f.idle(t)
				if e.RetriesInProgress() != 0 || e.inProgress.Load() != 0 {
					t.Errorf("budget slots %d, runs %d held after the run", e.RetriesInProgress(), e.inProgress.Load())
				}
			})
		})
	}
}

// A region skipped without an attempt (out of rotation, or full) is not a
// failover: the reason says why the next one serves.
func TestReasons(t *testing.T) {
	t.Run("out of rotation", func(t *testing.T) {
		f := newFleet(2, 10)
		f[0] = health.New("r0", health.Options{Capacity: 10, Breaker: health.BreakerOptions{ConsecutiveFailures: 1}})
		l, _ := f[0].Admit(false)
		l.Done(health.Outcome{Kind: health.Failure}) // opens r0's breaker
		e := New(Policy{Attempts: 3, Deadline: time.Minute})
		a, _ := serve(e.Begin(t.Context(), Plan{Regions: f, Reason: routing.Nearest}, time.Now()), send{1: answer(200)}, true)
		if a.Index != 1 || a.Reason != routing.Unhealthy || e.Stats().Failovers != 0 {
			t.Errorf("served by r%d (%s), failovers %d; want r1 (unhealthy), no failover", a.Index, a.Reason, e.Stats().Failovers)
		}
		f.idle(t)
	})
	t.Run("full", func(t *testing.T) {
		f := newFleet(2, 1)
		l, _ := f[0].Admit(false) // r0 is full
		e := New(Policy{Attempts: 3, Deadline: time.Minute})
		a, _ := serve(e.Begin(t.Context(), Plan{Regions: f, Reason: routing.Nearest}, time.Now()), send{1: answer(200)}, true)
		if a.Index != 1 || a.Reason != routing.Spillover || e.Stats().Spillovers != 1 {
			t.Errorf("served by r%d (%s); want r1 by spillover", a.Index, a.Reason)
		}
		l.Done(health.Outcome{Kind: health.Success})
		f.idle(t)
	})
	t.Run("all full: the least loaded over capacity, unless confined", func(t *testing.T) {
		f := newFleet(2, 1)
		l0, _ := f[0].Admit(false)
		l1, _ := f[1].Admit(false)
		e := New(Policy{Attempts: 3, Deadline: time.Minute})
		if a, _ := serve(e.Begin(t.Context(), Plan{Regions: f, Confined: true}, time.Now()), send{}, true); a != nil {
			t.Errorf("a confined client was served over capacity by r%d", a.Index)
		}
		a, res := serve(e.Begin(t.Context(), Plan{Regions: f}, time.Now()), send{0: answer(200), 1: answer(200)}, true)
		if a == nil || res.Status != 200 {
			t.Errorf("not served over capacity: %v", a)
		}
		l0.Release()
		l1.Release()
		f.idle(t)
	})
}

func TestClientGoneIsNotTheRegionsFault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(2, 10)
		ctx, cancel := context.WithCancel(t.Context())
		e := New(Policy{Attempts: 3, Deadline: time.Minute, MinRetries: 1})
		time.AfterFunc(time.Second, cancel)
		a, res := serve(e.Begin(ctx, Plan{Regions: f}, time.Now()), send{}, true) // r0 hangs
		if a.Index != 0 || !errors.Is(res.Err, context.Canceled) {
			t.Errorf("r%d: %v, want r0 canceled", a.Index, res.Err)
		}
		if got := counts(f[0]); got != "0/0/0/1" {
			t.Errorf("r0 outcomes %s, want one canceled", got)
		}
		f.idle(t)
	})
}

// A region that probes declare down cancels the attempts waiting on it:
// they move on at once rather than waiting out a timeout.
func TestRegionDownMovesAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(2, 10)
		hung := make(chan struct{})
		prober := &health.Prober{Region: f[0], URL: "http://r0/v1/status", Interval: time.Second, Timeout: time.Second,
			Healthy: 2, Unhealthy: 2, Client: &http.Client{Transport: roundTrip(func(req *http.Request) (*http.Response, error) {
				select {
				case <-hung:
					<-req.Context().Done() // a hung region: never answers
					return nil, req.Context().Err()
				default:
				}
				return &http.Response{StatusCode: 200, Body: body(`{"system_health":"Healthy"}`)}, nil
			})}}
		ctx, stop := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { prober.Run(ctx) })
		synctest.Wait()
		e := New(Policy{Attempts: 3, Deadline: time.Minute, MinRetries: 1})
		start := time.Now()
		close(hung)
		a, res := serve(e.Begin(t.Context(), Plan{Regions: f}, time.Now()), send{1: answer(200)}, true)
		took := time.Since(start)
		if a.Index != 1 || res.Status != 200 || a.Reason != routing.Failover {
			t.Errorf("served by r%d with %v (%s), want r1 by failover", a.Index, res, a.Reason)
		}
		if took > 3*time.Second {
			t.Errorf("the request waited %v on the hung region, want at most 3s", took)
		}
		if e.FailoversBy(CauseDown) != 1 {
			t.Errorf("failovers by cause %v, want one region_down", e.Stats().ByCause)
		}
		stop()
		wg.Wait()
		f.idle(t)
	})
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func body(s string) *readCloser { return &readCloser{strings.NewReader(s)} }

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// handshake drives a run as the stream relay does: a hedge starts when the
// first attempt is slow; the first success wins and the others are
// cancelled; a failure with nothing pending moves on. It returns the
// winner, reported and still leased (End releases it).
func handshake(run *Run, s send, hedgeDelay time.Duration) *Attempt {
	type result struct {
		a   *Attempt
		res Result
	}
	results := make(chan result, 8)
	var pending []*Attempt
	start := func(a *Attempt) {
		pending = append(pending, a)
		f := s[a.Index]
		if f == nil {
			f = hang
		}
		go func() { results <- result{a, f(a.Context())} }()
	}
	a := run.First()
	if a == nil {
		return nil
	}
	start(a)
	hedge := time.After(hedgeDelay)
	for len(pending) > 0 {
		select {
		case <-hedge:
			if h := run.Hedge(); h != nil {
				start(h)
			}
		case r := <-results:
			pending = slices.DeleteFunc(pending, func(p *Attempt) bool { return p == r.a })
			if r.res.Err == nil && r.res.Status == 101 {
				r.a.Report(r.res)
				for _, p := range pending {
					p.Cancel(context.Canceled)
				}
				for range pending {
					l := <-results
					l.a.Done(l.res)
				}
				run.Served(r.a)
				return r.a
			}
			if len(pending) > 0 {
				run.Fail(r.a, r.res)
				continue
			}
			if next := run.Retry(r.a, r.res, true); next != nil {
				r.a.Release()
				start(next)
				continue
			}
			r.a.Done(r.res)
			return nil
		}
	}
	return nil
}

func TestHandshakes(t *testing.T) {
	tests := []struct {
		name    string
		send    send
		served  int
		took    time.Duration // on synctest's clock
		counts  []string
		hedges  uint64
		reason  routing.Reason
		byCause Cause
	}{
		{"fast", send{0: answer(101)}, 0, 0, []string{"1/0/0/0", "0/0/0/0"}, 0, routing.Nearest, 0},
		// A hedge that wins is not a failover: nothing failed.
		{"hung first region: the hedge wins after the delay", send{1: answer(101)}, 1, time.Second,
			[]string{"0/0/0/1", "1/0/0/0"}, 1, routing.Hedged, 0},
		{"slow first region: the hedge wins", send{0: slow(5*time.Second, 101), 1: slow(100*time.Millisecond, 101)}, 1, 1100 * time.Millisecond,
			[]string{"0/0/0/1", "1/0/0/0"}, 1, routing.Hedged, 0},
		{"refused at once: the next region, no hedge", send{0: answer(503), 1: answer(101)}, 1, 0,
			[]string{"0/0/1/0", "1/0/0/0"}, 0, routing.Failover, CauseUnavailable},
		// The review's bug: the first attempt fails while the hedge is
		// pending, and the hedge wins; the first lease must come back.
		{"first fails while the hedge is pending, the hedge wins", send{0: slow(1500*time.Millisecond, 500), 1: slow(time.Second, 101)}, 1, 2 * time.Second,
			[]string{"0/0/1/0", "1/0/0/0"}, 1, routing.Failover, CauseInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFleet(2, 10)
				e := New(Policy{Attempts: 3, Deadline: time.Minute, MinRetries: 10, HedgeDelay: time.Second})
				run := e.Begin(t.Context(), Plan{Regions: f, Reason: routing.Nearest}, time.Now())
				start := time.Now()
				a := handshake(run, tt.send, time.Second)
				took := time.Since(start)
				if a == nil || a.Index != tt.served || a.Reason != tt.reason {
					t.Fatalf("won by %+v, want r%d (%s)", a, tt.served, tt.reason)
				}
				if took != tt.took {
					t.Errorf("handshake took %v, want %v", took, tt.took)
				}
				if f[a.Index].InFlight() != 1 {
					t.Errorf("the winner's region holds %d, want 1 while the stream is open", f[a.Index].InFlight())
				}
				run.End()
				for i, r := range f {
					if got := counts(r); got != tt.counts[i] {
						t.Errorf("r%d outcomes %s, want %s", i, got, tt.counts[i])
					}
				}
				if got := e.Stats().Hedges; got != tt.hedges {
					t.Errorf("hedges %d, want %d", got, tt.hedges)
				}
				if tt.byCause != 0 && e.FailoversBy(tt.byCause) != 1 {
					t.Errorf("failovers by cause %v, want one %s", e.Stats().ByCause, tt.byCause)
				}
				f.idle(t)
			})
		})
	}
}

// The review's bug: a region that drops a stream after accepting it was
// recorded as a success. A failure reported after the handshake's success
// counts against the region.
func TestDropAfterHandshakeIsAFailure(t *testing.T) {
	f := newFleet(1, 10)
	e := New(Policy{Attempts: 1, Deadline: time.Minute})
	run := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
	a := run.First()
	a.Report(Result{Status: 101})
	a.Report(Result{Status: 101, Err: errReset}) // the stream dropped
	run.End()
	if got := counts(f[0]); got != "1/0/1/0" {
		t.Errorf("outcomes %s, want one success and one failure", got)
	}
	f.idle(t)
}

// However a run's attempts end, and in whatever order, End leaves every
// region as it found it.
func TestEveryLeaseReleasedOnce(t *testing.T) {
	ops := []string{"report", "release", "done", "fail", "retry", "hedge", "nothing"}
	for _, first := range ops {
		for _, second := range ops {
			t.Run(first+"-"+second, func(t *testing.T) {
				f := newFleet(3, 10)
				e := New(Policy{Attempts: 3, Deadline: time.Minute, MinRetries: 10, HedgeDelay: time.Second})
				run := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
				a := run.First()
				var extra *Attempt
				for _, op := range []string{first, second} {
					switch op {
					case "report":
						a.Report(Result{Status: 200})
					case "release":
						a.Release()
					case "done":
						a.Done(Result{Status: 503})
					case "fail":
						run.Fail(a, Result{Err: errRefused})
					case "retry":
						if n := run.Retry(a, Result{Status: 503}, true); n != nil {
							a = n
						}
					case "hedge":
						if h := run.Hedge(); h != nil {
							extra = h
						}
					}
				}
				_ = extra
				run.End()
				run.End() // harmless twice
				f.idle(t)
				if e.RetriesInProgress() != 0 {
					t.Errorf("%d budget slots still held", e.RetriesInProgress())
				}
			})
		}
	}
}

func TestRetryBudget(t *testing.T) {
	t.Run("spent: the answer stays", func(t *testing.T) {
		f := newFleet(2, 100)
		e := New(Policy{Attempts: 3, Deadline: time.Minute, Budget: 0, MinRetries: 1})
		r1 := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
		r2 := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
		a1, a2 := r1.First(), r2.First()
		if n := r1.Retry(a1, Result{Status: 503}, true); n == nil {
			t.Fatal("the first retry was denied")
		}
		if n := r2.Retry(a2, Result{Status: 503}, true); n != nil {
			t.Fatal("a second retry was allowed past the budget")
		}
		if st := e.Stats(); st.Retries != 1 || st.BudgetDenied != 1 {
			t.Errorf("stats %+v, want one retry and one denied", st)
		}
		r1.End()
		r2.End()
		f.idle(t)
	})
	t.Run("an established stream holds no slot", func(t *testing.T) {
		f := newFleet(2, 100)
		e := New(Policy{Attempts: 3, Deadline: time.Minute, Budget: 0, MinRetries: 1, HedgeDelay: time.Second})
		stream := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
		stream.First()
		if stream.Hedge() == nil {
			t.Fatal("the hedge was denied")
		}
		stream.Settle() // the handshake is done; the stream lives on
		if e.RetriesInProgress() != 0 {
			t.Errorf("%d slots held by an established stream", e.RetriesInProgress())
		}
		other := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
		if n := other.Retry(other.First(), Result{Status: 503}, true); n == nil {
			t.Error("a retry was denied while a stream that once hedged is open")
		}
		other.End()
		stream.End()
		f.idle(t)
	})
	t.Run("a retry waits for a slot", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFleet(2, 100)
			e := New(Policy{Attempts: 3, Deadline: time.Minute, Budget: 0, MinRetries: 1, BudgetWait: time.Second})
			r1 := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
			r2 := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
			a1, a2 := r1.First(), r2.First()
			r1.Retry(a1, Result{Status: 503}, true)
			time.AfterFunc(300*time.Millisecond, r1.End) // its retry ends
			start := time.Now()
			if n := r2.Retry(a2, Result{Status: 503}, true); n == nil {
				t.Fatal("the waiting retry was denied")
			}
			if took := time.Since(start); took != 300*time.Millisecond {
				t.Errorf("waited %v, want 300ms", took)
			}
			r2.End()
			f.idle(t)
		})
	})
}

// A region declared down cuts every attempt waiting on it at once: their
// replays are not charged to the retry budget, nor bounded by the deadline
// (a long transcription may have been running for minutes).
func TestRegionDownReplaysAreFree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(2, 1000)
		e := New(Policy{Attempts: 3, Deadline: 30 * time.Second, Budget: 0, MinRetries: 0})
		var runs []*Run
		for range 50 {
			runs = append(runs, e.Begin(t.Context(), Plan{Regions: f}, time.Now()))
		}
		time.Sleep(time.Minute) // the requests have been running past the deadline
		moved := 0
		for _, r := range runs {
			a := r.First()
			if next := r.Retry(a, Result{Err: health.ErrDown}, true); next != nil && next.Index == 1 {
				a.Release()
				moved++
			}
		}
		if moved != 50 {
			t.Errorf("%d of 50 requests replayed after their region went down, want all", moved)
		}
		// An ordinary failure still needs the budget (none here).
		r := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
		if next := r.Retry(r.First(), Result{Status: 503}, true); next != nil {
			t.Error("a 503 was retried with no budget")
		}
		r.End()
		for _, r := range runs {
			r.End()
		}
		f.idle(t)
	})
}

// When every region is full, the last resort goes over capacity on the
// least loaded one, but on a region that asked for no work (429 with
// Retry-After) only after every other.
func TestLastResortAvoidsBusyRegions(t *testing.T) {
	f := newFleet(2, 2)
	l0, _ := f[0].Admit(false)
	l0.Done(health.Outcome{Kind: health.Full, Status: 429, RetryAfter: time.Minute}) // r0: busy, empty
	a1, _ := f[1].Admit(false)
	b1, _ := f[1].Admit(false) // r1: full, loaded
	e := New(Policy{Attempts: 3, Deadline: time.Minute})
	run := e.Begin(t.Context(), Plan{Regions: f}, time.Now())
	if a := run.First(); a == nil || a.Index != 1 {
		t.Errorf("last resort went to %+v, want r1 (r0 asked for no work)", a)
	}
	run.End()
	a1.Release()
	b1.Release()
	f.idle(t)
}
