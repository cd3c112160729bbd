package localcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// Local changes that lost leave the local history (superseded.go): the
// node's log then holds the shared store's lineage, and the winner's
// history comes in through the pull.

// eventsOnly is a remote's event log as a syncer.HistoryRemote without
// snapshots: the history of a remote that keeps none (the in-memory one).
type eventsOnly struct{ syncer.Remote }

func (eventsOnly) PutSnapshot(context.Context, syncer.Snapshot, int) (syncer.SnapshotStatus, error) {
	return 0, errors.New("this remote keeps no snapshots")
}

func (eventsOnly) Snapshots(context.Context, syncer.Key, uint64, uint64) ([]syncer.Snapshot, error) {
	return nil, nil
}

// historyOf is r's history: r itself when it keeps snapshots, its event
// log otherwise.
func historyOf(r syncer.Remote) syncer.HistoryRemote {
	if h, ok := r.(syncer.HistoryRemote); ok {
		return h
	}
	return eventsOnly{r}
}

// newHistoryNode is a syncNode whose pulls bring the remote's history,
// with a snapshot every `every` versions (0: none).
func newHistoryNode(t *testing.T, node string, remote syncer.Remote, every int) *syncNode {
	t.Helper()
	n := &syncNode{t: t, dir: t.TempDir(), node: node, remote: remote, history: true, every: every}
	n.open("g")
	t.Cleanup(func() { _ = n.store.Close(context.Background()) })
	return n
}

// wantLineage checks that n's history of k is the shared store's, whose
// values of versions 1, 2, ... are want: every version answers with its
// value, the events are those of the shared store's (by op id), and
// validate finds no violation and no gap.
func wantLineage(t *testing.T, n *syncNode, k Key, want ...string) {
	t.Helper()
	ctx := context.Background()
	remote, err := n.remote.Events(ctx, syncer.Key(k), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range want {
		p, err := n.store.StateAtVersion(ctx, k, uint64(i+1))
		if err != nil || string(p.Value) != v {
			t.Fatalf("%s: state of %s at version %d: %q, %v; want %q", n.node, k, i+1, p.Value, err, v)
		}
	}
	evs := mustEvents(t, n.store, k)
	var got, ops []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("v%d %s", e.ToVersion, e.Value))
	}
	for i, e := range remote {
		ops = append(ops, e.OpID)
		if i < len(evs) && evs[i].OpID != e.OpID {
			t.Fatalf("%s: event %d of %s is op %s; the shared store's is %s", n.node, i+1, k, evs[i].OpID, e.OpID)
		}
	}
	var wantEvs []string
	for i, v := range want {
		wantEvs = append(wantEvs, fmt.Sprintf("v%d %s", i+1, v))
	}
	if !slices.Equal(got, wantEvs) || len(ops) != len(want) {
		t.Fatalf("%s: events of %s: %v; want %v (the shared store holds %d)", n.node, k, got, wantEvs, len(ops))
	}
	rep, err := n.store.Validate(ctx, k.Governor, k.State)
	if err != nil || !rep.OK() || rep.GapCount != 0 {
		t.Fatalf("%s: validate %s: %+v, %v", n.node, k, rep, err)
	}
}

// sharedStart returns nodes a (a snapshot every aEvery versions) and b of
// a new remote, and the state k both hold at version 1, a's.
func sharedStart(t *testing.T, newRemote func() syncer.Remote, aEvery int) (a, b *syncNode, k Key) {
	t.Helper()
	remote := newRemote()
	a = newHistoryNode(t, "a", remote, aEvery)
	b = newHistoryNode(t, "b", remote, 0)
	k = key("g", "k")
	a.put(k, "1")
	a.pushAll()
	b.pullAll()
	return a, b, k
}

