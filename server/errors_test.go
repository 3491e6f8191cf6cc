package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// TestRouterErrors checks every error the router answers itself: status,
// Deepgram-shaped body, and headers.
func TestRouterErrors(t *testing.T) {
	r := startRouter(t, simRegions("limits: {max_body_bytes: 1KiB}\n"))
	big := bytes.Repeat([]byte("a"), 2048)

	cases := []struct {
		name    string
		method  string
		path    string
		body    io.Reader
		header  map[string]string
		status  int
		code    string
		checkHd map[string]string
	}{
		{name: "unknown path", method: "GET", path: "/v1/projects", status: 404, code: "NOT_FOUND"},
		{name: "path trick", method: "POST", path: "/v1/listen/../../admin", status: 404, code: "NOT_FOUND"},
		{name: "root", method: "GET", path: "/", status: 404, code: "NOT_FOUND"},
		{name: "wrong method on listen", method: "PUT", path: "/v1/listen", status: 405, code: "METHOD_NOT_ALLOWED",
			checkHd: map[string]string{"Allow": "GET, POST"}},
		{name: "wrong method on models", method: "POST", path: "/v1/models", status: 405, code: "METHOD_NOT_ALLOWED",
			checkHd: map[string]string{"Allow": "GET"}},
		{name: "post to a stream-only path", method: "POST", path: "/v2/listen", status: 405, code: "METHOD_NOT_ALLOWED"},
		{name: "body over the limit, known length", method: "POST", path: "/v1/listen", body: bytes.NewReader(big),
			status: 413, code: "PAYLOAD_TOO_LARGE"},
		{name: "body over the limit, chunked", method: "POST", path: "/v1/listen", body: io.MultiReader(bytes.NewReader(big)),
			status: 413, code: "PAYLOAD_TOO_LARGE"},
		{name: "plain GET on a stream path", method: "GET", path: "/v1/listen", status: 400, code: "BAD_REQUEST"},
		{name: "bad upgrade version", method: "GET", path: "/v1/listen", status: 400, code: "BAD_REQUEST",
			header:  map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
			checkHd: map[string]string{"Sec-WebSocket-Version": "13"}},
		{name: "upgrade without key", method: "GET", path: "/v1/listen", status: 400, code: "BAD_REQUEST",
			header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}},
		{name: "unknown region override", method: "GET", path: "/v1/models", status: 400, code: "BAD_REQUEST",
			header: map[string]string{"X-Earshot-Region": "mars-north"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, r.url(tc.path), tc.body)
			if err != nil {
				t.Fatal(err)
			}
			req.URL.Opaque = tc.path // keep path tricks as written
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			expectError(t, resp, tc.status, tc.code)
			for k, v := range tc.checkHd {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
	// The router kept serving throughout.
	resp, err := http.Get(r.url("/v1/models"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the bad requests: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestUnreachableRegionIs502(t *testing.T) {
	r := startRouter(t, fmt.Sprintf("health: {probe: {disable: true}}\nregions:\n  - name: gone\n    url: http://%s\n    location: {lat: 39, lon: -77}\n", freeAddr(t)))
	resp, err := http.Post(r.url("/v1/listen"), "", strings.NewReader("audio"))
	if err != nil {
		t.Fatal(err)
	}
	e := expectError(t, resp, 502, "BAD_GATEWAY")
	if strings.Contains(e.Msg, "127.0.0.1") {
		t.Errorf("error message reveals the region's address: %q", e.Msg)
	}
	if resp.Header.Get("X-Earshot-Region") != "gone" {
		t.Errorf("X-Earshot-Region = %q", resp.Header.Get("X-Earshot-Region"))
	}

	// A stream to an unreachable region is refused before the upgrade, as 502.
	_, resp, err = websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err == nil {
		t.Fatal("stream to an unreachable region succeeded")
	}
	expectError(t, resp, 502, "BAD_GATEWAY")
}

func TestHungRegionIs504(t *testing.T) {
	r := startRouter(t, `
timeouts: {response: 300ms, handshake: 300ms}
regions:
  - name: slow
    url: sim://slow
    location: {lat: 39, lon: -77}
    sim: {mode: hang}
`)
	resp, err := http.Post(r.url("/v1/listen"), "", bytes.NewReader(sim.Synthesize(testWords, 16000, 2)))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 504, "GATEWAY_TIMEOUT")

	// The timeout cost one request; the region is now out of rotation for
	// the breaker's open period, so new work is refused at once.
	_, resp, err = websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err == nil {
		t.Fatal("stream to a hung region succeeded")
	}
	expectError(t, resp, 503, "NO_REGION_AVAILABLE")
}

func TestHungRegionHandshakeIs504(t *testing.T) {
	r := startRouter(t, `
timeouts: {handshake: 300ms}
health: {probe: {disable: true}}
regions:
  - name: slow
    url: sim://slow
    location: {lat: 39, lon: -77}
    sim: {mode: hang}
`)
	_, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err == nil {
		t.Fatal("stream to a hung region succeeded")
	}
	expectError(t, resp, 504, "GATEWAY_TIMEOUT")
}

// TestResidencyFullIs503 fills the only region a residency rule allows with
// a stream, then checks that the rule's clients are refused with 503 and
// Retry-After (never sent to the other region), while everyone else is
// served, and that the rule's clients are served again once it frees.
func TestResidencyFullIs503(t *testing.T) {
	r := startRouter(t, `
routing:
  trusted_proxies: [127.0.0.1, "::1"]
  edge_headers: [cloudflare]
  residency:
    - {name: gdpr, countries: [EU], regions: [tiny]}
regions:
  - name: tiny
    url: sim://tiny
    location: {lat: 53.35, lon: -6.26}
    capacity: 1
  - name: roomy
    url: sim://roomy
    location: {lat: 39, lon: -77}
`)
	from := func(country string) http.Header { return http.Header{"Cf-Ipcountry": {country}} }
	conn, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), from("DE"))
	if err != nil {
		t.Fatal(err)
	}
	post := func(country string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", r.url("/v1/listen"), bytes.NewReader(sim.WAV(nil, 16000, 1)))
		req.Header = from(country)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("FR")
	if got := resp.Header.Get("Retry-After"); got == "" {
		t.Error("503 without Retry-After")
	}
	expectError(t, resp, 503, "NO_REGION_AVAILABLE")

	resp = post("US")
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Earshot-Region") != "roomy" {
		t.Errorf("a client outside the rule got %d from %q, want 200 from roomy", resp.StatusCode, resp.Header.Get("X-Earshot-Region"))
	}

	_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			break
		}
	}
	conn.Close()
	waitFor(t, "the stream's capacity to be released", func() bool {
		return r.srv.live().regions[0].health.InFlight() == 0
	})
	resp = post("FR")
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Earshot-Route") != "residency" {
		t.Fatalf("after the stream ended: %d %q", resp.StatusCode, resp.Header.Get("X-Earshot-Route"))
	}
}

