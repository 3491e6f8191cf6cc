package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const twoSimRegions = `
auth: {disable: true}
regions_file: deployed.yaml
regions:
  - {name: us-east, url: "sim://us-east", location: {lat: 39, lon: -77}, capacity: 10, sim: {latency: 2ms}}
  - {name: eu-west, url: "sim://eu-west", location: {lat: 53, lon: -6}, capacity: 10}
`

// TestRegionsFile lays a deployer's regions file over the config: absent,
// it changes nothing; present, it replaces the URLs and capacities it
// names; wrong, it fails the load saying where.
func TestRegionsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(twoSimRegions), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !c.RegionsFileMissing() || c.Regions[0].URL != "sim://us-east" {
		t.Errorf("before deploying: missing=%v url=%s, want the config's own", c.RegionsFileMissing(), c.Regions[0].URL)
	}

	deployed := filepath.Join(dir, "deployed.yaml")
	write := func(text string) {
		if err := os.WriteFile(deployed, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("regions:\n  - {name: us-east, url: https://acme--earshot-us-east.us-east.modal.direct, capacity: 64}\n")
	if c, err = Load(path); err != nil {
		t.Fatal(err)
	}
	us, eu := c.Regions[0], c.Regions[1]
	if us.URL != "https://acme--earshot-us-east.us-east.modal.direct" || us.Capacity != 64 || us.Sim != nil || us.IsSim() {
		t.Errorf("us-east = %s capacity %d sim %v, want the deployed URL, 64, no sim", us.URL, us.Capacity, us.Sim)
	}
	if eu.URL != "sim://eu-west" || eu.Capacity != 10 {
		t.Errorf("eu-west = %s capacity %d, want it untouched", eu.URL, eu.Capacity)
	}
	if !strings.Contains(string(c.RegionsSource()), "us-east") || c.RegionsFileMissing() {
		t.Errorf("the regions file's text is not kept")
	}

	// A region retired from the config is left out, not an error.
	write("regions:\n  - {name: ap-south, url: https://x.modal.direct}\n  - {name: eu-west, url: https://eu.modal.direct}\n")
	if c, err = Load(path); err != nil || strings.Join(c.RegionsFileIgnored(), ",") != "ap-south" || c.Regions[1].URL != "https://eu.modal.direct" {
		t.Errorf("a retired region in the regions file: %v, ignored %v", err, c.RegionsFileIgnored())
	}

	for _, tc := range []struct{ file, want string }{
		{"regions:\n  - {name: us-east, url: ftp://x}\n", `url "ftp://x" is not an http(s) URL`},
		{"regions:\n  - {name: us-east, url: https://x, zone: a}\n", "field zone not found"},
		{"regions:\n  - {name: us-east, url: https://x}\n  - {name: us-east, url: https://y}\n", `region "us-east" twice`},
		{"regions:\n  - {name: us-east, url: https://x, capacity: -1}\n", "capacity must not be negative"},
	} {
		write(tc.file)
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "deployed.yaml") {
			t.Errorf("regions file %q: error %v, want one naming deployed.yaml and saying %q", tc.file, err, tc.want)
		}
	}
}

const deploySection = `
deploy:
  image: registry.example.com/acme/deepgram:release-1
  secrets: [deepgram-license]
  volumes: {/models: deepgram-models}
  defaults: {gpu: L40S, target_inputs: 20, max_containers: 6}
  regions:
    us-east: {min_containers: 2, schedule: [{from: "22:00", to: "06:00", min_containers: 4}]}
    eu-west: {proxy_region: eu-west, container_regions: [eu], gpu: H100, buffer_containers: 1}
`

