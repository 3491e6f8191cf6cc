package routing

import (
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// ipTrusted are the proxies the client-address tests believe.
var ipTrusted = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fd00::/8"),
	netip.MustParsePrefix("fe80::/10"),
}

// newIPRequest is a request from remote carrying the header lines hdr, each
// value a separate line, added in order.
func newIPRequest(remote string, hdr map[string][]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/listen", nil)
	r.RemoteAddr = remote
	for k, vs := range hdr {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	return r
}

func TestLocateClientIP(t *testing.T) {
	const (
		xff = "X-Forwarded-For"
		fwd = "Forwarded"
	)
	tests := []struct {
		name    string
		remote  string
		hdr     map[string][]string
		peer    string // "" for an invalid address
		trusted bool
		ip      string // "" for an invalid address
	}{
		// Untrusted peers: their headers are not believed.
		{name: "untrusted peer, no headers", remote: "203.0.113.5:1234",
			peer: "203.0.113.5", ip: "203.0.113.5"},
		{name: "untrusted peer's XFF ignored", remote: "203.0.113.5:1234",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "203.0.113.5", ip: "203.0.113.5"},
		{name: "untrusted peer's Forwarded ignored", remote: "203.0.113.5:1234",
			hdr:  map[string][]string{fwd: {"for=198.51.100.7"}},
			peer: "203.0.113.5", ip: "203.0.113.5"},
		{name: "untrusted IPv6 peer's XFF ignored", remote: "[2001:db8::5]:1234",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "2001:db8::5", ip: "2001:db8::5"},

		// Trusted peers and X-Forwarded-For.
		{name: "trusted peer, no headers", remote: "10.0.0.1:443",
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.1"},
		{name: "trusted peer, one hop", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "right-most untrusted hop wins over a spoofed left one", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"1.1.1.1, 198.51.100.7, 10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "several XFF lines, client in the first", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"1.1.1.1, 198.51.100.7", "10.0.0.3,10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "several XFF lines, client in the last", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7", "203.0.113.9 , 10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "203.0.113.9"},
		{name: "spaces around hops", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"  198.51.100.8  ,   10.0.0.2  ,192.168.4.4"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.8"},
		{name: "all hops trusted: left-most", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"10.0.0.5, 10.0.0.4, 192.168.1.1"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.5"},
		{name: "all hops trusted over several lines: left-most", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"10.0.0.5", "10.0.0.4", "192.168.1.1"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.5"},
		{name: "garbage hop stops the walk at the last good hop", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, garbage, 10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.2"},
		{name: "garbage right-most hop: the peer", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, not-an-ip"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.1"},
		{name: "empty hop stops the walk", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, , 10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.2"},
		{name: "garbage in an earlier line stops the walk", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, 300.1.1.1", "10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.2"},
		{name: "garbage left of the client does not matter", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"garbage, 198.51.100.7, 10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},

		// Forwarded (RFC 7239).
		{name: "Forwarded: right-most untrusted, quoted IPv6 with port", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {`for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"`}},
			peer: "10.0.0.1", trusted: true, ip: "2001:db8:cafe::17"},
		{name: "Forwarded: trusted right-most hop skipped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {`for=192.0.2.60;proto=http, for="[fd00::17]:4711"`}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.60"},
		{name: "Forwarded preferred over XFF", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {"for=192.0.2.60"}, xff: {"198.51.100.7"}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.60"},
		{name: "Forwarded: case-insensitive For=, quoted", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {`For="192.0.2.61"`}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.61"},
		{name: "Forwarded: upper-case FOR= after other parameters", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {"proto=https; by=10.0.0.1; FOR=192.0.2.62"}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.62"},
		{name: "Forwarded: several lines", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {"for=192.0.2.63", "for=10.0.0.7;proto=https"}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.63"},
		{name: "Forwarded: all trusted, left-most", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {`for=10.0.0.9;proto=https, for="[fd00::1]:80"`}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.9"},
		{name: "Forwarded: obfuscated for= stops the walk", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {"for=192.0.2.60, for=unknown"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.1"},
		{name: "Forwarded: element without for= stops the walk", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {"for=192.0.2.60, proto=https;by=10.0.0.1"}},
			peer: "10.0.0.1", trusted: true, ip: "10.0.0.1"},
		{name: "Forwarded: IPv4 with port, quoted", remote: "10.0.0.1:443",
			hdr:  map[string][]string{fwd: {`for="192.0.2.64:8080"`}},
			peer: "10.0.0.1", trusted: true, ip: "192.0.2.64"},

		// Address families, mapping, zones and ports.
		{name: "IPv6 peer and hop", remote: "[fd00::1]:443",
			hdr:  map[string][]string{xff: {"2001:db8::7, fd00::2"}},
			peer: "fd00::1", trusted: true, ip: "2001:db8::7"},
		{name: "IPv4-mapped peer is unmapped and trusted", remote: "[::ffff:10.0.0.1]:443",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "IPv4-mapped untrusted peer is unmapped", remote: "[::ffff:203.0.113.9]:1234",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "203.0.113.9", ip: "203.0.113.9"},
		{name: "IPv4-mapped hop is unmapped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"::ffff:203.0.113.9"}},
			peer: "10.0.0.1", trusted: true, ip: "203.0.113.9"},
		{name: "IPv4-mapped trusted hop is unmapped, then skipped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, ::ffff:10.0.0.2"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "peer's IPv6 zone dropped", remote: "[fe80::1%eth0]:443",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "fe80::1", trusted: true, ip: "198.51.100.7"},
		{name: "hop's IPv6 zone dropped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"2001:db8::9%eth1"}},
			peer: "10.0.0.1", trusted: true, ip: "2001:db8::9"},
		{name: "trusted zoned hop skipped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7, fe80::2%eth1"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "hop's bracketed zone and port dropped", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"[2001:db8::a%eth1]:8080"}},
			peer: "10.0.0.1", trusted: true, ip: "2001:db8::a"},
		{name: "IPv4 hop with port", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"198.51.100.7:5555, 10.0.0.2:80"}},
			peer: "10.0.0.1", trusted: true, ip: "198.51.100.7"},
		{name: "IPv6 hop with port", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"[2001:db8::7]:5555"}},
			peer: "10.0.0.1", trusted: true, ip: "2001:db8::7"},
		{name: "bracketed IPv6 hop without port", remote: "10.0.0.1:443",
			hdr:  map[string][]string{xff: {"[2001:db8::8]"}},
			peer: "10.0.0.1", trusted: true, ip: "2001:db8::8"},
		{name: "unparsable RemoteAddr: no peer, nothing believed", remote: "not-an-address",
			hdr:  map[string][]string{xff: {"198.51.100.7"}},
			peer: "", ip: ""},
	}
	loc := NewLocator(ipTrusted, nil, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := loc.Locate(newIPRequest(tt.remote, tt.hdr))
			if got := addrString(c.Peer); got != tt.peer {
				t.Errorf("Peer = %q, want %q", got, tt.peer)
			}
			if c.Trusted != tt.trusted {
				t.Errorf("Trusted = %v, want %v", c.Trusted, tt.trusted)
			}
			if got := addrString(c.IP); got != tt.ip {
				t.Errorf("IP = %q, want %q", got, tt.ip)
			}
			if c.IP.IsValid() && (c.IP.Zone() != "" || c.IP.Is4In6()) {
				t.Errorf("IP %v keeps a zone or an IPv4 mapping", c.IP)
			}
			if c.Place != (Place{}) {
				t.Errorf("Place = %+v without a database or edge headers, want zero", c.Place)
			}
		})
	}
}

// addrString is ip's text, "" for the zero Addr.
func addrString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

// TestClientIPNoTrustedPrefixes: with nothing trusted, the forwarding
// headers mean nothing even to clientIP itself.
func TestClientIPNoTrustedPrefixes(t *testing.T) {
	peer := netip.MustParseAddr("10.0.0.1")
	h := http.Header{"X-Forwarded-For": {"198.51.100.7, 10.0.0.2"}}
	// The walk itself stops at the first untrusted hop: the right-most one.
	if got := clientIP(peer, h, nil); got != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("clientIP = %v, want 10.0.0.2", got)
	}
	// And Locate never walks for an untrusted peer.
	c := NewLocator(nil, nil, nil).Locate(newIPRequest("10.0.0.1:443", h))
	if c.Trusted || c.IP != peer {
		t.Errorf("Locate = %+v, want the untrusted peer 10.0.0.1", c)
	}
}

func TestLocateEdgeHeaders(t *testing.T) {
	de, _ := lookupCountry("DE")
	jp, _ := lookupCountry("JP")
	if de.continent != "EU" || jp.continent != "AS" {
		t.Fatalf("country table: DE %+v, JP %+v", de, jp)
	}
	const trustedPeer, untrustedPeer = "10.0.0.1:443", "203.0.113.5:1234"
	all := []string{"cloudflare", "cloudfront", "vercel"}
	tests := []struct {
		name   string
		edges  []string
		remote string
		hdr    map[string][]string
		want   Place
	}{
		{name: "cloudflare country and coordinates", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}, "CF-IPLatitude": {"50.11"}, "CF-IPLongitude": {"8.68"}},
			want: Place{Country: "DE", Continent: "EU", Lat: 50.11, Lon: 8.68, Located: true, Precise: true, Source: SourceCloudflare}},
		{name: "cloudflare country only: the country's point and continent", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}},
			want: Place{Country: "DE", Continent: "EU", Lat: float64(de.lat), Lon: float64(de.lon), Located: true, Source: SourceCloudflare}},
		{name: "lower-case country is upper-cased", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {" jp "}},
			want: Place{Country: "JP", Continent: "AS", Lat: float64(jp.lat), Lon: float64(jp.lon), Located: true, Source: SourceCloudflare}},
		{name: "XX is not a country", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"XX"}},
			want: Place{}},
		{name: "T1 is not a country", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"T1"}},
			want: Place{}},
		{name: "XX with coordinates: placed, no country", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"XX"}, "CF-IPLatitude": {"-33.87"}, "CF-IPLongitude": {"151.21"}},
			want: Place{Lat: -33.87, Lon: 151.21, Located: true, Precise: true, Source: SourceCloudflare}},
		{name: "coordinates without a country", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"1.5"}, "CF-IPLongitude": {"-2.25"}},
			want: Place{Lat: 1.5, Lon: -2.25, Located: true, Precise: true, Source: SourceCloudflare}},
		{name: "latitude alone is not a location", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"50.11"}},
			want: Place{}},
		{name: "longitude alone is not a location", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLongitude": {"8.68"}},
			want: Place{}},
		{name: "latitude out of range", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"90.5"}, "CF-IPLongitude": {"8.68"}},
			want: Place{}},
		{name: "longitude out of range", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"50"}, "CF-IPLongitude": {"-180.5"}},
			want: Place{}},
		{name: "NaN coordinates", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"NaN"}, "CF-IPLongitude": {"NaN"}},
			want: Place{}},
		{name: "unparsable longitude", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPLatitude": {"50"}, "CF-IPLongitude": {"east"}},
			want: Place{}},
		{name: "country with half a pair: the country's point", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}, "CF-IPLatitude": {"1"}},
			want: Place{Country: "DE", Continent: "EU", Lat: float64(de.lat), Lon: float64(de.lon), Located: true, Source: SourceCloudflare}},
		{name: "untrusted peer's edge headers ignored", edges: []string{"cloudflare"}, remote: untrustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}, "CF-IPLatitude": {"50.11"}, "CF-IPLongitude": {"8.68"}},
			want: Place{}},
		{name: "cloudfront", edges: []string{"cloudfront"}, remote: trustedPeer,
			hdr: map[string][]string{"CloudFront-Viewer-Country": {"JP"},
				"CloudFront-Viewer-Latitude": {"35.68"}, "CloudFront-Viewer-Longitude": {"139.69"}},
			want: Place{Country: "JP", Continent: "AS", Lat: 35.68, Lon: 139.69, Located: true, Precise: true, Source: SourceCloudFront}},
		{name: "vercel", edges: []string{"vercel"}, remote: trustedPeer,
			hdr: map[string][]string{"X-Vercel-IP-Country": {"US"},
				"X-Vercel-IP-Latitude": {"37.77"}, "X-Vercel-IP-Longitude": {"-122.42"}},
			want: Place{Country: "US", Continent: "NA", Lat: 37.77, Lon: -122.42, Located: true, Precise: true, Source: SourceVercel}},
		{name: "headers of a CDN not enabled are ignored", edges: []string{"cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CloudFront-Viewer-Country": {"JP"}, "X-Vercel-IP-Country": {"US"}},
			want: Place{}},
		{name: "no edges enabled", edges: nil, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}},
			want: Place{}},
		{name: "first enabled CDN with an answer wins", edges: []string{"vercel", "cloudflare"}, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"DE"}, "X-Vercel-IP-Country": {"JP"}},
			want: Place{Country: "JP", Continent: "AS", Lat: float64(jp.lat), Lon: float64(jp.lon), Located: true, Source: SourceVercel}},
		{name: "an enabled CDN without an answer is skipped", edges: all, remote: trustedPeer,
			hdr:  map[string][]string{"CF-IPCountry": {"XX"}, "X-Vercel-IP-Country": {"JP"}},
			want: Place{Country: "JP", Continent: "AS", Lat: float64(jp.lat), Lon: float64(jp.lon), Located: true, Source: SourceVercel}},
		{name: "no database, no headers: not located", edges: all, remote: trustedPeer,
			want: Place{Located: false}},
		{name: "no database, untrusted, no headers: not located", edges: all, remote: untrustedPeer,
			want: Place{Located: false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewLocator(ipTrusted, tt.edges, nil).Locate(newIPRequest(tt.remote, tt.hdr))
			if c.Place != tt.want {
				t.Errorf("Place = %+v, want %+v", c.Place, tt.want)
			}
			if got := c.Place.Source.String(); got != tt.want.Source.String() {
				t.Errorf("Source = %s, want %s", got, tt.want.Source)
			}
		})
	}
}

