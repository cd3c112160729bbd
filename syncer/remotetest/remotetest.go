// Package remotetest is the conformance suite for syncer.Remote backends,
// as testing/fstest is for file systems: a backend's tests call Run with a
// constructor, and the suite checks reads, idempotent commits, conflicts,
// compare-and-set, change streams, events, limits, concurrent commits and
// the conflict ledger.
package remotetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// Options tune the suite for a backend.
type Options struct {
	// Concurrency is how many goroutines the concurrency test runs
	// (default 8) and Rounds how many commits each makes (default 10).
	Concurrency, Rounds int
	// Timeout bounds each test (default 60s).
	Timeout time.Duration
	// Fences, when set, runs the tests of fenced changes too: it returns a
	// Remote with no data in it, as newRemote does, and the Grant of the
	// lock service that Remote checks fences against.
	Fences func(t *testing.T) (syncer.Remote, Grant)
	// Undecodable, when set, runs the tests of documents that do not
	// decode too (undecodable.go): it returns a Remote with no data in it,
	// as newRemote does, and a Plant that writes such documents into it.
	Undecodable func(t *testing.T) (syncer.Remote, Plant)
}

// Run runs the suite. newRemote must return a Remote with no data in it
// (for example under a fresh root) each time it is called; each subtest
// calls it once.
func Run(t *testing.T, newRemote func(t *testing.T) syncer.Remote) {
	RunWith(t, Options{}, newRemote)
}

// RunWith is Run with options.
func RunWith(t *testing.T, o Options, newRemote func(t *testing.T) syncer.Remote) {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Rounds <= 0 {
		o.Rounds = 10
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, r syncer.Remote)
	}{
		{"GetMissing", testGetMissing},
		{"CommitAndGet", testCommitAndGet},
		{"Tombstone", testTombstone},
		{"Idempotent", testIdempotent},
		{"Conflict", testConflict},
		{"AtomicConflict", testAtomicConflict},
		{"CompareAndSet", testCompareAndSet},
		{"Invalid", testInvalid},
		{"Changes", testChanges},
		{"ChangesPaging", testChangesPaging},
		{"Watch", testWatch},
		{"Events", testEvents},
		{"PageBytes", testPageBytes},
		{"Limits", testLimits},
		{"Cancelled", testCancelled},
		{"Ledger", testLedger},
		{"Concurrent", func(t *testing.T, ctx context.Context, r syncer.Remote) {
			testConcurrent(t, ctx, r, o.Concurrency, o.Rounds)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRemote(t)
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			tc.fn(t, ctx, r)
		})
	}
	if o.Undecodable != nil {
		t.Run("Undecodable", func(t *testing.T) {
			r, plant := o.Undecodable(t)
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			testUndecodable(t, ctx, r, plant)
		})
	}
	if o.Fences == nil {
		return
	}
	for _, tc := range fenceTests {
		t.Run(tc.name, func(t *testing.T) {
			r, l := o.Fences(t)
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			tc.fn(t, ctx, r, l, o)
		})
	}
}

var opSeq atomic.Uint64

// change makes a put of value on key, made by node on base with the given
// vector (copied) ticked for node.
func change(key syncer.Key, base uint64, node string, vector map[string]uint64, value string) syncer.Change {
	v := make(map[string]uint64, len(vector)+1)
	for n, x := range vector {
		v[n] = x
	}
	v[node]++
	op := fmt.Sprintf("%s-%d", node, opSeq.Add(1))
	now := time.Now().UnixNano()
	meta := syncer.ChangeMeta{Actor: "actor-" + node, Reason: "test", Time: now}
	clock := syncer.Clock{Lamport: base + 1, HLC: uint64(time.Now().UnixMilli()) << 16, Vector: v}
	rec := syncer.Record{Key: key, Value: []byte(value), Version: base + 1, UpdatedAt: now, Change: meta,
		Origin: node, OpID: op, Clock: clock}
	ev := syncer.Event{Key: key, Action: syncer.ActionPut, FromVersion: base, ToVersion: base + 1,
		Value: []byte(value), Change: meta, Origin: node, OpID: op, Clock: clock.Clone()}
	return syncer.Change{Key: key, BaseVersion: base, Record: rec, Events: []syncer.Event{ev}}
}

func commit(t *testing.T, ctx context.Context, r syncer.Remote, atomic bool, cs ...syncer.Change) []syncer.Result {
	t.Helper()
	res, err := r.Commit(ctx, syncer.Batch{Changes: cs, Atomic: atomic})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(res) != len(cs) {
		t.Fatalf("Commit returned %d results for %d changes", len(res), len(cs))
	}
	return res
}

func get(t *testing.T, ctx context.Context, r syncer.Remote, key syncer.Key) syncer.Record {
	t.Helper()
	rec, err := r.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return rec
}

