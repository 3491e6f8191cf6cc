package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
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
		Transport:      rt,
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
	}
}

func (f *httpForwarder) serve(w http.ResponseWriter, r *http.Request, x *exchange) {
	max := f.h.opts.MaxBodyBytes
	if max > 0 && r.ContentLength > max {
		f.h.reject(w, r, x, upstreamError(r.Context(), "", &http.MaxBytesError{Limit: max}))
		return
	}
	up, apiErr := f.h.acquire(r, x)
	if apiErr != nil {
		f.h.reject(w, r, x, apiErr)
		return
	}
	x.attempt = time.Now()
	cw := &countingWriter{ResponseWriter: w}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{rc: r.Body, limit: max, n: &x.bytesIn}
	}
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x))
	defer func() {
		// A copy cut short (client or region gone mid-body) panics with
		// http.ErrAbortHandler inside ServeHTTP: record it, then let it go on
		// to net/http, which closes the connection quietly.
		if v := recover(); v != nil {
			x.err = errAborted
			defer panic(v)
		}
		x.status, x.bytesOut = cw.status, cw.n
		x.release(health.Outcome{Status: x.status, ClientGone: clientGone(r.Context())})
		f.h.logAccess(r, x, up)
	}()
	f.rp.ServeHTTP(cw, r)
}

// rewrite builds the outbound request. ReverseProxy has already removed
// hop-by-hop headers and any client-supplied X-Forwarded-*.
func (f *httpForwarder) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	up := x.up
	pr.SetURL(up.URL)
	// Pass the query exactly as the client wrote it (ReverseProxy drops
	// parameters it cannot parse; Deepgram's are all parseable, and a region
	// should see what the client sent).
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	setForwarded(pr.Out.Header, pr.In, x)
	for k, v := range up.Header {
		pr.Out.Header[k] = v
	}
	pr.Out.Header.Set("X-Request-Id", x.id)
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
	o := health.Outcome{Status: resp.StatusCode}
	if measuresLatency(resp.Request.URL.Path) {
		o.Latency = time.Since(x.attempt)
	}
	resp.Body = &releaseOnClose{ReadCloser: resp.Body, x: x, outcome: o}
	return nil
}

func (f *httpForwarder) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	e := upstreamError(r.Context(), x.up.Name, err)
	x.err = err
	x.release(health.Outcome{Err: err, ClientGone: e.status == StatusClientClosed})
	x.setRouteHeaders(w.Header())
	writeError(w, e, x.id)
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
