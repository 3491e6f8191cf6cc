package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// RegionsFile is the file `deployer apply` writes: each deployed region's
// URL and capacity, laid over the config's regions of the same name. The
// router loads it with the config (regions_file) and reloads when it
// changes.
type RegionsFile struct {
	Regions []DeployedRegion `yaml:"regions"`
}

// DeployedRegion is one region as deployed: its main deployment and those
// of its products.
type DeployedRegion struct {
	Name     string                     `yaml:"name"`
	URL      string                     `yaml:"url,omitempty"`
	Capacity int                        `yaml:"capacity,omitempty"` // max containers x target inputs; 0 keeps the config's
	Products map[string]DeployedProduct `yaml:"products,omitempty"`
}

// DeployedProduct is one product's deployment in a region.
type DeployedProduct struct {
	URL      string `yaml:"url"`
	Capacity int    `yaml:"capacity,omitempty"`
}

// RegionsFilePath is where regions_file points, resolved against the
// config file's directory; "" without one.
func (c *Config) RegionsFilePath() string {
	if c.RegionsFile == "" || filepath.IsAbs(c.RegionsFile) {
		return c.RegionsFile
	}
	return filepath.Join(filepath.Dir(c.Path), c.RegionsFile)
}

// RegionsFileIgnored are the regions the regions file lists that the
// config does not: retired regions, left out.
func (c *Config) RegionsFileIgnored() []string { return c.regionsIgnored }

// RegionsFileMissing says that regions_file is set but the file does not
// exist yet (nothing deployed): the config's own URLs are in use.
func (c *Config) RegionsFileMissing() bool { return c.regionsMissing }

// ReadRegionsFile reads and strictly decodes a regions file.
func ReadRegionsFile(path string) (*RegionsFile, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var rf RegionsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil && !errors.Is(err, io.EOF) {
		return nil, data, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return &rf, data, nil
}

// overlayRegions lays the regions file over the config's regions, before
// defaults and validation. A region given a URL there loses its sim
// options: the simulated engine stood in until it was deployed.
func (c *Config) overlayRegions() error {
	path := c.RegionsFilePath()
	if path == "" {
		return nil
	}
	rf, data, err := ReadRegionsFile(path)
	if errors.Is(err, os.ErrNotExist) {
		c.regionsMissing = true
		return nil
	}
	if err != nil {
		return c.errorf("regions_file", "%v", err)
	}
	c.regionsSource = data
	seen := map[string]bool{}
	for i, d := range rf.Regions {
		where := fmt.Sprintf("%s: regions[%d]", path, i)
		if seen[d.Name] {
			return c.errorf("regions_file", "%s: region %q twice", where, d.Name)
		}
		seen[d.Name] = true
		r := c.region(d.Name)
		if r == nil {
			// A region retired from the config: its deployment is no
			// longer routed to. Not an error, or removing a region from
			// config.yaml would break every reload until the file is edited.
			c.regionsIgnored = append(c.regionsIgnored, d.Name)
			continue
		}
		if d.URL == "" && len(d.Products) == 0 {
			return c.errorf("regions_file", "%s: no url and no products", where)
		}
		if d.URL != "" {
			if err := checkDeployed(d.URL, d.Capacity); err != nil {
				return c.errorf("regions_file", "%s: %v", where, err)
			}
			r.URL, r.Sim = d.URL, nil
			if d.Capacity > 0 {
				r.Capacity = d.Capacity
			}
		}
		for name, p := range d.Products {
			if !slices.Contains(ProductNames, name) {
				return c.errorf("regions_file", "%s.products.%s: %q is not a product (want one of %s)", where, name, name, strings.Join(ProductNames, ", "))
			}
			if err := checkDeployed(p.URL, p.Capacity); err != nil {
				return c.errorf("regions_file", "%s.products.%s: %v", where, name, err)
			}
			if r.Products == nil {
				r.Products = map[string]*Product{}
			}
			// A product deployed but not in the config is routed to with
			// the region's headers: the deployer deployed it for this region.
			cp := r.Products[name]
			if cp == nil {
				cp = &Product{}
				r.Products[name] = cp
			}
			cp.URL, cp.Sim = p.URL, nil
			if p.Capacity > 0 {
				cp.Capacity = p.Capacity
			}
		}
	}
	return nil
}

// checkDeployed checks a deployed URL and capacity.
func checkDeployed(raw string, capacity int) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("url %q is not an http(s) URL", raw)
	}
	if capacity < 0 {
		return errors.New("capacity must not be negative")
	}
	return nil
}

func (c *Config) region(name string) *Region {
	for i := range c.Regions {
		if c.Regions[i].Name == name {
			return &c.Regions[i]
		}
	}
	return nil
}

// RegionsSource is the regions file's text as loaded; nil without one.
func (c *Config) RegionsSource() []byte { return c.regionsSource }
