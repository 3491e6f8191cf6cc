package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	listenapi "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/listen/v1/rest"
	msginterfaces "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/listen/v1/websocket/interfaces"
	interfaces "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/interfaces"
	listen "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/listen"

	"github.com/earshot/earshot/internal/chaos"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/routing"
	"github.com/earshot/earshot/sim"
)

// These tests point the official Deepgram Go SDK (v3.5.0) at the router, as
// a customer would, over loopback sockets to simulated regions.
//
// The SDK logs through klog at verbosity 1 and up; klog's default verbosity
// is 0, so it is silent unless listen.Init is called. Init is deliberately
// not called: it registers klog's flags on the test binary's flag set (a
// second call panics) and re-parses the command line. klog's flush daemon
// only runs when logging to files, so it never starts here.

// sdkEnv clears the environment variables with which the SDK would override
// the options a test gives it (DEEPGRAM_HOST above all).
func sdkEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"DEEPGRAM_HOST", "DEEPGRAM_API_VERSION", "DEEPGRAM_API_PATH", "DEEPGRAM_SELF_HOSTED",
		"DEEPGRAM_WEBSOCKET_REDIRECT", "DEEPGRAM_WEBSOCKET_KEEP_ALIVE", "DEEPGRAM_WEBSOCKET_REPLY_AUTO_FLUSH",
		"DEEPGRAM_DEBUG",
	} {
		t.Setenv(k, "")
	}
}

// sdkREST is the SDK's pre-recorded client, pointed at the router. Its HTTP
// transport is the SDK's own; its idle connections are closed when the test
// ends so that no connection goroutine outlives it.
func sdkREST(t *testing.T, r *router) *listenapi.Client {
	t.Helper()
	rc := listen.NewREST("test-key", &interfaces.ClientOptions{Host: "http://" + r.api})
	if rc == nil {
		t.Fatal("listen.NewREST returned nil")
	}
	t.Cleanup(rc.CloseIdleConnections)
	return listenapi.New(rc)
}

func TestSDKPrerecorded(t *testing.T) {
	sdkEnv(t)
	r := startRouter(t, simRegions(""))
	dg := sdkREST(t, r)

	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2.0), 16000, 1)
	res, err := dg.FromStream(t.Context(), bytes.NewReader(audio), &interfaces.PreRecordedTranscriptionOptions{
		Model: "nova-3", Punctuate: true, SmartFormat: true})
	if err != nil {
		t.Fatalf("FromStream: %v", err)
	}
	if res.Metadata == nil || res.Results == nil || len(res.Results.Channels) != 1 ||
		len(res.Results.Channels[0].Alternatives) == 0 {
		t.Fatalf("response = %+v, want one channel with an alternative", res)
	}
	if res.Metadata.Duration != 2.0 || res.Metadata.Channels != 1 || res.Metadata.RequestID == "" {
		t.Errorf("metadata = %+v, want duration 2, one channel and a request id", res.Metadata)
	}
	alt := res.Results.Channels[0].Alternatives[0]
	if alt.Transcript != "tell me more" {
		t.Errorf("transcript = %q, want %q", alt.Transcript, "tell me more")
	}
	var got []sim.Word
	for _, w := range alt.Words {
		got = append(got, sim.Word{Text: w.Word, Start: w.Start, End: w.End})
	}
	if want := wordList(testWords); wordList(got) != want {
		t.Errorf("words = %s, want %s", wordList(got), want)
	}

	waitFor(t, "the request's access log", func() bool { return len(r.accessLines()) > 0 })
	fields := r.accessLines()[0].ContextMap()
	if fields["method"] != "POST" || fields["path"] != "/v1/listen" || fields["status"] != int64(200) ||
		fields["region"] != "us-east" || fields["bytes_in"] != int64(len(audio)) {
		t.Errorf("access log = %v, want POST /v1/listen 200 from us-east with the whole body", fields)
	}
}

// wordList renders words as "text@start-end ...", exactly.
func wordList(words []sim.Word) string {
	parts := make([]string, len(words))
	for i, w := range words {
		parts[i] = fmt.Sprintf("%s@%g-%g", w.Text, w.Start, w.End)
	}
	return strings.Join(parts, " ")
}

