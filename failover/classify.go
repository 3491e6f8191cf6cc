package failover

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/earshot/earshot/health"
)

// Result is how one attempt ended, as the caller saw it.
type Result struct {
	// Status is the region's HTTP status (the handshake's for a stream); 0
	// if it did not answer.
	Status int
	// Err is why there was no answer (a transport error, a timeout, the
	// attempt's context), or, with Status set, why the answer was cut short
	// after it began.
	Err error
	// RetryAfter is the region's Retry-After, if any.
	RetryAfter time.Duration
	// Latency is a sample of how long the region takes to answer, when the
	// answer's time does not depend on the work (a handshake, a model list);
	// 0: none.
	Latency time.Duration
}

// Cause names what made an attempt fail, for metrics and logs.
type Cause int32

// Causes.
const (
	CauseNone           Cause = iota
	CauseConnect              // the region could not be reached
	CauseTimeout              // connect, handshake or answer timed out
	CauseDown                 // the region was declared down during the attempt
	CauseReset                // the connection broke before an answer
	CauseFull                 // 429
	CauseUnavailable          // 503
	CauseInternal             // 500
	CauseBadGateway           // 502
	CauseGatewayTimeout       // 504
	CauseCut                  // the answer was cut short after it began
	numCauses
)

var causeNames = [numCauses]string{"", "connect", "timeout", "region_down", "reset", "429", "503", "500", "502", "504", "cut"}

func (c Cause) String() string { return causeNames[c] }

// Causes lists every cause, for metrics.
func Causes() []Cause {
	out := make([]Cause, 0, numCauses-1)
	for c := Cause(1); c < numCauses; c++ {
		out = append(out, c)
	}
	return out
}

// Verdict is what a Result means.
type Verdict struct {
	Outcome health.Outcome // what the region's breaker, capacity and latency hear
	Retry   bool           // another region should be tried, if the request can be replayed
	Cause   Cause
}

// Classify is the one outcome classifier. Deepgram's meaning of each answer
// is from its API reference and self-hosted docs (../shared/PROTOCOL.md):
//
//	result                 Deepgram / Modal meaning                  breaker   capacity  retry
//	2xx, 101, other 4xx    served, or the client's own mistake      success   -         no
//	429                    max_active_requests reached (full)       full*     learn     yes
//	503                    full, or no container up yet (Modal)     failure   learn     yes
//	500                    the engine failed the request            failure   -         yes
//	502                    Modal's proxy could not reach a container failure  -         yes
//	504                    the work or a gateway timed out          failure   -         yes
//	connect error          region unreachable                       failure   -         yes
//	reset before answer    the region dropped the connection        failure   -         yes
//	timeout                hung or overloaded (also cools it down)  failure   -         yes
//	region declared down   probes found it hung or dead mid-attempt failure   -         yes
//	cut after answer       the answer broke off (a later failure)   failure   -         no
//	client gone            nothing about the region                 ignored   -         no
//
// * a 429 is spillover, not sickness: the breaker ignores it until
// FullStreak of them in a row, and its Retry-After keeps new work away.
// "learn" lowers the learned capacity to what the region held when it
// refused. Retrying needs a request that can be replayed: nothing sent to
// the client yet and the body buffered (or none).
func Classify(res Result) Verdict {
	switch err := res.Err; {
	case err == nil:
	case errors.Is(err, context.Canceled):
		return Verdict{Outcome: health.Outcome{Kind: health.Canceled}}
	case res.Status != 0:
		return Verdict{Outcome: health.Outcome{Kind: health.Failure, Status: res.Status}, Cause: CauseCut}
	case errors.Is(err, health.ErrDown):
		return failure(CauseDown, false)
	case health.IsTimeout(err):
		return failure(CauseTimeout, true)
	case isDialError(err):
		return failure(CauseConnect, false)
	default:
		return failure(CauseReset, false)
	}
	o := health.Outcome{Kind: health.Failure, Status: res.Status}
	v := Verdict{Retry: true}
	switch res.Status {
	case http.StatusTooManyRequests:
		o.Kind, o.Shrink, o.RetryAfter, v.Cause = health.Full, true, res.RetryAfter, CauseFull
	case http.StatusServiceUnavailable:
		o.Shrink, v.Cause = true, CauseUnavailable
	case http.StatusInternalServerError:
		v.Cause = CauseInternal
	case http.StatusBadGateway:
		v.Cause = CauseBadGateway
	case http.StatusGatewayTimeout:
		v.Cause = CauseGatewayTimeout
	default:
		o.Kind, o.Latency, v.Retry = health.Success, res.Latency, false
	}
	v.Outcome = o
	return v
}

func failure(c Cause, timeout bool) Verdict {
	return Verdict{Outcome: health.Outcome{Kind: health.Failure, Timeout: timeout}, Retry: true, Cause: c}
}

// isDialError reports whether err happened while connecting.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
