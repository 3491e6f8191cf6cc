package server

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/earshot/earshot/sim"
)

// corsKeyed is a config with one client key (clientKey) and two simulated
// regions, with extra (a cors section, or nothing) added.
func corsKeyed(extra string) string {
	return fmt.Sprintf("\nauth:\n  keys:\n    - {name: browser, sha256: %s}\n", digest(clientKey)) + simRegions(extra)
}

// simSawOptions reports whether a simulated region was sent an OPTIONS
// request (each logs every request it serves).
func (r *router) simSawOptions() bool {
	for _, e := range r.logs.FilterMessage("request").All() {
		if e.ContextMap()["method"] == http.MethodOptions {
			return true
		}
	}
	return false
}

// TestCORSFromConfig checks the cors section reaches the router: a
// preflight is answered by it with the configured policy and never reaches
// a region, and a request's response lets the page read it.
func TestCORSFromConfig(t *testing.T) {
	const origin = "https://app.example.com"
	r := startRouter(t, corsKeyed("cors:\n  allowed_origins: [\""+origin+"\"]\n  max_age: 1h\n"))
	req, _ := http.NewRequest(http.MethodOptions, r.url("/v1/listen"), nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization,content-type,x-deepgram-session-id,x-fern-sdk-name,x-earshot-region,x-other")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, want := range map[string]string{
		"Access-Control-Allow-Origin":  origin,
		"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
		"Access-Control-Allow-Headers": "authorization, content-type, x-deepgram-session-id, x-fern-sdk-name, x-earshot-region",
		"Access-Control-Max-Age":       "3600",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("preflight: %d, want 204 (with no key: browsers send none)", resp.StatusCode)
	}

	req, _ = http.NewRequest(http.MethodGet, r.url("/v1/models"), nil)
	req.Header.Set("Origin", origin)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	e := expectError(t, resp, http.StatusUnauthorized, "INVALID_AUTH")
	remember(e.Msg)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != origin {
		t.Errorf("401: Access-Control-Allow-Origin %q, want %q: the page could not read why", got, origin)
	}
	if got := resp.Header.Get("Access-Control-Expose-Headers"); got != "dg-request-id, X-Request-Id, X-Earshot-Region, X-Earshot-Route, Retry-After" {
		t.Errorf("401: Access-Control-Expose-Headers %q", got)
	}
	if r.simSawOptions() {
		t.Errorf("a simulated region was sent OPTIONS")
	}
}

