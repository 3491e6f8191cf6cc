// Package routing decides which regions may serve a request, best first.
//
// A request's client is found first (Locator: the peer address, or the
// right-most untrusted hop of X-Forwarded-For behind trusted proxies; then
// trusted CDN headers or an IP geolocation database). The Table then ranks
// the regions for that place:
//
//   - a client's explicit choice (X-Earshot-Region, when allowed) comes first;
//   - then the operator's preferences for the client's country or continent;
//   - then every other region by great-circle distance from the client, with
//     a slow region pushed back as if it were farther away: 100 km for each
//     millisecond it answers slower than its usual (beyond SlowdownThreshold),
//     or slower than its distance explains (beyond LatencyAllowance); a
//     region that probes call degraded goes behind every one that is not.
//     When that moves the nearest region down, the reason says so
//     (latency, degraded);
//   - residency rules remove the regions a client may not use, whatever the
//     order, so failover can never leave them.
//
// A region may serve its products from several deployments, each with its
// own URL, load and health: a Region here is one deployment, its Group the
// configured region and its Product what it alone serves there (ProductOf
// names a path's product). Names in the options (preferences, residency,
// fallback, overrides, Mask) are configured regions; for a request of
// product p each region offers the one deployment that serves p (its
// product deployment, else its main one), so the rest of the ranking is
// unchanged.
//
// Routing never dials anything and never blocks: it reads each region's
// load and latency through the small Load interface declared here, which the
// health package implements. The proxy walks the candidates; the first that
// has room serves, and the reason it gives says why.
package routing

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// Headers.
const (
	// OverrideHeader is the request header a client may use to pick its
	// region, and the response header naming the region that served.
	OverrideHeader = "X-Earshot-Region"
	// RouteHeader is the response header giving the Reason.
	RouteHeader = "X-Earshot-Route"
)

// Reason says why the region that served was chosen.
type Reason string

// Reasons.
const (
	Nearest   Reason = "nearest"   // the nearest region to the client
	Preferred Reason = "preferred" // first in the operator's table for the client's country or continent
	Override  Reason = "override"  // named by the client
	Residency Reason = "residency" // the nearest region the client's residency rule allows
	Fallback  Reason = "fallback"  // the client could not be located
	Spillover Reason = "spillover" // a better region was full
	Failover  Reason = "failover"  // an attempt at a better region failed, and the request moved
	Unhealthy Reason = "unhealthy" // a better region is out of rotation (probes, breaker, cooling down)
	Latency   Reason = "latency"   // a nearer region answers slower than usual, or than its distance explains
	Degraded  Reason = "degraded"  // a nearer region's health checks say it is degraded
	Hedged    Reason = "hedged"    // a better region was slow to accept a stream; a hedged handshake here won
)

// Load is what routing needs to know of a region's state. A Load that also
// has a Degraded() bool method, as health.Region does, is ranked behind
// healthy regions while it reports true.
type Load interface {
	InFlight() int
	Capacity() int // 0: unlimited
	// Latency is the smoothed time a region takes to answer; 0 if unknown.
	Latency() time.Duration
	// Slowdown is how much slower than its usual the region answers now.
	Slowdown() time.Duration
}

// Region is a region as routing sees it: one deployment of it.
type Region struct {
	Name string
	// Group is the configured region the deployment belongs to: its
	// name in options, overrides and X-Earshot-Region. "" means Name.
	Group string
	// Product is what this deployment alone serves in its group; ""
	// for the group's main deployment, which serves every path no
	// product deployment of the group takes.
	Product  Product
	Location Location
	Load     Load

	expected float64 // ms the region should take to answer, for its distance
}

// Rule is a residency rule: clients in Countries or Continents may use only
// Regions.
type Rule struct {
	Name       string
	Countries  []string // ISO codes; "EU" and "EEA" stand for their members
	Continents []string
	Regions    []string
}

// Options configure a Table.
type Options struct {
	AllowOverride bool
	// Fallback ranks regions for a client that cannot be located: from a
	// region's location (FallbackRegion) or a point (FallbackLocation).
	// Default: the first region.
	FallbackRegion   string
	FallbackLocation *Location
	// Prefer maps an ISO country code or a continent code to regions that
	// clients there should use first, in order. Country entries win.
	PreferCountry   map[string][]string
	PreferContinent map[string][]string
	Residency       []Rule
	// RouterLocation is where the router runs; with LatencyAllowance it sets
	// how slow each region may be before it is ranked down.
	RouterLocation   *Location
	LatencyAllowance time.Duration
	// SlowdownThreshold is how much slower than its usual a region may
	// answer before it is pushed back by the excess.
	SlowdownThreshold time.Duration
}

// Errors of Select.
var (
	ErrUnknownRegion = errors.New("unknown region")
	ErrNotAllowed    = errors.New("region not allowed")
	ErrNotServed     = errors.New("region does not serve")
)

