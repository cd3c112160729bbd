package sockapi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

func TestHandshake(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{ServerName: "tai-sidecar/test", MaxFrame: 1 << 20, MaxValue: 1000})

	t.Run("hello reply", func(t *testing.T) {
		c := ts.dial()
		r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{7, wire.ProtocolVersion}, Client: "py/1"})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		want := wire.Hello{Version: wire.ProtocolVersion, Server: "tai-sidecar/test", NodeID: "node-test",
			MaxFrame: 1 << 20, MaxValue: 1000, MaxBatch: wire.MaxBatch}
		if *r.Hello != want {
			t.Fatalf("hello = %+v, want %+v", *r.Hello, want)
		}
		if r := c.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
			t.Fatalf("ping after hello: %v", r.Error)
		}
	})

	t.Run("hello twice", func(t *testing.T) {
		c := ts.hello()
		r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}})
		expectError(t, r, wire.CodeInvalidArgument, "op")
		if r := c.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
			t.Fatalf("connection unusable after second hello: %v", r.Error)
		}
	})

	for _, op := range []string{wire.OpPing, wire.OpGet, wire.OpPut, wire.OpStats, "frobnicate", ""} {
		t.Run("op before hello "+op, func(t *testing.T) {
			c := ts.dial()
			c.send(map[string]any{"id": 5, "op": op, "governor": "g", "state": "s", "value": 1})
			r := c.recv()
			if r.ID != 5 {
				t.Fatalf("id %d, want 5", r.ID)
			}
			expectError(t, r, wire.CodeProtocol, "")
			if extra := c.expectClosed(); len(extra) != 0 {
				t.Fatalf("replies after the protocol error: %+v", extra)
			}
		})
	}

	t.Run("no common version", func(t *testing.T) {
		c := ts.dial()
		r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{2, 3}})
		expectError(t, r, wire.CodeProtocol, "")
		c.expectClosed()
	})

	t.Run("versions missing", func(t *testing.T) {
		c := ts.dial()
		r := c.call(wire.Request{Op: wire.OpHello})
		expectError(t, r, wire.CodeInvalidArgument, "versions")
		// Still open: a correct hello works.
		if r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}}); r.Error != nil {
			t.Fatal(r.Error)
		}
	})

	t.Run("client name too long", func(t *testing.T) {
		c := ts.dial()
		r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{1}, Client: strings.Repeat("c", wire.MaxMetaSize+1)})
		expectError(t, r, wire.CodeTooLarge, "client")
	})

	t.Run("id zero", func(t *testing.T) {
		c := ts.dial()
		c.send(&wire.Request{ID: 0, Op: wire.OpHello, Versions: []uint32{1}})
		expectError(t, c.recv(), wire.CodeInvalidArgument, "id")
		if r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{1}}); r.Error != nil {
			t.Fatal(r.Error)
		}
	})
}

