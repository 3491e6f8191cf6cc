package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/earshot/earshot/config"
)

// deployedNames are the deployments the regions file lists: REGION, and
// REGION/PRODUCT for each of its products.
func (d *Deployer) deployedNames() []string {
	rf, _, err := config.ReadRegionsFile(d.Config.RegionsFilePath())
	if err != nil || d.Config.RegionsFilePath() == "" {
		return nil
	}
	var out []string
	for _, r := range rf.Regions {
		if r.URL != "" {
			out = append(out, r.Name)
		}
		for _, p := range config.ProductNames {
			if _, ok := r.Products[p]; ok {
				out = append(out, r.Name+"/"+p)
			}
		}
	}
	return out
}

// Destroy stops the Modal apps of name: a region's (its main app and its
// products') or, with REGION/PRODUCT, one product's; and takes them out of
// the regions file. Unless yes, it asks on in for the app names to be typed
// back. The router goes back to the config's own URLs (until the region or
// product is removed from config.yaml); its probes find them down if they
// are gone.
func (d *Deployer) Destroy(ctx context.Context, name string, yes bool, in io.Reader) error {
	deps, err := d.regions([]string{name})
	// What the regions file says was deployed counts too: a product taken
	// out of deploy.products may still run, and must be stoppable.
	for _, dep := range d.deployedNames() {
		if (dep == name || strings.HasPrefix(dep, name+"/")) && !slices.Contains(deps, dep) {
			deps, err = append(deps, dep), nil
		}
	}
	if err != nil {
		return err
	}
	var apps []string
	for _, dep := range deps {
		apps = append(apps, d.deploy().AppName(dep))
	}
	if !yes {
		d.printf("", "This stops the Modal app(s) %s: %s stops serving. Type the app name(s) to confirm, as listed:", strings.Join(apps, " "), name)
		line, _ := bufio.NewReader(in).ReadString('\n')
		if strings.Join(strings.Fields(line), " ") != strings.Join(apps, " ") {
			return fmt.Errorf("not confirmed: %s left running", strings.Join(apps, ", "))
		}
	}
	modal, err := d.ready()
	if err != nil {
		return err
	}
	for i, dep := range deps {
		args := append([]string{"app", "stop", apps[i], "--yes"}, d.envArgs()...)
		d.printf(dep, "$ modal %s", strings.Join(args, " "))
		if err := d.run(ctx, modal, args, func(l string) { d.printf(dep, "%s", l) }); err != nil {
			// `modal app stop` of a stopped app exits 1 saying so (modal-client
			// py/modal/cli/app.py at 69519ae): the app is gone, as asked.
			// One stopped long ago is no longer found at all (cli/app.py).
			if !strings.Contains(err.Error(), "App is already stopped") && !strings.Contains(err.Error(), "No App with name") {
				return err
			}
		}
	}
	if d.Config.RegionsFilePath() != "" {
		err := d.updateRegions(func(rf *config.RegionsFile) {
			region, product, isProduct := strings.Cut(name, "/")
			if !isProduct {
				rf.Regions = slices.DeleteFunc(rf.Regions, func(r config.DeployedRegion) bool { return r.Name == region })
				return
			}
			for i := range rf.Regions {
				if rf.Regions[i].Name == region {
					delete(rf.Regions[i].Products, product)
				}
			}
			// A region left with nothing deployed is no entry at all.
			rf.Regions = slices.DeleteFunc(rf.Regions, func(r config.DeployedRegion) bool { return r.URL == "" && len(r.Products) == 0 })
		})
		if err != nil {
			return fmt.Errorf("stopped %s, but could not update %s: %w", strings.Join(apps, ", "), d.Config.RegionsFilePath(), err)
		}
	}
	d.printf(name, "stopped %s and took it out of the regions file; remove %s from config.yaml (regions and deploy.regions) when it is gone for good", strings.Join(apps, ", "), name)
	return nil
}
