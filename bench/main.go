// Command bench is earshot's benchmark harness (`make bench`): on this
// machine, in one run, it compares the router with sending traffic straight
// to a region and with the proxies people would use instead, and writes the
// numbers to bench/results.
//
// The region is a simulated engine (cmd/simengine) in its own process; the
// router, nginx, HAProxy and Caddy (each when installed; configs in
// bench/peers) run as plain reverse proxies in front of it, each in its own
// process, so that their CPU time and peak RSS can be read from /proc.
//
//   - HTTP: POST /v1/listen with a 32 KiB body, driven by vegeta's library,
//     at a fixed open-loop rate and at saturation. The systems take turns
//     within each round, and each number is the median over the rounds, so
//     that the machine's noise falls on all of them alike.
//   - Streaming: N concurrent real-time streams (internal/streamload)
//     straight to the region and through each proxy, each started fresh:
//     RSS per stream, CPU per 1,000 streams, per-message latency over
//     direct, lost words.
//
// With -pin (the default on two or more cores) each proxy runs on core 1
// and everything else (the region, the load generator) on core 0, so that
// the proxies' numbers compare on equal terms on a small machine.
//
// go run ./bench -h lists the knobs; -audio-file writes the 32 KiB body for
// vegeta's targets files in bench/targets.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/earshot/earshot/internal/streamload"
	"github.com/earshot/earshot/sim"
)

type options struct {
	out         string
	rounds      int
	rate        int
	rateFor     time.Duration
	satFor      time.Duration
	satWorkers  int
	streams     []int
	streamAudio time.Duration
	streamRamp  time.Duration
	skipHTTP    bool
	skipStreams bool
	peers       []string
	profile     string
	routerEnv   []string
	pin         bool
}

func main() {
	var o options
	var streams, peers, audioFile string
	flag.StringVar(&o.out, "out", "bench/results", "directory for the results (markdown and JSON)")
	flag.IntVar(&o.rounds, "rounds", 3, "HTTP rounds; each number is the median over them")
	flag.IntVar(&o.rate, "rate", 1000, "the fixed HTTP rate, requests per second")
	flag.DurationVar(&o.rateFor, "rate-for", 10*time.Second, "how long each fixed-rate attack lasts")
	flag.DurationVar(&o.satFor, "sat-for", 10*time.Second, "how long each saturation attack lasts")
	flag.IntVar(&o.satWorkers, "sat-workers", 64, "concurrent requests at saturation")
	flag.StringVar(&streams, "streams", "1000,5000", "concurrent stream counts to run through the router")
	flag.DurationVar(&o.streamAudio, "stream-audio", 30*time.Second, "audio per stream")
	flag.DurationVar(&o.streamRamp, "stream-ramp", 20*time.Second, "how long opening the streams takes")
	flag.BoolVar(&o.skipHTTP, "skip-http", false, "skip the HTTP part")
	flag.BoolVar(&o.skipStreams, "skip-streams", false, "skip the streaming part")
	flag.StringVar(&peers, "peers", "nginx,haproxy,caddy,httputil", "proxies to compare, each when installed (httputil: Go's plain reverse proxy)")
	flag.StringVar(&audioFile, "audio-file", "", "write the 32 KiB audio body to this file and exit")
	var routerEnv string
	flag.StringVar(&routerEnv, "router-env", "", "extra environment for the router, e.g. GOGC=50,GOMEMLIMIT=200MiB")
	flag.StringVar(&o.profile, "profile", "", "save a CPU profile of the router during its first saturation attack to this file")
	flag.BoolVar(&o.pin, "pin", runtime.NumCPU() >= 2, "run each proxy on core 1 and everything else on core 0 (taskset)")
	plain := flag.String("plain-proxy", "", "serve a plain httputil.ReverseProxy on this address (the harness's httputil peer)")
	plainUpstream := flag.String("plain-upstream", "", "the region for -plain-proxy")
	flag.Parse()
	if *plain != "" {
		target := &url.URL{Scheme: "http", Host: *plainUpstream}
		fail(http.ListenAndServe(*plain, httputil.NewSingleHostReverseProxy(target)))
	}
	if o.pin && os.Getenv("EARSHOT_BENCH_PINNED") == "" {
		// Again, on core 0: the load generator and the region (started
		// from here) stay off the proxies' core.
		cmd := exec.Command("taskset", append([]string{"-c", "0"}, os.Args...)...)
		cmd.Env = append(os.Environ(), "EARSHOT_BENCH_PINNED=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fail(fmt.Errorf("taskset (util-linux) to pin the load to core 0: %w", err))
		}
		return
	}
	if audioFile != "" {
		if err := os.WriteFile(audioFile, body32k(), 0o644); err != nil {
			fail(err)
		}
		return
	}
	for s := range strings.SplitSeq(streams, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
			o.streams = append(o.streams, n)
		}
	}
	o.peers = strings.Split(peers, ",")
	if routerEnv != "" {
		o.routerEnv = strings.Split(routerEnv, ",")
	}
	if err := run(o); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// body32k is 32 KiB of linear16 audio at 16 kHz holding two words.
