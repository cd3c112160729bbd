package sockapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// fakeSync is a shared store over a fakeStore: Fetch applies its record
// to the local store as the syncer's Puller does (a newer version, unless a
// local change is pending).
type fakeSync struct {
	store   *fakeStore
	fetches atomic.Int64
	stalled atomic.Int64 // ReadStrong calls that stalled

	mu     sync.Mutex
	remote map[localcache.Key]localcache.Record
	down   bool
	fresh  map[string]time.Time
	lostTo uint64 // WriteStrong: a concurrent change made this version first
	stall  bool   // ReadStrong: the local changes are never pushed (it waits for ctx)
	// bad: the shared store's documents of these keys do not decode
	// (Fetch and WriteStrong fail); known: Undecodable says so.
	bad   map[localcache.Key]bool
	known bool
}

func newFakeSync(store *fakeStore) *fakeSync {
	return &fakeSync{store: store, remote: make(map[localcache.Key]localcache.Record), fresh: make(map[string]time.Time)}
}

func (s *fakeSync) Fetch(ctx context.Context, k localcache.Key) error {
	s.fetches.Add(1)
	s.mu.Lock()
	rec, ok := s.remote[k]
	down, bad := s.down, s.bad[k]
	s.mu.Unlock()
	switch {
	case down:
		return fmt.Errorf("fetch %s: %w", k, ErrRemoteUnavailable)
	case bad:
		return fmt.Errorf("fetch %s: %w: document governors/%s/states/%s is not a state record: version: not an integer",
			k, ErrRemoteUndecodable, k.Governor, k.State)
	case !ok:
		return fmt.Errorf("fetch %s: %w", k, ErrRemoteNotFound)
	}
	f := s.store
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur, ok := f.recs[k]; !f.pending[k] && (!ok || rec.Version > cur.Version) {
		f.recs[k] = rec
	}
	return nil
}

// WriteStrong applies ws to the fake store unless the shared store is down
// or holds a version that conflicts (lostTo, set by the test).
func (s *fakeSync) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	s.mu.Lock()
	down, lostTo := s.down, s.lostTo
	var bad []localcache.Key
	for _, w := range ws {
		if s.bad[w.Key] {
			bad = append(bad, w.Key)
		}
	}
	s.mu.Unlock()
	if len(bad) > 0 {
		return nil, fmt.Errorf("fetch %s: %w: document governors/%s/states/%s is not a state record: version: not an integer",
			bad[0], ErrRemoteUndecodable, bad[0].Governor, bad[0].State)
	}
	switch {
	case down:
		return nil, fmt.Errorf("fetch: %w", ErrRemoteUnavailable)
	case lostTo > 0:
		return nil, &localcache.VersionConflictError{Key: ws[0].Key, Expected: lostTo - 1, Actual: lostTo}
	}
	return s.store.WriteBatch(ctx, ws)
}

// ReadStrong fetches each key as Fetch does and returns the shared store's
// records, never the local ones; repaired counts the fetches that changed
// the local version. With stall set it waits for ctx instead.
func (s *fakeSync) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	s.mu.Lock()
	stall := s.stall
	s.mu.Unlock()
	if stall {
		s.stalled.Add(1)
		<-ctx.Done()
		return nil, 0, fmt.Errorf("local changes not pushed: %w", ctx.Err())
	}
	localVersion := func(k localcache.Key) uint64 {
		s.store.mu.Lock()
		defer s.store.mu.Unlock()
		return s.store.recs[k].Version
	}
	recs := make([]*localcache.Record, len(keys))
	repaired := 0
	for i, k := range keys {
		before := localVersion(k)
		err := s.Fetch(ctx, k)
		if errors.Is(err, ErrRemoteNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if localVersion(k) != before {
			repaired++
		}
		s.mu.Lock()
		rec := s.remote[k]
		s.mu.Unlock()
		if !rec.Deleted {
			recs[i] = &rec
		}
	}
	return recs, repaired, nil
}

func (s *fakeSync) FreshAt(governor string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.fresh[governor]
	return t, ok
}

// Undecodable implements SyncUndecodable.
func (s *fakeSync) Undecodable(k localcache.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.known && s.bad[k]
}

// setBad makes the shared store's documents of keys undecodable; known
// says whether Undecodable reports them.
func (s *fakeSync) setBad(known bool, keys ...localcache.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.known = known
	s.bad = make(map[localcache.Key]bool)
	for _, k := range keys {
		s.bad[k] = true
	}
}

