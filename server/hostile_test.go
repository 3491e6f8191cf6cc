package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// TestHostileInputBattery throws malformed and hostile input at one router
// over real loopback sockets while a well-behaved client streams audio
// through it, and checks that every bad input gets its specific answer (a
// status and Deepgram err_code, a WebSocket close code, or a connection
// behaviour) and that the good stream never notices.
func TestHostileInputBattery(t *testing.T) {
	key := testSecrets[0] // one of the suite's secrets: the secret scan also proves no answer or log echoes it
	sum := sha256.Sum256([]byte(key))
	r := startRouter(t, fmt.Sprintf(`
auth:
  keys:
    - {name: battery, sha256: "%x"}
timeouts: {read_header: 1s, handshake: 2s, close_grace: 1s, stream_idle: 1s}
limits: {max_header_bytes: 4KiB, max_message_bytes: 64KiB, max_body_bytes: 1MiB, max_connections: 64}
health: {probe: {disable: true}}
regions:
  - name: us-east
    url: sim://us-east
    location: {lat: 39.04, lon: -77.49}
    capacity: 100
    sim: {silence_timeout: 5s}
`, sum))
	b := &battery{r: r, auth: "Token " + key,
		client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	t.Cleanup(b.client.CloseIdleConnections)

	var evilHits atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		evilHits.Add(1)
		_, _ = io.WriteString(w, `{"evil":true}`)
	}))
	t.Cleanup(evil.Close)
	evilHost := strings.TrimPrefix(evil.URL, "http://")

	good := startStreamer(t, r, b.auth)

	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		// Broken WebSocket upgrades (authenticated, so the upgrade itself is judged).
		{"upgrade without Upgrade header", func(t *testing.T) {
			h := b.upgradeHeader()
			h.Del("Upgrade")
			b.routerError(t, b.do(t, "GET", "/v1/listen", h, nil), 400, "BAD_REQUEST")
		}},
		{"upgrade with Sec-WebSocket-Version 8", func(t *testing.T) {
			h := b.upgradeHeader()
			h.Set("Sec-WebSocket-Version", "8")
			resp := b.do(t, "GET", "/v1/listen", h, nil)
			if got := resp.Header.Get("Sec-WebSocket-Version"); got != "13" {
				t.Errorf("Sec-WebSocket-Version = %q, want 13 advertised", got)
			}
			b.routerError(t, resp, 400, "BAD_REQUEST")
		}},
		{"upgrade with short Sec-WebSocket-Key", func(t *testing.T) {
			h := b.upgradeHeader()
			h.Set("Sec-WebSocket-Key", "c2hvcnQ=")
			b.routerError(t, b.do(t, "GET", "/v1/listen", h, nil), 400, "BAD_REQUEST")
		}},
		{"upgrade with non-base64 Sec-WebSocket-Key of 24 bytes", func(t *testing.T) {
			h := b.upgradeHeader()
			h.Set("Sec-WebSocket-Key", strings.Repeat("!", 24))
			resp := b.do(t, "GET", "/v1/listen", h, nil)
			b.routerError(t, resp, 400, "BAD_REQUEST")
		}},
		{"upgrade headers on POST are a plain pre-recorded request", func(t *testing.T) {
			resp := b.do(t, "POST", "/v1/listen", b.upgradeHeader(), bytes.NewReader(sim.WAV(nil, 16000, 1)))
			var pr prerecorded
			body := readBody(t, resp)
			if resp.StatusCode != 200 || json.Unmarshal(body, &pr) != nil || pr.Metadata.RequestID == "" {
				t.Fatalf("POST with upgrade headers = %d %s, want the region's 200 pre-recorded answer", resp.StatusCode, body)
			}
			if pr.Metadata.Duration != 0 || resp.Header.Get("X-Earshot-Region") != "us-east" {
				t.Errorf("answer %s from %q, want an empty transcript from us-east", body, resp.Header.Get("X-Earshot-Region"))
			}
		}},
		{"plain GET on a stream path", func(t *testing.T) {
			b.routerError(t, b.do(t, "GET", "/v2/listen", http.Header{"Authorization": {b.auth}}, nil), 400, "BAD_REQUEST")
		}},

		// Header blocks net/http refuses before the router sees them.
		{"oversized request headers", func(t *testing.T) {
			err := b.refusedByNetHTTP(t, rawRequest("GET /v1/models HTTP/1.1", "Host: x", "X-Pad: "+strings.Repeat("p", 16<<10)), 431)
			if err != nil {
				t.Errorf("reading the 431: %v", err)
			}
		}},
		{"huge query string", func(t *testing.T) {
			if err := b.refusedByNetHTTP(t, rawRequest("GET /v1/models?keywords="+strings.Repeat("q", 64<<10)+" HTTP/1.1", "Host: x"), 431); err != nil {
				t.Errorf("reading the 431: %v", err)
			}
		}},
		{"long query string within the limit passes", func(t *testing.T) {
			q := strings.Repeat("keywords=earshot:2&", 150) // about 3 KiB
			resp := b.do(t, "GET", "/v1/models?"+q, http.Header{"Authorization": {b.auth}}, nil)
			body := readBody(t, resp)
			if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"stt"`)) {
				t.Errorf("status %d body %.100s, want the region's model list", resp.StatusCode, body)
			}
		}},
		{"CR in a header value", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("GET /v1/models HTTP/1.1", "Host: x", "X-Note: a\rX-Injected: yes"), 400)
		}},
		{"NUL in a header value", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("GET /v1/models HTTP/1.1", "Host: x", "X-Note: a\x00b"), 400)
		}},
		{"space before a header colon", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("GET /v1/models HTTP/1.1", "Host: x", "Authorization : "+b.auth), 400)
		}},
		{"NUL in the path", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("GET /v1/mo\x00dels HTTP/1.1", "Host: x", "Authorization: "+b.auth), 400)
		}},
		{"junk X-Request-Id is replaced", func(t *testing.T) {
			for _, junk := range []string{`<script>alert("id")</script> with spaces`, strings.Repeat("a", 129), "caf\xc3\xa9"} {
				resp := b.do(t, "GET", "/v1/models", http.Header{"Authorization": {b.auth}, "X-Request-Id": {junk}}, nil)
				readBody(t, resp)
				if got := resp.Header.Get("X-Request-Id"); !uuidPattern.MatchString(got) || resp.StatusCode != 200 {
					t.Errorf("X-Request-Id %.40q came back as %q (status %d), want a fresh UUID", junk, got, resp.StatusCode)
				}
			}
		}},

		// Message framing.
		{"Content-Length and Transfer-Encoding: answered, then the connection closed", func(t *testing.T) {
			// net/http (Go 1.26) does not refuse this: Transfer-Encoding wins
			// and Content-Length is deleted (RFC 9112 6.3). Bytes a
			// Content-Length reader would count as body are, to a chunked
			// reader, the next request: RFC 9112 6.1 requires closing the
			// connection after the response, so that it is never served.
			smuggled := "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + b.auth + "\r\n\r\n"
			body := "0\r\n\r\n" + smuggled
			c, br := b.dial(t)
			before := len(b.r.accessLines())
			write(t, c, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				"Content-Type: application/octet-stream", fmt.Sprintf("Content-Length: %d", len(body)),
				"Transfer-Encoding: chunked")+body)
			first, firstBody := readResponse(t, c, br)
			if !first.Close || first.Header.Get("Dg-Request-Id") == "" {
				t.Errorf("first response %d %v %s, want an answer with Connection: close", first.StatusCode, first.Header, firstBody)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the response: %q %v, want the connection closed (the smuggled request unserved)", n, err)
			}
			for _, l := range b.r.accessLines()[before:] {
				if l.ContextMap()["path"] == "/v1/models" {
					t.Errorf("the smuggled request was served: %v", l.ContextMap())
				}
			}
		}},
		{"a chunked upload closes its connection after the answer", func(t *testing.T) {
			c, br := b.dial(t)
			write(t, c, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				"Transfer-Encoding: chunked")+"0\r\n\r\n")
			if first, _ := readResponse(t, c, br); !first.Close {
				t.Errorf("a chunked request kept its connection: Go deletes Content-Length before the handler, so CL+TE cannot be told apart")
			}
		}},
		{"two different Content-Lengths", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				"Content-Length: 3", "Content-Length: 30")+"abc", 400)
		}},
		{"negative Content-Length", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth, "Content-Length: -1"), 400)
		}},
		{"Transfer-Encoding gzip, chunked", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				"Transfer-Encoding: gzip, chunked")+"0\r\n\r\n", 501)
		}},
		{"two Transfer-Encoding headers", func(t *testing.T) {
			b.cleanRefusal(t, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				"Transfer-Encoding: chunked", "Transfer-Encoding: chunked")+"0\r\n\r\n", 501)
		}},
		{"slowloris headers", func(t *testing.T) {
			b.slowloris(t)
		}},
		{"half-closed client gets its answer or nothing, never an empty 200", func(t *testing.T) {
			c, br := b.dial(t)
			write(t, c, rawRequest("GET /v1/models HTTP/1.1", "Host: x", "Authorization: "+b.auth))
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			// net/http takes the half-close for a client gone and cancels the
			// request; if the region had not answered by then, the router
			// closes the connection without an answer and logs 499.
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err == nil {
				if body := readBody(t, resp); resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"stt"`)) {
					t.Errorf("half-closed client got %d %q, want the region's model list or no answer", resp.StatusCode, body)
				}
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("read response: %v", err)
			}
			waitFor(t, "the 499 access line", func() bool {
				for _, e := range b.r.accessLines() {
					if f := e.ContextMap(); f["path"] == "/v1/models" && fmt.Sprint(f["status"]) == "499" {
						return true
					}
				}
				return false
			})
		}},
		{"absolute-form URI to another host", func(t *testing.T) {
			resp, body := b.raw(t, rawRequest("GET http://"+evilHost+"/v1/models HTTP/1.1", "Host: "+evilHost, "Authorization: "+b.auth))
			if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"stt"`)) || resp.Header.Get("X-Earshot-Region") != "us-east" {
				t.Errorf("absolute-form request got %d from %q: %.100s, want the configured region's model list",
					resp.StatusCode, resp.Header.Get("X-Earshot-Region"), body)
			}
			if n := evilHits.Load(); n != 0 {
				t.Errorf("the host named in the request line got %d requests, want 0", n)
			}
		}},
		{"CONNECT to another host", func(t *testing.T) {
			resp, body := b.raw(t, rawRequest("CONNECT "+evilHost+" HTTP/1.1", "Host: "+evilHost, "Authorization: "+b.auth))
			b.routerError(t, withBody(resp, body), 404, "NOT_FOUND")
			if n := evilHits.Load(); n != 0 {
				t.Errorf("the CONNECT target got %d requests, want 0", n)
			}
		}},
		{"CONNECT on an API path", func(t *testing.T) {
			resp, body := b.raw(t, rawRequest("CONNECT /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth))
			b.routerError(t, withBody(resp, body), 405, "METHOD_NOT_ALLOWED")
			if got := resp.Header.Get("Allow"); got != "GET, POST" {
				t.Errorf("Allow = %q", got)
			}
		}},

		// Paths that are not exactly the API's (sent raw, as written).
		{"dot segments", b.notFound("/v1/../v1/models")},
		{"encoded slash", b.notFound("/v1%2Fmodels")},
		{"network-path reference", b.notFound("//evil.example/v1/models")},
		{"trailing slash", b.notFound("/v1/models/")},
		{"upper case", b.notFound("/V1/MODELS")},

		// Methods the API does not take.
		{"PUT", b.notAllowed("PUT", "/v1/listen", "GET, POST")},
		{"DELETE", b.notAllowed("DELETE", "/v1/models", "GET")},
		{"TRACE", b.notAllowed("TRACE", "/v1/speak", "GET, POST")},

		// Credentials.
		{"no credentials", b.unauthorized(nil)},
		{"scheme without key", b.unauthorized([]string{"Token"})},
		{"scheme glued to key", b.unauthorized([]string{"Token" + key})},
		{"key with a space inside", b.unauthorized([]string{"Token sk-earshot CLIENT"})},
		{"wrong key", b.unauthorized([]string{"Token sk-earshot-WRONG-KEY"})},
		{"Basic credentials", b.unauthorized([]string{"Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+key))})},
		{"two Authorization headers", b.unauthorized([]string{b.auth, b.auth})},
		{"over-long key", b.unauthorized([]string{"Token " + strings.Repeat("k", 4097)})},
		{"non-ASCII key", b.unauthorized([]string{"Token sk-\xc3\xa9arshot"})},
		{"Bearer with the right key is let in", func(t *testing.T) {
			resp := b.do(t, "GET", "/v1/models", http.Header{"Authorization": {"bearer " + key}}, nil)
			if readBody(t, resp); resp.StatusCode != 200 {
				t.Errorf("status %d, want 200: the battery's key must work", resp.StatusCode)
			}
		}},
		{"stream with token subprotocol and a wrong key", func(t *testing.T) {
			d := websocket.Dialer{Subprotocols: []string{"token", "sk-earshot-WRONG-KEY"}}
			c, resp, err := d.Dial(r.ws("/v1/listen"), nil)
			if err == nil {
				c.Close()
				t.Fatal("handshake with a wrong key succeeded")
			}
			b.routerError(t, resp, 401, "INVALID_AUTH")
		}},
		{"stream with the key in the query (not enabled)", func(t *testing.T) {
			c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?token="+key), nil)
			if err == nil {
				c.Close()
				t.Fatal("handshake with ?token= succeeded though auth.query_token is off")
			}
			b.routerError(t, resp, 401, "INVALID_AUTH")
		}},

		// Bodies.
		{"body over max_body_bytes, known length", func(t *testing.T) {
			c, br := b.dial(t)
			write(t, c, rawRequest("POST /v1/listen HTTP/1.1", "Host: x", "Authorization: "+b.auth,
				fmt.Sprintf("Content-Length: %d", 1<<20+1))+"abc")
			resp, body := readResponse(t, c, br)
			b.routerError(t, withBody(resp, body), 413, "PAYLOAD_TOO_LARGE")
			if !peerClosed(c, br) {
				t.Error("connection left open with most of an unread body on it")
			}
		}},
		{"body over max_body_bytes, chunked", func(t *testing.T) {
			c, br := b.dial(t)
			sent := make(chan error, 1)
			go func() {
				chunk := bytes.Repeat([]byte("a"), 1<<20+1)
				_, err := fmt.Fprintf(c, "%s%x\r\n%s\r\n0\r\n\r\n", rawRequest("POST /v1/listen HTTP/1.1", "Host: x",
					"Authorization: "+b.auth, "Transfer-Encoding: chunked"), len(chunk), chunk)
				sent <- err
			}()
			resp, body := readResponse(t, c, br)
			_ = c.Close()
			<-sent // written, or cut off by the close
			b.routerError(t, withBody(resp, body), 413, "PAYLOAD_TOO_LARGE")
		}},
		{"JSON body that is not JSON", func(t *testing.T) {
			resp := b.do(t, "POST", "/v1/listen", http.Header{"Authorization": {b.auth}, "Content-Type": {"application/json"}},
				strings.NewReader(`{"url": "https://example.com/a.wav"`))
			body := readBody(t, resp)
			var e deepgramError
			if resp.StatusCode != 400 || json.Unmarshal(body, &e) != nil || e.Code != "Bad Request" {
				t.Fatalf("status %d body %s, want the region's 400 Bad Request passed through", resp.StatusCode, body)
			}
			if resp.Header.Get("X-Earshot-Region") != "us-east" || resp.Header.Get("Dg-Request-Id") != e.RequestID {
				t.Errorf("headers %v, want the region's answer with its request id", resp.Header)
			}
		}},

		// WebSocket messages.
		{"oversized message closes 1009", func(t *testing.T) {
			c := b.ws(t, "/v1/listen?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.BinaryMessage, make([]byte, 64<<10+1))
			if ce := readClose(t, c); ce.Code != websocket.CloseMessageTooBig || ce.Text != "Message over the router's limit of 64 KiB (limits.max_message_bytes)." {
				t.Errorf("close %v, want 1009 naming the limit", ce)
			}
		}},
		{"a message at the limit passes", func(t *testing.T) {
			c := b.ws(t, "/v1/listen?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.BinaryMessage, make([]byte, 64<<10))
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
			if ce := readClose(t, c); ce.Code != websocket.CloseNormalClosure {
				t.Errorf("close %v, want 1000 after CloseStream", ce)
			}
		}},
		{"invalid UTF-8 text closes 1007", func(t *testing.T) {
			c := b.ws(t, "/v1/listen?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.TextMessage, []byte("{\"type\":\"KeepAlive\xff\xfe\"}"))
			if ce := readClose(t, c); ce.Code != websocket.CloseInvalidFramePayloadData {
				t.Errorf("close %v, want 1007", ce)
			}
		}},
		{"binary frame on the speak stream gets a Warning", func(t *testing.T) {
			c := b.ws(t, "/v1/speak?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3, 4})
			if m := readUntilType(t, c, "Warning"); m.Code != "UNEXPECTED_AUDIO" {
				t.Errorf("warning %+v, want UNEXPECTED_AUDIO", m)
			}
		}},
		{"unknown message type on the speak stream gets a Warning", func(t *testing.T) {
			c := b.ws(t, "/v1/speak?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Dance","moves":["left"]}`))
			if m := readUntilType(t, c, "Warning"); m.Code != "UNKNOWN_MESSAGE_TYPE" || !strings.Contains(m.Description, "Dance") {
				t.Errorf("warning %+v, want UNKNOWN_MESSAGE_TYPE naming Dance", m)
			}
		}},
		{"junk JSON on the speak stream gets a Warning", func(t *testing.T) {
			c := b.ws(t, "/v1/speak?encoding=linear16&sample_rate=16000")
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type": "Speak", "text": `))
			if m := readUntilType(t, c, "Warning"); m.Code != "UNKNOWN_MESSAGE_TYPE" {
				t.Errorf("warning %+v, want UNKNOWN_MESSAGE_TYPE", m)
			}
		}},
		{"unknown message type on the agent gets a Warning", func(t *testing.T) {
			c := b.ws(t, "/v1/agent/converse")
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"OpenThePodBayDoors"}`))
			if m := readUntilType(t, c, "Warning"); m.Code != "UNKNOWN_MESSAGE_TYPE" {
				t.Errorf("warning %+v, want UNKNOWN_MESSAGE_TYPE", m)
			}
		}},
		{"junk and unknown control messages on listen are ignored", func(t *testing.T) {
			c := b.ws(t, "/v1/listen?encoding=linear16&sample_rate=16000")
			for _, junk := range []string{`{"type":`, `not json at all`, `[1,2,3]`, `{"type":"Unheard","x":1}`, `{"type":42}`, ``} {
				if err := c.WriteMessage(websocket.TextMessage, []byte(junk)); err != nil {
					t.Fatal(err)
				}
			}
			sendAudio(t, c, sim.Synthesize(testWords, 16000, 2.0), 3200)
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
			expectFinished(t, c, "tell me more")
		}},
		{"empty binary frame ends the stream", func(t *testing.T) {
			c := b.ws(t, "/v1/listen?encoding=linear16&sample_rate=16000")
			sendAudio(t, c, sim.Synthesize(testWords, 16000, 2.0), 3200)
			_ = c.WriteMessage(websocket.BinaryMessage, []byte{})
			expectFinished(t, c, "tell me more")
		}},
		{"unmasked client frame closes 1002", b.rawFrame([]byte{0x82, 0x02, 0x01, 0x02})},
		{"reserved bits set closes 1002", b.rawFrame([]byte{0x80 | 0x20 | 0x02, 0x80 | 2, 0, 0, 0, 0, 1, 2})},
		{"close frame with invalid code closes 1002", b.rawFrame([]byte{0x88, 0x80 | 2, 0, 0, 0, 0, 0x03, 0xe7})},
		{"fragmented ping closes 1002", b.rawFrame([]byte{0x09, 0x80, 0, 0, 0, 0})},
		{"continuation without a start closes 1002", b.rawFrame([]byte{0x80, 0x80 | 1, 0, 0, 0, 0, 'x'})},
		{"silent stream closes 1011 after stream_idle", func(t *testing.T) {
			c := b.ws(t, "/v1/speak?encoding=linear16&sample_rate=16000")
			start := time.Now()
			ce := readClose(t, c)
			if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
				t.Errorf("closed after %v, want about stream_idle (1s)", d)
			}
			if ce.Code != websocket.CloseInternalServerErr {
				t.Fatalf("close %v, want 1011", ce)
			}
			if !strings.HasPrefix(ce.Text, "stream idle") {
				t.Errorf("close reason %q, want stream idle", ce.Text)
			}
		}},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, tc.run)
	}

	good.finish(t)

	// The router is still serving, and nothing above panicked inside it.
	resp := b.do(t, "GET", "/v1/models", http.Header{"Authorization": {b.auth}}, nil)
	if body := readBody(t, resp); resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"stt"`)) {
		t.Errorf("after the battery: %d %s", resp.StatusCode, body)
	}
	if n := r.logs.FilterMessage("panic in handler").Len(); n != 0 {
		t.Errorf("%d handler panics logged", n)
	}
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// battery sends hostile requests to one router.
type battery struct {
	r      *router
	auth   string // the Authorization header value of the battery's key
	client *http.Client
}

