package server

// The failure matrix over real sockets: every fault a region can have,
// applied to us-east (the first choice of an unlocated client, through its
// chaos proxy or its simulated engine), against every kind of work a client
// can have there, with the router on its DEFAULT health checks, retries and
// timeouts. What the client sees:
//
//	fault                 pre-recorded (POST /v1/listen)         new stream (WS /v1/listen)           stream open on us-east before the fault
//	--------------------  -------------------------------------  -----------------------------------  ----------------------------------------
//	killed                200 + full transcript from another     101 from another region at once,     moves to another region: every word
//	                      region at once; "failover" while it    every word, 1000                     once, 1000
//	                      is tried, "unhealthy" once it is
//	                      known down (no failover counted)
//	hung                  200 + full transcript, none more than  101 within 2 s (hedged after 1 s),   moves within 5 s (region ping/pong or
//	                      5 s slower than healthy: probes        every word, 1000                     probes): every word once, 1000; never
//	                      declare it down in ~3 s and the                                             a silent stall
//	                      requests waiting on it are replayed
//	503 storm             200 + full transcript from another     101 from another region at once,     unaffected: every word, 1000 (probes
//	429                   region at once                         every word, 1000                     that see "Critical" only stop new work)
//	500
//	250 ms slower         200 + full transcript; within 10 s     succeeds (slower); within 10 s new   unaffected (slower): every word, 1000
//	                      new requests leave us-east             streams leave us-east
//	                      ("latency"), within 10 s of recovery
//	                      they are back ("fallback": unlocated)
//	flapping              every request 200 + full transcript    every stream succeeds                moves at the kill: every word, 1000
//	reset mid-response    200 + full transcript from another     after 10 B: 101 from another region  unaffected (only new connections are
//	(after 10 B, 250 B)   region at once (a transcript is read   at once, every word, 1000; after     reset)
//	                      whole before it is passed on)          250 B (inside the first frame after
//	                                                             the 101): the stream is open on
//	                                                             us-east and moves, as an open
//	                                                             stream on a killed region
//	accepts then closes   200 + full transcript from another     101 from another region at once,     unaffected (only new connections are
//	                      region at once                         every word, 1000                     closed)
//
// Where us-east refuses new work (killed, 503/429/500, resets, accepts then
// closes), the route reason of work served elsewhere is "failover" exactly
// when it had a failed attempt at us-east (otherwise "unhealthy" or, after a
// 429's Retry-After, "spillover"). After every case no region holds a lease.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/internal/chaos"
	"github.com/earshot/earshot/sim"
)

const (
	// mxAtOnce is what "at once" may cost beyond a healthy request: no
	// timeout, hedge (1 s) or probe round was waited for.
	mxAtOnce = 500 * time.Millisecond
	// mxHungExtra is the most a hung region may add to a request.
	mxHungExtra = 5 * time.Second
	// mxHedged bounds a stream handshake while the first region hangs.
	mxHedged = 2 * time.Second
	// mxStreamEnd bounds how long an open stream on a dead or hung region
	// may go without its words.
	mxStreamEnd = 5 * time.Second
	// mxReroute bounds how long a slow region keeps (or goes without) new work.
	mxReroute = 10 * time.Second
	// mxRecovered bounds how long a region healthy again goes without work.
	mxRecovered = 5 * time.Second
)

// mxRegions are failoverRegions' four regions: us-east is first for an
// unlocated client.
var mxRegions = []struct {
	name     string
	lat, lon float64
}{
	{"us-east", 39.04, -77.49},
	{"us-west", 45.60, -121.18},
	{"eu-west", 53.35, -6.26},
	{"ap-south", 19.08, 72.88},
}

var (
	mxAudio = sim.WAV(sim.Synthesize(testWords, 16000, 2), 16000, 1) // pre-recorded
	mxPCM   = mxAudio[44:]                                           // streamed
)

// mxKind is how a fault is exercised.
type mxKind int

const (
	mxRefused  mxKind = iota // us-east takes no new work at all
	mxHung                   // us-east accepts and never answers
	mxSlow                   // us-east answers 250 ms later
	mxFlapping               // us-east dies and comes back, over and over
)

// mxOpen is what a stream already open on us-east must see.
type mxOpen int

const (
	mxUnaffected mxOpen = iota // every word and 1000
	mxMoved                    // moved to another region: every word and 1000
)

