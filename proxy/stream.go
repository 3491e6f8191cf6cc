package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/health"
)

// stream is one relayed WebSocket session: the client's connection and one
// region leg at a time, owned by two pumps (client to region, region to
// client) that share one state under mu:
//
//	open      a leg is current; the client's messages go to it
//	resuming  the leg was lost; the region pump is opening a new one and
//	          replaying the audio the lost region had not covered with a
//	          final; the client's audio is logged, its control messages
//	          queued, its KeepAlives dropped (answered locally)
//	closing   either side has begun to close, or the router is stopping:
//	          no more resumes
//
//	open -> resuming     the leg ended abnormally (dropped, reset, hung,
//	                     declared down, 1011 other than the client's own
//	                     silence) and the stream can be resumed
//	resuming -> open     a new leg has had the replay and the queued messages
//	resuming -> closing  no region could take the stream: 1011 to the client
//	any -> closing       a close from either side that is not a loss
//
// Only /v1/listen streams of raw audio (linear16, linear32, mulaw, alaw)
// are resumable (see resume.go); every other stream ends with its region,
// as before: 1011 "region connection lost".
type stream struct {
	h      *Handler
	req    *http.Request
	x      *exchange
	client *websocket.Conn
	cur    atomic.Pointer[leg] // the current leg
	grace  time.Duration

	up, down pumpStats // client to region, region to client
	// One read tagger per pump, reused for every message, so that tagging
	// a message's reader allocates nothing.
	upTag, downTag readTagger
	downLimit      io.LimitedReader
	upLimit        messageLimit // the client's message size
	outBuf         [][]byte     // reused by fromRegionResumable

	closeStreamSent atomic.Bool // the client asked for final results
	clientLost      atomic.Bool // the client's socket failed
	clientClosed    atomic.Bool // a close frame has been sent to the client

	clientClose, regionClose atomic.Int32 // the close codes each side sent (1006: none)

	idle      time.Duration // 0: no idle timeout
	last      atomic.Int64  // unix nanos of the last message either way
	idleTimer *time.Timer
	idled     atomic.Bool // closed for idleness

	// The region leg's liveness: see checkRegion.
	ping       time.Duration // 0: no pings
	heard      atomic.Int64  // unix nanos of the last message or pong from the region
	pinged     atomic.Bool   // a ping is out and nothing has been heard since
	delivering atomic.Bool   // the region pump is writing to the client
	pingTimer  *time.Timer
	ended      atomic.Bool         // run has returned
	canMove    atomic.Bool         // resume is set up: the stream can move
	next       atomic.Pointer[leg] // a leg being replayed to, not yet current
	ctx        context.Context     // ends when the client does: stops a move
	cancel     context.CancelFunc

	kind string // the API path, which says how the stream can be drained

	mu       sync.Mutex // serialises data messages to the region; guards the rest
	state    streamState
	draining bool // Finalize and CloseStream have been sent by the router
	drained  atomic.Bool
	resume   *resumeState // nil: not resumable
	pending  []queued     // client control messages queued while resuming
	legs     []*leg       // every leg, first to last
}

// queued is a client's control message held while the stream moves, with
// where in the audio it came, so that it is replayed at the same point.
type queued struct {
	at     int64
	msg    []byte
	binary bool // audio that came while the stream's format was not yet known
}

type streamState int

const (
	streamOpen streamState = iota
	streamResuming
	streamClosing
)

// leg is one region's side of a stream.
type leg struct {
	conn   *websocket.Conn
	a      *failover.Attempt
	run    *failover.Run // the run that opened it, when the stream owns it
	name   string
	closed atomic.Bool // a close frame has been sent to the region
	failed atomic.Bool // the region dropped the stream or stopped answering
	stop   func() bool // stops watching the region's outage
	// A planned move (the region is drained or removed): at its next final,
	// or after planMoveWait, the leg is retired and the stream moves on.
	retiring atomic.Bool
	retired  atomic.Bool
	settled  atomic.Bool
}

