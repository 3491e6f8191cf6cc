package routing

import (
	"net/http"
	"net/netip"
	"strings"
)

// trusted reports whether ip is within one of prefixes.
func trusted(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// clientIP finds the client behind a trusted peer: the right-most address
// of the Forwarded (RFC 7239) or, when there is none, X-Forwarded-For chain
// that is not itself a trusted proxy. Each proxy appends the address it
// received from, so everything right of that address was written by proxies
// we trust and everything left of it could be the client's invention. If
// every address is trusted, the left-most is the client; if a hop cannot
// be parsed, the walk stops and the last good address wins.
func clientIP(peer netip.Addr, h http.Header, prefixes []netip.Prefix) netip.Addr {
	values, forwarded := h["Forwarded"], true
	if len(values) == 0 {
		values, forwarded = h["X-Forwarded-For"], false
	}
	client := peer
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for v != "" {
			var hop string
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				hop, v = v[j+1:], v[:j]
			} else {
				hop, v = v, ""
			}
			var ip netip.Addr
			var ok bool
			if forwarded {
				ip, ok = forwardedFor(hop)
			} else {
				ip, ok = parseHop(strings.TrimSpace(hop))
			}
			if !ok {
				return client
			}
			client = ip
			if !trusted(prefixes, ip) {
				return ip
			}
		}
	}
	return client
}

// forwardedFor returns the address of a Forwarded element's for= parameter.
func forwardedFor(elem string) (netip.Addr, bool) {
	for elem != "" {
		var pair string
		if j := strings.IndexByte(elem, ';'); j >= 0 {
			pair, elem = elem[:j], elem[j+1:]
		} else {
			pair, elem = elem, ""
		}
		pair = strings.TrimSpace(pair)
		if len(pair) > 4 && strings.EqualFold(pair[:4], "for=") {
			return parseHop(strings.Trim(pair[4:], `"`))
		}
	}
	return netip.Addr{}, false
}

// parseHop parses one hop: an address, [v6], or either with a port. It
// picks the parser by shape, since a failed parse allocates its error.
func parseHop(s string) (netip.Addr, bool) {
	var ip netip.Addr
	var err error
	switch {
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"):
		ip, err = netip.ParseAddr(s[1 : len(s)-1])
	case strings.HasPrefix(s, "["), strings.Count(s, ":") == 1:
		var ap netip.AddrPort
		ap, err = netip.ParseAddrPort(s)
		ip = ap.Addr()
	default:
		ip, err = netip.ParseAddr(s)
	}
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap().WithZone(""), true
}
