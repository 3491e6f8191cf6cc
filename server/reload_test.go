package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/sim"
)

// statusDoc is the part of GET /status the tests read.
type statusDoc struct {
	Ready      bool   `json:"ready"`
	ReadyError string `json:"ready_error"`
	Config     struct {
		Reloads   int    `json:"reloads"`
		LastError string `json:"last_error"`
	} `json:"config"`
	StreamsOpen int `json:"streams_open"`
	Regions     []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		InFlight int    `json:"in_flight"`
		Peak     Peak   `json:"peak"`
	} `json:"regions"`
	Draining []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		InFlight int    `json:"in_flight"`
	} `json:"draining"`
	Flows []Flow `json:"flows"`
}

func (r *router) status(t *testing.T) statusDoc {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+r.admin+"/status", nil)
	if r.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+r.adminToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st
}

func (st statusDoc) regionNames() string {
	var names []string
	for _, r := range st.Regions {
		names = append(names, r.Name)
	}
	return strings.Join(names, ",")
}

// modelsRegion asks for /v1/models and returns the region that answered.
func (r *router) modelsRegion(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(r.url("/v1/models"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/models = %d", resp.StatusCode)
	}
	return resp.Header.Get("X-Earshot-Region")
}

// onlyEUWest is simRegions without us-east.
func onlyEUWest(t *testing.T, extra string) *config.Config {
	t.Helper()
	yaml := strings.Replace(simRegions(extra), `  - name: us-east
    url: sim://us-east
    location: {lat: 39.04, lon: -77.49}
    capacity: 100
    sim: {silence_timeout: 2s}
`, "", 1)
	cfg, err := config.Parse("test.yaml", []byte("auth: {disable: true}\n"+yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestReloadDrainsARemovedRegion removes the region a stream is on: new
// requests go elsewhere at once, and the stream (raw audio, so it can
// move) moves to eu-west at its next final, getting every result; the
// region shows as draining until nothing is left on it.
func TestReloadDrainsARemovedRegion(t *testing.T) {
	r := startRouter(t, simRegions(""))
	if got := r.modelsRegion(t); got != "us-east" {
		t.Fatalf("before the reload, served by %s, want us-east", got)
	}
	euBefore := r.srv.live().region("eu-west").health

	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?encoding=linear16&sample_rate=16000"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("X-Earshot-Region") != "us-east" {
		t.Fatalf("stream on %s, want us-east", resp.Header.Get("X-Earshot-Region"))
	}
	pcm := sim.Synthesize(testWords, 16000, 2.0)
	sendAudio(t, c, pcm[:len(pcm)/2], 3200)

	if err := r.srv.Reload(onlyEUWest(t, "")); err != nil {
		t.Fatal(err)
	}
	if got := r.modelsRegion(t); got != "eu-west" {
		t.Errorf("after the reload, served by %s, want eu-west", got)
	}
	st := r.status(t)
	if st.regionNames() != "eu-west" || len(st.Draining) > 1 || (len(st.Draining) == 1 && st.Draining[0].State != "draining") {
		t.Errorf("status after the reload: regions %s, draining %+v; want eu-west, and us-east draining if anything",
			st.regionNames(), st.Draining)
	}
	if r.srv.live().region("eu-west").health != euBefore {
		t.Error("an unchanged region lost its health state in the reload")
	}

	// The stream goes on, moved to eu-west, to its end.
	sendAudio(t, c, pcm[len(pcm)/2:], 3200)
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`)); err != nil {
		t.Fatal(err)
	}
	msgs, ce := readAll(t, c)
	var finals []string
	for _, m := range msgs {
		if m.Type == "Results" && m.IsFinal && m.transcript() != "" {
			finals = append(finals, m.transcript())
		}
	}
	if got := strings.Join(finals, " "); got != "tell me more" || ce.Code != websocket.CloseNormalClosure {
		t.Errorf("stream across the reload: finals %q, close %v; want %q and 1000", got, ce, "tell me more")
	}
	if n := r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "eu-west", Result: "ok"}]; n != 1 {
		t.Errorf("moves %v, want the stream moved from us-east to eu-west", r.srv.proxy.Resumes().Moves)
	}
	waitFor(t, "us-east to finish draining", func() bool { return len(r.status(t).Draining) == 0 })
}

// TestReloadRejectsABadConfig keeps the running config when the new one is
// invalid, and says why in /status and the metrics.
func TestReloadRejectsABadConfig(t *testing.T) {
	r := startRouter(t, simRegions(""))
	err := r.srv.reloadData([]byte("regions:\n  - name: us-east\n    url: ftp://nowhere\n"))
	if err == nil {
		t.Fatal("a config with a bad region URL was accepted")
	}
	if got := r.modelsRegion(t); got != "us-east" {
		t.Errorf("after a rejected reload, served by %s, want us-east", got)
	}
	st := r.status(t)
	if st.regionNames() != "us-east,eu-west" || st.Config.LastError == "" || st.Config.Reloads != 0 {
		t.Errorf("status after a rejected reload: regions %s, config %+v", st.regionNames(), st.Config)
	}
	if v := r.metric(t, `earshot_config_reloads_total{result="failure"}`); v != 1 {
		t.Errorf("reload failures = %v, want 1", v)
	}
}

// TestWatchConfig edits the config file the ways editors and Kubernetes
// do: a rename over it, and a ConfigMap's symlink swap. Each change is
// picked up; a broken file is not.
func TestWatchConfig(t *testing.T) {
	dir := t.TempDir()
	both := "auth: {disable: true}\n" + simRegions("")
	euOnly := strings.Replace(both, "- name: us-east\n    url: sim://us-east", "- name: us-central\n    url: sim://us-central", 1)

	// Kubernetes: config.yaml -> ..data/config.yaml, ..data -> a timestamped directory.
	write := func(version, content string) {
		d := filepath.Join(dir, version)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "config.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil { // atomic swap
			t.Fatal(err)
		}
	}
	write("v1", both)
	path := filepath.Join(dir, "config.yaml")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
		t.Fatal(err)
	}
	r := startWatchedRouter(t, path)

	write("v2", euOnly)
	waitFor(t, "the ConfigMap-style swap to be loaded", func() bool {
		st := r.status(t)
		return st.regionNames() == "us-central,eu-west"
	})

	write("v3", "regions: [\n") // broken
	waitFor(t, "the broken file to be rejected", func() bool { return r.status(t).Config.LastError != "" })
	if got := r.status(t).regionNames(); got != "us-central,eu-west" {
		t.Errorf("after a broken file, regions %s, want the previous ones", got)
	}

	// An editor: write a temporary file, rename it over the config.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ".config.yaml.swp")
	if err := os.WriteFile(tmp, []byte(both), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the renamed file to be loaded", func() bool {
		st := r.status(t)
		return st.regionNames() == "us-east,eu-west" && st.Config.LastError == ""
	})
	if got := r.modelsRegion(t); got != "us-east" {
		t.Errorf("after the reloads, served by %s, want us-east", got)
	}
}

// TestReadyz is ready while a region can serve, and not once none can or
// the router is shutting down; /healthz stays ok.
func TestReadyz(t *testing.T) {
	r := startRouter(t, simRegions("health: {breaker: {consecutive_failures: 1}, probe: {interval: 50ms, timeout: 40ms, unhealthy_threshold: 1}}\n"))
	get := func(path string) int {
		resp, err := http.Get("http://" + r.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/readyz"); got != 200 {
		t.Fatalf("/readyz = %d with every region up", got)
	}
	for _, name := range []string{"us-east", "eu-west"} {
		r.srv.Sim(name).SetMode(sim.ModeDie)
	}
	waitFor(t, "/readyz to fail with every region down", func() bool { return get("/readyz") == 503 })
	if got := get("/healthz"); got != 200 {
		t.Errorf("/healthz = %d, want 200: the process is alive", got)
	}
	r.srv.Sim("eu-west").SetMode(sim.ModeOK)
	waitFor(t, "/readyz to recover", func() bool { return get("/readyz") == 200 })
}

// TestWatchRegionsFile is the deployer closing the loop: when `deployer
// apply` writes the regions file (temporary file, then rename), the router
// moves the region to its deployed URL without a restart.
func TestWatchRegionsFile(t *testing.T) {
	deployed, err := sim.Start("127.0.0.1:0", sim.Options{Region: "deployed-us-east"})
	if err != nil {
		t.Fatal(err)
	}
	defer deployed.Close()

	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	text := "auth: {disable: true}\nregions_file: regions.deployed.yaml\n" + simRegions("")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startWatchedRouter(t, path)
	engine := func() string {
		req, _ := http.NewRequest("GET", r.url("/v1/models"), nil)
		req.Header.Set("X-Earshot-Region", "us-east")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("X-Sim-Engine")
	}
	if got := engine(); got != "us-east" {
		t.Fatalf("before deploying, us-east is served by engine %q", got)
	}

	tmp := filepath.Join(dir, ".regions.tmp")
	file := fmt.Sprintf("regions:\n  - {name: us-east, url: %s, capacity: 7}\n", deployed.URL())
	if err := os.WriteFile(tmp, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "regions.deployed.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "us-east to move to its deployed URL", func() bool { return engine() == "deployed-us-east" })
	if st := r.status(t); st.Config.Reloads != 1 || st.Config.LastError != "" {
		t.Errorf("reloads %d, last error %q; want one clean reload", st.Config.Reloads, st.Config.LastError)
	}
}

// startWatchedRouter runs a router on the config file at path, watching it
// (and its regions file) until the test ends.
func startWatchedRouter(t *testing.T, path string) *router {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := startRouterWith(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.srv.WatchConfig(ctx, 10*time.Millisecond) }()
	t.Cleanup(func() { // before the router's own cleanup: cleanups run last first
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	})
	return r
}