// setRemote stores a record in the shared store only.
func (s *fakeSync) setRemote(t *testing.T, gov, state string, value any, version uint64) {
	k := localcache.Key{Governor: gov, State: state}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remote[k] = localcache.Record{Key: k, Value: mustMarshal(t, value), Version: version, UpdatedAt: 1,
		Origin: "node-remote", SyncedVersion: version, SyncedAt: 1_700_000_000_000_000_000}
}

func (s *fakeSync) set(down bool, fresh map[string]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	s.fresh = fresh
}

func getReq(gov, state, level string, staleMS uint64) wire.Request {
	return wire.Request{Op: wire.OpGet, Governor: gov, State: state, Consistency: level, MaxStalenessMS: staleMS}
}

// TestReadConsistency covers the read levels against a fake shared store:
// when the shared store is asked, what the reply says about it
// (from_cache, stale, synced_at), and what happens when it is down.
func TestReadConsistency(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	store.put("g", "local", "l1")
	sy.setRemote(t, "g", "local", "l2", 2) // the shared store is ahead
	sy.setRemote(t, "g", "remote", "r1", 1)
	now := map[string]time.Time{"g": time.Now().Add(time.Hour)} // fresh whatever the clock says
	old := map[string]time.Time{"g": time.Now().Add(-time.Hour)}

	value := func(r wire.Response) string {
		t.Helper()
		if r.Error != nil {
			t.Fatalf("unexpected error %v", r.Error)
		}
		var s string
		if err := wire.Unmarshal(r.Record.Value, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	fetches := func(want int64, what string) {
		t.Helper()
		if got := sy.fetches.Swap(0); got != want {
			t.Fatalf("%s: %d fetches, want %d", what, got, want)
		}
	}

	// local: a hit never asks.
	sy.set(false, old)
	r := c.call(getReq("g", "local", "", 0))
	if value(r) != "l1" || !r.Record.FromCache || r.Record.Stale {
		t.Fatalf("local hit: %+v", r.Record)
	}
	fetches(0, "local hit")

	// local: a miss reads through unless the governor is known fresh.
	sy.set(false, now)
	expectError(t, c.call(getReq("g", "remote", "local", 0)), wire.CodeNotFound, "")
	fetches(0, "local miss, fresh governor")
	sy.set(false, old)
	r = c.call(getReq("g", "remote", "", 0))
	if value(r) != "r1" || r.Record.FromCache || r.Record.Stale || r.Record.SyncedAt == 0 {
		t.Fatalf("read-through: %+v", r.Record)
	}
	fetches(1, "read-through")
	r = c.call(getReq("g", "nowhere", "", 0))
	expectError(t, r, wire.CodeNotFound, "")
	fetches(1, "read-through of a state nobody has")
	sy.set(true, old)
	r = c.call(getReq("g", "nowhere", "", 0))
	expectError(t, r, wire.CodeNotFound, "")
	if !strings.Contains(r.Error.Message, "shared store could not be asked") {
		t.Fatalf("message does not say the shared store was not asked: %q", r.Error.Message)
	}
	fetches(1, "read-through, offline")

	// bounded: fresh enough is local, else read-repair; offline is stale.
	sy.set(false, now)
	r = c.call(getReq("g", "local", "bounded", 1000))
	if value(r) != "l1" || !r.Record.FromCache || r.Record.Stale {
		t.Fatalf("bounded, fresh: %+v", r.Record)
	}
	fetches(0, "bounded, fresh")
	sy.set(true, old)
	r = c.call(getReq("g", "local", "bounded", 1000))
	if value(r) != "l1" || !r.Record.FromCache || !r.Record.Stale {
		t.Fatalf("bounded, offline: want the local record marked stale, got %+v", r.Record)
	}
	// The shared store was found unreachable just before: not asked again.
	fetches(0, "bounded, offline")
	online := func(fresh map[string]time.Time) {
		sy.set(false, fresh)
		ts.srv.offlineUntil.Store(0) // as if offlineHold had passed
	}
	online(old)
	r = c.call(getReq("g", "local", "bounded", 1000))
	if value(r) != "l2" || r.Record.FromCache || r.Record.Stale || r.Record.Version != 2 {
		t.Fatalf("bounded, repaired: %+v", r.Record)
	}
	fetches(1, "bounded, repaired")

	// strong: always asks; offline is Unavailable.
	sy.setRemote(t, "g", "local", "l3", 3)
	sy.set(false, now)
	r = c.call(getReq("g", "local", "strong", 0))
	if value(r) != "l3" || r.Record.FromCache || r.Record.Stale {
		t.Fatalf("strong: %+v", r.Record)
	}
	fetches(1, "strong")
	sy.set(true, now)
	r = c.call(getReq("g", "local", "strong", 0))
	expectError(t, r, wire.CodeUnavailable, "")
	if !r.Error.Retryable || r.Error.State != "local" {
		t.Fatalf("strong offline: %+v", r.Error)
	}

	// batch_get: per key.
	sy.setRemote(t, "g", "remote", "r2", 2)
	sy.set(true, old)
	r = c.call(wire.Request{Op: wire.OpBatchGet, Consistency: "bounded", MaxStalenessMS: 10,
		Keys: []wire.Key{{Governor: "g", State: "local"}, {Governor: "g", State: "remote"}, {Governor: "g", State: "local"}}})
	if r.Error != nil || len(r.Records) != 3 || !r.Records[0].Stale || !r.Records[1].Stale || r.Records[1].Version != 1 {
		t.Fatalf("batch_get bounded offline: %+v", r)
	}
	online(old)
	r = c.call(wire.Request{Op: wire.OpBatchGet, Consistency: "strong",
		Keys: []wire.Key{{Governor: "g", State: "remote"}, {Governor: "g", State: "nowhere"}}})
	if r.Error != nil || len(r.Records) != 2 || r.Records[0].Version != 2 || r.Records[0].FromCache || r.Records[1] != nil {
		t.Fatalf("batch_get strong: %+v", r)
	}
	sy.set(true, old)
	r = c.call(wire.Request{Op: wire.OpBatchGet, Consistency: "strong", Keys: []wire.Key{{Governor: "g", State: "remote"}}})
	expectError(t, r, wire.CodeUnavailable, "")
	// A local batch_get reads its misses through.
	sy.setRemote(t, "h", "x", "hx", 1)
	online(nil)
	sy.fetches.Store(0)
	r = c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "local"}, {Governor: "h", State: "x"}}})
	if r.Error != nil || len(r.Records) != 2 || !r.Records[0].FromCache || r.Records[1] == nil || r.Records[1].FromCache {
		t.Fatalf("batch_get read-through: %+v", r)
	}
	fetches(1, "batch_get read-through")

	// list stays local.
	expectError(t, c.call(wire.Request{Op: wire.OpList, Governor: "g", Consistency: "strong"}), wire.CodeInvalidArgument, "consistency")
	if v := store.violationsList(); len(v) > 0 {
		t.Fatal(v)
	}
}

