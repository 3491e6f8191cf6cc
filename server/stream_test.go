package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// message is a streaming message from a region, as far as tests read it.
type message struct {
	Type         string  `json:"type"`
	Start        float64 `json:"start"`
	Duration     float64 `json:"duration"`
	IsFinal      bool    `json:"is_final"`
	SpeechFinal  bool    `json:"speech_final"`
	FromFinal    bool    `json:"from_finalize"`
	ChannelIndex []int   `json:"channel_index"`
	Channel      struct {
		Alternatives []struct {
			Transcript string `json:"transcript"`
			Words      []struct {
				Word  string  `json:"word"`
				Start float64 `json:"start"`
				End   float64 `json:"end"`
			} `json:"words"`
		} `json:"alternatives"`
	} `json:"channel"`
	RequestID string `json:"request_id"`
}

func (m message) transcript() string {
	if len(m.Channel.Alternatives) == 0 {
		return ""
	}
	return m.Channel.Alternatives[0].Transcript
}

// readAll reads text messages until the connection closes, returning them
// and the close error.
func readAll(t *testing.T, c *websocket.Conn) ([]message, *websocket.CloseError) {
	t.Helper()
	var msgs []message
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		mt, data, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return msgs, ce
			}
			t.Fatalf("read: %v (after %d messages)", err, len(msgs))
		}
		if mt != websocket.TextMessage {
			continue
		}
		var m message
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("message %s: %v", data, err)
		}
		msgs = append(msgs, m)
	}
}

// sendAudio writes pcm in frames of n bytes, as a real-time client would,
// without pacing (the simulated engine does not need it).
func sendAudio(t *testing.T, c *websocket.Conn, pcm []byte, n int) {
	t.Helper()
	for len(pcm) > 0 {
		k := min(n, len(pcm))
		if err := c.WriteMessage(websocket.BinaryMessage, pcm[:k]); err != nil {
			t.Fatalf("send audio: %v", err)
		}
		pcm = pcm[k:]
	}
}

