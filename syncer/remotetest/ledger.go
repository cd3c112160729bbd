package remotetest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
)

// The conflict ledger (syncer.ConflictLog): records committed with the
// change that won, records logged for changes that lost, idempotent by ID,
// and queries by governor, state and time.

// conflictOf makes the ledger record of local meeting remote at t.
func conflictOf(local, remote syncer.Change, w conflict.Winner, at time.Time) syncer.ConflictRecord {
	side := func(c syncer.Change) conflict.Side {
		r := c.Record
		return conflict.Side{Value: r.Value, Version: r.Version, UpdatedAt: r.UpdatedAt, Origin: r.Origin, OpID: r.OpID,
			Clock: conflict.Clock{Lamport: r.Clock.Lamport, HLC: r.Clock.HLC, Vector: conflict.Vector(r.Clock.Clone().Vector)}}
	}
	rec := syncer.ConflictRecord{
		ID:          syncer.ConflictID(local.Key, local.Record.OpID, remote.Record.OpID, remote.Record.Version),
		Key:         local.Key,
		Local:       side(local),
		Remote:      side(remote),
		BaseVersion: local.BaseVersion,
		Base:        &conflict.Base{Version: local.BaseVersion},
		Winner:      w,
		Resolver:    "test>lww",
		Reason:      "a reason naming v1 and node \"n1\"",
		Time:        at,
		Node:        local.Record.Origin,
		Entries:     1,
	}
	if w == conflict.Merged {
		rec.Merged = []byte("merged-value")
	}
	return rec
}

func sameConflict(t *testing.T, got, want syncer.ConflictRecord) {
	t.Helper()
	sameSide := func(a, b conflict.Side) bool {
		return bytes.Equal(a.Value, b.Value) && a.Version == b.Version && a.Deleted == b.Deleted &&
			a.UpdatedAt == b.UpdatedAt && a.Origin == b.Origin && a.OpID == b.OpID && a.Clock.Lamport == b.Clock.Lamport &&
			a.Clock.HLC == b.Clock.HLC && sameVector(a.Clock.Vector, b.Clock.Vector)
	}
	sameBase := (got.Base == nil) == (want.Base == nil)
	if sameBase && got.Base != nil {
		sameBase = bytes.Equal(got.Base.Value, want.Base.Value) && got.Base.Version == want.Base.Version &&
			got.Base.Deleted == want.Base.Deleted
	}
	if got.ID != want.ID || got.Key != want.Key || !sameSide(got.Local, want.Local) || !sameSide(got.Remote, want.Remote) ||
		!sameBase || got.BaseVersion != want.BaseVersion || got.Winner != want.Winner || !bytes.Equal(got.Merged, want.Merged) ||
		got.Resolver != want.Resolver || got.Reason != want.Reason || !got.Time.Equal(want.Time) || got.Node != want.Node ||
		got.Entries != want.Entries || !slices.Equal(got.Omitted, want.Omitted) {
		t.Fatalf("conflict record:\n got %+v\nwant %+v", got, want)
	}
}

func conflicts(t *testing.T, ctx context.Context, cl syncer.ConflictLog, q syncer.ConflictQuery) []syncer.ConflictRecord {
	t.Helper()
	recs, err := cl.Conflicts(ctx, q)
	if err != nil {
		t.Fatalf("Conflicts %+v: %v", q, err)
	}
	return recs
}