// ledgerOf returns n's local ledger records of k.
func ledgerOf(t *testing.T, n *syncNode, k Key) []syncer.ConflictRecord {
	t.Helper()
	page, err := n.store.Conflicts(context.Background(), LedgerQuery{Governor: k.Governor, State: k.State})
	if err != nil {
		t.Fatal(err)
	}
	return page.Entries
}

// TestLostChangeLeavesTheHistory: a's two writes of k (versions 2 and 3,
// made on version 1) lose to b's version 2; b then makes versions 3 and 4.
// a's history of k is the shared store's: b's versions 2 to 4. Before,
// a's events of the changes that lost stayed at versions 2 and 3: they
// kept the winner's events from being imported (the history's top was 3),
// and once the state was past them, state_at version 3 answered a's
// change, which the shared store never held.
func TestLostChangeLeavesTheHistory(t *testing.T) { forRemotes(t, testLostChangeLeavesTheHistory) }

func testLostChangeLeavesTheHistory(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	a, b, k := sharedStart(t, newRemote, 0)
	a.put(k, "a2")
	a3 := a.put(k, "a3")
	nextMillisecond() // b's write is later: it wins
	b.put(k, "b2")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("a's push %+v: want its two writes superseded", rep)
	}
	b.put(k, "b3")
	b.put(k, "b4")
	b.pushAll()
	a.pullAll()
	wantLineage(t, a, k, "1", "b2", "b3", "b4")
	if p, err := a.store.StateAt(ctx, k, time.Unix(0, a3.UpdatedAt)); err != nil || string(p.Value) != "1" || !p.Exact {
		t.Fatalf("state when a3 was written: %+v, %v; want version 1 (b2 was written later)", p, err)
	}
	// What lost is in the ledger: the change as pushed, its op, and the
	// journal entries it stood for.
	recs := ledgerOf(t, a, k)
	if len(recs) != 1 || recs[0].Winner != conflict.Remote || string(recs[0].Local.Value) != "a3" ||
		recs[0].Local.OpID != a3.OpID || recs[0].Entries != 2 {
		t.Fatalf("a's ledger of %s: %+v; want the decision against a3", k, recs)
	}
	if holes, err := a.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes still listed: %v, %v", holes, err)
	}

	// The shared store moved on further before a pushed: every version
	// a's changes made is below the record a adopts.
	k2 := key("g", "k2")
	a.put(k2, "1")
	a.pushAll()
	b.pullAll()
	a.put(k2, "a2")
	a.put(k2, "a3")
	nextMillisecond()
	for _, v := range []string{"b2", "b3", "b4"} {
		b.put(k2, v)
	}
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("a's push %+v: want its two writes of %s superseded", rep, k2)
	}
	if got := a.get(k2); got.Version != 4 {
		t.Fatalf("a holds %+v of %s, want b's version 4", got, k2)
	}
	a.pullAll()
	wantLineage(t, a, k2, "1", "b2", "b3", "b4")
}

// TestLostChangeHistoryRefilled: the winner's record reached a while its
// change was pending (kept aside), so the change stream does not bring it
// again; the next poll reads it back with the history of the versions the
// lost change had made all the same. So it does when a wrote again
// before that poll: the hole is below the local history's top then.
func TestLostChangeHistoryRefilled(t *testing.T) { forRemotes(t, testLostChangeHistoryRefilled) }

