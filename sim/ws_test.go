package sim_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

func TestFlux(t *testing.T) {
	s := start(t, sim.Options{})
	c, _ := dial(t, s, "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&eot_timeout_ms=200")
	connected := readText(t, c)
	if connected.Type != "Connected" || connected.RequestID == "" {
		t.Fatalf("first message %+v", connected)
	}
	words := append(helloWorld(), sim.Word{Text: "again", Start: 1.5, End: 1.75})
	sendAudio(t, c, sim.Synthesize(words, 16000, 1.875), 1600)
	sendJSON(t, c, map[string]any{"type": "Configure", "thresholds": map[string]float64{"eot_threshold": 0.8}})
	sendJSON(t, c, map[string]string{"type": "CloseStream"})
	got, closed := readUntilClose(t, c)
	equal(t, "messages", got, []string{
		`TurnInfo StartOfTurn #0 [0-0.5] "hello"`,
		`TurnInfo Update #0 [0-0.875] "hello world"`,
		`TurnInfo EndOfTurn #0 [0-1.075] "hello world"`,
		`TurnInfo StartOfTurn #1 [1.075-1.75] "again"`,
		`ConfigureSuccess`,
		`TurnInfo EndOfTurn #1 [1.075-1.875] "again"`, // flushed by CloseStream
	})
	if closed.Code != websocket.CloseNormalClosure {
		t.Errorf("close %d %q", closed.Code, closed.Text)
	}
}

// readAudio reads binary frames until a text message, returning both.
func readAudio(t *testing.T, c *websocket.Conn) ([]byte, int, message) {
	t.Helper()
	var audio []byte
	frames := 0
	for {
		f := read(t, c)
		switch {
		case f.binary:
			audio = append(audio, f.raw...)
			frames++
		case f.text != nil:
			return audio, frames, *f.text
		default:
			t.Fatalf("want audio or text, got %+v", f)
		}
	}
}

func TestSpeakStream(t *testing.T) {
	s := start(t, sim.Options{SpeakChunk: 1000, SpeakInterval: -1})
	c, _ := dial(t, s, "/v1/speak?encoding=linear16&sample_rate=16000")
	if m := readText(t, c); m.Type != "Metadata" || m.RequestID == "" {
		t.Fatalf("first message %+v", m)
	}
	sendJSON(t, c, map[string]string{"type": "Speak", "text": "good"})
	sendJSON(t, c, map[string]string{"type": "Speak", "text": "morning"})
	sendJSON(t, c, map[string]string{"type": "Flush"})
	audio, frames, after := readAudio(t, c)
	if after.String() != "Flushed 0" || frames != 18 {
		t.Errorf("after %d frames: %v, want 18 frames then Flushed 0", frames, after)
	}
	words, err := sim.Decode(audio, 16000)
	want := []sim.Word{{Text: "good", Start: 0.05, End: 0.25}, {Text: "morning", Start: 0.3, End: 0.5}}
	if err != nil || !reflect.DeepEqual(words, want) {
		t.Errorf("decoded %v, %v; want %v", words, err, want)
	}

	// One message at a time: a Clear abandons flushes still queued.
	for _, step := range []struct{ send, want string }{
		{"Clear", "Cleared 1"}, // drops the buffered "dropped"
		{"Flush", "Flushed 2"}, // nothing buffered: no audio
		{"Reset", "Cleared 3"}, // the older name of Clear
		{"Mystery", "Warning UNKNOWN_MESSAGE_TYPE"},
	} {
		if step.send == "Clear" {
			sendJSON(t, c, map[string]string{"type": "Speak", "text": "dropped"})
		}
		sendJSON(t, c, map[string]string{"type": step.send})
		if m := readText(t, c); m.String() != step.want {
			t.Errorf("after %s: %v, want %s", step.send, m, step.want)
		}
	}
	sendJSON(t, c, map[string]string{"type": "Close"})
	got, closed := readUntilClose(t, c)
	if len(got) != 0 || closed.Code != websocket.CloseNormalClosure {
		t.Errorf("after Close: %q, close %d", got, closed.Code)
	}
}

func TestSpeakStreamClearAbandonsAudio(t *testing.T) {
	asked := make(chan int, 16)
	s := start(t, sim.Options{SpeakGate: func(ctx context.Context, chunk int) error {
		asked <- chunk
		<-ctx.Done() // never released: only Clear (or the end) frees it
		return ctx.Err()
	}})
	c, _ := dial(t, s, "/v1/speak")
	readText(t, c) // Metadata
	sendJSON(t, c, map[string]string{"type": "Speak", "text": "a long reply"})
	sendJSON(t, c, map[string]string{"type": "Flush"})
	if chunk := <-asked; chunk != 0 {
		t.Fatalf("first gate call for chunk %d", chunk)
	}
	sendJSON(t, c, map[string]string{"type": "Clear"})
	// No audio and no Flushed 0: the flush was abandoned.
	if m := readText(t, c); m.String() != "Cleared 1" {
		t.Errorf("got %v, want Cleared 1", m)
	}
}

func TestAgent(t *testing.T) {
	s := start(t, sim.Options{SpeakChunk: 3200, SpeakInterval: -1})
	c, _ := dial(t, s, "/v1/agent/converse")
	if m := readText(t, c); m.Type != "Welcome" || m.RequestID == "" {
		t.Fatalf("first message %+v", m)
	}
	sendJSON(t, c, map[string]any{"type": "Settings", "audio": map[string]any{
		"input":  map[string]any{"encoding": "linear16", "sample_rate": 16000},
		"output": map[string]any{"encoding": "linear16", "sample_rate": 8000, "container": "none"},
	}})
	if m := readText(t, c); m.Type != "SettingsApplied" {
		t.Fatalf("after Settings: %+v", m)
	}
	sendJSON(t, c, map[string]string{"type": "KeepAlive"})
	// The turn ends 300 ms after "world": 1.175 s, within the 1.5 s sent.
	sendAudio(t, c, sim.Synthesize(helloWorld(), 16000, 1.5), 3200)

	var got []string
	for len(got) < 4 {
		got = append(got, readText(t, c).String())
	}
	equal(t, "turn", got, []string{
		"UserStartedSpeaking",
		`ConversationText user "hello world"`,
		`ConversationText assistant "you said: hello world"`,
		"AgentStartedSpeaking",
	})
	audio, frames, done := readAudio(t, c)
	if done.Type != "AgentAudioDone" || frames < 2 {
		t.Errorf("after %d frames: %+v", frames, done)
	}
	words, err := sim.Decode(audio, 8000)
	if err != nil || len(words) != 4 || words[2].Text != "hello" || words[3].Text != "world" {
		t.Errorf("reply audio decodes to %v, %v", words, err)
	}

	sendJSON(t, c, map[string]string{"type": "Unheard"})
	if m := readText(t, c); m.Type != "Warning" {
		t.Errorf("unknown type: %+v", m)
	}
}
