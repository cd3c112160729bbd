package syncer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// breakable wraps a Remote as one node sees it: its reads (Get, Changes,
// Watch) can be cut off, which breaks running watches, and a hook can run
// after each commit (before its reply comes back). Commits of other nodes,
// made on the inner remote, are not affected.
type breakable struct {
	syncer.Remote
	mu          sync.Mutex
	offline     bool
	watches     map[int]context.CancelFunc
	next        int
	afterCommit func()
}

func newBreakable(r syncer.Remote) *breakable {
	return &breakable{Remote: r, watches: make(map[int]context.CancelFunc)}
}

func (b *breakable) setOffline(off bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.offline = off
	if off {
		for _, cancel := range b.watches {
			cancel()
		}
	}
}

func (b *breakable) setAfterCommit(fn func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.afterCommit = fn
}

func (b *breakable) down(op string, k syncer.Key) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.offline {
		return syncer.Errorf(op, k, syncer.ErrUnavailable, "offline (injected)")
	}
	return nil
}

func (b *breakable) Get(ctx context.Context, k syncer.Key) (syncer.Record, error) {
	if err := b.down("get", k); err != nil {
		return syncer.Record{}, err
	}
	return b.Remote.Get(ctx, k)
}

func (b *breakable) Changes(ctx context.Context, g string, since syncer.Cursor, limit int) ([]syncer.Record, syncer.Cursor, error) {
	if err := b.down("changes", syncer.Key{Governor: g}); err != nil {
		return nil, since, err
	}
	return b.Remote.Changes(ctx, g, since, limit)
}

func (b *breakable) Commit(ctx context.Context, batch syncer.Batch) ([]syncer.Result, error) {
	res, err := b.Remote.Commit(ctx, batch)
	b.mu.Lock()
	fn := b.afterCommit
	b.mu.Unlock()
	if fn != nil {
		fn()
	}
	return res, err
}

func (b *breakable) Watch(ctx context.Context, g string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	k := syncer.Key{Governor: g}
	b.mu.Lock()
	if b.offline {
		b.mu.Unlock()
		return syncer.Errorf("watch", k, syncer.ErrUnavailable, "offline (injected)")
	}
	wctx, cancel := context.WithCancel(ctx)
	id := b.next
	b.next++
	b.watches[id] = cancel
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.watches, id)
		b.mu.Unlock()
		cancel()
	}()
	err := b.Remote.(syncer.Watcher).Watch(wctx, g, since, fn)
	if ctx.Err() == nil && wctx.Err() != nil {
		return syncer.Errorf("watch", k, syncer.ErrUnavailable, "listener broke (injected)")
	}
	return err
}

// node is one sidecar: its local store and journal, push and pull loops.
type node struct {
	j *syncer.MemJournal
	s *syncer.Syncer
	p *syncer.Puller
	r *breakable // the remote as this node sees it
}

var fastPush = syncer.Options{Backoff: syncer.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond},
	Interval: 10 * time.Millisecond}

func newNode(name string, r syncer.Remote, opts syncer.PullOptions) *node {
	if opts.Governors == nil && opts.ListGovernors == nil {
		opts.Governors = []string{"g"}
	}
	if opts.Interval == 0 {
		opts.Interval = 20 * time.Millisecond
	}
	if opts.Backoff.Min == 0 {
		opts.Backoff = syncer.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond}
	}
	b := newBreakable(r)
	j := syncer.NewMemJournal(name)
	return &node{j: j, s: syncer.New(j, b, fastPush), p: syncer.NewPuller(j, b, opts), r: b}
}

func pullOnce(t *testing.T, ctx context.Context, n *node) syncer.PullReport {
	t.Helper()
	rep, err := n.p.PullOnce(ctx)
	if err != nil {
		t.Fatalf("PullOnce: %v (report %+v)", err, rep)
	}
	return rep
}

func same(a, b syncer.Record) bool {
	return a.Version == b.Version && bytes.Equal(a.Value, b.Value) && a.OpID == b.OpID && a.Deleted == b.Deleted
}

// matchesRemote reports whether n's local record of k is the remote's.
func matchesRemote(ctx context.Context, n *node, r syncer.Remote, k syncer.Key) bool {
	rem, err := r.Get(ctx, k)
	if err != nil {
		return false
	}
	loc, ok := n.j.Record(k)
	return ok && same(loc, rem)
}

func checkMatchesRemote(t *testing.T, ctx context.Context, n *node, r syncer.Remote, k syncer.Key) {
	t.Helper()
	rem := remoteRecord(t, ctx, r, k)
	loc, ok := n.j.Record(k)
	if !ok {
		t.Fatalf("%s: no local record (remote v%d %q)", k, rem.Version, rem.Value)
	}
	if !same(loc, rem) {
		t.Fatalf("%s: local v%d %q op %s deleted=%v, remote v%d %q op %s deleted=%v", k, loc.Version, loc.Value,
			loc.OpID, loc.Deleted, rem.Version, rem.Value, rem.OpID, rem.Deleted)
	}
}

// runLoops runs n's push and pull loops until the test ends.
func runLoops(t *testing.T, ctx context.Context, n *node) {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, run := range []func(context.Context) error{n.s.Run, n.p.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- run(rctx)
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	})
}

