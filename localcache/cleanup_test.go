package localcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer/memremote"
)

// fillVersions writes versions from..to of k, values "v<version>", each
// once the snapshots due are taken (so none is skipped: a state due again
// before its snapshot is taken is snapshotted once, at the later version).
func fillVersions(t testing.TB, s *Store, k Key, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		mustPut(t, s, k, fmt.Sprintf("v%d", i))
		waitSnapshots(t, s)
	}
}

func eventVersions(t testing.TB, s *Store, k Key) []uint64 {
	t.Helper()
	var out []uint64
	for _, e := range mustEvents(t, s, k) {
		out = append(out, e.ToVersion)
	}
	return out
}

// Cleanup cuts a state's history at its newest snapshot that the policy
// allows, keeps it as the base, and StateAt answers from there on.
func TestCleanupKeepEvents(t *testing.T) {
	clock := newTickClock()
	s := openMem(t, withNow(clock.Now), withSnapshots(10, 5))
	ctx := context.Background()
	k := key("g", "s")
	fillVersions(t, s, k, 1, 60)
	waitSnapshots(t, s)
	remote := memremote.New()
	drain(t, s, remote)
	v10, err := s.StateAtVersion(ctx, k, 10)
	if err != nil {
		t.Fatal(err)
	}
	v30, err := s.StateAtVersion(ctx, k, 30)
	if err != nil {
		t.Fatal(err)
	}

	// A dry run reports and removes nothing.
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 25, DryRun: true})
	if err != nil || rep.Cleaned != 1 || rep.Events != 30 || rep.Snapshots != 1 || len(mustEvents(t, s, k)) != 60 {
		t.Fatalf("dry run: %+v, %v", rep, err)
	}
	// 60 events, keep 25: the cut is the newest snapshot with at most 35
	// events up to it, 30; snapshot 20 (older) goes too.
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 25})
	if err != nil || rep.States != 1 || rep.Cleaned != 1 || rep.Events != 30 || rep.Snapshots != 1 ||
		len(rep.Cuts) != 1 || rep.Cuts[0] != (CleanupCut{Key: k, Base: 30, Events: 30, Snapshots: 1}) {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	if evs := eventVersions(t, s, k); len(evs) != 30 || evs[0] != 31 {
		t.Fatalf("events left %v", evs)
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{30, 40, 50, 60}) {
		t.Fatalf("snapshots left %v", got)
	}
	if got := markVersionsOf(t, s, k); !slices.Equal(got, []uint64{40, 50, 60}) {
		t.Fatalf("time marks left %v", got)
	}

	// The base answers its version and times from its own on; before it
	// is a history gap.
	if p, err := s.StateAtVersion(ctx, k, 30); err != nil || string(p.Value) != "v30" || p.OpID != v30.OpID {
		t.Fatalf("version 30: %+v, %v", p, err)
	}
	_, err = s.StateAtVersion(ctx, k, 29)
	wantGap(t, err, 0, 30)
	if p, err := s.StateAt(ctx, k, time.Unix(0, v30.Change.Time)); err != nil || p.Version != 30 || !p.Exact {
		t.Fatalf("at version 30's time: %+v, %v", p, err)
	}
	_, err = s.StateAt(ctx, k, time.Unix(0, v10.Change.Time))
	wantGap(t, err, 0, 29)
	rv, err := s.Validate(ctx, "g", "")
	if err != nil || !rv.OK() || rv.GapCount != 1 || rv.Gaps[0] != (Gap{Key: k, After: 0, Through: 29, Reason: GapRemoved}) {
		t.Fatalf("validate: %+v, %v", rv, err)
	}

	// Snapshot retention keeps the base while newer snapshots come.
	fillVersions(t, s, k, 61, 100)
	waitSnapshots(t, s)
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{30, 60, 70, 80, 90, 100}) {
		t.Fatalf("snapshots %v, want the base and the 5 newest", got)
	}
	if p, err := s.StateAtVersion(ctx, k, 30); err != nil || string(p.Value) != "v30" {
		t.Fatalf("base after more snapshots: %+v, %v", p, err)
	}

	// Events still in the journal stay: the cut is below the oldest.
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", State: "s", KeepEvents: 1})
	if err != nil || len(rep.Cuts) != 1 || rep.Cuts[0].Base != 60 {
		t.Fatalf("cleanup with versions 61 to 100 pending: %+v, %v", rep, err)
	}
	if entries, err := s.Pending(ctx, 0, 0); err != nil || len(entries) != 40 {
		t.Fatalf("pending after cleanup: %d entries, %v", len(entries), err)
	}
	drain(t, s, remote)
	if rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 1}); err != nil || rep.Cuts[0].Base != 90 {
		t.Fatalf("cleanup after the push: %+v, %v", rep, err)
	}
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}
}

