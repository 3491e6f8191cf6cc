package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/config"
)

// productConfig deploys Flux and Aura-2 on stacks of their own next to each
// region's main app: us-east gets both, eu-west only Flux.
const productConfig = `
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
deploy:
  environment: staging
  image: registry.example.com/acme/deepgram:release-1
  secrets: [deepgram-license]
  volumes: {/models: deepgram-models}
  ready_timeout: 2s
  defaults: {gpu: L4, target_inputs: 8, max_containers: 4}
  products:
    flux:
      volumes: {/models: deepgram-flux-models}
      defaults: {gpu: L40S, target_inputs: 4, max_containers: 2}
    speak:
      image: registry.example.com/acme/deepgram-aura:release-1
      volumes: {/models: deepgram-aura-models}
      defaults: {target_inputs: 32}
  regions:
    us-east: {min_containers: 2}
    eu-west: {container_regions: [eu], products: {flux: {max_containers: 3}}}
`

// TestProductSettings: which apps each region deploys, and each one's
// settings: the product's over deploy.defaults, the region's products entry
// over both, where it runs from the region.
func TestProductSettings(t *testing.T) {
	tb := newTestbed(t, productConfig)
	dep := tb.d.deploy()
	if got := strings.Join(dep.Deployments(tb.d.Config), " "); got != "us-east us-east/flux us-east/speak eu-west eu-west/flux" {
		t.Errorf("deployments = %s", got)
	}
	for _, c := range []struct {
		name, app, gpu, image, volume string
		min, max, target              int
		where                         string
	}{
		{"us-east", "earshot-us-east", "L4", "deepgram:release-1", "deepgram-models", 2, 4, 8, "us-east"},
		{"us-east/flux", "earshot-us-east-flux", "L40S", "deepgram:release-1", "deepgram-flux-models", 1, 2, 4, "us-east"},
		{"us-east/speak", "earshot-us-east-speak", "L4", "deepgram-aura:release-1", "deepgram-aura-models", 1, 4, 32, "us-east"},
		{"eu-west/flux", "earshot-eu-west-flux", "L40S", "deepgram:release-1", "deepgram-flux-models", 1, 3, 4, "eu"},
	} {
		r, st := dep.Region(c.name), dep.Stack(c.name)
		if dep.AppName(c.name) != c.app || r.GPU != c.gpu || *r.MinContainers != c.min || r.MaxContainers != c.max ||
			r.TargetInputs != c.target || strings.Join(r.ContainerRegions, ",") != c.where ||
			!strings.HasSuffix(st.Image, c.image) || st.Volumes["/models"] != c.volume || st.Secrets[0] != "deepgram-license" {
			t.Errorf("%s: app %s, %s, min %d max %d target %d in %v, image %s, volumes %v; want %+v",
				c.name, dep.AppName(c.name), r.GPU, *r.MinContainers, r.MaxContainers, r.TargetInputs, r.ContainerRegions, st.Image, st.Volumes, c)
		}
	}
	if names, err := tb.d.regions([]string{"eu-west", "us-east/speak"}); err != nil || strings.Join(names, " ") != "eu-west eu-west/flux us-east/speak" {
		t.Errorf("a region's name stands for its apps, REGION/PRODUCT for one: %v %v", names, err)
	}
	if _, err := tb.d.regions([]string{"eu-west/speak"}); err == nil {
		t.Errorf("eu-west/speak is not deployed, but was accepted")
	}

	for _, tc := range []struct{ change, want string }{
		{"  products: {vision: {}}\n", `deploy.products.vision: "vision" is not a product`},
		{"  products: {flux: {}}\n  regions:\n    us-east: {products: {speak: {}}}\n", `deploy.regions.us-east.products.speak: "speak" is not in deploy.products`},
		{"  products: {flux: {}}\n  regions:\n    us-east: {}\n    us-east-flux: {}\n", "its Modal app would be earshot-us-east-flux"},
		{"  products: {flux: {defaults: {max_containers: -1}}}\n  regions:\n    us-east: {}\n", "deploy.regions.us-east.products.flux.max_containers"},
	} {
		text := "auth: {disable: true}\nregions:\n" +
			"  - {name: us-east, url: sim://a, location: {lat: 1, lon: 1}}\n  - {name: us-east-flux, url: sim://b, location: {lat: 1, lon: 1}}\n" +
			"deploy:\n  image: x\n" + tc.change
		if !strings.Contains(tc.change, "regions:") {
			text += "  regions: {us-east: {}}\n"
		}
		if _, err := config.Parse("test.yaml", []byte(text)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.change, err, tc.want)
		}
	}
}

