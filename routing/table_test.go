package routing

import (
	"errors"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// stubLoad is a region's load as the tests set it.
type stubLoad struct {
	inFlight, capacity int
	latency, slowdown  time.Duration
}

func (l *stubLoad) InFlight() int           { return l.inFlight }
func (l *stubLoad) Capacity() int           { return l.capacity }
func (l *stubLoad) Latency() time.Duration  { return l.latency }
func (l *stubLoad) Slowdown() time.Duration { return l.slowdown }

// fourRegions returns fresh regions, in configured order, and their loads.
func fourRegions() ([]*Region, map[string]*stubLoad) {
	loads := map[string]*stubLoad{}
	mk := func(name string, lat, lon float64) *Region {
		l := &stubLoad{capacity: 100}
		loads[name] = l
		return &Region{Name: name, Location: Location{lat, lon}, Load: l}
	}
	return []*Region{
		mk("us-east", 39.04, -77.49),
		mk("us-west", 45.60, -121.18),
		mk("eu-west", 53.35, -6.26),
		mk("ap-south", 19.08, 72.88),
	}, loads
}

func mustTable(t *testing.T, o Options) (*Table, map[string]*stubLoad) {
	t.Helper()
	regions, loads := fourRegions()
	tab, err := NewTable(regions, o)
	if err != nil {
		t.Fatalf("NewTable: %v", err)
	}
	return tab, loads
}

func regionNames(rs []*Region) []string {
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.Name
	}
	return names
}

// at is a located place with no country.
func at(lat, lon float64) Place { return Place{Lat: lat, Lon: lon, Located: true} }

// in is a located place in a country, at the country's point.
func in(t *testing.T, country string) Place {
	t.Helper()
	ci, ok := lookupCountry(country)
	if !ok {
		t.Fatalf("unknown country %q", country)
	}
	return Place{Country: country, Continent: ci.continent, Lat: float64(ci.lat), Lon: float64(ci.lon), Located: true}
}

func selectNames(t *testing.T, tab *Table, q Query) (Decision, []string) {
	t.Helper()
	d, err := tab.Select(nil, q)
	if err != nil {
		t.Fatalf("Select(%+v): %v", q, err)
	}
	return d, regionNames(d.Candidates)
}

func TestDistanceKm(t *testing.T) {
	half := math.Pi * earthRadiusKm
	for _, tt := range []struct {
		name                   string
		lat1, lon1, lat2, lon2 float64
		want, tolerance        float64
	}{
		{"same point", 50, 8, 50, 8, 0, 1e-9},
		{"antipodes on the equator", 0, 0, 0, 180, half, 1e-6},
		{"equator to pole", 0, 0, 90, 0, half / 2, 1e-6},
		{"across the antimeridian", 0, 179.5, 0, -179.5, half / 180, 1e-6},
		{"London to Paris", 51.5074, -0.1278, 48.8566, 2.3522, 344, 2},
		{"New York to Los Angeles", 40.7128, -74.0060, 34.0522, -118.2437, 3936, 10},
	} {
		got := distanceKm(tt.lat1, tt.lon1, tt.lat2, tt.lon2)
		if math.Abs(got-tt.want) > tt.tolerance {
			t.Errorf("%s: distanceKm = %.3f, want %.3f ± %v", tt.name, got, tt.want, tt.tolerance)
		}
		if back := distanceKm(tt.lat2, tt.lon2, tt.lat1, tt.lon1); math.Abs(back-got) > 1e-9 {
			t.Errorf("%s: not symmetric: %v and %v", tt.name, got, back)
		}
	}
}

