package syncer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// txnRemotes are the remotes the transaction push scenarios run against.
var txnRemotes = []struct {
	name string
	open func(t *testing.T) syncer.Remote
}{
	{"memremote", func(*testing.T) syncer.Remote { return memremote.New() }},
	{"firestore", func(t *testing.T) syncer.Remote { return firestoretest.Open(t) }},
}

// TestPushTxnChecks: a transaction's checks ride in the remote transaction
// that applies its writes as CheckOnly changes. While they hold the writes
// are applied whole; once a checked state moved the transaction gives way
// whole (nothing written, its entries superseded, the local side adopting
// the remote records of its keys) without holding back other keys; a
// single write with a check is atomic too.
func TestPushTxnChecks(t *testing.T) {
	for _, be := range txnRemotes {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			r := be.open(t)
			a, b := syncer.NewMemJournal("a"), syncer.NewMemJournal("b")
			pa, pb := syncer.New(a, r, syncer.Options{}), syncer.New(b, r, syncer.Options{})
			key := func(s string) syncer.Key { return syncer.Key{Governor: "g", State: s} }
			push := func(s *syncer.Syncer) syncer.Report {
				t.Helper()
				rep, err := s.SyncOnce(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return rep
			}
			mustAppend := func(j *syncer.MemJournal, checks []syncer.Check, ws ...syncer.MemWrite) {
				t.Helper()
				if _, err := j.AppendTxn(checks, ws...); err != nil {
					t.Fatal(err)
				}
			}
			// b creates the checked state.
			mustAppend(b, nil, syncer.MemWrite{Key: key("x"), Value: []byte("1")})
			push(pb)

			// Holds: x is at 1 (a's check says so), y does not exist.
			mustAppend(a, []syncer.Check{{Key: key("x"), Version: 1}, {Key: key("none"), Version: 0}},
				syncer.MemWrite{Key: key("y"), Value: []byte("a"), Strict: true},
				syncer.MemWrite{Key: key("w"), Value: []byte("a"), Strict: true})
			if rep := push(pa); rep.Pushed != 2 {
				t.Fatalf("transaction whose checks hold: %+v", rep)
			}
			if rec, err := r.Get(ctx, key("y")); err != nil || string(rec.Value) != "a" {
				t.Fatalf("remote y: %+v, %v", rec, err)
			}

			// b moves x; a's next transaction (checked on x at 1) gives
			// way, a single write too; an unrelated write goes through.
			mustAppend(b, nil, syncer.MemWrite{Key: key("x"), Value: []byte("2")})
			push(pb)
			mustAppend(a, []syncer.Check{{Key: key("x"), Version: 1}},
				syncer.MemWrite{Key: key("y"), Value: []byte("a2"), Strict: true},
				syncer.MemWrite{Key: key("z"), Value: []byte("a2"), Strict: true})
			mustAppend(a, []syncer.Check{{Key: key("x"), Version: 1}}, syncer.MemWrite{Key: key("v"), Value: []byte("a2"), Strict: true})
			mustAppend(a, nil, syncer.MemWrite{Key: key("free"), Value: []byte("a")})
			rep := push(pa)
			if rep.Superseded != 3 || rep.Pushed != 1 || rep.Parked != 0 {
				t.Fatalf("transactions whose check failed: %+v, want 3 superseded, 1 pushed", rep)
			}
			if rec, err := r.Get(ctx, key("y")); err != nil || string(rec.Value) != "a" || rec.Version != 1 {
				t.Fatalf("remote y after the failed transaction: %+v, %v", rec, err)
			}
			for _, k := range []string{"z", "v"} {
				if rec, err := r.Get(ctx, key(k)); !errors.Is(err, syncer.ErrNotFound) {
					t.Fatalf("remote %s after the failed transaction: %+v, %v", k, rec, err)
				}
				if rec, ok := a.Record(key(k)); ok {
					t.Fatalf("local %s after the failed transaction: %+v, want none", k, rec)
				}
			}
			if rec, ok := a.Record(key("y")); !ok || string(rec.Value) != "a" {
				t.Fatalf("local y after the failed transaction: %+v, want the remote's", rec)
			}
			if a.Depth() != 0 {
				t.Fatalf("journal depth %d after the push", a.Depth())
			}

			// The right version made by another op (a history the
			// transaction did not see) fails the check too; the op that
			// made it passes.
			x, err := r.Get(ctx, key("x"))
			if err != nil {
				t.Fatal(err)
			}
			mustAppend(a, []syncer.Check{{Key: key("x"), Version: x.Version, OpID: "other-op"}}, syncer.MemWrite{Key: key("u"), Value: []byte("a"), Strict: true})
			if rep := push(pa); rep.Superseded != 1 {
				t.Fatalf("check of the right version made by another op: %+v, want superseded", rep)
			}
			mustAppend(a, []syncer.Check{{Key: key("x"), Version: x.Version, OpID: x.OpID}}, syncer.MemWrite{Key: key("u"), Value: []byte("a"), Strict: true})
			if rep := push(pa); rep.Pushed != 1 {
				t.Fatalf("check of the version and op the remote holds: %+v, want pushed", rep)
			}
		})
	}
}