// planMoveWait bounds how long a planned move waits for a final.
const planMoveWait = 5 * time.Second

// retire moves the stream off l now (a planned move): nothing is lost,
// since the log holds what l has not covered with a final.
func (st *stream) retire(l *leg) {
	if l.retired.Swap(true) {
		return
	}
	l.closed.Store(true)
	_ = l.conn.NetConn().Close()
}

// planMove asks the stream to leave region r at its next final. It reports
// false for a stream that cannot move, or is not on r.
func (st *stream) planMove(r *health.Region) bool {
	l := st.leg()
	if !st.movable() || l.a.Region != r || l.retiring.Swap(true) {
		return false
	}
	time.AfterFunc(planMoveWait, func() {
		if st.leg() == l && !st.ended.Load() {
			st.retire(l) // no final came: move with what the log holds
		}
	})
	return true
}

// resumeState is what a resumable stream keeps to move to another region.
type resumeState struct {
	log    resumeLog
	proto  protocol // nil until known (container audio)
	header []byte   // a WAV header, sent to a new region before the replay
	logFor time.Duration
	// utterance is utterance_end_ms for a stream whose format comes later.
	utterance float64
	tried     map[string]bool // regions lost by this stream: not tried again
	moving    *Resume         // a move waiting for the new region's first message
	lostAt    time.Time       // when the leg being replaced was lost
}

type pumpStats struct {
	messages int64
	bytes    int64
}

func newStream(h *Handler, r *http.Request, x *exchange, client *websocket.Conn, first *leg) *stream {
	o := h.opts
	st := &stream{h: h, req: r, x: x, client: client, grace: o.CloseGrace, idle: o.StreamIdle,
		kind: r.URL.Path, ping: o.RegionPing}
	st.ctx, st.cancel = context.WithCancel(r.Context())
	if st.grace <= 0 {
		st.grace = 5 * time.Second
	}
	// The client's message size is checked by clientToRegion (upLimit),
	// not gorilla's read limit, whose 1009 has no reason to give.
	// Close frames are relayed by the pumps, not answered by gorilla, so
	// each side's answer comes from the other side.
	client.SetCloseHandler(func(int, string) error { return nil })
	if o.ResumeLog > 0 && o.Retry.Attempts > 1 {
		if st.kind == "/v1/listen" && !hasEncoding(r.URL.RawQuery) {
			// Container audio: a WAV header can be sent again before the
			// replay; decided at the first audio (decideWAV).
			st.resume = &resumeState{tried: map[string]bool{}, logFor: o.ResumeLog, utterance: utteranceEnd(r.URL.RawQuery)}
			st.canMove.Store(true) // until its first audio says otherwise
		}
		if f, ok := rawFormat(r.URL.RawQuery); ok {
			var p protocol
			switch st.kind {
			case "/v1/listen":
				p = &listenTrack{format: f, utterance: utteranceEnd(r.URL.RawQuery)}
			case "/v2/listen":
				p = newFluxTrack(f)
			}
			if p != nil {
				st.resume = &resumeState{proto: p, tried: map[string]bool{},
					log: resumeLog{limit: int(o.ResumeLog.Seconds() * float64(f.rate) * float64(f.frame()))}}
				st.canMove.Store(true)
			}
		}
	}
	st.attach(first)
	return st
}

// attach makes l the current leg.
func (st *stream) attach(l *leg) {
	if st.h.opts.MaxMessageBytes > 0 {
		l.conn.SetReadLimit(st.h.opts.MaxMessageBytes)
	}
	l.conn.SetCloseHandler(func(int, string) error { return nil })
	l.conn.SetPongHandler(func(string) error {
		st.heardRegion()
		return nil
	})
	if l.stop == nil {
		st.watch(l)
	}
	st.legs = append(st.legs, l)
	st.cur.Store(l)
	st.heardRegion()
}

