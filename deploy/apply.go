package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/earshot/earshot/config"
)

// Result is what deploying one region came to.
type Result struct {
	Region string
	App    string
	URL    string // the endpoint, once captured
	Err    error
}

// endpointRE finds the endpoint in `modal deploy`'s output:
// "Created flash service endpoint for Deepgram => https://...modal.direct".
// endpointRE finds the endpoint in `modal deploy`'s output. Which line a
// Server prints is unconfirmed without a Modal account: py/modal/_output/
// status.py (modal-client 1.5.4 at 69519ae) prints "Created flash service
// endpoint for X => URL" for a function with flash service URLs, and
// "Created web function X => URL" (with " 🔑" when proxy auth is required)
// for one with a web URL; both are read.
var endpointRE = regexp.MustCompile(`(?:endpoint|web function).*=>\s*(https?://\S+)`)

// Apply deploys the named regions (all when none are named) concurrently,
// waits for each endpoint to be ready, and writes the regions that made it
// into the router's regions_file. A region that fails does not stop the
// others; the error names each that failed.
func (d *Deployer) Apply(ctx context.Context, names []string) ([]Result, error) {
	regions, err := d.regions(names)
	if err != nil {
		return nil, err
	}
	if d.Config.RegionsFilePath() == "" {
		return nil, fmt.Errorf("%s sets no regions_file: name the file the deployer writes and the router loads (e.g. regions_file: regions.deployed.yaml)", d.Config.Path)
	}
	modal, err := d.ready()
	if err != nil {
		return nil, err
	}
	results := make([]Result, len(regions))
	var wg sync.WaitGroup
	for i, region := range regions {
		wg.Go(func() { results[i] = d.applyRegion(ctx, modal, region) })
	}
	wg.Wait()

	var ready []Result
	for _, r := range results {
		if r.Err == nil {
			ready = append(ready, r)
		}
	}
	if len(ready) > 0 {
		if err := d.writeRegions(ready); err != nil {
			return results, fmt.Errorf("write %s: %w", d.Config.RegionsFilePath(), err)
		}
		d.printf("", "wrote %d deployment(s) to %s; a running router reloads it", len(ready), d.Config.RegionsFilePath())
	}
	return results, failures(results)
}

// failures joins the errors of the regions that failed.
func failures(results []Result) error {
	var failed []string
	for _, r := range results {
		if r.Err != nil {
			failed = append(failed, r.Region)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d deployment(s) failed: %s", len(failed), len(results), strings.Join(failed, ", "))
}

// PrintResults writes Apply's summary for people.
func PrintResults(w io.Writer, results []Result) {
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(w, "%-10s FAILED  %v\n", r.Region, r.Err)
		} else {
			fmt.Fprintf(w, "%-10s ready   %s\n", r.Region, r.URL)
		}
	}
}

func (d *Deployer) applyRegion(ctx context.Context, modal, region string) Result {
	res := Result{Region: region, App: d.deploy().AppName(region)}
	app, err := d.Render(region)
	if err == nil {
		err = writeFile(d.appFile(region), app)
	}
	if err != nil {
		res.Err = fmt.Errorf("generate the app: %w", err)
		return res
	}
	args := d.deployCommand(region)[1:]
	d.printf(region, "$ modal %s", strings.Join(args, " "))
	prev := ""
	err = d.run(ctx, modal, args, func(line string) {
		d.printf(region, "%s", line)
		// The CLI may wrap a long line when its output is not a terminal:
		// look at each line joined to the one before it too.
		for _, text := range []string{line, prev + " " + strings.TrimSpace(line)} {
			if m := endpointRE.FindStringSubmatch(text); m != nil && res.URL == "" {
				res.URL = strings.TrimRight(m[1], ".,")
			}
		}
		prev = line
	})
	switch {
	case err != nil:
		res.Err = err
		return res
	case res.URL == "":
		res.Err = errors.New("modal deploy succeeded but printed no endpoint URL (\"=> https://....modal.direct\"); is the app's class an @app.server?")
		return res
	}
	d.printf(region, "endpoint %s; waiting for /v1/status to say ready (up to %s)", res.URL, d.deploy().ReadyTimeout)
	if res.Err = d.waitReady(ctx, region, res.URL); res.Err != nil {
		return res
	}
	if err := writeFile(d.deployedFile(region), app); err != nil {
		res.Err = fmt.Errorf("record the deployment: %w", err)
		return res
	}
	d.printf(region, "ready")
	return res
}

// EngineStatus is Deepgram's GET /v1/status.
type EngineStatus struct {
	SystemHealth  string `json:"system_health"`
	ActiveBatch   int    `json:"active_batch_requests"`
	ActiveStreams int    `json:"active_stream_requests"`
}

