package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/earshot/earshot/internal/geotest"
)

// city is a client location and the region it must land in. The expected
// regions were worked out by hand from great-circle distances to the four
// regions below (Ashburn, The Dalles, Dublin, Mumbai), not by the code under
// test.
type city struct {
	name, country, continent string
	lat, lon                 float64
	want                     string
}

var cities = []city{
	{"Frankfurt", "DE", "EU", 50.11, 8.68, "eu-west"},
	{"Paris", "FR", "EU", 48.86, 2.35, "eu-west"},
	{"Madrid", "ES", "EU", 40.42, -3.70, "eu-west"},
	{"Stockholm", "SE", "EU", 59.33, 18.07, "eu-west"},
	{"Warsaw", "PL", "EU", 52.23, 21.01, "eu-west"},
	{"Moscow", "RU", "EU", 55.75, 37.62, "eu-west"},
	{"Istanbul", "TR", "AS", 41.01, 28.98, "eu-west"},
	{"Reykjavik", "IS", "EU", 64.15, -21.94, "eu-west"},
	{"Cairo", "EG", "AF", 30.04, 31.24, "eu-west"},
	{"Lagos", "NG", "AF", 6.52, 3.38, "eu-west"},
	{"Casablanca", "MA", "AF", 33.57, -7.59, "eu-west"},
	{"Nairobi", "KE", "AF", -1.29, 36.82, "ap-south"},
	{"Johannesburg", "ZA", "AF", -26.2, 28.05, "ap-south"},
	{"Dubai", "AE", "AS", 25.2, 55.27, "ap-south"},
	{"Karachi", "PK", "AS", 24.86, 67.0, "ap-south"},
	{"Tokyo", "JP", "AS", 35.68, 139.69, "ap-south"},
	{"Seoul", "KR", "AS", 37.57, 126.98, "ap-south"},
	{"Beijing", "CN", "AS", 39.9, 116.4, "ap-south"},
	{"Singapore", "SG", "AS", 1.35, 103.82, "ap-south"},
	{"Jakarta", "ID", "AS", -6.21, 106.85, "ap-south"},
	{"Sydney", "AU", "OC", -33.87, 151.21, "ap-south"},
	{"Auckland", "NZ", "OC", -36.85, 174.76, "us-west"},
	{"Honolulu", "US", "NA", 21.31, -157.86, "us-west"},
	{"Anchorage", "US", "NA", 61.22, -149.9, "us-west"},
	{"Vancouver", "CA", "NA", 49.28, -123.12, "us-west"},
	{"Seattle", "US", "NA", 47.61, -122.33, "us-west"},
	{"Los Angeles", "US", "NA", 34.05, -118.24, "us-west"},
	{"Denver", "US", "NA", 39.74, -104.99, "us-west"},
	{"Chicago", "US", "NA", 41.88, -87.63, "us-east"},
	{"New York", "US", "NA", 40.71, -74.01, "us-east"},
	{"Toronto", "CA", "NA", 43.65, -79.38, "us-east"},
	{"Mexico City", "MX", "NA", 19.43, -99.13, "us-east"},
	{"Bogota", "CO", "SA", 4.71, -74.07, "us-east"},
	{"Lima", "PE", "SA", -12.05, -77.04, "us-east"},
	{"Sao Paulo", "BR", "SA", -23.55, -46.63, "us-east"},
	{"Buenos Aires", "AR", "SA", -34.6, -58.38, "us-east"},
	{"Santiago", "CL", "SA", -33.45, -70.67, "us-east"},
	{"McMurdo", "AQ", "AN", -77.85, 166.67, "ap-south"},
}

// cityIP is the address of city i: odd cities are IPv6 clients.
func cityIP(i int) (network, ip string) {
	if i%2 == 1 {
		return fmt.Sprintf("2001:db8:%x::/48", i), fmt.Sprintf("2001:db8:%x::5", i)
	}
	return fmt.Sprintf("11.0.%d.0/24", i), fmt.Sprintf("11.0.%d.5", i)
}

// geoDB writes a GeoIP2-City database placing every city.
func geoDB(t *testing.T) string {
	t.Helper()
	var entries []geotest.Entry
	for i, c := range cities {
		network, _ := cityIP(i)
		entries = append(entries, geotest.Entry{Network: network, Country: c.country, Continent: c.continent, Lat: c.lat, Lon: c.lon})
	}
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	if err := geotest.Write(path, geotest.City, entries); err != nil {
		t.Fatal(err)
	}
	return path
}

