// Package server assembles a running router from a config: it starts the
// simulated engines of sim:// regions, builds each region's health state,
// the routing table and the proxy, and serves the API and admin listeners
// until its context ends, then stops gracefully.
//
// It is the composition root; the packages it wires know nothing of each
// other beyond the small interfaces they declare.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/routing"
	"github.com/earshot/earshot/sim"
)

// Server is a configured router.
type Server struct {
	cfg     *config.Config // as started; see Reload for what a reload changes
	log     *zap.Logger
	proxy   *proxy.Handler
	metrics *metrics

	probeClient *http.Client
	certs       *certReloader  // nil without TLS
	geo         *routing.GeoDB // nil without a database

	state    atomic.Pointer[state]
	lastData atomic.Pointer[[]byte] // the config file's content as last loaded
	stopping atomic.Bool            // shutdown has begun: not ready

	reloadMu    sync.Mutex // serialises reloads; guards the two below
	reloadErr   string
	reloadCount int

	simMu   sync.Mutex
	allSims []*sim.Server // every engine started, for Close

	probeMu  sync.Mutex
	probeCtx context.Context // set while serving
	probeWG  *sync.WaitGroup
	probes   map[*regionState]context.CancelFunc
}

type regionState struct {
	name   string
	kind   string // "sim" or "http"
	url    string // safe to show: credentials are not allowed in region URLs
	cfg    config.Region
	health *health.Region
	sim    *sim.Server // the simulated engine of a sim:// region
	base   *url.URL
	header http.Header // credentials for probes; never shown
}

// live is the state new requests see.
func (s *Server) live() *state { return s.state.Load() }

// New builds a router from cfg. It starts the simulated engines of sim://
// regions on loopback ports; Close stops them.
func New(cfg *config.Config, log *zap.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, probes: map[*regionState]context.CancelFunc{},
		probeClient: &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: cfg.Timeouts.Connect}).DialContext,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     2 * cfg.Health.Probe.Interval,
		}}}
	var err error
	if path := cfg.Routing.GeoIP.Database; path != "" {
		if s.geo, err = routing.OpenGeoDB(path); err != nil {
			return nil, err
		}
		log.Info("geoip database loaded", zap.String("path", path), zap.String("type", s.geo.Kind()))
	}
	st, snap, err := s.build(cfg, nil)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.state.Store(st)
	if cfg.Auth.Disable {
		log.Warn("client authentication is disabled (auth.disable): anyone who can reach the router can use it")
	}
	if t := cfg.TLS; t.Cert != "" {
		if s.certs, err = newCertReloader(t.Cert, t.Key, func(err error) {
			log.Error("tls certificate not reloaded; the loaded one stays in use", zap.Error(err))
		}); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.metrics = newMetrics(s)
	s.proxy = proxy.New(snap, proxy.Options{
		Logger:           log,
		Observer:         s.metrics,
		StreamIdle:       cfg.Timeouts.StreamIdle,
		RegionPing:       cfg.Timeouts.RegionPing,
		ResumeLog:        cfg.Retry.ResumeLog,
		ConnectTimeout:   cfg.Timeouts.Connect,
		ResponseTimeout:  cfg.Timeouts.Response,
		HandshakeTimeout: cfg.Timeouts.Handshake,
		CloseGrace:       cfg.Timeouts.CloseGrace,
		MaxBodyBytes:     int64(cfg.Limits.MaxBodyBytes),
		MaxMessageBytes:  int64(cfg.Limits.MaxMessageBytes),
		Retry: proxy.RetryOptions{
			Policy: failover.Policy{
				Attempts:   cfg.Retry.Attempts,
				Budget:     cfg.Retry.Budget,
				MinRetries: cfg.Retry.MinRetries,
				BudgetWait: cfg.Retry.BudgetWait,
				Deadline:   cfg.Retry.Deadline,
				HedgeDelay: cfg.Retry.HedgeDelay,
			},
			ReplayBytes:    int64(cfg.Retry.ReplayBytes),
			AttemptTimeout: cfg.Retry.AttemptTimeout,
		},
	})
	s.loaded(cfg)
	return s, nil
}

