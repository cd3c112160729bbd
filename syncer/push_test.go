package syncer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// faulty wraps a Remote with faults that any backend can have, and records
// the batches committed. It lets one scenario table run against memremote
// and the Firestore emulator alike.
type faulty struct {
	syncer.Remote
	mu          sync.Mutex
	failNext    int
	loseReplies int
	offline     bool
	reject      map[syncer.Key]bool // commits holding these keys fail permanently
	contended   map[syncer.Key]bool // commits holding these keys fail transiently
	batches     []syncer.Batch
}

func (f *faulty) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	f.mu.Lock()
	f.batches = append(f.batches, b)
	var first syncer.Key
	if len(b.Changes) > 0 {
		first = b.Changes[0].Key
	}
	if f.offline {
		f.mu.Unlock()
		return nil, syncer.Errorf("commit", first, syncer.ErrUnavailable, "offline (injected)")
	}
	if f.failNext > 0 {
		f.failNext--
		f.mu.Unlock()
		return nil, syncer.Errorf("commit", first, syncer.ErrUnavailable, "injected failure")
	}
	for _, c := range b.Changes {
		if f.reject[c.Key] {
			f.mu.Unlock()
			return nil, syncer.Errorf("commit", c.Key, syncer.ErrPermanent, "denied (injected)")
		}
		if f.contended[c.Key] {
			f.mu.Unlock()
			return nil, syncer.Errorf("commit", c.Key, syncer.ErrUnavailable, "contention (injected)")
		}
	}
	lose := f.loseReplies > 0
	if lose {
		f.loseReplies--
	}
	f.mu.Unlock()
	res, err := f.Remote.Commit(ctx, b)
	if lose && (err == nil || errors.Is(err, syncer.ErrConflict)) {
		return nil, syncer.Errorf("commit", first, syncer.ErrUnavailable, "reply lost (injected)")
	}
	return res, err
}

func (f *faulty) set(fn func(f *faulty)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faulty) recorded() []syncer.Batch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]syncer.Batch(nil), f.batches...)
}

// backends are the remotes every scenario runs against.
var backends = []struct {
	name string
	open func(t *testing.T) syncer.Remote
}{
	{"memremote", func(t *testing.T) syncer.Remote { return memremote.New() }},
	{"firestore", func(t *testing.T) syncer.Remote { return firestoretest.Open(t) }},
}

func key(s string) syncer.Key { return syncer.Key{Governor: "g", State: s} }

func put(t *testing.T, j *syncer.MemJournal, k syncer.Key, value string) syncer.Entry {
	t.Helper()
	es, err := j.Append(syncer.MemWrite{Key: k, Value: []byte(value), Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return es[0]
}

func syncOnce(t *testing.T, ctx context.Context, s *syncer.Syncer) syncer.Report {
	t.Helper()
	rep, err := s.SyncOnce(ctx)
	if err != nil {
		t.Fatalf("SyncOnce: %v (report %+v)", err, rep)
	}
	return rep
}

func remoteRecord(t *testing.T, ctx context.Context, r syncer.Remote, k syncer.Key) syncer.Record {
	t.Helper()
	rec, err := r.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get %s: %v", k, err)
	}
	return rec
}

// checkEvents checks that the remote has exactly one event per version
// 1..n of k, in order, and returns them.
func checkEvents(t *testing.T, ctx context.Context, r syncer.Remote, k syncer.Key, n int) []syncer.Event {
	t.Helper()
	evs, err := r.Events(ctx, k, 0, 0)
	if err != nil {
		t.Fatalf("Events %s: %v", k, err)
	}
	if len(evs) != n {
		t.Fatalf("%s: %d remote events, want %d", k, len(evs), n)
	}
	seen := make(map[string]bool)
	for i, e := range evs {
		if e.FromVersion != uint64(i) || e.ToVersion != uint64(i+1) {
			t.Fatalf("%s: event %d goes %d→%d", k, i, e.FromVersion, e.ToVersion)
		}
		if seen[e.OpID] {
			t.Fatalf("%s: op %s appended twice", k, e.OpID)
		}
		seen[e.OpID] = true
	}
	return evs
}

// checkSynced checks that the local record of k is the remote's and
// nothing is pending.
func checkSynced(t *testing.T, ctx context.Context, j *syncer.MemJournal, r syncer.Remote, k syncer.Key) syncer.Record {
	t.Helper()
	rem := remoteRecord(t, ctx, r, k)
	loc, ok := j.Record(k)
	if !ok {
		t.Fatalf("%s: no local record", k)
	}
	if loc.Version != rem.Version || !bytes.Equal(loc.Value, rem.Value) || loc.OpID != rem.OpID || loc.Deleted != rem.Deleted {
		t.Fatalf("%s: local v%d %q op %s, remote v%d %q op %s", k, loc.Version, loc.Value, loc.OpID,
			rem.Version, rem.Value, rem.OpID)
	}
	if j.Synced(k) != rem.Version {
		t.Fatalf("%s: synced version %d, remote %d", k, j.Synced(k), rem.Version)
	}
	return rem
}

type env struct {
	ctx    context.Context
	remote *faulty
	a, b   *syncer.MemJournal // two nodes sharing the remote
	sa, sb *syncer.Syncer
}

func newEnv(t *testing.T, ctx context.Context, r syncer.Remote) *env {
	f := &faulty{Remote: r, reject: make(map[syncer.Key]bool)}
	e := &env{ctx: ctx, remote: f, a: syncer.NewMemJournal("node-a"), b: syncer.NewMemJournal("node-b")}
	opts := syncer.Options{Backoff: syncer.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond},
		Interval: 10 * time.Millisecond}
	e.sa = syncer.New(e.a, f, opts)
	e.sb = syncer.New(e.b, f, opts)
	return e
}

// TestPush runs the push scenarios against every backend.
func TestPush(t *testing.T) {
	scenarios := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"HappyPath", testHappyPath},
		{"Coalescing", testCoalescing},
		{"AtomicBatch", testAtomicBatch},
		{"AtomicBatchLoses", testAtomicBatchLoses},
		{"OutageThenRecovery", testOutage},
		{"PermanentParksOnlyThatKey", testPermanent},
		{"LostReplyAppliesOnce", testLostReply},
		{"CrashBeforeAck", testCrashBeforeAck},
		{"ConflictLocalWins", testConflictLocalWins},
		{"ConflictLocalLoses", testConflictLocalLoses},
		{"ConflictStrictLoses", testConflictStrictLoses},
		{"Load", testLoad},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					sc.fn(t, newEnv(t, ctx, be.open(t)))
				})
			}
		})
	}
}

