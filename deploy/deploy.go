// Package deploy provisions earshot's regions on Modal and keeps the router
// in step with them; cmd/deployer is its command line.
//
// Each region in the config's deploy section becomes its own Modal app,
// and so does each product it deploys on a stack of its own
// (deploy.products: Flux and Aura-2 run apart from Nova), named
// REGION/PRODUCT here as in the router; each is generated from
// modal_app.py.tmpl with its settings written in (Modal imports the module
// again inside each container, so nothing may depend on the deploying
// machine). The deployer drives the modal CLI,
// which alone can deploy, and Modal's Go SDK, which can change a deployed
// class's autoscaler:
//
//   - Plan renders each region's app and compares it with what was last
//     deployed from this machine (kept in the work directory).
//   - Apply deploys the regions concurrently, captures each endpoint URL,
//     waits for its /v1/status to say ready, and writes the URLs and
//     capacities to the router's regions_file, which the router reloads.
//   - Status puts Modal's view, the endpoint's and the router's side by side.
//   - Scale sets each region's min_containers from the router's peak demand.
//   - Destroy stops a region's app.
//
// The deployer is not on the data path: the router never waits for it.
package deploy

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/earshot/earshot/config"
)

// ClassName is the Modal Server class each region's app serves; the
// Server is a function of that name (see ModalAutoscaler).
const ClassName = "Deepgram"

// Deployer acts on the regions of one config.
type Deployer struct {
	Config *config.Config
	// Modal is the modal CLI to run: a name looked up on PATH or a path.
	// Default "modal".
	Modal string
	// Workdir holds the generated apps and the record of what was
	// deployed. Default: .earshot/deploy next to the config file.
	Workdir string
	// Out receives progress, one line at a time, prefixed by region.
	Out io.Writer
	// Env is the environment of the modal CLI and where credentials are
	// looked for. Default os.Environ().
	Env []string
	// HTTP polls endpoints and routers. Default: a client with a 10s timeout.
	HTTP *http.Client
	// Autoscaler changes a deployed class's autoscaler (Scale with apply).
	Autoscaler Autoscaler
	// PollInterval is how often Apply asks a new endpoint whether it is
	// ready. Default 5s.
	PollInterval time.Duration
	// Now is the clock, for schedules. Default time.Now.
	Now func() time.Time

	outMu sync.Mutex
}

// New returns a Deployer for cfg, which must have a deploy section.
func New(cfg *config.Config, out io.Writer) (*Deployer, error) {
	if cfg.Deploy == nil {
		return nil, fmt.Errorf("%s has no deploy section: see README \"Deploying the regions\"", cfg.Path)
	}
	return &Deployer{Config: cfg, Out: out}, nil
}

func (d *Deployer) deploy() *config.Deploy { return d.Config.Deploy }

func (d *Deployer) workdir() string {
	if d.Workdir != "" {
		return d.Workdir
	}
	return filepath.Join(filepath.Dir(d.Config.Path), ".earshot", "deploy")
}

func (d *Deployer) env() []string {
	if d.Env != nil {
		return d.Env
	}
	return os.Environ()
}

