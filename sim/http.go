package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// listenParams are the query parameters the simulated STT honours.
type listenParams struct {
	input        audioInput // encoding, sample_rate, channels
	interim      bool
	endpointing  int // ms; 0 = off
	utteranceEnd int // ms; 0 = off
	vadEvents    bool
	extra        map[string]string
}

const (
	defaultListenRate  = 16000
	defaultEndpointing = 10 // ms, as Deepgram
	defaultSpeakRate   = 24000
)

func parseListenParams(q url.Values) (listenParams, error) {
	p := listenParams{endpointing: defaultEndpointing}
	var err error
	p.input.encoding = strings.ToLower(q.Get("encoding"))
	if err = checkListenEncoding(p.input.encoding); err != nil {
		return p, err
	}
	if p.input.sampleRate, err = intParam(q, "sample_rate", defaultListenRate, 1, 384000); err != nil {
		return p, err
	}
	if p.input.channels, err = intParam(q, "channels", 1, 1, 64); err != nil {
		return p, err
	}
	if p.interim, err = boolParam(q, "interim_results"); err != nil {
		return p, err
	}
	if p.vadEvents, err = boolParam(q, "vad_events"); err != nil {
		return p, err
	}
	switch v := strings.ToLower(q.Get("endpointing")); v {
	case "", "true":
	case "false":
		p.endpointing = 0
	default:
		if p.endpointing, err = strconv.Atoi(v); err != nil || p.endpointing < 0 {
			return p, fmt.Errorf("endpointing must be true, false or milliseconds, not %q", v)
		}
	}
	if p.utteranceEnd, err = intParam(q, "utterance_end_ms", 0, 0, 1<<20); err != nil {
		return p, err
	}
	p.extra = extraParam(q)
	return p, nil
}

// checkSpeakEncoding accepts linear16 only: the simulation synthesizes
// nothing else (text-to-speech output and the agent's audio).
func checkSpeakEncoding(enc string) error {
	if enc == "" || strings.EqualFold(enc, "linear16") {
		return nil
	}
	return fmt.Errorf("encoding %q is not supported by the simulated engine (linear16 only)", enc)
}

func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return def, fmt.Errorf("%s must be an integer in [%d, %d], not %q", name, lo, hi, v)
	}
	return n, nil
}

func boolParam(q url.Values, name string) (bool, error) {
	v := q.Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s must be true or false, not %q", name, v)
	}
	return b, nil
}

// extraParam collects Deepgram's extra=key:value parameters, echoed in metadata.
func extraParam(q url.Values) map[string]string {
	var extra map[string]string
	for _, kv := range q["extra"] {
		k, v, _ := strings.Cut(kv, ":")
		if extra == nil {
			extra = make(map[string]string)
		}
		extra[k] = v
	}
	return extra
}

func isJSON(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == "application/json"
}

// readJSON decodes a small JSON body into v and returns the body.
func readJSON(r *http.Request, v any) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJSONBody {
		return nil, errTooLarge
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("invalid JSON body: %w", err)
	}
	return body, nil
}

var errTooLarge = errors.New("request body too large")