func wantStatus(t *testing.T, res []syncer.Result, want ...syncer.Status) {
	t.Helper()
	for i, w := range want {
		if res[i].Status != w {
			t.Fatalf("result %d (%s): status %v, want %v", i, res[i].Key, res[i].Status, w)
		}
	}
}

// sameRecord compares what a remote must keep of a record.
func sameRecord(t *testing.T, got, want syncer.Record) {
	t.Helper()
	if got.Key != want.Key || got.Version != want.Version || got.Deleted != want.Deleted ||
		!bytes.Equal(got.Value, want.Value) || got.UpdatedAt != want.UpdatedAt || got.Change != want.Change ||
		got.Origin != want.Origin || got.OpID != want.OpID || got.Clock.Lamport != want.Clock.Lamport ||
		got.Clock.HLC != want.Clock.HLC || !sameVector(got.Clock.Vector, want.Clock.Vector) {
		t.Fatalf("record:\n got %+v\nwant %+v", got, want)
	}
	if got.Deleted && got.Value != nil {
		t.Fatalf("tombstone has a value: %q", got.Value)
	}
}

func sameVector(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for n, x := range a {
		if b[n] != x {
			return false
		}
	}
	return true
}

func testGetMissing(t *testing.T, ctx context.Context, r syncer.Remote) {
	_, err := r.Get(ctx, syncer.Key{Governor: "g", State: "missing"})
	if !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
	if syncer.IsTransient(err) || errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("ErrNotFound also matches another kind: %v", err)
	}
}

func testCommitAndGet(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "orders", State: "o-1"}
	value := "\x81\xa6status\xa3new\x00\xff" // msgpack bytes, kept verbatim
	c := change(key, 0, "node-a", nil, value)
	c.Record.Change.Reason = "créé ✓"
	res := commit(t, ctx, r, false, c)
	wantStatus(t, res, syncer.Applied)
	if !res[0].Exists {
		t.Fatal("Applied result without the record")
	}
	sameRecord(t, res[0].Remote, c.Record)
	if d := time.Since(res[0].Remote.RemoteTime); d < -time.Minute || d > time.Minute {
		t.Fatalf("Commit: RemoteTime %v of an applied change is not set or far from now", res[0].Remote.RemoteTime)
	}
	got := get(t, ctx, r, key)
	sameRecord(t, got, c.Record)
	if got.RemoteTime.IsZero() {
		t.Fatal("Get: RemoteTime not set")
	}
	if d := time.Since(got.RemoteTime); d < -time.Minute || d > time.Minute {
		t.Fatalf("RemoteTime %v is far from now", got.RemoteTime)
	}

	// The next version, made on the first.
	c2 := change(key, 1, "node-b", got.Clock.Vector, "second")
	wantStatus(t, commit(t, ctx, r, false, c2), syncer.Applied)
	got = get(t, ctx, r, key)
	sameRecord(t, got, c2.Record)
	if got.Clock.Vector["node-a"] != 1 || got.Clock.Vector["node-b"] != 1 {
		t.Fatalf("vector %v", got.Clock.Vector)
	}
}

func testTombstone(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "g", State: "s"}
	c := change(key, 0, "n", nil, "v1")
	commit(t, ctx, r, false, c)
	d := change(key, 1, "n", c.Record.Clock.Vector, "")
	d.Record.Deleted = true
	d.Record.Value = nil
	d.Events[0].Action = syncer.ActionDelete
	d.Events[0].Value = nil
	wantStatus(t, commit(t, ctx, r, false, d), syncer.Applied)
	got := get(t, ctx, r, key)
	if !got.Deleted || got.Version != 2 || got.Value != nil {
		t.Fatalf("tombstone: %+v", got)
	}
	// Re-create on the tombstone: versions keep growing.
	c3 := change(key, 2, "n", got.Clock.Vector, "v3")
	wantStatus(t, commit(t, ctx, r, false, c3), syncer.Applied)
	if got := get(t, ctx, r, key); got.Deleted || got.Version != 3 || string(got.Value) != "v3" {
		t.Fatalf("re-created: %+v", got)
	}
	// A create (base 0) on a tombstone conflicts: the version is known.
	c4 := change(key, 0, "m", nil, "x")
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c4}})
	var ce *syncer.ConflictError
	if !errors.As(err, &ce) || ce.Actual != 3 || ce.Expected != 0 {
		t.Fatalf("create over existing: %v", err)
	}
	wantStatus(t, res, syncer.Conflict)
}

