package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// The store as the syncer's Journal and the puller's Applier, exercised with
// the real push and pull loops over the in-memory remote. The same loops run
// against the Firestore emulator in e2e.

// forRemotes runs test against the in-memory remote and against Firestore
// on the emulator.
func forRemotes(t *testing.T, test func(t *testing.T, newRemote func() syncer.Remote)) {
	t.Run("memremote", func(t *testing.T) {
		test(t, func() syncer.Remote { return memremote.New() })
	})
	t.Run("firestore", func(t *testing.T) {
		test(t, func() syncer.Remote { return firestoretest.Open(t) })
	})
}

type syncNode struct {
	t      *testing.T
	dir    string
	node   string
	store  *Store
	remote syncer.Remote
	push   *syncer.Syncer
	pull   *syncer.Puller
	// history makes pulls bring the remote's history (historyOf), and
	// every > 0 takes a snapshot every that many versions (with 3 kept).
	history bool
	every   int
	// maxFetched, when > 0, is how many versions of a state's history
	// one fetch of the pull reads (syncer.PullOptions.MaxFetchedHistory).
	maxFetched int
	// refillSlices, when > 0, is how many of them one refill of a hole
	// reads (syncer.PullOptions.MaxRefillSlices).
	refillSlices int
	// maxFetchedBytes, when > 0, is about how many bytes of history one
	// fetch reads (syncer.PullOptions.MaxFetchedHistoryBytes).
	maxFetchedBytes int
	// newIncarnation opens the store with Options.NewIncarnation.
	newIncarnation bool
	// renews says the test expects the store to draw a new incarnation
	// while it runs (origin.go); pullAll fails the test on one otherwise.
	renews bool
}

func newSyncNode(t *testing.T, node string, remote syncer.Remote, govs ...string) *syncNode {
	t.Helper()
	n := &syncNode{t: t, dir: t.TempDir(), node: node, remote: remote}
	n.open(govs...)
	t.Cleanup(func() {
		if n.store != nil {
			_ = n.store.Close(context.Background())
		}
	})
	return n
}

func (n *syncNode) open(govs ...string) {
	n.t.Helper()
	n.store = openDisk(n.t, n.dir, func(o *Options) {
		o.NodeID = n.node
		o.NewIncarnation = n.newIncarnation
		if n.every > 0 {
			o.Snapshots = func(string) (int, int) { return n.every, 3 }
		}
	})
	n.push = syncer.New(n.store, n.remote, syncer.Options{Backoff: syncer.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond}})
	opts := syncer.PullOptions{Governors: govs}
	if n.history {
		opts.History, opts.HistoryMode = historyOf(n.remote), syncer.HistoryFull
		opts.MaxFetchedHistory, opts.MaxRefillSlices = n.maxFetched, n.refillSlices
		opts.MaxFetchedHistoryBytes = n.maxFetchedBytes
	}
	n.pull = syncer.NewPuller(n.store, n.remote, opts)
}

func (n *syncNode) restart(govs ...string) {
	n.t.Helper()
	closeStore(n.t, n.store)
	n.open(govs...)
}

func (n *syncNode) put(k Key, v string) Record {
	n.t.Helper()
	return mustPut(n.t, n.store, k, v)
}

func (n *syncNode) pushAll() syncer.Report {
	n.t.Helper()
	rep, err := n.push.SyncOnce(context.Background())
	if err != nil {
		n.t.Fatalf("%s: push: %v", n.node, err)
	}
	return rep
}

func (n *syncNode) pullAll() syncer.PullReport {
	n.t.Helper()
	rep, err := n.pull.PullOnce(context.Background())
	if err != nil {
		n.t.Fatalf("%s: pull: %v", n.node, err)
	}
	if r := n.store.Stats().OriginRenewals; r != 0 && !n.renews {
		n.t.Fatalf("%s drew a new incarnation (%d): its origin was taken for another store's", n.node, r)
	}
	return rep
}

func (n *syncNode) get(k Key) Record {
	n.t.Helper()
	rec, err := n.store.Get(context.Background(), k)
	if err != nil {
		n.t.Fatalf("%s: get %s: %v", n.node, k, err)
	}
	return rec
}

func remoteGet(t *testing.T, r syncer.Remote, k Key) syncer.Record {
	t.Helper()
	rec, err := r.Get(context.Background(), syncer.Key(k))
	if err != nil {
		t.Fatalf("remote get %s: %v", k, err)
	}
	return rec
}

func TestSyncPushDrainsJournal(t *testing.T) { forRemotes(t, testSyncPushDrainsJournal) }

