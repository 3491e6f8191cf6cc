package server

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/earshot/earshot/internal/chaos"
	"github.com/earshot/earshot/proxy"
	"github.com/earshot/earshot/sim"
)

// TestJSSDKStreamSurvivesRegionKill streams through the official JS SDK
// (@deepgram/sdk 5.13, which reconnects by itself on any close but 1000
// and would then restart its timestamps at 0) and kills the stream's
// region halfway: the SDK opens once, sees no close and no error, and its
// finals hold every word with the times that were encoded. scripts/test.sh
// installs Node and the SDK; without them the test skips, saying so.
func TestJSSDKStreamSurvivesRegionKill(t *testing.T) {
	dir, err := filepath.Abs("testdata/jssdk")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (scripts/test.sh installs it): skipping the JS SDK test")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@deepgram", "sdk")); err != nil {
		t.Skip("@deepgram/sdk is not installed in server/testdata/jssdk (scripts/test.sh runs npm install there): skipping")
	}
	e := newMxEnv(t, sim.Options{})
	pcm := sim.Synthesize(resumeWords, 16000, 7.0)
	audio := filepath.Join(t.TempDir(), "audio.raw")
	if err := os.WriteFile(audio, pcm, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), node, filepath.Join(dir, "resume.mjs"), "http://"+e.r.api, audio, "112000")
	cmd.Dir = dir
	cmd.Stderr = &testWriter{t}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait() //nolint:errcheck // the result is read from stdout
	lines := bufio.NewScanner(stdout)
	var result string
	deadline := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	for lines.Scan() {
		switch line := lines.Text(); {
		case line == "KILL":
			e.proxies[0].Set(chaos.Kill())
			_, _ = stdin.Write([]byte("GO\n"))
		case strings.HasPrefix(line, "{"):
			result = line
		}
	}
	var seen struct {
		Opens  int      `json:"opens"`
		Closes []any    `json:"closes"`
		Errors []string `json:"errors"`
		Finals []string `json:"finals"`
	}
	if err := json.Unmarshal([]byte(result), &seen); err != nil {
		t.Fatalf("the script said %q: %v", result, err)
	}
	var want []string
	for _, w := range resumeWords {
		want = append(want, strings.Join([]string{w.Text, "@", trimFloat(w.Start), "-", trimFloat(w.End)}, ""))
	}
	if strings.Join(seen.Finals, " ") != strings.Join(want, " ") {
		t.Errorf("the SDK's final words:\n  %s\nwant\n  %s", strings.Join(seen.Finals, " "), strings.Join(want, " "))
	}
	if seen.Opens != 1 || len(seen.Errors) != 0 {
		t.Errorf("the SDK opened %d times with errors %v; want one open (no reconnect), no error", seen.Opens, seen.Errors)
	}
	if len(seen.Closes) != 1 || seen.Closes[0] != float64(1000) {
		t.Errorf("the SDK saw closes %v, want one 1000 after CloseStream", seen.Closes)
	}
	if n := e.r.srv.proxy.Resumes().Moves[proxy.ResumeKey{From: "us-east", To: "us-west", Result: "ok"}]; n != 1 {
		t.Errorf("moves %v, want the stream moved once", e.r.srv.proxy.Resumes().Moves)
	}
}

// trimFloat formats a time as JavaScript prints a number.
func trimFloat(v float64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// testWriter sends a child's stderr to the test log.
type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("node: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}
