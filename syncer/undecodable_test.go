package syncer_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// undecodableBackend is a remote with a way to write a state document that
// does not decode (as another tool or version might) and to delete a state
// document by hand, as an operator repairing it would.
type undecodableBackend struct {
	name string
	open func(t *testing.T) (r syncer.Remote, plant, remove func(t *testing.T, k syncer.Key))
}

var undecodableBackends = []undecodableBackend{
	{"memremote", func(t *testing.T) (syncer.Remote, func(*testing.T, syncer.Key), func(*testing.T, syncer.Key)) {
		m := memremote.New()
		return m, func(_ *testing.T, k syncer.Key) {
			m.PutUndecodable(k, errors.New("version: a string, not an integer (planted)"))
		}, func(_ *testing.T, k syncer.Key) { m.Forget(k) }
	}},
	{"firestore", func(t *testing.T) (syncer.Remote, func(*testing.T, syncer.Key), func(*testing.T, syncer.Key)) {
		client, root := firestoretest.Client(t)
		return firestore.New(client, firestore.Config{Root: root}), func(t *testing.T, k syncer.Key) {
				firestoretest.PutUndecodable(t, client, root, k)
			}, func(t *testing.T, k syncer.Key) {
				if _, err := client.Doc(root + "/governors/" + k.Governor + "/states/" + k.State).Delete(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
	}},
}

// TestPullUndecodable: a state document that does not decode, next to good
// ones in a governor, does not stop the governor's pull: polls (in pages)
// and watch deliveries leave it out and apply every other state; it is
// counted, named by Undecodable and logged once; a Fetch of it fails with
// ErrUndecodable, not ErrNotFound; a local write of it is parked, not
// written over it; once it is repaired the pull takes the state again.
func TestPullUndecodable(t *testing.T) {
	for _, be := range undecodableBackends {
		t.Run(be.name, func(t *testing.T) {
			t.Run("Poll", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				r, plant, _ := be.open(t)
				testPullUndecodablePoll(t, ctx, r, plant)
			})
			t.Run("Watch", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				r, plant, remove := be.open(t)
				testPullUndecodableWatch(t, ctx, r, plant, remove)
			})
		})
	}
}