func TestSelectNearest(t *testing.T) {
	tab, _ := mustTable(t, Options{})
	tests := []struct {
		name     string
		lat, lon float64
		want     []string // the full ranking, checked by hand against the distances below
	}{
		// Frankfurt: eu-west 1088 km, us-east 6549, ap-south 6564, us-west 8328.
		{"Frankfurt", 50.11, 8.68, []string{"eu-west", "us-east", "ap-south", "us-west"}},
		// Tokyo: ap-south 6723, us-west 7888, eu-west 9585, us-east 10872.
		{"Tokyo", 35.68, 139.69, []string{"ap-south", "us-west", "eu-west", "us-east"}},
		// São Paulo: us-east 7664, eu-west 9393, us-west 10739, ap-south 13774.
		{"São Paulo", -23.55, -46.63, []string{"us-east", "eu-west", "us-west", "ap-south"}},
		// San Francisco: us-west 877, us-east 3877, eu-west 8177, ap-south 13494.
		{"San Francisco", 37.77, -122.42, []string{"us-west", "us-east", "eu-west", "ap-south"}},
		// Sydney: ap-south 10157, us-west 12449, us-east 15674, eu-west 17215.
		{"Sydney", -33.87, 151.21, []string{"ap-south", "us-west", "us-east", "eu-west"}},
		// Nairobi is nearer Mumbai than Dublin: ap-south 4542, eu-west 7261,
		// us-east 12176, us-west 14639.
		{"Nairobi", -1.29, 36.82, []string{"ap-south", "eu-west", "us-east", "us-west"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, got := selectNames(t, tab, Query{Place: at(tt.lat, tt.lon)})
			if d.Reason != Nearest || d.Rule != "" {
				t.Errorf("Reason %q, Rule %q; want nearest and no rule", d.Reason, d.Rule)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ranking %v, want %v", got, tt.want)
			}
			// The hand-written ranking agrees with the distances.
			rs := slices.Clone(tab.Regions())
			dist := func(r *Region) float64 { return distanceKm(tt.lat, tt.lon, r.Location.Lat, r.Location.Lon) }
			sort.SliceStable(rs, func(i, j int) bool { return dist(rs[i]) < dist(rs[j]) })
			if byDist := regionNames(rs); !slices.Equal(byDist, tt.want) {
				t.Errorf("by distanceKm %v, want %v", byDist, tt.want)
			}
		})
	}
}

