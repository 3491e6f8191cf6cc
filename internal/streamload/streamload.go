// Package streamload is a load generator for Deepgram's streaming
// speech-to-text (vegeta has no WebSocket support); cmd/streamload is its
// command line and the bench harness drives it too.
//
// Each stream opens /v1/listen, sends synthesised linear16 audio in real
// time (or up to 1.25x faster, as Deepgram allows) in fixed chunks, then
// CloseStream, and reads every message until the server closes. The audio
// is a word every half second, encoded so that the simulated engine (sim)
// hears exactly those words: "w0", "w1", ... Every stream sends the same
// sequence, so the audio is built once and shared.
//
// It measures, per stream and over all:
//   - handshake latency: dial to upgraded;
//   - time to first result: upgraded to the first Results message;
//   - per-message latency: from sending the chunk that lets the engine end
//     a word (its endpointing silence) to receiving that word's final
//     result. Through a router it includes the router's two relays, so the
//     router's added latency is router minus direct;
//   - completeness: every word sent came back in a final result;
//   - errors by kind, and close codes.
package streamload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

const (
	sampleRate  = 16000
	wordEvery   = 500 * time.Millisecond // one word per cycle
	wordLength  = 200 * time.Millisecond
	endpointing = 10 // ms of silence that end a word (the engine's default)
	// MaxSpeed is the fastest Deepgram accepts audio: 1.25x real time.
	MaxSpeed = 1.25
)

// Options configure a run.
type Options struct {
	// URL is the base URL of the router or region: ws://host:port.
	URL string
	// Header is sent with every handshake (Authorization, X-Earshot-Region).
	Header http.Header
	// Streams is how many streams run at once; they start evenly over Ramp.
	Streams int
	Ramp    time.Duration
	// Rate, if set instead of Streams, starts this many streams a second
	// for Arrivals.
	Rate     float64
	Arrivals time.Duration
	// Audio is how much audio each stream sends. Default 20s.
	Audio time.Duration
	// Chunk is the audio per message. Default 100ms (3,200 bytes).
	Chunk time.Duration
	// Speed is the pace against real time, up to MaxSpeed. Default 1.
	Speed float64
	// CloseWait bounds the wait for the final results and the close after
	// CloseStream. Default 10s.
	CloseWait time.Duration
}

func (o *Options) defaults() error {
	if o.Audio == 0 {
		o.Audio = 20 * time.Second
	}
	if o.Chunk == 0 {
		o.Chunk = 100 * time.Millisecond
	}
	if o.Speed == 0 {
		o.Speed = 1
	}
	if o.CloseWait == 0 {
		o.CloseWait = 10 * time.Second
	}
	switch {
	case o.URL == "":
		return fmt.Errorf("no URL")
	case (o.Streams > 0) == (o.Rate > 0):
		return fmt.Errorf("give either a number of streams or an arrival rate")
	case o.Rate > 0 && o.Arrivals <= 0:
		return fmt.Errorf("an arrival rate needs a time to arrive over")
	case o.Speed < 0 || o.Speed > MaxSpeed:
		return fmt.Errorf("speed %.2f: Deepgram takes audio at most %.2fx real time", o.Speed, MaxSpeed)
	case wordEvery%o.Chunk != 0 || o.Chunk < 10*time.Millisecond:
		return fmt.Errorf("chunk %s must divide %s and be at least 10ms", o.Chunk, wordEvery)
	case o.Audio < wordEvery:
		return fmt.Errorf("audio %s is shorter than one word (%s)", o.Audio, wordEvery)
	}
	return nil
}

// audio is the shared sound of every stream: chunks[i] is message i.
type audio struct {
	chunks [][]byte
	words  int
	// endChunk is, per word, the index of the chunk after which the
	// engine can end it (the chunk holding its endpointing silence).
	endChunk []int
}

func buildAudio(o Options) *audio {
	words := int(o.Audio / wordEvery)
	chunkBytes := int(o.Chunk.Seconds()*sampleRate) * 2
	perWord := int(wordEvery / o.Chunk)
	a := &audio{words: words}
	for w := range words {
		pcm := sim.Synthesize([]sim.Word{{Text: "w" + strconv.Itoa(w), Start: 0, End: wordLength.Seconds()}}, sampleRate, wordEvery.Seconds())
		for off := 0; off < len(pcm); off += chunkBytes {
			a.chunks = append(a.chunks, pcm[off:off+chunkBytes])
		}
		end := wordLength + endpointing*time.Millisecond // the engine can end the word once it has heard this much
		a.endChunk = append(a.endChunk, w*perWord+int((end+o.Chunk-1)/o.Chunk)-1)
	}
	return a
}

