package localcache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// longHistory is how many versions the long state gets: its history is
// several times what one local transaction holds.
const longHistory = 3000

// longValue is the value of version v of g/long: small enough to be
// stored in the tree, so that its events count in full towards a
// transaction's size.
func longValue(v uint64) string { return fmt.Sprintf("v%-129d", v) }

// newLongHistoryWriter returns node a (in memory: it writes thousands of
// versions) after it wrote longHistory versions of g/long and one of
// g/other, and pushed them.
func newLongHistoryWriter(t *testing.T, remote syncer.Remote) *syncNode {
	t.Helper()
	a := &syncNode{t: t, node: "a", remote: remote, store: openMem(t, func(o *Options) { o.NodeID = "a" })}
	a.push = syncer.New(a.store, remote, syncer.Options{})
	for i := 1; i <= longHistory; i++ {
		a.put(key("g", "long"), longValue(uint64(i)))
	}
	a.put(key("g", "other"), "o1")
	for a.store.Depth() > 0 {
		if rep := a.pushAll(); rep.Parked > 0 {
			t.Fatalf("push: %+v", rep)
		}
	}
	return a
}

// wantLongHistory checks that n holds every version of g/long, once, and
// answers about them as the writer does; mine says n wrote the version
// after them (value "mine").
func wantLongHistory(t *testing.T, n *syncNode, mine bool) {
	t.Helper()
	ctx := context.Background()
	k := key("g", "long")
	top, value := uint64(longHistory), longValue(longHistory)
	if mine {
		top, value = longHistory+1, "mine"
	}
	if rec := n.get(k); rec.Version != top || string(rec.Value) != value {
		holes, _ := n.store.HistoryHoles(context.Background(), "g", "", 10)
		t.Fatalf("record: %d %q, %d events, holes %v", rec.Version, rec.Value, len(mustEvents(t, n.store, k)), holes)
	}
	evs := mustEvents(t, n.store, k)
	if uint64(len(evs)) != top {
		t.Fatalf("%d events, want %d", len(evs), top)
	}
	for i, e := range evs[:longHistory] {
		if e.ToVersion != uint64(i+1) || string(e.Value) != longValue(uint64(i+1)) || e.Origin != evs[0].Origin {
			t.Fatalf("event %d: version %d, value %q, origin %q", i, e.ToVersion, e.Value, e.Origin)
		}
	}
	if mine && (evs[longHistory].ToVersion != top || string(evs[longHistory].Value) != "mine") {
		t.Fatalf("last event: %+v", evs[longHistory])
	}
	for _, v := range []uint64{1, 1234, longHistory - 1} {
		if p, err := n.store.StateAtVersion(ctx, k, v); err != nil || !p.Exact || string(p.Value) != longValue(v) {
			t.Fatalf("version %d: %+v, %v", v, p, err)
		}
	}
	e := evs[1999]
	if p, err := n.store.StateAt(ctx, k, time.Unix(0, e.Change.Time)); err != nil || p.Version < e.ToVersion ||
		p.Version >= longHistory || !p.Exact || string(p.Value) != longValue(p.Version) {
		t.Fatalf("state when version %d was written: %+v, %v", e.ToVersion, p, err)
	}
	rep, err := n.store.Validate(ctx, "g", "long")
	if err != nil || !rep.OK() || rep.GapCount != 0 || rep.Events != int(top) {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
	if holes, err := n.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes: %v, %v", holes, err)
	}
}

// wantStillSyncing checks that n's pull of governor g goes on: a's next
// change of another state reaches it.
func wantStillSyncing(t *testing.T, a, n *syncNode) {
	t.Helper()
	a.put(key("g", "other"), "o2")
	a.pushAll()
	n.pullAll()
	if rec := n.get(key("g", "other")); string(rec.Value) != "o2" {
		t.Fatalf("other state after the next pull: %+v", rec)
	}
}

// TestPullLongHistory: a state whose missing history is more than one
// local transaction holds is pulled all the same, its history stored in
// several mutations, and its governor goes on syncing.
func TestPullLongHistory(t *testing.T) { forRemotes(t, testPullLongHistory) }

func testPullLongHistory(t *testing.T, newRemote func() syncer.Remote) {
	remote := newRemote()
	a := newLongHistoryWriter(t, remote)
	b := newHistoryNode(t, "b", remote, 100)
	b.pullAll()
	if rec := b.get(key("g", "other")); string(rec.Value) != "o1" {
		t.Fatalf("other state: %+v", rec)
	}
	waitSnapshots(t, b.store)
	wantLongHistory(t, b, false)
	wantStillSyncing(t, a, b)
}

