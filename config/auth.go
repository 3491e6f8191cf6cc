package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// Auth configures client authentication at the edge.
type Auth struct {
	// Disable turns client authentication off. Only for demos and tests:
	// without keys and without this, the config does not load.
	Disable bool `yaml:"disable"`
	// Keys are the client keys.
	Keys []Key `yaml:"keys"`
	// QueryToken lets WebSocket clients that can set neither a header nor
	// a subprotocol give their key as ?token=KEY. It is stripped before
	// forwarding. Default false: query strings end up in logs elsewhere.
	QueryToken bool `yaml:"query_token"`
}

// Key is one client key: its SHA-256 digest, or the key itself read from
// the environment or a file, and its limits.
type Key struct {
	// Name identifies the key in logs; it is not a secret.
	Name string `yaml:"name"`
	// SHA256 is the hex SHA-256 digest of the key:
	// printf %s "$KEY" | sha256sum
	SHA256 string `yaml:"sha256"`
	// Key is the key itself, from {env: NAME} or {file: PATH}. A literal
	// key in the file is refused: use SHA256.
	Key *Secret `yaml:"key"`
	// Rate is the requests (and stream openings) per second the key may
	// make; 0 is unlimited. Burst is how many at once (default: Rate).
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// MaxStreams is how many streams the key may hold open; 0 is unlimited.
	MaxStreams int `yaml:"max_streams"`
	// Regions the key may use (residency by customer); empty: any.
	Regions []string `yaml:"regions"`

	digest [sha256.Size]byte
}

// Digest is the key's SHA-256 digest (valid after Validate).
func (k *Key) Digest() [sha256.Size]byte { return k.digest }

// TLS configures TLS termination on the client listener.
type TLS struct {
	// Cert and Key are PEM files; both or neither. They are reloaded when
	// they change on disk. TLS 1.2 is the minimum.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

func (c *Config) validateAuth() error {
	a := &c.Auth
	if !a.Disable && len(a.Keys) == 0 {
		return c.errorf("auth", "no client keys: add auth.keys, or set auth.disable: true for a demo (the router would be an open door)")
	}
	names := map[string]bool{}
	digests := map[[sha256.Size]byte]string{}
	for i := range a.Keys {
		k := &a.Keys[i]
		field := fmt.Sprintf("auth.keys[%d]", i)
		if k.Name == "" || names[k.Name] {
			return c.errorf(field+".name", "each key needs a unique name")
		}
		names[k.Name] = true
		switch {
		case (k.SHA256 == "") == (k.Key == nil):
			return c.errorf(field, "give exactly one of sha256 or key")
		case k.SHA256 != "":
			b, err := hex.DecodeString(strings.TrimSpace(k.SHA256))
			if err != nil || len(b) != sha256.Size {
				return c.errorf(field+".sha256", "want 64 hex digits (printf %%s \"$KEY\" | sha256sum)")
			}
			copy(k.digest[:], b)
		default:
			if k.Key.Env == "" && k.Key.File == "" {
				return c.errorf(field+".key", "a key written in the file is refused: use sha256, or {env: NAME} or {file: PATH}")
			}
			if err := k.Key.resolve(); err != nil {
				return c.errorf(field+".key", "%v", err)
			}
			if k.Key.Value() == "" {
				return c.errorf(field+".key", "%s is empty", k.Key)
			}
			k.digest = sha256.Sum256([]byte(k.Key.Value()))
		}
		if other, dup := digests[k.digest]; dup {
			return c.errorf(field, "the same key as %q", other)
		}
		digests[k.digest] = k.Name
		if k.Rate < 0 || k.Burst < 0 || k.MaxStreams < 0 {
			return c.errorf(field, "rate, burst and max_streams must not be negative")
		}
		if err := c.checkRegions(field+".regions", k.Regions); err != nil {
			return err
		}
	}
	t := c.TLS
	if (t.Cert == "") != (t.Key == "") {
		return c.errorf("tls", "give both cert and key, or neither")
	}
	for _, f := range []string{t.Cert, t.Key} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return c.errorf("tls", "%v", unwrapPathError(err))
		}
	}
	if c.AdminToken != nil {
		if err := c.AdminToken.resolve(); err != nil {
			return c.errorf("admin_token", "%v", err)
		}
		if len(c.AdminToken.Value()) < 16 {
			return c.errorf("admin_token", "use at least 16 characters")
		}
	}
	return nil
}
