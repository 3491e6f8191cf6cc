package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/earshot/earshot/auth"
	"github.com/earshot/earshot/failover"
)

// wsRelay relays WebSocket streams message by message.
//
// The region's handshake comes first: the router dials the region, and only
// when the region has accepted does it upgrade the client, so a refused or
// failed handshake is still an ordinary HTTP answer the client can read (and,
// later, a reason to try another region before the client sees anything).
//
// Each stream then has two pumps, client to region and region to client.
// Message types are kept, unknown messages pass untouched, and close frames
// are relayed rather than answered locally: a close from one side goes to the
// other with its code and reason, and the other side's answer comes back.
// After a close has gone to a side, that side has CloseGrace to answer before
// the stream is torn down, so every stream ends.
type wsRelay struct {
	h        *Handler
	dialer   websocket.Dialer
	upgrader websocket.Upgrader
}

// Headers a stream's handshake never forwards: gorilla sets its own, and the
// rest are hop-by-hop.
var wsSkipHeaders = map[string]bool{
	"Host": true, "Connection": true, "Upgrade": true, "Keep-Alive": true,
	"Proxy-Connection": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Sec-Websocket-Key": true, "Sec-Websocket-Version": true,
	"Sec-Websocket-Extensions": true, "Sec-Websocket-Protocol": true,
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Proto": true, "X-Forwarded-Host": true,
	"X-Request-Id":  true,
	"Authorization": true, // the client's key stays at the edge
}

// Read buffers live as long as their stream (gorilla has no pool for
// them). A client's audio messages (100 ms of 16 kHz linear16 is 3,200
// bytes) are read past the buffer straight into the relay's, so a small
// one costs a second read call per message, not a copy; a region's
// messages (results, a few hundred bytes of JSON) mostly fit in one.
const (
	clientReadBuffer = 1024
	regionReadBuffer = 1024
)

func (s *wsRelay) init(h *Handler) {
	s.h = h
	// Write buffers are pooled: an idle stream holds none.
	pool := &sync.Pool{}
	s.dialer = websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		NetDialContext:   (&net.Dialer{Timeout: h.opts.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		HandshakeTimeout: h.opts.HandshakeTimeout,
		ReadBufferSize:   regionReadBuffer,
		WriteBufferSize:  4096,
		WriteBufferPool:  pool,
	}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: h.opts.HandshakeTimeout,
		// Not 0, which would read with net/http's buffer for the
		// connection: that reads through net/http's connection, whose
		// buffers (8 KiB) and state would then live as long as the stream.
		ReadBufferSize:  clientReadBuffer,
		WriteBufferSize: 4096,
		WriteBufferPool: pool,
		// Deepgram's API is called from any origin: keys, not cookies,
		// authenticate, so there is no ambient credential to protect.
		CheckOrigin: func(*http.Request) bool { return true },
	}
}

