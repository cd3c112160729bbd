package localcache

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// Convergence corner cases of the push and pull loops, each replayed step
// by step on both remotes.

// hookedRemote runs hook (once) at the start of the next Commit.
type hookedRemote struct {
	syncer.Remote
	mu   sync.Mutex
	hook func()
}

func (h *hookedRemote) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	h.mu.Lock()
	hook := h.hook
	h.hook = nil
	h.mu.Unlock()
	if hook != nil {
		hook()
	}
	return h.Remote.Commit(ctx, b)
}

// TestSyncWriteOnLostValueMeetsTheWinner: b's write x loses a conflict to
// c's later write y while b's next write z (made on x, before y) is still
// to be pushed. z's base version is the version y holds in the shared
// store, but z never saw y: its push must meet y as a conflict, decided
// (and recorded) by last write wins, which keeps y. Before, z was
// committed over y without a decision, so a write older than y won.
func TestSyncWriteOnLostValueMeetsTheWinner(t *testing.T) {
	forRemotes(t, testSyncWriteOnLostValueMeetsTheWinner)
}

func testSyncWriteOnLostValueMeetsTheWinner(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	hooked := &hookedRemote{Remote: remote}
	b := newSyncNode(t, "b", hooked, "g")
	c := newSyncNode(t, "c", remote, "g")
	k := key("g", "k")
	c.put(k, "c0")
	c.pushAll()
	b.pullAll()

	b.put(k, "x") // v2 on b
	hooked.mu.Lock()
	hooked.hook = func() {
		// b's pass has read x and not z: z is pushed by the next pass.
		b.put(k, "z") // v3 on b, made on x
		// y must come after z on the hybrid logical clocks too. They count
		// milliseconds, and within one millisecond b's logical counter
		// (after x and z) can be ahead of c's, ordering z after y.
		nextMillisecond()
		c.put(k, "y") // v2 on c, after z
		c.pushAll()
	}
	hooked.mu.Unlock()
	if rep := b.pushAll(); rep.Superseded != 1 {
		t.Fatalf("b's first pass %+v: want x superseded by y", rep)
	}
	rep := b.pushAll()
	if rep.Superseded != 1 || rep.Conflicts != 1 {
		t.Fatalf("b's second pass %+v: want z to meet y and lose to it", rep)
	}
	if r := remoteGet(t, remote, k); string(r.Value) != "y" || r.Origin != c.store.Origin() {
		t.Fatalf("remote holds %q by %s v%d, want c's y", r.Value, r.Origin, r.Version)
	}
	c.pullAll()
	b.pullAll()
	if msg := converged(t, remote, []*syncNode{b, c}, []Key{k}); msg != "" {
		t.Fatal(msg)
	}
	page, err := b.store.Conflicts(ctx, LedgerQuery{Governor: "g", State: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 2 {
		t.Fatalf("b's ledger has %d conflicts of g/k, want x's and z's: %+v", len(page.Entries), page.Entries)
	}
	for _, e := range page.Entries {
		if e.Winner != conflict.Remote || e.Remote.OpID != remoteGet(t, remote, k).OpID {
			t.Fatalf("ledger entry %+v: want y winning", e)
		}
	}
}

// TestAckAdoptsTheLaterRemoteRecord: a record pulled while the key's push
// was between its commit and its ack is adopted at the ack when the shared
// store holds it over the pushed one (a higher version), even when their
// vector clocks are concurrent (records written before syncer.Decide
// required a change to have seen the record it replaces). Before, the ack
// kept the pushed record and the node never pulled the later one again.
func TestAckAdoptsTheLaterRemoteRecord(t *testing.T) {
	ctx := context.Background()
	s := openDisk(t, t.TempDir(), func(o *Options) { o.NodeID = "c" })
	defer closeStore(t, s)
	k := key("g", "k")
	mustPut(t, s, k, "mine")
	es, err := s.Pending(ctx, 0, 0)
	if err != nil || len(es) != 1 {
		t.Fatalf("pending %+v, %v", es, err)
	}
	pushed := es[0].Record
	later := syncer.Record{Key: syncer.Key(k), Value: []byte("later"), Version: pushed.Version + 1, Origin: "b", OpID: "b-9",
		Clock: syncer.Clock{HLC: pushed.Clock.HLC - 1, Vector: map[string]uint64{"b": 9}}}
	res, err := s.ApplyRemote(ctx, syncer.RemoteBatch{Records: []syncer.Record{later}})
	if err != nil || res.Statuses[0] != syncer.ApplyPending {
		t.Fatalf("apply %+v, %v: want it kept aside", res, err)
	}
	if err := s.Ack(ctx, []syncer.Ack{{Key: syncer.Key(k), Seqs: []uint64{es[0].Seq}, Outcome: syncer.OutcomePushed, Remote: pushed}}); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Get(ctx, k)
	if err != nil || string(rec.Value) != "later" || rec.Version != later.Version || rec.Pending {
		t.Fatalf("after the ack: %+v, %v; want b's later record", rec, err)
	}
}

// TestSyncWriteAfterMergeKeepsTheMerge: c's write x is merged with b's
// concurrent change of another field while c's next write z (made on x,
// not on the merge) is still to be pushed. The shared store then holds a
// record of c's (the merge) that z has not seen: z must be merged again,
// not rebased over it, or b's field is lost. Before, z was rebased because
// the remote's last version was c's.
func TestSyncWriteAfterMergeKeepsTheMerge(t *testing.T) {
	forRemotes(t, testSyncWriteAfterMergeKeepsTheMerge)
}

func testSyncWriteAfterMergeKeepsTheMerge(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	hooked := &hookedRemote{Remote: remote}
	b := newSyncNode(t, "b", remote, "g")
	c := newSyncNode(t, "c", hooked, "g")
	k := key("g", "k")
	mergeWhilePending(t, b, c, hooked, k)
	c.pushAll()
	wantMergedBoth(t, remote, k)
	b.pullAll()
	c.pullAll()
	if msg := converged(t, remote, []*syncNode{b, c}, []Key{k}); msg != "" {
		t.Fatal(msg)
	}
}

// mergeWhilePending makes c, whose pushes go through hooked and merge
// (conflict.Merge), write x on k while b writes another field, and
// pushes x, which is merged with b's change; z, c's next write (made on x,
// not on the merge), is made during that push, and is pending after it.
func mergeWhilePending(t *testing.T, b, c *syncNode, hooked *hookedRemote, k Key) {
	t.Helper()
	c.push = syncer.New(c.store, hooked, syncer.Options{Resolvers: conflict.Merge{}})
	c.put(k, fieldsDoc(t, map[string]int{"c": 0}))
	c.pushAll()
	b.pullAll()
	b.put(k, fieldsDoc(t, map[string]int{"c": 0, "b": 1}))
	b.pushAll()

	c.put(k, fieldsDoc(t, map[string]int{"c": 1})) // x: c's v2, made on v1
	hooked.mu.Lock()
	hooked.hook = func() { c.put(k, fieldsDoc(t, map[string]int{"c": 2})) } // z: c's v3, made on x
	hooked.mu.Unlock()
	if rep := c.pushAll(); rep.Conflicts != 1 || rep.Pushed != 1 {
		t.Fatalf("c's first pass %+v: want x merged with b's change", rep)
	}
}

// wantMergedBoth checks that the remote's record of k holds b's field and
// z's (see mergeWhilePending).
func wantMergedBoth(t *testing.T, remote syncer.Remote, k Key) {
	t.Helper()
	r := remoteGet(t, remote, k)
	var got map[string]int
	if err := wire.Unmarshal(r.Value, &got); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"b": 1, "c": 2}; !maps.Equal(got, want) {
		t.Fatalf("remote holds %v by %s v%d, want %v", got, r.Origin, r.Version, want)
	}
}

func fieldsDoc(t *testing.T, fields map[string]int) string {
	t.Helper()
	v, err := wire.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// TestDivergedDecisionInLedger: a remote record that replaces a local one
// it is concurrent with, whose change was parked (ApplyDiverged), is a
// decision of this node: it is in the node's conflict ledger (resolver
// "diverged", the shared store's record winning), once.
func TestDivergedDecisionInLedger(t *testing.T) {
	ctx := context.Background()
	s := openDisk(t, t.TempDir(), func(o *Options) { o.NodeID = "c" })
	defer closeStore(t, s)
	k := key("g", "k")
	mustPut(t, s, k, "parked")
	es, err := s.Pending(ctx, 0, 0)
	if err != nil || len(es) != 1 {
		t.Fatalf("pending %+v, %v", es, err)
	}
	if err := s.Park(ctx, []syncer.Parked{{Seq: es[0].Seq, Key: syncer.Key(k), OpID: es[0].Record.OpID, Reason: "rejected", Time: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	remote := syncer.Record{Key: syncer.Key(k), Value: []byte("shared"), Version: 1, Origin: "b", OpID: "b-1",
		Clock: syncer.Clock{HLC: 1, Vector: map[string]uint64{"b": 1}}, RemoteTime: time.Now()}
	for range 2 { // a re-delivery decides nothing more
		if _, err := s.ApplyRemote(ctx, syncer.RemoteBatch{Records: []syncer.Record{remote}}); err != nil {
			t.Fatal(err)
		}
	}
	if rec, err := s.Get(ctx, k); err != nil || string(rec.Value) != "shared" {
		t.Fatalf("local %+v, %v: want the shared store's record", rec, err)
	}
	page, err := s.Conflicts(ctx, LedgerQuery{Governor: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 1 {
		t.Fatalf("ledger %+v: want the one diverged decision", page.Entries)
	}
	e := page.Entries[0]
	if e.Resolver != syncer.ResolverDiverged || e.Winner != conflict.Remote || e.Node != s.Origin() || e.Key != syncer.Key(k) ||
		e.Local.OpID != es[0].Record.OpID || string(e.Local.Value) != "parked" || e.Remote.OpID != "b-1" || e.Reason == "" {
		t.Fatalf("ledger entry %+v", e)
	}
	if v, del := e.Final(); string(v) != "shared" || del {
		t.Fatalf("entry's final value %q, deleted %v", v, del)
	}
}
