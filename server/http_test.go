package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/earshot/earshot/sim"
)

// prerecorded is the part of Deepgram's pre-recorded response the tests read.
type prerecorded struct {
	Metadata struct {
		RequestID string  `json:"request_id"`
		Duration  float64 `json:"duration"`
	} `json:"metadata"`
	Results struct {
		Channels []struct {
			Alternatives []struct {
				Transcript string `json:"transcript"`
				Words      []struct {
					Word  string  `json:"word"`
					Start float64 `json:"start"`
					End   float64 `json:"end"`
				} `json:"words"`
			} `json:"alternatives"`
		} `json:"channels"`
	} `json:"results"`
}

var testWords = []sim.Word{
	{Text: "tell", Start: 0.25, End: 0.5},
	{Text: "me", Start: 0.625, End: 0.75},
	{Text: "more", Start: 1.0, End: 1.5},
}

func TestPrerecordedThroughRouter(t *testing.T) {
	r := startRouter(t, simRegions(""))
	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2.0), 16000, 1)

	for _, tc := range []struct {
		name        string
		contentType string
		region      string
		wantRegion  string
	}{
		{"no content type", "", "", "us-east"},
		{"octet-stream", "application/octet-stream", "", "us-east"},
		{"audio/wav to an overridden region", "audio/wav", "eu-west", "eu-west"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", r.url("/v1/listen?model=nova-3&smart_format=true"), bytes.NewReader(audio))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.region != "" {
				req.Header.Set("X-Earshot-Region", tc.region)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get("X-Earshot-Region"); got != tc.wantRegion {
				t.Errorf("X-Earshot-Region = %q, want %q", got, tc.wantRegion)
			}
			if len(resp.Header.Values("Dg-Request-Id")) != 1 || len(resp.Header.Values("X-Request-Id")) != 1 {
				t.Errorf("missing request ids: %v", resp.Header)
			}
			var pr prerecorded
			if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
				t.Fatal(err)
			}
			if pr.Metadata.Duration != 2.0 {
				t.Errorf("duration = %v, want 2", pr.Metadata.Duration)
			}
			alt := pr.Results.Channels[0].Alternatives[0]
			if alt.Transcript != "tell me more" {
				t.Errorf("transcript = %q", alt.Transcript)
			}
			if len(alt.Words) != len(testWords) {
				t.Fatalf("words = %+v", alt.Words)
			}
			for i, w := range alt.Words {
				if want := testWords[i]; w.Word != want.Text || w.Start != want.Start || w.End != want.End {
					t.Errorf("word %d = %+v, want %+v", i, w, want)
				}
			}
		})
	}
}

func TestJSONURLBodyAndOtherEndpoints(t *testing.T) {
	r := startRouter(t, simRegions(""))
	for _, tc := range []struct {
		method, path, ctype, body string
		wantKey                   string // a top-level key of the JSON answer
	}{
		// The simulated engine cannot fetch a URL: it answers as Deepgram
		// answers a URL it cannot fetch.
		{"POST", "/v1/listen", "application/json", `{"url":"https://example.com/a.wav"}`, "err_code"},
		{"POST", "/v1/read?summarize=v2", "application/json", `{"text":"The quick brown fox."}`, "results"},
		{"GET", "/v1/models", "", "", "stt"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.url(tc.path), strings.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var m map[string]json.RawMessage
			want := http.StatusOK
			if tc.wantKey == "err_code" {
				want = http.StatusBadRequest
			}
			if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != want {
				t.Fatalf("status %d, decode %v", resp.StatusCode, err)
			}
			if _, ok := m[tc.wantKey]; !ok {
				t.Errorf("answer has no %q: %v", tc.wantKey, m)
			}
		})
	}
}

// recorder is an upstream that records what reached it.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, r)
	rec.body = append(rec.body, b)
	rec.mu.Unlock()
	// Written raw: net/http would rewrite a handler's Connection header.
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	body := `{"ok":true}`
	fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nDg-Request-Id: upstream-id\r\nConnection: X-Hop\r\n"+
		"X-Hop: must not pass\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	_ = bw.Flush()
}

func (rec *recorder) last(t *testing.T) (*http.Request, []byte) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) == 0 {
		t.Fatal("no request reached the region")
	}
	return rec.reqs[len(rec.reqs)-1], rec.body[len(rec.body)-1]
}

