// Package config defines earshot's configuration file: its schema, defaults,
// validation and strict loading.
//
// Loading is three steps, each in one place: decode (strict: an unknown field is
// an error), apply defaults, validate. Every error names the file, the line and
// the field it is about, so an operator can fix a config without reading code:
//
//	config.yaml:14: regions[1].url: scheme "ftp" is not one of http, https, sim
//
// A Config is immutable once loaded; a reload builds a new one.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	// Listen is the address clients connect to. Default ":8080".
	Listen string `yaml:"listen"`
	// Admin is the address of the admin listener (status, metrics). Default
	// "127.0.0.1:9090": loopback, so it is not exposed by accident.
	Admin string `yaml:"admin"`

	// AdminToken, if set, is required as "Authorization: Bearer TOKEN" on
	// every admin endpoint but /healthz, /readyz and the status page's
	// static files.
	AdminToken *Secret `yaml:"admin_token"`

	Log      Log      `yaml:"log"`
	Auth     Auth     `yaml:"auth"`
	TLS      TLS      `yaml:"tls"`
	Timeouts Timeouts `yaml:"timeouts"`
	Limits   Limits   `yaml:"limits"`
	Routing  Routing  `yaml:"routing"`
	Health   Health   `yaml:"health"`
	Retry    Retry    `yaml:"retry"`

	// CORS, if set, lets web pages on other origins call the API from a
	// browser. Default: off.
	CORS *CORS `yaml:"cors"`

	// Regions are the upstream deployments, in order of preference until
	// geographic routing ranks them.
	Regions []Region `yaml:"regions"`
	// RegionsFile, if set, is the file `deployer apply` writes: deployed
	// URLs and capacities laid over Regions by name (see RegionsFile).
	// Relative to the config file's directory. Until it exists, the
	// URLs in Regions are used.
	RegionsFile string `yaml:"regions_file"`

	// Deploy configures the deployer (cmd/deployer); the router ignores it.
	Deploy *Deploy `yaml:"deploy"`

	// Path is the file the config was loaded from, for error messages.
	Path string `yaml:"-"`

	root   *yaml.Node // the parsed document, to find a field's line
	source []byte     // the text it was parsed from

	regionsSource  []byte   // the regions file's text
	regionsMissing bool     // RegionsFile is set but does not exist
	regionsIgnored []string // regions in RegionsFile that Regions lacks
}

// Log configures the zap logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is json or console. Default json.
	Format string `yaml:"format"`
}

// Timeouts bound every wait the router does on someone else's behalf.
type Timeouts struct {
	// ReadHeader bounds reading a client's request headers (slowloris). Default 10s.
	ReadHeader time.Duration `yaml:"read_header"`
	// Idle closes a client's idle keep-alive connection. Default 120s.
	Idle time.Duration `yaml:"idle"`
	// Connect bounds dialling a region (TCP and TLS). Default 5s.
	Connect time.Duration `yaml:"connect"`
	// Response bounds the wait for a region's response headers after the
	// request has been sent. Pre-recorded transcription of a long file answers
	// only when done, so the default is generous: 10m.
	Response time.Duration `yaml:"response"`
	// Handshake bounds a WebSocket upgrade to a region, dial included. Default 10s.
	Handshake time.Duration `yaml:"handshake"`
	// CloseGrace is how long a stream waits for the other side's close frame,
	// and for a region's final results after the client has gone. Default 5s.
	CloseGrace time.Duration `yaml:"close_grace"`
	// Shutdown bounds a graceful stop. Default 30s.
	Shutdown time.Duration `yaml:"shutdown"`
	// StreamIdle closes a stream on which neither side has sent a message
	// for this long (1011). Default 60s; Deepgram itself closes a stream
	// without audio after about 10s.
	StreamIdle time.Duration `yaml:"stream_idle"`
	// RegionPing: an open stream's region that has sent nothing for this
	// long is sent a WebSocket ping; if it still sends nothing, not even
	// the pong, for as long again, it is hung and the stream ends with 1011
	// (a hung region is found within two intervals). Default 1s; 0 turns
	// pings off.
	RegionPing time.Duration `yaml:"region_ping"`
}

