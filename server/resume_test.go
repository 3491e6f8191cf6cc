package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/internal/chaos"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/sim"
)

// resumeWords are laid out over 6 s with short and long silences, so that
// a stream has finals at endpoints, utterance ends after the long ones and
// words being spoken at most instants.
var resumeWords = []sim.Word{
	{Text: "one", Start: 0.10, End: 0.40}, {Text: "two", Start: 0.45, End: 0.80},
	{Text: "three", Start: 1.00, End: 1.35}, {Text: "four", Start: 2.60, End: 2.90},
	{Text: "five", Start: 2.95, End: 3.30}, {Text: "six", Start: 3.31, End: 3.70},
	{Text: "seven", Start: 4.00, End: 4.45}, {Text: "eight", Start: 5.60, End: 5.85},
	{Text: "nine", Start: 5.90, End: 6.20}, {Text: "ten", Start: 6.25, End: 6.60},
}

const resumeQuery = "/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true&utterance_end_ms=1000&vad_events=true&endpointing=100"

// A step of a stream's script: send audio chunk i, or a control message,
// or kill the region the stream is on (kill, killAfterFinal: once the
// client has its first final).
type step struct {
	chunk      int // >= 0: send that 100 ms chunk
	control    string
	kill       bool
	afterFinal bool    // wait for a final first
	heard      float64 // wait until results have covered this much audio
}

// runScript plays a script on one stream through the router and returns
// what the client saw of it, normalised: finals, UtteranceEnd,
// SpeechStarted and Metadata with every timestamp, in order, and the close.
func runScript(t *testing.T, e *mxEnv, pcm []byte, script []step) []string {
	return runScriptOn(t, e, resumeQuery, 3200, pcm, script)
}

func runScriptOn(t *testing.T, e *mxEnv, query string, chunk int, pcm []byte, script []step) []string {
	return runScriptWith(t, e, query, chunk, pcm, script, func() { e.proxies[0].Set(chaos.Kill()) })
}

