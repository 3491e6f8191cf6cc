package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/sim"
)

// failoverRegions is four simulated regions, us-east first for every
// (unlocated) client, with the given extra config.
func failoverRegions(extra string) string {
	if !strings.Contains(extra, "health:") {
		extra += "\nhealth: {probe: {disable: true}}\n"
	}
	return `
log: {level: info}
` + extra + `
regions:
  - {name: us-east, url: sim://us-east, location: {lat: 39.04, lon: -77.49}, sim: {latency: 5ms}}
  - {name: us-west, url: sim://us-west, location: {lat: 45.60, lon: -121.18}, sim: {latency: 5ms}}
  - {name: eu-west, url: sim://eu-west, location: {lat: 53.35, lon: -6.26}}
  - {name: ap-south, url: sim://ap-south, location: {lat: 19.08, lon: 72.88}}
`
}

// tally counts what clients saw.
type tally struct {
	mu       sync.Mutex
	status   map[int]int
	region   map[string]int
	reason   map[string]int
	failures []string
	slowest  time.Duration
}

func newTally() *tally {
	return &tally{status: map[int]int{}, region: map[string]int{}, reason: map[string]int{}}
}

func (t *tally) add(resp *http.Response, err error, took time.Duration, check func(body []byte) error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.slowest = max(t.slowest, took)
	if err != nil {
		t.failures = append(t.failures, err.Error())
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.status[resp.StatusCode]++
	t.region[resp.Header.Get("X-Earshot-Region")]++
	t.reason[resp.Header.Get("X-Earshot-Route")]++
	if err == nil && resp.StatusCode == 200 && check != nil {
		err = check(body)
	}
	if ok := resp.StatusCode == 200 || resp.StatusCode == 101; err != nil || !ok {
		t.failures = append(t.failures, fmt.Sprintf("%d %s %v", resp.StatusCode, bytes.TrimSpace(body), err))
	}
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("status %v, regions %v, reasons %v, failures %d, slowest %v",
		t.status, t.region, t.reason, len(t.failures), t.slowest.Round(time.Millisecond))
}

// transcriptIs checks a pre-recorded response's transcript.
func transcriptIs(want string) func([]byte) error {
	return func(body []byte) error {
		var res struct {
			Results struct {
				Channels []struct {
					Alternatives []struct {
						Transcript string `json:"transcript"`
					} `json:"alternatives"`
				} `json:"channels"`
			} `json:"results"`
		}
		if err := json.Unmarshal(body, &res); err != nil {
			return err
		}
		if len(res.Results.Channels) == 0 || len(res.Results.Channels[0].Alternatives) == 0 ||
			res.Results.Channels[0].Alternatives[0].Transcript != want {
			return fmt.Errorf("transcript %s, want %q", body, want)
		}
		return nil
	}
}

var testTranscript = func() string {
	var w []string
	for _, x := range testWords {
		w = append(w, x.Text)
	}
	return strings.Join(w, " ")
}()

// TestRegionKilledUnderLoad kills the first-choice region while clients
// send a bounded load of pre-recorded requests and open streams: no client
// sees an error, and every transcript is complete.
func TestRegionKilledUnderLoad(t *testing.T) {
	r := startRouter(t, failoverRegions(""))
	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2), 16000, 1)
	const workers, perWorker = 8, 50
	http := newTally()
	var done atomic.Int64
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				start := time.Now()
				resp, err := httpPost(r.url("/v1/listen?punctuate=false"), audio)
				http.add(resp, err, time.Since(start), transcriptIs(testTranscript))
				if done.Add(1) == workers*perWorker/4 {
					r.srv.Sim("us-east").SetMode(sim.ModeDie)
					close(killed)
				}
			}
		})
	}
	// New streams opened while the region dies.
	<-killed
	streams := newTally()
	for range 10 {
		start := time.Now()
		err := transcribeStream(r, audio[44:])
		streams.add(&http200, err, time.Since(start), nil)
	}
	wg.Wait()
	t.Logf("pre-recorded: %s", http)
	t.Logf("streams opened during the kill: %s", streams)
	if len(http.failures) > 0 {
		t.Errorf("%d of %d pre-recorded requests failed; first: %s", len(http.failures), workers*perWorker, http.failures[0])
	}
	if len(streams.failures) > 0 {
		t.Errorf("%d of 10 streams failed; first: %s", len(streams.failures), streams.failures[0])
	}
	if http.region["us-west"] == 0 || http.reason["failover"] == 0 {
		t.Errorf("no request failed over to us-west: %s", http)
	}
	if st := r.srv.proxy.Stats(); st.Failovers == 0 {
		t.Errorf("stats = %+v, want failovers", st)
	}
}

