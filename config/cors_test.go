package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCORSOffUnlessConfigured(t *testing.T) {
	c, err := Parse("test.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.CORS != nil {
		t.Errorf("cors = %+v without a cors section, want nil (off)", c.CORS)
	}
}

func TestCORSDefaults(t *testing.T) {
	c, err := Parse("test.yaml", []byte("cors: {allowed_origins: [\"*\"]}\n"+minimal))
	if err != nil {
		t.Fatal(err)
	}
	o := c.CORS
	if o == nil {
		t.Fatal("cors is nil")
	}
	for _, ck := range []struct {
		name      string
		got, want []string
	}{
		{"allowed_origins", o.AllowedOrigins, []string{"*"}},
		{"allowed_methods", o.AllowedMethods, []string{"GET", "POST", "OPTIONS"}},
		{"expose_headers", o.ExposeHeaders, []string{"dg-request-id", "X-Request-Id", "X-Earshot-Region", "X-Earshot-Route", "Retry-After"}},
	} {
		if !slices.Equal(ck.got, ck.want) {
			t.Errorf("%s = %q, want %q", ck.name, ck.got, ck.want)
		}
	}
	// What the JS SDK 5.x REST client sends, and the router's own.
	for _, h := range []string{"Authorization", "Content-Type", "X-Deepgram-Session-Id", "X-Fern-SDK-Name", "X-Earshot-Region"} {
		if !slices.Contains(o.AllowedHeaders, h) {
			t.Errorf("allowed_headers %q lacks %s", o.AllowedHeaders, h)
		}
	}
	if o.MaxAge != 10*time.Minute || o.AllowCredentials {
		t.Errorf("max_age %v, allow_credentials %v; want 10m, false", o.MaxAge, o.AllowCredentials)
	}
}

func TestCORSValues(t *testing.T) {
	c, err := Parse("test.yaml", []byte(`
cors:
  allowed_origins: [https://app.example.com, "http://localhost:3000", "http://[::1]:8000", capacitor://localhost]
  allowed_methods: [post]
  allowed_headers: []
  expose_headers: [X-Request-Id]
  max_age: 0s
  allow_credentials: true
`+minimal))
	if err != nil {
		t.Fatal(err)
	}
	o := c.CORS
	if len(o.AllowedOrigins) != 4 || !slices.Equal(o.AllowedMethods, []string{"POST"}) || len(o.AllowedHeaders) != 0 ||
		!slices.Equal(o.ExposeHeaders, []string{"X-Request-Id"}) || o.MaxAge != 0 || !o.AllowCredentials {
		t.Errorf("cors = %+v: an explicit empty list, 0s and the values given must be kept", *o)
	}
}

// TestCORSErrors checks that each mistake names the file, line and field.
func TestCORSErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want string
	}{
		{"unknown field", "cors:\n  allowed_origin:\n    - \"*\"\n", `test.yaml:2: cors.allowed_origin: unknown field "allowed_origin"`},
		{"empty section", "cors:\n", `test.yaml:1: cors: empty: list allowed_origins`},
		{"no origins", "cors: {max_age: 1m}\n", `test.yaml:1: cors.allowed_origins: list the origins allowed`},
		{"credentials with any origin", "cors:\n  allow_credentials: true\n  allowed_origins:\n    - \"*\"\n",
			`test.yaml:4: cors.allowed_origins[0]: "*" cannot be used with allow_credentials: true`},
		{"star among others", "cors:\n  allowed_origins: [https://a.example, \"*\"]\n",
			`test.yaml:2: cors.allowed_origins[1]: "*" allows every origin: list no others with it`},
		{"path", "cors:\n  allowed_origins:\n    - https://app.example.com/\n",
			`test.yaml:3: cors.allowed_origins[0]: "https://app.example.com/" has a path: an origin is scheme://host[:port] only (https://app.example.com)`},
		{"longer path", "cors: {allowed_origins: [\"https://app.example.com/listen?x=1\"]}\n", `has a path`},
		{"no scheme", "cors: {allowed_origins: [app.example.com]}\n", `"app.example.com" is not an origin: want scheme://host[:port]`},
		{"null", "cors: {allowed_origins: [\"null\"]}\n", `"null" is the origin of sandboxed frames`},
		{"wildcard subdomain", "cors: {allowed_origins: [\"https://*.example.com\"]}\n", `wildcards within an origin are not supported`},
		{"upper case", "cors: {allowed_origins: [https://App.Example.com]}\n", `browsers send it as https://app.example.com`},
		{"default port", "cors: {allowed_origins: [\"https://app.example.com:443\"]}\n", `browsers send it as https://app.example.com (lower-case, no default port)`},
		{"bad port", "cors: {allowed_origins: [\"http://localhost:99999\"]}\n", `port "99999" is not 1..65535`},
		{"user info", "cors: {allowed_origins: [\"https://me@app.example.com\"]}\n", `has user information`},
		{"bad host", "cors: {allowed_origins: [\"https://app_example.com\"]}\n", `is not a host name`},
		{"duplicate", "cors:\n  allowed_origins:\n    - https://a.example\n    - https://a.example\n",
			`test.yaml:4: cors.allowed_origins[1]: "https://a.example" is listed twice (first at line 3)`},
		{"bad method", "cors: {allowed_origins: [\"*\"], allowed_methods: [\"GET POST\"]}\n", `cors.allowed_methods[0]: "GET POST" is not an HTTP method`},
		{"bad header", "cors:\n  allowed_origins: [\"*\"]\n  allowed_headers: [Authorization, \"X-Bad Header\"]\n",
			`test.yaml:3: cors.allowed_headers[1]: "X-Bad Header" is not a header name`},
		{"wildcard header", "cors: {allowed_origins: [\"*\"], expose_headers: [\"*\"]}\n", `cors.expose_headers[0]: "*" is not supported: list the headers`},
		{"negative max_age", "cors:\n  allowed_origins: [\"*\"]\n  max_age: -1s\n", `test.yaml:3: cors.max_age: must not be negative`},
		{"fractional max_age", "cors:\n  allowed_origins: [\"*\"]\n  max_age: 1500ms\n", `test.yaml:3: cors.max_age: 1.5s is not whole seconds`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.yaml+minimal))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDefaultConfigFileAllowsAnyOrigin(t *testing.T) {
	c, err := Load("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.CORS == nil || !slices.Equal(c.CORS.AllowedOrigins, []string{"*"}) || c.CORS.AllowCredentials {
		t.Errorf("cors = %+v: the demo lets pages on any origin call it, without credentials", c.CORS)
	}
}