// TestLocateCountryPoints checks that a country-only answer lands where the
// country is, independently of the table's own numbers.
func TestLocateCountryPoints(t *testing.T) {
	loc := NewLocator(ipTrusted, []string{"cloudflare"}, nil)
	for _, tt := range []struct {
		country, continent string
		lat, lon           float64
	}{
		{"DE", "EU", 51.5, 10.5},
		{"JP", "AS", 35.69, 139.75},
		{"US", "NA", 39.76, -98.5},
		{"BR", "SA", -10, -55},
		{"KE", "AF", 1, 38},
	} {
		c := loc.Locate(newIPRequest("10.0.0.1:443", map[string][]string{"CF-IPCountry": {tt.country}}))
		p := c.Place
		if p.Country != tt.country || p.Continent != tt.continent || !p.Located || p.Source != SourceCloudflare ||
			math.Abs(p.Lat-tt.lat) > 0.01 || math.Abs(p.Lon-tt.lon) > 0.01 {
			t.Errorf("%s: Place = %+v, want %s at (%v, %v)", tt.country, p, tt.continent, tt.lat, tt.lon)
		}
	}
}

func TestSourceString(t *testing.T) {
	for s, want := range map[Source]string{
		SourceNone: "none", SourceCloudflare: "cloudflare", SourceCloudFront: "cloudfront",
		SourceVercel: "vercel", SourceGeoIP: "geoip", Source(99): "unknown",
	} {
		if got := s.String(); got != want {
			t.Errorf("Source(%d).String() = %q, want %q", s, got, want)
		}
	}
}