func testPullUndecodablePoll(t *testing.T, ctx context.Context, r syncer.Remote, plant func(*testing.T, syncer.Key)) {
	a := newNode("node-a", r, syncer.PullOptions{})
	for _, s := range []string{"k1", "k2"} {
		put(t, a.j, key(s), s)
	}
	syncOnce(t, ctx, a.s)
	bad := key("bad")
	plant(t, bad)
	for _, s := range []string{"k3", "k4", "k5"} {
		put(t, a.j, key(s), s)
	}
	syncOnce(t, ctx, a.s)

	var logs syncBuffer
	c := newNode("node-c", r, syncer.PullOptions{PageSize: 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	rep, err := c.p.PullOnce(ctx)
	if err != nil {
		t.Fatalf("PullOnce: %v", err)
	}
	if rep.Applied != 5 || rep.Undecodable != 1 {
		t.Fatalf("report %+v, want 5 applied and 1 left out", rep)
	}
	for _, s := range []string{"k1", "k2", "k3", "k4", "k5"} {
		checkMatchesRemote(t, ctx, c, r, key(s))
	}
	if _, ok := c.j.Record(bad); ok {
		t.Fatal("the document that does not decode was stored")
	}
	if _, ok := c.p.FreshAt("g"); !ok {
		t.Fatal("the governor does not count as pulled")
	}
	st := c.p.Stats()
	if st.Undecodable != 1 || st.UndecodableStates != 1 || st.LastError != "" {
		t.Fatalf("stats %+v", st)
	}
	d := c.p.Undecodable(bad)
	if d == nil || d.Key != bad || !strings.Contains(d.Doc, "bad") || d.Err == nil {
		t.Fatalf("Undecodable(%s) = %+v", bad, d)
	}
	if c.p.Undecodable(key("k1")) != nil {
		t.Fatal("a good state is undecodable")
	}
	// The cursor is past it: the next pull neither sees nor logs it again.
	if rep := pullOnce(t, ctx, c); rep.Undecodable != 0 || rep.Applied != 0 {
		t.Fatalf("second pull: %+v", rep)
	}
	if n := strings.Count(logs.String(), "remote document does not decode"); n != 1 || !strings.Contains(logs.String(), d.Doc) {
		t.Fatalf("logged %d times, want once with %s:\n%s", n, d.Doc, logs.String())
	}

	// A read of it is an error that names it, not a miss.
	_, _, err = c.p.Fetch(ctx, bad)
	var fe *syncer.UndecodableError
	if !errors.Is(err, syncer.ErrUndecodable) || !errors.Is(err, syncer.ErrPermanent) || errors.Is(err, syncer.ErrNotFound) ||
		!errors.As(err, &fe) || fe.Doc != d.Doc {
		t.Fatalf("Fetch: %v, want ErrUndecodable naming %s", err, d.Doc)
	}
	if strings.Count(logs.String(), "remote document does not decode") != 1 {
		t.Fatal("the Fetch logged the same document again")
	}

	// A local write of it is parked: it is not written over the document.
	put(t, c.j, bad, "over")
	if srep := syncOnce(t, ctx, c.s); srep.Parked != 1 || srep.Pushed != 0 {
		t.Fatalf("push over it: %+v; want it parked", srep)
	}
	if p := c.j.ParkedEntries(); len(p) != 1 || p[0].Key != bad || !strings.Contains(p[0].Reason, d.Doc) {
		t.Fatalf("parked %+v, want %s with a reason that names %s", p, bad, d.Doc)
	}
	if _, err := r.Get(ctx, bad); !errors.Is(err, syncer.ErrUndecodable) {
		t.Fatalf("after the push, Get: %v", err)
	}
}

func testPullUndecodableWatch(t *testing.T, ctx context.Context, r syncer.Remote, plant, remove func(*testing.T, syncer.Key)) {
	a := newNode("node-a", r, syncer.PullOptions{})
	put(t, a.j, key("k1"), "k1")
	syncOnce(t, ctx, a.s)
	bad := key("bad")
	plant(t, bad) // there when the watch starts: its first poll leaves it out
	put(t, a.j, key("k2"), "k2")
	syncOnce(t, ctx, a.s)

	// No polls once the watch is up: what comes later, the watch delivers.
	c := newNode("node-c", r, syncer.PullOptions{Interval: time.Hour, Resync: time.Hour})
	runLoops(t, ctx, c)
	waitFor(t, 20*time.Second, func() bool {
		at, ok := c.p.FreshAt("g")
		return ok && time.Since(at) < time.Second
	}, "the governor is live")
	checkMatchesRemote(t, ctx, c, r, key("k1"))
	checkMatchesRemote(t, ctx, c, r, key("k2"))
	if c.p.Undecodable(bad) == nil {
		t.Fatal("the document there before the watch is not reported")
	}

	bad2 := key("bad2")
	plant(t, bad2)
	put(t, a.j, key("k3"), "k3")
	syncOnce(t, ctx, a.s)
	waitFor(t, 20*time.Second, func() bool { return matchesRemote(ctx, c, r, key("k3")) }, "the watch delivers past it")
	waitFor(t, 5*time.Second, func() bool { return c.p.Undecodable(bad2) != nil }, "the watch reports it")
	st := c.p.Stats()
	if st.WatchRestarts != 0 || st.UndecodableStates != 2 || st.Undecodable < 2 || st.LastError != "" {
		t.Fatalf("stats %+v: want the watch up, 2 states that do not decode", st)
	}
	if at, ok := c.p.FreshAt("g"); !ok || time.Since(at) > time.Second {
		t.Fatalf("FreshAt with the watch up: %v, %v", at, ok)
	}

	// Repaired by hand (deleted, then written again): the watch takes it.
	remove(t, bad)
	put(t, a.j, bad, "repaired")
	syncOnce(t, ctx, a.s)
	waitFor(t, 20*time.Second, func() bool { return matchesRemote(ctx, c, r, bad) }, "the repaired state is delivered")
	// Forgotten once the record is stored, so a moment after it shows.
	waitFor(t, 5*time.Second, func() bool { return c.p.Undecodable(bad) == nil }, "the repaired state is forgotten")
	if st := c.p.Stats(); st.UndecodableStates != 1 || st.WatchRestarts != 0 {
		t.Fatalf("stats after the repair %+v", st)
	}
}

// TestPullUndecodableKept: the documents that do not decode are kept by the
// applier (UndecodableKeeper), so a Puller made again over the same local
// store (a restart) knows them although its cursor is past them: they are
// counted, named by Undecodable, and not logged one by one again. Once one
// is repaired and pulled it is forgotten, for good. Past MaxUndecodable
// states, more are counted as dropped, not kept; that count is kept, and
// does not go down.
func TestPullUndecodableKept(t *testing.T) {
	for _, be := range undecodableBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, plant, remove := be.open(t)
			a := newNode("node-a", r, syncer.PullOptions{})
			put(t, a.j, key("k1"), "k1")
			bad, bad2 := key("bad"), key("bad2")
			plant(t, bad)
			syncOnce(t, ctx, a.s)

			c := newNode("node-c", r, syncer.PullOptions{})
			pullOnce(t, ctx, c)
			found := c.p.Undecodable(bad)
			if found == nil {
				t.Fatal("the document is not reported")
			}
			wantKept(t, ctx, c.j, bad)

			// A restart: a new Puller over the same store.
			var logs syncBuffer
			restart := func(opts syncer.PullOptions) *syncer.Puller {
				opts.Governors = []string{"g"}
				opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				return syncer.NewPuller(c.j, c.r, opts)
			}
			p := restart(syncer.PullOptions{})
			if rep, err := p.PullOnce(ctx); err != nil || rep.Undecodable != 0 {
				t.Fatalf("pull after the restart: %+v, %v; want nothing left out (the cursor is past it)", rep, err)
			}
			d := p.Undecodable(bad)
			if d == nil || d.Doc != found.Doc || !d.Time.Equal(found.Time) || d.Err == nil || d.Err.Error() != found.Err.Error() {
				t.Fatalf("Undecodable(%s) after the restart = %+v, want %+v", bad, d, found)
			}
			if st := p.Stats(); st.UndecodableStates != 1 {
				t.Fatalf("stats after the restart %+v, want 1 state that does not decode", st)
			}
			if strings.Contains(logs.String(), "remote document does not decode") ||
				!strings.Contains(logs.String(), "did not decode when last seen") {
				t.Fatalf("log after the restart, want one line that counts it:\n%s", logs.String())
			}

			// Past the cap: counted, not kept.
			plant(t, bad2)
			p = restart(syncer.PullOptions{MaxUndecodable: 1})
			if rep, err := p.PullOnce(ctx); err != nil || rep.Undecodable != 1 {
				t.Fatalf("pull past the cap: %+v, %v", rep, err)
			}
			if st := p.Stats(); st.UndecodableStates != 1 || st.UndecodableDropped != 1 || p.Undecodable(bad2) != nil {
				t.Fatalf("stats past the cap %+v, want 1 state and 1 dropped", st)
			}
			wantKept(t, ctx, c.j, bad)
			// The count of the documents dropped outlives a restart, the
			// set below the cap again or not.
			for _, limit := range []int{1, 0} {
				p = restart(syncer.PullOptions{MaxUndecodable: limit})
				pullOnce(t, ctx, &node{j: c.j, p: p})
				if st := p.Stats(); st.UndecodableDropped != 1 {
					t.Fatalf("stats after a restart with MaxUndecodable %d: %+v, want 1 dropped", limit, st)
				}
			}

			// Repaired by hand (deleted, then written again): forgotten,
			// across restarts too.
			remove(t, bad)
			put(t, a.j, bad, "repaired")
			syncOnce(t, ctx, a.s)
			if _, err := p.PullOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if d := p.Undecodable(bad); d != nil {
				t.Fatalf("Undecodable(%s) after its repair: %v", bad, d)
			}
			wantKept(t, ctx, c.j)
			p = restart(syncer.PullOptions{})
			pullOnce(t, ctx, &node{j: c.j, p: p})
			if st := p.Stats(); st.UndecodableStates != 0 || st.UndecodableDropped != 1 || p.Undecodable(bad) != nil {
				t.Fatalf("stats after the repair and a restart %+v", st)
			}
		})
	}
}

