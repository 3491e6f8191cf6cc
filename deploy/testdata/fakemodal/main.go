// Command fakemodal stands in for Modal's CLI in the deployer's tests. It
// records each invocation (arguments and the MODAL_ environment) and prints
// what the real CLI prints, failures included. It is driven by:
//
//	FAKE_MODAL_LOG        file to append one JSON line per invocation to
//	FAKE_MODAL_ENDPOINTS  JSON {"app name": "endpoint URL"} for deploy
//	FAKE_MODAL_FAIL       comma-separated app names whose deploy fails
//	FAKE_MODAL_BARRIER    "DIR:N": each deploy waits until N deploys have
//	                      started, so deploys that do not overlap fail
//	FAKE_MODAL_WRAP       wrap output at this many columns, as Rich does
//	                      when COLUMNS is not set and stdout is no terminal
//	                      (or always, with FAKE_MODAL_IGNORE_COLUMNS)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	args := os.Args[1:]
	record(args)
	if os.Getenv("MODAL_TOKEN_ID") == "invalid" {
		fmt.Fprintln(os.Stderr, "╭─ Error ─────────────────────────────────────────────────────────────╮")
		fmt.Fprintln(os.Stderr, "│ Token ID is malformed or invalid. Run `modal token new` to create one. │")
		fmt.Fprintln(os.Stderr, "╰─────────────────────────────────────────────────────────────────────╯")
		os.Exit(1)
	}
	switch {
	case len(args) >= 2 && args[0] == "deploy":
		deploy(args[1], flag(args, "--name"))
	case len(args) >= 3 && args[0] == "app" && args[1] == "list" && slices.Contains(args, "--json"):
		list()
	case len(args) >= 3 && args[0] == "app" && args[1] == "stop":
		if slices.Contains(strings.Split(os.Getenv("FAKE_MODAL_STOPPED"), ","), args[2]) {
			// The real CLI's answer for an app that is not running.
			fmt.Fprintln(os.Stderr, "App is already stopped.")
			os.Exit(1)
		}
		fmt.Printf("✓ App %s stopped.\n", args[2])
	default:
		fmt.Fprintf(os.Stderr, "Usage: modal [OPTIONS] COMMAND [ARGS]...\nTry 'modal -h' for help.\n\nError: No such command %q.\n", strings.Join(args, " "))
		os.Exit(2)
	}
}

func flag(args []string, name string) string {
	if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func record(args []string) {
	path := os.Getenv("FAKE_MODAL_LOG")
	if path == "" {
		return
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "MODAL_") {
			if strings.Contains(k, "SECRET") {
				v = "(set)"
			}
			env[k] = v
		}
	}
	line, _ := json.Marshal(map[string]any{"args": args, "env": env})
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakemodal:", err)
		os.Exit(3)
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

func endpoints() map[string]string {
	m := map[string]string{}
	if s := os.Getenv("FAKE_MODAL_ENDPOINTS"); s != "" {
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			fmt.Fprintln(os.Stderr, "fakemodal: FAKE_MODAL_ENDPOINTS:", err)
			os.Exit(3)
		}
	}
	return m
}

func deploy(file, app string) {
	if _, err := os.Stat(file); err != nil {
		fmt.Fprintf(os.Stderr, "Error: Invalid value for 'APP_REF': File %q does not exist.\n", file)
		os.Exit(2)
	}
	barrier()
	fmt.Println("✓ Created objects.")
	fmt.Printf("├── 🔨 Created mount %s\n", file)
	fmt.Println("├── 🔨 Created function Deepgram.*.")
	if slices.Contains(strings.Split(os.Getenv("FAKE_MODAL_FAIL"), ","), app) {
		fmt.Println("Building image im-F4k3Im4g3")
		fmt.Println("")
		fmt.Println("=> Step 0: FROM registry.example.com/acme/deepgram:release-1")
		fmt.Fprintln(os.Stderr, "╭─ Error ──────────────────────────────────────────────────────────────╮")
		fmt.Fprintln(os.Stderr, "│ Image build for im-F4k3Im4g3 failed: pull access denied, repository   │")
		fmt.Fprintln(os.Stderr, "│ does not exist or may require authorization                           │")
		fmt.Fprintln(os.Stderr, "╰──────────────────────────────────────────────────────────────────────╯")
		os.Exit(1)
	}
	url, ok := endpoints()[app]
	if !ok {
		url = "https://fake--" + app + "-deepgram.us-east.modal.direct"
	}
	line := "└── 🔨 Created flash service endpoint for Deepgram => " + url
	if w, _ := strconv.Atoi(os.Getenv("FAKE_MODAL_WRAP")); w > 0 && (os.Getenv("COLUMNS") == "" || os.Getenv("FAKE_MODAL_IGNORE_COLUMNS") != "") {
		line = strings.Replace(line, "=> ", "=>\n    ", 1) // the URL does not fit: it goes on the next line
	}
	fmt.Println(line)
	fmt.Println("✓ App deployed in 3.141s! 🎉")
	fmt.Println("")
	fmt.Printf("View Deployment: https://modal.com/apps/fake/main/deployed/%s\n", app)
}

// barrier waits until N deploys have started (each leaves a file in DIR).
func barrier() {
	spec := os.Getenv("FAKE_MODAL_BARRIER")
	if spec == "" {
		return
	}
	dir, n, _ := strings.Cut(spec, ":")
	want, _ := strconv.Atoi(n)
	f, err := os.CreateTemp(dir, "started-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakemodal:", err)
		os.Exit(3)
	}
	f.Close()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if files, _ := filepath.Glob(filepath.Join(dir, "started-*")); len(files) >= want {
			return
		}
	}
	fmt.Fprintf(os.Stderr, "fakemodal: only some of %d deploys started within 20s: they do not run concurrently\n", want)
	os.Exit(3)
}

func list() {
	var apps []map[string]any
	names := make([]string, 0)
	for app := range endpoints() {
		names = append(names, app)
	}
	slices.Sort(names)
	for i, app := range names {
		apps = append(apps, map[string]any{
			"app_id": fmt.Sprintf("ap-F4k3%04d", i), "description": app, "state": "deployed",
			"tasks": "1", "created_at": "2026-11-29 03:00:00+00:00", "stopped_at": nil,
		})
	}
	// An app stopped earlier under the same name is listed too, after the
	// deployed one, as the real CLI lists every app of the environment.
	for i, app := range strings.Split(os.Getenv("FAKE_MODAL_STOPPED"), ",") {
		if app != "" {
			apps = append(apps, map[string]any{
				"app_id": fmt.Sprintf("ap-St0pp3d%04d", i), "description": app, "state": "stopped",
				"tasks": "0", "created_at": "2026-11-28 03:00:00+00:00", "stopped_at": "2026-11-28 04:00:00+00:00",
			})
		}
	}
	if apps == nil {
		apps = []map[string]any{}
	}
	out, _ := json.MarshalIndent(apps, "", "  ")
	fmt.Fprintln(os.Stderr, "Note: this is a fake modal CLI") // stderr must not spoil the JSON
	fmt.Println(string(out))
}
