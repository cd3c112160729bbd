package syncer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// remoteLedger returns the remote's ledger records of k.
func remoteLedger(t *testing.T, ctx context.Context, r syncer.Remote, k syncer.Key) []syncer.ConflictRecord {
	t.Helper()
	recs, err := r.Conflicts(ctx, syncer.ConflictQuery{Governor: k.Governor, State: k.State})
	if err != nil {
		t.Fatalf("remote Conflicts: %v", err)
	}
	return recs
}

// checkExplains checks that rec, the one ledger record of k in the deciding
// node's journal and in the remote, explains the remote's value.
func checkExplains(t *testing.T, ctx context.Context, r syncer.Remote, decider *node, k syncer.Key, want conflict.Winner) syncer.ConflictRecord {
	t.Helper()
	local := decider.j.Conflicts()
	if len(local) != 1 {
		t.Fatalf("deciding node's ledger holds %d records, want 1: %+v", len(local), local)
	}
	rec := local[0]
	remote := remoteLedger(t, ctx, r, k)
	if len(remote) != 1 || remote[0].ID != rec.ID || remote[0].Winner != rec.Winner || !remote[0].Time.Equal(rec.Time) {
		t.Fatalf("remote ledger %+v, want the deciding node's record %+v", remote, rec)
	}
	if rec.Winner != want || rec.Key != k || rec.Node != rec.Local.Origin || rec.Resolver == "" || rec.Reason == "" {
		t.Fatalf("record %+v: want winner %v", rec, want)
	}
	value, deleted := rec.Final()
	rem := remoteRecord(t, ctx, r, k)
	if !bytes.Equal(value, rem.Value) || deleted != rem.Deleted {
		t.Fatalf("the record's final value %q (deleted %v) is not the remote's %q", value, deleted, rem.Value)
	}
	for _, x := range []syncer.ConflictRecord{rec, remote[0]} {
		if x.Local.OpID == "" || x.Remote.OpID == "" || x.Local.Clock.HLC == 0 || len(x.Remote.Clock.Vector) == 0 {
			t.Fatalf("record lacks the sides' clocks: %+v", x)
		}
	}
	return rec
}

// TestConflictLedger: the node that pushes second decides; its record is in
// its journal and in the remote, once, whether its change won or lost.
func TestConflictLedger(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			for i, laterFirst := range []bool{false, true} {
				t.Run(fmt.Sprintf("laterFirst=%v", laterFirst), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					r := be.open(t)
					a := resolverNode("node-a", r, resolverSet(t, "*=lww"), nil, nil)
					b := resolverNode("node-b", r, resolverSet(t, "*=lww"), nil, nil)
					k := key(fmt.Sprintf("ledger-%d", i))
					t0 := time.Now()
					a.j.SetClock(func() time.Time { return t0 })
					b.j.SetClock(func() time.Time { return t0.Add(time.Second) }) // b's write is later
					put(t, a.j, k, "a1")
					put(t, b.j, k, "b1")
					first, second := a, b // b decides and wins
					want := conflict.Local
					if laterFirst {
						first, second, want = b, a, conflict.Remote // a decides and loses
					}
					syncOnce(t, ctx, first.s)
					syncOnce(t, ctx, second.s)
					rem := converge(t, ctx, r, k, a, b)
					if string(rem.Value) != "b1" {
						t.Fatalf("remote %q, want b1", rem.Value)
					}
					rec := checkExplains(t, ctx, r, second, k, want)
					if len(first.j.Conflicts()) != 0 {
						t.Fatalf("the node that pushed first recorded a conflict")
					}
					if rec.BaseVersion != 0 || rec.Base == nil || rec.Base.Version != 0 || rec.Resolver != "lww" || rec.Entries != 1 {
						t.Fatalf("record %+v", rec)
					}
					if st := second.s.Stats(); st.ConflictsByResolver["lww"] != 1 || st.ConflictStorms != 0 {
						t.Fatalf("stats %+v", st)
					}
					// Passes after it record nothing more.
					syncOnce(t, ctx, second.s)
					if n := len(remoteLedger(t, ctx, r, k)); n != 1 {
						t.Fatalf("%d remote records after another pass", n)
					}
				})
			}
		})
	}
}

// loseDecidedReply is a remote that loses the reply of the first commit
// that carries a conflict decision, after the commit took effect. With
// skip, its ledger also holds a document that does not decode, which
// Conflicts leaves out (*syncer.SkippedError).
type loseDecidedReply struct {
	syncer.Remote
	skip bool
	mu   sync.Mutex
	lost int
}