func body32k() []byte {
	return sim.Synthesize([]sim.Word{{Text: "hello", Start: 0.1, End: 0.4}, {Text: "world", Start: 0.5, End: 0.8}}, 16000, 1.024)
}

// system is one way to reach the region: straight, or through a proxy
// process.
type system struct {
	name  string
	url   string // http://host:port
	admin string // the router's admin listener
	pid   int    // the proxy's process; 0 for direct
	cmd   *exec.Cmd
}

func run(o options) error {
	if runtime.GOOS != "linux" {
		return errors.New("the harness reads /proc: Linux only")
	}
	dir, err := os.MkdirTemp("", "earshot-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }

	log("building the router and the simulated engine")
	build := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./cmd/router", "./cmd/simengine")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}

	regionAddr := freeAddr()
	region, err := start(dir, "region", filepath.Join(dir, "simengine"), "--listen", regionAddr, "--region", "bench", "--log-level", "warn", "--silence-timeout", "1m")
	if err != nil {
		return err
	}
	defer stop(region)
	direct := &system{name: "direct", url: "http://" + regionAddr}
	if err := waitUp(direct.url); err != nil {
		return fmt.Errorf("region: %w", err)
	}

	routerSys, err := startRouter(dir, "router", regionAddr, o.routerEnv, o.pin)
	if err != nil {
		return err
	}
	defer func() { stop(routerSys.cmd) }()
	systems := []*system{direct, routerSys}
	if err := waitUp(routerSys.url); err != nil {
		return fmt.Errorf("router: %w\n%s", err, logTail(dir, "router"))
	}
	for _, p := range o.peers {
		p = strings.TrimSpace(p)
		s, err := startPeer(dir, p, regionAddr, o.pin)
		if err == nil {
			defer stop(s.cmd)
			if err = waitUp(s.url); err != nil {
				err = fmt.Errorf("%w\n%s", err, logTail(dir, p))
			}
		}
		if err != nil {
			log("%s: %v (left out)", p, err)
			continue
		}
		systems = append(systems, s)
	}

	res := results{Machine: machine(), Started: time.Now().UTC().Format(time.RFC3339), Options: fmt.Sprintf("%+v", o)}
	for _, s := range systems {
		res.Systems = append(res.Systems, s.name)
	}
	if !o.skipHTTP {
		res.HTTP = httpBench(o, systems, region.Process.Pid, log)
	}
	if !o.skipStreams {
		// A fresh proxy per stream count: no memory kept from before.
		for _, sys := range systems[1:] {
			stop(sys.cmd)
		}
		for i, n := range o.streams {
			sr := StreamResult{Streams: n}
			log("streaming: %d streams straight to the region", n)
			d, err := streamLoad(o, n, direct)
			if err != nil {
				return err
			}
			sr.Runs = append(sr.Runs, *d)
			// The router twice: the relay alone, and with the resume log
			// that lets open streams move (its part reported apart).
			names := slices.Concat([]string{"router", "router+resume"}, res.Systems[2:])
			for _, name := range names {
				var s *system
				if strings.HasPrefix(name, "router") {
					s, err = startRouter(dir, name, regionAddr, o.routerEnv, o.pin)
				} else {
					s, err = startPeer(dir, name, regionAddr, o.pin)
				}
				if err == nil {
					err = waitUp(s.url)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				so := o
				if i > 0 || name != "router" {
					so.profile = "" // the router's first run's is enough
				}
				log("streaming: %d streams through %s (idle RSS %.1f MiB)", n, name, float64(memOf(s.pid, "VmRSS"))/(1<<20))
				r, err := streamLoad(so, n, s)
				stop(s.cmd)
				if err != nil {
					return err
				}
				r.AddedP50, r.AddedP99 = r.Report.Relay.P50-d.Report.Relay.P50, r.Report.Relay.P99-d.Report.Relay.P99
				sr.Runs = append(sr.Runs, *r)
			}
			res.Streams = append(res.Streams, sr)
		}
	}
	return write(o.out, &res)
}

// logTail is the end of a process's log, for errors.
func logTail(dir, name string) string {
	data, _ := os.ReadFile(filepath.Join(dir, name+".log"))
	return string(data[max(0, len(data)-2000):])
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs a process with its output in dir/name.log.
func start(dir, name, bin string, args ...string) (*exec.Cmd, error) {
	return startEnv(dir, name, nil, bin, args...)
}

// startEnv is start with env added to the process's environment.
func startEnv(dir, name string, env []string, bin string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// waitUp polls GET /v1/models until it answers 200.
func waitUp(base string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/v1/models")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not up at %s: %v", base, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pinned is how a proxy is started: on core 1 when pinning.
func pinned(pin bool, bin string, args ...string) (string, []string) {
	if !pin {
		return bin, args
	}
	return "taskset", append([]string{"-c", "1", bin}, args...)
}

// startRouter runs the router as benchmarked; name "router" has the
// resume log off (the relay alone), "router+resume" the default 30 s.
func startRouter(dir, name, regionAddr string, env []string, pin bool) (*system, error) {
	resume := "0s"
	if name == "router+resume" {
		resume = "30s"
	}
	listen, admin := freeAddr(), freeAddr()
	cfg := fmt.Sprintf(`# the router as benchmarked: one region, no keys, warnings only in the log
listen: %q
admin: %q
log: {level: warn, format: json}
auth: {disable: true}
limits: {max_connections: 50000}
timeouts: {stream_idle: 5m}
retry: {resume_log: %s}
regions:
  - {name: bench, url: "http://%s", location: {lat: 39.04, lon: -77.49}}
`, listen, admin, resume, regionAddr)
	path := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	bin, args := pinned(pin, filepath.Join(dir, "router"), "--config", path, "--watch=false")
	cmd, err := startEnv(dir, "router", env, bin, args...)
	if err != nil {
		return nil, err
	}
	return &system{name: name, url: "http://" + listen, admin: "http://" + admin, pid: cmd.Process.Pid, cmd: cmd}, nil
}

// startPeer runs nginx, haproxy or caddy from its config in bench/peers.
func startPeer(dir, name, regionAddr string, pin bool) (*system, error) {
	listen := freeAddr()
	if name == "httputil" {
		// Go's own reverse proxy, from this binary: what net/http costs
		// before anything the router does.
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin, args := pinned(pin, self, "-plain-proxy", listen, "-plain-upstream", regionAddr)
		cmd, err := start(dir, name, bin, args...)
		if err != nil {
			return nil, err
		}
		return &system{name: name, url: "http://" + listen, pid: cmd.Process.Pid, cmd: cmd}, nil
	}
	conf := map[string]string{"nginx": "nginx.conf", "haproxy": "haproxy.cfg", "caddy": "Caddyfile"}[name]
	if conf == "" {
		return nil, fmt.Errorf("unknown peer")
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/usr/local/sbin"} {
			if _, e := os.Stat(filepath.Join(d, name)); e == nil {
				bin, err = filepath.Join(d, name), nil
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("not installed (apt-get install %s)", map[string]string{"nginx": "nginx-light", "haproxy": "haproxy", "caddy": "caddy"}[name])
	}
	tmpl, err := template.ParseFiles(filepath.Join("bench", "peers", conf))
	if err != nil {
		return nil, err
	}
	pdir := filepath.Join(dir, name)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	workers := "auto"
	if pin {
		workers = "1" // one core: one worker, as the router has one core
	}
	if err := tmpl.Execute(&b, map[string]string{"Listen": listen, "Upstream": regionAddr, "Dir": pdir, "Workers": workers}); err != nil {
		return nil, err
	}
	path := filepath.Join(pdir, conf)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return nil, err
	}
	var args []string
	switch name {
	case "nginx":
		args = []string{"-c", path, "-p", pdir}
	case "haproxy":
		args = []string{"-db", "-f", path}
	case "caddy":
		args = []string{"run", "--config", path, "--adapter", "caddyfile"}
	}
	pbin, pargs := pinned(pin, bin, args...)
	cmd, err := start(dir, name, pbin, pargs...)
	if err != nil {
		return nil, err
	}
	return &system{name: name, url: "http://" + listen, pid: cmd.Process.Pid, cmd: cmd}, nil
}

// ---- /proc ----

// tree is pid and its descendants (nginx's and haproxy's workers).
func tree(pid int) []int {
	out := []int{pid}
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(p); err == nil {
			parent[p] = st.ppid
		}
	}
	for changed := true; changed; {
		changed = false
		for p, pp := range parent {
			if slices.Contains(out, pp) && !slices.Contains(out, p) {
				out = append(out, p)
				changed = true
			}
		}
	}
	return out
}

type stat struct {
	ppid int
	cpu  time.Duration // user + system
}

func readStat(pid int) (stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ppid, _ := strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return stat{ppid: ppid, cpu: time.Duration(utime+stime) * time.Second / 100}, nil // USER_HZ is 100 on Linux
}

// cpuOf is the CPU time used so far by pid and its descendants.
func cpuOf(pid int) time.Duration {
	var total time.Duration
	for _, p := range tree(pid) {
		if st, err := readStat(p); err == nil {
			total += st.cpu
		}
	}
	return total
}

// memOf sums a /proc/PID/status field (VmRSS, VmHWM) over pid's tree, in bytes.
func memOf(pid int, field string) int64 {
	var total int64
	for _, p := range tree(pid) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
				total += kb * 1024
			}
		}
		f.Close()
	}
	return total
}

// resetPeak starts pid's tree's VmHWM again from its current RSS; without
// it (not root, an old kernel) peaks are lifetime peaks, and it says so once.
func resetPeak(pid int) {
	for _, p := range tree(pid) {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p), []byte("5"), 0o644); err != nil && !peakWarned {
			peakWarned = true
			fmt.Fprintf(os.Stderr, "bench: cannot reset peak RSS (%v): peaks are since each process started\n", err)
		}
	}
}

