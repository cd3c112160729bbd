package sockapi

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// openLocalcache opens a real store (in memory when dir is "") and closes it
// at the end of the test.
func openLocalcache(t *testing.T, dir string) *localcache.Store {
	t.Helper()
	st, err := localcache.Open(localcache.Options{Dir: dir, InMemory: dir == "", NodeID: "node-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(context.Background()); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return st
}

// TestStoreSuite runs the same protocol session against the fake store and
// the real one, so the fake's semantics stay honest.
func TestStoreSuite(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) Store
	}{
		{"fake", func(*testing.T) Store { return newFakeStore() }},
		{"localcache", func(t *testing.T) Store { return openLocalcache(t, "") }},
	}
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) { storeSuite(t, s.open(t)) })
	}
}

func storeSuite(t *testing.T, store Store) {
	ts := startServer(t, store, Options{})
	c := ts.hello()
	v1, v2 := mustMarshal(t, map[string]any{"a": 1}), mustMarshal(t, []any{"x", 2})
	ok := func(r wire.Response) wire.Response {
		t.Helper()
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		return r
	}

	r := ok(c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v1, IfAbsent: true, Actor: "alice", Reason: "create"}))
	origin := r.Record.Origin
	if rec := r.Record; rec.Version != 1 || rec.Value != nil || !rec.FromCache || !rec.Pending || !strings.HasPrefix(rec.Origin, "node-test~") ||
		rec.Change.Actor != "alice" || rec.Change.Reason != "create" || rec.UpdatedAt == 0 {
		t.Fatalf("put record: %+v", rec)
	}
	r = ok(c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "a"}))
	if !bytes.Equal(r.Record.Value, v1) || r.Record.Version != 1 || !r.Record.FromCache || !r.Record.Pending {
		t.Fatalf("get record: %+v", r.Record)
	}
	// Preconditions.
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v2, IfAbsent: true})
	expectError(t, r, wire.CodeVersionConflict, "")
	if *r.Error.Expected != 0 || *r.Error.Actual != 1 || r.Error.State != "a" {
		t.Fatalf("if_absent conflict: %+v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v2, IfVersion: u64(5)})
	expectError(t, r, wire.CodeVersionConflict, "")
	if *r.Error.Expected != 5 || *r.Error.Actual != 1 || r.Error.Governor != "g" {
		t.Fatalf("if_version conflict: %+v", r.Error)
	}
	ok(c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v2, IfVersion: u64(1)}))
	ok(c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "new", Value: v2, IfVersion: u64(0), IfAbsent: true}))
	// Delete, then re-create: versions keep growing.
	r = ok(c.call(wire.Request{Op: wire.OpDelete, Governor: "g", State: "a", IfVersion: u64(2)}))
	if !r.Record.Deleted || r.Record.Version != 3 {
		t.Fatalf("delete record: %+v", r.Record)
	}
	expectError(t, c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "a"}), wire.CodeNotFound, "")
	expectError(t, c.call(wire.Request{Op: wire.OpDelete, Governor: "g", State: "a"}), wire.CodeNotFound, "")
	r = ok(c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v1, IfAbsent: true}))
	if r.Record.Version != 4 {
		t.Fatalf("re-created version %d, want 4", r.Record.Version)
	}
	// Atomic batches.
	r = c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{
		{Governor: "g", State: "b1", Value: v1},
		{Governor: "g", State: "a", Value: v2, IfVersion: u64(1)},
	}})
	expectError(t, r, wire.CodeVersionConflict, "")
	if r.Error.State != "a" || *r.Error.Actual != 4 {
		t.Fatalf("batch conflict: %+v", r.Error)
	}
	r = ok(c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "b1"}, {Governor: "g", State: "a"}}}))
	if len(r.Records) != 2 || r.Records[0] != nil || r.Records[1] == nil || r.Records[1].Version != 4 || !bytes.Equal(r.Records[1].Value, v1) {
		t.Fatalf("batch_get after failed batch: %+v", r.Records)
	}
	r = ok(c.call(wire.Request{Op: wire.OpBatchPut, Actor: "batch", Items: []wire.Item{
		{Governor: "g", State: "b1", Value: v1, IfAbsent: true},
		{Governor: "g", State: "b2", Value: v2},
		{Governor: "g", State: "new", Delete: true},
	}}))
	if len(r.Records) != 3 || r.Records[0].Version != 1 || !r.Records[2].Deleted || r.Records[1].Change.Actor != "batch" {
		t.Fatalf("batch_put records: %+v", r.Records)
	}
	// List: live states in name order, paged.
	var names []string
	cursor := ""
	for {
		r := ok(c.call(wire.Request{Op: wire.OpList, Governor: "g", Limit: 2, Cursor: cursor}))
		for _, rec := range r.Records {
			if rec.Value == nil || !rec.FromCache {
				t.Fatalf("list record: %+v", rec)
			}
			names = append(names, rec.State)
		}
		if r.Cursor == "" {
			break
		}
		cursor = r.Cursor
	}
	if fmt.Sprint(names) != "[a b1 b2]" {
		t.Fatalf("list: %v", names)
	}
	r = ok(c.call(wire.Request{Op: wire.OpList, Governor: "g", Prefix: "b"}))
	if len(r.Records) != 2 || r.Cursor != "" {
		t.Fatalf("list prefix: %+v", r)
	}
	r = ok(c.call(wire.Request{Op: wire.OpStats}))
	if r.Stats.States != 3 || r.Stats.NodeID != "node-test" || r.Stats.Origin != origin {
		t.Fatalf("stats: %+v", r.Stats)
	}
}

// TestLocalcachePipelinedWritesDurable pipelines writes into a real on-disk
// store, checks that group commit shared fsyncs among them, and that every
// acknowledged write is there after a restart.
func TestLocalcachePipelinedWritesDurable(t *testing.T) {
	dir := t.TempDir()
	const n = 300
	func() {
		st, err := localcache.Open(localcache.Options{Dir: dir, NodeID: "node-test"})
		if err != nil {
			t.Fatal(err)
		}
		ts := startServer(t, st, Options{})
		c := ts.hello()
		var frames []byte
		for i := range n {
			frames, err = c.enc.AppendFrame(frames, &wire.Request{ID: uint64(i + 1), Op: wire.OpPut, Governor: "g",
				State: fmt.Sprintf("s%03d", i), Value: mustMarshal(t, i)})
			if err != nil {
				t.Fatal(err)
			}
		}
		go c.nc.Write(frames)
		seen := map[uint64]bool{}
		for range n {
			r := c.recv()
			if r.Error != nil || r.Record.Version != 1 {
				t.Fatalf("id %d: %+v %v", r.ID, r.Record, r.Error)
			}
			seen[r.ID] = true
		}
		if len(seen) != n {
			t.Fatalf("%d distinct replies", len(seen))
		}
		stats := c.call(wire.Request{Op: wire.OpStats}).Stats
		t.Logf("%d writes in %d commits", stats.CommitWrites, stats.Commits)
		if stats.CommitWrites < n || stats.Commits >= stats.CommitWrites {
			t.Fatalf("no group commit: %d writes in %d commits", stats.CommitWrites, stats.Commits)
		}
		ts.stop()
		if err := st.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}()
	st := openLocalcache(t, dir)
	for i := range n {
		r, err := st.Get(context.Background(), localcache.Key{Governor: "g", State: fmt.Sprintf("s%03d", i)})
		if err != nil || r.Version != 1 {
			t.Fatalf("s%03d after restart: %v", i, err)
		}
	}
}