// TestSyncWrites: a sync write is answered once the shared store has it;
// a parked one and one that times out get errors that say the change is
// applied locally and must not be retried.
func TestSyncWrites(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	val := mustMarshal(t, "v")
	k := localcache.Key{Governor: "g", State: "s"}

	c.send(&wire.Request{ID: 100, Op: wire.OpPut, Governor: "g", State: "s", Value: val, Consistency: "sync"})
	// Pipelined behind it, an async write of the same state is applied
	// and answered while the sync write still waits.
	c.send(&wire.Request{ID: 101, Op: wire.OpPut, Governor: "g", State: "s", Value: val})
	if r := c.recv(); r.ID != 101 || r.Error != nil || r.Record.Version != 2 {
		t.Fatalf("want the async write's reply first, got %+v", r)
	}
	waitFor(t, "both writes applied", func() bool { return store.Stats().JournalDepth == 2 })
	store.settle(k, "", 42)
	r := c.recv()
	if r.ID != 100 || r.Error != nil || r.Record.Version != 1 || r.Record.Pending {
		t.Fatalf("sync put: %+v", r)
	}

	// Parked.
	c.send(&wire.Request{ID: 102, Op: wire.OpDelete, Governor: "g", State: "s", Consistency: "sync"})
	waitFor(t, "delete applied", func() bool { return store.Stats().JournalDepth == 1 })
	store.settle(k, "permission denied by the shared store", 0)
	r = c.recv()
	expectError(t, r, wire.CodeUnavailable, "")
	if r.ID != 102 || r.Error.Retryable || !strings.Contains(r.Error.Message, "permission denied by the shared store") ||
		!strings.Contains(r.Error.Message, "applied locally") || r.Error.State != "s" {
		t.Fatalf("parked: %+v", r.Error)
	}

	// Timeout.
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "t", Value: val, Consistency: "sync", TimeoutMS: 30})
	expectError(t, r, wire.CodeTimeout, "")
	if r.Error.Retryable || !strings.Contains(r.Error.Message, "durable locally") {
		t.Fatalf("timeout: %+v", r.Error)
	}
	if _, err := store.Get(context.Background(), localcache.Key{Governor: "g", State: "t"}); err != nil {
		t.Fatalf("the timed-out write is not applied locally: %v", err)
	}

	// batch_put waits for every entry.
	c.send(&wire.Request{ID: 103, Op: wire.OpBatchPut, Consistency: "sync",
		Items: []wire.Item{{Governor: "g", State: "b1", Value: val}, {Governor: "g", State: "b2", Value: val}}})
	waitFor(t, "batch applied", func() bool { return store.Stats().JournalDepth == 3 })
	store.settle(localcache.Key{Governor: "g", State: "b1"}, "", 7)
	if r, err := c.tryRecvWithin(50 * time.Millisecond); err == nil {
		t.Fatalf("batch answered before all of it synced: %+v", r)
	}
	store.settle(localcache.Key{Governor: "g", State: "b2"}, "", 8)
	r = c.recv()
	if r.ID != 103 || r.Error != nil || len(r.Records) != 2 || r.Records[0].SyncedAt != 7 || r.Records[1].SyncedAt != 8 {
		t.Fatalf("sync batch_put: %+v", r)
	}

	// Strong writes go through the shared store's compare-and-set.
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "strong", Value: val, Consistency: "strong"})
	if r.Error != nil || r.Record.Version != 1 || r.Record.Pending {
		t.Fatalf("strong put: %+v", r)
	}
	r = c.call(wire.Request{Op: wire.OpBatchPut, Consistency: "strong",
		Items: []wire.Item{{Governor: "g", State: "sb1", Value: val}, {Governor: "g", State: "sb2", Value: val}}})
	if r.Error != nil || len(r.Records) != 2 || r.Records[1].Pending {
		t.Fatalf("strong batch_put: %+v", r)
	}
	sy.mu.Lock()
	sy.lostTo = 5
	sy.mu.Unlock()
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "strong", Value: val, Consistency: "strong", IfVersion: u64(4)})
	expectError(t, r, wire.CodeVersionConflict, "")
	if *r.Error.Expected != 4 || *r.Error.Actual != 5 || r.Error.State != "strong" {
		t.Fatalf("strong put that lost: %+v", r.Error)
	}
	sy.mu.Lock()
	sy.lostTo = 0
	sy.mu.Unlock()
	sy.set(true, nil)
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "strong", Value: val, Consistency: "strong"})
	expectError(t, r, wire.CodeUnavailable, "")
	if !r.Error.Retryable || !strings.Contains(r.Error.Message, "nothing was written") {
		t.Fatalf("strong put offline: %+v", r.Error)
	}
}

