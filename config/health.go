package config

import "time"

// Health configures active health checks and per-region circuit breakers.
type Health struct {
	Probe   Probe   `yaml:"probe"`
	Breaker Breaker `yaml:"breaker"`
}

// Probe configures the active probes of each region's GET /v1/status.
type Probe struct {
	// Disable turns probes off; breakers alone then judge regions.
	Disable bool `yaml:"disable"`
	// Interval between the starts of two probes of a region. Default 1s:
	// with the thresholds below, a region that stops answering is out of
	// rotation within 3s, and the requests and streams waiting on it move.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one probe. Default 1s.
	Timeout time.Duration `yaml:"timeout"`
	// Jitter spreads probes: each interval is Interval × (1 ± Jitter ×
	// random). Default 0.1.
	Jitter float64 `yaml:"jitter"`
	// HealthyThreshold successes in a row bring a region back. Default 2.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// UnhealthyThreshold failures in a row take it out. Default 2.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
}

// Breaker configures the circuit breaker of each region (see
// health.BreakerOptions for the semantics).
type Breaker struct {
	// ConsecutiveFailures in a row trip the breaker. Default 5.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures"`
	// FailureRatio of the attempts in Window trips it once MinRequests have
	// been counted. Default 0.5 of 20.
	FailureRatio float64 `yaml:"failure_ratio"`
	MinRequests  uint32  `yaml:"min_requests"`
	// Window is the rolling window of the counts. Default 10s.
	Window time.Duration `yaml:"window"`
	// OpenTimeout is how long an open breaker keeps the region out before
	// trial attempts (probes that bring a down region back close it at
	// once). Default 3s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// HalfOpenRequests is how many trial attempts a half-open breaker lets
	// through; that many successes close it. Default 3.
	HalfOpenRequests uint32 `yaml:"half_open_requests"`
	// FullStreak is how many 429s in a row count as failures. Default 20.
	FullStreak uint32 `yaml:"full_streak"`
}

// Retry configures failover: trying the next region when one fails.
type Retry struct {
	// Attempts is the most regions one request or stream handshake tries,
	// the first included. Default 3; 1 disables failover.
	Attempts int `yaml:"attempts"`
	// ReplayBytes is the largest request body kept in memory so that it can
	// be sent again; a larger body streams through without failover.
	// Default 4MiB (about two minutes of 16 kHz linear16).
	ReplayBytes ByteSize `yaml:"replay_bytes"`
	// Budget caps retries in progress at this fraction of the requests in
	// progress (Envoy's retry budget), so that a dying region cannot
	// multiply the load on the others. Default 0.2.
	Budget float64 `yaml:"budget"`
	// MinRetries are always allowed in progress, whatever the budget.
	// Default 3.
	MinRetries int `yaml:"min_retries"`
	// BudgetWait is how long a retry may wait for the budget to allow it,
	// so that a burst of failures (a region dying with requests in flight)
	// is retried a few at a time instead of failed. Default 1s; 0 fails at
	// once, as Envoy does.
	BudgetWait time.Duration `yaml:"budget_wait"`
	// Deadline is how long after a request arrives a new attempt may start.
	// Default 30s.
	Deadline time.Duration `yaml:"deadline"`
	// AttemptTimeout, when set, bounds the wait for response headers of a
	// request that can still fail over (its body fits in ReplayBytes); the
	// request then moves to the next region. Default 0 (off): a long file
	// may take minutes on a healthy region, and a hung one is found by its
	// probes instead (requests in flight there move as soon as it is
	// declared down). Set it when probes are disabled.
	AttemptTimeout time.Duration `yaml:"attempt_timeout"`
	// HedgeDelay starts a stream's handshake with the next region if the
	// first has not completed within it; the first to complete is kept and
	// the other closed. Default 1s (a hung region costs a new stream about
	// that much); 0 turns hedging off.
	HedgeDelay time.Duration `yaml:"hedge_delay"`
	// ResumeLog is how much audio past its last final result an open
	// /v1/listen stream of raw audio keeps, to move to another region
	// without losing a word if its own is lost (30s of 16 kHz linear16 mono
	// is 960 KB; a stream holds only what its region has not yet covered
	// with a final, usually a few seconds). A stream that goes longer
	// without a final is no longer resumable. Default 30s; 0 turns moving
	// streams off.
	ResumeLog time.Duration `yaml:"resume_log"`
}

func (c *Config) healthDefaults() {
	p := &c.Health.Probe
	setDefault(&p.Interval, time.Second)
	setDefault(&p.Timeout, time.Second)
	setDefault(&p.Jitter, 0.1)
	setDefault(&p.HealthyThreshold, 2)
	setDefault(&p.UnhealthyThreshold, 2)
	b := &c.Health.Breaker
	setDefault(&b.ConsecutiveFailures, 5)
	setDefault(&b.FailureRatio, 0.5)
	setDefault(&b.MinRequests, 20)
	setDefault(&b.Window, 10*time.Second)
	setDefault(&b.OpenTimeout, 3*time.Second)
	setDefault(&b.HalfOpenRequests, 3)
	setDefault(&b.FullStreak, 20)
	r := &c.Retry
	setDefault(&r.Attempts, 3)
	setDefault(&r.ReplayBytes, 4*MiB)
	setDefault(&r.Budget, 0.2)
	setDefault(&r.MinRetries, 3)
	setDefault(&r.Deadline, 30*time.Second)
	if !c.has("retry.resume_log") {
		r.ResumeLog = 30 * time.Second
	}
	if !c.has("retry.hedge_delay") {
		r.HedgeDelay = time.Second
	}
	if !c.has("retry.budget_wait") {
		r.BudgetWait = time.Second
	}
}

func (c *Config) validateHealth() error {
	p := c.Health.Probe
	switch {
	case p.Interval < 0 || p.Timeout < 0:
		return c.errorf("health.probe", "interval and timeout must not be negative")
	case p.Timeout > p.Interval:
		return c.errorf("health.probe.timeout", "%v is longer than the interval %v", p.Timeout, p.Interval)
	case p.Jitter < 0 || p.Jitter >= 1:
		return c.errorf("health.probe.jitter", "%v is outside [0, 1)", p.Jitter)
	case p.HealthyThreshold < 1 || p.UnhealthyThreshold < 1:
		return c.errorf("health.probe", "thresholds must be at least 1")
	}
	b := c.Health.Breaker
	switch {
	case b.FailureRatio <= 0 || b.FailureRatio > 1:
		return c.errorf("health.breaker.failure_ratio", "%v is outside (0, 1]", b.FailureRatio)
	case b.Window < 10*time.Millisecond:
		return c.errorf("health.breaker.window", "%v is too short", b.Window)
	case b.OpenTimeout < 0:
		return c.errorf("health.breaker.open_timeout", "must not be negative")
	}
	r := c.Retry
	switch {
	case r.Attempts < 1:
		return c.errorf("retry.attempts", "must be at least 1")
	case r.ReplayBytes < 0:
		return c.errorf("retry.replay_bytes", "must not be negative")
	case r.Budget < 0 || r.Budget > 1:
		return c.errorf("retry.budget", "%v is outside [0, 1]", r.Budget)
	case r.MinRetries < 0:
		return c.errorf("retry.min_retries", "must not be negative")
	case r.Deadline < 0 || r.HedgeDelay < 0 || r.AttemptTimeout < 0 || r.BudgetWait < 0 || r.ResumeLog < 0:
		return c.errorf("retry", "deadline, attempt_timeout, budget_wait, hedge_delay and resume_log must not be negative")
	}
	return nil
}