var http200 = http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}}

func httpPost(url string, body []byte) (*http.Response, error) {
	return http.Post(url, "audio/wav", bytes.NewReader(body))
}

// transcribeStream streams pcm through the router and checks that every
// word comes back in final results.
func transcribeStream(r *router, pcm []byte) error {
	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("handshake: %w: %d %s", err, resp.StatusCode, body)
		}
		return fmt.Errorf("handshake: %w", err)
	}
	defer c.Close()
	for len(pcm) > 0 {
		k := min(3200, len(pcm))
		if err := c.WriteMessage(websocket.BinaryMessage, pcm[:k]); err != nil {
			return err
		}
		pcm = pcm[k:]
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`)); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var words []string
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return fmt.Errorf("stream ended with %v", err)
			}
			break
		}
		var m message
		if json.Unmarshal(data, &m) == nil && m.Type == "Results" && m.IsFinal && m.transcript() != "" {
			words = append(words, m.transcript())
		}
	}
	if got := strings.Join(words, " "); got != testTranscript {
		return fmt.Errorf("stream transcript %q, want %q", got, testTranscript)
	}
	return nil
}

// TestBreakerOpensOn503StormAndRecovers makes us-east answer 503 to
// everything. Exactly consecutive_failures requests reach it before its
// breaker opens; each of them fails over, so clients see no error. Once the
// region is well again, the half-open breaker's trial requests close it
// and traffic returns.
func TestBreakerOpensOn503StormAndRecovers(t *testing.T) {
	r := startRouter(t, failoverRegions(`
health:
  probe: {disable: true}
  breaker: {consecutive_failures: 5, open_timeout: 300ms, half_open_requests: 2}
`))
	east := r.srv.Sim("us-east")
	eastHealth := r.srv.live().regions[0].health
	east.SetMode(sim.ModeRefuse)
	clients := newTally()
	for range 20 {
		start := time.Now()
		resp, err := http.Get(r.url("/v1/models"))
		clients.add(resp, err, time.Since(start), nil)
	}
	t.Logf("during the storm: %s; us-east answered 503 %d times", clients, eastHealth.Count(1)+eastHealth.Count(2))
	if len(clients.failures) > 0 {
		t.Errorf("clients saw errors: %v", clients.failures)
	}
	if got := eastHealth.Breaker(); got != "open" {
		t.Fatalf("breaker %s after the storm, want open", got)
	}
	if refused := eastHealth.Count(1) + eastHealth.Count(2); refused != 5 {
		t.Errorf("us-east saw %d refused attempts, want exactly consecutive_failures = 5", refused)
	}

	east.SetMode(sim.ModeOK)
	waitFor(t, "the breaker to half-open", func() bool { return eastHealth.Breaker() == "half-open" })
	for i := range 2 {
		resp, err := http.Get(r.url("/v1/models"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("X-Earshot-Region") != "us-east" {
			t.Errorf("trial request %d went to %s, want us-east", i, resp.Header.Get("X-Earshot-Region"))
		}
	}
	if got := eastHealth.Breaker(); got != "closed" {
		t.Errorf("breaker %s after two good trials, want closed", got)
	}
	if got := r.logs.FilterMessage("circuit breaker").Len(); got != 3 {
		t.Errorf("%d breaker changes logged, want 3 (open, half-open, closed)", got)
	}
}

// TestHungRegionCostsOneTimeout makes us-east accept and never answer. The
// first request and the first stream wait out the attempt and handshake
// timeouts once and fail over; everything after goes straight to us-west.
func TestHungRegionCostsOneTimeout(t *testing.T) {
	r := startRouter(t, failoverRegions(`
timeouts: {handshake: 300ms}
retry: {attempt_timeout: 300ms}
`))
	r.srv.Sim("us-east").SetMode(sim.ModeHang)
	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2), 16000, 1)
	var took []time.Duration
	for i := range 5 {
		start := time.Now()
		resp, err := httpPost(r.url("/v1/listen"), audio)
		if err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// The first moved after its attempt timed out; the rest skip the
		// cooling region without trying it.
		want := "unhealthy"
		if i == 0 {
			want = "failover"
		}
		if resp.StatusCode != 200 || resp.Header.Get("X-Earshot-Region") != "us-west" || resp.Header.Get("X-Earshot-Route") != want {
			t.Errorf("request %d: %d from %s (%s), want 200 from us-west (%s)", i, resp.StatusCode,
				resp.Header.Get("X-Earshot-Region"), resp.Header.Get("X-Earshot-Route"), want)
		}
	}
	t.Logf("request times with us-east hung: %v", took)
	if took[0] < 300*time.Millisecond {
		t.Errorf("the first request took %v; it should have waited out the 300ms attempt timeout", took[0])
	}
	east := r.srv.live().regions[0].health
	if n := east.Count(2); n != 1 {
		t.Errorf("us-east was tried %d times, want once", n)
	}
	if east.CoolingFor() == 0 {
		t.Error("us-east is not cooling down after its timeout")
	}
	// A new router, for the handshake: the stream's first attempt waits out
	// the handshake timeout and fails over.
	r2 := startRouter(t, failoverRegions(`
timeouts: {handshake: 300ms}
`))
	r2.srv.Sim("us-east").SetMode(sim.ModeHang)
	start := time.Now()
	if err := transcribeStream(r2, audio[44:]); err != nil {
		t.Fatal(err)
	}
	t.Logf("stream with us-east hung: %v", time.Since(start))
	if time.Since(start) < 300*time.Millisecond {
		t.Error("the stream did not wait for the handshake timeout")
	}
}

// TestRetryBudget makes us-east refuse everything (with its breaker set
// never to trip) while 16 clients send at once. Retries in progress may
// never exceed max(min_retries, budget × requests in progress); the rest
// pass the region's 503 through.
func TestRetryBudget(t *testing.T) {
	r := startRouter(t, failoverRegions(`
health:
  probe: {disable: true}
  breaker: {consecutive_failures: 1000000, min_requests: 1000000}
retry: {budget: 0.1, min_retries: 2, budget_wait: 0s}
`))
	r.srv.Sim("us-east").SetMode(sim.ModeRefuse)
	// us-west answers slowly so retries overlap.
	r.srv.Sim("us-west").Engine().SetLatency(100 * time.Millisecond)
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			runtime.Gosched()
			n := int64(r.srv.proxy.RetriesInProgress())
			for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
			}
		}
	}()
	clients := newTally()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 4 {
				start := time.Now()
				resp, err := http.Get(r.url("/v1/models"))
				clients.add(resp, err, time.Since(start), nil)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	st := r.srv.proxy.Stats()
	t.Logf("%s; stats %+v; peak retries in progress %d", clients, st, peak.Load())
	if st.Retries+st.BudgetDenied != 64 {
		t.Errorf("retries %d + denied %d != 64 first attempts that failed", st.Retries, st.BudgetDenied)
	}
	// 16 requests in progress at most: 10% is 1.6, so min_retries (2) rules.
	if peak.Load() > 2 {
		t.Errorf("peak retries in progress %d, budget allows 2", peak.Load())
	}
	if st.BudgetDenied == 0 || clients.status[503] != int(st.BudgetDenied) || clients.status[200] != int(st.Retries) {
		t.Errorf("denied retries should pass the region's 503 through and retried ones succeed: %s, %+v", clients, st)
	}
}

// TestHedgedHandshake makes us-east answer handshakes slowly: with a hedge
// delay, the stream starts on us-west once the delay passes, and the slow
// handshake is closed when it completes.
func TestHedgedHandshake(t *testing.T) {
	r := startRouter(t, failoverRegions(`
retry: {hedge_delay: 50ms}
`))
	r.srv.Sim("us-east").Engine().SetLatency(time.Second)
	start := time.Now()
	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	c.Close()
	t.Logf("hedged handshake took %v", took)
	if got := routeOf(resp); got != "us-west/hedged" {
		t.Errorf("served by %s, want us-west/hedged", got)
	}
	if took >= time.Second {
		t.Errorf("the handshake took %v: it waited for the slow region", took)
	}
	if st := r.srv.proxy.Stats(); st.Hedges != 1 {
		t.Errorf("stats %+v, want one hedge", st)
	}
	east := r.srv.live().regions[0].health
	waitFor(t, "the losing handshake to be closed and released", func() bool {
		return east.InFlight() == 0 && east.Count(health.Canceled) == 1 && r.srv.Sim("us-east").Engine().Stats().Streams == 0
	})
}

// TestFlappingRegion kills and revives us-east over and over while clients
// send pre-recorded requests and open streams: no client sees an error.
func TestFlappingRegion(t *testing.T) {
	r := startRouter(t, failoverRegions(`
health:
  probe: {disable: true}
  breaker: {open_timeout: 50ms}
`))
	east := r.srv.Sim("us-east")
	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2), 16000, 1)
	const workers, perWorker = 4, 50
	reqs := newTally()
	var done, flips atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				start := time.Now()
				resp, err := httpPost(r.url("/v1/listen"), audio)
				reqs.add(resp, err, time.Since(start), transcriptIs(testTranscript))
				if done.Add(1)%10 == 0 { // flip every 10 requests
					if flips.Add(1)%2 == 1 {
						east.SetMode(sim.ModeDie)
					} else {
						east.SetMode(sim.ModeOK)
					}
				}
			}
		})
	}
	// New streams all open; one already open on us-east when it dies ends
	// with 1011 "region connection lost" (streams do not move mid-flight).
	streams := newTally()
	for range 10 {
		start := time.Now()
		c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
		if err == nil {
			c.Close()
			resp.Body = io.NopCloser(strings.NewReader(""))
		}
		streams.add(resp, err, time.Since(start), nil)
	}
	wg.Wait()
	t.Logf("%d flips; requests: %s; streams: %s", flips.Load(), reqs, streams)
	if len(reqs.failures)+len(streams.failures) > 0 {
		t.Errorf("clients saw errors: %v %v", reqs.failures, streams.failures)
	}
}

// TestHedgeWinsAfterFirstFails is the review's lease bug over real sockets:
// us-east refuses the handshake (503) while the hedged handshake to us-west
// is still on its way, and the hedge wins. us-east's lease must come back
// (its in-flight count was stuck at 1 before the failover engine), and its
// failure is counted once.
func TestHedgeWinsAfterFirstFails(t *testing.T) {
	r := startRouter(t, `
log: {level: info}
retry: {hedge_delay: 100ms}
health: {probe: {disable: true}}
regions:
  - {name: us-east, url: sim://us-east, location: {lat: 39.04, lon: -77.49}, sim: {latency: 300ms, full_status: 503, mode: refuse}}
  - {name: us-west, url: sim://us-west, location: {lat: 45.60, lon: -121.18}, sim: {latency: 600ms}}
`)
	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := routeOf(resp); got != "us-west/failover" {
		t.Errorf("served by %s, want us-west/failover", got)
	}
	east := r.srv.live().regions[0].health
	// us-east answered 503 at about 300ms, us-west at about 700ms: the
	// stream is open on us-west and us-east holds nothing.
	if n := east.InFlight(); n != 0 {
		t.Errorf("us-east holds %d after its refused handshake, want 0", n)
	}
	if n := east.Count(health.Failure); n != 1 {
		t.Errorf("us-east failures %d, want 1", n)
	}
	if st := r.srv.proxy.Stats(); st.Hedges != 1 || st.ByCause["503"] != 1 {
		t.Errorf("stats %+v, want one hedge and one failover after a 503", st)
	}
}

// TestDroppedStreamCountsAgainstRegion is the review's other bug: a region
// that accepts a stream and then drops it was recorded as a success.
func TestDroppedStreamCountsAgainstRegion(t *testing.T) {
	r := startRouter(t, failoverRegions("retry: {resume_log: 0s}")) // a stream that cannot move
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	east := r.srv.live().regions[0].health
	r.srv.Sim("us-east").SetMode(sim.ModeDie)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			if !websocket.IsCloseError(err, websocket.CloseInternalServerErr) {
				t.Errorf("stream ended with %v, want 1011", err)
			}
			break
		}
	}
	waitFor(t, "the stream's lease to come back", func() bool { return east.InFlight() == 0 })
	if s, f := east.Count(health.Success), east.Count(health.Failure); s != 1 || f != 1 {
		t.Errorf("us-east outcomes: %d successes, %d failures; want the handshake's success and the drop's failure", s, f)
	}
}
