package server

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestStatusPeaks checks the demand `deployer scale` reads: three streams
// open at once are remembered after two have closed.
func TestStatusPeaks(t *testing.T) {
	r := startRouter(t, simRegions(""))
	var conns []*websocket.Conn
	for range 3 {
		c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), map[string][]string{"X-Earshot-Region": {"eu-west"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	peak := func() (now int, p Peak) {
		for _, rs := range r.status(t).Regions {
			if rs.Name == "eu-west" {
				return rs.InFlight, rs.Peak
			}
		}
		t.Fatal("no eu-west in /status")
		return
	}
	// A stream is in flight from its handshake, and counted as a stream
	// once relayed: wait for all three to be relayed.
	waitFor(t, "three streams relayed", func() bool { return r.status(t).StreamsOpen == 3 })
	if now, p := peak(); now != 3 || p.InFlight != 3 || p.Streams != 3 {
		t.Fatalf("with three streams open: in flight %d, peak %+v", now, p)
	}
	for _, c := range conns[:2] {
		c.Close()
	}
	waitFor(t, "two streams to close", func() bool { now, _ := peak(); return now == 1 })
	if _, p := peak(); p.InFlight != 3 || p.Streams != 3 {
		t.Errorf("after two closed, peak %+v, want the three remembered", p)
	}
}

func TestDemandWindow(t *testing.T) {
	var d demand
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d.sample(t0, "us-east", 10, 4)
	d.sample(t0.Add(time.Minute), "us-east", 5, 5)
	if got := d.peak(t0.Add(2*time.Minute), "us-east"); got != (Peak{InFlight: 10, Streams: 5, Requests: 6}) {
		t.Errorf("peak = %+v", got)
	}
	if got := d.peak(t0.Add(flowWindow+flowSlotLength), "us-east"); got != (Peak{InFlight: 5, Streams: 5}) {
		t.Errorf("after the first sample left the window, peak = %+v", got)
	}
	if got := d.peak(t0.Add(2*flowWindow), "us-east"); got != (Peak{}) {
		t.Errorf("after the window, peak = %+v", got)
	}
}
