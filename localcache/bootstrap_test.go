package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// bootNode is a store with its push, pull and snapshot loops over Firestore.
type bootNode struct {
	t     *testing.T
	store *Store
	push  *syncer.Syncer
	pull  *syncer.Puller
	snaps *syncer.SnapshotPusher
}

func newBootNode(t *testing.T, node string, remote interface {
	syncer.Remote
	syncer.HistoryRemote
}, mode syncer.HistoryMode, every int, now func() time.Time) *bootNode {
	t.Helper()
	s := openDisk(t, t.TempDir(), withNow(now), func(o *Options) {
		o.NodeID = node
		o.Snapshots = func(string) (int, int) { return every, 3 }
	})
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return &bootNode{t: t, store: s,
		push:  syncer.New(s, remote, syncer.Options{}),
		pull:  syncer.NewPuller(s, remote, syncer.PullOptions{Governors: []string{"g"}, History: remote, HistoryMode: mode}),
		snaps: syncer.NewSnapshotPusher(s, remote, syncer.SnapshotPushOptions{}),
	}
}

// sync pushes the journal and the snapshots, and pulls.
func (n *bootNode) sync() {
	n.t.Helper()
	ctx := context.Background()
	for n.store.Depth() > 0 {
		if _, err := n.push.SyncOnce(ctx); err != nil {
			n.t.Fatal(err)
		}
	}
	if _, err := n.pull.PullOnce(ctx); err != nil {
		n.t.Fatal(err)
	}
	waitSnapshots(n.t, n.store)
	waiting, err := n.snaps.PushOnce(ctx)
	if err != nil || waiting != 0 {
		n.t.Fatalf("snapshot push: %d waiting, %v", waiting, err)
	}
}

