package localcache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// journalOf returns k's journal entries, in journal order.
func journalOf(t testing.TB, s *Store, k Key) []JournalEntry {
	t.Helper()
	var out []JournalEntry
	for _, j := range mustJournal(t, s) {
		if j.Key == k {
			out = append(out, j)
		}
	}
	return out
}

// spans lists each entry's base and version.
func spans(js []JournalEntry) [][2]uint64 {
	out := make([][2]uint64, len(js))
	for i, j := range js {
		out[i] = [2]uint64{j.BaseVersion, j.Version}
	}
	return out
}

func wantSpans(t *testing.T, what string, js []JournalEntry, want ...[2]uint64) {
	t.Helper()
	if got := spans(js); !slices.Equal(got, want) {
		t.Fatalf("%s: journal spans %v, want %v", what, got, want)
	}
}

// counted checks that k's record counts its journal entries, and that the
// store's depth counts every entry.
func counted(t *testing.T, s *Store, k Key) {
	t.Helper()
	rec, err := s.Get(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	n := len(journalOf(t, s, k))
	if int(rec.journaled) != n || rec.Pending != (n > 0) {
		t.Fatalf("%s counts %d journal entries (pending %v), has %d", k, rec.journaled, rec.Pending, n)
	}
	if d, all := s.Depth(), len(mustJournal(t, s)); d != int64(all) {
		t.Fatalf("depth %d, journal %d entries", d, all)
	}
}

// TestCleanupMergesLocalJournal: on a local-only store a cut merges the
// state's journal entries up to its base into the base's own, keeps that
// event, and removes the rest; the merged journal is what a shared store
// configured later receives, and it holds the right records.
func TestCleanupMergesLocalJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	opts := func(o *Options) {
		o.Now = newTickClock().Now
		o.Snapshots = func(string) (int, int) { return 10, 5 }
		o.LocalOnly = true
	}
	s := openDisk(t, dir, opts)
	ctx := context.Background()
	k := key("g", "s")
	fillVersions(t, s, k, 1, 25)
	v20, err := s.StateAtVersion(ctx, k, 20)
	if err != nil {
		t.Fatal(err)
	}
	other := key("g", "other") // no snapshot yet: untouched
	mustPut(t, s, other, "o1")

	// A dry run says what would go and changes nothing.
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5, DryRun: true})
	if err != nil || rep.Cleaned != 1 || rep.Events != 19 || rep.Merged != 19 || rep.Held != 0 {
		t.Fatalf("dry run: %+v, %v", rep, err)
	}
	if n := len(journalOf(t, s, k)); n != 25 || len(mustEvents(t, s, k)) != 25 {
		t.Fatalf("dry run changed the journal (%d entries) or the events", n)
	}

	// Keep 5 of 25: the cut is snapshot 20. Entries 1 to 20 become one
	// change from nothing to version 20; its event stays, 1 to 19 go.
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5})
	if err != nil || rep.Cleaned != 1 || rep.Events != 19 || rep.Merged != 19 || rep.Snapshots != 1 || rep.Held != 0 ||
		len(rep.Cuts) != 1 || rep.Cuts[0] != (CleanupCut{Key: k, Base: 20, Events: 19, Snapshots: 1}) {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	wantSpans(t, "after the cut", journalOf(t, s, k), [2]uint64{0, 20}, [2]uint64{20, 21}, [2]uint64{21, 22},
		[2]uint64{22, 23}, [2]uint64{23, 24}, [2]uint64{24, 25})
	counted(t, s, k)
	if evs := eventVersions(t, s, k); !slices.Equal(evs, []uint64{20, 21, 22, 23, 24, 25}) {
		t.Fatalf("events left %v", evs)
	}
	if got := snapshotVersionsOf(t, s, k); !slices.Equal(got, []uint64{20}) {
		t.Fatalf("snapshots left %v", got)
	}
	if p, err := s.StateAtVersion(ctx, k, 20); err != nil || string(p.Value) != "v20" {
		t.Fatalf("version 20: %+v, %v", p, err)
	}
	_, err = s.StateAtVersion(ctx, k, 19)
	wantGap(t, err, 0, 19)
	if p, err := s.StateAt(ctx, k, time.Unix(0, v20.Change.Time)); err != nil || p.Version != 20 || !p.Exact {
		t.Fatalf("at version 20's time: %+v, %v", p, err)
	}
	_, err = s.StateAt(ctx, k, time.Unix(0, v20.Change.Time-1))
	wantGap(t, err, 0, 19)
	// A replay starts at the kept event, which holds the whole value.
	page, err := s.Replay(ctx, ReplayQuery{Governor: "g", State: "s"})
	var replayed []string
	for _, it := range page.Items {
		if it.Event == nil {
			t.Fatalf("replay item %+v: want events only", it)
		}
		replayed = append(replayed, string(it.Event.Value))
	}
	if err != nil || !slices.Equal(replayed, []string{"v20", "v21", "v22", "v23", "v24", "v25"}) {
		t.Fatalf("replay %v, %v", replayed, err)
	}
	rv, err := s.Validate(ctx, "g", "")
	if err != nil || !rv.OK() || rv.GapCount != 1 || rv.Gaps[0] != (Gap{Key: k, After: 0, Through: 19, Reason: GapRemoved}) {
		t.Fatalf("validate: %+v, %v", rv, err)
	}

	// Nothing more to do until more is written; then the next cut merges
	// from the merged entry on.
	if rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5}); err != nil || rep.Cleaned != 0 || rep.Merged != 0 ||
		rep.Held != 0 {
		t.Fatalf("second cleanup: %+v, %v", rep, err)
	}
	fillVersions(t, s, k, 26, 45)
	closeStore(t, s) // the merge is durable like any write
	s = openDisk(t, dir, opts)
	defer closeStore(t, s)
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5})
	if err != nil || rep.Merged != 20 || rep.Events != 20 || len(rep.Cuts) != 1 || rep.Cuts[0].Base != 40 {
		t.Fatalf("cleanup after 20 more writes: %+v, %v", rep, err)
	}
	wantSpans(t, "after the second cut", journalOf(t, s, k), [2]uint64{0, 40}, [2]uint64{40, 41}, [2]uint64{41, 42},
		[2]uint64{42, 43}, [2]uint64{43, 44}, [2]uint64{44, 45})
	counted(t, s, k)
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}

	// A shared store configured now receives the merged journal: the
	// record as written, and the events the local history still has.
	remote := memremote.New()
	drain(t, s, remote)
	got, err := remote.Get(ctx, syncer.Key(k))
	if err != nil || got.Version != 45 || string(got.Value) != "v45" {
		t.Fatalf("shared record %+v, %v", got, err)
	}
	evs, err := remote.Events(ctx, syncer.Key(k), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var versions []uint64
	for _, e := range evs {
		versions = append(versions, e.ToVersion)
	}
	if !slices.Equal(versions, []uint64{40, 41, 42, 43, 44, 45}) {
		t.Fatalf("shared events %v, want 40..45", versions)
	}
	if rec, err := s.Get(ctx, k); err != nil || rec.Pending || rec.Version != 45 || rec.SyncedVersion != 45 {
		t.Fatalf("local record after the push: %+v, %v", rec, err)
	}
	if o, err := remote.Get(ctx, syncer.Key(other)); err != nil || string(o.Value) != "o1" {
		t.Fatalf("shared record of %s: %+v, %v", other, o, err)
	}
}

