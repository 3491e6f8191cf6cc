package config

import (
	"strings"
	"testing"
)

const twoRegions = `
auth: {disable: true}
regions:
  - name: us-east
    url: sim://us-east
    location: {lat: 39, lon: -77}
  - name: eu-west
    url: sim://eu-west
    location: {lat: 53.35, lon: -6.26}
`

func TestRoutingParses(t *testing.T) {
	c, err := Parse("test.yaml", []byte(`
routing:
  trusted_proxies: [10.0.0.0/8]
  edge_headers: [cloudflare, vercel]
  geoip: {database: /var/lib/GeoIP/GeoLite2-City.mmdb}
  fallback: {location: {lat: 50, lon: 8}}
  location: {lat: 40, lon: -74}
  prefer:
    countries: {IS: [us-east, eu-west]}
    continents: {SA: [us-east]}
  residency:
    - {name: gdpr, countries: [EU, CH], regions: [eu-west]}
`+twoRegions))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Routing
	if r.LatencyAllowance.Milliseconds() != 150 {
		t.Errorf("latency_allowance default = %v, want 150ms", r.LatencyAllowance)
	}
	if r.Fallback.Location == nil || r.Fallback.Location.Lat != 50 || r.Location == nil || r.Location.Lon != -74 {
		t.Errorf("fallback/location = %+v %+v", r.Fallback, r.Location)
	}
	if got := r.Prefer.Countries["IS"]; len(got) != 2 || got[1] != "eu-west" {
		t.Errorf("prefer.countries.IS = %v", got)
	}
	if len(r.Residency) != 1 || r.Residency[0].Countries[1] != "CH" {
		t.Errorf("residency = %+v", r.Residency)
	}
}

func TestRoutingErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"edge without trusted proxies", "routing: {edge_headers: [cloudflare]}\n",
			"test.yaml:1: routing.edge_headers: edge headers are believed only from trusted proxies"},
		{"unknown edge", "routing:\n  trusted_proxies: [10.0.0.1]\n  edge_headers: [akamai]\n",
			`test.yaml:3: routing.edge_headers[0]: "akamai" is not one of [cloudflare cloudfront vercel]`},
		{"fallback both", "routing:\n  fallback: {region: us-east, location: {lat: 1, lon: 1}}\n",
			"test.yaml:2: routing.fallback: give a region or a location, not both"},
		{"fallback unknown region", "routing:\n  fallback: {region: mars}\n",
			`routing.fallback.region: "mars" is not a configured region`},
		{"bad latitude", "routing:\n  location: {lat: 91, lon: 0}\n",
			"routing.location.lat: 91 is outside -90..90"},
		{"lower-case country", "routing:\n  prefer:\n    countries: {de: [eu-west]}\n",
			`test.yaml:3: routing.prefer.countries.de: "de" is not an ISO 3166-1 alpha-2 country code`},
		{"unassigned country", "routing:\n  prefer:\n    countries: {ZZ: [eu-west]}\n",
			`routing.prefer.countries.ZZ: "ZZ" is not an ISO 3166-1 alpha-2 country code`},
		{"bad continent", "routing:\n  prefer:\n    continents: {EUR: [eu-west]}\n",
			`routing.prefer.continents.EUR: "EUR" is not a continent code`},
		{"prefer unknown region", "routing:\n  prefer:\n    continents:\n      EU: [eu-west, eu-central]\n",
			`test.yaml:4: routing.prefer.continents.EU[1]: "eu-central" is not a configured region`},
		{"residency no regions", "routing:\n  residency:\n    - {name: gdpr, countries: [EU]}\n",
			`routing.residency[0].regions: rule "gdpr" allows no region`},
		{"residency no places", "routing:\n  residency:\n    - {name: gdpr, regions: [eu-west]}\n",
			`routing.residency[0]: rule "gdpr" names no countries or continents`},
		{"residency bad country", "routing:\n  residency:\n    - name: gdpr\n      countries: [EU, France]\n      regions: [eu-west]\n",
			`test.yaml:4: routing.residency[0].countries[1]: "France" is not an ISO 3166-1 alpha-2 country code`},
		{"residency unknown region", "routing:\n  residency:\n    - {name: x, continents: [AS], regions: [ap-south]}\n",
			`routing.residency[0].regions[0]: "ap-south" is not a configured region`},
		{"region without location", "regions:\n  - name: a\n    url: sim://a\n",
			"test.yaml:2: regions[0].location: is required"},
		{"no keys", "regions:\n  - {name: a, url: sim://a, location: {lat: 1, lon: 1}}\n",
			"auth: no client keys: add auth.keys, or set auth.disable: true"},
		{"literal key", "auth:\n  keys:\n    - {name: a, key: hunter2}\n",
			"test.yaml:3: auth.keys[0].key: a key written in the file is refused"},
		{"bad digest", "auth:\n  keys:\n    - {name: a, sha256: abc}\n",
			"test.yaml:3: auth.keys[0].sha256: want 64 hex digits"},
		{"both digest and key", "auth:\n  keys:\n    - {name: a, sha256: abc, key: {env: X}}\n",
			"auth.keys[0]: give exactly one of sha256 or key"},
		{"missing key variable", "auth:\n  keys:\n    - {name: a, key: {env: EARSHOT_NOT_SET}}\n",
			"auth.keys[0].key: environment variable EARSHOT_NOT_SET is not set"},
		{"key region", "auth:\n  keys:\n    - {name: a, sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824, regions: [mars]}\n",
			`auth.keys[0].regions[0]: "mars" is not a configured region`},
		{"tls half", "tls: {cert: /etc/cert.pem}\n", "tls: give both cert and key, or neither"},
		{"short admin token", "admin_token: {env: EARSHOT_SHORT}\n", "admin_token: environment variable EARSHOT_SHORT is not set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := tc.yaml
			switch {
			case strings.HasPrefix(y, "auth:"):
				y += strings.Replace(twoRegions, "auth: {disable: true}\n", "", 1)
			case !strings.HasPrefix(y, "regions:"):
				y += twoRegions
			}
			_, err := Parse("test.yaml", []byte(y))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}
