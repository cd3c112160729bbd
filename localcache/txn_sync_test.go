package localcache

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// Transactions through the push loop and strong transactions: against the
// in-memory remote and Firestore on the emulator.

func remoteMissing(t *testing.T, r syncer.Remote, k Key) {
	t.Helper()
	if rec, err := r.Get(context.Background(), syncer.Key(k)); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("remote %s: %+v, %v; want not found", k, rec, err)
	}
}

func TestTxnPushChecks(t *testing.T) { forRemotes(t, testTxnPushChecks) }

// testTxnPushChecks: an async transaction's checks are checked again in the
// remote transaction. One whose checked state moved meanwhile gives way
// whole (nothing of it reaches the remote; the local copy follows the
// remote); one whose checks still hold is applied whole.
func testTxnPushChecks(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	x, y, z := key("g", "x"), key("g", "y"), key("g", "z")
	a.put(x, "1")
	a.pushAll()
	b.pullAll()

	recs, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{{Key: y, Value: []byte("a")}, {Key: z, Value: []byte("a")}},
		Checks: []TxnCheck{{Key: x, IfVersion: u64(1)}}})
	if err != nil || len(recs) != 2 {
		t.Fatalf("txn: %+v, %v", recs, err)
	}
	b.put(x, "2")
	b.pushAll()
	rep := a.pushAll()
	if rep.Superseded != 2 || rep.Pushed != 0 {
		t.Fatalf("push of a transaction whose check failed: %+v, want 2 superseded", rep)
	}
	remoteMissing(t, remote, y)
	remoteMissing(t, remote, z)
	wantMissing(t, a.store, y)
	wantMissing(t, a.store, z)
	if err := a.store.WaitSynced(ctx, recs[0].Seq); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("wait for the superseded transaction: %v, want a version conflict", err)
	}

	a.pullAll()
	recs, err = a.store.WriteTxn(ctx, Txn{Writes: []Write{{Key: y, Value: []byte("a2")}, {Key: z, Value: []byte("a2")}},
		Checks: []TxnCheck{{Key: x, IfVersion: u64(2)}}})
	if err != nil {
		t.Fatal(err)
	}
	if rep := a.pushAll(); rep.Pushed != 2 {
		t.Fatalf("push of a transaction whose check holds: %+v", rep)
	}
	for _, k := range []Key{y, z} {
		if r := remoteGet(t, remote, k); string(r.Value) != "a2" || r.Version != 1 {
			t.Fatalf("remote %s: %+v", k, r)
		}
	}
	mustSynced(t, a, recs[1])
}

// commitThenFail applies the first commit and reports it failed, as a reply
// lost after the remote committed.
type commitThenFail struct {
	syncer.Remote
	done atomic.Bool
}

func (c *commitThenFail) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	res, err := c.Remote.Commit(ctx, b)
	if err == nil && c.done.CompareAndSwap(false, true) {
		return nil, syncer.ErrUnavailable
	}
	return res, err
}

func TestTxnPushExactlyOnce(t *testing.T) { forRemotes(t, testTxnPushExactlyOnce) }

