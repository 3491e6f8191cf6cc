package sim

import (
	"bytes"
	"fmt"
	"unicode/utf8"
)

// decodedWord is a word as the decoder hears it, in samples.
type decodedWord struct {
	text       string
	start, end int64 // end is the index of the first silent sample after the word
}

func (w decodedWord) public(sampleRate int) Word {
	return Word{Text: w.text, Start: seconds(w.start, sampleRate), End: seconds(w.end, sampleRate)}
}

// eventKind says what a decoderEvent reports.
type eventKind int

const (
	evStart eventKind = iota // a word began at ev.at
	evWord                   // ev.word ended (ev.at is its end)
	evTick                   // the position armed with setWake was reached
	evNoise                  // sound that is not a word, from ev.at (see decoder.noiseWatch)
)

type decoderEvent struct {
	kind       eventKind
	at         int64 // sample index
	word       decodedWord
	sampleRate int // the decoder's rate when the event fired (a WAV header may have changed it)
}

// decoderState is where the decoder is within the word encoding.
type decoderState int

const (
	stSilence decoderState = iota // between words
	stLength                      // after the magic, expecting the length sample
	stText                        // reading text samples
	stFiller                      // text complete, waiting for the run to end
	stNoise                       // in a run of sound that is not a word
)

// decoder is the streaming state machine that hears words in audio. Feed
// takes bytes in chunks of any size; events are delivered in audio order
// through emit, which may arm the next tick with setWake.
//
// It first reads the start of the audio to find its format: a WAV header
// (always looked for), or with no encoding= named another container
// (MP3, Ogg, FLAC, WebM, MP4, AAC) it cannot measure; otherwise the bytes
// are raw samples of the declared encoding. Raw audio named by no encoding
// is held to the word encoding (strict): other sound is ErrUndecodable, as
// Deepgram fails bytes it cannot identify. Everywhere else sound that is
// not a word is noise: heard, timed, but not speech.
type decoder struct {
	sampleRate int
	channels   int
	kind       sampleKind
	strict     bool // sound that is not a word is ErrUndecodable
	sniffAll   bool // look for every container, not only WAV (no encoding= named)
	emit       func(decoderEvent) error

	// unmeasured names the container or encoding whose audio cannot be
	// measured; its bytes are taken and not heard.
	unmeasured string
	fromQuery  bool // unmeasured because of the encoding= parameter

	sniffing  bool   // still reading the start of the audio
	head      []byte // bytes held while sniffing
	container bool   // the audio is in a container (WAV, or one it cannot measure)
	remaining int64  // audio bytes left in a WAV data chunk; -1 = unbounded
	frame     []byte // a partial sample frame carried between chunks

	pos      int64 // sample frames consumed
	state    decoderState
	runStart int64
	need     int
	text     []byte
	wake     int64 // fire evTick when pos reaches wake; 0 = disarmed

	// lastSound is the index of the latest sample of noise; -1 before any.
	lastSound int64
	// noiseWatch asks for one evNoise at the next sample of noise.
	noiseWatch bool
}

func newDecoder(in audioInput, emit func(decoderEvent) error) *decoder {
	d := &decoder{sampleRate: in.sampleRate, channels: in.channels, emit: emit,
		sniffing: true, remaining: -1, lastSound: -1}
	if d.channels < 1 {
		d.channels = 1
	}
	switch kind, raw := rawEncodings[in.encoding]; {
	case in.encoding == "":
		d.strict, d.sniffAll = true, true
	case raw:
		d.kind = kind
	default: // an encoding the engine takes but cannot measure
		d.sniffing, d.unmeasured, d.fromQuery = false, in.encoding, true
	}
	return d
}

// setWake arms a tick at sample index at (0 disarms). Positions at or before
// the current one never fire.
func (d *decoder) setWake(at int64) { d.wake = at }

// Feed consumes the next bytes of the stream.
func (d *decoder) Feed(p []byte) error {
	if d.sniffing {
		d.head = append(d.head, p...)
		return d.sniff(false)
	}
	return d.consume(p)
}