func TestOps(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	c := ts.hello()
	v1 := mustMarshal(t, map[string]any{"n": 1, "tags": []string{"a", "b"}})
	v2 := mustMarshal(t, "two")

	t.Run("ping", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpPing})
		if r.Error != nil || r.Record != nil || r.Records != nil {
			t.Fatalf("ping: %+v", r)
		}
	})

	t.Run("put get", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "k1", Value: v1, Actor: "alice", Reason: "init", IfAbsent: true})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		rec := r.Record
		if rec == nil || rec.Version != 1 || rec.Governor != "app" || rec.State != "k1" || rec.Value != nil ||
			!rec.FromCache || !rec.Pending || rec.Change.Actor != "alice" || rec.Change.Reason != "init" || !strings.HasPrefix(rec.Origin, "node-test~") {
			t.Fatalf("put reply record: %+v", rec)
		}
		r = c.call(wire.Request{Op: wire.OpGet, Governor: "app", State: "k1", Consistency: "local"})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		if !bytes.Equal(r.Record.Value, v1) || r.Record.Version != 1 || !r.Record.FromCache || !r.Record.Pending {
			t.Fatalf("get: %+v", r.Record)
		}
		var doc map[string]any
		if err := wire.Unmarshal(r.Record.Value, &doc); err != nil || fmt.Sprint(doc["n"]) != "1" {
			t.Fatalf("value does not round trip: %v %v", doc, err)
		}
	})

	t.Run("put if_version", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "k1", Value: v2, IfVersion: u64(1)})
		if r.Error != nil || r.Record.Version != 2 {
			t.Fatalf("put if_version 1: %+v %v", r.Record, r.Error)
		}
		r = c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "k1", Value: v2, IfVersion: u64(1)})
		expectError(t, r, wire.CodeVersionConflict, "")
		e := r.Error
		if e.Expected == nil || e.Actual == nil || *e.Expected != 1 || *e.Actual != 2 || e.Governor != "app" || e.State != "k1" || e.Retryable {
			t.Fatalf("conflict details: %+v", e)
		}
		r = c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "k1", Value: v2, IfAbsent: true})
		expectError(t, r, wire.CodeVersionConflict, "")
	})

	t.Run("get missing", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpGet, Governor: "app", State: "nope"})
		expectError(t, r, wire.CodeNotFound, "")
		if r.Error.Governor != "app" || r.Error.State != "nope" {
			t.Fatalf("not found details: %+v", r.Error)
		}
	})

	t.Run("delete", func(t *testing.T) {
		c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "gone", Value: v2})
		r := c.call(wire.Request{Op: wire.OpDelete, Governor: "app", State: "gone", IfVersion: u64(1), Actor: "bob"})
		if r.Error != nil || !r.Record.Deleted || r.Record.Version != 2 || r.Record.Value != nil {
			t.Fatalf("delete: %+v %v", r.Record, r.Error)
		}
		expectError(t, c.call(wire.Request{Op: wire.OpGet, Governor: "app", State: "gone"}), wire.CodeNotFound, "")
		expectError(t, c.call(wire.Request{Op: wire.OpDelete, Governor: "app", State: "gone"}), wire.CodeNotFound, "")
	})

	t.Run("batch_put batch_get", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpBatchPut, Actor: "batcher", Items: []wire.Item{
			{Governor: "app", State: "b1", Value: v1},
			{Governor: "app", State: "b2", Value: v2, IfAbsent: true},
			{Governor: "app", State: "k1", Delete: true, IfVersion: u64(2)},
		}})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		if len(r.Records) != 3 || r.Records[0].State != "b1" || r.Records[2].State != "k1" || !r.Records[2].Deleted ||
			r.Records[0].Value != nil || r.Records[1].Change.Actor != "batcher" {
			t.Fatalf("batch_put records: %+v", r.Records)
		}
		r = c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{
			{Governor: "app", State: "b2"}, {Governor: "app", State: "missing"}, {Governor: "app", State: "b1"}, {Governor: "app", State: "k1"},
		}})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		if len(r.Records) != 4 || r.Records[1] != nil || r.Records[3] != nil ||
			!bytes.Equal(r.Records[0].Value, v2) || !bytes.Equal(r.Records[2].Value, v1) || !r.Records[0].FromCache {
			t.Fatalf("batch_get records: %+v", r.Records)
		}
	})

	t.Run("batch_put atomic", func(t *testing.T) {
		before := store.writes.Load()
		r := c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{
			{Governor: "app", State: "atom1", Value: v1},
			{Governor: "app", State: "b1", Value: v2, IfVersion: u64(9)},
		}})
		expectError(t, r, wire.CodeVersionConflict, "")
		if r.Error.State != "b1" || *r.Error.Expected != 9 || *r.Error.Actual != 1 {
			t.Fatalf("conflict: %+v", r.Error)
		}
		if store.writes.Load() != before+1 {
			t.Fatalf("store writes %d, want %d", store.writes.Load(), before+1)
		}
		expectError(t, c.call(wire.Request{Op: wire.OpGet, Governor: "app", State: "atom1"}), wire.CodeNotFound, "")
	})

	t.Run("empty batches", func(t *testing.T) {
		before := store.writes.Load()
		if r := c.call(wire.Request{Op: wire.OpBatchPut}); r.Error != nil || len(r.Records) != 0 {
			t.Fatalf("empty batch_put: %+v", r)
		}
		if r := c.call(wire.Request{Op: wire.OpBatchGet}); r.Error != nil || len(r.Records) != 0 {
			t.Fatalf("empty batch_get: %+v", r)
		}
		if store.writes.Load() != before {
			t.Fatal("empty batch_put reached the store")
		}
	})

	t.Run("list", func(t *testing.T) {
		for i := range 25 {
			store.put("lst", fmt.Sprintf("item-%02d", i), i)
		}
		store.put("lst", "other", "x")
		store.put("lst2", "item-00", "y")
		var names []string
		cursor := ""
		pages := 0
		for {
			r := c.call(wire.Request{Op: wire.OpList, Governor: "lst", Prefix: "item-", Limit: 10, Cursor: cursor})
			if r.Error != nil {
				t.Fatal(r.Error)
			}
			pages++
			for _, rec := range r.Records {
				if rec.Governor != "lst" || !rec.FromCache || rec.Value == nil {
					t.Fatalf("list record: %+v", rec)
				}
				names = append(names, rec.State)
			}
			if r.Cursor == "" {
				break
			}
			cursor = r.Cursor
		}
		if pages != 3 || len(names) != 25 || names[0] != "item-00" || names[24] != "item-24" {
			t.Fatalf("pages %d, names %v", pages, names)
		}
		r := c.call(wire.Request{Op: wire.OpList, Governor: "lst"})
		if r.Error != nil || len(r.Records) != 26 || r.Cursor != "" {
			t.Fatalf("list all: %d records, cursor %q, %v", len(r.Records), r.Cursor, r.Error)
		}
		r = c.call(wire.Request{Op: wire.OpList, Governor: "empty-gov"})
		if r.Error != nil || len(r.Records) != 0 || r.Cursor != "" {
			t.Fatalf("list empty: %+v", r)
		}
	})

	t.Run("stats", func(t *testing.T) {
		r := c.call(wire.Request{Op: wire.OpStats})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		st := r.Stats
		if st.NodeID != "node-test" || st.Server != "tai-sidecar" || st.Connections != 1 || st.States == 0 ||
			st.Requests[wire.OpGet] == 0 || st.Requests[wire.OpHello] != 1 || st.Errors[string(wire.CodeNotFound)] == 0 ||
			st.Commits == 0 || st.UptimeSeconds <= 0 {
			t.Fatalf("stats: %+v", st)
		}
		conns, reqs, errs := ts.srv.Stats()
		if conns != 1 || reqs[wire.OpStats] != 1 || errs[string(wire.CodeVersionConflict)] != 3 {
			t.Fatalf("Server.Stats: %d %v %v", conns, reqs, errs)
		}
	})
}

