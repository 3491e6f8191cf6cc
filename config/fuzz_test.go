package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// fuzzMinimal is the smallest config that loads.
const fuzzMinimal = `auth: {disable: true}
regions:
  - name: r1
    url: https://r1.example
    location: {lat: 1, lon: 2}
`

// FuzzParse checks that Parse never panics, that every error it returns
// names the file, and that a config it accepts is complete (at least one
// region) and validates again unchanged.
//
// Secrets given as {file: PATH} are read by Validate; an input naming an
// existing file that is not a small regular file (a device, a FIFO, /proc)
// is skipped, so that the fuzzer cannot make a worker read /dev/zero or
// block on /dev/stdin.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../config.yaml"); err == nil {
		f.Add(b)
	} else {
		f.Fatalf("read the shipped config: %v", err)
	}
	f.Add([]byte(fuzzMinimal))
	f.Add([]byte(""))
	f.Add([]byte(fuzzMinimal + "bogus: 1\n"))
	f.Add([]byte(fuzzMinimal + "timeouts: {connect: 5 seconds}\n"))
	f.Add([]byte(fuzzMinimal + "  - name: r1\n    url: sim://r1\n    location: {lat: 3, lon: 4}\n"))
	f.Add([]byte("auth: {disable: true}\nregions:\n\t- name: r1\n"))
	f.Add([]byte("loc: &l {lat: 1, lon: 2}\n" + fuzzMinimal))
	f.Add([]byte("auth: {disable: true}\nregions:\n  - &r {name: r1, url: 'https://r1.example', location: {lat: 1, lon: 2}}\n  - *r\n"))
	f.Add([]byte("routing: " + strings.Repeat("{a: ", 200) + strings.Repeat("}", 200) + "\n"))
	f.Add([]byte(fuzzMinimal + "limits: {max_body_bytes: 99999999999999999999GiB, max_connections: 1e400}\n"))
	f.Add([]byte(fuzzMinimal + "admin_token: {env: EARSHOT_FUZZ_UNSET}\n"))
	f.Add([]byte(fuzzMinimal + "    headers: {X-Key: {env: HOME}, Y: {file: does-not-exist}}\n"))
	f.Add([]byte("auth:\n  keys:\n    - {name: a, sha256: " + strings.Repeat("ab", 32) + ", regions: [r1]}\nregions:\n  - {name: r1, url: 'sim://r1', location: {lat: 1, lon: 2}, sim: {mode: hang}}\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		if readsSpecialFile(data) {
			t.Skip("names a file that is not small and regular")
		}
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Errorf("Parse returned a config and an error %q", err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "fuzz.yaml") {
				t.Fatalf("error does not name the file: %q", msg)
			}
			return
		}
		if c == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		if len(c.Regions) == 0 {
			t.Fatal("a config with no region was accepted")
		}
		if c.Path != "fuzz.yaml" {
			t.Errorf("Path = %q, want fuzz.yaml", c.Path)
		}
		for i := range c.Regions {
			if c.Regions[i].Base() == nil {
				t.Errorf("regions[%d] accepted without a parsed URL", i)
			}
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("an accepted config does not validate again: %v", err)
		}
	})
}

// readsSpecialFile reports whether any string in the document names an
// existing file that reading could hang on or that is large.
func readsSpecialFile(data []byte) bool {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return false // Parse fails before reading any file
	}
	bad := false
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if bad || n == nil {
			return
		}
		if n.Value != "" && specialFile(n.Value) {
			bad = true
			return
		}
		for _, c := range n.Content { // aliases are not followed: their target is walked where it is defined
			walk(c)
		}
	}
	walk(&root)
	return bad
}

func specialFile(p string) bool {
	if strings.ContainsRune(p, 0) {
		return false
	}
	fi, err := os.Stat(p)
	if err != nil {
		return false // Secret.resolve reports it
	}
	if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return true
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return true
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	for _, dir := range []string{"/proc/", "/sys/", "/dev/"} {
		if strings.HasPrefix(abs, dir) {
			return true
		}
	}
	return false
}