func testLostChangeHistoryRefilled(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newHistoryNode(t, "a", remote, 2)
	b := newHistoryNode(t, "b", remote, 0)
	lose := func(k Key, snapshot bool) {
		t.Helper()
		a.put(k, "1")
		if snapshot {
			if _, _, err := a.store.Snapshot(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		a.pushAll()
		b.pullAll()
		a.put(k, "a2")
		nextMillisecond()
		b.put(k, "b2")
		b.pushAll()
		if rep := a.pullAll(); rep.Pending != 1 {
			t.Fatalf("a's pull %+v: want b's record of %s kept aside", rep, k)
		}
		if rep := a.pushAll(); rep.Superseded != 1 {
			t.Fatalf("a's push %+v: want its write of %s superseded", rep, k)
		}
		holes, err := a.store.HistoryHoles(ctx, "g", "", 10)
		if err != nil || !slices.Contains(holes, syncer.HistoryHole{Key: syncer.Key(k), After: 1}) {
			t.Fatalf("holes: %v, %v; want %s after version 1", holes, err, k)
		}
	}
	k := key("g", "k")
	lose(k, false)
	if rep := a.pullAll(); rep.Stale != 1 {
		t.Fatalf("a's pull %+v: want b's record read back", rep)
	}
	wantLineage(t, a, k, "1", "b2")

	// a writes again before the poll, on b's version 2, and pushes: the
	// hole is below its versions 3 and 4, and in the stretch of the time
	// mark taken with the snapshot at 4 (the one at 1, taken on demand,
	// ends the stretch below).
	k2 := key("g", "k2")
	lose(k2, true)
	a.put(k2, "a3")
	a.put(k2, "a4")
	waitSnapshots(t, a.store)
	if rep := a.pullAll(); rep.Pending != 1 {
		t.Fatalf("a's pull %+v: want the record read back and kept aside", rep)
	}
	if holes, err := a.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 1 || holes[0].Key != syncer.Key(k2) {
		t.Fatalf("holes while a's writes are pending: %v, %v; want %s's kept", holes, err, k2)
	}
	if rep := a.pushAll(); rep.Pushed != 2 {
		t.Fatalf("a's push %+v: want its writes on b's version pushed", rep)
	}
	a.pullAll()
	wantLineage(t, a, k2, "1", "b2", "a3", "a4")
	b2, err := a.store.StateAtVersion(ctx, k2, 2)
	if err != nil {
		t.Fatal(err)
	}
	// The mark at 4 was widened to b2's time: the time b2 was written
	// answers b2 (not version 1, as a lookup skipping the stretch would).
	if p, err := a.store.StateAt(ctx, k2, time.Unix(0, b2.UpdatedAt)); err != nil || string(p.Value) != "b2" {
		t.Fatalf("state when b2 was written: %+v, %v", p, err)
	}
	if holes, err := a.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes still listed: %v, %v", holes, err)
	}
}

// TestLostSnapshotLeavesTheHistory: the changes that lost had snapshots
// (an automatic one at version 2, one on demand at 3) and their time
// marks: they leave with the events, the outbox does not copy them, and the
// winner's versions get their own snapshots when imported.
func TestLostSnapshotLeavesTheHistory(t *testing.T) { forRemotes(t, testLostSnapshotLeavesTheHistory) }

func testLostSnapshotLeavesTheHistory(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newHistoryNode(t, "a", remote, 2)
	b := newHistoryNode(t, "b", remote, 0)
	k := key("g", "k")
	a.put(k, "1")
	a.pushAll()
	b.pullAll()
	a2 := a.put(k, "a2")
	a3 := a.put(k, "a3")
	waitSnapshots(t, a.store)
	if snap, taken, err := a.store.Snapshot(ctx, k); err != nil || !taken || string(snap.Value) != "a3" {
		t.Fatalf("snapshot of a3: %+v, %v, %v", snap, taken, err)
	}
	nextMillisecond()
	b.put(k, "b2")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("a's push %+v: want its two writes superseded", rep)
	}
	snaps, err := a.store.Snapshots(ctx, k)
	if err != nil || len(snaps) != 0 {
		t.Fatalf("a's snapshots of %s after the loss: %+v, %v; want none (both were of changes that lost)", k, snaps, err)
	}
	if out, err := a.store.UnpushedSnapshots(ctx, syncer.SnapshotRef{}, 10); err != nil || len(out) != 0 {
		t.Fatalf("snapshot outbox: %+v, %v; want empty", out, err)
	}
	b.put(k, "b3")
	b.put(k, "b4")
	b.pushAll()
	a.pullAll()
	wantLineage(t, a, k, "1", "b2", "b3", "b4")
	snaps, err = a.store.Snapshots(ctx, k)
	if err != nil || len(snaps) != 2 || snaps[0].Version != 2 || snaps[1].Version != 4 ||
		snaps[0].OpID == a2.OpID || string(snaps[0].Value) != "b2" || string(snaps[1].Value) != "b4" {
		t.Fatalf("a's snapshots of %s: %+v, %v; want b's versions 2 and 4", k, snaps, err)
	}
	for _, at := range []int64{a2.UpdatedAt, a3.UpdatedAt} {
		if p, err := a.store.StateAt(ctx, k, time.Unix(0, at)); err != nil || string(p.Value) != "1" {
			t.Fatalf("state at %d: %+v, %v; want version 1", at, p, err)
		}
	}
	page, err := a.store.Replay(ctx, ReplayQuery{Governor: "g", State: "k", Latest: true})
	if err != nil || len(page.Items) != 1 || page.Items[0].Snapshot == nil || string(page.Items[0].Snapshot.Value) != "b4" {
		t.Fatalf("replay from the newest snapshot: %+v, %v; want b's version 4", page, err)
	}
}

