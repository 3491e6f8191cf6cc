// Package geotest writes small geolocation databases for tests, in the three
// layouts the router reads: MaxMind GeoIP2 City, GeoIP2 Country, and DB-IP
// Lite as published by ip-location-db. No binary fixture is checked in; tests
// build the databases they need with github.com/maxmind/mmdbwriter.
package geotest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Layout is a database's record layout.
type Layout int

// Layouts.
const (
	City    Layout = iota // GeoIP2-City: country, continent, location
	Country               // GeoIP2-Country: country and continent, no location
	DBIP                  // ip-location-db dbip-city: flat country_code, latitude, longitude
)

// Entry places a network.
type Entry struct {
	Network   string // CIDR, IPv4 or IPv6
	Country   string // ISO code
	Continent string // MaxMind code; not written in the DBIP layout
	Lat, Lon  float64
}

// Write builds a database of entries in layout and writes it to path,
// atomically: it is written beside path and renamed into place, as
// geoipupdate does.
func Write(path string, layout Layout, entries []Entry) error {
	dbType := map[Layout]string{City: "GeoIP2-City", Country: "GeoIP2-Country", DBIP: "dbip-city"}[layout]
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: dbType, RecordSize: 28, IncludeReservedNetworks: true})
	if err != nil {
		return err
	}
	for _, e := range entries {
		p, err := netip.ParsePrefix(e.Network)
		if err != nil {
			return err
		}
		ipnet := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := tree.Insert(ipnet, record(layout, e)); err != nil {
			return fmt.Errorf("insert %s: %w", e.Network, err)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".geotest-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tree.WriteTo(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func record(layout Layout, e Entry) mmdbtype.Map {
	if layout == DBIP {
		return mmdbtype.Map{
			"country_code": mmdbtype.String(e.Country),
			"latitude":     mmdbtype.Float64(e.Lat),
			"longitude":    mmdbtype.Float64(e.Lon),
			"city":         mmdbtype.String("Somewhere"),
		}
	}
	names := func(s string) mmdbtype.Map { return mmdbtype.Map{"en": mmdbtype.String(s)} }
	m := mmdbtype.Map{
		"continent":          mmdbtype.Map{"code": mmdbtype.String(e.Continent), "names": names(e.Continent)},
		"country":            mmdbtype.Map{"iso_code": mmdbtype.String(e.Country), "names": names(e.Country)},
		"registered_country": mmdbtype.Map{"iso_code": mmdbtype.String(e.Country)},
	}
	if layout == City {
		m["location"] = mmdbtype.Map{
			"latitude": mmdbtype.Float64(e.Lat), "longitude": mmdbtype.Float64(e.Lon),
			"accuracy_radius": mmdbtype.Uint16(20),
		}
		m["city"] = mmdbtype.Map{"names": names("Somewhere")}
	}
	return m
}
