package sim_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/earshot/earshot/sim"
)

// prerecorded is the part of a /v1/listen answer the tests check.
type prerecorded struct {
	Metadata struct {
		TransactionKey string                       `json:"transaction_key"`
		RequestID      string                       `json:"request_id"`
		Sha256         string                       `json:"sha256"`
		Created        string                       `json:"created"`
		Duration       float64                      `json:"duration"`
		Channels       int                          `json:"channels"`
		Models         []string                     `json:"models"`
		ModelInfo      map[string]map[string]string `json:"model_info"`
	} `json:"metadata"`
	Results struct {
		Channels []struct {
			Alternatives []struct {
				Transcript string  `json:"transcript"`
				Confidence float64 `json:"confidence"`
				Words      []struct {
					Word           string  `json:"word"`
					Start          float64 `json:"start"`
					End            float64 `json:"end"`
					Confidence     float64 `json:"confidence"`
					PunctuatedWord string  `json:"punctuated_word"`
				} `json:"words"`
			} `json:"alternatives"`
		} `json:"channels"`
	} `json:"results"`
}

func (p prerecorded) words() []sim.Word {
	var out []sim.Word
	for _, w := range p.Results.Channels[0].Alternatives[0].Words {
		out = append(out, sim.Word{Text: w.Word, Start: w.Start, End: w.End})
	}
	return out
}

func TestPrerecorded(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)
	pcm16k := sim.Synthesize(helloWorld(), 16000, helloWorldTotal)
	pcm8k := sim.Synthesize(helloWorld(), 8000, helloWorldTotal)
	tests := []struct {
		name        string
		query       string
		contentType string
		body        []byte
	}{
		{"raw audio, no content type", "", "", pcm16k},
		{"raw audio, octet-stream", "?model=nova-3&punctuate=true", "application/octet-stream", pcm16k},
		{"raw audio at 8 kHz", "?encoding=linear16&sample_rate=8000", "", pcm8k},
		{"wav overrides the query's rate", "?sample_rate=44100", "audio/wav", sim.WAV(pcm8k, 8000, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen"+tt.query, tt.contentType, tt.body)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			var p prerecorded
			decodeJSON(t, body, &p)
			if got := p.words(); !reflect.DeepEqual(got, helloWorld()) {
				t.Errorf("words = %v, want %v", got, helloWorld())
			}
			alt := p.Results.Channels[0].Alternatives[0]
			if alt.Transcript != "hello world" || alt.Confidence <= 0 {
				t.Errorf("transcript %q confidence %v", alt.Transcript, alt.Confidence)
			}
			sum := sha256.Sum256(tt.body)
			m := p.Metadata
			if m.Sha256 != hex.EncodeToString(sum[:]) {
				t.Errorf("sha256 = %s, want the body's", m.Sha256)
			}
			if m.Duration != helloWorldTotal || m.Channels != 1 || m.TransactionKey != "deprecated" {
				t.Errorf("metadata = %+v", m)
			}
			if m.RequestID == "" || m.RequestID != res.Header.Get("dg-request-id") {
				t.Errorf("request_id %q, dg-request-id %q", m.RequestID, res.Header.Get("dg-request-id"))
			}
			if _, err := time.Parse(time.RFC3339, m.Created); err != nil {
				t.Errorf("created: %v", err)
			}
			if len(m.Models) != 1 || m.ModelInfo[m.Models[0]]["name"] != "sim-nova" {
				t.Errorf("models %v, model_info %v", m.Models, m.ModelInfo)
			}
			if got := res.Header.Get(sim.HeaderEngine); got != "test-region" {
				t.Errorf("%s = %q", sim.HeaderEngine, got)
			}
		})
	}
}

