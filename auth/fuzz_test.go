package auth_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/earshot/earshot/auth"
)

// isScheme reports whether s is "token" or "bearer" in some ASCII casing:
// an HTTP auth-scheme and a WebSocket subprotocol are tokens, so no other
// character may stand for a letter (strings.EqualFold would also take the
// Kelvin sign U+212A for "k").
func isScheme(s string) bool {
	return asciiLower(s) == "token" || asciiLower(s) == "bearer"
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// isKey is the documented key syntax: 1 to 4096 visible ASCII characters.
func isKey(k string) bool {
	if len(k) == 0 || len(k) > 4096 {
		return false
	}
	for _, c := range []byte(k) {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// FuzzParseAuthorization checks that an accepted header has a token or
// bearer scheme and a well-formed key, that the pair parses back to itself,
// and that "Token KEY" and "bearer   KEY" are accepted for any well-formed
// KEY, giving KEY back.
func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		"Token abc", "Bearer eyJhbGciOi.J9.x", "TOKEN   k", "token", "Basic dXNlcjpwYXNz",
		" Token abc ", "Token a b", "Token \tabc", "Token " + strings.Repeat("k", 4097), "bearer\tabc",
		"To\u212Aen abc", // the Kelvin sign folds to "k" in Unicode, not in ASCII
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		scheme, key, ok := auth.ParseAuthorization(v)
		if ok {
			if !isScheme(scheme) {
				t.Errorf("ParseAuthorization(%q): scheme %q is not token or bearer", v, scheme)
			}
			if !isKey(key) {
				t.Errorf("ParseAuthorization(%q): key %q is not 1-4096 visible ASCII characters", v, key)
			}
			s2, k2, ok2 := auth.ParseAuthorization(scheme + " " + key)
			if !ok2 || s2 != scheme || k2 != key {
				t.Errorf("ParseAuthorization(%q) = %q, %q; re-parsing %q gives %q, %q, %v",
					v, scheme, key, scheme+" "+key, s2, k2, ok2)
			}
		} else if scheme != "" || key != "" {
			t.Errorf("ParseAuthorization(%q) failed but returned %q, %q", v, scheme, key)
		}
		// Completeness: any well-formed key is accepted after either scheme.
		if isKey(v) {
			for _, h := range []string{"Token " + v, "bEaReR   " + v} {
				s, k, ok := auth.ParseAuthorization(h)
				if !ok || k != v || s != h[:strings.IndexByte(h, ' ')] {
					t.Errorf("ParseAuthorization(%q) = %q, %q, %v; want the key back", h, s, k, ok)
				}
			}
		}
	})
}

// offeredProtocols splits header values as ParseSubprotocol documents:
// comma-separated, each trimmed of ASCII spaces and tabs.
func offeredProtocols(values []string) []string {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			out = append(out, strings.Trim(p, " \t\r\n"))
		}
	}
	return out
}

// FuzzParseSubprotocol splits header into header values at newlines (as if
// the client had sent several Sec-WebSocket-Protocol lines) and checks
// ParseSubprotocol against the documented rule: the first offered protocol
// is the scheme and the second the key.
func FuzzParseSubprotocol(f *testing.F) {
	for _, s := range []string{
		"token, abc", "bearer,eyJ.x.y", "Token\nabc", "chat, superchat", "token", "token, a b",
		"token,,abc", " TOKEN ,\tabc , extra", "to\u212Aen, abc", "bearer, " + strings.Repeat("x", 4097), "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		for _, values := range [][]string{{header}, strings.Split(header, "\n")} {
			scheme, key, ok := auth.ParseSubprotocol(values)
			offered := offeredProtocols(values)
			want := len(offered) >= 2 && isScheme(offered[0]) && isKey(offered[1])
			if ok {
				if !isScheme(scheme) {
					t.Errorf("ParseSubprotocol(%q): scheme %q is not token or bearer", values, scheme)
				}
				if !isKey(key) {
					t.Errorf("ParseSubprotocol(%q): key %q is not 1-4096 visible ASCII characters", values, key)
				}
				if len(offered) < 2 || scheme != offered[0] || key != offered[1] {
					t.Errorf("ParseSubprotocol(%q) = %q, %q; offered %q", values, scheme, key, offered)
				}
			} else if want {
				t.Errorf("ParseSubprotocol(%q) refused a well-formed offer %q", values, offered)
			}
		}
	})
}

