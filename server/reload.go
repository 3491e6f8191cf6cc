package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/earshot/earshot/auth"
	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/routing"
	"github.com/earshot/earshot/sim"
)

// state is what a reload replaces as a whole: the regions, the routing
// table, the client keys and the CORS policy. The proxy sees it as a
// proxy.Snapshot; a request or stream keeps the snapshot it started with,
// so a stream in progress keeps its region whatever the new config says.
type state struct {
	cfg      *config.Config
	regions  []*regionState
	draining []*regionState // removed by a reload; serving what they had when it came
	sims     map[string]*sim.Server
	keys     map[string]*auth.Key
	loadedAt time.Time
}

// deployments are the live deployments of the region named name (all of
// them, or only product's when product is set), or the deployment named
// name (REGION/PRODUCT).
func (st *state) deployments(name, product string) []*regionState {
	var out []*regionState
	for _, r := range st.regions {
		if product == "" && (r.name == name || r.cfg.Group == name) || r.cfg.Group == name && r.cfg.Product == product {
			out = append(out, r)
		}
	}
	return out
}

// region returns the deployment named name, or nil.
func (st *state) region(name string) *regionState {
	for _, r := range st.regions {
		if r.name == name {
			return r
		}
	}
	return nil
}

// build makes the state and snapshot for cfg. Regions whose address,
// capacity and simulation are unchanged from prev keep their health (load,
// breaker, learned capacity) and their simulated engine; client keys whose
// limits are unchanged keep their rate and stream counts.
func (s *Server) build(cfg *config.Config, prev *state) (*state, *proxy.Snapshot, error) {
	st := &state{cfg: cfg, sims: map[string]*sim.Server{}, keys: map[string]*auth.Key{}, loadedAt: time.Now()}
	deployments := cfg.Deployments()
	snap := &proxy.Snapshot{Upstreams: make(map[string]*proxy.Upstream, len(deployments))}
	var table []*routing.Region
	for i := range deployments {
		rc := &deployments[i]
		r, err := s.buildRegion(rc, prev)
		if err != nil {
			return nil, nil, err
		}
		if r.sim != nil {
			st.sims[r.name] = r.sim
		}
		st.regions = append(st.regions, r)
		up := proxy.NewUpstream(r.name, r.base, r.header, r.health)
		up.Region = rc.Group
		snap.Upstreams[r.name] = up
		table = append(table, &routing.Region{Name: r.name, Group: rc.Group, Product: routing.Product(rc.Product),
			Load: r.health, Location: routing.Location{Lat: rc.Location.Lat, Lon: rc.Location.Lon}})
	}
	var err error
	if snap.Table, err = routing.NewTable(table, tableOptions(&cfg.Routing)); err != nil {
		return nil, nil, err
	}
	snap.Locator = routing.NewLocator(cfg.Routing.Trusted(), cfg.Routing.EdgeHeaders, s.geo)
	if c := cfg.CORS; c != nil {
		snap.CORS = proxy.NewCORS(proxy.CORSOptions{AllowedOrigins: c.AllowedOrigins, AllowedMethods: c.AllowedMethods,
			AllowedHeaders: c.AllowedHeaders, ExposeHeaders: c.ExposeHeaders, MaxAge: c.MaxAge, AllowCredentials: c.AllowCredentials})
	}
	if !cfg.Auth.Disable {
		var keys []*auth.Key
		for _, k := range cfg.Auth.Keys {
			o := auth.KeyOptions{Name: k.Name, Digest: k.Digest(), Rate: k.Rate, Burst: k.Burst,
				MaxStreams: k.MaxStreams, Regions: k.Regions}
			key := auth.NewKey(o)
			if prev != nil {
				if old := prev.keys[k.Name]; old != nil && reflect.DeepEqual(old.Options(), o) {
					key = old
				}
			}
			st.keys[k.Name] = key
			keys = append(keys, key)
		}
		snap.Auth = auth.New(keys, cfg.Auth.QueryToken)
	}
	return st, snap, nil
}

