// Package failover is the router's one attempt loop, used by pre-recorded
// requests and stream handshakes alike.
//
// A Run walks one request's candidate regions, best first as routing ranked
// them. For each attempt it admits the next region that takes work
// (health.Region.Admit: in rotation, breaker closed, room left), and when
// every candidate has been asked and some were only full, lets the least
// loaded of those take it over capacity, unless the client is confined to
// its regions by a residency rule or its key. The caller sends the attempt
// and hands its Result back:
//
//	a := run.First()
//	for a != nil {
//		res := send(a)              // one attempt, one region
//		if next := run.Retry(a, res, replayable); next != nil {
//			a = next                // a was failed, reported and released
//			continue
//		}
//		a.Report(res)               // the answer the client gets
//		break
//	}
//	run.End()                       // releases whatever is still held
//
// Classify is the one place that decides what a Result means: for the
// region's breaker, for its learned capacity, and for retrying (see the
// table on Classify). Retry allows another attempt only while the request
// can be replayed, within Policy.Attempts and Policy.Deadline, and within
// the retry budget shared by every request (Envoy's: retries in progress
// at most Budget × requests in progress, or MinRetries). Hedge starts an
// extra attempt while one is pending (stream handshakes).
//
// Every attempt holds a health.Lease. Its capacity unit and its breaker
// pass are given back exactly once by construction: Attempt.Report and
// Attempt.Release are idempotent, Retry reports and releases the attempt
// it replaces, and End releases every attempt of the run that is still
// held (reporting those never reported as canceled). An attempt's context
// is cancelled when its region is declared down (cause health.ErrDown), so
// that a request waiting on a hung region is replayed elsewhere at once.
package failover

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/routing"
)

// Policy is how far one request may go looking for a region.
type Policy struct {
	// Attempts is the most regions one request tries, the first included
	// (hedges included); <= 1: no failover.
	Attempts int
	// Deadline: no new attempt starts this long after the request arrived.
	Deadline time.Duration
	// HedgeDelay is how long a stream handshake may take before an attempt
	// at the next region races it; 0: no hedging.
	HedgeDelay time.Duration
	// Budget caps retries in progress at this fraction of requests in
	// progress; MinRetries are always allowed. BudgetWait is how long a
	// retry may wait for the budget (0: not at all).
	Budget     float64
	MinRetries int
	BudgetWait time.Duration
}

// Engine holds what the runs of every request share: the policy, the retry
// budget and the counters.
type Engine struct {
	policy Policy

	inProgress atomic.Int64 // runs in progress
	retrying   atomic.Int64 // budget slots held by runs

	mu    sync.Mutex
	freed chan struct{} // closed when a slot is given back

	retries, budgetDenied, failovers, spillovers, hedges atomic.Uint64
	byCause                                              [numCauses]atomic.Uint64 // failovers by their first failure
}

// New returns an engine with policy p.
func New(p Policy) *Engine { return &Engine{policy: p} }

// Policy returns the engine's policy.
func (e *Engine) Policy() Policy { return e.policy }

// Stats are the engine's counters.
type Stats struct {
	Retries      uint64            `json:"retries"`       // attempts after the first, hedges included
	BudgetDenied uint64            `json:"budget_denied"` // retries not made because the budget was spent
	Failovers    uint64            `json:"failovers"`     // served by a region tried after another's attempt failed
	Spillovers   uint64            `json:"spillovers"`    // served elsewhere because a better region was full
	Hedges       uint64            `json:"hedges"`        // hedged stream handshakes started
	ByCause      map[string]uint64 `json:"failovers_by_cause"`
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	s := Stats{Retries: e.retries.Load(), BudgetDenied: e.budgetDenied.Load(), Failovers: e.failovers.Load(),
		Spillovers: e.spillovers.Load(), Hedges: e.hedges.Load(), ByCause: map[string]uint64{}}
	for c := Cause(1); c < numCauses; c++ {
		if n := e.byCause[c].Load(); n > 0 {
			s.ByCause[c.String()] = n
		}
	}
	return s
}

// FailoversBy is how many requests failed over after a first failure of
// cause c.
func (e *Engine) FailoversBy(c Cause) uint64 { return e.byCause[c].Load() }

// RetriesInProgress is how many budget slots are held now.
func (e *Engine) RetriesInProgress() int { return int(e.retrying.Load()) }

// Plan is what a run walks.
type Plan struct {
	// Regions are the candidates, best first.
	Regions []*health.Region
	// Reason is why Regions[0] is first.
	Reason routing.Reason
	// Confined clients (a residency rule or a key's regions) are never
	// served over a region's capacity.
	Confined bool
}