type mxFault struct {
	name    string
	kind    mxKind
	east    sim.Options // us-east's engine
	inflict func(e *mxEnv)
	// newConnsOnly: the fault touches only connections made after it, so
	// no pre-recorded request may go to us-east before it (it would leave
	// a healthy pooled connection behind).
	newConnsOnly bool
	// refusing: the engine answers its probes "Critical", so probes take
	// us-east out of rotation although it answers.
	refusing bool
	// cutAfterHandshake: a new stream's handshake completes on us-east and
	// the connection is cut inside the first frame: the stream is open
	// there, so it ends 1011 like an open stream on a killed region (the
	// next step moves it instead).
	cutAfterHandshake bool
	open              mxOpen
}

func mxChaos(f chaos.Fault) func(*mxEnv) { return func(e *mxEnv) { e.proxies[0].Set(f) } }

func mxRefuse(e *mxEnv) { e.sims[0].SetMode(sim.ModeRefuse) }

func mxFaults() []mxFault {
	return []mxFault{
		{name: "killed", kind: mxRefused, inflict: mxChaos(chaos.Kill()), open: mxMoved},
		{name: "hung", kind: mxHung, inflict: mxChaos(chaos.Hang()), open: mxMoved},
		{name: "503-storm", kind: mxRefused, east: sim.Options{FullStatus: 503}, inflict: mxRefuse, refusing: true},
		{name: "429", kind: mxRefused, east: sim.Options{FullStatus: 429}, inflict: mxRefuse, refusing: true},
		{name: "500", kind: mxRefused, east: sim.Options{FullStatus: 500}, inflict: mxRefuse, refusing: true},
		{name: "250ms-slower", kind: mxSlow, inflict: mxChaos(chaos.Slow(250 * time.Millisecond))},
		{name: "flapping", kind: mxFlapping, inflict: mxChaos(chaos.Kill()), open: mxMoved},
		// 10 bytes cuts the status line; 250 is past the ~185 bytes of
		// headers of a keep-alive answer, inside its 733-byte body (for a
		// stream: past the ~186-byte 101, inside the first frame).
		{name: "reset-after-10B", kind: mxRefused, inflict: mxChaos(chaos.ResetAfter(10)), newConnsOnly: true},
		{name: "reset-after-250B", kind: mxRefused, inflict: mxChaos(chaos.ResetAfter(250)), newConnsOnly: true, cutAfterHandshake: true},
		{name: "accepts-then-closes", kind: mxRefused, inflict: mxChaos(chaos.AcceptThenClose()), newConnsOnly: true},
	}
}

// TestFailureMatrix applies each fault to us-east while a client does each
// kind of work, and checks what the client sees (see the table above).
func TestFailureMatrix(t *testing.T) {
	modes := []struct {
		name string
		run  func(*testing.T, mxFault)
	}{
		{"pre-recorded", mxPrerecorded},
		{"new-stream", mxNewStream},
		{"open-stream", mxOpenStream},
	}
	for _, f := range mxFaults() {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			for _, m := range modes {
				t.Run(m.name, func(t *testing.T) {
					t.Parallel()
					m.run(t, f)
				})
			}
		})
	}
}

// mxEnv is four simulated engines, each behind a chaos proxy, and a router
// in front of them with the default health, retry and timeout settings.
type mxEnv struct {
	t       *testing.T
	r       *router
	sims    []*sim.Server
	proxies []*chaos.Proxy
	client  *http.Client
	extra   string   // the router's config before regions
	lines   []string // each region's config line
}

func newMxEnv(t *testing.T, east sim.Options) *mxEnv { return newMxEnvWith(t, east, "") }

// newMxEnvWith is newMxEnv with extra router config.
func newMxEnvWith(t *testing.T, east sim.Options, extra string) *mxEnv {
	t.Helper()
	e := &mxEnv{t: t}
	var regions strings.Builder
	for i, reg := range mxRegions {
		o := sim.Options{}
		if i == 0 {
			o = east
		}
		o.Region = reg.name
		s, err := sim.Start("127.0.0.1:0", o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		p, err := chaos.Start(s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("chaos proxy of %s: %v", reg.name, err)
			}
		})
		e.sims, e.proxies = append(e.sims, s), append(e.proxies, p)
		line := fmt.Sprintf("  - {name: %s, url: %s, location: {lat: %v, lon: %v}}\n", reg.name, p.URL(), reg.lat, reg.lon)
		e.lines = append(e.lines, line)
		regions.WriteString(line)
	}
	tr := &http.Transport{}
	e.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	e.extra = extra
	e.r = startRouter(t, "log: {level: info}\n"+extra+"\nregions:\n"+regions.String())
	// A router that has been running: every region has answered a probe,
	// so its usual round trip is known before any fault.
	for i, reg := range mxRegions {
		h := e.region(i)
		if strings.Contains(extra, "disable: true") {
			break
		}
		if _, ok := mxEventually(5*time.Second, func() bool { _, res := h.Probe(); return res.OK }); !ok {
			t.Fatalf("no successful probe of %s", reg.name)
		}
	}
	// Runs before the router stops (cleanups run last first).
	t.Cleanup(func() {
		e.noLeases(t)
		if t.Failed() {
			e.dumpLogs()
		}
	})
	return e
}

