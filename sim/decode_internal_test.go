package sim

import (
	"fmt"
	"reflect"
	"testing"
)

// transcript records everything a transcriber reports, as strings.
func transcribe(t *testing.T, audio []byte, chunk, endpointMS, utteranceEndMS int) []string {
	t.Helper()
	var out []string
	var tr *transcriber
	sec := func(at int64) float64 { return seconds(at, tr.sampleRate()) }
	words := func(ws []decodedWord) string { return fmt.Sprint(alternativeOf(ws, tr.sampleRate()).Transcript) }
	in := audioInput{encoding: "linear16", sampleRate: 16000, channels: 1}
	tr = newTranscriber(transcriberConfig{input: in, endpointMS: endpointMS, utteranceEndMS: utteranceEndMS}, transcriptHooks{
		speechStarted: func(at int64) error { out = append(out, fmt.Sprintf("start %v", sec(at))); return nil },
		word: func(w window, p []decodedWord) error {
			out = append(out, fmt.Sprintf("word [%v,%v] %s", sec(w.start), sec(w.end), words(p)))
			return nil
		},
		final: func(w window, ws []decodedWord, c finalCause) error {
			out = append(out, fmt.Sprintf("final%d [%v,%v] %s", c, sec(w.start), sec(w.end), words(ws)))
			return nil
		},
		utteranceEnd: func(at int64) error { out = append(out, fmt.Sprintf("utterance_end %v", sec(at))); return nil },
	})
	for len(audio) > 0 {
		n := min(chunk, len(audio))
		if err := tr.Feed(audio[:n]); err != nil {
			t.Fatalf("Feed: %v", err)
		}
		audio = audio[n:]
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out
}

// The transcriber decides in audio time, so chunking, including odd byte
// counts that split samples, must not change a single event.
func TestTranscriberIgnoresChunking(t *testing.T) {
	words := []Word{{"one", 0.125, 0.25}, {"two", 0.3125, 0.5}, {"three", 1, 1.25}}
	pcm := Synthesize(words, 16000, 2)
	want := []string{
		"start 0.125",
		"word [0,0.25] one",
		"start 0.3125",
		"word [0,0.5] one two",
		"final0 [0,0.6] one two", // 100 ms endpointing after 0.5
		"utterance_end 0.5",      // 300 ms after the last word
		"start 1",
		"word [0.6,1.25] three",
		"final0 [0.6,1.35] three",
		"utterance_end 1.25",
		"final2 [1.35,2] ", // the rest, on close
	}
	for _, chunk := range []int{1, 2, 3, 7, 333, 4096, len(pcm)} {
		t.Run(fmt.Sprint("chunk ", chunk), func(t *testing.T) {
			got := transcribe(t, pcm, chunk, 100, 300)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%q\nwant\n%q", got, want)
			}
		})
	}
	t.Run("wav in odd chunks", func(t *testing.T) {
		got := transcribe(t, WAV(pcm, 16000, 1), 5, 100, 300)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got\n%q\nwant\n%q", got, want)
		}
	})
}

func TestTranscriberFinalizeMidWord(t *testing.T) {
	pcm := Synthesize([]Word{{"alpha", 0.25, 0.5}}, 16000, 1)
	var finals []string
	in := audioInput{encoding: "linear16", sampleRate: 16000, channels: 1}
	tr := newTranscriber(transcriberConfig{input: in, endpointMS: 10}, transcriptHooks{
		final: func(w window, ws []decodedWord, c finalCause) error {
			finals = append(finals, fmt.Sprintf("%d [%d,%d] %d words", c, w.start, w.end, len(ws)))
			return nil
		},
	})
	// Feed up to the middle of the word, then Finalize: the final stops at
	// the word's start, and the word goes to the next result.
	if err := tr.Feed(pcm[:2*6000+1]); err != nil {
		t.Fatal(err)
	}
	if err := tr.Finalize(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Feed(pcm[2*6000+1:]); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"1 [0,4000] 0 words", "0 [4000,8160] 1 words", "2 [8160,16000] 0 words"}
	if !reflect.DeepEqual(finals, want) {
		t.Errorf("finals = %q, want %q", finals, want)
	}
}

// Sound that is not a word is decided in audio time too: how the audio is
// chunked changes nothing, a false word start (the marker, then no word)
// included.
func TestTranscriberNoSpeechIgnoresChunking(t *testing.T) {
	pcm := make([]byte, 0, 2*24000)
	put := func(v int16) { pcm = append(pcm, byte(v), byte(uint16(v)>>8)) }
	for i := range 8000 { // 0-0.5 s: noise, with a silent sample every 7
		put(int16(1000 * (i%7 - 3)))
	}
	pcm = append(pcm, Synthesize([]Word{{"hello", 0.25, 0.5}}, 16000, 0.75)...) // hello at 0.75-1
	put(wordMagic)                                                              // 1.25 s: a false start
	for range 3999 {
		put(5000)
	}
	var out []string
	for _, chunk := range []int{1, 3, 7, 333, len(pcm)} {
		var tr *transcriber
		sec := func(at int64) float64 { return seconds(at, 16000) }
		got := []string{}
		in := audioInput{encoding: "linear16", sampleRate: 16000, channels: 1}
		tr = newTranscriber(transcriberConfig{input: in, endpointMS: 100, noSpeechStepMS: 250, noSpeechFinals: true}, transcriptHooks{
			speechStarted: func(at int64) error { got = append(got, fmt.Sprintf("start %v", sec(at))); return nil },
			word: func(w window, p []decodedWord) error {
				got = append(got, fmt.Sprintf("word [%v,%v] %s", sec(w.start), sec(w.end), alternativeOf(p, 16000).Transcript))
				return nil
			},
			final: func(w window, ws []decodedWord, c finalCause) error {
				got = append(got, fmt.Sprintf("final%d [%v,%v] %s", c, sec(w.start), sec(w.end), alternativeOf(ws, 16000).Transcript))
				return nil
			},
			quiet: func(w window) error {
				got = append(got, fmt.Sprintf("quiet [%v,%v]", sec(w.start), sec(w.end)))
				return nil
			},
		})
		for p := pcm; len(p) > 0; {
			n := min(chunk, len(p))
			if err := tr.Feed(p[:n]); err != nil {
				t.Fatalf("chunk %d: Feed: %v", chunk, err)
			}
			p = p[n:]
		}
		if err := tr.Close(); err != nil {
			t.Fatalf("chunk %d: Close: %v", chunk, err)
		}
		if out == nil {
			out = got
			want := []string{
				"final0 [0,0.25] ", // noise: endpointing has passed at the first report
				"final0 [0.25,0.5] ",
				"start 0.75",
				"word [0.5,1] hello",
				"final0 [0.5,1.1] hello",
				"start 1.25", // the marker: heard as a start, like a VAD's false alarm
				"final0 [1.1,1.5] ",
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%q\nwant\n%q", got, want)
			}
		} else if !reflect.DeepEqual(got, out) {
			t.Errorf("chunk %d: got\n%q\nwant, as unchunked,\n%q", chunk, got, out)
		}
	}
}

// Deepgram's timeout sentences must fit a close frame's reason (123 bytes).
func TestCloseReasonsFit(t *testing.T) {
	for _, r := range []string{reasonSilence, reasonUndecodable} {
		if len(r) > 123 {
			t.Errorf("%d bytes: %q", len(r), r)
		}
	}
}
