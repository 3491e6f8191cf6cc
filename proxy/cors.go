package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// CORSOptions are a cross-origin policy, as config validated it; New
// applies no defaults of its own.
type CORSOptions struct {
	// AllowedOrigins are exact origins (scheme://host[:port]), or "*"
	// for any; "*" is ignored with AllowCredentials.
	AllowedOrigins   []string
	AllowedMethods   []string
	AllowedHeaders   []string
	ExposeHeaders    []string
	MaxAge           time.Duration // whole seconds; 0: browsers must not cache a preflight
	AllowCredentials bool
}

// CORS lets pages on other origins call the API from a browser. It is
// immutable, made once per snapshot.
//
// A preflight (OPTIONS with Origin and Access-Control-Request-Method) on
// an API path is answered by the router itself and never forwarded: 204
// with the allowed methods, and of the headers asked for, only those
// allowed (a browser then refuses a request whose headers are not all
// allowed); from an origin not allowed, 403 without CORS headers. It needs
// no key: browsers send none with it. Any other request goes on as without
// CORS, and its response (the region's, or the router's own error) lets an
// allowed origin read it. Responses carry Vary: Origin, since what they
// say depends on it.
type CORS struct {
	anyOrigin   bool // "*" without credentials: Access-Control-Allow-Origin: *
	origins     map[string]bool
	headers     map[string]bool // lower-case names
	methods     string          // Access-Control-Allow-Methods
	expose      string          // Access-Control-Expose-Headers
	maxAge      string          // Access-Control-Max-Age
	credentials bool
}

// NewCORS compiles a policy.
func NewCORS(o CORSOptions) *CORS {
	c := &CORS{
		origins:     make(map[string]bool, len(o.AllowedOrigins)),
		headers:     make(map[string]bool, len(o.AllowedHeaders)),
		methods:     strings.Join(o.AllowedMethods, ", "),
		expose:      strings.Join(o.ExposeHeaders, ", "),
		maxAge:      strconv.FormatInt(int64(o.MaxAge/time.Second), 10),
		credentials: o.AllowCredentials,
	}
	for _, origin := range o.AllowedOrigins {
		if origin == "*" {
			// Never with credentials: a wildcard would hand every site a
			// visitor's credentials (browsers refuse "*" with them, and
			// echoing any origin would get round that).
			c.anyOrigin = !o.AllowCredentials
			continue
		}
		c.origins[origin] = true
	}
	for _, name := range o.AllowedHeaders {
		c.headers[strings.ToLower(name)] = true
	}
	return c
}

// codeOriginNotAllowed answers a preflight from an origin not allowed.
const codeOriginNotAllowed = "ORIGIN_NOT_ALLOWED"

// allowed reports whether pages of origin may read the API's answers.
func (c *CORS) allowed(origin string) bool {
	return origin != "" && (c.anyOrigin || c.origins[origin])
}

// isPreflight reports whether r is a CORS preflight request.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" &&
		r.Header.Get("Access-Control-Request-Method") != ""
}

// cors applies the snapshot's policy to the response to r. It answers a
// preflight on an API path (known) itself, and reports whether it has
// answered; any other request gets the headers that let an allowed origin
// read its response, whoever writes it.
func (h *Handler) cors(w http.ResponseWriter, r *http.Request, x *exchange, known bool) (answered bool) {
	c := x.snap.CORS
	if c == nil {
		return false
	}
	hdr := w.Header()
	origin := r.Header.Get("Origin")
	if !isPreflight(r) {
		hdr.Add("Vary", "Origin")
		if c.allowed(origin) {
			c.allowOrigin(hdr, origin)
			if c.expose != "" {
				hdr.Set("Access-Control-Expose-Headers", c.expose)
			}
		}
		return false
	}
	hdr.Add("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
	if !known {
		return false // a 404 follows, which fails the preflight
	}
	if !c.allowed(origin) {
		h.reject(w, r, x, &apiError{http.StatusForbidden, codeOriginNotAllowed,
			"Origin " + quoteOrigin(origin) + " may not call this API from a browser."})
		return true
	}
	c.allowOrigin(hdr, origin)
	hdr.Set("Access-Control-Allow-Methods", c.methods)
	if allow := c.allowHeaders(r.Header.Values("Access-Control-Request-Headers")); allow != "" {
		hdr.Set("Access-Control-Allow-Headers", allow)
	}
	hdr.Set("Access-Control-Max-Age", c.maxAge)
	x.status = http.StatusNoContent
	w.WriteHeader(http.StatusNoContent)
	h.logAccess(r, x, nil)
	return true
}

func (c *CORS) allowOrigin(hdr http.Header, origin string) {
	if c.anyOrigin {
		hdr.Set("Access-Control-Allow-Origin", "*")
		return
	}
	hdr.Set("Access-Control-Allow-Origin", origin)
	if c.credentials {
		hdr.Set("Access-Control-Allow-Credentials", "true")
	}
}

// allowHeaders returns, of the headers a preflight asks for
// (Access-Control-Request-Headers: comma-separated names), those allowed.
// A name left out makes the browser refuse the request, which is the point.
func (c *CORS) allowHeaders(requested []string) string {
	var b strings.Builder
	for _, line := range requested {
		for name := range strings.SplitSeq(line, ",") {
			name = strings.ToLower(strings.Trim(name, " \t"))
			if !c.headers[name] {
				continue
			}
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(name)
		}
	}
	return b.String()
}

// stripCORS removes a region's own CORS headers from its response: with a
// policy, the router's alone apply.
func stripCORS(h http.Header) {
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			delete(h, k)
		}
	}
}

// quoteOrigin keeps an error message readable and short whatever the
// client sent.
func quoteOrigin(o string) string {
	if len(o) > 64 || !isPrintableASCII(o) {
		return "(this page's)"
	}
	return o
}
