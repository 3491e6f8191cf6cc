package config

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Deploy is the deployer's section: how each region's Deepgram app is built
// and scaled on Modal (see deploy and cmd/deployer). The router ignores it.
//
//	deploy:
//	  image: registry.example.com/acme/deepgram-modal:release-251029
//	  secrets: [deepgram-license]
//	  volumes: {/models: deepgram-models}
//	  defaults: {gpu: L4, target_inputs: 16, max_containers: 8}
//	  regions:
//	    us-east: {min_containers: 2}
//	    eu-west: {container_regions: [eu-west]}
type Deploy struct {
	// Environment is the Modal environment (modal deploy -e). Default: the
	// profile's, or MODAL_ENVIRONMENT.
	Environment string `yaml:"environment"`
	// AppPrefix names each region's Modal app: prefix + region name.
	// Default "earshot-".
	AppPrefix string `yaml:"app_prefix"`
	// Image is a registry image holding Deepgram's self-hosted API and
	// engine (see README "Deploying the regions"). Required.
	Image string `yaml:"image"`
	// AddPython is the Python that Modal adds to the image to run the app
	// (Deepgram's images have none): a version such as "3.12" (the
	// default), or "none" for an image that has its own.
	AddPython string `yaml:"add_python"`
	// RouterInstances is how many router instances share each region: the
	// capacity written to regions_file is divided among them. Default 1.
	RouterInstances int `yaml:"router_instances"`
	// RegistrySecret names the Modal secret holding REGISTRY_USERNAME and
	// REGISTRY_PASSWORD for a private registry.
	RegistrySecret string `yaml:"registry_secret"`
	// Secrets name Modal secrets given to the containers' environment, such
	// as the one holding DEEPGRAM_API_KEY.
	Secrets []string `yaml:"secrets"`
	// Volumes mounts Modal Volumes (models, engine and API config) at
	// absolute paths: {/models: deepgram-models}.
	Volumes map[string]string `yaml:"volumes"`
	// APICommand and EngineCommand start Deepgram's API (on port 8080) and
	// engine in the container. Defaults: stem -v serve /models/api.toml and
	// impeller -v serve /models/engine.toml.
	APICommand    []string `yaml:"api_command"`
	EngineCommand []string `yaml:"engine_command"`
	// StartupTimeout bounds a container's wait for the API to answer on
	// /v1/status before it takes traffic. Default 10m.
	StartupTimeout time.Duration `yaml:"startup_timeout"`
	// ExitGracePeriod is how long Modal lets a container that is being
	// stopped finish what it serves (the Server's exit_grace_period): long
	// enough for the router to move or drain its streams. Default 60s.
	ExitGracePeriod time.Duration `yaml:"exit_grace_period"`
	// ReadyTimeout bounds `deployer apply`'s wait for a deployed region's
	// /v1/status to report ready. Default 20m.
	ReadyTimeout time.Duration `yaml:"ready_timeout"`
	// Defaults apply to every region; a region's own settings win.
	Defaults DeployRegion `yaml:"defaults"`
	// Regions are the regions to deploy, by the name they have in regions.
	Regions map[string]DeployRegion `yaml:"regions"`
	// Products are deployed in each region as apps of their own, next to
	// the region's main app, by product: listen, flux, speak, agent
	// (Deepgram deploys Flux and Aura-2 on stacks of their own). The
	// router sends each product's paths to its app (regions[].products).
	Products map[string]DeployProduct `yaml:"products"`
}

// DeployProduct is how one product is deployed in every region that has
// it.
type DeployProduct struct {
	// Image, Volumes, Secrets, APICommand and EngineCommand replace the
	// deploy section's when set: the product's own image and models.
	Image         string            `yaml:"image"`
	Volumes       map[string]string `yaml:"volumes"`
	Secrets       []string          `yaml:"secrets"`
	APICommand    []string          `yaml:"api_command"`
	EngineCommand []string          `yaml:"engine_command"`
	// Defaults are the product's sizing and scaling in every region, over
	// the deploy section's defaults; a region's products entry wins.
	Defaults DeployRegion `yaml:"defaults"`
}

// Stack is what one deployment runs: its image, models and commands.
type Stack struct {
	Image         string
	Volumes       map[string]string
	Secrets       []string
	APICommand    []string
	EngineCommand []string
}

