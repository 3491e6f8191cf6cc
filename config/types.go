package config

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ByteSize is a size in bytes. In YAML it is an integer or a string with a
// unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
type ByteSize int64

// Byte size units.
const (
	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
)

var byteUnits = map[string]ByteSize{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9,
	"kib": KiB, "mib": MiB, "gib": GiB,
}

var sizeRE = regexp.MustCompile(`^\s*(\d+)\s*([a-zA-Z]*)\s*$`)

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	m := sizeRE.FindStringSubmatch(n.Value)
	if n.Kind != yaml.ScalarNode || m == nil {
		return fmt.Errorf("line %d: %q is not a size (use e.g. 65536, 64KiB, 2GiB)", n.Line, n.Value)
	}
	unit, ok := byteUnits[strings.ToLower(m[2])]
	v, err := strconv.ParseInt(m[1], 10, 64)
	if !ok || err != nil || v > int64(1<<62)/int64(unit) {
		return fmt.Errorf("line %d: %q is not a size (use e.g. 65536, 64KiB, 2GiB)", n.Line, n.Value)
	}
	*b = ByteSize(v) * unit
	return nil
}

func (b ByteSize) String() string {
	for _, u := range []struct {
		size ByteSize
		name string
	}{{GiB, "GiB"}, {MiB, "MiB"}, {KiB, "KiB"}} {
		if b >= u.size && b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// Secret is a header value that may be written in the file, or read from an
// environment variable or a file at load time:
//
//	Modal-Key: {env: MODAL_KEY}
//	Modal-Secret: {file: /run/secrets/modal-secret}
//	X-Team: earshot
//
// It never prints its value: fmt, logs and errors show where it comes from.
type Secret struct {
	Env   string `yaml:"env"`
	File  string `yaml:"file"`
	value string
	set   bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = Secret{value: n.Value, set: true}
		return nil
	case yaml.MappingNode:
		*s = Secret{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: %s must be a string", v.Line, k.Value)
			}
			switch k.Value {
			case "env":
				s.Env = v.Value
			case "file":
				s.File = v.Value
			default:
				return fmt.Errorf("line %d: field %s not found in type secret (want env or file)", k.Line, k.Value)
			}
		}
		if (s.Env == "") == (s.File == "") {
			return fmt.Errorf("line %d: give exactly one of env or file", n.Line)
		}
		return nil
	}
	return fmt.Errorf("line %d: want a string or {env: NAME} or {file: PATH}", n.Line)
}