func testHappyPath(t *testing.T, e *env) {
	ctx := e.ctx
	put(t, e.a, key("x"), "x1")
	put(t, e.a, key("y"), "y1")
	put(t, e.a, key("z"), "z1")
	if _, err := e.a.Append(syncer.MemWrite{Key: key("z"), Delete: true}); err != nil {
		t.Fatal(err)
	}
	rep := syncOnce(t, ctx, e.sa)
	if rep.Entries != 4 || rep.Pushed != 4 || rep.Commits != 1 || rep.Blocked != 0 || rep.More {
		t.Fatalf("report %+v", rep)
	}
	if d := e.a.Depth(); d != 0 {
		t.Fatalf("journal depth %d after push", d)
	}
	for _, k := range []string{"x", "y"} {
		rem := checkSynced(t, ctx, e.a, e.remote, key(k))
		if rem.Version != 1 || string(rem.Value) != k+"1" || rem.RemoteTime.IsZero() {
			t.Fatalf("%s: remote %+v", k, rem)
		}
		checkEvents(t, ctx, e.remote, key(k), 1)
	}
	z := checkSynced(t, ctx, e.a, e.remote, key("z"))
	if !z.Deleted || z.Version != 2 {
		t.Fatalf("z: %+v, want a tombstone at version 2", z)
	}
	evs := checkEvents(t, ctx, e.remote, key("z"), 2)
	if evs[1].Action != syncer.ActionDelete {
		t.Fatalf("z: second event %q", evs[1].Action)
	}
	// Nothing left: a second pass does nothing.
	if rep := syncOnce(t, ctx, e.sa); rep.Entries != 0 || rep.Commits != 0 {
		t.Fatalf("second pass %+v", rep)
	}
	st := e.sa.Stats()
	if st.EntriesPushed != 4 || st.QueueDepth != 0 || st.LastSuccess.IsZero() || st.Commits != 1 || st.RemoteCalls != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func testCoalescing(t *testing.T, e *env) {
	ctx := e.ctx
	k := key("c")
	for i := 1; i <= 5; i++ {
		put(t, e.a, k, fmt.Sprintf("v%d", i))
	}
	put(t, e.a, key("other"), "o")
	rep := syncOnce(t, ctx, e.sa)
	if rep.Pushed != 6 || rep.Commits != 1 {
		t.Fatalf("report %+v", rep)
	}
	bs := e.remote.recorded()
	if len(bs) != 1 || len(bs[0].Changes) != 2 {
		t.Fatalf("want one commit of two changes, got %d batches", len(bs))
	}
	if c := bs[0].Changes[0]; c.Key != k || c.BaseVersion != 0 || c.Record.Version != 5 || len(c.Events) != 5 {
		t.Fatalf("coalesced change: base %d version %d, %d events", c.BaseVersion, c.Record.Version, len(c.Events))
	}
	rem := checkSynced(t, ctx, e.a, e.remote, k)
	if string(rem.Value) != "v5" || rem.Version != 5 {
		t.Fatalf("remote %+v", rem)
	}
	evs := checkEvents(t, ctx, e.remote, k, 5)
	for i, ev := range evs {
		if want := fmt.Sprintf("v%d", i+1); string(ev.Value) != want {
			t.Fatalf("event %d value %q, want %q", i, ev.Value, want)
		}
	}
}

func testAtomicBatch(t *testing.T, e *env) {
	ctx := e.ctx
	put(t, e.a, key("p"), "p1") // before the batch: may coalesce only up to it
	if _, err := e.a.Append(
		syncer.MemWrite{Key: key("p"), Value: []byte("p2")},
		syncer.MemWrite{Key: key("q"), Value: []byte("q1")},
		syncer.MemWrite{Key: key("r"), Value: []byte("r1")},
	); err != nil {
		t.Fatal(err)
	}
	put(t, e.a, key("p"), "p3") // after the batch
	put(t, e.a, key("s"), "s1")
	rep := syncOnce(t, ctx, e.sa)
	if rep.Pushed != 6 || rep.Blocked != 0 {
		t.Fatalf("report %+v", rep)
	}
	var atomic []syncer.Batch
	for _, b := range e.remote.recorded() {
		if b.Atomic {
			atomic = append(atomic, b)
		}
		for _, c := range b.Changes {
			if c.Key == key("p") && len(c.Events) > 1 {
				t.Fatalf("p coalesced across the atomic batch: %d events", len(c.Events))
			}
		}
	}
	if len(atomic) != 1 || len(atomic[0].Changes) != 3 {
		t.Fatalf("want the batch in one atomic commit of 3 changes, got %d atomic commits", len(atomic))
	}
	for _, c := range atomic[0].Changes {
		if c.Key == key("p") && (c.BaseVersion != 1 || c.Record.Version != 2) {
			t.Fatalf("p in the batch: base %d version %d", c.BaseVersion, c.Record.Version)
		}
	}
	p := checkSynced(t, ctx, e.a, e.remote, key("p"))
	if string(p.Value) != "p3" || p.Version != 3 {
		t.Fatalf("p: %+v", p)
	}
	checkEvents(t, ctx, e.remote, key("p"), 3)
	for _, k := range []string{"q", "r", "s"} {
		checkSynced(t, ctx, e.a, e.remote, key(k))
	}
}

// testAtomicBatchLoses: another node wrote one key of an atomic batch later;
// the whole batch gives way, and nothing of it reaches the remote.
func testAtomicBatchLoses(t *testing.T, e *env) {
	ctx := e.ctx
	t0 := time.Now()
	e.a.SetClock(func() time.Time { return t0 })
	e.b.SetClock(func() time.Time { return t0.Add(time.Second) })
	if _, err := e.a.Append(
		syncer.MemWrite{Key: key("m"), Value: []byte("a")},
		syncer.MemWrite{Key: key("n"), Value: []byte("a")},
	); err != nil {
		t.Fatal(err)
	}
	put(t, e.b, key("n"), "b")
	syncOnce(t, ctx, e.sb)
	rep := syncOnce(t, ctx, e.sa)
	if rep.Superseded != 2 || rep.Conflicts != 1 || rep.Pushed != 0 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := e.remote.Get(ctx, key("m")); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("m reached the remote although its batch lost: %v", err)
	}
	if _, ok := e.a.Record(key("m")); ok {
		t.Fatal("m still exists locally after its batch lost")
	}
	n := checkSynced(t, ctx, e.a, e.remote, key("n"))
	if string(n.Value) != "b" || n.Origin != "node-b" {
		t.Fatalf("n: %+v", n)
	}
	checkEvents(t, ctx, e.remote, key("n"), 1)
}

func testOutage(t *testing.T, e *env) {
	ctx := e.ctx
	for i := range 10 {
		put(t, e.a, key(fmt.Sprintf("k%d", i)), "v")
	}
	e.remote.set(func(f *faulty) { f.offline = true })
	rep, err := e.sa.SyncOnce(ctx)
	if !syncer.IsTransient(err) {
		t.Fatalf("offline pass: %v, want a transient error", err)
	}
	if rep.Blocked != 10 || rep.Done() != 0 {
		t.Fatalf("offline report %+v", rep)
	}
	if st := e.sa.Stats(); st.LastError == "" || st.QueueDepth != 10 || st.OldestPending <= 0 {
		t.Fatalf("stats during the outage %+v", st)
	}
	e.remote.set(func(f *faulty) { f.offline = false })
	rep = syncOnce(t, ctx, e.sa)
	if rep.Pushed != 10 {
		t.Fatalf("recovered report %+v", rep)
	}
	for i := range 10 {
		checkSynced(t, ctx, e.a, e.remote, key(fmt.Sprintf("k%d", i)))
	}
	// Run backs off through an outage and recovers by itself.
	e.remote.set(func(f *faulty) { f.failNext = 5 })
	put(t, e.a, key("k0"), "v2")
	runUntilDrained(t, ctx, e.sa, e.a)
	if rem := checkSynced(t, ctx, e.a, e.remote, key("k0")); string(rem.Value) != "v2" {
		t.Fatalf("k0 after recovery: %q", rem.Value)
	}
}

