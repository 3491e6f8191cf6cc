package streamload

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/earshot/earshot/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func engine(t *testing.T) *sim.Server {
	srv, err := sim.Start("127.0.0.1:0", sim.Options{Region: "load"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// TestEveryWordBack runs twenty streams at the fastest pace Deepgram
// allows and expects every word back, each with its latency.
func TestEveryWordBack(t *testing.T) {
	srv := engine(t)
	r, err := Run(context.Background(), Options{
		URL: "ws://" + srv.Addr(), Streams: 20, Ramp: 200 * time.Millisecond,
		Audio: 2 * time.Second, Speed: MaxSpeed,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded != 20 || r.WordsSent != 80 || r.Lost() != 0 || len(r.Errors) != 0 || r.CloseCodes["1000"] != 20 {
		t.Fatalf("report:\n%s", r)
	}
	if r.Relay.N != 80 || r.Handshake.N != 20 || r.FirstResult.N != 20 || r.Relay.P50 <= 0 {
		t.Errorf("latencies: handshake %+v first %+v relay %+v", r.Handshake, r.FirstResult, r.Relay)
	}
	if s := r.String(); !strings.Contains(s, "80 sent, 80 back, 0 lost") {
		t.Errorf("text report:\n%s", s)
	}
}

// TestLostWords: an engine that dies mid-stream loses words, and the
// report says how streams ended.
func TestLostWords(t *testing.T) {
	srv := engine(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *Report, 1)
	go func() {
		r, err := Run(ctx, Options{URL: "ws://" + srv.Addr(), Streams: 5, Audio: 5 * time.Second, Speed: MaxSpeed})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, streams := srv.Engine().Active(); streams == 5 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.SetMode(sim.ModeDie)
	r := <-done
	if r.Succeeded != 0 || r.Lost() == 0 || r.Errors["lost words"] != 0 || len(r.Errors) == 0 {
		t.Errorf("with the engine gone:\n%s", r)
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []Options{
		{URL: "ws://x"},
		{URL: "ws://x", Streams: 1, Rate: 1},
		{URL: "ws://x", Streams: 1, Speed: 2},
		{URL: "ws://x", Streams: 1, Chunk: 30 * time.Millisecond},
		{URL: "ws://x", Rate: 5},
	} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}