func (d *Deployer) getenv(name string) string {
	for _, kv := range slices.Backward(d.env()) {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

func (d *Deployer) client() *http.Client {
	if d.HTTP != nil {
		return d.HTTP
	}
	return &http.Client{
		Timeout: 10 * time.Second,
		// Probes carry the region's Modal-Key and Modal-Secret: never
		// follow a redirect with them.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (d *Deployer) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// printf writes one line of progress for region ("" for none).
func (d *Deployer) printf(region, format string, args ...any) {
	if d.Out == nil {
		return
	}
	line := fmt.Sprintf(format, args...)
	if region != "" {
		line = "[" + region + "] " + line
	}
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintln(d.Out, line)
}

// regions are the deployments to act on: all in the deploy section, or
// those named, where a region's name stands for all its deployments (its
// main app and its products') and REGION/PRODUCT for one. A name not in
// the deploy section is an error.
func (d *Deployer) regions(names []string) ([]string, error) {
	all := d.deploy().Deployments(d.Config)
	if len(names) == 0 {
		return all, nil
	}
	var out []string
	for _, n := range names {
		var match []string
		for _, dep := range all {
			if dep == n || strings.HasPrefix(dep, n+"/") && !strings.Contains(n, "/") {
				match = append(match, dep)
			}
		}
		if len(match) == 0 {
			return nil, fmt.Errorf("region %q is not in the deploy section (have %s)", n, strings.Join(all, ", "))
		}
		for _, m := range match {
			if !slices.Contains(out, m) { // named twice: deployed once
				out = append(out, m)
			}
		}
	}
	return out, nil
}

//go:embed modal_app.py.tmpl
var appTemplateText string

var appTemplate = template.Must(template.New("modal_app.py").Funcs(template.FuncMap{
	// py writes a value as a Python literal: JSON's strings, numbers,
	// lists and objects are Python's too.
	"py": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
}).Parse(appTemplateText))

// appData is what the template is given for one deployment.
type appData struct {
	Region, Product       string // Product is "" for the region's main app
	Deployment            string // Region, or Region/Product
	App, ProxyRegion      string
	ContainerRegions      []string
	Image, RegistrySecret string
	AddPython             string // "" for none
	Secrets               []string
	Volumes               map[string]string
	GPU                   string
	CPU                   float64
	MemoryMiB             int64
	MinContainers         int
	MaxContainers         int
	BufferContainers      int
	TargetInputs          int
	ScaledownSeconds      int
	StartupSeconds        int
	ExitGraceSeconds      int
	APICommand            []string
	EngineCommand         []string
	Command               string
}

// appFile is where a region's generated app is written.
func (d *Deployer) appFile(region string) string {
	return filepath.Join(d.workdir(), region, "app.py")
}

// deployedFile records the app as last deployed successfully.
func (d *Deployer) deployedFile(region string) string {
	return filepath.Join(d.workdir(), region, "deployed.py")
}

// Render generates a deployment's Modal app (REGION or REGION/PRODUCT).
func (d *Deployer) Render(region string) ([]byte, error) {
	dep := d.deploy()
	r, stack := dep.Region(region), dep.Stack(region)
	name, product, _ := strings.Cut(region, "/")
	data := appData{
		Region: name, Product: product, Deployment: region, App: dep.AppName(region), ProxyRegion: r.ProxyRegion,
		ContainerRegions: r.ContainerRegions, Image: stack.Image, RegistrySecret: dep.RegistrySecret,
		AddPython: strings.TrimPrefix(dep.AddPython, "none"),
		Secrets:   nonNil(stack.Secrets), Volumes: stack.Volumes, GPU: r.GPU, CPU: r.CPU,
		MemoryMiB:     int64(math.Ceil(float64(r.Memory) / float64(config.MiB))),
		MinContainers: *r.MinContainers, MaxContainers: r.MaxContainers, BufferContainers: *r.BufferContainers,
		TargetInputs: r.TargetInputs, ScaledownSeconds: int(r.ScaledownWindow / time.Second),
		StartupSeconds: int(dep.StartupTimeout / time.Second), ExitGraceSeconds: int(dep.ExitGracePeriod / time.Second),
		APICommand: stack.APICommand, EngineCommand: stack.EngineCommand,
		Command: strings.Join(strings.Fields(strings.Join(d.deployCommand(region), " ")), " "), // one line: it sits in a comment
	}
	if data.Volumes == nil {
		data.Volumes = map[string]string{}
	}
	var b bytes.Buffer
	if err := appTemplate.Execute(&b, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// deployCommand is the modal CLI's arguments that deploy region.
func (d *Deployer) deployCommand(region string) []string {
	args := []string{"modal", "deploy", d.appFile(region), "--name", d.deploy().AppName(region)}
	if env := d.deploy().Environment; env != "" {
		args = append(args, "-e", env)
	}
	return args
}

// Change is what deploying one region would do.
type Change struct {
	Region  string
	App     string
	Action  string // "create" (never deployed from here), "update" or "unchanged"
	Command []string
	Diff    []string // for update: the settings that change, as "- old" and "+ new" lines
}

// Plan says, per region, what Apply would deploy, without running anything:
// it writes each region's app where the printed command expects it.
func (d *Deployer) Plan(names []string) ([]Change, error) {
	regions, err := d.regions(names)
	if err != nil {
		return nil, err
	}
	var out []Change
	for _, region := range regions {
		app, err := d.Render(region)
		if err != nil {
			return nil, err
		}
		c := Change{Region: region, App: d.deploy().AppName(region), Command: d.deployCommand(region)}
		// The command names the file: write it, so that it can be run as
		// printed (or read before apply).
		if err := writeFile(d.appFile(region), app); err != nil {
			return nil, fmt.Errorf("write %s: %w", d.appFile(region), err)
		}
		old, err := os.ReadFile(d.deployedFile(region))
		switch {
		case os.IsNotExist(err):
			c.Action = "create"
		case err != nil:
			return nil, err
		case bytes.Equal(old, app):
			c.Action = "unchanged"
		default:
			c.Action = "update"
			c.Diff = diffLines(string(old), string(app))
		}
		out = append(out, c)
	}
	return out, nil
}

// diffLines lists the lines only in a ("- ") and only in b ("+ "), in
// order: enough to show which settings change in a generated file.
func diffLines(a, b string) []string {
	as, bs := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range as {
		if !slices.Contains(bs, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bs {
		if !slices.Contains(as, l) {
			out = append(out, "+ "+l)
		}
	}
	return out
}

// PrintPlan writes a plan for people.
func PrintPlan(w io.Writer, changes []Change) {
	for _, c := range changes {
		fmt.Fprintf(w, "%s: %s %s\n", c.Region, c.Action, c.App)
		if c.Action != "unchanged" {
			fmt.Fprintf(w, "  $ %s\n", strings.Join(c.Command, " "))
		}
		for _, l := range c.Diff {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}

// writeFile writes data to path through a temporary file and a rename, so
// that a reader (the router's watch) never sees half a file.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