func (r *loseDecidedReply) Conflicts(ctx context.Context, q syncer.ConflictQuery) ([]syncer.ConflictRecord, error) {
	recs, err := r.Remote.Conflicts(ctx, q)
	if err != nil || !r.skip {
		return recs, err
	}
	bad := &syncer.UndecodableError{Key: syncer.Key{Governor: q.Governor, State: q.State}, Doc: "conflicts/bad",
		Err: errors.New("not a conflict record (injected)"), What: "conflict record"}
	return recs, &syncer.SkippedError{Op: "conflicts", Governor: q.Governor, Docs: []*syncer.UndecodableError{bad}}
}

func (r *loseDecidedReply) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	res, err := r.Remote.Commit(ctx, b)
	if err != nil {
		return res, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range b.Changes {
		if c.Conflict != nil && r.lost == 0 {
			r.lost++
			return nil, syncer.Errorf("commit", c.Key, syncer.ErrUnavailable, "reply lost (injected)")
		}
	}
	return res, nil
}

// TestConflictLedgerLostReply: the commit of a change that won a conflict
// (its decision committed with it) reaches the remote, and the reply is
// lost. The next pass finds the change applied and decides nothing, and the
// decision still reaches the deciding node's ledger, once: whether the
// change is all the next pass pushes (the commit answers AlreadyApplied) or
// a later local write follows it (the commit conflicts, and the applied
// change is found covered by the remote record). A ledger document that
// does not decode, left out of the remote's query, does not keep the
// decision out.
func TestConflictLedgerLostReply(t *testing.T) {
	for _, be := range backends {
		for _, c := range []struct{ writeAfter, skip bool }{{false, false}, {true, false}, {false, true}} {
			writeAfter := c.writeAfter
			t.Run(fmt.Sprintf("%s/writeAfter=%v/skip=%v", be.name, writeAfter, c.skip), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				r := &loseDecidedReply{Remote: be.open(t), skip: c.skip}
				a := resolverNode("node-a", r, resolverSet(t, "*=lww"), nil, nil)
				b := resolverNode("node-b", r, resolverSet(t, "*=lww"), nil, nil)
				k := key(fmt.Sprintf("ledger-lost-reply-%v", writeAfter))
				t0 := time.Now()
				a.j.SetClock(func() time.Time { return t0 })
				b.j.SetClock(func() time.Time { return t0.Add(time.Second) }) // b's write is later: b wins
				put(t, a.j, k, "a1")
				put(t, b.j, k, "b1")
				syncOnce(t, ctx, a.s)
				if _, err := b.s.SyncOnce(ctx); !syncer.IsTransient(err) || r.lost != 1 {
					t.Fatalf("pass with the reply lost: %v (replies lost: %d)", err, r.lost)
				}
				if b.j.Depth() != 1 || len(b.j.Conflicts()) != 0 {
					t.Fatalf("after the lost reply: depth %d, %d ledger records", b.j.Depth(), len(b.j.Conflicts()))
				}
				if writeAfter {
					put(t, b.j, k, "b2")
				}
				rep := syncOnce(t, ctx, b.s)
				if rep.AlreadyApplied != 1 || !writeAfter && rep.Conflicts != 0 {
					t.Fatalf("pass after: %+v", rep)
				}
				rem := converge(t, ctx, r, k, a, b)
				if !writeAfter {
					checkExplains(t, ctx, r.Remote, b, k, conflict.Local)
					return
				}
				if string(rem.Value) != "b2" {
					t.Fatalf("remote %q, want b2", rem.Value)
				}
				// The remote's ledger holds the decision over b1, and maybe
				// one over b2 (the journal here keeps no event log, so b2's
				// base is unknown): the deciding node's must hold the same.
				local, remote := b.j.Conflicts(), remoteLedger(t, ctx, r.Remote, k)
				ids := make(map[string]bool)
				for _, x := range local {
					ids[x.ID] = true
				}
				first := false
				for _, x := range remote {
					first = first || x.Local.OpID == "node-b-1" && x.Winner == conflict.Local
					if !ids[x.ID] {
						t.Errorf("the remote's decision %s (%s over %s) is not in the deciding node's ledger", x.ID, x.Local.OpID, x.Remote.OpID)
					}
				}
				if !first || len(local) != len(remote) {
					t.Fatalf("deciding node's ledger %+v, remote's %+v", local, remote)
				}
			})
		}
	}
}