// testTxnPushExactlyOnce: a transaction the remote applied but whose reply
// was lost is acked as already applied when pushed again, even though its
// checked state moved since: it reaches the remote once.
func testTxnPushExactlyOnce(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	shared := newRemote()
	flaky := &commitThenFail{Remote: shared}
	flaky.done.Store(true) // commits go through until the transaction's
	a := newSyncNode(t, "a", flaky, "g")
	b := newSyncNode(t, "b", shared, "g")
	x, y := key("g", "x"), key("g", "y")
	a.put(x, "1")
	a.pushAll()
	b.pullAll()
	flaky.done.Store(false)
	recs, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{{Key: y, Value: []byte("once")}}, Checks: []TxnCheck{{Key: x, IfVersion: u64(1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.push.SyncOnce(ctx); err == nil {
		t.Fatal("push with a lost reply: no error")
	}
	b.put(x, "2")
	b.pushAll()
	if rep := a.pushAll(); rep.AlreadyApplied != 1 {
		t.Fatalf("second push: %+v, want the transaction already applied", rep)
	}
	mustSynced(t, a, recs[0])
	evs, err := shared.Events(ctx, syncer.Key(y), 0, 0)
	if r := remoteGet(t, shared, y); string(r.Value) != "once" || r.Version != 1 || err != nil || len(evs) != 1 {
		t.Fatalf("remote %s: %+v, events %d (%v): want one version, one event", y, r, len(evs), err)
	}
	if got := a.get(y); got.Pending || got.Version != 1 {
		t.Fatalf("local %s: %s", y, desc(&got))
	}
}

func TestTxnPushWriteConflict(t *testing.T) { forRemotes(t, testTxnPushWriteConflict) }

// movedFirst sets up a transfer that meets a concurrent change: node a has
// states from and to at 100 (version 1, pushed), and node b has since moved
// 50 out of from (version 2 in remote), which a has not seen.
func movedFirst(t *testing.T, remote syncer.Remote) (a *syncNode, from, to Key) {
	t.Helper()
	a = newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	from, to = key("g", "from"), key("g", "to")
	a.put(from, "100")
	a.put(to, "100")
	a.pushAll()
	b.pullAll()
	b.put(from, "50") // b moves 50 elsewhere first
	b.pushAll()
	return a, from, to
}

// testTxnPushWriteConflict: a transaction's write whose state another node
// changed first loses whatever the clocks say: the whole transaction gives
// way, so a transfer is never applied on balances it did not see.
func testTxnPushWriteConflict(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a, from, to := movedFirst(t, remote)
	if _, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{
		{Key: from, Value: []byte("90"), IfVersion: u64(1)},
		{Key: to, Value: []byte("110"), IfVersion: u64(1)},
	}}); err != nil {
		t.Fatal(err)
	}
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("push: %+v, want the transaction superseded", rep)
	}
	if r := remoteGet(t, remote, from); string(r.Value) != "50" {
		t.Fatalf("remote from: %+v", r)
	}
	if r := remoteGet(t, remote, to); string(r.Value) != "100" || r.Version != 1 {
		t.Fatalf("remote to: %+v", r)
	}
	if got := a.get(from); string(got.Value) != "50" {
		t.Fatalf("local from: %s, want the remote's", desc(&got))
	}
}

func TestTxnPushGivesWayNamed(t *testing.T) { forRemotes(t, testTxnPushGivesWayNamed) }

// testTxnPushGivesWayNamed: a transaction that gives way is reported to
// WaitSynced naming the write that met the concurrent change, not the first
// one.
func testTxnPushGivesWayNamed(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	a, from, to := movedFirst(t, newRemote())
	recs, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{
		{Key: to, Value: []byte("110"), IfVersion: u64(1)},
		{Key: from, Value: []byte("90"), IfVersion: u64(1)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("push: %+v, want the transaction superseded", rep)
	}
	var lost *ConflictLostError
	err = a.store.WaitSynced(ctx, recs[0].Seq, recs[1].Seq)
	if !errors.As(err, &lost) || lost.Key != from || lost.RemoteVersion != 2 || lost.Seq != recs[1].Seq {
		t.Fatalf("WaitSynced of the transaction that gave way: %v; want the change of %s, lost to version 2", err, from)
	}
}

func TestTxnPushChainGivesWay(t *testing.T) { forRemotes(t, testTxnPushChainGivesWay) }

// testTxnPushChainGivesWay: a transaction made on the local result of an
// earlier one that gives way gives way too, even where the remote holds
// nothing it has not seen: its values were computed from balances that never
// reached the remote. Otherwise a transfer's debit would land without the
// earlier credit it was computed with, and money would vanish.
func testTxnPushChainGivesWay(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	x, y, z := key("g", "x"), key("g", "y"), key("g", "z")
	for _, k := range []Key{x, y, z} {
		a.put(k, "100")
	}
	a.pushAll()
	b.pullAll()
	b.put(y, "50") // b moves 50 from y elsewhere first
	b.pushAll()
	// a: 10 from x to y (gives way: y moved), then 10 from x to z, made on
	// the first transfer's x.
	if _, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{
		{Key: x, Value: []byte("90"), IfVersion: u64(1)},
		{Key: y, Value: []byte("110"), IfVersion: u64(1)},
	}}); err != nil {
		t.Fatal(err)
	}
	recs, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{
		{Key: x, Value: []byte("80"), IfVersion: u64(2)},
		{Key: z, Value: []byte("110"), IfVersion: u64(1)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if rep := a.pushAll(); rep.Superseded != 4 || rep.Pushed != 0 {
		t.Fatalf("push: %+v, want both transactions superseded", rep)
	}
	for k, want := range map[Key]string{x: "100", y: "50", z: "100"} {
		if r := remoteGet(t, remote, k); string(r.Value) != want {
			t.Fatalf("remote %s: %q, want %q", k, r.Value, want)
		}
		if got := a.get(k); string(got.Value) != want {
			t.Fatalf("local %s: %s, want the remote's %q", k, desc(&got), want)
		}
	}
	if err := a.store.WaitSynced(ctx, recs[0].Seq); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("wait for the second transaction: %v, want a version conflict", err)
	}
}

