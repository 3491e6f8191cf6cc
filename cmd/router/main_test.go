package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	bad := writeConfig(t, "regions:\n  - name: a\n    url: http://a\n    timeout: 5s\n")
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		wantOut string
	}{
		{"default config", []string{"--config", "../../config.yaml", "--check"}, "", "ok (4 regions)"},
		{"unknown field", []string{"--config", bad, "--check"}, `config.yaml:4: regions[0].timeout: unknown field "timeout"`, ""},
		{"missing file", []string{"--config", "/nonexistent.yaml", "--check"}, "read config", ""},
		{"bad listen override", []string{"--config", "../../config.yaml", "--listen", "nope", "--check"}, `listen: "nope" is not host:port`, ""},
		{"stray argument", []string{"--config", "../../config.yaml", "extra"}, `unexpected argument "extra"`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, &out)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output %q, want %q", out.String(), tc.wantOut)
			}
		})
	}
}

// start runs the router with args (listen addresses overridden to free
// ports) and returns its API and admin addresses and its exit.
func start(t *testing.T, ctx context.Context, args ...string) (api, admin string, done <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	exit := make(chan error, 1)
	go func() {
		exit <- run(ctx, append(args, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"), pw)
		pw.Close()
	}()
	// The "serving" log line names the bound addresses.
	addrs := make(chan []string, 1)
	go func() {
		re := regexp.MustCompile(`"listen": "([^"]+)", "admin": "([^"]+)"`)
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil && !sent {
				addrs <- m[1:]
				sent = true
			}
		}
	}()
	select {
	case a := <-addrs:
		return a[0], a[1], exit
	case err := <-exit:
		t.Fatalf("router exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("router did not start")
	}
	panic("unreachable")
}

func waitExit(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("router did not stop")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestRunDefaultConfig runs the README's quick start (the default config.yaml,
// with the listen addresses overridden to free ports) and makes one request.
func TestRunDefaultConfig(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	api, admin, done := start(t, ctx, "--config", "../../config.yaml")
	resp, err := http.Get("http://" + api + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Earshot-Region") != "us-east" {
		t.Errorf("GET /v1/models = %d from %q", resp.StatusCode, resp.Header.Get("X-Earshot-Region"))
	}
	if body := get(t, "http://"+admin+"/status"); !strings.Contains(body, `"name": "ap-south"`) {
		t.Errorf("admin /status = %s", body)
	}
	cancel()
	waitExit(t, done)
}

// TestSignals sends the router process SIGHUP after editing its config,
// then SIGTERM with a stream open: the reload takes, and the stream is
// closed with 1001 before the router exits cleanly.
func TestSignals(t *testing.T) {
	text, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, string(text))
	api, admin, done := start(t, context.Background(), "--config", path, "--watch=false")

	edited := strings.Replace(string(text), "name: ap-south", "name: ap-southeast", 1)
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(get(t, "http://"+admin+"/status"), `"name": "ap-southeast"`) {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload the config")
		}
		time.Sleep(10 * time.Millisecond)
	}

	c, _, err := websocket.DefaultDialer.Dial("ws://"+api+"/v1/listen", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err = c.ReadMessage(); err != nil {
			break
		}
	}
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("stream at SIGTERM ended with %v, want close 1001", err)
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""), time.Now().Add(time.Second))
	waitExit(t, done)
}

// TestEndsWithGoRun: a router started by `go run` (its binary in a go-build
// directory) stops when the go command that started it is killed, as `go
// run` does not pass SIGTERM on; one started any other way keeps serving
// when its parent exits, as a daemon must.
func TestEndsWithGoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the router")
	}
	dir := t.TempDir()
	goRun := filepath.Join(dir, "go-build123", "b001", "exe", "router")
	plain := filepath.Join(dir, "bin", "router")
	for _, out := range []string{goRun, plain} {
		if b, err := exec.Command("go", "build", "-o", out, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
	}
	cfg := writeConfig(t, "auth: {disable: true}\nhealth: {probe: {disable: true}}\n"+
		"regions:\n  - {name: a, url: sim://a, location: {lat: 1, lon: 1}}\n")
	for _, c := range []struct {
		bin       string
		wantEnded bool
	}{{goRun, true}, {plain, false}} {
		admin := freeAddr(t)
		// sh stands for the go command: the router's parent, killed.
		parent := exec.Command("sh", "-c", c.bin+" --config "+cfg+" --listen "+freeAddr(t)+" --admin "+admin+" 2>/dev/null & echo $!; wait")
		out, err := parent.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := parent.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		pid, _ := strconv.Atoi(strings.TrimSpace(line))
		healthy := func() bool {
			resp, err := http.Get("http://" + admin + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		}
		waitUntil(t, "the router to serve", healthy)
		_ = parent.Process.Kill()
		_ = parent.Wait()
		if c.wantEnded {
			waitUntil(t, "the router to stop with its go run", func() bool { return !healthy() })
		} else {
			// Still serving after its parent is gone (a router checks every
			// 200 ms; a second is five checks).
			deadline := time.Now().Add(time.Second)
			for time.Now().Before(deadline) {
				if !healthy() {
					t.Fatalf("a router not started by go run stopped when its parent exited")
				}
				time.Sleep(50 * time.Millisecond) // polling for a second: asserting that nothing happens
			}
		}
		if p, err := os.FindProcess(pid); err == nil && pid > 0 {
			_ = p.Signal(syscall.SIGKILL)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestGoRunBinary(t *testing.T) {
	for path, want := range map[string]bool{
		"/tmp/go-build2718064049/b001/exe/router": true,
		"/root/.cache/go-build123/b041/exe/x":     true,
		"/home/u/src/go-build-x/bin/router":       false,
		"/usr/local/bin/router":                   false,
	} {
		if got := goRunBinary.MatchString(path); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
}