// stream is one stream's measurements.
type stream struct {
	handshake   time.Duration
	firstResult time.Duration // 0 if none
	relay       []time.Duration
	gotWords    int
	sentWords   int
	err         string // the kind of failure, "" if none
	closeCode   int
	open        time.Duration // from the first audio to the end
}

// Run runs the load until it is done or ctx ends, and reports.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	u, err := url.Parse(strings.TrimRight(o.URL, "/") + "/v1/listen")
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("encoding", "linear16")
	q.Set("sample_rate", strconv.Itoa(sampleRate))
	q.Set("endpointing", strconv.Itoa(endpointing))
	u.RawQuery = q.Encode()
	a := buildAudio(o)
	dialer := &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 4096}

	n, every := o.Streams, time.Duration(0)
	if o.Rate > 0 {
		n = int(o.Rate * o.Arrivals.Seconds())
		every = time.Duration(float64(time.Second) / o.Rate)
	} else if n > 1 {
		every = o.Ramp / time.Duration(n)
	}
	results := make([]stream, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			results = results[:i]
			break
		}
		wg.Go(func() { results[i] = runStream(ctx, dialer, u.String(), o, a) })
	}
	wg.Wait()
	return report(o, results, time.Since(start)), nil
}

func runStream(ctx context.Context, dialer *websocket.Dialer, target string, o Options, a *audio) (st stream) {
	st.sentWords = a.words
	t0 := time.Now()
	c, resp, err := dialer.DialContext(ctx, target, o.Header)
	if err != nil {
		st.err = "dial: " + dialError(resp, err)
		return st
	}
	defer c.Close()
	st.handshake = time.Since(t0)
	// Start each stream at a random phase of its pace, so that thousands
	// of streams do not send in lockstep; the stream's clocks start after.
	interval := time.Duration(float64(o.Chunk) / o.Speed)
	time.Sleep(rand.N(interval))
	opened := time.Now()
	defer func() { st.open = time.Since(opened) }()

	sent := make([]time.Time, len(a.chunks)) // when each chunk went out; read after the reader is told
	var sentMu sync.Mutex
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		st.read(c, opened, a, sent, &sentMu)
	}()

	tick := time.NewTicker(interval)
	defer tick.Stop()
send:
	for i, chunk := range a.chunks {
		sentMu.Lock()
		sent[i] = time.Now()
		sentMu.Unlock()
		if err := c.WriteMessage(websocket.BinaryMessage, chunk); err != nil {
			break // the reader reports how the stream ended
		}
		if i == len(a.chunks)-1 {
			break
		}
		select {
		case <-ctx.Done():
			break send
		case <-readDone:
			break send
		case <-tick.C:
		}
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	select {
	case <-readDone:
	case <-time.After(o.CloseWait):
		c.Close()
		<-readDone
		if st.err == "" {
			st.err = "no close after CloseStream"
		}
	}
	if st.err == "" && st.gotWords < st.sentWords {
		st.err = "lost words"
	}
	return st
}

// result is the part of a Results message streamload reads.
type result struct {
	Type    string `json:"type"`
	IsFinal bool   `json:"is_final"`
	Channel struct {
		Alternatives []struct {
			Words []struct {
				Word string `json:"word"`
			} `json:"words"`
		} `json:"alternatives"`
	} `json:"channel"`
}

// read takes every message until the close, matching final results to
// the chunks that let the engine end their words.
func (st *stream) read(c *websocket.Conn, opened time.Time, a *audio, sent []time.Time, sentMu *sync.Mutex) {
	got := make([]bool, a.words) // by word index: each word once
	for {
		_, data, err := c.ReadMessage()
		now := time.Now()
		if err != nil {
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ce):
				st.closeCode = ce.Code
				if ce.Code != websocket.CloseNormalClosure && st.err == "" {
					st.err = fmt.Sprintf("close %d %s", ce.Code, ce.Text)
				}
			case st.err == "":
				st.err = "read: " + errKind(err)
			}
			return
		}
		var r result
		if json.Unmarshal(data, &r) != nil || r.Type != "Results" {
			continue
		}
		if st.firstResult == 0 {
			st.firstResult = now.Sub(opened)
		}
		if !r.IsFinal || len(r.Channel.Alternatives) == 0 {
			continue
		}
		for _, w := range r.Channel.Alternatives[0].Words {
			i, err := strconv.Atoi(strings.TrimPrefix(w.Word, "w"))
			if err != nil || !strings.HasPrefix(w.Word, "w") || i < 0 || i >= a.words || got[i] {
				if st.err == "" {
					st.err = "wrong words"
				}
				continue
			}
			got[i] = true
			st.gotWords++
			sentMu.Lock()
			at := sent[a.endChunk[i]]
			sentMu.Unlock()
			if !at.IsZero() {
				st.relay = append(st.relay, now.Sub(at))
			}
		}
	}
}

