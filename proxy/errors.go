package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/earshot/earshot/health"
)

// StatusClientClosed is logged when the client went away before the answer;
// nothing is written (there is no one to read it), as nginx's 499.
const StatusClientClosed = 499

// Error codes in Deepgram's error shape.
const (
	codeBadRequest       = "BAD_REQUEST"
	codeNotFound         = "NOT_FOUND"
	codeMethod           = "METHOD_NOT_ALLOWED"
	codeTooLarge         = "PAYLOAD_TOO_LARGE"
	codeNoRegion         = "NO_REGION_AVAILABLE"
	codeRegionNotAllowed = "REGION_NOT_ALLOWED"
	codeInvalidAuth      = "INVALID_AUTH"
	codeTooManyRequests  = "TOO_MANY_REQUESTS"
	codeBadGateway       = "BAD_GATEWAY"
	codeGatewayTimeout   = "GATEWAY_TIMEOUT"
	codeInternal         = "INTERNAL_SERVER_ERROR"
	codeClientClosedReq  = "CLIENT_CLOSED_REQUEST"
)

// apiError is an error the router answers itself, in Deepgram's shape.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

// errNoRegion is answered when no candidate can take the request.
var errNoRegion = &apiError{http.StatusServiceUnavailable, codeNoRegion,
	"No region can take this request now; retry shortly."}

// errResidencyFull is answered when every region a client's residency rule
// allows is full; the client is never sent elsewhere.
func errResidencyFull(rule string) *apiError {
	return &apiError{http.StatusServiceUnavailable, codeNoRegion,
		"Every region allowed by residency rule " + quotePath(rule) + " is busy; retry shortly."}
}

// retryAfterSeconds is the Retry-After sent with errNoRegion.
const retryAfterSeconds = 1

// upstreamError maps an error from talking to a region to what the client is
// told. It is the one place where transport failures become status codes:
// client gone 499, body over the limit 413, timeout 504, anything else 502.
// The message names the region but never its address.
func upstreamError(ctx context.Context, region string, err error) *apiError {
	var tooBig *http.MaxBytesError
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return &apiError{StatusClientClosed, codeClientClosedReq, "The client closed the request."}
	case errors.As(err, &tooBig):
		return &apiError{http.StatusRequestEntityTooLarge, codeTooLarge,
			"The request body is larger than the limit of " + strconv.FormatInt(tooBig.Limit, 10) + " bytes."}
	case health.IsTimeout(err):
		return &apiError{http.StatusGatewayTimeout, codeGatewayTimeout,
			"Region " + region + " did not answer in time."}
	}
	return &apiError{http.StatusBadGateway, codeBadGateway, "Region " + region + " could not be reached."}
}

// writeError answers with a Deepgram-shaped JSON error body:
// {"err_code":"...","err_msg":"...","request_id":"..."}.
func writeError(w http.ResponseWriter, e *apiError, requestID string) {
	if e.status == StatusClientClosed {
		return // nobody is listening
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if h.Get("Dg-Request-Id") == "" { // a region's, when it gave one
		h.Set("Dg-Request-Id", requestID)
	}
	if (e.status == http.StatusServiceUnavailable || e.status == http.StatusTooManyRequests) && h.Get("Retry-After") == "" {
		h.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	body, _ := json.Marshal(errorBody{Code: e.code, Msg: e.msg, RequestID: requestID})
	body = append(body, '\n')
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}

// errorBody is Deepgram's classic error shape, which its SDKs parse.
type errorBody struct {
	Code      string `json:"err_code"`
	Msg       string `json:"err_msg"`
	RequestID string `json:"request_id"`
}