// TestPull runs the pull scenarios against every backend.
func TestPull(t *testing.T) {
	scenarios := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, r syncer.Remote)
	}{
		{"Bootstrap", testPullBootstrap},
		{"Incremental", testPullIncremental},
		{"LargeRecords", testPullLargeRecords},
		{"PendingKeySkipped", testPullPendingSkipped},
		{"RedeliveryHarmless", testPullRedelivery},
		{"ChangeBetweenCommitAndAck", testPullCommitAckWindow},
		{"WatchDelivers", testPullWatchDelivers},
		{"WatchBreaksAndCatchesUp", testPullWatchBreaks},
		{"DeafWatchIsPolled", testPullDeafWatch},
		{"Fetch", testPullFetch},
		{"TwoNodesConverge", testPullTwoNodes},
		{"ConcurrentPushPull", testPullConcurrent},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					sc.fn(t, ctx, be.open(t))
				})
			}
		})
	}
}

// testPullBootstrap: a node with an empty store pulls everything, page by
// page, tombstones included, and can write on top of it at once.
func testPullBootstrap(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	const n = 25
	for i := range n {
		put(t, a.j, key(fmt.Sprintf("k%02d", i)), fmt.Sprintf("v%d", i))
	}
	put(t, a.j, key("k00"), "v0-2")
	if _, err := a.j.Append(syncer.MemWrite{Key: key("k01"), Delete: true}); err != nil {
		t.Fatal(err)
	}
	syncOnce(t, ctx, a.s)

	c := newNode("node-c", r, syncer.PullOptions{PageSize: 10})
	start := time.Now()
	rep := pullOnce(t, ctx, c)
	t.Logf("bootstrap of %d records in %d pages: %v", rep.Records, rep.Calls, time.Since(start))
	if rep.Applied != n || rep.Records != n || rep.Pending != 0 || rep.Diverged != 0 || rep.Calls < 3 {
		t.Fatalf("report %+v", rep)
	}
	for i := range n {
		checkMatchesRemote(t, ctx, c, r, key(fmt.Sprintf("k%02d", i)))
	}
	if rec, _ := c.j.Record(key("k01")); !rec.Deleted || rec.Version != 2 {
		t.Fatalf("tombstone: %+v", rec)
	}
	if cur, _ := c.j.Cursor(ctx, "g"); cur == "" {
		t.Fatal("no cursor stored")
	}
	if rep := pullOnce(t, ctx, c); rep.Applied != 0 {
		t.Fatalf("second pull applied %d", rep.Applied)
	}
	// The pulled versions are the base of the node's next writes.
	put(t, c.j, key("k00"), "c")
	put(t, c.j, key("k01"), "revived")
	if rep := syncOnce(t, ctx, c.s); rep.Pushed != 2 || rep.Conflicts != 0 {
		t.Fatalf("push after bootstrap: %+v", rep)
	}
	checkEvents(t, ctx, r, key("k00"), 3)
	checkEvents(t, ctx, r, key("k01"), 3)
}

// testPullIncremental: a pull brings only what changed after the cursor.
func testPullIncremental(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{PageSize: 3})
	for i := range 5 {
		put(t, a.j, key(fmt.Sprintf("k%d", i)), "v1")
	}
	syncOnce(t, ctx, a.s)
	pullOnce(t, ctx, c)
	put(t, a.j, key("k1"), "v2")
	put(t, a.j, key("k3"), "v2")
	put(t, a.j, key("new1"), "v1")
	put(t, a.j, key("new2"), "v1")
	syncOnce(t, ctx, a.s)
	rep := pullOnce(t, ctx, c)
	if rep.Applied != 4 || rep.Stale != rep.Records-4 || rep.Pending != 0 {
		t.Fatalf("incremental pull: %+v", rep)
	}
	for _, s := range []string{"k0", "k1", "k2", "k3", "k4", "new1", "new2"} {
		checkMatchesRemote(t, ctx, c, r, key(s))
	}
	if rep := pullOnce(t, ctx, c); rep.Applied != 0 {
		t.Fatalf("nothing new, yet %+v", rep)
	}
}

// testPullLargeRecords: records of large values come in pages cut by their
// bytes (syncer.PageBytes), and one pull goes on past such a page: a page
// cut short is not the end of the stream.
func testPullLargeRecords(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	const n = 8
	for i := range n {
		put(t, a.j, key(fmt.Sprintf("big%d", i)), strings.Repeat("x", 900_000))
		syncOnce(t, ctx, a.s) // one commit each: a batch holds at most 9 MiB
	}
	c := newNode("node-c", r, syncer.PullOptions{})
	rep := pullOnce(t, ctx, c)
	if rep.Applied != n || rep.Calls < 2 {
		t.Fatalf("pull of %d records of 900 kB: %+v; want them all, in at least 2 calls", n, rep)
	}
	for i := range n {
		checkMatchesRemote(t, ctx, c, r, key(fmt.Sprintf("big%d", i)))
	}
}

