package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// The word encoding; see the package documentation.
const (
	// wordMagic opens every word. Little-endian it is the two bytes "DG".
	wordMagic = 0x4744
	// byteBias is added to each text byte so that no text sample is zero.
	byteBias = 0x100
	// MaxWordBytes is the longest word text, in UTF-8 bytes, the encoding carries.
	MaxWordBytes = 4096
	// fillerAmplitude is the height of the square wave that pads a word to its end.
	fillerAmplitude = 0x2000
	// fillerHalfPeriod is half the filler's period in samples (500 Hz at 16 kHz).
	fillerHalfPeriod = 16
)

// ErrUndecodable reports audio that cannot be decoded at all: raw bytes
// named by no encoding= and in no container the engine recognises that do
// not follow the word encoding (a non-zero run that does not open with the
// word marker, a bad length or text sample, a run that ends before its
// text), a broken or truncated WAV header, or a pre-recorded body with no
// whole sample in it. The streaming endpoints answer it with close 1008
// "DATA-0000", pre-recorded with 400. Sound in a declared raw encoding or a
// container is never undecodable: it is heard as no speech.
var ErrUndecodable = errors.New("sim: audio is not decodable")

// Word is one word of a transcript, placed in the audio. Start and End are
// seconds of audio since the stream began; End is exclusive: the sample at
// End is the first silent one after the word.
type Word struct {
	Text       string
	Start, End float64
}

// sampleIndex converts seconds into a sample index, rounding to the nearest
// sample, so that times that are whole samples survive a round trip exactly.
func sampleIndex(t float64, sampleRate int) int64 {
	return int64(math.Round(t * float64(sampleRate)))
}

// seconds converts a sample index (or count) into seconds.
func seconds(samples int64, sampleRate int) float64 {
	return float64(samples) / float64(sampleRate)
}

// Synthesize encodes words into linear16 little-endian mono PCM at
// sampleRate, total seconds long (longer if the last word needs it), so that
// the engine hears exactly those words at exactly those times.
//
// Words must be in order, non-empty, at most MaxWordBytes of UTF-8 each,
// separated by at least one silent sample (Start of a word strictly after End
// of the previous one) and long enough to hold their encoding
// (End-Start >= (2+len(Text)) samples). Synthesize panics otherwise: it
// builds test fixtures, and a bad fixture is a programming error.
func Synthesize(words []Word, sampleRate int, total float64) []byte {
	if sampleRate <= 0 {
		panic(fmt.Sprintf("sim.Synthesize: sample rate %d", sampleRate))
	}
	n := sampleIndex(total, sampleRate)
	prevEnd := int64(-1)
	for i, w := range words {
		s, e := sampleIndex(w.Start, sampleRate), sampleIndex(w.End, sampleRate)
		switch {
		case len(w.Text) == 0 || len(w.Text) > MaxWordBytes:
			panic(fmt.Sprintf("sim.Synthesize: word %d: text must be 1..%d bytes", i, MaxWordBytes))
		case !utf8.ValidString(w.Text):
			panic(fmt.Sprintf("sim.Synthesize: word %d: text is not UTF-8", i))
		case s < 0 || s <= prevEnd:
			panic(fmt.Sprintf("sim.Synthesize: word %d (%q) starts at sample %d, not after the previous word's end %d", i, w.Text, s, prevEnd))
		case e-s < int64(2+len(w.Text)):
			panic(fmt.Sprintf("sim.Synthesize: word %d (%q) lasts %d samples, needs %d", i, w.Text, e-s, 2+len(w.Text)))
		}
		prevEnd = e
	}
	n = max(n, prevEnd)

	pcm := make([]byte, 2*n)
	put := func(i int64, v int16) { binary.LittleEndian.PutUint16(pcm[2*i:], uint16(v)) }
	for _, w := range words {
		s, e := sampleIndex(w.Start, sampleRate), sampleIndex(w.End, sampleRate)
		put(s, wordMagic)
		put(s+1, int16(len(w.Text)))
		for j := 0; j < len(w.Text); j++ {
			put(s+2+int64(j), int16(byteBias+int(w.Text[j])))
		}
		for i := s + 2 + int64(len(w.Text)); i < e; i++ {
			v := int16(fillerAmplitude)
			if (i/fillerHalfPeriod)%2 == 1 {
				v = -v
			}
			put(i, v)
		}
	}
	return pcm
}

// wavHeaderSize is the size of the canonical header WAV writes.
const wavHeaderSize = 44

// WAV wraps linear16 PCM in a 44-byte RIFF/WAVE header.
func WAV(pcm []byte, sampleRate, channels int) []byte {
	out := make([]byte, wavHeaderSize, wavHeaderSize+len(pcm))
	le := binary.LittleEndian
	copy(out[0:], "RIFF")
	le.PutUint32(out[4:], uint32(36+len(pcm)))
	copy(out[8:], "WAVE")
	copy(out[12:], "fmt ")
	le.PutUint32(out[16:], 16)
	le.PutUint16(out[20:], 1) // PCM
	le.PutUint16(out[22:], uint16(channels))
	le.PutUint32(out[24:], uint32(sampleRate))
	le.PutUint32(out[28:], uint32(sampleRate*channels*2))
	le.PutUint16(out[32:], uint16(channels*2))
	le.PutUint16(out[34:], 16)
	copy(out[36:], "data")
	le.PutUint32(out[40:], uint32(len(pcm)))
	return append(out, pcm...)
}

// Decode returns the words encoded in audio as the engine hears a body sent
// with no encoding=: linear16 little-endian PCM at sampleRate (16000 if not
// positive), mono, held to the word encoding (other sound is
// ErrUndecodable); or a WAV file, whose header then sets the format, sample
// rate and channel count (channel 0 is decoded) and whose sound other than
// words is heard as no speech; or a container the engine cannot measure
// (MP3, Ogg, FLAC, WebM, MP4, AAC), which holds no words. A word still
// sounding when the audio ends ends there; a word cut off before its text
// is complete is dropped.
func Decode(audio []byte, sampleRate int) ([]Word, error) {
	if sampleRate <= 0 {
		sampleRate = 16000
	}
	var words []Word
	d := newDecoder(audioInput{sampleRate: sampleRate, channels: 1}, func(ev decoderEvent) error {
		if ev.kind == evWord {
			words = append(words, ev.word.public(ev.sampleRate))
		}
		return nil
	})
	if err := d.Feed(audio); err != nil {
		return words, err
	}
	return words, d.End()
}
