package server

import (
	"context"
	"sync"
	"time"
)

// Peak is a region's busiest moment over the window, as /status reports it
// for `deployer scale`: the most requests and streams in flight at once, and
// the most of each kind (which may come at different moments).
type Peak struct {
	InFlight int `json:"in_flight"`
	Streams  int `json:"streams"`
	Requests int `json:"requests"`
}

// demand keeps each region's peaks over the last flowWindow in flowSlots
// slots. It is sampled every second and at each /status, so a burst
// shorter than a second may be missed; containers take far longer to start.
type demand struct {
	mu    sync.Mutex
	slots [flowSlots]demandSlot
}

type demandSlot struct {
	n     int64 // the slot's number since the epoch
	peaks map[string]Peak
}

func (d *demand) sample(now time.Time, region string, inFlight, streams int) {
	n := now.UnixNano() / int64(flowSlotLength)
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &d.slots[n%flowSlots]
	if s.n != n || s.peaks == nil {
		s.n, s.peaks = n, make(map[string]Peak)
	}
	p := s.peaks[region]
	p.InFlight = max(p.InFlight, inFlight)
	p.Streams = max(p.Streams, streams)
	p.Requests = max(p.Requests, inFlight-streams)
	s.peaks[region] = p
}

// peak is region's peak over the window.
func (d *demand) peak(now time.Time, region string) Peak {
	n := now.UnixNano() / int64(flowSlotLength)
	d.mu.Lock()
	defer d.mu.Unlock()
	var out Peak
	for i := range d.slots {
		s := &d.slots[i]
		if s.peaks == nil || n-s.n >= flowSlots {
			continue
		}
		p := s.peaks[region]
		out.InFlight = max(out.InFlight, p.InFlight)
		out.Streams = max(out.Streams, p.Streams)
		out.Requests = max(out.Requests, p.Requests)
	}
	return out
}

// sampleDemand records every region's load now. A region being replaced
// (a reload gave it a new URL) is in the live and the draining lists under
// one name: its load is the sum.
func (s *Server) sampleDemand(now time.Time) {
	streams := s.proxy.OpenStreamsByRegion()
	live := s.live()
	inFlight := make(map[string]int, len(live.regions))
	for _, list := range [][]*regionState{live.regions, live.draining} {
		for _, r := range list {
			inFlight[r.name] += r.health.InFlight()
		}
	}
	for name, n := range inFlight {
		s.metrics.demand.sample(now, name, n, streams[name])
	}
}

// watchDemand samples every second until ctx ends.
func (s *Server) watchDemand(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.sampleDemand(now)
		}
	}
}
