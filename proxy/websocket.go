package proxy

import (
	"bytes"
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
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/earshot/earshot/auth"
	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/health"
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

func (s *wsRelay) init(h *Handler) {
	s.h = h
	// Write buffers are pooled: an idle stream holds none.
	pool := &sync.Pool{}
	s.dialer = websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		NetDialContext:   (&net.Dialer{Timeout: h.opts.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		HandshakeTimeout: h.opts.HandshakeTimeout,
		ReadBufferSize:   4096,
		WriteBufferSize:  4096,
		WriteBufferPool:  pool,
	}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: h.opts.HandshakeTimeout,
		// 0: read with the buffer net/http already has for the connection
		// (4 KiB) instead of allocating another per stream.
		ReadBufferSize:  0,
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
	run, apiErr := s.h.decide(r, x)
	if apiErr != nil {
		s.h.reject(w, r, x, apiErr)
		return
	}
	defer run.End()
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
	x.serving(won.a)
	run.Served(won.a)
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

	st := newStream(clientConn, upConn, s.h.opts, r.URL.Path)
	st.regionName = up.Name
	// A region declared down ends the stream at once rather than letting it
	// stall until a timeout (the next step is to move it: see stream.lost).
	a := won.a
	stopWatch := context.AfterFunc(a.Context(), func() {
		if errors.Is(context.Cause(a.Context()), health.ErrDown) {
			st.lost("region " + up.Name + " stopped answering")
		}
	})
	if s.h.track(st) {
		st.run()
		s.h.untrack(st)
	} else {
		// Shutdown began during the handshake: end the stream at once.
		st.goAway("router shutting down")
		st.run()
	}
	stopWatch()
	if st.regionFailed.Load() {
		// The region accepted the stream and then dropped it or stopped
		// answering: one more failure for its breaker.
		a.Report(failover.Result{Status: http.StatusSwitchingProtocols, Err: errStreamLost})
	}
	x.bytesIn.Store(st.up.bytes)
	x.bytesOut = st.down.bytes
	x.clientClose, x.regionClose = int(st.clientClose.Load()), int(st.regionClose.Load())
	run.End()
	s.h.logAccess(r, x, up,
		zap.Int("client_close", x.clientClose),
		zap.Int("region_close", x.regionClose),
		zap.Int64("messages_in", st.up.messages),
		zap.Int64("messages_out", st.down.messages),
	)
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
	var hedge <-chan time.Time
	if d := s.h.opts.Retry.HedgeDelay; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		hedge = t.C
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
			if len(pending) > 0 {
				run.Fail(hs.a, res) // a hedge is still on its way
				continue
			}
			if next := run.Retry(hs.a, res, true); next != nil {
				start(next)
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
	x.err = attemptErr(hs.a, hs.err)
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

// stream is one relayed WebSocket session.
type stream struct {
	client, region *websocket.Conn
	grace          time.Duration

	up, down pumpStats // client to region, region to client
	// One read tagger per pump, reused for every message, so that tagging
	// a message's reader allocates nothing.
	upTag, downTag readTagger
	downLimit      io.LimitedReader

	closeStreamSent atomic.Bool // the client asked for final results
	clientLost      atomic.Bool // the client's socket failed
	clientClosed    atomic.Bool // a close frame has been sent to the client
	regionClosed    atomic.Bool // a close frame has been sent to the region

	clientClose, regionClose atomic.Int32 // the close codes each side sent (1006: none)

	idle      time.Duration // 0: no idle timeout
	last      atomic.Int64  // unix nanos of the last message either way
	idleTimer *time.Timer
	idled     atomic.Bool // closed for idleness

	// The region leg's liveness: see checkRegion.
	ping         time.Duration // 0: no pings
	heard        atomic.Int64  // unix nanos of the last message or pong from the region
	pinged       atomic.Bool   // a ping is out and nothing has been heard since
	pingTimer    *time.Timer
	regionFailed atomic.Bool // the region dropped the stream or stopped answering
	ended        atomic.Bool // run has returned

	kind        string // the API path, which says how the stream can be drained
	regionName  string
	regionWrite sync.Mutex // serialises data messages to the region (pump and drain)
	draining    bool       // under regionWrite: Finalize and CloseStream have been sent
	drained     atomic.Bool
}

type pumpStats struct {
	messages int64
	bytes    int64
}

func newStream(client, region *websocket.Conn, o Options, kind string) *stream {
	st := &stream{client: client, region: region, grace: o.CloseGrace, idle: o.StreamIdle, kind: kind, ping: o.RegionPing}
	if st.grace <= 0 {
		st.grace = 5 * time.Second
	}
	if o.MaxMessageBytes > 0 {
		client.SetReadLimit(o.MaxMessageBytes)
		region.SetReadLimit(o.MaxMessageBytes)
	}
	// Close frames are relayed by the pumps, not answered by gorilla, so
	// each side's answer comes from the other side.
	noop := func(int, string) error { return nil }
	client.SetCloseHandler(noop)
	region.SetCloseHandler(noop)
	region.SetPongHandler(func(string) error {
		st.heardRegion()
		return nil
	})
	return st
}

// run relays until both directions have ended, then closes both sockets.
func (st *stream) run() {
	if st.idle > 0 {
		st.touch()
		st.idleTimer = time.AfterFunc(st.idle, st.checkIdle)
		defer st.idleTimer.Stop()
	}
	if st.ping > 0 {
		st.heardRegion()
		st.pingTimer = time.AfterFunc(st.ping, st.checkRegion)
		defer st.pingTimer.Stop()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.regionToClient()
	}()
	st.clientToRegion()
	<-done
	st.ended.Store(true)
	_ = st.client.Close()
	_ = st.region.Close()
}

// clientToRegion pumps the client's messages to the region until the client
// closes or fails, then tells the region.
func (st *stream) clientToRegion() {
	for {
		mt, rd, err := st.client.NextReader()
		if err != nil {
			st.clientEnded(err)
			return
		}
		st.regionWrite.Lock()
		if st.draining {
			// The router is stopping and has asked the region for the
			// final results: the client's further audio is not sent.
			_, err = io.Copy(io.Discard, rd)
			st.regionWrite.Unlock()
			if err != nil {
				st.clientEnded(err)
				return
			}
			continue
		}
		err = st.copyMessage(st.region, mt, rd, &st.up, true)
		st.regionWrite.Unlock()
		if err != nil {
			if isReadErr(err) {
				st.clientEnded(err.(readErr).err)
				return
			}
			// The region's socket failed; the other pump sees it too and
			// closes the client. Stop reading here.
			_ = st.region.NetConn().Close()
			st.clientClose.Store(int32(websocket.CloseAbnormalClosure))
			return
		}
	}
}

// clientEnded passes the end of the client's side to the region.
func (st *stream) clientEnded(err error) {
	ce := closeFrame(err)
	switch {
	case ce != nil:
		st.clientClose.Store(int32(ce.Code))
		st.closeRegion(ce.Code, ce.Text)
	case errors.Is(err, errInvalidUTF8):
		st.clientClose.Store(int32(websocket.CloseInvalidFramePayloadData))
		st.closeClient(websocket.CloseInvalidFramePayloadData, errInvalidUTF8.Error())
		st.closeRegion(websocket.CloseGoingAway, "client sent invalid data")
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has sent the client 1009; the region hears we are going.
		st.clientClose.Store(int32(websocket.CloseMessageTooBig))
		st.clientClosed.Store(true)
		st.closeRegion(websocket.CloseGoingAway, "client message too big")
	default:
		// The socket died with no close frame. A client that sent CloseStream
		// (the Go SDK then drops TCP) still gets its final results drained
		// from the region so the region can close cleanly; otherwise the
		// region is told the client went away.
		st.clientClose.Store(int32(websocket.CloseAbnormalClosure))
		st.clientLost.Store(true)
		if code := st.regionClose.Load(); endedCleanly(code) {
			// The region's close went to a client that is gone: answer it.
			st.closeRegion(int(code), "")
		} else if st.closeStreamSent.Load() {
			_ = st.region.SetReadDeadline(time.Now().Add(st.grace))
		} else {
			st.closeRegion(websocket.CloseGoingAway, "client went away")
		}
	}
}

// regionToClient pumps the region's messages to the client until the region
// closes or fails, then tells the client.
func (st *stream) regionToClient() {
	for {
		mt, rd, err := st.region.NextReader()
		if err != nil {
			st.regionEnded(err)
			return
		}
		if st.ping > 0 {
			st.heardRegion()
		}
		if st.clientLost.Load() {
			// Drain: nobody to deliver to, but the region must finish.
			_, err = io.Copy(io.Discard, rd)
		} else {
			err = st.copyMessage(st.client, mt, rd, &st.down, false)
		}
		if err != nil {
			if isReadErr(err) {
				st.regionEnded(err.(readErr).err)
				return
			}
			// The client's socket failed mid-write; keep draining the region
			// until the other pump has decided how it ends.
			st.clientLost.Store(true)
		}
	}
}

// regionEnded passes the end of the region's side to the client.
func (st *stream) regionEnded(err error) {
	ce := closeFrame(err)
	switch {
	case ce != nil:
		st.regionClose.Store(int32(ce.Code))
		if st.clientLost.Load() {
			// Answer the region's close ourselves: the client cannot.
			st.closeRegion(ce.Code, "")
		}
		if st.drained.Load() && ce.Code == websocket.CloseNormalClosure {
			// The region finished after the router asked it to: the client
			// has every result, and learns the router is going away.
			st.closeRegion(ce.Code, "")
			st.closeClient(websocket.CloseGoingAway, "router shutting down")
			return
		}
		st.closeClient(ce.Code, ce.Text)
	case errors.Is(err, websocket.ErrReadLimit):
		st.regionClose.Store(int32(websocket.CloseMessageTooBig))
		st.regionClosed.Store(true)
		st.closeClient(websocket.CloseInternalServerErr, "region message too big")
	default:
		st.regionClose.Store(int32(websocket.CloseAbnormalClosure))
		st.regionClosed.Store(true) // nothing can be sent on a dead socket
		if st.closeStreamSent.Load() || endedCleanly(st.clientClose.Load()) {
			// Flux may end a stream after CloseStream with no close frame; a
			// region that drops after the client closed has also finished.
			st.closeClient(websocket.CloseNormalClosure, "")
		} else {
			st.regionFailed.Store(true)
			st.closeClient(websocket.CloseInternalServerErr, "region connection lost")
		}
	}
}

// closeFrame returns the close frame a peer sent, or nil if the socket ended
// without one (gorilla reports that as a CloseError with code 1006).
func closeFrame(err error) *websocket.CloseError {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
		return ce
	}
	return nil
}

// closeRegion sends the region a close frame once, and gives it the grace
// period to answer.
func (st *stream) closeRegion(code int, text string) {
	if st.regionClosed.CompareAndSwap(false, true) {
		_ = st.region.WriteControl(websocket.CloseMessage, closePayload(code, text), time.Now().Add(st.grace))
	}
	_ = st.region.SetReadDeadline(time.Now().Add(st.grace))
}

// closeClient sends the client a close frame once, and gives it the grace
// period to answer.
func (st *stream) closeClient(code int, text string) {
	if st.clientClosed.CompareAndSwap(false, true) && !st.clientLost.Load() {
		_ = st.client.WriteControl(websocket.CloseMessage, closePayload(code, text), time.Now().Add(st.grace))
	}
	_ = st.client.SetReadDeadline(time.Now().Add(st.grace))
}

// drain ends a stream gracefully when the router stops: the region is
// asked to finish (Finalize, then CloseStream, for streaming STT; CloseStream
// for Flux), its final results and Metadata still reach the client, and
// when the region closes the client gets 1001. A stream with no such
// messages (speak, agent) gets 1001 at once on both sides.
func (st *stream) drain() {
	var msgs []string
	switch st.kind {
	case "/v1/listen":
		msgs = []string{`{"type":"Finalize"}`, `{"type":"CloseStream"}`}
	case "/v2/listen":
		msgs = []string{`{"type":"CloseStream"}`}
	default:
		st.goAway("router shutting down")
		return
	}
	st.regionWrite.Lock()
	defer st.regionWrite.Unlock()
	if st.draining || st.regionClosed.Load() {
		return
	}
	st.draining = true
	st.drained.Store(true)
	for _, m := range msgs {
		if err := st.region.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			st.goAway("router shutting down")
			return
		}
	}
	st.closeStreamSent.Store(true)
}

// heardRegion notes that the region is alive.
func (st *stream) heardRegion() {
	st.heard.Store(time.Now().UnixNano())
	st.pinged.Store(false)
}

// checkRegion runs on the ping timer. A region that has sent nothing for
// the ping interval is pinged; one that still has sent nothing, not even
// the pong, an interval later is hung: the stream ends (see lost). A hung
// region is found within two intervals of its last message.
func (st *stream) checkRegion() {
	if st.ended.Load() {
		return
	}
	since := time.Since(time.Unix(0, st.heard.Load()))
	switch {
	case since < st.ping:
		st.pingTimer.Reset(st.ping - since)
	case !st.pinged.Load():
		st.pinged.Store(true)
		_ = st.region.WriteControl(websocket.PingMessage, nil, time.Now().Add(st.ping))
		st.pingTimer.Reset(st.ping)
	default:
		st.lost("region " + st.regionName + " stopped answering (no pong within " + st.ping.String() + ")")
	}
}

// lost ends a stream whose region is hung or declared down: the client gets
// 1011 with the reason at once, and the region's socket is cut, so nothing
// waits on it. (Moving the stream to another region instead is the next
// step: the session keeps the client and replaces this leg.)
func (st *stream) lost(reason string) {
	st.regionFailed.Store(true)
	st.closeClient(websocket.CloseInternalServerErr, reason)
	st.regionClosed.Store(true)
	_ = st.region.NetConn().Close()
}

// goAway ends the stream from the router's side: both peers get 1001.
func (st *stream) goAway(reason string) {
	st.closeRegion(websocket.CloseGoingAway, reason)
	st.closeClient(websocket.CloseGoingAway, reason)
}

// abandon ends a stream the drain deadline has caught: each peer gets a
// 1001 if one can be written at once, then both sockets are cut.
func (st *stream) abandon() {
	const reason = "router shutting down"
	deadline := time.Now().Add(50 * time.Millisecond)
	if st.clientClosed.CompareAndSwap(false, true) && !st.clientLost.Load() {
		_ = st.client.WriteControl(websocket.CloseMessage, closePayload(websocket.CloseGoingAway, reason), deadline)
	}
	if st.regionClosed.CompareAndSwap(false, true) {
		_ = st.region.WriteControl(websocket.CloseMessage, closePayload(websocket.CloseGoingAway, reason), deadline)
	}
	st.kill()
}

// kill cuts both sockets at once.
func (st *stream) kill() {
	_ = st.client.NetConn().Close()
	_ = st.region.NetConn().Close()
}

// closePayload formats a close frame; codes that may not be sent on the
// wire (1005 no status, 1006 abnormal, 1015 TLS) become an empty close.
func closePayload(code int, text string) []byte {
	switch code {
	case websocket.CloseNoStatusReceived, websocket.CloseAbnormalClosure, websocket.CloseTLSHandshake:
		return []byte{}
	}
	if len(text) > 123 { // a control frame's payload is at most 125 bytes
		text = strings.ToValidUTF8(text[:123], "")
	}
	return websocket.FormatCloseMessage(code, text)
}

// readErr marks an error reading the source side of a message copy.
type readErr struct{ err error }

func (e readErr) Error() string { return e.err.Error() }

func isReadErr(err error) bool {
	_, ok := err.(readErr)
	return ok
}

// copyMessage copies one message to dst, keeping its type. A client's text
// message is sniffed for CloseStream, which changes how the stream ends.
// The copy itself does not allocate (gorilla's reader and writer do: see
// docs/benchmarks.md).
func (st *stream) copyMessage(dst *websocket.Conn, mt int, src io.Reader, stats *pumpStats, fromClient bool) error {
	if fromClient && mt == websocket.TextMessage {
		return st.copyControl(dst, src, stats)
	}
	tag := &st.upTag
	if !fromClient {
		tag = &st.downTag
		// Toward the client: a message that fits in a pooled buffer is
		// read whole and sent with WriteMessage, which frames it without
		// allocating. A larger one (synthesised speech) streams through.
		buf := textBuffers.Get().(*bytes.Buffer)
		defer putTextBuffer(buf)
		st.downLimit.R, st.downLimit.N = src, wholeMessageBytes+1
		_, err := buf.ReadFrom(&st.downLimit)
		st.downLimit.R = nil
		if err != nil {
			return readErr{err}
		}
		if buf.Len() <= wholeMessageBytes {
			if err := dst.WriteMessage(mt, buf.Bytes()); err != nil {
				return err
			}
			stats.messages++
			stats.bytes += int64(buf.Len())
			st.touch()
			return nil
		}
		src = io.MultiReader(bytes.NewReader(buf.Bytes()), src)
	}
	w, err := dst.NextWriter(mt)
	if err != nil {
		return err
	}
	tag.r = src
	n, err := copyReads(w, tag)
	tag.r = nil
	if err != nil {
		_ = w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	stats.messages++
	stats.bytes += n
	st.touch()
	return nil
}

// touch records activity, for the idle timeout.
func (st *stream) touch() {
	if st.idle > 0 {
		st.last.Store(time.Now().UnixNano())
	}
}

// checkIdle runs on the idle timer: a stream with no message either way for
// the idle timeout is closed with 1011 on both sides; otherwise the timer
// is set for the rest of the timeout.
func (st *stream) checkIdle() {
	since := time.Since(time.Unix(0, st.last.Load()))
	if since < st.idle {
		st.idleTimer.Reset(st.idle - since)
		return
	}
	st.idled.Store(true)
	// The client first: once the region is closed, its answer could be
	// relayed to the client in place of the reason.
	st.closeClient(websocket.CloseInternalServerErr, "stream idle: no message for "+st.idle.String())
	st.closeRegion(websocket.CloseInternalServerErr, "stream idle")
}

// copyControl copies a client's text message whole, noting CloseStream.
// Text must be UTF-8 (RFC 6455); control messages are small, and the read
// limit bounds the rest.
func (st *stream) copyControl(dst *websocket.Conn, src io.Reader, stats *pumpStats) error {
	buf := textBuffers.Get().(*bytes.Buffer)
	defer putTextBuffer(buf)
	if _, err := buf.ReadFrom(src); err != nil {
		return readErr{err}
	}
	msg := buf.Bytes()
	if !utf8.Valid(msg) {
		return readErr{errInvalidUTF8}
	}
	if isCloseStream(msg[:min(len(msg), 256)]) {
		st.closeStreamSent.Store(true)
	}
	if err := dst.WriteMessage(websocket.TextMessage, msg); err != nil {
		return err
	}
	stats.messages++
	stats.bytes += int64(len(msg))
	st.touch()
	return nil
}

var (
	textBuffers    = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	errInvalidUTF8 = errors.New("invalid UTF-8 in a text message")
)

// putTextBuffer returns a message buffer to the pool, unless a rare large
// message grew it.
func putTextBuffer(buf *bytes.Buffer) {
	if buf.Cap() <= 64<<10 {
		buf.Reset()
		textBuffers.Put(buf)
	}
}

// wholeMessageBytes is the largest message sent to the client whole.
const wholeMessageBytes = 64 << 10

// copyReads copies a message from src, a pump's reused tagger, to w: w's
// ReadFrom reads straight into the frame buffer, and the tag tells a failed
// read (the source side ended) from a failed write.
func copyReads(w io.Writer, src *readTagger) (int64, error) {
	n, err := io.Copy(w, src)
	if err != nil {
		if re, ok := err.(readErr); ok {
			return n, re
		}
	}
	return n, err
}

type readTagger struct{ r io.Reader }

func (t *readTagger) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		err = readErr{err}
	}
	return n, err
}

// isCloseStream reports whether msg is {"type":"CloseStream"}, by a sniff of
// its type field.
func isCloseStream(msg []byte) bool {
	return string(messageType(msg)) == "CloseStream"
}

// endedCleanly reports whether a side sent a close frame.
func endedCleanly(code int32) bool {
	return code != 0 && code != websocket.CloseAbnormalClosure
}

// messageType finds the value of the first "type" key in a JSON object
// without decoding it. It returns nil if there is none.
func messageType(msg []byte) []byte {
	const key = `"type"`
	for i := 0; i+len(key) <= len(msg); i++ {
		if msg[i] != '"' || string(msg[i:i+len(key)]) != key {
			continue
		}
		j := i + len(key)
		for j < len(msg) && (msg[j] == ' ' || msg[j] == '\t' || msg[j] == '\n' || msg[j] == '\r') {
			j++
		}
		if j >= len(msg) || msg[j] != ':' {
			continue
		}
		j++
		for j < len(msg) && (msg[j] == ' ' || msg[j] == '\t' || msg[j] == '\n' || msg[j] == '\r') {
			j++
		}
		if j >= len(msg) || msg[j] != '"' {
			return nil
		}
		end := j + 1
		for end < len(msg) && msg[end] != '"' {
			end++
		}
		if end >= len(msg) {
			return nil
		}
		return msg[j+1 : end]
	}
	return nil
}
