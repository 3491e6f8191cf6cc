package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
)

// Destroy stops region's Modal app. Unless yes, it asks on in for the
// app's name to be typed back. The router keeps the region until it is
// removed from config.yaml; its probes find it down meanwhile.
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
		return err
	}
	d.printf(region, "stopped %s; remove region %s from config.yaml (regions and deploy.regions) when it is gone for good", app, region)
	return nil
}