func (s *wsRelay) serve(w http.ResponseWriter, r *http.Request, x *exchange) {
	if e := checkUpgrade(r); e != nil {
		if e.code == codeBadRequest && r.Header.Get("Sec-Websocket-Version") != "13" {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		s.h.reject(w, r, x, e)
		return
	}
	// The stream outlives this handler (see relay): its context is the
	// request's until the upgrade, then its own.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stopFollowing := context.AfterFunc(r.Context(), cancel)
	r = r.WithContext(ctx)
	defer func() {
		if !x.relayed {
			stopFollowing()
			cancel()
		}
	}()
	run, apiErr := s.h.decide(r, x, nil, x.start)
	if apiErr != nil {
		s.h.reject(w, r, x, apiErr)
		return
	}
	defer func() {
		if !x.relayed {
			run.End()
		}
	}()
	offered := websocket.Subprotocols(r)

	won, lost := s.connect(r, x, run)
	run.Settle() // the handshake's retries are over, whatever the stream's length
	if won == nil {
		if lost == nil {
			s.h.reject(w, r, x, x.noRegion())
			return
		}
		x.serving(lost.a)
		s.refused(w, r, x, lost)
		return
	}
	run.Served(won.a)
	x.serving(won.a)
	up, upConn, resp := x.up, won.conn, won.resp

	respHeader := http.Header{}
	x.setRouteHeaders(respHeader)
	respHeader.Set("X-Request-Id", x.id)
	if id := resp.Header.Get("Dg-Request-Id"); id != "" {
		respHeader.Set("Dg-Request-Id", id)
	} else {
		respHeader.Set("Dg-Request-Id", x.id)
	}
	if p := chooseSubprotocol(offered, upConn.Subprotocol()); p != "" {
		respHeader.Set("Sec-WebSocket-Protocol", p)
	}
	clientConn, err := s.upgrader.Upgrade(w, r, respHeader)
	if err != nil {
		// The upgrader has answered the client; tell the region we are gone.
		_ = upConn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, "client handshake failed"), time.Now().Add(time.Second))
		_ = upConn.Close()
		x.status, x.err = http.StatusBadRequest, err
		run.End()
		s.h.logAccess(r, x, up)
		return
	}
	x.status = http.StatusSwitchingProtocols
	x.firstByte = time.Since(x.start)

	// From here the stream lives in goroutines of its own: this handler
	// returns, and net/http lets go of the connection's buffers and of
	// its goroutine's stack, grown deep by the handshake.
	stopFollowing()
	st := newStream(s.h, r, x, clientConn, &leg{conn: upConn, a: won.a, name: up.Name})
	tracked := s.h.track(st)
	x.relayed = true
	go s.relay(st, r, x, run, cancel, tracked)
}

// relay runs a stream to its end, then settles it: its regions, its
// client key's stream, the access log line. A panic in the relay is
// logged and ends the stream; it is settled all the same.
func (s *wsRelay) relay(st *stream, r *http.Request, x *exchange, run *failover.Run, cancel context.CancelFunc, tracked bool) {
	defer cancel()
	if x.key != nil {
		defer x.key.CloseStream()
	}
	defer func() {
		if v := recover(); v != nil {
			s.h.log.Error("panic in stream", zap.String("request_id", x.id), zap.Any("panic", v), zap.StackSkip("stack", 1))
			_ = st.client.Close()
			_ = st.leg().conn.Close()
		}
		st.finish()
		x.bytesIn.Store(st.up.bytes)
		x.bytesOut = st.down.bytes
		x.clientClose, x.regionClose = int(st.clientClose.Load()), int(st.regionClose.Load())
		run.End()
		s.h.logAccess(r, x, x.up,
			zap.Int("client_close", x.clientClose),
			zap.Int("region_close", x.regionClose),
			zap.Int64("messages_in", st.up.messages),
			zap.Int64("messages_out", st.down.messages),
			zap.String("regions", st.regionNames()),
		)
		if tracked {
			s.h.untrack(st) // last: Shutdown returns once every stream is settled and logged
		}
	}()
	if !tracked {
		// Shutdown began during the handshake: end the stream at once.
		st.goAway("router shutting down")
	}
	st.run()
}

// reconnect opens a new leg for a stream that lost its region: routing
// again for the same client (residency and key masks kept), leaving out
// the regions the stream has lost, within the retry budget. nil: no
// region could take it.
func (s *wsRelay) reconnect(r *http.Request, x *exchange, tried map[string]bool) *leg {
	// Routed as a new stream would be now: the current config and regions,
	// and a deadline from the loss, not from the stream's start.
	x.snap = s.h.snap.Load()
	run, apiErr := s.h.decide(r, x, tried, time.Now())
	if apiErr != nil {
		return nil
	}
	won, lost := s.connect(r, x, run)
	run.Settle()
	if won == nil {
		if lost != nil {
			lost.a.Done(lost.result())
		}
		run.End()
		return nil
	}
	return &leg{conn: won.conn, a: won.a, run: run, name: x.upstream(won.a).Name}
}

var errStreamLost = errors.New("the region dropped the stream")