// TestLostStrictChangeLeavesTheHistory: a strong write that met a
// concurrent change between its read and its push, and an async
// transaction whose check failed, leave the history as a change that lost
// by its resolver does; the transaction's write is in the ledger, given
// way.
func TestLostStrictChangeLeavesTheHistory(t *testing.T) {
	forRemotes(t, testLostStrictChangeLeavesTheHistory)
}

func testLostStrictChangeLeavesTheHistory(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newHistoryNode(t, "a", remote, 0)
	b := newHistoryNode(t, "b", remote, 0)
	k, x, y := key("g", "k"), key("g", "x"), key("g", "y")
	for _, s := range []Key{k, x, y} {
		a.put(s, "1")
	}
	a.pushAll()
	b.pullAll()

	// The strong write: pushed at once by its own loop.
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.push.Run(loopCtx) }()
	slip := hookFetcher{Puller: a.pull, after: func() {
		b.put(k, "b2")
		b.pushAll()
	}}
	_, err := a.store.WriteStrong(ctx, slip, []Write{{Key: k, Value: []byte("a-strong"), IfVersion: u64(1)}})
	cancel()
	<-done
	var vc *VersionConflictError
	if !errors.As(err, &vc) || vc.Actual != 2 {
		t.Fatalf("strong write that met a concurrent change: %v", err)
	}

	// The transaction: its check of x fails at push time.
	if _, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{{Key: y, Value: []byte("a-txn")}},
		Checks: []TxnCheck{{Key: x, IfVersion: u64(1)}}}); err != nil {
		t.Fatal(err)
	}
	b.put(x, "b2")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 1 {
		t.Fatalf("a's push %+v: want the transaction superseded", rep)
	}
	recs := ledgerOf(t, a, y)
	if len(recs) != 1 || recs[0].Resolver != syncer.ResolverGaveWay || string(recs[0].Local.Value) != "a-txn" ||
		!strings.Contains(recs[0].Reason, "g/x") {
		t.Fatalf("a's ledger of %s: %+v; want the write given way, naming g/x", y, recs)
	}

	for _, s := range []Key{k, y} {
		b.put(s, "b3") // y's version 2
	}
	b.put(k, "b4") // k's version 3 is b3
	b.pushAll()
	a.pullAll()
	wantLineage(t, a, k, "1", "b2", "b3", "b4")
	wantLineage(t, a, y, "1", "b3")
}

