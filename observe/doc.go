// Package observe holds the sidecar's tracing, metrics and log helpers: the
// request observer the socket server calls (a span per request, continuing
// the request's W3C traceparent, and request counters and latencies), a
// decorator of syncer.Remote (a span and counters per shared-store call), a
// decorator of txn.Locks (acquisitions timed by outcome), the push pass hook, gauges read from the store and the sync loops at
// collection time, and a slog.Handler that rate-limits repeated messages.
//
// Everything takes its trace.TracerProvider and metric.MeterProvider as
// arguments: providers are built, and shut down, only in main. With no-op
// providers the helpers cost next to nothing, and main does not install
// them at all when telemetry is off.
//
// Instrument names are listed in docs/operations.md.
package observe

// scope is the instrumentation scope of every tracer and meter here.
const scope = "github.com/tai-state/tai-state"