// do sends a request with the given headers exactly (no credentials added).
func (b *battery) do(t *testing.T, method, path string, h http.Header, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, b.r.url(path), body)
	if err != nil {
		t.Fatal(err)
	}
	if h != nil {
		req.Header = h
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// upgradeHeader is a valid, authenticated WebSocket handshake.
func (b *battery) upgradeHeader() http.Header {
	return http.Header{
		"Authorization":         {b.auth},
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

// routerError checks an error the router answered itself: Deepgram's body
// with the status and code, and no region involved.
func (b *battery) routerError(t *testing.T, resp *http.Response, status int, code string) {
	t.Helper()
	if resp == nil {
		t.Fatalf("no response, want %d %s", status, code)
	}
	for _, h := range []string{"X-Earshot-Region", sim.HeaderEngine} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("%s = %q: the request reached a region", h, v)
		}
	}
	if status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	expectError(t, withBody(resp, readBody(t, resp)), status, code)
}

func (b *battery) notFound(path string) func(t *testing.T) {
	return func(t *testing.T) {
		resp, body := b.raw(t, rawRequest("GET "+path+" HTTP/1.1", "Host: x", "Authorization: "+b.auth))
		b.routerError(t, withBody(resp, body), 404, "NOT_FOUND")
	}
}

func (b *battery) notAllowed(method, path, allow string) func(t *testing.T) {
	return func(t *testing.T) {
		resp := b.do(t, method, path, http.Header{"Authorization": {b.auth}}, nil)
		if got := resp.Header.Get("Allow"); got != allow {
			t.Errorf("Allow = %q, want %q", got, allow)
		}
		b.routerError(t, resp, 405, "METHOD_NOT_ALLOWED")
	}
}

// unauthorized checks that GET /v1/models with these Authorization values
// (sent raw, so that none is rewritten) is refused with 401.
func (b *battery) unauthorized(values []string) func(t *testing.T) {
	return func(t *testing.T) {
		lines := []string{"GET /v1/models HTTP/1.1", "Host: x"}
		for _, v := range values {
			lines = append(lines, "Authorization: "+v)
		}
		resp, body := b.raw(t, rawRequest(lines...))
		b.routerError(t, withBody(resp, body), 401, "INVALID_AUTH")
	}
}

// ws opens an authenticated stream, closed when the test ends.
func (b *battery) ws(t *testing.T, path string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(b.r.ws(path), http.Header{"Authorization": {b.auth}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawFrame writes bytes that break the WebSocket framing rules on an open
// speak stream: the router must close it with 1002 (protocol error).
func (b *battery) rawFrame(frame []byte) func(t *testing.T) {
	return func(t *testing.T) {
		c := b.ws(t, "/v1/speak?encoding=linear16&sample_rate=16000")
		readUntilType(t, c, "Metadata")
		if _, err := c.NetConn().Write(frame); err != nil {
			t.Fatal(err)
		}
		if ce := readClose(t, c); ce.Code != websocket.CloseProtocolError {
			t.Errorf("close %v, want 1002", ce)
		}
	}
}

// dial opens a TCP connection to the router, closed when the test ends.
func (b *battery) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", b.r.api)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// raw sends req on a new connection and reads one response.
func (b *battery) raw(t *testing.T, req string) (*http.Response, []byte) {
	t.Helper()
	c, br := b.dial(t)
	write(t, c, req)
	return readResponse(t, c, br)
}

// refusedByNetHTTP sends req raw and checks net/http's own refusal, before
// the router's handler: the status, Connection: close, no request id, and
// the connection closed. It returns the error that ended reading the
// answer's body, if any (a reset also closes the connection).
func (b *battery) refusedByNetHTTP(t *testing.T, req string, status int) error {
	t.Helper()
	c, br := b.dial(t)
	write(t, c, req)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	if resp.Header.Get("X-Request-Id") != "" || !resp.Close {
		t.Errorf("headers %v, want net/http's refusal with Connection: close", resp.Header)
	}
	body, err := io.ReadAll(resp.Body)
	remember(string(body))
	if err == nil && !peerClosed(c, br) {
		t.Error("connection left open")
	}
	return err
}

// cleanRefusal is refusedByNetHTTP where the answer must end cleanly.
func (b *battery) cleanRefusal(t *testing.T, req string, status int) {
	t.Helper()
	if err := b.refusedByNetHTTP(t, req, status); err != nil {
		t.Errorf("reading the answer: %v", err)
	}
}

// accessLine is the access log line of the request with this id.
func (b *battery) accessLine(t *testing.T, id string) map[string]any {
	t.Helper()
	var line map[string]any
	waitFor(t, "the access log line of "+id, func() bool {
		for _, e := range b.r.accessLines() {
			if f := e.ContextMap(); f["request_id"] == id {
				line = f
				return true
			}
		}
		return false
	})
	return line
}

// slowloris sends a request line a byte every 100 ms: once read_header
// (1s) has passed, net/http answers the partial line with its 400 and
// closes the connection.
func (b *battery) slowloris(t *testing.T) {
	c, br := b.dial(t)
	req := rawRequest("GET /v1/models HTTP/1.1", "Host: x", "Authorization: "+b.auth)
	stop := make(chan struct{})
	wrote := make(chan int, 1)
	start := time.Now()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		n := 0
		for n < len(req) {
			select {
			case <-stop:
				wrote <- n
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte{req[n]}); err != nil {
				break
			}
			n++
		}
		wrote <- n
	}()
	_ = c.SetReadDeadline(time.Now().Add(4 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	elapsed := time.Since(start)
	close(stop)
	n := <-wrote
	if err != nil {
		t.Fatalf("after %v: %v, want net/http's 400", elapsed, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || resp.Header.Get("X-Request-Id") != "" {
		t.Errorf("answer %d %v %q, want net/http's 400 for an unfinished request", resp.StatusCode, resp.Header, body)
	}
	if !peerClosed(c, br) {
		t.Error("connection left open")
	}
	if elapsed < 900*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("answered after %v, want about read_header (1s)", elapsed)
	}
	if n >= len(req) {
		t.Errorf("the whole request (%d bytes) was sent before the close", n)
	}
}

func rawRequest(lines ...string) string { return strings.Join(lines, "\r\n") + "\r\n\r\n" }

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readResponse reads one response and its body, with a deadline.
func readResponse(t *testing.T, c net.Conn, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp, readBody(t, resp)
}

// peerClosed reports whether the other side closes the connection (within
// a second) rather than waiting for another request.
func peerClosed(c net.Conn, br *bufio.Reader) bool {
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, err := br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// readBody reads and closes a body, keeping it for the suite's secret scan.
func readBody(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	remember(fmt.Sprint(resp.Header) + string(body))
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return body
}

func withBody(resp *http.Response, body []byte) *http.Response {
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

// wsMessage is a stream message's common fields.
type wsMessage struct {
	Type        string `json:"type"`
	Code        string `json:"code"`
	Description string `json:"description"`
}

// readUntilType reads until a text message of type typ arrives.
func readUntilType(t *testing.T, c *websocket.Conn, typ string) wsMessage {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		mt, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for %s: %v", typ, err)
		}
		var m wsMessage
		if mt == websocket.TextMessage && json.Unmarshal(data, &m) == nil && m.Type == typ {
			return m
		}
	}
}

// readClose reads until the router closes the stream and returns its close frame.
func readClose(t *testing.T, c *websocket.Conn) *websocket.CloseError {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("stream ended without a close frame: %v", err)
		}
		return ce
	}
}

// expectFinished checks a listen stream's end: final results with the
// transcript, Metadata last, and a normal close.
func expectFinished(t *testing.T, c *websocket.Conn, transcript string) {
	t.Helper()
	msgs, ce := readAll(t, c)
	var finals []string
	for _, m := range msgs {
		if m.Type == "Results" && m.IsFinal && m.transcript() != "" {
			finals = append(finals, m.transcript())
		}
	}
	if got := strings.Join(finals, " "); got != transcript {
		t.Errorf("finals %q, want %q", got, transcript)
	}
	if len(msgs) == 0 || msgs[len(msgs)-1].Type != "Metadata" {
		t.Errorf("messages %+v, want Metadata last", msgs)
	}
	if ce.Code != websocket.CloseNormalClosure {
		t.Errorf("close %v, want 1000", ce)
	}
}

// streamer is a well-behaved client streaming audio through the router in
// 100 ms frames, with KeepAlive after every clip, until told to finish.
type streamer struct {
	stop   chan struct{}
	once   sync.Once
	result chan error
}

func startStreamer(t *testing.T, r *router, auth string) *streamer {
	s := &streamer{stop: make(chan struct{}), result: make(chan error, 1)}
	go func() { s.result <- s.run(r, auth) }()
	t.Cleanup(func() { // when the test failed before finish
		s.once.Do(func() { close(s.stop) })
		select {
		case <-s.result:
		case <-time.After(10 * time.Second):
		}
	})
	return s
}

// finish ends the stream with CloseStream and reports what went wrong.
func (s *streamer) finish(t *testing.T) {
	t.Helper()
	s.once.Do(func() { close(s.stop) })
	if err := recv(t, s.result, "the streaming client to finish"); err != nil {
		t.Errorf("the well-behaved stream: %v", err)
	}
	s.result <- nil // for the cleanup
}

type streamed struct {
	types  []string
	finals []string
	err    error
}

func (s *streamer) run(r *router, auth string) error {
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), http.Header{"Authorization": {auth}})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	done := make(chan streamed, 1)
	go func() {
		var got streamed
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		for {
			mt, data, err := c.ReadMessage()
			if err != nil {
				got.err = err
				done <- got
				return
			}
			var m message
			if mt != websocket.TextMessage || json.Unmarshal(data, &m) != nil {
				got.err = fmt.Errorf("unexpected message %d %.80q", mt, data)
				done <- got
				return
			}
			got.types = append(got.types, m.Type)
			if m.Type == "Results" && m.IsFinal && m.transcript() != "" {
				got.finals = append(got.finals, m.transcript())
			}
		}
	}()

	clip := sim.Synthesize(testWords, 16000, 2.0)
	const frame = 3200 // 100 ms of 16 kHz linear16
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	clips := 0
	for stopped := false; !stopped; {
		for off := 0; off < len(clip); off += frame {
			select {
			case <-tick.C:
			case got := <-done:
				return fmt.Errorf("stream ended after %d clips and %v: %v", clips, got.types, got.err)
			}
			if err := c.WriteMessage(websocket.BinaryMessage, clip[off:min(off+frame, len(clip))]); err != nil {
				return fmt.Errorf("send audio: %w", err)
			}
		}
		clips++
		if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"KeepAlive"}`)); err != nil {
			return fmt.Errorf("send KeepAlive: %w", err)
		}
		select {
		case <-s.stop:
			stopped = true
		default:
		}
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`)); err != nil {
		return fmt.Errorf("send CloseStream: %w", err)
	}
	var got streamed
	select {
	case got = <-done:
	case <-time.After(5 * time.Second):
		c.Close()
		<-done
		return fmt.Errorf("no close within 5s of CloseStream")
	}
	var ce *websocket.CloseError
	if !errors.As(got.err, &ce) || ce.Code != websocket.CloseNormalClosure {
		return fmt.Errorf("stream ended with %v, want close 1000", got.err)
	}
	if clips < 2 {
		return fmt.Errorf("only %d clips streamed during the battery", clips)
	}
	if want := strings.TrimSpace(strings.Repeat("tell me more ", clips)); strings.Join(got.finals, " ") != want {
		return fmt.Errorf("final transcripts %q, want %q", strings.Join(got.finals, " "), want)
	}
	for _, typ := range got.types {
		if typ != "Results" && typ != "Metadata" {
			return fmt.Errorf("unexpected %s message in %v", typ, got.types)
		}
	}
	if n := len(got.types); n < 2 || got.types[n-2] != "Results" || got.types[n-1] != "Metadata" {
		return fmt.Errorf("stream ended with %v, want final Results then Metadata", got.types[max(0, n-4):])
	}
	return nil
}
