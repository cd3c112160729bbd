package localcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdApply returns an Options modifier whose applier hook holds each group
// until the committer has logged the next one (or a short deadline passes),
// so consecutive groups overlap: group N+1 is staged while group N is in the
// log but not in Badger. *overlapped counts the groups held that way.
func holdApply(sp *atomic.Pointer[Store], overlapped *atomic.Int64) func(*Options) {
	return func(o *Options) {
		o.hookApply = func(seq uint64) {
			s := sp.Load()
			deadline := time.Now().Add(5 * time.Millisecond)
			for time.Now().Before(deadline) {
				if s.wal.nextSeq() > seq+1 {
					overlapped.Add(1)
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
}

// chainWriters runs writers goroutines that each make perKey successful
// conditional increments of every key in keys, in turn. A writer expects the
// version its last write (or conflict) reported, not what it read: after a
// conflict it retries with the Actual version the committer saw, which may
// come from a group that is logged and not yet applied. It returns the
// successful writes per key.
func chainWriters(t *testing.T, s *Store, keys []Key, writers, perKey int) map[Key]int {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	succ := map[Key]int{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			expect := map[Key]uint64{}
			for i := range perKey * len(keys) {
				k := keys[(w+i)%len(keys)]
				for {
					wr := Write{Key: k, Value: []byte("w" + itoa(w) + "-" + itoa(i))}
					if v := expect[k]; v == 0 {
						wr.IfAbsent = true
					} else {
						wr.IfVersion = u64(v)
					}
					rec, err := s.Write(ctx, wr)
					var vc *VersionConflictError
					if errors.As(err, &vc) {
						expect[k] = vc.Actual
						continue
					}
					if err != nil {
						t.Errorf("writer %d: write %s: %v", w, k, err)
						return
					}
					expect[k] = rec.Version
					mu.Lock()
					succ[k]++
					mu.Unlock()
					break
				}
			}
		})
	}
	wg.Wait()
	return succ
}

// checkChains checks that every key's version, events and journal entries
// account for exactly the successful writes, with no version issued twice.
func checkChains(t *testing.T, s *Store, keys []Key, succ map[Key]int) {
	t.Helper()
	ctx := context.Background()
	total := 0
	for _, k := range keys {
		total += succ[k]
		rec, err := s.Get(ctx, k)
		if err != nil || rec.Version != uint64(succ[k]) {
			t.Errorf("%s: version %d (%v), want %d successful writes", k, rec.Version, err, succ[k])
		}
		evs := mustEvents(t, s, k)
		if len(evs) != succ[k] {
			t.Errorf("%s: %d events, want %d", k, len(evs), succ[k])
		}
		for i, e := range evs {
			if e.FromVersion != uint64(i) || e.ToVersion != uint64(i+1) {
				t.Errorf("%s: event %d goes %d -> %d", k, i, e.FromVersion, e.ToVersion)
				break
			}
		}
	}
	js, err := s.Journal(ctx, 0, total+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(js) != total {
		t.Errorf("%d journal entries, want %d", len(js), total)
	}
	seen := map[Key]map[uint64]bool{}
	for i, j := range js {
		if j.Seq != uint64(i+1) {
			t.Errorf("journal entry %d has seq %d", i, j.Seq)
			break
		}
		if seen[j.Key] == nil {
			seen[j.Key] = map[uint64]bool{}
		}
		if seen[j.Key][j.Version] || j.BaseVersion+1 != j.Version {
			t.Errorf("journal entry %d: %s %d -> %d (repeated or skipping)", i, j.Key, j.BaseVersion, j.Version)
		}
		seen[j.Key][j.Version] = true
	}
	st := s.Stats()
	if st.States != int64(len(keys)) || st.JournalDepth != int64(total) {
		t.Errorf("stats: %d states, journal depth %d; want %d, %d", st.States, st.JournalDepth, len(keys), total)
	}
}

// TestPipelineOverlapSeesLoggedGroups runs if_version chains from many
// writers on a few keys while the applier is held back, so each group is
// staged while the one before is logged and not yet applied: the staged
// preconditions must see it (through the overlay), or a version would be
// issued twice. The counts must be exact, and again after a reopen.
func TestPipelineOverlapSeesLoggedGroups(t *testing.T) {
	dir := t.TempDir()
	var sp atomic.Pointer[Store]
	var overlapped atomic.Int64
	s := openDisk(t, dir, holdApply(&sp, &overlapped))
	sp.Store(s)
	keys := []Key{key("g", "a"), key("g", "b"), key("g", "c")}
	succ := chainWriters(t, s, keys, 24, 15)
	if overlapped.Load() == 0 {
		t.Fatal("no group was staged while the one before it waited to be applied")
	}
	t.Logf("%d of %d groups overlapped the next one", overlapped.Load(), s.Stats().Commits)
	checkChains(t, s, keys, succ)
	closeStore(t, s)

	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkChains(t, s, keys, succ)
}

// TestPipelineReadViewSeesLoggedGroups is TestPipelineOverlapSeesLoggedGroups
// without the read cache, so that staging reads every record the overlay
// does not hold from the committer's read view, which it keeps across
// groups while the applier is busy: the overlay must keep each group the
// view's snapshot does not hold, or a precondition would be checked
// against an old version.
func TestPipelineReadViewSeesLoggedGroups(t *testing.T) {
	dir := t.TempDir()
	var sp atomic.Pointer[Store]
	var overlapped atomic.Int64
	s := openDisk(t, dir, holdApply(&sp, &overlapped), func(o *Options) { o.CacheBytes = -1 })
	sp.Store(s)
	var keys []Key
	for i := range 12 {
		keys = append(keys, key("g", "k"+itoa(i)))
	}
	succ := chainWriters(t, s, keys, 24, 4)
	if overlapped.Load() == 0 {
		t.Fatal("no group was staged while the one before it waited to be applied")
	}
	checkChains(t, s, keys, succ)
	closeStore(t, s)
}

// TestPipelineApplyFailure fails the apply of one group while the next is
// already logged: both groups' writers were acknowledged (the groups are in
// the log), point reads see them, the store refuses writes, and the next
// Open applies both from the log.
func TestPipelineApplyFailure(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var sp atomic.Pointer[Store]
	var overlapped atomic.Int64
	var crashAt atomic.Uint64 // group seq whose apply fails; 0: none
	release := make(chan struct{})
	s := openDisk(t, dir, func(o *Options) {
		holdApply(&sp, &overlapped)(o)
		hold := o.hookApply
		o.hookApply = func(seq uint64) {
			if seq == crashAt.Load() {
				<-release // hold it until the next group is logged
				return
			}
			hold(seq)
		}
		o.hookAfterWAL = func() error {
			if c := crashAt.Load(); c != 0 && sp.Load().applied.Load()+1 >= c {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	sp.Store(s)
	k := key("g", "k")
	putVersion(t, s, k, 1)
	putVersion(t, s, k, 2)

	crashAt.Store(s.wal.nextSeq())
	first := make(chan error, 1)
	go func() {
		_, err := s.Write(ctx, Write{Key: k, Value: []byte("k@3"), IfVersion: u64(2)})
		first <- err
	}()
	waitFor(t, "first group logged", func() bool { return s.wal.nextSeq() > crashAt.Load() })
	second := make(chan error, 1)
	go func() {
		// Staged against the first group, which is logged but not applied.
		_, err := s.Write(ctx, Write{Key: k, Value: []byte("k@4"), IfVersion: u64(3)})
		second <- err
	}()
	waitFor(t, "second group logged", func() bool { return s.wal.nextSeq() > crashAt.Load()+1 })
	close(release)
	for _, ch := range []chan error{first, second} {
		if err := <-ch; err != nil {
			t.Fatalf("write in a logged group: %v", err)
		}
	}
	waitFor(t, "store failed", func() bool { return s.failedErr() != nil })
	if rec, err := s.Get(ctx, k); err != nil || rec.Version != 4 {
		t.Fatalf("read after the failure: %+v, %v", rec, err)
	}
	if _, err := s.Write(ctx, Write{Key: key("g", "after"), Value: []byte("x")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write after the failure: %v", err)
	}
	closeStore(t, s)

	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkExactlyOnce(t, s, map[Key]uint64{k: 4})
}

// TestAckBeforeApply holds the apply of two acknowledged groups: point reads
// see them at once, and List and Events wait until the applies are let go.
func TestAckBeforeApply(t *testing.T) {
	ctx := context.Background()
	var holding atomic.Bool
	held := make(chan uint64, 4)
	release := make(chan struct{})
	s := openDisk(t, t.TempDir(), func(o *Options) {
		o.hookApply = func(seq uint64) {
			if holding.Load() {
				held <- seq
				<-release
			}
		}
	})
	defer closeStore(t, s)
	ka, kb := key("g", "a"), key("g", "b")
	putVersion(t, s, ka, 1)
	waitApplied(t, s)
	holding.Store(true)

	if _, err := s.Write(ctx, Write{Key: ka, Value: []byte("a@2"), IfVersion: u64(1)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the apply of the first group never started")
	}
	// The applier is held: this group is logged, acknowledged and queued.
	if _, err := s.Write(ctx, Write{Key: kb, Value: []byte("b@1")}); err != nil {
		t.Fatal(err)
	}
	if s.applied.Load() >= s.logged.Load() {
		t.Fatalf("applied %d, logged %d: the apply was not held", s.applied.Load(), s.logged.Load())
	}

	if rec, err := s.Get(ctx, ka); err != nil || rec.Version != 2 || string(rec.Value) != "a@2" {
		t.Fatalf("get %s: %+v, %v", ka, rec, err)
	}
	if rec, err := s.Get(ctx, kb); err != nil || rec.Version != 1 || string(rec.Value) != "b@1" {
		t.Fatalf("get %s: %+v, %v", kb, rec, err)
	}
	recs, err := s.GetMany(ctx, []Key{ka, kb, key("g", "missing")})
	if err != nil || recs[0] == nil || recs[0].Version != 2 || recs[1] == nil || recs[1].Version != 1 || recs[2] != nil {
		t.Fatalf("get many: %v, %v", recs, err)
	}

	type listed struct {
		recs []Record
		err  error
	}
	listDone := make(chan listed, 1)
	go func() {
		recs, _, err := s.List(ctx, "g", "", "", 0, 0)
		listDone <- listed{recs, err}
	}()
	type evented struct {
		evs []Event
		err error
	}
	eventsDone := make(chan evented, 2)
	for _, k := range []Key{ka, kb} {
		go func() {
			evs, err := s.Events(ctx, k)
			eventsDone <- evented{evs, err}
		}()
	}
	// While the applies are held, the scans must not return (they would miss
	// acknowledged writes). Checked for a bounded time.
	select {
	case l := <-listDone:
		t.Fatalf("list returned before the apply: %+v, %v", l.recs, l.err)
	case e := <-eventsDone:
		t.Fatalf("events returned before the apply: %+v, %v", e.evs, e.err)
	case <-time.After(100 * time.Millisecond):
	}
	holding.Store(false)
	close(release)

	deadline := time.After(10 * time.Second)
	select {
	case l := <-listDone:
		if l.err != nil || len(l.recs) != 2 || l.recs[0].Version != 2 || l.recs[1].Version != 1 {
			t.Fatalf("list after the apply: %+v, %v", l.recs, l.err)
		}
	case <-deadline:
		t.Fatal("list still waiting after the apply")
	}
	total := 0
	for range 2 {
		select {
		case e := <-eventsDone:
			if e.err != nil {
				t.Fatal(e.err)
			}
			total += len(e.evs)
		case <-deadline:
			t.Fatal("events still waiting after the apply")
		}
	}
	if total != 3 {
		t.Fatalf("%d events, want 3", total)
	}
	waitApplied(t, s)
}

// TestReadYourWritesUnderPipeline has many writers read back each write at
// once, by Get, GetMany, List and Events, while applies lag behind the log.
func TestReadYourWritesUnderPipeline(t *testing.T) {
	var sp atomic.Pointer[Store]
	var overlapped atomic.Int64
	s := openDisk(t, t.TempDir(), holdApply(&sp, &overlapped))
	sp.Store(s)
	defer closeStore(t, s)
	ctx := context.Background()
	const writers, rounds = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := key("g", "w"+itoa(w))
			for v := uint64(1); v <= rounds; v++ {
				var ifv *uint64
				if v > 1 {
					ifv = u64(v - 1)
				}
				if _, err := s.Write(ctx, Write{Key: k, Value: []byte(itoa(int(v))), IfVersion: ifv}); err != nil {
					errs <- err
					return
				}
				if rec, err := s.Get(ctx, k); err != nil || rec.Version != v {
					errs <- fmt.Errorf("get %s after v%d: %+v, %v", k, v, rec, err)
					return
				}
				if recs, err := s.GetMany(ctx, []Key{k}); err != nil || recs[0] == nil || recs[0].Version != v {
					errs <- fmt.Errorf("get many %s after v%d: %v", k, v, err)
					return
				}
				if v%5 == 0 {
					recs, _, err := s.List(ctx, "g", k.State, "", 1, 0)
					if err != nil || len(recs) != 1 || recs[0].Version != v {
						errs <- fmt.Errorf("list %s after v%d: %+v, %v", k, v, recs, err)
						return
					}
					evs, err := s.Events(ctx, k)
					if err != nil || len(evs) != int(v) {
						errs <- fmt.Errorf("events %s after v%d: %d, %v", k, v, len(evs), err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if overlapped.Load() == 0 {
		t.Log("no group overlapped the next one's log sync")
	}
}

// TestReadViewLag: with the applier idle the committer renews its read view
// only every viewRefreshLag groups, so staging must find the groups since in
// the overlay. A chain of compare-and-set writes to one key, each its own
// group, all succeed; the overlay holds the groups the view lacks and no
// more.
func TestReadViewLag(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	k := key("g", "chain")
	most := 0
	for i := 1; i <= 3*viewRefreshLag+1; i++ {
		rec, err := s.Write(ctx, Write{Key: k, Value: []byte{byte(i)}, IfVersion: u64(uint64(i - 1))})
		if err != nil || rec.Version != uint64(i) {
			t.Fatalf("write %d: v%d, %v", i, rec.Version, err)
		}
		if err := s.barrier(ctx); err != nil {
			t.Fatal(err)
		}
		s.commitMu.Lock()
		n := len(s.overlayGroups)
		s.commitMu.Unlock()
		if n > viewRefreshLag+1 {
			t.Fatalf("after write %d the overlay holds %d groups, want at most %d", i, n, viewRefreshLag+1)
		}
		most = max(most, n)
	}
	if most < viewRefreshLag {
		t.Fatalf("the overlay held at most %d groups: the view was renewed sooner than every %d groups", most, viewRefreshLag)
	}
	rec, err := s.Get(ctx, k)
	if err != nil || rec.Version != 3*viewRefreshLag+1 || rec.Value[0] != byte(3*viewRefreshLag+1) {
		t.Fatalf("get = v%d %v, %v", rec.Version, rec.Value, err)
	}
}