// Cleanup by age removes only events older than the age, and a state
// without a snapshot keeps everything.
func TestCleanupMaxAge(t *testing.T) {
	clock := newTestClock()
	s := openMem(t, withNow(clock.Now), func(o *Options) {
		o.Snapshots = func(gov string) (int, int) {
			if gov == "bare" {
				return 0, 0
			}
			return 10, 10
		}
	})
	ctx := context.Background()
	k, bare := key("g", "s"), key("bare", "s")
	start := clock.Now()
	for i := 1; i <= 40; i++ {
		clock.Set(start.Add(time.Duration(i) * time.Hour))
		mustPut(t, s, k, fmt.Sprintf("v%d", i))
		mustPut(t, s, bare, "x")
		waitSnapshots(t, s)
	}
	waitSnapshots(t, s)
	drain(t, s, memremote.New())
	clock.Set(start.Add(41 * time.Hour))
	// Older than 15 hours: versions up to 25; the newest snapshot at or
	// below is 20.
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", MaxAge: 15*time.Hour + time.Minute})
	if err != nil || rep.States != 1 || rep.Cleaned != 1 || rep.Cuts[0].Key != k || rep.Cuts[0].Base != 20 || rep.Events != 20 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	// A state without a snapshot keeps every event.
	if rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "bare", MaxAge: time.Minute}); err != nil || rep.Cleaned != 0 ||
		len(eventVersions(t, s, bare)) != 40 {
		t.Fatalf("cleanup of a state without snapshots: %+v, %v", rep, err)
	}
	// Both criteria: old enough (up to version 39) but keeping 15 of the
	// 20 events left allows no cut above 20, where the history starts.
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", State: "s", MaxAge: time.Hour, KeepEvents: 15})
	if err != nil || rep.Cleaned != 0 {
		t.Fatalf("cleanup by age and count: %+v, %v", rep, err)
	}
	if evs := eventVersions(t, s, k); evs[0] != 21 || len(evs) != 20 {
		t.Fatalf("events %v, want 21 to 40", evs)
	}
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", State: "s", MaxAge: time.Hour, KeepEvents: 10})
	if err != nil || rep.Cleaned != 1 || rep.Cuts[0].Base != 30 {
		t.Fatalf("cleanup by age and count: %+v, %v", rep, err)
	}
}

func TestCleanupInvalid(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	for _, c := range []struct {
		p     CleanupPolicy
		field string
	}{
		{CleanupPolicy{Governor: "g"}, "max_age"},
		{CleanupPolicy{Governor: "g", MaxAge: -time.Second}, "max_age"},
		{CleanupPolicy{Governor: "g", KeepEvents: -1}, "keep_events"},
		{CleanupPolicy{Governor: "", KeepEvents: 1}, "governor"},
		{CleanupPolicy{Governor: "g", State: "a/b", KeepEvents: 1}, "state"},
	} {
		_, err := s.Cleanup(ctx, c.p)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: %v, want invalid %s", c.p, err, c.field)
		}
	}
}

// TestCleanupManyEvents: a cut of more events than one mutation deletes
// goes a chunk at a time, and removes every one of them.
func TestCleanupManyEvents(t *testing.T) {
	s := openMem(t, withSnapshots(cleanupChunk, 0))
	ctx := context.Background()
	k := key("g", "s")
	n := 2*cleanupChunk + 100
	fillVersions(t, s, k, 1, n)
	drain(t, s, memremote.New())
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 50})
	want := CleanupCut{Key: k, Base: uint64(2 * cleanupChunk), Events: 2 * cleanupChunk, Snapshots: 1}
	if err != nil || rep.Events != 2*cleanupChunk || rep.Snapshots != 1 || len(rep.Cuts) != 1 || rep.Cuts[0] != want {
		t.Fatalf("cleanup: %+v, %v; want %+v", rep, err, want)
	}
	if evs := eventVersions(t, s, k); len(evs) != 100 || evs[0] != uint64(2*cleanupChunk+1) {
		t.Fatalf("%d events left, from %v", len(evs), evs[:min(1, len(evs))])
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{2 * cleanupChunk}) {
		t.Fatalf("snapshots left %v", got)
	}
	if p, err := s.StateAtVersion(ctx, k, uint64(n)); err != nil || string(p.Value) != fmt.Sprintf("v%d", n) {
		t.Fatalf("latest version: %+v, %v", p, err)
	}
}
