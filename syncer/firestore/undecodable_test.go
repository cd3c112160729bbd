package firestore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
	"time"

	gfs "cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// TestUndecodableDocuments writes state documents with the Firestore client,
// as another tool or another version might, between two commits of good
// states: one that is not a state record fails Get and Commit with
// ErrUndecodable naming it, and is left out of Changes (or, without a
// timestamp in sync_time, is not in the stream at all), which still returns
// both good states; a document with fields this version does not know is
// read.
func TestUndecodableDocuments(t *testing.T) {
	client, root := firestoretest.Client(t)
	r := firestore.New(client, firestore.Config{Root: root})
	ctx := context.Background()
	valid := map[string]any{"value": []byte("\x81\xa1v\x01"), "version": 1, "deleted": false, "updated_at": 1,
		"actor": "a", "reason": "r", "change_time": 1, "origin": "tool", "op_id": "tool-1", "lamport": 1, "hlc": 1,
		"vector": map[string]any{"tool": 1}, "sync_time": gfs.ServerTimestamp}
	with := func(k string, v any) map[string]any {
		m := maps.Clone(valid)
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name     string
		doc      map[string]any
		ok       bool // it is a state record
		inStream bool // Changes meets it (and leaves it out unless ok)
	}{
		{"version a string", with("version", "three"), false, true},
		{"no version", with("version", nil), false, true},
		{"version 0", with("version", 0), false, true},
		{"negative version", with("version", -1), false, true},
		{"no origin", with("origin", nil), false, true},
		{"no op id", with("op_id", ""), false, true},
		{"value a string", with("value", "v"), false, true},
		{"vector a list", with("vector", []any{1, 2}), false, true},
		{"negative vector entry", with("vector", map[string]any{"tool": -1}), false, true},
		{"lamport a map", with("lamport", map[string]any{"x": 1}), false, true},
		{"sync_time a string", with("sync_time", "yesterday"), false, false},
		{"sync_time a number", with("sync_time", 12), false, false},
		{"no sync_time", with("sync_time", nil), false, false},
		{"a field this version does not know", with("future_field", "x"), true, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gov := fmt.Sprintf("g%d", i)
			a, x, b := syncer.Key{Governor: gov, State: "a"}, syncer.Key{Governor: gov, State: "x"}, syncer.Key{Governor: gov, State: "b"}
			commitOne(t, ctx, r, a)
			doc := maps.Clone(tc.doc)
			doc["governor"], doc["state"] = gov, "x"
			if _, err := client.Doc(fmt.Sprintf("%s/governors/%s/states/x", root, gov)).Set(ctx, doc); err != nil {
				t.Fatal(err)
			}
			commitOne(t, ctx, r, b)

			rec, err := r.Get(ctx, x)
			var bad *syncer.UndecodableError
			switch {
			case tc.ok && (err != nil || rec.Version != 1):
				t.Fatalf("Get: %v %+v", err, rec)
			case !tc.ok && (!errors.Is(err, syncer.ErrUndecodable) || !errors.Is(err, syncer.ErrPermanent) ||
				errors.Is(err, syncer.ErrNotFound) || !errors.As(err, &bad)):
				t.Fatalf("Get: %v, want ErrUndecodable", err)
			case !tc.ok && (bad.Key != x || bad.Doc != fmt.Sprintf("%s/governors/%s/states/x", root, gov) || bad.Time.IsZero()):
				t.Fatalf("Get: %+v does not name the document", bad)
			}
			if !tc.ok {
				t.Logf("Get: %v", err)
				_, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{change(x, 0, "over")}})
				if !errors.Is(err, syncer.ErrUndecodable) || errors.Is(err, syncer.ErrUnavailable) {
					t.Fatalf("Commit over it: %v, want ErrUndecodable", err)
				}
			}

			recs, next, err := r.Changes(ctx, gov, "", 0)
			var sk *syncer.SkippedError
			want := []syncer.Key{a, b}
			switch {
			case tc.ok:
				want = []syncer.Key{a, x, b}
				fallthrough
			case !tc.inStream:
				if err != nil {
					t.Fatalf("Changes: %v", err)
				}
			default:
				if !errors.As(err, &sk) || len(sk.Docs) != 1 || sk.Docs[0].Key != x {
					t.Fatalf("Changes: %v, want x left out", err)
				}
			}
			if len(recs) != len(want) {
				t.Fatalf("Changes: %d records, want %v", len(recs), want)
			}
			for i, k := range want {
				if recs[i].Key != k {
					t.Fatalf("Changes: record %d is %s, want %v", i, recs[i].Key, want)
				}
			}
			if recs, again, err := r.Changes(ctx, gov, next, 0); err != nil || len(recs) != 0 || again != next {
				t.Fatalf("Changes after the cursor: %d records, %q, %v", len(recs), again, err)
			}
		})
	}
}