// corsPage calls the router from another origin as a web app would: it
// fetches audio from its own origin, POSTs it to /v1/listen with a key and
// reads the transcript and an exposed header; POSTs with a wrong key and
// reads the router's error; and sends a header the policy does not allow.
// Each result is written into the page, "failed: NAME" when fetch threw.
const corsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>earshot from another origin</title></head>
<body>
<p>transcript: <span id="transcript">pending</span></p>
<p>region: <span id="region">pending</span></p>
<p>error: <span id="error">pending</span></p>
<p>unlisted header: <span id="unlisted">pending</span></p>
<script>
const router = %q, key = %q;
const show = (id, text) => { document.getElementById(id).textContent = text; };
async function attempt(id, f) {
  try { show(id, await f()); } catch (e) { show(id, "failed: " + e.name); }
}
(async () => {
  const audio = await (await fetch("/audio.wav")).arrayBuffer();
  await attempt("transcript", async () => {
    const resp = await fetch(router + "/v1/listen?model=nova-3", {method: "POST", body: audio,
      headers: {"Authorization": "Token " + key, "Content-Type": "audio/wav", "X-Deepgram-Session-Id": crypto.randomUUID()}});
    const body = await resp.json();
    show("region", resp.headers.get("X-Earshot-Region"));
    return resp.status + " " + body.results.channels[0].alternatives[0].transcript;
  });
  await attempt("error", async () => {
    const resp = await fetch(router + "/v1/listen", {method: "POST", body: audio, headers: {"Authorization": "Token sk-wrong"}});
    return resp.status + " " + (await resp.json()).err_code;
  });
  await attempt("unlisted", async () => {
    const resp = await fetch(router + "/v1/models", {headers: {"Authorization": "Token " + key, "X-Unlisted": "1"}});
    return "read " + resp.status;
  });
  document.body.dataset.done = "true";
})();
</script>
</body></html>
`

// TestCORSInBrowser drives headless Chromium on a page served from another
// loopback origin than the router's: with the page's origin allowed, its
// fetch() transcribes audio through the router, reads an exposed header
// and the router's 401 body, and a header the policy does not allow is
// refused by the browser; with CORS off, or another origin allowed, every
// call fails in the browser. No preflight reaches a region.
func TestCORSInBrowser(t *testing.T) {
	browser := chromium(t)
	wav := sim.WAV(sim.Synthesize(testWords, 16000, 2.0), 16000, 1)
	blocked := map[string]string{"transcript": "failed: TypeError", "region": "pending",
		"error": "failed: TypeError", "unlisted": "failed: TypeError"}
	for _, tc := range []struct {
		name string
		cors func(pageOrigin string) string // the cors section
		want map[string]string              // each span's text
	}{
		{
			name: "page origin allowed",
			cors: func(o string) string { return "cors: {allowed_origins: [\"" + o + "\"]}\n" },
			want: map[string]string{"transcript": "200 " + testTranscript, "region": "us-east",
				"error": "401 INVALID_AUTH", "unlisted": "failed: TypeError"},
		},
		{name: "any origin", cors: func(string) string { return "cors: {allowed_origins: [\"*\"]}\n" },
			want: map[string]string{"transcript": "200 " + testTranscript, "region": "us-east",
				"error": "401 INVALID_AUTH", "unlisted": "failed: TypeError"}},
		{name: "cors off", cors: func(string) string { return "" }, want: blocked},
		{name: "another origin allowed", cors: func(string) string {
			return "cors: {allowed_origins: [\"http://localhost:1\"]}\n"
		}, want: blocked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The page's server exists (and so its origin) before the router,
			// whose config names it; it serves once both are known.
			var html string
			page := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/":
					w.Header().Set("Content-Type", "text/html; charset=utf-8")
					_, _ = w.Write([]byte(html))
				case "/audio.wav":
					w.Header().Set("Content-Type", "audio/wav")
					_, _ = w.Write(wav)
				default:
					http.NotFound(w, r)
				}
			}))
			origin := "http://" + page.Listener.Addr().String()
			r := startRouter(t, corsKeyed(tc.cors(origin)))
			html = fmt.Sprintf(corsPage, "http://"+r.api, clientKey)
			page.Start()
			defer page.Close()
			if strings.TrimPrefix(origin, "http://") == r.api {
				t.Fatal("the page and the router share an origin")
			}

			dom := headless(t, browser, page.URL+"/", "--dump-dom")
			if !strings.Contains(dom, `data-done="true"`) {
				t.Fatalf("the page did not finish its calls:\n%s", dom)
			}
			for id, want := range tc.want {
				m := regexp.MustCompile(`<span id="` + id + `">([^<]*)</span>`).FindStringSubmatch(dom)
				if m == nil {
					t.Errorf("no #%s in the page", id)
				} else if m[1] != want {
					t.Errorf("#%s shows %q, want %q", id, m[1], want)
				}
			}
			if r.simSawOptions() {
				t.Errorf("a simulated region was sent OPTIONS: preflights are the router's")
			}
			preflights := 0
			for _, e := range r.accessLines() {
				if e.ContextMap()["method"] == http.MethodOptions {
					preflights++
				}
			}
			if tc.cors(origin) != "" && preflights == 0 {
				t.Errorf("the router logged no preflight: the browser did not ask, so the test proves nothing")
			}
		})
	}
}