// region is the health of region i (mxRegions order).
func (e *mxEnv) region(i int) *health.Region { return e.r.srv.live().regions[i].health }

func (e *mxEnv) east() *health.Region { return e.region(0) }

// eastAttempts is how many attempts us-east has had an outcome for.
func (e *mxEnv) eastAttempts() uint64 {
	h := e.east()
	return h.Count(health.Success) + h.Count(health.Full) + h.Count(health.Failure) + h.Count(health.Canceled)
}

// eastTiming is what the router measures of us-east's speed, for logs.
func (e *mxEnv) eastTiming() string {
	h := e.east()
	return fmt.Sprintf("probe slowdown %v, smoothed latency %v", h.Slowdown().Round(time.Millisecond), h.Latency().Round(time.Millisecond))
}

// noLeases checks that no region holds a lease: every attempt was released.
func (e *mxEnv) noLeases(t *testing.T) {
	t.Helper()
	live := e.r.srv.live()
	for _, r := range slices.Concat(live.regions, live.draining) {
		h := r.health
		if _, ok := mxEventually(5*time.Second, func() bool { return h.InFlight() == 0 }); !ok {
			t.Errorf("%s still holds %d leases 5s after the work ended", r.name, h.InFlight())
		}
	}
}

// dumpLogs shows what the router logged, for diagnosing a failure: every
// entry but the access lines, and the last access lines.
func (e *mxEnv) dumpLogs() {
	const mostAccess = 40
	all := e.r.logs.All()
	access := 0
	for _, le := range all {
		if le.Message == "access" {
			access++
		}
	}
	for _, le := range all {
		if le.Message == "access" {
			if access--; access >= mostAccess {
				continue
			}
		}
		e.t.Logf("router log %s %-5s %s %v", le.Time.Format("15:04:05.000"), le.Level, le.Message, le.ContextMap())
	}
}

// mxEventually polls cond until it holds or within passes, and reports how
// long it took.
func mxEventually(within time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Since(start) > within {
			return time.Since(start), false
		}
		<-tick.C
	}
	return time.Since(start), true
}

// mxReply is what a pre-recorded request got.
type mxReply struct {
	status         int
	region, reason string
	took           time.Duration
	err            error  // nil: 200 with the full transcript
	eastTries      uint64 // us-east attempts during the request (meaningful for requests made one at a time)
}

func (r mxReply) String() string {
	s := fmt.Sprintf("%d from %s/%s in %v", r.status, r.region, r.reason, r.took.Round(time.Millisecond))
	if r.eastTries > 0 {
		s += fmt.Sprintf(" (%d us-east attempts)", r.eastTries)
	}
	if r.err != nil {
		s += ": " + r.err.Error()
	}
	return s
}

// post sends the test audio for pre-recorded transcription.
func (e *mxEnv) post() mxReply {
	before := e.eastAttempts()
	start := time.Now()
	resp, err := e.client.Post(e.r.url("/v1/listen"), "audio/wav", bytes.NewReader(mxAudio))
	var rep mxReply
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		rep.status = resp.StatusCode
		rep.region, rep.reason = resp.Header.Get("X-Earshot-Region"), resp.Header.Get("X-Earshot-Route")
		switch {
		case err != nil:
			err = fmt.Errorf("reading the body: %w", err)
		case resp.StatusCode != http.StatusOK:
			err = fmt.Errorf("body %s", bytes.TrimSpace(body))
		default:
			err = transcriptIs(testTranscript)(body)
		}
	}
	rep.took, rep.err = time.Since(start), err
	rep.eastTries = e.eastAttempts() - before
	return rep
}

// checkReason: the route says "failover" exactly when us-east was tried
// and failed (for a request served elsewhere, made while nothing else ran).
func checkReason(t *testing.T, what string, rep mxReply) {
	t.Helper()
	if rep.region == "us-east" || rep.region == "" {
		return
	}
	if rep.eastTries > 0 && rep.reason != "failover" {
		t.Errorf("%s: %v: us-east was tried and failed, but the route says %q, want failover", what, rep, rep.reason)
	}
	if rep.eastTries == 0 && rep.reason == "failover" {
		t.Errorf("%s: %v: says failover, but no attempt failed (us-east was skipped)", what, rep)
	}
}