// TestConflictLedgerWriteFails: a change that lost stays pending while its
// record cannot be written to the remote's ledger, and is acked with it
// once it can.
func TestConflictLedgerWriteFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	a := resolverNode("node-a", m, nil, nil, nil)
	b := resolverNode("node-b", m, nil, nil, nil)
	k := key("ledger-fails")
	t0 := time.Now()
	a.j.SetClock(func() time.Time { return t0.Add(time.Second) })
	b.j.SetClock(func() time.Time { return t0 })
	put(t, a.j, k, "a1")
	put(t, b.j, k, "b1") // earlier: loses
	syncOnce(t, ctx, a.s)
	fail := errors.New("ledger down")
	m.SetHook(func(op string, _ syncer.Key) error {
		if op == "log conflicts" {
			return syncer.Errorf(op, k, syncer.ErrUnavailable, "%v", fail)
		}
		return nil
	})
	rep, err := b.s.SyncOnce(ctx)
	if err == nil || rep.Blocked != 1 || rep.Superseded != 0 || b.j.Depth() != 1 || len(b.j.Conflicts()) != 0 {
		t.Fatalf("pass with the ledger down: %+v, %v; depth %d", rep, err, b.j.Depth())
	}
	m.SetHook(nil)
	if rep := syncOnce(t, ctx, b.s); rep.Superseded != 1 {
		t.Fatalf("pass after: %+v", rep)
	}
	converge(t, ctx, m, k, a, b)
	checkExplains(t, ctx, m, b, k, conflict.Remote)
}

// TestMergeUpdates: two nodes change different fields of a map both had
// (version 1, made by a and pulled by b: b's local log has no event of it,
// so the base comes from the remote's history); under merge both changes
// survive, and the record holds the base.
func TestMergeUpdates(t *testing.T) {
	orig := []byte{0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x01} // {"a": 1, "b": 1}
	docA := []byte{0x82, 0xa1, 'a', 0x02, 0xa1, 'b', 0x01} // {"a": 2, "b": 1}
	docB := []byte{0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02} // {"a": 1, "b": 2}
	want := []byte{0x82, 0xa1, 'a', 0x02, 0xa1, 'b', 0x02} // {"a": 2, "b": 2}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r := be.open(t)
			set := resolverSet(t, "*=merge")
			a := resolverNode("node-a", r, set, nil, nil)
			b := resolverNode("node-b", r, set, nil, nil)
			k := key("merge-update")
			if _, err := a.j.Append(syncer.MemWrite{Key: k, Value: orig}); err != nil {
				t.Fatal(err)
			}
			syncOnce(t, ctx, a.s)
			converge(t, ctx, r, k, a, b)
			for _, w := range []struct {
				n *node
				v []byte
			}{{a, docA}, {b, docB}} {
				if _, err := w.n.j.Append(syncer.MemWrite{Key: k, Value: w.v}); err != nil {
					t.Fatal(err)
				}
			}
			syncOnce(t, ctx, a.s)
			if rep := syncOnce(t, ctx, b.s); rep.Conflicts != 1 || rep.Pushed != 1 {
				t.Fatalf("b's push %+v: want a merged change pushed", rep)
			}
			rem := converge(t, ctx, r, k, a, b)
			if !bytes.Equal(rem.Value, want) {
				t.Fatalf("remote %x, want %x: a field change was lost", rem.Value, want)
			}
			rec := checkExplains(t, ctx, r, b, k, conflict.Merged)
			if rec.BaseVersion != 1 || rec.Base == nil || !bytes.Equal(rec.Base.Value, orig) || rec.Resolver != "merge" {
				t.Fatalf("record %+v: want the base v1 with its value, decided by merge", rec)
			}
		})
	}
}

