package proxy

import (
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/earshot/earshot/auth"
)

// admit authenticates the client and applies its key's limits. It answers
// the client itself and reports false when the request may not go on; a
// stream admitted holds one of the key's streams until it ends.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request, x *exchange, a *auth.Authenticator, stream bool) bool {
	key, _, err := a.Authenticate(r, stream)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Token realm="earshot"`)
		if stream {
			// A browser cannot read a refused handshake's status or body:
			// say plainly in the log why its socket failed.
			h.log.Warn("stream refused: 401 "+err.Error(), zap.String("request_id", x.id),
				zap.String("client_ip", hostOnly(x.client.IP)), zap.String("path", r.URL.Path))
		}
		h.reject(w, r, x, &apiError{http.StatusUnauthorized, codeInvalidAuth, authMessage(err)})
		return false
	}
	x.key = key
	if ok, wait := key.Allow(time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		h.reject(w, r, x, &apiError{http.StatusTooManyRequests, codeTooManyRequests,
			"Key " + quotePath(key.Name) + " is over its request rate; retry after the Retry-After seconds."})
		return false
	}
	if stream && !key.OpenStream() {
		w.Header().Set("Retry-After", "1")
		h.reject(w, r, x, &apiError{http.StatusTooManyRequests, codeTooManyRequests,
			"Key " + quotePath(key.Name) + " has as many streams open as it may; close one first."})
		return false
	}
	return true
}

// stripQueryParam removes every name=... from a raw query, leaving the
// rest exactly as the client wrote it.
func stripQueryParam(raw, name string) string {
	if raw == "" {
		return raw
	}
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		k, _, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

// quoteMethod keeps a hostile method name out of an error message.
func quoteMethod(m string) string {
	if len(m) > 16 || !isPrintableASCII(m) {
		return "This method"
	}
	return m
}

// authMessage is a refusal's err_msg: the reason as a sentence.
func authMessage(err error) string {
	msg := err.Error()
	return strings.ToUpper(msg[:1]) + msg[1:] + "."
}