func TestSelectFallback(t *testing.T) {
	unknown := Query{Place: Place{}}
	t.Run("default: the first region", func(t *testing.T) {
		tab, _ := mustTable(t, Options{})
		d, got := selectNames(t, tab, unknown)
		// From us-east: us-east 0, us-west 3619, eu-west 5462, ap-south 12855.
		if want := []string{"us-east", "us-west", "eu-west", "ap-south"}; !slices.Equal(got, want) || d.Reason != Fallback {
			t.Errorf("got %v, %q; want %v, fallback", got, d.Reason, want)
		}
	})
	t.Run("FallbackRegion", func(t *testing.T) {
		tab, _ := mustTable(t, Options{FallbackRegion: "ap-south"})
		d, got := selectNames(t, tab, unknown)
		// From ap-south: eu-west 7603, us-west 12684, us-east 12855.
		if want := []string{"ap-south", "eu-west", "us-west", "us-east"}; !slices.Equal(got, want) || d.Reason != Fallback {
			t.Errorf("got %v, %q; want %v, fallback", got, d.Reason, want)
		}
	})
	t.Run("FallbackLocation", func(t *testing.T) {
		// San Francisco.
		tab, _ := mustTable(t, Options{FallbackLocation: &Location{37.77, -122.42}})
		d, got := selectNames(t, tab, unknown)
		if want := []string{"us-west", "us-east", "eu-west", "ap-south"}; !slices.Equal(got, want) || d.Reason != Fallback {
			t.Errorf("got %v, %q; want %v, fallback", got, d.Reason, want)
		}
	})
	t.Run("FallbackLocation wins over FallbackRegion", func(t *testing.T) {
		tab, _ := mustTable(t, Options{FallbackRegion: "ap-south", FallbackLocation: &Location{50.11, 8.68}})
		_, got := selectNames(t, tab, unknown)
		if want := []string{"eu-west", "us-east", "ap-south", "us-west"}; !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("an unlocated place's stale coordinates are not used", func(t *testing.T) {
		tab, _ := mustTable(t, Options{})
		d, got := selectNames(t, tab, Query{Place: Place{Lat: 35.68, Lon: 139.69}})
		if got[0] != "us-east" || d.Reason != Fallback {
			t.Errorf("got %v, %q; want us-east first, fallback", got, d.Reason)
		}
	})
	t.Run("an unlocated client's preferences are not applied", func(t *testing.T) {
		tab, _ := mustTable(t, Options{PreferCountry: map[string][]string{"JP": {"ap-south"}}})
		d, got := selectNames(t, tab, Query{Place: Place{Country: "JP"}})
		if got[0] != "us-east" || d.Reason != Fallback {
			t.Errorf("got %v, %q; want us-east first, fallback", got, d.Reason)
		}
	})
}

func TestSelectOverride(t *testing.T) {
	frankfurt := at(50.11, 8.68)
	t.Run("allowed", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true})
		d, got := selectNames(t, tab, Query{Place: frankfurt, Override: "us-west"})
		if want := []string{"us-west", "eu-west", "us-east", "ap-south"}; !slices.Equal(got, want) || d.Reason != Override {
			t.Errorf("got %v, %q; want %v, override", got, d.Reason, want)
		}
	})
	t.Run("allowed, naming the nearest", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true})
		d, got := selectNames(t, tab, Query{Place: frankfurt, Override: "eu-west"})
		if want := []string{"eu-west", "us-east", "ap-south", "us-west"}; !slices.Equal(got, want) || d.Reason != Override {
			t.Errorf("got %v, %q; want %v, override", got, d.Reason, want)
		}
	})
	t.Run("allowed for an unlocated client", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true})
		d, got := selectNames(t, tab, Query{Override: "ap-south"})
		if want := []string{"ap-south", "us-east", "us-west", "eu-west"}; !slices.Equal(got, want) || d.Reason != Override {
			t.Errorf("got %v, %q; want %v, override", got, d.Reason, want)
		}
	})
	t.Run("beats preferences", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true, PreferCountry: map[string][]string{"DE": {"ap-south", "us-east"}}})
		d, got := selectNames(t, tab, Query{Place: in(t, "DE"), Override: "us-west"})
		if want := []string{"us-west", "ap-south", "us-east", "eu-west"}; !slices.Equal(got, want) || d.Reason != Override {
			t.Errorf("got %v, %q; want %v, override", got, d.Reason, want)
		}
	})
	t.Run("disallowed by the options: ignored", func(t *testing.T) {
		tab, _ := mustTable(t, Options{})
		for _, name := range []string{"us-west", "no-such-region"} {
			d, err := tab.Select(nil, Query{Place: frankfurt, Override: name})
			if err != nil {
				t.Fatalf("Override %q: %v", name, err)
			}
			if got := regionNames(d.Candidates); got[0] != "eu-west" || len(got) != 4 || d.Reason != Nearest {
				t.Errorf("Override %q: got %v, %q; want eu-west first of 4, nearest", name, got, d.Reason)
			}
		}
	})
	t.Run("unknown region", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true})
		_, err := tab.Select(nil, Query{Place: frankfurt, Override: "mars-1"})
		if !errors.Is(err, ErrUnknownRegion) || !strings.Contains(err.Error(), "mars-1") {
			t.Errorf("err = %v, want ErrUnknownRegion naming mars-1", err)
		}
		if errors.Is(err, ErrNotAllowed) {
			t.Errorf("err = %v is also ErrNotAllowed", err)
		}
	})
	t.Run("under residency", func(t *testing.T) {
		tab, _ := mustTable(t, Options{AllowOverride: true,
			Residency: []Rule{{Name: "gdpr", Countries: []string{"EU"}, Regions: []string{"eu-west"}}}})
		_, err := tab.Select(nil, Query{Place: in(t, "DE"), Override: "us-east"})
		if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "gdpr") {
			t.Errorf("disallowed override: err = %v, want ErrNotAllowed naming the rule", err)
		}
		d, got := selectNames(t, tab, Query{Place: in(t, "DE"), Override: "eu-west"})
		if !slices.Equal(got, []string{"eu-west"}) || d.Reason != Override || d.Rule != "gdpr" {
			t.Errorf("allowed override: got %v, %q, rule %q; want [eu-west], override, gdpr", got, d.Reason, d.Rule)
		}
		// A client outside the rule may name any region.
		d, got = selectNames(t, tab, Query{Place: in(t, "US"), Override: "eu-west"})
		if got[0] != "eu-west" || len(got) != 4 || d.Reason != Override || d.Rule != "" {
			t.Errorf("unconfined override: got %v, %q, rule %q", got, d.Reason, d.Rule)
		}
	})
}