// TestApplyProducts deploys every app of every region, writes the product
// URLs into the regions file, and a router loaded from it sends each path
// to its product's app; destroying one product leaves the region's others.
func TestApplyProducts(t *testing.T) {
	edges := map[string]*edge{}
	urls := map[string]string{}
	for _, app := range []string{"earshot-us-east", "earshot-us-east-flux", "earshot-us-east-speak", "earshot-eu-west", "earshot-eu-west-flux"} {
		edges[app] = modalEdge(t, 1)
		urls[app] = edges[app].URL
	}
	tb := newTestbed(t, productConfig, endpointsEnv(urls))
	results, err := tb.d.Apply(context.Background(), nil)
	if err != nil || len(results) != 5 {
		t.Fatalf("apply: %v (%d results)", err, len(results))
	}
	text, err := os.ReadFile(tb.d.Config.RegionsFilePath())
	if err != nil {
		t.Fatal(err)
	}
	rf, _, err := config.ReadRegionsFile(tb.d.Config.RegionsFilePath())
	if err != nil || len(rf.Regions) != 2 {
		t.Fatalf("regions file: %v\n%s", err, text)
	}
	us := rf.Regions[0]
	if us.Name != "us-east" || us.URL != urls["earshot-us-east"] || us.Capacity != 32 ||
		us.Products["flux"] != (config.DeployedProduct{URL: urls["earshot-us-east-flux"], Capacity: 8}) ||
		us.Products["speak"] != (config.DeployedProduct{URL: urls["earshot-us-east-speak"], Capacity: 128}) {
		t.Errorf("us-east in the regions file: %+v", us)
	}

	// A router on the config as reloaded routes each product to its app.
	cfg, err := config.Load(tb.d.Config.Path)
	if err != nil {
		t.Fatal(err)
	}
	api, admin := startRouter(t, cfg)
	resp, err := http.Post("http://"+api+"/v1/speak", "application/json", strings.NewReader(`{"text":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+api+"/v2/listen?encoding=linear16&sample_rate=16000", http.Header{"X-Earshot-Region": {"eu-west"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	resp, err = http.Get("http://" + api + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for app, want := range map[string][]string{
		"earshot-us-east-speak": {"/v1/speak"}, "earshot-eu-west-flux": {"/v2/listen"},
		"earshot-us-east": {"/v1/models"}, "earshot-us-east-flux": nil, "earshot-eu-west": nil,
	} {
		if got := edges[app].paths(); !slices.Equal(got, want) {
			t.Errorf("%s served %v, want %v", app, got, want)
		}
	}

	// Scale reads each app's own demand and sizes it by its own settings.
	decs, err := tb.d.Scale(context.Background(), nil, []string{admin}, "", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range decs {
		got = append(got, fmt.Sprintf("%s:%s:%d:%d", d.Region, d.App, d.TargetInputs, d.MinContainers))
	}
	if want := "us-east:earshot-us-east:8:2 us-east/flux:earshot-us-east-flux:4:1 us-east/speak:earshot-us-east-speak:32:1 " +
		"eu-west:earshot-eu-west:8:1 eu-west/flux:earshot-eu-west-flux:4:1"; strings.Join(got, " ") != want {
		t.Errorf("scale decisions:\n%s\nwant:\n%s", strings.Join(got, " "), want)
	}

	// Destroying us-east's Aura stops that app alone.
	if err := tb.d.Destroy(context.Background(), "us-east/speak", false, strings.NewReader("earshot-us-east-speak\n")); err != nil {
		t.Fatal(err)
	}
	calls := tb.calls()
	if last := strings.Join(calls[len(calls)-1].Args, " "); last != "app stop earshot-us-east-speak --yes -e staging" {
		t.Errorf("destroy ran %q", last)
	}
	rf, _, _ = config.ReadRegionsFile(tb.d.Config.RegionsFilePath())
	if _, ok := rf.Regions[0].Products["speak"]; ok || rf.Regions[0].Products["flux"].URL == "" || rf.Regions[0].URL == "" {
		t.Errorf("us-east after destroying its Aura: %+v, want its main app and Flux kept", rf.Regions[0])
	}
	// Destroying a region stops all its apps.
	if err := tb.d.Destroy(context.Background(), "eu-west", true, nil); err != nil {
		t.Fatal(err)
	}
	if stops := tb.lastStops(2); stops != "earshot-eu-west earshot-eu-west-flux" {
		t.Errorf("destroying eu-west stopped %v", stops)
	}
	pyCompile(t, filepath.Join(tb.d.workdir(), "us-east", "flux", "app.py"))
}

// TestDestroyOrphanProduct: a product taken out of deploy.products while
// its app runs (the regions file still lists it) can still be destroyed,
// alone or with its region.
func TestDestroyOrphanProduct(t *testing.T) {
	tb := newTestbed(t, testConfig)
	write := func() {
		if err := os.WriteFile(tb.d.Config.RegionsFilePath(), []byte("regions:\n  - {name: us-east, url: https://us.modal.direct, products: {flux: {url: https://f.modal.direct}}}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write()
	if err := tb.d.Destroy(context.Background(), "us-east/flux", true, nil); err != nil {
		t.Fatalf("destroy of a product no longer configured: %v", err)
	}
	rf, _, _ := config.ReadRegionsFile(tb.d.Config.RegionsFilePath())
	if len(rf.Regions) != 1 || len(rf.Regions[0].Products) != 0 || rf.Regions[0].URL == "" {
		t.Errorf("regions file after destroying the orphan: %+v", rf.Regions)
	}
	calls := tb.calls()
	if got := strings.Join(calls[len(calls)-1].Args, " "); got != "app stop earshot-us-east-flux --yes -e staging" {
		t.Errorf("ran %q", got)
	}
	// With its region: both apps.
	write()
	if err := tb.d.Destroy(context.Background(), "us-east", true, nil); err != nil {
		t.Fatal(err)
	}
	if stops := tb.lastStops(2); stops != "earshot-us-east earshot-us-east-flux" {
		t.Errorf("destroying us-east stopped %v", stops)
	}
}

// lastStops names the apps the last n modal calls stopped, in order.
func (tb *testbed) lastStops(n int) string {
	calls := tb.calls()
	var stops []string
	for _, c := range calls[max(0, len(calls)-n):] {
		stops = append(stops, c.Args[2])
	}
	return strings.Join(stops, " ")
}