// runScriptWith plays a script whose kill steps call fault.
func runScriptWith(t *testing.T, e *mxEnv, query string, chunk int, pcm []byte, script []step, fault func()) []string {
	t.Helper()
	c, resp, err := mxDialer.Dial(e.r.ws(query), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("X-Earshot-Region") != "us-east" {
		t.Fatalf("stream opened on %s, want us-east", resp.Header.Get("X-Earshot-Region"))
	}
	norm := normalise
	if strings.HasPrefix(query, "/v2/listen") {
		norm = normaliseFlux
	}
	var (
		mu       sync.Mutex
		seen     []string
		heard    float64 // the end of the latest result, interim or final
		progress = make(chan struct{}, 1)
		finals   = make(chan struct{}, 64)
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				mu.Lock()
				seen = append(seen, "close "+err.Error())
				mu.Unlock()
				return
			}
			var r struct {
				Start, Duration float64
			}
			_ = json.Unmarshal(data, &r)
			mu.Lock()
			heard = max(heard, r.Start+r.Duration)
			mu.Unlock()
			select {
			case progress <- struct{}{}:
			default:
			}
			if line, final := norm(t, data); line != "" {
				mu.Lock()
				seen = append(seen, line)
				mu.Unlock()
				if final {
					finals <- struct{}{}
				}
			}
		}
	}()
	for _, s := range script {
		switch {
		case s.kill:
			waitHeard := time.NewTimer(5 * time.Second)
		heard:
			for {
				mu.Lock()
				h := heard
				mu.Unlock()
				if h >= s.heard-1e-9 {
					break
				}
				select {
				case <-progress:
				case <-waitHeard.C:
					break heard
				}
			}
			waitHeard.Stop()
			if s.afterFinal {
				select {
				case <-finals:
				case <-time.After(5 * time.Second):
					t.Fatal("no final to kill after")
				}
			}
			fault()
		case s.control != "":
			if err := c.WriteMessage(websocket.TextMessage, controlMessage(s.control)); err != nil {
				t.Fatal(err)
			}
		default:
			from := s.chunk * chunk
			if err := c.WriteMessage(websocket.BinaryMessage, pcm[from:min(from+chunk, len(pcm))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream did not end 20s after CloseStream")
	}
	e.proxies[0].Set(chaos.Pass())
	mu.Lock()
	defer mu.Unlock()
	return seen
}

// normalise turns a server message into a comparable line, or "" for
// messages that may differ between runs (interim results). It reports
// whether the message was a final.
func normalise(t errorer, data []byte) (string, bool) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		t.Errorf("unreadable message %s: %v", data, err)
		return "", false
	}
	switch head.Type {
	case "Results":
		var m message
		if err := json.Unmarshal(data, &m); err != nil {
			t.Errorf("unreadable Results %s: %v", data, err)
			return "", false
		}
		if !m.IsFinal {
			return "", false
		}
		tr, words := "", []string{}
		if len(m.Channel.Alternatives) > 0 {
			tr = m.Channel.Alternatives[0].Transcript
			for _, w := range m.Channel.Alternatives[0].Words {
				words = append(words, fmt.Sprintf("%s@%v-%v", w.Word, w.Start, w.End))
			}
		}
		return fmt.Sprintf("final start=%v duration=%v speech_final=%v from_finalize=%v channel=%v %q [%s]",
			m.Start, m.Duration, m.SpeechFinal, m.FromFinal, m.ChannelIndex, tr, strings.Join(words, " ")), true
	case "UtteranceEnd", "SpeechStarted", "Metadata":
		var m struct {
			LastWordEnd float64 `json:"last_word_end"`
			Timestamp   float64 `json:"timestamp"`
			Duration    float64 `json:"duration"`
			Channels    int     `json:"channels"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			t.Errorf("unreadable %s %s: %v", head.Type, data, err)
			return "", false
		}
		switch head.Type {
		case "UtteranceEnd":
			return fmt.Sprintf("utterance_end last_word_end=%v", m.LastWordEnd), false
		case "SpeechStarted":
			return fmt.Sprintf("speech_started timestamp=%v", m.Timestamp), false
		}
		return fmt.Sprintf("metadata duration=%v channels=%v", m.Duration, m.Channels), false
	}
	return "", false
}

// TestResumeIsExact kills the stream's region at every 100 ms of a 7 s
// stream (mid-word and mid-silence), just after a final, during a Finalize
// and after CloseStream: the stream moves to another region, and the client
// gets exactly what a run without the fault gives, every timestamp
// included, and 1000.
func TestResumeIsExact(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
`)
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	chunks := (len(pcm) + 3199) / 3200
	audio := func(from, to int) []step {
		var s []step
		for i := from; i < to; i++ {
			s = append(s, step{chunk: i})
		}
		return s
	}
	withKill := func(script []step, at int, kill step) []step {
		out := append([]step{}, script[:at]...)
		out = append(out, kill)
		return append(out, script[at:]...)
	}
	closeStream := step{chunk: -1, control: "CloseStream"}
	plain := append(audio(0, chunks), closeStream)
	withFinalize := append(append(append(audio(0, 28), step{chunk: -1, control: "Finalize"}), audio(28, chunks)...), closeStream)

	baseline := runScript(t, e, pcm, plain)
	t.Logf("without a fault: %d messages, last %q", len(baseline), baseline[len(baseline)-1])
	if !strings.HasPrefix(baseline[len(baseline)-1], "close websocket: close 1000") {
		t.Fatalf("the baseline stream ended %q", baseline[len(baseline)-1])
	}
	finalizeBase := runScript(t, e, pcm, withFinalize)

	type tcase struct {
		name   string
		script []step
		want   []string
	}
	var cases []tcase
	// The region has heard every word ending before the kill.
	heardBy := func(ms int) float64 {
		h := 0.0
		for _, w := range resumeWords {
			if w.End*1000 < float64(ms) { // a word ending at ms is heard with the next chunk
				h = w.End
			}
		}
		return h
	}
	for k := 1; k < chunks; k++ {
		cases = append(cases, tcase{fmt.Sprintf("killed after %dms", k*100), withKill(plain, k, step{chunk: -1, kill: true, heard: heardBy(k * 100)}), baseline})
	}
	cases = append(cases,
		tcase{"killed just after a final", withKill(plain, 15, step{chunk: -1, kill: true, afterFinal: true}), baseline},
		tcase{"killed during Finalize", withKill(withFinalize, 29, step{chunk: -1, kill: true}), finalizeBase},
		tcase{"killed after CloseStream", append(append([]step{}, plain...), step{chunk: -1, kill: true}), baseline},
	)
	moved := 0
	for _, tc := range cases {
		before := len(e.r.srv.proxy.Resumes().Moves)
		began := time.Now()
		got := runScript(t, e, pcm, tc.script)
		if took := time.Since(began); took > time.Second {
			t.Logf("%s took %v", tc.name, took.Round(time.Millisecond))
		}
		if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%s: the client saw\n  %s\nwant\n  %s", tc.name, strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
		}
		if n := e.r.srv.proxy.Resumes().Moves; len(n) > before || sumMoves(n) > 0 {
			moved = int(sumMoves(n))
		}
	}
	t.Logf("%d scripts, %d moves", len(cases), moved)
	if moved < len(cases)/2 {
		t.Errorf("only %d of %d killed streams moved", moved, len(cases))
	}
}