// probe asks an endpoint for /v1/status with the region's headers (Modal's
// proxy auth), returning the HTTP status and, on 200, the body.
func (d *Deployer) probe(ctx context.Context, region, base string) (int, EngineStatus, error) {
	var st EngineStatus
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(base, "/")+"/v1/status", nil)
	if err != nil {
		return 0, st, err
	}
	req.Header = d.headers(region)
	resp, err := d.client().Do(req)
	if err != nil {
		return 0, st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
			return resp.StatusCode, st, fmt.Errorf("/v1/status: %w", err)
		}
	}
	return resp.StatusCode, st, nil
}

// headers are what a deployment is sent (Modal's proxy auth): its own as
// the config has it, or for a product the config does not list yet (apply
// deployed it), the region's, as the router does.
func (d *Deployer) headers(name string) http.Header {
	region, _, _ := strings.Cut(name, "/")
	for _, dep := range d.Config.Deployments() {
		if dep.Name == name {
			return dep.UpstreamHeader()
		}
	}
	for _, r := range d.Config.Regions {
		if r.Name == region {
			return r.UpstreamHeader()
		}
	}
	return http.Header{}
}

// isReady is a /v1/status that can take traffic.
func isReady(code int, st EngineStatus) bool {
	return code == http.StatusOK && slices.Contains([]string{"Ready", "Healthy", "Degraded"}, st.SystemHealth)
}

func describe(code int, st EngineStatus, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case code == http.StatusOK:
		return fmt.Sprintf("200, system_health %q", st.SystemHealth)
	case code == http.StatusServiceUnavailable:
		return "503 (no container up yet)"
	}
	return fmt.Sprintf("%d %s", code, http.StatusText(code))
}

// waitReady polls the endpoint until it is ready or ReadyTimeout passes.
// 503 is expected while Modal starts the first container.
func (d *Deployer) waitReady(ctx context.Context, region, url string) error {
	timeout := d.deploy().ReadyTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	every := d.PollInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	last, said := "no answer yet", ""
	for {
		code, st, err := d.probe(ctx, region, url)
		if isReady(code, st) {
			return nil
		}
		if ctx.Err() == nil { // not the deadline's own error
			last = describe(code, st, err)
		}
		if code == http.StatusUnauthorized || code == http.StatusForbidden {
			return fmt.Errorf("%s/v1/status: %s: give the region Modal-Key and Modal-Secret headers in config.yaml", url, last)
		}
		if last != said {
			d.printf(region, "/v1/status: %s", last)
			said = last
		}
		select {
		case <-ctx.Done():
			if err := context.Cause(ctx); errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%s not ready after %s; last status: %s", url, timeout, last)
			}
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// writeRegions merges the deployments that became ready into the regions
// file, keeping what it already lists that was not deployed this time.
func (d *Deployer) writeRegions(ready []Result) error {
	return d.updateRegions(func(rf *config.RegionsFile) {
		for _, r := range ready {
			region, product, isProduct := strings.Cut(r.Region, "/")
			i := slices.IndexFunc(rf.Regions, func(e config.DeployedRegion) bool { return e.Name == region })
			if i < 0 {
				rf.Regions = append(rf.Regions, config.DeployedRegion{Name: region})
				i = len(rf.Regions) - 1
			}
			e, capacity := &rf.Regions[i], d.deploy().RouterCapacity(r.Region)
			if !isProduct {
				e.URL, e.Capacity = r.URL, capacity
				continue
			}
			if e.Products == nil {
				e.Products = map[string]config.DeployedProduct{}
			}
			e.Products[product] = config.DeployedProduct{URL: r.URL, Capacity: capacity}
		}
	})
}

// updateRegions rewrites the regions file (atomically) with change applied.
func (d *Deployer) updateRegions(change func(*config.RegionsFile)) error {
	path := d.Config.RegionsFilePath()
	var rf config.RegionsFile
	if old, _, err := config.ReadRegionsFile(path); err == nil {
		rf = *old
	} else if !os.IsNotExist(err) {
		return err
	}
	change(&rf)
	body, err := yaml.Marshal(rf)
	if err != nil {
		return err
	}
	head := fmt.Sprintf("# Written by `deployer apply` at %s: each deployed region's endpoint and\n"+
		"# capacity (max_containers x target_inputs / router_instances). The router loads\n"+
		"# it as regions_file and reloads it when it changes. Do not edit: apply and\n"+
		"# destroy rewrite it.\n",
		d.now().UTC().Format(time.RFC3339))
	return writeFile(path, append([]byte(head), body...))
}
