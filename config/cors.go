package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// CORS lets web pages on other origins call the API from a browser
// (Deepgram's JS SDK needs a proxy for its REST calls there). Absent, the
// router answers no preflight: OPTIONS is 405 and responses carry no CORS
// headers.
//
// CORS is not access control: it only says which pages a browser lets
// read the answers. A request from a page that is not allowed is still
// served when it needs no preflight (the browser then hides the answer);
// keys (auth) decide who may use the router.
type CORS struct {
	// AllowedOrigins are the origins whose pages may call the API, written
	// exactly as browsers send them: scheme://host[:port], lower-case, no
	// default port, no path (https://app.example.com,
	// http://localhost:3000). "*" alone allows every origin. Required.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// AllowedMethods are the methods a preflight allows. Default GET, POST,
	// OPTIONS.
	AllowedMethods []string `yaml:"allowed_methods"`
	// AllowedHeaders are the request headers a preflight allows; it
	// replaces the default, which is the headers Deepgram's JS SDK 5.x
	// sends (see defaultCORSAllowedHeaders) and X-Earshot-Region and
	// X-Request-Id, which the router reads.
	AllowedHeaders []string `yaml:"allowed_headers"`
	// ExposeHeaders are the response headers a page may read beyond the
	// safelisted ones. Default dg-request-id, X-Request-Id,
	// X-Earshot-Region, X-Earshot-Route, Retry-After.
	ExposeHeaders []string `yaml:"expose_headers"`
	// MaxAge is how long a browser may cache a preflight's answer
	// (Access-Control-Max-Age, whole seconds; browsers cap it: Chromium at
	// 2h, Firefox at 24h). 0 asks them not to cache it. Default 10m.
	MaxAge time.Duration `yaml:"max_age"`
	// AllowCredentials lets pages send cookies and TLS client certificates
	// (fetch's credentials: "include") and read the answer. Default false:
	// the router authenticates with the Authorization header, which needs
	// no credentials mode. With it, every origin must be listed: "*" is
	// refused, as browsers refuse a wildcard with credentials and echoing
	// any origin would let every site use a visitor's credentials.
	AllowCredentials bool `yaml:"allow_credentials"`
}

// defaultCORSAllowedHeaders are the request headers a preflight allows by
// default: those the JS SDK 5.x REST client sets (@deepgram/sdk 5.13:
// Authorization and x-deepgram-session-id from its client, Accept and
// Content-Type from its fetcher, Content-Disposition for a named file, the
// X-Fern-* and User-Agent defaults of every request), and the router's own
// X-Earshot-Region (choosing a region) and X-Request-Id.
var defaultCORSAllowedHeaders = []string{
	"Authorization", "Content-Type", "Accept", "Content-Disposition",
	"X-Deepgram-Session-Id",
	"X-Fern-Language", "X-Fern-SDK-Name", "X-Fern-SDK-Version", "X-Fern-Runtime", "X-Fern-Runtime-Version",
	"User-Agent",
	"X-Earshot-Region", "X-Request-Id",
}

// defaultCORSExposeHeaders are the router's response headers a page may
// read by default: the request ids, where the request was served and why,
// and how long to wait when refused.
var defaultCORSExposeHeaders = []string{"dg-request-id", "X-Request-Id", "X-Earshot-Region", "X-Earshot-Route", "Retry-After"}

// defaultCORSMethods are the methods a preflight allows by default.
var defaultCORSMethods = []string{"GET", "POST", "OPTIONS"}

func (c *Config) corsDefaults() {
	o := c.CORS
	if o == nil {
		return
	}
	if !c.has("cors.allowed_methods") {
		o.AllowedMethods = slices.Clone(defaultCORSMethods)
	}
	if !c.has("cors.allowed_headers") {
		o.AllowedHeaders = slices.Clone(defaultCORSAllowedHeaders)
	}
	if !c.has("cors.expose_headers") {
		o.ExposeHeaders = slices.Clone(defaultCORSExposeHeaders)
	}
	if !c.has("cors.max_age") {
		o.MaxAge = 10 * time.Minute
	}
}