// wantKept checks that j keeps the documents of keys, and no other.
func wantKept(t *testing.T, ctx context.Context, j *syncer.MemJournal, keys ...syncer.Key) {
	t.Helper()
	docs, err := j.KeptUndecodable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range docs {
		got = append(got, d.Key.String())
	}
	var want []string
	for _, k := range keys {
		want = append(want, k.String())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
}

// TestPullUndecodableRecheck: a document that does not decode and is then
// deleted by hand (not written again) is not in the change stream any
// more; complete polls read the states in the set again, a few at a time,
// those checked longest ago first, and forget the ones whose documents are
// gone. One read again within UndecodableRecheckEvery is not read again.
func TestPullUndecodableRecheck(t *testing.T) {
	for _, be := range undecodableBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, plant, remove := be.open(t)
			a := newNode("node-a", r, syncer.PullOptions{})
			put(t, a.j, key("k1"), "k1")
			syncOnce(t, ctx, a.s)
			bad1, bad2, bad3 := key("bad1"), key("bad2"), key("bad3")
			for _, k := range []syncer.Key{bad1, bad2, bad3} {
				plant(t, k)
			}

			// Read again no sooner than every hour: the deletion goes
			// unseen.
			c := newNode("node-c", r, syncer.PullOptions{UndecodableRechecks: 1, UndecodableRecheckEvery: time.Hour})
			pullOnce(t, ctx, c)
			wantKept(t, ctx, c.j, bad1, bad2, bad3)
			remove(t, bad1)
			remove(t, bad3)
			pullOnce(t, ctx, c)
			wantKept(t, ctx, c.j, bad1, bad2, bad3)

			// A restart reads again at once, one state a poll, the one
			// checked longest ago first.
			p := syncer.NewPuller(c.j, c.r, syncer.PullOptions{Governors: []string{"g"},
				UndecodableRechecks: 1, UndecodableRecheckEvery: time.Nanosecond})
			c = &node{j: c.j, p: p}
			pullOnce(t, ctx, c) // bad1: gone
			wantKept(t, ctx, c.j, bad2, bad3)
			pullOnce(t, ctx, c) // bad2: still there
			wantKept(t, ctx, c.j, bad2, bad3)
			pullOnce(t, ctx, c) // bad3, not bad2 again: gone
			wantKept(t, ctx, c.j, bad2)
			if st := p.Stats(); st.UndecodableStates != 1 || p.Undecodable(bad2) == nil || st.Fetches != 3 || st.LastError != "" {
				t.Fatalf("stats %+v, want bad2 left and 3 states read again", st)
			}
		})
	}
}