func TestSelectPrefer(t *testing.T) {
	tab, _ := mustTable(t, Options{
		PreferCountry:   map[string][]string{"DE": {"us-west", "ap-south"}, "NO": {}},
		PreferContinent: map[string][]string{"EU": {"ap-south"}, "AS": {"us-east", "us-west"}},
	})
	tests := []struct {
		name   string
		place  Place
		want   []string
		reason Reason
	}{
		// DE's entry beats EU's; the rest by distance from DE.
		{"country beats continent", in(t, "DE"), []string{"us-west", "ap-south", "eu-west", "us-east"}, Preferred},
		// FR has no entry: EU's; then eu-west 1009, us-east 6286, us-west 8411.
		{"continent", in(t, "FR"), []string{"ap-south", "eu-west", "us-east", "us-west"}, Preferred},
		// Preferred in configured order even though us-west is nearer Japan.
		{"configured order, not distance", in(t, "JP"), []string{"us-east", "us-west", "ap-south", "eu-west"}, Preferred},
		// An empty country entry still beats the continent's, and prefers nothing.
		{"empty country entry", in(t, "NO"), []string{"eu-west", "us-east", "ap-south", "us-west"}, Nearest},
		{"no entry", in(t, "BR"), []string{"us-east", "eu-west", "us-west", "ap-south"}, Nearest},
		// A place with coordinates but no country or continent.
		{"coordinates only", at(50.11, 8.68), []string{"eu-west", "us-east", "ap-south", "us-west"}, Nearest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, got := selectNames(t, tab, Query{Place: tt.place})
			if !slices.Equal(got, tt.want) || d.Reason != tt.reason {
				t.Errorf("got %v, %q; want %v, %q", got, d.Reason, tt.want, tt.reason)
			}
		})
	}
}

func TestSelectResidency(t *testing.T) {
	eu := Rule{Name: "eu", Countries: []string{"EU"}, Regions: []string{"eu-west"}}
	eea := Rule{Name: "eea", Countries: []string{"EEA"}, Regions: []string{"eu-west", "us-east"}}
	asia := Rule{Name: "asia", Continents: []string{"AS"}, Regions: []string{"ap-south"}}
	brazil := Rule{Name: "br", Countries: []string{"BR"}, Regions: []string{"us-east", "us-west"}}
	tab, _ := mustTable(t, Options{Residency: []Rule{eu, eea, asia, brazil}})
	tests := []struct {
		name  string
		place Place
		want  []string
		rule  string
	}{
		{"EU member", in(t, "DE"), []string{"eu-west"}, "eu"},
		{"EU member far from the region", in(t, "CY"), []string{"eu-west"}, "eu"},
		// The first matching rule confines: DE is in the EEA too, but eu comes first.
		{"EEA only: Norway", in(t, "NO"), []string{"eu-west", "us-east"}, "eea"},
		{"EEA only: Iceland", in(t, "IS"), []string{"eu-west", "us-east"}, "eea"},
		{"EEA only: Liechtenstein", in(t, "LI"), []string{"eu-west", "us-east"}, "eea"},
		{"continent rule", in(t, "JP"), []string{"ap-south"}, "asia"},
		{"country rule", in(t, "BR"), []string{"us-east", "us-west"}, "br"},
		{"US is not restricted", in(t, "US"), []string{"us-east", "us-west", "eu-west", "ap-south"}, ""},
		// CH: eu-west 1234 km, ap-south 6577, us-east 6656, us-west 8588.
		{"Switzerland is not restricted", in(t, "CH"), []string{"eu-west", "ap-south", "us-east", "us-west"}, ""},
		// GB: eu-west 280 km, us-east 5649, ap-south 7366, us-west 7448.
		{"the UK is not restricted", in(t, "GB"), []string{"eu-west", "us-east", "ap-south", "us-west"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, got := selectNames(t, tab, Query{Place: tt.place})
			wantReason := Nearest
			if tt.rule != "" {
				wantReason = Residency
			}
			if !slices.Equal(got, tt.want) || d.Rule != tt.rule || d.Reason != wantReason {
				t.Errorf("got %v, %q, rule %q; want %v, %q, rule %q", got, d.Reason, d.Rule, tt.want, wantReason, tt.rule)
			}
		})
	}
	t.Run("an unlocated client is under no rule", func(t *testing.T) {
		for _, p := range []Place{{}, {Country: "DE", Continent: "EU"}} {
			d, got := selectNames(t, tab, Query{Place: p})
			if len(got) != 4 || d.Rule != "" || d.Reason != Fallback {
				t.Errorf("%+v: got %v, %q, rule %q; want all 4, fallback, no rule", p, got, d.Reason, d.Rule)
			}
		}
	})
	t.Run("preferences outside the rule are dropped", func(t *testing.T) {
		tab, _ := mustTable(t, Options{Residency: []Rule{eea},
			PreferCountry: map[string][]string{"DE": {"ap-south", "us-east"}, "NO": {"ap-south"}}})
		d, got := selectNames(t, tab, Query{Place: in(t, "DE")})
		if !slices.Equal(got, []string{"us-east", "eu-west"}) || d.Rule != "eea" || d.Reason != Preferred {
			t.Errorf("DE: got %v, %q, rule %q; want [us-east eu-west], preferred, eea", got, d.Reason, d.Rule)
		}
		d, got = selectNames(t, tab, Query{Place: in(t, "NO")})
		if !slices.Equal(got, []string{"eu-west", "us-east"}) || d.Rule != "eea" || d.Reason != Residency {
			t.Errorf("NO: got %v, %q, rule %q; want [eu-west us-east], residency, eea", got, d.Reason, d.Rule)
		}
	})
}