func testIdempotent(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "g", State: "idem"}
	c1 := change(key, 0, "n", nil, "v1")
	wantStatus(t, commit(t, ctx, r, false, c1), syncer.Applied)

	// The same change again (a lost reply, a crash before the journal ack).
	res := commit(t, ctx, r, false, c1)
	wantStatus(t, res, syncer.AlreadyApplied)
	sameRecord(t, res[0].Remote, c1.Record)

	// A later change of the same node moves the record on; the first one is
	// still recognised (vector clock coverage), not reported as a conflict.
	c2 := change(key, 1, "n", c1.Record.Clock.Vector, "v2")
	wantStatus(t, commit(t, ctx, r, false, c2), syncer.Applied)
	wantStatus(t, commit(t, ctx, r, false, c1), syncer.AlreadyApplied)
	wantStatus(t, commit(t, ctx, r, false, c2), syncer.AlreadyApplied)

	// Covered through another node: n2 wrote on top of n's version 2.
	c3 := change(key, 2, "n2", c2.Record.Clock.Vector, "v3")
	wantStatus(t, commit(t, ctx, r, false, c3), syncer.Applied)
	wantStatus(t, commit(t, ctx, r, true, c2), syncer.AlreadyApplied)

	got := get(t, ctx, r, key)
	sameRecord(t, got, c3.Record)
	evs, err := r.Events(ctx, key, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 {
		t.Fatalf("%d events after re-commits, want 3: %+v", len(evs), evs)
	}
}

func testConflict(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := syncer.Key{Governor: "g", State: "a"}
	b := syncer.Key{Governor: "g", State: "b"}
	ca := change(a, 0, "n1", nil, "a1")
	commit(t, ctx, r, false, ca)
	// n2 made a change on version 0 of a (it had not seen n1's), and one of b.
	stale := change(a, 0, "n2", nil, "a-from-n2")
	cb := change(b, 0, "n2", nil, "b1")
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{stale, cb}})
	var ce *syncer.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("Commit: %v, want a *ConflictError", err)
	}
	if ce.Key != a || ce.Expected != 0 || ce.Actual != 1 || !ce.Exists || ce.Conflicts != 1 {
		t.Fatalf("conflict error %+v", ce)
	}
	sameRecord(t, ce.Remote, ca.Record)
	if len(res) != 2 {
		t.Fatalf("%d results", len(res))
	}
	wantStatus(t, res, syncer.Conflict, syncer.Applied)
	sameRecord(t, res[0].Remote, ca.Record)
	sameRecord(t, get(t, ctx, r, a), ca.Record)
	sameRecord(t, get(t, ctx, r, b), cb.Record)

	// A change on a version the remote does not have yet.
	ahead := change(b, 5, "n3", nil, "b6")
	res, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{ahead}})
	if !errors.As(err, &ce) || ce.Expected != 5 || ce.Actual != 1 {
		t.Fatalf("ahead: %v", err)
	}
	wantStatus(t, res, syncer.Conflict)

	// Resolved: made on the remote's version, it applies.
	resolved := change(a, 1, "n2", ca.Record.Clock.Vector, "merged")
	wantStatus(t, commit(t, ctx, r, false, resolved), syncer.Applied)
	if got := get(t, ctx, r, a); got.Version != 2 || string(got.Value) != "merged" {
		t.Fatalf("resolved: %+v", got)
	}
}

func testAtomicConflict(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := syncer.Key{Governor: "g", State: "a"}
	b := syncer.Key{Governor: "g", State: "b"}
	c := syncer.Key{Governor: "g", State: "c"}
	ca := change(a, 0, "n1", nil, "a1")
	cc := change(c, 0, "n1", nil, "c1")
	commit(t, ctx, r, false, ca, cc)

	// A batch that re-sends an applied op, creates b, and conflicts on a.
	stale := change(a, 0, "n2", nil, "a-from-n2")
	cb := change(b, 0, "n2", nil, "b1")
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{cc, cb, stale}, Atomic: true})
	if !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("atomic: %v", err)
	}
	wantStatus(t, res, syncer.AlreadyApplied, syncer.Skipped, syncer.Conflict)
	if res[1].Exists {
		t.Fatalf("skipped b reported as existing: %+v", res[1])
	}
	if _, err := r.Get(ctx, b); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("b written by a failed atomic batch: %v", err)
	}
	if evs, err := r.Events(ctx, b, 0, 0); err != nil || len(evs) != 0 {
		t.Fatalf("events of b: %v %+v", err, evs)
	}
	// The same batch made right: all applied together.
	good := change(a, 1, "n2", ca.Record.Clock.Vector, "a2")
	wantStatus(t, commit(t, ctx, r, true, cb, good), syncer.Applied, syncer.Applied)
	if got := get(t, ctx, r, b); got.Version != 1 {
		t.Fatalf("b: %+v", got)
	}
}