// buildRegion makes a region's state, reusing what prev had of it.
func (s *Server) buildRegion(rc *config.Region, prev *state) (*regionState, error) {
	r := &regionState{name: rc.Name, kind: "http", header: rc.UpstreamHeader(), cfg: *rc, base: rc.Base()}
	var old *regionState
	if prev != nil {
		old = prev.region(rc.Name)
	}
	if old != nil && old.cfg.URL == rc.URL && old.cfg.Capacity == rc.Capacity && reflect.DeepEqual(old.cfg.Sim, rc.Sim) {
		r.health, r.sim, r.base, r.kind = old.health, old.sim, old.base, old.kind
		r.url = old.url
		return r, nil
	}
	if rc.IsSim() {
		srv, err := s.startSim(rc)
		if err != nil {
			return nil, fmt.Errorf("start simulated region %s: %w", rc.Name, err)
		}
		r.sim, r.kind = srv, "sim"
		r.base, _ = url.Parse(srv.URL())
	}
	r.url = r.base.String()
	r.health = health.New(rc.Name, health.Options{
		Capacity:        rc.Capacity,
		Breaker:         breakerOptions(&s.cfg.Health.Breaker),
		OnBreakerChange: s.logBreaker(rc.Name),
		OnCapacityCut: func(c health.CapacityInfo) {
			s.log.Info("learned capacity cut", zap.String("region", rc.Name), zap.Int("status", c.Status),
				zap.Int("in_flight", c.Held), zap.Int("capacity", c.CutTo), zap.Int("configured", c.Configured))
		},
	})
	return r, nil
}

// Reload applies a new config: its regions, routing and client keys take
// effect for new requests and streams at once. Streams and requests in
// progress keep their region; a region the new config removes is drained,
// not cut. Settings read only at start (listeners, TLS, limits, timeouts,
// retries, health checks, logging, the geoip database) keep their values;
// a change to them is logged as needing a restart. On error nothing changes.
func (s *Server) Reload(cfg *config.Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	err := s.reload(cfg)
	if err != nil {
		s.failedLocked(err)
		return err
	}
	s.reloadErr = ""
	s.reloadCount++
	s.metrics.reloads.WithLabelValues("success").Inc()
	s.metrics.reloadTime.SetToCurrentTime()
	return nil
}

func (s *Server) reload(cfg *config.Config) error {
	prev := s.live()
	next, snap, err := s.build(cfg, prev)
	if err != nil {
		s.stopNewSims(next, prev)
		return err
	}
	// Regions the new config leaves out, or replaces, drain: they keep
	// serving what they have and get nothing new.
	kept := map[*health.Region]bool{}
	for _, r := range next.regions {
		kept[r.health] = true
	}
	for _, r := range slices.Concat(prev.regions, prev.draining) {
		if !kept[r.health] && r.health.InFlight() > 0 {
			// Drained, so that a stream whose handshake is finishing now
			// moves too when it starts (proxy: track).
			r.health.SetDrained(true)
			next.draining = append(next.draining, r)
		}
	}
	s.proxy.Swap(snap)
	s.state.Store(next)
	s.restartProbes()
	// Streams on a region that is removed or replaced move at their next
	// final, where they can (the others finish there).
	for _, r := range next.draining {
		if n := s.proxy.MoveStreams(r.health); n > 0 {
			s.log.Info("moving streams off a region the config removed", zap.String("region", r.name), zap.Int("streams", n))
		}
	}
	s.stopRetiredSims(next, prev)

	var added, removed []string
	for _, r := range next.regions {
		if prev.region(r.name) == nil {
			added = append(added, r.name)
		}
	}
	for _, r := range prev.regions {
		if next.region(r.name) == nil {
			removed = append(removed, r.name)
		}
	}
	s.log.Info("config reloaded", zap.Int("regions", len(next.regions)), zap.Strings("added", added),
		zap.Strings("removed", removed), zap.Int("draining", len(next.draining)), zap.Int("keys", len(next.keys)))
	if fixed := restartOnly(s.cfg, cfg); len(fixed) > 0 {
		s.log.Warn("config changes that take effect only on restart", zap.Strings("sections", fixed))
	}
	return nil
}

// stopNewSims stops the engines a failed build started.
func (s *Server) stopNewSims(next, prev *state) {
	for name, srv := range next.simsOrNil() {
		if prev.sims[name] != srv {
			_ = srv.Close()
		}
	}
}

func (st *state) simsOrNil() map[string]*sim.Server {
	if st == nil {
		return nil
	}
	return st.sims
}

// stopRetiredSims stops simulated engines no region uses any more, once
// their streams have ended (they are draining like any region).
func (s *Server) stopRetiredSims(next, prev *state) {
	inUse := map[*sim.Server]bool{}
	for _, r := range slices.Concat(next.regions, next.draining) {
		inUse[r.sim] = true
	}
	for _, srv := range prev.sims {
		if !inUse[srv] {
			_ = srv.Close()
		}
	}
}

// restartOnly names the sections that differ between the config the
// router started with and cfg but cannot change while it runs.
func restartOnly(started, cfg *config.Config) []string {
	var out []string
	for _, c := range []struct {
		name string
		a, b any
	}{
		{"tls", started.TLS, cfg.TLS},
		{"limits", started.Limits, cfg.Limits},
		{"timeouts", started.Timeouts, cfg.Timeouts},
		{"retry", started.Retry, cfg.Retry},
		{"health", started.Health, cfg.Health},
		{"log", started.Log, cfg.Log},
		{"routing.geoip", started.Routing.GeoIP, cfg.Routing.GeoIP},
		{"admin_token", started.AdminToken != nil, cfg.AdminToken != nil},
	} {
		if !reflect.DeepEqual(c.a, c.b) {
			out = append(out, c.name)
		}
	}
	return out
}