// sniff decides, once enough of the start is held (or the audio ended),
// what the audio is, and then hears what was held.
func (d *decoder) sniff(end bool) error {
	h := d.head
	if len(h) < sniffBytes && !end {
		return nil
	}
	if isWAV(h) || (d.sniffAll && bytes.HasPrefix(h, []byte("RIFF"))) {
		info, n, complete, err := parseWAV(h)
		if err != nil {
			return err
		}
		if !complete {
			if end {
				return fmt.Errorf("%w: truncated WAV header", ErrUndecodable)
			}
			if len(h) > maxWAVHeader {
				return fmt.Errorf("%w: WAV header longer than %d bytes", ErrUndecodable, maxWAVHeader)
			}
			return nil
		}
		d.container, d.strict = true, false
		d.sampleRate, d.channels, d.kind, d.remaining = info.sampleRate, info.channels, info.kind, info.dataSize
		d.unmeasured = info.unmeasured
		return d.startAudio(h[n:])
	}
	if d.sniffAll {
		if name := sniffContainer(h); name != "" {
			d.container, d.strict, d.unmeasured = true, false, name
		}
	}
	return d.startAudio(h)
}

func (d *decoder) startAudio(p []byte) error {
	d.sniffing = false
	d.head = nil
	return d.consume(p)
}

// End finishes the stream: a word still sounding ends at the last sample; a
// word whose text is incomplete is dropped, and so is a partial sample.
func (d *decoder) End() error {
	if d.sniffing {
		if err := d.sniff(true); err != nil {
			return err
		}
	}
	if d.state == stFiller {
		d.state = stSilence
		return d.emit(decoderEvent{kind: evWord, at: d.pos, word: decodedWord{text: string(d.text), start: d.runStart, end: d.pos}, sampleRate: d.sampleRate})
	}
	d.state = stSilence
	return nil
}

// inWord reports whether a word has begun and not yet ended.
func (d *decoder) inWord() bool {
	return d.state == stLength || d.state == stText || d.state == stFiller
}

// consume splits raw bytes into frames and steps the state machine with
// channel 0 of each.
func (d *decoder) consume(p []byte) error {
	if d.unmeasured != "" {
		return nil
	}
	if d.remaining >= 0 {
		if int64(len(p)) > d.remaining {
			p = p[:d.remaining] // bytes after a WAV data chunk are not audio
		}
		d.remaining -= int64(len(p))
	}
	size := d.kind.width() * d.channels
	if len(d.frame) > 0 {
		need := size - len(d.frame)
		if len(p) < need {
			d.frame = append(d.frame, p...)
			return nil
		}
		d.frame = append(d.frame, p[:need]...)
		p = p[need:]
		err := d.step(d.kind.level(d.frame))
		d.frame = d.frame[:0]
		if err != nil {
			return err
		}
	}
	for len(p) >= size {
		if err := d.step(d.kind.level(p)); err != nil {
			return err
		}
		p = p[size:]
	}
	d.frame = append(d.frame, p...)
	return nil
}

// step hears one sample.
func (d *decoder) step(s int16) error {
	switch d.state {
	case stSilence:
		if s != 0 {
			if s == wordMagic && d.kind == sampleS16 {
				d.state, d.runStart = stLength, d.pos
				if err := d.emit(decoderEvent{kind: evStart, at: d.pos, sampleRate: d.sampleRate}); err != nil {
					return err
				}
				break
			}
			if d.strict {
				return fmt.Errorf("%w: sound at sample %d does not start with the word marker", ErrUndecodable, d.pos)
			}
			d.state, d.lastSound = stNoise, d.pos
			if err := d.noise(d.pos, false); err != nil {
				return err
			}
		}
	case stNoise:
		if s == 0 {
			d.state = stSilence
			break
		}
		d.lastSound = d.pos
		if err := d.noise(d.pos, false); err != nil { // a run may outlast a final
			return err
		}
	case stLength:
		if s <= 0 || int(s) > MaxWordBytes {
			if err := d.notAWord(s, fmt.Errorf("%w: bad word length %d at sample %d", ErrUndecodable, s, d.pos)); err != nil {
				return err
			}
			break
		}
		d.need, d.text, d.state = int(s), d.text[:0], stText
	case stText:
		if s < byteBias || s > byteBias+0xFF {
			if err := d.notAWord(s, fmt.Errorf("%w: bad text sample %d at sample %d", ErrUndecodable, s, d.pos)); err != nil {
				return err
			}
			break
		}
		d.text = append(d.text, byte(s-byteBias))
		if len(d.text) == d.need {
			if !utf8.Valid(d.text) {
				if err := d.notAWord(s, fmt.Errorf("%w: word ending at sample %d is not UTF-8", ErrUndecodable, d.pos)); err != nil {
					return err
				}
				break
			}
			d.state = stFiller
		}
	case stFiller:
		if s == 0 {
			d.state = stSilence
			w := decodedWord{text: string(d.text), start: d.runStart, end: d.pos}
			if err := d.emit(decoderEvent{kind: evWord, at: d.pos, word: w, sampleRate: d.sampleRate}); err != nil {
				return err
			}
		}
	}
	d.pos++
	if d.wake > 0 && d.pos == d.wake {
		d.wake = 0
		return d.emit(decoderEvent{kind: evTick, at: d.pos, sampleRate: d.sampleRate})
	}
	return nil
}

