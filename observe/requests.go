package observe

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

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
type Requests struct {
	tracer   trace.Tracer
	requests metric.Int64Counter
	latency  metric.Float64Histogram
	prop     propagation.TraceContext

	mu   sync.Mutex
	sets map[[2]string]metric.MeasurementOption // op, status -> attributes
	ops  map[string]metric.MeasurementOption
}

// NewRequests returns a request observer that reports to tp and mp.
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
	return &Requests{
		tracer:   tp.Tracer(scope),
		requests: requests,
		latency:  latency,
		sets:     make(map[[2]string]metric.MeasurementOption),
		ops:      make(map[string]metric.MeasurementOption),
	}, nil
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
	ctx := context.Background()
	if tp != "" {
		ctx = r.prop.Extract(ctx, traceparent(tp))
	}
	_, span := r.tracer.Start(ctx, op, trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
		trace.WithAttributes(attrOp.String(op)))
	return func(code wire.Code) {
		status := string(code)
		if status == "" {
			status = statusOK
		}
		if span.IsRecording() {
			span.SetAttributes(attrStatus.String(status))
			if serverFault(code) {
				span.SetStatus(codes.Error, status)
			}
		}
		span.End()
		ctx := context.Background()
		r.requests.Add(ctx, 1, r.attrs(op, status))
		r.latency.Record(ctx, time.Since(start).Seconds(), r.opAttrs(op))
	}
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
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.sets[k]
	if !ok {
		o = metric.WithAttributeSet(attribute.NewSet(attrOp.String(op), attrStatus.String(status)))
		r.sets[k] = o
	}
	return o
}

func (r *Requests) opAttrs(op string) metric.MeasurementOption {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.ops[op]
	if !ok {
		o = metric.WithAttributeSet(attribute.NewSet(attrOp.String(op)))
		r.ops[op] = o
	}
	return o
}
