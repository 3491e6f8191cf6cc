// Package auth authenticates clients at the edge and enforces each key's
// limits: a request rate, a number of concurrent streams, and the regions
// the key may use.
//
// Keys are never kept in the clear: the router holds each key's SHA-256
// digest and compares the digest of what a client presents against every
// configured digest in constant time. A client presents its key as Deepgram
// clients do:
//
//	Authorization: Token KEY       (any casing of the scheme)
//	Authorization: Bearer KEY
//	Sec-WebSocket-Protocol: token, KEY    (browsers; the scheme is echoed)
//	Sec-WebSocket-Protocol: bearer, KEY
//	?token=KEY                     (WebSocket only, when enabled; stripped)
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"math"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Key is one client key and its limits.
type Key struct {
	Name       string
	digest     [sha256.Size]byte
	limiter    *rate.Limiter // nil: no rate limit
	maxStreams int64         // 0: unlimited
	streams    atomic.Int64
	// Regions the key may use; empty: any. Routing applies it as a mask.
	Regions []string

	opts KeyOptions
}

// Options returns what the key was made from. A reload keeps a key (its
// rate and open streams) when they are unchanged.
func (k *Key) Options() KeyOptions { return k.opts }

// KeyOptions describe a key.
type KeyOptions struct {
	Name   string
	Digest [sha256.Size]byte // SHA-256 of the key
	// Rate is requests (and stream openings) per second; 0: unlimited.
	// Burst is how many may come at once (default: max(1, Rate)).
	Rate       float64
	Burst      int
	MaxStreams int
	Regions    []string
}

// NewKey returns a key.
func NewKey(o KeyOptions) *Key {
	k := &Key{Name: o.Name, digest: o.Digest, maxStreams: int64(o.MaxStreams), Regions: o.Regions, opts: o}
	if o.Rate > 0 {
		burst := o.Burst
		if burst <= 0 {
			burst = max(1, int(math.Ceil(o.Rate)))
		}
		k.limiter = rate.NewLimiter(rate.Limit(o.Rate), burst)
	}
	return k
}

// Digest returns the SHA-256 digest of a key, as configured.
func Digest(key string) [sha256.Size]byte { return sha256.Sum256([]byte(key)) }

// Allow takes one request from the key's rate. When the rate is spent it
// reports false and how long until a request would be allowed.
func (k *Key) Allow(now time.Time) (bool, time.Duration) {
	if k.limiter == nil {
		return true, 0
	}
	r := k.limiter.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// OpenStream counts a stream against the key's limit; false when it is
// reached. Every true must be paired with CloseStream.
func (k *Key) OpenStream() bool {
	n := k.streams.Add(1)
	if k.maxStreams > 0 && n > k.maxStreams {
		k.streams.Add(-1)
		return false
	}
	return true
}

// CloseStream gives back a stream.
func (k *Key) CloseStream() { k.streams.Add(-1) }

// Streams is the key's open streams.
func (k *Key) Streams() int { return int(k.streams.Load()) }

// Authenticator checks client keys.
type Authenticator struct {
	keys       []*Key
	allowQuery bool
}

// New returns an Authenticator over keys. With allowQuery, a WebSocket
// client may give its key as the token query parameter.
func New(keys []*Key, allowQuery bool) *Authenticator {
	return &Authenticator{keys: keys, allowQuery: allowQuery}
}

// Keys returns the configured keys. Do not modify.
func (a *Authenticator) Keys() []*Key { return a.keys }

// Source says where a client's credential was found.
type Source int

// Sources.
const (
	FromHeader      Source = iota + 1 // Authorization
	FromSubprotocol                   // Sec-WebSocket-Protocol
	FromQuery                         // ?token=
)

// Errors of Authenticate. Their text is safe to show a client: it never
// contains what the client sent.
var (
	ErrMissing   = errors.New("no credentials: send Authorization: Token YOUR_KEY")
	ErrMalformed = errors.New("malformed credentials: want Authorization: Token YOUR_KEY or Bearer YOUR_KEY")
	ErrInvalid   = errors.New("invalid credentials: the key is not one this router accepts")
)

// Authenticate finds r's key. upgrade says whether r is a WebSocket
// handshake, where the subprotocol and (if allowed) query forms count.
func (a *Authenticator) Authenticate(r *http.Request, upgrade bool) (*Key, Source, error) {
	secret, src, err := a.credential(r, upgrade)
	if err != nil {
		return nil, 0, err
	}
	d := sha256.Sum256([]byte(secret))
	var found *Key
	for _, k := range a.keys { // every key, whatever matches: constant time in the key set
		if subtle.ConstantTimeCompare(d[:], k.digest[:]) == 1 {
			found = k
		}
	}
	if found == nil {
		return nil, 0, ErrInvalid
	}
	return found, src, nil
}

func (a *Authenticator) credential(r *http.Request, upgrade bool) (string, Source, error) {
	if v := r.Header.Values("Authorization"); len(v) > 0 {
		if len(v) > 1 {
			return "", 0, ErrMalformed
		}
		_, key, ok := ParseAuthorization(v[0])
		if !ok {
			return "", 0, ErrMalformed
		}
		return key, FromHeader, nil
	}
	if upgrade {
		if _, key, ok := ParseSubprotocol(r.Header.Values("Sec-Websocket-Protocol")); ok {
			return key, FromSubprotocol, nil
		}
		if a.allowQuery {
			if key := r.URL.Query().Get("token"); key != "" {
				return key, FromQuery, nil
			}
		}
	}
	return "", 0, ErrMissing
}

// ParseAuthorization splits "Token KEY" or "Bearer KEY" (any casing of the
// scheme, one or more spaces). The key must be a visible ASCII token.
func ParseAuthorization(v string) (scheme, key string, ok bool) {
	scheme, key, found := strings.Cut(strings.TrimSpace(v), " ")
	if !found {
		return "", "", false
	}
	key = strings.TrimLeft(key, " ")
	if !IsScheme(scheme) || !validKey(key) {
		return "", "", false
	}
	return scheme, key, true
}

// ParseSubprotocol reads a handshake's offered subprotocols as browsers
// send credentials: the first is "token" or "bearer" (any casing) and the
// second is the key. It returns the scheme as offered, to be echoed.
func ParseSubprotocol(values []string) (scheme, key string, ok bool) {
	var offered []string
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			offered = append(offered, textproto.TrimString(p))
		}
	}
	if len(offered) < 2 {
		return "", "", false
	}
	scheme = offered[0]
	if !IsScheme(scheme) || !validKey(offered[1]) {
		return "", "", false
	}
	return scheme, offered[1], true
}

// IsScheme reports whether s is "token" or "bearer" in any ASCII casing.
// (strings.EqualFold would also take Unicode folds such as the Kelvin sign
// for "k", which no HTTP client sends and no auth layer upstream accepts.)
func IsScheme(s string) bool {
	return asciiEqualFold(s, "token") || asciiEqualFold(s, "bearer")
}

// asciiEqualFold compares s with lower, which is lower-case ASCII.
func asciiEqualFold(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// validKey accepts keys and JWTs: 1 to 4096 visible ASCII characters.
func validKey(k string) bool {
	if len(k) == 0 || len(k) > 4096 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' {
			return false
		}
	}
	return true
}
