package localcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// Strong reads and writes answer with the shared store's committed records
// only: against the in-memory remote and Firestore on the emulator.

// runPush runs n's push loop until the test ends.
func runPush(t *testing.T, n *syncNode) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.push.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// readOne is ReadStrong of one key: its record, or nil.
func readOne(t *testing.T, n *syncNode, k Key) *Record {
	t.Helper()
	recs, _, err := n.store.ReadStrong(context.Background(), n.pull, []Key{k})
	if err != nil {
		t.Fatalf("%s: strong read %s: %v", n.node, k, err)
	}
	return recs[0]
}

func TestReadStrong(t *testing.T) { forRemotes(t, testReadStrong) }

func testReadStrong(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote)
	b := newSyncNode(t, "b", remote)
	runPush(t, b)
	k, never := key("g", "k"), key("g", "never")

	// a's change is not pushed yet (its push loop is not running): a's
	// strong read waits for the push instead of answering with it, and b's
	// does not see it.
	a.put(k, "a1")
	if got := readOne(t, b, k); got != nil {
		t.Fatalf("b reads a's unpushed change: %s", desc(got))
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	recs, _, err := a.store.ReadStrong(short, a.pull, []Key{k})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syncer.ErrUnavailable) || recs != nil {
		t.Fatalf("strong read of an unpushed change: %v, %v; want the deadline of the wait for the push", recs, err)
	}
	// The shared store cannot be reached: it fails at once, without
	// waiting for the push (ctx has no deadline).
	off := hookFetcher{Puller: syncer.NewPuller(a.store, unreachable{}, syncer.PullOptions{})}
	if _, _, err := a.store.ReadStrong(ctx, off, []Key{k}); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("offline strong read: %v", err)
	}

	// Once the push loop runs, a reads its own change, as committed.
	runPush(t, a)
	got := readOne(t, a, k)
	if got == nil || string(got.Value) != "a1" || got.Version != 1 || got.Pending || got.SyncedVersion != 1 || got.Origin != a.store.Origin() {
		t.Fatalf("a's strong read after the push: %s", desc(got))
	}

	// b deletes it: a's strong read finds no record and its copy is
	// repaired (a does not pull).
	if _, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: k, Delete: true, IfVersion: u64(1)}}); err != nil {
		t.Fatal(err)
	}
	recs, repaired, err := a.store.ReadStrong(ctx, a.pull, []Key{k, never, k})
	if err != nil || len(recs) != 3 || slices.ContainsFunc(recs, func(r *Record) bool { return r != nil }) || repaired != 1 {
		t.Fatalf("strong read of a deleted and a missing state: %v, %d repaired, %v", recs, repaired, err)
	}
	if _, err := a.store.Get(ctx, k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a's copy after the strong read: %v", err)
	}

	// Keys in order, one twice: two records of their own.
	mustSynced(t, b, b.put(never, "n1"))
	recs, _, err = a.store.ReadStrong(ctx, a.pull, []Key{never, k, never})
	if err != nil || recs[0] == nil || recs[1] != nil || recs[2] == nil || recs[0] == recs[2] || string(recs[2].Value) != "n1" {
		t.Fatalf("strong read of [never, k, never]: %v, %v", recs, err)
	}
	if _, _, err := a.store.ReadStrong(ctx, a.pull, []Key{{Governor: "g", State: ""}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("strong read of an invalid key: %v", err)
	}
}

// desc describes a record for a test failure (nil: none).
func desc(r *Record) string {
	if r == nil {
		return "no record"
	}
	return fmt.Sprintf("%s %q v%d deleted=%v pending=%v synced_version=%d origin=%s", r.Key, r.Value, r.Version, r.Deleted, r.Pending, r.SyncedVersion, r.Origin)
}

func mustSynced(t *testing.T, n *syncNode, rec Record) {
	t.Helper()
	if err := n.store.WaitSynced(context.Background(), rec.Seq); err != nil {
		t.Fatalf("%s: wait synced: %v", n.node, err)
	}
}