func testPermanent(t *testing.T, e *env) {
	ctx := e.ctx
	bad := key("bad")
	e.remote.set(func(f *faulty) { f.reject[bad] = true })
	put(t, e.a, key("before"), "v")
	put(t, e.a, bad, "b1")
	put(t, e.a, bad, "b2")
	for i := range 5 {
		put(t, e.a, key(fmt.Sprintf("ok%d", i)), "v")
	}
	rep, err := e.sa.SyncOnce(ctx)
	if err != nil {
		t.Fatalf("SyncOnce: %v (a permanent rejection is parked, not an error)", err)
	}
	if rep.Parked != 2 || rep.Pushed != 6 || rep.Blocked != 0 {
		t.Fatalf("report %+v", rep)
	}
	parked := e.a.ParkedEntries()
	if len(parked) != 2 || parked[0].Key != bad || parked[0].Reason == "" || parked[0].OpID == "" {
		t.Fatalf("parked %+v", parked)
	}
	if e.a.Depth() != 0 {
		t.Fatalf("journal depth %d", e.a.Depth())
	}
	for i := range 5 {
		checkSynced(t, ctx, e.a, e.remote, key(fmt.Sprintf("ok%d", i)))
	}
	if _, err := e.remote.Get(ctx, bad); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("bad: %v", err)
	}
	if st := e.sa.Stats(); st.Parked != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func testLostReply(t *testing.T, e *env) {
	ctx := e.ctx
	// Two keys, one commit, its reply lost: the pass retries (in halves)
	// and finds both applied.
	put(t, e.a, key("l1"), "v1")
	put(t, e.a, key("l2"), "v1")
	e.remote.set(func(f *faulty) { f.loseReplies = 1 })
	rep := syncOnce(t, ctx, e.sa)
	if rep.AlreadyApplied != 2 || rep.Pushed != 0 {
		t.Fatalf("report %+v", rep)
	}
	checkEvents(t, ctx, e.remote, key("l1"), 1)
	checkEvents(t, ctx, e.remote, key("l2"), 1)
	checkSynced(t, ctx, e.a, e.remote, key("l2"))

	// One key, its reply lost: left pending for the next pass.
	put(t, e.a, key("l1"), "v2")
	e.remote.set(func(f *faulty) { f.loseReplies = 1 })
	if _, err := e.sa.SyncOnce(ctx); !syncer.IsTransient(err) {
		t.Fatalf("lost reply: %v", err)
	}
	if e.a.Depth() != 1 {
		t.Fatalf("entry acked although the reply was lost: depth %d", e.a.Depth())
	}
	// Meanwhile l1 changes again: the retry coalesces the applied op with a
	// new one; the first is recognised, the second applied on top.
	put(t, e.a, key("l1"), "v3")
	rep = syncOnce(t, ctx, e.sa)
	if rep.AlreadyApplied != 1 || rep.Pushed != 1 || rep.Conflicts != 0 {
		t.Fatalf("retry report %+v", rep)
	}
	evs := checkEvents(t, ctx, e.remote, key("l1"), 3)
	if string(evs[2].Value) != "v3" {
		t.Fatalf("last event %q", evs[2].Value)
	}
	if rem := checkSynced(t, ctx, e.a, e.remote, key("l1")); string(rem.Value) != "v3" || rem.Version != 3 {
		t.Fatalf("l1: %+v", rem)
	}
}

// testCrashBeforeAck: the remote commit succeeds but the local ack does not
// happen (a crash); a new Syncer on the same journal pushes nothing twice.
func testCrashBeforeAck(t *testing.T, e *env) {
	ctx := e.ctx
	put(t, e.a, key("c1"), "v1")
	put(t, e.a, key("c1"), "v2")
	e.a.FailAcks(1)
	if _, err := e.sa.SyncOnce(ctx); !errors.Is(err, syncer.ErrMemJournal) {
		t.Fatalf("failed ack: %v", err)
	}
	restarted := syncer.New(e.a, e.remote, syncer.Options{})
	rep := syncOnce(t, ctx, restarted)
	if rep.AlreadyApplied != 2 || rep.Pushed != 0 {
		t.Fatalf("after restart %+v", rep)
	}
	checkEvents(t, ctx, e.remote, key("c1"), 2)
	checkSynced(t, ctx, e.a, e.remote, key("c1"))
}

func testConflictLocalWins(t *testing.T, e *env) {
	ctx := e.ctx
	k := key("w")
	t0 := time.Now()
	e.a.SetClock(func() time.Time { return t0 })
	e.b.SetClock(func() time.Time { return t0.Add(time.Second) }) // b writes later
	put(t, e.a, k, "a")
	put(t, e.b, k, "b1")
	put(t, e.b, k, "b2")
	syncOnce(t, ctx, e.sa)
	rep := syncOnce(t, ctx, e.sb)
	if rep.Conflicts != 1 || rep.Pushed != 2 || rep.Superseded != 0 {
		t.Fatalf("report %+v", rep)
	}
	rem := checkSynced(t, ctx, e.b, e.remote, k)
	if string(rem.Value) != "b2" || rem.Version != 3 || rem.Clock.Vector["node-a"] != 1 || rem.Clock.Vector["node-b"] != 2 {
		t.Fatalf("remote after b won: %+v", rem)
	}
	evs := checkEvents(t, ctx, e.remote, k, 3)
	if evs[0].Origin != "node-a" || evs[2].Origin != "node-b" {
		t.Fatalf("events %+v", evs)
	}
	// b's next write is made on the adopted version: no new conflict.
	put(t, e.b, k, "b3")
	if rep := syncOnce(t, ctx, e.sb); rep.Conflicts != 0 || rep.Pushed != 1 {
		t.Fatalf("next write %+v", rep)
	}
	checkEvents(t, ctx, e.remote, k, 4)
	if st := e.sb.Stats(); st.Conflicts != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func testConflictLocalLoses(t *testing.T, e *env) {
	ctx := e.ctx
	k := key("l")
	t0 := time.Now()
	e.a.SetClock(func() time.Time { return t0.Add(time.Second) }) // a writes later
	e.b.SetClock(func() time.Time { return t0 })
	put(t, e.a, k, "a")
	put(t, e.b, k, "b")
	syncOnce(t, ctx, e.sa)
	rep := syncOnce(t, ctx, e.sb)
	if rep.Conflicts != 1 || rep.Superseded != 1 || rep.Pushed != 0 {
		t.Fatalf("report %+v", rep)
	}
	rem := checkSynced(t, ctx, e.b, e.remote, k) // b adopted a's record
	if string(rem.Value) != "a" || rem.Origin != "node-a" || rem.Version != 1 {
		t.Fatalf("remote %+v", rem)
	}
	checkEvents(t, ctx, e.remote, k, 1)
	if st := e.sb.Stats(); st.Superseded != 1 || st.Conflicts != 1 {
		t.Fatalf("stats %+v", st)
	}
	// b writes on the adopted record: a clean push.
	e.b.SetClock(time.Now)
	put(t, e.b, k, "b2")
	if rep := syncOnce(t, ctx, e.sb); rep.Conflicts != 0 || rep.Pushed != 1 {
		t.Fatalf("next write %+v", rep)
	}
	checkEvents(t, ctx, e.remote, k, 2)
}

// runUntilDrained runs s until j is empty.
func runUntilDrained(t *testing.T, ctx context.Context, s *syncer.Syncer, j *syncer.MemJournal) {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	waitFor(t, 60*time.Second, func() bool { return j.Depth() == 0 }, "journal drained by Run")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out waiting for: %s", what)
	}
}

