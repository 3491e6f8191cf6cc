package sim

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"

	"github.com/gorilla/websocket"
)

// defaultEOTTimeoutMS is the sim's silence before EndOfTurn when the client
// does not set eot_timeout_ms. (Flux's own default is 5000, but it usually
// ends turns earlier from its confidence; the sim has only the silence.)
const defaultEOTTimeoutMS = 500

// fluxUpdateStepMS is how often Flux sends an Update while audio without
// speech flows: Flux sends one for about every 0.25 s of audio.
const fluxUpdateStepMS = 250

// Flux's end_of_turn_confidence, as the sim reports it.
const (
	fluxTurnConfidence  = 0.1 // StartOfTurn, Update, TurnResumed: the turn goes on
	fluxQuietConfidence = 0   // Update without speech: no turn to end
)

// fluxParams are the query parameters of /v2/listen.
type fluxParams struct {
	listenParams
	eotTimeout int     // ms of silence after a word before EndOfTurn
	eager      float64 // eager_eot_threshold; 0 = no EagerEndOfTurn
}

func parseFluxParams(q url.Values) (fluxParams, error) {
	var p fluxParams
	var err error
	if p.listenParams, err = parseListenParams(q); err != nil {
		return p, err
	}
	if p.eotTimeout, err = intParam(q, "eot_timeout_ms", defaultEOTTimeoutMS, 1, 1<<20); err != nil {
		return p, err
	}
	if v := q.Get("eager_eot_threshold"); v != "" {
		if p.eager, err = strconv.ParseFloat(v, 64); err != nil || p.eager <= 0 || p.eager > 1 {
			return p, fmt.Errorf("eager_eot_threshold must be a number in (0, 1], not %q", v)
		}
	}
	return p, nil
}

// serveFlux is Flux streaming STT: GET /v2/listen. Every server message
// carries request_id and sequence_id (from 0, across all types). Each
// completed word sends a TurnInfo: StartOfTurn for the first word of a
// turn, Update after it (TurnResumed for the first word after an
// EagerEndOfTurn); with eager_eot_threshold set, half of eot_timeout_ms of
// silence after a word sends EagerEndOfTurn; eot_timeout_ms of silence after
// a word, or CloseStream with words pending, sends EndOfTurn, after which
// turn_index counts on. Windows run from the previous turn's end. Sound
// without speech sends an empty Update at every 0.25 s of audio it flows
// in, outside turns, and starts none.
func (e *Engine) serveFlux(rq *request) {
	p, err := parseFluxParams(rq.r.URL.Query())
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
	eagerSent := false // an EagerEndOfTurn went out for the turn's words so far
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
	hooks := transcriptHooks{
		word: func(w window, pending []decodedWord) error {
			event := "Update"
			switch {
			case len(pending) == 1:
				event = "StartOfTurn"
			case eagerSent:
				event = "TurnResumed" // the transcript changed after EagerEndOfTurn
			}
			eagerSent = false
			return turnInfo(event, w, pending, fluxTurnConfidence)
		},
		final: func(w window, words []decodedWord, _ finalCause) error {
			if len(words) == 0 {
				return nil
			}
			err := turnInfo("EndOfTurn", w, words, confidence)
			turn++
			eagerSent = false
			return err
		},
		quiet: func(w window) error {
			return turnInfo("Update", w, nil, fluxQuietConfidence)
		},
	}
	cfg := transcriberConfig{input: p.input, endpointMS: p.eotTimeout, noSpeechStepMS: fluxUpdateStepMS}
	if p.eager > 0 {
		// The silence that ends an utterance doubles as the eager one: once
		// per silence, and only after a word.
		cfg.utteranceEndMS = p.eotTimeout / 2
		hooks.utteranceEnd = func(int64) error {
			eagerSent = true
			return turnInfo("EagerEndOfTurn", window{tr.lastFinal, tr.dec.pos}, tr.pending, p.eager)
		}
	}
	tr = newTranscriber(cfg, hooks)

	// An idle Flux stream fails with INACTIVE_CLIENT before the close.
	timeout := func() {
		_ = send(map[string]any{"type": "Error", "code": "INACTIVE_CLIENT",
			"description": "no audio was received within the timeout window"})
	}
	s.readLoop(readOptions{silence: e.opts.SilenceTimeout, beforeTimeout: timeout},
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