// pullFilled pulls until n lists no hole in its history (a slice of it per
// poll), a few polls at most.
func pullFilled(t *testing.T, n *syncNode) {
	t.Helper()
	for range 5 {
		holes, err := n.store.HistoryHoles(context.Background(), "g", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(holes) == 0 {
			return
		}
		n.pullAll()
	}
}

// TestPullLongHistoryInterrupted: the pull of a long history stops between
// its parts (a crash, or a failed mutation), or a local write of the state
// comes between them. The record is in with the oldest part of its
// history, the rest is a gap listed as a hole, and nothing reads wrong;
// the next pulls (after a restart) complete it without duplicates, at
// once, or once the local write is pushed (a slice of it per poll).
func TestPullLongHistoryInterrupted(t *testing.T) {
	errCrash := errors.New("crash")
	for _, c := range []struct {
		name             string
		writeAt, crashAt int // the part before which b writes, or crashes (0: none)
	}{
		{name: "crash", crashAt: 2},
		{name: "write", writeAt: 1},
		{name: "write and crash", writeAt: 2, crashAt: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			remote := memremote.New()
			a := newLongHistoryWriter(t, remote)
			b := newHistoryNode(t, "b", remote, 100)
			k := key("g", "long")
			wrote := false // once: the rest of the history may come in parts too
			b.store.opts.hookHistoryPart = func(hk Key, part int) error {
				if hk != k {
					t.Errorf("a part of the history of %s", hk)
				}
				if part == c.writeAt && !wrote {
					wrote = true
					b.put(k, "mine")
				}
				if part == c.crashAt {
					return errCrash
				}
				return nil
			}
			_, err := b.pull.PullOnce(ctx)
			if c.crashAt == 0 && err != nil {
				t.Fatal(err)
			}
			if c.crashAt > 0 {
				if !errors.Is(err, errCrash) {
					t.Fatalf("pull: %v, want the crash", err)
				}
				wantLongHistoryCut(t, b, c.writeAt > 0)
				b.restart("g")
				b.pullAll()
			}
			if c.writeAt > 0 {
				b.pushAll()
				b.pullAll()
				pullFilled(t, b) // the hole, from the part stored, may be more than a slice
			}
			if rec := b.get(key("g", "other")); string(rec.Value) != "o1" {
				t.Fatalf("other state: %+v", rec)
			}
			waitSnapshots(t, b.store)
			wantLongHistory(t, b, c.writeAt > 0)
			wantStillSyncing(t, a, b)
		})
	}
}

