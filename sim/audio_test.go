package sim_test

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/earshot/earshot/sim"
)

func TestSynthesizeDecodeRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		words []sim.Word
		rate  int
		total float64
	}{
		{"silence only", nil, 16000, 0.5},
		{"one word", []sim.Word{{Text: "hi", Start: 0.1, End: 0.2}}, 16000, 0.5},
		{"two words", helloWorld(), 16000, helloWorldTotal},
		{"utf-8 text", []sim.Word{{Text: "héllo", Start: 0, End: 0.05}, {Text: "日本語", Start: 0.0625, End: 0.125}}, 16000, 0.25},
		{"word at time zero", []sim.Word{{Text: "first", Start: 0, End: 0.5}}, 8000, 1},
		{"word ends with the audio", []sim.Word{{Text: "last", Start: 0.5, End: 1}}, 48000, 1},
		{"words one sample apart", []sim.Word{{Text: "a", Start: 0, End: 0.25}, {Text: "b", Start: 0.25 + 1.0/16000, End: 0.5}}, 16000, 0.5},
		{"shortest word", []sim.Word{{Text: "abc", Start: 1.0 / 8000, End: 6.0 / 8000}}, 8000, 0.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pcm := sim.Synthesize(tt.words, tt.rate, tt.total)
			if want := 2 * int(tt.total*float64(tt.rate)); len(pcm) != want {
				t.Errorf("len(pcm) = %d, want %d", len(pcm), want)
			}
			got, err := sim.Decode(pcm, tt.rate)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.words) {
				t.Errorf("Decode = %v, want %v", got, tt.words)
			}
			// The same audio in a WAV file at a different rate than the query:
			// the header wins.
			got, err = sim.Decode(sim.WAV(pcm, tt.rate, 1), 11025)
			if err != nil {
				t.Fatalf("Decode(WAV): %v", err)
			}
			if !reflect.DeepEqual(got, tt.words) {
				t.Errorf("Decode(WAV) = %v, want %v", got, tt.words)
			}
		})
	}
}

func TestWAVHeader(t *testing.T) {
	pcm := make([]byte, 100)
	w := sim.WAV(pcm, 22050, 2)
	le := binary.LittleEndian
	checks := []struct {
		name      string
		got, want uint32
	}{
		{"riff size", le.Uint32(w[4:]), 36 + 100},
		{"format", uint32(le.Uint16(w[20:])), 1},
		{"channels", uint32(le.Uint16(w[22:])), 2},
		{"sample rate", le.Uint32(w[24:]), 22050},
		{"byte rate", le.Uint32(w[28:]), 22050 * 2 * 2},
		{"block align", uint32(le.Uint16(w[32:])), 4},
		{"bits", uint32(le.Uint16(w[34:])), 16},
		{"data size", le.Uint32(w[40:]), 100},
	}
	if len(w) != 144 || string(w[0:4]) != "RIFF" || string(w[8:16]) != "WAVEfmt " || string(w[36:40]) != "data" {
		t.Fatalf("bad header layout: %q", w[:44])
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// samples builds linear16 audio from sample values.
func samples(v ...int16) []byte {
	b := make([]byte, 2*len(v))
	for i, s := range v {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(s))
	}
	return b
}

func TestDecodeErrors(t *testing.T) {
	const magic = 0x4744
	tests := []struct {
		name  string
		audio []byte
	}{
		{"noise without marker", samples(0, 0, 1234, 0)},
		{"zero length", samples(magic, 0, 0)},
		{"length too large", samples(magic, 5000, 0)},
		{"text sample out of range", samples(magic, 1, 42, 0)},
		{"run ends inside text", samples(magic, 3, 0x100+'a', 0)},
		{"text not utf-8", samples(magic, 1, 0x100+0xff, 1, 0)},
		{"truncated wav header", []byte("RIFF\x00\x00\x00\x00WAVEfmt ")},
		{"riff that is not wave", []byte("RIFF\x04\x00\x00\x00AVI LIST")},
		{"raw tone without an encoding", tone(16000, 0.1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sim.Decode(tt.audio, 16000)
			if !errors.Is(err, sim.ErrUndecodable) {
				t.Errorf("Decode error = %v, want ErrUndecodable", err)
			}
		})
	}
}

func TestDecodeDropsWordCutInsideText(t *testing.T) {
	words, err := sim.Decode(samples(0x4744, 3, 0x100+'a'), 16000)
	if err != nil || len(words) != 0 {
		t.Errorf("Decode = %v, %v; want no words, no error", words, err)
	}
}

func TestSynthesizePanicsOnBadFixtures(t *testing.T) {
	tests := []struct {
		name  string
		words []sim.Word
	}{
		{"empty text", []sim.Word{{Text: "", Start: 0, End: 0.1}}},
		{"too short", []sim.Word{{Text: "hello", Start: 0, End: 4.0 / 16000}}},
		{"touching words", []sim.Word{{Text: "a", Start: 0, End: 0.1}, {Text: "b", Start: 0.1, End: 0.2}}},
		{"out of order", []sim.Word{{Text: "a", Start: 0.2, End: 0.3}, {Text: "b", Start: 0, End: 0.1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("Synthesize did not panic")
				}
			}()
			sim.Synthesize(tt.words, 16000, 1)
		})
	}
}
