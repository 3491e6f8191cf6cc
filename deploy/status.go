package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/earshot/earshot/config"
)

// App is an app as `modal app list --json` lists it.
type App struct {
	ID          string `json:"app_id"`
	Description string `json:"description"` // the app's name
	State       string `json:"state"`
	Tasks       any    `json:"tasks"` // running containers; a number or a string, by CLI version
	CreatedAt   string `json:"created_at"`
	StoppedAt   string `json:"stopped_at"`
}

// RouterRegion is a region as a router's admin /status reports it.
type RouterRegion struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	State    string `json:"state"`
	InFlight int    `json:"in_flight"`
	Capacity int    `json:"capacity"`
	Peak     struct {
		InFlight int `json:"in_flight"`
		Streams  int `json:"streams"`
		Requests int `json:"requests"`
	} `json:"peak"`
}

// RouterStatus is the part of a router's /status the deployer reads.
type RouterStatus struct {
	WindowSeconds int            `json:"window_seconds"`
	Regions       []RouterRegion `json:"regions"`
}

// RegionStatus is one deployment (a region's main app, or one of its
// products') seen from Modal, its endpoint and the router.
type RegionStatus struct {
	Region, App string
	Modal       string // the app's state and tasks, or why it is not known
	URL         string // from the regions file
	Endpoint    string // /v1/status, described
	Router      string // the router's view

	// Why Modal or the router could not be asked: the same for every
	// region, so PrintStatus says it once, below the table.
	modalErr, routerErr string
}

// Status gathers each deployment's state from the three places that know it.
// routerURL is a router's admin address (e.g. http://127.0.0.1:9090);
// token its admin_token, if it has one. A place that cannot be asked is
// reported in its column, not as an error.
func (d *Deployer) Status(ctx context.Context, names []string, routerURL, token string) ([]RegionStatus, error) {
	regions, err := d.regions(names)
	if err != nil {
		return nil, err
	}
	apps, appsErr := d.listApps(ctx)
	urls := map[string]string{}
	if rf, _, err := config.ReadRegionsFile(d.Config.RegionsFilePath()); err == nil {
		for _, r := range rf.Regions {
			urls[r.Name] = r.URL
			for p, dp := range r.Products {
				urls[r.Name+"/"+p] = dp.URL
			}
		}
	}
	router, routerErr := d.routerStatus(ctx, routerURL, token)

	out := make([]RegionStatus, len(regions))
	var wg sync.WaitGroup
	for i, region := range regions {
		st := &out[i]
		st.Region, st.App, st.URL = region, d.deploy().AppName(region), urls[region]
		switch {
		case appsErr != nil:
			st.Modal, st.modalErr = "unknown (below)", appsErr.Error()
		default:
			st.Modal = "not deployed"
			// A name can belong to several apps: the deployed one, and
			// stopped ones before it. The deployed one is the region's.
			for _, a := range apps {
				if a.Description != st.App {
					continue
				}
				if st.Modal == "not deployed" || (a.State == "deployed" && !strings.HasPrefix(st.Modal, "deployed")) {
					st.Modal = fmt.Sprintf("%s, %v task(s)", a.State, a.Tasks)
				}
			}
		}
		switch {
		case routerErr != nil:
			st.Router, st.routerErr = "unknown (below)", routerErr.Error()
		default:
			st.Router = "not in the router"
			for _, r := range router.Regions {
				if r.Name == region {
					st.Router = fmt.Sprintf("%s, %d/%d in flight, peak %d over %ds", r.State, r.InFlight, r.Capacity, r.Peak.InFlight, router.WindowSeconds)
					if st.URL != "" && r.URL != st.URL {
						st.Router += "; routes to " + r.URL + ", not the deployed URL (not reloaded yet?)"
					}
				}
			}
		}
		if st.URL == "" {
			st.Endpoint = "no URL: not deployed by apply"
			continue
		}
		wg.Go(func() {
			code, es, err := d.probe(ctx, region, st.URL)
			st.Endpoint = describe(code, es, err)
			if code == http.StatusOK {
				st.Endpoint += fmt.Sprintf(", %d batch, %d streams", es.ActiveBatch, es.ActiveStreams)
			}
		})
	}
	wg.Wait()
	return out, nil
}

// PrintStatus writes Status for people.
func PrintStatus(w io.Writer, sts []RegionStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tMODAL APP\tENDPOINT /v1/status\tROUTER")
	for _, s := range sts {
		fmt.Fprintf(tw, "%s\t%s: %s\t%s\t%s\n", s.Region, s.App, s.Modal, s.Endpoint, s.Router)
	}
	tw.Flush()
	for _, s := range sts {
		if s.URL != "" {
			fmt.Fprintf(w, "%s: %s\n", s.Region, s.URL)
		}
	}
	if len(sts) > 0 {
		if e := sts[0].modalErr; e != "" {
			fmt.Fprintf(w, "\nModal could not be asked: %s\n", e)
		}
		if e := sts[0].routerErr; e != "" {
			fmt.Fprintf(w, "\nThe router could not be asked: %s\n", e)
		}
	}
}

// listApps runs `modal app list --json`.
func (d *Deployer) listApps(ctx context.Context) ([]App, error) {
	modal, err := d.ready()
	if err != nil {
		return nil, err
	}
	out, err := d.output(ctx, modal, append([]string{"app", "list", "--json"}, d.envArgs()...))
	if err != nil {
		return nil, err
	}
	var apps []App
	if err := json.Unmarshal(out, &apps); err != nil {
		return nil, fmt.Errorf("modal app list --json printed what is not a JSON list: %.200s", out)
	}
	return apps, nil
}

// routerStatus reads a router's admin /status.
func (d *Deployer) routerStatus(ctx context.Context, base, token string) (*RouterStatus, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(base, "/")+"/status", nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		hint := ""
		if resp.StatusCode == http.StatusUnauthorized {
			hint = ": set EARSHOT_ADMIN_TOKEN to the router's admin_token"
		}
		return nil, fmt.Errorf("%s/status: %s%s", base, resp.Status, hint)
	}
	var st RouterStatus
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s/status: %w", base, err)
	}
	return &st, nil
}