func TestDeploySection(t *testing.T) {
	c, err := Parse("c.yaml", []byte(strings.Replace(twoSimRegions, "regions_file: deployed.yaml\n", "", 1)+deploySection))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Deploy
	if got := strings.Join(d.RegionNames(c), ","); got != "us-east,eu-west" {
		t.Errorf("regions to deploy = %s", got)
	}
	us, eu := d.Region("us-east"), d.Region("eu-west")
	if us.GPU != "L40S" || *us.MinContainers != 2 || us.MaxContainers != 6 || us.TargetInputs != 20 ||
		us.ProxyRegion != "us-east" || strings.Join(us.ContainerRegions, ",") != "us-east" ||
		us.ScaledownWindow != 5*time.Minute || us.Capacity() != 120 || *us.BufferContainers != 0 {
		t.Errorf("us-east resolved to %+v", us)
	}
	if eu.GPU != "H100" || *eu.MinContainers != 1 || *eu.BufferContainers != 1 || eu.ContainerRegions[0] != "eu" {
		t.Errorf("eu-west resolved to %+v", eu)
	}
	if d.AppName("us-east") != "earshot-us-east" || d.ReadyTimeout != 20*time.Minute || d.APICommand[0] != "stem" {
		t.Errorf("deploy defaults: app %s ready %v api %v", d.AppName("us-east"), d.ReadyTimeout, d.APICommand)
	}

	night := us.Schedule[0]
	for hour, want := range map[int]bool{21: false, 22: true, 3: true, 6: false, 12: false} {
		if got := night.Contains(time.Date(2026, 1, 1, hour, 0, 0, 0, time.UTC)); got != want {
			t.Errorf("22:00-06:00 contains %02d:00 = %v", hour, got)
		}
	}

	base := strings.Replace(twoSimRegions, "regions_file: deployed.yaml\n", "", 1)
	for _, tc := range []struct{ section, want string }{
		{"deploy: {regions: {us-east: {}}}", "deploy.image: required"},
		{"deploy: {image: x, regions: {mars: {}}}", `deploy.regions.mars: region "mars" is not in regions`},
		{"deploy: {image: x, regions: {us-east: {proxy_region: us-central}}}", `proxy_region: "us-central" is not one of`},
		{"deploy: {image: x, regions: {us-east: {min_containers: 5, max_containers: 2}}}", "min_containers: 5 is not between 0 and max_containers (2)"},
		{"deploy: {image: x, regions: {us-east: {schedule: [{from: 7am, to: '19:00'}]}}}", `"7am" is not a time of day`},
		{"deploy: {image: x, volumes: {models: v}, regions: {us-east: {}}}", "want an absolute path"},
		{"deploy: {image: x}", "name at least one region"},
		{"deploy: {image: x, regions: {us-east: {gpus: 2}}}", `unknown field "gpus"`},
	} {
		_, err := Parse("c.yaml", []byte(base+tc.section+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.section, err, tc.want)
		}
	}
}

// TestKubernetesConfigMap keeps deploy/kubernetes honest: the config.yaml
// in its ConfigMap loads, given the variables its Secret provides.
func TestKubernetesConfigMap(t *testing.T) {
	data, err := os.ReadFile("../deploy/kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `yaml:"kind"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil || cm.Kind != "ConfigMap" || cm.Data["config.yaml"] == "" {
		t.Fatalf("configmap.yaml: %v, kind %q, no data.config.yaml", err, cm.Kind)
	}
	text := cm.Data["config.yaml"]
	for _, m := range regexp.MustCompile(`\{env: ([A-Z0-9_]+)\}`).FindAllStringSubmatch(text, -1) {
		t.Setenv(m[1], "placeholder-for-"+m[1]) // distinct: two keys may not be equal
	}
	c, err := Parse("configmap.yaml", []byte(text))
	if err != nil {
		t.Fatalf("the ConfigMap's config.yaml does not load: %v", err)
	}
	if c.Admin != ":9090" {
		t.Errorf("admin = %q: kubelet probes and Prometheus need it on the pod's address", c.Admin)
	}
}

// TestDeployContainerRegions: Modal's broad and narrow region names are
// accepted; a cloud name (which needs Modal's sales team) is refused at
// load, naming the field.
func TestDeployContainerRegions(t *testing.T) {
	for _, tt := range []struct {
		regions string
		ok      bool
	}{{"[eu]", true}, {"[eu-west, eu-north]", true}, {"[ap-melbourne]", true}, {"[eu-west-1]", false}, {"[europe]", false}} {
		_, err := Parse("t.yaml", []byte(`
auth: {disable: true}
regions:
  - {name: eu-west, url: sim://eu-west, location: {lat: 53.35, lon: -6.26}}
deploy:
  image: registry.example.com/dg:1
  regions:
    eu-west: {container_regions: `+tt.regions+`}
`))
		if (err == nil) != tt.ok {
			t.Errorf("container_regions %s: %v, want ok %v", tt.regions, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "deploy.regions.eu-west.container_regions") {
			t.Errorf("the error does not name the field: %v", err)
		}
	}
}
