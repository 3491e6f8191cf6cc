package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/server"
)

// startRouter runs a real router on cfg and returns its API and admin
// addresses.
func startRouter(t *testing.T, cfg *config.Config) (api, admin string) {
	t.Helper()
	srv, err := server.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, apiLn, adminLn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
		srv.Close()
	})
	return apiLn.Addr().String(), "http://" + adminLn.Addr().String()
}

// openStreams holds n streams to region through the router until the test ends.
func openStreams(t *testing.T, api, region string, n int) {
	t.Helper()
	for range n {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+api+"/v1/listen", http.Header{"X-Earshot-Region": {region}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// TestStatus sets Modal's view (the fake CLI's app list), the endpoint's
// (a deployed region behind a Modal-like edge) and the router's side by side.
func TestStatus(t *testing.T) {
	us := modalEdge(t, 0)
	// An older, stopped app of the same name is listed too: the deployed
	// one is the region's.
	tb := newTestbed(t, testConfig, endpointsEnv(map[string]string{"earshot-us-east": us.URL}), "FAKE_MODAL_STOPPED=earshot-us-east")
	if err := os.WriteFile(tb.d.Config.RegionsFilePath(), fmt.Appendf(nil, "regions:\n  - {name: us-east, url: %s, capacity: 32}\n", us.URL), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(tb.d.Config.Path) // as the router loads it: with the deployed URL
	if err != nil {
		t.Fatal(err)
	}
	tb.d.Config = cfg
	_, admin := startRouter(t, cfg)

	sts, err := tb.d.Status(context.Background(), nil, admin, "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	PrintStatus(&b, sts)
	st := map[string]RegionStatus{}
	for _, s := range sts {
		st[s.Region] = s
	}
	if s := st["us-east"]; s.Modal != "deployed, 1 task(s)" || !strings.HasPrefix(s.Endpoint, `200, system_health "Healthy"`) ||
		!strings.HasPrefix(s.Router, "up, 0/32 in flight") || s.URL != us.URL {
		t.Errorf("us-east: %+v", s)
	}
	if s := st["eu-west"]; s.Modal != "not deployed" || !strings.HasPrefix(s.Endpoint, "no URL") || !strings.HasPrefix(s.Router, "up, ") {
		t.Errorf("eu-west: %+v", s)
	}
	if !strings.Contains(b.String(), "us-east: "+us.URL) {
		t.Errorf("status output:\n%s", b.String())
	}

	// A router that cannot be reached is said so: in its column, and why
	// once, below the table.
	sts, err = tb.d.Status(context.Background(), nil, "http://127.0.0.1:1", "")
	if err != nil || sts[0].Router != "unknown (below)" {
		t.Errorf("with no router: %v %+v", err, sts)
	}
	b.Reset()
	PrintStatus(&b, sts)
	if n := strings.Count(b.String(), "connection refused"); n != 1 || !strings.Contains(b.String(), "The router could not be asked:") {
		t.Errorf("the router's error is printed %d times, want once below the table:\n%s", n, b.String())
	}
}

// recordingScaler records SetMinContainers calls; it fails for one app.
type recordingScaler struct {
	mu    sync.Mutex
	calls []string
	fail  string
}

func (r *recordingScaler) SetMinContainers(_ context.Context, env, app, class string, min int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("%s/%s.%s min=%d", env, app, class, min))
	if app == r.fail {
		return errors.New("modal: permission denied")
	}
	return nil
}

// TestScale reads demand from two routers and sets min_containers from it:
// us-east's streams need containers, eu-west idles at its floor, and
// ap-south's schedule window is open.
func TestScale(t *testing.T) {
	text := strings.Replace(testConfig, "    ap-south: {min_containers: 2, scaledown_window: 10m}",
		`    ap-south: {min_containers: 1, schedule: [{from: "08:00", to: "20:00", min_containers: 3}]}`, 1)
	text = strings.Replace(text, "defaults: {gpu: L4, target_inputs: 8, max_containers: 4}", "defaults: {gpu: L4, target_inputs: 4, max_containers: 4}", 1)
	tb := newTestbed(t, text)
	tb.d.Now = func() time.Time { return time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC) }
	api, admin := startRouter(t, tb.d.Config)
	openStreams(t, api, "us-east", 5)

	scaler := &recordingScaler{fail: "earshot-eu-west"}
	tb.d.Autoscaler = scaler
	// The same router twice stands for two instances: their peaks add up.
	decs, err := tb.d.Scale(context.Background(), nil, []string{admin, admin}, "", 1, false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range decs {
		got = append(got, fmt.Sprintf("%s demand=%d need=%d floor=%d min=%d", d.Region, d.Demand, d.Need, d.Floor, d.MinContainers))
	}
	want := []string{
		"us-east demand=10 need=3 floor=1 min=4",
		"eu-west demand=0 need=0 floor=1 min=1",
		"ap-south demand=0 need=0 floor=3 min=3",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("decisions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(scaler.calls) != 0 {
		t.Errorf("a dry run changed the autoscaler: %v", scaler.calls)
	}

	decs, err = tb.d.Scale(context.Background(), nil, []string{admin}, "", 2, true)
	if err == nil || !strings.Contains(err.Error(), "1 region(s) not scaled") {
		t.Errorf("apply with one failure: %v", err)
	}
	wantCalls := "staging/earshot-us-east.Deepgram min=4 staging/earshot-eu-west.Deepgram min=2 staging/earshot-ap-south.Deepgram min=3"
	if got := strings.Join(scaler.calls, " "); got != wantCalls {
		t.Errorf("autoscaler calls:\n%s\nwant:\n%s", got, wantCalls)
	}
	if decs[1].Err == nil || decs[0].Err != nil || decs[2].Err != nil {
		t.Errorf("errors: %v %v %v; want only eu-west's", decs[0].Err, decs[1].Err, decs[2].Err)
	}

	if _, err := tb.d.Scale(context.Background(), nil, []string{"http://127.0.0.1:1"}, "", 1, false); err == nil || !strings.Contains(err.Error(), "read demand") {
		t.Errorf("with no router: %v", err)
	}
}
