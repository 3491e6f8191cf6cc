package sim_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

func TestStreamInterimAndFinalResults(t *testing.T) {
	s := start(t, sim.Options{})
	audio := sim.Synthesize(helloWorld(), 16000, helloWorldTotal)
	// endpointing=200 keeps both words (125 ms apart) in one final, which
	// ends 200 ms after "world": 0.875+0.2.
	want := []string{
		"Results interim [0+0.5] hello@0.25-0.5",
		"Results interim [0+0.875] hello@0.25-0.5 world@0.625-0.875",
		"Results speech_final [0+1.075] hello@0.25-0.5 world@0.625-0.875",
		"Results final [1.075+0.175] ", // the rest of the audio, flushed by CloseStream
		"Metadata 1.25",
	}
	for _, chunk := range []int{1, 3, 641, 4096, len(audio)} {
		t.Run(fmt.Sprint("chunk ", chunk), func(t *testing.T) {
			c, res := dial(t, s, "/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true&endpointing=200")
			sendAudio(t, c, audio, chunk)
			sendJSON(t, c, map[string]string{"type": "CloseStream"})
			got, closed := readUntilClose(t, c)
			equal(t, "messages", got, want)
			if closed.Code != websocket.CloseNormalClosure {
				t.Errorf("close %d %q, want 1000", closed.Code, closed.Text)
			}
			if id := res.Header.Get("dg-request-id"); id == "" {
				t.Error("no dg-request-id on the handshake")
			}
		})
	}
}

func TestStreamMessageShapes(t *testing.T) {
	s := start(t, sim.Options{})
	audio := sim.Synthesize(helloWorld(), 16000, helloWorldTotal)
	c, res := dial(t, s, "/v1/listen")
	sendAudio(t, c, audio, 3200)
	// Default endpointing is 10 ms: each word is its own final.
	first := readText(t, c)
	if first.String() != "Results speech_final [0+0.51] hello@0.25-0.5" {
		t.Errorf("first result %v", first)
	}
	id := res.Header.Get("dg-request-id")
	if first.Metadata.RequestID != id || first.Metadata.ModelInfo.Name != "sim-nova" ||
		fmt.Sprint(first.ChannelIndex) != "[0 1]" {
		t.Errorf("result metadata %+v, channel_index %v", first.Metadata, first.ChannelIndex)
	}
	if got := readText(t, c).String(); got != "Results speech_final [0.51+0.375] world@0.625-0.875" {
		t.Errorf("second result %v", got)
	}
	sendJSON(t, c, map[string]string{"type": "CloseStream"})
	final := readText(t, c)
	meta := readText(t, c)
	sum := sha256.Sum256(audio)
	if final.String() != "Results final [0.885+0.365] " || meta.Type != "Metadata" || meta.RequestID != id ||
		meta.Sha256 != hex.EncodeToString(sum[:]) || meta.Channels != 1 || meta.Duration != helloWorldTotal {
		t.Errorf("after CloseStream: %v, %+v", final, meta)
	}
	if f := read(t, c); f.close == nil || f.close.Code != websocket.CloseNormalClosure {
		t.Errorf("want close 1000, got %+v", f)
	}
}

func TestStreamFinalize(t *testing.T) {
	s := start(t, sim.Options{})
	audio := sim.Synthesize(helloWorld(), 16000, helloWorldTotal)
	c, _ := dial(t, s, "/v1/listen?endpointing=false&interim_results=true")
	// Up to 0.7 s: "hello" complete, "world" sounding since 0.625.
	sendAudio(t, c, audio[:2*11200], 2*11200)
	if got := readText(t, c).String(); got != "Results interim [0+0.5] hello@0.25-0.5" {
		t.Errorf("interim %v", got)
	}
	sendJSON(t, c, map[string]string{"type": "Finalize"})
	// The final stops where "world" began.
	if got := readText(t, c).String(); got != "Results from_finalize [0+0.625] hello@0.25-0.5" {
		t.Errorf("finalize %v", got)
	}
	sendAudio(t, c, audio[2*11200:], 1000)
	if got := readText(t, c).String(); got != "Results interim [0.625+0.25] world@0.625-0.875" {
		t.Errorf("interim %v", got)
	}
	sendJSON(t, c, map[string]string{"type": "KeepAlive"})
	sendJSON(t, c, map[string]string{"type": "SomethingNew"}) // unknown types are ignored
	sendJSON(t, c, map[string]string{"type": "Finalize"})
	if got := readText(t, c).String(); got != "Results from_finalize [0.625+0.625] world@0.625-0.875" {
		t.Errorf("finalize %v", got)
	}
	// An empty binary frame ends the stream like CloseStream; all audio is
	// finalized, so only Metadata remains.
	if err := c.WriteMessage(websocket.BinaryMessage, nil); err != nil {
		t.Fatal(err)
	}
	got, closed := readUntilClose(t, c)
	equal(t, "after empty frame", got, []string{"Metadata 1.25"})
	if closed.Code != websocket.CloseNormalClosure {
		t.Errorf("close %d", closed.Code)
	}
}

