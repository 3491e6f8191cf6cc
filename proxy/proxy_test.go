package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/routing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestMessageType(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"type":"CloseStream"}`, "CloseStream"},
		{`{ "type" : "Finalize" }`, "Finalize"},
		{"{\n\t\"type\":\t\"KeepAlive\"\n}", "KeepAlive"},
		{`{"x":"type","type":"Speak","text":"hi"}`, "Speak"},
		{`{"types":"no","type":"Flush"}`, "Flush"},
		{`{"type":5}`, ""},
		{`{"type":"unterminated`, ""},
		{`not json`, ""},
		{``, ""},
	} {
		if got := string(messageType([]byte(tc.in))); got != tc.want {
			t.Errorf("messageType(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestChooseSubprotocol(t *testing.T) {
	for _, tc := range []struct {
		offered []string
		region  string
		want    string
	}{
		{[]string{"token", "KEY"}, "", "token"},
		{[]string{"bearer", "JWT"}, "bearer", "bearer"},
		{[]string{"Token", "KEY"}, "", "Token"},
		{[]string{"chat", "superchat"}, "superchat", "superchat"},
		{[]string{"chat"}, "other", ""},
		{nil, "", ""},
	} {
		if got := chooseSubprotocol(tc.offered, tc.region); got != tc.want {
			t.Errorf("chooseSubprotocol(%v, %q) = %q, want %q", tc.offered, tc.region, got, tc.want)
		}
	}
}

func TestClosePayload(t *testing.T) {
	for _, tc := range []struct {
		code int
		text string
		want int // payload length
	}{
		{1000, "", 2},
		{1011, "NET-0001", 10},
		{1005, "ignored", 0},
		{1006, "ignored", 0},
		{4000, string(make([]byte, 200)), 125},
	} {
		if got := len(closePayload(tc.code, tc.text)); got != tc.want {
			t.Errorf("closePayload(%d, %d bytes) has %d bytes, want %d", tc.code, len(tc.text), got, tc.want)
		}
	}
}

func TestUpstreamErrorMapping(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	timeout := &net.OpError{Op: "dial", Err: timeoutErr{}}
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		err    error
		status int
	}{
		{"client gone", canceled, context.Canceled, StatusClientClosed},
		{"too large", context.Background(), &http.MaxBytesError{Limit: 10}, 413},
		{"timeout", context.Background(), timeout, 504},
		{"deadline", context.Background(), context.DeadlineExceeded, 504},
		{"refused", context.Background(), &net.OpError{Op: "dial", Err: fmt.Errorf("connection refused")}, 502},
	} {
		if got := upstreamError(tc.ctx, "r", tc.err).status; got != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.status)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }
func (timeoutErr) Temporary() bool {
	return true
}

// newTestProxy serves a Handler in front of one upstream.
func newTestProxy(tb testing.TB, upstream string, capacity int, with ...func(*Options)) (*Handler, *httptest.Server) {
	tb.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		tb.Fatal(err)
	}
	hr := health.NewRegion("r", capacity)
	table, err := routing.NewTable([]*routing.Region{{Name: "r", Load: hr}}, routing.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	snap := &Snapshot{
		Locator:   routing.NewLocator(nil, nil, nil),
		Table:     table,
		Upstreams: map[string]*Upstream{"r": NewUpstream("r", u, http.Header{}, hr)},
	}
	o := Options{
		ConnectTimeout: time.Second, ResponseTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second,
		CloseGrace: time.Second, MaxBodyBytes: 1 << 20, MaxMessageBytes: 1 << 20,
	}
	for _, f := range with {
		f(&o)
	}
	h := New(snap, o)
	srv := httptest.NewServer(h)
	tb.Cleanup(func() {
		srv.Close()
		h.Shutdown(context.Background())
		h.Close()
	})
	return h, srv
}

func TestCapacityIsHeldUntilTheBodyIsDone(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first"))
		w.(http.Flusher).Flush()
		<-release
	}))
	defer up.Close()
	h, srv := newTestProxy(t, up.URL, 1)
	hr := h.Snapshot().Upstreams["r"].Health

	resp, err := http.Get(srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	if hr.InFlight() != 1 {
		t.Errorf("in flight while the body streams = %d, want 1", hr.InFlight())
	}
	close(release)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for hr.InFlight() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("capacity not released after the body ended")
		}
		time.Sleep(time.Millisecond)
	}
	if hr.Count(health.Success) != 1 {
		t.Errorf("successes = %d, want 1", hr.Count(health.Success))
	}
}