// testPullPendingSkipped: a key with a pending local write keeps its local
// value; others are applied; the push then settles the key and every side
// agrees.
func testPullPendingSkipped(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{})
	put(t, a.j, key("x"), "a1")
	put(t, a.j, key("y"), "a1")
	syncOnce(t, ctx, a.s)
	pullOnce(t, ctx, c)
	put(t, c.j, key("x"), "c-pending")
	put(t, a.j, key("x"), "a2")
	put(t, a.j, key("y"), "a2")
	syncOnce(t, ctx, a.s)

	rep := pullOnce(t, ctx, c)
	if rep.Pending != 1 || rep.Applied != 1 {
		t.Fatalf("pull with a pending key: %+v", rep)
	}
	if rec, _ := c.j.Record(key("x")); string(rec.Value) != "c-pending" {
		t.Fatalf("pending key overwritten: %q", rec.Value)
	}
	checkMatchesRemote(t, ctx, c, r, key("y"))

	// The push meets a2 and settles x (last write wins); then all agree.
	syncOnce(t, ctx, c.s)
	pullOnce(t, ctx, c)
	pullOnce(t, ctx, a)
	checkMatchesRemote(t, ctx, c, r, key("x"))
	checkMatchesRemote(t, ctx, a, r, key("x"))
	if c.j.Depth() != 0 {
		t.Fatalf("journal depth %d", c.j.Depth())
	}
}

// testPullRedelivery: records applied already, or older than the local
// ones, change nothing when delivered again.
func testPullRedelivery(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{})
	for _, s := range []string{"x", "y", "z"} {
		put(t, a.j, key(s), s+"1")
	}
	syncOnce(t, ctx, a.s)
	pullOnce(t, ctx, c)
	old := remoteRecord(t, ctx, r, key("x"))
	put(t, a.j, key("x"), "x2")
	syncOnce(t, ctx, a.s)
	pullOnce(t, ctx, c)
	before := map[string]syncer.Record{}
	for _, s := range []string{"x", "y", "z"} {
		before[s], _ = c.j.Record(key(s))
	}
	all, next, err := r.Changes(ctx, "g", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		res, err := c.j.ApplyRemote(ctx, syncer.RemoteBatch{Records: append(all, old), Governor: "g", Cursor: next})
		if err != nil {
			t.Fatal(err)
		}
		if res.Count(syncer.ApplyStale) != len(all)+1 {
			t.Fatalf("re-delivery: %v", res.Statuses)
		}
	}
	for s, rec := range before {
		if now, _ := c.j.Record(key(s)); !same(now, rec) {
			t.Fatalf("%s changed by a re-delivery: %+v -> %+v", s, rec, now)
		}
	}
	// A cursor that goes back (a backend's overlap) re-delivers harmlessly.
	if _, err := c.j.ApplyRemote(ctx, syncer.RemoteBatch{Governor: "g", Cursor: ""}); err != nil {
		t.Fatal(err)
	}
	if rep := pullOnce(t, ctx, c); rep.Applied != 0 || rep.Stale != 3 {
		t.Fatalf("pull from the beginning again: %+v", rep)
	}
}

// testPullCommitAckWindow: a remote change pulled between a push's commit
// and its ack (the key still pending) is not lost when the ack lands.
func testPullCommitAckWindow(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	b := newNode("node-b", r, syncer.PullOptions{})
	k := key("x")
	put(t, a.j, k, "a1")
	syncOnce(t, ctx, a.s)
	pullOnce(t, ctx, b)

	put(t, a.j, k, "a2")
	var once sync.Once
	a.r.setAfterCommit(func() {
		once.Do(func() {
			// a2 is committed, not yet acked: b writes on top of it, and a's
			// pull sees b's record while x is pending on a. (This runs in
			// the push's commit goroutine: no t.Fatal here.)
			if _, err := b.p.PullOnce(ctx); err != nil {
				t.Error(err)
			}
			if _, err := b.j.Append(syncer.MemWrite{Key: k, Value: []byte("b3")}); err != nil {
				t.Error(err)
			}
			if rep, err := b.s.SyncOnce(ctx); err != nil || rep.Pushed != 1 {
				t.Errorf("b's push: %+v %v", rep, err)
			}
			if rep, err := a.p.PullOnce(ctx); err != nil || rep.Pending != 1 {
				t.Errorf("a's pull inside the window: %+v %v", rep, err)
			}
		})
	})
	if rep := syncOnce(t, ctx, a.s); rep.Pushed != 1 {
		t.Fatalf("a's push: %+v", rep)
	}
	rem := checkSyncedRemote(t, ctx, r, k, "b3")
	if loc, _ := a.j.Record(k); !same(loc, rem) {
		t.Fatalf("a adopted v%d %q after its ack, remote has v%d %q", loc.Version, loc.Value, rem.Version, rem.Value)
	}
	if rep := pullOnce(t, ctx, a); rep.Applied != 0 {
		t.Fatalf("nothing left to pull, yet %+v", rep)
	}
}

func checkSyncedRemote(t *testing.T, ctx context.Context, r syncer.Remote, k syncer.Key, value string) syncer.Record {
	t.Helper()
	rem := remoteRecord(t, ctx, r, k)
	if string(rem.Value) != value {
		t.Fatalf("%s: remote %q, want %q", k, rem.Value, value)
	}
	return rem
}

