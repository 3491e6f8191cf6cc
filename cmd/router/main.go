// Command router is earshot's edge router for the Deepgram API.
//
//	router [--config config.yaml] [--listen ADDR] [--admin ADDR] [--watch=true] [--check]
//
// It serves until SIGINT or SIGTERM (or, started by `go run`, until the go
// command ends), then stops gracefully: in-flight
// requests finish and open streams are drained within timeouts.shutdown.
// On SIGHUP, and when the config file changes (unless --watch=false), it
// reloads the config; a bad one is logged and the old one kept. With
// --check it only validates the config, printing the first error with its
// line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/earshot/earshot/config"
	"github.com/earshot/earshot/server"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "router:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "configuration file")
	check := fs.Bool("check", false, "validate the configuration and exit")
	listen := fs.String("listen", "", "API listen address (overrides the file's listen)")
	admin := fs.String("admin", "", "admin listen address (overrides the file's admin)")
	watch := fs.Bool("watch", true, "reload the config when its file changes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if *admin != "" {
		cfg.Admin = *admin
	}
	if err := cfg.Validate(); err != nil { // the overrides too
		return err
	}
	if *check {
		fmt.Fprintf(stderr, "%s: ok (%d regions)\n", *path, len(cfg.Regions))
		return nil
	}

	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, stopWatch := endWithGoRun(ctx, log)
	defer stopWatch()

	srv, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	defer srv.Close()

	// Reloads: on SIGHUP, and on changes to the file.
	rctx, stopReload := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopReload()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wg.Go(func() {
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading the config")
				_ = srv.ReloadFile() // a failure is logged; the old config stays
			}
		}
	})
	if *watch {
		wg.Go(func() {
			if err := srv.WatchConfig(rctx, 250*time.Millisecond); err != nil {
				log.Error("cannot watch the config file; reload it with SIGHUP", zap.Error(err))
			}
		})
	}
	return srv.Run(ctx)
}

// goRunBinary is where go run builds a program: a temporary go-build
// directory's b001/exe/NAME.
var goRunBinary = regexp.MustCompile(`/go-build[0-9]+/b[0-9]+/exe/[^/]+$`)

// endWithGoRun makes a router started by `go run` stop, as on SIGTERM,
// when the go command that started it ends: go run does not pass SIGTERM
// on to the program, so stopping it by its PID would leave the router
// serving on its ports. go run's binaries live in a temporary go-build
// directory; a router started any other way is left alone (a daemon whose
// parent exits must keep running).
func endWithGoRun(ctx context.Context, log *zap.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	exe, err := os.Executable()
	if err != nil || !goRunBinary.MatchString(filepath.ToSlash(exe)) {
		return ctx, cancel
	}
	parent := os.Getppid()
	if parent == 1 { // the go command is already gone
		log.Info("the go run that started the router has ended: stopping")
		cancel()
		return ctx, cancel
	}
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != parent {
					log.Info("the go run that started the router has ended: stopping")
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}

func newLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level), zap.AddCaller()), nil
}