// TestMergeOnAMergedRecord: a node's change made on a record that another
// node merged (committed on top of the remote's record, so its vector clock
// holds both sides) meets a conflict: its base is that merged version, found
// in the remote's event log (the journal here keeps none) by its version and
// vector clock, and the merge keeps both nodes' fields.
func TestMergeOnAMergedRecord(t *testing.T) {
	doc := func(a, b byte) []byte { return []byte{0x82, 0xa1, 'a', a, 0xa1, 'b', b} } // {"a": a, "b": b}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r := be.open(t)
			set := resolverSet(t, "*=merge")
			a := resolverNode("node-a", r, set, nil, nil)
			b := resolverNode("node-b", r, set, nil, nil)
			k := key("merge-on-merged")
			write := func(n *node, v []byte) { put(t, n.j, k, string(v)) }
			write(a, doc(1, 1))
			syncOnce(t, ctx, a.s)
			converge(t, ctx, r, k, a, b)
			// b's change is merged over a's: v3, b's op, both vectors.
			write(a, doc(2, 1))
			write(b, doc(1, 2))
			syncOnce(t, ctx, a.s)
			syncOnce(t, ctx, b.s)
			if rem := converge(t, ctx, r, k, a, b); !bytes.Equal(rem.Value, doc(2, 2)) || rem.Version != 3 {
				t.Fatalf("after the first merge: v%d %x", rem.Version, rem.Value)
			}
			// Both change their field of v3; b is first, a's change merges
			// against v3.
			write(a, doc(3, 2))
			write(b, doc(2, 3))
			syncOnce(t, ctx, b.s)
			if rep := syncOnce(t, ctx, a.s); rep.Conflicts != 1 || rep.Pushed != 1 {
				t.Fatalf("a's push %+v: want a merged change pushed", rep)
			}
			if rem := converge(t, ctx, r, k, a, b); !bytes.Equal(rem.Value, doc(3, 3)) {
				t.Fatalf("remote %x, want %x: a field change was lost", rem.Value, doc(3, 3))
			}
			var second *syncer.ConflictRecord
			for _, rec := range a.j.Conflicts() {
				if rec.Local.Origin == "node-a" {
					second = &rec
				}
			}
			if second == nil || second.Resolver != "merge" || second.Base == nil || second.Base.Version != 3 ||
				!bytes.Equal(second.Base.Value, doc(2, 2)) {
				t.Fatalf("a's decision %+v: want a merge against v3", second)
			}
		})
	}
}

// TestConflictStorm: more than the threshold of conflicts on one state in
// the window is one storm, counted and logged once; another state's few
// conflicts are none.
func TestConflictStorm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a := resolverNode("node-a", m, nil, nil, nil)
	b := resolverNode("node-b", m, nil, log, nil)
	b.s = syncer.New(b.j, b.r, syncer.Options{Logger: log, StormThreshold: 3, StormWindow: time.Hour})
	fight := func(k syncer.Key, rounds int) {
		for i := range rounds {
			put(t, a.j, k, fmt.Sprintf("a%d", i))
			put(t, b.j, k, fmt.Sprintf("b%d", i))
			syncOnce(t, ctx, a.s)
			if rep := syncOnce(t, ctx, b.s); rep.Conflicts != 1 {
				t.Fatalf("round %d: %+v", i, rep)
			}
			converge(t, ctx, m, k, a, b)
		}
	}
	fight(key("hot"), 8)
	fight(key("calm"), 2)
	st := b.s.Stats()
	if st.ConflictStorms != 1 || st.ConflictsByResolver["lww"] != 10 {
		t.Fatalf("stats %+v: want 1 storm and 10 conflicts", st)
	}
	if n := strings.Count(logs.String(), "conflict storm"); n != 1 {
		t.Fatalf("%d storm log lines, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "key=g/hot") {
		t.Fatalf("storm log does not name the state:\n%s", logs.String())
	}
	if n := len(b.j.Conflicts()); n != 10 {
		t.Fatalf("%d ledger records, want 10", n)
	}
}

// TestConflictStormConcurrent counts conflicts from many pushers at once
// (run with -race): each syncer's stats stay consistent.
func TestConflictStormConcurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	base := resolverNode("node-base", m, nil, nil, nil)
	const pushers = 8
	k := key("contended")
	nodes := make([]*node, pushers)
	for i := range nodes {
		nodes[i] = resolverNode(fmt.Sprintf("node-%d", i), m, nil, nil, nil)
		put(t, nodes[i].j, k, fmt.Sprintf("v%d", i))
	}
	put(t, base.j, k, "base")
	syncOnce(t, ctx, base.s)
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			for n.j.Depth() > 0 && ctx.Err() == nil {
				_, _ = n.s.SyncOnce(ctx)
				_ = n.s.Stats()
			}
		})
	}
	wg.Wait()
	total := 0
	for _, n := range nodes {
		for _, c := range n.s.Stats().ConflictsByResolver {
			total += int(c)
		}
		if len(n.j.Conflicts()) > 1 {
			t.Fatalf("a node recorded %d conflicts of one entry", len(n.j.Conflicts()))
		}
	}
	if recs := remoteLedger(t, ctx, m, k); total < pushers || len(recs) != pushers {
		t.Fatalf("%d conflicts counted, %d remote records; want each of %d pushers to decide one", total, len(recs), pushers)
	}
}