// TestPullUndecodableRecheckRepaired: a document kept as not decoding
// whose state holds a record that decodes (a crash after the record was
// stored and before the document was forgotten; the cursor is past the
// record) is read again by the next poll after a restart, and forgotten.
func TestPullUndecodableRecheckRepaired(t *testing.T) {
	for _, be := range undecodableBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, _, _ := be.open(t)
			a := newNode("node-a", r, syncer.PullOptions{})
			k1 := key("k1")
			put(t, a.j, k1, "k1")
			syncOnce(t, ctx, a.s)
			c := newNode("node-c", r, syncer.PullOptions{})
			pullOnce(t, ctx, c)
			rec, ok := c.j.Record(k1)
			if !ok {
				t.Fatal("k1 not pulled")
			}
			old := &syncer.UndecodableError{Key: k1, Doc: "an earlier version", Time: rec.RemoteTime.Add(-time.Second),
				Err: errors.New("version: a string (planted)")}
			if err := c.j.KeepUndecodable(ctx, []*syncer.UndecodableError{old}); err != nil {
				t.Fatal(err)
			}

			p := syncer.NewPuller(c.j, c.r, syncer.PullOptions{Governors: []string{"g"}})
			if rep, err := p.PullOnce(ctx); err != nil || rep.Records != 0 {
				t.Fatalf("pull after the restart: %+v, %v; want nothing new", rep, err)
			}
			if d := p.Undecodable(k1); d != nil {
				t.Fatalf("Undecodable(%s) = %v after it was read again", k1, d)
			}
			wantKept(t, ctx, c.j)
			checkMatchesRemote(t, ctx, &node{j: c.j, p: p}, r, k1)
		})
	}
}