func TestStreamVADAndUtteranceEnd(t *testing.T) {
	s := start(t, sim.Options{})
	audio := sim.Synthesize(helloWorld(), 16000, 2)
	c, _ := dial(t, s, "/v1/listen?interim_results=true&vad_events=true&utterance_end_ms=1000&endpointing=300")
	sendAudio(t, c, audio, 5000)
	sendJSON(t, c, map[string]string{"type": "CloseStream"})
	got, _ := readUntilClose(t, c)
	equal(t, "messages", got, []string{
		"SpeechStarted 0.25",
		"Results interim [0+0.5] hello@0.25-0.5",
		"SpeechStarted 0.625",
		"Results interim [0+0.875] hello@0.25-0.5 world@0.625-0.875",
		"Results speech_final [0+1.175] hello@0.25-0.5 world@0.625-0.875",
		"UtteranceEnd 0.875", // 1 s of silence after "world"
		"Results final [1.175+0.825] ",
		"Metadata 2",
	})
}

func TestStreamUndecodableAudio(t *testing.T) {
	s := start(t, sim.Options{})
	c, _ := dial(t, s, "/v1/listen")
	sendAudio(t, c, samples(0, 0, 500, -500, 500, 0), 100)
	got, closed := readUntilClose(t, c)
	if len(got) != 0 || closed.Code != websocket.ClosePolicyViolation || closed.Text != "DATA-0000" {
		t.Errorf("got %q, close %d %q; want close 1008 DATA-0000", got, closed.Code, closed.Text)
	}
}

// net0001 is Deepgram's close reason for a client that sent nothing.
const net0001 = "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"

func TestStreamSilenceTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := start(t, sim.Options{SilenceTimeout: timeout})
	tests := []struct {
		name  string
		setup func(t *testing.T, c *websocket.Conn)
		heard string // the Metadata's duration
	}{
		{"nothing sent", func(*testing.T, *websocket.Conn) {}, "0"},
		{"keepalive before audio does not count", func(t *testing.T, c *websocket.Conn) {
			sendJSON(t, c, map[string]string{"type": "KeepAlive"})
		}, "0"},
		{"audio then silence", func(t *testing.T, c *websocket.Conn) {
			sendAudio(t, c, make([]byte, 320), 320)
		}, "0.01"},
		{"tone then silence", func(t *testing.T, c *websocket.Conn) {
			sendAudio(t, c, tone(16000, 0.25), 3200)
		}, "0.25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := dial(t, s, "/v1/listen?encoding=linear16&sample_rate=16000")
			begin := time.Now()
			tt.setup(t, c)
			// Deepgram sends Metadata, its sha256 "incomplete", before such a close.
			meta := readText(t, c)
			if meta.String() != "Metadata "+tt.heard || meta.Sha256 != "incomplete" || meta.RequestID == "" || meta.Channels != 1 {
				t.Errorf("before the timeout close: %v %+v, want Metadata %s with sha256 incomplete", meta, meta, tt.heard)
			}
			got, closed := readUntilClose(t, c)
			if len(got) != 0 || closed.Code != websocket.CloseInternalServerErr || closed.Text != net0001 {
				t.Errorf("then %q, close %d %q; want 1011 %q", got, closed.Code, closed.Text, net0001)
			}
			if len(closed.Text) > 123 {
				t.Errorf("close reason of %d bytes: a close frame holds 123", len(closed.Text))
			}
			if took := time.Since(begin); took < timeout {
				t.Errorf("closed after %v, before the %v timeout", took, timeout)
			}
		})
	}
}

func TestStreamKeepAliveAfterAudioKeepsStreamOpen(t *testing.T) {
	const timeout = 400 * time.Millisecond
	s := start(t, sim.Options{SilenceTimeout: timeout})
	c, _ := dial(t, s, "/v1/listen")
	sendAudio(t, c, make([]byte, 320), 320)
	// KeepAlives every timeout/4 for two timeouts: the stream must stay open.
	end := time.Now().Add(2 * timeout)
	tick := time.NewTicker(timeout / 4)
	defer tick.Stop()
	for time.Now().Before(end) {
		<-tick.C
		sendJSON(t, c, map[string]string{"type": "KeepAlive"})
	}
	sendJSON(t, c, map[string]string{"type": "CloseStream"})
	got, closed := readUntilClose(t, c)
	equal(t, "messages", got, []string{"Results final [0+0.01] ", "Metadata 0.01"})
	if closed.Code != websocket.CloseNormalClosure {
		t.Errorf("close %d %q", closed.Code, closed.Text)
	}
}

func TestStreamHandshake(t *testing.T) {
	s := start(t, sim.Options{})
	tests := []struct {
		name     string
		offered  []string
		wantEcho string
	}{
		{"no subprotocol", nil, ""},
		{"browser token auth", []string{"token", "secret-key"}, "token"},
		{"browser bearer auth", []string{"bearer", "a.jwt.value"}, "bearer"},
		{"other protocol is not echoed", []string{"chat"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := websocket.Dialer{HandshakeTimeout: waitTimeout, Subprotocols: tt.offered}
			c, res, err := d.Dial("ws://"+s.Addr()+"/v1/listen", http.Header{"Authorization": {"token abc"}})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if c.Subprotocol() != tt.wantEcho {
				t.Errorf("subprotocol %q, want %q", c.Subprotocol(), tt.wantEcho)
			}
			if res.Header.Get("dg-request-id") == "" || res.Header.Get(sim.HeaderEngine) != "test-region" {
				t.Errorf("handshake headers %v", res.Header)
			}
		})
	}
	_, res, err := tryDial(s, "/v1/listen?encoding=bogus", nil)
	if err == nil || res == nil || res.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown encoding: %v, %v", err, res)
	}
}
