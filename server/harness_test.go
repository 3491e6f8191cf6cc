package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/earshot/earshot/config"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if leaked := leakedSecrets(); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: secrets appeared in what the router logged or answered: %v\n", leaked)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Secrets used by the tests (client keys, Modal tokens, the admin token).
// Everything routers log during the whole suite, and every response the
// secret tests read, is scanned for them when the suite ends.
var testSecrets = []string{
	"sk-earshot-CLIENT-KEY-0001",
	"sk-earshot-CLIENT-KEY-0002",
	"modal-key-SECRET-7f3a",
	"modal-secret-SECRET-91bc",
	"admin-token-SECRET-5e2d",
}

var seen struct {
	sync.Mutex
	text []string // log lines and response texts
}

// remember keeps text for the suite's secret scan.
func remember(text string) {
	seen.Lock()
	seen.text = append(seen.text, text)
	seen.Unlock()
}

func leakedSecrets() []string {
	seen.Lock()
	defer seen.Unlock()
	var leaked []string
	for _, secret := range testSecrets {
		for _, text := range seen.text {
			if strings.Contains(text, secret) {
				leaked = append(leaked, fmt.Sprintf("%q in %.200q", secret, text))
				break
			}
		}
	}
	return leaked
}

// rememberLogs is a zapcore.Core that keeps every entry's message and
// fields, JSON-encoded, for the secret scan.
type rememberLogs struct {
	zapcore.LevelEnabler
	enc zapcore.Encoder
}

func (c rememberLogs) With(fields []zapcore.Field) zapcore.Core {
	enc := c.enc.Clone()
	for _, f := range fields {
		f.AddTo(enc)
	}
	return rememberLogs{c.LevelEnabler, enc}
}

func (c rememberLogs) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}

func (c rememberLogs) Write(e zapcore.Entry, fields []zapcore.Field) error {
	buf, err := c.enc.EncodeEntry(e, fields)
	if err != nil {
		return err
	}
	remember(buf.String())
	buf.Free()
	return nil
}

func (rememberLogs) Sync() error { return nil }

// router is a running router on loopback ports, for end-to-end tests.
type router struct {
	t          *testing.T
	srv        *Server
	api        string // "127.0.0.1:PORT"
	admin      string
	logs       *observer.ObservedLogs
	adminToken string // sent by status, when set
	stop       func() // shuts the router down as SIGTERM does, and waits
}

// startRouter runs a router built from the YAML config text until the test
// ends.
func startRouter(t *testing.T, yaml string) *router {
	t.Helper()
	if !strings.Contains(yaml, "\nauth:") {
		yaml = "auth: {disable: true}\n" + yaml
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return startRouterWith(t, cfg)
}

// startRouterWith runs a router built from cfg until the test ends.
func startRouterWith(t *testing.T, cfg *config.Config) *router {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	tee := zapcore.NewTee(core, rememberLogs{zapcore.DebugLevel, zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())})
	srv, err := New(cfg, zap.New(tee))
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	api, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, api, admin) }()
	r := &router{t: t, srv: srv, api: api.Addr().String(), admin: admin.Addr().String(), logs: logs}
	r.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		srv.Close()
	})
	t.Cleanup(r.stop)
	return r
}

func (r *router) url(path string) string { return "http://" + r.api + path }
func (r *router) ws(path string) string  { return "ws://" + r.api + path }

// simRegions is a config with simulated regions and no added latency.
func simRegions(extra string) string {
	return `
log: {level: debug}
timeouts: {close_grace: 2s}
routing: {allow_client_override: true}
regions:
  - name: us-east
    url: sim://us-east
    location: {lat: 39.04, lon: -77.49}
    capacity: 100
    sim: {silence_timeout: 2s}
  - name: eu-west
    url: sim://eu-west
    location: {lat: 53.35, lon: -6.26}
    capacity: 100
    sim: {silence_timeout: 2s}
` + extra
}

// deepgramError is Deepgram's error body.
type deepgramError struct {
	Code      string `json:"err_code"`
	Msg       string `json:"err_msg"`
	RequestID string `json:"request_id"`
}

// expectError checks that resp is a Deepgram-shaped error with status and code.
func expectError(t *testing.T, resp *http.Response, status int, code string) deepgramError {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var e deepgramError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body %q is not a Deepgram error: %v", body, err)
	}
	if e.Code != code || e.Msg == "" || e.RequestID == "" {
		t.Errorf("error body = %+v, want err_code %s, a message and a request id", e, code)
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != e.RequestID {
		t.Errorf("X-Request-Id %q, want one: the body's request_id %q", got, e.RequestID)
	}
	if got := resp.Header.Values("Dg-Request-Id"); len(got) != 1 || got[0] == "" {
		t.Errorf("dg-request-id %q, want one on every answer", got)
	}
	return e
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline, not synchronisation by sleep
	}
}

// accessLines returns the access-log entries seen so far.
func (r *router) accessLines() []observer.LoggedEntry {
	return r.logs.FilterMessage("access").All()
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

var errTimeout = errors.New("timeout")

// recv waits for a value on ch for a bounded time.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic(errTimeout)
	}
}