// resolve reads the value from its source.
func (s *Secret) resolve() error {
	switch {
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok {
			return fmt.Errorf("environment variable %s is not set", s.Env)
		}
		s.value = v
	case s.File != "":
		b, err := os.ReadFile(s.File)
		if err != nil {
			// The path is configuration, not a secret; the contents are never shown.
			return fmt.Errorf("read %s: %w", s.File, unwrapPathError(err))
		}
		s.value = strings.TrimRight(string(b), "\r\n")
	}
	s.set = true
	return nil
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// Value is the secret itself. Only the code that sends it upstream calls this.
func (s Secret) Value() string { return s.value }

// String names the source, never the value.
func (s Secret) String() string {
	switch {
	case s.Env != "":
		return "$" + s.Env
	case s.File != "":
		return "file:" + s.File
	}
	return "[redacted]"
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return s.String() }

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	tokenRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// Headers the router owns; a region may not set them.
var reservedHeaders = map[string]bool{
	"Host": true, "Connection": true, "Upgrade": true, "Content-Length": true,
	"Transfer-Encoding": true, "Te": true, "Trailer": true, "Keep-Alive": true,
	"Proxy-Connection": true, "Sec-Websocket-Key": true, "Sec-Websocket-Version": true,
	"Sec-Websocket-Extensions": true, "Sec-Websocket-Protocol": true,
}

func (r *Region) validate() error {
	if !nameRE.MatchString(r.Name) {
		return ferr("name", "%q must be lower-case letters, digits and dashes", r.Name)
	}
	if r.URL == "" && len(r.Products) > 0 {
		// Only products: the rest is checked on each.
		if err := r.Location.validate(); err != nil {
			fe := err.(*fieldError)
			return ferr("location."+fe.field, "%s", fe.msg)
		}
		if r.Location == (Location{}) {
			return ferr("location", "is required: {lat: ..., lon: ...} of the region's data centre, for routing by distance")
		}
		if r.Sim != nil {
			return ferr("sim", "a region without a url takes no sim options (give them to its products)")
		}
		if r.Capacity != 0 {
			return ferr("capacity", "a region without a url has no capacity of its own (give it to its products)")
		}
		if err := r.validateHeaders(); err != nil { // its products are sent them
			return err
		}
		return r.validateProducts()
	}
	if err := r.validateEndpoint(); err != nil {
		return err
	}
	return r.validateProducts()
}

// validateHeaders checks the headers' names and reads their values.
func (r *Region) validateHeaders() error {
	for name, s := range r.Headers {
		field := "headers." + name
		if !tokenRE.MatchString(name) {
			return ferr(field, "%q is not a valid header name", name)
		}
		if reservedHeaders[http.CanonicalHeaderKey(name)] {
			return ferr(field, "%s is set by the router", name)
		}
		if err := s.resolve(); err != nil {
			return ferr(field, "%v", err)
		}
		r.Headers[name] = s
	}
	return nil
}

// validateProducts checks each product as a deployment of its own.
func (r *Region) validateProducts() error {
	for name, p := range r.Products {
		field := "products." + name
		if !slices.Contains(ProductNames, name) {
			return ferr(field, "%q is not a product (want one of %s)", name, strings.Join(ProductNames, ", "))
		}
		if p == nil || p.URL == "" {
			return ferr(field+".url", "is required")
		}
		d := Region{Name: r.Name, URL: p.URL, Location: r.Location, Capacity: p.Capacity, Headers: p.Headers, Sim: p.Sim}
		if err := d.validateEndpoint(); err != nil {
			fe := err.(*fieldError)
			return ferr(field+"."+fe.field, "%s", fe.msg)
		}
		p.Headers = d.Headers
	}
	return nil
}

// ProductNames are the products a region may deploy on their own URLs
// (routing.Products).
var ProductNames = []string{"listen", "flux", "speak", "agent"}

// MaxDeployments is the most deployments (regions' main URLs and their
// products) a config may have: routing.MaxRegions.
const MaxDeployments = 64

// Deployments are the region's deployments, each as a Region of its own:
// its main URL (named as the region) if it has one, then each product's,
// named REGION/PRODUCT, with the region's headers under the product's own.
// Valid after Validate.
func (r *Region) Deployments() []Region {
	var out []Region
	if r.URL != "" {
		main := *r
		main.Products, main.Group = nil, r.Name
		out = append(out, main)
	}
	for _, name := range ProductNames {
		p := r.Products[name]
		if p == nil {
			continue
		}
		d := Region{Name: r.Name + "/" + name, Group: r.Name, Product: name, URL: p.URL,
			Location: r.Location, Capacity: p.Capacity, Sim: p.Sim, Headers: map[string]Secret{}}
		maps.Copy(d.Headers, r.Headers)
		maps.Copy(d.Headers, p.Headers)
		d.base, _ = parseBase(p.URL)
		out = append(out, d)
	}
	return out
}

// Deployments are every region's deployments, in configured order.
func (c *Config) Deployments() []Region {
	var out []Region
	for i := range c.Regions {
		out = append(out, c.Regions[i].Deployments()...)
	}
	return out
}

// parseBase parses a region's URL as the proxy uses it.
func parseBase(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// validateEndpoint checks the region's URL, location, capacity, headers and
// simulation.
func (r *Region) validateEndpoint() error {
	u, err := url.Parse(r.URL)
	if err != nil || r.URL == "" {
		return ferr("url", "%q is not a URL", r.URL)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return ferr("url", "%q has no host", r.URL)
		}
	case "sim":
		if u.Host == "" {
			return ferr("url", "%q has no name (want sim://NAME)", r.URL)
		}
	default:
		return ferr("url", "scheme %q is not one of http, https, sim", u.Scheme)
	}
	if u.User != nil {
		return ferr("url", "credentials in the URL are not allowed; use headers with env or file")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return ferr("url", "must not have a query or fragment")
	}
	r.base, _ = parseBase(r.URL)
	if r.Sim != nil && u.Scheme != "sim" {
		return ferr("sim", "only a sim:// region takes sim options")
	}
	if err := r.Location.validate(); err != nil {
		fe := err.(*fieldError)
		return ferr("location."+fe.field, "%s", fe.msg)
	}
	if r.Capacity < 0 {
		return ferr("capacity", "must not be negative")
	}
	if err := r.validateHeaders(); err != nil {
		return err
	}
	if s := r.Sim; s != nil {
		if s.FullStatus != 503 && s.FullStatus != 429 {
			return ferr("sim.full_status", "%d is not 503 or 429", s.FullStatus)
		}
		switch s.Mode {
		case "ok", "refuse", "hang", "die":
		default:
			return ferr("sim.mode", "%q is not one of ok, refuse, hang, die", s.Mode)
		}
		if s.Latency < 0 || s.SilenceTimeout < 0 || s.Capacity < 0 {
			return ferr("sim", "latency, silence_timeout and capacity must not be negative")
		}
	}
	if r.Location == (Location{}) {
		return ferr("location", "is required: {lat: ..., lon: ...} of the region's data centre, for routing by distance")
	}
	return nil
}

// Base is the region's parsed URL (valid after Validate).
func (r *Region) Base() *url.URL { return r.base }

// IsSim reports whether the region is a simulated engine.
func (r *Region) IsSim() bool { return r.base != nil && r.base.Scheme == "sim" }

// UpstreamHeader returns the headers to add to requests to the region.
func (r *Region) UpstreamHeader() http.Header {
	h := make(http.Header, len(r.Headers))
	for name, s := range r.Headers {
		h.Set(name, s.Value())
	}
	return h
}
