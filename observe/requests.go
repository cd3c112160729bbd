package observe

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Attribute keys of requests.
const (
	attrOp     = attribute.Key("tai.op")
	attrStatus = attribute.Key("tai.status")
)

// statusOK is the status attribute of a request answered without error.
const statusOK = "ok"

// Requests observes the socket server's requests (it implements
// sockapi.Observer): a server span per request, child of the request's
// traceparent when it carries a valid one, with the op and the reply's
// status (error code or "ok"); the counter tai.requests by op and status;
// the histogram tai.request.duration (seconds) by op.
//
// It is on every request's path: with tracing off (a noop provider) no span
// is started, and the attribute sets are read without a lock.
type Requests struct {
	tracer   trace.Tracer // nil: tracing off
	requests metric.Int64Counter
	latency  metric.Float64Histogram
	prop     propagation.TraceContext

	mu   sync.Mutex                                             // serializes the copies of the maps below
	sets atomic.Pointer[map[[2]string]metric.MeasurementOption] // op, status -> attributes; copied on write
	ops  atomic.Pointer[map[string]opOptions]                   // copied on write
}

// opOptions are the options of one op's measurements and spans.
type opOptions struct {
	latency metric.MeasurementOption
	span    trace.SpanStartOption
}

// spanServer marks request spans as a server's.
var spanServer = trace.WithSpanKind(trace.SpanKindServer)

// NewRequests returns a request observer that reports to tp and mp. A nil
// or noop tp turns tracing off.
func NewRequests(tp trace.TracerProvider, mp metric.MeterProvider) (*Requests, error) {
	m := mp.Meter(scope)
	requests, err := m.Int64Counter("tai.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests served, by op and status (error code, or ok)."))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	latency, err := m.Float64Histogram("tai.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from reading a request to queueing its reply, by op."),
		metric.WithExplicitBucketBoundaries(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	r := &Requests{requests: requests, latency: latency}
	if _, noop := tp.(tracenoop.TracerProvider); tp != nil && !noop {
		r.tracer = tp.Tracer(scope)
	}
	r.sets.Store(&map[[2]string]metric.MeasurementOption{})
	r.ops.Store(&map[string]opOptions{})
	return r, nil
}

// traceparent is a propagation.TextMapCarrier holding one traceparent.
type traceparent string

func (t traceparent) Get(key string) string {
	if key == "traceparent" {
		return string(t)
	}
	return ""
}
func (traceparent) Set(string, string) {}
func (traceparent) Keys() []string     { return []string{"traceparent"} }

// StartRequest implements sockapi.Observer. An invalid traceparent is
// ignored: the span starts a new trace.
func (r *Requests) StartRequest(op, tp string) func(code wire.Code) {
	start := time.Now()
	oo := r.opOptions(op)
	if r.tracer == nil {
		return func(code wire.Code) { r.end(op, oo, start, code) }
	}
	ctx := context.Background()
	if tp != "" {
		ctx = r.prop.Extract(ctx, traceparent(tp))
	}
	_, span := r.tracer.Start(ctx, op, spanServer, oo.span)
	return func(code wire.Code) {
		if span.IsRecording() {
			span.SetAttributes(attrStatus.String(status(code)))
			if serverFault(code) {
				span.SetStatus(codes.Error, status(code))
			}
		}
		span.End()
		r.end(op, oo, start, code)
	}
}

// end counts a request answered with code and records its latency.
func (r *Requests) end(op string, oo opOptions, start time.Time, code wire.Code) {
	ctx := context.Background()
	r.requests.Add(ctx, 1, r.attrs(op, status(code)))
	r.latency.Record(ctx, time.Since(start).Seconds(), oo.latency)
}

// status is the status attribute of a reply with code.
func status(code wire.Code) string {
	if code == "" {
		return statusOK
	}
	return string(code)
}

// serverFault tells the codes that mean the sidecar failed the request, as
// opposed to refusing a bad or conflicting one: spans get an error status.
func serverFault(c wire.Code) bool {
	return c == wire.CodeInternal || c == wire.CodeUnavailable || c == wire.CodeTimeout
}

// attrs returns the cached attribute set of op and status. Both come from
// small fixed sets (ops and error codes), so the cache stays small.
func (r *Requests) attrs(op, status string) metric.MeasurementOption {
	k := [2]string{op, status}
	if o, ok := (*r.sets.Load())[k]; ok {
		return o
	}
	return cacheOption(&r.mu, &r.sets, k, func() metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(attrOp.String(op), attrStatus.String(status)))
	})
}

// opOptions returns the cached options of op.
func (r *Requests) opOptions(op string) opOptions {
	if o, ok := (*r.ops.Load())[op]; ok {
		return o
	}
	return cacheOption(&r.mu, &r.ops, op, func() opOptions {
		return opOptions{
			latency: metric.WithAttributeSet(attribute.NewSet(attrOp.String(op))),
			span:    trace.WithAttributes(attrOp.String(op)),
		}
	})
}

// cacheOption adds build's value under k to the copy-on-write map m (under
// mu), unless another goroutine did first, and returns the value stored.
func cacheOption[K comparable, V any](mu *sync.Mutex, m *atomic.Pointer[map[K]V], k K, build func() V) V {
	mu.Lock()
	defer mu.Unlock()
	cur := *m.Load()
	if v, ok := cur[k]; ok {
		return v
	}
	next := maps.Clone(cur)
	v := build()
	next[k] = v
	m.Store(&next)
	return v
}