func TestSelectLatencyPenalty(t *testing.T) {
	usEast := &Location{39.04, -77.49}
	frankfurt := Query{Place: at(50.11, 8.68)}
	// The router runs in us-east; eu-west is 5462 km away, so with 50 ms of
	// allowance it may take 50 + 54.6 = 104.6 ms before it is pushed back.
	// From Frankfurt: eu-west 1088 km, us-east 6549, ap-south 6564, us-west 8328.
	tests := []struct {
		name    string
		latency time.Duration // eu-west's
		want    []string
	}{
		{"unknown latency", 0, []string{"eu-west", "us-east", "ap-south", "us-west"}},
		{"well within the allowance", 20 * time.Millisecond, []string{"eu-west", "us-east", "ap-south", "us-west"}},
		{"just within the allowance", 104 * time.Millisecond, []string{"eu-west", "us-east", "ap-south", "us-west"}},
		// 55.4 ms over: +5538 km, 6626 in all: behind us-east and ap-south.
		{"slow", 160 * time.Millisecond, []string{"us-east", "ap-south", "eu-west", "us-west"}},
		// 95.4 ms over: +9538 km, 10626 in all: last.
		{"very slow", 200 * time.Millisecond, []string{"us-east", "ap-south", "us-west", "eu-west"}},
	}
	reason := func(want []string) Reason {
		if want[0] != "eu-west" {
			return Latency // the nearest was pushed back
		}
		return Nearest
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, loads := mustTable(t, Options{RouterLocation: usEast, LatencyAllowance: 50 * time.Millisecond})
			loads["eu-west"].latency = tt.latency
			// The others answer within what their distance explains.
			loads["us-east"].latency = 30 * time.Millisecond
			loads["us-west"].latency = 80 * time.Millisecond
			loads["ap-south"].latency = 170 * time.Millisecond
			d, got := selectNames(t, tab, frankfurt)
			if !slices.Equal(got, tt.want) || d.Reason != reason(tt.want) {
				t.Errorf("got %v, %q; want %v, %s", got, d.Reason, tt.want, reason(tt.want))
			}
		})
	}
	// Slower than its own usual: the threshold is 50 ms, and each ms over
	// it counts 100 km, whatever the region's distance.
	slowdown := []struct {
		name     string
		slowdown time.Duration
		want     []string
		reason   Reason
	}{
		{"as usual", 0, []string{"eu-west", "us-east", "ap-south", "us-west"}, Nearest},
		{"within the threshold", 50 * time.Millisecond, []string{"eu-west", "us-east", "ap-south", "us-west"}, Nearest},
		// 120 ms slower: 70 ms over, +7000 km, 8088 in all.
		{"120 ms slower", 120 * time.Millisecond, []string{"us-east", "ap-south", "eu-west", "us-west"}, Latency},
		{"200 ms slower", 200 * time.Millisecond, []string{"us-east", "ap-south", "us-west", "eu-west"}, Latency},
	}
	for _, tt := range slowdown {
		t.Run("slowdown "+tt.name, func(t *testing.T) {
			tab, loads := mustTable(t, Options{SlowdownThreshold: 50 * time.Millisecond, LatencyAllowance: time.Second})
			loads["eu-west"].slowdown = tt.slowdown
			d, got := selectNames(t, tab, frankfurt)
			if !slices.Equal(got, tt.want) || d.Reason != tt.reason {
				t.Errorf("got %v, %q; want %v, %s", got, d.Reason, tt.want, tt.reason)
			}
		})
	}
	t.Run("without a router location, only the allowance", func(t *testing.T) {
		tab, loads := mustTable(t, Options{LatencyAllowance: 50 * time.Millisecond})
		// 60 ms over the allowance: +6000 km, 7088 in all.
		loads["eu-west"].latency = 110 * time.Millisecond
		_, got := selectNames(t, tab, frankfurt)
		if want := []string{"us-east", "ap-south", "eu-west", "us-west"}; !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
		loads["eu-west"].latency = 50 * time.Millisecond
		_, got = selectNames(t, tab, frankfurt)
		if want := []string{"eu-west", "us-east", "ap-south", "us-west"}; !slices.Equal(got, want) {
			t.Errorf("at the allowance: got %v, want %v", got, want)
		}
	})
	t.Run("preferred regions are not reordered by latency", func(t *testing.T) {
		tab, loads := mustTable(t, Options{PreferCountry: map[string][]string{"DE": {"eu-west"}}})
		loads["eu-west"].latency = time.Second
		d, got := selectNames(t, tab, Query{Place: in(t, "DE")})
		if got[0] != "eu-west" || d.Reason != Preferred {
			t.Errorf("got %v, %q; want eu-west first, preferred", got, d.Reason)
		}
	})
}