// txPushing counts the transactions marked on their way to the shared
// store.
func txPushing(t *testing.T, s *Store) int {
	t.Helper()
	if err := s.barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := s.db.View(func(tx *badger.Txn) error {
		it := tx.NewIterator(badger.IteratorOptions{Prefix: []byte{kindTxPush}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCleanupMergesBatchesAndTransactions: changes of atomic batches and
// of transactions merge like single writes; the rest of a batch stays one
// in the journal and reaches the shared store whole, a transaction whose
// change merged is settled as committed, and a change whose writer waits
// for the shared store holds its state's cut back.
func TestCleanupMergesBatchesAndTransactions(t *testing.T) {
	s := openMem(t, withNow(newTickClock().Now), withSnapshots(10, 5), func(o *Options) { o.LocalOnly = true })
	ctx := context.Background()
	batched, mid, txn, confirmed := key("g", "batched"), key("g", "mid"), key("g", "txn"), key("g", "confirmed")
	hx, hy, hz := key("h", "x"), key("h", "y"), key("h", "z")
	// batched: its first change is the first of an atomic batch.
	if _, err := s.WriteBatch(ctx, []Write{{Key: batched, Value: []byte("v1")}, {Key: hx, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	fillVersions(t, s, batched, 2, 25)
	// mid: version 15 is the second write of an atomic batch.
	fillVersions(t, s, mid, 1, 14)
	if _, err := s.WriteBatch(ctx, []Write{{Key: hy, Value: []byte("y")}, {Key: mid, Value: []byte("v15")}}); err != nil {
		t.Fatal(err)
	}
	fillVersions(t, s, mid, 16, 25)
	// txn: version 5 is a logged transaction's, with h/z.
	fillVersions(t, s, txn, 1, 4)
	start := time.Now()
	recs, err := s.WriteTxn(ctx, Txn{Writes: []Write{{Key: txn, Value: []byte("v5")}, {Key: hz, Value: []byte("z")}},
		LogID: "t1", LogTime: start})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.LogTxn(ctx, TxnLogEntry{ID: "t1", Time: start, Consistency: "async", Outcome: wire.TxnCommitted,
		Attempts: 1, Ops: []TxnLogOp{{Op: "put", Key: txn, Version: recs[0].Version}}}); err != nil {
		t.Fatal(err)
	}
	fillVersions(t, s, txn, 6, 25)
	// confirmed: version 5's writer waits for the shared store.
	fillVersions(t, s, confirmed, 1, 4)
	if _, err := s.Write(ctx, Write{Key: confirmed, Value: []byte("v5"), Confirm: true}); err != nil {
		t.Fatal(err)
	}
	fillVersions(t, s, confirmed, 6, 25)
	waitSnapshots(t, s)
	if n := txPushing(t, s); n != 1 {
		t.Fatalf("%d transactions on their way before the cleanup, want 1", n)
	}

	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5})
	if err != nil || rep.States != 4 || rep.Held != 1 || rep.Cleaned != 3 || rep.Merged != 57 || rep.Events != 57 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	for _, k := range []Key{batched, mid, txn} {
		if js := journalOf(t, s, k); len(js) != 6 || spans(js)[0] != [2]uint64{0, 20} {
			t.Fatalf("%s: journal spans %v", k, spans(js))
		}
	}
	if n := len(journalOf(t, s, confirmed)); n != 25 || len(mustEvents(t, s, confirmed)) != 25 {
		t.Fatalf("confirmed: %d journal entries; want 25, and its events", n)
	}
	// The other halves of the batches stay in the journal, alone.
	for _, k := range []Key{hx, hy, hz} {
		if js := journalOf(t, s, k); len(js) != 1 {
			t.Fatalf("%s: %d journal entries, want 1", k, len(js))
		}
		counted(t, s, k)
	}
	for _, k := range []Key{batched, mid, txn, confirmed} {
		counted(t, s, k)
	}
	if n := txPushing(t, s); n != 0 {
		t.Fatalf("%d transactions still on their way after their change merged", n)
	}
	page, err := s.TxLog(ctx, TxLogQuery{})
	if err != nil || len(page.Entries) != 1 || page.Entries[0].Outcome != wire.TxnCommitted {
		t.Fatalf("txlog %+v, %v", page, err)
	}
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}

	remote := memremote.New()
	drain(t, s, remote)
	for _, k := range []Key{batched, mid, txn, confirmed} {
		if got, err := remote.Get(ctx, syncer.Key(k)); err != nil || got.Version != 25 || string(got.Value) != "v25" {
			t.Fatalf("shared %s: %+v, %v", k, got, err)
		}
	}
	for k, v := range map[Key]string{hx: "x", hy: "y", hz: "z"} {
		if got, err := remote.Get(ctx, syncer.Key(k)); err != nil || got.Version != 1 || string(got.Value) != v {
			t.Fatalf("shared %s: %+v, %v", k, got, err)
		}
	}
}

// TestCleanupNoMergeWithSharedStore: a store whose journal a push loop
// reads never merges it: the cut stays below the oldest pending change.
func TestCleanupNoMergeWithSharedStore(t *testing.T) {
	s := openMem(t, withNow(newTickClock().Now), withSnapshots(10, 5))
	k := key("g", "s")
	fillVersions(t, s, k, 1, 25)
	rep, err := s.Cleanup(context.Background(), CleanupPolicy{Governor: "g", KeepEvents: 5})
	if err != nil || rep.Cleaned != 0 || rep.Merged != 0 || rep.Held != 1 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	if n := len(journalOf(t, s, k)); n != 25 {
		t.Fatalf("%d journal entries, want 25", n)
	}
}

// TestCleanupMergesLongJournal: more entries than one mutation merges, in
// chunks, across many states.
func TestCleanupMergesLongJournal(t *testing.T) {
	s := openMem(t, withSnapshots(500, 2), func(o *Options) { o.LocalOnly = true })
	ctx := context.Background()
	var ws []Write
	for v := 1; v <= 2600; v++ {
		for i := range 3 {
			ws = append(ws, Write{Key: key("g", fmt.Sprint("s", i)), Value: []byte(fmt.Sprint("v", v))})
		}
	}
	for _, w := range ws {
		if _, err := s.Write(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	waitSnapshots(t, s)
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 100})
	if err != nil || rep.Cleaned != 3 || rep.Merged != 3*2499 || rep.Events != 3*2499 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	for i := range 3 {
		k := key("g", fmt.Sprint("s", i))
		js := journalOf(t, s, k)
		if len(js) != 101 || spans(js)[0] != [2]uint64{0, 2500} {
			t.Fatalf("%s: %d entries, first %v", k, len(js), spans(js)[:1])
		}
		counted(t, s, k)
	}
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}
}

// TestCleanupMergeCrash: a crash between two of a merge's chunks leaves a
// journal merged part of the way, which the store reopens with; the next
// cleanup finishes the merge, and the journal pushes the right record.
func TestCleanupMergeCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	var armed, crashed atomic.Int32
	opts := func(o *Options) {
		o.Snapshots = func(string) (int, int) { return 500, 2 }
		o.LocalOnly = true
	}
	s := openDisk(t, dir, opts, func(o *Options) {
		o.hookAfterWAL = func() error {
			// The second group after arming (the merge's second chunk) is
			// durable in the log, and the store fails before applying it.
			if armed.Load() == 1 && crashed.Add(1) == 2 {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	ctx := context.Background()
	k := key("g", "s")
	for v := 1; v <= 2600; v++ {
		mustPut(t, s, k, fmt.Sprint("v", v))
	}
	waitSnapshots(t, s)
	waitApplied(t, s)
	armed.Store(1)
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 100})
	if !errors.Is(err, ErrFailed) || rep.Merged != 2000 || rep.Events != 0 {
		t.Fatalf("cleanup that crashed: %+v, %v; want ErrFailed after 2 chunks", rep, err)
	}
	_ = s.Close(ctx) // the failed store's close reports the failure

	s = openDisk(t, dir, opts)
	defer closeStore(t, s)
	js := journalOf(t, s, k)
	if len(js) != 600 || spans(js)[0] != [2]uint64{0, 2001} || spans(js)[1] != [2]uint64{2001, 2002} {
		t.Fatalf("journal after the crash: %d entries, first %v", len(js), spans(js)[:2])
	}
	counted(t, s, k)
	if evs := eventVersions(t, s, k); len(evs) != 2600 {
		t.Fatalf("%d events after the crash, want 2600 (none removed before the merge ends)", len(evs))
	}
	rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 100})
	if err != nil || rep.Merged != 499 || rep.Events != 2499 || rep.Cuts[0].Base != 2500 {
		t.Fatalf("cleanup after the crash: %+v, %v", rep, err)
	}
	if js := journalOf(t, s, k); len(js) != 101 || spans(js)[0] != [2]uint64{0, 2500} {
		t.Fatalf("journal: %d entries, first %v", len(js), spans(js)[:1])
	}
	counted(t, s, k)
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}
	remote := memremote.New()
	drain(t, s, remote)
	if got, err := remote.Get(ctx, syncer.Key(k)); err != nil || got.Version != 2600 || string(got.Value) != "v2600" {
		t.Fatalf("shared record %+v, %v", got, err)
	}
}

// TestCleanupMergeConcurrent: cleanups with different policies (the
// retention's and an operator's) run while states are written; none fails
// on a journal another merged meanwhile, and every state's journal, count
// and shared record come out right.
func TestCleanupMergeConcurrent(t *testing.T) {
	s := openMem(t, withSnapshots(10, 3), func(o *Options) { o.LocalOnly = true })
	ctx := context.Background()
	const states, writes = 8, 300
	var writers, cleaners sync.WaitGroup
	for i := range states {
		writers.Go(func() {
			k := key("g", fmt.Sprint("s", i))
			for v := 1; v <= writes; v++ {
				if _, err := s.Write(ctx, Write{Key: k, Value: []byte(fmt.Sprint("v", v))}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	var merged atomic.Int64
	for _, keep := range []int{5, 40} {
		cleaners.Go(func() {
			for {
				rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: keep})
				if err != nil {
					t.Errorf("cleanup keeping %d: %v", keep, err)
					return
				}
				merged.Add(int64(rep.Merged))
				select {
				case <-done:
					return
				default:
				}
			}
		})
	}
	writers.Wait()
	close(done)
	cleaners.Wait()
	if merged.Load() == 0 {
		t.Fatal("no journal entry was merged while the states were written")
	}
	waitSnapshots(t, s)
	if _, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5}); err != nil {
		t.Fatal(err)
	}
	for i := range states {
		k := key("g", fmt.Sprint("s", i))
		counted(t, s, k)
		// One change from nothing to the oldest event kept (the cut's
		// base), then one per version; snapshots come as the snapshotter
		// catches up, so where the cut fell varies.
		js, evs := journalOf(t, s, k), eventVersions(t, s, k)
		ok := js[0].BaseVersion == 0 && js[0].Version == evs[0] && js[len(js)-1].Version == writes && len(js) == len(evs)
		for i := 1; i < len(js); i++ {
			ok = ok && js[i].BaseVersion == js[i-1].Version && js[i].Version == evs[i]
		}
		if !ok || evs[0] == 1 {
			t.Fatalf("%s: journal spans %v, events %v", k, spans(js), evs)
		}
	}
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}
	remote := memremote.New()
	drain(t, s, remote)
	for i := range states {
		k := key("g", fmt.Sprint("s", i))
		if got, err := remote.Get(ctx, syncer.Key(k)); err != nil || got.Version != writes || string(got.Value) != fmt.Sprint("v", writes) {
			t.Fatalf("shared %s: %+v, %v", k, got, err)
		}
	}
}

// TestCleanupMergeOverRounds: a journal longer than one cleanup tracks is
// merged over several, each taking in what it tracked; the states it did
// not reach are held until a later one does.
func TestCleanupMergeOverRounds(t *testing.T) {
	defer func(n int) { maxRunSeqs = n }(maxRunSeqs)
	maxRunSeqs = 50
	s := openMem(t, withNow(newTickClock().Now), withSnapshots(10, 20), func(o *Options) { o.LocalOnly = true })
	ctx := context.Background()
	ks := []Key{key("g", "a"), key("g", "b"), key("g", "c")}
	for _, k := range ks {
		fillVersions(t, s, k, 1, 100)
	}
	rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5})
	if err != nil || rep.Merged != 49 || rep.Held != 3 || len(rep.Cuts) != 1 || rep.Cuts[0] != (CleanupCut{Key: ks[0], Base: 50, Events: 49, Snapshots: 4}) {
		t.Fatalf("first cleanup: %+v, %v; want a cut at 50 and every state held", rep, err)
	}
	rounds := 1
	for ; rep.Held > 0 && rounds < 20; rounds++ {
		if rep, err = s.Cleanup(ctx, CleanupPolicy{Governor: "g", KeepEvents: 5}); err != nil {
			t.Fatal(err)
		}
	}
	if rep.Held > 0 || rounds < 4 {
		t.Fatalf("after %d cleanups: %+v", rounds, rep)
	}
	for _, k := range ks {
		if js := journalOf(t, s, k); len(js) != 11 || spans(js)[0] != [2]uint64{0, 90} {
			t.Fatalf("%s: journal spans %v", k, spans(js))
		}
		counted(t, s, k)
	}
	if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
		t.Fatalf("validate: %+v, %v", rv, err)
	}
}

