package firestore_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// commitChain commits versions 1..n of k, one change (and event) each, the
// third a deletion and the others puts; it returns the records.
func commitChain(t *testing.T, r syncer.Remote, k syncer.Key, n int) []syncer.Record {
	t.Helper()
	var recs []syncer.Record
	for v := uint64(1); v <= uint64(n); v++ {
		op := fmt.Sprintf("n1-%d", v)
		rec := syncer.Record{Key: k, Value: []byte{0xa1, byte('a' + v)}, Version: v, Origin: "n1", OpID: op,
			Change: syncer.ChangeMeta{Actor: "me", Reason: "why", Time: int64(v) * 1000},
			Clock:  syncer.Clock{Lamport: v, HLC: v << 16, Vector: map[string]uint64{"n1": v}}}
		ev := syncer.Event{Action: syncer.ActionPut, FromVersion: v - 1, ToVersion: v, Value: rec.Value, Change: rec.Change,
			Origin: "n1", OpID: op, Clock: rec.Clock, Transition: "ship"}
		if v == 3 {
			rec.Deleted, rec.Value = true, nil
			ev.Action, ev.Value, ev.Transition = syncer.ActionDelete, nil, ""
		}
		if _, err := r.Commit(context.Background(), syncer.Batch{Changes: []syncer.Change{{Key: k, BaseVersion: v - 1, Record: rec,
			Events: []syncer.Event{ev}}}}); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// Snapshots are written only for the versions the shared event log holds,
// once per version, with retention; Snapshots reads them back in order, up
// to a version.
func TestSnapshots(t *testing.T) {
	r := firestoretest.Open(t)
	ctx := context.Background()
	k := syncer.Key{Governor: "g", State: "sx"}
	recs := commitChain(t, r, k, 6)
	snap := func(i int) syncer.Snapshot { return syncer.Snapshot{Record: recs[i], TakenAt: int64(100 + i)} }

	put := func(s syncer.Snapshot, keep int, want syncer.SnapshotStatus) {
		t.Helper()
		got, err := r.PutSnapshot(ctx, s, keep)
		if err != nil || got != want {
			t.Fatalf("PutSnapshot v%d op %s: %v, %v; want %v", s.Version, s.OpID, got, err, want)
		}
	}
	put(snap(0), 3, syncer.SnapshotStored)
	put(snap(0), 3, syncer.SnapshotExists) // idempotent
	unsynced := snap(1)
	unsynced.OpID = "n1-99"
	put(unsynced, 3, syncer.SnapshotUnsynced) // its change is not in the shared store
	renumbered := snap(1)
	renumbered.Version = 5 // op n1-2 made version 2
	put(renumbered, 3, syncer.SnapshotMismatch)
	otherValue := snap(1)
	otherValue.Value = []byte{0xc0}
	put(otherValue, 3, syncer.SnapshotMismatch)
	put(snap(2), 3, syncer.SnapshotStored) // a deletion
	put(snap(3), 3, syncer.SnapshotStored)
	put(snap(4), 3, syncer.SnapshotStored) // drops version 1

	got, err := r.Snapshots(ctx, k, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var versions []uint64
	for _, s := range got {
		versions = append(versions, s.Version)
	}
	if !reflect.DeepEqual(versions, []uint64{3, 4, 5}) {
		t.Fatalf("versions %v, want [3 4 5] (3 kept)", versions)
	}
	del := got[0]
	if !del.Deleted || del.Value != nil || del.OpID != "n1-3" || del.TakenAt != 102 {
		t.Fatalf("deletion snapshot: %+v", del)
	}
	s5 := got[2]
	want := snap(4)
	s5.RemoteTime = want.RemoteTime
	if !reflect.DeepEqual(s5, want) {
		t.Fatalf("snapshot v5:\n got %+v\nwant %+v", s5, want)
	}
	if got, err := r.Snapshots(ctx, k, 3, 4); err != nil || len(got) != 1 || got[0].Version != 4 {
		t.Fatalf("Snapshots up to 4: %+v, %v", got, err)
	}
	if got, err := r.Snapshots(ctx, syncer.Key{Governor: "g", State: "none"}, 0, 100); err != nil || len(got) != 0 {
		t.Fatalf("Snapshots of a state without: %+v, %v", got, err)
	}
	if _, err := r.PutSnapshot(ctx, syncer.Snapshot{Record: syncer.Record{Key: k}}, 3); err == nil {
		t.Fatal("a snapshot of version 0 was accepted")
	}

	// The transition's name travels with its event.
	evs, err := r.Events(ctx, k, 0, 10)
	if err != nil || len(evs) != 6 || evs[0].Transition != "ship" || evs[2].Transition != "" {
		t.Fatalf("events: %+v, %v", evs, err)
	}
}

// FetchHistory starts at the newest snapshot, or at the beginning, and
// stops at the version asked.
func TestFetchHistory(t *testing.T) {
	r := firestoretest.Open(t)
	ctx := context.Background()
	k := syncer.Key{Governor: "g", State: "h"}
	recs := commitChain(t, r, k, 6)
	if _, err := r.PutSnapshot(ctx, syncer.Snapshot{Record: recs[1]}, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutSnapshot(ctx, syncer.Snapshot{Record: recs[3]}, 5); err != nil {
		t.Fatal(err)
	}
	versions := func(h syncer.History) (snaps, evs []uint64) {
		for _, s := range h.Snapshots {
			snaps = append(snaps, s.Version)
		}
		for _, e := range h.Events {
			evs = append(evs, e.ToVersion)
		}
		return snaps, evs
	}
	for _, tc := range []struct {
		name          string
		top, version  uint64
		mode          syncer.HistoryMode
		snaps, events []uint64
	}{
		{"since snapshot", 0, 6, syncer.HistorySinceSnapshot, []uint64{4}, []uint64{5, 6}},
		{"since an older snapshot", 0, 3, syncer.HistorySinceSnapshot, []uint64{2}, []uint64{3}},
		{"full", 0, 5, syncer.HistoryFull, []uint64{2, 4}, []uint64{1, 2, 3, 4, 5}},
		{"continue", 4, 6, syncer.HistorySinceSnapshot, nil, []uint64{5, 6}},
		{"continue past a snapshot", 1, 6, syncer.HistorySinceSnapshot, []uint64{2, 4}, []uint64{2, 3, 4, 5, 6}},
		{"up to date", 6, 6, syncer.HistoryFull, nil, nil},
		{"none", 0, 6, syncer.HistoryNone, nil, nil},
	} {
		h, err := syncer.FetchHistory(ctx, r, k, tc.top, tc.version, tc.mode)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		snaps, evs := versions(h)
		if !reflect.DeepEqual(snaps, tc.snaps) || !reflect.DeepEqual(evs, tc.events) {
			t.Fatalf("%s: snapshots %v events %v, want %v %v", tc.name, snaps, evs, tc.snaps, tc.events)
		}
	}
}
