package sim

import (
	"bytes"
	"encoding/binary"
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
)

// decoder is the streaming state machine that hears words in linear16 audio.
// Feed takes bytes in chunks of any size; events are delivered in audio order
// through emit, which may arm the next tick with setWake.
type decoder struct {
	sampleRate int
	channels   int
	emit       func(decoderEvent) error

	sniffing  bool   // still looking for a leading RIFF header
	head      []byte // bytes held while sniffing
	remaining int64  // audio bytes left in a WAV data chunk; -1 = unbounded
	frame     []byte // a partial sample frame carried between chunks

	pos      int64 // sample frames consumed
	state    decoderState
	runStart int64
	need     int
	text     []byte
	wake     int64 // fire evTick when pos reaches wake; 0 = disarmed
}

func newDecoder(sampleRate, channels int, emit func(decoderEvent) error) *decoder {
	return &decoder{sampleRate: sampleRate, channels: channels, emit: emit, sniffing: true, remaining: -1}
}

// setWake arms a tick at sample index at (0 disarms). Positions at or before
// the current one never fire.
func (d *decoder) setWake(at int64) { d.wake = at }

// Feed consumes the next bytes of the stream.
func (d *decoder) Feed(p []byte) error {
	if d.sniffing {
		d.head = append(d.head, p...)
		if len(d.head) < 4 {
			return nil
		}
		if !bytes.HasPrefix(d.head, []byte("RIFF")) {
			return d.startAudio(d.head)
		}
		info, n, complete, err := parseWAV(d.head)
		if err != nil {
			return err
		}
		if !complete {
			if len(d.head) > maxWAVHeader {
				return fmt.Errorf("%w: WAV header longer than %d bytes", ErrUndecodable, maxWAVHeader)
			}
			return nil
		}
		d.sampleRate, d.channels, d.remaining = info.sampleRate, info.channels, info.dataSize
		return d.startAudio(d.head[n:])
	}
	return d.consume(p)
}

func (d *decoder) startAudio(p []byte) error {
	d.sniffing = false
	d.head = nil
	return d.consume(p)
}

// End finishes the stream: a word still sounding ends at the last sample; a
// word whose text is incomplete is dropped.
func (d *decoder) End() error {
	if d.sniffing {
		if bytes.HasPrefix(d.head, []byte("RIFF")) && len(d.head) >= 4 {
			return fmt.Errorf("%w: truncated WAV header", ErrUndecodable)
		}
		if err := d.startAudio(d.head); err != nil {
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
func (d *decoder) inWord() bool { return d.state != stSilence }

// consume splits raw bytes into frames and steps the state machine with
// channel 0 of each.
func (d *decoder) consume(p []byte) error {
	if d.remaining >= 0 {
		if int64(len(p)) > d.remaining {
			p = p[:d.remaining] // bytes after a WAV data chunk are not audio
		}
		d.remaining -= int64(len(p))
	}
	size := 2 * d.channels
	if len(d.frame) > 0 {
		need := size - len(d.frame)
		if len(p) < need {
			d.frame = append(d.frame, p...)
			return nil
		}
		d.frame = append(d.frame, p[:need]...)
		p = p[need:]
		err := d.step(int16(binary.LittleEndian.Uint16(d.frame)))
		d.frame = d.frame[:0]
		if err != nil {
			return err
		}
	}
	for len(p) >= size {
		if err := d.step(int16(binary.LittleEndian.Uint16(p))); err != nil {
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
			if s != wordMagic {
				return fmt.Errorf("%w: sound at sample %d does not start with the word marker", ErrUndecodable, d.pos)
			}
			d.state, d.runStart = stLength, d.pos
			if err := d.emit(decoderEvent{kind: evStart, at: d.pos, sampleRate: d.sampleRate}); err != nil {
				return err
			}
		}
	case stLength:
		if s <= 0 || int(s) > MaxWordBytes {
			return fmt.Errorf("%w: bad word length %d at sample %d", ErrUndecodable, s, d.pos)
		}
		d.need, d.text, d.state = int(s), d.text[:0], stText
	case stText:
		if s < byteBias || s > byteBias+0xFF {
			return fmt.Errorf("%w: bad text sample %d at sample %d", ErrUndecodable, s, d.pos)
		}
		d.text = append(d.text, byte(s-byteBias))
		if len(d.text) == d.need {
			if !utf8.Valid(d.text) {
				return fmt.Errorf("%w: word ending at sample %d is not UTF-8", ErrUndecodable, d.pos)
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
}

// transcriber turns decoder events into interim results, finals and
// utterance ends by the rule in the package documentation. Every decision is
// made in audio time (sample positions), so the output does not depend on
// how the audio was chunked.
type transcriber struct {
	dec          *decoder
	endpoint     int // ms of silence after a word that yields a final; 0 = off
	utteranceEnd int // ms of silence after the last word for UtteranceEnd; 0 = off
	hooks        transcriptHooks

	pending     []decodedWord // words since the last final
	lastFinal   int64         // where the next result window starts
	lastWordEnd int64
	wantUttEnd  bool // a word came since the last UtteranceEnd
}

func newTranscriber(sampleRate, channels, endpointMS, utteranceEndMS int, hooks transcriptHooks) *transcriber {
	t := &transcriber{endpoint: endpointMS, utteranceEnd: utteranceEndMS, hooks: hooks}
	t.dec = newDecoder(sampleRate, channels, t.onEvent)
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
	case evTick:
		if len(t.pending) > 0 && t.endpoint > 0 && ev.at == t.lastWordEnd+max(1, t.msToSamples(t.endpoint)) {
			if err := t.final(ev.at, causeEndpoint); err != nil {
				return err
			}
		}
		if t.wantUttEnd && t.utteranceEnd > 0 && ev.at == t.lastWordEnd+max(1, t.msToSamples(t.utteranceEnd)) {
			t.wantUttEnd = false
			if t.hooks.utteranceEnd != nil {
				if err := t.hooks.utteranceEnd(t.lastWordEnd); err != nil {
					return err
				}
			}
		}
		t.arm(ev.at)
	}
	return nil
}

// arm sets the decoder's wake to the nearest silence threshold after now.
func (t *transcriber) arm(now int64) {
	next := int64(0)
	consider := func(at int64) {
		if at > now && (next == 0 || at < next) {
			next = at
		}
	}
	if len(t.pending) > 0 && t.endpoint > 0 {
		consider(t.lastWordEnd + max(1, t.msToSamples(t.endpoint)))
	}
	if t.wantUttEnd && t.utteranceEnd > 0 {
		consider(t.lastWordEnd + max(1, t.msToSamples(t.utteranceEnd)))
	}
	t.dec.setWake(next)
}

// final emits the pending words as a final result ending at end.
func (t *transcriber) final(end int64, cause finalCause) error {
	w, words := window{t.lastFinal, end}, t.pending
	t.pending, t.lastFinal = nil, end
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
