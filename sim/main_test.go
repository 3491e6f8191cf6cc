package sim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/earshot/earshot/sim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests; nothing sleeps.
const waitTimeout = 5 * time.Second

// start runs a sim.Server for the test and closes it at cleanup.
func start(t *testing.T, opts sim.Options) *sim.Server {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	if opts.Region == "" {
		opts.Region = "test-region"
	}
	s, err := sim.Start("127.0.0.1:0", opts)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	return s
}

// client returns an HTTP client whose connections are closed at cleanup.
func client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitTimeout}
}

// do sends a request and returns the response with its body read.
func do(t *testing.T, c *http.Client, method, url, contentType string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s %s: %v", method, url, err)
	}
	return res, b
}

func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// dgError is Deepgram's error body.
type dgError struct {
	ErrCode   string `json:"err_code"`
	ErrMsg    string `json:"err_msg"`
	RequestID string `json:"request_id"`
}

// dial opens a WebSocket to the server; it fails the test on error.
func dial(t *testing.T, s *sim.Server, pathAndQuery string) (*websocket.Conn, *http.Response) {
	t.Helper()
	c, res, err := tryDial(s, pathAndQuery, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", pathAndQuery, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, res
}

func tryDial(s *sim.Server, pathAndQuery string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: waitTimeout}
	return d.Dial("ws://"+s.Addr()+pathAndQuery, hdr)
}

// message is the union of the fields the tests look at.
type message struct {
	Type         string   `json:"type"`
	Start        float64  `json:"start"`
	Duration     float64  `json:"duration"`
	IsFinal      bool     `json:"is_final"`
	SpeechFinal  bool     `json:"speech_final"`
	FromFinalize bool     `json:"from_finalize"`
	ChannelIndex []int    `json:"channel_index"`
	Channel      struct { // Results only: UtteranceEnd and SpeechStarted have an array here
		Alternatives []struct {
			Transcript string `json:"transcript"`
			Words      []struct {
				Word  string  `json:"word"`
				Start float64 `json:"start"`
				End   float64 `json:"end"`
			} `json:"words"`
		} `json:"alternatives"`
	} `json:"channel"`
	Metadata struct {
		RequestID string `json:"request_id"`
		ModelInfo struct {
			Name string `json:"name"`
		} `json:"model_info"`
	} `json:"metadata"`
	// Metadata message
	RequestID string `json:"request_id"`
	Sha256    string `json:"sha256"`
	Channels  int    `json:"channels"`
	// UtteranceEnd, SpeechStarted
	LastWordEnd float64 `json:"last_word_end"`
	Timestamp   float64 `json:"timestamp"`
	// Flux
	Event            string  `json:"event"`
	TurnIndex        int     `json:"turn_index"`
	AudioWindowStart float64 `json:"audio_window_start"`
	AudioWindowEnd   float64 `json:"audio_window_end"`
	Transcript       string  `json:"transcript"`
	// Speak, agent, Flux errors
	Code       string `json:"code"`
	SequenceID int    `json:"sequence_id"`
	Role       string `json:"role"`
	Content    string `json:"content"`
}