// testPullWatchDelivers: Run delivers a change another node pushed, within
// a deadline.
func testPullWatchDelivers(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{Interval: time.Hour}) // no polling: the watch must deliver
	runLoops(t, ctx, c)
	var worst time.Duration
	for i := range 5 {
		k := key(fmt.Sprintf("w%d", i))
		put(t, a.j, k, "v")
		syncOnce(t, ctx, a.s)
		start := time.Now()
		waitFor(t, 20*time.Second, func() bool { return matchesRemote(ctx, c, r, k) }, "watch delivers "+k.String())
		worst = max(worst, time.Since(start))
	}
	t.Logf("push-to-local-apply latency through the watch: worst of 5 %v", worst)
	// The stats count a delivery once its ApplyRemote returned.
	waitFor(t, 5*time.Second, func() bool { return c.p.Stats().Applied >= 5 }, "stats count the deliveries")
	// While the watch is up the governor is fresh as of now.
	if at, ok := c.p.FreshAt(key("w0").Governor); !ok || time.Since(at) > time.Second {
		t.Fatalf("FreshAt with the watch up: %v, %v", at, ok)
	}
	if st := c.p.Stats(); st.Passes != 0 {
		t.Fatalf("polled with a watcher: %+v", st)
	}
}

// deafWatch is a listener that goes wrong without an error: its first
// delivery lacks its records (a change committed while it started), and it
// delivers nothing after that.
type deafWatch struct {
	syncer.Remote
}

func (d deafWatch) Watch(ctx context.Context, g string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	first := true
	return d.Remote.(syncer.Watcher).Watch(ctx, g, since, func(_ []syncer.Record, _ syncer.Cursor, _ []*syncer.UndecodableError) error {
		if !first {
			return nil
		}
		first = false
		return fn(nil, since, nil)
	})
}

// testPullDeafWatch: a change the watch's first delivery lacks is pulled
// before the governor counts as live, and changes a stalled watch does not
// deliver are pulled every Resync.
func testPullDeafWatch(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	put(t, a.j, key("before"), "v")
	syncOnce(t, ctx, a.s)

	j := syncer.NewMemJournal("node-c")
	c := &node{j: j, p: syncer.NewPuller(j, deafWatch{Remote: r}, syncer.PullOptions{Governors: []string{"g"},
		Interval: time.Hour, Resync: 100 * time.Millisecond}), s: syncer.New(j, r, fastPush)}
	runLoops(t, ctx, c)
	waitFor(t, 20*time.Second, func() bool {
		_, live := c.p.FreshAt("g")
		return live
	}, "the governor is pulled")
	if !matchesRemote(ctx, c, r, key("before")) {
		t.Fatal("the governor counts as pulled without the change the watch's first delivery lacked")
	}
	if at, _ := c.p.FreshAt("g"); time.Since(at) > time.Second {
		t.Fatalf("watch up, fresh as of %v ago", time.Since(at))
	}
	put(t, a.j, key("after"), "v")
	syncOnce(t, ctx, a.s)
	waitFor(t, 20*time.Second, func() bool { return matchesRemote(ctx, c, r, key("after")) }, "resync delivers")
}

// testPullWatchBreaks: the listener breaks (the node loses the remote),
// other nodes go on writing; Run restarts the watch from its cursor with
// backoff and catches up.
func testPullWatchBreaks(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{Interval: time.Hour})
	runLoops(t, ctx, c)
	put(t, a.j, key("first"), "v")
	syncOnce(t, ctx, a.s)
	waitFor(t, 20*time.Second, func() bool { return matchesRemote(ctx, c, r, key("first")) }, "first delivery")
	// The watch is trusted once the poll after its first delivery is done.
	waitFor(t, 20*time.Second, func() bool {
		at, ok := c.p.FreshAt(key("first").Governor)
		return ok && time.Since(at) < time.Second
	}, "the governor is live")

	c.r.setOffline(true)
	for i := range 10 {
		put(t, a.j, key(fmt.Sprintf("during%d", i)), "v")
	}
	put(t, a.j, key("first"), "v2")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { return c.p.Stats().WatchRestarts >= 2 }, "watch retried while offline")
	// Offline, the governor is fresh only as of the break: FreshAt stops
	// moving.
	at1, ok := c.p.FreshAt(key("first").Governor)
	time.Sleep(100 * time.Millisecond)
	if at2, _ := c.p.FreshAt(key("first").Governor); !ok || !at2.Equal(at1) || time.Since(at2) < 100*time.Millisecond {
		t.Fatalf("FreshAt while offline moved or is recent: %v then %v (%v)", at1, at2, ok)
	}
	c.r.setOffline(false)
	start := time.Now()
	waitFor(t, 20*time.Second, func() bool {
		for i := range 10 {
			if !matchesRemote(ctx, c, r, key(fmt.Sprintf("during%d", i))) {
				return false
			}
		}
		return matchesRemote(ctx, c, r, key("first"))
	}, "catch-up after the outage")
	st := c.p.Stats()
	t.Logf("caught up %v after the remote came back; %d watch restarts", time.Since(start), st.WatchRestarts)
	if st.LastError == "" {
		t.Fatal("no error recorded")
	}
}