// rejectKey is a remote that rejects every commit of bad for good while on.
type rejectKey struct {
	syncer.Remote
	bad syncer.Key
	on  atomic.Bool
}

func (r *rejectKey) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	if r.on.Load() && slices.ContainsFunc(b.Changes, func(c syncer.Change) bool { return c.Key == r.bad }) {
		return nil, syncer.Errorf("commit", r.bad, syncer.ErrPermanent, "denied for this key")
	}
	return r.Remote.Commit(ctx, b)
}

func TestStrongParked(t *testing.T) { forRemotes(t, testStrongParked) }

// testStrongParked: a local change the shared store rejected for good is
// never a strong read's answer, and a strong write checks its precondition
// against the shared store's record, not against it.
func testStrongParked(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	k := key("g", "k")
	remote := &rejectKey{Remote: newRemote(), bad: syncer.Key(k)}
	a := newSyncNode(t, "a", remote)
	runPush(t, a)
	mustSynced(t, a, a.put(k, "v1"))
	remote.on.Store(true)
	rec := a.put(k, "rejected")
	var pe *ParkedError
	if err := a.store.WaitSynced(ctx, rec.Seq); !errors.As(err, &pe) {
		t.Fatalf("the rejected change: %v", err)
	}
	remote.on.Store(false)
	if got := a.get(k); string(got.Value) != "rejected" || got.Pending || got.Version != 2 {
		t.Fatalf("local record after the park: %s", desc(&got))
	}

	if got := readOne(t, a, k); got == nil || string(got.Value) != "v1" || got.Version != 1 {
		t.Fatalf("strong read of a parked key: %s, want the shared store's v1", desc(got))
	}
	// The parked version is not the shared store's: a conflict naming
	// the shared store's version, and the local copy is its record again.
	_, err := a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("on-parked"), IfVersion: u64(2)}})
	wantConflict(t, err, 2, 1)
	if got := a.get(k); string(got.Value) != "v1" || got.Version != 1 {
		t.Fatalf("local record after the strong write: %s", desc(&got))
	}
	recs, err := a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("v2"), IfVersion: u64(1)}})
	if err != nil || recs[0].Version != 2 {
		t.Fatalf("strong write on the shared store's version: %+v, %v", recs, err)
	}
	if r := remoteGet(t, remote, k); string(r.Value) != "v2" || r.Version != 2 {
		t.Fatalf("remote %+v", r)
	}
	if failed, err := a.store.Failed(ctx, 0, 0); err != nil || len(failed) != 1 || failed[0].Seq != rec.Seq {
		t.Fatalf("failed list %+v, %v", failed, err)
	}
}

func TestWriteStrongLostToDelete(t *testing.T) { forRemotes(t, testWriteStrongLostToDelete) }

// testWriteStrongLostToDelete: a strong write that loses to a delete
// reports actual 0, as a precondition on a deleted state does.
func testWriteStrongLostToDelete(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote)
	b := newSyncNode(t, "b", remote)
	runPush(t, a)
	runPush(t, b)
	k := key("g", "k")
	mustSynced(t, a, a.put(k, "v1"))
	var once sync.Once
	slip := hookFetcher{Puller: a.pull, after: func() {
		once.Do(func() {
			if _, err := b.store.WriteStrong(ctx, b.pull, []Write{{Key: k, Delete: true}}); err != nil {
				t.Error(err)
			}
		})
	}}
	_, err := a.store.WriteStrong(ctx, slip, []Write{{Key: k, Value: []byte("a2"), IfVersion: u64(1)}})
	wantConflict(t, err, 1, 0)
	// Retrying with if_version = actual succeeds (a put after a delete
	// continues the versions).
	recs, err := a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("a3"), IfVersion: u64(0)}})
	if err != nil || recs[0].Version != 3 {
		t.Fatalf("strong put with if_version 0 after the delete: %+v, %v", recs, err)
	}
}

func TestWriteStrongPendingLocal(t *testing.T) { forRemotes(t, testWriteStrongPendingLocal) }

