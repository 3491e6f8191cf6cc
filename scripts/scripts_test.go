// Package scripts holds the test command's shell helpers; its tests run
// them against stand-ins for apt-get and check the repository's
// .dockerignore.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// stub writes an executable shell script named name into dir.
func stub(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// runLib runs a command with lib.sh loaded and PATH = bin then the
// system's (for sh, mktemp, tail, sed).
func runLib(t *testing.T, bin, command string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", ". ./lib.sh; "+command)
	cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", command, err, out)
	}
	return string(out)
}

// TestInstallSaysWhy: when apt-get fails, the test command says so with
// apt-get's own last lines, not only that it failed; and it times steps.
func TestInstallSaysWhy(t *testing.T) {
	bin := t.TempDir()
	stub(t, bin, "id", `echo 0`)
	stub(t, bin, "apt-get", `echo "Reading package lists..."; echo "E: Unable to locate package $4"; exit 100`)
	out := runLib(t, bin, "install no-such-command-xyz chromium-xyz")
	for _, want := range []string{"installing chromium-xyz", "could not install chromium-xyz",
		"  | E: Unable to locate package chromium-xyz"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	stub(t, bin, "id", `echo 1000`)
	if out := runLib(t, bin, "install no-such-command-xyz chromium-xyz"); !strings.Contains(out, "needs root and apt-get") {
		t.Errorf("without root: %q, want why it cannot install", out)
	}
	if out := runLib(t, bin, "install sh sh-package"); out != "" {
		t.Errorf("a command already there: %q, want nothing done", out)
	}
	if out := runLib(t, bin, "step 'a step' true"); !regexp.MustCompile(`^-- a step: \d+s\n$`).MatchString(out) {
		t.Errorf("step printed %q, want its name and time", out)
	}
}

// TestDockerignore: the build context keeps what the Dockerfile copies and
// leaves out VCS data, node modules, build output and likely secrets.
func TestDockerignore(t *testing.T) {
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for line := range strings.Lines(string(data)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	// ignored follows Docker's rules: a pattern is matched against the
	// path from the context's root and each of its parent directories
	// ("*" within one name, "**" across any number); the last pattern
	// that matches decides, and "!" keeps.
	ignored := func(path string) bool {
		out := false
		for _, p := range patterns {
			keep := strings.HasPrefix(p, "!")
			re := dockerPattern(strings.Trim(strings.TrimPrefix(p, "!"), "/"))
			for dir := path; dir != "."; dir = filepath.Dir(dir) {
				if re.MatchString(dir) {
					out = !keep
					break
				}
			}
		}
		return out
	}
	for _, kept := range []string{"go.mod", "go.sum", "config.yaml", "README.md", "cmd/router/main.go",
		"proxy/proxy.go", "server/statuspage/index.html", "deploy/modal_app.py.tmpl", "routing/countries.go"} {
		if ignored(kept) {
			t.Errorf("%s is left out of the build context; the build needs it", kept)
		}
	}
	for _, left := range []string{".git/config", "server/testdata/jssdk/node_modules/@deepgram/sdk/package.json",
		"bin/router", "artifacts/status-page.png", ".earshot/deploy/us-east/app.py", "regions.deployed.yaml",
		".env", "tls/server.key", "certs/server.pem", "proxy/proxy.test"} {
		if !ignored(left) {
			t.Errorf("%s is in the build context", left)
		}
	}
}

// dockerPattern turns a .dockerignore pattern into a regular expression.
func dockerPattern(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case p[i] == '*':
			b.WriteString("[^/]*")
		case p[i] == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	return regexp.MustCompile(b.String() + "$")
}