// healthy sends a request before the fault: us-east serves it, as the
// fallback of an unlocated client.
func (e *mxEnv) healthy(t *testing.T) mxReply {
	t.Helper()
	rep := e.post()
	if rep.err != nil || rep.region != "us-east" || rep.reason != "fallback" {
		t.Fatalf("before the fault: %v, want 200 from us-east/fallback", rep)
	}
	return rep
}

func mxPrerecorded(t *testing.T, f mxFault) {
	e := newMxEnv(t, f.east)
	switch f.kind {
	case mxRefused:
		mxPrerecordedRefused(t, e, f)
	case mxHung:
		mxPrerecordedHung(t, e, f)
	case mxSlow:
		mxPrerecordedSlow(t, e, f)
	case mxFlapping:
		mxPrerecordedFlapping(t, e)
	}
}

// mxPrerecordedRefused: every request is served by another region at once.
func mxPrerecordedRefused(t *testing.T, e *mxEnv, f mxFault) {
	var base time.Duration
	if !f.newConnsOnly {
		base = e.healthy(t).took
	}
	f.inflict(e)
	faultAt := time.Now()
	var took []time.Duration
	for i := range 8 {
		rep := e.post()
		took = append(took, rep.took.Round(time.Millisecond))
		what := fmt.Sprintf("request %d after the fault", i)
		if rep.err != nil || rep.region == "us-east" || rep.region == "" {
			t.Errorf("%s: %v, want 200 with the full transcript from another region", what, rep)
		} else if rep.took > base+mxAtOnce {
			t.Errorf("%s: %v: took %v, healthy took %v: not at once", what, rep, rep.took, base)
		}
		checkReason(t, what, rep)
		t.Logf("%s: %v", what, rep)
	}
	t.Logf("request times after the fault: %v (healthy: %v); failovers by cause %v", took, base.Round(time.Millisecond), e.r.srv.proxy.Stats().ByCause)
	if f.name == "killed" {
		mxSkipsKnownDown(t, e, faultAt)
	}
	// Healthy again: us-east takes traffic within 5 s.
	e.proxies[0].Set(chaos.Pass())
	e.sims[0].SetMode(sim.ModeOK)
	back, d, ok := e.pollUntil(t, "after the fault ended", func(r mxReply) bool { return r.region == "us-east" })
	if !ok || d > mxRecovered {
		t.Errorf("us-east took no traffic %v after it was healthy again (last: %v), want within %v", d, back, mxRecovered)
	} else {
		t.Logf("us-east took traffic again %v after the fault ended", d.Round(time.Millisecond))
	}
}

// mxSkipsKnownDown checks that once us-east is known to be down, requests
// skip it: they say unhealthy and are not failovers.
func mxSkipsKnownDown(t *testing.T, e *mxEnv, faultAt time.Time) {
	if _, ok := mxEventually(5*time.Second, func() bool { return !e.east().InRotation() }); !ok {
		t.Fatalf("us-east still in rotation %v after the kill", time.Since(faultAt))
	}
	probe, _ := e.east().Probe()
	t.Logf("us-east out of rotation %v after the kill (breaker %s, probes %s)", time.Since(faultAt).Round(time.Millisecond), e.east().Breaker(), probe)
	failovers := e.r.srv.proxy.Stats().Failovers
	for i := range 5 {
		rep := e.post()
		what := fmt.Sprintf("request %d once us-east is down", i)
		if rep.err != nil || rep.region == "us-east" || rep.reason != "unhealthy" {
			t.Errorf("%s: %v, want 200 with the full transcript from another region, route unhealthy", what, rep)
		}
		checkReason(t, what, rep)
	}
	if got := e.r.srv.proxy.Stats().Failovers; got != failovers {
		t.Errorf("failovers went from %d to %d for requests that skipped a region already down", failovers, got)
	}
}

