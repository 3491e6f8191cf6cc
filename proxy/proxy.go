// Package proxy forwards the Deepgram API to regions: HTTP requests through
// httputil.ReverseProxy, and WebSocket streams through a message-aware relay
// that moves an open stream to another region when its own is lost (see
// stream.go for the session and its states, resume.go for what each path's
// protocol needs to move without losing or repeating a word).
//
// For each request the Handler asks routing for ranked candidates and runs
// its attempts through the failover package's one loop: the HTTP forwarder
// makes one attempt per ReverseProxy pass and asks the run whether to try
// the next region; the stream handshake does the same, with hedging. It
// writes one access-log line per request or stream. Errors the router
// answers itself use Deepgram's JSON error shape so that SDKs can parse them.
// With a CORS policy it answers browsers' preflights itself (cors.go).
//
// The routing and region set live in an immutable Snapshot that can be
// swapped atomically; a request keeps the snapshot it started with.
package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/earshot/earshot/auth"
	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/routing"
)

// Upstream is a region as the proxy reaches it.
type Upstream struct {
	Name string
	// Region is the configured region Name is a deployment of, named in
	// X-Earshot-Region; "" when it is Name.
	Region string
	URL    *url.URL    // http or https base URL; a path prefix is kept
	Header http.Header // added to every request and handshake, replacing the client's
	Health *health.Region

	wsScheme string
}

// NewUpstream describes a region reached at base. header is added to every
// request sent to it.
func NewUpstream(name string, base *url.URL, header http.Header, h *health.Region) *Upstream {
	u := *base
	u.Path = strings.TrimSuffix(u.Path, "/")
	ws := "ws"
	if u.Scheme == "https" {
		ws = "wss"
	}
	return &Upstream{Name: name, URL: &u, Header: header, Health: h, wsScheme: ws}
}

// Snapshot is the routing table, the regions it names and the client keys.
// It is immutable; a config reload swaps in a new one.
type Snapshot struct {
	Locator   *routing.Locator
	Table     *routing.Table
	Upstreams map[string]*Upstream // by region name
	Auth      *auth.Authenticator  // nil lets everyone in
	CORS      *CORS                // nil: no CORS (OPTIONS is 405)
}

// Options configure a Handler.
type Options struct {
	Logger *zap.Logger

	ConnectTimeout   time.Duration // dialling a region
	ResponseTimeout  time.Duration // a region's response headers
	HandshakeTimeout time.Duration // a WebSocket handshake with a region
	CloseGrace       time.Duration // waiting for close frames and final results
	StreamIdle       time.Duration // a stream with no message either way is closed; 0: never
	// RegionPing: an open stream's region that has sent nothing for this
	// long is pinged, and ended as hung if it still says nothing after as
	// long again; 0: never.
	RegionPing time.Duration
	// ResumeLog is how much audio an open /v1/listen stream keeps, past its
	// last final, to move to another region if its own is lost; a stream
	// that goes longer without a final is no longer resumable. 0: streams
	// are not moved.
	ResumeLog time.Duration

	MaxBodyBytes    int64 // HTTP request bodies
	MaxMessageBytes int64 // WebSocket messages, either way

	Retry RetryOptions

	// Observer, if set, is told of every request and stream as it ends.
	Observer Observer

	// Transport overrides the HTTP transport to regions (tests, benchmarks).
	Transport http.RoundTripper
}

// Handler is the router's data path. It is an http.Handler.
type Handler struct {
	opts    Options
	log     *zap.Logger
	snap    atomic.Pointer[Snapshot]
	http    httpForwarder
	ws      wsRelay
	routes  map[string]route
	engine  *failover.Engine
	resumes resumeStats

	mu      sync.Mutex
	closing bool                 // Shutdown has begun
	streams map[*stream]struct{} // open streams, for shutdown
	wg      sync.WaitGroup       // one per open stream
}

var _ http.Handler = (*Handler)(nil)

// New returns a Handler serving snap.
func New(snap *Snapshot, opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	h := &Handler{opts: opts, log: opts.Logger, routes: apiRoutes(), streams: make(map[*stream]struct{}),
		engine: failover.New(opts.Retry.Policy)}
	h.snap.Store(snap)
	h.http.init(h)
	h.ws.init(h)
	return h
}

// Swap replaces the snapshot; requests already running keep theirs.
func (h *Handler) Swap(snap *Snapshot) { h.snap.Store(snap) }