func testCompareAndSet(t *testing.T, ctx context.Context, r syncer.Remote) {
	acct := syncer.Key{Governor: "bank", State: "acct"}
	limit := syncer.Key{Governor: "bank", State: "limit"}
	cl := change(limit, 0, "n", nil, "100")
	ca := change(acct, 0, "n", nil, "10")
	commit(t, ctx, r, false, cl, ca)

	// Write acct only if limit is still at version 1.
	check := syncer.Change{Key: limit, BaseVersion: 1, CheckOnly: true}
	w := change(acct, 1, "n", ca.Record.Clock.Vector, "20")
	res := commit(t, ctx, r, true, check, w)
	wantStatus(t, res, syncer.Applied, syncer.Applied)
	if got := get(t, ctx, r, limit); got.Version != 1 {
		t.Fatalf("a check wrote: %+v", got)
	}

	// limit moves; the same kind of write now fails whole.
	commit(t, ctx, r, false, change(limit, 1, "m", cl.Record.Clock.Vector, "50"))
	w2 := change(acct, 2, "n", w.Record.Clock.Vector, "30")
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{check, w2}, Atomic: true})
	var ce *syncer.ConflictError
	if !errors.As(err, &ce) || ce.Key != limit || ce.Expected != 1 || ce.Actual != 2 {
		t.Fatalf("check: %v", err)
	}
	wantStatus(t, res, syncer.Conflict, syncer.Skipped)
	if got := get(t, ctx, r, acct); got.Version != 2 || string(got.Value) != "20" {
		t.Fatalf("acct after failed check: %+v", got)
	}
	// A check that a state is absent.
	none := syncer.Key{Governor: "bank", State: "none"}
	res = commit(t, ctx, r, true, syncer.Change{Key: none, CheckOnly: true})
	wantStatus(t, res, syncer.Applied)

	// A check naming the op that made the version: the right version made
	// by another op fails it.
	cur := get(t, ctx, r, limit)
	w3 := change(acct, 2, "n", w.Record.Clock.Vector, "40")
	other := syncer.Change{Key: limit, BaseVersion: cur.Version, CheckOnly: true, Record: syncer.Record{OpID: "not-" + cur.OpID}}
	res, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{other, w3}, Atomic: true})
	if !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("check of another op's version: %v", err)
	}
	wantStatus(t, res, syncer.Conflict, syncer.Skipped)
	same := syncer.Change{Key: limit, BaseVersion: cur.Version, CheckOnly: true, Record: syncer.Record{OpID: cur.OpID}}
	wantStatus(t, commit(t, ctx, r, true, same, w3), syncer.Applied, syncer.Applied)
}

func testInvalid(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "g", State: "s"}
	ok := change(key, 0, "n", nil, "v")
	cases := []struct {
		name string
		mod  func(c *syncer.Change)
	}{
		{"slash", func(c *syncer.Change) { c.Key.State = "a/b" }},
		{"dots", func(c *syncer.Change) { c.Key.Governor = ".." }},
		{"reserved", func(c *syncer.Change) { c.Key.State = "__x__" }},
		{"empty", func(c *syncer.Change) { c.Key.State = "" }},
		{"long", func(c *syncer.Change) { c.Key.State = strings.Repeat("x", syncer.MaxNameBytes+1) }},
		{"version not above base", func(c *syncer.Change) { c.Record.Version = 0 }},
		{"no op id", func(c *syncer.Change) { c.Record.OpID = "" }},
		{"no origin entry", func(c *syncer.Change) { c.Record.Clock.Vector = nil }},
		{"other key", func(c *syncer.Change) { c.Record.Key.State = "other" }},
		{"event op id", func(c *syncer.Change) { c.Events[0].OpID = "a/b" }},
		{"version range", func(c *syncer.Change) { c.Record.Version = 1 << 63 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Record = ok.Record.Clone()
			c.Events = []syncer.Event{ok.Events[0].Clone()}
			tc.mod(&c)
			_, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
			if !errors.Is(err, syncer.ErrPermanent) || syncer.IsTransient(err) {
				t.Fatalf("Commit: %v, want ErrPermanent", err)
			}
		})
	}
	_, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{ok, ok}})
	if !errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := r.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("invalid batches wrote: %v", err)
	}
	if _, err := r.Get(ctx, syncer.Key{Governor: "g", State: "a/b"}); !errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("Get of an invalid name: %v", err)
	}
}

