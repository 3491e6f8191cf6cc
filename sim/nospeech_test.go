package sim_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// Audio without speech is not an error: Deepgram answers a tone, noise or
// silence with an empty transcript, and so does the simulated engine.

// withWarnings is a pre-recorded answer's metadata.warnings.
type withWarnings struct {
	Metadata struct {
		Warnings []struct {
			Parameter string `json:"parameter"`
			Type      string `json:"type"`
			Message   string `json:"message"`
		} `json:"warnings"`
	} `json:"metadata"`
}

// checkNoSpeech checks a 200 pre-recorded answer with an empty transcript.
func checkNoSpeech(t *testing.T, res *http.Response, body, sent []byte, duration float64, channels int) withWarnings {
	t.Helper()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var p prerecorded
	decodeJSON(t, body, &p)
	alt := p.Results.Channels[0].Alternatives[0]
	if alt.Transcript != "" || len(alt.Words) != 0 || !bytes.Contains(body, []byte(`"words":[]`)) {
		t.Errorf("transcript %q, words %v; want \"\" and []", alt.Transcript, alt.Words)
	}
	sum := sha256.Sum256(sent)
	m := p.Metadata
	if m.Duration != duration || m.Channels != channels || m.Sha256 != hex.EncodeToString(sum[:]) ||
		m.RequestID != res.Header.Get("dg-request-id") {
		t.Errorf("metadata %+v; want duration %v, %d channels, the body's sha256", m, duration, channels)
	}
	var w withWarnings
	decodeJSON(t, body, &w)
	return w
}

func TestPrerecordedHearsNoSpeech(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)
	tests := []struct {
		name     string
		query    string
		body     []byte
		duration float64
		channels int
	}{
		{"tone, linear16", "?encoding=linear16&sample_rate=16000", tone(16000, 1.5), 1.5, 1},
		{"dithered silence, linear16 at 8 kHz", "?encoding=linear16&sample_rate=8000", dither(8000, 2), 2, 1},
		{"speech-like sound, linear16", "?encoding=linear16&sample_rate=16000", speechLike(16000, 1.25), 1.25, 1},
		{"tone, odd byte count: the partial sample is dropped", "?encoding=linear16&sample_rate=16000", append(tone(16000, 0.5), 0x12), 0.5, 1},
		{"speech-like sound in a WAV", "", sim.WAV(speechLike(22050, 2), 22050, 1), 2, 1},
		{"tone in a WAV: the header wins over the query", "?encoding=linear16&sample_rate=8000", sim.WAV(tone(16000, 1), 16000, 1), 1, 1},
		{"stereo WAV", "", sim.WAV(speechLike(16000, 2), 16000, 2), 1, 2},
		{"8-bit WAV", "", wavFormat(1, 8, 8000, 1, junk(4000, 7), 4000), 0.5, 1},
		{"24-bit WAV", "", wavFormat(1, 24, 16000, 1, junk(3*16000, 8), 3*16000), 1, 1},
		{"float WAV", "", wavFormat(3, 32, 16000, 1, junk(4*8000, 9), 4*8000), 0.5, 1},
		{"mu-law WAV", "", wavFormat(7, 8, 8000, 1, mulaw(8000), 8000), 1, 1},
		{"streaming WAV, sizes 0xFFFFFFFF", "", wavFormat(1, 16, 16000, 1, tone(16000, 0.75), 0xFFFFFFFF), 0.75, 1},
		{"streaming WAV, sizes 0", "", wavFormat(1, 16, 16000, 1, tone(16000, 0.75), 0), 0.75, 1},
		{"truncated WAV: the bytes present", "", wavFormat(1, 16, 16000, 1, tone(16000, 0.5), 64000), 0.5, 1},
		{"WAV with bytes after its data chunk", "", append(sim.WAV(tone(16000, 0.5), 16000, 1), "LIST\x04\x00\x00\x00abcd"...), 0.5, 1},
		{"linear32", "?encoding=linear32&sample_rate=16000", junk(4*16000, 10), 1, 1},
		{"mulaw at 8 kHz", "?encoding=mulaw&sample_rate=8000", mulaw(12000), 1.5, 1},
		{"alaw, stereo", "?encoding=alaw&sample_rate=8000&channels=2", junk(16000, 11), 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen"+tt.query, "", tt.body)
			if w := checkNoSpeech(t, res, body, tt.body, tt.duration, tt.channels); len(w.Metadata.Warnings) != 0 {
				t.Errorf("warnings %+v for audio the engine measures", w.Metadata.Warnings)
			}
		})
	}
}