func TestEdgeProviders(t *testing.T) {
	got := EdgeProviders()
	want := []string{"cloudflare", "cloudfront", "vercel"}
	if len(got) != len(want) {
		t.Fatalf("EdgeProviders() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("EdgeProviders() = %v, want %v", got, want)
		}
	}
	got[0] = "mutated"
	if EdgeProviders()[0] != "cloudflare" {
		t.Error("EdgeProviders returns shared storage")
	}
}

// TestLocateDoesNotAllocate: finding the client is on every request's path.
func TestLocateDoesNotAllocate(t *testing.T) {
	loc := NewLocator(ipTrusted, []string{"cloudflare", "vercel"}, nil)
	for _, tt := range []struct {
		name   string
		remote string
		hdr    map[string][]string
	}{
		{"untrusted peer", "203.0.113.5:1234", map[string][]string{"X-Forwarded-For": {"198.51.100.7"}}},
		{"X-Forwarded-For", "10.0.0.1:443", map[string][]string{"X-Forwarded-For": {"1.1.1.1, 198.51.100.7, 10.0.0.2"}}},
		// Bare addresses only: a hop with a port or brackets is parsed with
		// netip.ParseAddr first, whose error allocates.
		{"Forwarded", "10.0.0.1:443", map[string][]string{"Forwarded": {`for=192.0.2.60;proto=http, For="2001:db8:cafe::17", for=10.0.0.2`}}},
		{"edge country only", "10.0.0.1:443", map[string][]string{"CF-IPCountry": {"DE"}}},
		{"edge country and coordinates", "10.0.0.1:443",
			map[string][]string{"CF-IPCountry": {"DE"}, "CF-IPLatitude": {"50.11"}, "CF-IPLongitude": {"8.68"}}},
		{"no edge headers", "10.0.0.1:443", nil},
	} {
		r := newIPRequest(tt.remote, tt.hdr)
		var c Client
		allocs := testing.AllocsPerRun(100, func() { c = loc.Locate(r) })
		if !c.IP.IsValid() {
			t.Fatalf("%s: no client: %+v", tt.name, c)
		}
		if allocs != 0 {
			t.Errorf("%s: Locate allocates %v times per call", tt.name, allocs)
		}
	}
}