func TestNewTableErrors(t *testing.T) {
	regions, _ := fourRegions()
	tests := []struct {
		name    string
		regions []*Region
		o       Options
		unknown bool // the error is ErrUnknownRegion
	}{
		{"no regions", nil, Options{}, false},
		{"empty regions", []*Region{}, Options{}, false},
		{"too many regions", make([]*Region, MaxRegions+1), Options{}, false},
		{"unknown region in prefer country", regions,
			Options{PreferCountry: map[string][]string{"DE": {"eu-west", "eu-central"}}}, true},
		{"unknown region in prefer continent", regions,
			Options{PreferContinent: map[string][]string{"EU": {"eu-central"}}}, true},
		{"unknown region in residency", regions,
			Options{Residency: []Rule{{Name: "eu", Countries: []string{"EU"}, Regions: []string{"eu-central"}}}}, true},
		{"unknown fallback region", regions, Options{FallbackRegion: "eu-central"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := NewTable(tt.regions, tt.o)
			if err == nil || tab != nil {
				t.Fatalf("NewTable = %v, %v; want an error", tab, err)
			}
			if errors.Is(err, ErrUnknownRegion) != tt.unknown {
				t.Errorf("err = %v; ErrUnknownRegion: %v, want %v", err, errors.Is(err, ErrUnknownRegion), tt.unknown)
			}
			if tt.unknown && !strings.Contains(err.Error(), "eu-central") {
				t.Errorf("err = %v does not name the region", err)
			}
		})
	}
}

