package proxy

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/earshot/earshot/failover"
)

// httpForwarder forwards plain HTTP requests with httputil.ReverseProxy,
// one attempt per pass: its transport sends to one region, and the loop in
// serve asks the failover run, from ModifyResponse or ErrorHandler, whether
// the next region should be tried before anything reaches the client
// (Caddy's shape: select, proxy, decide whether to try again).
//
// Bodies stream both ways. The response is flushed as the region writes it
// when its length is unknown (chunked TTS audio), so the first chunk reaches
// the client before the region has finished.
type httpForwarder struct {
	h         *Handler
	base      http.RoundTripper
	transport *http.Transport // nil when Options.Transport overrides it
	buffers   bufferPool
	errLog    *log.Logger
}

func (f *httpForwarder) init(h *Handler) {
	f.h = h
	f.base = h.opts.Transport
	if f.base == nil {
		f.transport = newTransport(h.opts)
		f.base = f.transport
	}
	f.errLog = zap.NewStdLog(h.log.Named("reverseproxy"))
}

func (f *httpForwarder) closeIdle() {
	if f.transport != nil {
		f.transport.CloseIdleConnections()
	}
}

// newTransport is tuned for a few upstreams taking many concurrent requests.
func newTransport(o Options) *http.Transport {
	d := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   o.ConnectTimeout,
		ResponseHeaderTimeout: o.ResponseTimeout,
		ExpectContinueTimeout: time.Second,
		// 64 KiB rather than 4: an upload of up to about 64 KiB goes out
		// in one write with its headers, straight from the replay buffer
		// (with 4 KiB, net/http hands the rest of the body to the socket's
		// ReadFrom, which allocates a 32 KiB copy buffer per request), and
		// a transcript comes back in one read.
		WriteBufferSize: 64 << 10,
		ReadBufferSize:  64 << 10,
	}
}

func (f *httpForwarder) serve(w http.ResponseWriter, r *http.Request, x *exchange) {
	limit := f.h.opts.MaxBodyBytes
	if limit > 0 && r.ContentLength > limit {
		f.h.reject(w, r, x, upstreamError(r.Context(), "", &http.MaxBytesError{Limit: limit}))
		return
	}
	run, apiErr := f.h.decide(r, x, nil, x.start)
	if apiErr != nil {
		f.h.reject(w, r, x, apiErr)
		return
	}
	defer run.End()
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{rc: r.Body, limit: limit, n: &x.bytesIn}
		if err := f.buffer(r, x); err != nil {
			f.h.reject(w, r, x, upstreamError(r.Context(), "", err))
			return
		}
	}
	a := run.First()
	if a == nil {
		f.h.reject(w, r, x, x.noRegion())
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	defer func() {
		// A copy cut short (client or region gone mid-body) panics with
		// http.ErrAbortHandler inside ServeHTTP: record it, then let it go on
		// to net/http, which closes the connection quietly.
		if v := recover(); v != nil {
			if x.err == nil {
				x.err = errAborted
			}
			defer panic(v)
		}
		if cw.status != 0 { // else nothing was written: keep the status decided (499)
			x.status = cw.status
		}
		x.bytesOut = cw.n
		run.End() // the region's capacity is back before the log line
		f.h.logAccess(r, x, x.up)
	}()
	replayable := x.replay != nil || r.Body == nil || r.Body == http.NoBody
	for a != nil {
		t := &httpAttempt{f: f, x: x, run: run, a: a, up: x.upstream(a), replayable: replayable, path: r.URL.Path}
		a = t.serve(cw, r)
	}
}

// httpAttempt is one pass of a request through ReverseProxy, to one region.
type httpAttempt struct {
	f          *httpForwarder
	x          *exchange
	run        *failover.Run
	a          *failover.Attempt
	up         *Upstream
	replayable bool
	path       string            // the API path the client asked for
	timer      *time.Timer       // the attempt timeout, while waiting for headers
	next       *failover.Attempt // set when the run moves on to another region
	final      bool              // no other region will be tried
}

// serve makes the attempt and returns the next one, or nil when the client
// has its answer.
func (t *httpAttempt) serve(w http.ResponseWriter, r *http.Request) *failover.Attempt {
	rp := httputil.ReverseProxy{
		Rewrite:        t.rewrite,
		Transport:      t,
		ModifyResponse: t.modifyResponse,
		ErrorHandler:   t.errorHandler,
		BufferPool:     &t.f.buffers,
		ErrorLog:       t.f.errLog,
	}
	req := r.WithContext(t.a.Context())
	if t.x.replay != nil {
		req.Body = io.NopCloser(bytes.NewReader(t.x.replay))
		req.ContentLength = int64(len(t.x.replay))
	}
	rp.ServeHTTP(w, req)
	return t.next
}

