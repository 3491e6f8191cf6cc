package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const cfg = `
auth: {disable: true}
regions_file: regions.deployed.yaml
regions:
  - {name: us-east, url: "sim://us-east", location: {lat: 39, lon: -77}}
deploy:
  image: registry.example.com/acme/deepgram:release-1
  regions: {us-east: {}}
`

func TestRun(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	noDeploy := filepath.Join(dir, "router-only.yaml")
	if err := os.WriteFile(noDeploy, []byte(cfg[:strings.Index(cfg, "deploy:")]), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args        []string
		code        int
		out, errOut string
	}{
		{nil, 2, "", "usage: deployer COMMAND"},
		{[]string{"launch"}, 2, "", `unknown command "launch"`},
		{[]string{"plan", "--config", path}, 0, "us-east: create earshot-us-east\n  $ modal deploy " + filepath.Join(dir, ".earshot", "deploy", "us-east", "app.py") + " --name earshot-us-east\n", ""},
		{[]string{"plan", "--config", noDeploy}, 1, "", "has no deploy section"},
		{[]string{"plan", "--config", path, "--region", "mars"}, 1, "", `region "mars" is not in the deploy section`},
		{[]string{"destroy", "--config", path}, 2, "", "name exactly one --region"},
		{[]string{"apply", "--config", path, "--modal", filepath.Join(dir, "none")}, 1, "", "pip install modal"},
		{[]string{"plan", "extra"}, 2, "", "unexpected arguments"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, strings.NewReader(""), &stdout, &stderr)
		if code != tc.code || stdout.String() != tc.out && tc.out != "" || !strings.Contains(stderr.String(), tc.errOut) {
			t.Errorf("deployer %q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.out, tc.errOut)
		}
	}
}

// TestScaleApplyNeedsCredentials: without Modal credentials, scale --apply
// says which variables to set, rather than the SDK's own error.
func TestScaleApplyNeedsCredentials(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", dir) // no ~/.modal.toml
	t.Setenv("MODAL_TOKEN_ID", "")
	t.Setenv("MODAL_TOKEN_SECRET", "")
	t.Setenv("MODAL_CONFIG_PATH", "")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"scale", "--config", path, "--router", "127.0.0.1:1", "--apply"}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "MODAL_TOKEN_ID") || !strings.Contains(stderr.String(), "MODAL_TOKEN_SECRET") {
		t.Errorf("exit %d, stderr %q; want 1 naming MODAL_TOKEN_ID and MODAL_TOKEN_SECRET", code, stderr.String())
	}
}