func TestLimitsAnnouncedAndEnforced(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{MaxFrame: 64 << 10, MaxValue: 10 << 20})
	c := ts.dial()
	r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{1}})
	if r.Hello.MaxFrame != 64<<10 || r.Hello.MaxValue != 64<<10-frameReserve {
		t.Fatalf("limits: %+v", r.Hello)
	}
	big := valueOfSize(t, r.Hello.MaxValue)
	name := strings.Repeat("n", wire.MaxNameSize)
	meta := strings.Repeat("m", wire.MaxMetaSize)
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: name, State: name, Value: big, Actor: meta, Reason: meta}); r.Error != nil {
		t.Fatal(r.Error)
	}
	// The largest record still fits in a reply.
	if r := c.call(wire.Request{Op: wire.OpGet, Governor: name, State: name}); r.Error != nil || len(r.Record.Value) != len(big) {
		t.Fatalf("get largest: %v", r.Error)
	}
	over := valueOfSize(t, r.Hello.MaxValue+1)
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: over})
	expectError(t, r, wire.CodeTooLarge, "value")
	if r.Error.Limit != int64(64<<10-frameReserve) {
		t.Fatalf("limit %d", r.Error.Limit)
	}
	// batch_get whose reply would exceed max_frame.
	r = c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: name, State: name}, {Governor: name, State: name}}})
	expectError(t, r, wire.CodeTooLarge, "keys")
	if r.Error.Limit != 64<<10 {
		t.Fatalf("limit %d", r.Error.Limit)
	}
	// list pages stay under max_frame.
	for i := range 5 {
		if r := c.call(wire.Request{Op: wire.OpPut, Governor: "big", State: fmt.Sprint(i), Value: big}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	n, cursor := 0, ""
	for {
		r := c.call(wire.Request{Op: wire.OpList, Governor: "big", Cursor: cursor})
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		n += len(r.Records)
		if r.Cursor == "" {
			break
		}
		cursor = r.Cursor
	}
	if n != 5 {
		t.Fatalf("listed %d records, want 5", n)
	}
}

// valueOfSize returns a msgpack bin value of exactly n encoded bytes.
func valueOfSize(t testing.TB, n int) wire.Raw {
	t.Helper()
	for payload := n - 5; payload <= n; payload++ {
		if b := mustMarshal(t, bytes.Repeat([]byte{'x'}, payload)); len(b) == n {
			return b
		}
	}
	t.Fatalf("no bin value of %d bytes", n)
	return nil
}