func TestPrerecordedRefusals(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)
	tests := []struct {
		name        string
		query       string
		contentType string
		body        []byte
		status      int
		errCode     string
	}{
		{"noise without an encoding is undecodable", "", "", samples(0, 0, 999, 999, 0), http.StatusBadRequest, "Bad Request"},
		{"random bytes without an encoding", "", "", append([]byte{0x13, 0x37}, junk(998, 17)...), http.StatusBadRequest, "Bad Request"},
		{"a tone without an encoding", "", "", tone(16000, 0.5), http.StatusBadRequest, "Bad Request"},
		{"empty body", "?encoding=linear16&sample_rate=16000", "", nil, http.StatusBadRequest, "Bad Request"},
		{"empty body without an encoding", "", "audio/wav", nil, http.StatusBadRequest, "Bad Request"},
		{"less than one sample", "?encoding=linear16", "", []byte{0x7F}, http.StatusBadRequest, "Bad Request"},
		{"less than one stereo frame", "?encoding=linear16&channels=2", "", samples(300), http.StatusBadRequest, "Bad Request"},
		{"truncated WAV header", "", "", sim.WAV(nil, 16000, 1)[:30], http.StatusBadRequest, "Bad Request"},
		{"RIFF that is not WAVE", "", "", []byte("RIFF\x24\x00\x00\x00AVI LIST\x10\x00\x00\x00"), http.StatusBadRequest, "Bad Request"},
		{"unknown encoding", "?encoding=bogus", "", samples(0), http.StatusBadRequest, "Bad Request"},
		{"bad sample rate", "?sample_rate=fast", "", samples(0), http.StatusBadRequest, "Bad Request"},
		{"json without url", "", "application/json", []byte(`{"uri":"x"}`), http.StatusBadRequest, "Bad Request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen"+tt.query, tt.contentType, tt.body)
			if res.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, tt.status, body)
			}
			var e dgError
			decodeJSON(t, body, &e)
			if e.ErrCode != tt.errCode || e.ErrMsg == "" || e.RequestID != res.Header.Get("dg-request-id") {
				t.Errorf("error body %+v", e)
			}
		})
	}
}

func TestPrerecordedURLAndCallback(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)

	res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen?callback=http://example.invalid/cb", "",
		sim.Synthesize(helloWorld(), 16000, helloWorldTotal))
	var cb struct {
		RequestID string `json:"request_id"`
	}
	decodeJSON(t, body, &cb)
	if res.StatusCode != http.StatusOK || cb.RequestID == "" || cb.RequestID != res.Header.Get("dg-request-id") {
		t.Errorf("callback answer %d %s", res.StatusCode, body)
	}

	// The sim cannot fetch a URL: it answers as Deepgram answers a URL it
	// cannot fetch, never with an empty transcript.
	const secretURL = "https://example.invalid/a.wav?X-Amz-Signature=secret"
	res, body = do(t, c, http.MethodPost, s.URL()+"/v1/listen?model=nova-3", "application/json", []byte(`{"url":"`+secretURL+`"}`))
	var e dgError
	decodeJSON(t, body, &e)
	if res.StatusCode != http.StatusBadRequest || e.ErrCode != "REMOTE_CONTENT_ERROR" ||
		!strings.Contains(e.ErrMsg, "Could not fetch the URL") || e.RequestID != res.Header.Get("dg-request-id") {
		t.Errorf("url: status %d: %s", res.StatusCode, body)
	}
	if strings.Contains(string(body), "secret") {
		t.Errorf("the error echoes the URL, credentials included: %s", body)
	}
}