// fourRegions is the default config's topology, with no added latency.
func fourRegions(routing string, capacity int) string {
	return fmt.Sprintf(`
log: {level: debug}
routing:
  trusted_proxies: [127.0.0.1, "::1"]
%s
regions:
  - {name: us-east, url: sim://us-east, location: {lat: 39.04, lon: -77.49}, capacity: %[2]d}
  - {name: us-west, url: sim://us-west, location: {lat: 45.60, lon: -121.18}, capacity: %[2]d}
  - {name: eu-west, url: sim://eu-west, location: {lat: 53.35, lon: -6.26}, capacity: %[2]d}
  - {name: ap-south, url: sim://ap-south, location: {lat: 19.08, lon: 72.88}, capacity: %[2]d}
`, routing, capacity)
}

// getFrom sends GET /v1/models as the client at ip behind a trusted proxy
// (the test's loopback connection), plus any extra headers.
func (r *router) getFrom(ip string, extra ...string) *http.Response {
	r.t.Helper()
	req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
	if ip != "" {
		req.Header.Set("X-Forwarded-For", "198.51.100.7, "+ip) // a spoofed left-most hop is ignored
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body)) // for expectError
	return resp
}

func routeOf(resp *http.Response) string {
	return resp.Header.Get("X-Earshot-Region") + "/" + resp.Header.Get("X-Earshot-Route")
}

func TestNearestRegionForClientsEverywhere(t *testing.T) {
	r := startRouter(t, fourRegions(fmt.Sprintf("  geoip: {database: %s}", geoDB(t)), 0))
	for i, c := range cities {
		_, ip := cityIP(i)
		resp := r.getFrom(ip)
		if got, want := routeOf(resp), c.want+"/nearest"; resp.StatusCode != 200 || got != want {
			t.Errorf("%s (%s): %d %s, want 200 %s", c.name, ip, resp.StatusCode, got, want)
		}
	}
	// The access log has the client's address, country and the reason.
	entries := r.logs.FilterMessage("access").FilterField(zap.String("country", "JP")).All()
	if len(entries) != 1 || entries[0].ContextMap()["reason"] != "nearest" ||
		entries[0].ContextMap()["client_ip"] != "2001:db8:f::5" || entries[0].ContextMap()["geo"] != "geoip" {
		t.Errorf("access log for Tokyo = %+v", entries)
	}
	// Unknown clients go to the fallback, which defaults to the first region.
	if got := routeOf(r.getFrom("203.0.113.9")); got != "us-east/fallback" {
		t.Errorf("an unknown client: %s, want us-east/fallback", got)
	}
	// A peer that is not a trusted proxy cannot claim to be elsewhere.
	if got := routeOf(r.getFrom("")); got != "us-east/fallback" {
		t.Errorf("the loopback client itself: %s, want us-east/fallback", got)
	}
}

