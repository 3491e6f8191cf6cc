package routing

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oschwald/geoip2-golang/v2"
	"go.uber.org/goleak"

	"github.com/earshot/earshot/internal/geotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// places are the test networks: one per continent, IPv4 and IPv6.
var places = []geotest.Entry{
	{Network: "81.2.69.0/24", Country: "DE", Continent: "EU", Lat: 50.11, Lon: 8.68},
	{Network: "2a02:c7e::/32", Country: "GB", Continent: "EU", Lat: 51.51, Lon: -0.13},
	{Network: "1.0.16.0/20", Country: "JP", Continent: "AS", Lat: 35.68, Lon: 139.69},
	{Network: "216.160.83.0/24", Country: "US", Continent: "NA", Lat: 47.61, Lon: -122.33},
	{Network: "200.160.0.0/20", Country: "BR", Continent: "SA", Lat: -23.55, Lon: -46.63},
	{Network: "41.0.0.0/16", Country: "ZA", Continent: "AF", Lat: -26.2, Lon: 28.05},
	{Network: "2001:df0::/32", Country: "AU", Continent: "OC", Lat: -33.87, Lon: 151.21},
}

func writeDB(t testing.TB, layout geotest.Layout, entries []geotest.Entry) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "geo.mmdb")
	if err := geotest.Write(path, layout, entries); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGeoDBLayouts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout geotest.Layout
		coords bool // the database has coordinates (else the country's)
	}{
		{"GeoIP2-City", geotest.City, true},
		{"GeoIP2-Country", geotest.Country, false},
		{"DB-IP Lite (ip-location-db)", geotest.DBIP, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := OpenGeoDB(writeDB(t, tc.layout, places))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range places {
				ip := netip.MustParsePrefix(e.Network).Addr().Next()
				p, ok := db.Lookup(ip)
				if !ok || p.Country != e.Country || p.Continent != e.Continent || p.Source != SourceGeoIP {
					t.Errorf("%s: %+v, %v; want %s in %s", ip, p, ok, e.Country, e.Continent)
					continue
				}
				want := Location{e.Lat, e.Lon}
				if !tc.coords {
					ci, _ := lookupCountry(e.Country)
					want = Location{float64(ci.lat), float64(ci.lon)}
				}
				if p.Lat != want.Lat || p.Lon != want.Lon {
					t.Errorf("%s: at %v,%v; want %v", ip, p.Lat, p.Lon, want)
				}
			}
			// IPv4-mapped IPv6 finds the IPv4 network.
			if p, ok := db.Lookup(netip.MustParseAddr("::ffff:81.2.69.7")); !ok || p.Country != "DE" {
				t.Errorf("IPv4-mapped lookup = %+v, %v", p, ok)
			}
			for _, miss := range []string{"10.1.2.3", "192.0.2.1", "2001:db8::1"} {
				if p, ok := db.Lookup(netip.MustParseAddr(miss)); ok {
					t.Errorf("%s: found %+v in no network", miss, p)
				}
			}
		})
	}
}

// TestGeoDBAgreesWithGeoIP2 reads the MaxMind layouts with the reference
// reader, github.com/oschwald/geoip2-golang/v2, and checks the router's
// narrow decoding gives the same answers.
func TestGeoDBAgreesWithGeoIP2(t *testing.T) {
	for _, layout := range []geotest.Layout{geotest.City, geotest.Country} {
		path := writeDB(t, layout, places)
		ref, err := geoip2.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		db, err := OpenGeoDB(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range places {
			ip := netip.MustParsePrefix(e.Network).Addr()
			want, err := ref.City(ip)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := db.Lookup(ip)
			if got.Country != want.Country.ISOCode || got.Continent != want.Continent.Code {
				t.Errorf("%s: %s/%s, geoip2 says %s/%s", ip, got.Country, got.Continent, want.Country.ISOCode, want.Continent.Code)
			}
			if want.Location.HasCoordinates() && (got.Lat != *want.Location.Latitude || got.Lon != *want.Location.Longitude) {
				t.Errorf("%s: %v,%v, geoip2 says %v,%v", ip, got.Lat, got.Lon, *want.Location.Latitude, *want.Location.Longitude)
			}
		}
		ref.Close()
	}
}

func TestGeoDBRejects(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenGeoDB(filepath.Join(dir, "missing.mmdb")); err == nil {
		t.Error("a missing file opened")
	}
	junk := filepath.Join(dir, "junk.mmdb")
	os.WriteFile(junk, []byte("not a database"), 0o644)
	if _, err := OpenGeoDB(junk); err == nil {
		t.Error("junk opened")
	}
	// A database cut short, as a copy caught mid-write would be.
	whole, _ := os.ReadFile(writeDB(t, geotest.City, places))
	cut := filepath.Join(dir, "cut.mmdb")
	os.WriteFile(cut, whole[:len(whole)/2], 0o644)
	if _, err := OpenGeoDB(cut); err == nil {
		t.Error("a truncated database opened")
	}
}

// TestGeoDBReloadUnderLoad replaces the database file by rename, as
// geoipupdate does, while lookups run on other goroutines, and checks that
// the watcher swaps the new one in and that no lookup ever fails.
func TestGeoDBReloadUnderLoad(t *testing.T) {
	path := writeDB(t, geotest.City, places)
	db, err := OpenGeoDB(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	reloads := make(chan error, 16)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- db.Watch(ctx, func(err error) { reloads <- err })
	}()

	var stop atomic.Bool
	var lookups, failures atomic.Int64
	var wg sync.WaitGroup
	ip := netip.MustParseAddr("81.2.69.7")
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				p, ok := db.Lookup(ip)
				lookups.Add(1)
				if !ok || (p.Country != "DE" && p.Country != "AT") {
					failures.Add(1)
				}
			}
		})
	}

	// The new database moves the network from DE to AT.
	moved := append([]geotest.Entry(nil), places...)
	moved[0] = geotest.Entry{Network: "81.2.69.0/24", Country: "AT", Continent: "EU", Lat: 48.21, Lon: 16.37}
	// The watch starts asynchronously: rewrite until a reload is reported.
	deadline := time.After(10 * time.Second)
	for swapped := false; !swapped; {
		if err := geotest.Write(path, geotest.City, moved); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-reloads:
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
			swapped = true
		case <-deadline:
			t.Fatal("the replaced database was not reloaded")
		case <-time.After(100 * time.Millisecond): // the watch may not have started yet; write again
		}
	}
	if p, _ := db.Lookup(ip); p.Country != "AT" {
		t.Errorf("after reload: %s, want AT", p.Country)
	}
	// A broken replacement is refused and the good database stays.
	os.WriteFile(path+".tmp", []byte("garbage"), 0o644)
	os.Rename(path+".tmp", path)
	select {
	case err := <-reloads:
		if err == nil {
			t.Error("garbage was loaded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload attempt after the file was replaced with garbage")
	}
	if p, ok := db.Lookup(ip); !ok || p.Country != "AT" {
		t.Errorf("after a bad replacement: %+v, %v; want the last good database", p, ok)
	}

	stop.Store(true)
	wg.Wait()
	cancel()
	if err := <-watchDone; err != nil {
		t.Errorf("watch: %v", err)
	}
	if failures.Load() != 0 {
		t.Errorf("%d of %d lookups failed during reloads", failures.Load(), lookups.Load())
	}
}