// testPullFetch: a cache miss reads through and stores the record.
func testPullFetch(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{})
	put(t, a.j, key("x"), "x1")
	put(t, a.j, key("gone"), "g1")
	if _, err := a.j.Append(syncer.MemWrite{Key: key("gone"), Delete: true}); err != nil {
		t.Fatal(err)
	}
	syncOnce(t, ctx, a.s)

	rec, st, err := c.p.Fetch(ctx, key("x"))
	if err != nil || st != syncer.ApplyNewer || string(rec.Value) != "x1" {
		t.Fatalf("Fetch x: %+v %v %v", rec, st, err)
	}
	checkMatchesRemote(t, ctx, c, r, key("x"))
	if rec, st, err := c.p.Fetch(ctx, key("x")); err != nil || st != syncer.ApplyStale || rec.Version != 1 {
		t.Fatalf("Fetch x again: %+v %v %v", rec, st, err)
	}
	rec, st, err = c.p.Fetch(ctx, key("gone"))
	if err != nil || st != syncer.ApplyNewer || !rec.Deleted || rec.Version != 2 {
		t.Fatalf("Fetch gone: %+v %v %v", rec, st, err)
	}
	checkMatchesRemote(t, ctx, c, r, key("gone"))
	if _, _, err := c.p.Fetch(ctx, key("never")); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("Fetch never: %v", err)
	}
	if _, ok := c.j.Record(key("never")); ok {
		t.Fatal("a missing key was stored")
	}
	put(t, c.j, key("x"), "local")
	if _, st, err := c.p.Fetch(ctx, key("x")); err != nil || st != syncer.ApplyPending {
		t.Fatalf("Fetch of a pending key: %v %v", st, err)
	}
	if rec, _ := c.j.Record(key("x")); string(rec.Value) != "local" {
		t.Fatalf("pending key overwritten by Fetch: %q", rec.Value)
	}
}

// converged reports whether every node has drained its journal and holds
// the remote record of every key of governor "g".
func converged(ctx context.Context, r syncer.Remote, nodes ...*node) bool {
	recs, _, err := r.Changes(ctx, "g", "", 10000)
	if err != nil {
		return false
	}
	for _, n := range nodes {
		if n.j.Depth() != 0 || len(n.j.Keys("g")) != len(recs) {
			return false
		}
		for _, rem := range recs {
			if loc, ok := n.j.Record(rem.Key); !ok || !same(loc, rem) {
				return false
			}
		}
	}
	return true
}

