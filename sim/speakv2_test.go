package sim_test

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// speakV2Message is the union of /v2/speak's server messages.
type speakV2Message struct {
	Type                   string   `json:"type"`
	RequestID              string   `json:"request_id"`
	ModelName              string   `json:"model_name"`
	ModelUUIDs             []string `json:"model_uuids"`
	SpeechID               string   `json:"speech_id"`
	AudioDurationMS        *int     `json:"audio_duration_ms"`
	InputCharacterCount    *int     `json:"input_character_count"`
	BillableCharacterCount *int     `json:"billable_character_count"`
	ControlsApplied        *struct {
		PronunciationsApplied int `json:"pronunciations_applied"`
	} `json:"controls_applied"`
	TotalAudioDurationMS        *int   `json:"total_audio_duration_ms"`
	TotalInputCharacterCount    *int   `json:"total_input_character_count"`
	TotalBillableCharacterCount *int   `json:"total_billable_character_count"`
	Code                        string `json:"code"`
	Description                 string `json:"description"`
}

// readSpeakV2 reads the next frames: audio bytes until a text message
// (whose type is "close" for a close frame).
func readSpeakV2(t *testing.T, c *websocket.Conn) ([]byte, speakV2Message) {
	t.Helper()
	var audio []byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		mt, b, err := c.ReadMessage()
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce):
			return audio, speakV2Message{Type: "close", Code: strconv.Itoa(ce.Code)}
		case err != nil:
			t.Fatalf("read: %v", err)
		case mt == websocket.BinaryMessage:
			audio = append(audio, b...)
		default:
			var m speakV2Message
			decodeJSON(t, b, &m)
			return audio, m
		}
	}
}

var speechID = regexp.MustCompile(`^dg_sp_[0-9a-f]{12}$`)

