package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"time"

	"github.com/earshot/earshot/routing"
)

// Routing controls how a request's region is chosen.
type Routing struct {
	// AllowClientOverride lets a client pick its region with the request
	// header X-Earshot-Region (still subject to residency). Default false.
	// Useful for tests and debugging; leave it off where clients must not
	// choose.
	AllowClientOverride bool `yaml:"allow_client_override"`
	// TrustedProxies are the CIDRs (or single addresses) of load balancers in
	// front of the router. Only from these peers are X-Forwarded-For,
	// Forwarded, X-Forwarded-Proto and the edge headers believed; the client
	// is the right-most address in X-Forwarded-For that is not trusted.
	// Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// EdgeHeaders names the CDNs whose geolocation headers are believed when
	// they come from a trusted proxy: cloudflare (CF-IPCountry,
	// CF-IPLatitude, CF-IPLongitude), cloudfront (CloudFront-Viewer-*),
	// vercel (X-Vercel-IP-*). Default none.
	EdgeHeaders []string `yaml:"edge_headers"`
	// GeoIP is the IP geolocation database, if any.
	GeoIP GeoIP `yaml:"geoip"`
	// Fallback is used for a client that cannot be located. Default: the
	// first region.
	Fallback Fallback `yaml:"fallback"`
	// Prefer overrides geography for clients of some countries or
	// continents: the listed regions come first, in order, and the rest
	// follow by distance. Keys are ISO 3166-1 alpha-2 country codes, and
	// continent codes AF, AN, AS, EU, NA, OC, SA.
	Prefer Prefer `yaml:"prefer"`
	// Residency rules confine the clients located in some countries or
	// continents to some regions. A client under a rule is never served
	// elsewhere: when its regions are full or down it gets 503.
	Residency []Residency `yaml:"residency"`
	// LatencyAllowance is how much slower than light in fibre over its
	// distance from the router a region may answer before it is ranked down.
	// Default 150ms.
	LatencyAllowance time.Duration `yaml:"latency_allowance"`
	// SlowdownThreshold is how much slower than its usual (its fastest
	// probe round trip of the last 10 minutes) a region may answer its
	// probes before it is ranked down: each millisecond beyond counts as
	// 100 km of extra distance, and the route reason says "latency".
	// Default 100ms.
	SlowdownThreshold time.Duration `yaml:"slowdown_threshold"`
	// Location is where this router runs, for judging regions' latency.
	// Optional: without it, a region is judged against the allowance alone.
	Location *Location `yaml:"location"`

	trusted []netip.Prefix
}

// GeoIP configures the geolocation database.
type GeoIP struct {
	// Database is the path of a MaxMind GeoIP2/GeoLite2 City or Country
	// database, or a DB-IP Lite database in the ip-location-db mmdb layout.
	// The file is reloaded when it is replaced. Default none.
	Database string `yaml:"database"`
}

// Fallback says where to send clients that cannot be located: a region, or
// a location from which regions are ranked by distance. At most one is set.
type Fallback struct {
	Region   string    `yaml:"region"`
	Location *Location `yaml:"location"`
}

// Prefer is the table of per-country and per-continent region preferences.
type Prefer struct {
	Countries  map[string][]string `yaml:"countries"`
	Continents map[string][]string `yaml:"continents"`
}

// Residency is one data-residency rule.
type Residency struct {
	// Name identifies the rule in logs and errors.
	Name string `yaml:"name"`
	// Countries are ISO 3166-1 alpha-2 codes; EU stands for the European
	// Union's member states and EEA for the European Economic Area's.
	Countries []string `yaml:"countries"`
	// Continents are continent codes: AF, AN, AS, EU, NA, OC, SA.
	Continents []string `yaml:"continents"`
	// Regions are the regions the rule's clients may use.
	Regions []string `yaml:"regions"`
}

// Trusted reports the parsed TrustedProxies.
func (r *Routing) Trusted() []netip.Prefix { return r.trusted }

var codeRE = regexp.MustCompile(`^[A-Z]{2}$`)