// TestTxnCheckAfterItsStateWasRenumbered: an async transaction checked a
// state at the version of this node's own pending change, and that change
// won a conflict and was committed on top of the other node's, renumbered,
// in the same pass: the state is still what the transaction saw, so its
// check holds at the new version. Before, the check compared the old
// version number and the transaction, acknowledged long before, gave way.
func TestTxnCheckAfterItsStateWasRenumbered(t *testing.T) {
	for _, be := range txnRemotes {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			r := be.open(t)
			a, b := syncer.NewMemJournal("a"), syncer.NewMemJournal("b")
			c, d := key("c"), key("d")
			put(t, b, c, "b1")
			syncOnce(t, ctx, syncer.New(b, r, syncer.Options{}))
			a.SetClock(func() time.Time { return time.Now().Add(time.Second) }) // a's write is later: it wins
			x := put(t, a, c, "a1")
			if _, err := a.AppendTxn([]syncer.Check{{Key: c, Version: 1, OpID: x.Record.OpID}},
				syncer.MemWrite{Key: d, Value: []byte("d1")}); err != nil {
				t.Fatal(err)
			}
			if rep := syncOnce(t, ctx, syncer.New(a, r, syncer.Options{})); rep.Superseded != 0 || rep.Pushed != 2 {
				t.Fatalf("a's pass: %+v; want its write and the transaction pushed", rep)
			}
			for k, want := range map[syncer.Key]string{c: "a1", d: "d1"} {
				if rec := remoteRecord(t, ctx, r, k); string(rec.Value) != want {
					t.Fatalf("%s: %+v; want %q", k, rec, want)
				}
			}
		})
	}
}

// TestTxnCheckOfAStateRenumberedInAnEarlierPass: the transaction checked
// a's change of c at its local version, and reaches the push loop only after
// the pass that committed that change renumbered (made before the local
// store took the committed version in). The state is what it saw: it is
// applied, not given way.
func TestTxnCheckOfAStateRenumberedInAnEarlierPass(t *testing.T) {
	for _, be := range txnRemotes {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			r := be.open(t)
			a, b := syncer.NewMemJournal("a"), syncer.NewMemJournal("b")
			c, d := key("c"), key("d")
			put(t, b, c, "b1")
			syncOnce(t, ctx, syncer.New(b, r, syncer.Options{}))
			a.SetClock(func() time.Time { return time.Now().Add(time.Second) }) // a's write is later: it wins
			x := put(t, a, c, "a1")
			push := syncer.New(a, r, syncer.Options{})
			if rep := syncOnce(t, ctx, push); rep.Pushed != 1 {
				t.Fatalf("a's first pass: %+v", rep)
			}
			if rec := remoteRecord(t, ctx, r, c); rec.Version != 2 || rec.OpID != x.Record.OpID {
				t.Fatalf("%s: %+v; want a's change renumbered to version 2", c, rec)
			}
			if _, err := a.AppendTxn([]syncer.Check{{Key: c, Version: 1, OpID: x.Record.OpID}},
				syncer.MemWrite{Key: d, Value: []byte("d1")}); err != nil {
				t.Fatal(err)
			}
			if rep := syncOnce(t, ctx, push); rep.Superseded != 0 || rep.Pushed != 1 {
				t.Fatalf("a's second pass: %+v; want the transaction pushed", rep)
			}
			if rec := remoteRecord(t, ctx, r, d); string(rec.Value) != "d1" {
				t.Fatalf("%s: %+v; want d1", d, rec)
			}
		})
	}
}

