package localcache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

func withSnapshots(every, keep int) func(*Options) {
	return func(o *Options) { o.Snapshots = func(string) (int, int) { return every, keep } }
}

// waitSnapshots waits until the automatic snapshots due are taken.
func waitSnapshots(t testing.TB, s *Store) {
	t.Helper()
	waitFor(t, "automatic snapshots", func() bool { return s.snaps.waiting.Load() == 0 })
}

func snapshotVersionsOf(t testing.TB, s *Store, k Key) []uint64 {
	t.Helper()
	snaps, err := s.Snapshots(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, sn := range snaps {
		out = append(out, sn.Version)
	}
	return out
}

func markVersionsOf(t testing.TB, s *Store, k Key) []uint64 {
	t.Helper()
	var out []uint64
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindMark, k)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			_, _, v, err := parseVersionedKey(kindMark, it.Item().Key())
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// drain pushes the journal to a remote until it is empty.
func drain(t testing.TB, s *Store, remote syncer.Remote) {
	t.Helper()
	push := syncer.New(s, remote, syncer.Options{})
	for s.Depth() > 0 {
		if _, err := push.SyncOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// A snapshot is taken at every multiple of N made by a local write, holds
// that version's record, and a state keeps its K newest.
func TestSnapshotEvery(t *testing.T) {
	s := openMem(t, withNow(newTickClock().Now), func(o *Options) {
		o.Snapshots = func(gov string) (int, int) {
			if gov == "off" {
				return 0, 0
			}
			return 10, 3
		}
	})
	ctx := context.Background()
	k := key("g", "s")
	for i := 1; i <= 55; i++ {
		mustPut(t, s, k, fmt.Sprintf("v%d", i))
		mustPut(t, s, key("off", "s"), "x")
		waitSnapshots(t, s)
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{30, 40, 50}) {
		t.Fatalf("snapshots %v, want [30 40 50]", got)
	}
	if got := markVersionsOf(t, s, k); !slices.Equal(got, []uint64{10, 20, 30, 40, 50}) {
		t.Fatalf("time marks %v, want every snapshot's", got)
	}
	if got := snapshotVersionsOf(t, s, key("off", "s")); len(got) != 0 {
		t.Fatalf("snapshots of a governor with none: %v", got)
	}
	snaps, err := s.Snapshots(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps {
		e, err := s.EventAt(ctx, k, sn.Version)
		if err != nil {
			t.Fatal(err)
		}
		if string(sn.Value) != fmt.Sprintf("v%d", sn.Version) || sn.OpID != e.OpID || sn.Change != e.Change ||
			sn.Clock.HLC != e.Clock.HLC || sn.Deleted || sn.TakenAt == 0 {
			t.Fatalf("snapshot %+v, event %+v", sn, e)
		}
	}
	rep, err := s.Validate(ctx, "g", "")
	if err != nil || !rep.OK() || rep.Snapshots != 3 {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
}

// The snapshot op takes the current record (a deletion too), once per
// version; a governor's takes every live state.
func TestSnapshotOnDemand(t *testing.T) {
	s := openMem(t, withSnapshots(0, 2))
	ctx := context.Background()
	k := key("g", "s")
	mustPut(t, s, k, "a")
	mustPut(t, s, k, "b")
	sn, taken, err := s.Snapshot(ctx, k)
	if err != nil || !taken || sn.Version != 2 || string(sn.Value) != "b" {
		t.Fatalf("snapshot: %+v %v %v", sn, taken, err)
	}
	if sn2, taken, err := s.Snapshot(ctx, k); err != nil || taken || sn2.Version != 2 || sn2.TakenAt != sn.TakenAt {
		t.Fatalf("second snapshot: %+v %v %v", sn2, taken, err)
	}
	mustDelete(t, s, k)
	if sn, taken, err := s.Snapshot(ctx, k); err != nil || !taken || !sn.Deleted || sn.Version != 3 || sn.Value != nil {
		t.Fatalf("snapshot of a deletion: %+v %v %v", sn, taken, err)
	}
	mustPut(t, s, k, "c")
	if _, _, err := s.Snapshot(ctx, k); err != nil {
		t.Fatal(err)
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{3, 4}) {
		t.Fatalf("snapshots %v, want the newest 2", got)
	}
	if _, _, err := s.Snapshot(ctx, key("g", "none")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("snapshot of a missing state: %v", err)
	}
	if _, _, err := s.Snapshot(ctx, key("g", "a/b")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("snapshot of an invalid key: %v", err)
	}

	mustPut(t, s, key("g", "t"), "t")
	mustPut(t, s, key("g", "u"), "u")
	mustDelete(t, s, key("g", "u"))
	sum, err := s.SnapshotGovernor(ctx, "g")
	if err != nil || sum.States != 2 || sum.Taken != 1 {
		t.Fatalf("governor snapshot: %+v, %v (want 2 live states, 1 new snapshot)", sum, err)
	}
	if _, err := s.SnapshotGovernor(ctx, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("governor snapshot of no governor: %v", err)
	}
}

// Snapshots are durable: a restart keeps them and goes on taking them.
func TestSnapshotRestart(t *testing.T) {
	dir := t.TempDir()
	opts := []func(*Options){withNow(newTickClock().Now), withSnapshots(10, 5)}
	s := openDisk(t, dir, opts...)
	k := key("g", "s")
	fillVersions(t, s, k, 1, 25)
	closeStore(t, s)

	s = openDisk(t, dir, opts...)
	defer closeStore(t, s)
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{10, 20}) {
		t.Fatalf("snapshots after restart %v", got)
	}
	fillVersions(t, s, k, 26, 30)
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{10, 20, 30}) {
		t.Fatalf("snapshots after more writes %v", got)
	}
	p, err := s.StateAtVersion(context.Background(), k, 20)
	if err != nil || string(p.Value) != "v20" {
		t.Fatalf("state at 20: %+v, %v", p, err)
	}
}

// histVersion is one version of a reference history.
type histVersion struct {
	time    int64
	deleted bool
	value   string
}

// checkPast compares StateAt and StateAtVersion with the reference hist
// (index: version) when the history before version base was cut (0: not).
func checkPast(t *testing.T, s *Store, k Key, hist []histVersion, base uint64, rng *rand.Rand) {
	t.Helper()
	ctx := context.Background()
	first, last := hist[1].time, hist[len(hist)-1].time
	for range 300 {
		at := first - 5e6 + rng.Int64N(last-first+10e6)
		ref := 0
		for v := len(hist) - 1; v >= 1; v-- {
			if hist[v].time <= at {
				ref = v
				break
			}
		}
		p, err := s.StateAt(ctx, k, time.Unix(0, at))
		switch {
		case ref != 0 && uint64(ref) >= base && hist[ref].deleted, ref == 0 && base <= 1:
			if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrHistoryGap) {
				t.Fatalf("state at %d (version %d, base %d): %+v, %v; want not found", at, ref, base, p, err)
			}
		case ref != 0 && uint64(ref) >= base:
			if err != nil || p.Version != uint64(ref) || string(p.Value) != hist[ref].value || !p.Exact {
				t.Fatalf("state at %d (base %d): %+v, %v; want version %d %q", at, base, p, err, ref, hist[ref].value)
			}
		default:
			if !errors.Is(err, ErrHistoryGap) {
				t.Fatalf("state at %d (version %d, before base %d): %+v, %v; want a history gap", at, ref, base, p, err)
			}
		}
	}
	for v := 1; v < len(hist); v++ {
		p, err := s.StateAtVersion(ctx, k, uint64(v))
		switch {
		case uint64(v) < base:
			if !errors.Is(err, ErrHistoryGap) {
				t.Fatalf("version %d (before base %d): %+v, %v; want a history gap", v, base, p, err)
			}
		case hist[v].deleted:
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("version %d (a delete): %+v, %v", v, p, err)
			}
		default:
			if err != nil || string(p.Value) != hist[v].value {
				t.Fatalf("version %d: %+v, %v; want %q", v, p, err, hist[v].value)
			}
		}
	}
}

// StateAt through snapshots and time marks answers exactly as a search of
// the whole history would, over random histories whose clock sometimes
// goes back; after cleanup, it answers alike for every time the retained
// history covers, and with a history gap before it.
func TestStateAtSnapshotsProperty(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	ctx := context.Background()
	for trial := range 25 {
		every, keep := 2+rng.IntN(8), 1+rng.IntN(4)
		if rng.IntN(2) == 0 {
			keep = 100 // old snapshots stay: cleanup may cut deep
		}
		clock := newTestClock()
		s := openMem(t, withNow(clock.Now), withSnapshots(every, keep))
		k := key("g", "s")
		hist := []histVersion{{}}
		live := false
		n := 20 + rng.IntN(300)
		for range n {
			step := time.Duration(rng.IntN(4)) * time.Millisecond
			if rng.IntN(10) == 0 {
				step = -time.Duration(rng.IntN(6)) * time.Millisecond
			}
			clock.Set(clock.Now().Add(step))
			w := Write{Key: k, Value: fmt.Appendf(nil, "v%d", len(hist))}
			if live && rng.IntN(6) == 0 {
				w = Write{Key: k, Delete: true}
			}
			rec, err := s.Write(ctx, w)
			if err != nil {
				t.Fatal(err)
			}
			hist = append(hist, histVersion{time: rec.Change.Time, deleted: w.Delete, value: string(w.Value)})
			live = !w.Delete
			if rng.IntN(20) == 0 {
				if _, _, err := s.Snapshot(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitSnapshots(t, s)
		checkPast(t, s, k, hist, 0, rng)

		drain(t, s, memremote.New())
		rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 1 + rng.IntN(n)})
		if err != nil {
			t.Fatal(err)
		}
		var base uint64
		if len(rep.Cuts) > 0 {
			base = rep.Cuts[0].Base
		}
		t.Logf("trial %d: %d versions, snapshot every %d, keep %d; cleanup cut at %d", trial, n, every, keep, base)
		checkPast(t, s, k, hist, base, rng)
		if vr, err := s.Validate(ctx, "g", ""); err != nil || !vr.OK() {
			t.Fatalf("validate after cleanup at %d: %+v, %v", base, vr, err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Validate reports snapshots that disagree with their events or the
// record, and time marks their events fall outside of.
func TestValidateSnapshots(t *testing.T) {
	s := openMem(t, withNow(newTickClock().Now), withSnapshots(0, 5))
	ctx := context.Background()
	k := key("g", "s")
	mustPut(t, s, k, "a")
	if _, _, err := s.Snapshot(ctx, k); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, k, "b")
	if _, _, err := s.Snapshot(ctx, k); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Validate(ctx, "g", "s"); err != nil || !rep.OK() || rep.Snapshots != 2 {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
	// Snapshot 1 gets another value, mark 2 a time range that misses its
	// event, and snapshot 3 (ahead of the record) appears.
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(snapKey(k, 1))
		if err != nil {
			return err
		}
		sn, err := readSnapshot(item, k)
		if err != nil {
			return err
		}
		sn.Value = []byte("x")
		if err := txn.Set(snapKey(k, 1), encodeSnapshot(&sn)); err != nil {
			return err
		}
		if err := txn.Set(markKey(k, 2), encodeMark(mark{since: 1, events: 1, first: 2, minTime: 1, maxTime: 2})); err != nil {
			return err
		}
		sn.Version, sn.Value = 3, []byte("z")
		return txn.Set(snapKey(k, 3), encodeSnapshot(&sn))
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Validate(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]bool{}
	for _, v := range rep.Violations {
		rules[v.Rule] = true
	}
	if rep.OK() || !rules[RuleSnapshot] || !rules[RuleMark] || !rules[RuleReplay] {
		t.Fatalf("validate found %+v; want snapshot, time_mark and replay violations", rep.Violations)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	r := sampleRecord()
	f.Add(encodeSnapshot(&Snapshot{Record: *r, TakenAt: 9}))
	f.Add(encodeSnapshot(&Snapshot{Record: Record{Version: 3, Deleted: true}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := decodeSnapshot(key("g", "s"), b)
		d := decoder{b: b}
		h := d.snapshotHead()
		if err != nil {
			return
		}
		if d.err != nil || h.version != sn.Version || h.deleted != sn.Deleted || h.time != sn.Change.Time {
			t.Fatalf("head %+v (%v) of snapshot %+v", h, d.err, sn)
		}
		again, err := decodeSnapshot(key("g", "s"), encodeSnapshot(&sn))
		if err != nil || !reflect.DeepEqual(again, sn) {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, sn)
		}
	})
}

func FuzzDecodeMark(f *testing.F) {
	f.Add(encodeMark(mark{since: 100, events: 99, first: 101, minTime: -5, maxTime: 1 << 60}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMark(b)
		if err != nil {
			return
		}
		if again, err := decodeMark(encodeMark(m)); err != nil || again != m {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, m)
		}
	})
}

// Writers, automatic and requested snapshots, pushes, cleanups and readers
// all at once: every read sees a consistent history, and at the end the
// replay of each state rebuilds its record.
func TestSnapshotsConcurrent(t *testing.T) {
	s := openMem(t, withSnapshots(3, 2))
	ctx := context.Background()
	remote := memremote.New()
	push := syncer.New(s, remote, syncer.Options{})
	keys := []Key{key("g", "a"), key("g", "b"), key("g", "c"), key("g", "d")}
	stop := make(chan struct{})
	var wg, writers sync.WaitGroup
	errs := make(chan error, 100)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for w := range 8 {
		writers.Go(func() {
			for i := range 150 {
				k := keys[(w+i)%len(keys)]
				w := Write{Key: k, Value: fmt.Appendf(nil, "w%d-%d", w, i)}
				if i%17 == 0 {
					if _, err := s.Get(ctx, k); err == nil {
						w = Write{Key: k, Delete: true}
					}
				}
				if _, err := s.Write(ctx, w); err != nil && !errors.Is(err, ErrNotFound) {
					fail(err)
					return
				}
			}
		})
	}
	loop := func(f func(i int) error) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := f(i); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	loop(func(int) error { _, err := push.SyncOnce(ctx); return err })
	loop(func(i int) error {
		_, _, err := s.Snapshot(ctx, keys[i%len(keys)])
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
	loop(func(i int) error {
		_, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 1 + i%20})
		return err
	})
	loop(func(i int) error {
		rep, err := s.Validate(ctx, "g", "")
		if err == nil && !rep.OK() {
			err = fmt.Errorf("validate: %+v", rep.Violations)
		}
		return err
	})
	loop(func(i int) error {
		_, err := s.StateAt(ctx, keys[i%len(keys)], time.Now())
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
	writers.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitSnapshots(t, s)
	drain(t, s, remote)
	if _, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 1}); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Validate(ctx, "g", ""); err != nil || !rep.OK() {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
	_, rebuilt := replayPages(t, s, ReplayQuery{Governor: "g", Limit: 7})
	for _, k := range keys {
		rec, err := s.Get(ctx, k)
		switch {
		case errors.Is(err, ErrNotFound):
			if rebuilt[k.State] != "" {
				t.Fatalf("%s: deleted, replay rebuilds %q", k, rebuilt[k.State])
			}
		case err != nil:
			t.Fatal(err)
		case rebuilt[k.State] != string(rec.Value):
			t.Fatalf("%s: record %q, replay rebuilds %q", k, rec.Value, rebuilt[k.State])
		}
	}
}