// tryRecvWithin reads one frame, waiting at most d.
func (c *client) tryRecvWithin(d time.Duration) (wire.Response, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	body, err := wire.ReadFrame(c.br, nil, 64<<20)
	if err != nil {
		return wire.Response{}, err
	}
	var r wire.Response
	err = c.dec.Decode(body, &r)
	return r, err
}

// TestPendingAndFailed: pending reports the journal, failed pages through
// the parked entries.
func TestPendingAndFailed(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	c := ts.hello()
	r := c.call(wire.Request{Op: wire.OpPending})
	if r.Error != nil || r.Pending == nil || r.Pending.Depth != 0 || r.Pending.SharedStore || r.Pending.OldestSeq != 0 {
		t.Fatalf("empty pending: %+v", r)
	}
	val := mustMarshal(t, 1)
	for _, s := range []string{"a", "b", "c", "d"} {
		if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: s, Value: val}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	store.settle(localcache.Key{Governor: "g", State: "a"}, "", 1)
	store.settle(localcache.Key{Governor: "g", State: "b"}, "too big for the shared store", 0)
	store.settle(localcache.Key{Governor: "g", State: "d"}, "rejected", 0)
	r = c.call(wire.Request{Op: wire.OpPending})
	if p := r.Pending; r.Error != nil || p == nil || p.Depth != 1 || p.Parked != 2 || p.OldestSeq != 3 || p.OldestTime == 0 {
		t.Fatalf("pending: %+v %+v", r.Error, r.Pending)
	}
	if es := r.Pending.Entries; len(es) != 1 || es[0].Seq != 3 || es[0].State != "c" || es[0].Version != 1 || es[0].OpID == "" || r.Pending.Next != 0 {
		t.Fatalf("pending receipts: %+v", es)
	}
	// Receipts page: one per page.
	for _, s := range []string{"e", "f"} {
		if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: s, Value: val}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	var states []string
	for after := uint64(0); ; {
		r = c.call(wire.Request{Op: wire.OpPending, Limit: 1, After: after})
		if r.Error != nil || len(r.Pending.Entries) != 1 {
			t.Fatalf("pending page after %d: %+v", after, r)
		}
		states = append(states, r.Pending.Entries[0].State)
		if after = r.Pending.Next; after == 0 {
			break
		}
	}
	if strings.Join(states, ",") != "c,e,f" {
		t.Fatalf("pending pages: %v", states)
	}
	if r := c.call(wire.Request{Op: wire.OpPending, Limit: -1}); r.Error == nil || r.Error.Field != "limit" {
		t.Fatalf("negative limit: %+v", r)
	}
	r = c.call(wire.Request{Op: wire.OpFailed, Limit: 1})
	if r.Error != nil || len(r.Failed) != 1 || r.Failed[0].State != "b" || r.Failed[0].Reason != "too big for the shared store" || r.Next != 2 {
		t.Fatalf("failed page 1: %+v", r)
	}
	r = c.call(wire.Request{Op: wire.OpFailed, After: r.Next})
	if r.Error != nil || len(r.Failed) != 1 || r.Failed[0].State != "d" || r.Failed[0].Seq != 4 || r.Next != 0 {
		t.Fatalf("failed page 2: %+v", r)
	}
}

