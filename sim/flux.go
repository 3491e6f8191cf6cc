package sim

import (
	"encoding/json"

	"github.com/gorilla/websocket"
)

// defaultEOTTimeoutMS is the sim's silence before EndOfTurn when the client
// does not set eot_timeout_ms. (Flux's own default is 5000, but it usually
// ends turns earlier from its confidence; the sim has only the silence.)
const defaultEOTTimeoutMS = 500

// serveFlux is Flux streaming STT: GET /v2/listen. Each completed word sends
// a TurnInfo (StartOfTurn for the first word of a turn, Update after); a
// word followed by eot_timeout_ms of silence, or CloseStream with words
// pending, sends EndOfTurn. Windows run from the previous turn's end.
func (e *Engine) serveFlux(rq *request) {
	q := rq.r.URL.Query()
	p, err := parseListenParams(q)
	if err == nil {
		p.endpointing, err = intParam(q, "eot_timeout_ms", defaultEOTTimeoutMS, 1, 1<<20)
	}
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	s := e.upgrade(rq)
	if s == nil {
		return
	}
	defer s.end()

	seq := 0 // every server message takes the next sequence_id
	send := func(v map[string]any) error {
		v["request_id"] = s.id
		v["sequence_id"] = seq
		seq++
		return s.sendJSON(v)
	}
	if err := send(map[string]any{"type": "Connected"}); err != nil {
		return
	}
	var tr *transcriber
	turn := 0
	turnInfo := func(event string, w window, words []decodedWord, eot float64) error {
		sr := tr.sampleRate()
		alt := alternativeOf(words, sr)
		fw := make([]fluxWord, 0, len(words))
		for _, w := range alt.Words {
			fw = append(fw, fluxWord{Word: w.Word, Confidence: w.Confidence})
		}
		ti := turnInfo{Type: "TurnInfo", RequestID: s.id, SequenceID: seq, Event: event, TurnIndex: turn,
			AudioWindowStart: seconds(w.start, sr), AudioWindowEnd: seconds(w.end, sr),
			Transcript: alt.Transcript, Words: fw, EndOfTurnConfidence: eot}
		seq++
		return s.sendJSON(ti)
	}
	tr = newTranscriber(transcriberConfig{input: p.input, endpointMS: p.endpointing}, transcriptHooks{
		word: func(w window, pending []decodedWord) error {
			event := "Update"
			if len(pending) == 1 {
				event = "StartOfTurn"
			}
			return turnInfo(event, w, pending, 0.1)
		},
		final: func(w window, words []decodedWord, _ finalCause) error {
			if len(words) == 0 {
				return nil
			}
			err := turnInfo("EndOfTurn", w, words, confidence)
			turn++
			return err
		},
	})

	s.readLoop(readOptions{silence: e.opts.SilenceTimeout},
		func(audio []byte) bool {
			if err := tr.Feed(audio); err != nil {
				s.undecodable(err)
				return false
			}
			return true
		},
		func(typ string, raw []byte) bool {
			switch typ {
			case "Configure":
				// Echo what was configured, as ConfigureSuccess does.
				m := map[string]any{}
				_ = json.Unmarshal(raw, &m)
				m["type"] = "ConfigureSuccess"
				return send(m) == nil
			case "CloseStream":
				if err := tr.Close(); err != nil {
					s.undecodable(err)
					return false
				}
				s.closeWith(websocket.CloseNormalClosure, "")
				s.drain()
				return false
			}
			return true // KeepAlive and unknown types
		})
}
