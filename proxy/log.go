package proxy

import (
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/earshot/earshot/routing"
)

// Record describes a finished request or stream, for an Observer.
type Record struct {
	Stream  bool   // a WebSocket stream (else an HTTP request)
	Path    string // one of the API's paths, or "other"
	Region  string // the region that served it; "" when none did
	Status  int    // HTTP status; 101 for a stream that was relayed
	Reason  routing.Reason
	Country string // ISO 3166-1 alpha-2; "" when unknown
	Geo     routing.Source
	// Lat and Lon are where the client is, when Located tells it
	// precisely (a city, or the CDN's coordinates); not logged.
	Lat, Lon float64
	Located  bool
	BytesIn  int64 // from the client
	BytesOut int64 // to the client
	Duration time.Duration
	// FirstByte is, for a request, the time until the region's response
	// headers; for a stream, until the handshake completed. 0 if neither.
	FirstByte   time.Duration
	ClientClose int // streams: the close codes each side sent, 0 if none
	RegionClose int
}

// An Observer is told of every request and stream when it ends (metrics,
// the status page). Observe must be quick and safe for concurrent use.
type Observer interface {
	Observe(Record)
}

// logAccess writes the one access-log line of a request or stream and tells
// the Observer. It logs the path without the query (queries may carry keys)
// and never a header.
func (h *Handler) logAccess(r *http.Request, x *exchange, up *Upstream, extra ...zap.Field) {
	if h.opts.Observer != nil {
		h.opts.Observer.Observe(h.record(r, x, up))
	}
	level := zapcore.InfoLevel
	if x.status >= 500 && x.status != StatusClientClosed {
		level = zapcore.WarnLevel
	}
	ce := h.log.Check(level, "access")
	if ce == nil {
		return
	}
	region := ""
	if up != nil {
		region = up.Name
	}
	fields := make([]zap.Field, 0, 14+len(extra))
	fields = append(fields,
		zap.String("request_id", x.id),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("status", x.status),
		zap.String("region", region),
		zap.String("reason", string(x.reason)),
		zap.String("client_ip", hostOnly(x.client.IP)),
		zap.String("country", x.client.Place.Country),
		zap.Stringer("geo", x.client.Place.Source),
		zap.Int64("bytes_in", x.bytesIn.Load()),
		zap.Int64("bytes_out", x.bytesOut),
		zap.Duration("duration", time.Since(x.start)),
	)
	if x.key != nil {
		fields = append(fields, zap.String("key", x.key.Name))
	}
	if x.err != nil {
		fields = append(fields, zap.String("error", x.err.Error()))
	}
	ce.Write(append(fields, extra...)...)
}

func (h *Handler) record(r *http.Request, x *exchange, up *Upstream) Record {
	rec := Record{
		Path: "other", Status: x.status, Reason: x.reason, Country: x.client.Place.Country, Geo: x.client.Place.Source,
		Lat: x.client.Place.Lat, Lon: x.client.Place.Lon, Located: x.client.Place.Precise,
		BytesIn: x.bytesIn.Load(), BytesOut: x.bytesOut, Duration: time.Since(x.start), FirstByte: x.firstByte,
		ClientClose: x.clientClose, RegionClose: x.regionClose, Stream: x.stream,
	}
	if _, ok := h.routes[r.URL.Path]; ok && r.URL.RawPath == "" {
		rec.Path = r.URL.Path // bounded: an unknown path is "other"
	}
	if up != nil {
		rec.Region = up.Name
	}
	return rec
}
