package sim_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

func TestCapacityRefusal(t *testing.T) {
	tests := []struct {
		name       string
		fullStatus int
		wantStatus int
		wantCode   string
	}{
		{"default 503", 0, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE"},
		{"429", http.StatusTooManyRequests, http.StatusTooManyRequests, "TOO_MANY_REQUESTS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, sim.Options{Capacity: 1, FullStatus: tt.fullStatus})
			c := client(t)
			ws, _ := dial(t, s, "/v1/listen") // takes the only slot

			res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen", "", sim.Synthesize(helloWorld(), 16000, helloWorldTotal))
			var e dgError
			decodeJSON(t, body, &e)
			if res.StatusCode != tt.wantStatus || e.ErrCode != tt.wantCode || res.Header.Get("Retry-After") != "1" {
				t.Errorf("batch when full: %d %v %s", res.StatusCode, res.Header, body)
			}
			_, res, err := tryDial(s, "/v2/listen", nil)
			if !errors.Is(err, websocket.ErrBadHandshake) || res.StatusCode != tt.wantStatus || res.Header.Get("dg-error") == "" {
				t.Errorf("upgrade when full: %v, %+v", err, res)
			}
			// Status is never counted or refused.
			if res, _ := do(t, c, http.MethodGet, s.URL()+"/v1/status", "", nil); res.StatusCode != http.StatusOK {
				t.Errorf("status when full: %d", res.StatusCode)
			}

			sendJSON(t, ws, map[string]string{"type": "CloseStream"})
			readUntilClose(t, ws)
			eventually(t, "slot released", func() bool { b, n := s.Engine().Active(); return b+n == 0 })
			if res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen", "", samples(0)); res.StatusCode != http.StatusOK {
				t.Errorf("after release: %d %s", res.StatusCode, body)
			}
		})
	}
}

func TestStatusCounts(t *testing.T) {
	// A gated speak request stays in flight as long as the test wants.
	release := make(chan struct{})
	s := start(t, sim.Options{SpeakGate: func(ctx context.Context, _ int) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	c := client(t)
	dial(t, s, "/v1/listen")
	dial(t, s, "/v1/speak")
	dial(t, s, "/v2/listen")

	speakDone := make(chan error, 1)
	go func() {
		res, err := c.Post(s.URL()+"/v1/speak", "application/json", strings.NewReader(`{"text":"hi"}`))
		if err == nil {
			_, err = new(bytes.Buffer).ReadFrom(res.Body)
			res.Body.Close()
		}
		speakDone <- err
	}()
	eventually(t, "speak in flight", func() bool { return s.Engine().Stats().Batch == 1 })

	_, body := do(t, c, http.MethodGet, s.URL()+"/v1/status", "", nil)
	var st struct {
		SystemHealth string `json:"system_health"`
		Batch        int    `json:"active_batch_requests"`
		Stream       int    `json:"active_stream_requests"`
		V2           int    `json:"active_listen_v2_stream_requests"`
	}
	decodeJSON(t, body, &st)
	if st.SystemHealth != "Healthy" || st.Batch != 1 || st.Stream != 2 || st.V2 != 1 {
		t.Errorf("status = %s", body)
	}
	if b, n := s.Engine().Active(); b != 1 || n != 3 {
		t.Errorf("Active() = %d, %d; want 1, 3", b, n)
	}
	close(release)
	if err := <-speakDone; err != nil {
		t.Errorf("speak: %v", err)
	}
}

func TestRefuseMode(t *testing.T) {
	s := start(t, sim.Options{Mode: sim.ModeRefuse, FullStatus: http.StatusTooManyRequests})
	c := client(t)
	res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen", "", nil)
	var e dgError
	decodeJSON(t, body, &e)
	if res.StatusCode != http.StatusTooManyRequests || e.ErrCode != "TOO_MANY_REQUESTS" || e.RequestID == "" {
		t.Errorf("batch: %d %s", res.StatusCode, body)
	}
	if _, res, err := tryDial(s, "/v1/listen", nil); err == nil || res.StatusCode != http.StatusTooManyRequests {
		t.Errorf("upgrade: %v %v", err, res)
	}
	res, body = do(t, c, http.MethodGet, s.URL()+"/v1/status", "", nil)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"system_health":"Critical"`) {
		t.Errorf("status: %d %s", res.StatusCode, body)
	}
	s.SetMode(sim.ModeOK)
	if res, body := do(t, c, http.MethodPost, s.URL()+"/v1/listen", "", samples(0)); res.StatusCode != http.StatusOK {
		t.Errorf("after ok: %d %s", res.StatusCode, body)
	}
}

func TestHangMode(t *testing.T) {
	s := start(t, sim.Options{Mode: sim.ModeHang})
	c := client(t)
	type result struct {
		status int
		err    error
	}
	results := make(chan result, 3)
	get := func(method, path string) {
		req, _ := http.NewRequest(method, s.URL()+path, nil)
		res, err := c.Do(req)
		if err != nil {
			results <- result{err: err}
			return
		}
		res.Body.Close()
		results <- result{status: res.StatusCode}
	}
	go get(http.MethodPost, "/v1/listen")
	go get(http.MethodGet, "/v1/status")
	go func() {
		_, _, err := tryDial(s, "/v1/listen", nil)
		results <- result{err: err}
	}()
	eventually(t, "three hung requests", func() bool { return s.Engine().Stats().Hung == 3 })
	select {
	case r := <-results:
		t.Fatalf("a hung request was answered: %+v", r)
	default:
	}

	// Leaving hang mode aborts them: no answer, the connections drop.
	s.SetMode(sim.ModeOK)
	for range 3 {
		if r := <-results; r.err == nil {
			t.Errorf("hung request answered %d after the mode changed", r.status)
		}
	}
	if res, _ := do(t, c, http.MethodGet, s.URL()+"/v1/status", "", nil); res.StatusCode != http.StatusOK {
		t.Errorf("after ok: %d", res.StatusCode)
	}
}

func TestDieAndReviveOnSamePort(t *testing.T) {
	s := start(t, sim.Options{})
	addr := s.Addr()
	ws, _ := dial(t, s, "/v1/listen")
	idle := &http.Transport{}
	defer idle.CloseIdleConnections()
	if res, _ := do(t, &http.Client{Transport: idle}, http.MethodGet, s.URL()+"/v1/status", "", nil); res.StatusCode != http.StatusOK {
		t.Fatal("status before dying")
	}

	s.SetMode(sim.ModeDie)

	// The open stream breaks without a close frame.
	f := read(t, ws)
	if f.close != nil || f.err == nil {
		t.Errorf("stream after death: %+v, want an abrupt error", f)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the port still accepts connections")
	}
	// A kept-alive connection from before is dead too.
	if _, err := (&http.Client{Transport: idle}).Get(s.URL() + "/v1/status"); err == nil {
		t.Error("a kept-alive connection survived")
	}

	s.SetMode(sim.ModeOK)
	if s.Addr() != addr {
		t.Errorf("address changed: %s -> %s", addr, s.Addr())
	}
	if res, _ := do(t, client(t), http.MethodGet, "http://"+addr+"/v1/status", "", nil); res.StatusCode != http.StatusOK {
		t.Errorf("after revival: %d", res.StatusCode)
	}
	dial(t, s, "/v1/listen")
}

func TestAdminEndpoint(t *testing.T) {
	s := start(t, sim.Options{})
	c := client(t)
	res, body := do(t, c, http.MethodGet, s.URL()+"/_sim/mode", "", nil)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"mode":"ok"`) {
		t.Errorf("get mode: %d %s", res.StatusCode, body)
	}
	if res, _ := do(t, c, http.MethodPost, s.URL()+"/_sim/mode?mode=refuse", "", nil); res.StatusCode != http.StatusNoContent {
		t.Errorf("set refuse: %d", res.StatusCode)
	}
	if got := s.Engine().Mode(); got != sim.ModeRefuse {
		t.Errorf("mode = %s", got)
	}
	// The admin endpoint itself is never refused.
	if res, _ := do(t, c, http.MethodPost, s.URL()+"/_sim/mode?mode=bogus", "", nil); res.StatusCode != http.StatusBadRequest {
		t.Errorf("bogus mode: %d", res.StatusCode)
	}
	if res, _ := do(t, c, http.MethodPost, s.URL()+"/_sim/mode?mode=die", "", nil); res.StatusCode != http.StatusNoContent {
		t.Errorf("set die: %d", res.StatusCode)
	}
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Error("still listening after die through the admin endpoint")
	}
	s.SetMode(sim.ModeOK)
	if res, _ := do(t, client(t), http.MethodGet, s.URL()+"/v1/status", "", nil); res.StatusCode != http.StatusOK {
		t.Errorf("after revival: %d", res.StatusCode)
	}
}

