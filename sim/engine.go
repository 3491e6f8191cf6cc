package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Mode is how an engine treats new requests.
type Mode string

const (
	// ModeOK serves normally.
	ModeOK Mode = "ok"
	// ModeRefuse answers every request and upgrade with Options.FullStatus
	// and a Deepgram-shaped error body. /v1/status still answers 200, with
	// system_health "Critical", so a health checker can tell refusing from dead.
	ModeRefuse Mode = "refuse"
	// ModeHang accepts and reads each request but never answers it; when the
	// mode changes again or the engine closes, hung requests are aborted
	// (the connection is dropped without a response).
	ModeHang Mode = "hang"
	// ModeDie, on a Server, closes the listener and drops every open
	// connection abruptly (TCP RST, no WebSocket close frame); a later
	// SetMode(ModeOK) listens again on the same address. On a bare Engine it
	// drops open streams and then behaves like ModeHang.
	ModeDie Mode = "die"
)

// ParseMode checks a mode name ("ok", "refuse", "hang", "die").
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeOK, ModeRefuse, ModeHang, ModeDie:
		return m, nil
	}
	return "", fmt.Errorf("unknown sim mode %q (want ok, refuse, hang or die)", s)
}

// Options configure an Engine. The zero value is a usable engine.
type Options struct {
	// Region is the name reported in the X-Sim-Engine header and logs. Default "sim".
	Region string
	// Latency is added before each HTTP response and before each WebSocket
	// handshake answer; it stands for network distance. 0 = none.
	Latency time.Duration
	// Capacity is the most concurrent inference requests plus open streams;
	// beyond it requests and upgrades are refused with FullStatus.
	// /v1/status, /v1/models and /_sim/ are never counted. 0 = unlimited.
	Capacity int
	// FullStatus is the status for refusals (capacity and ModeRefuse):
	// 503 (default) or 429; any other 4xx/5xx is used as given.
	FullStatus int
	// SilenceTimeout closes a streaming STT or agent connection with 1011
	// and Deepgram's NET-0001 sentence after this long with no audio or
	// text from the client (on /v1/listen and /v2/listen KeepAlive counts
	// only once audio has been heard); /v1/listen sends Metadata first,
	// /v2/listen an Error INACTIVE_CLIENT. Default 10s.
	SilenceTimeout time.Duration
	// Mode is the initial mode. Default ModeOK.
	Mode Mode
	// Logger receives one line per request or stream. nil = zap.NewNop().
	Logger *zap.Logger

	// SpeakChunk is the size in bytes of each piece of synthesized audio
	// written by POST /v1/speak (one HTTP flush each), the speak streams
	// and the agent (one binary frame each). Default 4800 (100 ms at 24 kHz).
	SpeakChunk int
	// SpeakInterval is the pause before every audio chunk after the first, so
	// that audio is genuinely streamed. Default 20ms; negative = no pause.
	SpeakInterval time.Duration
	// SpeakGate, when set, replaces SpeakInterval: it is called before each
	// audio chunk (chunk counts from 0 within one HTTP response, one stream
	// Flush or one agent reply) and the chunk is written once it returns nil.
	// ctx ends when the request or stream ends or the engine closes; an error
	// abandons the rest of the audio (an HTTP response is then aborted).
	// Tests use it to hold a response between chunks.
	SpeakGate func(ctx context.Context, chunk int) error
}

const (
	defaultRegion         = "sim"
	defaultSilenceTimeout = 10 * time.Second
	defaultSpeakChunk     = 4800
	defaultSpeakInterval  = 20 * time.Millisecond
	maxAudioBody          = 2 << 30 // Deepgram's pre-recorded limit
	maxJSONBody           = 1 << 20
	writeTimeout          = 10 * time.Second
	closeGrace            = 2 * time.Second // how long a closing stream waits for the client's close frame
)