// poll reports whether cond became true within timeout, checking it every
// 2ms. It may be called from any goroutine.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// testLoad: 1000 writes over 50 keys, appended by several goroutines while
// Run pushes, with lost replies and failures along the way.
func testLoad(t *testing.T, e *env) {
	ctx := e.ctx
	const writers, perWriter, keys = 4, 250, 50
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.sa.Run(rctx) }()

	var wg sync.WaitGroup
	counts := make([]map[syncer.Key]int, writers)
	for w := range writers {
		counts[w] = make(map[syncer.Key]int)
		wg.Go(func() {
			for i := range perWriter {
				k := key(fmt.Sprintf("load-%d", (w*perWriter+i)%keys))
				if _, err := e.a.Append(syncer.MemWrite{Key: k, Value: []byte(fmt.Sprintf("w%d-%d", w, i))}); err != nil {
					t.Error(err)
					return
				}
				counts[w][k]++
				if i%50 == 49 {
					// Let a pass run between bursts, so appends and pushes interleave.
					seen := e.sa.Stats().Passes
					if !poll(30*time.Second, func() bool { return e.sa.Stats().Passes > seen }) {
						t.Error("no pass ran within 30s")
						return
					}
				}
				if i == perWriter/2 && w == 0 {
					e.remote.set(func(f *faulty) { f.loseReplies, f.failNext = 1, 1 })
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, 90*time.Second, func() bool { return e.a.Depth() == 0 }, "1000 entries pushed")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	total := make(map[syncer.Key]int)
	for _, c := range counts {
		for k, n := range c {
			total[k] += n
		}
	}
	if len(total) != keys {
		t.Fatalf("%d keys written", len(total))
	}
	for k, n := range total {
		rem := checkSynced(t, ctx, e.a, e.remote, k)
		if rem.Version != uint64(n) {
			t.Fatalf("%s: remote version %d after %d writes", k, rem.Version, n)
		}
		checkEvents(t, ctx, e.remote, k, n)
	}
	st := e.sa.Stats()
	if st.EntriesPushed != writers*perWriter || st.Conflicts != 0 || st.Parked != 0 || st.QueueDepth != 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d entries in %d commits (%d remote calls), %d already applied", st.EntriesPushed, st.Commits,
		st.RemoteCalls, st.AlreadyApplied)
}

// The tests below need no shared backend: memremote only.

func TestBatchesWithinLimits(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	lim := syncer.Limits{MaxWrites: 10, MaxRecordBytes: 1 << 20, MaxBatchBytes: 9 << 20}
	m.SetLimits(lim)
	f := &faulty{Remote: m}
	j := syncer.NewMemJournal("n")
	for i := range 30 {
		put(t, j, key(fmt.Sprintf("k%d", i%6)), fmt.Sprintf("v%d", i)) // 5 writes per key
	}
	for i := range 12 {
		put(t, j, key("hot"), fmt.Sprintf("h%d", i)) // one key past MaxWrites
	}
	s := syncer.New(j, f, syncer.Options{})
	rep := syncOnce(t, ctx, s)
	if rep.Pushed != 42 || rep.Blocked != 0 {
		t.Fatalf("report %+v", rep)
	}
	bs := f.recorded()
	for _, b := range bs {
		if err := syncer.CheckBatch(b, lim); err != nil {
			t.Fatalf("batch over limits sent: %v", err)
		}
	}
	if len(bs) < 5 {
		t.Fatalf("%d commits: not split", len(bs))
	}
	for i := range 6 {
		checkSynced(t, ctx, j, m, key(fmt.Sprintf("k%d", i)))
		checkEvents(t, ctx, m, key(fmt.Sprintf("k%d", i)), 5)
	}
	checkSynced(t, ctx, j, m, key("hot"))
	checkEvents(t, ctx, m, key("hot"), 12)
}

// TestLostReplyMemremote uses memremote's own "applied, reply lost" fault.
func TestLostReplyMemremote(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	j := syncer.NewMemJournal("n")
	for i := range 3 {
		put(t, j, key("k"), fmt.Sprintf("v%d", i))
	}
	s := syncer.New(j, m, syncer.Options{})
	m.LoseNextReplies(1)
	if _, err := s.SyncOnce(ctx); !syncer.IsTransient(err) {
		t.Fatalf("lost reply: %v", err)
	}
	rep := syncOnce(t, ctx, s)
	if rep.AlreadyApplied != 3 || rep.Pushed != 0 {
		t.Fatalf("retry %+v", rep)
	}
	checkEvents(t, ctx, m, key("k"), 3)
	checkSynced(t, ctx, j, m, key("k"))
	if n := m.Calls("commit"); n != 2 {
		t.Fatalf("%d commits", n)
	}
}

// TestTransientKeyIsIsolated: a key the remote keeps failing transiently
// blocks only itself once it has been seen failing: it is held back, for
// longer after each failure, while the keys after it go through, and Run
// does not back off for it.
func TestTransientKeyIsIsolated(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	sick := key("sick")
	var sickCommits atomic.Int64
	m.SetHook(func(op string, k syncer.Key) error {
		if op == "commit" && k == sick {
			sickCommits.Add(1)
			return syncer.Errorf(op, k, syncer.ErrUnavailable, "contention (injected)")
		}
		return nil
	})
	j := syncer.NewMemJournal("n")
	put(t, j, sick, "s") // first in the journal: every batch holding it fails
	for i := range 10 {
		put(t, j, key(fmt.Sprintf("k%d", i)), "v")
	}
	put(t, j, sick, "s2")
	s := syncer.New(j, m, syncer.Options{Backoff: syncer.Backoff{Min: time.Hour, Max: time.Hour}})
	if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Pushed != 10 || rep.Blocked != 2 {
		t.Fatalf("first pass: %+v, %v", rep, err)
	}
	tried := sickCommits.Load()
	for pass := range 3 {
		// A healthy key is put after sick in every pass: it goes through,
		// and sick, held back, is not tried again.
		put(t, j, key("late"), fmt.Sprintf("l%d", pass))
		rep, err := s.SyncOnce(ctx)
		if err != nil || rep.Held != 2 || rep.Pushed != 1 || rep.Entries != 1 {
			t.Fatalf("pass %d: %+v, %v", pass, rep, err)
		}
	}
	if n := sickCommits.Load(); n != tried {
		t.Fatalf("sick was committed %d more times while held back", n-tried)
	}
	if d := j.Depth(); d != 2 {
		t.Fatalf("depth %d, want sick's two entries", d)
	}
	for i := range 10 {
		checkSynced(t, ctx, j, m, key(fmt.Sprintf("k%d", i)))
	}
	if rem := checkSynced(t, ctx, j, m, key("late")); string(rem.Value) != "l2" {
		t.Fatalf("late: %q", rem.Value)
	}
	if _, err := m.Get(ctx, sick); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("sick: %v", err)
	}
	if st := s.Stats(); st.QueueDepth != 2 || st.OldestPending <= 0 {
		t.Fatalf("stats %+v: the held entries are pending", st)
	}
	// Run does not back off (for an hour) on sick's account.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	put(t, j, key("during-run"), "v")
	waitFor(t, 10*time.Second, func() bool { return j.Synced(key("during-run")) == 1 }, "a write pushed by Run")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestHeldKeysDoNotStarveThePage: a held key with more pending entries than
// a page does not hide the keys after it, and an atomic batch holding a
// held key waits whole, with the later entries of its other keys; the key
// is retried when its hold ends, and Run drains everything once the remote
// takes it.
func TestHeldKeysDoNotStarveThePage(t *testing.T) {
	ctx := context.Background()
	sick, partner := key("sick"), key("partner")
	m := &faulty{Remote: memremote.New(), contended: map[syncer.Key]bool{sick: true}}
	j := syncer.NewMemJournal("n")
	put(t, j, key("first"), "v")
	for i := range 25 {
		put(t, j, sick, fmt.Sprintf("s%d", i))
	}
	opts := syncer.Options{PageSize: 10, Backoff: syncer.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond}}
	s := syncer.New(j, m, opts)
	// sick fails while first goes through: sick is held back.
	if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Pushed != 1 {
		t.Fatalf("first pass: %+v, %v", rep, err)
	}
	if _, err := j.Append(syncer.MemWrite{Key: partner, Value: []byte("together")}, syncer.MemWrite{Key: sick, Value: []byte("together")}); err != nil {
		t.Fatal(err)
	}
	put(t, j, partner, "after the batch")
	for i := range 15 {
		put(t, j, key(fmt.Sprintf("k%02d", i)), "v")
	}
	// sick's 25 entries, the batch and partner's next entry are skipped;
	// the 15 keys after them go through, a page and then the rest.
	rep := syncOnce(t, ctx, s)
	if rep.Held != 28 || rep.Pushed != 10 || !rep.More {
		t.Fatalf("second pass: %+v", rep)
	}
	if rep = syncOnce(t, ctx, s); rep.Held != 28 || rep.Pushed != 5 || rep.More {
		t.Fatalf("third pass: %+v", rep)
	}
	if _, err := m.Get(ctx, partner); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("partner went ahead of its batch with the held key: %v", err)
	}
	m.set(func(f *faulty) { clear(f.contended) })
	runUntilDrained(t, ctx, s, j)
	if rem := checkSynced(t, ctx, j, m, partner); string(rem.Value) != "after the batch" {
		t.Fatalf("partner: %q", rem.Value)
	}
	if rem := checkSynced(t, ctx, j, m, sick); string(rem.Value) != "together" {
		t.Fatalf("sick: %q", rem.Value)
	}
}