// badRequest answers 400 (or 413 for errTooLarge) in Deepgram's shape.
func (e *Engine) badRequest(rq *request, err error) {
	if errors.Is(err, errTooLarge) {
		e.writeError(rq.w, rq.id, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", err.Error())
		return
	}
	e.writeError(rq.w, rq.id, http.StatusBadRequest, "Bad Request", err.Error())
}

// errCorrupt is Deepgram's answer to bytes it cannot decode as audio.
const errCorrupt = "Bad Request: failed to process audio: corrupt or unsupported data"

// serveListenBatch is pre-recorded STT: POST /v1/listen.
func (e *Engine) serveListenBatch(rq *request) {
	p, err := parseListenParams(rq.r.URL.Query())
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	if rq.r.URL.Query().Get("callback") != "" {
		// The simulation never delivers callbacks; it answers as Deepgram does at once.
		if _, err := io.Copy(io.Discard, io.LimitReader(rq.r.Body, maxAudioBody)); err != nil {
			return
		}
		writeJSON(rq.w, http.StatusOK, callbackResponse{RequestID: rq.id})
		return
	}
	if isJSON(rq.r) {
		e.serveListenURL(rq)
		return
	}

	hash := sha256.New()
	var words []decodedWord
	d := newDecoder(p.input, func(ev decoderEvent) error {
		if ev.kind == evWord {
			words = append(words, ev.word)
		}
		return nil
	})
	undecodable := func(err error) {
		e.writeError(rq.w, rq.id, http.StatusBadRequest, "Bad Request", fmt.Sprintf("%s (%v)", errCorrupt, err))
	}
	body := http.MaxBytesReader(rq.w, rq.r.Body, maxAudioBody)
	buf := make([]byte, 32<<10)
	var size int64
	for {
		n, rerr := body.Read(buf)
		size += int64(n)
		hash.Write(buf[:n])
		if err := d.Feed(buf[:n]); err != nil {
			undecodable(err)
			return
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(rerr, &tooLarge) {
				e.badRequest(rq, errTooLarge)
			}
			return // the client went away
		}
	}
	if err := d.End(); err != nil {
		undecodable(err)
		return
	}
	switch {
	case size == 0:
		undecodable(fmt.Errorf("%w: the body is empty", ErrUndecodable))
		return
	case !d.container && d.unmeasured == "" && d.pos == 0:
		undecodable(fmt.Errorf("%w: %d bytes hold no whole sample", ErrUndecodable, size))
		return
	}

	var res listenResponse
	res.Metadata = listenMetadata{
		TransactionKey: "deprecated",
		RequestID:      rq.id,
		Sha256:         hex.EncodeToString(hash.Sum(nil)),
		Created:        created(time.Now()),
		Duration:       seconds(d.pos, d.sampleRate),
		Channels:       d.channels,
		Models:         []string{sttModelUUID},
		ModelInfo:      map[string]modelInfo{sttModelUUID: sttModelInfo()},
		Warnings:       d.warnings(),
		Extra:          p.extra,
	}
	res.Results.Channels = []listenChannel{{Alternatives: []alternative{alternativeOf(words, d.sampleRate)}}}
	writeJSON(rq.w, http.StatusOK, res)
}

// serveListenURL answers a hosted-audio request, {"url": "..."}, as
// Deepgram answers a URL it cannot fetch: the simulation has no network.
func (e *Engine) serveListenURL(rq *request) {
	var src struct {
		URL string `json:"url"`
	}
	if _, err := readJSON(rq.r, &src); err != nil {
		e.badRequest(rq, err)
		return
	}
	if src.URL == "" {
		e.badRequest(rq, errors.New(`JSON body must be {"url": "..."}`))
		return
	}
	// The URL is not echoed: presigned URLs carry credentials.
	e.writeError(rq.w, rq.id, http.StatusBadRequest, "REMOTE_CONTENT_ERROR",
		"Could not fetch the URL: the remote server hosting the media failed to return valid data "+
			"(the simulated engine does not reach the network; send the audio in the request body)")
}

// speechWords lays text out as speech: each whitespace-separated word lasts
// 200 ms (longer if its encoding needs it), preceded by 50 ms of silence,
// and 50 ms of silence close the audio. Times are whole samples.
func speechWords(text string, sampleRate int) (words []Word, total float64) {
	gap := int64(sampleRate) / 20
	minLen := int64(sampleRate) / 5
	at := gap
	for _, f := range strings.Fields(text) {
		if len(f) > MaxWordBytes {
			cut := MaxWordBytes
			for cut > 0 && !utf8.RuneStart(f[cut]) {
				cut--
			}
			f = f[:cut]
		}
		n := max(minLen, int64(len(f))+3)
		words = append(words, Word{Text: f, Start: seconds(at, sampleRate), End: seconds(at+n, sampleRate)})
		at += n + gap
	}
	return words, seconds(at, sampleRate)
}

// synthesizeText renders text as linear16 speech at sampleRate.
func synthesizeText(text string, sampleRate int) []byte {
	words, total := speechWords(text, sampleRate)
	return Synthesize(words, sampleRate, total)
}

// pace waits before audio chunk i (see Options.SpeakGate, SpeakInterval).
func (e *Engine) pace(ctx context.Context, i int) error {
	if e.opts.SpeakGate != nil {
		return e.opts.SpeakGate(ctx, i)
	}
	if i == 0 || e.opts.SpeakInterval < 0 {
		return ctx.Err()
	}
	return sleepCtx(ctx, e.opts.SpeakInterval)
}

// streamAudio writes audio in paced chunks of Options.SpeakChunk bytes.
func (e *Engine) streamAudio(ctx context.Context, audio []byte, write func([]byte) error) error {
	for i := 0; len(audio) > 0; i++ {
		if err := e.pace(ctx, i); err != nil {
			return err
		}
		n := min(len(audio), e.opts.SpeakChunk)
		if err := write(audio[:n]); err != nil {
			return err
		}
		audio = audio[n:]
	}
	return nil
}

// speakParams are the query parameters of text-to-speech.
type speakParams struct {
	sampleRate int
	wav        bool
}

func parseSpeakParams(q url.Values, allowContainer bool) (speakParams, error) {
	p := speakParams{wav: allowContainer}
	var err error
	if err = checkSpeakEncoding(q.Get("encoding")); err != nil {
		return p, err
	}
	if p.sampleRate, err = intParam(q, "sample_rate", defaultSpeakRate, 1, 384000); err != nil {
		return p, err
	}
	switch c := strings.ToLower(q.Get("container")); {
	case c == "none":
		p.wav = false
	case c == "" || (c == "wav" && allowContainer):
	default:
		return p, fmt.Errorf("container %q is not supported here", c)
	}
	return p, nil
}

// serveSpeakBatch is text-to-speech: POST /v1/speak. The audio is streamed
// in chunks (see Options.SpeakChunk); a WAV header leads unless container=none.
func (e *Engine) serveSpeakBatch(rq *request) {
	p, err := parseSpeakParams(rq.r.URL.Query(), true)
	if err != nil {
		e.badRequest(rq, err)
		return
	}
	var body struct {
		Text string `json:"text"`
	}
	if _, err := readJSON(rq.r, &body); err != nil {
		e.badRequest(rq, err)
		return
	}
	if strings.TrimSpace(body.Text) == "" {
		e.badRequest(rq, errors.New(`body must be {"text": "..."} with some text`))
		return
	}
	audio := synthesizeText(body.Text, p.sampleRate)
	h := rq.w.Header()
	if p.wav {
		audio = WAV(audio, p.sampleRate, 1)
		h.Set("Content-Type", "audio/wav")
	} else {
		h.Set("Content-Type", "application/octet-stream")
	}
	h.Set("dg-model-name", ttsModelName)
	h.Set("dg-model-uuid", ttsModelUUID)
	h.Set("dg-char-count", strconv.Itoa(utf8.RuneCountInString(body.Text)))
	rq.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(rq.w)
	if err := rc.Flush(); err != nil {
		return
	}
	err = e.streamAudio(rq.ctx, audio, func(b []byte) error {
		if _, err := rq.w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil {
		// Ending normally would tell the client a truncated body is complete.
		rq.aborted = true
		panic(http.ErrAbortHandler)
	}
}

// serveRead is text intelligence: POST /v1/read. The summary is the text's
// first sentence (at most 20 words); sentiment is neutral throughout.
func (e *Engine) serveRead(rq *request) {
	var body struct {
		Text string `json:"text"`
		URL  string `json:"url"`
	}
	if _, err := readJSON(rq.r, &body); err != nil {
		e.badRequest(rq, err)
		return
	}
	if body.Text == "" && body.URL == "" {
		e.badRequest(rq, errors.New(`body must be {"text": "..."} or {"url": "..."}`))
		return
	}
	// URLs cannot be fetched: their text is empty.
	words := strings.Fields(body.Text)
	var res readResponse
	res.Metadata.RequestID = rq.id
	res.Metadata.Created = created(time.Now())
	res.Metadata.Language = "en"
	res.Metadata.SummaryInfo.ModelUUID = sttModelUUID
	res.Metadata.SummaryInfo.InputTokens = len(words)
	res.Results.Summary.Text = summarize(words)
	res.Metadata.SummaryInfo.OutputTokens = len(strings.Fields(res.Results.Summary.Text))
	res.Results.Sentiments.Segments = []readSegment{}
	if len(words) > 0 {
		res.Results.Sentiments.Segments = append(res.Results.Sentiments.Segments, readSegment{
			Text: strings.Join(words, " "), StartWord: 0, EndWord: len(words) - 1, Sentiment: "neutral"})
	}
	res.Results.Sentiments.Average.Sentiment = "neutral"
	writeJSON(rq.w, http.StatusOK, res)
}

// summarize returns the first sentence of words, at most 20 words long.
func summarize(words []string) string {
	var out []string
	for _, w := range words {
		out = append(out, w)
		if len(out) == 20 || strings.ContainsAny(w[len(w)-1:], ".!?") {
			break
		}
	}
	return strings.Join(out, " ")
}