// wantLongHistoryCut checks n after the pull of g/long stopped after the
// first part of its history: the record is in, the history holds versions
// 1 to some version below it and is a gap above, listed as a hole.
func wantLongHistoryCut(t *testing.T, n *syncNode, mine bool) {
	t.Helper()
	ctx := context.Background()
	k := key("g", "long")
	if rec := n.get(k); rec.Version < longHistory {
		t.Fatalf("record: %+v", rec)
	}
	evs := mustEvents(t, n.store, k)
	stored := len(evs)
	if mine {
		stored--
	}
	if stored == 0 || stored >= longHistory-1 {
		t.Fatalf("%d events from the shared store", stored)
	}
	for i, e := range evs[:stored] {
		if e.ToVersion != uint64(i+1) || string(e.Value) != longValue(uint64(i+1)) {
			t.Fatalf("event %d: version %d, value %q", i, e.ToVersion, e.Value)
		}
	}
	if p, err := n.store.StateAtVersion(ctx, k, uint64(stored)); err != nil || string(p.Value) != longValue(uint64(stored)) {
		t.Fatalf("version %d: %+v, %v", stored, p, err)
	}
	if _, err := n.store.StateAtVersion(ctx, k, longHistory-1); !errors.Is(err, ErrHistoryGap) {
		t.Fatalf("a version not stored yet: %v, want a history gap", err)
	}
	rep, err := n.store.Validate(ctx, "g", "long")
	if err != nil || !rep.OK() || rep.GapCount != 1 || rep.Gaps[0].After != uint64(stored) {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
	holes, err := n.store.HistoryHoles(ctx, "g", "", 10)
	if err != nil || len(holes) != 1 || holes[0] != (syncer.HistoryHole{Key: syncer.Key(k), After: uint64(stored)}) {
		t.Fatalf("holes: %v, %v", holes, err)
	}
}

// TestPullHistoryInSlices: a state's missing history longer than one fetch
// reads (its bound set low here) comes in slices: the record is in with the
// oldest slice of its history, the versions above it are a gap listed as a
// hole, each poll's refill brings the next slices (two here), each stored
// before the next is read, and moves the hole up, and once the last is in,
// every version is there once, with no gap and no hole.
func TestPullHistoryInSlices(t *testing.T) { forRemotes(t, testPullHistoryInSlices) }

func testPullHistoryInSlices(t *testing.T, newRemote func() syncer.Remote) {
	const versions, slice = 1000, 100
	ctx := context.Background()
	remote := newRemote()
	a := &syncNode{t: t, node: "a", remote: remote, store: openMem(t, func(o *Options) { o.NodeID = "a" })}
	a.push = syncer.New(a.store, remote, syncer.Options{})
	k := key("g", "long")
	for i := 1; i <= versions; i++ {
		a.put(k, longValue(uint64(i)))
	}
	for a.store.Depth() > 0 {
		if rep := a.pushAll(); rep.Parked > 0 {
			t.Fatalf("push: %+v", rep)
		}
	}
	const perRefill = 2
	b := &syncNode{t: t, dir: t.TempDir(), node: "b", remote: remote, history: true, every: 100, maxFetched: slice,
		refillSlices: perRefill}
	b.open("g")
	t.Cleanup(func() { _ = b.store.Close(context.Background()) })

	// Each poll: the first applies the record with the first slice, and
	// every poll then refills two slices of the hole.
	for poll, stored := 1, (1+perRefill)*slice; stored < versions; poll, stored = poll+1, stored+perRefill*slice {
		b.pullAll()
		if rec := b.get(k); rec.Version != versions || string(rec.Value) != longValue(versions) {
			t.Fatalf("poll %d: record %+v", poll, rec)
		}
		evs := mustEvents(t, b.store, k)
		if len(evs) != stored {
			t.Fatalf("poll %d: %d events, want %d", poll, len(evs), stored)
		}
		for i, e := range evs {
			if e.ToVersion != uint64(i+1) || string(e.Value) != longValue(uint64(i+1)) {
				t.Fatalf("poll %d: event %d: version %d, value %q", poll, i, e.ToVersion, e.Value)
			}
		}
		if _, err := b.store.StateAtVersion(ctx, k, uint64(stored+1)); !errors.Is(err, ErrHistoryGap) {
			t.Fatalf("poll %d: a version not stored yet: %v, want a history gap", poll, err)
		}
		rep, err := b.store.Validate(ctx, "g", "long")
		if err != nil || !rep.OK() || rep.GapCount != 1 || rep.Gaps[0].After != uint64(stored) {
			t.Fatalf("poll %d: validate: %+v, %v", poll, rep, err)
		}
		holes, err := b.store.HistoryHoles(ctx, "g", "", 10)
		if err != nil || len(holes) != 1 || holes[0] != (syncer.HistoryHole{Key: syncer.Key(k), After: uint64(stored)}) {
			t.Fatalf("poll %d: holes %v, %v; want one after v%d", poll, holes, err, stored)
		}
	}
	b.pullAll() // the last slice
	waitSnapshots(t, b.store)
	evs := mustEvents(t, b.store, k)
	if len(evs) != versions {
		t.Fatalf("%d events, want %d", len(evs), versions)
	}
	for i, e := range evs {
		if e.ToVersion != uint64(i+1) || string(e.Value) != longValue(uint64(i+1)) {
			t.Fatalf("event %d: version %d, value %q", i, e.ToVersion, e.Value)
		}
	}
	for _, v := range []uint64{1, 150, 777, versions} {
		if p, err := b.store.StateAtVersion(ctx, k, v); err != nil || !p.Exact || string(p.Value) != longValue(v) {
			t.Fatalf("version %d: %+v, %v", v, p, err)
		}
	}
	rep, err := b.store.Validate(ctx, "g", "long")
	if err != nil || !rep.OK() || rep.GapCount != 0 || rep.Events != versions {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
	if holes, err := b.store.HistoryHoles(ctx, "g", "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes: %v, %v", holes, err)
	}
	// The state goes on: a's next write reaches b with its event.
	a.put(k, "next")
	a.pushAll()
	b.pullAll()
	if evs := mustEvents(t, b.store, k); len(evs) != versions+1 || string(evs[versions].Value) != "next" {
		t.Fatalf("%d events after the next write", len(evs))
	}
}
