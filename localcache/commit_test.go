package localcache

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupCommitShares(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	const writers, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				k := key("g", "w"+itoa(w)+"-"+itoa(i))
				if _, err := s.Write(ctx, Write{Key: k, Value: []byte("v")}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.CommitWrites != writers*each || st.States != writers*each {
		t.Fatalf("stats = %+v, want %d writes", st, writers*each)
	}
	if st.Commits >= st.CommitWrites {
		t.Fatalf("%d commits for %d writes: no grouping", st.Commits, st.CommitWrites)
	}
	// One write-ahead log append (and fdatasync) per committed group.
	if st.WALSyncs == 0 || st.WALSyncs > st.Commits || st.WALSyncTime <= 0 {
		t.Fatalf("%d log appends taking %v for %d commits", st.WALSyncs, st.WALSyncTime, st.Commits)
	}
	t.Logf("%d writes in %d commits, %d log appends, %v each on average", st.CommitWrites, st.Commits, st.WALSyncs,
		st.WALSyncTime/time.Duration(st.WALSyncs))
}

// TestLoneWriterLeads checks both ways a write is committed: a writer alone
// commits its own request, writers that overlap are grouped by the
// committer, and either way every write is stored exactly once.
func TestLoneWriterLeads(t *testing.T) {
	dir := t.TempDir()
	var leads atomic.Int64
	s := openDisk(t, dir, func(o *Options) { o.hookLead = func() { leads.Add(1) } })
	want := map[Key]uint64{}
	for i := range 20 {
		k := key("g", "serial"+itoa(i%5))
		want[k]++
		// A group still being applied sends the next write to the committer.
		waitFor(t, "the applier idle", func() bool { return s.inflight.Load() == 0 })
		putVersion(t, s, k, want[k])
	}
	if n := leads.Load(); n != 20 {
		t.Fatalf("%d of 20 serial writes committed themselves", n)
	}
	const writers, each = 32, 30
	var wg sync.WaitGroup
	for w := range writers {
		k := key("g", "w"+itoa(w))
		want[k] = each
		wg.Go(func() {
			for v := uint64(1); v <= each; v++ {
				putVersion(t, s, k, v)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if total := uint64(20 + writers*each); st.CommitWrites != total || st.Commits >= total {
		t.Fatalf("%d commits of %d writes, want %d writes in fewer commits", st.Commits, st.CommitWrites, total)
	}
	if n := leads.Load(); n >= 20+writers*each {
		t.Fatalf("all %d writes committed themselves: the committer grouped none", n)
	}
	t.Logf("%d writes in %d commits, %d of them by a lone writer", st.CommitWrites, st.Commits, leads.Load())
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkExactlyOnce(t, s, want)
}

// TestGroupStagedView queues writes to one key into a single group and checks
// that each sees the ones before it.
func TestGroupStagedView(t *testing.T) {
	g := newGate()
	s := openMem(t, g.opt)
	ctx := context.Background()
	k := key("g", "k")
	writes := []Write{
		{Key: k, Value: []byte("1"), IfAbsent: true},      // v1
		{Key: k, Value: []byte("2"), IfVersion: u64(1)},   // v2
		{Key: k, Value: []byte("bad"), IfVersion: u64(1)}, // conflict: 2 is current
		{Key: k, Delete: true, IfVersion: u64(2)},         // v3 tombstone
		{Key: k, Delete: true},                            // not found
		{Key: k, Value: []byte("4"), IfAbsent: true},      // v4
	}
	type result struct {
		rec Record
		err error
	}
	results := make([]chan result, len(writes))
	for i, w := range writes {
		results[i] = make(chan result, 1)
		go func() {
			rec, err := s.Write(ctx, w)
			results[i] <- result{rec, err}
		}()
		// Queue in order.
		waitFor(t, "request queued", func() bool { return len(s.reqs) == i+1 })
	}
	commitsBefore := s.Stats().Commits
	g.open()
	got := make([]result, len(writes))
	for i := range writes {
		got[i] = <-results[i]
	}
	for i, want := range []uint64{1, 2, 0, 3, 0, 4} {
		if want == 0 {
			continue
		}
		if got[i].err != nil || got[i].rec.Version != want {
			t.Fatalf("write %d = v%d, %v; want v%d", i, got[i].rec.Version, got[i].err, want)
		}
	}
	wantConflict(t, got[2].err, 1, 2)
	if !errors.Is(got[4].err, ErrNotFound) {
		t.Fatalf("write 4: %v, want not found", got[4].err)
	}
	if c := s.Stats().Commits - commitsBefore; c != 1 {
		t.Fatalf("%d commits, want 1 group", c)
	}
	rec, err := s.Get(ctx, k)
	if err != nil || rec.Version != 4 || string(rec.Value) != "4" {
		t.Fatalf("get = %+v, %v", rec, err)
	}
	if n := len(mustEvents(t, s, k)); n != 4 {
		t.Fatalf("%d events, want 4", n)
	}
	if st := s.Stats(); st.States != 1 || st.JournalDepth != 4 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestTxnSplit makes a group larger than one Badger transaction.
func TestTxnSplit(t *testing.T) {
	g := newGate()
	s := openMem(t, g.opt, func(o *Options) { o.memTableSize = 1 << 20 }) // transactions of ~150 KiB
	ctx := context.Background()
	value := strings.Repeat("v", 900) // below the value threshold: counted in full
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := range n {
		wg.Go(func() {
			if _, err := s.Write(ctx, Write{Key: key("g", "k"+itoa(i)), Value: []byte(value)}); err != nil {
				errs <- err
			}
		})
	}
	// A batch that cannot fit one transaction on its own.
	big := make([]Write, 200)
	for i := range big {
		big[i] = Write{Key: key("big", "k"+itoa(i)), Value: []byte(value)}
	}
	var bigErr error
	wg.Go(func() { _, bigErr = s.WriteBatch(ctx, big) })
	waitFor(t, "requests queued", func() bool { return len(s.reqs) == n+1 })
	g.open()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !errors.Is(bigErr, ErrTooLarge) {
		t.Fatalf("big batch: %v, want too large", bigErr)
	}
	st := s.Stats()
	if st.CommitWrites != n || st.Commits < 3 || st.States != n || st.JournalDepth != n {
		t.Fatalf("stats = %+v, want %d writes in several commits", st, n)
	}
	js := mustJournal(t, s)
	if len(js) != n {
		t.Fatalf("journal: %d, want %d", len(js), n)
	}
	for i, j := range js {
		if j.Seq != uint64(i+1) || j.Key.Governor != "g" {
			t.Fatalf("journal %d = %+v", i, j)
		}
	}
	if recs, _, err := s.List(ctx, "big", "", "", 10, 0); err != nil || len(recs) != 0 {
		t.Fatalf("big batch left %d states, %v", len(recs), err)
	}
}

// TestCASHammer runs many goroutines incrementing counters with
// compare-and-set; no increment may be lost or applied twice.
func TestCASHammer(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	const (
		keys       = 4
		goroutines = 56
		increments = 25
	)
	for i := range keys {
		mustPut(t, s, key("ctr", "c"+itoa(i)), "0")
	}
	var conflicts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for gi := range goroutines {
		wg.Go(func() {
			for n := range increments {
				k := key("ctr", "c"+itoa((gi+n)%keys))
				for {
					rec, err := s.Get(ctx, k)
					if err != nil {
						errs <- err
						return
					}
					v, err := strconv.Atoi(string(rec.Value))
					if err != nil {
						errs <- err
						return
					}
					_, err = s.Write(ctx, Write{Key: k, Value: []byte(strconv.Itoa(v + 1)), IfVersion: u64(rec.Version)})
					if errors.Is(err, ErrVersionConflict) {
						conflicts.Add(1)
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 0
	for i := range keys {
		k := key("ctr", "c"+itoa(i))
		rec, err := s.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := strconv.Atoi(string(rec.Value))
		if rec.Version != uint64(v)+1 {
			t.Fatalf("%s = %d at v%d: versions and increments disagree", k, v, rec.Version)
		}
		if n := len(mustEvents(t, s, k)); n != v+1 {
			t.Fatalf("%s: %d events, want %d", k, n, v+1)
		}
		total += v
	}
	if total != goroutines*increments {
		t.Fatalf("total %d, want %d", total, goroutines*increments)
	}
	if st := s.Stats(); st.JournalDepth != keys+goroutines*increments {
		t.Fatalf("journal depth %d, want %d", st.JournalDepth, keys+goroutines*increments)
	}
	t.Logf("%d conflicts retried", conflicts.Load())
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock()
	now := func(o *Options) { o.Now = clock.Now }
	ctx := context.Background()

	s := openDisk(t, dir, now)
	mustPut(t, s, key("g", "a"), "A1")
	mustPut(t, s, key("g", "a"), "A2")
	mustPut(t, s, key("g", "b"), "B1")
	mustDelete(t, s, key("g", "b"))
	if _, err := s.WriteBatch(ctx, []Write{
		{Key: key("g", "c"), Value: []byte("C1")},
		{Key: key("h", "d"), Value: []byte("D1")},
	}); err != nil {
		t.Fatal(err)
	}
	last := mustPut(t, s, key("g", "a"), "A3")
	before := s.Stats()
	journal := mustJournal(t, s)
	events := mustEvents(t, s, key("g", "b"))
	closeStore(t, s)

	// The wall clock goes back an hour across the restart.
	clock.Set(clock.Now().Add(-time.Hour))
	s = openDisk(t, dir, now)
	defer closeStore(t, s)
	after := s.Stats()
	if after.States != before.States || after.JournalDepth != before.JournalDepth || after.States != 3 || after.JournalDepth != 7 {
		t.Fatalf("stats after reopen %+v, before %+v", after, before)
	}
	if after.LSMBytes+after.VlogBytes == 0 {
		t.Fatalf("no file sizes in %+v", after)
	}
	for k, want := range map[Key]string{key("g", "a"): "A3", key("g", "c"): "C1", key("h", "d"): "D1"} {
		rec, err := s.Get(ctx, k)
		if err != nil || string(rec.Value) != want {
			t.Fatalf("get %s = %q, %v; want %q", k, rec.Value, err, want)
		}
	}
	if _, err := s.Get(ctx, key("g", "b")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted state after reopen: %v", err)
	}
	rec, _ := s.Get(ctx, key("g", "a"))
	if rec.Version != 3 || rec.OpID != last.OpID || rec.Clock.HLC != last.Clock.HLC || rec.Clock.Vector[s.Origin()] != 3 {
		t.Fatalf("record after reopen %+v, before %+v", rec, last)
	}
	if got := mustJournal(t, s); len(got) != len(journal) || !reflect.DeepEqual(got[len(got)-1], journal[len(journal)-1]) {
		t.Fatalf("journal after reopen %+v, before %+v", got, journal)
	}
	if got := mustEvents(t, s, key("g", "b")); len(got) != 2 || got[1].Action != ActionDelete || got[1].OpID != events[1].OpID {
		t.Fatalf("events after reopen %+v", got)
	}

	// New writes continue every sequence.
	next := mustPut(t, s, key("g", "b"), "B3")
	if next.Version != 3 {
		t.Fatalf("re-create after tombstone: v%d, want 3", next.Version)
	}
	if next.Clock.Lamport <= last.Clock.Lamport || next.Clock.HLC <= last.Clock.HLC {
		t.Fatalf("clocks went back across restart: %+v after %+v", next.Clock, last.Clock)
	}
	js := mustJournal(t, s)
	if j := js[len(js)-1]; j.Seq != journal[len(journal)-1].Seq+1 || j.OpID != s.Origin()+"-8" {
		t.Fatalf("journal entry after reopen %+v", j)
	}
	if st := s.Stats(); st.States != 4 || st.JournalDepth != 8 {
		t.Fatalf("stats after new write %+v", st)
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	t.Run("rejects after close", func(t *testing.T) {
		s, err := Open(Options{InMemory: true, NodeID: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		mustPut(t, s, key("g", "a"), "A")
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("second close: %v", err)
		}
		if _, err := s.Write(ctx, Write{Key: key("g", "a"), Value: []byte("B")}); !errors.Is(err, ErrClosed) {
			t.Fatalf("write after close: %v", err)
		}
		if _, err := s.WriteBatch(ctx, []Write{{Key: key("g", "a"), Value: []byte("B")}}); !errors.Is(err, ErrClosed) {
			t.Fatalf("batch after close: %v", err)
		}
		if _, err := s.Get(ctx, key("g", "a")); !errors.Is(err, ErrClosed) {
			t.Fatalf("get after close: %v", err)
		}
		if _, _, err := s.List(ctx, "g", "", "", 10, 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("list after close: %v", err)
		}
	})
	t.Run("drains queued writes", func(t *testing.T) {
		dir := t.TempDir()
		g := newGate()
		s := openDisk(t, dir, g.opt)
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				if _, err := s.Write(ctx, Write{Key: key("g", "k"+itoa(i)), Value: []byte("v")}); err != nil {
					errs <- err
				}
			})
		}
		waitFor(t, "requests queued", func() bool { return len(s.reqs) == n })
		closed := make(chan error, 1)
		go func() { closed <- s.Close(ctx) }()
		waitFor(t, "close to begin", func() bool { return s.closed.Load() })
		g.open()
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("queued write: %v", err)
		}
		s = openDisk(t, dir)
		defer closeStore(t, s)
		if st := s.Stats(); st.States != n {
			t.Fatalf("%d states after reopen, want %d", st.States, n)
		}
	})
	t.Run("gives up on ctx", func(t *testing.T) {
		g := newGate()
		s, err := Open(Options{InMemory: true, NodeID: "n1", hookGroup: g.hook})
		if err != nil {
			t.Fatal(err)
		}
		const n = 5
		results := make(chan error, n)
		for i := range n {
			go func() {
				_, err := s.Write(ctx, Write{Key: key("g", "k"+itoa(i)), Value: []byte("v")})
				results <- err
			}()
		}
		waitFor(t, "requests queued", func() bool { return len(s.reqs) == n })
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		closed := make(chan error, 1)
		go func() { closed <- s.Close(cctx) }()
		waitFor(t, "close to abort", func() bool {
			select {
			case <-s.abort:
				return true
			default:
				return false
			}
		})
		g.open()
		if err := <-closed; !errors.Is(err, context.Canceled) {
			t.Fatalf("close: %v, want canceled", err)
		}
		for range n {
			if err := <-results; !errors.Is(err, ErrClosed) {
				t.Fatalf("queued write: %v, want closed", err)
			}
		}
	})
}

func TestWriteContext(t *testing.T) {
	g := newGate()
	s := openMem(t, g.opt)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(ctx, Write{Key: key("g", "k"), Value: []byte("v")})
		done <- err
	}()
	waitFor(t, "request queued", func() bool { return len(s.reqs) == 1 })
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "may still be applied") {
		t.Fatalf("err = %v", err)
	}
	g.open()
	// The committer drops a request whose writer gave up before staging.
	mustPut(t, s, key("g", "other"), "v")
	if _, err := s.Get(context.Background(), key("g", "k")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancelled write applied: %v", err)
	}
	if _, err := s.Write(ctx, Write{Key: key("g", "k"), Value: []byte("v")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with done ctx: %v", err)
	}
}

// TestCacheNoStaleReads checks that a read never returns a version older than
// one acknowledged before the read began, with a cache small enough that
// entries are evicted and refilled all the time.
func TestCacheNoStaleReads(t *testing.T) {
	s := openMem(t, func(o *Options) { o.CacheBytes = 16 << 10 })
	ctx, cancel := context.WithCancel(context.Background())
	const (
		keys    = 32
		writers = 4
		readers = 8
		writes  = 150
	)
	var acked [keys]atomic.Uint64
	for i := range keys {
		mustPut(t, s, key("g", "k"+itoa(i)), "v")
		acked[i].Store(1)
	}
	var stale atomic.Int64
	var failures atomic.Int64
	var wg sync.WaitGroup
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			for n := range writes {
				i := w + writers*(n%(keys/writers)) // each key has one writer
				rec, err := s.Write(ctx, Write{Key: key("g", "k"+itoa(i)), Value: []byte(strings.Repeat("x", n%200+1))})
				if err != nil {
					failures.Add(1)
					return
				}
				acked[i].Store(rec.Version)
			}
		})
	}
	// Unrelated writes that churn the cache.
	wg.Go(func() {
		for n := 0; ctx.Err() == nil; n++ {
			if _, err := s.Write(ctx, Write{Key: key("churn", "c"+itoa(n%500)), Value: []byte(strings.Repeat("c", 300))}); err != nil && ctx.Err() == nil {
				failures.Add(1)
				return
			}
		}
	})
	for r := range readers {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				i := (r*7 + n) % keys
				floor := acked[i].Load()
				var version uint64
				if n%2 == 0 {
					rec, err := s.Get(ctx, key("g", "k"+itoa(i)))
					if err != nil {
						if ctx.Err() == nil {
							failures.Add(1)
						}
						return
					}
					version = rec.Version
				} else {
					recs, err := s.GetMany(ctx, []Key{key("g", "k"+itoa(i)), key("churn", "c"+itoa(n%500))})
					if err != nil {
						if ctx.Err() == nil {
							failures.Add(1)
						}
						return
					}
					version = recs[0].Version
				}
				if version < floor {
					stale.Add(1)
				}
			}
		})
	}
	writersWG.Wait()
	cancel()
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d operations failed", failures.Load())
	}
	if stale.Load() != 0 {
		t.Fatalf("%d stale reads", stale.Load())
	}
	st := s.Stats()
	if st.CacheMisses == 0 || st.CacheHits == 0 {
		t.Fatalf("cache not exercised: %+v", st)
	}
	if st.CacheBytes > 16<<10+int64(len(s.cache.shards))*1024 {
		t.Fatalf("cache holds %d bytes, budget %d", st.CacheBytes, 16<<10)
	}
	for i := range keys {
		rec, err := s.Get(context.Background(), key("g", "k"+itoa(i)))
		if err != nil || rec.Version != acked[i].Load() {
			t.Fatalf("k%d = v%d, %v; last acked v%d", i, rec.Version, err, acked[i].Load())
		}
	}
	t.Logf("stats %+v", st)
}

// TestCloseUnderLoad closes the store while readers (missing the cache) and
// writers are busy: every call either succeeds or fails with ErrClosed.
func TestCloseUnderLoad(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), NodeID: "n1", CacheBytes: -1, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 50 {
		mustPut(t, s, key("g", "k"+itoa(i)), "v")
	}
	var unexpected atomic.Value
	var ops atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for n := 0; ; n++ {
				k := key("g", "k"+itoa((w*13+n)%50))
				var err error
				switch n % 3 {
				case 0:
					_, err = s.Write(ctx, Write{Key: k, Value: []byte("v" + itoa(n))})
				case 1:
					_, err = s.Get(ctx, k)
				default:
					_, _, err = s.List(ctx, "g", "", "", 5, 0)
				}
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					unexpected.Store(err)
					return
				}
				ops.Add(1)
			}
		})
	}
	waitFor(t, "some load", func() bool { return ops.Load() > 200 })
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := unexpected.Load(); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if js, err := s.Journal(ctx, 0, 1); !errors.Is(err, ErrClosed) || js != nil {
		t.Fatalf("journal after close: %v, %v", js, err)
	}
}