func dialError(resp *http.Response, err error) string {
	if resp != nil {
		return strconv.Itoa(resp.StatusCode)
	}
	return errKind(err)
}

// errKind shortens an error to its kind, so that errors group: no
// addresses or ports.
func errKind(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "i/o timeout", "broken pipe",
		"use of closed network connection", "too many open files", "deadline exceeded", "EOF"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}

// Dist is a latency distribution, in milliseconds.
type Dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// Distribution summarises samples.
func Distribution(samples []time.Duration) Dist {
	if len(samples) == 0 {
		return Dist{}
	}
	slices.Sort(samples)
	at := func(q float64) float64 { // nearest rank
		return ms(samples[max(0, int(math.Ceil(q*float64(len(samples))))-1)])
	}
	return Dist{N: len(samples), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(samples[len(samples)-1])}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Report is a run's outcome.
type Report struct {
	URL           string         `json:"url"`
	Streams       int            `json:"streams"`
	Succeeded     int            `json:"succeeded"` // every word back, closed 1000
	Seconds       float64        `json:"seconds"`
	StreamSeconds float64        `json:"stream_seconds"` // summed over the streams, from first audio to end
	Audio         string         `json:"audio_per_stream"`
	Speed         float64        `json:"speed"`
	Handshake     Dist           `json:"handshake"`
	FirstResult   Dist           `json:"time_to_first_result"`
	Relay         Dist           `json:"per_message"`
	WordsSent     int            `json:"words_sent"`
	WordsReceived int            `json:"words_received"`
	Errors        map[string]int `json:"errors"`
	CloseCodes    map[string]int `json:"close_codes"`
}

// Lost is how many words did not come back.
func (r *Report) Lost() int { return r.WordsSent - r.WordsReceived }

func report(o Options, sts []stream, took time.Duration) *Report {
	r := &Report{URL: o.URL, Streams: len(sts), Seconds: took.Seconds(), Audio: o.Audio.String(), Speed: o.Speed,
		Errors: map[string]int{}, CloseCodes: map[string]int{}}
	var hs, fr, relay []time.Duration
	for _, st := range sts {
		r.WordsSent += st.sentWords
		r.WordsReceived += st.gotWords
		if st.err != "" {
			r.Errors[st.err]++
		} else {
			r.Succeeded++
		}
		if st.closeCode != 0 {
			r.CloseCodes[strconv.Itoa(st.closeCode)]++
		}
		if st.handshake > 0 {
			hs = append(hs, st.handshake)
		}
		if st.firstResult > 0 {
			fr = append(fr, st.firstResult)
		}
		relay = append(relay, st.relay...)
		r.StreamSeconds += st.open.Seconds()
	}
	r.Handshake, r.FirstResult, r.Relay = Distribution(hs), Distribution(fr), Distribution(relay)
	return r
}

// String is the report for people.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "target        %s\n", r.URL)
	fmt.Fprintf(&b, "streams       %d (%d succeeded), %s of audio each at %.2fx, %.1fs in all\n", r.Streams, r.Succeeded, r.Audio, r.Speed, r.Seconds)
	fmt.Fprintf(&b, "words         %d sent, %d back, %d lost\n", r.WordsSent, r.WordsReceived, r.Lost())
	fmt.Fprintf(&b, "%-14s%10s%10s%10s%10s%10s\n", "latency (ms)", "n", "p50", "p90", "p99", "max")
	for _, d := range []struct {
		name string
		d    Dist
	}{{"handshake", r.Handshake}, {"first result", r.FirstResult}, {"per message", r.Relay}} {
		fmt.Fprintf(&b, "%-14s%10d%10.2f%10.2f%10.2f%10.2f\n", d.name, d.d.N, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
	}
	for _, m := range []struct {
		name string
		m    map[string]int
	}{{"errors", r.Errors}, {"close codes", r.CloseCodes}} {
		keys := make([]string, 0, len(m.m))
		for k := range m.m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s: %d", k, m.m[k]))
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		fmt.Fprintf(&b, "%-14s%s\n", m.name, strings.Join(parts, ", "))
	}
	return b.String()
}