func sumMoves[K comparable](m map[K]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// TestResumeMultichannel moves a two-channel stream (the simulated engine
// hears channel 0): every timestamp as without the fault.
func TestResumeMultichannel(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
`)
	mono := sim.Synthesize(resumeWords, 16000, 7.0)
	pcm := make([]byte, 0, 2*len(mono))
	for i := 0; i+1 < len(mono); i += 2 {
		pcm = append(pcm, mono[i], mono[i+1], 0, 0) // channel 1 silent
	}
	const query = "/v1/listen?encoding=linear16&sample_rate=16000&channels=2&interim_results=true&utterance_end_ms=1000&vad_events=true&endpointing=100"
	const chunk = 6400 // 100 ms of two channels
	chunks := (len(pcm) + chunk - 1) / chunk
	var plain []step
	for i := range chunks {
		plain = append(plain, step{chunk: i})
	}
	plain = append(plain, step{chunk: -1, control: "CloseStream"})
	baseline := runScriptOn(t, e, query, chunk, pcm, plain)
	for _, k := range []int{5, 14, 27, 44, 61} {
		script := append(append(append([]step{}, plain[:k]...), step{chunk: -1, kill: true}), plain[k:]...)
		got := runScriptOn(t, e, query, chunk, pcm, script)
		if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
			t.Errorf("killed after %dms: the client saw\n  %s\nwant\n  %s", k*100, strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
		}
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n != 5 {
		t.Errorf("%d streams moved, want 5", n)
	}
}

// TestResumeLogFull: a stream whose audio since its last final outgrows
// retry.resume_log can no longer move, says so in the metrics, and ends
// 1011 when its region is lost.
func TestResumeLogFull(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}}
retry: {resume_log: 500ms}
`)
	c, _, err := mxDialer.Dial(e.r.ws(resumeQuery), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	silence := make([]byte, 3200) // 100 ms: no word, so no final
	for range 8 {
		if err := c.WriteMessage(websocket.BinaryMessage, silence); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the log to overflow", func() bool {
		return e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", Result: "log_full"}] == 1
	})
	e.proxies[0].Set(chaos.Kill())
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			if !websocket.IsCloseError(err, websocket.CloseInternalServerErr) {
				t.Errorf("ended with %v, want 1011", err)
			}
			break
		}
	}
}

// TestManyStreamsSurviveTheirRegion opens 100 streams on us-east, paced at
// twice real time, and kills, hangs or makes it refuse once every stream
// has its first final: every stream gets exactly what a run without the
// fault gives (every word once, every timestamp, Metadata, 1000), and no
// client waits more than 3 s for the router's next message.
func TestManyStreamsSurviveTheirRegion(t *testing.T) {
	if testing.Short() {
		t.Skip("100 streams in real time")
	}
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	for _, tc := range []struct {
		name  string
		fault func(e *mxEnv)
	}{
		{"killed", func(e *mxEnv) { e.proxies[0].Set(chaos.Kill()) }},
		{"hung", func(e *mxEnv) { e.proxies[0].Set(chaos.Hang()) }},
		{"refusing", func(e *mxEnv) { e.sims[0].SetMode(sim.ModeRefuse) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newMxEnv(t, sim.Options{})
			var plain []step
			for i := range (len(pcm) + 3199) / 3200 {
				plain = append(plain, step{chunk: i})
			}
			baseline := runScript(t, e, pcm, append(plain, step{chunk: -1, control: "CloseStream"}))
			const n = 100
			firstFinal := make(chan struct{}, n)
			results := make(chan paced, n)
			for range n {
				go func() { results <- streamPaced(e, pcm, firstFinal) }()
			}
			for range n {
				select {
				case <-firstFinal:
				case <-time.After(10 * time.Second):
					t.Fatal("not every stream got its first final")
				}
			}
			tc.fault(e)
			faultAt := time.Now()
			var worstGap time.Duration
			failed := 0
			for range n {
				r := <-results
				worstGap = max(worstGap, r.gap)
				if r.err != nil || strings.Join(r.seen, "\n") != strings.Join(baseline, "\n") {
					if failed++; failed <= 2 {
						t.Errorf("a stream saw (%v)\n  %s\nwant\n  %s", r.err, strings.Join(r.seen, "\n  "), strings.Join(baseline, "\n  "))
					}
				}
			}
			moved := e.r.srv.proxy.Resumes()
			gaps := slices.Sorted(slices.Values(moved.Gaps))
			pct := func(p float64) time.Duration {
				if len(gaps) == 0 {
					return 0
				}
				return gaps[min(len(gaps)-1, int(p*float64(len(gaps))))].Round(time.Millisecond)
			}
			t.Logf("%d streams, %d differ from the run without the fault; longest wait for the router %v; moves %v; region lost to the next message: p50 %v, p99 %v; done %v after the fault",
				n, failed, worstGap.Round(time.Millisecond), moved.Moves, pct(0.5), pct(0.99), time.Since(faultAt).Round(time.Millisecond))
			limit := 3 * time.Second
			if raceEnabled {
				limit = 5 * time.Second // the race detector slows the 100 replays several times over
			}
			if worstGap > limit {
				t.Errorf("a client waited %v for the router's next message, want at most %v", worstGap, limit)
			}
		})
	}
}

