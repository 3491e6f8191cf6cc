package routing

import (
	"net/http"
	"strconv"
	"strings"
)

// edgeHeaders names one CDN's geolocation headers.
type edgeHeaders struct {
	name              string
	source            Source
	country, lat, lon string // canonical header names
}

var edges = []edgeHeaders{
	{"cloudflare", SourceCloudflare, "Cf-Ipcountry", "Cf-Iplatitude", "Cf-Iplongitude"},
	{"cloudfront", SourceCloudFront, "Cloudfront-Viewer-Country", "Cloudfront-Viewer-Latitude", "Cloudfront-Viewer-Longitude"},
	{"vercel", SourceVercel, "X-Vercel-Ip-Country", "X-Vercel-Ip-Latitude", "X-Vercel-Ip-Longitude"},
}

// EdgeProviders names the CDNs whose headers the router can read.
func EdgeProviders() []string {
	names := make([]string, len(edges))
	for i, e := range edges {
		names[i] = e.name
	}
	return names
}

// locate reads the CDN's headers. Cloudflare's XX (unknown) and T1 (Tor)
// are not countries, in any case; coordinates count only as a valid pair.
func (e *edgeHeaders) locate(h http.Header) (Place, bool) {
	p := Place{Source: e.source}
	if c := headerValue(h, e.country); len(c) == 2 {
		if c = strings.ToUpper(c); c != "XX" && c != "T1" {
			p.Country = c
		}
	}
	if lat, ok := parseDegrees(headerValue(h, e.lat), 90); ok {
		if lon, ok := parseDegrees(headerValue(h, e.lon), 180); ok {
			p.Lat, p.Lon, p.Located, p.Precise = lat, lon, true, true
		}
	}
	p.fill()
	// A country the table cannot place (XK, say) with no coordinates is no
	// location: let the next source try.
	return p, p.Located
}

// headerValue is h.Get for a canonical key, without canonicalising.
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// parseDegrees parses a coordinate within ±limit. An absent header is not
// parsed: strconv's error for it would allocate on every request.
func parseDegrees(s string, limit float64) (float64, bool) {
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil && v >= -limit && v <= limit
}