// TestHeldKeyHoldsTheTransactionsCheckingIt: a transaction that checks a
// held key's pending version waits with it: pushed before that version,
// its check would fail and the transaction, already answered, would give
// way.
func TestHeldKeyHoldsTheTransactionsCheckingIt(t *testing.T) {
	ctx := context.Background()
	c, d := key("checked"), key("written")
	m := &faulty{Remote: memremote.New(), contended: map[syncer.Key]bool{c: true}}
	j := syncer.NewMemJournal("n")
	put(t, j, c, "c1")
	put(t, j, key("other"), "v")
	s := syncer.New(j, m, syncer.Options{Backoff: syncer.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond}})
	if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Pushed != 1 {
		t.Fatalf("first pass: %+v, %v; want checked held back", rep, err)
	}
	if _, err := j.AppendTxn([]syncer.Check{{Key: c, Version: 1}}, syncer.MemWrite{Key: d, Value: []byte("d1"), Strict: true}); err != nil {
		t.Fatal(err)
	}
	if rep := syncOnce(t, ctx, s); rep.Held != 2 || rep.Entries != 0 {
		t.Fatalf("second pass: %+v; want checked's entry and the transaction held", rep)
	}
	m.set(func(f *faulty) { clear(f.contended) })
	runUntilDrained(t, ctx, s, j)
	if rem := checkSynced(t, ctx, j, m, d); string(rem.Value) != "d1" {
		t.Fatalf("written: %q, want the transaction's write", rem.Value)
	}
	checkSynced(t, ctx, j, m, c)
}

// TestFlushTriesHeldKeys: the final flush at shutdown pushes keys held back
// too, rather than leaving them for the next start.
func TestFlushTriesHeldKeys(t *testing.T) {
	ctx := context.Background()
	sick := key("sick")
	m := &faulty{Remote: memremote.New(), contended: map[syncer.Key]bool{sick: true}}
	j := syncer.NewMemJournal("n")
	put(t, j, sick, "s")
	put(t, j, key("other"), "v")
	s := syncer.New(j, m, syncer.Options{Backoff: syncer.Backoff{Min: time.Hour, Max: time.Hour}})
	if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Pushed != 1 {
		t.Fatalf("first pass: %+v, %v; want sick held back", rep, err)
	}
	if err := s.Flush(ctx); !syncer.IsTransient(err) {
		t.Fatalf("flush with sick failing: %v, want its transient error", err)
	}
	m.set(func(f *faulty) { clear(f.contended) })
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if rem := checkSynced(t, ctx, j, m, sick); string(rem.Value) != "s" || j.Depth() != 0 {
		t.Fatalf("sick: %q, depth %d", rem.Value, j.Depth())
	}
}

// TestStuckKeyAtTheHead: a key the remote keeps failing with more than a
// page of entries at the journal's head takes half of a page, so the keys
// after it go through and it is held back; once held, it stays held while
// it fails, even in passes where nothing else is pending (it is not taken
// for an outage then, which would hold back every key written meanwhile).
func TestStuckKeyAtTheHead(t *testing.T) {
	ctx := context.Background()
	sick := key("sick")
	m := &faulty{Remote: memremote.New(), contended: map[syncer.Key]bool{sick: true}}
	j := syncer.NewMemJournal("n")
	for i := range 30 {
		put(t, j, sick, fmt.Sprintf("s%d", i))
	}
	for i := range 5 {
		put(t, j, key(fmt.Sprintf("k%d", i)), "v")
	}
	s := syncer.New(j, m, syncer.Options{PageSize: 10, Backoff: syncer.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond}})
	if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Pushed != 5 || rep.Entries != 10 {
		t.Fatalf("first pass: %+v, %v; want sick's first 5 entries and the 5 keys after them read, those 5 pushed", rep, err)
	}
	tries := func() int {
		n := 0
		for _, b := range m.recorded() {
			if slices.ContainsFunc(b.Changes, func(c syncer.Change) bool { return c.Key == sick }) {
				n++
			}
		}
		return n
	}
	for round := range 3 {
		time.Sleep(60 * time.Millisecond) // the hold ends
		before := tries()
		if rep, err := s.SyncOnce(ctx); !syncer.IsTransient(err) || rep.Done() != 0 || tries() == before {
			t.Fatalf("round %d, sick retried: %+v, %v", round, rep, err)
		}
		before = tries()
		if rep, err := s.SyncOnce(ctx); err != nil || rep.Held != 30 || tries() != before {
			t.Fatalf("round %d, right after: %+v, %v; want sick held again", round, rep, err)
		}
	}
}