func breakerOptions(b *config.Breaker) health.BreakerOptions {
	return health.BreakerOptions{
		ConsecutiveFailures: b.ConsecutiveFailures, FailureRatio: b.FailureRatio, MinRequests: b.MinRequests,
		Window: b.Window, OpenTimeout: b.OpenTimeout, HalfOpenRequests: b.HalfOpenRequests, FullStreak: b.FullStreak,
	}
}

// logBreaker logs a region's breaker changes: open is a warning.
func (s *Server) logBreaker(region string) func(from, to health.BreakerState) {
	return func(from, to health.BreakerState) {
		level := zap.InfoLevel
		if to == health.BreakerOpen {
			level = zap.WarnLevel
		}
		s.log.Log(level, "circuit breaker", zap.String("region", region),
			zap.String("from", string(from)), zap.String("to", string(to)))
	}
}

// probe runs the active health checks of one region until ctx ends.
func (s *Server) probe(ctx context.Context, r *regionState) {
	p := s.cfg.Health.Probe
	status := *r.base
	status.Path += "/v1/status"
	pr := &health.Prober{
		Region: r.health, URL: status.String(), Header: r.header, Client: s.probeClient,
		Interval: p.Interval, Timeout: p.Timeout, Jitter: p.Jitter,
		Healthy: p.HealthyThreshold, Unhealthy: p.UnhealthyThreshold,
		OnChange: func(from, to health.ProbeState, res health.ProbeResult) {
			level := zap.InfoLevel
			if to == health.ProbeDown {
				level = zap.WarnLevel
			}
			s.log.Log(level, "health check", zap.String("region", r.name), zap.Stringer("from", from),
				zap.Stringer("to", to), zap.String("system_health", res.Health), zap.String("error", res.Err))
		},
	}
	pr.Run(ctx)
}

// tableOptions translates the routing section for the routing package.
func tableOptions(rc *config.Routing) routing.Options {
	o := routing.Options{
		AllowOverride:     rc.AllowClientOverride,
		FallbackRegion:    rc.Fallback.Region,
		PreferCountry:     rc.Prefer.Countries,
		PreferContinent:   rc.Prefer.Continents,
		LatencyAllowance:  rc.LatencyAllowance,
		SlowdownThreshold: rc.SlowdownThreshold,
	}
	if l := rc.Fallback.Location; l != nil {
		o.FallbackLocation = &routing.Location{Lat: l.Lat, Lon: l.Lon}
	}
	if l := rc.Location; l != nil {
		o.RouterLocation = &routing.Location{Lat: l.Lat, Lon: l.Lon}
	}
	for _, r := range rc.Residency {
		o.Residency = append(o.Residency, routing.Rule{Name: r.Name, Countries: r.Countries,
			Continents: r.Continents, Regions: r.Regions})
	}
	return o
}

func (s *Server) startSim(rc *config.Region) (*sim.Server, error) {
	o := sim.Options{Region: rc.Name, Logger: s.log.Named("sim").With(zap.String("sim_region", rc.Name))}
	if c := rc.Sim; c != nil {
		o.Latency, o.Capacity, o.FullStatus = c.Latency, c.Capacity, c.FullStatus
		o.SilenceTimeout, o.Mode = c.SilenceTimeout, sim.Mode(c.Mode)
	}
	srv, err := sim.Start("127.0.0.1:0", o)
	if err != nil {
		return nil, err
	}
	s.simMu.Lock()
	s.allSims = append(s.allSims, srv)
	s.simMu.Unlock()
	return srv, nil
}

// Handler is the API handler (the data path).
func (s *Server) Handler() http.Handler { return s.proxy }

// Sim returns the simulated engine of a sim:// region, or nil.
func (s *Server) Sim(region string) *sim.Server { return s.live().sims[region] }

// Run listens on the configured addresses and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	api, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	admin, err := net.Listen("tcp", s.cfg.Admin)
	if err != nil {
		_ = api.Close()
		return fmt.Errorf("listen admin: %w", err)
	}
	return s.Serve(ctx, api, admin)
}