func testSyncPushDrainsJournal(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newSyncNode(t, "a", remote)
	k1, k2 := key("g", "one"), key("g", "two")
	a.put(k1, "v1")
	a.put(k1, "v2")
	a.put(k2, "x")
	if _, err := a.store.WriteBatch(context.Background(), []Write{{Key: key("g", "b1"), Value: []byte("p")}, {Key: key("g", "b2"), Value: []byte("q")}}); err != nil {
		t.Fatal(err)
	}
	if d := a.store.Depth(); d != 5 {
		t.Fatalf("depth %d, want 5", d)
	}
	if rec := a.get(k1); !rec.Pending || rec.SyncedVersion != 0 {
		t.Fatalf("before push: %+v", rec)
	}
	entries, err := a.store.Pending(context.Background(), 0, 0)
	if err != nil || len(entries) != 5 {
		t.Fatalf("pending: %d entries, %v", len(entries), err)
	}
	if e := entries[3]; e.BatchID != entries[4].BatchID || e.Record.Key != syncer.Key(key("g", "b1")) || string(e.Record.Value) != "p" || e.Event.OpID != e.Record.OpID {
		t.Fatalf("batch entry %+v", e)
	}

	rep := a.pushAll()
	if rep.Pushed != 5 || rep.Parked != 0 {
		t.Fatalf("push report %+v", rep)
	}
	if d := a.store.Depth(); d != 0 {
		t.Fatalf("depth after push %d", d)
	}
	if entries, _ := a.store.Pending(context.Background(), 0, 0); len(entries) != 0 {
		t.Fatalf("pending after push: %v", entries)
	}
	rec := a.get(k1)
	r := remoteGet(t, remote, k1)
	if rec.Pending || rec.SyncedVersion != 2 || rec.Version != 2 || string(rec.Value) != "v2" || rec.SyncedAt == 0 || time.Duration(rec.SyncedAt-r.RemoteTime.UnixNano()).Abs() > time.Second {
		t.Fatalf("after push: local v%d synced v%d at %d pending %v %q; remote v%d at %d %q", rec.Version, rec.SyncedVersion, rec.SyncedAt, rec.Pending, rec.Value, r.Version, r.RemoteTime.UnixNano(), r.Value)
	}
	if string(r.Value) != "v2" || r.Version != 2 {
		t.Fatalf("remote %+v", r)
	}
	evs, err := remote.Events(context.Background(), syncer.Key(k1), 0, 0)
	if err != nil || len(evs) != 2 || string(evs[0].Value) != "v1" {
		t.Fatalf("remote events %+v, %v", evs, err)
	}

	// The acks are durable: a restart finds nothing to push and the synced
	// record.
	a.restart()
	if rep := a.pushAll(); rep.Done() != 0 {
		t.Fatalf("push after restart: %+v", rep)
	}
	if rec := a.get(k1); rec.Pending || rec.SyncedVersion != 2 {
		t.Fatalf("after restart: %+v", rec)
	}
	if st := a.store.Stats(); st.JournalDepth != 0 || st.States != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSyncPullBringsRemoteChanges(t *testing.T) { forRemotes(t, testSyncPullBringsRemoteChanges) }

func testSyncPullBringsRemoteChanges(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	k := key("g", "k")
	a.put(k, "from-a")
	a.put(key("g", "gone"), "x")
	if _, err := a.store.Write(context.Background(), Write{Key: key("g", "gone"), Delete: true}); err != nil {
		t.Fatal(err)
	}
	a.pushAll()

	rep := b.pullAll()
	if rep.Applied == 0 {
		t.Fatalf("pull report %+v", rep)
	}
	rec := b.get(k)
	if string(rec.Value) != "from-a" || rec.Version != 1 || rec.Pending || rec.Origin != a.store.Origin() || rec.SyncedVersion != 1 {
		t.Fatalf("b's record %+v", rec)
	}
	if _, err := b.store.Get(context.Background(), key("g", "gone")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted state on b: %v", err)
	}
	// b writes on top of a's version; a pulls it back.
	if rec := b.put(k, "from-b"); rec.Version != 2 || rec.Clock.Vector[a.store.Origin()] != 1 || rec.Clock.Vector[b.store.Origin()] != 1 {
		t.Fatalf("b's write %+v", rec)
	}
	if rep := b.pushAll(); rep.Pushed != 1 {
		t.Fatalf("b push %+v", rep)
	}
	a.pullAll()
	if rec := a.get(k); string(rec.Value) != "from-b" || rec.Version != 2 || rec.Pending {
		t.Fatalf("a after pull %+v", rec)
	}
	// Clocks moved past the remote record's.
	if rec := a.put(key("g", "later"), "x"); rec.Clock.Lamport <= b.get(k).Clock.Lamport {
		t.Fatalf("a's Lamport clock %d did not move past %d", rec.Clock.Lamport, b.get(k).Clock.Lamport)
	}

	// The cursor is stored with the records: a restart pulls nothing again,
	// and an empty disk pulls everything.
	cur, err := b.store.Cursor(context.Background(), "g")
	if err != nil || cur == "" {
		t.Fatalf("cursor %q, %v", cur, err)
	}
	b.restart("g")
	if c2, _ := b.store.Cursor(context.Background(), "g"); c2 != cur {
		t.Fatalf("cursor after restart %q, want %q", c2, cur)
	}
	fresh := newSyncNode(t, "c", remote, "g")
	fresh.pullAll()
	if rec := fresh.get(k); string(rec.Value) != "from-b" {
		t.Fatalf("fresh node %+v", rec)
	}
	if st := fresh.store.Stats(); st.States != 1 || st.JournalDepth != 0 { // "gone" is a tombstone; a's "later" is not pushed
		t.Fatalf("fresh node stats %+v", st)
	}
}

// TestSyncRemoteWhilePending: a remote change that arrives while a local
// write of the key waits is kept aside; the push settles the key and both
// nodes end with the same record.
func TestSyncRemoteWhilePending(t *testing.T) { forRemotes(t, testSyncRemoteWhilePending) }

func testSyncRemoteWhilePending(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	k := key("g", "k")
	a.put(k, "base")
	a.pushAll()
	b.pullAll()

	b.put(k, "b-wins?")
	b.pushAll()
	a.put(k, "a-offline") // concurrent with b's write
	rep := a.pullAll()
	if rep.Pending != 1 {
		t.Fatalf("pull report %+v, want one pending", rep)
	}
	if rec := a.get(k); string(rec.Value) != "a-offline" || !rec.Pending {
		t.Fatalf("a keeps its pending write: %+v", rec)
	}
	a.pushAll()
	b.pullAll()
	ra, rb, rr := a.get(k), b.get(k), remoteGet(t, remote, k)
	if ra.Pending || rb.Pending || !bytes.Equal(ra.Value, rr.Value) || !bytes.Equal(rb.Value, rr.Value) ||
		ra.Version != rr.Version || rb.Version != rr.Version {
		t.Fatalf("not converged:\n a %+v\n b %+v\n remote %+v", ra, rb, rr)
	}
	if a.store.Depth() != 0 {
		t.Fatalf("a depth %d", a.store.Depth())
	}
}

// TestSyncPark: a change the remote rejects for good is parked in the failed
// list with its reason; other keys go on, and the parked key is no longer
// pending.
func TestSyncPark(t *testing.T) {
	remote := memremote.New()
	bad := key("g", "bad")
	remote.SetHook(func(op string, k syncer.Key) error {
		if op == "commit" && k == syncer.Key(bad) {
			return fmt.Errorf("%w: denied for this key", syncer.ErrPermanent)
		}
		return nil
	})
	a := newSyncNode(t, "a", remote)
	a.put(bad, "x")
	a.put(key("g", "good"), "y")
	rep := a.pushAll()
	if rep.Parked != 1 || rep.Pushed != 1 {
		t.Fatalf("report %+v", rep)
	}
	failed, err := a.store.Failed(context.Background(), 0, 0)
	if err != nil || len(failed) != 1 || failed[0].Key != bad || failed[0].Reason == "" || failed[0].ParkedAt == 0 {
		t.Fatalf("failed list %+v, %v", failed, err)
	}
	if rec := a.get(bad); rec.Pending || string(rec.Value) != "x" {
		t.Fatalf("parked key's record %+v", rec)
	}
	if st := a.store.Stats(); st.Parked != 1 || st.JournalDepth != 0 {
		t.Fatalf("stats %+v", st)
	}
	a.restart()
	if st := a.store.Stats(); st.Parked != 1 || st.JournalDepth != 0 {
		t.Fatalf("stats after restart %+v", st)
	}
	if failed, _ := a.store.Failed(context.Background(), 0, 0); len(failed) != 1 {
		t.Fatalf("failed list after restart %+v", failed)
	}
}

// crashAfterCommit is a remote whose Commit applies the batch and then
// reports a failure, as a process killed between the remote commit and the
// local ack would see it.
type crashAfterCommit struct {
	syncer.Remote
	mu    sync.Mutex
	crash bool
}

func (c *crashAfterCommit) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	res, err := c.Remote.Commit(ctx, b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crash && err == nil {
		return nil, fmt.Errorf("%w: crashed before the ack", syncer.ErrUnavailable)
	}
	return res, err
}

// TestSyncCrashBetweenCommitAndAck: the change is in the remote but not
// acked; after a restart it is pushed again and recognised, never applied
// twice.
func TestSyncCrashBetweenCommitAndAck(t *testing.T) { forRemotes(t, testSyncCrashBetweenCommitAndAck) }

func testSyncCrashBetweenCommitAndAck(t *testing.T, newRemote func() syncer.Remote) {
	mem := newRemote()
	remote := &crashAfterCommit{Remote: mem, crash: true}
	a := newSyncNode(t, "a", remote)
	k := key("g", "k")
	a.put(k, "1")
	a.put(k, "2")
	if rep, _ := a.push.SyncOnce(context.Background()); rep.Done() != 0 {
		t.Fatalf("push settled entries without an answer from the remote: %+v", rep)
	}
	if r := remoteGet(t, mem, k); r.Version != 2 {
		t.Fatalf("remote %+v: the commit should have happened", r)
	}
	if a.store.Depth() != 2 {
		t.Fatalf("depth %d, want the 2 unacked entries", a.store.Depth())
	}
	a.restart()
	remote.mu.Lock()
	remote.crash = false
	remote.mu.Unlock()
	rep := a.pushAll()
	if rep.AlreadyApplied != 2 || rep.Pushed != 0 {
		t.Fatalf("report %+v, want 2 already applied", rep)
	}
	evs, err := mem.Events(context.Background(), syncer.Key(k), 0, 0)
	if err != nil || len(evs) != 2 {
		t.Fatalf("remote events %+v, %v: want each change once", evs, err)
	}
	if r := remoteGet(t, mem, k); r.Version != 2 || string(r.Value) != "2" {
		t.Fatalf("remote %+v", r)
	}
	if rec := a.get(k); rec.Pending || rec.SyncedVersion != 2 {
		t.Fatalf("local %+v", rec)
	}
}

// TestSyncConcurrentWritersConverge: three nodes write the same keys at
// random while pushing and pulling concurrently; after quiescence every node
// holds the remote's record of every key.
func TestSyncConcurrentWritersConverge(t *testing.T) {
	forRemotes(t, testSyncConcurrentWritersConverge)
}

func testSyncConcurrentWritersConverge(t *testing.T, newRemote func() syncer.Remote) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	remote := newRemote()
	nodes := []*syncNode{
		newSyncNode(t, "a", remote, "g"),
		newSyncNode(t, "b", remote, "g"),
		newSyncNode(t, "c", remote, "g"),
	}
	keys := []Key{key("g", "k0"), key("g", "k1"), key("g", "k2"), key("g", "k3")}
	ctx, cancel := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	for _, n := range nodes {
		loops.Add(2)
		go func() { defer loops.Done(); _ = n.push.Run(ctx) }()
		go func() { defer loops.Done(); _ = n.pull.Run(ctx) }()
	}
	var writers sync.WaitGroup
	for i, n := range nodes {
		for w := range 3 {
			writers.Add(1)
			go func() {
				defer writers.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(i*10+w)))
				for j := range 60 {
					k := keys[rng.IntN(len(keys))]
					if rng.IntN(8) == 0 {
						_, err := n.store.Write(ctx, Write{Key: k, Delete: true})
						if err != nil && !errors.Is(err, ErrNotFound) {
							t.Errorf("seed %d: delete: %v", seed, err)
						}
						continue
					}
					if _, err := n.store.Write(ctx, Write{Key: k, Value: fmt.Appendf(nil, "%s-%d-%d", n.node, w, j)}); err != nil {
						t.Errorf("seed %d: put: %v", seed, err)
					}
				}
			}()
		}
	}
	writers.Wait()
	// Quiesce: flush every journal, then pull until nothing changes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, n := range nodes {
			if err := n.push.Flush(ctx); err != nil {
				t.Fatalf("seed %d: flush %s: %v", seed, n.node, err)
			}
		}
		for _, n := range nodes {
			if _, err := n.pull.PullOnce(ctx); err != nil {
				t.Fatalf("seed %d: pull %s: %v", seed, n.node, err)
			}
		}
		if converged(t, remote, nodes, keys) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("seed %d: not converged: %s", seed, converged(t, remote, nodes, keys))
		}
	}
	cancel()
	loops.Wait()
	for _, n := range nodes {
		if d := n.store.Depth(); d != 0 {
			t.Errorf("seed %d: %s depth %d", seed, n.node, d)
		}
	}
}