func TestLiveTranscriptionThroughRouter(t *testing.T) {
	r := startRouter(t, simRegions(""))
	hdr := http.Header{}
	c, resp, err := websocket.DefaultDialer.Dial(
		r.ws("/v1/listen?encoding=linear16&sample_rate=16000&channels=1&interim_results=true&endpointing=100"), hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("X-Earshot-Region") != "us-east" || resp.Header.Get("Dg-Request-Id") == "" {
		t.Errorf("handshake headers = %v", resp.Header)
	}
	// Odd frame sizes split samples across messages.
	sendAudio(t, c, sim.Synthesize(testWords, 16000, 2.0), 1277)
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`)); err != nil {
		t.Fatal(err)
	}
	msgs, ce := readAll(t, c)
	if ce.Code != websocket.CloseNormalClosure {
		t.Errorf("close = %v, want 1000", ce)
	}

	var finals []string
	var interims int
	var last message
	for _, m := range msgs {
		switch m.Type {
		case "Results":
			if m.IsFinal {
				if m.transcript() != "" { // an empty final may close a silent window
					finals = append(finals, m.transcript())
				}
				for _, w := range m.Channel.Alternatives[0].Words {
					if w.Start < m.Start || w.End > m.Start+m.Duration+1e-9 {
						t.Errorf("word %+v outside its result [%v, %v]", w, m.Start, m.Start+m.Duration)
					}
				}
			} else {
				interims++
			}
		}
		last = m
	}
	if got := strings.Join(finals, " "); got != "tell me more" {
		t.Errorf("final transcripts = %q, want %q", got, "tell me more")
	}
	if interims == 0 {
		t.Error("no interim results with interim_results=true")
	}
	if last.Type != "Metadata" || last.RequestID == "" {
		t.Errorf("last message = %+v, want Metadata", last)
	}

	// Exact timestamps: the words come back where the audio put them.
	var words []string
	for _, m := range msgs {
		if m.Type == "Results" && m.IsFinal {
			for _, w := range m.Channel.Alternatives[0].Words {
				words = append(words, fmt.Sprintf("%s@%g-%g", w.Word, w.Start, w.End))
			}
		}
	}
	if got, want := strings.Join(words, " "), "tell@0.25-0.5 me@0.625-0.75 more@1-1.5"; got != want {
		t.Errorf("words = %s, want %s", got, want)
	}
}

func TestFinalizeAndKeepAlivePassThrough(t *testing.T) {
	r := startRouter(t, simRegions(""))
	// With endpointing off, only Finalize can end the utterance.
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000&endpointing=false"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendAudio(t, c, sim.Synthesize([]sim.Word{{Text: "hold", Start: 0.5, End: 0.75}}, 16000, 1.0), 3200)
	for _, msg := range []string{`{"type":"KeepAlive"}`, `{"type":"Finalize"}`} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("no finalized result: %v", err)
		}
		var m message
		_ = json.Unmarshal(data, &m)
		if m.Type == "Results" && m.IsFinal {
			if !m.FromFinal || m.transcript() != "hold" {
				t.Errorf("finalized result = %s", data)
			}
			break
		}
	}
	_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
}

func TestRegionCloseCodesReachClient(t *testing.T) {
	r := startRouter(t, simRegions(""))
	for _, tc := range []struct {
		name, query string
		send        func(*websocket.Conn) error
		code        int
		reason      string
	}{
		{"silence times out with NET-0001", "?encoding=linear16&sample_rate=16000", func(*websocket.Conn) error { return nil }, 1011,
			"Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"},
		{"undecodable audio is DATA-0000", "", func(c *websocket.Conn) error {
			// No encoding= and no container: bytes nothing can decode.
			return c.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{0x11, 0x22}, 800))
		}, 1008, "DATA-0000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"+tc.query), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := tc.send(c); err != nil {
				t.Fatal(err)
			}
			_, ce := readAll(t, c)
			if ce.Code != tc.code || ce.Text != tc.reason {
				t.Errorf("close = %d %q, want %d %q", ce.Code, ce.Text, tc.code, tc.reason)
			}
		})
	}
}

// peer is a WebSocket region written for relay tests: it echoes messages,
// records what it saw, and closes as told.
type peer struct {
	mu        sync.Mutex
	got       []string // "text:..." / "binary:..." / "close:CODE:REASON" / "drop"
	protocols []string
	header    http.Header
	done      chan struct{}
	onText    func(c *websocket.Conn, msg string) bool // return false to stop reading
}

func newPeer() *peer { return &peer{done: make(chan struct{})} }

func (p *peer) record(s string) {
	p.mu.Lock()
	p.got = append(p.got, s)
	p.mu.Unlock()
}

func (p *peer) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

func (p *peer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{Subprotocols: []string{"token", "bearer"}}
	p.mu.Lock()
	p.protocols = websocket.Subprotocols(r)
	p.header = r.Header.Clone()
	p.mu.Unlock()
	c, err := up.Upgrade(w, r, http.Header{"Dg-Request-Id": {"peer-id"}})
	if err != nil {
		return
	}
	defer close(p.done)
	defer c.Close()
	c.SetCloseHandler(func(code int, text string) error {
		p.record(fmt.Sprintf("close:%d:%s", code, text))
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, "peer echo"), time.Now().Add(time.Second))
		return nil
	})
	for {
		mt, data, err := c.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, 4000, 1009) {
				p.record("drop")
			}
			return
		}
		kind := "binary"
		if mt == websocket.TextMessage {
			kind = "text"
		}
		p.record(kind + ":" + string(data))
		if mt == websocket.TextMessage && p.onText != nil && !p.onText(c, string(data)) {
			return
		}
		if err := c.WriteMessage(mt, data); err != nil {
			return
		}
	}
}

func startPeer(t *testing.T, p *peer) *router {
	up := httptest.NewServer(p)
	t.Cleanup(up.Close)
	return startRouter(t, fmt.Sprintf(`
health: {probe: {disable: true}}
limits: {max_message_bytes: 64KiB}
timeouts: {close_grace: 2s}
regions:
  - name: peer
    url: %s
    location: {lat: 39, lon: -77}
    headers: {Modal-Key: wk-region}
`, up.URL))
}

func TestRelayKeepsMessagesAndCloseCodes(t *testing.T) {
	p := newPeer()
	r := startPeer(t, p)
	d := websocket.Dialer{Subprotocols: []string{"token", "client-key"}}
	c, resp, err := d.Dial(r.ws("/v1/agent/converse?x=1"), http.Header{"Authorization": {"token client-key"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "token" {
		t.Errorf("echoed subprotocol = %q, want token", got)
	}
	if got := resp.Header.Get("Dg-Request-Id"); got != "peer-id" {
		t.Errorf("dg-request-id = %q, want the region's", got)
	}

	pong := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pong <- s; return nil })
	msgs := []struct {
		mt   int
		data string
	}{
		{websocket.TextMessage, `{"type":"Settings","audio":{"input":{"encoding":"linear16"}}}`},
		{websocket.BinaryMessage, "\x00\x01\x02\xff"},
		{websocket.TextMessage, `{"type":"SomethingNew","x":1}`},
		{websocket.BinaryMessage, strings.Repeat("A", 40000)}, // spans several frames
	}
	for _, m := range msgs {
		if err := c.WriteMessage(m.mt, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
		mt, data, err := c.ReadMessage()
		if err != nil || mt != m.mt || string(data) != m.data {
			t.Fatalf("echo of %.40q = type %d %.40q %v", m.data, mt, data, err)
		}
	}
	if err := c.WriteControl(websocket.PingMessage, []byte("are-you-there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	go func() { _, _, _ = c.ReadMessage() }() // the pong handler runs inside a read
	if got := recv(t, pong, "pong"); got != "are-you-there" {
		t.Errorf("pong = %q", got)
	}

	// The client's close code and reason reach the region; the region's
	// answer comes back.
	if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye now"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	recv(t, p.done, "the region to see the close")
	got := p.seen()
	if last := got[len(got)-1]; last != "close:4000:bye now" {
		t.Errorf("region saw %q last, want the client's close", last)
	}
	p.mu.Lock()
	hdr := p.header
	p.mu.Unlock()
	if hdr.Get("Modal-Key") != "wk-region" || hdr.Get("X-Forwarded-For") == "" {
		t.Errorf("region handshake headers = %v", hdr)
	}
}

// TestClientDropAfterCloseStream is the Go SDK's way of ending: CloseStream,
// then TCP is dropped with no close frame. The region must still get to send
// its final results and finish its close handshake cleanly.
func TestClientDropAfterCloseStream(t *testing.T) {
	p := newPeer()
	finalsSent := make(chan error, 1)
	p.onText = func(c *websocket.Conn, msg string) bool {
		if !strings.Contains(msg, "CloseStream") {
			return true
		}
		// Deliver the end of the stream, whether or not the router has
		// noticed yet that the client is gone.
		err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Results","is_final":true}`))
		if err == nil {
			err = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Metadata"}`))
		}
		if err == nil {
			err = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		}
		if err == nil {
			// The close handshake completes only if the router answers.
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, _, err = c.ReadMessage()
			if websocket.IsCloseError(err, 1000) {
				err = nil
			}
		}
		finalsSent <- err
		return false
	}
	r := startPeer(t, p)
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`)); err != nil {
		t.Fatal(err)
	}
	_ = c.NetConn().Close() // no close frame, as the Go SDK
	if err := recv(t, finalsSent, "the region's close handshake"); err != nil {
		t.Errorf("region could not finish cleanly: %v", err)
	}
	waitFor(t, "the stream's access log", func() bool { return len(r.accessLines()) > 0 })
	fields := r.accessLines()[0].ContextMap()
	if fields["client_close"] != int64(1006) || fields["region_close"] != int64(1000) || fields["status"] != int64(101) {
		t.Errorf("access log = %v", fields)
	}
}

func TestClientDropWithoutCloseStreamClosesRegion(t *testing.T) {
	p := newPeer()
	r := startPeer(t, p)
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.WriteMessage(websocket.BinaryMessage, []byte{1, 2})
	_, _, _ = c.ReadMessage()
	_ = c.NetConn().Close()
	recv(t, p.done, "the region to be closed")
	got := p.seen()
	if last := got[len(got)-1]; last != "close:1001:client went away" {
		t.Errorf("region saw %v, want a 1001 close", got)
	}
}

// TestOversizedMessageCloses1009: a client message over the limit closes
// the stream 1009, and the region hears only the close, never part of the
// message passed off as whole (a stream that can move reads messages whole;
// one that cannot, speak or agent, copies them through).
func TestOversizedMessageCloses1009(t *testing.T) {
	for _, path := range []string{"/v1/listen", "/v1/agent/converse"} {
		t.Run(path, func(t *testing.T) {
			p := newPeer()
			r := startPeer(t, p)
			c, _, err := websocket.DefaultDialer.Dial(r.ws(path), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.WriteMessage(websocket.BinaryMessage, make([]byte, 65*1024))
			_, _, err = c.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
				t.Errorf("read after an oversized message: %v, want close 1009", err)
			}
			recv(t, p.done, "the region to be closed")
			got := p.seen()
			if len(got) != 1 || !strings.HasPrefix(got[0], "close:1001") {
				t.Errorf("region saw %d events (last %.40q), want only a 1001 close", len(got), got[max(0, len(got)-1)])
			}
		})
	}
}

func TestBearerSubprotocolEcho(t *testing.T) {
	r := startRouter(t, simRegions(""))
	d := websocket.Dialer{Subprotocols: []string{"bearer", "eyJhbGciOi.jwt.sig"}}
	c, resp, err := d.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "bearer" {
		t.Errorf("echoed subprotocol = %q, want bearer", got)
	}
	_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
	_, ce := readAll(t, c)
	if ce.Code != 1000 {
		t.Errorf("close = %v", ce)
	}
}

// TestOtherStreamsThroughRouter drives Flux, streaming TTS and the voice
// agent through the relay far enough to prove each works end to end.
func TestOtherStreamsThroughRouter(t *testing.T) {
	r := startRouter(t, simRegions(""))
	speech := sim.Synthesize([]sim.Word{{Text: "hello", Start: 0.1, End: 0.4}}, 16000, 1.5)
	type step struct {
		mt   int
		data []byte
	}
	text := func(s string) step { return step{websocket.TextMessage, []byte(s)} }
	cases := []struct {
		name  string
		path  string
		steps []step
		want  []string // message types expected, in order, among those received
		audio bool     // binary frames expected back
	}{
		{"flux", "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000",
			[]step{text(`{"type":"Configure","thresholds":{"eot_threshold":0.8}}`), {websocket.BinaryMessage, speech}, text(`{"type":"CloseStream"}`)},
			[]string{"Connected", "ConfigureSuccess", "TurnInfo"}, false},
		{"speak", "/v1/speak?encoding=linear16&sample_rate=16000",
			[]step{text(`{"type":"Speak","text":"hello there"}`), text(`{"type":"Flush"}`)},
			[]string{"Metadata", "Flushed"}, true},
		{"agent", "/v1/agent/converse",
			[]step{text(`{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}}}`), {websocket.BinaryMessage, speech}},
			[]string{"Welcome", "SettingsApplied", "ConversationText"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := websocket.DefaultDialer.Dial(r.ws(tc.path), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, s := range tc.steps {
				if err := c.WriteMessage(s.mt, s.data); err != nil {
					t.Fatal(err)
				}
			}
			var types []string
			sawAudio := false
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			for !containsInOrder(types, tc.want) || (tc.audio && !sawAudio) {
				mt, data, err := c.ReadMessage()
				if err != nil {
					t.Fatalf("after %v: %v", types, err)
				}
				if mt == websocket.BinaryMessage {
					sawAudio = true
					continue
				}
				var m message
				_ = json.Unmarshal(data, &m)
				types = append(types, m.Type)
			}
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		})
	}
}

func containsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestShutdownDeliversEveryFinalResult stops the router, as SIGTERM does,
// while streams hold words the region has heard but not yet finalised
// (endpointing is off, so only the router's Finalize can finalise them).
// Each stream still gets its final transcript and Metadata, then 1001.
func TestShutdownDeliversEveryFinalResult(t *testing.T) {
	r := startRouter(t, simRegions(""))
	const streams = 4
	conns := make([]*websocket.Conn, streams)
	for i := range conns {
		c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000&endpointing=false&interim_results=true"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sendAudio(t, c, sim.Synthesize(testWords, 16000, 2.0), 3200)
		conns[i] = c
	}
	// The region has heard every word once an interim result holds them all.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("stream %d: %v before the region heard every word", i, err)
			}
			var m message
			_ = json.Unmarshal(data, &m)
			if m.IsFinal {
				t.Fatalf("stream %d: final result %s before shutdown with endpointing off", i, data)
			}
			if m.transcript() == "tell me more" {
				break
			}
		}
	}

	stopped := make(chan struct{})
	go func() {
		r.stop()
		close(stopped)
	}()
	for i, c := range conns {
		msgs, ce := readAll(t, c)
		var finals []string
		for _, m := range msgs {
			if m.Type == "Results" && m.IsFinal && m.transcript() != "" {
				finals = append(finals, m.transcript())
			}
		}
		if got := strings.Join(finals, " "); got != "tell me more" {
			t.Errorf("stream %d: final transcripts during shutdown = %q, want %q", i, got, "tell me more")
		}
		if len(msgs) == 0 || msgs[len(msgs)-1].Type != "Metadata" {
			t.Errorf("stream %d: last message is not Metadata: %+v", i, msgs)
		}
		if ce.Code != websocket.CloseGoingAway {
			t.Errorf("stream %d: closed with %v, want 1001", i, ce)
		}
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""), time.Now().Add(time.Second))
	}
	recv(t, stopped, "router stopped")
}