// String summarises a message so that sequences compare as []string.
func (m message) String() string {
	switch m.Type {
	case "Results":
		var words []string
		if len(m.Channel.Alternatives) > 0 {
			for _, w := range m.Channel.Alternatives[0].Words {
				words = append(words, fmt.Sprintf("%s@%v-%v", w.Word, w.Start, w.End))
			}
		}
		kind := "interim"
		switch {
		case m.IsFinal && m.SpeechFinal:
			kind = "speech_final"
		case m.IsFinal && m.FromFinalize:
			kind = "from_finalize"
		case m.IsFinal:
			kind = "final"
		}
		return fmt.Sprintf("Results %s [%v+%v] %s", kind, m.Start, m.Duration, strings.Join(words, " "))
	case "Metadata":
		return fmt.Sprintf("Metadata %v", m.Duration)
	case "UtteranceEnd":
		return fmt.Sprintf("UtteranceEnd %v", m.LastWordEnd)
	case "SpeechStarted":
		return fmt.Sprintf("SpeechStarted %v", m.Timestamp)
	case "TurnInfo":
		return fmt.Sprintf("TurnInfo %s #%d [%v-%v] %q", m.Event, m.TurnIndex, m.AudioWindowStart, m.AudioWindowEnd, m.Transcript)
	case "Flushed", "Cleared":
		return fmt.Sprintf("%s %d", m.Type, m.SequenceID)
	case "ConversationText":
		return fmt.Sprintf("ConversationText %s %q", m.Role, m.Content)
	case "Error", "Warning":
		return fmt.Sprintf("%s %s", m.Type, m.Code)
	}
	return m.Type
}

// frame is one thing read from a WebSocket.
type frame struct {
	text   *message
	raw    []byte // text frames' bytes, binary frames' audio
	binary bool
	close  *websocket.CloseError
	err    error // any other read error (e.g. reset)
}

// read reads one frame, failing the test if none comes within waitTimeout.
func read(t *testing.T, c *websocket.Conn) frame {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	mt, b, err := c.ReadMessage()
	if err != nil {
		if ce, ok := err.(*websocket.CloseError); ok {
			return frame{close: ce}
		}
		return frame{err: err}
	}
	if mt == websocket.BinaryMessage {
		return frame{raw: b, binary: true}
	}
	var m message
	var head struct {
		Type string `json:"type"`
	}
	decodeJSON(t, b, &head)
	if head.Type == "UtteranceEnd" || head.Type == "SpeechStarted" {
		var v struct {
			Channel     []int   `json:"channel"`
			LastWordEnd float64 `json:"last_word_end"`
			Timestamp   float64 `json:"timestamp"`
		}
		decodeJSON(t, b, &v)
		if fmt.Sprint(v.Channel) != "[0 1]" {
			t.Errorf("%s channel = %v, want [0 1]", head.Type, v.Channel)
		}
		return frame{text: &message{Type: head.Type, LastWordEnd: v.LastWordEnd, Timestamp: v.Timestamp}, raw: b}
	}
	decodeJSON(t, b, &m)
	return frame{text: &m, raw: b}
}

// readUntilClose reads text messages (summarised) until the close frame,
// failing on a binary frame or a broken connection.
func readUntilClose(t *testing.T, c *websocket.Conn) ([]string, *websocket.CloseError) {
	t.Helper()
	var got []string
	for {
		f := read(t, c)
		switch {
		case f.close != nil:
			return got, f.close
		case f.err != nil:
			t.Fatalf("read: %v (after %q)", f.err, got)
		case f.binary:
			t.Fatalf("unexpected binary frame after %q", got)
		default:
			got = append(got, f.text.String())
		}
	}
}

// readText reads the next text message, failing on anything else.
func readText(t *testing.T, c *websocket.Conn) message {
	t.Helper()
	f := read(t, c)
	if f.text == nil {
		t.Fatalf("want a text message, got %+v", f)
	}
	return *f.text
}

func sendJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	if err := c.WriteJSON(v); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func sendAudio(t *testing.T, c *websocket.Conn, audio []byte, chunk int) {
	t.Helper()
	for len(audio) > 0 {
		n := min(chunk, len(audio))
		if err := c.WriteMessage(websocket.BinaryMessage, audio[:n]); err != nil {
			t.Fatalf("write audio: %v", err)
		}
		audio = audio[n:]
	}
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// helloWorld is the fixture most tests speak: two words at exact samples
// (16 kHz: 4000-8000 and 10000-14000), 1.25 s of audio.
func helloWorld() []sim.Word {
	return []sim.Word{{Text: "hello", Start: 0.25, End: 0.5}, {Text: "world", Start: 0.625, End: 0.875}}
}

const helloWorldTotal = 1.25
