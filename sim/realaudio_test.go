package sim_test

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
)

// Real-world audio, built in code: what a user sends when they try the
// simulated engine with a recording, a microphone or a test signal. None of
// it follows the word encoding, so the engine hears no speech in any of it.

// pcm16 renders f(t) (t in seconds, result in [-1, 1]) as linear16 at rate,
// scaled to amplitude.
func pcm16(rate int, secs float64, amplitude float64, f func(t float64) float64) []byte {
	n := int(math.Round(secs * float64(rate)))
	out := make([]byte, 2*n)
	for i := range n {
		v := math.Round(amplitude * f(float64(i)/float64(rate)))
		binary.LittleEndian.PutUint16(out[2*i:], uint16(int16(v)))
	}
	return out
}

// tone is a 440 Hz cosine: its first sample is already sound.
func tone(rate int, secs float64) []byte {
	return pcm16(rate, secs, 8000, func(t float64) float64 { return math.Cos(2 * math.Pi * 440 * t) })
}

// dither is "silence" as a sound card records it: -1, 0 or +1 at random.
func dither(rate int, secs float64) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	return pcm16(rate, secs, 1, func(float64) float64 { return float64(r.IntN(3) - 1) })
}

// speechLike is a voiced-speech stand-in: a 120 Hz fundamental with three
// formant-like partials, amplitude-modulated at a syllable rate of 4 Hz,
// like the output of a formant synthesizer (espeak) without its words.
func speechLike(rate int, secs float64) []byte {
	return pcm16(rate, secs, 9000, func(t float64) float64 {
		voice := 0.4*math.Sin(2*math.Pi*120*t) + 0.3*math.Sin(2*math.Pi*700*t) +
			0.2*math.Sin(2*math.Pi*1200*t) + 0.1*math.Sin(2*math.Pi*2500*t)
		envelope := 0.55 + 0.45*math.Sin(2*math.Pi*4*t)
		return voice * envelope
	})
}

// junk is deterministic pseudo-random bytes.
func junk(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

// mp3 is an MPEG-1 Layer III frame header (128 kbit/s, 44.1 kHz) followed
// by junk: the engine can tell the container but not measure it.
func mp3() []byte {
	return append([]byte{0xFF, 0xFB, 0x90, 0x64}, junk(413, 3)...)
}

// ogg is the first page of an Ogg/Opus file: "OggS", the page header and an
// OpusHead packet.
func ogg() []byte {
	page := []byte("OggS")
	page = append(page, 0, 2)                          // version, beginning-of-stream
	page = append(page, make([]byte, 8)...)            // granule position
	page = append(page, 0x78, 0x56, 0x34, 0x12)        // serial number
	page = append(page, 0, 0, 0, 0, 0, 0, 0, 0, 1, 19) // page sequence, CRC, one segment of 19 bytes
	head := []byte("OpusHead")
	head = append(head, 1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0) // version, channels, pre-skip, 48 kHz, gain, mapping
	return append(page, head...)
}

// wavFormat writes a WAV header for any format code and sample width,
// followed by data; dataSize overrides the data chunk's size (streaming
// writers put 0 or 0xFFFFFFFF there).
func wavFormat(format uint16, bits, rate, channels int, data []byte, dataSize uint32) []byte {
	le := binary.LittleEndian
	block := channels * bits / 8
	h := make([]byte, 44)
	copy(h[0:], "RIFF")
	le.PutUint32(h[4:], 36+dataSize)
	copy(h[8:], "WAVEfmt ")
	le.PutUint32(h[16:], 16)
	le.PutUint16(h[20:], format)
	le.PutUint16(h[22:], uint16(channels))
	le.PutUint32(h[24:], uint32(rate))
	le.PutUint32(h[28:], uint32(rate*block))
	le.PutUint16(h[32:], uint16(block))
	le.PutUint16(h[34:], uint16(bits))
	copy(h[36:], "data")
	le.PutUint32(h[40:], dataSize)
	return append(h, data...)
}

// mulaw is G.711 mu-law "audio": bytes that are never its silence (0xFF).
func mulaw(n int) []byte {
	b := junk(n, 5)
	for i := range b {
		if b[i] == 0xFF || b[i] == 0x7F {
			b[i] = 0x80
		}
	}
	return b
}