// Run is one request's walk over its candidates. Its methods are called
// from one goroutine, except the attempts' Report and Release, which are
// safe anywhere.
type Run struct {
	e     *Engine
	ctx   context.Context
	plan  Plan
	start time.Time

	next        int   // the next candidate to ask
	full        []int // candidates refused as full, for the last resort
	overTried   bool
	skippedFull bool // a better candidate was full
	skippedOut  bool // a better candidate was out of rotation
	failed      Cause
	attempts    []*Attempt
	slots       int // budget slots held
	settled     bool
	noOver      bool // admit within capacity only (a hedge)
}

// Begin starts a run for a request that arrived at start. ctx is the
// request's: its end cancels every attempt. End must be called.
func (e *Engine) Begin(ctx context.Context, p Plan, start time.Time) *Run {
	e.inProgress.Add(1)
	return &Run{e: e, ctx: ctx, plan: p, start: start}
}

// Attempt is one try at one region.
type Attempt struct {
	run    *Run
	Index  int            // the candidate's index in Plan.Regions
	Region *health.Region // the candidate
	Reason routing.Reason // why this region serves, if it does
	Start  time.Time

	lease  *health.Lease
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool // stops watching the region's outage
}

// Context is cancelled when the request ends, when the region is declared
// down (context.Cause: health.ErrDown), or by Cancel.
func (a *Attempt) Context() context.Context { return a.ctx }

// Cancel ends the attempt's context with cause (e.g. an attempt timeout).
func (a *Attempt) Cancel(cause error) { a.cancel(cause) }

// Report classifies res and tells the region, once (see health.Lease.Report
// for a later failure). It returns the verdict.
func (a *Attempt) Report(res Result) Verdict {
	res = a.explain(res)
	v := Classify(res)
	a.lease.Report(v.Outcome)
	return v
}

// Release gives the region's capacity back and stops the attempt's
// context; an attempt never reported is reported canceled. Idempotent.
func (a *Attempt) Release() {
	a.lease.Release()
	a.stop()
	a.cancel(context.Canceled)
}

// Done reports res and releases the attempt.
func (a *Attempt) Done(res Result) Verdict {
	v := a.Report(res)
	a.Release()
	return v
}

// Err says what an attempt's error was about: a cancellation is replaced
// by its cause (the client going away, the region declared down, or the
// caller's, such as an attempt timeout); any other error is itself.
func (a *Attempt) Err(err error) error {
	if err == nil || a.ctx.Err() == nil {
		return err
	}
	switch cause := context.Cause(a.ctx); {
	case a.run.ctx.Err() != nil:
		return context.Canceled
	case cause != context.Canceled:
		return cause
	}
	return err
}

// explain is res with its error explained (see Err).
func (a *Attempt) explain(res Result) Result {
	res.Err = a.Err(res.Err)
	return res
}

// First admits the first region that takes the request, or returns nil.
func (r *Run) First() *Attempt { return r.admit() }

// Retry decides what a failed attempt's Result allows. If res is retryable
// (Classify), the request can still be replayed, and the policy, deadline
// and budget allow it, and another region admits it, then a is reported and
// the next attempt returned; the caller releases a (after draining its
// answer, so that the connection can be reused), or End does. Otherwise it
// returns nil and a is left as it was: its answer is the one the client
// gets, and the caller reports and releases it.
//
// A retry because the region was declared down is not charged to the
// budget or bounded by the deadline: the router cut the attempt itself,
// and the replay adds no load that was not already there.
func (r *Run) Retry(a *Attempt, res Result, replayable bool) *Attempt {
	res = a.explain(res)
	v := Classify(res)
	if !v.Retry || !replayable {
		return nil
	}
	next := r.another(v.Cause != CauseDown, true)
	if next == nil {
		return nil
	}
	if r.failed == 0 {
		r.failed = v.Cause
	}
	next.Reason = routing.Failover
	a.Report(res)
	return next
}

// Hedge admits an extra attempt while another is still pending, when the
// policy hedges and the budget has a slot now (a hedge never waits for
// one, nor goes over a region's capacity); nil otherwise.
func (r *Run) Hedge() *Attempt {
	if r.e.policy.HedgeDelay <= 0 {
		return nil
	}
	r.noOver = true
	next := r.another(true, false)
	r.noOver = false
	if next != nil {
		r.e.hedges.Add(1)
		next.Reason = routing.Hedged
	}
	return next
}

// another admits an attempt after the first: within the attempt limit,
// and, when budget is set, within the deadline and the retry budget
// (waiting for a slot if wait is set).
func (r *Run) another(budget, wait bool) *Attempt {
	if len(r.attempts) >= r.e.policy.Attempts || r.ctx.Err() != nil {
		return nil
	}
	if budget && !r.mayRetry(wait) {
		return nil
	}
	next := r.admit()
	if next == nil {
		if budget {
			r.giveBack()
		}
		return nil
	}
	r.e.retries.Add(1)
	return next
}