// Serve serves the API on api and the admin endpoints on admin until ctx
// ends, then shuts down within the configured deadline. It closes both
// listeners.
func (s *Server) Serve(ctx context.Context, api, admin net.Listener) error {
	t := s.cfg.Timeouts
	api = limit(api, s.cfg.Limits.MaxConnections)
	if s.certs != nil {
		api = tls.NewListener(api, s.certs.tlsConfig())
	}
	apiSrv := &http.Server{
		Handler:           s.proxy,
		ReadHeaderTimeout: t.ReadHeader,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    int(s.cfg.Limits.MaxHeaderBytes),
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	adminSrv := &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: t.ReadHeader,
		IdleTimeout:       t.Idle,
		ErrorLog:          zap.NewStdLog(s.log.Named("admin")),
	}
	s.log.Info("serving", zap.String("listen", api.Addr().String()), zap.String("admin", admin.Addr().String()),
		zap.Int("regions", len(s.live().regions)))

	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if s.geo != nil {
		wg.Go(func() { s.watchGeo(wctx) })
	}
	wg.Go(func() { s.watchDemand(wctx) })
	s.probeMu.Lock()
	s.probeCtx, s.probeWG = wctx, &wg
	s.probeMu.Unlock()
	s.restartProbes()
	for _, p := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{apiSrv, api}, {adminSrv, admin}} {
		wg.Go(func() {
			if err := p.srv.Serve(p.ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.stopping.Store(true) // /readyz fails from now on
	s.log.Info("shutting down", zap.Duration("deadline", t.Shutdown))
	sctx, cancel := context.WithTimeout(context.Background(), t.Shutdown)
	defer cancel()
	// HTTP requests finish and streams drain side by side, within the one
	// deadline; the admin listener serves until both are done.
	var drain sync.WaitGroup
	drain.Go(func() {
		if e := apiSrv.Shutdown(sctx); e != nil {
			_ = apiSrv.Close()
		}
	})
	drain.Go(func() { s.proxy.Shutdown(sctx) })
	drain.Wait()
	_ = adminSrv.Shutdown(sctx)
	s.probeMu.Lock()
	stopWatch()
	s.probeCtx = nil // no probes start after this
	s.probeMu.Unlock()
	wg.Wait()
	return err
}

// watchGeo reloads the geolocation database when its file is replaced.
func (s *Server) watchGeo(ctx context.Context) {
	log := s.log.With(zap.String("path", s.geo.Path()))
	err := s.geo.Watch(ctx, func(err error) {
		if err != nil {
			log.Error("geoip database not reloaded; the loaded one stays in use", zap.Error(err))
			return
		}
		log.Info("geoip database reloaded", zap.String("type", s.geo.Kind()))
	})
	if err != nil {
		log.Error("cannot watch the geoip database; it will not be reloaded", zap.Error(err))
	}
}

// Close stops the simulated engines and idle upstream connections.
func (s *Server) Close() {
	if s.proxy != nil {
		s.proxy.Close()
	}
	s.probeClient.CloseIdleConnections()
	s.simMu.Lock()
	defer s.simMu.Unlock()
	for _, srv := range s.allSims {
		_ = srv.Close()
	}
}

// adminHandler serves the probes, /status, /metrics, the status page and
// the simulated engines' switches. With admin_token set, everything but the
// probes and the page's static files needs "Authorization: Bearer TOKEN".
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.HandleFunc("GET /status", s.serveStatus)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(s.log.Named("metrics")), EnableOpenMetrics: true}))
	mux.HandleFunc("POST /sim/{region}/mode", s.serveSimMode)
	mux.HandleFunc("POST /regions/{region}/drain", s.serveDrain)
	mux.HandleFunc("DELETE /regions/{region}/drain", s.serveDrain)
	// Go's profiler, as Caddy and most Go services have it (behind the
	// admin token when there is one): go tool pprof http://ADMIN/debug/pprof/profile
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /{$}", serveStatusPage)
	mux.HandleFunc("GET /assets/{file}", serveStatusPage)
	if s.cfg.AdminToken == nil {
		return mux
	}
	want := sha256.Sum256([]byte(s.cfg.AdminToken.Value()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Probes carry no token; the status page's files hold no data.
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !isStatusPage(r.URL.Path) {
			scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			got := sha256.Sum256([]byte(token))
			if !strings.EqualFold(scheme, "bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="earshot-admin"`)
				http.Error(w, "admin endpoints need Authorization: Bearer <admin_token>", http.StatusUnauthorized)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

type regionStatus struct {
	Name       string       `json:"name"`    // the deployment: REGION or REGION/PRODUCT
	Region     string       `json:"region"`  // the configured region
	Product    string       `json:"product"` // what it alone serves; "" for the region's main URL
	Kind       string       `json:"kind"`
	URL        string       `json:"url"`
	State      string       `json:"state"` // one word for people: see regionState.summary
	InRotation bool         `json:"in_rotation"`
	Health     string       `json:"health"` // probes: up, degraded, down
	Breaker    string       `json:"breaker"`
	CoolingMS  int64        `json:"cooling_ms,omitempty"`
	LastProbe  *probeStatus `json:"last_probe,omitempty"`
	InFlight   int          `json:"in_flight"`
	Capacity   int          `json:"capacity"`
	Configured int          `json:"configured_capacity"`
	// Why the capacity is what it is: "configured", or recovering from a
	// refusal (capacity_cut: when, to what, with how much in flight).
	CapacityReason string            `json:"capacity_reason"`
	CapacityCut    *capacityCut      `json:"capacity_cut,omitempty"`
	CapacityCuts   uint64            `json:"capacity_cuts"`
	SlowdownMS     float64           `json:"slowdown_ms"`   // probe round trip now over its usual
	RegionLoad     int               `json:"region_active"` // the region's own count, from its probes
	LatencyMS      float64           `json:"latency_ms"`
	Outcomes       map[string]uint64 `json:"outcomes"`
	SimMode        string            `json:"sim_mode,omitempty"`
	Location       config.Location   `json:"location"`
	Peak           Peak              `json:"peak"` // over window_seconds
}

type capacityCut struct {
	At     time.Time `json:"at"`
	To     int       `json:"to"`
	Held   int       `json:"held"`
	Status int       `json:"status"`
}

type probeStatus struct {
	At           time.Time `json:"at"`
	OK           bool      `json:"ok"`
	SystemHealth string    `json:"system_health,omitempty"`
	Error        string    `json:"error,omitempty"`
	LatencyMS    float64   `json:"latency_ms"`
}

type configStatus struct {
	Path      string    `json:"path"`
	LoadedAt  time.Time `json:"loaded_at"`
	Reloads   int       `json:"reloads"`
	LastError string    `json:"last_error,omitempty"` // the last reload's, if it failed
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summary is a region's state in one word, worst first: draining (removed
// by a reload), open or half-open (breaker), down (probes), cooling (told
// to back off), full (at capacity), degraded (probes), up.
func (r *regionState) summary(draining bool) string {
	h := r.health
	probe, _ := h.Probe()
	switch br := h.Breaker(); {
	case draining || h.Drained():
		return "draining"
	case br == health.BreakerOpen || br == health.BreakerHalfOpen:
		return string(br)
	case probe == health.ProbeDown:
		return "down"
	case h.CoolingFor() > 0:
		return "cooling"
	case h.Capacity() > 0 && h.InFlight() >= h.Capacity():
		return "full"
	case probe == health.ProbeDegraded:
		return "degraded"
	}
	return "up"
}

func (r *regionState) status(draining bool) regionStatus {
	h := r.health
	state, last := h.Probe()
	st := regionStatus{
		Name: r.name, Region: r.cfg.Group, Product: r.cfg.Product, Kind: r.kind, URL: r.url, State: r.summary(draining),
		InRotation: h.InRotation() && !draining, Health: state.String(), Breaker: string(h.Breaker()),
		CoolingMS: h.CoolingFor().Milliseconds(),
		InFlight:  h.InFlight(), Capacity: h.Capacity(), Configured: h.Configured(),
		RegionLoad: h.ReportedActive(), LatencyMS: ms(h.Latency()), SlowdownMS: ms(h.Slowdown()),
		Outcomes: map[string]uint64{}, Location: r.cfg.Location, CapacityCuts: h.Cuts(),
	}
	ci := h.CapacityInfo()
	st.CapacityReason = ci.Reason()
	if !ci.CutAt.IsZero() {
		st.CapacityCut = &capacityCut{At: ci.CutAt, To: ci.CutTo, Held: ci.Held, Status: ci.Status}
	}
	if !last.At.IsZero() {
		st.LastProbe = &probeStatus{At: last.At, OK: last.OK, SystemHealth: last.Health, Error: last.Err, LatencyMS: ms(last.Latency)}
	}
	for k := health.Success; k <= health.Canceled; k++ {
		st.Outcomes[k.String()] = h.Count(k)
	}
	if r.sim != nil {
		st.SimMode = string(r.sim.Engine().Mode())
	}
	return st
}

// ready says why the router should get no new traffic, or nil: it is
// shutting down, or no region can take work.
func (s *Server) ready() error {
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	for _, r := range s.live().regions {
		if r.health.InRotation() {
			return nil
		}
	}
	return errors.New("no region can take work")
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) serveStatus(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	s.sampleDemand(now)
	live := s.live()
	s.reloadMu.Lock()
	cs := configStatus{Path: s.cfg.Path, LoadedAt: live.loadedAt.UTC(), Reloads: s.reloadCount, LastError: s.reloadErr}
	s.reloadMu.Unlock()
	out := struct {
		Ready         bool           `json:"ready"`
		ReadyError    string         `json:"ready_error,omitempty"`
		Config        configStatus   `json:"config"`
		StreamsOpen   int            `json:"streams_open"`
		WindowSeconds int            `json:"window_seconds"` // of flows and peaks
		Regions       []regionStatus `json:"regions"`
		Draining      []regionStatus `json:"draining"`
		Flows         []Flow         `json:"flows"`
		Failover      failover.Stats `json:"failover"`
	}{
		Config: cs, StreamsOpen: s.proxy.OpenStreams(), WindowSeconds: int(flowWindow / time.Second),
		Regions: []regionStatus{}, Draining: []regionStatus{},
		Flows: s.metrics.flows.recent(now), Failover: s.proxy.Stats(),
	}
	if err := s.ready(); err != nil {
		out.ReadyError = err.Error()
	} else {
		out.Ready = true
	}
	for _, r := range live.regions {
		st := r.status(false)
		st.Peak = s.metrics.demand.peak(now, r.name)
		out.Regions = append(out.Regions, st)
	}
	for _, r := range live.draining {
		if r.health.InFlight() > 0 {
			st := r.status(true)
			st.Peak = s.metrics.demand.peak(now, r.name)
			out.Draining = append(out.Draining, st)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// serveDrain takes a region out of rotation for maintenance (POST) and its
// open streams to other regions at their next final, or puts it back
// (DELETE). Pre-recorded requests in flight there finish. It acts on all
// the region's deployments, or with ?product=flux on that product's.
func (s *Server) serveDrain(w http.ResponseWriter, r *http.Request) {
	name, product := r.PathValue("region"), r.URL.Query().Get("product")
	deps := s.live().deployments(name, product)
	if len(deps) == 0 {
		http.Error(w, "no region or product of that name", http.StatusNotFound)
		return
	}
	drain := r.Method == http.MethodPost
	moving := 0
	var names []string
	for _, rs := range deps {
		rs.health.SetDrained(drain)
		if drain {
			moving += s.proxy.MoveStreams(rs.health)
		}
		names = append(names, rs.name)
	}
	s.log.Info("region drain", zap.String("region", name), zap.Strings("deployments", names), zap.Bool("drained", drain),
		zap.Int("streams_moving", moving))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"region": name, "deployments": names, "drained": drain, "streams_moving": moving})
}

// serveSimMode switches a simulated region's failure mode:
// POST /sim/us-east/mode?mode=refuse (ok, refuse, hang, die); a product's
// engine with &product=flux.
func (s *Server) serveSimMode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("region")
	if p := r.URL.Query().Get("product"); p != "" {
		name += "/" + p
	}
	srv := s.live().sims[name]
	if srv == nil {
		http.Error(w, "no simulated region of that name", http.StatusNotFound)
		return
	}
	m := sim.Mode(r.URL.Query().Get("mode"))
	switch m {
	case sim.ModeOK, sim.ModeRefuse, sim.ModeHang, sim.ModeDie:
	default:
		http.Error(w, "mode must be ok, refuse, hang or die", http.StatusBadRequest)
		return
	}
	srv.SetMode(m)
	s.log.Info("simulated region mode changed", zap.String("region", name), zap.String("mode", string(m)))
	w.WriteHeader(http.StatusNoContent)
}
