package config

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
auth: {disable: true}
regions:
  - name: us-east
    url: https://example.modal.direct
    location: {lat: 39, lon: -77}
`

func TestDefaultConfigFile(t *testing.T) {
	c, err := Load("../config.yaml")
	if err != nil {
		t.Fatalf("the shipped config.yaml does not load: %v", err)
	}
	var names []string
	for _, r := range c.Regions {
		if !r.IsSim() {
			t.Errorf("region %s: the default config must use simulated regions, got %s", r.Name, r.URL)
		}
		names = append(names, r.Name)
	}
	if got, want := strings.Join(names, ","), "us-east,us-west,eu-west,ap-south"; got != want {
		t.Errorf("regions = %s, want %s", got, want)
	}
	if !strings.HasPrefix(c.Admin, "127.0.0.1:") {
		t.Errorf("admin = %q, want a loopback address", c.Admin)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("test.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, ":8080"},
		{"admin", c.Admin, "127.0.0.1:9090"},
		{"read_header", c.Timeouts.ReadHeader, 10 * time.Second},
		{"response", c.Timeouts.Response, 10 * time.Minute},
		{"handshake", c.Timeouts.Handshake, 10 * time.Second},
		{"max_body_bytes", c.Limits.MaxBodyBytes, 2 * GiB},
		{"max_message_bytes", c.Limits.MaxMessageBytes, 4 * MiB},
		{"allow_client_override", c.Routing.AllowClientOverride, false},
		{"base", c.Regions[0].Base().String(), "https://example.modal.direct"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestParseValues(t *testing.T) {
	t.Setenv("EARSHOT_TEST_KEY", "wk-123")
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("ws-456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EARSHOT_CLIENT_KEY", "ck-789")
	c, err := Parse("test.yaml", []byte(fmt.Sprintf(`
auth:
  keys:
    - {name: acme, sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824, rate: 5, max_streams: 2, regions: [eu-west]}
    - {name: internal, key: {env: EARSHOT_CLIENT_KEY}}
limits: {max_body_bytes: 10MB, max_message_bytes: 65536, max_header_bytes: 8KiB}
routing: {trusted_proxies: [10.0.0.0/8, "::1", 192.168.1.7]}
regions:
  - name: eu-west
    url: https://eu.example/base/
    location: {lat: 53.35, lon: -6.26}
    capacity: 64
    headers:
      Modal-Key: {env: EARSHOT_TEST_KEY}
      Modal-Secret: {file: %s}
      X-Team: earshot
  - name: sim-one
    url: sim://one
    location: {lat: 1.35, lon: 103.8}
    sim: {latency: 25ms, full_status: 429, mode: refuse}
`, secretFile)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxBodyBytes != 10_000_000 || c.Limits.MaxMessageBytes != 65536 || c.Limits.MaxHeaderBytes != 8192 {
		t.Errorf("limits = %+v", c.Limits)
	}
	if got := fmt.Sprint(c.Routing.Trusted()); got != "[10.0.0.0/8 ::1/128 192.168.1.7/32]" {
		t.Errorf("trusted = %s", got)
	}
	if d := c.Auth.Keys[0].Digest(); fmt.Sprintf("%x", d[:4]) != "2cf24dba" || c.Auth.Keys[0].MaxStreams != 2 {
		t.Errorf("key acme = %+v", c.Auth.Keys[0])
	}
	if d := c.Auth.Keys[1].Digest(); d != sha256.Sum256([]byte("ck-789")) {
		t.Errorf("key internal: digest is not of the environment's key")
	}
	if out := fmt.Sprintf("%+v %#v", c.Auth, c.Auth); strings.Contains(out, "ck-789") {
		t.Errorf("the auth section shows a key: %s", out)
	}
	h := c.Regions[0].UpstreamHeader()
	if h.Get("Modal-Key") != "wk-123" || h.Get("Modal-Secret") != "ws-456" || h.Get("X-Team") != "earshot" {
		t.Errorf("headers = %v", h)
	}
	if got := c.Regions[0].Base().String(); got != "https://eu.example/base" {
		t.Errorf("base = %s", got)
	}
	s := c.Regions[1].Sim
	if s.Latency != 25*time.Millisecond || s.FullStatus != 429 || s.Mode != "refuse" || s.SilenceTimeout != 10*time.Second {
		t.Errorf("sim = %+v", *s)
	}
	// A secret never prints its value, however it is formatted.
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, c.Regions[0]); strings.Contains(out, "wk-123") || strings.Contains(out, "ws-456") {
			t.Errorf("%s of a region shows a secret: %s", f, out)
		}
	}
}

// TestErrors checks that each mistake is reported with the file, line and
// field it is about.
func TestErrors(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown top-level field", "lisen: \":80\"\n" + minimal,
			`test.yaml:1: lisen: unknown field "lisen"`},
		{"unknown region field", `