// TestSyncWriteAtShutdown: a graceful shutdown does not wait out the sync
// writes in flight: they are answered at once, saying the change is durable
// locally and will sync later.
func TestSyncWriteAtShutdown(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{Sync: newFakeSync(store), SyncTimeout: time.Minute})
	c := ts.hello()
	c.send(&wire.Request{ID: 1 << 40, Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1), Consistency: "sync"})
	waitFor(t, "the write applied", func() bool { return store.Stats().JournalDepth == 1 })
	start := time.Now()
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	r := c.recv()
	expectError(t, r, wire.CodeUnavailable, "")
	if r.Error.Retryable || !strings.Contains(r.Error.Message, "durable locally") {
		t.Fatalf("sync write at shutdown: %+v", r.Error)
	}
	<-stopped
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}

// stuckStrong stores the strict change, then waits for the push (step 3 of
// localcache.Store.WriteStrong) until ctx ends, as the real one does.
type stuckStrong struct{ *fakeSync }

func (s stuckStrong) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	if _, err := s.store.WriteBatch(ctx, ws); err != nil {
		return nil, err
	}
	<-ctx.Done()
	return nil, fmt.Errorf("localcache: strong write: %w", ctx.Err())
}

// TestStrongWriteAtShutdown: a strong write stored locally and waiting for
// its push when the server shuts down is answered not retryable: it is
// pushed after the restart, and a retry would apply it twice.
func TestStrongWriteAtShutdown(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{Sync: stuckStrong{newFakeSync(store)}, SyncTimeout: time.Minute})
	c := ts.hello()

	c.send(&wire.Request{ID: 7, Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1), Consistency: "strong"})
	waitFor(t, "the write stored", func() bool { return store.Stats().JournalDepth == 1 })
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	r := c.recv()
	<-stopped
	if r.Error == nil || r.Error.Code != wire.CodeUnavailable || r.Error.Retryable {
		t.Fatalf("strong write stored, then cut off by shutdown: %+v, want Unavailable, not retryable", r.Error)
	}
}

// stallStrong is a strong write whose read of the shared store never
// finishes: it ends with ctx, having written nothing.
type stallStrong struct {
	*fakeSync
	entered chan struct{}
	fetch   bool // the shared store was asked, and did not answer in time
}