// ReloadFile loads the config file again and applies it (SIGHUP).
func (s *Server) ReloadFile() error {
	data, err := os.ReadFile(s.cfg.Path)
	if err != nil {
		return s.failed(fmt.Errorf("read config: %w", err))
	}
	return s.reloadData(data)
}

func (s *Server) reloadData(data []byte) error {
	cfg, err := config.Parse(s.cfg.Path, data)
	if err != nil {
		return s.failed(err)
	}
	if err := s.Reload(cfg); err != nil {
		return err
	}
	s.loaded(cfg)
	return nil
}

// loaded records what cfg was read from (the config file and the regions
// file), for WatchConfig to compare with what is on disk.
func (s *Server) loaded(cfg *config.Config) {
	in := inputs(cfg.Source(), cfg.RegionsSource())
	s.lastData.Store(&in)
	if ignored := cfg.RegionsFileIgnored(); len(ignored) > 0 {
		s.log.Warn("regions_file lists regions the config does not have; they are not routed to",
			zap.String("regions_file", cfg.RegionsFilePath()), zap.Strings("regions", ignored))
	}
	if cfg.RegionsFileMissing() {
		s.log.Warn("regions_file does not exist yet: using the URLs in the config until `deployer apply` writes it",
			zap.String("regions_file", cfg.RegionsFilePath()))
	}
}

// inputs is the content a config was loaded from, as one value to compare.
func inputs(cfgData, regionsData []byte) []byte {
	return slices.Concat(cfgData, []byte{0}, regionsData)
}

// failed records a reload that did not happen, and returns err.
func (s *Server) failed(err error) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.failedLocked(err)
	return err
}

func (s *Server) failedLocked(err error) {
	s.reloadErr = err.Error()
	s.metrics.reloads.WithLabelValues("failure").Inc()
	s.log.Error("config not reloaded; the loaded one stays in use", zap.Error(err))
}

// WatchConfig reloads the config file when it changes, until ctx ends. It
// watches the file's directory, not the file: editors and Kubernetes
// (ConfigMap volumes swap a symlink) replace files by renaming. A change
// is applied once the directory has been quiet for settle; a write that
// leaves the content as loaded does nothing.
func (s *Server) WatchConfig(ctx context.Context, settle time.Duration) error {
	path, err := filepath.Abs(s.cfg.Path)
	if err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	watched, warned := map[string]bool{}, map[string]bool{}
	watch := func(file string) error {
		dir := filepath.Dir(file)
		if file == "" || watched[dir] {
			return nil
		}
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watch %s: %w", dir, err)
		}
		watched[dir] = true
		return nil
	}
	if err := watch(path); err != nil {
		return err
	}
	if s.lastData.Load() == nil {
		s.loaded(s.live().cfg)
	}
	// A first look at once: the files may have changed since they were loaded.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		regions := s.live().cfg.RegionsFilePath()
		if err := watch(regions); err != nil && !warned[regions] {
			warned[regions] = true // once: the loop comes back here after every event
			s.log.Warn("config watch: the regions file's directory", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("config watch", zap.Error(err))
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			timer.Reset(settle) // any change in the directory: the file may be a symlink into it
		case <-timer.C:
			data, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				continue // between a remove and a create: wait for the next event
			}
			if err != nil {
				_ = s.ReloadFile() // logs and counts the failure
				continue
			}
			var regionsData []byte
			if regions != "" {
				regionsData, _ = os.ReadFile(regions) // missing is allowed; unreadable fails the reload
			}
			if last := s.lastData.Load(); last != nil && bytes.Equal(*last, inputs(data, regionsData)) {
				continue
			}
			s.log.Info("config changed", zap.String("path", s.cfg.Path), zap.String("regions_file", regions))
			_ = s.reloadData(data)
		}
	}
}

// restartProbes runs one health-check loop per region of the live state,
// stopping those of regions it no longer has. Called at Serve and after
// each reload.
func (s *Server) restartProbes() {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if s.probeCtx == nil || s.cfg.Health.Probe.Disable {
		return
	}
	want := map[*regionState]bool{}
	for _, r := range s.live().regions {
		want[r] = true
		if s.probes[r] == nil {
			ctx, cancel := context.WithCancel(s.probeCtx)
			s.probes[r] = cancel
			s.probeWG.Go(func() { s.probe(ctx, r) })
		}
	}
	for r, cancel := range s.probes {
		if !want[r] {
			cancel()
			delete(s.probes, r)
		}
	}
}