// Snapshot returns the snapshot new requests use.
func (h *Handler) Snapshot() *Snapshot { return h.snap.Load() }

// Close releases idle connections to regions.
func (h *Handler) Close() { h.http.closeIdle() }

// Shutdown drains every open stream (see stream.drain: the region is asked
// for its final results, which reach the client before it is closed with
// 1001) and waits for them to end, or for ctx; then it cuts what remains.
// Call it after http.Server.Shutdown, which does not track hijacked
// connections.
func (h *Handler) Shutdown(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	open := make([]*stream, 0, len(h.streams))
	for st := range h.streams {
		open = append(open, st)
	}
	h.mu.Unlock()
	// Each drain may wait for a client's message in flight, so they run
	// side by side.
	var drains sync.WaitGroup
	for _, st := range open {
		drains.Go(st.drain)
	}
	done := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		h.mu.Lock()
		for st := range h.streams {
			st.abandon()
		}
		h.mu.Unlock()
		<-done
	}
	drains.Wait()
}

// shuttingDown reports whether Shutdown has begun.
func (h *Handler) shuttingDown() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}

// OpenStreams is how many streams are being relayed now.
func (h *Handler) OpenStreams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams)
}

// MoveStreams moves every open stream on region r that can move (see
// stream.resume) to another region at its next final: for a region that
// is drained or removed from the config. It returns how many will move;
// the others stay until they end.
func (h *Handler) MoveStreams(r *health.Region) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for st := range h.streams {
		if st.planMove(r) {
			n++
		}
	}
	return n
}

// OpenStreamsByRegion counts the streams being relayed now by region.
func (h *Handler) OpenStreamsByRegion() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := make(map[string]int)
	for st := range h.streams {
		n[st.leg().name]++
	}
	return n
}

// track registers an open stream for Shutdown. It reports false, tracking
// nothing, once Shutdown has begun.
func (h *Handler) track(st *stream) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.streams[st] = struct{}{}
	h.wg.Add(1)
	// A drain that came between the handshake and now did not see this
	// stream: it moves like the others.
	if r := st.leg().a.Region; r.Drained() {
		st.planMove(r)
	}
	return true
}

func (h *Handler) untrack(st *stream) {
	h.mu.Lock()
	delete(h.streams, st)
	h.mu.Unlock()
	h.wg.Done()
}

// route says which methods a Deepgram API path takes.
type route struct {
	post, get bool // HTTP methods forwarded as plain requests
	stream    bool // GET with a WebSocket upgrade
	allow     string
}

// apiRoutes is the Deepgram API surface the router forwards. Anything else is
// 404: the router is not an open proxy.
func apiRoutes() map[string]route {
	return map[string]route{
		"/v1/listen":         {post: true, stream: true, allow: "GET, POST"},
		"/v1/speak":          {post: true, stream: true, allow: "GET, POST"},
		"/v1/read":           {post: true, allow: "POST"},
		"/v1/models":         {get: true, allow: "GET"},
		"/v2/listen":         {stream: true, allow: "GET"},
		"/v2/speak":          {stream: true, allow: "GET"},
		"/v1/agent/converse": {stream: true, allow: "GET"},
	}
}

// exchange is one request or stream's bookkeeping, from arrival to log line.
type exchange struct {
	id     string
	start  time.Time
	client routing.Client
	snap   *Snapshot
	up     *Upstream
	reason routing.Reason
	rule   string // the residency rule confining the client, if any
	ctx    context.Context

	replay   []byte            // the request body, kept for another attempt
	attempt  *failover.Attempt // the attempt whose answer the client gets
	decision routing.Decision

	// Select's buffer and the candidates' health, for failover: room for
	// the usual few regions without allocating (more grow on the heap);
	// small, as an exchange lives as long as its stream.
	candidates [8]*routing.Region
	regions    [8]*health.Region
	key        *auth.Key // the client's key, when auth is on

	status   int
	bytesIn  atomic.Int64 // the request body may be read by the transport's goroutine
	bytesOut int64
	err      error

	stream                   bool
	relayed                  bool          // a stream handed to its own goroutines: ServeHTTP's end is not the stream's
	firstByte                time.Duration // see Record.FirstByte
	clientClose, regionClose int
}