func TestEdgeHeadersAndPreferences(t *testing.T) {
	r := startRouter(t, fourRegions(`
  edge_headers: [cloudflare, cloudfront]
  fallback: {region: eu-west}
  prefer:
    countries: {NZ: [ap-south]}
    continents: {SA: [eu-west, us-east]}`, 0))
	for _, tc := range []struct {
		name    string
		headers []string
		want    string
	}{
		{"cloudflare coordinates", []string{"CF-IPCountry", "JP", "CF-IPLatitude", "35.68", "CF-IPLongitude", "139.69"}, "ap-south/nearest"},
		{"cloudflare country only", []string{"CF-IPCountry", "DE"}, "eu-west/nearest"},
		{"cloudfront", []string{"CloudFront-Viewer-Country", "US", "CloudFront-Viewer-Latitude", "47.6", "CloudFront-Viewer-Longitude", "-122.3"}, "us-west/nearest"},
		{"vercel is not enabled", []string{"X-Vercel-IP-Country", "IN"}, "eu-west/fallback"},
		{"Tor is nowhere", []string{"CF-IPCountry", "T1"}, "eu-west/fallback"},
		{"country preference beats geography", []string{"CF-IPCountry", "NZ"}, "ap-south/preferred"},
		{"continent preference", []string{"CF-IPCountry", "BR"}, "eu-west/preferred"},
	} {
		if got := routeOf(r.getFrom("", tc.headers...)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestEdgeHeadersFromUntrustedPeersAreIgnored runs a router that trusts no
// proxy: a client cannot move itself by sending a CDN's header.
func TestEdgeHeadersFromUntrustedPeersAreIgnored(t *testing.T) {
	r := startRouter(t, strings.Replace(fourRegions("  edge_headers: [cloudflare]", 0),
		`trusted_proxies: [127.0.0.1, "::1"]`, `trusted_proxies: [10.0.0.0/8]`, 1))
	if got := routeOf(r.getFrom("", "CF-IPCountry", "JP")); got != "us-east/fallback" {
		t.Errorf("untrusted CF-IPCountry: %s, want us-east/fallback", got)
	}
}

// TestResidencyHoldsWhenItsRegionIsFullOrDown confines EU clients to
// eu-west: a full eu-west gives them 503, a dead one an error, and neither
// ever sends them elsewhere, nor does naming another region; clients outside
// the EU spill over as usual.
func TestResidencyHoldsWhenItsRegionIsFullOrDown(t *testing.T) {
	r := startRouter(t, fourRegions(fmt.Sprintf(`
  allow_client_override: true
  geoip: {database: %s}
  residency:
    - {name: gdpr, countries: [EU], regions: [eu-west]}`, geoDB(t)), 1))
	_, de := cityIP(0) // Frankfurt
	_, ru := cityIP(5) // Moscow: Europe, not the EU
	_, fr := cityIP(1) // Paris, IPv6
	if got := routeOf(r.getFrom(de)); got != "eu-west/residency" {
		t.Fatalf("Frankfurt: %s, want eu-west/residency", got)
	}
	resp := r.getFrom(de, "X-Earshot-Region", "us-east")
	expectError(t, resp, http.StatusForbidden, "REGION_NOT_ALLOWED")

	// Fill eu-west (capacity 1) with a stream from Paris.
	h := http.Header{"X-Forwarded-For": {fr}}
	conn, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), h)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := routeOf(resp); got != "eu-west/residency" {
		t.Fatalf("Paris stream: %s", got)
	}
	resp = r.getFrom(de)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("Frankfurt with eu-west full: %d %s, want 503 with Retry-After", resp.StatusCode, routeOf(resp))
	}
	if got := routeOf(r.getFrom(ru)); got != "ap-south/spillover" {
		t.Errorf("Moscow with eu-west full: %s, want ap-south/spillover", got)
	}
	conn.Close()
	waitFor(t, "eu-west to free", func() bool { return r.srv.live().regions[2].health.InFlight() == 0 })

	// eu-west dies: EU clients get an error, never another region.
	r.srv.Sim("eu-west").SetMode("die")
	for range 3 {
		resp := r.getFrom(de)
		if reg := resp.Header.Get("X-Earshot-Region"); resp.StatusCode < 500 || (reg != "" && reg != "eu-west") {
			t.Errorf("Frankfurt with eu-west down: %d %s, want an error from eu-west", resp.StatusCode, routeOf(resp))
		}
	}
}

// TestSpilloverFollowsLoad fills eu-west's capacity with streams: new
// European work goes to the next nearest region while it is full, and back
// to eu-west as soon as a stream ends.
func TestSpilloverFollowsLoad(t *testing.T) {
	r := startRouter(t, fourRegions(fmt.Sprintf("  geoip: {database: %s}", geoDB(t)), 2))
	_, de := cityIP(0)
	h := http.Header{"X-Forwarded-For": {de}}
	var conns []*websocket.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, want := range []string{"eu-west/nearest", "eu-west/nearest", "us-east/spillover", "us-east/spillover", "ap-south/spillover"} {
		conn, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), h)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if got := routeOf(resp); got != want {
			t.Errorf("stream %d: %s, want %s", len(conns), got, want)
		}
	}
	conns[0].Close()
	waitFor(t, "eu-west to have room", func() bool { return r.srv.live().regions[2].health.InFlight() < 2 })
	if got := routeOf(r.getFrom(de)); got != "eu-west/nearest" {
		t.Errorf("after load dropped: %s, want eu-west/nearest", got)
	}
}

// TestSlowRegionIsRankedDown makes eu-west answer far slower than its
// distance explains; once the router has measured it, European clients go
// to the next nearest region.
func TestSlowRegionIsRankedDown(t *testing.T) {
	cfg := strings.Replace(fourRegions(fmt.Sprintf("  geoip: {database: %s}\n  latency_allowance: 50ms", geoDB(t)), 0),
		"location: {lat: 53.35, lon: -6.26}, capacity: 0}", "location: {lat: 53.35, lon: -6.26}, capacity: 0, sim: {latency: 400ms}}", 1)
	r := startRouter(t, cfg)
	_, de := cityIP(0)
	if got := routeOf(r.getFrom(de)); got != "eu-west/nearest" {
		t.Fatalf("first request: %s, want eu-west/nearest (nothing measured yet)", got)
	}
	if got := routeOf(r.getFrom(de)); got != "us-east/latency" {
		t.Errorf("after eu-west answered in 400ms: %s, want us-east/latency", got)
	}
}
