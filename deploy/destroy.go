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

// Destroy stops region's Modal app and takes the region out of the regions
// file. Unless yes, it asks on in for the app's name to be typed back. The
// router goes back to the config's own URL for the region (until the region
// is removed from config.yaml); its probes find that down if it is gone.
func (d *Deployer) Destroy(ctx context.Context, region string, yes bool, in io.Reader) error {
	if _, err := d.regions([]string{region}); err != nil {
		return err
	}
	app := d.deploy().AppName(region)
	if !yes {
		d.printf("", "This stops the Modal app %s: region %s stops serving. Type the app name to confirm:", app, region)
		line, _ := bufio.NewReader(in).ReadString('\n')
		if strings.TrimSpace(line) != app {
			return fmt.Errorf("not confirmed: %s left running", app)
		}
	}
	modal, err := d.ready()
	if err != nil {
		return err
	}
	args := append([]string{"app", "stop", app, "--yes"}, d.envArgs()...)
	d.printf(region, "$ modal %s", strings.Join(args, " "))
	if err := d.run(ctx, modal, args, func(l string) { d.printf(region, "%s", l) }); err != nil {
		// `modal app stop` of a stopped app exits 1 saying so (modal-client
		// py/modal/cli/app.py at 69519ae): the app is gone, as asked.
		// One stopped long ago is no longer found at all (cli/app.py).
		if !strings.Contains(err.Error(), "App is already stopped") && !strings.Contains(err.Error(), "No App with name") {
			return err
		}
	}
	if d.Config.RegionsFilePath() != "" {
		err := d.updateRegions(func(rf *config.RegionsFile) {
			rf.Regions = slices.DeleteFunc(rf.Regions, func(r config.DeployedRegion) bool { return r.Name == region })
		})
		if err != nil {
			return fmt.Errorf("stopped %s, but could not update %s: %w", app, d.Config.RegionsFilePath(), err)
		}
	}
	d.printf(region, "stopped %s and took it out of the regions file; remove region %s from config.yaml (regions and deploy.regions) when it is gone for good", app, region)
	return nil
}
