package routing

import (
	"net/http"
	"net/netip"
)

// Locator finds a request's client: who it is behind any trusted proxies,
// and where it is.
type Locator struct {
	trusted []netip.Prefix
	edges   []*edgeHeaders
	db      *GeoDB
}

// NewLocator returns a Locator that believes forwarding and edge headers
// only from peers in trusted, reads the edge headers of the named CDNs (see
// EdgeProviders), and looks addresses up in db (nil for none).
func NewLocator(trusted []netip.Prefix, edgeNames []string, db *GeoDB) *Locator {
	l := &Locator{trusted: trusted, db: db}
	for _, n := range edgeNames {
		for i := range edges {
			if edges[i].name == n {
				l.edges = append(l.edges, &edges[i])
			}
		}
	}
	return l
}

// Client is a request's client as the router sees it.
type Client struct {
	Peer    netip.Addr // the address that connected
	Trusted bool       // Peer is a trusted proxy
	IP      netip.Addr // the client: Peer, or who a trusted Peer forwards for
	Place   Place
}

// Locate finds r's client. It never fails: a client that cannot be placed
// has a Place with Located false, and is ranked from the fallback.
func (l *Locator) Locate(r *http.Request) Client {
	var c Client
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		c.Peer = ap.Addr().Unmap().WithZone("")
	}
	c.IP = c.Peer
	if !c.Peer.IsValid() || !trusted(l.trusted, c.Peer) {
		c.Place = l.lookup(c.IP)
		return c
	}
	c.Trusted = true
	c.IP = clientIP(c.Peer, r.Header, l.trusted)
	for _, e := range l.edges {
		if p, ok := e.locate(r.Header); ok {
			c.Place = p
			return c
		}
	}
	c.Place = l.lookup(c.IP)
	return c
}

func (l *Locator) lookup(ip netip.Addr) Place {
	if l.db == nil || !ip.IsValid() {
		return Place{}
	}
	p, _ := l.db.Lookup(ip)
	return p
}
