package server

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/routing"
	"github.com/earshot/earshot/sim"
)

// scrape returns the admin listener's /metrics in the text format.
func (r *router) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + r.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics = %d: %s", resp.StatusCode, b.String())
	}
	return b.String()
}

// metric returns the value of one series, written as Prometheus prints
// it (labels in name order), or -1 when it is absent.
func (r *router) metric(t *testing.T, series string) float64 {
	t.Helper()
	for line := range strings.Lines(r.scrape(t)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

func TestMetrics(t *testing.T) {
	r := startRouter(t, withRouting(simRegions(""), "edge_headers: [cloudflare], trusted_proxies: [127.0.0.1/32]"))
	for range 3 {
		req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
		req.Header.Set("CF-IPCountry", "IE")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(r.url("/v1/nope"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The router counts the stream once the handshake is done on its side.
	waitFor(t, "the stream to be counted open", func() bool {
		return r.metric(t, `earshot_streams_open`) == 1 && r.metric(t, `earshot_region_streams_open{region="us-east"}`) == 1
	})
	if v := r.metric(t, `earshot_region_in_flight{region="us-east"}`); v != 1 {
		t.Errorf("in flight on us-east during a stream = %v, want 1", v)
	}
	sendAudio(t, c, sim.Synthesize(testWords, 16000, 2.0), 3200)
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	readAll(t, c)
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	waitFor(t, "the stream to be counted", func() bool {
		return r.metric(t, `earshot_streams_total{path="/v1/listen",reason="fallback",region="us-east",status="101"}`) == 1
	})

	for series, want := range map[string]float64{
		`earshot_requests_total{path="/v1/models",reason="nearest",region="eu-west",status="200"}`: 3,
		`earshot_requests_total{path="other",reason="none",region="none",status="404"}`:            1,
		`earshot_geolocation_total{source="cloudflare"}`:                                           3,
		`earshot_geolocation_total{source="none"}`:                                                 2,
		`earshot_time_to_first_byte_seconds_count{path="/v1/models",region="eu-west"}`:             3,
		`earshot_stream_handshake_seconds_count{path="/v1/listen",region="us-east"}`:               1,
		`earshot_stream_closes_total{code="1000",region="us-east",side="region"}`:                  1,
		`earshot_region_in_flight{region="us-east"}`:                                               0,
		`earshot_region_capacity{region="us-east"}`:                                                100,
		`earshot_region_breaker{region="us-east",state="closed"}`:                                  1,
		`earshot_region_breaker{region="us-east",state="open"}`:                                    0,
		`earshot_region_in_rotation{region="eu-west"}`:                                             1,
		`earshot_ready`: 1,
	} {
		if got := r.metric(t, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if v := r.metric(t, `earshot_relayed_bytes_total{direction="in",region="us-east"}`); v < float64(len(sim.Synthesize(testWords, 16000, 2.0))) {
		t.Errorf("bytes in to us-east = %v, want at least the audio sent", v)
	}

	// Bounded labels: no client address, request id or query in any series.
	text := r.scrape(t)
	for _, leak := range []string{"127.0.0.1", "encoding=linear16", "/v1/nope"} {
		if strings.Contains(text, leak) {
			t.Errorf("metrics mention %q", leak)
		}
	}
	// Names, help and units follow Prometheus conventions.
	problems, err := testutil.GatherAndLint(r.srv.metrics.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "earshot_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestStatusFlows checks that /status reports recent routing decisions by
// country.
func TestStatusFlows(t *testing.T) {
	r := startRouter(t, withRouting(simRegions(""), "edge_headers: [cloudflare], trusted_proxies: [127.0.0.1/32]"))
	for _, country := range []string{"DE", "DE", "US", "IE"} {
		r.modelsFrom(t, country)
	}
	var got []string
	for _, f := range r.status(t).Flows {
		got = append(got, fmt.Sprintf("%s>%s:%d located=%v", f.Country, f.Region, f.Requests, f.Located))
	}
	want := "DE>eu-west:2 located=true IE>eu-west:1 located=true US>us-east:1 located=true"
	if strings.Join(got, " ") != want {
		t.Errorf("flows = %q, want %q", strings.Join(got, " "), want)
	}
}

// modelsFrom asks for /v1/models as a client in country, told by a trusted
// Cloudflare edge, and expects 200.
func (r *router) modelsFrom(t *testing.T, country string) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
	req.Header.Set("CF-IPCountry", country)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/models from %s = %d", country, resp.StatusCode)
	}
}

// withRouting adds settings to simRegions' routing section.
func withRouting(yaml, settings string) string {
	return strings.Replace(yaml, "routing: {allow_client_override: true}", "routing: {allow_client_override: true, "+settings+"}", 1)
}

// BenchmarkObserve is the metrics' cost per request or stream.
func BenchmarkObserve(b *testing.B) {
	m := newMetrics(&Server{})
	rec := proxy.Record{Path: "/v1/listen", Region: "us-east", Status: 200, Reason: routing.Nearest, Country: "US",
		Geo: routing.SourceGeoIP, BytesIn: 32 << 10, BytesOut: 2 << 10, Duration: 80 * time.Millisecond, FirstByte: 70 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.Observe(rec)
	}
}