// ServeHTTP dispatches a request to the HTTP forwarder or the stream relay.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{id: requestID(r), start: time.Now(), snap: h.snap.Load(), ctx: r.Context()}
	x.client = x.snap.Locator.Locate(r)
	w.Header().Set("X-Request-Id", x.id)
	defer h.recoverPanic(w, x)
	if len(r.TransferEncoding) > 0 {
		// A request framed by both Content-Length and Transfer-Encoding
		// may be smuggling the next one, and RFC 9112 section 6.1 wants
		// its connection closed after the response. net/http deletes the
		// Content-Length before the handler runs, so such a request
		// cannot be told from a plain chunked upload: every chunked
		// request closes its connection (one reconnect per upload, which
		// takes seconds to transcribe anyway).
		w.Header().Set("Connection", "close")
	}

	// Only the API's exact paths are served: no cleaning, no encoded
	// slashes or dots (RawPath is set only when the path had escapes that
	// matter), so nothing can reach another path on a region.
	rt, ok := h.routes[r.URL.Path]
	known := ok && r.URL.RawPath == ""
	if h.cors(w, r, x, known) {
		return // a preflight, answered here
	}
	if !known {
		msg := "The path " + quotePath(r.URL.Path) + " is not part of the API served here."
		if r.URL.RawPath != "" {
			msg = "The path " + quotePath(r.URL.RawPath) + " is not part of the API served here: " +
				"paths are matched as sent, and encoded slashes or dots are not decoded."
		}
		h.reject(w, r, x, &apiError{http.StatusNotFound, codeNotFound, msg})
		return
	}
	stream := r.Method == http.MethodGet && rt.stream
	x.stream = stream
	if !stream && !(r.Method == http.MethodPost && rt.post) && !(r.Method == http.MethodGet && rt.get) {
		w.Header().Set("Allow", rt.allow)
		h.reject(w, r, x, &apiError{http.StatusMethodNotAllowed, codeMethod,
			quoteMethod(r.Method) + " is not allowed on " + r.URL.Path + "; use " + rt.allow + "."})
		return
	}
	if a := x.snap.Auth; a != nil {
		if !h.admit(w, r, x, a, stream) {
			return
		}
		if stream {
			defer func() {
				if !x.relayed {
					x.key.CloseStream()
				}
			}()
		}
	}
	if stream {
		h.ws.serve(w, r, x)
	} else {
		h.http.serve(w, r, x)
	}
}

// reject answers with an error of the router's own and logs the request.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, x *exchange, e *apiError) {
	x.status, x.err = e.status, e
	writeError(w, e, x.id)
	h.logAccess(r, x, nil)
	abortIfGone(e)
}

// abortIfGone ends the response to a client that has gone (499): net/http
// would otherwise answer a handler that wrote nothing with an empty 200,
// which a half-closed client still reading would take for success.
func abortIfGone(e *apiError) {
	if e.status == StatusClientClosed {
		panic(http.ErrAbortHandler)
	}
}

// recoverPanic turns a panic in the data path into a 500 (when nothing has
// been written yet) and an error log, so no panic reaches a client.
// http.ErrAbortHandler, the standard way to abort a response mid-body, passes.
func (h *Handler) recoverPanic(w http.ResponseWriter, x *exchange) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	h.log.Error("panic in handler", zap.String("request_id", x.id), zap.Any("panic", v), zap.StackSkip("stack", 1))
	if x.status == 0 {
		writeError(w, &apiError{http.StatusInternalServerError, codeInternal, "Internal error."}, x.id)
	}
}

// requestID returns the client's X-Request-Id when it is sane, or a new
// random UUID.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 128 && isPrintableASCII(id) {
		return id
	}
	return newUUID()
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	var s [36]byte
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s[j] = '-'
			j++
		}
		s[j], s[j+1] = hex[c>>4], hex[c&0xf]
		j += 2
	}
	return string(s[:])
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// quotePath keeps an error message readable and short whatever the client sent.
func quotePath(p string) string {
	if len(p) > 64 {
		p = p[:64] + "..."
	}
	if !isPrintableASCII(p) {
		return "requested"
	}
	return p
}

// clientGone reports whether the request's client has gone away.
func clientGone(ctx context.Context) bool { return ctx.Err() != nil }

// errAborted marks a response cut short after its header was sent.
var errAborted = errors.New("response aborted mid-body")

// hostOnly formats an address for X-Forwarded-For.
func hostOnly(addr netip.Addr) string {
	if !addr.IsValid() {
		return ""
	}
	return addr.String()
}
