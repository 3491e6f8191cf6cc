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