// TestPermanentWithoutKey: a batch rejected without naming a key is split
// so that only the culprit is parked.
func TestPermanentWithoutKey(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	bad := key("bad")
	f := &faultyNoKey{Remote: m, bad: bad}
	j := syncer.NewMemJournal("n")
	for i := range 4 {
		put(t, j, key(fmt.Sprintf("k%d", i)), "v")
	}
	put(t, j, bad, "x")
	s := syncer.New(j, f, syncer.Options{})
	rep := syncOnce(t, ctx, s)
	if rep.Parked != 1 || rep.Pushed != 4 {
		t.Fatalf("report %+v", rep)
	}
	if p := j.ParkedEntries(); len(p) != 1 || p[0].Key != bad {
		t.Fatalf("parked %+v", p)
	}
}

// faultyNoKey rejects any batch holding bad with a permanent error that
// names no key.
type faultyNoKey struct {
	syncer.Remote
	bad syncer.Key
}

func (f *faultyNoKey) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	for _, c := range b.Changes {
		if c.Key == f.bad {
			return nil, syncer.Errorf("commit", syncer.Key{}, syncer.ErrPermanent, "rejected (injected)")
		}
	}
	return f.Remote.Commit(ctx, b)
}

// TestRunWakesOnNotify: with a long interval, a new entry is pushed at once.
func TestRunWakesOnNotify(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := memremote.New()
	j := syncer.NewMemJournal("n")
	s := syncer.New(j, m, syncer.Options{Interval: time.Hour})
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, 10*time.Second, func() bool { return s.Stats().Passes >= 1 }, "first pass")
	put(t, j, key("k"), "v")
	waitFor(t, 10*time.Second, func() bool { return j.Depth() == 0 }, "entry pushed after Notify")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop when its ctx ended")
	}
}

func TestFlush(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	j := syncer.NewMemJournal("n")
	for i := range 25 {
		put(t, j, key(fmt.Sprintf("k%d", i)), "v")
	}
	s := syncer.New(j, m, syncer.Options{PageSize: 10})
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if j.Depth() != 0 {
		t.Fatalf("depth %d after Flush", j.Depth())
	}
	m.SetOffline(true)
	put(t, j, key("k0"), "v2")
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.Flush(fctx); !syncer.IsTransient(err) {
		t.Fatalf("Flush offline: %v", err)
	}
}

// TestPageCutsNoAtomicBatch: a page boundary inside an atomic batch does not
// split it.
func TestPageCutsNoAtomicBatch(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	f := &faulty{Remote: m}
	j := syncer.NewMemJournal("n")
	put(t, j, key("a"), "v")
	ws := make([]syncer.MemWrite, 5)
	for i := range ws {
		ws[i] = syncer.MemWrite{Key: key(fmt.Sprintf("b%d", i)), Value: []byte("v")}
	}
	if _, err := j.Append(ws...); err != nil {
		t.Fatal(err)
	}
	put(t, j, key("c"), "v")
	s := syncer.New(j, f, syncer.Options{PageSize: 3})
	rep := syncOnce(t, ctx, s)
	if rep.Entries != 6 || rep.Pushed != 6 || !rep.More {
		t.Fatalf("report %+v", rep)
	}
	for _, b := range f.recorded() {
		if b.Atomic && len(b.Changes) != 5 {
			t.Fatalf("atomic batch split: %d changes", len(b.Changes))
		}
	}
	syncOnce(t, ctx, s)
	if j.Depth() != 0 {
		t.Fatalf("depth %d", j.Depth())
	}
}

func TestBackoff(t *testing.T) {
	b := syncer.Backoff{Min: 10 * time.Millisecond, Max: time.Second}
	tests := []struct {
		n      int
		lo, hi time.Duration
	}{
		{0, 0, 0},
		{1, 5 * time.Millisecond, 10 * time.Millisecond},
		{2, 10 * time.Millisecond, 20 * time.Millisecond},
		{4, 40 * time.Millisecond, 80 * time.Millisecond},
		{20, 500 * time.Millisecond, time.Second},
		{1000, 500 * time.Millisecond, time.Second},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			seen := make(map[time.Duration]bool)
			for range 200 {
				d := b.Delay(tc.n)
				if d < tc.lo || d > tc.hi {
					t.Fatalf("Delay(%d) = %v, want in [%v, %v]", tc.n, d, tc.lo, tc.hi)
				}
				seen[d] = true
			}
			if tc.n > 0 && len(seen) < 10 {
				t.Fatalf("Delay(%d): only %d distinct values: no jitter", tc.n, len(seen))
			}
		})
	}
}

// testConflictStrictLoses: a strict change (a compare-and-set made against
// the remote) that meets a concurrent change loses even when its clock is
// later, and is not coalesced with the plain writes around it.
func testConflictStrictLoses(t *testing.T, e *env) {
	ctx := e.ctx
	k := key("strict")
	t0 := time.Now()
	e.a.SetClock(func() time.Time { return t0 })
	e.b.SetClock(func() time.Time { return t0.Add(time.Second) }) // b writes later: it would win
	put(t, e.a, k, "a")
	if _, err := e.b.Append(syncer.MemWrite{Key: k, Value: []byte("b-strict"), Strict: true}); err != nil {
		t.Fatal(err)
	}
	syncOnce(t, ctx, e.sa)
	rep := syncOnce(t, ctx, e.sb)
	if rep.Conflicts != 1 || rep.Superseded != 1 || rep.Pushed != 0 {
		t.Fatalf("report %+v", rep)
	}
	rem := checkSynced(t, ctx, e.b, e.remote, k)
	if string(rem.Value) != "a" || rem.Origin != "node-a" {
		t.Fatalf("remote %+v: the strict change overwrote a change it had not seen", rem)
	}
	// Without a conflict a strict change goes through, alone in its commit.
	put(t, e.b, k, "plain-1")
	if _, err := e.b.Append(syncer.MemWrite{Key: k, Value: []byte("strict-2"), Strict: true}); err != nil {
		t.Fatal(err)
	}
	put(t, e.b, k, "plain-3")
	rep = syncOnce(t, ctx, e.sb)
	if rep.Pushed != 3 || rep.Conflicts != 0 || rep.Commits < 3 {
		t.Fatalf("report %+v: want 3 pushed in 3 commits", rep)
	}
	checkEvents(t, ctx, e.remote, k, 4)
}

