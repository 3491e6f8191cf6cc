package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// ProbeState is what active probes say of a region.
type ProbeState int32

// Probe states.
const (
	ProbeUp       ProbeState = iota // serving; the initial state, until probes say otherwise
	ProbeDegraded                   // serving, but ranked after healthy regions
	ProbeDown                       // out of rotation
)

func (s ProbeState) String() string {
	switch s {
	case ProbeDegraded:
		return "degraded"
	case ProbeDown:
		return "down"
	}
	return "up"
}

// ProbeResult is one probe of GET /v1/status.
type ProbeResult struct {
	At      time.Time
	Latency time.Duration
	OK      bool   // reachable, 200, and system_health Ready, Healthy or Degraded
	Health  string // system_health, if the region answered
	Active  int    // the region's active batch and stream requests, from every router
	Err     string // why it failed
	// NoAnswer: the region did not answer at all (unreachable, timeout),
	// as opposed to answering that it is unwell.
	NoAnswer bool
}

type probeState struct {
	state  atomic.Int32
	active atomic.Int64

	mu        sync.Mutex
	successes int // in a row
	failures  int // in a row
	last      ProbeResult
}

func (p *probeState) up() bool       { return ProbeState(p.state.Load()) != ProbeDown }
func (p *probeState) degraded() bool { return ProbeState(p.state.Load()) == ProbeDegraded }

// Probe is the region's probe state and its last result.
func (r *Region) Probe() (ProbeState, ProbeResult) {
	r.probe.mu.Lock()
	defer r.probe.mu.Unlock()
	return ProbeState(r.probe.state.Load()), r.probe.last
}

// ReportedActive is the region's own count of active requests from its
// last probe: the work of every router, not just this one.
func (r *Region) ReportedActive() int { return int(r.probe.active.Load()) }

// observeProbe folds a result in: unhealthy failures in a row take the
// region out, healthy successes in a row bring it back, and a success's
// Degraded health ranks it down at once. It returns the states before and
// after.
func (r *Region) observeProbe(res ProbeResult, healthy, unhealthy int) (from, to ProbeState) {
	p := &r.probe
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = res
	from = ProbeState(p.state.Load())
	to = from
	if res.OK {
		p.successes++
		p.failures = 0
		p.active.Store(int64(res.Active))
		if res.Latency > 0 {
			r.observeLatency(res.Latency)
			r.rtt.observe(res.Latency, res.At)
		}
		if from != ProbeDown || p.successes >= healthy {
			to = ProbeUp
			if res.Health == "Degraded" {
				to = ProbeDegraded
			}
		}
	} else {
		p.failures++
		p.successes = 0
		if p.failures >= unhealthy {
			to = ProbeDown
		}
	}
	if from == ProbeDown && to != ProbeDown {
		r.recovered() // a fresh breaker and outage before it is offered work
	}
	p.state.Store(int32(to))
	if to == ProbeDown && res.NoAnswer {
		// Down and not answering at all: what waits on it would wait
		// forever. (A region that answers that it is unwell is only taken
		// out of rotation: work already there may still finish.)
		r.wentDown()
	}
	return from, to
}

// Prober probes one region's GET /v1/status.
type Prober struct {
	Region *Region
	URL    string      // the region's /v1/status
	Header http.Header // added to each probe (the region's credentials)
	Client *http.Client

	Interval  time.Duration
	Timeout   time.Duration
	Jitter    float64 // each interval is Interval × (1 ± Jitter × random)
	Healthy   int     // successes in a row that bring a down region back
	Unhealthy int     // failures in a row that take it out

	// OnChange is called when the probe state changes.
	OnChange func(from, to ProbeState, res ProbeResult)
}

// Run probes at once and then every Interval until ctx ends. Intervals run
// from one probe's start to the next, so a probe that times out does not
// delay the next: a hung region is declared down Unhealthy × Interval
// after it stops answering, plus at most one Interval.
func (p *Prober) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := time.Now()
		res := p.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if from, to := p.Region.observeProbe(res, p.Healthy, p.Unhealthy); from != to && p.OnChange != nil {
			p.OnChange(from, to, res)
		}
		d := p.Interval
		if p.Jitter > 0 {
			d = time.Duration(float64(d) * (1 + p.Jitter*(2*rand.Float64()-1)))
		}
		t.Reset(max(0, d-time.Since(started)))
	}
}

// statusBody is the self-hosted engine's GET /v1/status answer.
type statusBody struct {
	SystemHealth string `json:"system_health"`
	Batch        int    `json:"active_batch_requests"`
	Stream       int    `json:"active_stream_requests"`
	StreamV2     int    `json:"active_listen_v2_stream_requests"`
}

func (p *Prober) probe(ctx context.Context) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	res := ProbeResult{At: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	for k, v := range p.Header {
		req.Header[k] = v
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		res.NoAnswer = true
		res.Err = "unreachable"
		if IsTimeout(err) {
			res.Err = "timeout"
		}
		return res
	}
	defer resp.Body.Close()
	var body statusBody
	err = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	res.Latency = time.Since(res.At)
	switch {
	case resp.StatusCode != http.StatusOK:
		res.Err = fmt.Sprintf("status %d", resp.StatusCode)
	case err != nil:
		res.Err = "unreadable status body"
		res.NoAnswer = IsTimeout(err) // it stopped answering mid-body
	}
	res.Health = body.SystemHealth
	res.Active = body.Batch + body.Stream + body.StreamV2
	if res.Err == "" {
		switch body.SystemHealth {
		case "Ready", "Healthy", "Degraded":
			res.OK = true
		default:
			res.Err = "system_health " + quote(body.SystemHealth)
		}
	}
	return res
}

func quote(s string) string {
	if len(s) > 32 {
		s = s[:32]
	}
	return fmt.Sprintf("%q", s)
}
