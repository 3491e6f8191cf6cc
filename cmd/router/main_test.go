package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

// TestRunDefaultConfig runs the README's quick start (the default config.yaml,
// with the listen addresses overridden to free ports) and makes one request.
func TestRunDefaultConfig(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", "../../config.yaml", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, pw)
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
	var a []string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatalf("router exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("router did not start")
	}

	resp, err := http.Get("http://" + a[0] + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Earshot-Region") != "us-east" {
		t.Errorf("GET /v1/models = %d from %q", resp.StatusCode, resp.Header.Get("X-Earshot-Region"))
	}
	resp, err = http.Get("http://" + a[1] + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(body, []byte(`"name": "ap-south"`)) {
		t.Errorf("admin /status = %s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("router did not stop")
	}
}