func (c *Config) validateRouting() error {
	rt := &c.Routing
	rt.trusted = rt.trusted[:0]
	for i, s := range rt.TrustedProxies {
		p, err := parsePrefix(s)
		if err != nil {
			return c.errorf(fmt.Sprintf("routing.trusted_proxies[%d]", i), "%v", err)
		}
		rt.trusted = append(rt.trusted, p)
	}
	for i, e := range rt.EdgeHeaders {
		if !slices.Contains(routing.EdgeProviders(), e) {
			return c.errorf(fmt.Sprintf("routing.edge_headers[%d]", i), "%q is not one of %v", e, routing.EdgeProviders())
		}
	}
	if len(rt.EdgeHeaders) > 0 && len(rt.TrustedProxies) == 0 {
		return c.errorf("routing.edge_headers", "edge headers are believed only from trusted proxies; set routing.trusted_proxies")
	}
	if rt.LatencyAllowance < 0 {
		return c.errorf("routing.latency_allowance", "must not be negative")
	}
	if rt.SlowdownThreshold < 0 {
		return c.errorf("routing.slowdown_threshold", "must not be negative")
	}
	if rt.Location != nil {
		if err := rt.Location.validate(); err != nil {
			return c.wrap("routing.location", err)
		}
	}
	f := rt.Fallback
	if f.Region != "" && f.Location != nil {
		return c.errorf("routing.fallback", "give a region or a location, not both")
	}
	if f.Region != "" && !c.hasRegion(f.Region) {
		return c.errorf("routing.fallback.region", "%q is not a configured region", f.Region)
	}
	if f.Location != nil {
		if err := f.Location.validate(); err != nil {
			return c.wrap("routing.fallback.location", err)
		}
	}
	for code, regions := range rt.Prefer.Countries {
		field := "routing.prefer.countries." + code
		if !codeRE.MatchString(code) || !routing.KnownCountry(code) {
			return c.errorf(field, "%q is not an ISO 3166-1 alpha-2 country code (upper case)", code)
		}
		if err := c.checkRegions(field, regions); err != nil {
			return err
		}
	}
	for code, regions := range rt.Prefer.Continents {
		field := "routing.prefer.continents." + code
		if !slices.Contains(routing.Continents(), code) {
			return c.errorf(field, "%q is not a continent code (%v)", code, routing.Continents())
		}
		if err := c.checkRegions(field, regions); err != nil {
			return err
		}
	}
	for i := range rt.Residency {
		r := &rt.Residency[i]
		field := fmt.Sprintf("routing.residency[%d]", i)
		if r.Name == "" {
			return c.errorf(field+".name", "a rule needs a name")
		}
		if len(r.Countries) == 0 && len(r.Continents) == 0 {
			return c.errorf(field, "rule %q names no countries or continents", r.Name)
		}
		for j, code := range r.Countries {
			if code != "EU" && code != "EEA" && (!codeRE.MatchString(code) || !routing.KnownCountry(code)) {
				return c.errorf(fmt.Sprintf("%s.countries[%d]", field, j),
					"%q is not an ISO 3166-1 alpha-2 country code (upper case), EU or EEA", code)
			}
		}
		for j, code := range r.Continents {
			if !slices.Contains(routing.Continents(), code) {
				return c.errorf(fmt.Sprintf("%s.continents[%d]", field, j), "%q is not a continent code (%v)", code, routing.Continents())
			}
		}
		if len(r.Regions) == 0 {
			return c.errorf(field+".regions", "rule %q allows no region", r.Name)
		}
		if err := c.checkRegions(field+".regions", r.Regions); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) hasRegion(name string) bool {
	return slices.ContainsFunc(c.Regions, func(r Region) bool { return r.Name == name })
}

func (c *Config) checkRegions(field string, names []string) error {
	for i, n := range names {
		if !c.hasRegion(n) {
			return c.errorf(fmt.Sprintf("%s[%d]", field, i), "%q is not a configured region", n)
		}
		if slices.Index(names, n) != i {
			return c.errorf(fmt.Sprintf("%s[%d]", field, i), "%q is listed twice", n)
		}
	}
	return nil
}

func (l *Location) validate() error {
	if l.Lat < -90 || l.Lat > 90 {
		return ferr("lat", "%v is outside -90..90", l.Lat)
	}
	if l.Lon < -180 || l.Lon > 180 {
		return ferr("lon", "%v is outside -180..180", l.Lon)
	}
	return nil
}