func (c *Config) validateCORS() error {
	o := c.CORS
	if o == nil {
		if c.has("cors") { // "cors:" with nothing under it
			return c.errorf("cors", "empty: list allowed_origins, or remove the section")
		}
		return nil
	}
	if len(o.AllowedOrigins) == 0 {
		return c.errorf("cors.allowed_origins", `list the origins allowed (https://app.example.com), or "*" for any; or remove the cors section`)
	}
	seen := map[string]int{}
	for i, origin := range o.AllowedOrigins {
		field := fmt.Sprintf("cors.allowed_origins[%d]", i)
		if origin == "*" {
			if len(o.AllowedOrigins) > 1 {
				return c.errorf(field, `"*" allows every origin: list no others with it`)
			}
			if o.AllowCredentials {
				return c.errorf(field, `"*" cannot be used with allow_credentials: true (every site could use a visitor's credentials); list the origins`)
			}
			continue
		}
		if err := checkOrigin(origin); err != nil {
			return c.errorf(field, "%v", err)
		}
		if first, dup := seen[origin]; dup {
			return c.errorf(field, "%q is listed twice (first at line %d)", origin,
				lineOf(c.root, fmt.Sprintf("cors.allowed_origins[%d]", first)))
		}
		seen[origin] = i
	}
	for i, m := range o.AllowedMethods {
		if !isToken(m) {
			return c.errorf(fmt.Sprintf("cors.allowed_methods[%d]", i), "%q is not an HTTP method", m)
		}
		o.AllowedMethods[i] = strings.ToUpper(m)
	}
	for _, list := range []struct {
		field string
		names []string
	}{{"cors.allowed_headers", o.AllowedHeaders}, {"cors.expose_headers", o.ExposeHeaders}} {
		for i, h := range list.names {
			field := fmt.Sprintf("%s[%d]", list.field, i)
			if h == "*" {
				return c.errorf(field, `"*" is not supported: list the headers`)
			}
			if !isToken(h) {
				return c.errorf(field, "%q is not a header name", h)
			}
		}
	}
	if o.MaxAge < 0 {
		return c.errorf("cors.max_age", "must not be negative")
	}
	if o.MaxAge%time.Second != 0 {
		return c.errorf("cors.max_age", "%v is not whole seconds (Access-Control-Max-Age counts seconds)", o.MaxAge)
	}
	return nil
}

// checkOrigin accepts an origin serialised as browsers send it in the
// Origin header, since origins are compared exactly: a lower-case scheme
// and host, a port only when it is not the scheme's default, nothing else.
func checkOrigin(origin string) error {
	scheme, rest, ok := strings.Cut(origin, "://")
	if !ok || scheme == "" || rest == "" {
		if origin == "null" {
			return fmt.Errorf(`"null" is the origin of sandboxed frames and local files, which any page can produce; it cannot be allowed`)
		}
		return fmt.Errorf("%q is not an origin: want scheme://host[:port], e.g. https://app.example.com", origin)
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		return fmt.Errorf("%q has a path: an origin is scheme://host[:port] only (%s)", origin, scheme+"://"+rest[:i])
	}
	if strings.Contains(rest, "@") {
		return fmt.Errorf("%q has user information: an origin is scheme://host[:port] only", origin)
	}
	if strings.Contains(rest, "*") {
		return fmt.Errorf(`%q: wildcards within an origin are not supported; list each origin, or "*" alone for any`, origin)
	}
	if !isScheme(scheme) {
		return fmt.Errorf("%q: %q is not a URL scheme", origin, scheme)
	}
	host, port := rest, ""
	if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || p != strconv.Itoa(n) {
			return fmt.Errorf("%q: port %q is not 1..65535", origin, p)
		}
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	} else if strings.HasPrefix(rest, "[") && strings.HasSuffix(rest, "]") {
		host = rest
	} else if strings.Contains(rest, ":") {
		return fmt.Errorf("%q: %q is not host[:port]", origin, rest)
	}
	if host == "" || host == "[]" {
		return fmt.Errorf("%q has no host", origin)
	}
	if !strings.HasPrefix(host, "[") && strings.ContainsFunc(host, notHostChar) {
		return fmt.Errorf("%q: %q is not a host name (write an international name as browsers send it: xn--...)", origin, host)
	}
	canon := strings.ToLower(scheme) + "://" + strings.ToLower(host)
	if port != "" && !(scheme == "http" && port == "80" || scheme == "https" && port == "443") {
		canon += ":" + port
	}
	if canon != origin {
		return fmt.Errorf("%q: browsers send it as %s (lower-case, no default port), and origins are compared exactly", origin, canon)
	}
	return nil
}

func notHostChar(r rune) bool {
	return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '-')
}

// isScheme reports whether s is an RFC 3986 scheme.
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i] | 0x20
		switch {
		case 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= s[i] && s[i] <= '9' || s[i] == '+' || s[i] == '-' || s[i] == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// isToken reports whether s is an RFC 9110 token (a method or header name).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}