// DeployRegion is how one region is deployed and scaled.
type DeployRegion struct {
	// ProxyRegion is Modal's edge proxy region for the endpoint: us-east,
	// us-west, eu-west or ap-south. Default: the region's name.
	ProxyRegion string `yaml:"proxy_region"`
	// ContainerRegions are where the containers run (Modal's region=);
	// keep them near the proxy region. Modal's names: broad (us, eu, ap,
	// uk, ca, me, sa, af, mx) or narrow (us-east, us-central, ...; see
	// ComputeRegions). Default: [proxy_region].
	ContainerRegions []string `yaml:"container_regions"`
	GPU              string   `yaml:"gpu"`    // default L4
	CPU              float64  `yaml:"cpu"`    // cores; default 4
	Memory           ByteSize `yaml:"memory"` // default 16GiB
	// MinContainers (default 1: a region at zero answers 503 until a
	// container starts), MaxContainers (default 4) and BufferContainers
	// (default 0) are Modal's autoscaler settings.
	MinContainers    *int `yaml:"min_containers"`
	MaxContainers    int  `yaml:"max_containers"`
	BufferContainers *int `yaml:"buffer_containers"`
	// TargetInputs is the concurrent requests and streams one container is
	// meant to take (@modal.concurrent(target_inputs=N)). Default 16.
	TargetInputs int `yaml:"target_inputs"`
	// ScaledownWindow is how long an idle container stays. Default 5m.
	ScaledownWindow time.Duration `yaml:"scaledown_window"`
	// Schedule raises min_containers during hours of the day (UTC), for
	// `deployer scale`: follow the sun.
	Schedule []Window `yaml:"schedule"`
	// Products (in a region only) are the products this region deploys,
	// each with settings of its own over the product's defaults: {flux:
	// {max_containers: 2}}. Without it, the region deploys every product
	// of deploy.products; {} deploys none. A product's app runs where the
	// region's does unless it says otherwise; its sizing and scaling are
	// the product's, not the region's main app's.
	Products map[string]DeployRegion `yaml:"products"`
}

// Window is a daily period, in UTC, with a floor on containers.
type Window struct {
	From          string `yaml:"from"` // "07:00"
	To            string `yaml:"to"`   // "19:00"; before From wraps past midnight
	MinContainers int    `yaml:"min_containers"`
}

// Contains says whether t's time of day (UTC) is in the window.
func (w Window) Contains(t time.Time) bool {
	from, _ := clock(w.From)
	to, _ := clock(w.To)
	t = t.UTC()
	now := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute
	if from <= to {
		return now >= from && now < to
	}
	return now >= from || now < to
}

func clock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a time of day (HH:MM, UTC)", s)
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// ProxyRegions are the regions Modal's edge proxies serve.
var ProxyRegions = []string{"us-east", "us-west", "eu-west", "ap-south"}

// ComputeRegions are the region names Modal accepts for containers
// (region=) without a contract: broad, then narrow (from modal-client 1.5.4,
// as recorded in PROTOCOL.md). Cloud names such as eu-west-1 need Modal's
// sales team, so they are refused here rather than at deploy time.
var ComputeRegions = []string{
	"us", "eu", "ap", "uk", "ca", "me", "sa", "af", "mx",
	"us-east", "us-central", "us-south", "us-west", "eu-west", "eu-north", "eu-south",
	"ap-northeast", "ap-southeast", "ap-south", "ap-melbourne", "jp", "au",
}

// AppName is the Modal app of a deployment: prefix + region for a
// region's main app, prefix + region + "-" + product for a product's.
func (d *Deploy) AppName(deployment string) string {
	return d.AppPrefix + strings.ReplaceAll(deployment, "/", "-")
}

// RegionNames are the regions to deploy, in the order of the config's
// regions.
func (d *Deploy) RegionNames(c *Config) []string {
	var names []string
	for _, r := range c.Regions {
		if _, ok := d.Regions[r.Name]; ok {
			names = append(names, r.Name)
		}
	}
	return names
}

// RegionProducts are the products region deploys, in ProductNames order.
func (d *Deploy) RegionProducts(region string) []string {
	own := d.Regions[region].Products
	var out []string
	for _, p := range ProductNames {
		_, listed := own[p]
		if _, ok := d.Products[p]; ok && (own == nil || listed) {
			out = append(out, p)
		}
	}
	return out
}

// Deployments are the apps to deploy, in the order of the config's
// regions: each region's main app (named as the region), then one per
// product it deploys (REGION/PRODUCT, as the router names them).
func (d *Deploy) Deployments(c *Config) []string {
	var out []string
	for _, r := range d.RegionNames(c) {
		out = append(out, r)
		for _, p := range d.RegionProducts(r) {
			out = append(out, r+"/"+p)
		}
	}
	return out
}

// Region is a deployment's settings with the defaults filled in: a
// region's main app's (the region's own, then deploy.defaults), or with
// REGION/PRODUCT a product's (the region's products entry, then the
// product's defaults, then deploy.defaults; where it runs from the region).
func (d *Deploy) Region(name string) DeployRegion {
	region, product, isProduct := strings.Cut(name, "/")
	if !isProduct {
		return d.settings(region, d.Regions[region], d.Defaults)
	}
	main := d.Region(region)
	r := d.settings(region, d.Regions[region].Products[product], d.Products[product].Defaults, d.Defaults)
	own, pd := d.Regions[region].Products[product], d.Products[product].Defaults
	r.ProxyRegion = cmp.Or(own.ProxyRegion, pd.ProxyRegion, main.ProxyRegion)
	if len(own.ContainerRegions) == 0 && len(pd.ContainerRegions) == 0 {
		r.ContainerRegions = main.ContainerRegions
	}
	r.Products = nil
	return r
}

