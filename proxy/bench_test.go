package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/failover"
)

// The benchmarks run each path twice, straight to the region ("direct") and
// through the router, over loopback sockets, so the router's cost is the
// difference. See docs/benchmarks.md.

func echoRegion() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				mt, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(mt, data); err != nil {
					return
				}
			}
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"metadata":{"duration":1.0},"results":{"channels":[]},"bytes":` + itoa(n) + `}`))
	}))
}

func itoa(n int64) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// BenchmarkHTTPListen posts a 32 KiB audio body, as pre-recorded clients do,
// with failover on as the default config has it (so the body is buffered
// for replay).
func BenchmarkHTTPListen(b *testing.B) {
	region := echoRegion()
	defer region.Close()
	_, router := newTestProxy(b, region.URL, 0, func(o *Options) {
		o.Retry = RetryOptions{ReplayBytes: 4 << 20, Policy: failover.Policy{Attempts: 3, Budget: 0.2, MinRetries: 3,
			BudgetWait: time.Second, Deadline: 30 * time.Second}}
	})
	body := bytes.Repeat([]byte{1, 2, 3, 4}, 8<<10)
	for _, target := range []struct{ name, url string }{{"direct", region.URL}, {"router", router.URL}} {
		b.Run(target.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(target.url+"/v1/listen?model=nova-3", "", bytes.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStreamRelay sends one 100 ms frame of 16 kHz linear16 audio
// (3200 bytes) and waits for its echo: one op is a round trip through the
// relay in both directions.
func BenchmarkStreamRelay(b *testing.B) {
	region := echoRegion()
	defer region.Close()
	_, router := newTestProxy(b, region.URL, 0)
	frame := bytes.Repeat([]byte{7}, 3200)
	for _, target := range []struct{ name, url string }{{"direct", region.URL}, {"router", router.URL}} {
		b.Run(target.name, func(b *testing.B) {
			c := roundTrips(b, strings.Replace(target.url, "http", "ws", 1)+"/v1/listen", frame)
			defer c.Close()
			b.StopTimer()
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					break
				}
			}
		})
	}
}

// BenchmarkStreamsHeld is what an open, idle stream costs: it opens b.N
// streams (run it with -benchtime=1000x) and reports the memory (heap and
// goroutine stacks) and goroutines they hold, client, router and region
// sides together. The router's own cost per stream is router minus direct.
func BenchmarkStreamsHeld(b *testing.B) {
	region := echoRegion()
	defer region.Close()
	_, router := newTestProxy(b, region.URL, 0)
	for _, target := range []struct{ name, url string }{{"direct", region.URL}, {"router", router.URL}} {
		b.Run(target.name, func(b *testing.B) {
			// One round trip on each, so that every side has read and
			// written once, as a live stream has.
			holdStreams(b, strings.Replace(target.url, "http", "ws", 1)+"/v1/listen", func(c *websocket.Conn) error {
				if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"KeepAlive"}`)); err != nil {
					return err
				}
				_, _, err := c.ReadMessage()
				return err
			})
		})
	}
}