// testPullTwoNodes: two nodes write different keys at the same time, with
// their push and pull loops running; both end with every key.
func testPullTwoNodes(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	b := newNode("node-b", r, syncer.PullOptions{})
	runLoops(t, ctx, a)
	runLoops(t, ctx, b)
	const n = 20
	var wg sync.WaitGroup
	start := time.Now()
	for _, w := range []struct {
		n    *node
		name string
	}{{a, "a"}, {b, "b"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				for v := range 3 {
					if _, err := w.n.j.Append(syncer.MemWrite{Key: key(fmt.Sprintf("%s%02d", w.name, i)),
						Value: []byte(fmt.Sprint(v))}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 60*time.Second, func() bool { return converged(ctx, r, a, b) }, "two nodes converge")
	t.Logf("2 nodes x %d keys x 3 writes converged in %v", n, time.Since(start))
	if len(a.j.Keys("g")) != 2*n {
		t.Fatalf("%d keys", len(a.j.Keys("g")))
	}
}

// testPullConcurrent: several writers per node on overlapping keys, while
// both nodes push and pull; once the writes stop, both nodes converge on
// the remote.
func testPullConcurrent(t *testing.T, ctx context.Context, r syncer.Remote) {
	a := newNode("node-a", r, syncer.PullOptions{})
	b := newNode("node-b", r, syncer.PullOptions{})
	runLoops(t, ctx, a)
	runLoops(t, ctx, b)
	const writers, perWriter, keys = 3, 40, 8
	var wg sync.WaitGroup
	start := time.Now()
	for _, n := range []*node{a, b} {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					k := key(fmt.Sprintf("k%d", (w*perWriter+i)%keys))
					if _, err := n.j.Append(syncer.MemWrite{Key: k, Value: []byte(fmt.Sprint(w, i))}); err != nil {
						t.Error(err)
						return
					}
					if i%10 == 0 {
						// Reads through, racing with the loops.
						if _, _, err := n.p.Fetch(ctx, k); err != nil && !errors.Is(err, syncer.ErrNotFound) {
							t.Error(err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	waitFor(t, 90*time.Second, func() bool { return converged(ctx, r, a, b) }, "nodes converge after concurrent writes")
	sa, sb := a.s.Stats(), b.s.Stats()
	pa, pb := a.p.Stats(), b.p.Stats()
	t.Logf("%d writes on %d keys converged in %v; conflicts %d+%d, superseded %d+%d, pulled applied %d+%d, pending-skipped %d+%d, diverged %d+%d",
		2*writers*perWriter, keys, time.Since(start), sa.Conflicts, sb.Conflicts, sa.Superseded, sb.Superseded,
		pa.Applied, pb.Applied, pa.Pending, pb.Pending, pa.Diverged, pb.Diverged)
	if len(a.j.ParkedEntries())+len(b.j.ParkedEntries()) != 0 {
		t.Fatal("entries parked")
	}
}

// noWatch hides a remote's Watcher: Run must poll.
type noWatch struct{ syncer.Remote }

func TestPullPollsWithoutWatcher(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	a := newNode("node-a", m, syncer.PullOptions{})
	j := syncer.NewMemJournal("node-c")
	p := syncer.NewPuller(j, noWatch{m}, syncer.PullOptions{Governors: []string{"g"}, Interval: 5 * time.Millisecond})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	put(t, a.j, key("x"), "v")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { _, ok := j.Record(key("x")); return ok }, "poll delivers")
	m.FailNext(3)
	put(t, a.j, key("y"), "v")
	a.s.SyncOnce(ctx) // FailNext may fail this commit or the polls: either way both recover
	runUntilDrained(t, ctx, a.s, a.j)
	waitFor(t, 10*time.Second, func() bool { _, ok := j.Record(key("y")); return ok }, "poll recovers")
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m.Calls("watch") != 0 {
		t.Fatal("watched through a remote without a Watcher")
	}
}

// TestPullMemremoteOffline: memremote's own outage breaks the watch; Run
// backs off, then catches up from its cursor.
func TestPullMemremoteOffline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	a := newNode("node-a", m, syncer.PullOptions{})
	c := newNode("node-c", m, syncer.PullOptions{Interval: time.Hour})
	runLoops(t, ctx, c)
	put(t, a.j, key("x"), "v1")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { return matchesRemote(ctx, c, m, key("x")) }, "first delivery")
	// A watch starts with a poll: each attempt polls, and fails there.
	attempts := func() int { return m.Calls("watch") + m.Calls("changes") }
	before := attempts()
	m.SetOffline(true)
	waitFor(t, 10*time.Second, func() bool { return attempts() >= before+3 }, "watch retried with backoff")
	m.SetOffline(false)
	put(t, a.j, key("x"), "v2")
	put(t, a.j, key("y"), "v1")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool {
		return matchesRemote(ctx, c, m, key("x")) && matchesRemote(ctx, c, m, key("y"))
	}, "catch-up after the outage")
}

// TestPullApplyFailure: a local failure leaves the cursor where it was, so
// the next pull brings the same records.
func TestPullApplyFailure(t *testing.T) {
	ctx := context.Background()
	m := memremote.New()
	a := newNode("node-a", m, syncer.PullOptions{})
	c := newNode("node-c", m, syncer.PullOptions{})
	put(t, a.j, key("x"), "v")
	put(t, a.j, key("y"), "v")
	syncOnce(t, ctx, a.s)
	c.j.FailApplies(1)
	if _, err := c.p.PullOnce(ctx); !errors.Is(err, syncer.ErrMemJournal) {
		t.Fatalf("PullOnce: %v", err)
	}
	if cur, _ := c.j.Cursor(ctx, "g"); cur != "" {
		t.Fatalf("cursor moved to %q", cur)
	}
	if rep := pullOnce(t, ctx, c); rep.Applied != 2 {
		t.Fatalf("retry: %+v", rep)
	}
	if st := c.p.Stats(); st.LastError == "" || st.Passes != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPullGovernorList: governors are pulled as the list names them, and
// Run starts pulling a governor added while it runs.
func TestPullGovernorList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	a := newNode("node-a", m, syncer.PullOptions{})
	for _, g := range []string{"g1", "g2", "g3"} {
		if _, err := a.j.Append(syncer.MemWrite{Key: syncer.Key{Governor: g, State: "s"}, Value: []byte(g)}); err != nil {
			t.Fatal(err)
		}
	}
	syncOnce(t, ctx, a.s)
	var mu sync.Mutex
	served := []string{"g1"}
	j := syncer.NewMemJournal("node-c")
	p := syncer.NewPuller(j, m, syncer.PullOptions{Interval: 5 * time.Millisecond, ListGovernors: func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), served...)
	}})
	rep, err := p.PullOnce(ctx)
	if err != nil || rep.Governors != 1 || rep.Applied != 1 {
		t.Fatalf("PullOnce: %+v %v", rep, err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	mu.Lock()
	served = append(served, "g3")
	mu.Unlock()
	waitFor(t, 10*time.Second, func() bool {
		_, ok := j.Record(syncer.Key{Governor: "g3", State: "s"})
		return ok
	}, "added governor pulled")
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, ok := j.Record(syncer.Key{Governor: "g2", State: "s"}); ok {
		t.Fatal("pulled a governor not served")
	}
}

func TestDecideApply(t *testing.T) {
	rec := func(version uint64, vec map[string]uint64) syncer.Record {
		return syncer.Record{Version: version, Clock: syncer.Clock{Vector: vec}}
	}
	type V = map[string]uint64
	tests := []struct {
		name         string
		local        syncer.Record
		exists, pend bool
		remote       syncer.Record
		want         syncer.ApplyStatus
	}{
		{"no local", syncer.Record{}, false, false, rec(3, V{"a": 3}), syncer.ApplyNewer},
		{"pending", rec(1, V{"a": 1}), true, true, rec(3, V{"a": 3}), syncer.ApplyPending},
		{"remote dominates", rec(1, V{"a": 1}), true, false, rec(2, V{"a": 1, "b": 1}), syncer.ApplyNewer},
		{"same", rec(2, V{"a": 2}), true, false, rec(2, V{"a": 2}), syncer.ApplyStale},
		{"older", rec(3, V{"a": 3}), true, false, rec(2, V{"a": 2}), syncer.ApplyStale},
		{"renumbered", rec(2, V{"a": 2}), true, false, rec(3, V{"a": 2}), syncer.ApplyNewer},
		{"renumbered lower", rec(3, V{"a": 2}), true, false, rec(2, V{"a": 2}), syncer.ApplyStale},
		{"concurrent", rec(2, V{"a": 2}), true, false, rec(2, V{"a": 1, "b": 1}), syncer.ApplyDiverged},
		{"no vectors newer", rec(1, nil), true, false, rec(2, nil), syncer.ApplyNewer},
		{"remote has vector", rec(5, nil), true, false, rec(2, V{"b": 1}), syncer.ApplyNewer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := syncer.DecideApply(tc.local, tc.exists, tc.pend, tc.remote); got != tc.want {
				t.Fatalf("DecideApply = %v, want %v", got, tc.want)
			}
		})
	}
}

// lossyFirstWatch's first Watch runs before (a change committed as the
// listener starts), then drops the first record of its first delivery, as
// the emulator's listener may with a change committed while it starts.
type lossyFirstWatch struct {
	syncer.Remote
	before  func()
	started atomic.Bool
}

func (l *lossyFirstWatch) Watch(ctx context.Context, g string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	first := !l.started.Swap(true)
	if first && l.before != nil {
		l.before()
	}
	return l.Remote.(syncer.Watcher).Watch(ctx, g, since, func(recs []syncer.Record, next syncer.Cursor, skipped []*syncer.UndecodableError) error {
		if first && len(recs) > 1 {
			first = false
			return fn(recs[1:], next, skipped)
		}
		first = false
		return fn(recs, next, skipped)
	})
}

// TestPullWatchFirstDeliveryGap: the watch's first delivery lacks a change
// and holds a later one, so the cursor it stores is past the change. The
// poll made before the governor counts as live starts from the watch's own
// starting cursor, and brings it.
func TestPullWatchFirstDeliveryGap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := memremote.New()
	a := newNode("node-a", r, syncer.PullOptions{})
	lw := &lossyFirstWatch{Remote: r, before: func() {
		put(t, a.j, key("early"), "v")
		syncOnce(t, ctx, a.s)
		put(t, a.j, key("later"), "v")
		syncOnce(t, ctx, a.s)
	}}
	j := syncer.NewMemJournal("node-c")
	p := syncer.NewPuller(j, lw, syncer.PullOptions{Governors: []string{"g"}, Resync: time.Hour})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	defer func() { stop(); <-done }()
	waitFor(t, 10*time.Second, func() bool { at, ok := p.FreshAt("g"); return ok && time.Since(at) < time.Second }, "live")
	for _, k := range []syncer.Key{key("early"), key("later")} {
		if _, ok := j.Record(k); !ok {
			t.Fatalf("%s not pulled, though the governor is live", k)
		}
	}
}