// writeHistory writes puts, deletes and transitions on three states.
func writeHistory(t *testing.T, s *Store, rounds int) {
	t.Helper()
	ctx := context.Background()
	_, err := s.Get(ctx, key("g", "m"))
	fresh := errors.Is(err, ErrNotFound)
	for i := range rounds {
		mustPut(t, s, key("g", "a"), fmt.Sprintf("a%d", i))
		if i%3 == 2 {
			mustDelete(t, s, key("g", "a"))
		}
		m := key("g", "m")
		if _, err := s.Transition(ctx, Transition{Key: m, From: map[bool]string{true: "", false: "open"}[fresh && i == 0], To: "open",
			Action: "reopen", Actor: "bot", Reason: fmt.Sprint("round ", i)}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Transition(ctx, Transition{Key: m, From: "open", To: "open", Action: "touch"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, key("g", "b"), "b only once")
}

// historyAnswers is what a node answers about governor g's history.
type historyAnswers struct {
	Events     []Event
	Replay     []ReplayItem
	Latest     []ReplayItem
	Validation ValidationReport
	Versions   map[string][]any // per state: StateAtVersion of every version up to the current one
	Times      map[string][]any // per state: StateAt of every event's time, and just before it
}

func answers(t *testing.T, s *Store, times []int64) historyAnswers {
	t.Helper()
	ctx := context.Background()
	var h historyAnswers
	page, err := s.QueryEvents(ctx, EventQuery{Governor: "g", Limit: MaxEventLimit})
	if err != nil || page.Next != "" {
		t.Fatalf("events: %v (next %q)", err, page.Next)
	}
	h.Events = page.Events
	for _, latest := range []bool{false, true} {
		rp, err := s.Replay(ctx, ReplayQuery{Governor: "g", Latest: latest, Limit: MaxEventLimit})
		if err != nil || rp.Next != "" {
			t.Fatalf("replay: %v", err)
		}
		for i := range rp.Items {
			if rp.Items[i].Snapshot != nil {
				rp.Items[i].Snapshot.SyncedAt, rp.Items[i].Snapshot.SyncedVersion = 0, 0
			}
		}
		if latest {
			h.Latest = rp.Items
		} else {
			h.Replay = rp.Items
		}
	}
	if h.Validation, err = s.Validate(ctx, "g", ""); err != nil {
		t.Fatal(err)
	}
	answer := func(p PastState, err error) any {
		var ge *HistoryGapError
		switch {
		case errors.As(err, &ge):
			return *ge
		case errors.Is(err, ErrNotFound):
			return "not found"
		case err != nil:
			t.Fatal(err)
		}
		p.SyncedAt, p.SyncedVersion = 0, 0
		return p
	}
	h.Versions, h.Times = map[string][]any{}, map[string][]any{}
	for _, st := range []string{"a", "b", "m"} {
		k := key("g", st)
		rec, err := s.Get(ctx, k)
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		for v := uint64(1); v <= rec.Version; v++ {
			h.Versions[st] = append(h.Versions[st], answer(s.StateAtVersion(ctx, k, v)))
		}
		for _, ns := range times {
			h.Times[st] = append(h.Times[st], answer(s.StateAt(ctx, k, time.Unix(0, ns))), answer(s.StateAt(ctx, k, time.Unix(0, ns-1))))
		}
	}
	return h
}

func eventTimes(evs []Event) []int64 {
	var out []int64
	for _, e := range evs {
		out = append(out, e.Change.Time)
	}
	return out
}

func compareAnswers(t *testing.T, a, b historyAnswers) {
	t.Helper()
	// Automatic snapshots are best effort: a state written faster than the
	// snapshot loop runs gets a snapshot of its latest due version only
	// (noteSnapshotsDue), so the writer may hold fewer than a node that
	// imported the versions. The answers must agree all the same.
	a.Validation.Snapshots, b.Validation.Snapshots = 0, 0
	v := reflect.ValueOf(a)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if x, y := v.Field(i).Interface(), reflect.ValueOf(b).Field(i).Interface(); !reflect.DeepEqual(x, y) {
			t.Errorf("%s differ:\n A %+v\n B %+v", name, x, y)
		}
	}
}

// A fresh node bootstraps a governor from Firestore: with the full history,
// and, after a cleanup on the writer, from its newest snapshot and the
// later events. Its history answers are the writer's; the versions before
// the snapshot are a gap on both.
func TestBootstrapFromFirestore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    syncer.HistoryMode
		cleanup bool
	}{
		{"full", syncer.HistoryFull, false},
		{"since snapshot after cleanup", syncer.HistorySinceSnapshot, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			remote := firestoretest.Open(t)
			clock := newTickClock()
			every := 4
			if tc.cleanup {
				every = 1000 // manual snapshots only: the cut is the newest snapshot
			}
			a := newBootNode(t, "na", remote, tc.mode, every, clock.Now)
			writeHistory(t, a.store, 9)
			a.sync()
			ctx := context.Background()
			if tc.cleanup {
				for _, st := range []string{"a", "m"} {
					if _, _, err := a.store.Snapshot(ctx, key("g", st)); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := a.store.Cleanup(ctx, CleanupPolicy{Governor: "g", MaxAge: time.Nanosecond}); err != nil {
					t.Fatal(err)
				}
				writeHistory(t, a.store, 1)
				a.sync()
			}
			times := eventTimes(mustAllEvents(t, a.store))
			times = append(times, clock.Now().UnixNano())

			b := newBootNode(t, "nb", remote, tc.mode, every, clock.Now)
			b.sync()
			compareAnswers(t, answers(t, a.store, times), answers(t, b.store, times))
			if tc.cleanup {
				first := mustEvents(t, b.store, key("g", "m"))[0]
				_, err := b.store.StateAtVersion(ctx, key("g", "m"), first.FromVersion-1)
				if !errors.Is(err, ErrHistoryGap) {
					t.Fatalf("a version before the bootstrapped history: %v, want a history gap", err)
				}
			}

			// Later changes of A reach B with their events; B snapshots
			// the pulled versions too.
			writeHistory(t, a.store, 5)
			a.sync()
			b.sync()
			compareAnswers(t, answers(t, a.store, times), answers(t, b.store, times))
			if rep, err := b.store.Validate(ctx, "g", ""); err != nil || !rep.OK() {
				t.Fatalf("validate B: %+v, %v", rep, err)
			}
		})
	}
}

func mustAllEvents(t *testing.T, s *Store) []Event {
	t.Helper()
	page, err := s.QueryEvents(context.Background(), EventQuery{Governor: "g", Limit: MaxEventLimit})
	if err != nil {
		t.Fatal(err)
	}
	return page.Events
}