// Table ranks regions. It is immutable and safe for concurrent use.
type Table struct {
	regions  []*Region
	byName   map[string]int    // deployments by Name
	groups   map[string]uint64 // configured regions: their deployments
	serves   [numProducts]uint64
	opts     Options
	fallback Location

	preferCountry   map[string][]int // region indexes
	preferContinent map[string][]int
	rules           []rule
}

type rule struct {
	name       string
	countries  map[string]bool
	continents map[string]bool
	allowed    uint64 // bit i: region i
}

// MaxRegions is the most regions a Table can hold.
const MaxRegions = 64

// kmPerMs turns a latency excess into distance: light in fibre covers about
// 200 km per millisecond, so a millisecond of round trip is 100 km.
const kmPerMs = 100

// NewTable builds a table over regions, in configured order.
func NewTable(regions []*Region, o Options) (*Table, error) {
	if len(regions) == 0 || len(regions) > MaxRegions {
		return nil, fmt.Errorf("routing: %d regions; want 1 to %d", len(regions), MaxRegions)
	}
	t := &Table{regions: regions, byName: make(map[string]int, len(regions)), groups: map[string]uint64{},
		opts: o, preferCountry: map[string][]int{}, preferContinent: map[string][]int{}}
	for i, r := range regions {
		if _, dup := t.byName[r.Name]; dup {
			return nil, fmt.Errorf("routing: region %q twice", r.Name)
		}
		if productIndex(r.Product) < 0 {
			return nil, fmt.Errorf("routing: region %s: unknown product %q", r.Name, r.Product)
		}
		t.byName[r.Name] = i
		t.groups[r.group()] |= 1 << i
	}
	if err := t.indexProducts(); err != nil {
		return nil, err
	}
	// index lists the deployments of the named regions, in order.
	index := func(names []string) ([]int, error) {
		idx := make([]int, 0, len(names))
		for _, n := range names {
			m, ok := t.groups[n]
			if !ok {
				return nil, fmt.Errorf("routing: %w %q", ErrUnknownRegion, n)
			}
			for i := range regions {
				if m&(1<<i) != 0 {
					idx = append(idx, i)
				}
			}
		}
		return idx, nil
	}
	var err error
	for k, v := range o.PreferCountry {
		if t.preferCountry[k], err = index(v); err != nil {
			return nil, err
		}
	}
	for k, v := range o.PreferContinent {
		if t.preferContinent[k], err = index(v); err != nil {
			return nil, err
		}
	}
	for _, r := range o.Residency {
		idx, err := index(r.Regions)
		if err != nil {
			return nil, err
		}
		ru := rule{name: r.Name, countries: map[string]bool{}, continents: map[string]bool{}}
		for _, i := range idx {
			ru.allowed |= 1 << i
		}
		for _, c := range r.Countries {
			switch c {
			case "EU", "EEA":
				for i, ci := range countries {
					if (c == "EU" && ci.eu) || (c == "EEA" && ci.eea) {
						ru.countries[string([]byte{byte('A' + i/26), byte('A' + i%26)})] = true
					}
				}
			default:
				ru.countries[c] = true
			}
		}
		for _, c := range r.Continents {
			ru.continents[c] = true
		}
		t.rules = append(t.rules, ru)
	}
	switch {
	case o.FallbackLocation != nil:
		t.fallback = *o.FallbackLocation
	case o.FallbackRegion != "":
		idx, err := index([]string{o.FallbackRegion})
		if err != nil {
			return nil, fmt.Errorf("routing: fallback: %w", err)
		}
		t.fallback = regions[idx[0]].Location
	default:
		t.fallback = regions[0].Location
	}
	for _, r := range regions {
		r.expected = float64(o.LatencyAllowance) / float64(time.Millisecond)
		if l := o.RouterLocation; l != nil {
			r.expected += distanceKm(l.Lat, l.Lon, r.Location.Lat, r.Location.Lon) / kmPerMs
		}
	}
	return t, nil
}

// Regions returns the table's regions in configured order. Do not modify.
func (t *Table) Regions() []*Region { return t.regions }

// Region returns the region named name, or nil.
func (t *Table) Region(name string) *Region {
	if i, ok := t.byName[name]; ok {
		return t.regions[i]
	}
	return nil
}

// Query is what Select ranks for.
type Query struct {
	Place    Place
	Override string  // the region the client named, if any
	Product  Product // what the request asks for: ProductOf its path
	// Allow, when not zero, confines the client to these regions (a Mask),
	// as a residency rule does; AllowRule names it.
	Allow     uint64
	AllowRule string
}

// Mask is the Query.Allow of the named regions (all their deployments);
// unknown names are left out.
func (t *Table) Mask(names []string) uint64 {
	var m uint64
	for _, n := range names {
		m |= t.groups[n]
	}
	return m
}