func (s stallStrong) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	s.entered <- struct{}{}
	<-ctx.Done()
	if s.fetch {
		return nil, fmt.Errorf("localcache: strong write: %w: %w: %w", localcache.ErrNotWritten, ErrRemoteUnavailable, ctx.Err())
	}
	return nil, fmt.Errorf("localcache: strong write: %w: %w", localcache.ErrNotWritten, ctx.Err())
}

// TestStrongWriteNothingWritten: a strong write that timed out, or was cut
// off by shutdown, before it stored anything is answered retryable, and
// says nothing was written. Before, it was "stored locally", not retryable.
func TestStrongWriteNothingWritten(t *testing.T) {
	store := newFakeStore()
	stall := stallStrong{fakeSync: newFakeSync(store), entered: make(chan struct{}, 2)}
	ts := startServer(t, store, Options{Sync: stall, SyncTimeout: time.Minute})
	c := ts.hello()
	r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1), Consistency: "strong", TimeoutMS: 30})
	if r.Error == nil || r.Error.Code != wire.CodeTimeout || !r.Error.Retryable || !strings.Contains(r.Error.Message, "nothing was written") {
		t.Fatalf("strong write that timed out before writing: %+v, want Timeout, retryable", r.Error)
	}

	// The shared store's read ran out of time: it was asked, and did not answer.
	fetch := stallStrong{fakeSync: stall.fakeSync, entered: stall.entered, fetch: true}
	fts := startServer(t, store, Options{Sync: fetch, SyncTimeout: time.Minute})
	r = fts.hello().call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1), Consistency: "strong", TimeoutMS: 30})
	<-stall.entered
	if r.Error == nil || r.Error.Code != wire.CodeUnavailable || !r.Error.Retryable ||
		!strings.Contains(r.Error.Message, "did not answer within 30ms; nothing was written") {
		t.Fatalf("strong write whose read of the shared store timed out: %+v, want Unavailable, retryable, 'did not answer'", r.Error)
	}

	c.send(&wire.Request{ID: 7, Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1), Consistency: "strong"})
	<-stall.entered
	<-stall.entered
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	r = c.recv()
	<-stopped
	if r.Error == nil || r.Error.Code != wire.CodeUnavailable || !r.Error.Retryable {
		t.Fatalf("strong write cut off by shutdown before writing: %+v, want Unavailable, retryable", r.Error)
	}
}

// TestReadUndecodable: a state whose shared-store document does not decode
// (the pull leaves it out) is not taken for fresh with its governor: a
// bounded read asks the shared store and answers the local copy marked
// stale; a read-through of a state with no local copy, a strong read and a
// strong write fail with a non-retryable Unavailable that says why, never
// NotFound.
func TestReadUndecodable(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	store.put("g", "old", "o1")
	old, never := localcache.Key{Governor: "g", State: "old"}, localcache.Key{Governor: "g", State: "never"}
	sy.set(false, map[string]time.Time{"g": time.Now().Add(time.Hour)}) // the governor is fresh
	wantUndecodable := func(r wire.Response, what string) {
		t.Helper()
		expectError(t, r, wire.CodeUnavailable, "")
		if r.Error.Retryable || !strings.Contains(r.Error.Message, "does not decode") ||
			!strings.Contains(r.Error.Message, "governors/g/states/") || r.Error.Governor != "g" {
			t.Fatalf("%s: %+v, want a non-retryable error naming the document", what, r.Error)
		}
	}

	// Not known to the pull: the governor's freshness is taken as is.
	sy.setBad(false, old, never)
	r := c.call(getReq("g", "old", "bounded", 1000))
	if r.Error != nil || !r.Record.FromCache || r.Record.Stale || sy.fetches.Swap(0) != 0 {
		t.Fatalf("bounded read, not known: %+v %+v", r.Record, r.Error)
	}

	// Known: reads that rely on freshness ask the shared store.
	sy.setBad(true, old, never)
	r = c.call(getReq("g", "old", "bounded", 1000))
	if r.Error != nil || !r.Record.FromCache || !r.Record.Stale || r.Record.Version != 1 {
		t.Fatalf("bounded read: %+v %+v, want the local copy marked stale", r.Record, r.Error)
	}
	if n := sy.fetches.Swap(0); n != 1 {
		t.Fatalf("bounded read: %d fetches, want 1", n)
	}
	if ts.srv.heldOffline() {
		t.Fatal("a document that does not decode holds reads offline")
	}
	wantUndecodable(c.call(getReq("g", "never", "", 0)), "read-through")
	wantUndecodable(c.call(getReq("g", "never", "bounded", 1000)), "bounded read-through")
	wantUndecodable(c.call(getReq("g", "old", "strong", 0)), "strong read")
	r = c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "old"}, {Governor: "g", State: "never"}}})
	wantUndecodable(r, "batch_get read-through")
	if r.Error.State != "never" {
		t.Fatalf("batch_get names %q", r.Error.State)
	}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "old", Value: mustMarshal(t, "o2"), Consistency: "strong"})
	wantUndecodable(r, "strong write")
	if rec, _ := store.Get(context.Background(), old); rec.Version != 1 {
		t.Fatalf("a refused strong write changed the local copy: v%d", rec.Version)
	}
	// A local read of a local copy stays local.
	sy.fetches.Store(0)
	if r := c.call(getReq("g", "old", "", 0)); r.Error != nil || sy.fetches.Load() != 0 {
		t.Fatalf("local hit: %+v, %d fetches", r.Error, sy.fetches.Load())
	}
}