// mxPrerecordedHung: us-east hangs with a request in flight and takes new
// ones; none fails, and none waits more than mxHungExtra for it.
func mxPrerecordedHung(t *testing.T, e *mxEnv, f mxFault) {
	base := e.healthy(t).took
	eng := e.sims[0].Engine()
	// Hold the next answer long enough to hang the region under it.
	eng.SetLatency(500 * time.Millisecond)
	inflight := make(chan mxReply, 1)
	go func() { inflight <- e.post() }()
	if _, ok := mxEventually(5*time.Second, func() bool { b, _ := eng.Active(); return b > 0 }); !ok {
		t.Fatal("the request never reached us-east")
	}
	f.inflict(e)
	hungAt := time.Now()
	eng.SetLatency(0)
	var reps []mxReply
	for range 4 {
		reps = append(reps, e.post())
	}
	var first mxReply
	select {
	case first = <-inflight:
	case <-time.After(30 * time.Second):
		t.Fatal("the request in flight when us-east hung never ended")
	}
	downFor := "not declared down"
	if st, res := e.east().Probe(); st == health.ProbeDown {
		downFor = fmt.Sprintf("probes say down (last probe: %s)", res.Err)
	}
	t.Logf("healthy request: %v; us-east hung %v ago, %s", base.Round(time.Millisecond), time.Since(hungAt).Round(time.Millisecond), downFor)
	for i, rep := range append([]mxReply{first}, reps...) {
		what := "the request in flight when us-east hung"
		if i > 0 {
			what = fmt.Sprintf("new request %d while us-east hangs", i-1)
		}
		t.Logf("%s: %v (%v slower than healthy)", what, rep, (rep.took - base).Round(time.Millisecond))
		if rep.err != nil || rep.region == "us-east" || rep.region == "" {
			t.Errorf("%s: %v, want 200 with the full transcript from another region", what, rep)
		}
		if rep.took-base > mxHungExtra {
			t.Errorf("%s: took %v, more than %v longer than a healthy request (%v)", what, rep.took, mxHungExtra, base)
		}
	}
}

// mxPrerecordedSlow: requests keep succeeding; new ones leave us-east for
// latency within mxReroute, and come back within mxReroute of recovery.
func mxPrerecordedSlow(t *testing.T, e *mxEnv, f mxFault) {
	e.healthy(t)
	f.inflict(e)
	moved, took, ok := e.pollUntil(t, "after the slowdown", func(r mxReply) bool { return r.region != "us-east" })
	if !ok {
		t.Fatalf("new requests still go to us-east %v after it slowed down by 250ms (last: %v; slowdown seen %v, latency %v)",
			took, moved, e.east().Slowdown(), e.east().Latency())
	}
	t.Logf("new requests left us-east %v after the slowdown: %v (us-east %s)", took.Round(time.Millisecond), moved, e.eastTiming())
	if moved.reason != "latency" {
		t.Errorf("moved off the slow us-east: %v, want route reason latency", moved)
	}
	e.proxies[0].Set(chaos.Pass())
	back, took, ok := e.pollUntil(t, "after recovery", func(r mxReply) bool { return r.region == "us-east" })
	if !ok {
		t.Fatalf("new requests not back on us-east %v after it recovered (last: %v; slowdown seen %v, latency %v)",
			took, back, e.east().Slowdown(), e.east().Latency())
	}
	t.Logf("new requests back on us-east %v after recovery: %v (us-east %s)", took.Round(time.Millisecond), back, e.eastTiming())
	if back.reason != "fallback" { // the unlocated client's reason when nothing moved it
		t.Errorf("back on us-east: %v, want route reason fallback", back)
	}
}

// pollUntil sends requests until done holds for one, for at most
// mxReroute; every request must succeed.
func (e *mxEnv) pollUntil(t *testing.T, what string, done func(mxReply) bool) (mxReply, time.Duration, bool) {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		rep := e.post()
		if rep.err != nil {
			t.Errorf("request %d %s: %v", n, what, rep)
		}
		if done(rep) {
			return rep, time.Since(start), true
		}
		if time.Since(start) > mxReroute {
			return rep, time.Since(start), false
		}
		<-tick.C
	}
}

