// Command streamload is a load generator for WebSocket streaming
// speech-to-text, against the router or straight against a region (vegeta
// has no WebSocket support). See internal/streamload for what it measures.
//
//	streamload --url ws://127.0.0.1:8080 --streams 1000 --ramp 30s --audio 60s
//	streamload --url ws://127.0.0.1:8080 --rate 20 --for 1m --audio 30s --json out.json
//
// Its audio carries words only the simulated engine (sim://, simengine)
// hears; against a real Deepgram engine, lost-word counts are meaningless.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/earshot/earshot/internal/streamload"
)

type headers http.Header

func (h headers) String() string { return "" }
func (h headers) Set(s string) error {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return fmt.Errorf("%q is not Name: value", s)
	}
	http.Header(h).Add(strings.TrimSpace(k), strings.TrimSpace(v))
	return nil
}

func main() {
	var o streamload.Options
	h := headers{}
	flag.StringVar(&o.URL, "url", "ws://127.0.0.1:8080", "the router's or a region's base URL")
	flag.IntVar(&o.Streams, "streams", 0, "concurrent streams, started evenly over --ramp")
	flag.DurationVar(&o.Ramp, "ramp", 0, "how long starting --streams takes")
	flag.Float64Var(&o.Rate, "rate", 0, "or: streams started per second, for --for")
	flag.DurationVar(&o.Arrivals, "for", 0, "how long streams arrive at --rate")
	flag.DurationVar(&o.Audio, "audio", 0, "audio per stream (default 20s)")
	flag.DurationVar(&o.Chunk, "chunk", 0, "audio per message (default 100ms)")
	flag.Float64Var(&o.Speed, "speed", 1, "pace against real time, at most 1.25")
	flag.Var(h, "header", `a handshake header, "Name: value" (repeat), e.g. "Authorization: Token KEY"`)
	jsonOut := flag.String("json", "", "also write the report as JSON to this file (- for stdout)")
	flag.Parse()
	if len(h) > 0 {
		o.Header = http.Header(h)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := streamload.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamload:", err)
		os.Exit(2)
	}
	fmt.Print(r)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(r, "", "  ")
		b = append(b, '\n')
		if *jsonOut == "-" {
			os.Stdout.Write(b)
		} else if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "streamload:", err)
			os.Exit(1)
		}
	}
	if r.Succeeded < r.Streams {
		os.Exit(1)
	}
}
