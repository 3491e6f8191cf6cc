package server

import (
	"context"
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

// demand keeps each region's peaks over the last flowWindow. It is sampled
// every second and at each /status, so a burst shorter than a second may be
// missed; containers take far longer to start.
type demand struct {
	peaks window[string, Peak]
}

func (d *demand) sample(now time.Time, region string, inFlight, streams int) {
	d.peaks.update(now, region, Peak{InFlight: inFlight, Streams: streams, Requests: inFlight - streams}, Peak.max)
}

// peak is region's peak over the window.
func (d *demand) peak(now time.Time, region string) Peak {
	var out Peak
	d.peaks.each(now, func(r string, p Peak) {
		if r == region {
			out = out.max(p)
		}
	})
	return out
}

// max is the higher of p's and q's counts, each.
func (p Peak) max(q Peak) Peak {
	return Peak{max(p.InFlight, q.InFlight), max(p.Streams, q.Streams), max(p.Requests, q.Requests)}
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