// settings fills each setting from the first layer that has it, else
// earshot's default.
func (d *Deploy) settings(region string, layers ...DeployRegion) DeployRegion {
	var r DeployRegion
	for _, l := range slices.Backward(layers) { // the first layer wins
		r.ProxyRegion = cmp.Or(l.ProxyRegion, r.ProxyRegion)
		if len(l.ContainerRegions) > 0 {
			r.ContainerRegions = l.ContainerRegions
		}
		r.GPU = cmp.Or(l.GPU, r.GPU)
		r.CPU = cmp.Or(l.CPU, r.CPU)
		r.Memory = cmp.Or(l.Memory, r.Memory)
		r.MinContainers = cmp.Or(l.MinContainers, r.MinContainers)
		r.MaxContainers = cmp.Or(l.MaxContainers, r.MaxContainers)
		r.BufferContainers = cmp.Or(l.BufferContainers, r.BufferContainers)
		r.TargetInputs = cmp.Or(l.TargetInputs, r.TargetInputs)
		r.ScaledownWindow = cmp.Or(l.ScaledownWindow, r.ScaledownWindow)
		if len(l.Schedule) > 0 {
			r.Schedule = l.Schedule
		}
	}
	r.Products = d.Regions[region].Products
	r.ProxyRegion = cmp.Or(r.ProxyRegion, region)
	if len(r.ContainerRegions) == 0 {
		r.ContainerRegions = []string{r.ProxyRegion}
	}
	r.GPU = cmp.Or(r.GPU, "L4")
	r.CPU = cmp.Or(r.CPU, 4)
	r.Memory = cmp.Or(r.Memory, 16*GiB)
	r.MinContainers = cmp.Or(r.MinContainers, new(1))
	r.MaxContainers = cmp.Or(r.MaxContainers, 4)
	r.BufferContainers = cmp.Or(r.BufferContainers, new(0))
	r.TargetInputs = cmp.Or(r.TargetInputs, 16)
	r.ScaledownWindow = cmp.Or(r.ScaledownWindow, 5*time.Minute)
	return r
}

// Stack is what a deployment runs: the deploy section's image, volumes,
// secrets and commands, or a product's where it sets them.
func (d *Deploy) Stack(deployment string) Stack {
	st := Stack{Image: d.Image, Volumes: d.Volumes, Secrets: d.Secrets, APICommand: d.APICommand, EngineCommand: d.EngineCommand}
	_, product, ok := strings.Cut(deployment, "/")
	if !ok {
		return st
	}
	p := d.Products[product]
	st.Image = cmp.Or(p.Image, st.Image)
	if p.Volumes != nil {
		st.Volumes = p.Volumes
	}
	if p.Secrets != nil {
		st.Secrets = p.Secrets
	}
	if len(p.APICommand) > 0 {
		st.APICommand = p.APICommand
	}
	if len(p.EngineCommand) > 0 {
		st.EngineCommand = p.EngineCommand
	}
	return st
}

// Capacity is what the region holds at its largest: max containers times
// target inputs.
func (r DeployRegion) Capacity() int { return r.MaxContainers * r.TargetInputs }

// RouterCapacity is the capacity one router instance is given for the
// region: its share of Capacity, rounded up.
func (d *Deploy) RouterCapacity(region string) int {
	n := max(1, d.RouterInstances)
	return (d.Region(region).Capacity() + n - 1) / n
}

func (d *Deploy) applyDefaults() {
	setDefault(&d.AppPrefix, "earshot-")
	setDefault(&d.AddPython, "3.12")
	setDefault(&d.RouterInstances, 1)
	if len(d.APICommand) == 0 {
		d.APICommand = []string{"stem", "-v", "serve", "/models/api.toml"}
	}
	if len(d.EngineCommand) == 0 {
		d.EngineCommand = []string{"impeller", "-v", "serve", "/models/engine.toml"}
	}
	setDefault(&d.StartupTimeout, 10*time.Minute)
	setDefault(&d.ReadyTimeout, 20*time.Minute)
	setDefault(&d.ExitGracePeriod, 60*time.Second)
}