// A /v2/speak session as an SDK drives it: Speak chunks as an LLM streams
// them, Flush at the end of each reply, Close at the end.
func TestSpeakV2Stream(t *testing.T) {
	s := start(t, sim.Options{SpeakChunk: 1600, SpeakInterval: -1})
	d := websocket.Dialer{HandshakeTimeout: waitTimeout}
	c, res, err := d.Dial("ws://"+s.Addr()+"/v2/speak?model=flux-alexis-en&encoding=linear16&sample_rate=16000",
		http.Header{"Authorization": {"Token sim-key"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()

	_, connected := readSpeakV2(t, c)
	if connected.Type != "Connected" || connected.RequestID == "" || connected.RequestID != res.Header.Get("dg-request-id") ||
		connected.ModelName == "" || len(connected.ModelUUIDs) != 1 {
		t.Fatalf("first message %+v", connected)
	}

	type turn struct {
		chunks []string
		words  []string
	}
	turns := []turn{
		{[]string{"Sure, ", "I can ", "help."}, []string{"Sure,", "I", "can", "help."}},
		{[]string{"Anything else?"}, []string{"Anything", "else?"}},
	}
	totalMS, totalChars := 0, 0
	for i, tr := range turns {
		for _, chunk := range tr.chunks {
			sendJSON(t, c, map[string]string{"type": "Speak", "text": chunk})
		}
		sendJSON(t, c, map[string]string{"type": "Flush"})

		_, started := readSpeakV2(t, c)
		if started.Type != "SpeechStarted" || !speechID.MatchString(started.SpeechID) {
			t.Fatalf("turn %d: %+v, want SpeechStarted with a speech_id", i, started)
		}
		audio, flushed := readSpeakV2(t, c)
		if flushed.Type != "Flushed" || flushed.SpeechID != started.SpeechID {
			t.Errorf("turn %d: after the audio %+v, want Flushed %s", i, flushed, started.SpeechID)
		}
		_, meta := readSpeakV2(t, c)
		text := strings.Join(tr.chunks, "")
		if meta.Type != "SpeechMetadata" || meta.SpeechID != started.SpeechID || meta.AudioDurationMS == nil ||
			*meta.AudioDurationMS != len(audio)/2*1000/16000 || meta.InputCharacterCount == nil || *meta.InputCharacterCount != len(text) ||
			meta.BillableCharacterCount == nil || *meta.BillableCharacterCount != len(text) || meta.ControlsApplied == nil {
			t.Errorf("turn %d: %+v, want SpeechMetadata for %d bytes of audio and %d characters", i, meta, len(audio), len(text))
		}
		totalMS += len(audio) / 2 * 1000 / 16000
		totalChars += len(text)

		got, err := sim.Decode(audio, 16000)
		var words []string
		for _, w := range got {
			words = append(words, w.Text)
		}
		if err != nil || !reflect.DeepEqual(words, tr.words) {
			t.Errorf("turn %d: audio decodes to %q, %v; want %q", i, words, err, tr.words)
		}
	}

	// A Flush with nothing to say has no turn.
	sendJSON(t, c, map[string]string{"type": "Flush"})
	if _, m := readSpeakV2(t, c); m.Type != "Warning" || m.Code != "NO_ACTIVE_SPEECH" {
		t.Errorf("empty Flush: %+v, want Warning NO_ACTIVE_SPEECH", m)
	}

	sendJSON(t, c, map[string]string{"type": "Close"})
	_, session := readSpeakV2(t, c)
	if session.Type != "SessionMetadata" || session.TotalAudioDurationMS == nil || *session.TotalAudioDurationMS != totalMS ||
		session.TotalInputCharacterCount == nil || *session.TotalInputCharacterCount != totalChars ||
		session.TotalBillableCharacterCount == nil || *session.TotalBillableCharacterCount != totalChars {
		t.Errorf("after Close: %+v, want SessionMetadata of %d ms and %d characters", session, totalMS, totalChars)
	}
	if _, m := readSpeakV2(t, c); m.Type != "close" || m.Code != "1000" {
		t.Errorf("then %+v, want close 1000", m)
	}
}

// Close waits for the turn being spoken: its audio and SpeechMetadata come
// first.
func TestSpeakV2CloseAfterTurn(t *testing.T) {
	release := make(chan struct{})
	s := start(t, sim.Options{SpeakChunk: 1000, SpeakGate: func(ctx context.Context, chunk int) error {
		if chunk == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}})
	c, _ := dial(t, s, "/v2/speak?model=flux-alexis-en")
	readSpeakV2(t, c) // Connected
	sendJSON(t, c, map[string]string{"type": "Speak", "text": "one moment"})
	sendJSON(t, c, map[string]string{"type": "Flush"})
	sendJSON(t, c, map[string]string{"type": "Close"})
	if _, m := readSpeakV2(t, c); m.Type != "SpeechStarted" {
		t.Fatalf("got %+v, want SpeechStarted", m)
	}
	close(release) // the turn held after its first chunk may finish
	var types []string
	for {
		_, m := readSpeakV2(t, c)
		types = append(types, m.Type+m.Code)
		if m.Type == "close" {
			break
		}
	}
	equal(t, "after the held chunk", types, []string{"Flushed", "SpeechMetadata", "SessionMetadata", "close1000"})
}

func TestSpeakV2Routes(t *testing.T) {
	s := start(t, sim.Options{SpeakInterval: -1})
	c := client(t)
	res, body := do(t, c, http.MethodPost, s.URL()+"/v2/speak?model=flux-alexis-en&encoding=linear16&sample_rate=16000&container=none",
		"application/json", []byte(`{"text":"hello there"}`))
	words, err := sim.Decode(body, 16000)
	if res.StatusCode != http.StatusOK || err != nil || len(words) != 2 || words[1].Text != "there" {
		t.Errorf("POST /v2/speak: %d, %v, %v", res.StatusCode, words, err)
	}
	res, _ = do(t, c, http.MethodGet, s.URL()+"/v2/speak", "", nil) // not an upgrade
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("GET /v2/speak without an upgrade: %d", res.StatusCode)
	}
	if _, res, err := tryDial(s, "/v2/speak?encoding=mp3", nil); err == nil || res.StatusCode != http.StatusBadRequest {
		t.Errorf("mp3 on the stream: %v %v", err, res)
	}
}
