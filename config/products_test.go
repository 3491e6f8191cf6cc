package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const productRegions = `
auth: {disable: true}
regions_file: deployed.yaml
regions:
  - name: us-east
    url: https://acme--earshot-us-east.us-east.modal.direct
    location: {lat: 39, lon: -77}
    capacity: 64
    headers: {Modal-Key: wk-1, Modal-Secret: ws-1}
    products:
      flux: {url: https://acme--earshot-us-east-flux.us-east.modal.direct, capacity: 16}
      speak: {url: "sim://us-east-speak", sim: {latency: 5ms}, headers: {Modal-Secret: ws-speak}}
  - name: ap-south
    location: {lat: 19, lon: 72}
    products:
      flux: {url: https://acme--earshot-ap-south-flux.ap-south.modal.direct}
`

// TestProducts: a region's products become deployments of their own, named
// REGION/PRODUCT, with the region's location and headers under their own;
// a region may have products and no main URL.
func TestProducts(t *testing.T) {
	c, err := Parse("test.yaml", []byte(productRegions))
	if err != nil {
		t.Fatal(err)
	}
	if !deploymentsAre(t, c, func(d Region) string { return d.Name + " " + d.Group + " " + d.Product + " " + d.URL },
		"us-east us-east  https://acme--earshot-us-east.us-east.modal.direct",
		"us-east/flux us-east flux https://acme--earshot-us-east-flux.us-east.modal.direct",
		"us-east/speak us-east speak sim://us-east-speak",
		"ap-south/flux ap-south flux https://acme--earshot-ap-south-flux.ap-south.modal.direct",
	) {
		t.FailNow()
	}
	d := c.Deployments()
	if h := d[2].UpstreamHeader(); h.Get("Modal-Key") != "wk-1" || h.Get("Modal-Secret") != "ws-speak" {
		t.Errorf("speak's headers = %v, want the region's Modal-Key under its own Modal-Secret", h)
	}
	if d[1].Capacity != 16 || d[1].Location != d[0].Location || d[1].Base().Host != "acme--earshot-us-east-flux.us-east.modal.direct" {
		t.Errorf("flux = capacity %d, location %v, base %v", d[1].Capacity, d[1].Location, d[1].Base())
	}
	if !d[2].IsSim() || d[2].Sim.FullStatus != 503 || d[2].Sim.Latency.Milliseconds() != 5 {
		t.Errorf("speak's simulation = %+v, want its own with defaults", d[2].Sim)
	}
	if h := d[0].UpstreamHeader(); h.Get("Modal-Secret") != "ws-1" {
		t.Errorf("the main deployment's headers changed: %v", h)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"    products: {vision: {url: https://v}}\n", `regions[0].products.vision: "vision" is not a product (want one of listen, flux, speak, agent)`},
		{"    products: {flux: {capacity: 3}}\n", "regions[0].products.flux.url: is required"},
		{"    products: {flux: {url: ftp://f}}\n", `regions[0].products.flux.url: scheme "ftp"`},
		{"    products: {flux: {url: https://f, headers: {Host: x}}}\n", "regions[0].products.flux.headers.Host: Host is set by the router"},
		{"    products: {flux: {url: https://f, sim: {latency: 1ms}}}\n", "products.flux.sim: only a sim:// region takes sim options"},
	} {
		text := "auth: {disable: true}\nregions:\n  - name: a\n    url: https://a\n    location: {lat: 1, lon: 1}\n" + tc.yaml
		if _, err := Parse("test.yaml", []byte(text)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := Parse("test.yaml", []byte("auth: {disable: true}\nregions:\n  - {name: a, location: {lat: 1, lon: 1}}\n")); err == nil ||
		!strings.Contains(err.Error(), "url") {
		t.Errorf("a region with neither url nor products: %v", err)
	}

	// A region with products only: its headers are checked and read as any
	// region's, and go to its products.
	t.Setenv("EARSHOT_TEST_PRODUCT_KEY", "wk-products")
	only := "auth: {disable: true}\nregions:\n  - name: a\n    location: {lat: 1, lon: 1}\n    products: {flux: {url: https://f}}\n    headers: "
	c, err = Parse("test.yaml", []byte(only+"{Modal-Key: {env: EARSHOT_TEST_PRODUCT_KEY}}\n"))
	if err != nil || c.Deployments()[0].UpstreamHeader().Get("Modal-Key") != "wk-products" {
		t.Errorf("a products-only region's headers: %v, %v", err, c.Deployments())
	}
	for headers, want := range map[string]string{
		"{Host: evil.example}":                   "regions[0].headers.Host: Host is set by the router",
		"{Modal-Key: {env: EARSHOT_TEST_UNSET}}": "regions[0].headers.Modal-Key: environment variable EARSHOT_TEST_UNSET is not set",
	} {
		if _, err := Parse("test.yaml", []byte(only+headers+"\n")); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("products-only region with headers %s: %v, want %q", headers, err, want)
		}
	}
}

// TestRegionsFileProducts: the deployer's regions file carries each
// product's URL and capacity; a product deployed but not configured is
// routed to with the region's headers.
func TestRegionsFileProducts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(productRegions), 0o644); err != nil {
		t.Fatal(err)
	}
	deployed := `
regions:
  - name: us-east
    url: https://new-main.modal.direct
    capacity: 32
    products:
      flux: {url: https://new-flux.modal.direct, capacity: 8}
      agent: {url: https://new-agent.modal.direct, capacity: 4}
  - name: ap-south
    products:
      flux: {url: https://new-ap-flux.modal.direct}
`
	if err := os.WriteFile(filepath.Join(dir, "deployed.yaml"), []byte(deployed), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range c.Deployments() {
		if d.Name == "us-east/flux" && d.Capacity != 8 || d.Name == "us-east/agent" && d.Capacity != 4 || d.Name == "us-east" && d.Capacity != 32 {
			t.Errorf("%s capacity %d", d.Name, d.Capacity)
		}
	}
	deploymentsAre(t, c, func(d Region) string { return d.Name + " " + d.URL + " " + d.UpstreamHeader().Get("Modal-Key") },
		"us-east https://new-main.modal.direct wk-1",
		"us-east/flux https://new-flux.modal.direct wk-1",
		"us-east/speak sim://us-east-speak wk-1",
		"us-east/agent https://new-agent.modal.direct wk-1",
		"ap-south/flux https://new-ap-flux.modal.direct ",
	)

	if err := os.WriteFile(filepath.Join(dir, "deployed.yaml"), []byte("regions:\n  - {name: us-east, products: {flux: {url: ftp://x}}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "regions[0].products.flux: url \"ftp://x\"") {
		t.Errorf("a bad product URL in the regions file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "deployed.yaml"), []byte("regions:\n  - {name: us-east, products: {Flux: {url: https://x}}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "regions_file") || !strings.Contains(err.Error(), `"Flux" is not a product`) {
		t.Errorf("an unknown product in the regions file: %v, want it blamed on the regions file", err)
	}
}

// deploymentsAre checks c's deployments, each described by line, against
// want in order, and reports whether they matched.
func deploymentsAre(t *testing.T, c *Config, line func(Region) string, want ...string) bool {
	t.Helper()
	var got []string
	for _, d := range c.Deployments() {
		got = append(got, line(d))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("deployments:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		return false
	}
	return true
}