// notAWord handles a run that opened with the word marker but broke the
// encoding at the current sample s: an error when strict, else the run was
// noise from its start (and ends here if s is silent).
func (d *decoder) notAWord(s int16, err error) error {
	if d.strict {
		return err
	}
	d.state, d.lastSound = stNoise, d.pos
	if s == 0 {
		d.state, d.lastSound = stSilence, d.pos-1
	}
	// Always reported: the marker's evStart disarmed the listener's ticks.
	return d.noise(d.runStart, true)
}

// noise reports sound that is not a word, heard from sample at, if the
// listener asked for it with noiseWatch (or always).
func (d *decoder) noise(at int64, always bool) error {
	if !d.noiseWatch && !always {
		return nil
	}
	d.noiseWatch = false
	return d.emit(decoderEvent{kind: evNoise, at: at, sampleRate: d.sampleRate})
}

// finalCause says why a final result was produced.
type finalCause int

const (
	causeEndpoint finalCause = iota // silence of the endpointing length after a word
	causeFinalize                   // the client sent Finalize
	causeClose                      // the stream ended (CloseStream)
)

// window is a stretch of audio, in samples.
type window struct{ start, end int64 }

// transcriptHooks receive what a transcriber hears; nil hooks are skipped.
type transcriptHooks struct {
	speechStarted func(at int64) error
	// word: a word completed; pending holds the words since the last final.
	word func(w window, pending []decodedWord) error
	// final: the words since the last final, covering w.
	final func(w window, words []decodedWord, cause finalCause) error
	// utteranceEnd: enough silence followed the word that ended at lastWordEnd.
	utteranceEnd func(lastWordEnd int64) error
	// quiet: sound without speech flowed in the last noSpeechStep of w.
	quiet func(w window) error
}

// transcriberConfig shapes what a transcriber reports.
type transcriberConfig struct {
	input          audioInput
	endpointMS     int // ms of silence after a word that yields a final; 0 = off
	utteranceEndMS int // ms of silence after the last word for UtteranceEnd; 0 = off
	// noSpeechStepMS is how often sound without speech is reported, in ms
	// of audio: at every multiple of it since the stream began. 0 = never.
	noSpeechStepMS int
	// noSpeechFinals lets endpointing end a window that holds sound but no
	// speech with an empty final (at the first report endpointMS after its
	// first sound); otherwise such windows are only reported as quiet.
	noSpeechFinals bool
}

// transcriber turns decoder events into interim results, finals and
// utterance ends by the rule in the package documentation. Every decision is
// made in audio time (sample positions), so the output does not depend on
// how the audio was chunked.
type transcriber struct {
	dec   *decoder
	cfg   transcriberConfig
	hooks transcriptHooks

	pending     []decodedWord // words since the last final
	lastFinal   int64         // where the next result window starts
	lastWordEnd int64
	wantUttEnd  bool  // a word came since the last UtteranceEnd
	windowSound int64 // the first sound without speech since the last final; -1 = none
}

func newTranscriber(cfg transcriberConfig, hooks transcriptHooks) *transcriber {
	t := &transcriber{cfg: cfg, hooks: hooks, windowSound: -1}
	t.dec = newDecoder(cfg.input, t.onEvent)
	t.dec.noiseWatch = cfg.noSpeechStepMS > 0
	return t
}

// msToSamples converts milliseconds at the decoder's current rate.
func (t *transcriber) msToSamples(ms int) int64 {
	return int64(ms) * int64(t.dec.sampleRate) / 1000
}

func (t *transcriber) Feed(p []byte) error {
	return t.dec.Feed(p)
}

