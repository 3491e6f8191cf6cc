package routing

import (
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/earshot/earshot/internal/geotest"
)

type benchLoad struct{}

func (benchLoad) InFlight() int           { return 3 }
func (benchLoad) Capacity() int           { return 100 }
func (benchLoad) Latency() time.Duration  { return 20 * time.Millisecond }
func (benchLoad) Slowdown() time.Duration { return 0 }

// BenchmarkDecision is one full routing decision, as the proxy makes it for
// every request: the client's address from X-Forwarded-For behind a trusted
// proxy, a lookup in a GeoIP2-City database of 20,000 networks, residency
// and preference checks, and ranking four regions by distance and latency.
func BenchmarkDecision(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	entries := make([]geotest.Entry, 0, 20000)
	for i := range 20000 {
		entries = append(entries, geotest.Entry{
			Network: fmt.Sprintf("%d.%d.%d.0/24", 1+i/65536%200, i/256%256, i%256),
			Country: "DE", Continent: "EU", Lat: rng.Float64()*180 - 90, Lon: rng.Float64()*360 - 180,
		})
	}
	db, err := OpenGeoDB(writeDB(b, geotest.City, entries))
	if err != nil {
		b.Fatal(err)
	}
	regions := []*Region{
		{Name: "us-east", Location: Location{39.04, -77.49}, Load: benchLoad{}},
		{Name: "us-west", Location: Location{45.60, -121.18}, Load: benchLoad{}},
		{Name: "eu-west", Location: Location{53.35, -6.26}, Load: benchLoad{}},
		{Name: "ap-south", Location: Location{19.08, 72.88}, Load: benchLoad{}},
	}
	table, err := NewTable(regions, Options{
		LatencyAllowance: 150 * time.Millisecond,
		PreferCountry:    map[string][]string{"NZ": {"ap-south"}},
		Residency:        []Rule{{Name: "ch", Countries: []string{"CH"}, Regions: []string{"eu-west"}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	loc := NewLocator([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, []string{"cloudflare"}, db)
	r := httptest.NewRequest("GET", "/v1/listen", nil)
	r.RemoteAddr = "10.1.2.3:41234"
	r.Header.Set("X-Forwarded-For", "1.0.77.9, 10.9.9.9")
	var buf [MaxRegions]*Region

	b.ReportAllocs()
	for b.Loop() {
		c := loc.Locate(r)
		d, err := table.Select(buf[:0], Query{Place: c.Place})
		if err != nil || len(d.Candidates) != 4 || c.Place.Country != "DE" {
			b.Fatalf("decision = %+v, %v for %+v", d, err, c)
		}
	}
}