// liveEvents is an msginterfaces.LiveMessageCallback that records what the
// SDK delivers. The SDK calls it from its own goroutines, so it never
// blocks: it appends under a lock and signals on channels it closes once.
type liveEvents struct {
	mu       sync.Mutex
	opens    int
	closes   int
	results  []msginterfaces.MessageResponse
	metadata []msginterfaces.MetadataResponse
	errs     []msginterfaces.ErrorResponse
	other    [][]byte

	finalizeOnce sync.Once
	finalized    chan struct{} // closed at the first from_finalize final
}

var _ msginterfaces.LiveMessageCallback = (*liveEvents)(nil)

func newLiveEvents() *liveEvents { return &liveEvents{finalized: make(chan struct{})} }

func (e *liveEvents) Open(*msginterfaces.OpenResponse) error {
	e.mu.Lock()
	e.opens++
	e.mu.Unlock()
	return nil
}

func (e *liveEvents) Message(mr *msginterfaces.MessageResponse) error {
	e.mu.Lock()
	e.results = append(e.results, *mr)
	e.mu.Unlock()
	if mr.IsFinal && mr.FromFinalize {
		e.finalizeOnce.Do(func() { close(e.finalized) })
	}
	return nil
}

func (e *liveEvents) Metadata(md *msginterfaces.MetadataResponse) error {
	e.mu.Lock()
	e.metadata = append(e.metadata, *md)
	e.mu.Unlock()
	return nil
}

func (e *liveEvents) SpeechStarted(*msginterfaces.SpeechStartedResponse) error { return nil }
func (e *liveEvents) UtteranceEnd(*msginterfaces.UtteranceEndResponse) error   { return nil }

func (e *liveEvents) Close(*msginterfaces.CloseResponse) error {
	e.mu.Lock()
	e.closes++
	e.mu.Unlock()
	return nil
}

func (e *liveEvents) Error(er *msginterfaces.ErrorResponse) error {
	e.mu.Lock()
	e.errs = append(e.errs, *er)
	e.mu.Unlock()
	return nil
}

func (e *liveEvents) UnhandledEvent(b []byte) error {
	e.mu.Lock()
	e.other = append(e.other, append([]byte(nil), b...))
	e.mu.Unlock()
	return nil
}

// snapshot returns copies of what has been recorded so far.
func (e *liveEvents) snapshot() (opens, closes int, results []msginterfaces.MessageResponse, errs []msginterfaces.ErrorResponse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.opens, e.closes, append([]msginterfaces.MessageResponse(nil), e.results...),
		append([]msginterfaces.ErrorResponse(nil), e.errs...)
}

// resultLine summarises a Results message for comparison.
func resultLine(m msginterfaces.MessageResponse) string {
	kind := "interim"
	switch {
	case m.IsFinal && m.FromFinalize:
		kind = "final/from_finalize"
	case m.IsFinal && m.SpeechFinal:
		kind = "final/speech_final"
	case m.IsFinal:
		kind = "final"
	}
	transcript := ""
	if len(m.Channel.Alternatives) > 0 {
		transcript = m.Channel.Alternatives[0].Transcript
	}
	return fmt.Sprintf("%s %q", kind, transcript)
}

