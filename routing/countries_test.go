package routing

import (
	"math"
	"slices"
	"testing"
)

// codeAt returns the two-letter code of countries[i].
func codeAt(i int) string { return string([]byte{'A' + byte(i/26), 'A' + byte(i%26)}) }

func TestCountriesTable(t *testing.T) {
	conts := continentCodes()
	if len(conts) != 7 {
		t.Fatalf("continentCodes() = %v, want 7 codes", conts)
	}
	n := 0
	for i, c := range countries {
		code := codeAt(i)
		if c == (countryInfo{}) {
			if _, ok := lookupCountry(code); ok {
				t.Errorf("lookupCountry(%q) ok for an unassigned code", code)
			}
			continue
		}
		n++
		if !slices.Contains(conts, c.continent) {
			t.Errorf("%s: continent %q", code, c.continent)
		}
		if c.lat < -90 || c.lat > 90 || math.IsNaN(float64(c.lat)) {
			t.Errorf("%s: lat %v", code, c.lat)
		}
		if c.lon < -180 || c.lon > 180 || math.IsNaN(float64(c.lon)) {
			t.Errorf("%s: lon %v", code, c.lon)
		}
		if c.eu && !c.eea {
			t.Errorf("%s: in the EU but not the EEA", code)
		}
		if got, ok := lookupCountry(code); !ok || got != c {
			t.Errorf("lookupCountry(%q) = %+v, %v; want %+v, true", code, got, ok, c)
		}
	}
	if n < 245 {
		t.Errorf("%d codes, want at least 245", n)
	}
	if n != numCountries {
		t.Errorf("%d codes, numCountries = %d", n, numCountries)
	}
}

func TestLookupCountrySpotChecks(t *testing.T) {
	for _, tc := range []struct {
		code      string
		continent string
		lat, lon  float64 // checked when not both 0
	}{
		{"DE", "EU", 51, 10},
		{"de", "EU", 51, 10},
		{"dE", "EU", 51, 10},
		{"FR", "EU", 46, 2},
		{"JP", "AS", 36, 138},
		{"BR", "SA", -10, -52},
		{"US", "NA", 39, -98},
		{"AU", "OC", -25, 134},
		{"ZA", "AF", -29, 24},
		{"AQ", "AN", 0, 0},
		{"NZ", "OC", -41, 173},
		{"RU", "EU", 0, 0}, // GeoNames and MaxMind put Russia in Europe
		{"TR", "AS", 0, 0},
		{"EG", "AF", 0, 0},
	} {
		c, ok := lookupCountry(tc.code)
		if !ok {
			t.Errorf("lookupCountry(%q) not found", tc.code)
			continue
		}
		if c.continent != tc.continent {
			t.Errorf("%s: continent %q, want %q", tc.code, c.continent, tc.continent)
		}
		if tc.lat == 0 && tc.lon == 0 {
			continue
		}
		if math.Abs(float64(c.lat)-tc.lat) > 4 || math.Abs(float64(c.lon)-tc.lon) > 4 {
			t.Errorf("%s: at %v,%v, want near %v,%v", tc.code, c.lat, c.lon, tc.lat, tc.lon)
		}
	}
	if c, _ := lookupCountry("AQ"); c.lat > -60 {
		t.Errorf("AQ: lat %v, want south of 60S", c.lat)
	}
}

func TestLookupCountryNotFound(t *testing.T) {
	for _, code := range []string{"XX", "", "D", "DEU", "de ", "D1", "1E", "@A", "[A", "`a", "{a", "ZZ", "XK", "\xc4E", "\xe4e"} {
		if c, ok := lookupCountry(code); ok || c != (countryInfo{}) {
			t.Errorf("lookupCountry(%q) = %+v, %v; want not found", code, c, ok)
		}
	}
}

func TestEUAndEEA(t *testing.T) {
	var eu, eea []string
	for i, c := range countries {
		if c.eu {
			eu = append(eu, codeAt(i))
		}
		if c.eea {
			eea = append(eea, codeAt(i))
		}
	}
	if len(eu) != 27 {
		t.Errorf("%d EU members, want 27: %v", len(eu), eu)
	}
	if len(eea) != 30 {
		t.Errorf("%d EEA members, want 30: %v", len(eea), eea)
	}
	for _, code := range []string{"DE", "FR", "IE", "CY", "MT", "HR"} {
		if c, _ := lookupCountry(code); !c.eu || !c.eea {
			t.Errorf("%s: eu=%v eea=%v, want both", code, c.eu, c.eea)
		}
	}
	for _, code := range []string{"NO", "IS", "LI"} {
		if c, _ := lookupCountry(code); c.eu || !c.eea {
			t.Errorf("%s: eu=%v eea=%v, want EEA only", code, c.eu, c.eea)
		}
	}
	for _, code := range []string{"GB", "CH", "TR", "US", "RU"} {
		if c, _ := lookupCountry(code); c.eu || c.eea {
			t.Errorf("%s: eu=%v eea=%v, want neither", code, c.eu, c.eea)
		}
	}
}

func TestLookupCountryNoAlloc(t *testing.T) {
	codes := []string{"DE", "us", "XX", "", "DEU"}
	allocs := testing.AllocsPerRun(100, func() {
		for _, code := range codes {
			lookupCountry(code)
		}
	})
	if allocs != 0 {
		t.Errorf("lookupCountry allocates: %v per run", allocs)
	}
}

func BenchmarkLookupCountry(b *testing.B) {
	for b.Loop() {
		lookupCountry("de")
	}
}