// mxPrerecordedFlapping: while four clients send, us-east is killed once
// it has served a few requests since it was last revived, and revived a few
// requests after it was killed, for longer than the breaker's open period
// (so it comes back into rotation and dies again under traffic); every
// request succeeds.
func mxPrerecordedFlapping(t *testing.T, e *mxEnv) {
	const workers, every, span = 4, 6, 6 * time.Second
	start := time.Now()
	var (
		mu          sync.Mutex
		alive       = true
		since       int // requests since the last revival (served by us-east) or kill (all)
		kills, n    int
		failures    []string
		regions     = map[string]int{}
		reasons     = map[string]int{}
		slowest     time.Duration
		firstKillAt time.Time
	)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Since(start) < span {
				rep := e.post()
				mu.Lock()
				n++
				regions[rep.region]++
				reasons[rep.reason]++
				slowest = max(slowest, rep.took)
				if rep.err != nil {
					failures = append(failures, rep.String())
				}
				switch {
				case alive && rep.region == "us-east":
					if since++; since >= every {
						e.proxies[0].Set(chaos.Kill())
						alive, since = false, 0
						if kills++; kills == 1 {
							firstKillAt = time.Now()
						}
					}
				case !alive:
					if since++; since >= every {
						e.proxies[0].Set(chaos.Pass())
						alive, since = true, 0
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	e.proxies[0].Set(chaos.Pass())
	t.Logf("us-east killed %d times (first %v in) over %d requests in %v: regions %v, reasons %v, slowest %v; breaker changes %d, failovers by cause %v",
		kills, firstKillAt.Sub(start).Round(time.Millisecond), n, time.Since(start).Round(time.Millisecond), regions, reasons,
		slowest.Round(time.Millisecond), e.r.logs.FilterMessage("circuit breaker").Len(), e.r.srv.proxy.Stats().ByCause)
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed while us-east flapped; first: %s", len(failures), n, failures[0])
	}
}

// mxStream is a client's stream through the router, read by its own
// goroutine.
type mxStream struct {
	c              *websocket.Conn
	region, reason string
	handshake      time.Duration
	eastTries      uint64

	first chan struct{} // closed at the first final result with words
	all   chan struct{} // closed once every word has come
	done  chan struct{} // closed when the stream has ended

	mu     sync.Mutex
	words  []string
	endErr error     // the read error that ended it
	endAt  time.Time // when
}

var mxDialer = websocket.Dialer{HandshakeTimeout: 15 * time.Second}

// dial opens a stream.
func (e *mxEnv) dial(t *testing.T) (*mxStream, error) {
	before := e.eastAttempts()
	start := time.Now()
	c, resp, err := mxDialer.Dial(e.r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), nil)
	took := time.Since(start)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			return nil, fmt.Errorf("handshake failed after %v: %w: %d from %s/%s %s", took, err, resp.StatusCode,
				resp.Header.Get("X-Earshot-Region"), resp.Header.Get("X-Earshot-Route"), body)
		}
		return nil, fmt.Errorf("handshake failed after %v: %w", took, err)
	}
	s := &mxStream{c: c, handshake: took, eastTries: e.eastAttempts() - before,
		region: resp.Header.Get("X-Earshot-Region"), reason: resp.Header.Get("X-Earshot-Route"),
		first: make(chan struct{}), all: make(chan struct{}), done: make(chan struct{})}
	go s.read()
	t.Cleanup(func() {
		_ = c.Close()
		<-s.done
	})
	return s, nil
}

func (s *mxStream) read() {
	defer close(s.done)
	_ = s.c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a safety net; the tests wait less
	first, all := false, false
	for {
		_, data, err := s.c.ReadMessage()
		if err != nil {
			s.mu.Lock()
			s.endErr, s.endAt = err, time.Now()
			s.mu.Unlock()
			return
		}
		var m message
		if json.Unmarshal(data, &m) != nil || m.Type != "Results" || !m.IsFinal || m.transcript() == "" {
			continue
		}
		s.mu.Lock()
		s.words = append(s.words, m.transcript())
		got := strings.Join(s.words, " ")
		s.mu.Unlock()
		if !first {
			first = true
			close(s.first)
		}
		if !all && got == testTranscript {
			all = true
			close(s.all)
		}
	}
}

func (s *mxStream) send(pcm []byte) error {
	for len(pcm) > 0 {
		k := min(3200, len(pcm))
		if err := s.c.WriteMessage(websocket.BinaryMessage, pcm[:k]); err != nil {
			return err
		}
		pcm = pcm[k:]
	}
	return nil
}

func (s *mxStream) closeStream() error {
	return s.c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
}

// ended waits up to d for the stream to end.
func (s *mxStream) ended(d time.Duration) bool {
	select {
	case <-s.done:
		return true
	case <-time.After(d):
		return false
	}
}

// end is how the stream ended: the close code and reason (0 if the socket
// died without a close frame), the words heard and when.
func (s *mxStream) end() (code int, reason, words string, at time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ce *websocket.CloseError
	if errors.As(s.endErr, &ce) {
		code, reason = ce.Code, ce.Text
	}
	return code, reason, strings.Join(s.words, " "), s.endAt, s.endErr
}

