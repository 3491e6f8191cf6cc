package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/earshot/earshot/health"
)

// httpForwarder forwards plain HTTP requests with httputil.ReverseProxy.
//
// Bodies stream both ways. The response is flushed as the region writes it
// when its length is unknown (chunked TTS audio), so the first chunk reaches
// the client before the region has finished.
type httpForwarder struct {
	h         *Handler
	rp        httputil.ReverseProxy
	transport *http.Transport // nil when Options.Transport overrides it
	buffers   bufferPool
}

type exchangeKey struct{}

func (f *httpForwarder) init(h *Handler) {
	f.h = h
	rt := h.opts.Transport
	if rt == nil {
		f.transport = newTransport(h.opts)
		rt = f.transport
	}
	f.rp = httputil.ReverseProxy{
		Rewrite:        f.rewrite,
		Transport:      attemptTransport{f: f, base: rt},
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.errorHandler,
		BufferPool:     &f.buffers,
		ErrorLog:       zap.NewStdLog(h.log.Named("reverseproxy")),
	}
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
	p, apiErr := f.h.decide(r, x)
	if apiErr != nil {
		f.h.reject(w, r, x, apiErr)
		return
	}
	x.plan = p
	f.h.counters.inProgress.Add(1)
	defer f.h.counters.inProgress.Add(-1)
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{rc: r.Body, limit: limit, n: &x.bytesIn}
		if err := f.buffer(r, x); err != nil {
			f.h.reject(w, r, x, upstreamError(r.Context(), "", err))
			return
		}
	}
	cw := &countingWriter{ResponseWriter: w}
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x))
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
		x.release(health.Outcome{Status: x.status, ClientGone: clientGone(r.Context())})
		f.h.logAccess(r, x, x.up)
	}()
	f.rp.ServeHTTP(cw, r)
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

// rewrite builds the outbound request, for any region: the region's address
// and credentials are set per attempt by roundTrip. ReverseProxy has already
// removed hop-by-hop headers and any client-supplied X-Forwarded-*.
func (f *httpForwarder) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
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
}

// attemptTransport is the ReverseProxy's transport: it sends the request to
// the plan's regions in turn until one answers with something other than a
// retryable failure, or the plan, the budget or the deadline runs out.
type attemptTransport struct {
	f    *httpForwarder
	base http.RoundTripper
}

func (t attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	x := req.Context().Value(exchangeKey{}).(*exchange)
	p := x.plan
	up, lease, ok := p.admit()
	if !ok {
		return nil, errNoCandidate
	}
	for {
		x.lease, x.leased, x.attempt = lease, true, time.Now()
		replayable := x.replay != nil || req.Body == nil || req.Body == http.NoBody
		resp, err, timedOut := t.send(req, x, up, replayable && t.f.h.opts.Retry.Attempts > 1)
		if !retryable(statusOf(resp), err) || !replayable || clientGone(req.Context()) {
			p.served()
			return resp, err
		}
		o := health.Outcome{Err: err, Status: statusOf(resp)}
		if timedOut {
			o.Err = errAttemptTimeout
		}
		if resp != nil {
			o.RetryAfter = retryAfter(resp.Header)
		}
		if !p.mayRetry() {
			p.served()
			return resp, err
		}
		nextUp, nextLease, ok := p.admit()
		if !ok {
			p.retryDone()
			p.served()
			return resp, err // the last region's own answer is the most useful one
		}
		if resp != nil {
			drain(resp.Body)
		}
		x.release(o)
		t.f.h.log.Debug("failover", zap.String("request_id", x.id), zap.String("from", up.Name),
			zap.String("to", nextUp.Name), zap.Int("status", o.Status), zap.Error(o.Err))
		up, lease = nextUp, nextLease
		defer p.retryDone()
	}
}

// send makes one attempt at up. With bounded set, the wait for response
// headers is limited to the attempt timeout, after which the attempt fails
// as timed out (and the request moves on).
func (t attemptTransport) send(req *http.Request, x *exchange, up *Upstream, bounded bool) (*http.Response, error, bool) {
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = up.URL.Scheme, up.URL.Host
	out.URL.Path, out.URL.RawPath = up.URL.Path+req.URL.Path, ""
	for k, v := range up.Header {
		out.Header[k] = v
	}
	if x.replay != nil {
		out.Body = io.NopCloser(bytes.NewReader(x.replay))
		out.ContentLength = int64(len(x.replay))
	}
	if !bounded || t.f.h.opts.Retry.AttemptTimeout <= 0 {
		resp, err := t.base.RoundTrip(out)
		return resp, err, false
	}
	ctx, cancel := context.WithCancel(req.Context())
	var timedOut atomic.Bool
	timer := time.AfterFunc(t.f.h.opts.Retry.AttemptTimeout, func() {
		timedOut.Store(true)
		cancel()
	})
	resp, err := t.base.RoundTrip(out.WithContext(ctx))
	if !timer.Stop() && timedOut.Load() {
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		return nil, errAttemptTimeout, true
	}
	if err != nil {
		cancel()
		return nil, err, false
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil, false
}

// cancelOnClose ends an attempt's context when its response body is done.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

// drain discards a little of a body we will not use, so the connection can
// be reused, and closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}

var (
	errNoCandidate    = errors.New("no region can take the request")
	errAttemptTimeout = timeoutError{"the region did not answer within the attempt timeout"}
)

type timeoutError struct{ msg string }

func (e timeoutError) Error() string { return e.msg }
func (timeoutError) Timeout() bool   { return true }

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

func (f *httpForwarder) modifyResponse(resp *http.Response) error {
	x := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	h := resp.Header
	x.setRouteHeaders(h)
	h.Set("X-Request-Id", x.id)
	if h.Get("Dg-Request-Id") == "" {
		h.Set("Dg-Request-Id", x.id)
	}
	// Health learns of the answer now; capacity is held until the body is done.
	x.status = resp.StatusCode
	x.firstByte = time.Since(x.start)
	o := health.Outcome{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header)}
	if measuresLatency(resp.Request.URL.Path) {
		o.Latency = time.Since(x.attempt)
	}
	resp.Body = &releaseOnClose{ReadCloser: resp.Body, x: x, outcome: o}
	return nil
}

func (f *httpForwarder) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	x.err = err
	if errors.Is(err, errNoCandidate) {
		e := errNoRegion
		if x.rule != "" {
			e = errResidencyFull(x.rule)
		}
		writeError(w, e, x.id)
		x.status = e.status
		return
	}
	e := upstreamError(r.Context(), x.up.Name, err)
	x.release(health.Outcome{Err: err, ClientGone: e.status == StatusClientClosed})
	x.setRouteHeaders(w.Header())
	writeError(w, e, x.id)
	x.status = e.status
	abortIfGone(e)
}

// releaseOnClose reports the outcome and frees capacity when ReverseProxy
// has finished with the response body.
type releaseOnClose struct {
	io.ReadCloser
	x       *exchange
	outcome health.Outcome
	once    sync.Once
}

func (b *releaseOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() { b.x.release(b.outcome) })
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

// measuresLatency reports whether the time to a response's headers on path
// says how far away the region is. Pre-recorded transcription and text
// intelligence answer only when the work is done, so their time says more
// about the audio than the region; handshakes, models and the first chunk
// of speech do not wait on the work.
func measuresLatency(path string) bool {
	return path != "/v1/listen" && path != "/v1/read"
}