// watch cuts l at once when its region is declared down, rather than
// letting it stall until a timeout.
func (st *stream) watch(l *leg) {
	a := l.a
	l.stop = context.AfterFunc(a.Context(), func() {
		if errors.Is(context.Cause(a.Context()), health.ErrDown) {
			st.lost(l, "region "+l.name+" stopped answering")
		}
	})
}

// movable reports whether the stream can move to another region. Safe
// without mu (a leg lost under a write must not wait for it).
func (st *stream) movable() bool { return st.resume != nil && st.canMove.Load() }

// decideWAV reads a container stream's first audio: a PCM WAV header makes
// the stream movable (the header is kept, sent to a new region first, and
// the audio after it logged); anything else leaves it as it is. Under mu.
func (st *stream) decideWAV(msg []byte) {
	rs := st.resume
	f, n, ok := wavHeader(msg)
	if !ok {
		rs.proto = notMovable{} // answered once
		st.canMove.Store(false)
		if st.state == streamResuming {
			// Moving with nothing logged: this audio goes to the new region.
			st.pending = append(st.pending, queued{at: rs.log.end(), msg: bytes.Clone(msg), binary: true})
		}
		return
	}
	rs.header = bytes.Clone(msg[:n])
	rs.proto = &listenTrack{format: f, utterance: rs.utterance}
	rs.log.limit = int(rs.logFor.Seconds() * float64(f.rate) * float64(f.frame()))
	rs.log.append(msg[n:])
	st.canMove.Store(true)
}

// leg is the current leg.
func (st *stream) leg() *leg { return st.cur.Load() }

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
	st.cancel()
	_ = st.client.Close()
	_ = st.leg().conn.Close()
}

// finish settles every leg with its region.
func (st *stream) finish() {
	if rs := st.resume; rs != nil && rs.moving != nil {
		st.h.resumed(*rs.moving) // no message came after the move
		rs.moving = nil
	}
	for _, l := range st.legs {
		l.settle()
	}
}

// settle ends a leg with its region, once: a leg lost is one more failure
// for it, and its lease comes back (at once for a leg the stream left, so
// that a drained region empties and a recovered one shows no phantom load).
func (l *leg) settle() {
	if l.settled.Swap(true) {
		return
	}
	if l.stop != nil {
		l.stop()
	}
	if l.failed.Load() {
		l.a.Report(failover.Result{Status: http.StatusSwitchingProtocols, Err: errStreamLost})
	}
	l.a.Release()
	if l.run != nil {
		l.run.End()
	}
}

// regionNames lists the regions the stream used, first to last.
func (st *stream) regionNames() string {
	var b strings.Builder
	for i, l := range st.legs {
		if i > 0 {
			b.WriteByte('>')
		}
		b.WriteString(l.name)
	}
	return b.String()
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
		if max := st.h.opts.MaxMessageBytes; max > 0 {
			st.upLimit = messageLimit{r: rd, left: max}
			rd = &st.upLimit
		}
		st.mu.Lock()
		switch {
		case st.draining:
			// The router is stopping and has asked the region for the
			// final results: the client's further audio is not sent.
			_, err = io.Copy(io.Discard, rd)
			if err != nil {
				err = readErr{err}
			}
		case st.resume != nil:
			err = st.fromClientResumable(mt, rd)
		default:
			err = st.copyMessage(st.leg().conn, mt, rd, &st.up, true)
		}
		st.mu.Unlock()
		if err == nil {
			continue
		}
		if isReadErr(err) {
			st.clientEnded(err.(readErr).err)
			return
		}
		if st.movable() {
			// The leg failed under the write: the region pump sees it too
			// and resumes the stream; the audio is in the log.
			continue
		}
		// The region's socket failed; the other pump sees it too and
		// closes the client. Stop reading here.
		_ = st.leg().conn.NetConn().Close()
		st.clientClose.Store(int32(websocket.CloseAbnormalClosure))
		return
	}
}