func testLedger(t *testing.T, ctx context.Context, r syncer.Remote) {
	cl := r
	a := syncer.Key{Governor: "g", State: "a"}
	base := time.Unix(1_700_000_000, 123456789)

	// n1 wrote a; n2's change made on version 0 won the conflict: it is
	// committed on version 1 with its record.
	ca := change(a, 0, "n1", nil, "a1")
	commit(t, ctx, r, false, ca)
	won := change(a, 1, "n2", map[string]uint64{"n1": 1}, "a-n2")
	won.Conflict = new(conflictOf(won, ca, conflict.Merged, base))
	won.Conflict.Omitted = []string{"base"}
	wantStatus(t, commit(t, ctx, r, false, won), syncer.Applied)
	got := conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g"})
	if len(got) != 1 {
		t.Fatalf("%d records after a won conflict, want 1", len(got))
	}
	sameConflict(t, got[0], *won.Conflict)

	// Retried (a lost reply): already applied, nothing written twice.
	again := won
	again.Conflict = new(*won.Conflict)
	again.Conflict.Time = base.Add(time.Hour)
	wantStatus(t, commit(t, ctx, r, false, again), syncer.AlreadyApplied)
	got = conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g"})
	if len(got) != 1 || !got[0].Time.Equal(base) {
		t.Fatalf("after a retried commit: %+v", got)
	}

	// A change that conflicts writes no record, nor does an atomic batch
	// that conflicts.
	stale := change(a, 0, "n3", nil, "a-n3")
	stale.Conflict = new(conflictOf(stale, ca, conflict.Local, base.Add(time.Second)))
	if _, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{stale}}); !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("stale commit: %v", err)
	}
	b := syncer.Key{Governor: "g", State: "b"}
	cb := change(b, 0, "n3", nil, "b1")
	cb.Conflict = new(conflictOf(cb, ca, conflict.Local, base.Add(2*time.Second)))
	cb.Conflict.Key = b
	if _, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{stale, cb}, Atomic: true}); !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("atomic commit: %v", err)
	}
	if got := conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g"}); len(got) != 1 {
		t.Fatalf("%d records after conflicting commits, want 1", len(got))
	}

	// A change that lost: logged, twice, kept once with the first time.
	lost := conflictOf(stale, ca, conflict.Remote, base.Add(3*time.Second))
	lost.Local.Deleted, lost.Local.Value = true, nil
	lost.Base = nil
	if err := cl.LogConflicts(ctx, []syncer.ConflictRecord{lost}); err != nil {
		t.Fatalf("LogConflicts: %v", err)
	}
	later := lost
	later.Time = base.Add(time.Hour)
	other := conflictOf(cb, ca, conflict.Local, base.Add(4*time.Second))
	other.Key = b
	other.ID = syncer.ConflictID(b, "x", "y", 1)
	if err := cl.LogConflicts(ctx, []syncer.ConflictRecord{later, other}); err != nil {
		t.Fatalf("LogConflicts again: %v", err)
	}
	got = conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g"})
	if len(got) != 3 {
		t.Fatalf("%d records, want 3", len(got))
	}
	sameConflict(t, got[0], *won.Conflict)
	sameConflict(t, got[1], lost)
	sameConflict(t, got[2], other)

	// Queries: by state, by time range, limited, other governors apart.
	if got := conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g", State: "b"}); len(got) != 1 || got[0].ID != other.ID {
		t.Fatalf("state b: %+v", got)
	}
	got = conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g", From: base.Add(time.Second), Until: base.Add(4 * time.Second)})
	if len(got) != 1 || got[0].ID != lost.ID {
		t.Fatalf("time range: %+v", got)
	}
	if got := conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "g", Limit: 2}); len(got) != 2 || got[1].ID != lost.ID {
		t.Fatalf("limit 2: %+v", got)
	}
	if got := conflicts(t, ctx, cl, syncer.ConflictQuery{Governor: "other"}); len(got) != 0 {
		t.Fatalf("governor other: %+v", got)
	}

	// Invalid arguments are permanent errors.
	for _, q := range []syncer.ConflictQuery{{}, {Governor: "a/b"}, {Governor: "g", From: base, Until: base}} {
		if _, err := cl.Conflicts(ctx, q); !errors.Is(err, syncer.ErrPermanent) {
			t.Fatalf("Conflicts %+v: %v, want ErrPermanent", q, err)
		}
	}
	bad := lost
	bad.ID = "a/b"
	if err := cl.LogConflicts(ctx, []syncer.ConflictRecord{bad}); !errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("LogConflicts of a bad id: %v, want ErrPermanent", err)
	}
}