// resolverNode is a node whose push loop settles true conflicts with res
// (nil: last write wins), logging to log (nil: nowhere). wrap, when set,
// stands between the push loop and the node's journal.
func resolverNode(name string, r syncer.Remote, res conflict.Resolver, log *slog.Logger,
	wrap func(*syncer.MemJournal) syncer.Journal) *node {
	b := newBreakable(r)
	j := syncer.NewMemJournal(name)
	var pj syncer.Journal = j
	if wrap != nil {
		pj = wrap(j)
	}
	opts := fastPush
	opts.Resolvers = res
	opts.Logger = log
	popts := syncer.PullOptions{Governors: []string{"g"}, Interval: 20 * time.Millisecond,
		Backoff: syncer.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond}}
	return &node{j: j, s: syncer.New(pj, b, opts), p: syncer.NewPuller(j, b, popts), r: b}
}

// resolverSet builds the resolvers of cfg (conflict.ParseConfig's form).
func resolverSet(t *testing.T, cfg string) *conflict.Set {
	t.Helper()
	c, err := conflict.ParseConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	set, err := conflict.NewRegistry().Build(c)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// converge pulls on every node and checks that each holds the remote record
// of k with nothing left to push; it returns the remote record.
func converge(t *testing.T, ctx context.Context, r syncer.Remote, k syncer.Key, nodes ...*node) syncer.Record {
	t.Helper()
	for _, n := range nodes {
		pullOnce(t, ctx, n)
		checkMatchesRemote(t, ctx, n, r, k)
		if d := n.j.Depth(); d != 0 {
			t.Fatalf("journal depth %d after both pushed", d)
		}
	}
	return remoteRecord(t, ctx, r, k)
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestPushResolvers runs the conflict resolver scenarios against every
// backend. Each scenario pushes both nodes in both orders and checks that
// they converge on the same value either way.
func TestPushResolvers(t *testing.T) {
	scenarios := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote)
	}{
		{"VersionBeatsLaterClock", testResolverVersion},
		{"CausalDominatingSideWins", testResolverCausal},
		{"MergeDisjointFields", testResolverMerge},
		{"StrictLosesWhateverTheResolver", testResolverStrict},
		{"FailingResolverFallsBackToLWW", testResolverFailing},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					sc.fn(t, ctx, be.open)
				})
			}
		})
	}
}

// testResolverVersion: a made three changes, b one change later (a later
// hybrid logical clock). With "version" a's v3 wins whichever node pushes
// first; with last write wins (no resolvers, or "lww") b's change does.
func testResolverVersion(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote) {
	cases := []struct {
		cfg    string // "": no resolvers; "nil-set": a nil *conflict.Set
		aFirst bool
		want   string
	}{
		{"*=version", false, "a3"},
		{"*=version", true, "a3"},
		{"g=version,other=merge", false, "a3"},
		{"", false, "b1"},
		{"", true, "b1"},
		{"nil-set", false, "b1"},
		{"*=lww", false, "b1"},
		{"*=lww", true, "b1"},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s/aFirst=%v", tc.cfg, tc.aFirst), func(t *testing.T) {
			r := open(t)
			var res conflict.Resolver
			switch tc.cfg {
			case "":
			case "nil-set":
				res = (*conflict.Set)(nil)
			default:
				res = resolverSet(t, tc.cfg)
			}
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			a := resolverNode("node-a", r, res, log, nil)
			b := resolverNode("node-b", r, res, log, nil)
			k := key(fmt.Sprintf("version-%d", i))
			t0 := time.Now()
			a.j.SetClock(func() time.Time { return t0 })
			b.j.SetClock(func() time.Time { return t0.Add(time.Second) }) // b writes later
			for _, v := range []string{"a1", "a2", "a3"} {
				put(t, a.j, k, v)
			}
			put(t, b.j, k, "b1")
			first, second := b, a
			if tc.aFirst {
				first, second = a, b
			}
			syncOnce(t, ctx, first.s)
			rep := syncOnce(t, ctx, second.s)
			if rep.Conflicts != 1 || rep.Done() != rep.Entries {
				t.Fatalf("second push %+v", rep)
			}
			secondWins := (second == a) == (tc.want == "a3")
			if secondWins && rep.Pushed != rep.Entries || !secondWins && rep.Superseded != rep.Entries {
				t.Fatalf("second push %+v, want it to win: %v", rep, secondWins)
			}
			rem := converge(t, ctx, r, k, a, b)
			if string(rem.Value) != tc.want {
				t.Fatalf("remote value %q, want %q", rem.Value, tc.want)
			}
			checkEvents(t, ctx, r, k, int(rem.Version))
			out := logs.String()
			wantResolver := "resolver=lww"
			if strings.Contains(tc.cfg, "version") {
				wantResolver = "resolver=version"
			}
			if !strings.Contains(out, "push conflict resolved") || !strings.Contains(out, wantResolver) ||
				!strings.Contains(out, "reason=") {
				t.Fatalf("log lacks the decision (%s):\n%s", wantResolver, out)
			}
			for _, v := range []string{"a1", "a2", "a3", "b1"} {
				if strings.Contains(out, v) {
					t.Fatalf("log shows the value %q:\n%s", v, out)
				}
			}
		})
	}
}

// observed is a journal whose entries after a key's first version were made
// after observing one change of another node (its vector entry is 1), as
// a node that learnt of a remote change while writing would make them.
type observed struct {
	*syncer.MemJournal
	node string
}

func (o observed) Pending(ctx context.Context, after uint64, limit int) ([]syncer.Entry, error) {
	es, err := o.MemJournal.Pending(ctx, after, limit)
	for i := range es {
		if es[i].Record.Version >= 2 {
			es[i].Record.Clock = es[i].Record.Clock.Clone()
			es[i].Record.Clock.Vector[o.node] = max(es[i].Record.Clock.Vector[o.node], 1)
		}
	}
	return es, err
}

// testResolverCausal: a's newest change has seen b's (its vector
// dominates), although b's has the later clock. With "causal" a's value
// wins whichever node pushes first; last write wins would keep b's when b
// pushes first. Pushed second, b's change is counted by a's record but held
// nowhere in the shared store (a's vector claims it without the shared
// store ever having had it, as only a store writing under b's origin could
// make it): b parks it rather than drop it (syncer/applied.go).
func testResolverCausal(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote) {
	for i, aFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("aFirst=%v", aFirst), func(t *testing.T) {
			r := open(t)
			set := resolverSet(t, "*=causal")
			a := resolverNode("node-a", r, set, nil, func(j *syncer.MemJournal) syncer.Journal {
				return observed{MemJournal: j, node: "node-b"}
			})
			b := resolverNode("node-b", r, set, nil, nil)
			k := key(fmt.Sprintf("causal-%d", i))
			t0 := time.Now()
			a.j.SetClock(func() time.Time { return t0 })
			b.j.SetClock(func() time.Time { return t0.Add(time.Second) }) // b writes later
			put(t, a.j, k, "a1")
			put(t, a.j, k, "a2")
			put(t, b.j, k, "b1")
			if aFirst {
				syncOnce(t, ctx, a.s)
				if rep := syncOnce(t, ctx, b.s); rep.Parked != 1 || rep.AlreadyApplied != 0 {
					t.Fatalf("b's push %+v: want its change counted, found nowhere, and parked", rep)
				}
			} else {
				syncOnce(t, ctx, b.s)
				if rep := syncOnce(t, ctx, a.s); rep.Conflicts != 1 || rep.Pushed != 2 {
					t.Fatalf("a's push %+v: want a conflict a wins", rep)
				}
			}
			rem := converge(t, ctx, r, k, a, b)
			if string(rem.Value) != "a2" || rem.Clock.Vector["node-a"] != 2 || rem.Clock.Vector["node-b"] != 1 {
				t.Fatalf("remote %+v", rem)
			}
		})
	}
}

