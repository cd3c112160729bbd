package sockapi

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// ledgerEntry makes a ledger record of g/state decided at at, won by the
// remote side (a tombstone) or merged.
func ledgerEntry(t *testing.T, state string, i int, at time.Time, merged bool) *syncer.ConflictRecord {
	r := &syncer.ConflictRecord{
		ID:          syncer.ConflictID(syncer.Key{Governor: "g", State: state}, fmt.Sprintf("node-test-%d", i), "n2-1", 3),
		Key:         syncer.Key{Governor: "g", State: state},
		Local:       conflict.Side{Value: mustMarshal(t, "mine"), Version: 2, Origin: "node-test", OpID: fmt.Sprintf("node-test-%d", i), Clock: conflict.Clock{HLC: 5, Vector: conflict.Vector{"node-test": 2}}},
		Remote:      conflict.Side{Version: 3, Deleted: true, Origin: "n2", OpID: "n2-1", Clock: conflict.Clock{HLC: 9, Vector: conflict.Vector{"n2": 1}}},
		BaseVersion: 1,
		Base:        &conflict.Base{Version: 1, Value: mustMarshal(t, "base")},
		Winner:      conflict.Remote,
		Resolver:    "lww",
		Reason:      "last write wins",
		Time:        at,
		Node:        "node-test",
		Entries:     1,
	}
	if merged {
		r.Winner, r.Merged = conflict.Merged, mustMarshal(t, map[string]int{"a": 1})
	}
	return r
}

// TestConflictsOp: the conflicts op pages through the store's ledger with
// its filters, converts every field, and validates its arguments.
func TestConflictsOp(t *testing.T) {
	store := openLocalcache(t, "")
	t0 := time.Unix(1_900_000_000, 0)
	var recs []*syncer.ConflictRecord
	for i := range 5 {
		recs = append(recs, ledgerEntry(t, []string{"a", "b"}[i%2], i, t0.Add(time.Duration(i)*time.Second), i == 4))
	}
	acks := make([]syncer.Ack, len(recs))
	for i, r := range recs {
		acks[i] = syncer.Ack{Key: r.Key, Outcome: syncer.OutcomeSuperseded, Conflict: r}
	}
	if err := store.Ack(context.Background(), acks); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, store, Options{})
	c := ts.hello()

	r := c.call(wire.Request{Op: wire.OpConflicts, Governor: "g"})
	if r.Error != nil || len(r.Conflicts) != 5 || r.Cursor != "" {
		t.Fatalf("all: %+v", r)
	}
	e := r.Conflicts[0]
	if e.ID != recs[0].ID || e.Governor != "g" || e.State != "a" || e.Time != t0.UnixNano() || e.Node != "node-test" ||
		e.Resolver != "lww" || e.Reason != "last write wins" || e.Winner != "remote" || e.Entries != 1 || e.BaseVersion != 1 ||
		e.Base == nil || !bytes.Equal(e.Base.Value, mustMarshal(t, "base")) || !bytes.Equal(e.Local.Value, mustMarshal(t, "mine")) ||
		e.Local.Clock.HLC != 5 || e.Remote.OpID != "n2-1" || !e.Remote.Deleted || e.Value != nil || !e.Deleted {
		t.Fatalf("entry 0: %+v", e)
	}
	if m := r.Conflicts[4]; m.Winner != "merged" || !bytes.Equal(m.Value, mustMarshal(t, map[string]int{"a": 1})) || m.Deleted {
		t.Fatalf("merged entry: %+v", m)
	}
	if r := c.call(wire.Request{Op: wire.OpConflicts, Governor: "g", State: "b"}); len(r.Conflicts) != 2 || r.Conflicts[0].State != "b" {
		t.Fatalf("state b: %+v", r)
	}
	from, to := t0.Add(time.Second).UnixNano(), t0.Add(3*time.Second).UnixNano()
	if r := c.call(wire.Request{Op: wire.OpConflicts, Governor: "g", From: from, To: to}); len(r.Conflicts) != 2 || r.Conflicts[0].ID != recs[1].ID {
		t.Fatalf("range: %+v", r)
	}
	var ids []string
	cursor := ""
	for range 10 {
		r := c.call(wire.Request{Op: wire.OpConflicts, Governor: "g", Limit: 2, Cursor: cursor})
		for _, e := range r.Conflicts {
			ids = append(ids, e.ID)
		}
		if cursor = r.Cursor; cursor == "" {
			break
		}
	}
	if len(ids) != 5 || ids[4] != recs[4].ID {
		t.Fatalf("pages: %v", ids)
	}
	if r := c.call(wire.Request{Op: wire.OpConflicts, Governor: "other"}); r.Error != nil || len(r.Conflicts) != 0 {
		t.Fatalf("empty governor: %+v", r)
	}
	for _, tc := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
	}{
		{"no governor", wire.Request{Op: wire.OpConflicts}, wire.CodeInvalidArgument, "governor"},
		{"bad state", wire.Request{Op: wire.OpConflicts, Governor: "g", State: "a/b"}, wire.CodeInvalidArgument, "state"},
		{"negative limit", wire.Request{Op: wire.OpConflicts, Governor: "g", Limit: -1}, wire.CodeInvalidArgument, "limit"},
		{"negative from", wire.Request{Op: wire.OpConflicts, Governor: "g", From: -1}, wire.CodeInvalidArgument, "from"},
		{"empty range", wire.Request{Op: wire.OpConflicts, Governor: "g", From: 5, To: 5}, wire.CodeInvalidArgument, "to"},
		{"bad cursor", wire.Request{Op: wire.OpConflicts, Governor: "g", Cursor: "not a cursor"}, wire.CodeInvalidArgument, "cursor"},
		{"long cursor", wire.Request{Op: wire.OpConflicts, Governor: "g", Cursor: strings.Repeat("x", maxCursor+1)}, wire.CodeTooLarge, "cursor"},
	} {
		t.Run(tc.name, func(t *testing.T) { expectError(t, c.call(tc.req), tc.code, tc.field) })
	}

	// A store without a ledger.
	fc := startServer(t, newFakeStore(), Options{}).hello()
	expectError(t, fc.call(wire.Request{Op: wire.OpConflicts, Governor: "g"}), wire.CodeUnavailable, "")
}