// Served records that a's answer is the one the client gets (counted as a
// failover or a spillover by its reason). A hedge that wins after another
// attempt failed is a failover. Call it before reading a.Reason.
func (r *Run) Served(a *Attempt) {
	if a.Reason == routing.Hedged && r.failed != 0 {
		a.Reason = routing.Failover
	}
	switch a.Reason {
	case routing.Failover:
		r.e.failovers.Add(1)
		if r.failed != 0 {
			r.e.byCause[r.failed].Add(1)
		}
	case routing.Spillover:
		r.e.spillovers.Add(1)
	}
}

// Fail notes that attempt a failed with res while others are pending (a
// hedged handshake): a is reported and released; its failure is what a
// later attempt fails over from.
func (r *Run) Fail(a *Attempt, res Result) Verdict {
	v := a.Done(res)
	if r.failed == 0 && v.Cause != CauseNone && v.Outcome.Kind != health.Canceled {
		r.failed = v.Cause
	}
	return v
}

// Settle ends the run's search for a region: its budget slots are given
// back and it no longer counts as a request in progress for the budget.
// A stream calls it once its handshake is done, so that a stream that
// lives for minutes does not hold a retry slot all that time; its lease
// is kept until End.
func (r *Run) Settle() {
	if r.settled {
		return
	}
	r.settled = true
	for r.slots > 0 {
		r.giveBack()
	}
	r.e.inProgress.Add(-1)
}

// End settles the run and releases every attempt still held.
func (r *Run) End() {
	r.Settle()
	for _, a := range r.attempts {
		a.Release()
	}
}

// admit leases the next region that takes the attempt, or returns nil.
func (r *Run) admit() *Attempt {
	regions := r.plan.Regions
	for r.next < len(regions) {
		i := r.next
		r.next++
		lease, why := regions[i].Admit(false)
		switch why {
		case health.Admitted:
			return r.take(i, lease)
		case health.RefusedFull:
			r.full = append(r.full, i)
			r.skippedFull = true
		default:
			r.skippedOut = true
		}
	}
	if r.overTried || r.plan.Confined || r.noOver || len(r.full) == 0 {
		return nil
	}
	r.overTried = true
	// The least loaded first; a region that asked for no work (429 with
	// Retry-After) only when nothing else is left.
	slices.SortStableFunc(r.full, func(a, b int) int {
		if ba, bb := regions[a].Busy(), regions[b].Busy(); ba != bb {
			if ba {
				return 1
			}
			return -1
		}
		la, lb := regions[a].Load(), regions[b].Load()
		switch {
		case la < lb:
			return -1
		case la > lb:
			return 1
		}
		return 0
	})
	for _, i := range r.full {
		if lease, why := regions[i].Admit(true); why == health.Admitted {
			return r.take(i, lease)
		}
	}
	return nil
}

func (r *Run) take(i int, lease *health.Lease) *Attempt {
	a := &Attempt{run: r, Index: i, Region: r.plan.Regions[i], lease: lease, Start: time.Now()}
	switch {
	case len(r.attempts) > 0:
		a.Reason = routing.Failover
	case i > 0 && r.skippedFull:
		a.Reason = routing.Spillover
	case i > 0 && r.skippedOut:
		a.Reason = routing.Unhealthy
	default:
		a.Reason = r.plan.Reason
	}
	a.ctx, a.cancel = context.WithCancelCause(r.ctx)
	a.stop = context.AfterFunc(a.Region.Outage(), func() { a.cancel(health.ErrDown) })
	r.attempts = append(r.attempts, a)
	return a
}

// mayRetry takes a budget slot for another attempt, within the deadline,
// waiting up to BudgetWait for the budget if wait is set.
func (r *Run) mayRetry(mayWait bool) bool {
	e, p := r.e, &r.e.policy
	left := p.Deadline - time.Since(r.start)
	if left <= 0 {
		return false
	}
	var wait *time.Timer
	for {
		limit := max(int64(p.MinRetries), int64(p.Budget*float64(e.inProgress.Load())))
		n := e.retrying.Load()
		if n < limit {
			if e.retrying.CompareAndSwap(n, n+1) {
				r.slots++
				return true
			}
			continue
		}
		if p.BudgetWait <= 0 || !mayWait {
			break
		}
		if wait == nil {
			wait = time.NewTimer(min(p.BudgetWait, left))
			defer wait.Stop()
		}
		e.mu.Lock()
		if e.freed == nil {
			e.freed = make(chan struct{})
		}
		freed := e.freed
		e.mu.Unlock()
		if e.retrying.Load() < limit {
			continue // a slot was freed before we started waiting
		}
		select {
		case <-freed:
			continue
		case <-wait.C:
		case <-r.ctx.Done():
		}
		break
	}
	e.budgetDenied.Add(1)
	return false
}

// giveBack returns one budget slot.
func (r *Run) giveBack() {
	r.slots--
	e := r.e
	e.retrying.Add(-1)
	e.mu.Lock()
	if e.freed != nil {
		close(e.freed)
		e.freed = nil
	}
	e.mu.Unlock()
}