// Limits bound what a client may send.
type Limits struct {
	// MaxHeaderBytes caps a request's header block. Default 64KiB.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes"`
	// MaxBodyBytes caps an HTTP request body; larger gets 413. Default 2GiB,
	// Deepgram's own limit for pre-recorded audio.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`
	// MaxMessageBytes caps one WebSocket message either way; larger closes the
	// stream with 1009. Default 4MiB.
	MaxMessageBytes ByteSize `yaml:"max_message_bytes"`
	// MaxConnections caps open client connections, streams included;
	// beyond it new connections wait in the kernel's backlog. Default 10000.
	MaxConnections int `yaml:"max_connections"`
}

// Region is one upstream deployment of the speech engine.
type Region struct {
	// Name identifies the region in logs, metrics and X-Earshot-Region.
	// Required, unique, [a-z0-9-].
	Name string `yaml:"name"`
	// URL is the region's base URL: https://... or http://... for a real
	// deployment (WebSocket URLs become wss/ws), or sim://NAME to start a
	// simulated engine on a loopback port inside the router. With
	// Products it serves every path they do not take; it may then be
	// left out, and the region serves only its products.
	URL string `yaml:"url"`
	// Location is where the region is, for distance-based routing.
	Location Location `yaml:"location"`
	// Capacity is how many concurrent requests and streams the region takes
	// (on Modal: containers x target_inputs). 0 means unlimited.
	Capacity int `yaml:"capacity"`
	// Headers are added to every request and handshake sent to the region,
	// replacing any the client sent. Values may be read from the environment
	// or a file so that secrets stay out of this file.
	Headers map[string]Secret `yaml:"headers"`
	// Sim configures the simulated engine of a sim:// region.
	Sim *Sim `yaml:"sim"`
	// Products are deployments of the region that each serve one product
	// on a URL of their own (Deepgram deploys Flux and Aura-2 on their own
	// stacks), by product: listen (/v1/listen), flux (/v2/listen), speak
	// (/v1/speak, /v2/speak), agent (/v1/agent/converse). Each has its own
	// health, capacity and breaker, and the region's headers under its own.
	Products map[string]*Product `yaml:"products"`

	// Group and Product are set on the regions Deployments returns: the
	// configured region a deployment belongs to, and the product it
	// serves ("" for the region's main URL).
	Group   string `yaml:"-"`
	Product string `yaml:"-"`

	base *url.URL // URL, parsed by Validate
}

// Product is one product's deployment in a region.
type Product struct {
	URL      string            `yaml:"url"`      // as Region.URL; required
	Capacity int               `yaml:"capacity"` // as Region.Capacity
	Headers  map[string]Secret `yaml:"headers"`  // over the region's
	Sim      *Sim              `yaml:"sim"`      // for a sim:// URL
}

// Location is a point on Earth in decimal degrees.
type Location struct {
	Lat float64 `yaml:"lat" json:"lat"`
	Lon float64 `yaml:"lon" json:"lon"`
}

// Sim configures a simulated engine.
type Sim struct {
	// Latency is added before each response and handshake answer; it stands
	// for the network distance to a real region. Default 0.
	Latency time.Duration `yaml:"latency"`
	// Capacity is the engine's own limit of concurrent work, beyond which it
	// refuses like a full Deepgram engine. Default 0 (unlimited).
	Capacity int `yaml:"capacity"`
	// FullStatus is the status a full engine answers: 503 (default) or 429.
	FullStatus int `yaml:"full_status"`
	// SilenceTimeout closes a stream with 1011 NET-0001 after this long
	// without audio. Default 10s, as Deepgram.
	SilenceTimeout time.Duration `yaml:"silence_timeout"`
	// Mode is the failure behaviour at start: ok, refuse, hang or die.
	// Default ok. It can be changed at run time on the engine.
	Mode string `yaml:"mode"`
}