// TestRecordAge: read replies say how far behind the shared store their
// record may be (age_ms): from the governor's freshness for the local copy,
// 0 for a record read from the shared store in the request; absent when the
// freshness is unknown, for a state whose shared-store document does not
// decode, on a sidecar without a shared store, and in write replies.
func TestRecordAge(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	store.put("g", "a", "1")
	store.put("g", "b", "2")
	store.put("other", "x", "3")
	sy.setRemote(t, "g", "r", "remote", 1)
	sy.set(false, map[string]time.Time{"g": time.Now().Add(-90 * time.Second)})
	// The freshness a reply reports is taken when it is made: between 90 s
	// and the time the test has run since.
	start := time.Now()
	wantAge := func(what string, rec *wire.Record) {
		t.Helper()
		hi := uint64((90*time.Second + time.Since(start)).Milliseconds())
		if rec == nil || rec.AgeMS == nil || *rec.AgeMS < 90_000 || *rec.AgeMS > hi {
			t.Fatalf("%s: age %v, want 90 s or a little more", what, rec)
		}
	}
	wantNoAge := func(what string, rec *wire.Record) {
		t.Helper()
		if rec == nil || rec.AgeMS != nil {
			t.Fatalf("%s: %+v, want a record without age_ms", what, rec)
		}
	}

	r := mustOK(t, c.call(getReq("g", "a", "", 0)))
	wantAge("local get", r.Record)
	r = mustOK(t, c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "a"}, {Governor: "other", State: "x"}}}))
	wantAge("batch_get g/a", r.Records[0])
	wantNoAge("batch_get of a governor never pulled", r.Records[1])
	r = mustOK(t, c.call(wire.Request{Op: wire.OpList, Governor: "g"}))
	if len(r.Records) != 2 {
		t.Fatalf("list %+v", r.Records)
	}
	for _, rec := range r.Records {
		wantAge("list", rec)
	}
	// Read from the shared store in this request: 0.
	for _, req := range []wire.Request{getReq("g", "r", "", 0), getReq("g", "r", wire.ReadStrong, 0), getReq("g", "r", wire.ReadBounded, 1000)} {
		r = mustOK(t, c.call(req))
		if r.Record.FromCache || r.Record.AgeMS == nil || *r.Record.AgeMS != 0 {
			t.Fatalf("%s read of %s asking the shared store: %+v, want age 0", req.Consistency, req.State, r.Record)
		}
	}
	// Live: 0.
	sy.set(false, map[string]time.Time{"g": time.Now()})
	if r = mustOK(t, c.call(getReq("g", "a", "", 0))); r.Record.AgeMS == nil || *r.Record.AgeMS > uint64(time.Since(start).Milliseconds()) {
		t.Fatalf("age of a live governor's copy: %+v", r.Record)
	}
	// A state whose shared-store document does not decode: unknown.
	sy.setBad(true, localcache.Key{Governor: "g", State: "b"})
	wantNoAge("get of a state whose document does not decode", mustOK(t, c.call(getReq("g", "b", "", 0))).Record)
	wantNoAge("put reply", mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 1)})).Record)

	local := startServer(t, newFakeStore(), Options{}).hello()
	mustOK(t, local.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 1)}))
	wantNoAge("get without a shared store", mustOK(t, local.call(getReq("g", "a", "", 0))).Record)
}
