// Package routing decides which regions may serve a request, best first.
//
// The Table returns every region as a ranked list of Candidates, each with
// the Reason it holds its place. The proxy walks the list: the first candidate
// that admits the request serves it, and a candidate that cannot (full, or
// failing) passes the request to the next. Routing never dials anything; it
// reads each region's load through the small Load interface declared here,
// which the health package implements.
//
// Today the order is the configuration's order, with a client's explicit
// choice (X-Earshot-Region, when allowed) first. Geolocation replaces the
// ranking without changing this contract.
package routing

import (
	"errors"
	"fmt"
	"net/http"
)

// OverrideHeader is the request header a client may use to pick its region,
// and the response header naming the region that served.
const OverrideHeader = "X-Earshot-Region"

// Reason says why a candidate holds its place.
type Reason string

// Reasons.
const (
	Primary   Reason = "primary"   // first in the configured order
	Override  Reason = "override"  // named by the client
	Spillover Reason = "spillover" // a better candidate was full
	Fallback  Reason = "fallback"  // later in the configured order
)

// Load is what routing needs to know of a region's state.
type Load interface {
	InFlight() int
	Capacity() int // 0: unlimited
}

// Region is a region as routing sees it.
type Region struct {
	Name string
	Load Load
}

// Candidate is a region that may serve a request, and why.
type Candidate struct {
	Region *Region
	Reason Reason
}

// ErrUnknownRegion is returned when a client names a region that does not
// exist.
var ErrUnknownRegion = errors.New("unknown region")

// Table ranks regions. It is immutable and safe for concurrent use.
type Table struct {
	regions       []*Region
	byName        map[string]int
	allowOverride bool
}

// NewTable builds a table over regions, in preference order.
func NewTable(regions []*Region, allowOverride bool) *Table {
	t := &Table{regions: regions, byName: make(map[string]int, len(regions)), allowOverride: allowOverride}
	for i, r := range regions {
		t.byName[r.Name] = i
	}
	return t
}

// Regions returns the table's regions in configured order. Do not modify.
func (t *Table) Regions() []*Region { return t.regions }

// Select returns the candidates for r, best first, appended to dst (pass a
// reused slice to avoid allocating).
func (t *Table) Select(dst []Candidate, r *http.Request) ([]Candidate, error) {
	first := -1
	if t.allowOverride {
		if name := r.Header.Get(OverrideHeader); name != "" {
			i, ok := t.byName[name]
			if !ok {
				return dst, fmt.Errorf("%w %q", ErrUnknownRegion, name)
			}
			first = i
			dst = append(dst, Candidate{Region: t.regions[i], Reason: Override})
		}
	}
	for i, reg := range t.regions {
		if i == first {
			continue
		}
		reason := Fallback
		if len(dst) == 0 {
			reason = Primary
		}
		dst = append(dst, Candidate{Region: reg, Reason: reason})
	}
	return dst, nil
}