func TestTableRegions(t *testing.T) {
	tab, _ := mustTable(t, Options{})
	if got := regionNames(tab.Regions()); !slices.Equal(got, []string{"us-east", "us-west", "eu-west", "ap-south"}) {
		t.Errorf("Regions() = %v", got)
	}
	if r := tab.Region("eu-west"); r == nil || r.Name != "eu-west" || r.Location.Lat != 53.35 {
		t.Errorf("Region(eu-west) = %+v", r)
	}
	if r := tab.Region("eu-central"); r != nil {
		t.Errorf("Region(eu-central) = %+v, want nil", r)
	}
}

func TestSelectReusedSliceDoesNotAllocate(t *testing.T) {
	tab, loads := mustTable(t, Options{
		AllowOverride:    true,
		RouterLocation:   &Location{39.04, -77.49},
		LatencyAllowance: 50 * time.Millisecond,
		PreferContinent:  map[string][]string{"AS": {"ap-south"}},
		Residency:        []Rule{{Name: "eu", Countries: []string{"EU"}, Regions: []string{"eu-west", "us-east"}}},
	})
	loads["eu-west"].latency = 300 * time.Millisecond
	var buf [MaxRegions]*Region
	for _, q := range []Query{
		{Place: at(-33.87, 151.21)},
		{Place: in(t, "DE")},
		{Place: in(t, "JP")},
		{Place: in(t, "US"), Override: "eu-west"},
	} {
		var d Decision
		var err error
		allocs := testing.AllocsPerRun(100, func() {
			d, err = tab.Select(buf[:0], q)
		})
		if err != nil || len(d.Candidates) == 0 || &d.Candidates[0] != &buf[0] {
			t.Fatalf("%+v: Select = %+v, %v; want candidates in buf", q.Place, d, err)
		}
		if allocs != 0 {
			t.Errorf("%+v: Select allocates %v times per call", q.Place, allocs)
		}
	}
}

// productTable is four regions with product deployments: us-east has its
// own Flux, eu-west its own Aura, ap-south only Flux (no main deployment).
func productTable(t *testing.T, o Options) *Table {
	t.Helper()
	var regions []*Region
	mk := func(name, group string, p Product, lat, lon float64) {
		regions = append(regions, &Region{Name: name, Group: group, Product: p,
			Location: Location{lat, lon}, Load: &stubLoad{capacity: 100}})
	}
	mk("us-east", "", "", 39.04, -77.49)
	mk("us-east/flux", "us-east", Flux, 39.04, -77.49)
	mk("us-west", "", "", 45.60, -121.18)
	mk("eu-west", "", "", 53.35, -6.26)
	mk("eu-west/speak", "eu-west", Speak, 53.35, -6.26)
	mk("ap-south/flux", "ap-south", Flux, 19.08, 72.88)
	tab, err := NewTable(regions, o)
	if err != nil {
		t.Fatalf("NewTable: %v", err)
	}
	return tab
}

