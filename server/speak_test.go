package server

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// TestSpeakV2ThroughRouter drives /v2/speak (streaming TTS, Deepgram's
// asyncapi: Speak, Flush, Close) through the router as an SDK does, and
// transcribes the audio that came back: it arrived whole.
func TestSpeakV2ThroughRouter(t *testing.T) {
	r := startRouter(t, simRegions(""))
	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v2/speak?model=aura-2-thalia-en&encoding=linear16&sample_rate=16000"),
		http.Header{"Authorization": {"Token k"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("X-Earshot-Region") != "us-east" || resp.Header.Get("Dg-Request-Id") == "" {
		t.Errorf("handshake headers %v", resp.Header)
	}
	for _, m := range []string{`{"type":"Speak","text":"tell me "}`, `{"type":"Speak","text":"more"}`, `{"type":"Flush"}`} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	var audio []byte
	var types []string
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(types) == 0 || types[len(types)-1] != "Flushed" {
		mt, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read after %v: %v", types, err)
		}
		if mt == websocket.BinaryMessage {
			audio = append(audio, b...)
			continue
		}
		var m struct{ Type string }
		_ = json.Unmarshal(b, &m)
		types = append(types, m.Type)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Close"}`)); err != nil {
		t.Fatal(err)
	}
	_, ce := readAll(t, c)
	if ce.Code != websocket.CloseNormalClosure {
		t.Errorf("close %v after Close, want 1000", ce)
	}
	if types[0] != "Connected" {
		t.Errorf("messages %v, want Connected first and Flushed after the audio", types)
	}
	resp, err = httpPost(r.url("/v1/listen?punctuate=false"), sim.WAV(audio, 16000, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := transcriptIs("tell me more")(readBody(t, resp)); err != nil {
		t.Errorf("the audio /v2/speak sent back, transcribed: %v", err)
	}
}