regions:
  - name: a
    url: http://a
    capacty: 3
`, `test.yaml:5: regions[0].capacty: unknown field "capacty"`},
		{"bad duration", "timeouts:\n  connect: 5 seconds\n" + minimal,
			"test.yaml:2: timeouts.connect: cannot unmarshal !!str `5 seconds` into a duration"},
		{"bad size", "limits:\n  max_body_bytes: lots\n" + minimal,
			`test.yaml:2: limits.max_body_bytes: "lots" is not a size`},
		{"duplicate region", `
regions:
  - name: a
    url: http://a
    location: {lat: 1, lon: 1}
  - name: a
    url: http://b
    location: {lat: 1, lon: 1}
`, `test.yaml:6: regions[1].name: duplicate region name "a" (first defined at line 3)`},
		{"bad scheme", `
regions:
  - name: a
    url: ftp://a
`, `test.yaml:4: regions[0].url: scheme "ftp" is not one of http, https, sim`},
		{"url without host", `
regions:
  - name: a
    url: "http://"
`, `test.yaml:4: regions[0].url: "http://" has no host`},
		{"credentials in url", `
regions:
  - name: a
    url: https://user:pass@a
`, `regions[0].url: credentials in the URL are not allowed`},
		{"bad name", `
regions:
  - name: US East
    url: http://a
`, `test.yaml:3: regions[0].name: "US East" must be lower-case`},
		{"latitude", `
regions:
  - name: a
    url: http://a
    location: {lat: 91, lon: 0}
`, `test.yaml:5: regions[0].location.lat: 91 is outside -90..90`},
		{"missing env", `
regions:
  - name: a
    url: http://a
    headers: {Modal-Key: {env: EARSHOT_SURELY_UNSET}}
`, `regions[0].headers.Modal-Key: environment variable EARSHOT_SURELY_UNSET is not set`},
		{"reserved header", `
regions:
  - name: a
    url: http://a
    headers: {Host: evil.example}
`, `regions[0].headers.Host: Host is set by the router`},
		{"sim options on http", `
regions:
  - name: a
    url: http://a
    sim: {latency: 1s}
`, `test.yaml:5: regions[0].sim: only a sim:// region takes sim options`},
		{"sim mode", `
regions:
  - name: a
    url: sim://a
    sim: {mode: explode}
`, `regions[0].sim.mode: "explode" is not one of ok, refuse, hang, die`},
		{"no regions", "listen: \":80\"\n", `regions: at least one region is required`},
		{"bad trusted proxy", "routing:\n  trusted_proxies: [10.0.0.0/33]\n" + minimal,
			`test.yaml:2: routing.trusted_proxies[0]: "10.0.0.0/33" is neither a CIDR nor an address`},
		{"bad listen", "listen: 8080\n" + minimal, `test.yaml:1: listen: "8080" is not host:port`},
		{"syntax", "regions: [\n", `test.yaml:`},
		{"second document", minimal + "---\nlisten: \":81\"\n", `a second YAML document`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestSecretFromFileErrorHidesNothingSecret(t *testing.T) {
	_, err := Parse("test.yaml", []byte(`
regions:
  - name: a
    url: http://a
    headers: {Modal-Secret: {file: /nonexistent/secret}}
`))
	if err == nil || !strings.Contains(err.Error(), "read /nonexistent/secret: no such file") {
		t.Fatalf("err = %v", err)
	}
}

func TestByteSizeString(t *testing.T) {
	for in, want := range map[ByteSize]string{2 * GiB: "2GiB", 64 * KiB: "64KiB", 1000: "1000B", 3 * MiB: "3MiB"} {
		if got := in.String(); got != want {
			t.Errorf("%d.String() = %s, want %s", in, got, want)
		}
	}
}
