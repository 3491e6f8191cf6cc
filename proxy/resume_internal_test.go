package proxy

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestResumeLog checks the log against a plain model over random appends
// and trims, and that steady use allocates nothing.
func TestResumeLog(t *testing.T) {
	l := resumeLog{limit: 1 << 20}
	var model []byte
	var start int64
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		if rng.IntN(3) > 0 {
			p := bytes.Repeat([]byte{byte(i)}, rng.IntN(5000))
			l.append(p)
			model = append(model, p...)
		} else {
			to := start + int64(rng.IntN(len(model)+1))
			l.trim(to)
			model = model[to-start:]
			start = to
		}
		if l.start != start || !bytes.Equal(l.buf, model) || l.end() != start+int64(len(model)) {
			t.Fatalf("step %d: log [%d, %d) holds %d bytes, want [%d, %d)", i, l.start, l.end(), len(l.buf), start, start+int64(len(model)))
		}
		if len(model) > 200000 { // keep it under the limit, as finals do
			l.trim(l.end())
			start, model = l.end(), nil
		}
	}
	frame := make([]byte, 3200)
	allocs := testing.AllocsPerRun(1000, func() {
		for range 10 {
			l.append(frame)
		}
		l.trim(l.end() - 1600)
	})
	if allocs != 0 {
		t.Errorf("steady use allocates %v times per round", allocs)
	}
	l2 := resumeLog{limit: 10000}
	l2.append(make([]byte, 6000))
	l2.append(make([]byte, 6000))
	if !l2.over || len(l2.buf) != 0 || l2.end() != 12000 {
		t.Errorf("past the limit: over %v, holding %d, end %d", l2.over, len(l2.buf), l2.end())
	}
}

func TestWAVHeader(t *testing.T) {
	wav := func(tag, channels, rate, bits int, extra string) []byte {
		b := []byte("RIFF\x00\x00\x00\x00WAVE" + extra + "fmt \x10\x00\x00\x00")
		le16 := func(v int) { b = append(b, byte(v), byte(v>>8)) }
		le32 := func(v int) { b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24)) }
		le16(tag)
		le16(channels)
		le32(rate)
		le32(rate * channels * bits / 8)
		le16(channels * bits / 8)
		le16(bits)
		return append(b, "data\xff\xff\xff\xff"...)
	}
	tests := []struct {
		name string
		b    []byte
		f    audioFormat
		ok   bool
	}{
		{"16-bit mono", wav(1, 1, 16000, 16, ""), audioFormat{16000, 1, 2}, true},
		{"32-bit stereo", wav(1, 2, 48000, 32, ""), audioFormat{48000, 2, 4}, true},
		{"mu-law", wav(7, 1, 8000, 8, ""), audioFormat{8000, 1, 1}, true},
		{"a LIST chunk first", wav(1, 1, 16000, 16, "LIST\x04\x00\x00\x00abcd"), audioFormat{16000, 1, 2}, true},
		{"8-bit PCM", wav(1, 1, 16000, 8, ""), audioFormat{}, false},
		{"float", wav(3, 1, 16000, 32, ""), audioFormat{}, false},
		{"cut short", wav(1, 1, 16000, 16, "")[:30], audioFormat{}, false},
		{"not WAV", []byte("OggS\x00\x02\x00\x00\x00\x00\x00\x00"), audioFormat{}, false},
		{"empty", nil, audioFormat{}, false},
	}
	for _, tt := range tests {
		f, n, ok := wavHeader(tt.b)
		if ok != tt.ok || (ok && (f != tt.f || n != len(tt.b))) {
			t.Errorf("%s: %+v, %d, %v; want %+v, %d, %v", tt.name, f, n, ok, tt.f, len(tt.b), tt.ok)
		}
	}
}

func TestFieldValue(t *testing.T) {
	msg := []byte(`{"type":"TurnInfo", "sequence_id" : 42,"x":{"timestamp":1.5},"ok":true,"n":null}`)
	for k, want := range map[string]string{
		"type": `"TurnInfo"`, "sequence_id": "42", "timestamp": "1.5", "ok": "true", "n": "null", "missing": "",
	} {
		if got := string(fieldValue(msg, k)); got != want {
			t.Errorf("fieldValue(%s) = %q, want %q", k, got, want)
		}
	}
	if got := string(messageType([]byte(`{"type":7}`))); got != "" {
		t.Errorf("a number type read as %q", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = numberAt(msg, "sequence_id") + float64(len(messageType(msg))) }); n != 0 {
		t.Errorf("reading fields allocates %v times", n)
	}
}
