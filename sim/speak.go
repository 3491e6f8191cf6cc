package sim

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// speaker owns the output side of a stream that sends paced audio (the
// speak streams and the agent): jobs run one at a time in order, so
// messages and audio keep their order while the read loop stays free.
// clear abandons the running job's audio and skips the jobs queued before it
// (but not acknowledgements such as Cleared).
type speaker struct {
	s    *session
	jobs chan speakJob
	done chan struct{}

	mu     sync.Mutex
	gen    context.Context // jobs queued now belong to this generation
	cancel context.CancelFunc
}

type speakJob struct {
	gen    context.Context
	always bool // run even if cleared (acknowledgements)
	run    func(ctx context.Context) error
}

// newSpeaker starts the speaker's goroutine; stop ends it.
// refuseAudio answers audio sent to a speak stream with a Warning, in
// turn with the audio being spoken.
func (sp *speaker) refuseAudio([]byte) bool {
	return sp.ack(func(context.Context) error {
		return sp.s.sendJSON(warning{Type: "Warning", Code: "UNEXPECTED_AUDIO", Description: "the speak stream takes text messages only"})
	})
}

func newSpeaker(s *session) *speaker {
	sp := &speaker{s: s, jobs: make(chan speakJob, 64), done: make(chan struct{})}
	sp.gen, sp.cancel = context.WithCancel(s.ctx)
	go sp.loop()
	return sp
}

func (sp *speaker) loop() {
	defer close(sp.done)
	failed := false
	for j := range sp.jobs {
		ctx := j.gen
		if j.always {
			ctx = sp.s.ctx
		}
		if failed || ctx.Err() != nil {
			continue
		}
		if err := j.run(ctx); err != nil && ctx.Err() == nil {
			// A write failed: the connection is unusable; closing it ends the read loop.
			failed = true
			_ = sp.s.conn.Close()
		}
	}
}

// do queues a job that clear abandons; false if the stream ended first.
func (sp *speaker) do(run func(ctx context.Context) error) bool {
	return sp.queue(false, run)
}

// ack queues a job that clear does not abandon.
func (sp *speaker) ack(run func(ctx context.Context) error) bool {
	return sp.queue(true, run)
}

func (sp *speaker) queue(always bool, run func(ctx context.Context) error) bool {
	sp.mu.Lock()
	gen := sp.gen
	sp.mu.Unlock()
	select {
	case sp.jobs <- speakJob{gen: gen, always: always, run: run}:
		return true
	case <-sp.s.ctx.Done():
		return false
	}
}

// clear abandons queued and running work.
func (sp *speaker) clear() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.cancel()
	sp.gen, sp.cancel = context.WithCancel(sp.s.ctx)
}

// stop ends the stream's context, so queued and running jobs are abandoned,
// and waits for the goroutine to end. Only the goroutine that calls do may
// call stop, once its read loop is over (the client has left or closed).
func (sp *speaker) stop() {
	sp.s.cancel()
	close(sp.jobs)
	<-sp.done
	sp.mu.Lock()
	sp.cancel()
	sp.mu.Unlock()
}

