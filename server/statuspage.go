package server

import (
	"embed"
	"net/http"
	"path"
)

// The status page: static files that draw /status in the browser. They
// hold no data, so they are served without the admin token; the page sends
// the token it is given (in the URL's fragment) when it fetches /status.
//
//go:embed statuspage
var statusPage embed.FS

var statusPageTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// statusPageCSP lets the page load only its own files and fetch only its
// own origin: no inline script, no third party.
const statusPageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// serveStatusPage serves GET / and GET /assets/{file}.
func serveStatusPage(w http.ResponseWriter, r *http.Request) {
	name := "index.html"
	if r.URL.Path != "/" {
		name = r.PathValue("file")
	}
	body, err := statusPage.ReadFile("statuspage/" + name)
	if err != nil || path.Base(name) != name || name == "index.html" && r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", statusPageTypes[path.Ext(name)])
	h.Set("Content-Security-Policy", statusPageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	_, _ = w.Write(body)
}

// isStatusPage says whether an admin path is one of the page's files.
func isStatusPage(p string) bool {
	dir, _ := path.Split(p)
	return p == "/" || dir == "/assets/"
}
