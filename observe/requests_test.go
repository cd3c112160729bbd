package observe_test

import (
	"bufio"
	"context"
	"maps"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/observe"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// rawConn speaks frames to a server, so that requests can carry a
// traceparent.
type rawConn struct {
	t   *testing.T
	nc  net.Conn
	br  *bufio.Reader
	enc *wire.Codec
}

func (c *rawConn) do(req *wire.Request) *wire.Response {
	c.t.Helper()
	frame, err := c.enc.AppendFrame(nil, req)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.nc.Write(frame); err != nil {
		c.t.Fatal(err)
	}
	body, err := wire.ReadFrame(c.br, nil, 1<<20)
	if err != nil {
		c.t.Fatal(err)
	}
	var resp wire.Response
	if err := c.enc.Decode(body, &resp); err != nil {
		c.t.Fatal(err)
	}
	return &resp
}

// startServer runs a socket server over an in-memory store with obs.
func startServer(t *testing.T, obs sockapi.Observer) *rawConn {
	t.Helper()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := sockapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(store, sockapi.Options{Observer: obs})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		store.Close(ctx)
	})
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawConn{t: t, nc: nc, br: bufio.NewReader(nc), enc: wire.NewCodec()}
	if r := c.do(&wire.Request{ID: 1, Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}}); r.Error != nil {
		t.Fatalf("hello: %v", r.Error)
	}
	return c
}

func attrOf(kvs []attribute.KeyValue, key string) string {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// A request with a traceparent gets a server span that is a child of it,
// with the op and status; reads and writes both end their span, and the
// request counter and latency histogram count them by op and status.
func TestRequestSpansContinueTraceparent(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := observe.NewRequests(tp, mp)
	if err != nil {
		t.Fatal(err)
	}
	c := startServer(t, obs)

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	value := wire.Raw{0x81, 0xa1, 'a', 0x01} // {"a": 1}
	if r := c.do(&wire.Request{ID: 2, Op: wire.OpPut, Governor: "g", State: "s", Value: value, Traceparent: parent}); r.Error != nil {
		t.Fatalf("put: %v", r.Error)
	}
	if r := c.do(&wire.Request{ID: 3, Op: wire.OpGet, Governor: "g", State: "missing", Traceparent: parent}); r.Error == nil || r.Error.Code != wire.CodeNotFound {
		t.Fatalf("get missing: %+v", r)
	}
	if r := c.do(&wire.Request{ID: 4, Op: wire.OpGet, Governor: "g", State: "s", Traceparent: "garbage"}); r.Error != nil {
		t.Fatalf("get: %v", r.Error)
	}

	// The write's span ends on its own goroutine right after its reply:
	// wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for len(spans.Ended()) < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ended := spans.Ended()
	if len(ended) != 4 {
		t.Fatalf("%d spans ended, want 4 (hello, put, get, get)", len(ended))
	}
	wantTrace, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	wantParent, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	byOp := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range ended {
		byOp[s.Name()] = append(byOp[s.Name()], s)
	}
	put := byOp["put"]
	if len(put) != 1 {
		t.Fatalf("put spans: %d", len(put))
	}
	for _, s := range []sdktrace.ReadOnlySpan{put[0], byOp["get"][0]} {
		if s.SpanContext().TraceID() != wantTrace || s.Parent().SpanID() != wantParent || !s.Parent().IsRemote() {
			t.Errorf("%s span: trace %s parent %s, want a child of the traceparent", s.Name(), s.SpanContext().TraceID(), s.Parent().SpanID())
		}
		if s.SpanKind() != trace.SpanKindServer || attrOf(s.Attributes(), "tai.op") != s.Name() {
			t.Errorf("%s span: kind %v attrs %v", s.Name(), s.SpanKind(), s.Attributes())
		}
	}
	if got := attrOf(put[0].Attributes(), "tai.status"); got != "ok" {
		t.Errorf("put status %q, want ok", got)
	}
	if got := attrOf(byOp["get"][0].Attributes(), "tai.status"); got != string(wire.CodeNotFound) {
		t.Errorf("get missing status %q, want %s", got, wire.CodeNotFound)
	}
	bad := byOp["get"][1]
	if bad.Parent().IsValid() || bad.SpanContext().TraceID() == wantTrace {
		t.Errorf("an invalid traceparent must start a new trace: parent %v", bad.Parent())
	}

	// The metrics are recorded right after the span ends: collect until
	// the put's are in.
	read := func() (map[string]int64, int) {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		counts := map[string]int64{}
		var histOps int
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					if m.Name == "tai.requests" {
						for _, p := range d.DataPoints {
							op, _ := p.Attributes.Value("tai.op")
							st, _ := p.Attributes.Value("tai.status")
							counts[op.AsString()+"/"+st.AsString()] += p.Value
						}
					}
				case metricdata.Histogram[float64]:
					if m.Name == "tai.request.duration" {
						histOps = len(d.DataPoints)
					}
				}
			}
		}
		return counts, histOps
	}
	counts, histOps := read()
	for (counts["put/ok"] == 0 || histOps < 3) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		counts, histOps = read()
	}
	want := map[string]int64{"hello/ok": 1, "put/ok": 1, "get/ok": 1, "get/NotFound": 1}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("tai.requests{%s} = %d, want %d (all: %v)", k, counts[k], n, counts)
		}
	}
	if histOps != 3 {
		t.Errorf("tai.request.duration has %d ops, want 3", histOps)
	}
}

// BenchmarkStartRequest is what observing one request costs, with metrics
// collected (as by the Prometheus endpoint) and tracing off (the noop
// provider the sidecar uses without OTLP traces) or on.
func BenchmarkStartRequest(b *testing.B) {
	for _, tracing := range []bool{false, true} {
		name := "traces=off"
		var tp trace.TracerProvider = tracenoop.NewTracerProvider()
		if tracing {
			name = "traces=on"
			tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
		}
		b.Run(name, func(b *testing.B) {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			r, err := observe.NewRequests(tp, mp)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r.StartRequest("get", "")("")
				}
			})
		})
	}
}

// TestRequestMetricsWithoutTracing: with the noop tracer provider (no OTLP
// traces) requests are still counted by op and status and timed by op,
// from many goroutines at once (the attribute sets are cached as they
// first appear).
func TestRequestMetricsWithoutTracing(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := observe.NewRequests(tracenoop.NewTracerProvider(), mp)
	if err != nil {
		t.Fatal(err)
	}
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	codes := []wire.Code{"", wire.CodeNotFound, wire.CodeVersionConflict, ""}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 100 {
				op := []string{"get", "put"}[(g+i)%2]
				obs.StartRequest(op, parent)(codes[i%len(codes)])
			}
		})
	}
	wg.Wait()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts, timed := map[string]int64{}, map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					op, _ := p.Attributes.Value("tai.op")
					st, _ := p.Attributes.Value("tai.status")
					counts[op.AsString()+"/"+st.AsString()] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					op, _ := p.Attributes.Value("tai.op")
					timed[op.AsString()] += p.Count
				}
			}
		}
	}
	want := map[string]int64{"get/ok": 400, "get/NotFound": 200, "get/VersionConflict": 200,
		"put/ok": 400, "put/NotFound": 200, "put/VersionConflict": 200}
	if !maps.Equal(counts, want) {
		t.Errorf("tai.requests %v, want %v", counts, want)
	}
	if timed["get"] != 800 || timed["put"] != 800 || len(timed) != 2 {
		t.Errorf("tai.request.duration counts %v, want 800 each for get and put", timed)
	}
}