// TestGaveWayRecorded: a change that gives way with its batch without
// losing a conflict of its own (its transaction's check failed, or another
// item of the batch lost) is in the conflict ledger, locally and in the
// remote, as given way (ResolverGaveWay) with the change's value and op,
// the remote record that stays, and a reason naming the item that caused
// it. Before, such changes left no record: the local store keeps what lost
// only there now (it drops their events).
func TestGaveWayRecorded(t *testing.T) {
	for _, be := range txnRemotes {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			r := be.open(t)
			a, b := syncer.NewMemJournal("a"), syncer.NewMemJournal("b")
			pa, pb := syncer.New(a, r, syncer.Options{}), syncer.New(b, r, syncer.Options{})
			x, y, c, w := key("gx"), key("gy"), key("gc"), key("gw")
			put(t, b, x, "1")
			syncOnce(t, ctx, pb)
			check := func(k syncer.Key, value, reason string) {
				t.Helper()
				var local []syncer.ConflictRecord
				for _, rec := range a.Conflicts() {
					if rec.Key == k {
						local = append(local, rec)
					}
				}
				remote := remoteLedger(t, ctx, r, k)
				if len(local) != 1 || len(remote) != 1 || remote[0].ID != local[0].ID {
					t.Fatalf("%s: local ledger %+v, remote %+v; want one record in both", k, local, remote)
				}
				rec := local[0]
				if rec.Resolver != syncer.ResolverGaveWay || rec.Winner != conflict.Remote || string(rec.Local.Value) != value ||
					rec.Local.OpID == "" || rec.Node != rec.Local.Origin || rec.Entries != 1 || !strings.Contains(rec.Reason, reason) {
					t.Fatalf("%s: record %+v; want %q given way, the reason naming %q", k, rec, value, reason)
				}
			}

			// A transaction's check fails: its write gives way.
			if _, err := a.AppendTxn([]syncer.Check{{Key: x, Version: 1}}, syncer.MemWrite{Key: y, Value: []byte("a"), Strict: true}); err != nil {
				t.Fatal(err)
			}
			put(t, b, x, "2")
			syncOnce(t, ctx, pb)
			if rep := syncOnce(t, ctx, pa); rep.Superseded != 1 || rep.Conflicts != 0 {
				t.Fatalf("a's push: %+v; want its transaction superseded, no conflict counted", rep)
			}
			check(y, "a", "check of g/gx at v1 failed")

			// A batch item loses its conflict (strict): the other item
			// gives way with it, and WaitSynced's naming is kept apart.
			if _, err := a.Append(syncer.MemWrite{Key: w, Value: []byte("aw"), Strict: true},
				syncer.MemWrite{Key: c, Value: []byte("ac"), Strict: true}); err != nil {
				t.Fatal(err)
			}
			put(t, b, c, "bc")
			syncOnce(t, ctx, pb)
			if rep := syncOnce(t, ctx, pa); rep.Superseded != 2 || rep.Conflicts != 1 {
				t.Fatalf("a's push: %+v; want the batch superseded, one conflict", rep)
			}
			check(w, "aw", "g/gc met a concurrent change")
			if recs := remoteLedger(t, ctx, r, c); len(recs) != 1 || recs[0].Resolver != "strict" || string(recs[0].Local.Value) != "ac" {
				t.Fatalf("ledger of %s: %+v; want the strict decision", c, recs)
			}
			if st := pa.Stats(); st.ConflictsByResolver[syncer.ResolverGaveWay] != 0 {
				t.Fatalf("stats %+v: changes that gave way counted as conflicts", st)
			}
		})
	}
}
