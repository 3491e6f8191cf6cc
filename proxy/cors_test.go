package proxy

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/earshot/earshot/auth"
)

const (
	appOrigin   = "https://app.example.com"
	otherOrigin = "https://evil.example.net"
	corsKey     = "sk-cors-test-key"
)

// corsRegion is a region that records the methods it is sent, and answers
// with CORS headers of its own that the router must not pass on.
type corsRegion struct {
	*httptest.Server
	mu      sync.Mutex
	methods []string
}

func newCORSRegion(t *testing.T) *corsRegion {
	reg := &corsRegion{}
	reg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.mu.Lock()
		reg.methods = append(reg.methods, r.Method+" "+r.URL.Path)
		reg.mu.Unlock()
		w.Header().Set("Access-Control-Allow-Origin", otherOrigin)
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"models":[]}`))
	}))
	t.Cleanup(reg.Close)
	return reg
}

func (reg *corsRegion) seen() []string {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return slices.Clone(reg.methods)
}

// corsProxy serves a Handler with policy (nil: none) in front of reg. With
// keyed, it wants corsKey, good for one request a minute.
func corsProxy(t *testing.T, reg *corsRegion, policy *CORSOptions, keyed bool) (*Handler, *httptest.Server) {
	t.Helper()
	h, srv := newTestProxy(t, reg.URL, 0, func(o *Options) { o.MaxBodyBytes = 16 })
	snap := *h.Snapshot()
	if policy != nil {
		snap.CORS = NewCORS(*policy)
	}
	if keyed {
		key := auth.NewKey(auth.KeyOptions{Name: "browser", Digest: auth.Digest(corsKey), Rate: 1.0 / 60, Burst: 1})
		snap.Auth = auth.New([]*auth.Key{key}, false)
	}
	h.Swap(&snap)
	return h, srv
}

func appPolicy() *CORSOptions {
	return &CORSOptions{
		AllowedOrigins: []string{appOrigin, "http://localhost:3000"},
		AllowedMethods: []string{"GET", "POST", "OPTIONS"},
		AllowedHeaders: []string{"Authorization", "Content-Type", "X-Deepgram-Session-Id", "X-Earshot-Region"},
		ExposeHeaders:  []string{"dg-request-id", "X-Request-Id", "X-Earshot-Region", "X-Earshot-Route", "Retry-After"},
		MaxAge:         10 * time.Minute,
	}
}

func anyPolicy() *CORSOptions {
	p := appPolicy()
	p.AllowedOrigins = []string{"*"}
	return p
}

func credentialsPolicy() *CORSOptions {
	p := appPolicy()
	p.AllowCredentials = true
	// config refuses "*" with credentials; the proxy ignores it if given.
	p.AllowedOrigins = append(p.AllowedOrigins, "*")
	return p
}

// corsHeaders are a response's Access-Control-* headers, one line each.
func corsHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			out[k] = strings.Join(v, " | ")
		}
	}
	return out
}

func do(t *testing.T, method, url string, header map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		req.Body = http.NoBody
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestCORSPreflight(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy *CORSOptions
		keyed  bool
		path   string
		header map[string]string
		status int
		cors   map[string]string // the Access-Control-* headers, exactly
	}{
		{
			name: "allowed origin", policy: appPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST",
				"Access-Control-Request-Headers": "authorization,content-type,x-deepgram-session-id"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin":  appOrigin,
				"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
				"Access-Control-Allow-Headers": "authorization, content-type, x-deepgram-session-id",
				"Access-Control-Max-Age":       "600",
			},
		},
		{
			name: "needs no key", policy: appPolicy(), keyed: true, path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST",
				"Access-Control-Request-Headers": "authorization"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin": appOrigin, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
				"Access-Control-Allow-Headers": "authorization", "Access-Control-Max-Age": "600",
			},
		},
		{
			name: "a header not allowed is left out", policy: appPolicy(), path: "/v1/models",
			header: map[string]string{"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET",
				"Access-Control-Request-Headers": "authorization, x-secret-thing"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin": "http://localhost:3000", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
				"Access-Control-Allow-Headers": "authorization", "Access-Control-Max-Age": "600",
			},
		},
		{
			name: "no headers asked for", policy: appPolicy(), path: "/v1/read",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin": appOrigin, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
				"Access-Control-Max-Age": "600",
			},
		},
		{
			name: "any origin", policy: anyPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": otherOrigin, "Access-Control-Request-Method": "POST",
				"Access-Control-Request-Headers": "x-earshot-region"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
				"Access-Control-Allow-Headers": "x-earshot-region", "Access-Control-Max-Age": "600",
			},
		},
		{
			name: "credentials echo the origin", policy: credentialsPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST"},
			status: 204,
			cors: map[string]string{
				"Access-Control-Allow-Origin": appOrigin, "Access-Control-Allow-Credentials": "true",
				"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "600",
			},
		},
		{
			name: "credentials never wildcard", policy: credentialsPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": otherOrigin, "Access-Control-Request-Method": "POST"},
			status: 403, cors: map[string]string{},
		},
		{
			name: "origin not allowed", policy: appPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": otherOrigin, "Access-Control-Request-Method": "POST",
				"Access-Control-Request-Headers": "authorization"},
			status: 403, cors: map[string]string{},
		},
		{
			name: "origin null", policy: appPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": "null", "Access-Control-Request-Method": "POST"},
			status: 403, cors: map[string]string{},
		},
		{
			name: "not an API path", policy: appPolicy(), path: "/v1/projects",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "GET"},
			status: 404, cors: map[string]string{},
		},
		{
			name: "without CORS, OPTIONS is 405", policy: nil, path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST"},
			status: 405, cors: map[string]string{},
		},
		{
			// Not a preflight: the router's 405, readable by the page.
			name: "OPTIONS without a requested method", policy: appPolicy(), path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin},
			status: 405,
			cors: map[string]string{
				"Access-Control-Allow-Origin":   appOrigin,
				"Access-Control-Expose-Headers": "dg-request-id, X-Request-Id, X-Earshot-Region, X-Earshot-Route, Retry-After",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newCORSRegion(t)
			_, srv := corsProxy(t, reg, tc.policy, tc.keyed)
			resp, body := do(t, http.MethodOptions, srv.URL+tc.path, tc.header, "")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, tc.status, body)
			}
			if got := corsHeaders(resp.Header); !maps.Equal(got, tc.cors) {
				t.Errorf("CORS headers:\n  %v\nwant\n  %v", got, tc.cors)
			}
			vary := strings.Join(resp.Header.Values("Vary"), ", ")
			switch {
			case tc.policy == nil:
				if vary != "" {
					t.Errorf("Vary %q without CORS, want none", vary)
				}
			case tc.header["Access-Control-Request-Method"] != "":
				if vary != "Origin, Access-Control-Request-Method, Access-Control-Request-Headers" {
					t.Errorf("Vary %q on a preflight", vary)
				}
			default:
				if vary != "Origin" {
					t.Errorf("Vary %q, want Origin", vary)
				}
			}
			if tc.status == 204 && body != "" {
				t.Errorf("a 204 with a body: %q", body)
			}
			if tc.status >= 400 {
				var e errorBody
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Code == "" || e.RequestID == "" {
					t.Errorf("%d body %q is not Deepgram's error shape", tc.status, body)
				}
				if tc.status == 403 && e.Code != codeOriginNotAllowed {
					t.Errorf("403 err_code %q, want %s", e.Code, codeOriginNotAllowed)
				}
			}
			if seen := reg.seen(); len(seen) != 0 {
				t.Errorf("the region was sent %v: a preflight is never forwarded", seen)
			}
		})
	}
}

// TestCORSActualRequests checks that the responses to an allowed origin's
// requests let it read them, the router's own errors included, and that
// the region's CORS headers never reach the client.
func TestCORSActualRequests(t *testing.T) {
	expose := "dg-request-id, X-Request-Id, X-Earshot-Region, X-Earshot-Route, Retry-After"
	allowedApp := map[string]string{"Access-Control-Allow-Origin": appOrigin, "Access-Control-Expose-Headers": expose}
	withKey := map[string]string{"Origin": appOrigin, "Authorization": "Token " + corsKey}
	for _, tc := range []struct {
		name    string
		policy  *CORSOptions
		keyed   bool
		drained bool
		method  string
		path    string
		header  map[string]string
		body    string
		times   int // the request is sent this many times; the last answer counts (default 1)
		status  int
		cors    map[string]string
	}{
		{name: "allowed origin", policy: appPolicy(), method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": appOrigin}, status: 200, cors: allowedApp},
		{name: "POST from an allowed origin", policy: appPolicy(), method: "POST", path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin, "Content-Type": "application/octet-stream"}, body: "RIFF", status: 200, cors: allowedApp},
		{name: "any origin", policy: anyPolicy(), method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": otherOrigin}, status: 200,
			cors: map[string]string{"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": expose}},
		{name: "credentials", policy: credentialsPolicy(), method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": appOrigin}, status: 200,
			cors: map[string]string{"Access-Control-Allow-Origin": appOrigin, "Access-Control-Allow-Credentials": "true",
				"Access-Control-Expose-Headers": expose}},
		// CORS is not access control: the request is served, and the
		// browser keeps the answer from the page.
		{name: "origin not allowed", policy: appPolicy(), method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": otherOrigin}, status: 200, cors: map[string]string{}},
		{name: "credentials with an unlisted origin", policy: credentialsPolicy(), method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": otherOrigin}, status: 200, cors: map[string]string{}},
		{name: "no origin", policy: appPolicy(), method: "GET", path: "/v1/models", status: 200, cors: map[string]string{}},
		{name: "without CORS the region's headers pass", policy: nil, method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": appOrigin}, status: 200,
			cors: map[string]string{"Access-Control-Allow-Origin": otherOrigin, "Access-Control-Allow-Credentials": "true"}},

		{name: "401", policy: appPolicy(), keyed: true, method: "POST", path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin}, body: "RIFF", status: 401, cors: allowedApp},
		{name: "404", policy: appPolicy(), method: "GET", path: "/v1/nothing",
			header: map[string]string{"Origin": appOrigin}, status: 404, cors: allowedApp},
		{name: "405", policy: appPolicy(), method: "PUT", path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin}, status: 405, cors: allowedApp},
		{name: "413", policy: appPolicy(), method: "POST", path: "/v1/listen",
			header: map[string]string{"Origin": appOrigin}, body: strings.Repeat("x", 17), status: 413, cors: allowedApp},
		{name: "429", policy: appPolicy(), keyed: true, method: "GET", path: "/v1/models",
			header: withKey, times: 2, status: 429, cors: allowedApp},
		{name: "503", policy: appPolicy(), drained: true, method: "GET", path: "/v1/models",
			header: map[string]string{"Origin": appOrigin}, status: 503, cors: allowedApp},
		{name: "keyed 200", policy: appPolicy(), keyed: true, method: "GET", path: "/v1/models",
			header: withKey, status: 200, cors: allowedApp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newCORSRegion(t)
			h, srv := corsProxy(t, reg, tc.policy, tc.keyed)
			if tc.drained {
				h.Snapshot().Upstreams["r"].Health.SetDrained(true)
			}
			var resp *http.Response
			var body string
			for range max(tc.times, 1) {
				resp, body = do(t, tc.method, srv.URL+tc.path, tc.header, tc.body)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, tc.status, body)
			}
			if got := corsHeaders(resp.Header); !maps.Equal(got, tc.cors) {
				t.Errorf("CORS headers:\n  %v\nwant\n  %v", got, tc.cors)
			}
			wantVary := "Origin"
			if tc.policy == nil {
				wantVary = ""
			}
			if vary := strings.Join(resp.Header.Values("Vary"), ", "); vary != wantVary {
				t.Errorf("Vary %q, want %q", vary, wantVary)
			}
			if tc.status >= 400 {
				var e errorBody
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Code == "" {
					t.Errorf("%d body %q is not Deepgram's error shape", tc.status, body)
				}
			}
			if tc.status == 200 && resp.Header.Get("X-Earshot-Region") == "" {
				t.Errorf("no X-Earshot-Region on a served request")
			}
		})
	}
}

// TestCORSReload checks that the policy is the snapshot's: a reload that
// turns CORS on or off applies to the next request.
func TestCORSReload(t *testing.T) {
	reg := newCORSRegion(t)
	h, srv := corsProxy(t, reg, nil, false)
	preflight := map[string]string{"Origin": appOrigin, "Access-Control-Request-Method": "POST"}
	if resp, _ := do(t, http.MethodOptions, srv.URL+"/v1/listen", preflight, ""); resp.StatusCode != 405 {
		t.Fatalf("without CORS: %d, want 405", resp.StatusCode)
	}
	snap := *h.Snapshot()
	snap.CORS = NewCORS(*appPolicy())
	h.Swap(&snap)
	if resp, _ := do(t, http.MethodOptions, srv.URL+"/v1/listen", preflight, ""); resp.StatusCode != 204 {
		t.Fatalf("with CORS: %d, want 204", resp.StatusCode)
	}
	if seen := reg.seen(); len(seen) != 0 {
		t.Errorf("the region was sent %v", seen)
	}
}

func TestCORSAllowHeaders(t *testing.T) {
	c := NewCORS(CORSOptions{AllowedHeaders: []string{"Authorization", "X-Deepgram-Session-Id"}})
	for _, tc := range []struct {
		requested []string
		want      string
	}{
		{nil, ""},
		{[]string{"authorization"}, "authorization"},
		{[]string{"Authorization , X-Deepgram-Session-Id"}, "authorization, x-deepgram-session-id"},
		{[]string{"authorization", "x-deepgram-session-id,x-other"}, "authorization, x-deepgram-session-id"},
		{[]string{"x-other,,\t"}, ""},
	} {
		if got := c.allowHeaders(tc.requested); got != tc.want {
			t.Errorf("allowHeaders(%q) = %q, want %q", tc.requested, got, tc.want)
		}
	}
}
