package routing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fsnotify/fsnotify"
	"github.com/oschwald/maxminddb-golang/v2"
)

// GeoDB is an IP geolocation database that follows its file: when the file
// is replaced (geoipupdate writes a new one and renames it into place;
// Kubernetes swaps a symlink), Watch loads the new one and swaps it in
// atomically. Lookups never wait and never see a closed reader: a database
// is read into memory and an old one is left to the garbage collector once
// the last lookup using it returns.
//
// It reads MaxMind GeoIP2/GeoLite2 City and Country databases and DB-IP Lite
// databases in the ip-location-db layout (flat country_code, latitude,
// longitude), telling them apart by their records, not their names.
type GeoDB struct {
	path string
	cur  atomic.Pointer[geoReader]
	mu   sync.Mutex // serialises reloads
}

type geoReader struct {
	r     *maxminddb.Reader
	stamp fileStamp
	kind  string // the database_type from the metadata
}

// fileStamp identifies a version of a file.
type fileStamp struct {
	size  int64
	mtime int64
	ino   uint64
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano(), ino: inode(fi)}
}

// geoRecord decodes only what routing needs, from either layout. Fields
// absent from a record are left alone, so coordinates start as NaN.
type geoRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
	Continent struct {
		Code string `maxminddb:"code"`
	} `maxminddb:"continent"`
	Location struct {
		Latitude  float64 `maxminddb:"latitude"`
		Longitude float64 `maxminddb:"longitude"`
	} `maxminddb:"location"`

	// ip-location-db layout
	CountryCode string  `maxminddb:"country_code"`
	Latitude    float64 `maxminddb:"latitude"`
	Longitude   float64 `maxminddb:"longitude"`
}

var recordPool = sync.Pool{New: func() any { return new(geoRecord) }}

// OpenGeoDB loads the database at path.
func OpenGeoDB(path string) (*GeoDB, error) {
	d := &GeoDB{path: path}
	if _, err := d.Reload(); err != nil {
		return nil, err
	}
	return d, nil
}

// Path is the database's file.
func (d *GeoDB) Path() string { return d.path }

// Kind is the loaded database's type, from its metadata.
func (d *GeoDB) Kind() string { return d.cur.Load().kind }

// notLocation are database types that hold no location.
var notLocation = []string{"ASN", "ISP", "Anonymous", "Domain", "Connection-Type"}

// Reload loads the file if it differs from the loaded one. It reports
// whether it swapped in a new database. On error the old one stays.
func (d *GeoDB) Reload() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fi, err := os.Stat(d.path)
	if err != nil {
		return false, fmt.Errorf("geoip database: %w", err)
	}
	stamp := stampOf(fi)
	if old := d.cur.Load(); old != nil && old.stamp == stamp {
		return false, nil
	}
	data, err := os.ReadFile(d.path)
	if err != nil {
		return false, fmt.Errorf("geoip database: %w", err)
	}
	r, err := maxminddb.OpenBytes(data)
	if err != nil {
		return false, fmt.Errorf("geoip database %s: %w", d.path, err)
	}
	kind := r.Metadata.DatabaseType
	for _, s := range notLocation {
		if strings.Contains(kind, s) {
			return false, fmt.Errorf("geoip database %s: a %s database has no locations; use a City or Country database", d.path, kind)
		}
	}
	// Not r.Verify(): it rejects databases that lack optional metadata,
	// as some third-party builds do. Decoding checks its bounds anyway.
	d.cur.Store(&geoReader{r: r, stamp: stamp, kind: kind})
	return true, nil
}

// Lookup locates ip. It reports false when the database has no answer.
func (d *GeoDB) Lookup(ip netip.Addr) (Place, bool) {
	g := d.cur.Load()
	res := g.r.Lookup(ip)
	if !res.Found() {
		return Place{}, false
	}
	// Decode takes an interface, so a record would escape to the heap on
	// every lookup; a pooled one does not.
	rec := recordPool.Get().(*geoRecord)
	defer recordPool.Put(rec)
	*rec = geoRecord{}
	rec.Location.Latitude, rec.Location.Longitude = math.NaN(), math.NaN()
	rec.Latitude, rec.Longitude = math.NaN(), math.NaN()
	if res.Decode(rec) != nil {
		return Place{}, false
	}
	p := Place{Source: SourceGeoIP, Country: rec.Country.ISOCode, Continent: rec.Continent.Code}
	if p.Country == "" {
		p.Country = rec.CountryCode
	}
	if p.Country == "" {
		p.Country = rec.RegisteredCountry.ISOCode
	}
	lat, lon := rec.Location.Latitude, rec.Location.Longitude
	if math.IsNaN(lat) || math.IsNaN(lon) {
		lat, lon = rec.Latitude, rec.Longitude
	}
	if !math.IsNaN(lat) && !math.IsNaN(lon) && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180 {
		p.Lat, p.Lon, p.Located, p.Precise = lat, lon, true, true
	}
	p.fill()
	return p, p.Located
}

// Watch reloads the database whenever its file changes, until ctx ends. It
// watches the file's directory, since replacing a file by rename (as
// geoipupdate and Kubernetes do) ends a watch on the file itself. onReload
// is called after each reload attempt, with its error or nil.
func (d *GeoDB) Watch(ctx context.Context, onReload func(error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(d.path)); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(d.path), err)
	}
	// The file may have changed between the load and the watch.
	if ok, err := d.Reload(); ok || err != nil {
		onReload(err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			onReload(err)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Chmod) {
				continue
			}
			// Any change in the directory may be the file's (a symlink
			// swap names another entry); Reload compares the file itself.
			changed, err := d.Reload()
			if changed || (err != nil && !errors.Is(err, os.ErrNotExist)) {
				onReload(err)
			}
		}
	}
}