// drain pages through Changes from since until nothing more comes.
func drain(t *testing.T, ctx context.Context, r syncer.Remote, gov string, since syncer.Cursor, limit int) (map[syncer.Key]syncer.Record, syncer.Cursor) {
	t.Helper()
	out := make(map[syncer.Key]syncer.Record)
	cur := since
	for range 1000 {
		recs, next, err := r.Changes(ctx, gov, cur, limit)
		if err != nil {
			t.Fatalf("Changes: %v", err)
		}
		if limit > 0 && len(recs) > limit {
			t.Fatalf("Changes returned %d records, limit %d", len(recs), limit)
		}
		fresh := false
		for _, rec := range recs {
			if rec.Governor != gov {
				t.Fatalf("Changes(%s) returned %s", gov, rec.Key)
			}
			if old, ok := out[rec.Key]; !ok || rec.Version > old.Version {
				fresh = true
				out[rec.Key] = rec
			}
		}
		if len(recs) == 0 {
			if next != cur {
				t.Fatalf("empty Changes moved the cursor %q -> %q", cur, next)
			}
			return out, cur
		}
		cur = next
		if !fresh && limit <= 0 {
			return out, cur // only re-delivered records (a backend's overlap)
		}
	}
	t.Fatal("Changes never ran dry")
	return nil, ""
}

func testChanges(t *testing.T, ctx context.Context, r syncer.Remote) {
	got, cur := drain(t, ctx, r, "g1", "", 0)
	if len(got) != 0 {
		t.Fatalf("empty remote: %v", got)
	}
	k1 := syncer.Key{Governor: "g1", State: "s1"}
	k2 := syncer.Key{Governor: "g1", State: "s2"}
	other := syncer.Key{Governor: "g2", State: "s1"}
	c1 := change(k1, 0, "n", nil, "1")
	commit(t, ctx, r, false, c1, change(k2, 0, "n", nil, "1"), change(other, 0, "n", nil, "x"))
	c1b := change(k1, 1, "n", c1.Record.Clock.Vector, "2")
	commit(t, ctx, r, false, c1b)

	got, cur = drain(t, ctx, r, "g1", cur, 0)
	if len(got) != 2 || got[k1].Version != 2 || got[k2].Version != 1 {
		t.Fatalf("changes: %+v", got)
	}
	sameRecord(t, got[k1], c1b.Record)
	if got[k1].RemoteTime.IsZero() {
		t.Fatal("Changes: RemoteTime not set")
	}

	// Only later commits come after the cursor (a backend may re-deliver
	// a few recent ones, never newer versions of nothing).
	del := change(k2, 1, "n", got[k2].Clock.Vector, "")
	del.Record.Deleted, del.Record.Value = true, nil
	del.Events[0].Action, del.Events[0].Value = syncer.ActionDelete, nil
	commit(t, ctx, r, false, del)
	got, _ = drain(t, ctx, r, "g1", cur, 0)
	if rec, ok := got[k2]; !ok || !rec.Deleted || rec.Version != 2 {
		t.Fatalf("tombstone not in changes: %+v", got)
	}
	if rec, ok := got[k1]; ok && rec.Version != 2 {
		t.Fatalf("k1 changed: %+v", rec)
	}
	all, _ := drain(t, ctx, r, "g2", "", 0)
	if len(all) != 1 || string(all[other].Value) != "x" {
		t.Fatalf("g2: %+v", all)
	}
}

func testChangesPaging(t *testing.T, ctx context.Context, r syncer.Remote) {
	const n = 25
	var cs []syncer.Change
	for i := range n {
		cs = append(cs, change(syncer.Key{Governor: "p", State: fmt.Sprintf("s%02d", i)}, 0, "n", nil, "v"))
	}
	commit(t, ctx, r, false, cs[:10]...) // one commit of 10: paging may not split it wrongly
	for _, c := range cs[10:] {
		commit(t, ctx, r, false, c)
	}
	got, _ := drain(t, ctx, r, "p", "", 4)
	if len(got) != n {
		t.Fatalf("paging by 4 saw %d of %d states", len(got), n)
	}
}