// testResolverMerge: both nodes create the state with different fields;
// "merge" (the base is known: the state did not exist) keeps both, in the
// same bytes whichever node pushes first.
func testResolverMerge(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote) {
	docA := []byte{0x81, 0xa1, 'a', 0x01}                  // {"a": 1}
	docB := []byte{0x81, 0xa1, 'b', 0x02}                  // {"b": 2}
	want := []byte{0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02} // {"a": 1, "b": 2}
	for i, aFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("aFirst=%v", aFirst), func(t *testing.T) {
			r := open(t)
			set := resolverSet(t, "*=merge")
			a := resolverNode("node-a", r, set, nil, nil)
			b := resolverNode("node-b", r, set, nil, nil)
			k := key(fmt.Sprintf("merge-%d", i))
			if _, err := a.j.Append(syncer.MemWrite{Key: k, Value: docA}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.j.Append(syncer.MemWrite{Key: k, Value: docB}); err != nil {
				t.Fatal(err)
			}
			first, second := b, a
			if aFirst {
				first, second = a, b
			}
			syncOnce(t, ctx, first.s)
			if rep := syncOnce(t, ctx, second.s); rep.Conflicts != 1 || rep.Pushed != 1 {
				t.Fatalf("second push %+v: want a merged change pushed", rep)
			}
			rem := converge(t, ctx, r, k, a, b)
			if !bytes.Equal(rem.Value, want) || rem.Deleted || rem.Version != 2 {
				t.Fatalf("remote v%d %x deleted=%v, want v2 %x", rem.Version, rem.Value, rem.Deleted, want)
			}
			if rem.Clock.Vector["node-a"] != 1 || rem.Clock.Vector["node-b"] != 1 {
				t.Fatalf("remote vector %v: want both changes counted", rem.Clock.Vector)
			}
			evs := checkEvents(t, ctx, r, k, 2)
			if !bytes.Equal(evs[1].Value, want) {
				t.Fatalf("event at v2 holds %x, want the merged %x", evs[1].Value, want)
			}
		})
	}
}

// testResolverStrict: a strict change loses a true conflict even when the
// resolver says it wins.
func testResolverStrict(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote) {
	always := conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
		return conflict.Decision{Winner: conflict.Local, Resolver: "always-local"}, nil
	})
	r := open(t)
	a := resolverNode("node-a", r, always, nil, nil)
	b := resolverNode("node-b", r, always, nil, nil)
	k := key("strict")
	put(t, a.j, k, "a")
	if _, err := b.j.Append(syncer.MemWrite{Key: k, Value: []byte("b-strict"), Strict: true}); err != nil {
		t.Fatal(err)
	}
	syncOnce(t, ctx, a.s)
	if rep := syncOnce(t, ctx, b.s); rep.Conflicts != 1 || rep.Superseded != 1 {
		t.Fatalf("strict push %+v: want it superseded", rep)
	}
	if rem := converge(t, ctx, r, k, a, b); string(rem.Value) != "a" {
		t.Fatalf("remote %q: the strict change overwrote a change it had not seen", rem.Value)
	}
}

// testResolverFailing: a resolver that fails, panics or returns no winner
// is overruled by last write wins (a's later change).
func testResolverFailing(t *testing.T, ctx context.Context, open func(t *testing.T) syncer.Remote) {
	bad := map[string]conflict.ResolverFunc{
		"error": func(context.Context, conflict.Conflict) (conflict.Decision, error) {
			return conflict.Decision{}, errors.New("cannot decide")
		},
		"panic": func(context.Context, conflict.Conflict) (conflict.Decision, error) {
			panic("resolver bug")
		},
		"no-winner": func(context.Context, conflict.Conflict) (conflict.Decision, error) {
			return conflict.Decision{Resolver: "bad"}, nil
		},
	}
	for name, res := range bad {
		t.Run(name, func(t *testing.T) {
			r := open(t)
			a := resolverNode("node-a", r, res, nil, nil)
			b := resolverNode("node-b", r, res, nil, nil)
			k := key("failing-" + name)
			t0 := time.Now()
			a.j.SetClock(func() time.Time { return t0.Add(time.Second) }) // a writes later
			b.j.SetClock(func() time.Time { return t0 })
			put(t, a.j, k, "a")
			put(t, b.j, k, "b")
			syncOnce(t, ctx, a.s)
			if rep := syncOnce(t, ctx, b.s); rep.Conflicts != 1 || rep.Superseded != 1 {
				t.Fatalf("b's push %+v: want it superseded by last write wins", rep)
			}
			if rem := converge(t, ctx, r, k, a, b); string(rem.Value) != "a" {
				t.Fatalf("remote %q", rem.Value)
			}
		})
	}
}

// TestCoalescedRunWinsConflict: a run of one key coalesced up to the
// remote's write limit that then wins a conflict carries a conflict record
// as well: it must still fit, not be parked as too large.
func TestCoalescedRunWinsConflict(t *testing.T) {
	ctx := context.Background()
	lim := syncer.Limits{MaxWrites: 10, MaxRecordBytes: 1 << 20, MaxBatchBytes: 9 << 20}
	for _, n := range []int{8, 9, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			m := memremote.New()
			m.SetLimits(lim)
			base := time.Unix(1700000000, 0)
			other := syncer.NewMemJournal("b")
			other.SetClock(func() time.Time { return base })
			put(t, other, key("s"), "b")
			syncOnce(t, ctx, syncer.New(other, m, syncer.Options{}))

			j := syncer.NewMemJournal("a") // offline, later: wins last-writer-wins
			j.SetClock(func() time.Time { return base.Add(time.Hour) })
			for i := range n {
				put(t, j, key("s"), fmt.Sprintf("a%d", i))
			}
			s := syncer.New(j, m, syncer.Options{})
			for range 3 {
				if _, err := s.SyncOnce(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if p := j.ParkedEntries(); len(p) != 0 {
				t.Fatalf("%d entries parked: %s", len(p), p[0].Reason)
			}
			rec, err := m.Get(ctx, key("s"))
			if err != nil || string(rec.Value) != fmt.Sprintf("a%d", n-1) {
				t.Fatalf("remote %q, %v; want the last local write", rec.Value, err)
			}
			checkSynced(t, ctx, j, m, key("s"))
		})
	}
}
