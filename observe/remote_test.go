package observe_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tai-state/tai-state/observe"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// collect returns int64 sums by metric name and "k=v,..." attributes, and
// the names of every metric seen.
func collect(t *testing.T, r *sdkmetric.ManualReader) (map[string]int64, map[string]bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	sums, names := map[string]int64{}, map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			names[m.Name] = true
			var pts []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				pts = d.DataPoints
			case metricdata.Gauge[int64]:
				pts = d.DataPoints
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					sums[m.Name+"{"+p.Attributes.Encoded(attribute.DefaultEncoder())+"}#count"] += int64(p.Count)
				}
			}
			for _, p := range pts {
				sums[m.Name+"{"+p.Attributes.Encoded(attribute.DefaultEncoder())+"}"] += p.Value
			}
		}
	}
	return sums, names
}

// A push pass through an instrumented remote: a pass span whose children
// are the commit spans, calls counted by method and outcome, the sync lag
// recorded per applied change, the watcher capability kept, and failures
// classified and remembered in Reachability.
func TestRemoteObserver(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := observe.NewRemoteObserver(tp, mp)
	if err != nil {
		t.Fatal(err)
	}
	onPass, err := observe.PushPasses(tp, mp)
	if err != nil {
		t.Fatal(err)
	}
	mem := memremote.New()
	remote := obs.Wrap(mem)
	if _, ok := remote.(syncer.Watcher); !ok {
		t.Fatal("the wrapped remote lost the Watcher capability")
	}
	journal := syncer.NewMemJournal("n1")
	if _, err := journal.Append(syncer.MemWrite{Key: syncer.Key{Governor: "g", State: "a"}, Value: []byte{0x01}},
		syncer.MemWrite{Key: syncer.Key{Governor: "g", State: "b"}, Value: []byte{0x02}}); err != nil {
		t.Fatal(err)
	}
	push := syncer.New(journal, remote, syncer.Options{OnPass: onPass})
	ctx := context.Background()
	rep, err := push.SyncOnce(ctx)
	if err != nil || rep.Pushed != 2 {
		t.Fatalf("push: %+v %v", rep, err)
	}
	if _, err := remote.Get(ctx, syncer.Key{Governor: "g", State: "missing"}); err == nil {
		t.Fatal("get missing: no error")
	}
	if r := obs.Reachability(); !r.Reachable() || !r.LastFailure.IsZero() {
		t.Fatalf("reachability after answers: %+v", r)
	}
	mem.SetOffline(true)
	if _, _, err := remote.Changes(ctx, "g", "", 10); err == nil {
		t.Fatal("changes while offline: no error")
	}
	if r := obs.Reachability(); r.Reachable() || r.Outcome != observe.OutcomeUnavailable {
		t.Fatalf("reachability after a failure: %+v", r)
	}

	var pass sdktrace.ReadOnlySpan
	var commits []sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "push.pass":
			pass = s
		case "remote.commit":
			commits = append(commits, s)
		}
	}
	if pass == nil || len(commits) == 0 {
		t.Fatalf("spans: pass %v, %d commits", pass, len(commits))
	}
	for _, c := range commits {
		if c.Parent().SpanID() != pass.SpanContext().SpanID() {
			t.Errorf("commit span is not a child of the pass span")
		}
		if attrOf(c.Attributes(), "tai.remote.outcome") != "ok" {
			t.Errorf("commit outcome: %v", c.Attributes())
		}
	}
	if attrOf(pass.Attributes(), "tai.push.pushed") != "2" {
		t.Errorf("pass attributes: %v", pass.Attributes())
	}

	sums, _ := collect(t, reader)
	for k, want := range map[string]int64{
		"tai.remote.calls{tai.remote.method=commit,tai.remote.outcome=ok}":           int64(len(commits)),
		"tai.remote.calls{tai.remote.method=get,tai.remote.outcome=not_found}":       1,
		"tai.remote.calls{tai.remote.method=changes,tai.remote.outcome=unavailable}": 1,
		"tai.sync.lag{}#count":           2,
		"tai.push.pass.duration{}#count": 1,
	} {
		if sums[k] != want {
			t.Errorf("%s = %d, want %d", k, sums[k], want)
		}
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, observe.OutcomeOK},
		{syncer.ErrNotFound, observe.OutcomeNotFound},
		{&syncer.ConflictError{}, observe.OutcomeConflict},
		{&syncer.FenceRejectedError{Resource: "r", Token: 1, Current: 2}, observe.OutcomeFenceRejected},
		{syncer.ErrTooLarge, observe.OutcomeTooLarge},
		{&syncer.Error{Op: "get", Kind: syncer.ErrUndecodable}, observe.OutcomeUndecodable},
		{&syncer.SkippedError{Op: "changes", Governor: "g", Docs: []*syncer.UndecodableError{{Doc: "d", Err: errors.New("bad")}}},
			observe.OutcomeUndecodable},
		{syncer.ErrPermanent, observe.OutcomePermanent},
		{syncer.ErrUnavailable, observe.OutcomeUnavailable},
		{context.Canceled, observe.OutcomeCanceled},
		{context.DeadlineExceeded, observe.OutcomeError},
	} {
		if got := observe.Outcome(tc.err); got != tc.want {
			t.Errorf("Outcome(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// fakeHistory answers history calls: one event, one snapshot; PutSnapshot
// fails as an unreachable store would.
type fakeHistory struct{}

func (fakeHistory) Events(context.Context, syncer.Key, uint64, int) ([]syncer.Event, error) {
	return []syncer.Event{{ToVersion: 1}}, nil
}

func (fakeHistory) PutSnapshot(context.Context, syncer.Snapshot, int) (syncer.SnapshotStatus, error) {
	return 0, syncer.ErrUnavailable
}

func (fakeHistory) Snapshots(context.Context, syncer.Key, uint64, uint64) ([]syncer.Snapshot, error) {
	return []syncer.Snapshot{{}}, nil
}

// TestRemoteObserverHistory: history calls (bootstrap, snapshot copies)
// are counted and traced like the others.
func TestRemoteObserverHistory(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	obs, err := observe.NewRemoteObserver(tp, sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	h := obs.WrapHistory(fakeHistory{})
	ctx := context.Background()
	k := syncer.Key{Governor: "g", State: "s"}
	if es, err := h.Events(ctx, k, 0, 10); err != nil || len(es) != 1 {
		t.Fatalf("events: %v %v", es, err)
	}
	if ss, err := h.Snapshots(ctx, k, 0, 10); err != nil || len(ss) != 1 {
		t.Fatalf("snapshots: %v %v", ss, err)
	}
	if _, err := h.PutSnapshot(ctx, syncer.Snapshot{}, 5); err == nil {
		t.Fatal("put_snapshot: no error")
	}
	sums, _ := collect(t, reader)
	for k, want := range map[string]int64{
		"tai.remote.calls{tai.remote.method=events,tai.remote.outcome=ok}":                1,
		"tai.remote.calls{tai.remote.method=snapshots,tai.remote.outcome=ok}":             1,
		"tai.remote.calls{tai.remote.method=put_snapshot,tai.remote.outcome=unavailable}": 1,
	} {
		if sums[k] != want {
			t.Errorf("%s = %d, want %d", k, sums[k], want)
		}
	}
	names := map[string]bool{}
	for _, s := range spans.Ended() {
		names[s.Name()] = true
	}
	for _, n := range []string{"remote.events", "remote.snapshots", "remote.put_snapshot"} {
		if !names[n] {
			t.Errorf("no span %s (spans: %v)", n, names)
		}
	}
	if r := obs.Reachability(); r.Outcome != observe.OutcomeUnavailable {
		t.Errorf("reachability after a failed put_snapshot: %+v", r)
	}
}