func testWatch(t *testing.T, ctx context.Context, r syncer.Remote) {
	w, ok := r.(syncer.Watcher)
	if !ok {
		t.Skip("the remote has no Watcher") // optional capability; the suite's one skip
	}
	k1 := syncer.Key{Governor: "w", State: "before"}
	commit(t, ctx, r, false, change(k1, 0, "n", nil, "1"), change(syncer.Key{Governor: "other", State: "x"}, 0, "n", nil, "1"))

	type seen struct {
		recs []syncer.Record
		next syncer.Cursor
	}
	ch := make(chan seen, 100)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		werr = w.Watch(wctx, "w", "", func(recs []syncer.Record, next syncer.Cursor, skipped []*syncer.UndecodableError) error {
			if len(skipped) > 0 {
				t.Errorf("watch left out documents: %v", skipped)
			}
			ch <- seen{recs, next}
			return nil
		})
	}()
	got := make(map[syncer.Key]syncer.Record)
	var last syncer.Cursor
	waitFor := func(key syncer.Key, version uint64) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for got[key].Version < version {
			select {
			case s := <-ch:
				for _, rec := range s.recs {
					if rec.Governor != "w" {
						t.Errorf("watch of w saw %s", rec.Key)
					}
					if rec.Version > got[rec.Key].Version {
						got[rec.Key] = rec
					}
				}
				last = s.next
			case <-deadline:
				t.Fatalf("watch did not see %s version %d; saw %+v", key, version, got)
			}
		}
	}
	waitFor(k1, 1)
	k2 := syncer.Key{Governor: "w", State: "after"}
	c2 := change(k2, 0, "n", nil, "1")
	commit(t, ctx, r, false, c2)
	waitFor(k2, 1)
	sameRecord(t, got[k2], c2.Record)
	commit(t, ctx, r, false, change(k2, 1, "n", c2.Record.Clock.Vector, "2"))
	waitFor(k2, 2)
	stop()
	wg.Wait()
	if werr == nil || errors.Is(werr, syncer.ErrPermanent) {
		t.Fatalf("Watch ended with %v, want the ctx's error", werr)
	}
	// The last cursor resumes after what was seen.
	rest, _ := drain(t, ctx, r, "w", last, 0)
	for k, rec := range rest {
		if rec.Version <= got[k].Version {
			continue // a backend's overlap
		}
		t.Fatalf("after the watch's cursor: unseen %s v%d", k, rec.Version)
	}
	// fn's error ends the watch and is returned as is.
	boom := errors.New("boom")
	if err := w.Watch(ctx, "w", "", func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error { return boom }); err != boom {
		t.Fatalf("Watch returned %v, want fn's error", err)
	}
}

func testEvents(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "ev", State: "s"}
	// Three local changes coalesced into one remote change: versions 1..3.
	c := change(key, 0, "n", nil, "v3")
	c.Record.Version = 3
	c.Record.Clock.Vector["n"] = 3
	var evs []syncer.Event
	for v := uint64(1); v <= 3; v++ {
		evs = append(evs, syncer.Event{Key: key, Action: syncer.ActionPut, FromVersion: v - 1, ToVersion: v,
			Value: []byte(fmt.Sprintf("v%d", v)), Change: syncer.ChangeMeta{Actor: "a", Reason: "r", Time: int64(v)},
			Origin: "n", OpID: fmt.Sprintf("ev-op-%d", v), Clock: syncer.Clock{Lamport: v, HLC: v << 16,
				Vector: map[string]uint64{"n": v}}})
	}
	c.Events = evs
	wantStatus(t, commit(t, ctx, r, false, c), syncer.Applied)
	wantStatus(t, commit(t, ctx, r, false, c), syncer.AlreadyApplied)
	d := change(key, 3, "n", c.Record.Clock.Vector, "")
	d.Record.Deleted, d.Record.Value = true, nil
	d.Events[0].Action, d.Events[0].Value = syncer.ActionDelete, nil
	commit(t, ctx, r, false, d)
	// A conflicting change appends nothing.
	r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{change(key, 1, "m", nil, "lost")}}) //nolint:errcheck

	got, err := r.Events(ctx, key, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("%d events, want 4: %+v", len(got), got)
	}
	for i, e := range got[:3] {
		w := evs[i]
		if e.Key != key || e.Action != w.Action || e.FromVersion != w.FromVersion || e.ToVersion != w.ToVersion ||
			!bytes.Equal(e.Value, w.Value) || e.Change != w.Change || e.Origin != w.Origin || e.OpID != w.OpID ||
			e.Clock.Lamport != w.Clock.Lamport || e.Clock.HLC != w.Clock.HLC || !sameVector(e.Clock.Vector, w.Clock.Vector) {
			t.Fatalf("event %d:\n got %+v\nwant %+v", i, e, w)
		}
	}
	if e := got[3]; e.Action != syncer.ActionDelete || e.ToVersion != 4 || e.Value != nil {
		t.Fatalf("delete event %+v", e)
	}
	if got, err := r.Events(ctx, key, 2, 1); err != nil || len(got) != 1 || got[0].ToVersion != 3 {
		t.Fatalf("Events after 2, limit 1: %v %+v", err, got)
	}
	if got, err := r.Events(ctx, syncer.Key{Governor: "ev", State: "none"}, 0, 0); err != nil || len(got) != 0 {
		t.Fatalf("Events of a missing state: %v %+v", err, got)
	}
}