// change is a put of key made on base by node "n".
func change(key syncer.Key, base uint64, value string) syncer.Change {
	op := fmt.Sprintf("n-%s-%d", key.State, base+1)
	return syncer.Change{Key: key, BaseVersion: base, Record: syncer.Record{Value: []byte(value), Version: base + 1,
		Origin: "n", OpID: op, Clock: syncer.Clock{Vector: map[string]uint64{"n": base + 1}}},
		Events: []syncer.Event{{Action: syncer.ActionPut, FromVersion: base, ToVersion: base + 1, Value: []byte(value), OpID: op}}}
}

func commitOne(t *testing.T, ctx context.Context, r syncer.Remote, key syncer.Key) {
	t.Helper()
	if _, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{change(key, 0, "v")}}); err != nil {
		t.Fatal(err)
	}
}

// TestUndecodableHistoryDocuments: an event or snapshot document that does
// not decode fails Events and Snapshots with ErrUndecodable naming it (the
// puller then applies the record without its history).
func TestUndecodableHistoryDocuments(t *testing.T) {
	client, root := firestoretest.Client(t)
	r := firestore.New(client, firestore.Config{Root: root})
	ctx := context.Background()
	k := syncer.Key{Governor: "g", State: "x"}
	commitOne(t, ctx, r, k)
	event := fmt.Sprintf("%s/governors/g/events/n-x-1", root)
	if _, err := client.Doc(event).Set(ctx, map[string]any{"state": "x", "to_version": 1, "value": "not bytes"}); err != nil {
		t.Fatal(err)
	}
	snapshot := fmt.Sprintf("%s/governors/g/states/x/snapshots/%020d", root, 1)
	if _, err := client.Doc(snapshot).Set(ctx, map[string]any{"version": "one"}); err != nil {
		t.Fatal(err)
	}
	_, err := r.Events(ctx, k, 0, 0)
	var bad *syncer.UndecodableError
	if !errors.Is(err, syncer.ErrUndecodable) || !errors.As(err, &bad) || bad.Doc != event {
		t.Fatalf("Events: %v, want ErrUndecodable naming %s", err, event)
	}
	_, err = r.Snapshots(ctx, k, 0, math.MaxUint64)
	if !errors.Is(err, syncer.ErrUndecodable) || !errors.As(err, &bad) || bad.Doc != snapshot {
		t.Fatalf("Snapshots: %v, want ErrUndecodable naming %s", err, snapshot)
	}
}

// TestUndecodableConflictDocuments: ledger documents that are not conflict
// records (a field of the wrong type; no id or winner) are left out of a
// Conflicts query, which still returns the records around them, with a
// *SkippedError naming them. Before, one such document failed every query of
// its state.
func TestUndecodableConflictDocuments(t *testing.T) {
	client, root := firestoretest.Client(t)
	r := firestore.New(client, firestore.Config{Root: root})
	ctx := context.Background()
	k := syncer.Key{Governor: "g", State: "s"}
	decided := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	good := func(id string, at time.Time) syncer.ConflictRecord {
		return syncer.ConflictRecord{ID: id, Key: k, Time: at, Node: "n1", Resolver: "lww", Winner: conflict.Remote}
	}
	if err := r.LogConflicts(ctx, []syncer.ConflictRecord{good("c1", decided), good("c4", decided.Add(3*time.Second))}); err != nil {
		t.Fatal(err)
	}
	bad := map[string]map[string]any{
		"c2": {"id": "c2", "governor": "g", "state": "s", "time_ns": decided.Add(time.Second).UnixNano(), "winner": "remote",
			"local": "not a map"},
		"c3": {"id": "c3", "governor": "g", "state": "s", "time_ns": decided.Add(2 * time.Second).UnixNano()},
	}
	for id, doc := range bad {
		if _, err := client.Doc(root+"/conflicts/"+id).Set(ctx, doc); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := r.Conflicts(ctx, syncer.ConflictQuery{Governor: "g", State: "s"})
	var skipped *syncer.SkippedError
	if !errors.As(err, &skipped) || skipped.Op != "conflicts" || len(skipped.Docs) != 2 {
		t.Fatalf("Conflicts: %v; want the two documents named as left out", err)
	}
	for i, id := range []string{"c2", "c3"} {
		if d := skipped.Docs[i]; !strings.HasSuffix(d.Doc, root+"/conflicts/"+id) || d.Key != k || d.Time.IsZero() ||
			!strings.Contains(d.Error(), "is not a conflict record") {
			t.Fatalf("left out %d: %+v, want %s", i, d, id)
		}
	}
	if len(recs) != 2 || recs[0].ID != "c1" || recs[1].ID != "c4" || recs[1].Winner != conflict.Remote {
		t.Fatalf("records: %+v; want c1 and c4", recs)
	}
}
