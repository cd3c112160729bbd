package localcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/tai-state/tai-state/syncer"
)

// bigValueSize is the size of the values of the states whose history is
// bounded by bytes here: a few of them take a fetch over its bound.
const bigValueSize = 100_000

// bigValue is the value of version v of a state with large values.
func bigValue(v uint64) string {
	p := fmt.Sprintf("v%d-", v)
	return p + strings.Repeat("x", bigValueSize-len(p))
}

// newBigHistoryWriter returns node a after it wrote versions versions of
// large values to each of states, and pushed them.
func newBigHistoryWriter(t *testing.T, remote syncer.Remote, versions int, states ...Key) *syncNode {
	t.Helper()
	a := newSyncNode(t, "a", remote)
	for i := 1; i <= versions; i++ {
		for _, k := range states {
			a.put(k, bigValue(uint64(i)))
		}
	}
	for a.store.Depth() > 0 {
		if rep := a.pushAll(); rep.Parked > 0 {
			t.Fatalf("push: %+v", rep)
		}
	}
	return a
}

// wantBigHistory checks that n holds versions 1 to versions of k, once, and
// no hole or gap in its history.
func wantBigHistory(t *testing.T, n *syncNode, k Key, versions int) {
	t.Helper()
	ctx := context.Background()
	evs := mustEvents(t, n.store, k)
	if len(evs) != versions {
		t.Fatalf("%s: %d events, want %d", k, len(evs), versions)
	}
	for i, e := range evs {
		if e.ToVersion != uint64(i+1) || string(e.Value) != bigValue(uint64(i+1)) {
			t.Fatalf("%s: event %d: version %d", k, i, e.ToVersion)
		}
	}
	for _, v := range []uint64{1, uint64(versions) / 2, uint64(versions)} {
		if p, err := n.store.StateAtVersion(ctx, k, v); err != nil || !p.Exact || string(p.Value) != bigValue(v) {
			t.Fatalf("%s: version %d: exact %v, %v", k, v, p.Exact, err)
		}
	}
	rep, err := n.store.Validate(ctx, k.Governor, k.State)
	if err != nil || !rep.OK() || rep.GapCount != 0 || rep.Events != versions {
		t.Fatalf("%s: validate: %+v, %v", k, rep, err)
	}
	if holes, err := n.store.HistoryHoles(ctx, k.Governor, "", 10); err != nil || len(holes) != 0 {
		t.Fatalf("holes: %v, %v", holes, err)
	}
}

// TestPullHistoryBytesInSlices: a state whose missing history takes more
// bytes than one fetch reads (its bound set low here: 512 KiB, for values
// of 100 KB), though far fewer versions, comes in slices as a long one
// does: the record is in with the oldest slice, the versions above it are
// a gap listed as a hole, each poll's refill brings the next slice (one
// here) and moves the hole up, and once the last is in, every version is
// there once.
func TestPullHistoryBytesInSlices(t *testing.T) { forRemotes(t, testPullHistoryBytesInSlices) }

func testPullHistoryBytesInSlices(t *testing.T, newRemote func() syncer.Remote) {
	const versions, bound = 40, 512 << 10
	ctx := context.Background()
	remote := newRemote()
	k := key("g", "big")
	newBigHistoryWriter(t, remote, versions, k)
	b := &syncNode{t: t, dir: t.TempDir(), node: "b", remote: remote, history: true, maxFetchedBytes: bound,
		refillSlices: 1}
	b.open("g")
	t.Cleanup(func() { _ = b.store.Close(context.Background()) })

	stored := 0
	for poll := 1; stored < versions; poll++ {
		if poll > 20 {
			t.Fatalf("%d events after 20 polls", stored)
		}
		b.pullAll()
		if rec := b.get(k); rec.Version != versions || string(rec.Value) != bigValue(versions) {
			t.Fatalf("poll %d: record v%d", poll, rec.Version)
		}
		evs := mustEvents(t, b.store, k)
		// Each slice holds at most what takes it over the bound: the
		// first poll brings two (the record's, and the refill's).
		slices := 1
		if poll == 1 {
			slices = 2
		}
		if n := len(evs) - stored; n <= 0 || n*bigValueSize > slices*(bound+bigValueSize) {
			t.Fatalf("poll %d: %d events after %d", poll, len(evs), stored)
		}
		stored = len(evs)
		for i, e := range evs {
			if e.ToVersion != uint64(i+1) || string(e.Value) != bigValue(uint64(i+1)) {
				t.Fatalf("poll %d: event %d: version %d", poll, i, e.ToVersion)
			}
		}
		if stored == versions {
			if poll == 1 {
				t.Fatal("one poll brought every version")
			}
			break
		}
		if _, err := b.store.StateAtVersion(ctx, k, uint64(stored+1)); !errors.Is(err, ErrHistoryGap) {
			t.Fatalf("poll %d: a version not stored yet: %v, want a history gap", poll, err)
		}
		holes, err := b.store.HistoryHoles(ctx, "g", "", 10)
		if err != nil || len(holes) != 1 || holes[0] != (syncer.HistoryHole{Key: syncer.Key(k), After: uint64(stored)}) {
			t.Fatalf("poll %d: holes %v, %v; want one after v%d", poll, holes, err, stored)
		}
	}
	wantBigHistory(t, b, k, versions)
}