// downFetcher is a shared store that cannot be reached.
type downFetcher struct{}

func (downFetcher) Fetch(context.Context, syncer.Key) (syncer.Record, syncer.ApplyStatus, error) {
	return syncer.Record{}, 0, syncer.ErrUnavailable
}

func TestTxnStrong(t *testing.T) { forRemotes(t, testTxnStrong) }

// testTxnStrong: a strong transaction is checked against the shared store
// and committed there before it returns; one that loses to a concurrent
// change is tried again (attempts > 1) and then applies on the fresh
// records; a precondition that fails against them is a version conflict;
// an unreachable shared store is Unavailable, with nothing written.
func testTxnStrong(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	runPush(t, a)
	runPush(t, b)
	p, q, r := key("g", "p"), key("g", "q"), key("g", "r")

	recs, used, err := a.store.WriteTxnStrong(ctx, a.pull, Txn{Writes: []Write{{Key: p, Value: []byte("1")}, {Key: q, Value: []byte("1")}},
		Checks: []TxnCheck{{Key: r, IfVersion: u64(0)}}}, 0)
	if err != nil || used != 1 || len(recs) != 2 || recs[0].Pending {
		t.Fatalf("strong txn: %+v, %d attempts, %v", recs, used, err)
	}
	for _, k := range []Key{p, q} {
		if rec := remoteGet(t, remote, k); string(rec.Value) != "1" {
			t.Fatalf("remote %s: %+v", k, rec)
		}
	}

	// b changes p between a's read and a's commit, once: a's first
	// attempt loses, the second applies.
	var once sync.Once
	slip := hookFetcher{Puller: a.pull, after: func() {
		once.Do(func() {
			if _, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: p, Value: []byte("b")}}); err != nil {
				t.Error(err)
			}
		})
	}}
	_, used, err = a.store.WriteTxnStrong(ctx, slip, Txn{Writes: []Write{{Key: p, Value: []byte("a")}, {Key: q, Value: []byte("a")}}}, 5)
	if err != nil || used != 2 {
		t.Fatalf("strong txn that lost once: %d attempts, %v; want 2 attempts", used, err)
	}
	if rec := remoteGet(t, remote, p); string(rec.Value) != "a" || rec.Version != 3 {
		t.Fatalf("remote p: %+v", rec)
	}

	// A check that another node made fail: the retry reports the conflict.
	once = sync.Once{}
	slip.after = func() {
		once.Do(func() {
			if _, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: r, Value: []byte("b")}}); err != nil {
				t.Error(err)
			}
		})
	}
	_, used, err = a.store.WriteTxnStrong(ctx, slip, Txn{Writes: []Write{{Key: q, Value: []byte("a2")}}, Checks: []TxnCheck{{Key: r, IfVersion: u64(0)}}}, 5)
	wantConflict(t, err, 0, 1)
	if used != 2 {
		t.Fatalf("strong txn whose check failed remotely: %d attempts, want 2", used)
	}
	if rec := remoteGet(t, remote, q); string(rec.Value) != "a" {
		t.Fatalf("remote q after the failed txn: %+v", rec)
	}

	// Every attempt lost: Unavailable after the configured attempts.
	var n atomic.Int64
	always := hookFetcher{Puller: a.pull, after: func() {
		if _, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: q, Value: []byte(strconv.FormatInt(n.Add(1), 10))}}); err != nil {
			t.Error(err)
		}
	}}
	_, used, err = a.store.WriteTxnStrong(ctx, always, Txn{Writes: []Write{{Key: q, Value: []byte("a3")}}}, 2)
	if !errors.Is(err, syncer.ErrUnavailable) || used != 2 {
		t.Fatalf("strong txn losing every attempt: %d attempts, %v; want Unavailable after 2", used, err)
	}

	// Offline.
	depth := a.store.Depth()
	if _, _, err := a.store.WriteTxnStrong(ctx, downFetcher{}, Txn{Writes: []Write{{Key: key("g", "off"), Value: []byte("x")}}}, 0); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("strong txn offline: %v, want Unavailable", err)
	}
	if a.store.Depth() != depth {
		t.Fatal("a strong txn offline was journaled")
	}
	wantMissing(t, a.store, key("g", "off"))
}