// TestPullFreshAfterFailedApply: a watch that ends because a delivery could
// not be applied leaves the governor fresh as of the last delivery applied,
// not as of its end: a bounded read must not take the local copy, which
// lacks the change, as fresh enough.
func TestPullFreshAfterFailedApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := memremote.New()
	a := newNode("node-a", r, syncer.PullOptions{})
	c := newNode("node-c", r, syncer.PullOptions{Backoff: syncer.Backoff{Min: 5 * time.Second, Max: 5 * time.Second},
		Resync: time.Hour})
	put(t, a.j, key("x"), "v1")
	syncOnce(t, ctx, a.s)
	runLoops(t, ctx, c)
	waitFor(t, 10*time.Second, func() bool { return matchesRemote(ctx, c, r, key("x")) }, "first")
	waitFor(t, 10*time.Second, func() bool { at, ok := c.p.FreshAt("g"); return ok && time.Since(at) < time.Second }, "live")
	c.j.FailApplies(1)
	committed := time.Now()
	put(t, a.j, key("x"), "v2")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { return c.p.Stats().WatchRestarts >= 1 }, "the watch ended")
	at, ok := c.p.FreshAt("g")
	if loc, _ := c.j.Record(key("x")); string(loc.Value) == "v1" && ok && !at.Before(committed) {
		t.Fatalf("fresh as of %v after v2's commit, with v1 still local", at.Sub(committed))
	}
}

// rejectFirstWatch rejects its first Watch for good, as a remote does for a
// missing index or credentials refused for a moment.
type rejectFirstWatch struct {
	syncer.Remote
	calls atomic.Int64
}

