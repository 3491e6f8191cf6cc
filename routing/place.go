package routing

import (
	"math"
)

// Source says where a client's location came from.
type Source uint8

// Sources, best first.
const (
	SourceNone       Source = iota // not located
	SourceCloudflare               // CF-IPCountry / CF-IPLatitude / CF-IPLongitude
	SourceCloudFront               // CloudFront-Viewer-*
	SourceVercel                   // X-Vercel-IP-*
	SourceGeoIP                    // the geolocation database
)

var sourceNames = [...]string{"none", "cloudflare", "cloudfront", "vercel", "geoip"}

func (s Source) String() string {
	if int(s) < len(sourceNames) {
		return sourceNames[s]
	}
	return "unknown"
}

// Place is where a client is, as far as the router can tell.
type Place struct {
	Country   string // ISO 3166-1 alpha-2, upper case; "" when unknown
	Continent string // AF, AN, AS, EU, NA, OC, SA; "" when unknown
	Lat, Lon  float64
	Located   bool // Lat and Lon hold a location
	// Precise says Lat and Lon came with the answer (a city, or the CDN's
	// coordinates), not from the country's middle.
	Precise bool
	Source  Source // where the answer came from
}

// fill completes a place from its country: a country-level answer takes the
// country's representative coordinates and continent.
func (p *Place) fill() {
	if p.Country == "" {
		return
	}
	ci, ok := lookupCountry(p.Country)
	if !ok {
		return // e.g. XK, which MaxMind uses for Kosovo: kept, but placed only by coordinates
	}
	if p.Continent == "" {
		p.Continent = ci.continent
	}
	if !p.Located {
		p.Lat, p.Lon, p.Located = float64(ci.lat), float64(ci.lon), true
	}
}

// Location is a point on Earth in decimal degrees.
type Location struct{ Lat, Lon float64 }

const earthRadiusKm = 6371.0

// distanceKm is the great-circle distance between two points (haversine).
func distanceKm(lat1, lon1, lat2, lon2 float64) float64 {
	const rad = math.Pi / 180
	φ1, φ2 := lat1*rad, lat2*rad
	dφ, dλ := (lat2-lat1)*rad, (lon2-lon1)*rad
	a := math.Sin(dφ/2)*math.Sin(dφ/2) + math.Cos(φ1)*math.Cos(φ2)*math.Sin(dλ/2)*math.Sin(dλ/2)
	return 2 * earthRadiusKm * math.Asin(math.Sqrt(min(1, a)))
}

// Continents are the continent codes a place may have, as MaxMind uses them.
func Continents() []string { return continentCodes() }

// KnownCountry reports whether code is an assigned ISO 3166-1 alpha-2 code.
func KnownCountry(code string) bool {
	_, ok := lookupCountry(code)
	return ok
}

// CountryLocation returns the middle of a country (ISO 3166-1 alpha-2), as
// the status page draws it; ok is false for an unknown code.
func CountryLocation(code string) (lat, lon float64, ok bool) {
	info, ok := lookupCountry(code)
	return float64(info.lat), float64(info.lon), ok
}