// say sends synthesized text as paced binary frames; an abandoned job
// (clear, stream end) is not an error.
func (sp *speaker) say(ctx context.Context, text string, sampleRate int) error {
	if strings.TrimSpace(text) == "" {
		return nil // nothing to say is no audio, not a moment of silence
	}
	err := sp.s.e.streamAudio(ctx, synthesizeText(text, sampleRate), sp.s.sendBinary)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serveSpeakStream is streaming text-to-speech: GET /v1/speak. Speak
// buffers text; Flush synthesizes it into binary frames followed by Flushed;
// Clear (or the older Reset) drops buffered text and audio not yet sent and
// answers Cleared; Close closes 1000 once earlier work is done. Each Flush
// and Clear takes the next sequence_id, counting from 0.
func (e *Engine) serveSpeakStream(rq *request) {
	p, err := parseSpeakParams(rq.r.URL.Query(), false)
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	s := e.upgrade(rq)
	if s == nil {
		return
	}
	defer s.end()
	if err := s.sendJSON(speakMetadata{Type: "Metadata", RequestID: s.id, ModelName: ttsModelName,
		ModelVersion: modelVersion, ModelUUID: ttsModelUUID}); err != nil {
		return
	}
	sp := newSpeaker(s)
	defer sp.stop()

	var text strings.Builder
	seq := 0
	s.readLoop(readOptions{},
		sp.refuseAudio,
		func(typ string, raw []byte) bool {
			switch typ {
			case "Speak":
				var m struct {
					Text string `json:"text"`
				}
				_ = json.Unmarshal(raw, &m)
				if text.Len() > 0 {
					text.WriteByte(' ')
				}
				text.WriteString(m.Text)
				return true
			case "Flush":
				t, n := text.String(), seq
				text.Reset()
				seq++
				return sp.do(func(ctx context.Context) error {
					if err := sp.say(ctx, t, p.sampleRate); err != nil || ctx.Err() != nil {
						return err
					}
					return s.sendJSON(sequenced{Type: "Flushed", SequenceID: n})
				})
			case "Clear", "Reset":
				n := seq
				text.Reset()
				seq++
				sp.clear()
				return sp.ack(func(context.Context) error {
					return s.sendJSON(sequenced{Type: "Cleared", SequenceID: n})
				})
			case "Close":
				return sp.ack(func(context.Context) error {
					s.closeWith(websocket.CloseNormalClosure, "")
					return nil
				})
			}
			return sp.ack(func(context.Context) error {
				return s.sendJSON(warning{Type: "Warning", Code: "UNKNOWN_MESSAGE_TYPE", Description: "unknown message type " + typ})
			})
		})
}

// serveSpeakV2 is Flux TTS, turn-based streaming text-to-speech: GET
// /v2/speak. It greets with Connected; Speak adds text to the turn; Flush
// ends the turn: SpeechStarted (with the turn's speech_id), the turn's
// audio as binary frames, Flushed and SpeechMetadata (audio length and
// character counts); a Flush with no text gets the Warning
// NO_ACTIVE_SPEECH. Close answers, once earlier turns are done, with
// SessionMetadata (the session's totals) and closes 1000. The simulation
// synthesizes a turn when it is flushed, where Flux TTS starts speaking as
// text arrives; the messages and their order are the same.
func (e *Engine) serveSpeakV2(rq *request) {
	p, err := parseSpeakParams(rq.r.URL.Query(), false)
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	s := e.upgrade(rq)
	if s == nil {
		return
	}
	defer s.end()
	if err := s.sendJSON(speakV2Connected{Type: "Connected", RequestID: s.id, ModelName: ttsModelName,
		ModelVersion: modelVersion, ModelUUIDs: []string{ttsModelUUID}}); err != nil {
		return
	}
	sp := newSpeaker(s)
	defer sp.stop()

	var text strings.Builder
	var session speakV2Session // owned by the speaker's goroutine
	session.Type = "SessionMetadata"
	s.readLoop(readOptions{},
		sp.refuseAudio,
		func(typ string, raw []byte) bool {
			switch typ {
			case "Speak":
				var m struct {
					Text string `json:"text"`
				}
				_ = json.Unmarshal(raw, &m)
				text.WriteString(m.Text) // Speak chunks are parts of one text: LLM tokens carry their own spaces
				return true
			case "Flush":
				t := text.String()
				text.Reset()
				if strings.TrimSpace(t) == "" {
					return sp.ack(func(context.Context) error {
						return s.sendJSON(warning{Type: "Warning", Code: "NO_ACTIVE_SPEECH", Description: "Flush arrived with no active turn: no text was sent since the last Flush"})
					})
				}
				return sp.do(func(ctx context.Context) error {
					return speakV2Turn(ctx, sp, &session, t, p.sampleRate)
				})
			case "Close":
				return sp.ack(func(context.Context) error {
					if err := s.sendJSON(session); err != nil {
						return err
					}
					s.closeWith(websocket.CloseNormalClosure, "")
					return nil
				})
			}
			return sp.ack(func(context.Context) error {
				return s.sendJSON(warning{Type: "Warning", Code: "UNKNOWN_MESSAGE_TYPE", Description: "unknown message type " + typ})
			})
		})
}

// speakV2Turn speaks one /v2/speak turn and counts it in the session.
func speakV2Turn(ctx context.Context, sp *speaker, session *speakV2Session, text string, sampleRate int) error {
	s := sp.s
	id := newSpeechID()
	if err := s.sendJSON(speakV2Speech{Type: "SpeechStarted", SpeechID: id}); err != nil {
		return err
	}
	audio := synthesizeText(text, sampleRate)
	if err := s.e.streamAudio(ctx, audio, s.sendBinary); err != nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return nil // the stream is ending
		}
		return err
	}
	if err := s.sendJSON(speakV2Speech{Type: "Flushed", SpeechID: id}); err != nil {
		return err
	}
	chars, billable := utf8.RuneCountInString(text), billableChars(text)
	ms := int(int64(len(audio)/2) * 1000 / int64(sampleRate))
	session.TotalAudioMS += ms
	session.TotalChars += chars
	session.TotalBillable += billable
	return s.sendJSON(speakV2SpeechMetadata{Type: "SpeechMetadata", SpeechID: id, AudioDurationMS: ms,
		InputChars: chars, BillableChars: billable})
}

// billableChars counts text's characters without control characters.
func billableChars(text string) int {
	n := 0
	for _, r := range text {
		if !unicode.IsControl(r) {
			n++
		}
	}
	return n
}

// newSpeechID mints a /v2/speak turn's identifier, dg_sp_<12 hex digits>.
func newSpeechID() string { return "dg_sp_" + strings.ReplaceAll(newRequestID(), "-", "")[:12] }