// randomSeeds is how many seeds TestCleanupMergeRandom runs (more when
// hunting).
var randomSeeds = uint64(6)

// TestCleanupMergeRandom: random writes (single, batched, transactions,
// deletes, and on one state a few whose writer waits for the shared store)
// over a few states, with snapshots taken by hand and cleanups of random
// policies between them, on a local-only store; then a shared store gets
// the journal. Every state's journal stays counted and valid, and the
// shared store ends with the local records.
func TestCleanupMergeRandom(t *testing.T) {
	for seed := range randomSeeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			s := openMem(t, withNow(newTickClock().Now), withSnapshots(0, 3), func(o *Options) { o.LocalOnly = true })
			ctx := context.Background()
			names := []string{"a", "b", "c", "d"}
			merged := 0
			pick := func() Key { return key("g", names[rng.IntN(len(names))]) }
			for i := range 600 {
				val := []byte(fmt.Sprint("v", i))
				var err error
				switch r := rng.IntN(20); {
				case r < 12:
					_, err = s.Write(ctx, Write{Key: pick(), Value: val})
				case r < 14:
					k1, k2 := pick(), pick()
					if k1 == k2 {
						continue
					}
					_, err = s.WriteBatch(ctx, []Write{{Key: k1, Value: val}, {Key: k2, Value: val}})
				case r < 16:
					k1, k2 := pick(), pick()
					if k1 == k2 {
						continue
					}
					_, err = s.WriteTxn(ctx, Txn{Writes: []Write{{Key: k1, Value: val}, {Key: k2, Value: val}},
						LogID: fmt.Sprint("t", i), LogTime: time.Now()})
				case r < 17:
					k := pick()
					if rec, gerr := s.Get(ctx, k); gerr == nil && !rec.Deleted {
						_, err = s.Write(ctx, Write{Key: k, Delete: true})
					}
				case r < 18 && i < 100: // d only: such a write holds its state's cut back
					_, err = s.Write(ctx, Write{Key: key("g", "d"), Value: val, Confirm: true})
				case r < 19:
					if _, _, serr := s.Snapshot(ctx, pick()); serr != nil && !errors.Is(serr, ErrNotFound) {
						err = serr
					}
				default:
					p := CleanupPolicy{Governor: "g", KeepEvents: 1 + rng.IntN(20), DryRun: rng.IntN(5) == 0}
					var rep CleanupReport
					rep, err = s.Cleanup(ctx, p)
					if !p.DryRun {
						merged += rep.Merged
					}
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			for _, n := range names {
				k := key("g", n)
				if _, err := s.Get(ctx, k); errors.Is(err, ErrNotFound) {
					continue
				}
				counted(t, s, k)
				js := journalOf(t, s, k)
				for i := 1; i < len(js); i++ {
					if js[i].BaseVersion != js[i-1].Version {
						t.Fatalf("%s: journal spans %v", k, spans(js))
					}
				}
			}
			if rv, err := s.Validate(ctx, "g", ""); err != nil || !rv.OK() {
				t.Fatalf("validate: %+v, %v", rv, err)
			}
			if merged == 0 {
				t.Fatal("no cleanup merged anything")
			}
			t.Logf("%d journal entries merged; %d left", merged, len(mustJournal(t, s)))
			remote := memremote.New()
			drain(t, s, remote)
			for _, n := range names {
				k := key("g", n)
				local, err := s.Get(ctx, k)
				if errors.Is(err, ErrNotFound) {
					continue
				}
				got, rerr := remote.Get(ctx, syncer.Key(k))
				if err != nil || rerr != nil || got.Version != local.Version || got.Deleted != local.Deleted ||
					string(got.Value) != string(local.Value) || local.Pending {
					t.Fatalf("%s: local %+v (%v), shared %+v (%v)", k, local, err, got, rerr)
				}
			}
			if n := txPushing(t, s); n != 0 {
				t.Fatalf("%d transactions still on their way after the push", n)
			}
		})
	}
}