// Containers the engine recognises but cannot measure: 200, duration 0,
// and a warning that says so.
func TestPrerecordedUnmeasuredContainers(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)
	tests := []struct {
		name, query, contentType string
		body                     []byte
		what, parameter          string // the warning names what, and the parameter that said so
	}{
		{"MP3 frame", "", "audio/mpeg", mp3(), "MP3", ""},
		{"MP3 with an ID3 tag", "", "", append([]byte("ID3\x04\x00\x00\x00\x00\x00\x00"), mp3()...), "MP3", ""},
		{"Ogg/Opus page", "", "audio/ogg", ogg(), "Ogg", ""},
		{"Ogg whatever the query's rate", "?sample_rate=48000&channels=2", "", ogg(), "Ogg", ""},
		{"FLAC", "", "", append([]byte("fLaC\x00\x00\x00\x22"), junk(34, 12)...), "FLAC", ""},
		{"WebM", "", "audio/webm", append([]byte{0x1A, 0x45, 0xDF, 0xA3}, junk(60, 13)...), "WebM", ""},
		{"M4A", "", "", append([]byte("\x00\x00\x00\x20ftypM4A "), junk(60, 14)...), "MP4", ""},
		{"AAC (ADTS)", "", "", append([]byte{0xFF, 0xF1, 0x50, 0x80}, junk(60, 15)...), "AAC", ""},
		{"IMA ADPCM in a WAV", "", "", wavFormat(0x11, 4, 8000, 1, junk(1000, 16), 1000), "WAV (format 0x0011", ""},
		{"encoding=opus", "?encoding=opus&sample_rate=48000", "", junk(500, 18), "opus", "encoding"},
		{"encoding=flac", "?encoding=flac", "", junk(500, 19), "flac", "encoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen"+tt.query, tt.contentType, tt.body)
			channels := 1
			if strings.Contains(tt.query, "channels=2") {
				channels = 2
			}
			w := checkNoSpeech(t, res, body, tt.body, 0, channels)
			if len(w.Metadata.Warnings) != 1 {
				t.Fatalf("warnings %+v, want one", w.Metadata.Warnings)
			}
			warn := w.Metadata.Warnings[0]
			if !strings.Contains(warn.Message, "simulated engine cannot measure") || !strings.Contains(warn.Message, tt.what) ||
				warn.Type == "" || warn.Parameter != tt.parameter {
				t.Errorf("warning %+v, want one naming %s", warn, tt.what)
			}
		})
	}
}

// Decode, the engine's ear for a body with no encoding=: real recordings
// hold no words and are no error.
func TestDecodeHearsNoWordsInRealAudio(t *testing.T) {
	tests := []struct {
		name  string
		audio []byte
	}{
		{"tone in a WAV", sim.WAV(tone(16000, 0.5), 16000, 1)},
		{"speech-like sound in a WAV", sim.WAV(speechLike(44100, 0.5), 44100, 1)},
		{"dithered silence in a WAV", sim.WAV(dither(8000, 0.5), 8000, 1)},
		{"8-bit WAV", wavFormat(1, 8, 8000, 1, junk(800, 20), 800)},
		{"MP3", mp3()},
		{"Ogg", ogg()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if words, err := sim.Decode(tt.audio, 16000); err != nil || len(words) != 0 {
				t.Errorf("Decode = %v, %v; want no words and no error", words, err)
			}
		})
	}
}

// Words are still heard between other sounds when the audio is real.
func TestPrerecordedWordsAmongNoise(t *testing.T) {
	s := start(t, sim.Options{})
	pcm := append(tone(16000, 0.5), sim.Synthesize(helloWorld(), 16000, helloWorldTotal)...)
	pcm = append(pcm, dither(16000, 0.25)...)
	res, body := do(t, client(t), http.MethodPost, s.URL()+"/v1/listen", "", sim.WAV(pcm, 16000, 1))
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var p prerecorded
	decodeJSON(t, body, &p)
	want := []sim.Word{{Text: "hello", Start: 0.75, End: 1}, {Text: "world", Start: 1.125, End: 1.375}}
	if got := p.words(); !reflect.DeepEqual(got, want) || p.Metadata.Duration != 2 {
		t.Errorf("words %v, duration %v; want %v, 2", got, p.Metadata.Duration, want)
	}
}

