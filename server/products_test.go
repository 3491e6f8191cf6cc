package server

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

// productRegions: us-east serves Flux and Aura from deployments of their
// own; eu-west serves everything from one URL.
const productRegions = `
log: {level: info}
health: {probe: {disable: true}}
routing: {allow_client_override: true}
regions:
  - name: us-east
    url: sim://us-east
    location: {lat: 39.04, lon: -77.49}
    products:
      flux: {url: "sim://us-east-flux"}
      speak: {url: "sim://us-east-speak", capacity: 5}
  - name: eu-west
    url: sim://eu-west
    location: {lat: 53.35, lon: -6.26}
`

// served does one request or stream handshake for path and returns the
// deployment that served it (from the access log), the region and route
// the client was told.
func served(t *testing.T, r *router, path string) (deployment, region, reason string) {
	t.Helper()
	before := len(r.accessLines())
	switch path {
	case "/v2/listen", "/v1/listen?stream":
		u := r.ws(strings.TrimSuffix(path, "?stream") + "?encoding=linear16&sample_rate=16000")
		c, resp, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		region, reason = resp.Header.Get("X-Earshot-Region"), resp.Header.Get("X-Earshot-Route")
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				break
			}
		}
		c.Close()
	default:
		var resp *http.Response
		var err error
		switch path {
		case "/v1/models":
			resp, err = http.Get(r.url(path))
		case "/v1/speak":
			resp, err = http.Post(r.url(path), "application/json", strings.NewReader(`{"text":"hello there"}`))
		default:
			resp, err = httpPost(r.url(path), sim.WAV(sim.Synthesize(testWords, 16000, 2), 16000, 1))
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		region, reason = resp.Header.Get("X-Earshot-Region"), resp.Header.Get("X-Earshot-Route")
	}
	var line map[string]any
	waitFor(t, "the access log line of "+path, func() bool {
		lines := r.accessLines()
		if len(lines) > before {
			line = lines[len(lines)-1].ContextMap()
			return true
		}
		return false
	})
	deployment, _ = line["region"].(string)
	return deployment, region, reason
}

// TestProductDeployments: each path goes to the deployment of its product,
// each deployment has its own health, and a product that fails moves to
// another region while the region's other products stay.
func TestProductDeployments(t *testing.T) {
	r := startRouter(t, productRegions)
	for _, c := range []struct{ path, deployment string }{
		{"/v1/listen", "us-east"},
		{"/v1/listen?stream", "us-east"},
		{"/v2/listen", "us-east/flux"},
		{"/v1/speak", "us-east/speak"},
		{"/v1/models", "us-east"},
	} {
		dep, region, _ := served(t, r, c.path)
		if dep != c.deployment || region != "us-east" {
			t.Errorf("%s: served by %s (X-Earshot-Region %s), want %s (us-east)", c.path, dep, region, c.deployment)
		}
	}

	// Flux refuses in us-east: Flux moves to eu-west (whose one URL serves
	// it); us-east's other products do not notice.
	r.srv.Sim("us-east/flux").SetMode(sim.ModeRefuse)
	if dep, region, reason := served(t, r, "/v2/listen"); dep != "eu-west" || region != "eu-west" || reason != "failover" {
		t.Errorf("flux with us-east's Flux refusing: %s %s %s, want eu-west eu-west failover", dep, region, reason)
	}
	for _, p := range []string{"/v1/listen", "/v1/speak"} {
		if dep, _, reason := served(t, r, p); !strings.HasPrefix(dep, "us-east") || reason == "failover" {
			t.Errorf("%s after us-east's Flux failed: %s (%s), want us-east's", p, dep, reason)
		}
	}
	st := statusOf(t, r)
	if f := st["us-east/flux"]; f.Region != "us-east" || f.Product != "flux" || f.Outcomes["failure"] == 0 {
		t.Errorf("/status us-east/flux = %+v, want region us-east, product flux, a refusal", f)
	}
	if m := st["us-east"]; m.Outcomes["failure"] != 0 || m.Product != "" {
		t.Errorf("/status us-east = %+v, want no refusal: Flux's failure is not the main deployment's", m)
	}
	if s := st["us-east/speak"]; s.Configured != 5 {
		t.Errorf("us-east/speak's capacity = %d, want its own 5", s.Configured)
	}
	r.srv.Sim("us-east/flux").SetMode(sim.ModeOK)

	// A client naming the region gets the product's deployment there.
	c, resp, err := websocket.DefaultDialer.Dial(r.ws("/v2/listen?encoding=linear16&sample_rate=16000"), http.Header{"X-Earshot-Region": {"eu-west"}})
	if err != nil || resp.Header.Get("X-Earshot-Region") != "eu-west" {
		t.Fatalf("override to eu-west: %v", err)
	}
	c.Close()

	// Draining one product of a region leaves its others in rotation.
	resp, err = http.Post("http://"+r.admin+"/regions/us-east/drain?product=flux", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var drained struct{ Deployments []string }
	_ = json.NewDecoder(resp.Body).Decode(&drained)
	resp.Body.Close()
	if strings.Join(drained.Deployments, ",") != "us-east/flux" {
		t.Errorf("drain ?product=flux drained %v, want us-east/flux", drained.Deployments)
	}
	if dep, _, reason := served(t, r, "/v2/listen"); dep != "eu-west" || reason != "unhealthy" {
		t.Errorf("flux with us-east's Flux drained: %s (%s), want eu-west (unhealthy)", dep, reason)
	}
	if dep, _, _ := served(t, r, "/v1/speak"); dep != "us-east/speak" {
		t.Errorf("speak with us-east's Flux drained: %s, want us-east/speak", dep)
	}
	resp, err = http.Post("http://"+r.admin+"/regions/us-east/drain", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&drained)
	resp.Body.Close()
	if strings.Join(drained.Deployments, ",") != "us-east,us-east/flux,us-east/speak" {
		t.Errorf("draining the region drained %v, want all three deployments", drained.Deployments)
	}
}

// deploymentStatus is a deployment's part of /status.
type deploymentStatus struct {
	Region     string            `json:"region"`
	Product    string            `json:"product"`
	Configured int               `json:"configured_capacity"`
	Outcomes   map[string]uint64 `json:"outcomes"`
}

func statusOf(t *testing.T, r *router) map[string]deploymentStatus {
	t.Helper()
	resp, err := http.Get("http://" + r.admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Regions []struct {
			Name string `json:"name"`
			deploymentStatus
		} `json:"regions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]deploymentStatus{}
	for _, d := range doc.Regions {
		out[d.Name] = d.deploymentStatus
	}
	return out
}
