package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/sim"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fakeModal is the fake modal CLI, built once for the package's tests.
var fakeModal string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "fakemodal")
	if err != nil {
		panic(err)
	}
	fakeModal = filepath.Join(dir, "modal")
	if out, err := exec.Command("go", "build", "-o", fakeModal, "./testdata/fakemodal").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the fake modal CLI: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

const testModalKey = "wk-test-key"

// testConfig has three regions to deploy, with Modal proxy auth headers.
const testConfig = `
auth: {disable: true}
regions_file: regions.deployed.yaml
routing: {allow_client_override: true}
regions:
  - name: us-east
    url: sim://us-east
    location: {lat: 39.04, lon: -77.49}
    headers: {Modal-Key: {env: TEST_MODAL_KEY}, Modal-Secret: {env: TEST_MODAL_SECRET}}
  - name: eu-west
    url: sim://eu-west
    location: {lat: 53.35, lon: -6.26}
    headers: {Modal-Key: {env: TEST_MODAL_KEY}, Modal-Secret: {env: TEST_MODAL_SECRET}}
  - name: ap-south
    url: sim://ap-south
    location: {lat: 19.08, lon: 72.88}
    headers: {Modal-Key: {env: TEST_MODAL_KEY}, Modal-Secret: {env: TEST_MODAL_SECRET}}
deploy:
  environment: staging
  image: registry.example.com/acme/deepgram:release-1
  registry_secret: quay-pull
  secrets: [deepgram-license]
  volumes: {/models: deepgram-models}
  ready_timeout: 2s
  defaults: {gpu: L4, target_inputs: 8, max_containers: 4}
  regions:
    us-east: {}
    eu-west: {container_regions: [eu], gpu: L40S}
    ap-south: {min_containers: 2, scaledown_window: 10m}
`

// testbed is a config on disk and a Deployer for it that runs the fake
// modal CLI with recorded invocations.
type testbed struct {
	t   *testing.T
	dir string
	d   *Deployer
	out *syncBuffer
	log string
}

func newTestbed(t *testing.T, text string, env ...string) *testbed {
	t.Setenv("TEST_MODAL_KEY", testModalKey)
	t.Setenv("TEST_MODAL_SECRET", "ws-test-secret")
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{t: t, dir: dir, out: &syncBuffer{}, log: filepath.Join(dir, "modal-calls.jsonl")}
	tb.d, err = New(cfg, tb.out)
	if err != nil {
		t.Fatal(err)
	}
	tb.d.Modal = fakeModal
	tb.d.PollInterval = 10 * 1e6 // 10ms
	tb.d.Env = append([]string{"HOME=" + dir, "PATH=" + os.Getenv("PATH"),
		"MODAL_TOKEN_ID=ak-test", "MODAL_TOKEN_SECRET=as-test", "FAKE_MODAL_LOG=" + tb.log}, env...)
	return tb
}