func TestHeadersAndQueryPassThrough(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	t.Setenv("EARSHOT_TEST_MODAL_SECRET", "ws-very-secret")
	r := startRouter(t, fmt.Sprintf(`
health: {probe: {disable: true}}
regions:
  - name: modal
    url: %s/prefix
    location: {lat: 39, lon: -77}
    headers:
      Modal-Key: wk-literal
      Modal-Secret: {env: EARSHOT_TEST_MODAL_SECRET}
`, up.URL))

	const query = "model=nova-3&keywords=earshot:2&keywords=deepgram&search=a%20b&redact=pci&tag=x+y"
	req, _ := http.NewRequest("POST", r.url("/v1/listen?"+query), strings.NewReader("audio-bytes"))
	req.Header.Set("Authorization", "Token client-key")
	req.Header.Set("X-Forwarded-For", "6.6.6.6") // from an untrusted peer: dropped
	req.Header.Set("Modal-Secret", "client-forged")
	req.Header.Set("Connection", "X-Client-Hop")
	req.Header.Set("X-Client-Hop", "hop")
	req.Header.Set("X-Request-Id", "client-chosen-id")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	got, body := rec.last(t)
	checks := []struct{ name, got, want string }{
		{"path", got.URL.Path, "/prefix/v1/listen"},
		{"raw query", got.URL.RawQuery, query},
		{"body", string(body), "audio-bytes"},
		{"X-Forwarded-For", got.Header.Get("X-Forwarded-For"), "127.0.0.1"},
		{"X-Forwarded-Proto", got.Header.Get("X-Forwarded-Proto"), "http"},
		{"Modal-Key", got.Header.Get("Modal-Key"), "wk-literal"},
		{"Modal-Secret", got.Header.Get("Modal-Secret"), "ws-very-secret"},
		{"hop-by-hop", got.Header.Get("X-Client-Hop"), ""},
		{"request id", got.Header.Get("X-Request-Id"), "client-chosen-id"},
		{"response X-Earshot-Region", resp.Header.Get("X-Earshot-Region"), "modal"},
		{"response dg-request-id", resp.Header.Get("Dg-Request-Id"), "upstream-id"},
		{"response X-Request-Id", resp.Header.Get("X-Request-Id"), "client-chosen-id"},
		{"response hop-by-hop", resp.Header.Get("X-Hop"), ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	for _, e := range r.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, "ws-very-secret") || strings.Contains(line, "client-key") {
			t.Errorf("a credential reached the log: %s", line)
		}
	}
}

func TestTrustedProxyForwardedFor(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	r := startRouter(t, fmt.Sprintf(`
health: {probe: {disable: true}}
routing: {trusted_proxies: [127.0.0.0/8]}
regions:
  - name: a
    url: %s
    location: {lat: 39, lon: -77}
`, up.URL))
	req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got, _ := rec.last(t)
	if xff := got.Header.Get("X-Forwarded-For"); xff != "203.0.113.9, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want the trusted chain extended", xff)
	}
	if p := got.Header.Get("X-Forwarded-Proto"); p != "https" {
		t.Errorf("X-Forwarded-Proto = %q, want https from the trusted proxy", p)
	}
}

// TestSpeakStreamsChunks proves the first TTS chunk reaches the client while
// the region is still writing: the region holds its second chunk until the
// client has read the first.
func TestSpeakStreamsChunks(t *testing.T) {
	firstSeen := make(chan struct{})
	finished := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(finished)
		w.Header().Set("Content-Type", "audio/mpeg")
		_, _ = w.Write([]byte("chunk-one;"))
		w.(http.Flusher).Flush()
		select {
		case <-firstSeen:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte("chunk-two"))
	}))
	defer up.Close()
	r := startRouter(t, fmt.Sprintf("health: {probe: {disable: true}}\nregions:\n  - name: a\n    url: %s\n    location: {lat: 39, lon: -77}\n", up.URL))

	resp, err := http.Post(r.url("/v1/speak?model=aura-2"), "application/json", strings.NewReader(`{"text":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, len("chunk-one;"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	select {
	case <-finished:
		t.Fatal("the region finished before the client read the first chunk")
	default:
	}
	close(firstSeen)
	rest, _ := io.ReadAll(resp.Body)
	if string(buf)+string(rest) != "chunk-one;chunk-two" {
		t.Errorf("body = %q", string(buf)+string(rest))
	}
}

func TestSpeakFromSimulatedRegion(t *testing.T) {
	r := startRouter(t, simRegions(""))
	resp, err := http.Post(r.url("/v1/speak?encoding=linear16&sample_rate=16000&container=none"), "application/json",
		strings.NewReader(`{"text":"hello from earshot"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	audio, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	words, err := sim.Decode(audio, 16000)
	if err != nil {
		t.Fatal(err)
	}
	var text []string
	for _, w := range words {
		text = append(text, w.Text)
	}
	if got := strings.Join(text, " "); got != "hello from earshot" {
		t.Errorf("spoken words = %q", got)
	}
}