func TestStreamHearsNoSpeech(t *testing.T) {
	s := start(t, sim.Options{})
	const l16 = "/v1/listen?encoding=linear16&sample_rate=16000"
	tests := []struct {
		name  string
		path  string
		audio []byte
		want  []string
	}{
		{"tone, interim results, endpointing 1500 ms", l16 + "&interim_results=true&endpointing=1500", tone(16000, 3.5), []string{
			"Results interim [0+1] ",
			"Results speech_final [0+2] ", // 1.5 s after the window's first sound, at the next report
			"Results interim [2+1] ",
			"Results final [2+1.5] ", // CloseStream
			"Metadata 3.5",
		}},
		{"tone, default endpointing", l16, tone(16000, 2.5), []string{
			"Results speech_final [0+1] ",
			"Results speech_final [1+1] ",
			"Results final [2+0.5] ",
			"Metadata 2.5",
		}},
		{"dithered silence, endpointing off", "/v1/listen?encoding=linear16&sample_rate=8000&interim_results=true&endpointing=false", dither(8000, 2.5), []string{
			"Results interim [0+1] ",
			"Results interim [0+2] ",
			"Results final [0+2.5] ",
			"Metadata 2.5",
		}},
		{"speech-like sound in a WAV", "/v1/listen?interim_results=true&endpointing=1000", sim.WAV(speechLike(16000, 2.5), 16000, 1), []string{
			"Results interim [0+1] ",
			"Results speech_final [0+2] ",
			"Results final [2+0.5] ",
			"Metadata 2.5",
		}},
		{"tone then digital silence", l16 + "&interim_results=true&endpointing=1500", append(tone(16000, 0.5), make([]byte, 2*16000*3)...), []string{
			"Results interim [0+1] ",
			"Results speech_final [0+2] ",
			"Results final [2+1.5] ", // no sound since: no reports
			"Metadata 3.5",
		}},
		{"mu-law at 8 kHz", "/v1/listen?encoding=mulaw&sample_rate=8000", mulaw(8000 * 2), []string{
			"Results speech_final [0+1] ",
			"Results speech_final [1+1] ",
			"Metadata 2",
		}},
		{"words, then a tone", l16 + "&interim_results=true&endpointing=200",
			append(sim.Synthesize(helloWorld(), 16000, helloWorldTotal), tone(16000, 1)...), []string{
				"Results interim [0+0.5] hello@0.25-0.5",
				"Results interim [0+0.875] hello@0.25-0.5 world@0.625-0.875",
				"Results speech_final [0+1.075] hello@0.25-0.5 world@0.625-0.875",
				"Results speech_final [1.075+0.925] ", // the tone from 1.25, reported at 2
				"Results final [2+0.25] ",
				"Metadata 2.25",
			}},
	}
	for _, tt := range tests {
		for _, chunk := range []int{777, 4096, len(tt.audio)} {
			t.Run(fmt.Sprintf("%s, chunk %d", tt.name, chunk), func(t *testing.T) {
				c, _ := dial(t, s, tt.path)
				sendAudio(t, c, tt.audio, chunk)
				sendJSON(t, c, map[string]string{"type": "CloseStream"})
				got, closed := readUntilClose(t, c)
				equal(t, "messages", got, tt.want)
				if closed.Code != websocket.CloseNormalClosure {
					t.Errorf("close %d %q, want 1000", closed.Code, closed.Text)
				}
			})
		}
	}
}

// Real audio never closes a stream with DATA-0000 once its encoding is
// named; only undecodable bytes do.
func TestStreamUndecodableOnlyWithoutFormat(t *testing.T) {
	s := start(t, sim.Options{})
	tests := []struct {
		name  string
		path  string
		audio []byte
		want  []string // before the close
		code  int
	}{
		{"random bytes, no encoding", "/v1/listen", append([]byte{0x13, 0x37}, junk(3198, 21)...), nil, websocket.ClosePolicyViolation},
		{"random bytes, linear16", "/v1/listen?encoding=linear16&sample_rate=16000", append([]byte{0x13, 0x37}, junk(3198, 21)...),
			[]string{"Results final [0+0.1] ", "Metadata 0.1"}, websocket.CloseNormalClosure},
		{"Ogg/Opus: taken, not measured", "/v1/listen", ogg(), []string{"Metadata 0"}, websocket.CloseNormalClosure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := dial(t, s, tt.path)
			sendAudio(t, c, tt.audio, 1000)
			if tt.code == websocket.CloseNormalClosure {
				sendJSON(t, c, map[string]string{"type": "CloseStream"})
			}
			got, closed := readUntilClose(t, c)
			equal(t, "messages", got, tt.want)
			if closed.Code != tt.code {
				t.Errorf("close %d %q, want %d", closed.Code, closed.Text, tt.code)
			}
		})
	}
}