// fromClientResumable handles one client message of a resumable stream,
// under mu: audio goes into the log before the region, control messages
// are noted, and while resuming nothing goes to the region.
func (st *stream) fromClientResumable(mt int, rd io.Reader) error {
	buf := textBuffers.Get().(*bytes.Buffer)
	defer putTextBuffer(buf)
	if _, err := buf.ReadFrom(rd); err != nil {
		return readErr{err}
	}
	msg := buf.Bytes()
	rs := st.resume
	if mt == websocket.TextMessage {
		if !utf8.Valid(msg) {
			return readErr{errInvalidUTF8}
		}
		typ := string(messageType(msg[:min(len(msg), 256)]))
		switch typ {
		case "CloseStream":
			st.closeStreamSent.Store(true)
		case "KeepAlive":
			if st.state == streamResuming {
				return nil // answered here: the new region will hear audio soon
			}
		}
		if st.state != streamResuming && rs.proto != nil {
			rs.proto.client(typ, msg, rs.log.end())
		}
	} else if rs.proto == nil {
		st.decideWAV(msg) // the first audio says whether the stream can move
	} else if len(msg) > 0 && st.canMove.Load() {
		over := rs.log.over
		if rs.log.append(msg); rs.log.over && !over {
			// Too long without a final: the stream can no longer move.
			st.canMove.Store(false)
			st.h.resumed(Resume{From: st.leg().name, Result: resumeLogFull})
		}
	}
	st.up.messages++
	st.up.bytes += int64(len(msg))
	st.touch()
	if st.state == streamResuming {
		if mt == websocket.TextMessage {
			st.pending = append(st.pending, queued{at: rs.log.end(), msg: bytes.Clone(msg)})
		}
		return nil
	}
	return st.leg().conn.WriteMessage(mt, msg)
}

// clientEnded passes the end of the client's side to the region.
func (st *stream) clientEnded(err error) {
	st.cancel() // a move in progress stops: nobody is left to move for
	st.mu.Lock()
	st.state = streamClosing
	st.mu.Unlock()
	ce := closeFrame(err)
	switch {
	case ce != nil:
		st.clientClose.Store(int32(ce.Code))
		st.closeRegion(ce.Code, ce.Text)
	case errors.Is(err, errInvalidUTF8):
		st.clientClose.Store(int32(websocket.CloseInvalidFramePayloadData))
		st.closeClient(websocket.CloseInvalidFramePayloadData, errInvalidUTF8.Error())
		st.closeRegion(websocket.CloseGoingAway, "client sent invalid data")
	case errors.Is(err, errMessageTooBig):
		// The client hears why; the region that we are going.
		st.clientClose.Store(int32(websocket.CloseMessageTooBig))
		st.closeClient(websocket.CloseMessageTooBig, tooBigReason(st.h.opts.MaxMessageBytes))
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
			_ = st.leg().conn.SetReadDeadline(time.Now().Add(st.grace))
		} else {
			st.closeRegion(websocket.CloseGoingAway, "client went away")
		}
	}
}

// regionToClient pumps each leg's messages to the client; when a leg is
// lost it resumes the stream on another region if it can, and otherwise
// passes the end of the region's side to the client.
func (st *stream) regionToClient() {
	for {
		l := st.leg()
		err := st.pumpLeg(l)
		if st.mayResume(l, err) && st.resumeOn(l, err) {
			continue
		}
		st.regionEnded(err)
		return
	}
}

// pumpLeg relays one leg's messages until it ends.
func (st *stream) pumpLeg(l *leg) error {
	for {
		mt, rd, err := l.conn.NextReader()
		if err != nil {
			return err
		}
		if st.ping > 0 {
			st.heardRegion()
		}
		// While a message is being delivered to a slow client, the region
		// is not being read: its pongs wait, and say nothing of it.
		switch {
		case st.clientLost.Load():
			// Drain: nobody to deliver to, but the region must finish.
			_, err = io.Copy(io.Discard, rd)
		case st.resume != nil && mt == websocket.TextMessage:
			err = st.fromRegionResumable(rd) // marks its own client writes
		default:
			st.delivering.Store(true)
			err = st.copyMessage(st.client, mt, rd, &st.down, false)
			st.delivering.Store(false)
		}
		if err != nil {
			if isReadErr(err) {
				return err.(readErr).err
			}
			// The client's socket failed mid-write; keep draining the region
			// until the other pump has decided how it ends.
			st.clientLost.Store(true)
		}
	}
}