// converged returns "" when every node holds the remote record of every key
// (value, version, tombstone) and has nothing pending, else what differs.
func converged(t *testing.T, remote syncer.Remote, nodes []*syncNode, keys []Key) string {
	for _, k := range keys {
		r, err := remote.Get(context.Background(), syncer.Key(k))
		if err != nil {
			return fmt.Sprintf("remote %s: %v", k, err)
		}
		for _, n := range nodes {
			recs, err := n.store.GetMany(context.Background(), []Key{k})
			if err != nil {
				t.Fatal(err)
			}
			l := recs[0]
			switch {
			case r.Deleted && l != nil:
				return fmt.Sprintf("%s: %s holds %q v%d, remote deleted v%d", k, n.node, l.Value, l.Version, r.Version)
			case !r.Deleted && l == nil:
				return fmt.Sprintf("%s: %s holds nothing, remote %q v%d", k, n.node, r.Value, r.Version)
			case !r.Deleted && (!bytes.Equal(l.Value, r.Value) || l.Version != r.Version || l.Pending):
				parked, _ := n.store.Failed(context.Background(), 0, 3)
				return fmt.Sprintf("%s: %s holds %q v%d (pending %v, synced v%d, journal depth %d, parked %+v), remote %q v%d by %s",
					k, n.node, l.Value, l.Version, l.Pending, l.SyncedVersion, n.store.Depth(), parked, r.Value, r.Version, r.Origin)
			}
		}
	}
	return ""
}