// drainingRegion answers like Deepgram's streaming STT: Finalize yields a
// final result, CloseStream the Metadata and a normal close. A region
// told to ignore them never finishes.
func drainingRegion(t *testing.T, ignore bool) (*httptest.Server, <-chan string) {
	got := make(chan string, 16)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			select {
			case got <- string(msg):
			default:
			}
			if ignore {
				continue
			}
			switch string(msg) {
			case `{"type":"Finalize"}`:
				_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Results","is_final":true,"from_finalize":true}`))
			case `{"type":"CloseStream"}`:
				_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Metadata"}`))
				_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
				_, _, _ = c.ReadMessage() // the router's answer to the close
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	return up, got
}

// dialTracked opens a stream through h and waits until h relays it, so a
// Shutdown that follows finds it open.
func dialTracked(t *testing.T, h *Handler, srv *httptest.Server) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws"+srv.URL[len("http"):]+"/v1/listen", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mu.Lock()
		n := len(h.streams)
		h.mu.Unlock()
		if n > 0 {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("stream not relayed")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestShutdownDrainsStreams(t *testing.T) {
	up, _ := drainingRegion(t, false)
	h, srv := newTestProxy(t, up.URL, 0)
	c := dialTracked(t, h, srv)
	done := make(chan struct{})
	go func() {
		h.Shutdown(context.Background()) // no deadline: the drain must finish on its own
		close(done)
	}()
	var got []string
	for {
		_, msg, err := c.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Errorf("stream ended with %v, want close 1001", err)
			}
			break
		}
		got = append(got, string(msg))
	}
	want := []string{`{"type":"Results","is_final":true,"from_finalize":true}`, `{"type":"Metadata"}`}
	if !slices.Equal(got, want) {
		t.Errorf("client received %q during shutdown, want %q", got, want)
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""), time.Now().Add(time.Second))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish")
	}
}

func TestShutdownDeadlineClosesStreamsWith1001(t *testing.T) {
	up, seen := drainingRegion(t, true)
	h, srv := newTestProxy(t, up.URL, 0)
	c := dialTracked(t, h, srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		h.Shutdown(ctx)
		close(done)
	}()
	// The region is asked to finish and ignores it, so only the deadline
	// can end the stream.
	for _, want := range []string{`{"type":"Finalize"}`, `{"type":"CloseStream"}`} {
		if m := <-seen; m != want {
			t.Fatalf("region received %s, want %s", m, want)
		}
	}
	select {
	case <-done:
		t.Fatal("shutdown finished before its deadline with a stream open")
	default:
	}
	cancel()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("after the deadline: %v, want close 1001", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish")
	}
}

// TestPlainRequestsDoNotUpgrade sends upgrade headers on a POST: the region
// must not see them, or ReverseProxy would tunnel its 101 past the relay.
func TestPlainRequestsDoNotUpgrade(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		if r.Header.Get("Upgrade") != "" {
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
			return
		}
		_, _ = io.WriteString(w, `{"results":{}}`)
	}))
	defer up.Close()
	_, srv := newTestProxy(t, up.URL, 0)
	req, _ := http.NewRequest("POST", srv.URL+"/v1/listen", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("POST with upgrade headers = %d %s, want 200", resp.StatusCode, body)
	}
	if h := <-seen; h.Get("Upgrade") != "" || h.Get("Connection") != "" {
		t.Errorf("region saw Upgrade %q, Connection %q", h.Get("Upgrade"), h.Get("Connection"))
	}
}