// TestAllFullGoesToTheLeastLoaded checks that when every region is at
// capacity, new work is not refused: the least loaded by ratio takes it.
func TestAllFullGoesToTheLeastLoaded(t *testing.T) {
	r := startRouter(t, `
regions:
  - name: small
    url: sim://small
    location: {lat: 39, lon: -77}
    capacity: 1
  - name: big
    url: sim://big
    location: {lat: 53.35, lon: -6.26}
    capacity: 2
`)
	var conns []*websocket.Conn
	for range 3 {
		conn, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	small, big := r.srv.live().regions[0].health, r.srv.live().regions[1].health
	if small.InFlight() != 1 || big.InFlight() != 2 {
		t.Fatalf("in flight: small %d, big %d; want 1 and 2", small.InFlight(), big.InFlight())
	}
	// Both full (1/1 and 2/2); equal ratios go to the nearer, then big at 2/2 < small at 2/1.
	for _, want := range []string{"small", "big"} {
		conn, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if got := resp.Header.Get("X-Earshot-Region"); got != want {
			t.Errorf("over capacity: served by %q, want %q", got, want)
		}
	}
}

// TestRegionRefusalPassesThrough checks that a full region's own answer
// (here a simulated engine at capacity answering 429) reaches the client.
func TestRegionRefusalPassesThrough(t *testing.T) {
	r := startRouter(t, `
regions:
  - name: busy
    url: sim://busy
    location: {lat: 39, lon: -77}
    sim: {mode: refuse, full_status: 429}
`)
	resp, err := http.Post(r.url("/v1/listen"), "", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("X-Earshot-Region") != "busy" {
		t.Errorf("status %d region %q, want 429 from busy", resp.StatusCode, resp.Header.Get("X-Earshot-Region"))
	}
	_, resp, err = websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err == nil {
		t.Fatal("handshake with a refusing region succeeded")
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 429 || !bytes.Contains(body, []byte("err_code")) {
		t.Errorf("handshake refusal = %d %s, want the region's 429 and body", resp.StatusCode, body)
	}
}

// TestErrorTexts: what the router says is a sentence a person can act on,
// and names what was sent as it was sent.
func TestErrorTexts(t *testing.T) {
	r, _ := authRouter(t, "")
	for _, c := range []struct {
		name, path, auth, want string
		status                 int
	}{
		{"wrong key", "/v1/models", "Token not-a-key", "Invalid credentials: the key is not one this router accepts.", 401},
		{"no key", "/v1/models", "", "No credentials: send Authorization: Token YOUR_KEY.", 401},
		{"encoded slash", "/v1%2Fmodels", "Token " + clientKey,
			"The path /v1%2Fmodels is not part of the API served here: paths are matched as sent, and encoded slashes or dots are not decoded.", 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", r.url("/"), nil)
			req.URL.Opaque = c.path
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			resp, _ := do(t, req)
			if e := expectError(t, resp, c.status, map[int]string{401: "INVALID_AUTH", 404: "NOT_FOUND"}[c.status]); e.Msg != c.want {
				t.Errorf("err_msg %q, want %q", e.Msg, c.want)
			}
		})
	}
}