// heldHistory counts the bytes of event values a pull fetched and has not
// yet given to the local store, and the most it reached.
type heldHistory struct {
	mu         sync.Mutex
	now, most  int
	calls      int // ApplyRemote calls
	cursorCall int // the last one that stored the cursor (1 is the first)
	cursors    int // how many did
}

// heldRemote is a HistoryRemote that counts what Events returns.
type heldRemote struct {
	syncer.HistoryRemote
	held *heldHistory
}

func (r heldRemote) Events(ctx context.Context, k syncer.Key, after uint64, limit int) ([]syncer.Event, error) {
	evs, err := r.HistoryRemote.Events(ctx, k, after, limit)
	r.held.mu.Lock()
	defer r.held.mu.Unlock()
	for _, e := range evs {
		r.held.now += len(e.Value)
	}
	r.held.most = max(r.held.most, r.held.now)
	return evs, err
}

// heldStore is a Store (with every capability the pull looks for) whose
// ApplyRemote takes what it is given off the count, and notes the calls
// that store the cursor.
type heldStore struct {
	*Store
	held *heldHistory
}

func (s heldStore) ApplyRemote(ctx context.Context, b syncer.RemoteBatch) (syncer.ApplyResult, error) {
	s.held.mu.Lock()
	s.held.calls++
	for _, h := range b.History {
		for _, e := range h.Events {
			s.held.now -= len(e.Value)
		}
	}
	if b.Governor != "" {
		s.held.cursorCall = s.held.calls
		s.held.cursors++
	}
	s.held.mu.Unlock()
	return s.Store.ApplyRemote(ctx, b)
}

// TestPullPageInGroups: a page of records whose missing histories together
// take more than a page may hold (the fetch bound of bytes: 1 MiB here,
// with a history of 1 MB a state) is applied in groups, each group's
// histories fetched only once the group before is stored, so what the pull
// holds at once stays within about twice the bound; the governor's cursor
// is stored once, by the last call, and every state is in with its whole
// history.
func TestPullPageInGroups(t *testing.T) { forRemotes(t, testPullPageInGroups) }

func testPullPageInGroups(t *testing.T, newRemote func() syncer.Remote) {
	const states, versions, bound = 6, 10, 1 << 20
	remote := newRemote()
	var keys []Key
	for i := range states {
		keys = append(keys, key("g", fmt.Sprint("s", i)))
	}
	newBigHistoryWriter(t, remote, versions, keys...)
	b := newHistoryNode(t, "b", remote, 0)
	held := &heldHistory{}
	b.pull = syncer.NewPuller(heldStore{Store: b.store, held: held}, remote, syncer.PullOptions{Governors: []string{"g"},
		History: heldRemote{historyOf(remote), held}, HistoryMode: syncer.HistoryFull, MaxFetchedHistoryBytes: bound})
	rep := b.pullAll()
	if rep.Records != states || rep.Applied != states {
		t.Fatalf("pull: %+v", rep)
	}
	held.mu.Lock()
	defer held.mu.Unlock()
	if held.most > 2*bound || held.now != 0 {
		t.Fatalf("the pull held up to %d bytes of history at once (%d left); bound %d", held.most, held.now, bound)
	}
	if held.cursors != 1 || held.cursorCall != held.calls || held.calls < 3 {
		t.Fatalf("%d ApplyRemote calls, %d stored the cursor, the last of them call %d; want groups, the last one storing it",
			held.calls, held.cursors, held.cursorCall)
	}
	for _, k := range keys {
		wantBigHistory(t, b, k, versions)
	}
}
