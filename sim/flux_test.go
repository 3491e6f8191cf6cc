package sim_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// fluxMessages reads a Flux stream to its close, checking what every
// message must carry: request_id, and sequence_id counting from 0 across
// all types. It returns the messages summarised and the close.
func fluxMessages(t *testing.T, c *websocket.Conn) ([]string, *websocket.CloseError) {
	t.Helper()
	var got []string
	var requestID string
	for i := 0; ; i++ {
		f := read(t, c)
		switch {
		case f.close != nil:
			return got, f.close
		case f.text == nil:
			t.Fatalf("read %+v after %q", f, got)
		}
		var m map[string]any
		decodeJSON(t, f.raw, &m)
		if seq, ok := m["sequence_id"].(float64); !ok || int(seq) != i {
			t.Errorf("message %d (%s) has sequence_id %v", i, f.text.Type, m["sequence_id"])
		}
		if id, _ := m["request_id"].(string); id == "" || (requestID != "" && id != requestID) {
			t.Errorf("message %d (%s) has request_id %q, the stream's is %q", i, f.text.Type, id, requestID)
		} else {
			requestID = id
		}
		if f.text.Type == "TurnInfo" {
			for _, field := range []string{"event", "turn_index", "audio_window_start", "audio_window_end", "transcript", "words", "end_of_turn_confidence"} {
				if _, ok := m[field]; !ok {
					t.Errorf("TurnInfo %d has no %s: %s", i, field, f.raw)
				}
			}
			if words, ok := m["words"].([]any); !ok || words == nil {
				t.Errorf("TurnInfo %d: words %v, want an array", i, m["words"])
			}
		}
		got = append(got, f.text.String())
	}
}

func TestFluxSequenceAndTurns(t *testing.T) {
	s := start(t, sim.Options{})
	c, _ := dial(t, s, "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&eot_timeout_ms=200")
	words := append(helloWorld(), sim.Word{Text: "again", Start: 1.5, End: 1.75})
	audio := sim.Synthesize(words, 16000, 2)
	sendAudio(t, c, audio[:2*18000], 3200) // to 1.125 s: "hello world" and its end of turn
	sendJSON(t, c, map[string]any{"type": "Configure", "thresholds": map[string]float64{"eot_threshold": 0.8}})
	sendAudio(t, c, audio[2*18000:], 3200)
	sendJSON(t, c, map[string]string{"type": "CloseStream"})
	got, closed := fluxMessages(t, c)
	equal(t, "messages", got, []string{
		"Connected",
		`TurnInfo StartOfTurn #0 [0-0.5] "hello"`,
		`TurnInfo Update #0 [0-0.875] "hello world"`,
		`TurnInfo EndOfTurn #0 [0-1.075] "hello world"`,
		"ConfigureSuccess",
		`TurnInfo StartOfTurn #1 [1.075-1.75] "again"`,
		`TurnInfo EndOfTurn #1 [1.075-1.95] "again"`,
	})
	if closed.Code != websocket.CloseNormalClosure {
		t.Errorf("close %d %q", closed.Code, closed.Text)
	}
}

// With eager_eot_threshold, Flux announces a likely end of turn early
// (EagerEndOfTurn) and takes it back when speech resumes (TurnResumed);
// EndOfTurn repeats the last EagerEndOfTurn's transcript.
func TestFluxEagerEndOfTurn(t *testing.T) {
	s := start(t, sim.Options{})
	words := []sim.Word{{Text: "cancel", Start: 0.25, End: 0.5}, {Text: "please", Start: 0.875, End: 1}}
	audio := sim.Synthesize(words, 16000, 1.75)
	for _, chunk := range []int{333, 3200, len(audio)} {
		t.Run(fmt.Sprint("chunk ", chunk), func(t *testing.T) {
			c, _ := dial(t, s, "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&eot_timeout_ms=400&eager_eot_threshold=0.5")
			sendAudio(t, c, audio, chunk)
			sendJSON(t, c, map[string]string{"type": "CloseStream"})
			got, _ := fluxMessages(t, c)
			equal(t, "messages", got, []string{
				"Connected",
				`TurnInfo StartOfTurn #0 [0-0.5] "cancel"`,
				`TurnInfo EagerEndOfTurn #0 [0-0.7] "cancel"`, // 200 ms (half of eot_timeout_ms) of silence
				`TurnInfo TurnResumed #0 [0-1] "cancel please"`,
				`TurnInfo EagerEndOfTurn #0 [0-1.2] "cancel please"`,
				`TurnInfo EndOfTurn #0 [0-1.4] "cancel please"`,
			})
		})
	}
	_, res, err := tryDial(s, "/v2/listen?eager_eot_threshold=high", nil)
	if err == nil || res.StatusCode != 400 {
		t.Errorf("bad eager_eot_threshold: %v %v", err, res)
	}
}

// Sound without speech on Flux: an empty Update for every 0.25 s of audio
// it flows in, and no turn.
func TestFluxHearsNoSpeech(t *testing.T) {
	s := start(t, sim.Options{})
	tests := []struct {
		name, path string
		audio      []byte
		want       []string
	}{
		{"tone", "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000", tone(16000, 1.1), []string{
			"Connected",
			`TurnInfo Update #0 [0-0.25] ""`,
			`TurnInfo Update #0 [0-0.5] ""`,
			`TurnInfo Update #0 [0-0.75] ""`,
			`TurnInfo Update #0 [0-1] ""`,
		}},
		{"mu-law noise, then silence", "/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000", append(mulaw(3000), bytesOf(0xFF, 8000)...), []string{
			"Connected",
			`TurnInfo Update #0 [0-0.25] ""`,
			`TurnInfo Update #0 [0-0.5] ""`, // the noise ends at 0.375
		}},
		{"a turn, then a tone", "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&eot_timeout_ms=200",
			append(sim.Synthesize(helloWorld(), 16000, helloWorldTotal), tone(16000, 0.5)...), []string{
				"Connected",
				`TurnInfo StartOfTurn #0 [0-0.5] "hello"`,
				`TurnInfo Update #0 [0-0.875] "hello world"`,
				`TurnInfo EndOfTurn #0 [0-1.075] "hello world"`,
				`TurnInfo Update #1 [1.075-1.5] ""`, // the tone from 1.25
				`TurnInfo Update #1 [1.075-1.75] ""`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := dial(t, s, tt.path)
			sendAudio(t, c, tt.audio, 1000)
			sendJSON(t, c, map[string]string{"type": "CloseStream"})
			got, closed := fluxMessages(t, c)
			equal(t, "messages", got, tt.want)
			if closed.Code != websocket.CloseNormalClosure {
				t.Errorf("close %d %q", closed.Code, closed.Text)
			}
		})
	}
}

// An idle Flux stream fails with INACTIVE_CLIENT, then closes as Deepgram
// closes an idle stream.
func TestFluxInactiveClient(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := start(t, sim.Options{SilenceTimeout: timeout})
	c, _ := dial(t, s, "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000")
	got, closed := fluxMessages(t, c)
	equal(t, "messages", got, []string{"Connected", "Error INACTIVE_CLIENT"})
	if closed.Code != websocket.CloseInternalServerErr || closed.Text != net0001 {
		t.Errorf("close %d %q", closed.Code, closed.Text)
	}
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}