// fromRegionResumable passes one of the region's text messages on, in the
// client's time, and moves the log's start to the last final's end.
func (st *stream) fromRegionResumable(rd io.Reader) error {
	buf := textBuffers.Get().(*bytes.Buffer)
	defer putTextBuffer(buf)
	st.downLimit.R, st.downLimit.N = rd, wholeMessageBytes+1
	_, err := buf.ReadFrom(&st.downLimit)
	st.downLimit.R = nil
	if err != nil {
		return readErr{err}
	}
	msg := buf.Bytes()
	rs := st.resume
	st.mu.Lock()
	if rs.proto == nil { // not known yet to be movable: as it is
		st.mu.Unlock()
		if err := st.client.WriteMessage(websocket.TextMessage, msg); err != nil {
			return err
		}
		st.down.messages++
		st.down.bytes += int64(len(msg))
		st.touch()
		return nil
	}
	before := rs.proto.watermark()
	out := rs.proto.shift(string(messageType(msg[:min(len(msg), 256)])), msg, st.outBuf[:0])
	w := rs.proto.watermark()
	final := w != before
	rs.log.trim(w)
	st.mu.Unlock()
	st.outBuf = out[:0]
	if mv := rs.moving; mv != nil && len(out) > 0 {
		rs.moving = nil
		mv.Gap = time.Since(rs.lostAt)
		st.h.resumed(*mv)
	}
	st.delivering.Store(true)
	defer st.delivering.Store(false)
	for _, m := range out {
		if err := st.client.WriteMessage(websocket.TextMessage, m); err != nil {
			return err
		}
		st.down.messages++
		st.down.bytes += int64(len(m))
	}
	st.touch()
	if l := st.leg(); l.retiring.Load() && final {
		st.retire(l) // a planned move, at a final: the replay is the least it can be
	}
	return nil
}