// Decision is a ranked list of regions for one request.
type Decision struct {
	// Candidates are the regions that may serve, best first.
	Candidates []*Region
	// Reason is why Candidates[0] is first.
	Reason Reason
	// Rule is the residency rule that confines the client, if any. Such a
	// client must not be served beyond its regions' capacity either.
	Rule string
}

// Select ranks the regions for q, appending to dst (pass a reused slice,
// such as a stack array's, to avoid allocating).
func (t *Table) Select(dst []*Region, q Query) (Decision, error) {
	d := Decision{Reason: Nearest}
	allowed := ^uint64(0)
	p := q.Place
	if p.Located {
		for i := range t.rules {
			if r := &t.rules[i]; r.countries[p.Country] || r.continents[p.Continent] {
				allowed, d.Rule, d.Reason = r.allowed, r.name, Residency
				break
			}
		}
	} else {
		p.Lat, p.Lon = t.fallback.Lat, t.fallback.Lon
		d.Reason = Fallback
	}
	if q.Allow != 0 {
		allowed &= q.Allow
		if d.Rule == "" {
			d.Rule = q.AllowRule
		}
	}
	serves := t.serves[max(0, productIndex(q.Product))]

	base := len(dst)
	var taken uint64
	if allowed&serves == 0 {
		// Nothing the client may use has a deployment for this: not a
		// matter of load, so not a 503 to retry.
		return d, fmt.Errorf("%w %s: no region this client may use has a deployment for it", ErrNotServed, q.Product.describe())
	}
	allowed &= serves
	take := func(i int) {
		if taken&(1<<i) == 0 && allowed&(1<<i) != 0 {
			taken |= 1 << i
			dst = append(dst, t.regions[i])
		}
	}
	if q.Override != "" && t.opts.AllowOverride {
		g, ok := t.groups[q.Override]
		switch {
		case !ok:
			return d, fmt.Errorf("%w %q", ErrUnknownRegion, q.Override)
		case g&serves == 0:
			return d, fmt.Errorf("%w %s: %s has no deployment for it", ErrNotServed, q.Product.describe(), q.Override)
		case g&allowed == 0:
			return d, fmt.Errorf("%w: %s may not be used under rule %q", ErrNotAllowed, q.Override, d.Rule)
		}
		take(bits.TrailingZeros64(g & allowed))
		d.Reason = Override
	}
	if p.Located {
		prefer, ok := t.preferCountry[p.Country]
		if !ok {
			prefer, ok = t.preferContinent[p.Continent]
		}
		if ok {
			n := len(dst)
			for _, i := range prefer {
				take(i)
			}
			if n == base && len(dst) > n {
				d.Reason = Preferred
			}
		}
	}

	// The rest by score, insertion-sorted in place (there are few regions).
	start := len(dst)
	var scores [MaxRegions]float64
	nearest, nearestKm := -1, math.Inf(1)
	for i, r := range t.regions {
		if taken&(1<<i) != 0 || allowed&(1<<i) == 0 {
			continue
		}
		km := distanceKm(p.Lat, p.Lon, r.Location.Lat, r.Location.Lon)
		if km < nearestKm {
			nearest, nearestKm = i, km
		}
		s := km + t.penaltyKm(r)
		j := len(dst)
		dst = append(dst, r)
		for ; j > start && scores[j-1-start] > s; j-- {
			dst[j], scores[j-start] = dst[j-1], scores[j-1-start]
		}
		dst[j], scores[j-start] = r, s
	}
	if start == base && (d.Reason == Nearest || d.Reason == Fallback) && nearest >= 0 && len(dst) > start && dst[start] != t.regions[nearest] {
		d.Reason = Latency
		if isDegraded(t.regions[nearest]) {
			d.Reason = Degraded
		}
	}
	d.Candidates = dst
	return d, nil
}

// penaltyKm pushes a slow region back: each millisecond by which its
// smoothed latency exceeds what its distance and the allowance explain
// counts as 100 km of extra distance.
//
// A region whose health checks say it is degraded is pushed back by half
// the Earth's circumference, behind every region that is not.
func (t *Table) penaltyKm(r *Region) float64 {
	var km float64
	if isDegraded(r) {
		km = degradedKm
	}
	var excess float64
	if lat := r.Load.Latency(); lat > 0 {
		excess = float64(lat)/float64(time.Millisecond) - r.expected
	}
	if slow := r.Load.Slowdown() - t.opts.SlowdownThreshold; slow > 0 {
		excess = math.Max(excess, float64(slow)/float64(time.Millisecond))
	}
	return km + math.Max(0, excess)*kmPerMs
}

func isDegraded(r *Region) bool {
	d, ok := r.Load.(interface{ Degraded() bool })
	return ok && d.Degraded()
}

// degradedKm is the distance added to a degraded region.
const degradedKm = math.Pi * earthRadiusKm