// FuzzAuthenticate checks that a request is authenticated only when the
// credential taken from the source that counts (Authorization, else, on a
// WebSocket handshake, the subprotocol, else the query if allowed) is the
// one configured key, and that it is refused with the right error
// otherwise.
func FuzzAuthenticate(f *testing.F) {
	f.Add("Token right-key", "", "", false, false)
	f.Add("Bearer right-key", "", "", true, false)
	f.Add("Token wrong-key", "token, right-key", "token=right-key", true, true)
	f.Add("", "token, right-key", "", true, false)
	f.Add("", "bearer,right-key\nchat", "", true, false)
	f.Add("", "", "token=right-key&model=nova-3", true, true)
	f.Add("", "", "token=right%2Dkey", true, true)
	f.Add("", "token, right-key", "", false, true)
	f.Add("Token  right-key ", "", "", false, false)
	f.Add("Token right-key\x00", "", "", false, false)
	f.Add("Token right-key\nToken right-key", "", "", false, false)
	const right = "right-key"
	a := auth.New([]*auth.Key{auth.NewKey(auth.KeyOptions{Name: "k", Digest: auth.Digest(right)})}, false)
	aq := auth.New([]*auth.Key{auth.NewKey(auth.KeyOptions{Name: "k", Digest: auth.Digest(right)})}, true)
	f.Fuzz(func(t *testing.T, authz, proto, rawQuery string, upgrade, allowQuery bool) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{Path: "/v1/listen", RawQuery: rawQuery}}
		if authz != "" {
			r.Header["Authorization"] = strings.Split(authz, "\n") // several lines: malformed
		}
		if proto != "" {
			r.Header["Sec-Websocket-Protocol"] = strings.Split(proto, "\n")
		}
		au := a
		if allowQuery {
			au = aq
		}

		// Where the credential should come from, and what it is.
		var (
			cred    string
			src     auth.Source
			wantErr error
		)
		switch {
		case strings.Contains(authz, "\n"):
			wantErr = auth.ErrMalformed
		case authz != "":
			if _, k, ok := auth.ParseAuthorization(authz); ok {
				cred, src = k, auth.FromHeader
			} else {
				wantErr = auth.ErrMalformed
			}
		case upgrade:
			if _, k, ok := auth.ParseSubprotocol(r.Header.Values("Sec-Websocket-Protocol")); ok {
				cred, src = k, auth.FromSubprotocol
			} else if q := r.URL.Query().Get("token"); allowQuery && q != "" {
				cred, src = q, auth.FromQuery
			} else {
				wantErr = auth.ErrMissing
			}
		default:
			wantErr = auth.ErrMissing
		}
		if wantErr == nil && cred != right {
			wantErr = auth.ErrInvalid
		}

		key, gotSrc, err := au.Authenticate(r, upgrade)
		if err == nil {
			if cred != right {
				t.Fatalf("authenticated with credential %q (Authorization %q, protocol %q, query %q, upgrade %v, query allowed %v)",
					cred, authz, proto, rawQuery, upgrade, allowQuery)
			}
			if key == nil || key.Name != "k" || gotSrc != src {
				t.Fatalf("authenticated as %v from %v, want key k from %v", key, gotSrc, src)
			}
			return
		}
		if key != nil || gotSrc != 0 {
			t.Errorf("error %v with key %v, source %v", err, key, gotSrc)
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("Authenticate(Authorization %q, protocol %q, query %q, upgrade %v, query allowed %v) = %v, want %v",
				authz, proto, rawQuery, upgrade, allowQuery, err, wantErr)
		}
	})
}