// mayResume reports whether a leg that ended with err was lost (rather
// than ended) and the stream can move.
func (st *stream) mayResume(l *leg, err error) bool {
	rs := st.resume
	if rs == nil || st.clientLost.Load() || st.drained.Load() || st.ended.Load() || st.h.shuttingDown() {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	// A container stream whose first audio has not come yet has lost
	// nothing: it moves with an empty log.
	if st.state != streamOpen || (rs.proto != nil && !st.canMove.Load()) || rs.log.over || (st.closeStreamSent.Load() && rs.proto != nil && rs.proto.finished(rs.log.end() > rs.log.start)) {
		return false
	}
	if l.failed.Load() || l.retired.Load() {
		return true
	}
	ce := closeFrame(err)
	switch {
	case ce == nil:
		return !errors.Is(err, websocket.ErrReadLimit) // dropped, reset
	case ce.Code == websocket.CloseInternalServerErr:
		// 1011 is the region failing, except the client's own silence.
		return !strings.Contains(ce.Text, "NET-0001") && !strings.Contains(ce.Text, "net0001")
	}
	return false
}

// resumeOn moves the stream from the lost leg l to another region: the
// audio after the last final is replayed there, then what the client sent
// meanwhile, then a Finalize or CloseStream still unanswered. It reports
// false when no region could take the stream (the client is then told).
func (st *stream) resumeOn(l *leg, cause error) bool {
	rs := st.resume
	st.mu.Lock()
	st.state = streamResuming
	st.mu.Unlock()
	if !l.retired.Load() {
		l.failed.Store(true) // a planned move is not the region's fault
	}
	l.closed.Store(true)
	_ = l.conn.NetConn().Close()
	l.settle()
	if rs.moving != nil { // the last move got no message before this loss
		st.h.resumed(*rs.moving)
		rs.moving = nil
	}
	// The regions this loss has cost are not tried again for it; a later
	// loss starts afresh (health and breakers keep down regions out).
	rs.tried = map[string]bool{l.name: true}
	lostAt := time.Now()
	for {
		nl := st.h.ws.reconnect(st.req.WithContext(st.ctx), st.x, rs.tried)
		if nl == nil {
			st.h.resumed(Resume{From: l.name, Result: resumeNoRegion})
			st.mu.Lock()
			st.state = streamClosing
			st.mu.Unlock()
			st.closeClient(websocket.CloseInternalServerErr, "region "+l.name+" lost and no other region could take the stream")
			return false
		}
		st.watch(nl)
		st.next.Store(nl) // kill and abandon reach it during the replay
		st.mu.Lock()
		if st.state == streamClosing {
			st.mu.Unlock()
			st.next.Store(nil)
			nl.closed.Store(true)
			_ = nl.conn.Close()
			nl.settle()
			return false
		}
		// A region that takes the handshake and then stops reading must
		// not hold the stream (and mu) forever.
		_ = nl.conn.SetWriteDeadline(time.Now().Add(st.replayTimeout()))
		replayed, err := st.replay(nl)
		_ = nl.conn.SetWriteDeadline(time.Time{})
		st.next.Store(nil)
		if err == errLogFull {
			st.state = streamClosing
			st.mu.Unlock()
			nl.closed.Store(true)
			_ = nl.conn.Close()
			nl.settle()
			st.closeClient(websocket.CloseInternalServerErr, "region "+l.name+" lost while more audio than the resume log holds waited for a final")
			return false
		}
		if err != nil {
			st.mu.Unlock()
			rs.tried[nl.name] = true
			nl.failed.Store(true)
			nl.closed.Store(true)
			_ = nl.conn.Close()
			nl.settle()
			continue
		}
		rs.moving = &Resume{From: l.name, To: nl.name, Result: resumeOK, Replayed: replayed}
		rs.lostAt = lostAt
		st.attach(nl)
		st.state = streamOpen
		st.mu.Unlock()
		st.h.log.Info("stream moved", zap.String("request_id", st.x.id), zap.String("from", l.name),
			zap.String("to", nl.name), zap.Float64("replayed_seconds", replayed), zap.NamedError("cause", cause))
		return true
	}
}

// replayTimeout bounds writing the replay to a new region.
func (st *stream) replayTimeout() time.Duration {
	return max(st.h.opts.HandshakeTimeout, 2*st.ping, 5*time.Second)
}

// replay sends the new leg the log, with each Finalize the lost region had
// not answered and each control message the client sent meanwhile at its
// place in the audio, then a CloseStream the lost region had not answered.
// Under mu.
func (st *stream) replay(nl *leg) (float64, error) {
	rs := st.resume
	if rs.log.over {
		return 0, errLogFull
	}
	// A replay that fails part-way is tried again on the next region: what
	// it consumed is put back.
	pending := st.pending
	var saved any
	if s, ok := rs.proto.(snapshotter); ok {
		saved = s.snapshot()
	}
	replayed, err := st.replayOnce(nl)
	if err != nil {
		st.pending = pending
		if s, ok := rs.proto.(snapshotter); ok {
			s.restore(saved)
		}
	}
	return replayed, err
}

// replayOnce is one attempt at replay.
func (st *stream) replayOnce(nl *leg) (float64, error) {
	rs := st.resume
	if rs.header != nil {
		if err := nl.conn.WriteMessage(websocket.BinaryMessage, rs.header); err != nil {
			return 0, err
		}
	}
	var first [][]byte
	var at []queued
	if rs.proto != nil {
		first, at = rs.proto.resumed(rs.log.start)
	}
	for _, m := range first {
		if err := nl.conn.WriteMessage(websocket.TextMessage, m); err != nil {
			return 0, err
		}
	}
	events := append(at, make([]queued, 0, len(st.pending)+1)...)
	closing := false
	for _, q := range st.pending {
		closing = closing || string(messageType(q.msg)) == "CloseStream"
		events = append(events, q)
	}
	if st.closeStreamSent.Load() && !closing {
		events = append(events, queued{at: rs.log.end(), msg: []byte(`{"type":"CloseStream"}`)})
	}
	st.pending = nil
	pos := rs.log.start
	for _, ev := range events {
		if err := st.replayAudio(nl, pos, ev.at); err != nil {
			return 0, err
		}
		pos = max(pos, ev.at)
		if rs.proto != nil {
			rs.proto.client(string(messageType(ev.msg)), ev.msg, ev.at)
		}
		mt := websocket.TextMessage
		if ev.binary {
			mt = websocket.BinaryMessage
		}
		if err := nl.conn.WriteMessage(mt, ev.msg); err != nil {
			return 0, err
		}
	}
	if err := st.replayAudio(nl, pos, rs.log.end()); err != nil {
		return 0, err
	}
	if rs.proto == nil {
		return 0, nil
	}
	return rs.proto.audio().seconds(int64(len(rs.log.buf))), nil
}

// replayAudio sends the log's audio between stream offsets from and to.
func (st *stream) replayAudio(nl *leg, from, to int64) error {
	rs := st.resume
	from, to = max(from, rs.log.start), min(to, rs.log.end())
	if to <= from {
		return nil
	}
	const chunk = 32 << 10
	frame := rs.proto.audio().frame()
	b := rs.log.buf[from-rs.log.start : to-rs.log.start]
	for len(b) > 0 {
		n := min(len(b), chunk)
		if n -= n % int(frame); n == 0 {
			n = len(b)
		}
		if err := nl.conn.WriteMessage(websocket.BinaryMessage, b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// regionEnded passes the end of the region's side to the client.
func (st *stream) regionEnded(err error) {
	st.mu.Lock()
	st.state = streamClosing
	st.mu.Unlock()
	l := st.leg()
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
		l.closed.Store(true)
		st.closeClient(websocket.CloseInternalServerErr, "region message too big")
	default:
		st.regionClose.Store(int32(websocket.CloseAbnormalClosure))
		l.closed.Store(true) // nothing can be sent on a dead socket
		if st.closeStreamSent.Load() || endedCleanly(st.clientClose.Load()) {
			// Flux may end a stream after CloseStream with no close frame; a
			// region that drops after the client closed has also finished.
			st.closeClient(websocket.CloseNormalClosure, "")
		} else {
			l.failed.Store(true)
			reason := "region connection lost"
			if !st.movable() && st.kind == "/v1/listen" {
				reason += " (container audio cannot be resumed elsewhere)"
			}
			st.closeClient(websocket.CloseInternalServerErr, reason)
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

// closeRegion sends the current leg a close frame once, and gives it the
// grace period to answer.
func (st *stream) closeRegion(code int, text string) {
	l := st.leg()
	if l.closed.CompareAndSwap(false, true) {
		_ = l.conn.WriteControl(websocket.CloseMessage, closePayload(code, text), time.Now().Add(st.grace))
	}
	_ = l.conn.SetReadDeadline(time.Now().Add(st.grace))
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
// messages (speak, agent), or one between regions, gets 1001 at once on
// both sides.
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
	st.mu.Lock()
	defer st.mu.Unlock()
	l := st.leg()
	if st.draining || l.closed.Load() {
		return
	}
	if st.state == streamResuming {
		st.state = streamClosing
		st.goAway("router shutting down")
		return
	}
	st.draining = true
	st.drained.Store(true)
	for _, m := range msgs {
		if err := l.conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
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
// the pong, an interval later is hung: its leg is lost (see lost). A hung
// region is found within two intervals of its last message.
func (st *stream) checkRegion() {
	if st.ended.Load() {
		return
	}
	if st.delivering.Load() {
		st.heardRegion() // judged once we read from it again
	}
	since := time.Since(time.Unix(0, st.heard.Load()))
	l := st.leg()
	switch {
	case since < st.ping:
		st.pingTimer.Reset(st.ping - since)
	case !st.pinged.Load():
		st.pinged.Store(true)
		_ = l.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(st.ping))
		st.pingTimer.Reset(st.ping)
	default:
		st.lost(l, "region "+l.name+" stopped answering (no pong within "+st.ping.String()+")")
		st.heardRegion()
		st.pingTimer.Reset(st.ping)
	}
}

// lost cuts a leg whose region is hung or declared down, so that nothing
// waits on it: a resumable stream moves to another region; any other ends
// with 1011 and the reason.
func (st *stream) lost(l *leg, reason string) {
	if l.failed.Swap(true) {
		return
	}
	if !st.movable() {
		st.closeClient(websocket.CloseInternalServerErr, reason)
	}
	l.closed.Store(true)
	_ = l.conn.NetConn().Close()
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
	l := st.leg()
	if l.closed.CompareAndSwap(false, true) {
		_ = l.conn.WriteControl(websocket.CloseMessage, closePayload(websocket.CloseGoingAway, reason), deadline)
	}
	st.kill()
}

// kill cuts both sockets at once (and a leg being replayed to).
func (st *stream) kill() {
	st.cancel()
	_ = st.client.NetConn().Close()
	_ = st.leg().conn.NetConn().Close()
	if nl := st.next.Load(); nl != nil {
		_ = nl.conn.NetConn().Close()
	}
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
		if isReadErr(err) {
			// The message never arrived whole (the client went, or it
			// passed the size limit): nothing completes it toward the
			// other side, which hears only the close that follows.
			return err
		}
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

// errMessageTooBig ends a client message over limits.max_message_bytes.
var errMessageTooBig = errors.New("message too big")

// messageLimit reads one client message, failing with errMessageTooBig
// once it passes left bytes. It lives in the stream: no allocation per
// message.
type messageLimit struct {
	r    io.Reader
	left int64
}

func (l *messageLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte // is there more than the limit?
		if n, err := l.r.Read(one[:]); n > 0 {
			return 0, errMessageTooBig
		} else {
			return 0, err
		}
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// tooBigReason is the close reason for a message over the limit (a close
// reason holds at most 123 bytes).
func tooBigReason(limit int64) string {
	size := strconv.FormatInt(limit, 10) + " bytes"
	for _, u := range []struct {
		n    int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if limit >= u.n && limit%u.n == 0 {
			size = strconv.FormatInt(limit/u.n, 10) + " " + u.name
			break
		}
	}
	return "Message over the router's limit of " + size + " (limits.max_message_bytes)."
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
// without decoding it. It returns nil if there is none, or it is not a
// string.
func messageType(msg []byte) []byte {
	v := fieldValue(msg, "type")
	if len(v) < 2 || v[0] != '"' {
		return nil
	}
	return v[1 : len(v)-1]
}

// fieldValue finds the value of the first key k in a small JSON message
// without decoding it: a string with its quotes (no escapes are followed),
// or a number, true, false or null as written; nil if there is none.
func fieldValue(msg []byte, k string) []byte {
	space := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	for i := 0; i+len(k)+2 <= len(msg); i++ {
		if msg[i] != '"' || msg[i+1+len(k)] != '"' || string(msg[i+1:i+1+len(k)]) != k {
			continue
		}
		j := i + len(k) + 2
		for j < len(msg) && space(msg[j]) {
			j++
		}
		if j >= len(msg) || msg[j] != ':' {
			continue
		}
		j++
		for j < len(msg) && space(msg[j]) {
			j++
		}
		if j >= len(msg) {
			return nil
		}
		end := j + 1
		if msg[j] == '"' {
			for end < len(msg) && msg[end] != '"' {
				end++
			}
			if end >= len(msg) {
				return nil
			}
			return msg[j : end+1]
		}
		for end < len(msg) && msg[end] != ',' && msg[end] != '}' && msg[end] != ']' && !space(msg[end]) {
			end++
		}
		return msg[j:end]
	}
	return nil
}