func TestCloseEndsStreamsAndHungRequests(t *testing.T) {
	s, err := sim.Start("127.0.0.1:0", sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := tryDial(s, "/v1/listen", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	s.SetMode(sim.ModeHang)
	hung := make(chan error, 1)
	c := client(t)
	go func() {
		res, err := c.Get(s.URL() + "/v1/status")
		if err == nil {
			res.Body.Close()
		}
		hung <- err
	}()
	eventually(t, "hung request", func() bool { return s.Engine().Stats().Hung == 1 })
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := <-hung; err == nil {
		t.Error("hung request was answered")
	}
	if f := read(t, ws); f.close == nil || f.close.Code != websocket.CloseGoingAway {
		t.Errorf("stream at close: %+v, want 1001", f)
	}
}

// A bare Engine (no Server) under another http.Server: ModeDie drops its
// streams and then hangs requests; Close aborts them.
func TestBareEngineDieAndClose(t *testing.T) {
	e := sim.New(sim.Options{Region: "bare"})
	ts := httptest.NewServer(e)
	defer ts.Close()
	defer e.Close()

	d := websocket.Dialer{HandshakeTimeout: waitTimeout}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/listen", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := client(t)
	res, _ := do(t, c, http.MethodPost, ts.URL+"/_sim/mode?mode=die", "", nil)
	if res.StatusCode != http.StatusNoContent || e.Mode() != sim.ModeDie {
		t.Fatalf("die: %d, mode %s", res.StatusCode, e.Mode())
	}
	if f := read(t, ws); f.close != nil || f.err == nil {
		t.Errorf("stream after death: %+v, want an abrupt error", f)
	}
	hung := make(chan error, 1)
	go func() {
		res, err := c.Get(ts.URL + "/v1/models")
		if err == nil {
			res.Body.Close()
		}
		hung <- err
	}()
	eventually(t, "hung request", func() bool { return e.Stats().Hung == 1 })
	e.Close()
	if err := <-hung; err == nil {
		t.Error("hung request was answered")
	}
	if res, _ := do(t, c, http.MethodGet, ts.URL+"/v1/status", "", nil); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Close: %d, want 503", res.StatusCode)
	}
}