func (o Options) withDefaults() Options {
	if o.Region == "" {
		o.Region = defaultRegion
	}
	if o.FullStatus < 400 || o.FullStatus > 599 {
		o.FullStatus = http.StatusServiceUnavailable
	}
	if o.SilenceTimeout <= 0 {
		o.SilenceTimeout = defaultSilenceTimeout
	}
	if o.Mode == "" {
		o.Mode = ModeOK
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.SpeakChunk <= 0 {
		o.SpeakChunk = defaultSpeakChunk
	}
	if o.SpeakInterval == 0 {
		o.SpeakInterval = defaultSpeakInterval
	}
	return o
}

// Engine is an http.Handler implementing the Deepgram API over the
// deterministic audio encoding described in the package documentation.
type Engine struct {
	opts Options
	log  *zap.Logger

	// ctx ends when the engine closes; every request and stream derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every ServeHTTP call in progress

	modeMu sync.Mutex // serialises mode changes, including the Server's hook

	mu      sync.Mutex
	mode    Mode
	modeCh  chan struct{} // closed and replaced on every mode change
	closed  bool
	batch   int // inference HTTP requests in flight
	streams int // open /v1/listen, /v1/speak, /v2/speak and agent streams
	flux    int // open /v2/listen streams
	hung    int // requests held by ModeHang or ModeDie
	conns   map[*websocket.Conn]struct{}
	onMode  func(Mode) error // set by Server to act on ModeDie and revival

	latency atomic.Int64 // Options.Latency, changeable with SetLatency
}

var _ http.Handler = (*Engine)(nil)

// New returns an engine; it owns no goroutine until it serves a request.
func New(opts Options) *Engine {
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		opts:   opts,
		log:    opts.Logger.With(zap.String("region", opts.Region)),
		ctx:    ctx,
		cancel: cancel,
		mode:   opts.Mode,
		modeCh: make(chan struct{}),
		conns:  make(map[*websocket.Conn]struct{}),
	}
	e.latency.Store(int64(opts.Latency))
	return e
}

// SetLatency changes the latency added to each answer (Options.Latency),
// for requests that arrive from now on: a region that turns slow.
func (e *Engine) SetLatency(d time.Duration) { e.latency.Store(int64(d)) }

// Region is the engine's region name.
func (e *Engine) Region() string { return e.opts.Region }

// Mode is the current mode.
func (e *Engine) Mode() Mode {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mode
}

// SetMode changes how new requests are treated (see Mode). Requests hung by
// ModeHang are aborted when the mode changes to anything but ModeHang or
// ModeDie; ModeDie drops open streams at once.
func (e *Engine) SetMode(m Mode) {
	if err := e.setMode(m); err != nil {
		e.log.Error("set mode", zap.String("mode", string(m)), zap.Error(err))
	}
}

func (e *Engine) setMode(m Mode) error {
	e.modeMu.Lock()
	defer e.modeMu.Unlock()

	e.mu.Lock()
	old := e.mode
	e.mode = m
	close(e.modeCh)
	e.modeCh = make(chan struct{})
	var drop []*websocket.Conn
	if m == ModeDie {
		for c := range e.conns {
			drop = append(drop, c)
		}
	}
	hook := e.onMode
	e.mu.Unlock()

	for _, c := range drop {
		abortConn(c.NetConn())
	}
	if old != m {
		e.log.Info("mode changed", zap.String("from", string(old)), zap.String("to", string(m)))
	}
	if hook != nil {
		return hook(m)
	}
	return nil
}

func (e *Engine) setHook(f func(Mode) error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onMode = f
}

// modeWatch returns the mode and a channel closed at its next change.
func (e *Engine) modeWatch() (Mode, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mode, e.modeCh
}

// Active is the number of inference HTTP requests in flight and of open
// streams (all kinds, /v2/listen included).
func (e *Engine) Active() (batch, stream int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.batch, e.streams + e.flux
}

// Stats is a snapshot of an engine's state.
type Stats struct {
	Mode        Mode
	Batch       int // inference HTTP requests in flight
	Streams     int // open /v1/listen, /v1/speak, /v2/speak and agent streams
	FluxStreams int // open /v2/listen streams
	Hung        int // requests held without an answer by ModeHang or ModeDie
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{Mode: e.mode, Batch: e.batch, Streams: e.streams, FluxStreams: e.flux, Hung: e.hung}
}

