package proxy

import (
	"cmp"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/routing"
)

// RetryOptions configure failover (see config.Retry).
type RetryOptions struct {
	failover.Policy
	ReplayBytes int64 // largest request body kept for replay
	// AttemptTimeout, when set, bounds the wait for a region's response
	// headers when the request can still be retried elsewhere; 0: only
	// ResponseTimeout (a hung region is found by its probes instead, see
	// failover.Attempt.Context).
	AttemptTimeout time.Duration
}

// Stats are the failover counters.
func (h *Handler) Stats() failover.Stats { return h.engine.Stats() }

// FailoversBy is how many requests and handshakes failed over after a
// first failure of cause c.
func (h *Handler) FailoversBy(c failover.Cause) uint64 { return h.engine.FailoversBy(c) }

// RetriesInProgress is how many retries are running now.
func (h *Handler) RetriesInProgress() int { return h.engine.RetriesInProgress() }

// decide ranks the regions for r, leaving out those in exclude, and starts
// the failover run that walks them, for a search that began at start (its
// deadline runs from there). The error is the router's answer;
// otherwise the caller must End the run.
func (h *Handler) decide(r *http.Request, x *exchange, exclude map[string]bool, start time.Time) (*failover.Run, *apiError) {
	q := routing.Query{Place: x.client.Place, Override: r.Header.Get(routing.OverrideHeader),
		Product: routing.ProductOf(r.URL.Path)}
	if x.key != nil && len(x.key.Regions) > 0 {
		q.Allow, q.AllowRule = x.snap.Table.Mask(x.key.Regions), "key "+x.key.Name
		if q.Allow == 0 { // none of its regions exists: confined to nowhere
			return nil, errResidencyFull(q.AllowRule)
		}
	}
	d, err := x.snap.Table.Select(x.candidates[:0], q)
	switch {
	case errors.Is(err, routing.ErrNotServed) && q.Override == "":
		return nil, &apiError{http.StatusNotFound, codeNotFound, "The path " + r.URL.Path + " is not served here: " + err.Error() + "."}
	case errors.Is(err, routing.ErrNotAllowed):
		return nil, &apiError{http.StatusForbidden, codeRegionNotAllowed, err.Error() + "."}
	case err != nil:
		return nil, &apiError{http.StatusBadRequest, codeBadRequest, err.Error() + " in " + routing.OverrideHeader + "."}
	}
	x.rule = d.Rule
	regions := x.regions[:0]
	kept := d.Candidates[:0]
	for _, c := range d.Candidates {
		if exclude[c.Name] {
			continue
		}
		kept = append(kept, c)
		regions = append(regions, x.snap.Upstreams[c.Name].Health)
	}
	d.Candidates = kept
	x.decision = d
	return h.engine.Begin(r.Context(), failover.Plan{Regions: regions, Reason: d.Reason, Confined: d.Rule != ""}, start), nil
}

// upstream is the region an attempt goes to.
func (x *exchange) upstream(a *failover.Attempt) *Upstream {
	return x.snap.Upstreams[x.decision.Candidates[a.Index].Name]
}

// serving records that a's region answers the client.
func (x *exchange) serving(a *failover.Attempt) {
	x.attempt, x.up, x.reason = a, x.upstream(a), a.Reason
}

// noRegion is the answer when no region could be tried at all.
func (x *exchange) noRegion() *apiError {
	if x.rule != "" {
		return errResidencyFull(x.rule)
	}
	return errNoRegion
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

// setRouteHeaders names the serving region and why it was chosen.
func (x *exchange) setRouteHeaders(h http.Header) {
	if x.up == nil {
		return
	}
	h.Set(routing.OverrideHeader, cmp.Or(x.up.Region, x.up.Name))
	h.Set(routing.RouteHeader, string(x.reason))
}

var (
	errAttemptTimeout = timeoutError{"the region did not answer within the attempt timeout"}
)

type timeoutError struct{ msg string }

func (e timeoutError) Error() string { return e.msg }
func (timeoutError) Timeout() bool   { return true }