// checkUpgrade validates the client's handshake before a region is dialled,
// so a bad one costs the region nothing and gets a Deepgram-shaped 400.
func checkUpgrade(r *http.Request) *apiError {
	switch {
	case !websocket.IsWebSocketUpgrade(r):
		return &apiError{http.StatusBadRequest, codeBadRequest,
			"GET " + r.URL.Path + " must be a WebSocket upgrade (for pre-recorded audio, POST /v1/listen)."}
	case r.Header.Get("Sec-Websocket-Version") != "13":
		return &apiError{http.StatusBadRequest, codeBadRequest, "Unsupported Sec-WebSocket-Version; want 13."}
	case !validWebSocketKey(r.Header.Get("Sec-Websocket-Key")):
		return &apiError{http.StatusBadRequest, codeBadRequest, "Missing or malformed Sec-WebSocket-Key."}
	}
	return nil
}

// validWebSocketKey reports whether k is base64 of 16 bytes (RFC 6455
// section 4.2.1), as the region's upgrader will insist.
func validWebSocketKey(k string) bool {
	if len(k) != 24 {
		return false
	}
	var b [18]byte
	n, err := base64.StdEncoding.Decode(b[:], []byte(k))
	return err == nil && n == 16
}

// chooseSubprotocol picks the subprotocol to echo to the client. Browsers
// authenticate by offering ["token", KEY] or ["bearer", JWT] and drop the
// socket unless the scheme is echoed; otherwise echo what the region chose,
// if the client offered it.
func chooseSubprotocol(offered []string, regionChose string) string {
	if len(offered) > 0 && auth.IsScheme(offered[0]) {
		return offered[0]
	}
	for _, p := range offered {
		if p == regionChose && p != "" {
			return p
		}
	}
	return ""
}

func (s *wsRelay) upstreamURL(up *Upstream, r *http.Request, x *exchange) string {
	var b strings.Builder
	b.WriteString(up.wsScheme)
	b.WriteString("://")
	b.WriteString(up.URL.Host)
	b.WriteString(up.URL.EscapedPath())
	b.WriteString(r.URL.EscapedPath())
	q := r.URL.RawQuery
	if x.snap.Auth != nil {
		q = stripQueryParam(q, "token") // a key given in the query stays at the edge
	}
	if q != "" {
		b.WriteByte('?')
		b.WriteString(q)
	}
	return b.String()
}

// upstreamHeader is the client's handshake headers minus hop-by-hop and
// WebSocket mechanics, with forwarding headers and the region's own added.
func (s *wsRelay) upstreamHeader(r *http.Request, x *exchange, up *Upstream) http.Header {
	h := make(http.Header, len(r.Header)+len(up.Header)+4)
	for _, c := range r.Header.Values("Connection") {
		for _, name := range strings.Split(c, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h[http.CanonicalHeaderKey(name)] = nil // hop-by-hop by declaration
			}
		}
	}
	for k, v := range r.Header {
		if wsSkipHeaders[k] {
			continue
		}
		if _, hop := h[k]; hop {
			continue
		}
		h[k] = v
	}
	for k, v := range h {
		if v == nil {
			delete(h, k)
		}
	}
	setForwarded(h, r, x)
	for k, v := range up.Header {
		h[k] = v
	}
	h.Set("X-Request-Id", x.id)
	return h
}

// handshake is one attempt to open a stream with a region.
type handshake struct {
	a      *failover.Attempt
	cancel context.CancelFunc

	conn *websocket.Conn
	resp *http.Response
	err  error
	took time.Duration
}

// result is how the attempt ended, for the failover run.
func (hs *handshake) result() failover.Result {
	if hs.err == nil {
		return failover.Result{Status: hs.resp.StatusCode, Latency: hs.took}
	}
	res := failover.Result{Err: hs.err}
	if hs.resp != nil && errors.Is(hs.err, websocket.ErrBadHandshake) {
		// The region answered; its status says how.
		res.Status, res.RetryAfter, res.Err = hs.resp.StatusCode, retryAfter(hs.resp.Header), nil
	}
	return res
}