var peakWarned bool

// ---- HTTP ----

// httpRun is one attack on one system.
type httpRun struct {
	Requests   uint64  `json:"requests"`
	Success    float64 `json:"success"`
	Throughput float64 `json:"throughput_rps"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	CPUPer1000 float64 `json:"cpu_seconds_per_1000"` // the proxy's; 0 for direct
	RegionCPU  float64 `json:"region_cpu_seconds_per_1000"`
	PeakRSS    int64   `json:"peak_rss_bytes"` // the proxy's
}

// HTTPResult is a system's medians over the rounds.
type HTTPResult struct {
	System string    `json:"system"`
	Mode   string    `json:"mode"` // "rate" or "saturation"
	Median httpRun   `json:"median"`
	Rounds []httpRun `json:"rounds"`
}

func httpBench(o options, systems []*system, regionPid int, log func(string, ...any)) []HTTPResult {
	body := body32k()
	runs := map[string][]httpRun{}
	for round := range o.rounds {
		for _, mode := range []string{"rate", "saturation"} {
			// Rotate the order each round, so that no system always goes first.
			for i := range systems {
				s := systems[(i+round)%len(systems)]
				ro := o
				if round > 0 {
					ro.profile = "" // the first round's is enough
				}
				r := attack(ro, s, regionPid, body, mode)
				log("round %d %-10s %-8s %7.0f req/s  p50 %6.2fms  p99 %7.2fms  success %.4f", round+1, mode, s.name, r.Throughput, r.P50, r.P99, r.Success)
				runs[s.name+"/"+mode] = append(runs[s.name+"/"+mode], r)
			}
		}
	}
	var out []HTTPResult
	for _, mode := range []string{"rate", "saturation"} {
		for _, s := range systems {
			rs := runs[s.name+"/"+mode]
			out = append(out, HTTPResult{System: s.name, Mode: mode, Rounds: rs, Median: medianRun(rs)})
		}
	}
	return out
}

func attack(o options, s *system, regionPid int, body []byte, mode string) httpRun {
	target := vegeta.Target{Method: "POST", URL: s.url + "/v1/listen?encoding=linear16&sample_rate=16000",
		Body: body, Header: http.Header{"Content-Type": {"audio/l16"}}}
	rate, dur := vegeta.Rate{Freq: o.rate, Per: time.Second}, o.rateFor
	opts := []func(*vegeta.Attacker){vegeta.KeepAlive(true), vegeta.Connections(10000), vegeta.Timeout(30 * time.Second)}
	if mode == "saturation" {
		rate, dur = vegeta.Rate{}, o.satFor // as fast as the workers go
		opts = append(opts, vegeta.Workers(uint64(o.satWorkers)), vegeta.MaxWorkers(uint64(o.satWorkers)))
	}
	atk := vegeta.NewAttacker(opts...)
	var m vegeta.Metrics
	var cpu0 time.Duration
	if s.pid != 0 {
		resetPeak(s.pid)
		cpu0 = cpuOf(s.pid)
	}
	rcpu0 := cpuOf(regionPid)
	if o.profile != "" && s.admin != "" && mode == "saturation" {
		go saveProfile(s.admin, o.profile, dur)
	}
	for res := range atk.Attack(vegeta.NewStaticTargeter(target), rate, dur, s.name) {
		m.Add(res)
	}
	m.Close()
	r := httpRun{Requests: m.Requests, Success: m.Success, Throughput: m.Throughput,
		P50: msf(m.Latencies.P50), P99: msf(m.Latencies.P99), Max: msf(m.Latencies.Max)}
	if m.Requests > 0 {
		r.RegionCPU = (cpuOf(regionPid) - rcpu0).Seconds() / float64(m.Requests) * 1000
		if s.pid != 0 {
			r.CPUPer1000 = (cpuOf(s.pid) - cpu0).Seconds() / float64(m.Requests) * 1000
			r.PeakRSS = memOf(s.pid, "VmHWM")
		}
	}
	return r
}

// saveProfile fetches a CPU profile from the router's admin listener.
func saveProfile(admin, file string, d time.Duration) {
	secs := max(1, int(d.Seconds())-1)
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", admin, secs))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		return
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
	}
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func medianRun(rs []httpRun) httpRun {
	med := func(get func(httpRun) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	return httpRun{
		Requests:   uint64(med(func(r httpRun) float64 { return float64(r.Requests) })),
		Success:    med(func(r httpRun) float64 { return r.Success }),
		Throughput: med(func(r httpRun) float64 { return r.Throughput }),
		P50:        med(func(r httpRun) float64 { return r.P50 }),
		P99:        med(func(r httpRun) float64 { return r.P99 }),
		Max:        med(func(r httpRun) float64 { return r.Max }),
		CPUPer1000: med(func(r httpRun) float64 { return r.CPUPer1000 }),
		RegionCPU:  med(func(r httpRun) float64 { return r.RegionCPU }),
		PeakRSS:    int64(med(func(r httpRun) float64 { return float64(r.PeakRSS) })),
	}
}

// ---- streaming ----

// StreamResult is one stream count, straight to the region and through
// each proxy.
type StreamResult struct {
	Streams int         `json:"streams"`
	Runs    []StreamRun `json:"runs"` // direct first
}

// StreamRun is one system's run.
type StreamRun struct {
	System       string             `json:"system"`
	Report       *streamload.Report `json:"report"`
	IdleRSS      int64              `json:"idle_rss_bytes"` // the proxy's, before the streams
	PeakRSS      int64              `json:"peak_rss_bytes"`
	RSSPerStream float64            `json:"rss_bytes_per_stream"` // (peak - idle) / streams
	CPU          float64            `json:"cpu_seconds"`
	CoresPer1000 float64            `json:"cores_per_1000_streams"` // CPU seconds per second of open stream, per 1,000 streams
	AddedP50     float64            `json:"added_per_message_p50_ms"`
	AddedP99     float64            `json:"added_per_message_p99_ms"`
}

// streamLoad runs n streams through s, reading its CPU and RSS from /proc
// (s.pid 0: straight to the region, no proxy to read).
func streamLoad(o options, n int, s *system) (*StreamRun, error) {
	run := &StreamRun{System: s.name}
	var cpu0 time.Duration
	stopSampling := make(chan struct{})
	sampled := make(chan int64)
	if s.pid != 0 {
		run.IdleRSS = memOf(s.pid, "VmRSS")
		resetPeak(s.pid)
		cpu0 = cpuOf(s.pid)
		go func() { // the RSS while streams are open; VmHWM backs it up
			var top int64
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopSampling:
					sampled <- top
					return
				case <-t.C:
					top = max(top, memOf(s.pid, "VmRSS"))
				}
			}
		}()
		if o.profile != "" && o.skipHTTP && s.admin != "" {
			go saveProfile(s.admin, o.profile, o.streamRamp+o.streamAudio/2)
		}
	}
	r, err := streamload.Run(context.Background(), streamload.Options{
		URL: strings.Replace(s.url, "http://", "ws://", 1), Streams: n, Ramp: o.streamRamp, Audio: o.streamAudio,
	})
	if err != nil {
		return nil, err
	}
	run.Report = r
	if s.pid != 0 {
		run.CPU = (cpuOf(s.pid) - cpu0).Seconds()
		close(stopSampling)
		run.PeakRSS = max(<-sampled, memOf(s.pid, "VmHWM"))
		run.RSSPerStream = float64(run.PeakRSS-run.IdleRSS) / float64(n)
		// The streams are not all open for the whole run (ramp, close).
		run.CoresPer1000 = run.CPU / max(r.StreamSeconds, 1) * 1000
	}
	fmt.Fprintf(os.Stderr, "bench: %s: %s\n", s.name, r)
	return run, nil
}

// ---- results ----

type results struct {
	Machine string         `json:"machine"`
	Started string         `json:"started"`
	Options string         `json:"options"`
	Systems []string       `json:"systems"`
	HTTP    []HTTPResult   `json:"http"`
	Streams []StreamResult `json:"streams"`
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var peers []string
	for _, c := range [][]string{{"nginx", "-v"}, {"haproxy", "-v"}, {"caddy", "version"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err == nil {
			peers = append(peers, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
		}
	}
	cpus := "?"
	if data, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		cpus = strings.TrimSpace(string(data))
	}
	pin := ""
	if os.Getenv("EARSHOT_BENCH_PINNED") != "" {
		pin = ", pinned: each proxy on core 1, the region and the load on core 0"
	}
	return fmt.Sprintf("CPUs %s (%s)%s, %s %s/%s; %s", cpus, model, pin, runtime.Version(), runtime.GOOS, runtime.GOARCH, strings.Join(peers, "; "))
}

func write(dir string, res *results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md bytes.Buffer
	markdown(&md, res)
	os.Stdout.Write(md.Bytes())
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("2006-01-02T1504")
	for name, data := range map[string][]byte{stamp + ".md": md.Bytes(), stamp + ".json": append(js, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s/%s.{md,json}\n", dir, stamp)
	return nil
}

func markdown(w io.Writer, res *results) {
	fmt.Fprintf(w, "Machine: %s. Started %s.\n\n", res.Machine, res.Started)
	find := func(system, mode string) *httpRun {
		for i := range res.HTTP {
			if res.HTTP[i].System == system && res.HTTP[i].Mode == mode {
				return &res.HTTP[i].Median
			}
		}
		return nil
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	for _, mode := range []string{"rate", "saturation"} {
		if find("direct", mode) == nil {
			continue // not run
		}
		title := "HTTP, POST /v1/listen with 32 KiB, at a fixed rate"
		if mode == "saturation" {
			title = "HTTP, POST /v1/listen with 32 KiB, at saturation"
		}
		fmt.Fprintf(w, "### %s (median of rounds)\n\n", title)
		fmt.Fprintln(w, "| system | req/s | p50 ms | p99 ms | max ms | success | proxy CPU s / 1000 req | proxy peak RSS MiB | req/s vs nginx | p50 vs direct | CPU vs nginx |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		direct, nginx := find("direct", mode), find("nginx", mode)
		for _, s := range res.Systems {
			r := find(s, mode)
			if r == nil {
				continue
			}
			vsNginx, cpuVsNginx := "–", "–"
			if nginx != nil {
				vsNginx = ratio(r.Throughput, nginx.Throughput)
				cpuVsNginx = ratio(r.CPUPer1000, nginx.CPUPer1000)
			}
			fmt.Fprintf(w, "| %s | %.0f | %.3f | %.3f | %.2f | %.4f | %.3f | %.1f | %s | %s | %s |\n", s, r.Throughput, r.P50, r.P99, r.Max, r.Success,
				r.CPUPer1000, float64(r.PeakRSS)/(1<<20), vsNginx, ratio(r.P50, direct.P50), cpuVsNginx)
		}
		if r := find("router", mode); r != nil && direct != nil {
			fmt.Fprintf(w, "\nRouter over direct: p50 +%.0f µs, p99 +%.0f µs.\n", (r.P50-direct.P50)*1000, (r.P99-direct.P99)*1000)
		}
		fmt.Fprintln(w)
	}
	for _, sr := range res.Streams {
		fmt.Fprintf(w, "### Streaming: %d concurrent real-time streams (100 ms chunks)\n\n", sr.Streams)
		fmt.Fprintln(w, "| system | succeeded | words lost | RSS per stream | cores per 1000 streams | per-message p50 / p99 ms | added p50 / p99 ms | handshake p99 ms | RSS vs nginx | CPU vs nginx |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		var nginx *StreamRun
		for i := range sr.Runs {
			if sr.Runs[i].System == "nginx" {
				nginx = &sr.Runs[i]
			}
		}
		for _, r := range sr.Runs {
			rss, cpu, vsRSS, vsCPU := "–", "–", "–", "–"
			if r.System != "direct" {
				rss, cpu = fmt.Sprintf("%.1f KiB", r.RSSPerStream/1024), fmt.Sprintf("%.3f", r.CoresPer1000)
				if nginx != nil {
					vsRSS, vsCPU = ratio(r.RSSPerStream, nginx.RSSPerStream), ratio(r.CoresPer1000, nginx.CoresPer1000)
				}
			}
			fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %.2f / %.2f | %+.2f / %+.2f | %.1f | %s | %s |\n", r.System,
				r.Report.Succeeded, r.Report.Lost(), rss, cpu, r.Report.Relay.P50, r.Report.Relay.P99,
				r.AddedP50, r.AddedP99, r.Report.Handshake.P99, vsRSS, vsCPU)
		}
		var relay, resume *StreamRun
		for i := range sr.Runs {
			switch sr.Runs[i].System {
			case "router":
				relay = &sr.Runs[i]
			case "router+resume":
				resume = &sr.Runs[i]
			}
		}
		if relay != nil && resume != nil {
			fmt.Fprintf(w, "\nThe resume log's part (router+resume minus router): %.1f KiB per stream, %+.3f cores per 1000 streams.\n",
				(resume.RSSPerStream-relay.RSSPerStream)/1024, resume.CoresPer1000-relay.CoresPer1000)
		}
		fmt.Fprintln(w)
	}
}