type paced struct {
	seen []string
	gap  time.Duration // the longest wait between two messages
	err  error
}

// streamPaced streams pcm at twice real time, then CloseStream, and
// returns what the client saw (normalised as runScript's).
func streamPaced(e *mxEnv, pcm []byte, firstFinal chan<- struct{}) paced {
	var p paced
	c, _, err := mxDialer.Dial(e.r.ws(resumeQuery), nil)
	if err != nil {
		p.err = err
		firstFinal <- struct{}{}
		return p
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		last, first := time.Now(), true
		for {
			_, data, err := c.ReadMessage()
			now := time.Now()
			p.gap = max(p.gap, now.Sub(last))
			last = now
			if err != nil {
				p.seen = append(p.seen, "close "+err.Error())
				return
			}
			line, final := normaliseQuiet(data)
			if line != "" {
				p.seen = append(p.seen, line)
			}
			if final && first {
				first = false
				firstFinal <- struct{}{}
			}
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond) // pacing, not synchronisation
	defer tick.Stop()
	for i := 0; i < len(pcm); i += 3200 {
		<-tick.C
		if err := c.WriteMessage(websocket.BinaryMessage, pcm[i:min(i+3200, len(pcm))]); err != nil {
			p.err = err
			break
		}
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	<-done
	return p
}

// normaliseQuiet is normalise without a test to report to.
func normaliseQuiet(data []byte) (string, bool) {
	var q quietT
	return normalise(&q, data)
}

type errorer interface{ Errorf(string, ...any) }

type quietT struct{}

func (*quietT) Errorf(string, ...any) {}

// TestPlannedMove drains the stream's region from the admin endpoint: the
// stream moves at its next final, loses nothing (every message as without
// the move), and the region is charged no failure; new streams avoid it
// until it is put back.
func TestPlannedMove(t *testing.T) {
	e := newMxEnv(t, sim.Options{})
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	plain := plainScript(pcm, 3200)
	baseline := runScript(t, e, pcm, plain)

	drain := func(method string) { drainEast(t, e, method) }
	// The drain comes a third of the way in, as a step of the script.
	script := append([]step{}, plain[:25]...)
	script = append(script, step{chunk: -1, kill: true, heard: 1.35})
	script = append(script, plain[25:]...)
	got := runScriptWith(t, e, resumeQuery, 3200, pcm, script, func() { drain(http.MethodPost) })
	if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
		t.Errorf("the client saw\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n != 1 {
		t.Errorf("moves %v, want one from us-east to us-west", e.r.srv.proxy.Resumes().Moves)
	}
	if f := e.east().Count(health.Failure); f != 0 {
		t.Errorf("us-east charged %d failures for a planned move", f)
	}
	if rep := e.post(); rep.region == "us-east" {
		t.Errorf("a new request went to the drained us-east: %v", rep)
	}
	drain(http.MethodDelete)
	if rep := e.post(); rep.region != "us-east" {
		t.Errorf("a new request after the drain ended: %v, want us-east", rep)
	}
}

// TestReloadMovesStreams removes the stream's region from the config: the
// stream moves at its next final and loses nothing.
func TestReloadMovesStreams(t *testing.T) {
	e := newMxEnv(t, sim.Options{})
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	plain := plainScript(pcm, 3200)
	baseline := runScript(t, e, pcm, plain)
	without, err := config.Parse("test.yaml", []byte("auth: {disable: true}\nlog: {level: info}\n"+e.extra+"\nregions:\n"+strings.Join(e.lines[1:], "")))
	if err != nil {
		t.Fatal(err)
	}
	script := append(append(append([]step{}, plain[:25]...), step{chunk: -1, kill: true, heard: 1.35}), plain[25:]...)
	got := runScriptWith(t, e, resumeQuery, 3200, pcm, script, func() {
		if err := e.r.srv.Reload(without); err != nil {
			t.Error(err)
		}
	})
	if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
		t.Errorf("the client saw\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n != 1 {
		t.Errorf("moves %v, want one from us-east to us-west", e.r.srv.proxy.Resumes().Moves)
	}
}

// normaliseFlux turns a Flux message into a comparable line: every message
// with its sequence_id, TurnInfo with its event, turn, window and words.
func normaliseFlux(t errorer, data []byte) (string, bool) {
	var m struct {
		Type       string  `json:"type"`
		Seq        int     `json:"sequence_id"`
		Event      string  `json:"event"`
		Turn       int     `json:"turn_index"`
		Start      float64 `json:"audio_window_start"`
		End        float64 `json:"audio_window_end"`
		Transcript string  `json:"transcript"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Errorf("unreadable Flux message %s: %v", data, err)
		return "", false
	}
	if m.Type == "TurnInfo" {
		return fmt.Sprintf("#%d TurnInfo %s turn=%d window=%v-%v %q", m.Seq, m.Event, m.Turn, m.Start, m.End, m.Transcript), m.Event == "EndOfTurn"
	}
	return fmt.Sprintf("#%d %s", m.Seq, m.Type), false
}

// TestResumeFlux moves Flux streams: killed at many points, with a
// Configure sent along the way, the client sees exactly the messages of a
// run without the fault, sequence_id and turn_index continuing, windows in
// its own time.
func TestResumeFlux(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
`)
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	const query = "/v2/listen?encoding=linear16&sample_rate=16000&eot_timeout_ms=500"
	var plain []step
	for i := range (len(pcm) + 3199) / 3200 {
		if i == 8 {
			plain = append(plain, step{chunk: -1, control: "Configure"})
		}
		plain = append(plain, step{chunk: i})
	}
	plain = append(plain, step{chunk: -1, control: "CloseStream"})
	run := func(script []step) []string {
		return runScriptOn(t, e, query, 3200, pcm, script)
	}
	baseline := run(plain)
	t.Logf("without a fault: %d messages", len(baseline))
	for _, k := range []int{4, 12, 20, 27, 33, 41, 50, 58, 66} {
		script := append(append(append([]step{}, plain[:k]...), step{chunk: -1, kill: true}), plain[k:]...)
		got := run(script)
		if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
			t.Errorf("killed at step %d: the client saw\n  %s\nwant\n  %s", k, strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
		}
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n < 5 {
		t.Errorf("%d Flux streams moved, want most of 9", n)
	}
}

// controlMessage is a client control message of type typ.
func controlMessage(typ string) []byte {
	if typ == "Configure" {
		return []byte(`{"type":"Configure","thresholds":{"eot_threshold":0.8}}`)
	}
	return []byte(`{"type":"` + typ + `"}`)
}

// TestResumeWAV moves a stream of WAV audio (no encoding in the query):
// the header is sent to the new region before the replay, and the client
// sees exactly what a run without the fault gives.
func TestResumeWAV(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
`)
	wav := sim.WAV(sim.Synthesize(resumeWords, 16000, 7.0), 16000, 1)
	const query = "/v1/listen?interim_results=true&utterance_end_ms=1000&vad_events=true&endpointing=100"
	chunks := (len(wav) + 3199) / 3200
	var plain []step
	for i := range chunks {
		plain = append(plain, step{chunk: i})
	}
	plain = append(plain, step{chunk: -1, control: "CloseStream"})
	baseline := runScriptOn(t, e, query, 3200, wav, plain)
	for _, k := range []int{3, 16, 29, 47, 63} {
		script := append(append(append([]step{}, plain[:k]...), step{chunk: -1, kill: true}), plain[k:]...)
		got := runScriptOn(t, e, query, 3200, wav, script)
		if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
			t.Errorf("killed after chunk %d: the client saw\n  %s\nwant\n  %s", k, strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
		}
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n != 5 {
		t.Errorf("%d WAV streams moved, want 5", n)
	}
}

// TestMoveOnAgain: the first region the stream moves to takes the
// handshake and then resets the connection during the replay; the stream
// moves on to the next, exact, and every region's lease comes back.
func TestMoveOnAgain(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
`)
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	plain := plainScript(pcm, 3200)
	baseline := runScript(t, e, pcm, plain)
	script := withStep(plain, 30, step{chunk: -1, kill: true, heard: 1.35})
	got := runScriptWith(t, e, resumeQuery, 3200, pcm, script, func() {
		e.proxies[1].Set(chaos.ResetAfter(400)) // us-west: past its 101, inside the first results
		e.proxies[0].Set(chaos.Kill())
	})
	e.proxies[1].Set(chaos.Pass())
	if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
		t.Errorf("the client saw\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
	}
	mv := e.r.srv.proxy.Resumes().Moves
	t.Logf("moves %v", mv)
	if mv[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]+mv[proxy.ResumeKey{From: "us-west", To: "eu-west", Result: "ok"}] != 2 &&
		mv[proxy.ResumeKey{From: "us-east", To: "eu-west", Result: "ok"}] != 1 {
		t.Errorf("moves %v: want us-east to us-west to eu-west (or us-east to eu-west if us-west failed the replay)", mv)
	}
}

// TestLeftRegionEmpties: a stream that moves off a drained region gives
// its lease back at once, not when it ends, so the region empties.
func TestLeftRegionEmpties(t *testing.T) {
	e := newMxEnv(t, sim.Options{})
	c, _, err := mxDialer.Dial(e.r.ws(resumeQuery), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	for i := 0; i < 3200*20; i += 3200 {
		if err := c.WriteMessage(websocket.BinaryMessage, pcm[i:i+3200]); err != nil {
			t.Fatal(err)
		}
	}
	drainEast(t, e, http.MethodPost)
	// More audio brings the next final, where the stream moves.
	for i := 3200 * 20; i < 3200*40; i += 3200 {
		if err := c.WriteMessage(websocket.BinaryMessage, pcm[i:i+3200]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "us-east to empty while the stream goes on elsewhere", func() bool {
		return e.east().InFlight() == 0 && e.r.srv.proxy.OpenStreams() == 1
	})
}

// TestMoveAfterTheDeadline: a stream older than retry.deadline still gets
// every attempt of a move (the deadline runs from the loss).
func TestMoveAfterTheDeadline(t *testing.T) {
	e := newMxEnvWith(t, sim.Options{}, `
health: {probe: {disable: true}, breaker: {consecutive_failures: 1000000, min_requests: 1000000}}
retry: {deadline: 200ms}
`)
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	plain := plainScript(pcm, 3200)
	baseline := runScript(t, e, pcm, plain)
	script := withStep(plain, 30, step{chunk: -1, kill: true, heard: 1.35})
	start := time.Now()
	got := runScriptWith(t, e, resumeQuery, 3200, pcm, script, func() {
		<-time.After(time.Until(start.Add(300 * time.Millisecond))) // the stream is older than the deadline (time passing, not a sync)
		e.sims[1].SetMode(sim.ModeRefuse)                           // us-west refuses: the move must go on to eu-west
		e.proxies[0].Set(chaos.Kill())
	})
	e.sims[1].SetMode(sim.ModeOK)
	if strings.Join(got, "\n") != strings.Join(baseline, "\n") {
		t.Errorf("the client saw\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(baseline, "\n  "))
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "eu-west", Result: "ok"}]; n != 1 {
		t.Errorf("moves %v, want one to eu-west", e.r.srv.proxy.Resumes().Moves)
	}
}

// plainScript sends pcm in chunks, then CloseStream.
func plainScript(pcm []byte, chunk int) []step {
	var s []step
	for i := range (len(pcm) + chunk - 1) / chunk {
		s = append(s, step{chunk: i})
	}
	return append(s, step{chunk: -1, control: "CloseStream"})
}

// withStep is script with st inserted before step k.
func withStep(script []step, k int, st step) []step {
	out := append([]step{}, script[:k]...)
	out = append(out, st)
	return append(out, script[k:]...)
}

// drainEast drains us-east from the admin endpoint (POST), or puts it back
// (DELETE).
func drainEast(t *testing.T, e *mxEnv, method string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+e.r.admin+"/regions/us-east/drain", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s drain: %d %s", method, resp.StatusCode, body)
	}
	t.Logf("%s /regions/us-east/drain: %s", method, bytes.TrimSpace(body))
}