// connect opens the region's side of a stream through the failover run,
// before the client sees anything: a failed handshake moves to the next
// region, and with a hedge delay a handshake that has not completed within
// it is raced by one with the next region; the first to complete is kept
// and the others cancelled. It returns the winning handshake (reported as
// a success and still leased), or nil and the last failed one (not yet
// reported: its answer is the client's), or nil, nil if no region was tried.
func (s *wsRelay) connect(r *http.Request, x *exchange, run *failover.Run) (won, lost *handshake) {
	results := make(chan *handshake, s.h.opts.Retry.Attempts+1)
	var pending []*handshake
	start := func(a *failover.Attempt) {
		up := x.upstream(a)
		hs := &handshake{a: a}
		var ctx context.Context
		ctx, hs.cancel = context.WithTimeout(a.Context(), s.h.opts.HandshakeTimeout)
		header := s.upstreamHeader(r, x, up)
		target := s.upstreamURL(up, r, x)
		pending = append(pending, hs)
		go func() {
			hs.conn, hs.resp, hs.err = s.dialer.DialContext(ctx, target, header)
			hs.took = time.Since(hs.a.Start)
			results <- hs
		}()
	}
	a := run.First()
	if a == nil {
		return nil, nil
	}
	start(a)
	// The hedge timer runs from the latest attempt's start.
	var hedge <-chan time.Time
	var hedgeTimer *time.Timer
	if d := s.h.opts.Retry.HedgeDelay; d > 0 {
		hedgeTimer = time.NewTimer(d)
		defer hedgeTimer.Stop()
		hedge = hedgeTimer.C
	}
	retryStarted := func() {
		if hedge != nil {
			hedgeTimer.Reset(s.h.opts.Retry.HedgeDelay)
		}
	}
	for len(pending) > 0 {
		select {
		case <-hedge:
			hedge = nil
			if a := run.Hedge(); a != nil {
				start(a)
			}
		case hs := <-results:
			hs.cancel()
			pending = slices.DeleteFunc(pending, func(p *handshake) bool { return p == hs })
			res := hs.result()
			if hs.err == nil {
				hs.a.Report(res)
				if len(pending) > 0 {
					for _, p := range pending {
						p.a.Cancel(errHedgeLost)
					}
					go s.discard(results, len(pending))
				}
				return hs, nil
			}
			if next := run.Retry(hs.a, res, true); next != nil {
				hs.a.Release()
				start(next)
				retryStarted()
				continue
			}
			if len(pending) > 0 {
				run.Fail(hs.a, res) // another attempt is still on its way
				continue
			}
			return nil, hs
		}
	}
	return nil, lost
}

// errHedgeLost cancels the handshakes that lost a hedged race: a
// cancellation, which says nothing about their regions.
var errHedgeLost = fmt.Errorf("another region's handshake completed first: %w", context.Canceled)

// discard closes the handshakes that lost a hedged race as they complete,
// and releases them.
func (s *wsRelay) discard(results <-chan *handshake, n int) {
	for range n {
		hs := <-results
		hs.cancel()
		if hs.conn != nil {
			_ = hs.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, "hedged handshake not used"), time.Now().Add(time.Second))
			_ = hs.conn.Close()
		}
		hs.a.Done(hs.result())
	}
}

// refused answers the client when the last handshake failed. A region that
// answered (4xx, 5xx) has its status and body passed on, as Deepgram
// clients expect to read them; one that could not be reached is a 502/504.
func (s *wsRelay) refused(w http.ResponseWriter, r *http.Request, x *exchange, hs *handshake) {
	res := hs.result()
	hs.a.Done(res)
	x.err = hs.a.Err(hs.err)
	if res.Status != 0 {
		resp := hs.resp
		h := w.Header()
		for _, k := range []string{"Content-Type", "Retry-After", "Dg-Request-Id", "Dg-Error"} {
			if v := resp.Header.Get(k); v != "" {
				h.Set(k, v)
			}
		}
		x.setRouteHeaders(h)
		x.status = resp.StatusCode
		w.WriteHeader(resp.StatusCode)
		n, _ := io.Copy(w, resp.Body) // gorilla keeps at most 1 KiB of it
		x.bytesOut = n
		s.h.logAccess(r, x, x.up)
		return
	}
	e := upstreamError(r.Context(), x.up.Name, x.err)
	x.setRouteHeaders(w.Header())
	s.h.reject(w, r, x, e)
}
