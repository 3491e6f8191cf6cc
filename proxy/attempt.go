package proxy

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/routing"
)

// RetryOptions configure failover (see config.Retry).
type RetryOptions struct {
	Attempts    int           // regions one request may try, the first included; <= 1: no failover
	ReplayBytes int64         // largest request body kept for replay
	Budget      float64       // retries in progress / requests in progress
	MinRetries  int           // retries in progress always allowed
	Deadline    time.Duration // no new attempt after this since arrival
	// BudgetWait is how long a retry may wait for the budget to allow it
	// (a burst of failures, as when a region dies with requests in flight,
	// is retried a few at a time rather than failed); 0: do not wait.
	BudgetWait time.Duration
	// AttemptTimeout bounds the wait for a region's response headers when
	// the request can still be retried elsewhere: a body small enough to
	// replay is small enough to answer quickly, and a hung region should
	// cost that long once, not the full response timeout.
	AttemptTimeout time.Duration
	HedgeDelay     time.Duration // streams: start the next handshake after this; 0: off
}

// Stats are the failover counters.
type Stats struct {
	Retries      uint64 `json:"retries"`       // attempts after the first
	BudgetDenied uint64 `json:"budget_denied"` // retries not made because the budget was spent
	Failovers    uint64 `json:"failovers"`     // served by a region other than the first choice because it failed
	Spillovers   uint64 `json:"spillovers"`    // served elsewhere because a better region was full
	Hedges       uint64 `json:"hedges"`        // hedged stream handshakes started
}

type counters struct {
	inProgress atomic.Int64 // requests and stream handshakes being routed
	retrying   atomic.Int64 // retries in progress

	retries, budgetDenied, failovers, spillovers, hedges atomic.Uint64

	mu    sync.Mutex
	freed chan struct{} // closed when a retry ends, for retries waiting on the budget
}

// Stats returns the failover counters.
func (h *Handler) Stats() Stats {
	c := &h.counters
	return Stats{Retries: c.retries.Load(), BudgetDenied: c.budgetDenied.Load(),
		Failovers: c.failovers.Load(), Spillovers: c.spillovers.Load(), Hedges: c.hedges.Load()}
}

// RetriesInProgress is how many retries are running now.
func (h *Handler) RetriesInProgress() int { return int(h.counters.retrying.Load()) }

// plan walks one request's candidates, admitting regions in turn.
type plan struct {
	h    *Handler
	x    *exchange
	d    routing.Decision
	next int // the next candidate to ask

	full        []int // candidates refused as full, for the last resort
	overTried   bool
	skippedFull bool // a better candidate was full
	failed      bool // a better candidate was out of rotation or failed
	attempts    int
}

// decide ranks the regions for r. The error is the router's answer.
func (h *Handler) decide(r *http.Request, x *exchange) (*plan, *apiError) {
	var err error
	p := &plan{h: h, x: x}
	q := routing.Query{Place: x.client.Place, Override: r.Header.Get(routing.OverrideHeader)}
	if x.key != nil && len(x.key.Regions) > 0 {
		q.Allow, q.AllowRule = x.snap.Table.Mask(x.key.Regions), "key "+x.key.Name
		if q.Allow == 0 { // none of its regions exists: confined to nowhere
			return nil, errResidencyFull(q.AllowRule)
		}
	}
	p.d, err = x.snap.Table.Select(x.candidates[:0], q)
	switch {
	case errors.Is(err, routing.ErrNotAllowed):
		return nil, &apiError{http.StatusForbidden, codeRegionNotAllowed, err.Error() + "."}
	case err != nil:
		return nil, &apiError{http.StatusBadRequest, codeBadRequest, err.Error() + " in " + routing.OverrideHeader + "."}
	}
	x.rule = p.d.Rule
	return p, nil
}

