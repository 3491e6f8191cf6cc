// Command simengine runs one simulated Deepgram engine (package sim) until
// SIGINT or SIGTERM:
//
//	simengine --listen 127.0.0.1:8081 --region us-east --latency 0 \
//	    --capacity 0 --full-status 503 --silence-timeout 10s --mode ok
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/earshot/earshot/sim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "simengine:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("simengine", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8081", "address to listen on")
	region := fs.String("region", "sim", "region name reported in X-Sim-Engine and logs")
	latency := fs.Duration("latency", 0, "delay added before every response and handshake answer")
	capacity := fs.Int("capacity", 0, "max concurrent inference requests plus streams (0 = unlimited)")
	fullStatus := fs.Int("full-status", 503, "status for refusals when full or in refuse mode (503 or 429)")
	silence := fs.Duration("silence-timeout", 10*time.Second, "close streams silent this long with 1011 NET-0001")
	mode := fs.String("mode", "ok", "initial mode: ok, refuse, hang or die")
	speakChunk := fs.Int("speak-chunk", 4800, "bytes per chunk of synthesized audio")
	speakInterval := fs.Duration("speak-interval", 20*time.Millisecond, "pause between chunks of synthesized audio (negative = none)")
	level := zapcore.InfoLevel
	fs.Var(&level, "log-level", "debug, info (a line per request or stream), warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := sim.ParseMode(*mode)
	if err != nil {
		return err
	}

	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(level)
	log, err := logCfg.Build()
	if err != nil {
		return fmt.Errorf("build logger: %w", err)
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := sim.Start(*listen, sim.Options{
		Region:         *region,
		Latency:        *latency,
		Capacity:       *capacity,
		FullStatus:     *fullStatus,
		SilenceTimeout: *silence,
		Mode:           m,
		Logger:         log,
		SpeakChunk:     *speakChunk,
		SpeakInterval:  *speakInterval,
	})
	if err != nil {
		return err
	}
	log.Info("simulated engine listening", zap.String("url", srv.URL()), zap.String("region", *region), zap.String("mode", string(m)))
	<-ctx.Done()
	log.Info("shutting down")
	if err := srv.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}