// TestSDKLiveStream streams synthesized speech through the SDK's WebSocket
// client the way an application does: Connect, Stream the audio, KeepAlive,
// Finalize, Stop.
//
// The audio is laid out so that both ways of ending an utterance show up
// with endpointing=100: "tell" and "me" are followed by more than 100 ms of
// silence (finals with speech_final), while the audio stops 50 ms after
// "more" ends, so "more" is complete (the sim finalizes only completed
// words) but not endpointed, and only Finalize can deliver it.
func TestSDKLiveStream(t *testing.T) {
	sdkEnv(t)
	r := startRouter(t, simRegions(""))
	const total = 1.55 // seconds of audio: "more" ends at 1.5
	pcm := sim.Synthesize(testWords, 16000, total)

	ev := newLiveEvents()
	cOpts := &interfaces.ClientOptions{Host: "ws://" + r.api, EnableKeepAlive: true}
	tOpts := &interfaces.LiveTranscriptionOptions{
		Model: "nova-3", Encoding: "linear16", SampleRate: 16000, Channels: 1,
		InterimResults: true, Endpointing: "100",
	}
	dg, err := listen.NewWSUsingCallback(t.Context(), "test-key", cOpts, tOpts, ev)
	if err != nil {
		t.Fatalf("NewWSUsingCallback: %v", err)
	}
	if !dg.Connect() {
		t.Fatal("Connect failed")
	}
	stopped := false
	defer func() {
		if !stopped { // a failed assertion must still end the SDK's goroutines
			dg.Stop()
		}
	}()

	// Stream reads the audio in the SDK's 2 KiB chunks and ends with io.EOF.
	if err := dg.Stream(bytes.NewReader(pcm)); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("Stream: %v", err)
	}
	// The SDK's own KeepAlive ticks every 5 s, longer than this test; send
	// one by hand so that a KeepAlive crosses the router mid-stream.
	if err := dg.KeepAlive(); err != nil {
		t.Fatalf("KeepAlive: %v", err)
	}
	if err := dg.Finalize(); err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	recv(t, ev.finalized, "a from_finalize final")
	stopped = true
	dg.Stop()

	opens, closes, results, errs := ev.snapshot()
	if opens != 1 || closes != 1 {
		t.Errorf("Open called %d times, Close %d times; want once each", opens, closes)
	}

	// Every result, in order: an interim per completed word, a final per
	// endpointed word, and Finalize's final for the last one.
	var lines []string
	for _, m := range results {
		lines = append(lines, resultLine(m))
	}
	wantLines := []string{
		`interim "tell"`, `final/speech_final "tell"`,
		`interim "me"`, `final/speech_final "me"`,
		`interim "more"`, `final/from_finalize "more"`,
	}
	if got, want := strings.Join(lines, "\n"), strings.Join(wantLines, "\n"); got != want {
		t.Errorf("results:\n%s\nwant:\n%s", got, want)
	}

	// The finals carry exactly the words and times that were encoded, and
	// their windows tile the audio: [0, 0.6) [0.6, 0.85) [0.85, 1.55).
	var finalWords []sim.Word
	var windows []string
	for _, m := range results {
		if !m.IsFinal {
			continue
		}
		windows = append(windows, fmt.Sprintf("%.4f+%.4f", m.Start, m.Duration))
		if m.Metadata.RequestID == "" {
			t.Errorf("final %s has no metadata.request_id", resultLine(m))
		}
		for _, w := range m.Channel.Alternatives[0].Words {
			finalWords = append(finalWords, sim.Word{Text: w.Word, Start: w.Start, End: w.End})
			if w.Start < m.Start || w.End > m.Start+m.Duration+1e-9 {
				t.Errorf("word %+v outside its result [%v, %v]", w, m.Start, m.Start+m.Duration)
			}
		}
	}
	if got, want := wordList(finalWords), wordList(testWords); got != want {
		t.Errorf("final words = %s, want %s", got, want)
	}
	if got, want := strings.Join(windows, " "), "0.0000+0.6000 0.6000+0.2500 0.8500+0.7000"; got != want {
		t.Errorf("final windows (start+duration) = %s, want %s", got, want)
	}
	if last := results[len(results)-1]; math.Abs(last.Start+last.Duration-total) > 1e-9 {
		t.Errorf("Finalize's final ends at %v, want the end of the audio %v", last.Start+last.Duration, total)
	}
	if len(errs) != 0 {
		t.Errorf("the SDK reported errors: %+v", errs)
	}

	// Stop sends CloseStream and then drops TCP without a close frame, so
	// the router sees the client end with 1006; having seen CloseStream, it
	// lets the region finish and answers the region's 1000 itself.
	stream := func() map[string]any {
		for _, e := range r.accessLines() {
			if f := e.ContextMap(); f["path"] == "/v1/listen" && f["method"] == "GET" {
				return f
			}
		}
		return nil
	}
	waitFor(t, "the stream's access log", func() bool { return stream() != nil })
	f := stream()
	if f["status"] != int64(http.StatusSwitchingProtocols) || f["region"] != "us-east" ||
		f["client_close"] != int64(1006) || f["region_close"] != int64(1000) {
		t.Errorf("access log = %v, want status 101 from us-east, client_close 1006, region_close 1000", f)
	}
	// Audio frames, the KeepAlive, Finalize and CloseStream all reached the region.
	chunks := (len(pcm) + 2047) / 2048
	if n, _ := f["messages_in"].(int64); n < int64(chunks+3) {
		t.Errorf("messages_in = %v, want at least %d (%d audio chunks, KeepAlive, Finalize, CloseStream)",
			f["messages_in"], chunks+3, chunks)
	}
	if n, _ := f["bytes_in"].(int64); n < int64(len(pcm)) {
		t.Errorf("bytes_in = %v, want at least the %d bytes of audio", f["bytes_in"], len(pcm))
	}
	waitFor(t, "the stream's capacity to be released", func() bool {
		return r.srv.live().regions[0].health.InFlight() == 0
	})
}