// admit leases the next region that takes the attempt, or reports false.
// When every candidate has been asked and some were only full, the least
// loaded of those takes it over capacity, unless the client is under a
// residency rule.
func (p *plan) admit() (*Upstream, health.Lease, bool) {
	for p.next < len(p.d.Candidates) {
		i := p.next
		p.next++
		up := p.x.snap.Upstreams[p.d.Candidates[i].Name]
		lease, why := up.Health.Admit(false)
		switch why {
		case health.Admitted:
			p.take(up, i)
			return up, lease, true
		case health.RefusedFull:
			p.full = append(p.full, i)
			p.skippedFull = true
		default:
			p.failed = true
		}
	}
	if p.overTried || p.d.Rule != "" || len(p.full) == 0 {
		return nil, health.Lease{}, false
	}
	p.overTried = true
	load := func(i int) float64 { return p.x.snap.Upstreams[p.d.Candidates[i].Name].Health.Load() }
	slices.SortStableFunc(p.full, func(a, b int) int {
		la, lb := load(a), load(b)
		switch {
		case la < lb:
			return -1
		case la > lb:
			return 1
		}
		return 0
	})
	for _, i := range p.full {
		up := p.x.snap.Upstreams[p.d.Candidates[i].Name]
		if lease, why := up.Health.Admit(true); why == health.Admitted {
			p.take(up, i)
			return up, lease, true
		}
	}
	return nil, health.Lease{}, false
}

// take records that up, the i-th candidate, serves the next attempt.
func (p *plan) take(up *Upstream, i int) {
	x := p.x
	x.up = up
	switch {
	case p.failed || p.attempts > 0:
		x.reason = routing.Failover
	case i > 0 && p.skippedFull:
		x.reason = routing.Spillover
	default:
		x.reason = p.d.Reason
	}
	p.attempts++
}

// mayRetry reports whether another attempt may start: within the attempt
// limit and the deadline, and within the retry budget, waiting up to
// BudgetWait for it. On true the caller holds a retry slot until it calls
// retryDone.
func (p *plan) mayRetry() bool {
	h := p.h
	o := h.opts.Retry
	if p.attempts >= o.Attempts || time.Since(p.x.start) >= o.Deadline || clientGone(p.x.ctx) {
		return false
	}
	c := &h.counters
	var wait *time.Timer
	for {
		limit := max(int64(o.MinRetries), int64(o.Budget*float64(c.inProgress.Load())))
		n := c.retrying.Load()
		if n < limit {
			if c.retrying.CompareAndSwap(n, n+1) {
				c.retries.Add(1)
				return true
			}
			continue
		}
		if o.BudgetWait <= 0 {
			break
		}
		if wait == nil {
			wait = time.NewTimer(min(o.BudgetWait, o.Deadline-time.Since(p.x.start)))
			defer wait.Stop()
		}
		c.mu.Lock()
		if c.freed == nil {
			c.freed = make(chan struct{})
		}
		freed := c.freed
		c.mu.Unlock()
		if c.retrying.Load() < limit {
			continue // a slot freed before we started waiting
		}
		select {
		case <-freed:
			continue
		case <-wait.C:
		case <-p.x.ctx.Done():
		}
		break
	}
	c.budgetDenied.Add(1)
	return false
}

func (p *plan) retryDone() {
	c := &p.h.counters
	c.retrying.Add(-1)
	c.mu.Lock()
	if c.freed != nil {
		close(c.freed)
		c.freed = nil
	}
	c.mu.Unlock()
}

// served counts how the request ended up where it did.
func (p *plan) served() {
	switch p.x.reason {
	case routing.Failover:
		p.h.counters.failovers.Add(1)
	case routing.Spillover:
		p.h.counters.spillovers.Add(1)
	}
}

// retryable reports whether an attempt's result sends the request on to the
// next region: no answer at all, or 429, 502, 503, 504.
func retryable(status int, err error) bool {
	if err != nil {
		return true
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryAfter parses a region's Retry-After (seconds or an HTTP date).
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

// release ends the current attempt's lease with o, once.
func (x *exchange) release(o health.Outcome) {
	if x.leased {
		x.leased = false
		x.lease.Done(o)
	}
}

// setRouteHeaders names the serving region and why it was chosen.
func (x *exchange) setRouteHeaders(h http.Header) {
	if x.up == nil {
		return
	}
	h.Set(routing.OverrideHeader, x.up.Name)
	h.Set(routing.RouteHeader, string(x.reason))
}