// testWriteStrongPendingLocal: a strong write's precondition is never
// checked against a local change the shared store does not have yet, an
// async one (of a state the shared store never had) or another strong
// write's: it waits for the push (here, while the push loop is stopped,
// until its deadline: Unavailable, nothing written), then is checked
// against the pushed change.
func testWriteStrongPendingLocal(t *testing.T, newRemote func() syncer.Remote) {
	ctx := context.Background()
	a := newSyncNode(t, "a", newRemote())
	k, s := key("g", "k"), key("g", "s")
	a.put(k, "async")
	strongIn := func(d time.Duration, w Write) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		_, err := a.store.WriteStrong(ctx, a.pull, []Write{w})
		return err
	}
	if err := strongIn(time.Second, Write{Key: k, Value: []byte("strong"), IfAbsent: true}); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("strong write on an unpushed async change: %v, want Unavailable", err)
	}
	if a.store.Depth() != 1 {
		t.Fatalf("journal depth %d: the strong write was journaled", a.store.Depth())
	}
	// A strong write stored, not pushed yet: another one on the same
	// state waits for it too.
	first := make(chan error, 1)
	go func() {
		_, err := a.store.WriteStrong(ctx, a.pull, []Write{{Key: s, Value: []byte("first"), IfVersion: u64(0)}})
		first <- err
	}()
	waitFor(t, "the first strong write journaled", func() bool { return a.store.Depth() == 2 })
	if err := strongIn(time.Second, Write{Key: s, Value: []byte("second"), IfVersion: u64(0)}); !errors.Is(err, syncer.ErrUnavailable) {
		t.Fatalf("strong write on an unpushed strong write: %v, want Unavailable", err)
	}

	runPush(t, a)
	if err := <-first; err != nil {
		t.Fatalf("first strong write: %v", err)
	}
	wantConflict(t, strongIn(time.Minute, Write{Key: k, Value: []byte("strong"), IfAbsent: true}), 0, 1)
	wantConflict(t, strongIn(time.Minute, Write{Key: s, Value: []byte("second"), IfVersion: u64(0)}), 0, 1)
	if got := readOne(t, a, k); got == nil || string(got.Value) != "async" {
		t.Fatalf("shared store after the strong write: %s", desc(got))
	}
}

func TestStrongCounter(t *testing.T) {
	forRemotes(t, func(t *testing.T, newRemote func() syncer.Remote) {
		perWorker := 20
		if t.Name() == "TestStrongCounter/firestore" {
			perWorker = 4 // the emulator takes tens of milliseconds a round trip
		}
		testStrongCounter(t, newRemote(), perWorker)
	})
}