// TestLostChangeHoleListedOnADuplicateAck: the last ack of a key in one call
// may remove nothing (its entries were acked by an earlier one in the same
// call). The ack that removed them settles the key all the same: the local
// record adopts the shared store's, and the hole the lost change left is
// listed. Before, only the key's last ack did either, so the local record
// kept the lost value, not pending, and the hole was never filled.
func TestLostChangeHoleListedOnADuplicateAck(t *testing.T) {
	ctx := context.Background()
	remote := memremote.New()
	a := newHistoryNode(t, "a", remote, 0)
	b := newHistoryNode(t, "b", remote, 0)
	k := key("g", "k")
	a.put(k, "1")
	a.pushAll()
	b.pullAll()
	lost := a.put(k, "a2")
	nextMillisecond()
	b.put(k, "b2")
	b.pushAll()
	won, err := remote.Get(ctx, syncer.Key(k))
	if err != nil {
		t.Fatal(err)
	}
	ack := syncer.Ack{Key: syncer.Key(k), Seqs: []uint64{lost.Seq}, Outcome: syncer.OutcomeSuperseded, Remote: won}
	if err := a.store.Ack(ctx, []syncer.Ack{ack, ack}); err != nil {
		t.Fatal(err)
	}
	holes, err := a.store.HistoryHoles(ctx, "g", "", 10)
	if err != nil || !slices.Contains(holes, syncer.HistoryHole{Key: syncer.Key(k), After: 1}) {
		t.Fatalf("holes: %v, %v; want %s after version 1", holes, err, k)
	}
	if got := a.get(k); string(got.Value) != "b2" || got.Pending {
		t.Fatalf("a holds %s, want b's record", desc(&got))
	}
}