func TestSpeakStreamsChunks(t *testing.T) {
	// The gate lets the test hold the response between chunks: each chunk
	// must reach the client before the next one is released, which proves
	// the response is streamed rather than buffered.
	gate := make(chan struct{})
	s := start(t, sim.Options{
		SpeakChunk: 1000,
		SpeakGate: func(ctx context.Context, chunk int) error {
			select {
			case <-gate:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	c := client(t)
	req, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/speak?encoding=linear16&sample_rate=16000&container=none",
		strings.NewReader(`{"text":"good morning"}`))
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("dg-char-count") != "12" || res.Header.Get("dg-model-name") != "sim-aura" {
		t.Fatalf("status %d, headers %v", res.StatusCode, res.Header)
	}
	var audio []byte
	buf := make([]byte, 4096)
	for chunk := 0; ; chunk++ {
		select {
		case gate <- struct{}{}:
		case <-time.After(waitTimeout):
			t.Fatalf("the engine did not ask for chunk %d", chunk)
		}
		// Exactly one chunk is released: read all of it before the next.
		want := 1000
		if rest := 2*int(0.55*16000) - len(audio); rest < want {
			want = rest
		}
		got := 0
		for got < want {
			n, err := res.Body.Read(buf[:want-got])
			audio = append(audio, buf[:n]...)
			got += n
			if err != nil && !(err == io.EOF && got == want) {
				t.Fatalf("chunk %d: read %d of %d: %v", chunk, got, want, err)
			}
		}
		if len(audio) == 2*int(0.55*16000) {
			break
		}
	}
	if n, err := res.Body.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the last chunk: %d bytes, %v", n, err)
	}
	words, err := sim.Decode(audio, 16000)
	if err != nil {
		t.Fatal(err)
	}
	want := []sim.Word{{Text: "good", Start: 0.05, End: 0.25}, {Text: "morning", Start: 0.3, End: 0.5}}
	if !reflect.DeepEqual(words, want) {
		t.Errorf("decoded %v, want %v", words, want)
	}
}

func TestSpeakWAV(t *testing.T) {
	s := start(t, sim.Options{SpeakInterval: -1})
	res, body := do(t, client(t), http.MethodPost, s.URL()+"/v1/speak", "", []byte(`{"text":"hello there"}`))
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "audio/wav" || string(body[:4]) != "RIFF" {
		t.Fatalf("status %d, type %q, start %q", res.StatusCode, res.Header.Get("Content-Type"), body[:4])
	}
	words, err := sim.Decode(body, 8000) // the header says 24000
	if err != nil || len(words) != 2 || words[0].Text != "hello" || words[1].Text != "there" {
		t.Errorf("decoded %v, %v", words, err)
	}
	res, body = do(t, client(t), http.MethodPost, s.URL()+"/v1/speak?encoding=mp3", "", []byte(`{"text":"x"}`))
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("mp3: status %d: %s", res.StatusCode, body)
	}
}

func TestReadModelsStatusAndErrors(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)

	res, body := do(t, c, http.MethodPost, s.URL()+"/v1/read?summarize=v2", "application/json",
		[]byte(`{"text":"The router works. It routes calls to regions."}`))
	var rd struct {
		Metadata struct {
			RequestID string `json:"request_id"`
		} `json:"metadata"`
		Results struct {
			Summary struct {
				Text string `json:"text"`
			} `json:"summary"`
			Sentiments struct {
				Average struct {
					Sentiment string `json:"sentiment"`
				} `json:"average"`
			} `json:"sentiments"`
		} `json:"results"`
	}
	decodeJSON(t, body, &rd)
	if res.StatusCode != http.StatusOK || rd.Results.Summary.Text != "The router works." ||
		rd.Results.Sentiments.Average.Sentiment != "neutral" || rd.Metadata.RequestID == "" {
		t.Errorf("read: %d %s", res.StatusCode, body)
	}

	res, body = do(t, c, http.MethodGet, s.URL()+"/v1/models", "", nil)
	var models struct {
		STT []struct{ Name, UUID string } `json:"stt"`
		TTS []struct{ Name, UUID string } `json:"tts"`
	}
	decodeJSON(t, body, &models)
	if res.StatusCode != http.StatusOK || len(models.STT) != 1 || models.STT[0].Name != "sim-nova" || len(models.TTS) != 1 {
		t.Errorf("models: %d %s", res.StatusCode, body)
	}

	res, body = do(t, c, http.MethodGet, s.URL()+"/v1/status", "", nil)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"system_health":"Healthy"`) {
		t.Errorf("status: %d %s", res.StatusCode, body)
	}

	for _, tt := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/v1/nothing", http.StatusNotFound, ""},
		{http.MethodDelete, "/v1/listen", http.StatusMethodNotAllowed, "GET, POST"},
		{http.MethodPost, "/v1/status", http.StatusMethodNotAllowed, "GET"},
		{http.MethodGet, "/v2/listen", http.StatusBadRequest, ""}, // not an upgrade
	} {
		res, body := do(t, c, tt.method, s.URL()+tt.path, "", nil)
		var e dgError
		decodeJSON(t, body, &e)
		if res.StatusCode != tt.status || e.ErrCode == "" || res.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d %v %s", tt.method, tt.path, res.StatusCode, res.Header, body)
		}
	}
}

func TestLatencyDelaysAnswers(t *testing.T) {
	const latency = 150 * time.Millisecond
	s := start(t, sim.Options{Latency: latency})
	begin := time.Now()
	res, _ := do(t, client(t), http.MethodGet, s.URL()+"/v1/status", "", nil)
	if took := time.Since(begin); res.StatusCode != http.StatusOK || took < latency {
		t.Errorf("status %d after %v, want 200 after at least %v", res.StatusCode, took, latency)
	}
	begin = time.Now()
	c, _ := dial(t, s, "/v1/listen")
	if took := time.Since(begin); took < latency {
		t.Errorf("handshake after %v, want at least %v", took, latency)
	}
	_ = c.Close()
	eventually(t, "stream closed", func() bool { _, n := s.Engine().Active(); return n == 0 })
}