// A node's snapshots reach Firestore through the outbox, which empties;
// snapshots of changes not pushed yet wait there.
func TestSnapshotOutbox(t *testing.T) {
	remote := firestoretest.Open(t)
	a := newBootNode(t, "na", remote, syncer.HistorySinceSnapshot, 4, newTickClock().Now)
	ctx := context.Background()
	k := key("g", "s")
	for i := range 9 {
		mustPut(t, a.store, k, fmt.Sprint(i))
	}
	waitSnapshots(t, a.store)
	if waiting, err := a.snaps.PushOnce(ctx); err != nil || waiting != 2 {
		t.Fatalf("push before the journal: %d waiting, %v; want 2 (versions 4 and 8)", waiting, err)
	}
	a.sync()
	got, err := remote.Snapshots(ctx, syncer.Key(k), 0, 100)
	if err != nil || len(got) != 2 || got[0].Version != 4 || got[1].Version != 8 {
		t.Fatalf("remote snapshots: %+v, %v", got, err)
	}
	if out, err := a.store.UnpushedSnapshots(ctx, syncer.SnapshotRef{}, 0); err != nil || len(out) != 0 {
		t.Fatalf("outbox after the push: %+v, %v", out, err)
	}
	// Retention applies remotely too.
	for i := range 12 {
		mustPut(t, a.store, k, fmt.Sprint(i))
	}
	waitSnapshots(t, a.store) // taken in the background: 12, 16 and 20
	a.sync()
	got, err = remote.Snapshots(ctx, syncer.Key(k), 0, 100)
	var versions []uint64
	for _, s := range got {
		versions = append(versions, s.Version)
	}
	if err != nil || !slices.Equal(versions, []uint64{12, 16, 20}) {
		t.Fatalf("remote snapshots %v, %v; want the 3 newest", versions, err)
	}
}

// A remote record kept aside for a pending local write brings no history:
// the versions may be this node's own.
func TestHistoryNotStoredWhilePending(t *testing.T) {
	remote := firestoretest.Open(t)
	clock := newTickClock()
	a := newBootNode(t, "na", remote, syncer.HistorySinceSnapshot, 4, clock.Now)
	b := newBootNode(t, "nb", remote, syncer.HistorySinceSnapshot, 4, clock.Now)
	k := key("g", "s")
	mustPut(t, a.store, k, "a1")
	mustPut(t, a.store, k, "a2")
	a.sync()
	mustPut(t, b.store, k, "b1") // pending on b, version 1
	if _, err := b.pull.PullOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := mustEvents(t, b.store, k)
	if len(evs) != 1 || evs[0].Origin != b.store.Origin() {
		t.Fatalf("b's events while its write is pending: %+v", evs)
	}
	b.sync() // b's write wins a conflict, and is committed as version 3
	b.sync()
	a.sync()
	ea, eb := mustEvents(t, a.store, k), mustEvents(t, b.store, k)
	if len(ea) != 3 || ea[2].Origin != b.store.Origin() {
		t.Fatalf("a's events: %+v", ea)
	}
	// b's own event left version 1, which is a's in the shared store, and
	// the shared store's history came in: b's log is a's.
	if len(eb) != 3 || eb[0].OpID != ea[0].OpID || eb[1].OpID != ea[1].OpID || eb[2].OpID != ea[2].OpID || eb[2].ToVersion != 3 {
		t.Fatalf("b's events: %+v; want a's: %+v", eb, ea)
	}
}

// Pulls that store history run concurrently with local writes, snapshots,
// cleanup and the snapshot pusher on the pulling node: its log stays valid
// and holds the writer's events.
func TestHistoryImportConcurrent(t *testing.T) {
	remote := firestoretest.Open(t)
	clock := newTickClock()
	a := newBootNode(t, "na", remote, syncer.HistoryFull, 4, clock.Now)
	b := newBootNode(t, "nb", remote, syncer.HistoryFull, 4, clock.Now)
	ctx := context.Background()
	const states = 6
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	loop := func(f func(i int) error) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for w := range 3 { // b's own writers, on states of their own
		loop(func(i int) error {
			_, err := b.store.Write(ctx, Write{Key: key("g", fmt.Sprintf("b-%d", w)), Value: []byte{0xa1, byte(0x61 + i%26)}})
			return err
		})
	}
	loop(func(int) error { _, err := b.store.SnapshotGovernor(ctx, "g"); return err })
	loop(func(int) error {
		_, err := b.store.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 6})
		return err
	})
	loop(func(int) error { _, err := b.pull.PullOnce(ctx); return err })
	loop(func(int) error { _, err := b.snaps.PushOnce(ctx); return err })
	for round := range 6 {
		for i := range states {
			mustPut(t, a.store, key("g", fmt.Sprint("a-", i)), fmt.Sprint(round))
		}
		a.sync()
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	b.sync()
	if rep, err := b.store.Validate(ctx, "g", ""); err != nil || !rep.OK() {
		t.Fatalf("validate B: %+v, %v", rep, err)
	}
	for i := range states {
		k := key("g", fmt.Sprint("a-", i))
		ea, eb := mustEvents(t, a.store, k), mustEvents(t, b.store, k)
		if len(eb) == 0 || !reflect.DeepEqual(eb, ea[len(ea)-len(eb):]) {
			t.Fatalf("%s: B holds %d events that are not A's last ones (A has %d)", k, len(eb), len(ea))
		}
	}
}