// buffer reads a request body that fits in the replay size into memory so
// that a failed attempt can be sent again to the next region. A JSON body
// (a url to transcribe, text to speak) is always small enough. A larger body
// streams through: what has been read is sent first, then the rest, and that
// request cannot fail over.
func (f *httpForwarder) buffer(r *http.Request, x *exchange) error {
	o := f.h.opts.Retry
	size := o.ReplayBytes
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		size = max(size, jsonReplayBytes)
	}
	if o.Attempts <= 1 || size <= 0 || (r.ContentLength > size) {
		return nil
	}
	n := r.ContentLength
	if n < 0 {
		n = 0
	}
	buf := bytes.NewBuffer(make([]byte, 0, min(n, size)+bytes.MinRead))
	_, err := io.Copy(buf, io.LimitReader(r.Body, size+1))
	if err != nil {
		return err
	}
	if int64(buf.Len()) > size {
		// Too large after all (a chunked body): stream it, without replay.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body), r.Body}
		return nil
	}
	_ = r.Body.Close()
	x.replay = buf.Bytes()
	r.Body = io.NopCloser(bytes.NewReader(x.replay))
	r.ContentLength = int64(len(x.replay))
	return nil
}

// jsonReplayBytes is the replay size of JSON bodies whatever the setting.
const jsonReplayBytes = 64 << 10

// rewrite builds the outbound request to the attempt's region.
// ReverseProxy has already removed hop-by-hop headers and any
// client-supplied X-Forwarded-*.
func (t *httpAttempt) rewrite(pr *httputil.ProxyRequest) {
	x, up := t.x, t.up
	pr.Out.URL.Scheme, pr.Out.URL.Host = up.URL.Scheme, up.URL.Host
	pr.Out.URL.Path, pr.Out.URL.RawPath = up.URL.Path+pr.In.URL.Path, ""
	// Pass the query exactly as the client wrote it (ReverseProxy drops
	// parameters it cannot parse; Deepgram's are all parseable, and a region
	// should see what the client sent).
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	pr.Out.Host = ""
	pr.Out.Header.Del("Authorization") // the client's key is the router's business, not the region's
	// ReverseProxy would pass an upgrade on and tunnel raw bytes on a 101;
	// streams go through the WebSocket relay, with its checks, or not at all.
	if pr.Out.Header.Get("Upgrade") != "" {
		pr.Out.Header.Del("Upgrade")
		pr.Out.Header.Del("Connection")
	}
	setForwarded(pr.Out.Header, pr.In, x)
	pr.Out.Header.Set("X-Request-Id", x.id)
	for k, v := range up.Header {
		pr.Out.Header[k] = v
	}
}

// RoundTrip sends the attempt to its region: one attempt, no retry. With
// an attempt timeout, a request that can still move elsewhere waits that
// long at most for the response headers.
func (t *httpAttempt) RoundTrip(out *http.Request) (*http.Response, error) {
	if d := t.f.h.opts.Retry.AttemptTimeout; d > 0 && t.replayable {
		a := t.a
		t.timer = time.AfterFunc(d, func() { a.Cancel(errAttemptTimeout) })
	}
	if len(t.x.replay) > 0 {
		// ReverseProxy wraps the body, which hides that it is in memory:
		// net/http would then flush the headers alone and copy the body
		// through a fresh 32 KiB buffer. A bytes.Reader goes out with the
		// headers in one write.
		out.Body = io.NopCloser(bytes.NewReader(t.x.replay))
	}
	resp, err := t.f.base.RoundTrip(out)
	if t.timer != nil && !t.timer.Stop() && resp != nil {
		// The timeout fired as the headers came: the attempt's context is
		// cancelled, so its body would be cut. It timed out.
		_ = resp.Body.Close()
		return nil, errAttemptTimeout
	}
	return resp, err
}

// modifyResponse decides whether the region's answer goes to the client or
// the request moves on (the answer is then discarded, unseen).
func (t *httpAttempt) modifyResponse(resp *http.Response) error {
	x, a := t.x, t.a
	res := failover.Result{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header)}
	if measuresLatency(t.path) {
		res.Latency = time.Since(a.Start)
	}
	if t.next = t.run.Retry(a, res, t.replayable); t.next != nil {
		drain(resp.Body) // before the attempt ends, so the connection is kept
		a.Release()
		return errMovedOn
	}
	if t.replayable && answerWhole(t.path, resp) {
		// A transcript is useful only whole: read it before anything goes
		// to the client, so a region that breaks off mid-answer costs a
		// retry rather than a broken response.
		body, err := readWhole(resp.Body, resp.ContentLength)
		if err != nil {
			res := failover.Result{Err: err} // nothing reached the client: as if no answer came
			if t.next = t.run.Retry(a, res, true); t.next != nil {
				a.Release()
				return errMovedOn
			}
			t.final = true
			return err
		}
		resp.Body = body
	}
	t.run.Served(a)
	x.serving(a)
	h := resp.Header
	if x.snap.CORS != nil {
		stripCORS(h)
	}
	x.setRouteHeaders(h)
	// The client's response already has X-Request-Id (ServeHTTP sets it
	// on every answer); ReverseProxy adds the region's headers to it, so a
	// second one here would be sent twice.
	h.Del("X-Request-Id")
	if h.Get("Dg-Request-Id") == "" {
		h.Set("Dg-Request-Id", x.id)
	}
	x.status = resp.StatusCode
	x.firstByte = time.Since(x.start)
	a.Report(res) // the region's capacity is held until the body is done
	resp.Body = &watchedBody{ReadCloser: resp.Body, a: a, status: resp.StatusCode}
	return nil
}

