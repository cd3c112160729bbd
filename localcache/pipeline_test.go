package localcache

import (
	"context"
	"errors"
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

// TestPipelineApplyFailure fails the apply of one group while the next is
// already logged: both groups' writers hear the outcome is unknown, the
// store refuses writes, and the next Open applies both from the log.
func TestPipelineApplyFailure(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var sp atomic.Pointer[Store]
	var overlapped atomic.Int64
	var crashAt atomic.Uint64 // group seq whose apply fails; 0: none
	release := make(chan struct{})
	s := openDisk(t, dir, func(o *Options) {
		holdApply(&sp, &overlapped)(o)
		o.handOffAlways = true
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
		if err := <-ch; !errors.Is(err, ErrFailed) {
			t.Fatalf("write in a failed group: %v", err)
		}
	}
	if _, err := s.Write(ctx, Write{Key: key("g", "after"), Value: []byte("x")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write after the failure: %v", err)
	}
	closeStore(t, s)

	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkExactlyOnce(t, s, map[Key]uint64{k: 4})
}
