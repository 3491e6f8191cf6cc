package server

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/earshot/earshot/failover"
	"github.com/earshot/earshot/health"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/routing"
)

// metrics is the router's Prometheus instrumentation. Counters and
// histograms are fed by Observe, once per request or stream as it ends;
// the regions' state (load, capacity, breaker, health) is read when
// Prometheus scrapes, from the health package, so nothing is counted twice.
// Labels are bounded: paths are the API's (or "other"), regions the
// configured ones, statuses HTTP codes, close codes the standard ones (or
// "other"); never a client address or key.
type metrics struct {
	reg *prometheus.Registry

	requests, streams *prometheus.CounterVec
	closes            *prometheus.CounterVec
	duration, ttfb    *prometheus.HistogramVec
	handshake, length *prometheus.HistogramVec
	bytes             *prometheus.CounterVec
	geo               *prometheus.CounterVec
	reloads           *prometheus.CounterVec
	reloadTime        prometheus.Gauge
	resumes           *prometheus.CounterVec
	resumeGap         prometheus.Histogram
	replayed          prometheus.Counter

	flows  flows
	demand demand
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	labels := []string{"path", "region", "status", "reason"}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_requests_total",
		Help: "HTTP requests finished, by API path, serving region, status and route reason."}, labels)
	m.streams = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_streams_total",
		Help: "WebSocket streams finished, by API path, serving region, handshake status (101: relayed) and route reason."}, labels)
	m.closes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_stream_closes_total",
		Help: "Close codes sent on relayed streams, by the side that sent them (client or region)."}, []string{"region", "side", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "earshot_request_duration_seconds",
		Help:    "HTTP requests from arrival to the last byte of the answer.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}}, []string{"path", "region"})
	m.ttfb = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "earshot_time_to_first_byte_seconds",
		Help:    "HTTP requests from arrival to the region's response headers, retries included.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"path", "region"})
	m.handshake = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "earshot_stream_handshake_seconds",
		Help:    "WebSocket streams from arrival to the completed handshake with both sides.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"path", "region"})
	m.length = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "earshot_stream_duration_seconds",
		Help:    "Relayed WebSocket streams from handshake to close.",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200}}, []string{"path", "region"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_relayed_bytes_total",
		Help: "Bytes relayed: in from clients, out to clients (bodies and stream messages)."}, []string{"region", "direction"})
	m.geo = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_geolocation_total",
		Help: "Requests and streams by how the client was located (cloudflare, cloudfront, vercel, geoip, none)."}, []string{"source"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_config_reloads_total",
		Help: "Configuration reloads, by result (success, failure)."}, []string{"result"})
	m.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{Name: "earshot_config_last_reload_success_timestamp_seconds",
		Help: "When the configuration in use was loaded."})
	m.reloadTime.SetToCurrentTime()
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "earshot_stream_resumes_total",
		Help: "Open streams moved from a lost region, by from, to (none when no region could take the stream) and result " +
			"(ok, no_region, log_full: its audio since the last final outgrew retry.resume_log)."}, []string{"from", "to", "result"})
	m.resumeGap = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "earshot_stream_resume_gap_seconds",
		Help:    "Moved streams: from the loss of the region to the next message the client got from the new one.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10}})
	m.replayed = prometheus.NewCounter(prometheus.CounterOpts{Name: "earshot_stream_replayed_audio_seconds_total",
		Help: "Audio sent again to a stream's new region when it moved."})
	m.reg.MustRegister(m.requests, m.streams, m.closes, m.duration, m.ttfb, m.handshake, m.length,
		m.bytes, m.geo, m.reloads, m.reloadTime, m.resumes, m.resumeGap, m.replayed, &stateCollector{s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe implements proxy.Observer.
// ObserveResume counts a stream moved between regions.
func (m *metrics) ObserveResume(r proxy.Resume) {
	to := r.To
	if to == "" {
		to = "none"
	}
	m.resumes.WithLabelValues(r.From, to, r.Result).Inc()
	if r.Gap > 0 {
		m.resumeGap.Observe(r.Gap.Seconds())
	}
	m.replayed.Add(r.Replayed)
}

func (m *metrics) Observe(r proxy.Record) {
	region, reason := r.Region, string(r.Reason)
	if region == "" {
		region = "none"
	}
	if reason == "" {
		reason = "none" // turned away before routing
	}
	status := statusLabel(r.Status)
	m.geo.WithLabelValues(r.Geo.String()).Inc()
	if r.Stream {
		m.streams.WithLabelValues(r.Path, region, status, reason).Inc()
		if r.Status == 101 {
			m.handshake.WithLabelValues(r.Path, region).Observe(r.FirstByte.Seconds())
			m.length.WithLabelValues(r.Path, region).Observe((r.Duration - r.FirstByte).Seconds())
			if r.ClientClose != 0 {
				m.closes.WithLabelValues(region, "client", closeCode(r.ClientClose)).Inc()
			}
			if r.RegionClose != 0 {
				m.closes.WithLabelValues(region, "region", closeCode(r.RegionClose)).Inc()
			}
		}
	} else {
		m.requests.WithLabelValues(r.Path, region, status, reason).Inc()
		m.duration.WithLabelValues(r.Path, region).Observe(r.Duration.Seconds())
		if r.FirstByte > 0 {
			m.ttfb.WithLabelValues(r.Path, region).Observe(r.FirstByte.Seconds())
		}
	}
	if r.Region != "" {
		m.bytes.WithLabelValues(region, "in").Add(float64(r.BytesIn))
		m.bytes.WithLabelValues(region, "out").Add(float64(r.BytesOut))
		m.flows.add(time.Now(), r)
	}
}

// statusLabels are the HTTP statuses as label values, made once.
var statusLabels = func() (l [600]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func statusLabel(s int) string {
	if s >= 0 && s < len(statusLabels) {
		return statusLabels[s]
	}
	return strconv.Itoa(s)
}

// closeCode is a close code as a label: the standard codes, Deepgram's
// 1008/1011 among them, or "other" for the application range.
func closeCode(c int) string {
	if c >= 1000 && c <= 1015 {
		return strconv.Itoa(c)
	}
	return "other"
}

// stateCollector reports the regions' state at scrape time.
type stateCollector struct{ s *Server }

var (
	descInFlight = prometheus.NewDesc("earshot_region_in_flight",
		"Requests and streams a region is serving through this router now.", []string{"region"}, nil)
	descRegionStreams = prometheus.NewDesc("earshot_region_streams_open",
		"Streams a region is serving through this router now (part of earshot_region_in_flight).", []string{"region"}, nil)
	descCapacity = prometheus.NewDesc("earshot_region_capacity",
		"A region's capacity as the router sees it now (learned from 429/503, at most the configured one; 0: unlimited).", []string{"region"}, nil)
	descConfigured = prometheus.NewDesc("earshot_region_configured_capacity",
		"A region's configured capacity (0: unlimited).", []string{"region"}, nil)
	descInRotation = prometheus.NewDesc("earshot_region_in_rotation",
		"1 when a region can be given new work (breaker not open, not cooling, health not down).", []string{"region"}, nil)
	descHealth = prometheus.NewDesc("earshot_region_health",
		"A region's active health-check state: 1 for the current one of up, degraded, down.", []string{"region", "state"}, nil)
	descBreaker = prometheus.NewDesc("earshot_region_breaker",
		"A region's circuit breaker: 1 for the current one of closed, half-open, open.", []string{"region", "state"}, nil)
	descLatency = prometheus.NewDesc("earshot_region_latency_seconds",
		"A region's moving-average response latency.", []string{"region"}, nil)
	descOutcomes = prometheus.NewDesc("earshot_region_outcomes_total",
		"Attempts sent to a region, by what they said of its health (success, full, failure, canceled).", []string{"region", "outcome"}, nil)
	descRetries = prometheus.NewDesc("earshot_retries_total",
		"Attempts after the first: sent to another region after a failure or a full answer.", nil, nil)
	descFailovers = prometheus.NewDesc("earshot_failovers_total",
		"Requests and stream handshakes that moved to another region after an attempt failed, by the first failure's cause "+
			"(connect, timeout, region_down, reset, 429, 503, 500, 502, 504).", []string{"cause"}, nil)
	descCuts = prometheus.NewDesc("earshot_region_capacity_cuts_total",
		"Times a region's refusal (429/503) lowered its learned capacity; see earshot_region_capacity for where it stands.", []string{"region"}, nil)
	descSlowdown = prometheus.NewDesc("earshot_region_slowdown_seconds",
		"How much slower than its usual a region answers its probes now (over routing.slowdown_threshold it is ranked down).", []string{"region"}, nil)
	descSpillovers = prometheus.NewDesc("earshot_spillovers_total",
		"Requests and streams served by a region after a better one was full.", nil, nil)
	descHedges = prometheus.NewDesc("earshot_hedged_handshakes_total",
		"Stream handshakes sent to a second region while the first was slow to answer.", nil, nil)
	descBudget = prometheus.NewDesc("earshot_retry_budget_exhausted_total",
		"Retries not made because the retry budget was spent.", nil, nil)
	descStreams = prometheus.NewDesc("earshot_streams_open",
		"WebSocket streams being relayed now.", nil, nil)
	descReady = prometheus.NewDesc("earshot_ready",
		"1 when the router is ready (config loaded, a region able to serve, not draining).", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descRegionStreams, descCapacity, descConfigured, descInRotation, descHealth,
		descBreaker, descLatency, descOutcomes, descRetries, descFailovers, descCuts, descSlowdown, descSpillovers, descHedges, descBudget,
		descStreams, descReady} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	streams := c.s.proxy.OpenStreamsByRegion()
	live := c.s.live()
	seen := map[string]bool{}
	for _, r := range slices.Concat(live.regions, live.draining) {
		if seen[r.name] {
			continue // replaced by a reload and draining: one series per name, the live region's
		}
		seen[r.name] = true
		h := r.health
		gauge(descInFlight, float64(h.InFlight()), r.name)
		gauge(descRegionStreams, float64(streams[r.name]), r.name)
		gauge(descCapacity, float64(h.Capacity()), r.name)
		gauge(descConfigured, float64(h.Configured()), r.name)
		gauge(descInRotation, b2f(h.InRotation()), r.name)
		probe, _ := h.Probe()
		for _, st := range []health.ProbeState{health.ProbeUp, health.ProbeDegraded, health.ProbeDown} {
			gauge(descHealth, b2f(probe == st), r.name, st.String())
		}
		br := h.Breaker()
		for _, st := range []health.BreakerState{health.BreakerClosed, health.BreakerHalfOpen, health.BreakerOpen} {
			gauge(descBreaker, b2f(br == st), r.name, string(st))
		}
		gauge(descLatency, h.Latency().Seconds(), r.name)
		gauge(descSlowdown, h.Slowdown().Seconds(), r.name)
		counter(descCuts, h.Cuts(), r.name)
		for k := health.Success; k <= health.Canceled; k++ {
			counter(descOutcomes, h.Count(k), r.name, k.String())
		}
	}
	st := c.s.proxy.Stats()
	counter(descRetries, st.Retries)
	for _, cause := range failover.Causes() {
		if cause != failover.CauseCut {
			counter(descFailovers, c.s.proxy.FailoversBy(cause), cause.String())
		}
	}
	counter(descSpillovers, st.Spillovers)
	counter(descHedges, st.Hedges)
	counter(descBudget, st.BudgetDenied)
	gauge(descStreams, float64(c.s.proxy.OpenStreams()))
	gauge(descReady, b2f(c.s.ready() == nil))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// flows counts where traffic went from where over the last flowWindow, for
// the status page: recent routing decisions by country.
type flows struct {
	counts window[flowKey, flowCount]
}

// flowKey is where traffic came from and went: a country and, when the
// client was placed precisely, the whole degree of latitude and longitude
// it was in (no finer: the status page needs no more, and shows nobody's
// whereabouts). At most maxFlowKeys keys a slot; beyond, a flow is kept by
// country alone.
type flowKey struct {
	country, region string
	lat, lon        int16
	placed          bool
}

const maxFlowKeys = 2000

type flowCount struct{ requests, streams int }

func (f *flows) add(now time.Time, r proxy.Record) {
	k := flowKey{country: r.Country, region: r.Region}
	if k.country == "" {
		k.country = "??"
	}
	one := flowCount{requests: 1}
	if r.Stream {
		one = flowCount{streams: 1}
	}
	if r.Located {
		placed := k
		placed.lat, placed.lon, placed.placed = int16(math.Round(r.Lat)), int16(math.Round(r.Lon)), true
		if f.counts.updateBounded(now, placed, one, flowCount.plus, maxFlowKeys) {
			return
		}
	}
	f.counts.update(now, k, one, flowCount.plus)
}

func (c flowCount) plus(d flowCount) flowCount {
	return flowCount{c.requests + d.requests, c.streams + d.streams}
}

// Flow is the traffic from one place to one region over the window.
type Flow struct {
	Country string  `json:"country"` // "??" when unknown
	Lat     float64 `json:"lat"`
	Lon     float64 `json:"lon"`
	Located bool    `json:"located"` // Lat and Lon hold a place: the clients' (Precise) or their country's middle
	// Precise says Lat and Lon are where the clients were, to the whole
	// degree, rather than their country's middle.
	Precise  bool   `json:"precise"`
	Region   string `json:"region"`
	Requests int    `json:"requests"`
	Streams  int    `json:"streams"`
}

// recent sums the window's slots, busiest flow first.
func (f *flows) recent(now time.Time) []Flow {
	sum := map[flowKey]flowCount{}
	f.counts.each(now, func(k flowKey, c flowCount) {
		sum[k] = sum[k].plus(c)
	})
	out := make([]Flow, 0, len(sum))
	for k, c := range sum {
		fl := Flow{Country: k.country, Region: k.region, Requests: c.requests, Streams: c.streams}
		if k.placed {
			fl.Lat, fl.Lon, fl.Located, fl.Precise = float64(k.lat), float64(k.lon), true, true
		} else {
			fl.Lat, fl.Lon, fl.Located = routing.CountryLocation(k.country)
		}
		out = append(out, fl)
	}
	slices.SortFunc(out, func(a, b Flow) int {
		if d := (b.Requests + b.Streams) - (a.Requests + a.Streams); d != 0 {
			return d
		}
		return cmp.Or(strings.Compare(a.Country, b.Country), strings.Compare(a.Region, b.Region),
			cmp.Compare(a.Lat, b.Lat), cmp.Compare(a.Lon, b.Lon))
	})
	return out
}