func TestTxnLogGaveWay(t *testing.T) { forRemotes(t, testTxnLogGaveWay) }

// testTxnLogGaveWay: an async transaction logged as committed becomes
// gave_way in the transaction log when it gives way in the shared store,
// also when the push settled it before it was logged, or it never was; one
// the shared store applied stays committed. No bookkeeping is left behind.
func testTxnLogGaveWay(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	x, y := key("g", "x"), key("g", "y")
	a.put(x, "1")
	a.put(y, "1")
	a.pushAll()
	b.pullAll()

	start := time.Now()
	txn := func(id string, value string) []Record {
		t.Helper()
		recs, err := a.store.WriteTxn(ctx, Txn{Writes: []Write{{Key: x, Value: []byte(value)}, {Key: y, Value: []byte(value)}},
			LogID: id, LogTime: start})
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	logTxn := func(id string, recs []Record) {
		t.Helper()
		err := a.store.LogTxn(ctx, TxnLogEntry{ID: id, Time: start, Consistency: "async", Outcome: wire.TxnCommitted,
			Attempts: 1, Ops: []TxnLogOp{{Op: "put", Key: x, Version: recs[0].Version}}})
		if err != nil {
			t.Fatal(err)
		}
	}

	// Logged, then gives way.
	logTxn("t1", txn("t1", "a1"))
	b.put(x, "b1")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("push of t1: %+v", rep)
	}
	// Gives way before it is logged.
	a.pullAll()
	recs := txn("t2", "a2")
	b.pullAll()
	b.put(y, "b2")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("push of t2: %+v", rep)
	}
	logTxn("t2", recs)
	// Applied.
	a.pullAll()
	logTxn("t3", txn("t3", "a3"))
	if rep := a.pushAll(); rep.Pushed != 2 {
		t.Fatalf("push of t3: %+v", rep)
	}
	// Never logged (the process died before LogTxn), gives way: the log
	// still gets an entry for it.
	txn("t4", "a4")
	b.pullAll()
	b.put(x, "b4")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("push of t4: %+v", rep)
	}

	page, err := a.store.TxLog(ctx, TxLogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]TxnLogEntry{}
	for _, e := range page.Entries {
		got[e.ID] = e
	}
	for id, want := range map[string]string{"t1": wire.TxnGaveWay, "t2": wire.TxnGaveWay, "t3": wire.TxnCommitted, "t4": wire.TxnGaveWay} {
		e := got[id]
		if e.Outcome != want || !e.Time.Equal(start) {
			t.Errorf("%s: outcome %q (%s %s) at %v, want %q at %v", id, e.Outcome, e.Code, e.Error, e.Time, want, start)
		}
		if want == wire.TxnGaveWay && (e.Code != string(wire.CodeVersionConflict) || e.Error == "") {
			t.Errorf("%s: code %q, error %q", id, e.Code, e.Error)
		}
		if logged := id != "t4"; logged != (len(e.Ops) == 1 && e.Consistency == "async") {
			t.Errorf("%s: the logged entry's content is lost or invented: %+v", id, e)
		}
	}
	if gw, err := a.store.TxLog(ctx, TxLogQuery{Outcome: wire.TxnGaveWay}); err != nil || len(gw.Entries) != 3 {
		t.Errorf("txlog outcome gave_way: %d entries, %v", len(gw.Entries), err)
	}
	if left := txPushing(t, a.store); left != 0 {
		t.Fatalf("%d transactions still marked on their way to the shared store", left)
	}
}