// countingSync is a fakeSync with SyncCounters: a fetch that raised the
// local version repaired the local copy.
type countingSync struct{ *fakeSync }

func (s countingSync) FetchRepair(ctx context.Context, k localcache.Key) (bool, error) {
	version := func() uint64 {
		s.store.mu.Lock()
		defer s.store.mu.Unlock()
		return s.store.recs[k].Version
	}
	before := version()
	err := s.Fetch(ctx, k)
	return version() != before, err
}

func (s countingSync) ConflictCounts() ConflictCounts {
	return ConflictCounts{ByResolver: map[string]uint64{"lww": 2, "merge>lww": 1}, Storms: 1}
}

// TestStaleReadStats: bounded and strong reads that find the local copy
// behind count a stale read and the states they repair; local reads and
// reads of fresh copies count nothing; stats carry the push loop's
// conflict counters.
func TestStaleReadStats(t *testing.T) {
	store := newFakeStore()
	sy := countingSync{newFakeSync(store)}
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	for _, s := range []string{"a", "b", "c"} {
		store.put("g", s, "old")
		sy.setRemote(t, "g", s, "new", 2)
	}
	sy.set(false, map[string]time.Time{"g": time.Now().Add(-time.Hour)}) // not known fresh
	stats := func() *wire.Stats {
		t.Helper()
		r := c.call(wire.Request{Op: wire.OpStats})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		return r.Stats
	}
	want := func(stale, repairs uint64) {
		t.Helper()
		if st := stats(); st.StaleReads != stale || st.ReadRepairs != repairs {
			t.Fatalf("stale_reads %d, read_repairs %d; want %d, %d", st.StaleReads, st.ReadRepairs, stale, repairs)
		}
	}
	mustOK(t, c.call(getReq("g", "a", wire.ReadLocal, 0)))
	want(0, 0)
	if r := mustOK(t, c.call(getReq("g", "a", wire.ReadStrong, 0))); r.Record.Version != 2 {
		t.Fatalf("strong read: %+v", r.Record)
	}
	want(1, 1)
	mustOK(t, c.call(getReq("g", "a", wire.ReadStrong, 0))) // fresh now
	want(1, 1)
	r := mustOK(t, c.call(wire.Request{Op: wire.OpBatchGet, Consistency: wire.ReadBounded, MaxStalenessMS: 1000,
		Keys: []wire.Key{{Governor: "g", State: "a"}, {Governor: "g", State: "b"}, {Governor: "g", State: "c"}}}))
	if len(r.Records) != 3 || r.Records[2].Version != 2 {
		t.Fatalf("bounded batch: %+v", r.Records)
	}
	want(2, 3)
	st := stats()
	if st.ConflictsByResolver["lww"] != 2 || st.ConflictsByResolver["merge>lww"] != 1 || st.ConflictStorms != 1 {
		t.Fatalf("conflict stats: %v, storms %d", st.ConflictsByResolver, st.ConflictStorms)
	}
}