// errorHandler handles an attempt that got no answer (or one that was
// discarded): it moves the request on if it can, else answers the client.
func (t *httpAttempt) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if err == errMovedOn {
		return
	}
	x, a := t.x, t.a
	res := failover.Result{Err: err}
	if !t.final {
		if t.next = t.run.Retry(a, res, t.replayable); t.next != nil {
			a.Release()
			return
		}
	}
	x.serving(a)
	err = a.Err(err)
	x.err = err
	a.Done(res)
	e := upstreamError(x.ctx, t.up.Name, err)
	x.setRouteHeaders(w.Header())
	writeError(w, e, x.id)
	x.status = e.status
	abortIfGone(e)
}

// errMovedOn is ModifyResponse's signal that the request moved to another
// region: ReverseProxy closes the answer and writes nothing.
var errMovedOn = errors.New("moved on to another region")

// drain discards a little of a body we will not use, so the connection can
// be reused, and closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}

// setForwarded sets X-Forwarded-For/-Proto/-Host. A trusted peer's headers
// are extended; anyone else's have already been dropped.
func setForwarded(out http.Header, in *http.Request, x *exchange) {
	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	if x.client.Trusted {
		if prior := in.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			out.Set("X-Forwarded-For", joinComma(prior)+", "+hostOnly(x.client.Peer))
		} else {
			out.Set("X-Forwarded-For", hostOnly(x.client.Peer))
		}
		if p := in.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
			proto = p
		}
	} else {
		out.Set("X-Forwarded-For", hostOnly(x.client.Peer))
	}
	out.Set("X-Forwarded-Proto", proto)
	if in.Host != "" {
		out.Set("X-Forwarded-Host", in.Host)
	}
}

func joinComma(v []string) string {
	if len(v) == 1 {
		return v[0]
	}
	n := 0
	for _, s := range v {
		n += len(s) + 2
	}
	b := make([]byte, 0, n)
	for i, s := range v {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, s...)
	}
	return string(b)
}

// watchedBody tells the attempt how the region's body ended: a read that
// failed (the region cut the answer short) is one more failure for it;
// either way the region's capacity comes back when the body is closed.
type watchedBody struct {
	io.ReadCloser
	a      *failover.Attempt
	status int
	err    error
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	if b.err != nil {
		b.a.Report(failover.Result{Status: b.status, Err: b.err})
	}
	b.a.Release()
	return err
}

// bodyReader counts the request body and enforces the size limit, answering
// with *http.MaxBytesError like http.MaxBytesReader.
type bodyReader struct {
	rc    io.ReadCloser
	limit int64
	n     *atomic.Int64
}

func (b *bodyReader) Read(p []byte) (int, error) {
	read := b.n.Load()
	if b.limit > 0 {
		if left := b.limit - read; int64(len(p)) > left+1 {
			p = p[:left+1]
		}
	}
	n, err := b.rc.Read(p)
	read = b.n.Add(int64(n))
	if b.limit > 0 && read > b.limit {
		return n - int(read-b.limit), &http.MaxBytesError{Limit: b.limit}
	}
	return n, err
}

func (b *bodyReader) Close() error { return b.rc.Close() }

// countingWriter records the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Flush lets ReverseProxy stream chunked responses through the wrapper.
func (w *countingWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap gives http.ResponseController the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool pools ReverseProxy's 32 KiB copy buffers.
type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }

// wholeAnswerBytes is the largest answer read whole before it is passed on.
const wholeAnswerBytes = 1 << 20

// answerWhole reports whether a region's answer is read whole before it is
// passed on: pre-recorded transcription and text intelligence answer with
// one JSON document, useful only complete; speech and model lists stream.
func answerWhole(path string, resp *http.Response) bool {
	return (path == "/v1/listen" || path == "/v1/read") && resp.ContentLength <= wholeAnswerBytes
}

// readWhole reads an answer of n bytes (-1: unknown) into memory. An
// answer longer than wholeAnswerBytes after all is passed on as it comes:
// what was read first, then the rest.
func readWhole(body io.ReadCloser, n int64) (io.ReadCloser, error) {
	buf := bytes.NewBuffer(make([]byte, 0, max(n, 0)+bytes.MinRead))
	_, err := io.Copy(buf, io.LimitReader(body, wholeAnswerBytes+1))
	if err != nil {
		_ = body.Close()
		return nil, err
	}
	if buf.Len() > wholeAnswerBytes {
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(buf, body), body}, nil
	}
	if n >= 0 && int64(buf.Len()) != n {
		_ = body.Close()
		return nil, io.ErrUnexpectedEOF
	}
	_ = body.Close()
	return io.NopCloser(buf), nil
}

// measuresLatency reports whether the time to a response's headers on path
// says how far away the region is. Pre-recorded transcription and text
// intelligence answer only when the work is done, so their time says more
// about the audio than the region; handshakes, models and the first chunk
// of speech do not wait on the work.
func measuresLatency(path string) bool {
	return path != "/v1/listen" && path != "/v1/read"
}