// ApplyDefaults fills every unset field with its documented default.
func (c *Config) ApplyDefaults() {
	setDefault(&c.Listen, ":8080")
	setDefault(&c.Admin, "127.0.0.1:9090")
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "json")

	t := &c.Timeouts
	setDefault(&t.ReadHeader, 10*time.Second)
	setDefault(&t.Idle, 120*time.Second)
	setDefault(&t.Connect, 5*time.Second)
	setDefault(&t.Response, 10*time.Minute)
	setDefault(&t.Handshake, 10*time.Second)
	setDefault(&t.CloseGrace, 5*time.Second)
	setDefault(&t.Shutdown, 30*time.Second)
	setDefault(&t.StreamIdle, 60*time.Second)
	if !c.has("timeouts.region_ping") {
		t.RegionPing = time.Second
	}

	l := &c.Limits
	setDefault(&l.MaxHeaderBytes, 64*KiB)
	setDefault(&l.MaxBodyBytes, 2*GiB)
	setDefault(&l.MaxMessageBytes, 4*MiB)
	setDefault(&l.MaxConnections, 10000)

	setDefault(&c.Routing.LatencyAllowance, 150*time.Millisecond)
	setDefault(&c.Routing.SlowdownThreshold, 100*time.Millisecond)
	c.healthDefaults()
	c.corsDefaults()
	for i := range c.Regions {
		sims := []*Sim{c.Regions[i].Sim}
		for _, p := range c.Regions[i].Products {
			if p != nil {
				sims = append(sims, p.Sim)
			}
		}
		for _, s := range sims {
			if s != nil {
				setDefault(&s.FullStatus, 503)
				setDefault(&s.SilenceTimeout, 10*time.Second)
				setDefault(&s.Mode, "ok")
			}
		}
	}
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate checks the config after defaults are applied. It resolves
// secrets, so a missing environment variable is reported at load time, not at
// the first request.
func (c *Config) Validate() error {
	if err := checkAddr(c.Listen); err != nil {
		return c.errorf("listen", "%v", err)
	}
	if err := checkAddr(c.Admin); err != nil {
		return c.errorf("admin", "%v", err)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return c.errorf("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return c.errorf("log.format", "%q is not one of json, console", c.Log.Format)
	}
	for name, d := range map[string]time.Duration{
		"read_header": c.Timeouts.ReadHeader, "idle": c.Timeouts.Idle,
		"connect": c.Timeouts.Connect, "response": c.Timeouts.Response,
		"handshake": c.Timeouts.Handshake, "close_grace": c.Timeouts.CloseGrace,
		"shutdown": c.Timeouts.Shutdown, "stream_idle": c.Timeouts.StreamIdle, "region_ping": c.Timeouts.RegionPing,
	} {
		if d < 0 {
			return c.errorf("timeouts."+name, "must not be negative")
		}
	}
	for name, v := range map[string]ByteSize{
		"max_header_bytes": c.Limits.MaxHeaderBytes, "max_body_bytes": c.Limits.MaxBodyBytes,
		"max_message_bytes": c.Limits.MaxMessageBytes,
	} {
		if v < 0 {
			return c.errorf("limits."+name, "must not be negative")
		}
	}

	if len(c.Regions) == 0 {
		return c.errorf("regions", "at least one region is required")
	}
	seen := make(map[string]int, len(c.Regions))
	deployments := 0
	for i := range c.Regions {
		r := &c.Regions[i]
		field := fmt.Sprintf("regions[%d]", i)
		if err := r.validate(); err != nil {
			return c.wrap(field, err)
		}
		if first, dup := seen[r.Name]; dup {
			return c.errorf(field+".name", "duplicate region name %q (first defined at line %d)",
				r.Name, lineOf(c.root, fmt.Sprintf("regions[%d]", first)))
		}
		seen[r.Name] = i
		deployments += len(r.Deployments())
	}
	if deployments > MaxDeployments {
		return c.errorf("regions", "%d deployments (regions and their products); at most %d", deployments, MaxDeployments)
	}
	if err := c.validateHealth(); err != nil {
		return err
	}
	if err := c.validateRouting(); err != nil {
		return err
	}
	if err := c.validateDeploy(); err != nil {
		return err
	}
	if err := c.validateCORS(); err != nil {
		return err
	}
	return c.validateAuth()
}

func checkAddr(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an address", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// Load reads, decodes, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Source returns the text the config was parsed from.
func (c *Config) Source() []byte { return c.source }

// Parse decodes, defaults and validates data; path is used in messages and
// to find regions_file.
func Parse(path string, data []byte) (*Config, error) {
	c, err := decode(path, data)
	if err != nil {
		return nil, err
	}
	if err := c.overlayRegions(); err != nil {
		return nil, err
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
