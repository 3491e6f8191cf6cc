package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// Close reasons Deepgram uses. A close frame's reason holds at most 123
// bytes; Deepgram's timeout sentences fit.
const (
	reasonUndecodable = "DATA-0000"
	// reasonSilence is NET-0001's sentence: no audio or text from the client.
	reasonSilence = "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
)

// session is one open WebSocket stream.
type session struct {
	e       *Engine
	conn    *websocket.Conn
	id      string
	path    string
	started time.Time
	// ctx ends when the stream ends or the engine closes.
	ctx    context.Context
	cancel context.CancelFunc

	wmu       sync.Mutex // serialises data frames
	closeSent atomic.Bool
	closeCode atomic.Int64 // the close code sent, for the log line
	closeText atomic.Value // string
	audio     atomic.Int64 // bytes of audio received
}

// upgrade answers the handshake, after which the stream belongs to the
// returned session; nil means the handshake failed and was answered.
func (e *Engine) upgrade(rq *request) *session {
	if !rq.stopUnblock() || rq.ctx.Err() != nil {
		return nil // the request already ended
	}
	up := websocket.Upgrader{
		ReadBufferSize:  16 << 10,
		WriteBufferSize: 16 << 10,
		CheckOrigin:     func(*http.Request) bool { return true }, // browsers are clients too
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			e.writeError(w, rq.id, status, "Bad Request", reason.Error())
		},
	}
	// Browsers authenticate with Sec-WebSocket-Protocol: token, <key>; like
	// Deepgram, echo the scheme or the browser drops the connection.
	if protos := websocket.Subprotocols(rq.r); len(protos) > 0 &&
		(strings.EqualFold(protos[0], "token") || strings.EqualFold(protos[0], "bearer")) {
		up.Subprotocols = []string{protos[0]}
	}
	hdr := http.Header{}
	hdr.Set(HeaderRequestID, rq.id)
	hdr.Set(HeaderEngine, e.opts.Region)
	conn, err := up.Upgrade(rq.w, rq.r, hdr)
	if err != nil {
		return nil
	}
	conn.SetReadLimit(64 << 20)
	if !e.track(conn) {
		abortConn(conn.NetConn()) // as a dead engine would: no close frame
		return nil
	}
	ctx, cancel := context.WithCancel(e.ctx)
	return &session{e: e, conn: conn, id: rq.id, path: rq.r.URL.Path, started: time.Now(), ctx: ctx, cancel: cancel}
}

// end releases the stream and logs its one line.
func (s *session) end() {
	s.cancel()
	_ = s.conn.Close()
	s.e.untrack(s.conn)
	reason, _ := s.closeText.Load().(string)
	s.e.log.Info("stream",
		zap.String("path", s.path), zap.String("request_id", s.id),
		zap.Duration("duration", time.Since(s.started)),
		zap.Int64("audio_bytes", s.audio.Load()),
		zap.Int64("close_code", s.closeCode.Load()), zap.String("close_reason", reason))
}

func (s *session) sendJSON(v any) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.conn.WriteJSON(v)
}

func (s *session) sendBinary(p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.conn.WriteMessage(websocket.BinaryMessage, p)
}

// closeWith sends a close frame and gives the client closeGrace to answer
// it; the read loop then ends.
func (s *session) closeWith(code int, reason string) {
	if !s.closeSent.CompareAndSwap(false, true) {
		return
	}
	s.closeCode.Store(int64(code))
	s.closeText.Store(reason)
	s.wmu.Lock()
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	s.wmu.Unlock()
	_ = s.conn.SetReadDeadline(time.Now().Add(closeGrace))
}

// readOptions shape a session's read loop.
type readOptions struct {
	silence time.Duration // 0 = no silence timeout
	// keepAliveAlways lets KeepAlive reset the silence timeout before any
	// audio (the agent); STT streams count it only after audio.
	keepAliveAlways bool
	// beforeTimeout, if set, sends what precedes the silence timeout's
	// close frame (the listen stream's Metadata, Flux's Error).
	beforeTimeout func()
}

// readLoop reads the client's messages until the client leaves, a handler
// returns false, or the silence timeout passes (close 1011 NET-0001, after
// beforeTimeout). Audio and every text message are activity; KeepAlive is
// activity only once audio has been heard, unless keepAliveAlways.
func (s *session) readLoop(o readOptions, onBinary func([]byte) bool, onText func(typ string, raw []byte) bool) {
	last, heard := time.Now(), false
	for {
		if o.silence > 0 && !s.closeSent.Load() {
			_ = s.conn.SetReadDeadline(last.Add(o.silence))
		}
		mt, data, err := s.conn.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && o.silence > 0 && !s.closeSent.Load() {
				if o.beforeTimeout != nil {
					o.beforeTimeout()
				}
				s.closeWith(websocket.CloseInternalServerErr, reasonSilence)
			}
			return
		}
		if s.closeSent.Load() {
			continue // draining until the client's close frame
		}
		switch mt {
		case websocket.BinaryMessage:
			s.audio.Add(int64(len(data)))
			last, heard = time.Now(), true
			if !onBinary(data) {
				return
			}
		case websocket.TextMessage:
			var m typed
			_ = json.Unmarshal(data, &m) // malformed control messages are ignored, not fatal
			if m.Type != "KeepAlive" || heard || o.keepAliveAlways {
				last = time.Now()
			}
			if !onText(m.Type, data) {
				return
			}
		}
	}
}