// TestSDKErrors checks that errors reach the SDK in a shape it parses.
func TestSDKErrors(t *testing.T) {
	sdkEnv(t)
	r := startRouter(t, simRegions(""))
	dg := sdkREST(t, r)
	speech := sim.WAV(sim.Synthesize(testWords, 16000, 2.0), 16000, 1)

	for _, tc := range []struct {
		name       string
		region     string // X-Earshot-Region, sent as an SDK custom header
		audio      []byte
		wantCode   string
		wantRegion string // the response's X-Earshot-Region
	}{
		// The router's own error.
		{"unknown region override", "mars", speech, "BAD_REQUEST", ""},
		// A region's error passes through untouched (the sim answers
		// undecodable audio as Deepgram does, err_code "Bad Request").
		{"region's own error", "", []byte{0, 0, 0x11, 0x22, 0x33, 0x44, 0, 0}, "Bad Request", "us-east"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.region != "" {
				ctx = interfaces.WithCustomHeaders(ctx, http.Header{routing.OverrideHeader: {tc.region}})
			}
			res, err := dg.FromStream(ctx, bytes.NewReader(tc.audio), &interfaces.PreRecordedTranscriptionOptions{Model: "nova-3"})
			var se *interfaces.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("FromStream = %+v, %v; want a StatusError", res, err)
			}
			if se.DeepgramError == nil {
				t.Fatalf("error %v: the SDK did not parse a Deepgram error", err)
			}
			if se.Resp.StatusCode != http.StatusBadRequest || se.DeepgramError.ErrCode != tc.wantCode ||
				se.DeepgramError.ErrMsg == "" {
				t.Errorf("status %d, Deepgram error %+v; want 400 with err_code %s and a message",
					se.Resp.StatusCode, se.DeepgramError, tc.wantCode)
			}
			if got := se.Resp.Header.Get(routing.OverrideHeader); got != tc.wantRegion {
				t.Errorf("X-Earshot-Region = %q, want %q", got, tc.wantRegion)
			}
		})
	}

	// The streaming client sends the same header on its upgrade, and the
	// router refuses it before dialling a region. The SDK reports only that
	// Connect failed (it closes the refused handshake's body unread), so the
	// router's access log shows why.
	t.Run("stream to an unknown region", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cOpts := &interfaces.ClientOptions{Host: "ws://" + r.api, WSHeaderProcessor: func(h http.Header) {
			h.Set(routing.OverrideHeader, "mars")
		}}
		ev := newLiveEvents()
		ws, err := listen.NewWSUsingCallbackWithCancel(ctx, cancel, "test-key", cOpts,
			&interfaces.LiveTranscriptionOptions{Encoding: "linear16", SampleRate: 16000}, ev)
		if err != nil {
			t.Fatalf("NewWSUsingCallbackWithCancel: %v", err)
		}
		defer ws.Stop()
		// One attempt: the SDK waits 2 s between retries.
		if ws.ConnectWithCancel(ctx, cancel, 1) {
			t.Fatal("Connect succeeded with an unknown region override")
		}
		var f map[string]any
		waitFor(t, "the refused upgrade's access log", func() bool {
			for _, e := range r.accessLines() {
				if m := e.ContextMap(); m["method"] == "GET" && m["path"] == "/v1/listen" {
					f = m
					return true
				}
			}
			return false
		})
		if f["status"] != int64(http.StatusBadRequest) || f["region"] != "" {
			t.Errorf("access log = %v, want a 400 answered by the router", f)
		}
		if opens, _, _, _ := ev.snapshot(); opens != 0 {
			t.Errorf("Open called %d times on a refused stream", opens)
		}
	})
}

// finalWords counts the words in the finals recorded so far.
func (e *liveEvents) finalWords() []sim.Word {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []sim.Word
	for _, m := range e.results {
		if m.IsFinal && len(m.Channel.Alternatives) > 0 {
			for _, w := range m.Channel.Alternatives[0].Words {
				out = append(out, sim.Word{Text: w.Word, Start: w.Start, End: w.End})
			}
		}
	}
	return out
}