func (c *Config) validateDeploy() error {
	d := c.Deploy
	if d == nil {
		return nil
	}
	d.applyDefaults()
	if d.RouterInstances < 0 {
		return c.errorf("deploy.router_instances", "must not be negative")
	}
	if d.Image == "" {
		return c.errorf("deploy.image", "required: the image holding Deepgram's API and engine")
	}
	if d.ExitGracePeriod < 0 || d.ExitGracePeriod > time.Hour {
		// Modal refuses more for a Server (py/modal/_server.py,
		// validate_http_server_config, modal-client 1.5.4 at 69519ae).
		return c.errorf("deploy.exit_grace_period", "%v is outside [0, 1h]", d.ExitGracePeriod)
	}
	if !nameRE.MatchString(strings.TrimSuffix(d.AppPrefix, "-")) {
		return c.errorf("deploy.app_prefix", "%q must be lower-case letters, digits and dashes", d.AppPrefix)
	}
	for mount, vol := range d.Volumes {
		if !path.IsAbs(mount) || vol == "" {
			return c.errorf("deploy.volumes", "%q: %q: want an absolute path and a volume name", mount, vol)
		}
	}
	if len(d.Regions) == 0 {
		return c.errorf("deploy.regions", "name at least one region to deploy")
	}
	for name, p := range d.Products {
		if !slices.Contains(ProductNames, name) {
			return c.errorf("deploy.products."+name, "%q is not a product (want one of %s)", name, strings.Join(ProductNames, ", "))
		}
		if p.Defaults.Products != nil {
			return c.errorf("deploy.products."+name+".defaults.products", "products are listed per region")
		}
		for mount, vol := range p.Volumes {
			if !path.IsAbs(mount) || vol == "" {
				return c.errorf("deploy.products."+name+".volumes", "%q: %q: want an absolute path and a volume name", mount, vol)
			}
		}
	}
	if d.Defaults.Products != nil {
		return c.errorf("deploy.defaults.products", "products are listed per region (or all of deploy.products by default)")
	}
	for name := range d.Regions {
		if c.region(name) == nil {
			return c.errorf("deploy.regions."+name, "region %q is not in regions", name)
		}
		for p, own := range d.Regions[name].Products {
			field := "deploy.regions." + name + ".products." + p
			if _, ok := d.Products[p]; !ok {
				return c.errorf(field, "%q is not in deploy.products", p)
			}
			if own.Products != nil {
				return c.errorf(field+".products", "a product has no products")
			}
		}
	}
	apps := map[string]string{}
	for _, name := range d.Deployments(c) {
		field := "deploy.regions." + strings.Replace(name, "/", ".products.", 1)
		app := d.AppName(name)
		if other, dup := apps[app]; dup {
			return c.errorf(field, "its Modal app would be %s, as %s's is: rename one", app, other)
		}
		apps[app] = name
		r := d.Region(name)
		switch {
		case !slices.Contains(ProxyRegions, r.ProxyRegion):
			return c.errorf(field+".proxy_region", "%q is not one of %s", r.ProxyRegion, strings.Join(ProxyRegions, ", "))
		case r.CPU < 0 || r.Memory < 0:
			return c.errorf(field, "cpu and memory must not be negative")
		case slices.ContainsFunc(r.ContainerRegions, func(n string) bool { return !slices.Contains(ComputeRegions, n) }):
			i := slices.IndexFunc(r.ContainerRegions, func(n string) bool { return !slices.Contains(ComputeRegions, n) })
			return c.errorf(field+".container_regions", "%q is not a Modal region name (broad: us, eu, ap, uk, ca, me, sa, af, mx; "+
				"narrow: us-east, us-central, us-south, us-west, eu-west, eu-north, eu-south, ap-northeast, ap-southeast, ap-south, ap-melbourne, jp, au; "+
				"cloud names such as eu-west-1 need Modal's sales team)", r.ContainerRegions[i])
		case r.MaxContainers < 1:
			return c.errorf(field+".max_containers", "must be at least 1")
		case *r.MinContainers < 0 || *r.MinContainers > r.MaxContainers:
			return c.errorf(field+".min_containers", "%d is not between 0 and max_containers (%d)", *r.MinContainers, r.MaxContainers)
		case *r.BufferContainers < 0:
			return c.errorf(field+".buffer_containers", "must not be negative")
		case r.TargetInputs < 1:
			return c.errorf(field+".target_inputs", "must be at least 1")
		case r.ScaledownWindow < 2*time.Second:
			return c.errorf(field+".scaledown_window", "must be at least 2s")
		}
		for i, w := range r.Schedule {
			wf := fmt.Sprintf("%s.schedule[%d]", field, i)
			for _, s := range []string{w.From, w.To} {
				if _, err := clock(s); err != nil {
					return c.errorf(wf, "%v", err)
				}
			}
			if w.MinContainers < 0 || w.MinContainers > r.MaxContainers {
				return c.errorf(wf+".min_containers", "%d is not between 0 and max_containers (%d)", w.MinContainers, r.MaxContainers)
			}
		}
	}
	return nil
}