// drain waits (up to closeGrace) for the client to answer our close frame.
func (s *session) drain() {
	for {
		if _, _, err := s.conn.NextReader(); err != nil {
			return
		}
	}
}

// noSpeechStepMS is how often a /v1/listen stream reports audio without
// speech: at every whole second of audio.
const noSpeechStepMS = 1000

// serveListenStream is streaming STT: GET /v1/listen (see the package
// documentation for when results are sent).
func (e *Engine) serveListenStream(rq *request) {
	p, err := parseListenParams(rq.r.URL.Query())
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	s := e.upgrade(rq)
	if s == nil {
		return
	}
	defer s.end()

	channel := []int{0, 1}
	meta := resultsMetadata{RequestID: s.id, ModelInfo: sttModelInfo(), ModelUUID: sttModelUUID, Extra: p.extra}
	var tr *transcriber
	results := func(w window, words []decodedWord, final, speechFinal, fromFinalize bool) error {
		sr := tr.sampleRate()
		return s.sendJSON(resultsMessage{
			Type: "Results", ChannelIndex: channel,
			Start: seconds(w.start, sr), Duration: seconds(w.end-w.start, sr),
			IsFinal: final, SpeechFinal: speechFinal, FromFinalize: fromFinalize,
			Channel:  listenChannel{Alternatives: []alternative{alternativeOf(words, sr)}},
			Metadata: meta,
		})
	}
	hooks := transcriptHooks{
		final: func(w window, words []decodedWord, cause finalCause) error {
			return results(w, words, true, cause == causeEndpoint, cause == causeFinalize)
		},
	}
	if p.vadEvents {
		hooks.speechStarted = func(at int64) error {
			return s.sendJSON(speechStartedMessage{Type: "SpeechStarted", Channel: channel, Timestamp: seconds(at, tr.sampleRate())})
		}
	}
	cfg := transcriberConfig{input: p.input, endpointMS: p.endpointing,
		noSpeechStepMS: noSpeechStepMS, noSpeechFinals: true}
	if p.interim {
		hooks.word = func(w window, pending []decodedWord) error {
			return results(w, pending, false, false, false)
		}
		hooks.quiet = func(w window) error {
			return results(w, nil, false, false, false)
		}
		cfg.utteranceEndMS = p.utteranceEnd // Deepgram sends UtteranceEnd only with interim results
		hooks.utteranceEnd = func(lastWordEnd int64) error {
			return s.sendJSON(utteranceEndMessage{Type: "UtteranceEnd", Channel: channel, LastWordEnd: seconds(lastWordEnd, tr.sampleRate())})
		}
	}
	tr = newTranscriber(cfg, hooks)
	sum := sha256.New()
	metadata := func(sha string) error {
		return s.sendJSON(streamMetadata{Type: "Metadata", listenMetadata: listenMetadata{
			TransactionKey: "deprecated", RequestID: s.id,
			Sha256: sha, Created: created(s.started),
			Duration: tr.duration(), Channels: tr.dec.channels,
			Models: []string{sttModelUUID}, ModelInfo: map[string]modelInfo{sttModelUUID: sttModelInfo()},
			Warnings: tr.dec.warnings(), Extra: p.extra,
		}})
	}

	closing := func() error { return metadata(hex.EncodeToString(sum.Sum(nil))) }
	// Deepgram sends Metadata before a timeout close too, its sha256 "incomplete".
	timeout := func() { _ = metadata("incomplete") }
	s.readLoop(readOptions{silence: e.opts.SilenceTimeout, beforeTimeout: timeout},
		func(audio []byte) bool {
			if len(audio) == 0 { // an empty binary frame closes the stream
				s.finishListen(tr, closing)
				return false
			}
			sum.Write(audio)
			if err := tr.Feed(audio); err != nil {
				s.undecodable(err)
				return false
			}
			return true
		},
		func(typ string, _ []byte) bool {
			switch typ {
			case "Finalize":
				if err := tr.Finalize(); err != nil {
					return false
				}
			case "CloseStream":
				s.finishListen(tr, closing)
				return false
			}
			return true // KeepAlive and unknown types
		})
}

// undecodable ends a stream whose audio broke the encoding (1008 DATA-0000).
func (s *session) undecodable(err error) {
	if errors.Is(err, ErrUndecodable) {
		s.e.log.Debug("undecodable audio", zap.String("request_id", s.id), zap.Error(err))
		s.closeWith(websocket.ClosePolicyViolation, reasonUndecodable)
		s.drain()
	}
	// Any other error is a failed write: the client is gone.
}

// finishListen flushes the last finals, sends Metadata and closes 1000.
func (s *session) finishListen(tr *transcriber, metadata func() error) {
	if err := tr.Close(); err != nil {
		s.undecodable(err)
		return
	}
	if err := metadata(); err != nil {
		return
	}
	s.closeWith(websocket.CloseNormalClosure, "")
	s.drain()
}
