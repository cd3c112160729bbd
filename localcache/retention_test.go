package localcache

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer/memremote"
)

// TestRetentionRound: a retention round cuts each governor's history as
// Cleanup with the governor's policy would, leaves governors without a
// policy whole, and keeps the events of changes still in the journal.
func TestRetentionRound(t *testing.T) {
	clock := newTickClock()
	policies := map[string]Retention{"a": {KeepEvents: 25}, "b": {}, "c": {KeepEvents: 5}}
	var logs syncBuffer
	s := openMem(t, withNow(clock.Now), withSnapshots(10, 5), func(o *Options) {
		o.Retention = func(gov string) Retention { return policies[gov] }
		o.RetentionEvery = -1 // rounds run by hand here
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := context.Background()
	a, b, c := key("a", "s"), key("b", "s"), key("c", "s")
	fillVersions(t, s, a, 1, 60)
	fillVersions(t, s, b, 1, 60)
	drain(t, s, memremote.New())
	fillVersions(t, s, c, 1, 30) // not pushed: every change is still in the journal

	if err := s.retainOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if evs := eventVersions(t, s, a); len(evs) != 30 || evs[0] != 31 {
		t.Fatalf("a: events left %v, want 31..60", evs)
	}
	if got := snapshotVersionsOf(t, s, a); !slices.Equal(got, []uint64{30, 40, 50, 60}) {
		t.Fatalf("a: snapshots left %v", got)
	}
	if evs := eventVersions(t, s, b); len(evs) != 60 {
		t.Fatalf("b (no policy): %d events left, want 60", len(evs))
	}
	if evs := eventVersions(t, s, c); len(evs) != 30 {
		t.Fatalf("c (pending): %d events left, want 30", len(evs))
	}
	if st := s.Stats().Retention; st != (RetentionStats{Rounds: 1, Events: 30, Snapshots: 1}) {
		t.Fatalf("stats %+v", st)
	}
	for _, k := range []Key{a, b, c} {
		if rep, err := s.Validate(ctx, k.Governor, ""); err != nil || len(rep.Violations) != 0 {
			t.Fatalf("validate %s: %+v, %v", k.Governor, rep, err)
		}
	}

	// c's cut is held back by its changes in the journal, and says so.
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "c", KeepEvents: 5})
	if err != nil || rep.Cleaned != 0 || rep.Events != 0 || rep.Held != 1 {
		t.Fatalf("cleanup of c: %+v, %v; want nothing removed and 1 state held", rep, err)
	}
	if rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "b", KeepEvents: 5}); err != nil || rep.Held != 0 || rep.Events != 50 {
		t.Fatalf("cleanup of b: %+v, %v; want 50 events removed (cut at 50), none held", rep, err)
	}

	// A second round finds nothing more to remove.
	if err := s.retainOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats().Retention; st != (RetentionStats{Rounds: 2, Events: 30, Snapshots: 1}) {
		t.Fatalf("stats after a second round %+v", st)
	}
	// c was held back in both rounds: said once.
	if n := strings.Count(logs.String(), "history retention keeps the events of changes not yet in the shared store"); n != 1 ||
		!strings.Contains(logs.String(), "governor=c states_held=1") {
		t.Fatalf("the held-back line logged %d times, want once for c:\n%s", n, logs.String())
	}
}

// TestRetentionLoop: the store applies the policies by itself every
// RetentionEvery, and Close stops the loop.
func TestRetentionLoop(t *testing.T) {
	s := openMem(t, withSnapshots(10, 5), func(o *Options) {
		o.Retention = func(string) Retention { return Retention{KeepEvents: 1} }
		o.RetentionEvery = time.Millisecond
	})
	k := key("g", "s")
	fillVersions(t, s, k, 1, 20)
	drain(t, s, memremote.New())
	// The round counts what it removed once its cleanup returns: wait for
	// the count, not for the events to go.
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Retention.Events == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing removed after 30 s (stats %+v)", s.Stats().Retention)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Keep 1: the cut is snapshot 10 (version 20's event must stay).
	if evs := eventVersions(t, s, k); len(evs) != 10 || evs[0] != 11 {
		t.Fatalf("events left %v, want 11..20", evs)
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{10, 20}) {
		t.Fatalf("snapshots left %v", got)
	}
	if st := s.Stats().Retention; st.Events != 10 || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// syncBuffer is a bytes.Buffer that the store's goroutines may log to at
// once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