// testStrongCounter: workers on two nodes increment one counter with strong
// reads and compare-and-set strong writes, retrying conflicts. No increment
// is lost, each success has a version of its own, and strong reads never
// see a version go back.
func testStrongCounter(t *testing.T, remote syncer.Remote, perWorker int) {
	const workersPerNode = 4
	ctx := context.Background()
	nodes := []*syncNode{newSyncNode(t, "a", remote), newSyncNode(t, "b", remote)}
	for _, n := range nodes {
		runPush(t, n)
	}
	k := key("g", "counter")
	var (
		mu       sync.Mutex
		versions []uint64
		wg       sync.WaitGroup
	)
	for _, n := range nodes {
		for range workersPerNode {
			wg.Go(func() {
				var seen uint64 // the highest version this worker read
				for done := 0; done < perWorker; {
					recs, _, err := n.store.ReadStrong(ctx, n.pull, []Key{k})
					if err != nil {
						t.Errorf("%s: strong read: %v", n.node, err)
						return
					}
					var val, version uint64
					if r := recs[0]; r != nil {
						if val, err = strconv.ParseUint(string(r.Value), 10, 64); err != nil {
							t.Errorf("%s: value %q: %v", n.node, r.Value, err)
							return
						}
						version = r.Version
					}
					if version < seen {
						t.Errorf("%s: strong read of version %d after %d", n.node, version, seen)
						return
					}
					seen = version
					w := Write{Key: k, Value: []byte(strconv.FormatUint(val+1, 10)), IfVersion: u64(version)}
					wrote, err := n.store.WriteStrong(ctx, n.pull, []Write{w})
					switch {
					case err == nil:
						mu.Lock()
						versions = append(versions, wrote[0].Version)
						mu.Unlock()
						done++
					case errors.Is(err, ErrVersionConflict), errors.Is(err, syncer.ErrUnavailable):
						// Lost to another worker, or kept behind by
						// them: read again.
					default:
						t.Errorf("%s: strong write: %v", n.node, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	total := uint64(len(nodes) * workersPerNode * perWorker)
	slices.Sort(versions)
	for i, v := range versions {
		if v != uint64(i+1) {
			t.Fatalf("versions of the successful writes %v: want 1..%d, each once", versions, total)
		}
	}
	r := remoteGet(t, remote, k)
	if string(r.Value) != strconv.FormatUint(total, 10) || r.Version != total {
		t.Fatalf("counter in the shared store: %q v%d, want %d", r.Value, r.Version, total)
	}
}

// TestReadStrongOwnWrites: many goroutines of one node write their own
// state asynchronously and read it strongly at once: each read returns that
// write (pushed first), never an older one.
func TestReadStrongOwnWrites(t *testing.T) {
	forRemotes(t, func(t *testing.T, newRemote func() syncer.Remote) {
		workers, rounds := 16, 15
		if t.Name() == "TestReadStrongOwnWrites/firestore" {
			workers, rounds = 6, 4
		}
		ctx := context.Background()
		a := newSyncNode(t, "a", newRemote())
		runPush(t, a)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				k := key("g", fmt.Sprintf("w%d", w))
				for i := range rounds {
					want := fmt.Sprintf("%d-%d", w, i)
					if _, err := a.store.Write(ctx, Write{Key: k, Value: []byte(want)}); err != nil {
						t.Error(err)
						return
					}
					recs, _, err := a.store.ReadStrong(ctx, a.pull, []Key{k})
					if err != nil {
						t.Errorf("strong read of %s: %v", k, err)
						return
					}
					if r := recs[0]; r == nil || string(r.Value) != want || r.Version != uint64(i+1) || r.Pending {
						t.Errorf("strong read of %s after writing %q: %s", k, want, desc(r))
						return
					}
				}
			})
		}
		wg.Wait()
	})
}

// stallFetcher is a shared store that never answers: each Fetch waits for
// its context.
type stallFetcher struct{}

func (stallFetcher) Fetch(ctx context.Context, _ syncer.Key) (syncer.Record, syncer.ApplyStatus, error) {
	<-ctx.Done()
	return syncer.Record{}, 0, ctx.Err()
}

// TestStrongTimeoutBeforeWriting: a strong write or transaction whose time
// runs out while it reads the shared store, before anything is stored,
// says so (ErrNotWritten): a retry cannot apply it twice. Before, it could
// not be told from one that timed out waiting for its push.
func TestStrongTimeoutBeforeWriting(t *testing.T) {
	s := openMem(t)
	k, c := key("g", "k"), key("g", "c")
	for name, run := range map[string]func(context.Context) error{
		"write": func(ctx context.Context) error {
			_, err := s.WriteStrong(ctx, stallFetcher{}, []Write{{Key: k, Value: []byte("v")}})
			return err
		},
		"transaction": func(ctx context.Context) error {
			_, _, err := s.WriteTxnStrong(ctx, stallFetcher{}, Txn{Writes: []Write{{Key: k, Value: []byte("v")}},
				Checks: []TxnCheck{{Key: c, IfVersion: u64(1)}}}, 3)
			return err
		},
		"checks only": func(ctx context.Context) error {
			_, _, err := s.WriteTxnStrong(ctx, stallFetcher{}, Txn{Checks: []TxnCheck{{Key: c, IfVersion: u64(1)}}}, 3)
			return err
		},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := run(ctx)
		cancel()
		if !errors.Is(err, ErrNotWritten) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s that timed out reading the shared store: %v; want ErrNotWritten and the deadline", name, err)
		}
	}
	if d := s.Depth(); d != 0 {
		t.Fatalf("journal depth %d after writes that wrote nothing", d)
	}
}