// testPageBytes: a page of large events or records is cut after the one
// that takes it over PageBytes, and the next page goes on from there.
func testPageBytes(t *testing.T, ctx context.Context, r syncer.Remote) {
	key := syncer.Key{Governor: "ev", State: "big"}
	const versions = 8
	var vector map[string]uint64
	for v := uint64(1); v <= versions; v++ {
		c := change(key, v-1, "n", vector, strings.Repeat("x", 900_000))
		wantStatus(t, commit(t, ctx, r, false, c), syncer.Applied)
		vector = c.Record.Clock.Vector
	}
	first, err := r.Events(ctx, key, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for i, e := range first {
		if e.ToVersion != uint64(i+1) {
			t.Fatalf("event %d is version %d", i, e.ToVersion)
		}
		if size > syncer.PageBytes {
			t.Fatalf("the page goes on after %d bytes: %d events", size, len(first))
		}
		size += syncer.EventSize(e)
	}
	if len(first) == versions || size <= syncer.PageBytes {
		t.Fatalf("a page of %d events of %d bytes, want it cut after the event over %d", len(first), size,
			syncer.PageBytes)
	}
	rest, err := r.Events(ctx, key, first[len(first)-1].ToVersion, 0)
	if err != nil || len(first)+len(rest) != versions || rest[0].ToVersion != uint64(len(first)+1) {
		t.Fatalf("the next page: %d events (after %d), %v", len(rest), len(first), err)
	}

	// Records: one state per commit, each of the same size.
	for i := range versions {
		c := change(syncer.Key{Governor: "pages", State: fmt.Sprint("s", i)}, 0, "n", nil, strings.Repeat("x", 900_000))
		wantStatus(t, commit(t, ctx, r, false, c), syncer.Applied)
	}
	page, next, err := r.Changes(ctx, "pages", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	size = 0
	for _, rec := range page {
		if size > syncer.PageBytes {
			t.Fatalf("the page of records goes on after %d bytes: %d records", size, len(page))
		}
		size += syncer.RecordSize(rec)
	}
	if len(page) == versions || size <= syncer.PageBytes {
		t.Fatalf("a page of %d records of %d bytes, want it cut after the record over %d", len(page), size, syncer.PageBytes)
	}
	seen := make(map[string]bool)
	for _, rec := range page {
		seen[rec.State] = true
	}
	for len(seen) < versions {
		more, after, err := r.Changes(ctx, "pages", next, 0)
		if err != nil || len(more) == 0 {
			t.Fatalf("after %d records: %d more, %v", len(seen), len(more), err)
		}
		for _, rec := range more {
			if seen[rec.State] {
				t.Fatalf("%s delivered twice", rec.State)
			}
			seen[rec.State] = true
		}
		next = after
	}
}

func testLimits(t *testing.T, ctx context.Context, r syncer.Remote) {
	lim := r.Limits()
	if lim.MaxWrites <= 0 || lim.MaxRecordBytes <= 0 || lim.MaxBatchBytes <= 0 {
		t.Fatalf("limits %+v", lim)
	}
	// A batch of exactly MaxWrites writes: changes with one event each.
	var cs []syncer.Change
	for i := range lim.MaxWrites / 2 {
		cs = append(cs, change(syncer.Key{Governor: "lim", State: fmt.Sprintf("s%04d", i)}, 0, "n", nil, "v"))
	}
	if syncer.Writes(syncer.Batch{Changes: cs}) != lim.MaxWrites/2*2 {
		t.Fatal("Writes miscounts")
	}
	wantStatus(t, commit(t, ctx, r, true, cs...), syncer.Applied)
	// One write more fails whole, before anything is written.
	over := change(syncer.Key{Governor: "lim", State: "over"}, 0, "n", nil, "v")
	over.Events = nil
	big := append(cs[:len(cs):len(cs)], over)
	for i := range big[:len(cs)] {
		big[i] = change(big[i].Key, 1, "n", big[i].Record.Clock.Vector, "v2")
	}
	if lim.MaxWrites%2 == 1 {
		big = append(big, change(syncer.Key{Governor: "lim", State: "over2"}, 0, "n", nil, "v"))
	}
	_, err := r.Commit(ctx, syncer.Batch{Changes: big})
	if !errors.Is(err, syncer.ErrTooLarge) || !errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("%d writes: %v, want ErrTooLarge", syncer.Writes(syncer.Batch{Changes: big}), err)
	}
	if _, err := r.Get(ctx, over.Key); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("an oversized batch wrote: %v", err)
	}

	// The largest app value (1,000,000 bytes) is kept byte for byte.
	value := bytes.Repeat([]byte{0xc4, 0x00, 0x7f, 0xff}, 250_000)
	key := syncer.Key{Governor: "lim", State: "big"}
	c := change(key, 0, "n", nil, string(value))
	wantStatus(t, commit(t, ctx, r, false, c), syncer.Applied)
	if got := get(t, ctx, r, key); !bytes.Equal(got.Value, value) {
		t.Fatalf("big value: %d bytes back", len(got.Value))
	}
	// A record over the limit is refused.
	huge := change(syncer.Key{Governor: "lim", State: "huge"}, 0, "n", nil, strings.Repeat("x", lim.MaxRecordBytes))
	huge.Events = nil
	if _, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{huge}}); !errors.Is(err, syncer.ErrTooLarge) {
		t.Fatalf("huge record: %v", err)
	}
}