// TestHistoryHolesPages: HistoryHoles lists a governor's holes in name
// order, from after the name it is given, at most limit of them.
func TestHistoryHolesPages(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	for _, st := range []string{"c", "a", "b", "ab"} {
		if _, err := s.mutate(ctx, func(tx *mutTx) (any, error) { return nil, tx.listHole(key("g", st), 2, 5) }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.mutate(ctx, func(tx *mutTx) (any, error) { return nil, tx.listHole(key("other", "a"), 2, 5) }); err != nil {
		t.Fatal(err)
	}
	names := func(after string, limit int) []string {
		t.Helper()
		holes, err := s.HistoryHoles(ctx, "g", after, limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, h := range holes {
			if h.After != 1 {
				t.Fatalf("hole of %s after %d, want 1", h.Key, h.After)
			}
			out = append(out, h.Key.State)
		}
		return out
	}
	for _, c := range []struct {
		after string
		limit int
		want  []string
	}{
		{"", 10, []string{"a", "ab", "b", "c"}},
		{"", 2, []string{"a", "ab"}},
		{"a", 10, []string{"ab", "b", "c"}},
		{"ab", 2, []string{"b", "c"}},
		{"c", 10, nil},
	} {
		if got := names(c.after, c.limit); !slices.Equal(got, c.want) {
			t.Errorf("after %q, limit %d: %v, want %v", c.after, c.limit, got, c.want)
		}
	}
}

// TestRenumberedChangeTakesTheSharedLineage: a's two writes of k (versions
// 2 and 3 here) win a conflict against b's version 2, and the shared store
// commits them as versions 3 and 4. a's history of k is then the shared
// store's: b's change at 2, a's at 3 and 4. Before, a's events stayed at
// versions 2 and 3, where the shared store holds b's change and a's first,
// and b's was never imported.
func TestRenumberedChangeTakesTheSharedLineage(t *testing.T) {
	forRemotes(t, testRenumberedChangeTakesTheSharedLineage)
}

func testRenumberedChangeTakesTheSharedLineage(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	a, b, k := sharedStart(t, newRemote, 2)
	b.put(k, "b2")
	b.pushAll()
	nextMillisecond() // a's write is later: it wins
	a.put(k, "a2")
	a.put(k, "a3")
	waitSnapshots(t, a.store) // a snapshot of a's change at its local version 2
	if rep := a.pushAll(); rep.Pushed != 2 || rep.Conflicts != 1 {
		t.Fatalf("a's push %+v: want its two writes pushed after a conflict", rep)
	}
	if got := a.get(k); got.Version != 4 || got.Value == nil {
		t.Fatalf("a holds %+v, want its change committed as version 4", got)
	}
	holes, err := a.store.HistoryHoles(ctx, "g", "", 10)
	if err != nil || !slices.Contains(holes, syncer.HistoryHole{Key: syncer.Key(k), After: 1}) {
		t.Fatalf("holes: %v, %v; want %s after version 1", holes, err, k)
	}
	a.pullAll()
	wantLineage(t, a, k, "1", "b2", "a2", "a3")
	if holes, err := a.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes still listed: %v, %v", holes, err)
	}
}

// TestMergedChangeLeavesTheHistoryOnceSettled: c's write x is merged with
// b's concurrent change while c's next write z (made on x) is pending. x's
// event stays in c's log until z settles: z's push finds its merge base by
// it, so b's field survives z's merge. Then both leave, and c's history of
// k is the shared store's. Before, x's event stayed for good at the version
// it made locally, which the shared store holds b's change at.
func TestMergedChangeLeavesTheHistoryOnceSettled(t *testing.T) {
	forRemotes(t, testMergedChangeLeavesTheHistoryOnceSettled)
}

func testMergedChangeLeavesTheHistoryOnceSettled(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	hooked := &hookedRemote{Remote: remote}
	b := newHistoryNode(t, "b", remote, 0)
	c := newHistoryNode(t, "c", hooked, 0)
	k := key("g", "k")
	mergeWhilePending(t, b, c, hooked, k)
	if evs := mustEvents(t, c.store, k); len(evs) != 3 || evs[1].Origin != c.store.Origin() {
		t.Fatalf("c's events while z is pending: %+v; want x's kept at version 2", evs)
	}
	c.pushAll()
	wantMergedBoth(t, remote, k)
	holes, err := c.store.HistoryHoles(ctx, "g", "", 10)
	if err != nil || !slices.Contains(holes, syncer.HistoryHole{Key: syncer.Key(k), After: 1}) {
		t.Fatalf("holes: %v, %v; want %s after version 1", holes, err, k)
	}
	c.pullAll()
	evs, err := remote.Events(ctx, syncer.Key(k), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var values []string
	for _, e := range evs {
		values = append(values, string(e.Value))
	}
	wantLineage(t, c, k, values...)
	if len(values) != 4 {
		t.Fatalf("the shared store holds %d events of %s, want 4", len(values), k)
	}
}

// lostReplyRemote is a remote whose next Commit runs before first, and
// whose next Commit that applies a change loses its reply: the commit
// reaches the remote, lose runs, and the caller gets an outage as if the
// reply had not come back.
type lostReplyRemote struct {
	syncer.Remote
	mu     sync.Mutex
	before func()
	lose   func()
}

func (r *lostReplyRemote) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	r.mu.Lock()
	before := r.before
	r.before = nil
	r.mu.Unlock()
	if before != nil {
		before()
	}
	res, err := r.Remote.Commit(ctx, b)
	if err != nil || len(res) == 0 || res[0].Status != syncer.Applied {
		return res, err
	}
	r.mu.Lock()
	lose := r.lose
	r.lose = nil
	r.mu.Unlock()
	if lose == nil {
		return res, err
	}
	lose()
	return nil, fmt.Errorf("%w: the reply was lost", syncer.ErrUnavailable)
}

// lossyStart is sharedStart with a's commits through a lostReplyRemote.
func lossyStart(t *testing.T, newRemote func() syncer.Remote) (a, b *syncNode, lossy *lostReplyRemote, k Key) {
	t.Helper()
	remote := newRemote()
	lossy = &lostReplyRemote{Remote: remote}
	a = newHistoryNode(t, "a", lossy, 0)
	b = newHistoryNode(t, "b", remote, 0)
	k = key("g", "k")
	a.put(k, "1")
	a.pushAll()
	b.pullAll()
	return a, b, lossy, k
}

// pushLosingReply runs a push pass of a whose commit that applies a change
// loses its reply, after b (pulled first) writes k's value v.
func pushLosingReply(t *testing.T, a, b *syncNode, lossy *lostReplyRemote, k Key, v string) {
	t.Helper()
	lossy.mu.Lock()
	lossy.lose = func() {
		b.pullAll()
		b.put(k, v)
		b.pushAll()
	}
	lossy.mu.Unlock()
	if _, err := a.push.SyncOnce(context.Background()); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("a's pass: %v, want the lost reply's outage", err)
	}
}

// TestRebasedChangeWithLostReplyTakesTheSharedLineage: a's write a3, made
// on its write a2 while a2 was being pushed, is rebased onto a2 (which won
// a conflict and was committed as version 3) and committed as version 4;
// the reply is lost, and b writes version 5 before a asks again. a3 is then
// already applied, under a record whose last change is b's and with no
// decision of its own in the ledger. a's history of k is the shared store's.
// Before, a3's event stayed at version 3, which the shared store holds a2
// at.
func TestRebasedChangeWithLostReplyTakesTheSharedLineage(t *testing.T) {
	forRemotes(t, testRebasedChangeWithLostReplyTakesTheSharedLineage)
}

func testRebasedChangeWithLostReplyTakesTheSharedLineage(t *testing.T, newRemote func() syncer.Remote) {
	a, b, lossy, k := lossyStart(t, newRemote)
	b.put(k, "b2")
	b.pushAll()
	nextMillisecond() // a's write is later: it wins
	a.put(k, "a2")
	lossy.mu.Lock()
	lossy.before = func() { a.put(k, "a3") } // a's pass has read a2 and not a3
	lossy.mu.Unlock()
	if rep := a.pushAll(); rep.Pushed != 1 || rep.Conflicts != 1 {
		t.Fatalf("a's first pass %+v: want a2 pushed after a conflict", rep)
	}
	pushLosingReply(t, a, b, lossy, k, "b5")
	if r := remoteGet(t, lossy.Remote, k); r.Version != 5 || string(r.Value) != "b5" {
		t.Fatalf("remote holds %q v%d, want b5 as version 5 (a3 as version 4)", r.Value, r.Version)
	}
	if rep := a.pushAll(); rep.AlreadyApplied != 1 {
		t.Fatalf("a's third pass %+v: want a3 already applied", rep)
	}
	a.pullAll()
	wantLineage(t, a, k, "1", "b2", "a2", "a3", "b5")
}

// TestAppliedChangeWithLostReplyKeepsItsEvents: a's write a2 is committed
// as the version it made (2), the reply is lost, and b writes version 3
// before a asks again. a2 is already applied where a made it: its event
// stays, and no hole is listed.
func TestAppliedChangeWithLostReplyKeepsItsEvents(t *testing.T) {
	forRemotes(t, testAppliedChangeWithLostReplyKeepsItsEvents)
}

func testAppliedChangeWithLostReplyKeepsItsEvents(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	a, b, lossy, k := lossyStart(t, newRemote)
	a.put(k, "a2")
	pushLosingReply(t, a, b, lossy, k, "b3")
	if rep := a.pushAll(); rep.AlreadyApplied != 1 {
		t.Fatalf("a's second pass %+v: want a2 already applied", rep)
	}
	if holes, err := a.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes: %v, %v; want none: a2 is where a made it", holes, err)
	}
	if evs := mustEvents(t, a.store, k); len(evs) != 2 || string(evs[1].Value) != "a2" || evs[1].OpID == "" {
		t.Fatalf("a's events of %s: %+v; want a2's kept at version 2", k, evs)
	}
	a.pullAll()
	wantLineage(t, a, k, "1", "a2", "b3")
}
