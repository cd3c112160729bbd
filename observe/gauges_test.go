package observe_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/observe"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

func TestRegisterGauges(t *testing.T) {
	ctx := context.Background()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)
	for _, s := range []string{"a", "b"} {
		if _, err := store.Write(ctx, localcache.Write{Key: localcache.Key{Governor: "g", State: s}, Value: []byte{0x01}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.Get(ctx, localcache.Key{Governor: "g", State: "a"}); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	push := func() syncer.Stats {
		return syncer.Stats{Passes: 3, EntriesPushed: 5, ConflictsByResolver: map[string]uint64{"merge>lww": 4}, ConflictStorms: 1}
	}
	pull := func() syncer.PullStats {
		return syncer.PullStats{Records: 7, Pending: 1, Stale: 2, Undecodable: 3, UndecodableStates: 1, UndecodableDropped: 4}
	}
	if err := observe.RegisterGauges(mp, observe.Sources{Store: store, Push: push, Pull: pull}); err != nil {
		t.Fatal(err)
	}
	sums, names := collect(t, reader)
	for k, want := range map[string]int64{
		"tai.journal.depth{}":                            2,
		"tai.states{}":                                   2,
		"tai.push.passes{}":                              3,
		"tai.push.entries{}":                             5,
		"tai.pull.records{}":                             7,
		"tai.pull.skipped{reason=pending}":               1,
		"tai.pull.skipped{reason=stale}":                 2,
		"tai.pull.skipped{reason=undecodable}":           3,
		"tai.pull.undecodable{}":                         1,
		"tai.pull.undecodable_dropped{}":                 4,
		"tai.push.conflicts_decided{resolver=merge>lww}": 4,
		"tai.push.conflict_storms{}":                     1,
	} {
		if sums[k] != want {
			t.Errorf("%s = %d, want %d", k, sums[k], want)
		}
	}
	for _, n := range []string{"tai.store.wal.syncs", "tai.store.wal.sync_time", "tai.journal.oldest_age", "tai.journal.parked", "tai.cache.hits", "tai.cache.misses", "tai.cache.hit_ratio", "tai.push.last_success"} {
		if !names[n] {
			t.Errorf("metric %s missing", n)
		}
	}
}

// TestLogSyncs: every commit group of an on-disk store is one observation of
// tai.store.wal.sync.duration, and their sum is the store's own total.
func TestLogSyncs(t *testing.T) {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	hook, err := observe.LogSyncs(mp)
	if err != nil {
		t.Fatal(err)
	}
	var bytes atomic.Int64
	store, err := localcache.Open(localcache.Options{Dir: t.TempDir(), NodeID: "n1",
		OnLogSync: func(d time.Duration, n int) { bytes.Add(int64(n)); hook(d, n) }})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)
	const writes = 5
	for i := range writes {
		if _, err := store.Write(ctx, localcache.Write{Key: localcache.Key{Governor: "g", State: fmt.Sprint("s", i)}, Value: []byte{0x01}}); err != nil {
			t.Fatal(err)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	var h *metricdata.HistogramDataPoint[float64]
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "tai.store.wal.sync.duration" {
				h = &m.Data.(metricdata.Histogram[float64]).DataPoints[0]
			}
		}
	}
	if h == nil {
		t.Fatal("tai.store.wal.sync.duration not reported")
	}
	st := store.Stats()
	if h.Count != st.WALSyncs || st.WALSyncs < 1 || st.WALSyncs > writes {
		t.Fatalf("%d observations, %d log syncs for %d serial writes", h.Count, st.WALSyncs, writes)
	}
	if d := time.Duration(h.Sum * float64(time.Second)); d <= 0 || d > st.WALSyncTime+time.Microsecond || d < st.WALSyncTime-time.Microsecond {
		t.Fatalf("histogram sum %v, store's total %v", d, st.WALSyncTime)
	}
	if bytes.Load() == 0 {
		t.Fatal("the hook saw no bytes appended")
	}
}

// TestRetentionMetrics: what the store's history retention removes is
// counted in tai.history.retention.removed, by kind: with a shared store
// once the changes are pushed, without one by merging the journal.
func TestRetentionMetrics(t *testing.T) {
	for _, tc := range []struct {
		name      string
		localOnly bool
		want      map[string]int64
	}{
		// The cut is snapshot 3: events 1 to 3 and snapshot 2 go.
		{"shared", false, map[string]int64{
			"tai.history.retention.removed{kind=events}":          3,
			"tai.history.retention.removed{kind=snapshots}":       1,
			"tai.history.retention.removed{kind=journal_entries}": 0,
			"tai.history.retention.errors{}":                      0,
		}},
		// Entries 1 and 2 merge into 3's, whose event stays.
		{"local-only", true, map[string]int64{
			"tai.history.retention.removed{kind=events}":          2,
			"tai.history.retention.removed{kind=snapshots}":       1,
			"tai.history.retention.removed{kind=journal_entries}": 2,
			"tai.history.retention.errors{}":                      0,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "n1", LocalOnly: tc.localOnly,
				Snapshots:      func(string) (int, int) { return 0, 5 }, // snapshots by hand only
				Retention:      func(string) localcache.Retention { return localcache.Retention{MaxAge: time.Nanosecond} },
				RetentionEvery: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close(ctx)
			k := localcache.Key{Governor: "g", State: "s"}
			for i := range 3 {
				if _, err := store.Write(ctx, localcache.Write{Key: k, Value: []byte{byte(i)}}); err != nil {
					t.Fatal(err)
				}
				if i > 0 {
					if _, _, err := store.Snapshot(ctx, k); err != nil {
						t.Fatal(err)
					}
				}
			}
			if !tc.localOnly {
				// Events of changes still in the journal stay: push them.
				push := syncer.New(store, memremote.New(), syncer.Options{})
				for store.Depth() > 0 {
					if _, err := push.SyncOnce(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			// A round adds to each count in turn once its cleanup returns:
			// wait for all of them.
			done := func() bool {
				st := store.Stats().Retention
				return st.Events >= uint64(tc.want["tai.history.retention.removed{kind=events}"]) &&
					st.Snapshots >= uint64(tc.want["tai.history.retention.removed{kind=snapshots}"]) &&
					st.Merged >= uint64(tc.want["tai.history.retention.removed{kind=journal_entries}"])
			}
			deadline := time.Now().Add(30 * time.Second)
			for !done() {
				if time.Now().After(deadline) {
					t.Fatalf("retention removed too little in 30 s: %+v", store.Stats().Retention)
				}
				time.Sleep(time.Millisecond)
			}
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			if err := observe.RegisterGauges(mp, observe.Sources{Store: store}); err != nil {
				t.Fatal(err)
			}
			sums, _ := collect(t, reader)
			for k, want := range tc.want {
				if got, ok := sums[k]; !ok || got != want {
					t.Errorf("%s = %d (reported: %v), want %d", k, got, ok, want)
				}
			}
		})
	}
}