// calls are the fake CLI's recorded invocations.
func (tb *testbed) calls() []modalCall {
	data, err := os.ReadFile(tb.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		tb.t.Fatal(err)
	}
	var out []modalCall
	for line := range strings.Lines(string(data)) {
		var c modalCall
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			tb.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

type modalCall struct {
	Args []string          `json:"args"`
	Env  map[string]string `json:"env"`
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// modalEdge stands for Modal's proxy in front of a region: it wants the
// Modal-Key header, answers 503 until a container is "up" (after
// coldPolls status requests; never when coldPolls < 0), then passes
// requests to a simulated engine.
func modalEdge(t *testing.T, coldPolls int) *edge {
	engine, err := sim.Start("127.0.0.1:0", sim.Options{Region: "deployed"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	target, _ := url.Parse(engine.URL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	var polls atomic.Int64
	e := &edge{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Modal-Key") != testModalKey || r.Header.Get("Modal-Secret") == "" {
			http.Error(w, "modal-http: missing or invalid proxy auth", http.StatusUnauthorized)
			return
		}
		if n := polls.Add(1); coldPolls < 0 || n <= int64(coldPolls) {
			http.Error(w, "modal-http: no container available", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path != "/v1/status" {
			e.mu.Lock()
			e.served = append(e.served, r.URL.Path)
			e.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(e.Close)
	return e
}

// edge is a Modal-like endpoint and the API paths it has served.
type edge struct {
	*httptest.Server
	mu     sync.Mutex
	served []string
}

func (e *edge) paths() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.served)
}

func endpointsEnv(m map[string]string) string {
	b, _ := json.Marshal(m)
	return "FAKE_MODAL_ENDPOINTS=" + string(b)
}

// pyCompile checks that Python accepts a generated app.
func pyCompile(t *testing.T, file string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (./scripts/test.sh installs it when it can): generated apps not compiled")
	}
	if out, err := exec.Command(py, "-m", "py_compile", file).CombinedOutput(); err != nil {
		t.Errorf("python3 -m py_compile %s: %v\n%s", file, err, out)
	}
}

func TestApply(t *testing.T) {
	us, ap := modalEdge(t, 2), modalEdge(t, -1)
	barrier := t.TempDir()
	tb := newTestbed(t, testConfig,
		endpointsEnv(map[string]string{"earshot-us-east": us.URL, "earshot-ap-south": ap.URL}),
		"FAKE_MODAL_FAIL=earshot-eu-west", "FAKE_MODAL_BARRIER="+barrier+":3")

	results, err := tb.d.Apply(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "2 of 3 deployment(s) failed: eu-west, ap-south") {
		t.Errorf("apply: %v, want eu-west and ap-south named as failed", err)
	}
	byRegion := map[string]Result{}
	for _, r := range results {
		byRegion[r.Region] = r
	}
	if r := byRegion["us-east"]; r.Err != nil || r.URL != us.URL {
		t.Errorf("us-east: %+v, want ready at %s", r, us.URL)
	}
	if r := byRegion["eu-west"]; r.Err == nil || !strings.Contains(r.Err.Error(), "exit status 1") ||
		!strings.Contains(r.Err.Error(), "pull access denied") {
		t.Errorf("eu-west: %v, want the failed deploy with its last output", r.Err)
	}
	if r := byRegion["ap-south"]; r.Err == nil || !strings.Contains(r.Err.Error(), "not ready after 2s; last status: 503") {
		t.Errorf("ap-south: %v, want a timeout with the last status", r.Err)
	}

	// Every region was deployed with the exact command, concurrently (the
	// fake's barrier fails deploys that do not overlap).
	var deploys []string
	for _, c := range tb.calls() {
		deploys = append(deploys, strings.Join(c.Args, " "))
		if c.Env["MODAL_TOKEN_ID"] != "ak-test" || c.Env["MODAL_TOKEN_SECRET"] != "(set)" {
			t.Errorf("modal ran without the credentials: %v", c.Env)
		}
	}
	slices.Sort(deploys)
	var want []string
	for _, r := range []string{"ap-south", "eu-west", "us-east"} {
		want = append(want, fmt.Sprintf("deploy %s --name earshot-%s -e staging", tb.d.appFile(r), r))
	}
	if !slices.Equal(deploys, want) {
		t.Errorf("modal calls:\n  %s\nwant:\n  %s", strings.Join(deploys, "\n  "), strings.Join(want, "\n  "))
	}

	// Output is prefixed by region, line by line.
	out := tb.out.String()
	for _, line := range []string{
		"[us-east] └── 🔨 Created flash service endpoint for Deepgram => " + us.URL,
		"[us-east] /v1/status: 503 (no container up yet)",
		"[us-east] ready",
		"[eu-west] │ Image build for im-F4k3Im4g3 failed: pull access denied, repository   │",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
	if strings.Contains(out, "ws-test-secret") || strings.Contains(out, "as-test") {
		t.Errorf("a secret reached the output")
	}

	// Only the region that became ready is in the regions file, and the
	// router's config loads it.
	cfg, err := config.Load(tb.d.Config.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range cfg.Regions {
		switch {
		case r.Name == "us-east" && (r.URL != us.URL || r.Capacity != 32):
			t.Errorf("us-east in the router's config: %s capacity %d, want %s and 4x8", r.URL, r.Capacity, us.URL)
		case r.Name != "us-east" && !r.IsSim():
			t.Errorf("%s moved to %s though its deploy failed", r.Name, r.URL)
		}
	}
	for _, r := range []string{"us-east", "eu-west", "ap-south"} {
		pyCompile(t, tb.d.appFile(r))
	}

	// Planning again: us-east is as deployed; the others never made it.
	changes, err := tb.d.Plan(nil)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, c := range changes {
		actions = append(actions, c.Region+":"+c.Action)
	}
	if got := strings.Join(actions, " "); got != "us-east:unchanged eu-west:create ap-south:create" {
		t.Errorf("plan after apply: %s", got)
	}
}

func TestPlan(t *testing.T) {
	tb := newTestbed(t, testConfig)
	changes, err := tb.d.Plan([]string{"eu-west"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	PrintPlan(&b, changes)
	want := fmt.Sprintf("eu-west: create earshot-eu-west\n  $ modal deploy %s --name earshot-eu-west -e staging\n", tb.d.appFile("eu-west"))
	if b.String() != want {
		t.Errorf("plan:\n%s\nwant:\n%s", b.String(), want)
	}
	if calls := tb.calls(); len(calls) != 0 {
		t.Errorf("plan ran modal: %v", calls)
	}
	// The printed command can be run: the file it names is written.
	if data, err := os.ReadFile(tb.d.appFile("eu-west")); err != nil || !bytes.Contains(data, []byte("@app.server(")) {
		t.Errorf("plan did not write the app it names: %v", err)
	}
	if _, err := tb.d.Plan([]string{"mars"}); err == nil || !strings.Contains(err.Error(), `region "mars" is not in the deploy section`) {
		t.Errorf("plan of an unknown region: %v", err)
	}

	// As if eu-west had been deployed with an L4, and the config now says L40S.
	old, err := tb.d.Render("eu-west")
	if err != nil {
		t.Fatal(err)
	}
	old = bytes.Replace(old, []byte(`GPU = "L40S"`), []byte(`GPU = "L4"`), 1)
	if err := writeFile(tb.d.deployedFile("eu-west"), old); err != nil {
		t.Fatal(err)
	}
	changes, err = tb.d.Plan([]string{"eu-west"})
	if err != nil {
		t.Fatal(err)
	}
	if c := changes[0]; c.Action != "update" || strings.Join(c.Diff, "|") != `- GPU = "L4"|+ GPU = "L40S"` {
		t.Errorf("plan after a change: %s %q", c.Action, c.Diff)
	}
}

// TestGolden checks the generated apps of every shape against golden files
// (a region's main app; products with their own models, and with their own
// image), and that Python accepts them. go test ./deploy -run TestGolden
// -update rewrites them.
func TestGolden(t *testing.T) {
	for _, c := range []struct{ config, deployment, golden string }{
		{testConfig, "eu-west", "eu-west.app.py.golden"},
		{productConfig, "eu-west/flux", "eu-west-flux.app.py.golden"},
		{productConfig, "us-east/speak", "us-east-speak.app.py.golden"},
	} {
		t.Run(c.golden, func(t *testing.T) {
			tb := newTestbed(t, c.config)
			tb.d.Workdir = "/srv/earshot/deploy" // a fixed path, for a stable file
			got, err := tb.d.Render(c.deployment)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.golden)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("the generated app differs from %s (-update rewrites it):\n%s", golden, strings.Join(diffLines(string(want), string(got)), "\n"))
			}
			file := filepath.Join(t.TempDir(), "app.py")
			if err := os.WriteFile(file, got, 0o644); err != nil {
				t.Fatal(err)
			}
			pyCompile(t, file)
		})
	}
}

// TestPrerequisites: what the deployer says when the modal CLI or the
// credentials are missing, or the credentials are refused.
func TestPrerequisites(t *testing.T) {
	tb := newTestbed(t, testConfig)
	tb.d.Modal = filepath.Join(tb.dir, "no-such-modal")
	if _, err := tb.d.Apply(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "pip install modal") {
		t.Errorf("without the CLI: %v, want how to install it", err)
	}

	tb = newTestbed(t, testConfig)
	tb.d.Env = []string{"HOME=" + tb.dir, "FAKE_MODAL_LOG=" + tb.log}
	if _, err := tb.d.Apply(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET") {
		t.Errorf("without credentials: %v", err)
	}
	if len(tb.calls()) != 0 {
		t.Errorf("modal ran without credentials")
	}
	// `modal setup` writes ~/.modal.toml: that is credentials enough.
	if err := os.WriteFile(filepath.Join(tb.dir, ".modal.toml"), []byte("[default]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tb.d.CheckCredentials(); err != nil {
		t.Errorf("with ~/.modal.toml: %v", err)
	}

	tb = newTestbed(t, testConfig, "MODAL_TOKEN_ID=invalid")
	results, err := tb.d.Apply(context.Background(), []string{"us-east"})
	if err == nil || len(results) != 1 || results[0].Err == nil || !strings.Contains(results[0].Err.Error(), "Token ID is malformed or invalid") {
		t.Errorf("with refused credentials: %v %+v", err, results)
	}
	if _, err := os.Stat(tb.d.Config.RegionsFilePath()); !os.IsNotExist(err) {
		t.Errorf("a regions file was written though nothing was deployed")
	}
}

// TestWrappedEndpoint: the CLI may wrap the endpoint's line; the deployer
// asks for wide output and also reads a URL wrapped onto the next line.
func TestWrappedEndpoint(t *testing.T) {
	us := modalEdge(t, 0)
	for _, wide := range []bool{true, false} {
		env := []string{endpointsEnv(map[string]string{"earshot-us-east": us.URL}), "FAKE_MODAL_WRAP=80"}
		if !wide {
			env = append(env, "FAKE_MODAL_IGNORE_COLUMNS=1")
		}
		tb := newTestbed(t, testConfig, env...)
		results, err := tb.d.Apply(context.Background(), []string{"us-east", "us-east"})
		if err != nil || len(results) != 1 || results[0].URL != us.URL {
			t.Errorf("wide %v: %v %+v; want one deploy, ready at %s", wide, err, results, us.URL)
		}
	}
}

func TestDestroy(t *testing.T) {
	tb := newTestbed(t, testConfig)
	if err := os.WriteFile(tb.d.Config.RegionsFilePath(), []byte("regions:\n  - {name: ap-south, url: https://ap.modal.direct}\n  - {name: us-east, url: https://us.modal.direct}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := tb.d.Destroy(context.Background(), "ap-south", false, strings.NewReader("earshot-us-east\n"))
	if err == nil || !strings.Contains(err.Error(), "not confirmed") || len(tb.calls()) != 0 {
		t.Fatalf("destroy confirmed with the wrong name: %v, calls %v", err, tb.calls())
	}
	if err := tb.d.Destroy(context.Background(), "ap-south", false, strings.NewReader("earshot-ap-south\n")); err != nil {
		t.Fatal(err)
	}
	calls := tb.calls()
	if len(calls) != 1 || strings.Join(calls[0].Args, " ") != "app stop earshot-ap-south --yes -e staging" {
		t.Errorf("modal calls: %v", calls)
	}
	if !strings.Contains(tb.out.String(), "[ap-south] ✓ App earshot-ap-south stopped.") {
		t.Errorf("output:\n%s", tb.out.String())
	}
	rf, _, err := config.ReadRegionsFile(tb.d.Config.RegionsFilePath())
	if err != nil || len(rf.Regions) != 1 || rf.Regions[0].Name != "us-east" {
		t.Errorf("regions file after destroying ap-south: %+v, %v; want only us-east", rf, err)
	}
}

// TestDestroyAlreadyStopped: destroying an app that is already stopped
// succeeds (the CLI exits 1 saying so), and the region leaves the file.
func TestDestroyAlreadyStopped(t *testing.T) {
	tb := newTestbed(t, testConfig, "FAKE_MODAL_STOPPED=earshot-ap-south")
	if err := os.WriteFile(tb.d.Config.RegionsFilePath(), []byte("regions:\n  - {name: ap-south, url: https://ap.modal.direct}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tb.d.Destroy(context.Background(), "ap-south", true, nil); err != nil {
		t.Fatalf("destroying a stopped app: %v", err)
	}
	rf, _, err := config.ReadRegionsFile(tb.d.Config.RegionsFilePath())
	if err != nil || len(rf.Regions) != 0 {
		t.Errorf("regions file after destroying ap-south: %+v, %v; want it empty", rf, err)
	}
}

// TestGeneratedAppShape imports every generated app against a stand-in of
// the modal package that records its decorators: one private Modal Server
// (`@app.server` without unauthenticated), routed through the region's
// proxy region, and no web decorator combined with @modal.method (Modal
// refuses that at import since 1.3.5). It also runs the app's TOML edits on
// Deepgram's stock configs: the engine on 127.0.0.1:8081, the API on 8080
// dialling it there.
func TestGeneratedAppShape(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (./scripts/test.sh installs it when it can)")
	}
	stub, err := filepath.Abs(filepath.Join("testdata", "stubmodal"))
	if err != nil {
		t.Fatal(err)
	}
	// Every shape: regions' main apps, and products' apps.
	for _, text := range []string{testConfig, productConfig} {
		tb := newTestbed(t, text)
		for _, region := range tb.d.deploy().Deployments(tb.d.Config) {
			appShape(t, py, stub, tb, region)
		}
	}
}

// appShape imports one generated app against the stand-in (see
// TestGeneratedAppShape).
func appShape(t *testing.T, py, stub string, tb *testbed, region string) {
	t.Run(region, func(t *testing.T) {
		src, err := tb.d.Render(region)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "app.py"), src, 0o644); err != nil {
			t.Fatal(err)
		}
		const script = `
import json, sys
import modal, app
engine = '[server]\nhost = "0.0.0.0"\nport = 8080\n\n[model_manager]\nsearch_paths = ["/models"]\n'
api = '[server]\nhost = "0.0.0.0"\nport = 8080\n\n[[driver_pool.standard]]\nurl = "https://engine:8080/v2"\ntimeout_backoff = 1.2\n'
print(json.dumps({"calls": modal.calls, "engine": app.engine_toml("engine.toml", engine), "api": app.api_toml("api.toml", api)}))
`
		cmd := exec.Command(py, "-c", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PYTHONPATH="+stub+":"+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("importing the generated app: %v\n%s", err, out)
		}
		var got struct {
			Calls       [][]json.RawMessage `json:"calls"`
			Engine, API string
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var servers []map[string]any
		for _, c := range got.Calls {
			var name string
			_ = json.Unmarshal(c[0], &name)
			switch name {
			case "app.server":
				var kw map[string]any
				_ = json.Unmarshal(c[1], &kw)
				servers = append(servers, kw)
			case "modal.method", "modal.concurrent", "modal.experimental.http_server", "modal.web_server", "app.cls":
				t.Errorf("the app uses %s: a Server takes none (a web decorator with @modal.method fails at import)", name)
			}
		}
		if len(servers) != 1 {
			t.Fatalf("%d @app.server classes, want 1: %s", len(servers), out)
		}
		kw := servers[0]
		if u, ok := kw["unauthenticated"]; ok && u != false {
			t.Errorf("the endpoint is unauthenticated (%v): anyone with the URL could use the GPUs", u)
		}
		want := tb.d.deploy().Region(region)
		if kw["routing_region"] != want.ProxyRegion || kw["port"] != float64(8080) ||
			kw["target_concurrency"] != float64(want.TargetInputs) || kw["exit_grace_period"] != float64(60) {
			t.Errorf("server settings %v, want routing_region %s, port 8080, target_concurrency %d, exit_grace_period 60",
				kw, want.ProxyRegion, want.TargetInputs)
		}
		stack, image := tb.d.deploy().Stack(region), ""
		for _, c := range got.Calls {
			var name string
			_ = json.Unmarshal(c[0], &name)
			if name == "image.from_registry" {
				_ = json.Unmarshal(c[1], &image)
			}
		}
		vols, _ := json.Marshal(kw["volumes"])
		wantVols := map[string]string{}
		for k, v := range stack.Volumes {
			wantVols[k] = "volume:" + v
		}
		if wv, _ := json.Marshal(wantVols); image != stack.Image || string(vols) != string(wv) {
			t.Errorf("image %s, volumes %s; want the deployment's own: %s, %s", image, vols, stack.Image, wv)
		}
		if !strings.Contains(got.Engine, "host = \"127.0.0.1\"\nport = 8081") || !strings.Contains(got.Engine, "search_paths") {
			t.Errorf("engine.toml as edited:\n%s", got.Engine)
		}
		if !strings.Contains(got.API, "port = 8080") || !strings.Contains(got.API, `url = "https://127.0.0.1:8081/v2"`) ||
			strings.Contains(got.API, "engine:8080") || !strings.Contains(got.API, "timeout_backoff") {
			t.Errorf("api.toml as edited:\n%s", got.API)
		}
	})
}

// TestEndpointLine reads the endpoint from either line modal deploy may
// print for a Server.
func TestEndpointLine(t *testing.T) {
	for _, line := range []string{
		"└── 🔨 Created flash service endpoint for Deepgram => https://acme--earshot-us-east-deepgram.us-east.modal.direct",
		"└── 🔨 Created web function Deepgram => https://acme--earshot-us-east-deepgram.us-east.modal.direct 🔑",
	} {
		m := endpointRE.FindStringSubmatch(line)
		if m == nil || m[1] != "https://acme--earshot-us-east-deepgram.us-east.modal.direct" {
			t.Errorf("%q: read %v", line, m)
		}
	}
	if m := endpointRE.FindStringSubmatch("├── 🔨 Created function Deepgram.*."); m != nil {
		t.Errorf("read an endpoint from a line without one: %v", m)
	}
}

// TestOneContainerTOML runs the generated app's TOML edits on the layouts
// Deepgram's configs come in, and checks that a layout it cannot edit
// stops the start with a message naming the file and key.
func TestOneContainerTOML(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (./scripts/test.sh installs it when it can)")
	}
	stub, _ := filepath.Abs(filepath.Join("testdata", "stubmodal"))
	src, err := newTestbed(t, testConfig).d.Render("us-east")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.py"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, kind, in, want string // want: a substring of the output, or of the error
	}{
		{"header with a comment", "api", "[server] # the API\nport = 8080\n\n[[driver_pool.standard]] # the engine\nurl = \"https://engine:8080/v2\"\n", `url = "https://127.0.0.1:8081/v2"`},
		{"quoted key", "engine", "[server]\n\"port\" = 8080\nhost = \"0.0.0.0\"\n", "port = 8081"},
		{"no server section", "engine", "[model_manager]\nsearch_paths = [\"/models\"]\n", "error: engine.toml: server.host is None"},
		{"two engines", "api", "[server]\nport = 8080\n[[driver_pool.standard]]\nurl = \"https://a:8080/v2\"\n[[driver_pool.standard]]\nurl = \"https://b:8080/v2\"\n", "error: api.toml: several [[driver_pool.standard]] engines"},
		{"inline table", "api", "server = { port = 8080 }\ndriver_pool = { standard = [ { url = \"https://engine:8080/v2\" } ] }\n", "error: api.toml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := `
import sys, app
text = sys.stdin.read()
try:
    print(app.` + tt.kind + `_toml("` + tt.kind + `.toml", text))
except RuntimeError as err:
    print("error:", err)
`
			cmd := exec.Command(py, "-c", script)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "PYTHONPATH="+stub+":"+dir)
			cmd.Stdin = strings.NewReader(tt.in)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), tt.want) {
				t.Errorf("%v\n%s\nwant %q in it", err, out, tt.want)
			}
		})
	}
}