// finish sends the rest of the audio (from) and CloseStream, and checks
// that every word comes back and the stream closes with 1000.
func (s *mxStream) finish(from int) error {
	if err := s.send(mxPCM[from:]); err != nil {
		return fmt.Errorf("sending audio: %w", err)
	}
	select {
	case <-s.all:
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	// A stream that has already ended cannot take CloseStream: how it
	// ended is the answer.
	_ = s.closeStream()
	if !s.ended(10 * time.Second) {
		return errors.New("no close 10s after CloseStream")
	}
	code, reason, words, _, err := s.end()
	if code != websocket.CloseNormalClosure || words != testTranscript {
		return fmt.Errorf("stream ended with %d %q (%v) after %q, want 1000 after %q", code, reason, err, words, testTranscript)
	}
	return nil
}

func (s *mxStream) String() string {
	return fmt.Sprintf("stream from %s/%s (handshake %v)", s.region, s.reason, s.handshake.Round(time.Millisecond))
}

func mxNewStream(t *testing.T, f mxFault) {
	e := newMxEnv(t, f.east)
	switch f.kind {
	case mxRefused:
		f.inflict(e)
		for i := range 3 {
			what := fmt.Sprintf("stream %d after the fault", i)
			s, err := e.dial(t)
			if err != nil {
				t.Errorf("%s: %v", what, err)
				continue
			}
			t.Logf("%s: %v", what, s)
			if f.cutAfterHandshake {
				// Cut inside the first frame after the 101: the stream is
				// open on us-east and moves to another region.
				if s.region != "us-east" {
					t.Errorf("%s: %v, want the handshake to complete on us-east", what, s)
				}
				if err := s.finish(0); err != nil {
					t.Errorf("%s: %v: %v", what, s, err)
				}
				continue
			}
			if s.region == "us-east" || s.region == "" {
				t.Errorf("%s: %v, want another region", what, s)
			}
			if s.handshake > mxAtOnce {
				t.Errorf("%s: %v: not at once", what, s)
			}
			checkReason(t, what, mxReply{region: s.region, reason: s.reason, eastTries: s.eastTries})
			if err := s.finish(0); err != nil {
				t.Errorf("%s: %v: %v", what, s, err)
			}
		}
	case mxHung:
		f.inflict(e)
		s, err := e.dial(t)
		if err != nil {
			t.Fatalf("stream while us-east hangs: %v", err)
		}
		t.Logf("stream while us-east hangs: %v", s)
		if s.region == "us-east" || s.region == "" {
			t.Errorf("stream while us-east hangs: %v, want another region", s)
		}
		if s.handshake > mxHedged {
			t.Errorf("stream while us-east hangs: handshake took %v, want under %v (hedged)", s.handshake, mxHedged)
		}
		if err := s.finish(0); err != nil {
			t.Errorf("stream while us-east hangs: %v: %v", s, err)
		}
	case mxSlow:
		f.inflict(e)
		slowAt := time.Now()
		s, err := e.dial(t)
		if err != nil {
			t.Fatalf("stream right after the slowdown: %v", err)
		}
		t.Logf("stream right after the slowdown: %v", s)
		if err := s.finish(0); err != nil {
			t.Errorf("stream right after the slowdown: %v: %v", s, err)
		}
		for n := 0; ; n++ {
			s, err := e.dial(t)
			if err != nil {
				t.Fatalf("stream %d after the slowdown: %v", n, err)
			}
			if err := s.finish(0); err != nil {
				t.Errorf("stream %d after the slowdown: %v: %v", n, s, err)
			}
			if s.region != "us-east" {
				t.Logf("new streams left us-east %v after the slowdown: %v (us-east %s)", time.Since(slowAt).Round(time.Millisecond), s, e.eastTiming())
				break
			}
			if time.Since(slowAt) > mxReroute {
				t.Fatalf("new streams still go to us-east %v after it slowed down by 250ms: %v", time.Since(slowAt), s)
			}
		}
	case mxFlapping:
		for i := range 8 {
			if i%2 == 0 {
				if i%4 == 0 {
					e.proxies[0].Set(chaos.Kill())
				} else {
					e.proxies[0].Set(chaos.Pass())
				}
			}
			what := fmt.Sprintf("stream %d while us-east flaps (%v)", i, e.proxies[0].Fault())
			s, err := e.dial(t)
			if err != nil {
				t.Errorf("%s: %v", what, err)
				continue
			}
			t.Logf("%s: %v", what, s)
			if err := s.finish(0); err != nil {
				t.Errorf("%s: %v: %v", what, s, err)
			}
		}
	}
}

func mxOpenStream(t *testing.T, f mxFault) {
	e := newMxEnv(t, f.east)
	s, err := e.dial(t)
	if err != nil {
		t.Fatalf("opening the stream: %v", err)
	}
	if s.region != "us-east" {
		t.Fatalf("the stream opened on %s/%s, want us-east", s.region, s.reason)
	}
	half := len(mxPCM) / 2
	if err := s.send(mxPCM[:half]); err != nil {
		t.Fatalf("sending the first half: %v", err)
	}
	select {
	case <-s.first:
	case <-s.done:
		code, reason, _, _, err := s.end()
		t.Fatalf("the stream ended before the fault: %d %q (%v)", code, reason, err)
	case <-time.After(5 * time.Second):
		t.Fatal("no result from us-east before the fault")
	}

	f.inflict(e)
	faultAt := time.Now()
	if f.refusing {
		// Probes see "Critical" and take us-east out of rotation; that
		// must not cut the stream.
		d, ok := mxEventually(5*time.Second, func() bool { st, _ := e.east().Probe(); return st == health.ProbeDown })
		if !ok {
			t.Fatal("probes never took the refusing us-east out of rotation")
		}
		t.Logf("probes took us-east out %v after the fault; the stream is still open", d.Round(time.Millisecond))
	}

	switch f.open {
	case mxUnaffected:
		if err := s.finish(half); err != nil {
			t.Errorf("the stream open on us-east through the fault: %v", err)
		} else {
			t.Logf("the stream open on us-east completed %v after the fault", time.Since(faultAt).Round(time.Millisecond))
		}
	case mxMoved:
		// The stream moves to another region: the client keeps its
		// socket and gets every word once, then 1000.
		if f.kind == mxFlapping {
			for _, fl := range []chaos.Fault{chaos.Pass(), chaos.Kill(), chaos.Pass()} {
				e.proxies[0].Set(fl)
			}
		}
		if err := s.finish(half); err != nil {
			t.Errorf("the stream open on us-east through the fault: %v", err)
		} else {
			t.Logf("the stream open on us-east moved and completed %v after the fault", time.Since(faultAt).Round(time.Millisecond))
		}
		if mv := e.r.srv.proxy.Resumes(); len(mv.Moves) == 0 {
			t.Errorf("no stream was moved: %+v", mv)
		}
	}
}

// TestRegionPingFindsHungStream checks the stream's own watch, without
// probes: a region leg that goes silent is pinged after region_ping and
// lost when no pong comes within as long again; the region is charged a
// failure. A stream that can move (raw audio) moves; one that cannot ends
// 1011 saying why.
func TestRegionPingFindsHungStream(t *testing.T) {
	for _, tt := range []struct {
		name   string
		resume string
	}{{"moves", "30s"}, {"cannot move", "0s"}} {
		t.Run(tt.name, func(t *testing.T) {
			e := newMxEnvWith(t, sim.Options{}, "health: {probe: {disable: true}}\ntimeouts: {region_ping: 200ms}\nretry: {resume_log: "+tt.resume+"}")
			s, err := e.dial(t)
			if err != nil {
				t.Fatal(err)
			}
			half := len(mxPCM) / 2
			if err := s.send(mxPCM[:half]); err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.first:
			case <-time.After(5 * time.Second):
				t.Fatal("no result before the hang")
			}
			e.proxies[0].Set(chaos.Hang())
			hungAt := time.Now()
			if tt.resume != "0s" {
				if err := s.finish(half); err != nil {
					t.Fatal(err)
				}
				t.Logf("every word back %v after the hang", time.Since(hungAt).Round(time.Millisecond))
			} else {
				_ = s.send(mxPCM[half:])
				if !s.ended(5 * time.Second) {
					t.Fatal("the stream on the hung region is still open after 5s")
				}
				code, reason, _, at, _ := s.end()
				t.Logf("ended %v after the hang: %d %q", at.Sub(hungAt).Round(time.Millisecond), code, reason)
				if code != websocket.CloseInternalServerErr || !strings.Contains(reason, "no pong") {
					t.Errorf("ended with %d %q, want 1011 saying no pong came", code, reason)
				}
				if took := at.Sub(hungAt); took > time.Second {
					t.Errorf("found %v after the hang, want within two ping intervals (400ms) and some slack", took)
				}
			}
			if _, ok := mxEventually(5*time.Second, func() bool { return e.east().Count(health.Failure) == 1 }); !ok {
				t.Errorf("us-east failures %d, want the hung stream counted once", e.east().Count(health.Failure))
			}
		})
	}
}