// roundTrips opens a stream to url and, b.N times, sends frame and reads
// the answer. It returns the stream, open.
func roundTrips(b *testing.B, url string, frame []byte) *websocket.Conn {
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.WriteMessage(websocket.BinaryMessage, frame); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

// holdStreams opens b.N streams to url, has each do use, and reports the
// memory (heap and goroutine stacks) and goroutines they hold, every side
// together; then it closes them and waits for every side to see it.
func holdStreams(b *testing.B, url string, use func(*websocket.Conn) error) {
	before, routines := heldMemory(), runtime.NumGoroutine()
	conns := make([]*websocket.Conn, 0, b.N)
	for b.Loop() {
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	b.StopTimer()
	for _, c := range conns {
		if err := use(c); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(len(conns))
	b.ReportMetric(float64(heldMemory()-before)/n, "held-B/stream")
	b.ReportMetric(float64(runtime.NumGoroutine()-routines)/n, "goroutines/stream")
	for _, c := range conns {
		c.Close()
	}
	// Let every side see the closes before the next measurement.
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > routines && time.Now().Before(deadline); {
		runtime.Gosched()
	}
}

// heldMemory is the heap and stack memory in use after a collection.
func heldMemory() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// TestLargeMessagesEitherWay: a message larger than what is sent whole
// (wholeMessageBytes) streams through intact in both directions.
func TestLargeMessagesEitherWay(t *testing.T) {
	region := echoRegion()
	defer region.Close()
	_, router := newTestProxy(t, region.URL, 0)
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(router.URL, "http", "ws", 1)+"/v1/speak", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, size := range []int{10, wholeMessageBytes, wholeMessageBytes + 1, 300 << 10} {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			t.Fatal(err)
		}
		mt, got, err := c.ReadMessage()
		if err != nil || mt != websocket.BinaryMessage || !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes: type %d, %d bytes back, equal %v, %v", size, mt, len(got), bytes.Equal(got, msg), err)
		}
	}
}

// resultsRegion answers each binary frame of linear16 16 kHz audio with a
// Results message for it, as an engine does: an interim, and every tenth
// frame a final covering the audio since the last one (so the resume log
// stays about a second long, as with endpointing).
func resultsRegion() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		var heard, final int64 // bytes
		buf := make([]byte, 0, 512)
		for n := 1; ; n++ {
			mt, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			if mt != websocket.BinaryMessage {
				continue
			}
			heard += int64(len(data))
			isFinal := n%10 == 0
			start := float64(final) / 32000
			buf = append(buf[:0], `{"type":"Results","channel_index":[0,1],"duration":`...)
			buf = strconv.AppendFloat(buf, float64(heard-final)/32000, 'f', -1, 64)
			buf = append(buf, `,"start":`...)
			buf = strconv.AppendFloat(buf, start, 'f', -1, 64)
			buf = append(buf, `,"is_final":`...)
			buf = strconv.AppendBool(buf, isFinal)
			buf = append(buf, `,"speech_final":false,"channel":{"alternatives":[{"transcript":"tell me more","confidence":0.99,"words":[{"word":"tell","start":0.1,"end":0.3,"confidence":0.99}]}]},"metadata":{"request_id":"00000000-0000-4000-8000-000000000000"}}`...)
			if isFinal {
				final = heard
			}
			if err := c.WriteMessage(websocket.TextMessage, buf); err != nil {
				return
			}
		}
	}))
}

// withResumeLog runs bench as sub-benchmarks "log-off" and "log-on" (30 s),
// each given the stream URL of a router in front of an engine that
// answers with results.
func withResumeLog(b *testing.B, bench func(b *testing.B, url string)) {
	region := resultsRegion()
	defer region.Close()
	for _, tc := range []struct {
		name string
		log  time.Duration
	}{{"log-off", 0}, {"log-on", 30 * time.Second}} {
		b.Run(tc.name, func(b *testing.B) {
			_, router := newTestProxy(b, region.URL, 0, func(o *Options) {
				o.ResumeLog = tc.log
				o.Retry = RetryOptions{Policy: failover.Policy{Attempts: 3, Deadline: time.Minute}}
			})
			bench(b, strings.Replace(router.URL, "http", "ws", 1)+"/v1/listen?encoding=linear16&sample_rate=16000")
		})
	}
}

// BenchmarkStreamRelayResume is StreamRelay against an engine that answers
// with results, with the resume log off and on in the same run: what
// keeping a stream movable costs each message.
func BenchmarkStreamRelayResume(b *testing.B) {
	frame := bytes.Repeat([]byte{7}, 3200)
	withResumeLog(b, func(b *testing.B, url string) {
		roundTrips(b, url, frame).Close()
	})
}

// BenchmarkStreamsHeldResume is what an open stream holds with the resume
// log off and on, after half a second of audio with no final yet (the log
// then holds that half second): run it with -benchtime=1000x.
func BenchmarkStreamsHeldResume(b *testing.B) {
	frame := bytes.Repeat([]byte{7}, 3200)
	withResumeLog(b, func(b *testing.B, url string) {
		holdStreams(b, url, func(c *websocket.Conn) error {
			for range 5 {
				if err := c.WriteMessage(websocket.BinaryMessage, frame); err != nil {
					return err
				}
				if _, _, err := c.ReadMessage(); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
