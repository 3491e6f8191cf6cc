package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
)

// Decision is what Scale does with one region.
type Decision struct {
	Region, App string
	// Demand is the peak concurrent requests and streams, summed over the
	// routers asked (each router counts its own clients).
	Demand        int
	TargetInputs  int
	Need          int // containers the demand needs: ceil(Demand / TargetInputs)
	Floor         int // the configured min_containers, or a schedule window's
	MinContainers int // what min_containers becomes
	MaxContainers int
	Note          string
	Err           error // from the autoscaler, with apply
}

// Scale sets each region's min_containers to what the routers' recent peak
// demand needs at target_inputs per container, plus headroom containers,
// never below the region's floor (min_containers, raised by a schedule
// window that is open now) nor above max_containers. routers are admin
// addresses; all are asked and their peaks summed. Without apply it only
// says what it would do.
func (d *Deployer) Scale(ctx context.Context, names, routers []string, token string, headroom int, apply bool) ([]Decision, error) {
	regions, err := d.regions(names)
	if err != nil {
		return nil, err
	}
	if len(routers) == 0 {
		return nil, errors.New("name at least one router admin address (--router) to read demand from")
	}
	if headroom < 0 {
		return nil, errors.New("headroom must not be negative")
	}
	demand := map[string]int{}
	window := 0
	for _, r := range routers {
		st, err := d.routerStatus(ctx, r, token)
		if err != nil {
			return nil, fmt.Errorf("read demand: %w", err)
		}
		window = st.WindowSeconds
		for _, reg := range st.Regions {
			demand[reg.Name] += reg.Peak.InFlight
		}
	}
	if apply && d.Autoscaler == nil {
		return nil, errors.New("no autoscaler to apply with")
	}
	now := d.now()
	var out []Decision
	for _, region := range regions {
		r := d.deploy().Region(region)
		dec := Decision{Region: region, App: d.deploy().AppName(region), Demand: demand[region],
			TargetInputs: r.TargetInputs, MaxContainers: r.MaxContainers, Floor: *r.MinContainers}
		dec.Need = (dec.Demand + r.TargetInputs - 1) / r.TargetInputs
		for _, w := range r.Schedule {
			if w.Contains(now) && w.MinContainers > dec.Floor {
				dec.Floor = w.MinContainers
				dec.Note = fmt.Sprintf("schedule %s-%s UTC", w.From, w.To)
			}
		}
		want := dec.Need + headroom
		dec.MinContainers = min(max(want, dec.Floor), r.MaxContainers)
		if want > r.MaxContainers {
			dec.Note = fmt.Sprintf("demand needs %d containers, above max_containers: raise it", want)
		}
		if apply {
			dec.Err = d.Autoscaler.SetMinContainers(ctx, d.deploy().Environment, dec.App, ClassName, dec.MinContainers)
		}
		out = append(out, dec)
	}
	d.printf("", "demand: peak concurrent requests and streams over the last %ds, summed over %d router(s)", window, len(routers))
	var failed int
	for _, dec := range out {
		if dec.Err != nil {
			failed++
		}
	}
	if failed > 0 {
		return out, fmt.Errorf("%d region(s) not scaled", failed)
	}
	return out, nil
}

// PrintDecisions writes Scale's decisions for people.
func PrintDecisions(w io.Writer, decs []Decision, applied bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tDEMAND\tPER CONTAINER\tNEEDS\tFLOOR\tMIN_CONTAINERS\tMAX\tNOTE")
	for _, d := range decs {
		note := d.Note
		if d.Err != nil {
			note = "FAILED: " + d.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", d.Region, d.Demand, d.TargetInputs, d.Need, d.Floor, d.MinContainers, d.MaxContainers, note)
	}
	tw.Flush()
	if !applied {
		fmt.Fprintln(w, "dry run: nothing changed; --apply sets min_containers (until the next deploy)")
	}
}