func TestSelectByProduct(t *testing.T) {
	dublin := Place{Country: "IE", Continent: "EU", Lat: 53.35, Lon: -6.26, Located: true}
	newYork := Place{Country: "US", Continent: "NA", Lat: 40.7, Lon: -74, Located: true}
	mumbai := Place{Country: "IN", Continent: "AS", Lat: 19.08, Lon: 72.88, Located: true}
	eu := []Rule{{Name: "gdpr", Countries: []string{"FR"}, Regions: []string{"eu-west"}}}
	tab := productTable(t, Options{AllowOverride: true, PreferCountry: map[string][]string{"NZ": {"ap-south"}}, Residency: eu})
	for _, c := range []struct {
		name     string
		q        Query
		want     []string
		reason   Reason
		notServe bool
	}{
		{name: "nova from Dublin: main deployments only", q: Query{Place: dublin, Product: Listen},
			want: []string{"eu-west", "us-east", "us-west"}, reason: Nearest},
		{name: "flux from Dublin: a region without its own Flux serves it from its main deployment",
			q:    Query{Place: dublin, Product: Flux},
			want: []string{"eu-west", "us-east/flux", "us-west", "ap-south/flux"}, reason: Nearest},
		{name: "flux from Mumbai: the Flux-only region first", q: Query{Place: mumbai, Product: Flux},
			want: []string{"ap-south/flux", "eu-west", "us-west", "us-east/flux"}, reason: Nearest},
		{name: "speak from New York", q: Query{Place: newYork, Product: Speak},
			want: []string{"us-east", "us-west", "eu-west/speak"}, reason: Nearest},
		{name: "models from Mumbai: a region with no main deployment serves no other path", q: Query{Place: mumbai},
			want: []string{"eu-west", "us-west", "us-east"}, reason: Nearest},
		{name: "override names the region; its Flux deployment serves", q: Query{Place: dublin, Product: Flux, Override: "us-east"},
			want: []string{"us-east/flux", "eu-west", "us-west", "ap-south/flux"}, reason: Override},
		{name: "override of a region with nothing for the path", q: Query{Place: dublin, Override: "ap-south"}, notServe: true},
		{name: "preference by region name", q: Query{Place: Place{Country: "NZ", Continent: "OC", Lat: -41, Lon: 174, Located: true}, Product: Flux},
			want: []string{"ap-south/flux", "us-west", "us-east/flux", "eu-west"}, reason: Preferred},
		{name: "residency by region name", q: Query{Place: Place{Country: "FR", Continent: "EU", Lat: 48.9, Lon: 2.35, Located: true}, Product: Speak},
			want: []string{"eu-west/speak"}, reason: Residency},
		{name: "a key's regions by name", q: Query{Place: dublin, Product: Flux, Allow: tab.Mask([]string{"us-east", "ap-south"}), AllowRule: "key k"},
			want: []string{"us-east/flux", "ap-south/flux"}, reason: Nearest},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := tab.Select(nil, c.q)
			if c.notServe {
				if !errors.Is(err, ErrNotServed) {
					t.Fatalf("err = %v, want ErrNotServed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := regionNames(d.Candidates); !slices.Equal(got, c.want) || d.Reason != c.reason {
				t.Errorf("got %v (%s), want %v (%s)", got, d.Reason, c.want, c.reason)
			}
		})
	}
}

func TestProductTableErrors(t *testing.T) {
	l := &stubLoad{}
	for name, regions := range map[string][]*Region{
		"two Flux deployments in a region": {{Name: "a"}, {Name: "a/flux", Group: "a", Product: Flux}, {Name: "a/flux2", Group: "a", Product: Flux}},
		"unknown product":                  {{Name: "a", Product: "vision"}},
		"one name twice":                   {{Name: "a"}, {Name: "a"}},
	} {
		for _, r := range regions {
			r.Load = l
		}
		if _, err := NewTable(regions, Options{}); err == nil {
			t.Errorf("%s: NewTable accepted it", name)
		}
	}
}

func TestProductOf(t *testing.T) {
	for path, want := range map[string]Product{
		"/v1/listen": Listen, "/v2/listen": Flux, "/v1/speak": Speak, "/v2/speak": Speak,
		"/v1/agent/converse": Agent, "/v1/models": "", "/v1/read": "", "/v1/listen/": "",
	} {
		if got := ProductOf(path); got != want {
			t.Errorf("ProductOf(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestSelectNothingServes: when no region the client may use has a
// deployment for the product, Select says so (not a full region to retry).
func TestSelectNothingServes(t *testing.T) {
	var regions []*Region
	for _, r := range []*Region{
		{Name: "eu-west/flux", Group: "eu-west", Product: Flux, Location: Location{53, -6}},
		{Name: "us-east", Location: Location{39, -77}},
	} {
		r.Load = &stubLoad{}
		regions = append(regions, r)
	}
	tab, err := NewTable(regions, Options{Residency: []Rule{{Name: "gdpr", Countries: []string{"FR"}, Regions: []string{"eu-west"}}}})
	if err != nil {
		t.Fatal(err)
	}
	fr := Place{Country: "FR", Continent: "EU", Lat: 48.9, Lon: 2.35, Located: true}
	if _, err := tab.Select(nil, Query{Place: fr, Product: Speak}); !errors.Is(err, ErrNotServed) {
		t.Errorf("speak under a rule whose region has only Flux: %v, want ErrNotServed", err)
	}
	if d, err := tab.Select(nil, Query{Place: fr, Product: Flux}); err != nil || len(d.Candidates) != 1 {
		t.Errorf("flux under the rule: %v %v", d.Candidates, err)
	}
}