func (r *rejectFirstWatch) Watch(ctx context.Context, g string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	if r.calls.Add(1) == 1 {
		return &syncer.Error{Op: "watch", Kind: syncer.ErrPermanent, Err: errors.New("rejected")}
	}
	return r.Remote.(syncer.Watcher).Watch(ctx, g, since, fn)
}

// TestPullRewatchAfterRejection: a governor whose watch was rejected for
// good is polled, and watched again after Rewatch.
func TestPullRewatchAfterRejection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := memremote.New()
	a := newNode("node-a", m, syncer.PullOptions{})
	rw := &rejectFirstWatch{Remote: m}
	j := syncer.NewMemJournal("node-c")
	p := syncer.NewPuller(j, rw, syncer.PullOptions{Governors: []string{"g"}, Interval: 5 * time.Millisecond,
		Rewatch: 100 * time.Millisecond, Resync: time.Hour})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	defer func() { stop(); <-done }()
	put(t, a.j, key("x"), "v")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { _, ok := j.Record(key("x")); return ok }, "polled")
	waitFor(t, 10*time.Second, func() bool { return rw.calls.Load() >= 2 }, "watched again")
	changes := m.Calls("changes")
	put(t, a.j, key("y"), "v")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { _, ok := j.Record(key("y")); return ok }, "delivered")
	time.Sleep(50 * time.Millisecond) // ten poll intervals
	if n := m.Calls("changes") - changes; n > 2 {
		t.Fatalf("%d polls after the watch was back, want the watch to deliver", n)
	}
}

// stallWatch: once stalled, its listener delivers nothing (a link lost and
// not noticed yet); failChanges makes polls fail without breaking it.
type stallWatch struct {
	*breakable
	stalled     atomic.Bool
	failChanges atomic.Bool
}

func (s *stallWatch) Watch(ctx context.Context, g string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	return s.breakable.Watch(ctx, g, since, func(recs []syncer.Record, next syncer.Cursor, skipped []*syncer.UndecodableError) error {
		if s.stalled.Load() {
			return nil
		}
		return fn(recs, next, skipped)
	})
}

func (s *stallWatch) Changes(ctx context.Context, g string, since syncer.Cursor, limit int) ([]syncer.Record, syncer.Cursor, error) {
	if s.failChanges.Load() {
		return nil, since, syncer.Errorf("changes", syncer.Key{Governor: g}, syncer.ErrUnavailable, "down")
	}
	return s.breakable.Changes(ctx, g, since, limit)
}

// startStalling runs a puller of governor g over a stallWatch, with x at v1
// pulled and the governor live.
func startStalling(t *testing.T, ctx context.Context, resync time.Duration) (*node, *syncer.MemJournal, *syncer.Puller, *stallWatch) {
	t.Helper()
	r := memremote.New()
	a := newNode("node-a", r, syncer.PullOptions{})
	sw := &stallWatch{breakable: newBreakable(r)}
	j := syncer.NewMemJournal("node-c")
	p := syncer.NewPuller(j, sw, syncer.PullOptions{Governors: []string{"g"}, Interval: time.Hour, Resync: resync,
		Backoff: syncer.Backoff{Min: 5 * time.Second, Max: 5 * time.Second}})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	put(t, a.j, key("x"), "v1")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { r, ok := j.Record(key("x")); return ok && string(r.Value) == "v1" }, "v1")
	waitFor(t, 10*time.Second, func() bool { at, ok := p.FreshAt("g"); return ok && time.Since(at) < time.Second }, "live")
	return a, j, p, sw
}

// TestPullFreshAfterAStalledListener: a listener stops delivering, and its
// break is noticed only later. The governor is fresh as of the last
// delivery, not of the moment the break was noticed.
func TestPullFreshAfterAStalledListener(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, j, p, sw := startStalling(t, ctx, time.Hour)
	sw.stalled.Store(true)
	committed := time.Now()
	put(t, a.j, key("x"), "v2")
	syncOnce(t, ctx, a.s)
	time.Sleep(100 * time.Millisecond)
	sw.setOffline(true) // the break is noticed now
	waitFor(t, 10*time.Second, func() bool { return p.Stats().WatchRestarts >= 1 }, "the watch ended")
	at, _ := p.FreshAt("g")
	if loc, _ := j.Record(key("x")); string(loc.Value) == "v1" && at.After(committed) {
		t.Fatalf("fresh as of %v after v2's commit, with v1 still local", at.Sub(committed))
	}
}

// TestPullResyncsFailing: a listener that delivers nothing while every
// resync poll fails does not keep the governor live: the watch ends.
func TestPullResyncsFailing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, j, p, sw := startStalling(t, ctx, 50*time.Millisecond)
	sw.stalled.Store(true)
	sw.failChanges.Store(true)
	put(t, a.j, key("x"), "v2")
	syncOnce(t, ctx, a.s)
	waitFor(t, 10*time.Second, func() bool { at, _ := p.FreshAt("g"); return time.Since(at) > 500*time.Millisecond },
		"the governor no longer live")
	if loc, _ := j.Record(key("x")); string(loc.Value) != "v1" {
		t.Fatalf("local %q", loc.Value)
	}
}
