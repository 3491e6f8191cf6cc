// Command deployer provisions earshot's regions on Modal from the deploy
// section of config.yaml and keeps the router in step with them.
//
//	deployer plan    [--region R ...]          what apply would do, and the commands
//	deployer apply   [--region R ...]          deploy, wait until ready, write regions_file
//	deployer status  [--region R ...]          Modal's, the endpoint's and the router's view
//	deployer scale   [--router URL ...] [--apply]  min_containers from the router's demand
//	deployer destroy --region R [--yes]        stop a region's apps
//
// Each region is a Modal app, and so is each product it deploys on a stack
// of its own (deploy.products): --region us-east acts on all of us-east's
// apps, --region us-east/flux on its Flux app alone.
//
// It needs the modal CLI (pip install modal) and Modal credentials
// (MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or `modal setup`). The router's
// admin token, when it has one, is read from EARSHOT_ADMIN_TOKEN.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/deploy"
)

const usage = `usage: deployer COMMAND [flags]

commands:
  plan      show, per region, what apply would deploy or change, and the commands
  apply     deploy the regions concurrently, wait until each is ready, write regions_file
  status    each region's Modal app, endpoint /v1/status and the router's view
  scale     set min_containers from the router's peak demand (dry run without --apply)
  destroy   stop a region's Modal apps (--region R, asks to confirm without --yes)

A region's name stands for all its apps (its main app and each product's);
REGION/PRODUCT (us-east/flux) for one product's app.

Run "deployer COMMAND -h" for a command's flags.
`

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the command line; it returns the exit status: 0 done, 1 failed,
// 2 misused.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("deployer "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "the router's config file, with a deploy section")
	modal := fs.String("modal", "modal", "the modal CLI")
	workdir := fs.String("workdir", "", "where generated apps are kept (default .earshot/deploy next to the config)")
	var regions, routers list
	fs.Var(&regions, "region", "a region, or REGION/PRODUCT, to act on (repeat; default all in deploy.regions)")
	var apply, yes *bool
	var headroom *int
	switch cmd {
	case "plan", "apply":
	case "status":
		fs.Var(&routers, "router", "the router's admin address (default http://127.0.0.1:9090)")
	case "scale":
		fs.Var(&routers, "router", "a router's admin address; repeat for each instance (default http://127.0.0.1:9090)")
		apply = fs.Bool("apply", false, "change min_containers (without it, only say what would change)")
		headroom = fs.Int("headroom", 1, "containers above what the demand needs")
	case "destroy":
		yes = fs.Bool("yes", false, "do not ask for confirmation")
	default:
		fmt.Fprintf(stderr, "deployer: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "deployer %s: unexpected arguments %q\n", cmd, fs.Args())
		return 2
	}
	if len(routers) == 0 {
		routers = list{"http://127.0.0.1:9090"}
	}
	cfg, err := config.Load(*path)
	if err == nil && cfg.Deploy == nil {
		err = fmt.Errorf("%s has no deploy section: see README \"Deploying the regions\"", *path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "deployer: %v\n", err)
		return 1
	}
	d, _ := deploy.New(cfg, stdout)
	d.Modal, d.Workdir = *modal, *workdir
	token := os.Getenv("EARSHOT_ADMIN_TOKEN")

	switch cmd {
	case "plan":
		var changes []deploy.Change
		if changes, err = d.Plan(regions); err == nil {
			deploy.PrintPlan(stdout, changes)
		}
	case "apply":
		var results []deploy.Result
		results, err = d.Apply(ctx, regions)
		if results != nil {
			fmt.Fprintln(stdout)
			deploy.PrintResults(stdout, results)
		}
	case "status":
		var sts []deploy.RegionStatus
		if sts, err = d.Status(ctx, regions, routers[0], token); err == nil {
			deploy.PrintStatus(stdout, sts)
		}
	case "scale":
		if *apply {
			// The SDK's own error for missing credentials names nothing to set.
			if e := d.CheckCredentials(); e != nil {
				fmt.Fprintf(stderr, "deployer: %v\n", e)
				return 1
			}
			scaler, e := deploy.NewModalAutoscaler()
			if e != nil {
				fmt.Fprintf(stderr, "deployer: %v\n", e)
				return 1
			}
			defer scaler.Close()
			d.Autoscaler = scaler
		}
		var decs []deploy.Decision
		decs, err = d.Scale(ctx, regions, routers, token, *headroom, *apply)
		if decs != nil {
			deploy.PrintDecisions(stdout, decs, *apply)
		}
	case "destroy":
		if len(regions) != 1 {
			fmt.Fprintln(stderr, "deployer destroy: name exactly one --region")
			return 2
		}
		err = d.Destroy(ctx, regions[0], *yes, stdin)
	}
	if err != nil {
		fmt.Fprintf(stderr, "deployer: %v\n", err)
		return 1
	}
	return 0
}
