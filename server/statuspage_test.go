package server

import (
	"context"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

const testAdminToken = "status-page-test-token-0123456789"

// TestStatusPageServed checks the page's files, their headers, and that
// they need no token and reach for nothing outside the router.
func TestStatusPageServed(t *testing.T) {
	t.Setenv("EARSHOT_TEST_ADMIN", testAdminToken)
	r := startRouter(t, simRegions("admin_token: {env: EARSHOT_TEST_ADMIN}\n"))
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get("http://" + r.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(`)
	for path, typ := range map[string]string{"/": "text/html", "/assets/page.js": "text/javascript", "/assets/page.css": "text/css"} {
		resp, body := get(path)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), typ) {
			t.Errorf("GET %s = %d %q, want 200 %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), typ)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
		body = strings.ReplaceAll(body, `"http://www.w3.org/2000/svg"`, "") // a namespace, not a fetch
		if m := external.FindString(body); m != "" {
			t.Errorf("GET %s refers outside the router: %q", path, m)
		}
	}
	if _, body := get("/"); !strings.Contains(body, `src="assets/page.js"`) || !strings.Contains(body, `href="assets/page.css"`) {
		t.Errorf("GET / does not load the page's own script and styles")
	}
	for _, path := range []string{"/index.html", "/assets/index.html", "/assets/nothing.js", "/statuspage/page.js", "/nothing"} {
		if resp, _ := get(path); resp.StatusCode != 404 && resp.StatusCode != 401 {
			t.Errorf("GET %s = %d, want 404 (or 401: not the page, so the token is asked for)", path, resp.StatusCode)
		}
	}
	if resp, _ := get("/status"); resp.StatusCode != 401 {
		t.Errorf("GET /status without the token = %d, want 401: the page is open, its data is not", resp.StatusCode)
	}
}

// chromium finds a Chromium to drive, or skips the test saying how to get one.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium to drive the status page: apt-get install chromium (./scripts/test.sh does when it can)")
	return ""
}

// headless runs Chromium on url with args and returns its output.
func headless(t *testing.T, browser, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=6000"}, args...)
	cmd := exec.CommandContext(ctx, browser, append(args, url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", browser, err, stderr.String())
	}
	return string(out)
}

// TestStatusPageInBrowser drives the status page in headless Chromium: with
// one region down, streams open in another and traffic from three
// countries, the page must show every region in its state, the flows, and
// no error; its screenshot is saved in artifacts/.
func TestStatusPageInBrowser(t *testing.T) {
	browser := chromium(t)
	t.Setenv("EARSHOT_TEST_ADMIN", testAdminToken)
	r := startRouter(t, `
admin_token: {env: EARSHOT_TEST_ADMIN}
routing: {allow_client_override: true, edge_headers: [cloudflare], trusted_proxies: [127.0.0.1/32]}
health: {probe: {interval: 100ms, timeout: 80ms, unhealthy_threshold: 1}}
regions:
  - {name: us-east, url: sim://us-east, location: {lat: 39.04, lon: -77.49}, capacity: 8}
  - {name: us-west, url: sim://us-west, location: {lat: 45.60, lon: -121.18}, capacity: 8}
  - {name: eu-west, url: sim://eu-west, location: {lat: 53.35, lon: -6.26}, capacity: 4, sim: {silence_timeout: 5m}}
  - {name: ap-south, url: sim://ap-south, location: {lat: 19.08, lon: 72.88}, capacity: 8}
`)
	r.adminToken = testAdminToken
	r.srv.Sim("us-east").SetMode(sim.ModeDie)
	waitFor(t, "us-east to be down", func() bool { return r.states(t)["us-east"] == "down" })

	// Two streams held open in eu-west: half its capacity.
	h := http.Header{"X-Earshot-Region": {"eu-west"}}
	for range 2 {
		c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), h)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		defer c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	}
	for _, country := range []string{"US", "US", "DE", "FR", "JP", "IN", "IN"} {
		r.modelsFrom(t, country)
	}
	// Clients the edge places precisely: Toronto (drawn from Toronto, not
	// the middle of Canada) and Auckland, whose region (us-west, by the
	// default's preference) is across the antimeridian.
	for _, c := range []struct{ country, lat, lon, region string }{
		{"CA", "43.65", "-79.38", "us-west"}, {"NZ", "-36.85", "174.76", "us-west"},
	} {
		req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
		req.Header.Set("CF-IPCountry", c.country)
		req.Header.Set("CF-IPLatitude", c.lat)
		req.Header.Set("CF-IPLongitude", c.lon)
		req.Header.Set("X-Earshot-Region", c.region)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	want := r.states(t)

	page := "http://" + r.admin + "/#token=" + testAdminToken
	dom := headless(t, browser, page, "--dump-dom")
	for name, state := range want {
		for _, tag := range []string{"tr", "g"} {
			re := regexp.MustCompile(`<` + tag + ` data-region="` + regexp.QuoteMeta(name) + `" data-state="([a-z-]+)"`)
			m := re.FindStringSubmatch(dom)
			if m == nil {
				t.Errorf("the page has no <%s> for region %s", tag, name)
			} else if m[1] != state {
				t.Errorf("the page's <%s> shows %s %s, /status says %s", tag, name, m[1], state)
			}
		}
	}
	for _, flow := range []string{"US us-west", "DE eu-west", "FR eu-west", "JP ap-south", "IN ap-south"} {
		from, to, _ := strings.Cut(flow, " ")
		if !strings.Contains(dom, `<g data-from="`+from+`" data-to="`+to+`">`) {
			t.Errorf("the map has no flow from %s to %s", from, to)
		}
	}
	// Toronto's flow starts at Toronto, rounded to a degree (x = -79 + 180,
	// y = 90 - 44), not in the middle of Canada.
	if m := regexp.MustCompile(`<g data-from="CA" data-to="us-west"><title>[^<]*</title><path d="M([-0-9.]+),([-0-9.]+) `).FindStringSubmatch(dom); m == nil {
		t.Errorf("no flow from Canada")
	} else if m[1] != "101" || m[2] != "46" {
		t.Errorf("Toronto's flow starts at (%s, %s), want (101, 46)", m[1], m[2])
	}
	// Auckland to Oregon crosses the Pacific: drawn as a short arc out of
	// the map's right edge and in at its left, never across the world.
	arcs := regexp.MustCompile(`<g data-from="NZ" data-to="us-west">.*?</g>`).FindString(dom)
	ends := regexp.MustCompile(`<path d="M([-0-9.]+),[-0-9.]+ Q[-0-9.]+,[-0-9.]+ ([-0-9.]+),`).FindAllStringSubmatch(arcs, -1)
	if len(ends) == 0 {
		t.Errorf("no flow from New Zealand: %s", arcs)
	}
	for _, e := range ends {
		if d := math.Abs(parseFloat(e[2]) - parseFloat(e[1])); d > 180 {
			t.Errorf("the arc from New Zealand to us-west spans %.0f degrees: the long way round", d)
		}
	}
	// Each region's dot where the region is: x = longitude + 180, y = 90 - latitude.
	dot := regexp.MustCompile(`<g data-region="eu-west"[^>]*><title>[^<]*</title><circle class="halo" cx="([-0-9.e]+)" cy="([-0-9.e]+)"`)
	if m := dot.FindStringSubmatch(dom); m == nil {
		t.Errorf("no dot for eu-west on the map")
	} else if x, y := parseFloat(m[1]), parseFloat(m[2]); math.Abs(x-173.74) > 0.01 || math.Abs(y-36.65) > 0.01 {
		t.Errorf("eu-west drawn at (%s, %s), want (173.74, 36.65)", m[1], m[2])
	}
	if strings.Contains(dom, "NaN") || strings.Contains(dom, "undefined") {
		t.Errorf("the page shows NaN or undefined")
	}
	if !strings.Contains(dom, `data-ready="true"`) {
		t.Errorf("the page does not say the router is ready")
	}
	if !strings.Contains(dom, "2 / 4") {
		t.Errorf("the page does not show eu-west's load as 2 / 4")
	}
	if !strings.Contains(dom, `<div id="banner" role="alert" hidden=""></div>`) {
		t.Errorf("the page shows an error banner: %s", regexp.MustCompile(`<div id="banner"[^>]*>[^<]*`).FindString(dom))
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	dir := os.Getenv("EARSHOT_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(dir, "status-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	headless(t, browser, page, "--screenshot="+shot, "--window-size=1280,1000")
	fi, err := os.Stat(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if fi.Size() < 10_000 {
		t.Fatalf("screenshot %s: only %d bytes", shot, fi.Size())
	}
	t.Logf("screenshot: %s", shot)
}

func parseFloat(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

// states is each region's state from /status.
func (r *router) states(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, rs := range r.status(t).Regions {
		out[rs.Name] = rs.State
	}
	return out
}
