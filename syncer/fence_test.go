package syncer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/firestorelocks"
	"github.com/tai-state/tai-state/txn/locktest"
)

// fenceBackends are the remotes the fence scenarios run against, each with
// the lock service it checks fences against.
var fenceBackends = []struct {
	name string
	open func(t *testing.T) (syncer.Remote, func(context.Context, string) (uint64, error))
}{
	{"memremote", func(t *testing.T) (syncer.Remote, func(context.Context, string) (uint64, error)) {
		locks := txn.NewMemory(nil)
		m := memremote.New()
		m.SetLockTokens(func(ctx context.Context, resource string) (uint64, error) {
			st, err := locks.Status(ctx, resource)
			return st.Token, err
		})
		return m, locktest.Granter(locks)
	}},
	{"firestore", func(t *testing.T) (syncer.Remote, func(context.Context, string) (uint64, error)) {
		client, root := firestoretest.Client(t)
		locks, err := firestorelocks.New(client, firestorelocks.Config{Root: root, MaxAttempts: 50})
		if err != nil {
			t.Fatal(err)
		}
		return firestore.New(client, firestore.Config{Root: root}), locktest.Granter(locks)
	}},
}

// TestPushFenced: the push loop parks a change whose fence the remote
// rejects (with the rejection, and a reason saying FenceRejected) without
// holding back other keys or the later changes of the same key; an atomic
// batch with one stale fence is parked whole; the local side adopts what
// the remote holds; fenced entries are never coalesced.
func TestPushFenced(t *testing.T) {
	for _, be := range fenceBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, grant := be.open(t)
			t1, err := grant(ctx, "lock")
			if err != nil {
				t.Fatal(err)
			}
			t2, err := grant(ctx, "lock")
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, ctx, r)
			stale := syncer.Fence{Resource: "lock", Token: t1}
			current := syncer.Fence{Resource: "lock", Token: t2}
			write := func(ws ...syncer.MemWrite) []syncer.Entry {
				t.Helper()
				es, err := e.a.Append(ws...)
				if err != nil {
					t.Fatal(err)
				}
				return es
			}
			write(syncer.MemWrite{Key: key("k"), Value: []byte("u1")})
			late := write(syncer.MemWrite{Key: key("k"), Value: []byte("late"), Fence: stale})[0]
			write(syncer.MemWrite{Key: key("k"), Value: []byte("u2")})
			write(syncer.MemWrite{Key: key("held"), Value: []byte("h1"), Fence: current})
			write(syncer.MemWrite{Key: key("held"), Value: []byte("h2"), Fence: current})
			write(syncer.MemWrite{Key: key("plain"), Value: []byte("p")})
			batch := write(syncer.MemWrite{Key: key("b1"), Value: []byte("b"), Fence: current},
				syncer.MemWrite{Key: key("b2"), Value: []byte("b"), Fence: stale})

			for range 5 { // a pass may leave rebased changes to the next
				if rep := syncOnce(t, ctx, e.sa); rep.Entries == 0 {
					break
				}
			}
			if d := e.a.Depth(); d != 0 {
				t.Fatalf("%d entries still pending", d)
			}
			parked := e.a.ParkedEntries()
			if len(parked) != 3 {
				t.Fatalf("parked %+v, want the late write and the batch", parked)
			}
			want := map[uint64]bool{late.Seq: true, batch[0].Seq: true, batch[1].Seq: true}
			for _, p := range parked {
				rej := syncer.FenceRejectedError{Resource: "lock", Token: t1, Current: t2}
				if !want[p.Seq] || p.FenceRejected == nil || *p.FenceRejected != rej ||
					!strings.Contains(p.Reason, "FenceRejected") {
					t.Fatalf("parked entry %+v (rejection %+v)", p, p.FenceRejected)
				}
			}
			if rec := remoteRecord(t, ctx, e.remote, key("k")); string(rec.Value) != "u2" || rec.Version != 2 {
				t.Fatalf("k: %+v, want u2 at version 2 (the late write rejected)", rec)
			}
			checkEvents(t, ctx, e.remote, key("k"), 2)
			if rec := remoteRecord(t, ctx, e.remote, key("held")); string(rec.Value) != "h2" {
				t.Fatalf("held: %+v", rec)
			}
			checkEvents(t, ctx, e.remote, key("plain"), 1)
			for _, k := range []string{"b1", "b2"} {
				if _, err := e.remote.Get(ctx, key(k)); !errors.Is(err, syncer.ErrNotFound) {
					t.Fatalf("%s of the rejected batch reached the remote: %v", k, err)
				}
				// Certainly not applied: the local side dropped it too.
				if rec, ok := e.a.Record(key(k)); ok {
					t.Fatalf("%s of the rejected batch is still local: %+v", k, rec)
				}
			}
			for _, k := range []string{"k", "held", "plain"} {
				checkSynced(t, ctx, e.a, e.remote, key(k))
			}
			// Never coalesced: every fenced change carried one event.
			for _, b := range e.remote.recorded() {
				for _, c := range b.Changes {
					if !c.Fence.IsZero() && len(c.Events) != 1 {
						t.Fatalf("a fenced change of %s coalesced %d entries", c.Key, len(c.Events))
					}
				}
			}
			if st := e.sa.Stats(); st.Parked != 3 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}
