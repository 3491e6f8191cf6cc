package proxy

import (
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logAccess writes the one access-log line of a request or stream. It logs
// the path without the query (queries may carry keys) and never a header.
func (h *Handler) logAccess(r *http.Request, x *exchange, up *Upstream, extra ...zap.Field) {
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