// TestSyncMutationsReplay: acks and remote records are durable once
// acknowledged, like writes: when the apply of their group to Badger fails,
// the next Open replays them from the write-ahead log.
func TestSyncMutationsReplay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	remote := memremote.New()
	var crash atomic.Bool
	s := openDisk(t, dir, func(o *Options) {
		o.NodeID = "a"
		o.hookAfterWAL = func() error {
			if crash.Load() {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	k, kr := key("g", "k"), key("g", "from-b")
	mustPut(t, s, k, "1")
	waitApplied(t, s)
	b := newSyncNode(t, "b", remote, "g")
	b.put(kr, "remote")
	b.pushAll()

	crash.Store(true)
	if rep, err := syncer.New(s, remote, syncer.Options{}).SyncOnce(ctx); err != nil || rep.Pushed != 1 {
		t.Fatalf("push: %+v, %v", rep, err)
	}
	waitFor(t, "store failed", func() bool { return s.failedErr() != nil })
	// The ack's group is in the log: point reads see it.
	if rec, err := s.Get(ctx, k); err != nil || rec.Pending || rec.SyncedVersion != 1 {
		t.Fatalf("after the failed apply: %+v, %v", rec, err)
	}
	closeStore(t, s)

	s = openDisk(t, dir, func(o *Options) { o.NodeID = "a" })
	if d := s.Depth(); d != 0 {
		t.Fatalf("depth after replay %d", d)
	}
	if rec, err := s.Get(ctx, k); err != nil || rec.Pending || rec.SyncedVersion != 1 {
		t.Fatalf("after replay: %+v, %v", rec, err)
	}
	// Remote records and the cursor stored with them survive a restart.
	if _, err := syncer.NewPuller(s, remote, syncer.PullOptions{Governors: []string{"g"}}).PullOnce(ctx); err != nil {
		t.Fatal(err)
	}
	cur, err := s.Cursor(ctx, "g")
	if err != nil || cur == "" {
		t.Fatalf("cursor %q, %v", cur, err)
	}
	closeStore(t, s)
	s3 := openDisk(t, dir, func(o *Options) { o.NodeID = "a" })
	defer closeStore(t, s3)
	if rec, err := s3.Get(ctx, kr); err != nil || string(rec.Value) != "remote" || !strings.HasPrefix(rec.Origin, "b~") {
		t.Fatalf("remote record after reopen: %+v, %v", rec, err)
	}
	if c, _ := s3.Cursor(ctx, "g"); c != cur {
		t.Fatalf("cursor after reopen %q, want %q", c, cur)
	}
}

func TestGovernors(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	for _, g := range []string{"b", "a", "a\u00e9", "c"} {
		mustPut(t, s, key(g, "x"), "1")
		mustPut(t, s, key(g, "y\u00ff"), "1")
	}
	if _, err := s.ApplyRemote(context.Background(), syncer.RemoteBatch{Records: []syncer.Record{{
		Key: syncer.Key{Governor: "remote", State: "s"}, Value: []byte{1}, Version: 1, Origin: "n2", OpID: "n2-1",
		Clock: syncer.Clock{Vector: map[string]uint64{"n2": 1}}}}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a\u00e9", "b", "c", "remote"}
	got := s.Governors()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("governors %q, want %q", got, want)
	}
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	got = s.Governors()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("governors after reopen %q, want %q", got, want)
	}
}

func TestSubscribe(t *testing.T) {
	ctx := context.Background()
	remote := memremote.New()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	sub, err := a.store.Subscribe("g", "k", 16, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.store.Subscribe("other", "", 16, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.put(key("g", "k1"), "1")
	a.put(key("g", "x"), "not matched")
	a.put(key("g", "k1"), "2")
	if _, err := a.store.Write(ctx, Write{Key: key("g", "k1"), Delete: true}); err != nil {
		t.Fatal(err)
	}
	a.pushAll() // acks are bookkeeping: no change
	b.put(key("g", "k2"), "from b")
	b.pushAll()
	a.pullAll()

	type seen struct {
		state   string
		value   string
		version uint64
		deleted bool
		remote  bool
	}
	want := []seen{{"k1", "1", 1, false, false}, {"k1", "2", 2, false, false}, {"k1", "", 3, true, false}, {"k2", "from b", 1, false, true}}
	for i, w := range want {
		select {
		case ch := <-sub.C:
			got := seen{ch.Record.State, string(ch.Record.Value), ch.Record.Version, ch.Record.Deleted, ch.Remote}
			if got != w {
				t.Fatalf("change %d: %+v, want %+v", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("change %d not delivered", i)
		}
	}
	select {
	case ch := <-sub.C:
		t.Fatalf("unexpected change %+v", ch)
	case ch := <-other.C:
		t.Fatalf("other governor got %+v", ch)
	default:
	}

	// A subscriber that does not read falls behind and is ended.
	slow, err := a.store.Subscribe("g", "", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		a.put(key("g", fmt.Sprint("s", i)), "v")
	}
	// A change is published just after its writer is answered.
	waitFor(t, "the slow subscriber ended", func() bool { return slow.Err() != nil })
	n := 0
	for range slow.C {
		n++
	}
	if n != 2 || !errors.Is(slow.Err(), ErrLagged) {
		t.Fatalf("slow subscriber: %d changes, err %v", n, slow.Err())
	}
	sub.Close()
	sub.Close()
	if _, ok := <-sub.C; ok || sub.Err() != nil {
		t.Fatalf("closed subscription: err %v", sub.Err())
	}
	a.store.Close(ctx)
	if _, ok := <-other.C; ok || !errors.Is(other.Err(), ErrClosed) {
		t.Fatalf("after store close: %v", other.Err())
	}
	a.store = nil
}

func TestWaitSynced(t *testing.T) {
	ctx := context.Background()
	remote := memremote.New()
	bad := key("g", "bad")
	remote.SetHook(func(op string, k syncer.Key) error {
		if op == "commit" && k == syncer.Key(bad) {
			return fmt.Errorf("%w: denied", syncer.ErrPermanent)
		}
		return nil
	})
	a := newSyncNode(t, "a", remote)
	rec := a.put(key("g", "k"), "v")
	if rec.Seq == 0 {
		t.Fatal("write reply without its journal sequence number")
	}
	if got := a.get(key("g", "k")); got.Seq != 0 {
		t.Fatalf("read carries a journal sequence number: %d", got.Seq)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := a.store.WaitSynced(short, rec.Seq); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("before any push: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.store.WaitSynced(ctx, rec.Seq) }()
	time.Sleep(20 * time.Millisecond)
	a.pushAll()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitSynced did not return after the ack")
	}
	// WaitFlushed: everything written up to now.
	for i := range 3 {
		a.put(key("g", fmt.Sprint("f", i)), "v")
	}
	upTo := a.store.LastSeq()
	short2, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := a.store.WaitFlushed(short2, upTo); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("flush before any push: %v", err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- a.store.WaitFlushed(ctx, upTo) }()
	a.pushAll()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	a.put(key("g", "later"), "not waited for")
	if err := a.store.WaitFlushed(ctx, upTo); err != nil {
		t.Fatalf("a later write held up the flush: %v", err)
	}
	a.pushAll()
	badRec := a.put(bad, "x")
	a.pushAll()
	var pe *ParkedError
	if err := a.store.WaitSynced(ctx, rec.Seq, badRec.Seq); !errors.As(err, &pe) || pe.Key != bad || pe.Reason == "" {
		t.Fatalf("parked change: %v", err)
	}
}

// TestWaitSyncedConflictLost: a write made with Confirm (a sync write)
// whose push loses a conflict by the governor's resolver (last write wins
// here) is reported to WaitSynced as lost, with the shared store's version.
// Before, only strict writes were: a sync write that lost was confirmed as
// if the shared store had it.
func TestWaitSyncedConflictLost(t *testing.T) { forRemotes(t, testWaitSyncedConflictLost) }

func testWaitSyncedConflictLost(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	k := key("g", "k")
	rec, err := a.store.Write(ctx, Write{Key: k, Value: []byte("a"), Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	nextMillisecond() // b's write is later: it wins
	b.put(k, "b")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 1 {
		t.Fatalf("a's push %+v: want its write superseded", rep)
	}
	var lost *ConflictLostError
	err = a.store.WaitSynced(ctx, rec.Seq)
	if !errors.As(err, &lost) || !errors.Is(err, ErrVersionConflict) || lost.Key != k || lost.RemoteVersion != 1 || lost.Strict {
		t.Fatalf("WaitSynced of the write that lost: %v", err)
	}
	if got := a.get(k); string(got.Value) != "b" || got.Pending {
		t.Fatalf("a holds %+v: want b's record", got)
	}
}

// hookFetcher runs before after each Fetch: a concurrent writer slipping in
// between a strong write's read and its push.
type hookFetcher struct {
	*syncer.Puller
	after func()
}

func (h hookFetcher) Fetch(ctx context.Context, k syncer.Key) (syncer.Record, syncer.ApplyStatus, error) {
	rec, st, err := h.Puller.Fetch(ctx, k)
	if h.after != nil {
		h.after()
	}
	return rec, st, err
}

func TestWriteStrong(t *testing.T) { forRemotes(t, testWriteStrong) }

func testWriteStrong(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	for _, n := range []*syncNode{a, b} {
		loopCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = n.push.Run(loopCtx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	k := key("g", "k")
	rec := a.put(k, "1")
	if err := a.store.WaitSynced(ctx, rec.Seq); err != nil {
		t.Fatal(err)
	}

	// b has never seen k: the strong write reads it first, so the
	// precondition holds against the shared store.
	recs, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: k, Value: []byte("2"), IfVersion: u64(1)}})
	if err != nil || recs[0].Version != 2 {
		t.Fatalf("strong put on b: %+v, %v", recs, err)
	}
	if r := remoteGet(t, remote, k); r.Version != 2 || string(r.Value) != "2" {
		t.Fatalf("remote after the strong put %+v", r)
	}
	// The reply says when the shared store committed this version, not
	// the one before.
	if recs[0].Pending || recs[0].SyncedAt < recs[0].UpdatedAt {
		t.Fatalf("strong put's record: pending %v, synced_at %d before updated_at %d", recs[0].Pending, recs[0].SyncedAt, recs[0].UpdatedAt)
	}
	k2 := key("g", "k2")
	for v := uint64(1); v <= 2; v++ {
		r, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: k2, Value: []byte(itoa(int(v))), IfVersion: u64(v - 1)}})
		if err != nil || r[0].Version != v || r[0].Pending || r[0].SyncedAt < r[0].UpdatedAt {
			t.Fatalf("strong put %d of k2: %+v, %v; want synced_at at or after updated_at", v, r, err)
		}
		if got := b.get(k2); got.SyncedAt != r[0].SyncedAt {
			t.Fatalf("strong put %d of k2: synced_at %d, the store's %d", v, r[0].SyncedAt, got.SyncedAt)
		}
	}
	// a is behind: its precondition fails against the shared store, and
	// nothing is written.
	depth := a.store.Depth()
	_, err = a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("stale"), IfVersion: u64(1)}})
	var vc *VersionConflictError
	if !errors.As(err, &vc) || vc.Expected != 1 || vc.Actual != 2 {
		t.Fatalf("stale strong put on a: %v", err)
	}
	if a.store.Depth() != depth || string(a.get(k).Value) != "2" {
		t.Fatalf("a failed strong write changed the store: depth %d, %q", a.store.Depth(), a.get(k).Value)
	}

	// A concurrent write reaches the shared store between the read and the
	// push: the strong write loses though its clock is later.
	slip := hookFetcher{Puller: a.pull, after: func() {
		r := b.put(k, "b-slipped-in")
		if err := b.store.WaitSynced(ctx, r.Seq); err != nil {
			t.Error(err)
		}
	}}
	_, err = a.store.WriteStrong(ctx, slip, []Write{{Key: k, Value: []byte("a-strong"), IfVersion: u64(2)}})
	if !errors.As(err, &vc) || vc.Expected != 2 || vc.Actual != 3 {
		t.Fatalf("strong put that met a concurrent change: %v", err)
	}
	if r := remoteGet(t, remote, k); string(r.Value) != "b-slipped-in" {
		t.Fatalf("remote %q: the strong write overwrote the concurrent change", r.Value)
	}
	if got := a.get(k); string(got.Value) != "b-slipped-in" || got.Pending {
		t.Fatalf("a after losing: %q pending=%v", got.Value, got.Pending)
	}

	// Unreachable: it fails before writing anything.
	off := hookFetcher{Puller: syncer.NewPuller(a.store, unreachable{}, syncer.PullOptions{})}
	depth = a.store.Depth()
	if _, err := a.store.WriteStrong(ctx, off, []Write{{Key: k, Value: []byte("x")}}); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("offline strong write: %v", err)
	}
	if a.store.Depth() != depth {
		t.Fatal("an offline strong write was journaled")
	}
}

// unreachable is a remote that is never reachable.
type unreachable struct{ syncer.Remote }

func (unreachable) Get(context.Context, syncer.Key) (syncer.Record, error) {
	return syncer.Record{}, fmt.Errorf("%w: no route", syncer.ErrUnavailable)
}

// TestSyncFreshStoreSameNodeID: a node whose data dir was lost comes back
// under the same node id (a StatefulSet pod's name, or TAI_NODE_ID) on a
// fresh store, and writes a state its old store had written before. Its
// op ids and vector clock entries must not be taken for the old store's:
// before, they restarted at 1, the shared store's record (vector a:3)
// seemed to hold them already, and the acknowledged writes were dropped as
// already applied, then overwritten by the pull.
func TestSyncFreshStoreSameNodeID(t *testing.T) { forRemotes(t, testSyncFreshStoreSameNodeID) }

func testSyncFreshStoreSameNodeID(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	old := newSyncNode(t, "a", remote, "g")
	k := key("g", "k")
	for i := range 3 {
		old.put(k, fmt.Sprint("old", i))
	}
	old.pushAll()
	oldOrigin := remoteGet(t, remote, k).Origin
	closeStore(t, old.store)
	old.store = nil

	a := newSyncNode(t, "a", remote, "g") // a new, empty data dir
	if got := a.put(k, "new1").Origin; got == oldOrigin {
		t.Fatalf("the fresh store writes as %s, as the lost one did", got)
	}
	a.put(k, "new2")
	if rep := a.pushAll(); rep.Pushed != 2 || rep.AlreadyApplied != 0 {
		t.Fatalf("push %+v: the fresh store's writes were not pushed", rep)
	}
	a.pullAll()
	if r, l := remoteGet(t, remote, k), a.get(k); string(r.Value) != "new2" || string(l.Value) != "new2" || l.Pending {
		t.Fatalf("remote holds %q (v%d by %s), the node %q: want the fresh store's last write", r.Value, r.Version, r.Origin, l.Value)
	}
}

// copyMidway copies n's data dir (its store closed meanwhile) and returns
// the copy's directory.
func copyMidway(t *testing.T, n *syncNode) string {
	t.Helper()
	closeStore(t, n.store)
	copied := t.TempDir()
	copyDir(t, n.dir, copied)
	n.open("g")
	return copied
}

// openCopy opens a node on dir, a copy of node a's data dir, under a's
// node id; mod sets its options first.
func openCopy(t *testing.T, dir string, remote syncer.Remote, mod func(*syncNode)) *syncNode {
	t.Helper()
	c := &syncNode{t: t, dir: dir, node: "a", remote: remote}
	mod(c)
	c.open("g")
	t.Cleanup(func() { _ = c.store.Close(context.Background()) })
	return c
}

// TestSyncRestoredCopy: a's data dir is copied while a write of k is
// pending, and a goes on (it pushes that write and writes k again). The
// copy, restored with a new incarnation, pushes its pending write, which
// the shared store has already, and its own new write, which meets a's as
// a concurrent change, not as one the shared store already has.
func TestSyncRestoredCopy(t *testing.T) { forRemotes(t, testSyncRestoredCopy) }

func testSyncRestoredCopy(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	k := key("g", "k")
	a.put(k, "1")
	a.pushAll()
	a.put(k, "2")
	copied := copyMidway(t, a)
	a.pushAll()
	a.put(k, "3")
	a.pushAll()

	c := openCopy(t, copied, remote, func(c *syncNode) { c.newIncarnation = true })
	if c.store.Origin() == a.store.Origin() {
		t.Fatalf("the restored copy writes as %s, as a does", c.store.Origin())
	}
	nextMillisecond() // the copy's write is later: it wins
	c.put(k, "c3")
	rep := c.pushAll()
	if rep.AlreadyApplied != 1 || rep.Pushed != 1 || rep.Conflicts != 1 {
		t.Fatalf("the copy's push %+v: want 2 already applied, c3 pushed after a conflict", rep)
	}
	r := remoteGet(t, remote, k)
	if string(r.Value) != "c3" || r.Version != 4 || r.Origin != c.store.Origin() {
		t.Fatalf("remote holds %q v%d by %s, want the copy's c3 as version 4", r.Value, r.Version, r.Origin)
	}
	a.pullAll()
	c.pullAll()
	if msg := converged(t, remote, []*syncNode{a, c}, []Key{k}); msg != "" {
		t.Fatal(msg)
	}
}

// TestSyncCopyTakesNewOrigin: as TestSyncRestoredCopy, but the copy is not
// given a new incarnation before it runs. Its first pull meets a's later
// record of k, which counts more changes of the copy's origin than the
// copy made: the copy draws a new incarnation, and its next write, made
// before the copy pushed anything, meets a's as a concurrent change rather
// than as one the shared store has. The new origin outlives a restart.
func TestSyncCopyTakesNewOrigin(t *testing.T) { forRemotes(t, testSyncCopyTakesNewOrigin) }

func testSyncCopyTakesNewOrigin(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	k, other := key("g", "k"), key("g", "other")
	a.put(k, "1")
	a.pushAll()
	a.put(k, "2")
	copied := copyMidway(t, a)
	a.put(k, "3")
	a.put(other, "o1") // a state the copy has never held
	a.pushAll()

	c := openCopy(t, copied, remote, func(c *syncNode) { c.renews = true })
	c.pullAll()
	if c.store.Stats().OriginRenewals != 1 || c.store.Origin() == a.store.Origin() {
		t.Fatalf("after its pull the copy writes as %s (%d renewals); a writes as %s", c.store.Origin(),
			c.store.Stats().OriginRenewals, a.store.Origin())
	}
	renewed := c.store.Origin()
	nextMillisecond() // the copy's write is later: it wins
	c.put(k, "c3")
	if rep := c.pushAll(); rep.AlreadyApplied != 1 || rep.Pushed != 1 || rep.Conflicts != 1 {
		t.Fatalf("the copy's push %+v: want 2 already applied, c3 pushed after a conflict", rep)
	}
	if r := remoteGet(t, remote, k); string(r.Value) != "c3" || r.Origin != renewed {
		t.Fatalf("remote holds %q v%d by %s, want the copy's c3 by %s", r.Value, r.Version, r.Origin, renewed)
	}
	c.restart("g")
	if c.store.Origin() != renewed {
		t.Fatalf("after a restart the copy writes as %s, want %s", c.store.Origin(), renewed)
	}
	a.pullAll()
	c.pullAll()
	if msg := converged(t, remote, []*syncNode{a, c}, []Key{k, other}); msg != "" {
		t.Fatal(msg)
	}
}

// TestSyncCopyWriteParked: the copy writes k before it pulls anything, and
// a wrote k once after the copy too: the copy's change has the op id and the
// count of a's, and the shared store reports it already applied. The push
// finds it nowhere in the shared store (its record is a's change, with
// another change time): it parks the change rather than drop it, and the
// store draws a new incarnation. The copy's next write reaches the shared
// store. Before, the change was acked as applied, and lost.
func TestSyncCopyWriteParked(t *testing.T) { forRemotes(t, testSyncCopyWriteParked) }

func testSyncCopyWriteParked(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	k := key("g", "k")
	a.put(k, "1")
	a.pushAll()
	copied := copyMidway(t, a)
	a.put(k, "a2")
	a.pushAll()

	c := openCopy(t, copied, remote, func(c *syncNode) { c.renews = true })
	c2 := c.put(k, "c2")
	if r := remoteGet(t, remote, k); r.OpID != c2.OpID {
		t.Fatalf("the copy's change is op %s, a's %s: want the same op id", c2.OpID, r.OpID)
	}
	if rep := c.pushAll(); rep.Parked != 1 || rep.AlreadyApplied != 0 {
		t.Fatalf("the copy's push %+v: want c2 parked", rep)
	}
	var parked *ParkedError
	if err := c.store.WaitSynced(ctx, c2.Seq); !errors.As(err, &parked) ||
		!strings.Contains(err.Error(), "another store makes changes under this sidecar's origin") {
		t.Fatalf("WaitSynced of c2: %v", err)
	}
	if c.store.Stats().OriginRenewals != 1 || c.store.Origin() == a.store.Origin() {
		t.Fatalf("the copy writes as %s after the push (%d renewals); a as %s", c.store.Origin(),
			c.store.Stats().OriginRenewals, a.store.Origin())
	}
	c3 := c.put(k, "c3")
	if rep := c.pushAll(); rep.Pushed != 1 {
		t.Fatalf("the copy's next push %+v: want c3 pushed", rep)
	}
	if r := remoteGet(t, remote, k); string(r.Value) != "c3" || r.OpID != c3.OpID {
		t.Fatalf("remote holds %q (op %s), want the copy's c3 (op %s)", r.Value, r.OpID, c3.OpID)
	}
}

// TestLostChangesForgotten: the lost changes WaitSynced reports are
// forgotten with the rest of the call's (a batch gives way whole), and
// when too many wait unasked the oldest go first, never a fresh one.
func TestLostChangesForgotten(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("g", "k")
	for seq := uint64(1); seq <= 3; seq++ {
		s.noteLost(seq, lostChange{key: k, remoteVersion: 7})
	}
	var lost *ConflictLostError
	if err := s.WaitSynced(ctx, 1, 2, 3); !errors.As(err, &lost) || lost.Seq != 1 || lost.RemoteVersion != 7 {
		t.Fatalf("WaitSynced: %v", err)
	}
	if n := len(s.lost); n != 0 {
		t.Fatalf("%d lost changes still remembered after the batch's", n)
	}
	for seq := uint64(100); seq < 100+maxLost+10; seq++ {
		s.noteLost(seq, lostChange{key: k})
	}
	if _, ok := s.lost[100+maxLost+9]; !ok || len(s.lost) != maxLost {
		t.Fatalf("%d remembered, the newest kept: %v", len(s.lost), ok)
	}
	for seq := uint64(100); seq < 110; seq++ {
		if _, ok := s.lost[seq]; ok {
			t.Fatalf("seq %d kept, newer ones forgotten", seq)
		}
	}
}

// TestWaitSyncedNamesTheConflict: a batch gives way whole, and WaitSynced
// names the item that met a concurrent change, not the first one carried
// along.
func TestWaitSyncedNamesTheConflict(t *testing.T) {
	s := openMem(t)
	k1, k2 := key("g", "k1"), key("g", "k2")
	s.noteLost(1, lostChange{key: k1, remoteVersion: 3})
	s.noteLost(2, lostChange{key: k2, remoteVersion: 9, conflicted: true})
	s.noteLost(3, lostChange{key: k1, remoteVersion: 3})
	var lost *ConflictLostError
	if err := s.WaitSynced(context.Background(), 1, 2, 3); !errors.As(err, &lost) || lost.Seq != 2 || lost.Key != k2 || lost.RemoteVersion != 9 {
		t.Fatalf("WaitSynced: %v; want change 2 of %s, at version 9", err, k2)
	}
	if n := len(s.lost); n != 0 {
		t.Fatalf("%d lost changes still remembered after the batch's", n)
	}
}

// keyHookFetcher runs after once, after the first Fetch of key.
type keyHookFetcher struct {
	*syncer.Puller
	key   Key
	once  sync.Once
	after func()
}

func (h *keyHookFetcher) Fetch(ctx context.Context, k syncer.Key) (syncer.Record, syncer.ApplyStatus, error) {
	rec, st, err := h.Puller.Fetch(ctx, k)
	if Key(k) == h.key {
		h.once.Do(h.after)
	}
	return rec, st, err
}

// TestWriteStrongBatchNamesTheConflict: a strong batch whose second item
// meets a concurrent change between its read and its push gives way whole,
// and the error is that item's: its key, its expected version and the
// version that won. Before, it named the first item, with that item's
// versions.
func TestWriteStrongBatchNamesTheConflict(t *testing.T) {
	forRemotes(t, testWriteStrongBatchNamesTheConflict)
}

func testWriteStrongBatchNamesTheConflict(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	runPush(t, a)
	runPush(t, b)
	k1, k2 := key("g", "k1"), key("g", "k2")
	for _, k := range []Key{k1, k2} {
		if err := a.store.WaitSynced(ctx, a.put(k, "1").Seq); err != nil {
			t.Fatal(err)
		}
	}
	// b's change of k2 reaches the shared store after a read k2: a's
	// precondition holds, and its push meets the change.
	slip := keyHookFetcher{Puller: a.pull, key: k2, after: func() {
		r := b.put(k2, "b")
		if err := b.store.WaitSynced(ctx, r.Seq); err != nil {
			t.Error(err)
		}
	}}
	_, err := a.store.WriteStrong(ctx, &slip, []Write{
		{Key: k1, Value: []byte("a")},
		{Key: k2, Value: []byte("a"), IfVersion: u64(1)},
	})
	var vc *VersionConflictError
	if !errors.As(err, &vc) || vc.Key != k2 || vc.Expected != 1 || vc.Actual != 2 {
		t.Fatalf("strong batch that met a concurrent change of its second item: %v; want %s expected 1, actual 2", err, k2)
	}
	if r := remoteGet(t, remote, k1); r.Version != 1 {
		t.Fatalf("remote %s at version %d: the batch did not give way whole", k1, r.Version)
	}
}

// TestHistoryOfAChangeThatLost: a local change that lost its conflict in the
// shared store leaves its event (and a snapshot taken of it) behind at a
// version the winner made. Past-state queries and snapshots answer with the
// state's record, not with the change that gave way.
func TestHistoryOfAChangeThatLost(t *testing.T) { forRemotes(t, testHistoryOfAChangeThatLost) }

func testHistoryOfAChangeThatLost(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	k := key("g", "k")
	a.put(k, "1")
	a.pushAll()
	b.pullAll()
	a.put(k, "a2")
	a3 := a.put(k, "a3")
	if snap, taken, err := a.store.Snapshot(ctx, k); err != nil || !taken || string(snap.Value) != "a3" {
		t.Fatalf("snapshot of a3: %+v, %v, %v", snap, taken, err)
	}
	nextMillisecond() // b's write is later: it wins
	b.put(k, "b2")
	b.pushAll()
	if rep := a.pushAll(); rep.Superseded != 2 {
		t.Fatalf("a's push %+v: want its two writes superseded", rep)
	}
	if got := a.get(k); string(got.Value) != "b2" || got.Version != 2 {
		t.Fatalf("a holds %+v, want b's v2", got)
	}
	if p, err := a.store.StateAtVersion(ctx, k, 2); err != nil || string(p.Value) != "b2" {
		t.Fatalf("state at version 2: %+v, %v; want b2", p, err)
	}
	if p, err := a.store.StateAtVersion(ctx, k, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("state at version 3, which only the change that lost made: %+v, %v", p, err)
	}
	if p, err := a.store.StateAt(ctx, k, time.Now()); err != nil || string(p.Value) != "b2" {
		t.Fatalf("state now: %+v, %v; want b2", p, err)
	}
	if p, err := a.store.StateAt(ctx, k, time.Unix(0, a3.UpdatedAt)); err != nil || p.Version > 2 {
		t.Fatalf("state when a3 was written: %+v, %v; want a version of the state's history", p, err)
	}
	a.put(k, "a3-again") // version 3 once more, a new change
	a.pushAll()
	// The stale snapshot at 3 is no base to cut the log at: version 3's
	// event stays.
	if _, err := a.store.Cleanup(ctx, CleanupPolicy{Governor: "g", State: "k", MaxAge: time.Nanosecond}); err != nil {
		t.Fatal(err)
	}
	if evs, err := a.store.Events(ctx, k); err != nil || len(evs) == 0 || evs[len(evs)-1].ToVersion != 3 ||
		string(evs[len(evs)-1].Value) != "a3-again" {
		t.Fatalf("events after the cleanup: %+v, %v", evs, err)
	}
	if snap, taken, err := a.store.Snapshot(ctx, k); err != nil || !taken || string(snap.Value) != "a3-again" {
		t.Fatalf("snapshot of the new version 3: %+v, taken %v, %v; want a3-again", snap, taken, err)
	}
}

// TestReplayEndsAtANewerSnapshot: a version pulled without its event, and
// snapshotted here, is newer than every local event: the replay ends at
// that snapshot, the state's latest version, not at the last event.
func TestReplayEndsAtANewerSnapshot(t *testing.T) {
	ctx := context.Background()
	remote := memremote.New()
	a := newSyncNode(t, "a", remote, "g")
	b := newSyncNode(t, "b", remote, "g")
	k := key("g", "k")
	b.put(k, "b1")
	b.pushAll()
	a.pullAll()
	a.put(k, "a2")
	a.pushAll()
	b.pullAll() // no history: version 2 comes without its event
	if got := b.get(k); got.Version != 2 {
		t.Fatalf("b holds %+v", got)
	}
	if _, taken, err := b.store.Snapshot(ctx, k); err != nil || !taken {
		t.Fatalf("snapshot: %v, %v", taken, err)
	}
	page, err := b.store.Replay(ctx, ReplayQuery{Governor: "g", State: "k"})
	if err != nil || page.Next != "" || len(page.Items) == 0 {
		t.Fatalf("replay: %+v, %v", page, err)
	}
	last := page.Items[len(page.Items)-1]
	if last.Snapshot == nil || last.Snapshot.Version != 2 || string(last.Snapshot.Value) != "a2" {
		t.Fatalf("the replay ends with %+v, want the snapshot of version 2", last)
	}
}

// TestSubscribeByteBound: a subscription bounded in bytes ends as lagging
// when the changes it has not taken pass the bound, counts what was taken
// as freed, and always takes one change into an empty buffer, however
// large.
func TestSubscribeByteBound(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	big := []byte(strings.Repeat("v", 1000)) // about 1.3 KB buffered, with names and metadata
	put := func(state string) {
		t.Helper()
		if _, err := s.Write(ctx, Write{Key: key("g", state), Value: big}); err != nil {
			t.Fatal(err)
		}
	}
	next := func(sub *Subscription) FeedChange {
		t.Helper()
		select {
		case ch, ok := <-sub.C:
			if !ok {
				t.Fatalf("subscription ended: %v", sub.Err())
			}
			return ch
		case <-time.After(5 * time.Second):
			t.Fatal("no change delivered")
		}
		return FeedChange{}
	}

	probe, err := s.Write(ctx, Write{Key: key("g", "a0"), Value: big})
	if err != nil {
		t.Fatal(err)
	}
	probe.Value = big                 // a write's record leaves it out
	bound := 3*feedSize(&probe) + 100 // three changes like it fit, not four

	// Taking changes frees their bytes: eight changes through a bound of
	// three.
	sub, err := s.Subscribe("g", "", 100, bound)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		put(fmt.Sprint("a", i))
		if ch := next(sub); ch.Record.State != fmt.Sprint("a", i) {
			t.Fatalf("change %d: %s", i, ch.Record.State)
		}
	}
	// Not taking them: the fourth change passes the bound.
	for i := range 4 {
		put(fmt.Sprint("b", i))
	}
	waitFor(t, "the subscription ended", func() bool { return sub.Err() != nil })
	n := 0
	for range sub.C {
		n++
	}
	if n != 3 || !errors.Is(sub.Err(), ErrLagged) {
		t.Fatalf("%d changes buffered, err %v: want 3 and ErrLagged", n, sub.Err())
	}

	// One change larger than the bound goes into an empty buffer.
	small, err := s.Subscribe("g", "", 100, 500)
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	put("c")
	if ch := next(small); ch.Record.State != "c" || small.Err() != nil {
		t.Fatalf("large change: %s, %v", ch.Record.State, small.Err())
	}
}