// TestSDKStreamSurvivesRegionKill streams through the official Go SDK and
// kills the stream's region halfway: the SDK never notices (one Open, no
// error, no reconnect), and its finals hold every word once with the times
// that were encoded, continuous across the move.
func TestSDKStreamSurvivesRegionKill(t *testing.T) {
	sdkEnv(t)
	e := newMxEnv(t, sim.Options{})
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	ev := newLiveEvents()
	cOpts := &interfaces.ClientOptions{Host: "ws://" + e.r.api}
	tOpts := &interfaces.LiveTranscriptionOptions{
		Model: "nova-3", Encoding: "linear16", SampleRate: 16000, Channels: 1,
		InterimResults: true, Endpointing: "100", UtteranceEndMs: "1000", VadEvents: true,
	}
	dg, err := listen.NewWSUsingCallback(t.Context(), "test-key", cOpts, tOpts, ev)
	if err != nil {
		t.Fatalf("NewWSUsingCallback: %v", err)
	}
	if !dg.Connect() {
		t.Fatal("Connect failed")
	}
	defer dg.Stop()
	half := 3200 * 35 // 3.5 s: inside "six"
	if err := dg.Stream(bytes.NewReader(pcm[:half])); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("Stream: %v", err)
	}
	waitFor(t, "the first words' finals", func() bool { return len(ev.finalWords()) >= 3 })
	e.proxies[0].Set(chaos.Kill())
	if err := dg.Stream(bytes.NewReader(pcm[half:])); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("Stream after the kill: %v", err)
	}
	waitFor(t, "every word's final", func() bool { return len(ev.finalWords()) >= len(resumeWords) })
	if got, want := wordList(ev.finalWords()), wordList(resumeWords); got != want {
		t.Errorf("final words = %s\nwant %s", got, want)
	}
	opens, _, _, errs := ev.snapshot()
	if opens != 1 || len(errs) != 0 {
		t.Errorf("the SDK opened %d times and saw errors %+v; want one open, no error", opens, errs)
	}
	if mv := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; mv != 1 {
		t.Errorf("moves %v, want the stream moved once", e.r.srv.proxy.Resumes().Moves)
	}
}

// TestSDKLiveStreamHearsRealAudio: the Go SDK streaming sound that is not
// the simulation's word encoding (a 440 Hz tone with noise, as from a
// microphone) through the router gets what Deepgram sends for audio with
// no speech: empty results, on one connection. It used to be closed 1008
// DATA-0000 after its first chunk, and the SDK reconnected dozens of times
// a second.
func TestSDKLiveStreamHearsRealAudio(t *testing.T) {
	sdkEnv(t)
	r := startRouter(t, simRegions(""))
	pcm := make([]byte, 2*16000*5/2) // 2.5 s of linear16
	seed := uint32(1)
	for i := 0; i < len(pcm)/2; i++ {
		seed = seed*1664525 + 1013904223
		v := 6000*math.Sin(2*math.Pi*440*float64(i)/16000) + float64(int32(seed>>16)%400-200)
		binary.LittleEndian.PutUint16(pcm[2*i:], uint16(int16(v)))
	}
	ev := newLiveEvents()
	dg, err := listen.NewWSUsingCallback(t.Context(), "test-key", &interfaces.ClientOptions{Host: "ws://" + r.api},
		&interfaces.LiveTranscriptionOptions{Model: "nova-3", Encoding: "linear16", SampleRate: 16000, Channels: 1,
			InterimResults: true, Endpointing: "300"}, ev)
	if err != nil {
		t.Fatalf("NewWSUsingCallback: %v", err)
	}
	if !dg.Connect() {
		t.Fatal("Connect failed")
	}
	if err := dg.Stream(bytes.NewReader(pcm)); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("Stream: %v", err)
	}
	waitFor(t, "an empty final for the tone", func() bool {
		_, _, results, _ := ev.snapshot()
		return slices.ContainsFunc(results, func(m msginterfaces.MessageResponse) bool { return m.IsFinal })
	})
	dg.Stop()
	opens, closes, results, errs := ev.snapshot()
	if opens != 1 || closes != 1 || len(errs) != 0 {
		t.Errorf("opens %d, closes %d, errors %+v; want one connection and no error", opens, closes, errs)
	}
	for _, m := range results {
		if len(m.Channel.Alternatives) == 0 || m.Channel.Alternatives[0].Transcript != "" {
			t.Errorf("result %s: want an empty transcript for a tone", resultLine(m))
		}
	}
}