// Close ends hung requests and open streams (with close 1001) and waits for
// every request in progress to return. Requests arriving later get 503.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	conns := make([]*websocket.Conn, 0, len(e.conns))
	for c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()

	e.cancel()
	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, "sim engine closing"),
			time.Now().Add(100*time.Millisecond))
		_ = c.Close()
	}
	e.wg.Wait()
}

// enter registers a request, unless the engine is closed.
func (e *Engine) enter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	return true
}

// track registers an open stream so that Close and ModeDie can end it.
func (e *Engine) track(c *websocket.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.mode == ModeDie {
		// Dead, or died while this stream's handshake was being answered:
		// a dead engine keeps no stream.
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *Engine) untrack(c *websocket.Conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.conns, c)
}

// abortConn closes a TCP connection with a reset, as a crashed process would.
func abortConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// routeKind decides how a route counts against capacity.
type routeKind int

const (
	kindBatch  routeKind = iota // inference over HTTP
	kindStream                  // /v1/listen, /v1/speak, /v2/speak and agent streams
	kindFlux                    // /v2/listen streams
	kindFree                    // status and models: never counted
)

type route struct {
	kind  routeKind
	ws    bool
	serve func(e *Engine, rq *request)
}

// routeFor maps a request to its handler, or to the status (404 or 405)
// and Allow header to refuse it with.
func routeFor(r *http.Request) (rt route, status int, allow string) {
	path := r.URL.Path
	if len(path) > 1 {
		path = strings.TrimSuffix(path, "/")
	}
	get, post := r.Method == http.MethodGet, r.Method == http.MethodPost
	switch path {
	case "/v1/listen":
		switch {
		case post:
			return route{kind: kindBatch, serve: (*Engine).serveListenBatch}, 0, ""
		case get:
			return route{kind: kindStream, ws: true, serve: (*Engine).serveListenStream}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET, POST"
	case "/v1/speak":
		switch {
		case post:
			return route{kind: kindBatch, serve: (*Engine).serveSpeakBatch}, 0, ""
		case get:
			return route{kind: kindStream, ws: true, serve: (*Engine).serveSpeakStream}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET, POST"
	case "/v2/speak":
		switch {
		case post:
			return route{kind: kindBatch, serve: (*Engine).serveSpeakBatch}, 0, ""
		case get:
			return route{kind: kindStream, ws: true, serve: (*Engine).serveSpeakV2}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET, POST"
	case "/v2/listen":
		if get {
			return route{kind: kindFlux, ws: true, serve: (*Engine).serveFlux}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET"
	case "/v1/agent/converse":
		if get {
			return route{kind: kindStream, ws: true, serve: (*Engine).serveAgent}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET"
	case "/v1/read":
		if post {
			return route{kind: kindBatch, serve: (*Engine).serveRead}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "POST"
	case "/v1/models":
		if get {
			return route{kind: kindFree, serve: (*Engine).serveModels}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET"
	case "/v1/status":
		if get {
			return route{kind: kindFree, serve: (*Engine).serveStatus}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET"
	case "/v1/status/engine":
		if get {
			return route{kind: kindFree, serve: (*Engine).serveEngineStatus}, 0, ""
		}
		return rt, http.StatusMethodNotAllowed, "GET"
	}
	return rt, http.StatusNotFound, ""
}

// request is one request in progress.
type request struct {
	w       *statusWriter
	r       *http.Request
	ctx     context.Context // ends with the request or when the engine closes
	id      string
	aborted bool
	// stopUnblock disarms the hook that unblocks body reads and writes when
	// ctx ends; streams call it before hijacking the connection.
	stopUnblock func() bool
}

// ServeHTTP implements the Deepgram API; see the package documentation.
func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := newRequestID()
	sw := &statusWriter{ResponseWriter: w}
	w.Header().Set(HeaderRequestID, id)
	w.Header().Set(HeaderEngine, e.opts.Region)
	if !e.enter() {
		e.writeError(sw, id, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE", "the simulated engine is shutting down")
		return
	}
	defer e.wg.Done()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopCancel := context.AfterFunc(e.ctx, cancel)
	defer stopCancel()
	// A handler blocked reading a body or writing a response to a stalled
	// client would otherwise outlive Close.
	rc := http.NewResponseController(sw)
	stopUnblock := context.AfterFunc(ctx, func() {
		past := time.Unix(1, 0)
		_ = rc.SetReadDeadline(past)
		_ = rc.SetWriteDeadline(past)
	})
	defer stopUnblock()

	rq := &request{w: sw, r: r, ctx: ctx, id: id, stopUnblock: stopUnblock}
	defer func() {
		if sw.hijacked {
			return // the stream logs its own line
		}
		status := sw.status
		if rq.aborted {
			status = 0
		}
		level := zapcore.InfoLevel
		if strings.HasPrefix(r.URL.Path, "/v1/status") && status == http.StatusOK {
			level = zapcore.DebugLevel // health checks, every second per region
		}
		e.log.Log(level, "request",
			zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("status", status), zap.Bool("aborted", rq.aborted),
			zap.Duration("duration", time.Since(start)), zap.String("request_id", id))
	}()

	if strings.HasPrefix(r.URL.Path, "/_sim/") {
		e.serveAdmin(rq)
		return
	}
	rt, status, allow := routeFor(r)

	switch e.Mode() {
	case ModeRefuse:
		// Status keeps answering, so that a health checker sees "Critical".
		if rt.serve == nil || !strings.HasPrefix(r.URL.Path, "/v1/status") {
			if e.delay(rq) {
				e.refuse(rq, rt.ws, fmt.Sprintf("the simulated engine %s is refusing requests", e.opts.Region))
			}
			return
		}
	case ModeHang, ModeDie:
		e.hang(rq)
		rq.aborted = true
		panic(http.ErrAbortHandler)
	}

	if rt.serve == nil {
		if !e.delay(rq) {
			return
		}
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", allow)
			e.writeError(sw, id, status, "METHOD_NOT_ALLOWED", fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		e.writeError(sw, id, status, "NOT_FOUND", fmt.Sprintf("no such endpoint: %s", r.URL.Path))
		return
	}
	if rt.ws && !websocket.IsWebSocketUpgrade(r) {
		if e.delay(rq) {
			e.writeError(sw, id, http.StatusBadRequest, "Bad Request", r.URL.Path+" expects a WebSocket upgrade")
		}
		return
	}
	release, ok := e.acquire(rt.kind)
	if !ok {
		if e.delay(rq) {
			e.refuse(rq, rt.ws, fmt.Sprintf("the simulated engine %s is at capacity (%d)", e.opts.Region, e.opts.Capacity))
		}
		return
	}
	defer release()
	if !e.delay(rq) {
		return
	}
	rt.serve(e, rq)
}

// delay waits out Options.Latency; false if the request ended meanwhile.
func (e *Engine) delay(rq *request) bool {
	return sleepCtx(rq.ctx, time.Duration(e.latency.Load())) == nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acquire takes a capacity slot for a route of kind k.
func (e *Engine) acquire(k routeKind) (release func(), ok bool) {
	if k == kindFree {
		return func() {}, true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.opts.Capacity > 0 && e.batch+e.streams+e.flux >= e.opts.Capacity {
		return nil, false
	}
	counter := &e.batch
	switch k {
	case kindStream:
		counter = &e.streams
	case kindFlux:
		counter = &e.flux
	}
	*counter++
	return sync.OnceFunc(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		*counter--
	}), true
}

// refuse answers with Options.FullStatus (capacity or ModeRefuse).
func (e *Engine) refuse(rq *request, ws bool, msg string) {
	code := "SERVICE_UNAVAILABLE"
	if e.opts.FullStatus == http.StatusTooManyRequests {
		code = "TOO_MANY_REQUESTS"
	}
	h := rq.w.Header()
	h.Set("Retry-After", "1")
	if ws {
		h.Set("dg-error", msg)
	}
	e.writeError(rq.w, rq.id, e.opts.FullStatus, code, msg)
}

// hang reads the request and holds it while the mode is ModeHang or
// ModeDie, or until the request ends.
func (e *Engine) hang(rq *request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rq.r.Body, maxAudioBody))
	e.mu.Lock()
	e.hung++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.hung--
		e.mu.Unlock()
	}()
	for {
		m, changed := e.modeWatch()
		if m != ModeHang && m != ModeDie {
			return
		}
		select {
		case <-changed:
		case <-rq.ctx.Done():
			return
		}
	}
}

// serveAdmin serves /_sim/mode, which is never delayed, refused or hung.
func (e *Engine) serveAdmin(rq *request) {
	if rq.r.URL.Path != "/_sim/mode" {
		e.writeError(rq.w, rq.id, http.StatusNotFound, "NOT_FOUND", "no such endpoint: "+rq.r.URL.Path)
		return
	}
	switch rq.r.Method {
	case http.MethodGet:
		writeJSON(rq.w, http.StatusOK, map[string]string{"mode": string(e.Mode()), "region": e.opts.Region})
	case http.MethodPost:
		m, err := ParseMode(rq.r.URL.Query().Get("mode"))
		if err != nil {
			e.writeError(rq.w, rq.id, http.StatusBadRequest, "Bad Request", err.Error())
			return
		}
		if m == ModeDie {
			e.dieFromAdmin(rq)
			return
		}
		if err := e.setMode(m); err != nil {
			e.writeError(rq.w, rq.id, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", err.Error())
			return
		}
		rq.w.WriteHeader(http.StatusNoContent)
	default:
		rq.w.Header().Set("Allow", "GET, POST")
		e.writeError(rq.w, rq.id, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "use GET or POST")
	}
}

// dieFromAdmin applies ModeDie and answers 204 on a connection taken out of
// the server's hands first, so that the answer survives the death of every
// other connection and the listener is already closed when it arrives.
func (e *Engine) dieFromAdmin(rq *request) {
	rq.stopUnblock()
	conn, brw, err := http.NewResponseController(rq.w).Hijack()
	if err != nil { // not hijackable (HTTP/2, a test recorder): answer normally
		e.SetMode(ModeDie)
		rq.w.WriteHeader(http.StatusNoContent)
		return
	}
	defer conn.Close()
	e.SetMode(ModeDie)
	_, _ = fmt.Fprintf(brw, "HTTP/1.1 204 No Content\r\nConnection: close\r\n%s: %s\r\n%s: %s\r\n\r\n",
		HeaderRequestID, rq.id, HeaderEngine, e.opts.Region)
	_ = brw.Flush()
}

func (e *Engine) serveStatus(rq *request) {
	health := "Healthy"
	if e.Mode() == ModeRefuse {
		health = "Critical"
	}
	e.mu.Lock()
	s := statusResponse{SystemHealth: health, ActiveBatchRequests: e.batch,
		ActiveStreamRequests: e.streams, ActiveListenV2StreamRequests: e.flux}
	e.mu.Unlock()
	writeJSON(rq.w, http.StatusOK, s)
}

func (e *Engine) serveEngineStatus(rq *request) {
	writeJSON(rq.w, http.StatusOK, map[string]string{"engine_connection_status": "Connected"})
}

func (e *Engine) serveModels(rq *request) {
	writeJSON(rq.w, http.StatusOK, models())
}

// writeError writes Deepgram's classic error body.
func (e *Engine) writeError(w http.ResponseWriter, id string, status int, code, msg string) {
	writeJSON(w, status, apiError{ErrCode: code, ErrMsg: msg, RequestID: id})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// statusWriter records the status for the request log line. It implements
// http.Hijacker itself because gorilla/websocket asserts it directly; the
// rest of http.ResponseController's methods reach the original through Unwrap.
type statusWriter struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked, w.status = true, http.StatusSwitchingProtocols
	}
	return c, brw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