func testCancelled(t *testing.T, ctx context.Context, r syncer.Remote) {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	key := syncer.Key{Governor: "g", State: "s"}
	if _, err := r.Get(cctx, key); !syncer.IsTransient(err) {
		t.Fatalf("Get with a cancelled ctx: %v, want ErrUnavailable", err)
	}
	if _, err := r.Commit(cctx, syncer.Batch{Changes: []syncer.Change{change(key, 0, "n", nil, "v")}}); !syncer.IsTransient(err) {
		t.Fatalf("Commit with a cancelled ctx: %v, want ErrUnavailable", err)
	}
}

// testConcurrent has many writers compare-and-set a few keys. Each writer
// reads a key, commits the next version on it, and retries on conflicts
// and transient errors. Every applied change must form, per key, one serial
// history: versions 1..n with no gaps or duplicates, the final record the
// last applied one, the event log exactly the applied changes.
func testConcurrent(t *testing.T, ctx context.Context, r syncer.Remote, writers, rounds int) {
	keys := []syncer.Key{{Governor: "c", State: "k0"}, {Governor: "c", State: "k1"}, {Governor: "c", State: "k2"}}
	type applied struct {
		version uint64
		value   string
		op      string
	}
	var mu sync.Mutex
	done := make(map[syncer.Key][]applied)
	var conflicts, transient atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("w%d", w)
			for i := range rounds {
				key := keys[(w+i)%len(keys)]
				value := fmt.Sprintf("%s-%d", node, i)
				for attempt := 0; ; attempt++ {
					if attempt > 200 || ctx.Err() != nil {
						errs <- fmt.Errorf("%s: %s gave up after %d attempts", node, key, attempt)
						return
					}
					var base uint64
					var vec map[string]uint64
					cur, err := r.Get(ctx, key)
					switch {
					case err == nil:
						base, vec = cur.Version, cur.Clock.Vector
					case errors.Is(err, syncer.ErrNotFound):
					case syncer.IsTransient(err):
						transient.Add(1)
						continue
					default:
						errs <- err
						return
					}
					c := change(key, base, node, vec, value)
					res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
					for syncer.IsTransient(err) && ctx.Err() == nil {
						// It may have been applied: re-committing finds out
						// (AlreadyApplied) without applying it twice.
						transient.Add(1)
						res, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
					}
					if errors.Is(err, syncer.ErrConflict) || syncer.IsTransient(err) {
						conflicts.Add(1)
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					if s := res[0].Status; s != syncer.Applied && s != syncer.AlreadyApplied {
						errs <- fmt.Errorf("status %v without an error", s)
						return
					}
					mu.Lock()
					done[key] = append(done[key], applied{c.Record.Version, value, c.Record.OpID})
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 0
	for _, key := range keys {
		as := done[key]
		total += len(as)
		byVersion := make(map[uint64]applied)
		for _, a := range as {
			if prev, dup := byVersion[a.version]; dup {
				t.Fatalf("%s: version %d applied twice (%s and %s)", key, a.version, prev.op, a.op)
			}
			byVersion[a.version] = a
		}
		n := uint64(len(as))
		for v := uint64(1); v <= n; v++ {
			if _, ok := byVersion[v]; !ok {
				t.Fatalf("%s: applied versions have a gap at %d", key, v)
			}
		}
		got := get(t, ctx, r, key)
		if got.Version != n || string(got.Value) != byVersion[n].value || got.OpID != byVersion[n].op {
			t.Fatalf("%s: final %d %q, want the last applied: %d %q", key, got.Version, got.Value, n, byVersion[n].value)
		}
		evs, err := r.Events(ctx, key, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(evs)) != n {
			t.Fatalf("%s: %d events for %d applied changes", key, len(evs), n)
		}
		for i, e := range evs {
			a := byVersion[uint64(i+1)]
			if e.ToVersion != a.version || e.OpID != a.op || string(e.Value) != a.value {
				t.Fatalf("%s: event %d is %s v%d, want %s v%d", key, i, e.OpID, e.ToVersion, a.op, a.version)
			}
		}
	}
	if total != writers*rounds {
		t.Fatalf("%d applied changes, want %d", total, writers*rounds)
	}
	t.Logf("%d writers x %d rounds: %d conflicts, %d transient errors retried", writers, rounds, conflicts.Load(), transient.Load())
}