func (t *transcriber) onEvent(ev decoderEvent) error {
	switch ev.kind {
	case evStart:
		t.dec.setWake(0) // the silence was cut short
		if t.hooks.speechStarted != nil {
			return t.hooks.speechStarted(ev.at)
		}
	case evWord:
		t.pending = append(t.pending, ev.word)
		t.lastWordEnd, t.wantUttEnd = ev.word.end, true
		t.arm(ev.at)
		if t.hooks.word != nil {
			return t.hooks.word(window{t.lastFinal, ev.word.end}, t.pending)
		}
	case evNoise:
		if t.windowSound < 0 {
			t.windowSound = ev.at
		}
		t.arm(t.dec.pos)
	case evTick:
		if len(t.pending) > 0 && t.cfg.endpointMS > 0 && ev.at == t.lastWordEnd+max(1, t.msToSamples(t.cfg.endpointMS)) {
			if err := t.final(ev.at, causeEndpoint); err != nil {
				return err
			}
		}
		if t.wantUttEnd && t.cfg.utteranceEndMS > 0 && ev.at == t.lastWordEnd+max(1, t.msToSamples(t.cfg.utteranceEndMS)) {
			t.wantUttEnd = false
			if t.hooks.utteranceEnd != nil {
				if err := t.hooks.utteranceEnd(t.lastWordEnd); err != nil {
					return err
				}
			}
		}
		if err := t.noSpeech(ev.at); err != nil {
			return err
		}
		t.arm(ev.at)
	}
	return nil
}

// noSpeechStep is the report interval for sound without speech, in samples.
func (t *transcriber) noSpeechStep() int64 {
	if t.cfg.noSpeechStepMS <= 0 {
		return 0
	}
	return max(1, t.msToSamples(t.cfg.noSpeechStepMS))
}

// quietWindow reports whether the window since the last final holds sound
// but no speech, so that it is reported at every noSpeechStep.
func (t *transcriber) quietWindow() bool {
	return t.windowSound >= 0 && len(t.pending) == 0 && t.noSpeechStep() > 0
}

// noSpeech reports a window of sound without speech at a report point:
// an empty final once endpointing has passed since its first sound (if
// noSpeechFinals), else a quiet report if sound flowed in the last step.
func (t *transcriber) noSpeech(at int64) error {
	step := t.noSpeechStep()
	if !t.quietWindow() || at%step != 0 || t.dec.inWord() {
		return nil
	}
	if t.cfg.noSpeechFinals && t.cfg.endpointMS > 0 && at-t.windowSound >= max(1, t.msToSamples(t.cfg.endpointMS)) {
		return t.final(at, causeEndpoint)
	}
	if t.dec.lastSound >= at-step && t.hooks.quiet != nil {
		return t.hooks.quiet(window{t.lastFinal, at})
	}
	return nil
}

// arm sets the decoder's wake to the nearest threshold after now: a
// silence after a word, or the next report point of a quiet window.
func (t *transcriber) arm(now int64) {
	next := int64(0)
	consider := func(at int64) {
		if at > now && (next == 0 || at < next) {
			next = at
		}
	}
	if len(t.pending) > 0 && t.cfg.endpointMS > 0 {
		consider(t.lastWordEnd + max(1, t.msToSamples(t.cfg.endpointMS)))
	}
	if t.wantUttEnd && t.cfg.utteranceEndMS > 0 {
		consider(t.lastWordEnd + max(1, t.msToSamples(t.cfg.utteranceEndMS)))
	}
	if t.quietWindow() {
		step := t.noSpeechStep()
		consider((now/step + 1) * step)
	}
	t.dec.setWake(next)
}

// final emits the pending words as a final result ending at end.
func (t *transcriber) final(end int64, cause finalCause) error {
	w, words := window{t.lastFinal, end}, t.pending
	t.pending, t.lastFinal = nil, end
	t.windowSound, t.dec.noiseWatch = -1, t.cfg.noSpeechStepMS > 0
	t.arm(t.dec.pos)
	if t.hooks.final != nil {
		return t.hooks.final(w, words, cause)
	}
	return nil
}

// Finalize emits a final covering the audio heard so far, stopping at the
// start of a word still sounding (that word belongs to the next result).
func (t *transcriber) Finalize() error {
	point := t.dec.pos
	if t.dec.inWord() {
		point = t.dec.runStart
	}
	return t.final(point, causeFinalize)
}

// Close ends the audio and flushes: a final covering the rest, if any audio
// or words remain unfinalized.
func (t *transcriber) Close() error {
	if err := t.dec.End(); err != nil {
		return err
	}
	if len(t.pending) > 0 || t.dec.pos > t.lastFinal {
		return t.final(t.dec.pos, causeClose)
	}
	return nil
}

// sampleRate is the rate in force (a WAV header may have set it).
func (t *transcriber) sampleRate() int { return t.dec.sampleRate }

// duration is the audio heard so far, in seconds.
func (t *transcriber) duration() float64 { return seconds(t.dec.pos, t.dec.sampleRate) }