// TestBootstrapLargeGovernor: a new node pulls a governor larger than one
// local transaction holds, in one page (as a watch's first delivery
// brings a whole governor): it is applied in several transactions, every
// state with its event where the remote keeps history.
func TestBootstrapLargeGovernor(t *testing.T) { forRemotes(t, testBootstrapLargeGovernor) }

func testBootstrapLargeGovernor(t *testing.T, newRemote func() syncer.Remote) {
	const states = 1000
	ctx := context.Background()
	remote := newRemote()
	a := newSyncNode(t, "a", remote, "g")
	value := bytes.Repeat([]byte("v"), 60)
	for i := 0; i < states; i += 250 { // at most 250 writes fit one Firestore transaction
		ws := make([]Write, 250)
		for j := range ws {
			ws[j] = Write{Key: key("g", fmt.Sprintf("s%05d", i+j)), Value: value}
		}
		if _, err := a.store.WriteBatch(ctx, ws); err != nil {
			t.Fatal(err)
		}
	}
	for a.store.Depth() > 0 {
		if rep := a.pushAll(); rep.Parked > 0 {
			t.Fatalf("push: %+v", rep)
		}
	}

	// b's transactions hold about 300 KiB: less than half the page.
	b := &syncNode{t: t, dir: t.TempDir(), node: "b", remote: remote}
	b.store = openDisk(t, b.dir, func(o *Options) { o.NodeID, o.memTableSize = "b", 2<<20 })
	t.Cleanup(func() { _ = b.store.Close(context.Background()) })
	opts := syncer.PullOptions{Governors: []string{"g"}, PageSize: states + 100}
	history, withHistory := remote.(syncer.HistoryRemote)
	if withHistory {
		opts.History, opts.HistoryMode = history, syncer.HistoryFull
	}
	b.pull = syncer.NewPuller(b.store, remote, opts)
	if rep := b.pullAll(); rep.Applied != states {
		t.Fatalf("pull: %+v; want %d states applied", rep, states)
	}
	for _, i := range []int{0, states / 2, states - 1} {
		st := fmt.Sprintf("s%05d", i)
		rec := b.get(key("g", st))
		if !bytes.Equal(rec.Value, value) || rec.Version != 1 {
			t.Fatalf("%s on b: %+v", st, rec)
		}
		evs, err := b.store.Events(ctx, key("g", st))
		if err != nil || withHistory && len(evs) != 1 {
			t.Fatalf("events of %s on b: %d, %v", st, len(evs), err)
		}
	}
}

// TestHistoryAfterALongAbsence: a node holding a state's history misses
// more versions than it continues event by event (it was offline): it
// starts again at the newest remote snapshot, and the versions between are
// a gap in its history, not a pull that cannot be applied.
func TestHistoryAfterALongAbsence(t *testing.T) {
	remote := firestoretest.Open(t)
	ctx := context.Background()
	a := newBootNode(t, "na", remote, syncer.HistorySinceSnapshot, 100, time.Now)
	b := newBootNode(t, "nb", remote, syncer.HistorySinceSnapshot, 100, time.Now)
	k := key("g", "s")
	mustPut(t, a.store, k, "v1")
	a.sync()
	b.sync()
	const versions = 620 // more than the 500 continued event by event
	for i := 2; i <= versions; i++ {
		mustPut(t, a.store, k, fmt.Sprint("v", i))
	}
	a.sync()
	b.sync()
	if rec, err := b.store.Get(ctx, k); err != nil || rec.Version != versions {
		t.Fatalf("b's record: %+v, %v", rec, err)
	}
	evs := mustEvents(t, b.store, k)
	if first := evs[1].ToVersion; len(evs) != 1+versions-600 || evs[0].ToVersion != 1 || first != 601 {
		t.Fatalf("b's events: %d, versions %d, %d, ...; want 1, then 601 to %d", len(evs), evs[0].ToVersion, first, versions)
	}
	if _, err := b.store.StateAtVersion(ctx, k, 300); !errors.Is(err, ErrHistoryGap) {
		t.Fatalf("a version b missed: %v, want a history gap", err)
	}
	if p, err := b.store.StateAtVersion(ctx, k, 610); err != nil || string(p.Value) != "v610" {
		t.Fatalf("version 610 on b: %+v, %v", p, err)
	}
	if rep, err := b.store.Validate(ctx, "g", ""); err != nil || !rep.OK() {
		t.Fatalf("validate b: %+v, %v", rep, err)
	}
}
