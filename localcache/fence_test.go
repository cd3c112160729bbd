package localcache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/firestorelocks"
	"github.com/tai-state/tai-state/txn/locktest"
)

func fence(res string, token uint64) Fence { return Fence{Resource: res, Token: token} }

// wantFenceRejected checks that err is a rejection of fence f against the
// mark current, about key k.
func wantFenceRejected(t testing.TB, err error, k Key, f Fence, current uint64) {
	t.Helper()
	var fe *FenceRejectedError
	var ke *KeyError
	if !errors.Is(err, ErrFenceRejected) || !errors.As(err, &fe) || !errors.As(err, &ke) {
		t.Fatalf("err = %v, want a fence rejection", err)
	}
	if *fe != (FenceRejectedError{Resource: f.Resource, Token: f.Token, Current: current}) || ke.Key != k {
		t.Fatalf("rejection %+v of %s, want fence %+v against %d on %s", *fe, ke.Key, f, current, k)
	}
}

func wantMark(t testing.TB, s *Store, res string, want uint64) {
	t.Helper()
	if got, err := s.FenceMark(context.Background(), res); err != nil || got != want {
		t.Fatalf("fence mark of %s = %d, %v; want %d", res, got, err, want)
	}
}

// storeSnapshot is what a rejected write must leave untouched.
type storeSnapshot struct {
	rec     *Record
	events  int
	journal []JournalEntry
	lastSeq uint64
}

func snapshotOf(t *testing.T, s *Store, k Key) storeSnapshot {
	t.Helper()
	var rec *Record
	if r, err := s.Get(context.Background(), k); err == nil {
		rec = &r
	}
	return storeSnapshot{rec: rec, events: len(mustEvents(t, s, k)), journal: mustJournal(t, s), lastSeq: s.LastSeq()}
}

func TestFenceWrite(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	k := key("g", "k")
	rec, err := s.Write(ctx, Write{Key: k, Value: []byte("1"), Fence: fence("lock", 5)})
	if err != nil || rec.Version != 1 {
		t.Fatalf("first fenced write: %+v, %v", rec, err)
	}
	wantMark(t, s, "lock", 5)
	if js := mustJournal(t, s); len(js) != 1 || js[0].Fence != fence("lock", 5) {
		t.Fatalf("journal %+v", js)
	}

	// A lower token is rejected and changes nothing.
	before := snapshotOf(t, s, k)
	_, err = s.Write(ctx, Write{Key: k, Value: []byte("stale"), Fence: fence("lock", 4)})
	wantFenceRejected(t, err, k, fence("lock", 4), 5)
	// Even with a precondition that fails too: the fence is judged first.
	_, err = s.Write(ctx, Write{Key: k, Value: []byte("stale"), IfVersion: u64(9), Fence: fence("lock", 4)})
	wantFenceRejected(t, err, k, fence("lock", 4), 5)
	_, err = s.Write(ctx, Write{Key: k, Delete: true, Fence: fence("lock", 1)})
	wantFenceRejected(t, err, k, fence("lock", 1), 5)
	if after := snapshotOf(t, s, k); !reflect.DeepEqual(after, before) {
		t.Fatalf("a rejected write changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	wantMark(t, s, "lock", 5)

	// The same token and higher ones pass; a higher one raises the mark.
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("2"), Fence: fence("lock", 5)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("3"), Fence: fence("lock", 7)}); err != nil {
		t.Fatal(err)
	}
	wantMark(t, s, "lock", 7)
	_, err = s.Write(ctx, Write{Key: k, Value: []byte("x"), Fence: fence("lock", 5)})
	wantFenceRejected(t, err, k, fence("lock", 5), 7)
	// Unfenced writes, and other locks, are not concerned.
	mustPut(t, s, k, "unfenced")
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("other"), Fence: fence("other", 1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, Write{Key: k, Delete: true, Fence: fence("lock", 7)}); err != nil {
		t.Fatal(err)
	}
	wantMark(t, s, "other", 1)
	wantMark(t, s, "none", 0)

	// ObserveFence raises the mark without a write, never lowers it.
	if err := s.ObserveFence(ctx, "lock", 10); err != nil {
		t.Fatal(err)
	}
	if err := s.ObserveFence(ctx, "lock", 3); err != nil {
		t.Fatal(err)
	}
	wantMark(t, s, "lock", 10)
	_, err = s.Write(ctx, Write{Key: k, Value: []byte("x"), Fence: fence("lock", 9)})
	wantFenceRejected(t, err, k, fence("lock", 9), 10)

	// Invalid fences.
	for _, f := range []Fence{{Resource: "a/b", Token: 1}, {Resource: "r"}, {Token: 2}, {Resource: "..", Token: 1}} {
		_, err := s.Write(ctx, Write{Key: k, Value: []byte("x"), Fence: f})
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "fence" {
			t.Fatalf("fence %+v: %v, want an invalid fence field", f, err)
		}
		if err := s.ObserveFence(ctx, f.Resource, f.Token); !errors.Is(err, ErrInvalid) {
			t.Fatalf("observe %+v: %v", f, err)
		}
	}
}

// TestFenceBatch: a batch is rejected whole when one of its fences is
// stale, also against a mark an earlier item of the batch raised.
func TestFenceBatch(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	a, b, c := key("g", "a"), key("g", "b"), key("g", "c")
	if err := s.ObserveFence(ctx, "lock", 10); err != nil {
		t.Fatal(err)
	}
	before := snapshotOf(t, s, a)
	_, err := s.WriteBatch(ctx, []Write{
		{Key: a, Value: []byte("a"), Fence: fence("lock", 10)},
		{Key: b, Value: []byte("b")},
		{Key: c, Value: []byte("c"), Fence: fence("lock", 9)},
	})
	wantFenceRejected(t, err, c, fence("lock", 9), 10)
	_, err = s.WriteBatch(ctx, []Write{
		{Key: a, Value: []byte("a"), Fence: fence("lock", 12)},
		{Key: b, Value: []byte("b"), Fence: fence("lock", 11)},
	})
	wantFenceRejected(t, err, b, fence("lock", 11), 12)
	if after := snapshotOf(t, s, a); !reflect.DeepEqual(after, before) {
		t.Fatalf("a rejected batch changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	for _, k := range []Key{b, c} {
		if _, err := s.Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s written by a rejected batch: %v", k, err)
		}
	}
	wantMark(t, s, "lock", 10)

	recs, err := s.WriteBatch(ctx, []Write{
		{Key: a, Value: []byte("a"), Fence: fence("lock", 11)},
		{Key: b, Value: []byte("b")},
		{Key: c, Value: []byte("c"), Fence: fence("lock", 12)},
	})
	if err != nil || len(recs) != 3 {
		t.Fatalf("batch: %+v, %v", recs, err)
	}
	wantMark(t, s, "lock", 12)
	js := mustJournal(t, s)
	if len(js) != 3 || js[0].Fence != fence("lock", 11) || !js[1].Fence.IsZero() || js[2].Fence != fence("lock", 12) ||
		js[0].BatchID != js[2].BatchID {
		t.Fatalf("journal %+v", js)
	}
}

// TestFenceGroup: writes staged in one group see the marks raised by the
// writes before them in the group.
func TestFenceGroup(t *testing.T) {
	ctx := context.Background()
	g := newGate()
	s := openMem(t, g.opt)
	tokens := []uint64{20, 19, 20, 21, 3}
	errs := make([]error, len(tokens))
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Write(ctx, Write{Key: key("g", itoa(i)), Value: []byte("v"), Fence: fence("lock", tok)})
		}()
		// Queue them in order.
		waitFor(t, "write queued", func() bool { return len(s.reqs) == i+1 })
	}
	g.open()
	wg.Wait()
	for i, err := range errs {
		switch i {
		case 1:
			wantFenceRejected(t, err, key("g", "1"), fence("lock", 19), 20)
		case 4:
			wantFenceRejected(t, err, key("g", "4"), fence("lock", 3), 21)
		default:
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
	}
	wantMark(t, s, "lock", 21)
}

// TestFenceRestart: marks and the fences of journal entries are durable,
// through a clean restart and through a replay of the write-ahead log.
func TestFenceRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var crash atomic.Bool // the apply fails, as if the process died
	hook := func(o *Options) {
		o.hookAfterWAL = func() error {
			if crash.Load() {
				return errors.New("simulated crash")
			}
			return nil
		}
	}
	s := openDisk(t, dir, hook)
	k := key("g", "k")
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("1"), Fence: fence("lock", 5)}); err != nil {
		t.Fatal(err)
	}
	if err := s.ObserveFence(ctx, "lock", 8); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	s = openDisk(t, dir, hook)
	wantMark(t, s, "lock", 8)
	_, err := s.Write(ctx, Write{Key: k, Value: []byte("stale"), Fence: fence("lock", 7)})
	wantFenceRejected(t, err, k, fence("lock", 7), 8)
	if js := mustJournal(t, s); len(js) != 1 || js[0].Fence != fence("lock", 5) {
		t.Fatalf("journal after restart %+v", js)
	}
	// A mark raised in a group whose apply fails is replayed from the log.
	crash.Store(true)
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("2"), Fence: fence("lock", 9)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "store failed", func() bool { return s.failedErr() != nil })
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	wantMark(t, s, "lock", 9)
	if js := mustJournal(t, s); len(js) != 2 || js[1].Fence != fence("lock", 9) {
		t.Fatalf("journal after replay %+v", js)
	}
}

// TestFenceConcurrent: many writers with tokens of their own on a few
// locks, some stale. Whatever the interleaving, the accepted writes of each
// lock, in journal order, never go back in token, the mark is the highest
// token accepted, and every rejection was against a higher mark.
func TestFenceConcurrent(t *testing.T) {
	ctx := context.Background()
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	const writers, rounds = 16, 40
	locks := []string{"l0", "l1", "l2"}
	var mu sync.Mutex
	next := map[string]uint64{}
	var wg sync.WaitGroup
	var rejected atomic.Int64
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range rounds {
				res := locks[rng.IntN(len(locks))]
				mu.Lock()
				next[res]++
				tok := next[res]
				mu.Unlock()
				if rng.IntN(3) == 0 && tok > 3 {
					tok -= uint64(rng.IntN(3) + 1) // a paused holder
				}
				ws := []Write{{Key: key("g", fmt.Sprintf("w%d-%d", w, i)), Value: []byte("v"), Fence: fence(res, tok)}}
				if rng.IntN(4) == 0 {
					ws = append(ws, Write{Key: key("g", fmt.Sprintf("w%d-%d-b", w, i)), Value: []byte("v"), Fence: fence(res, tok)})
				}
				_, err := s.WriteBatch(ctx, ws)
				var fe *FenceRejectedError
				switch {
				case err == nil:
				case errors.As(err, &fe):
					if fe.Current <= fe.Token {
						errs <- fmt.Errorf("rejected %+v", *fe)
						return
					}
					rejected.Add(1)
				default:
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	highest := map[string]uint64{}
	for _, j := range mustJournal(t, s) {
		f := j.Fence
		if f.Token < highest[f.Resource] {
			t.Fatalf("journal entry %d accepted token %d of %s after token %d", j.Seq, f.Token, f.Resource, highest[f.Resource])
		}
		highest[f.Resource] = f.Token
	}
	for _, res := range locks {
		wantMark(t, s, res, highest[res])
	}
	if rejected.Load() == 0 {
		t.Fatal("no write was stale: the test proved nothing")
	}
}

// fenceRemotes are the shared stores the push tests run against, each with
// the lock service it checks fences against.
func fenceRemotes(t *testing.T, test func(t *testing.T, r syncer.Remote, grant func(context.Context, string) (uint64, error))) {
	t.Run("memremote", func(t *testing.T) {
		locks := txn.NewMemory(nil)
		m := memremote.New()
		m.SetLockTokens(func(ctx context.Context, resource string) (uint64, error) {
			st, err := locks.Status(ctx, resource)
			return st.Token, err
		})
		test(t, m, locktest.Granter(locks))
	})
	t.Run("firestore", func(t *testing.T) {
		client, root := firestoretest.Client(t)
		locks, err := firestorelocks.New(client, firestorelocks.Config{Root: root, MaxAttempts: 50})
		if err != nil {
			t.Fatal(err)
		}
		test(t, firestore.New(client, firestore.Config{Root: root}), locktest.Granter(locks))
	})
}

// TestFencePushRejected: a write the store accepted (it had not seen the
// newer grant) is rejected by the shared store when pushed: it is parked
// with its rejection, which WaitSynced returns and a restart keeps; the
// shared store keeps the new holder's value. A strong write with a stale
// fence fails the same way.
func TestFencePushRejected(t *testing.T) {
	fenceRemotes(t, func(t *testing.T, remote syncer.Remote, grant func(context.Context, string) (uint64, error)) {
		ctx := context.Background()
		t1, err := grant(ctx, "lock")
		if err != nil {
			t.Fatal(err)
		}
		a := newSyncNode(t, "a", remote, "g")
		b := newSyncNode(t, "b", remote, "g")
		k := key("g", "k")
		recA, err := a.store.Write(ctx, Write{Key: k, Value: []byte("a1"), Fence: fence("lock", t1)})
		if err != nil {
			t.Fatal(err)
		}
		a.pushAll()
		if err := a.store.WaitSynced(ctx, recA.Seq); err != nil {
			t.Fatal(err)
		}
		t2, err := grant(ctx, "lock")
		if err != nil {
			t.Fatal(err)
		}
		b.pullAll()
		if _, err := b.store.Write(ctx, Write{Key: k, Value: []byte("b1"), IfVersion: u64(1), Fence: fence("lock", t2)}); err != nil {
			t.Fatal(err)
		}
		b.pushAll()

		// a's late write under t1: a has not seen t2, so it accepts it.
		late, err := a.store.Write(ctx, Write{Key: k, Value: []byte("a-late"), Fence: fence("lock", t1)})
		if err != nil {
			t.Fatal(err)
		}
		a.pushAll()
		rej := FenceRejectedError{Resource: "lock", Token: t1, Current: t2}
		var pe *ParkedError
		var fe *FenceRejectedError
		err = a.store.WaitSynced(ctx, late.Seq)
		if !errors.As(err, &pe) || !errors.As(err, &fe) || *fe != rej || !errors.Is(err, ErrFenceRejected) {
			t.Fatalf("WaitSynced of the late write: %v", err)
		}
		if r := remoteGet(t, remote, k); string(r.Value) != "b1" {
			t.Fatalf("remote holds %q, want the new holder's b1", r.Value)
		}
		// The rejected change never happened: a adopted the shared store's
		// record.
		if got := a.get(k); string(got.Value) != "b1" || got.Pending || got.Version != 2 {
			t.Fatalf("a holds %q v%d pending=%v, want b1 v2", got.Value, got.Version, got.Pending)
		}
		checkFailed := func() {
			t.Helper()
			failed, err := a.store.Failed(ctx, 0, 0)
			if err != nil || len(failed) != 1 || failed[0].Seq != late.Seq || failed[0].FenceRejected == nil ||
				*failed[0].FenceRejected != rej || failed[0].Fence != fence("lock", t1) ||
				!strings.Contains(failed[0].Reason, "FenceRejected") {
				t.Fatalf("failed list %+v, %v", failed, err)
			}
		}
		checkFailed()
		a.restart("g")
		checkFailed()

		// A strong write with the stale fence.
		a.pullAll()
		loopCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = a.push.Run(loopCtx) }()
		defer func() { cancel(); <-done }()
		_, err = a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("a-strong"), Fence: fence("lock", t1)}})
		if !errors.As(err, &fe) || *fe != rej {
			t.Fatalf("strong write with a stale fence: %v", err)
		}
		if r := remoteGet(t, remote, k); string(r.Value) != "b1" {
			t.Fatalf("remote holds %q after the strong write, want b1", r.Value)
		}
		// Under the current grant it goes through.
		recs, err := a.store.WriteStrong(ctx, a.pull, []Write{{Key: k, Value: []byte("a-strong"), Fence: fence("lock", t2)}})
		if err != nil || len(recs) != 1 {
			t.Fatalf("strong write under the current grant: %+v, %v", recs, err)
		}
		if r := remoteGet(t, remote, k); string(r.Value) != "a-strong" {
			t.Fatalf("remote holds %q, want a-strong", r.Value)
		}
		// Now a has seen t2: the old token is rejected locally.
		_, err = a.store.Write(ctx, Write{Key: k, Value: []byte("x"), Fence: fence("lock", t1)})
		wantFenceRejected(t, err, k, fence("lock", t1), t2)
	})
}

// TestFenceCodec: fenced journal entries (format 3) and parked entries
// with their rejection round-trip; every truncation is an error; entries
// without a fence keep format 2, which is still read as before.
func TestFenceCodec(t *testing.T) {
	plain := JournalEntry{Seq: 3, OpID: "n-3", BatchID: "n-3", Key: key("g", "s"), BaseVersion: 1, Version: 2, Time: 9, Strict: true}
	fenced := plain
	fenced.Fence = fence("orders-lock", 1<<40)
	if b := encodeJournal(&plain); b[0] != formatJournalV2 {
		t.Fatalf("an entry without a fence is written in format %d", b[0])
	}
	parked := ParkedEntry{JournalEntry: fenced, Reason: "FenceRejected: stale", ParkedAt: 5,
		FenceRejected: &FenceRejectedError{Resource: "orders-lock", Token: 1 << 40, Current: 1<<40 + 1}}
	oldParked := ParkedEntry{JournalEntry: plain, Reason: "denied", ParkedAt: 6}
	for _, j := range []JournalEntry{plain, fenced} {
		got, err := decodeJournal(j.Seq, encodeJournal(&j))
		if err != nil || !reflect.DeepEqual(got, j) {
			t.Fatalf("journal %+v: decoded %+v, %v", j, got, err)
		}
	}
	for _, p := range []ParkedEntry{parked, oldParked, {JournalEntry: fenced, Reason: "denied", ParkedAt: 7}} {
		b := encodeParked(&p)
		got, err := decodeParked(p.Seq, b)
		if err != nil || !reflect.DeepEqual(got, p) {
			t.Fatalf("parked %+v: decoded %+v, %v", p, got, err)
		}
		for n := range len(b) {
			if _, err := decodeParked(p.Seq, b[:n]); !errors.Is(err, errCorrupt) {
				t.Fatalf("parked truncated to %d of %d: %v", n, len(b), err)
			}
		}
	}
	// A format-3 entry must carry a fence.
	bad := encodeJournal(&plain)
	bad[0] = formatJournalV3
	bad = append(bad, 0, 0)
	if _, err := decodeJournal(3, bad); !errors.Is(err, errCorrupt) {
		t.Fatalf("format 3 without a fence: %v", err)
	}
	for n := range len(encodeJournal(&fenced)) {
		if _, err := decodeJournal(3, encodeJournal(&fenced)[:n]); !errors.Is(err, errCorrupt) {
			t.Fatalf("fenced journal truncated to %d: %v", n, err)
		}
	}
}

func FuzzDecodeParked(f *testing.F) {
	j := JournalEntry{OpID: "n-1", BatchID: "n-1", Key: key("g", "s"), Version: 1}
	f.Add(encodeParked(&ParkedEntry{JournalEntry: j, Reason: "denied", ParkedAt: 1}))
	j.Fence = fence("lock", 3)
	f.Add(encodeParked(&ParkedEntry{JournalEntry: j, Reason: "FenceRejected", ParkedAt: 1,
		FenceRejected: &FenceRejectedError{Resource: "lock", Token: 3, Current: 4}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeParked(1, b)
		if err != nil {
			return
		}
		if again, err := decodeParked(1, encodeParked(&p)); err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, p)
		}
	})
}

// TestFenceRejectedChangeLeavesTheHistory: a's late write under an old
// grant, rejected by the shared store, never happened there: a's history
// of k is the shared store's (b's version 2, not the rejected write).
func TestFenceRejectedChangeLeavesTheHistory(t *testing.T) {
	fenceRemotes(t, func(t *testing.T, remote syncer.Remote, grant func(context.Context, string) (uint64, error)) {
		ctx := context.Background()
		t1, err := grant(ctx, "lock")
		if err != nil {
			t.Fatal(err)
		}
		a := newHistoryNode(t, "a", remote, 0)
		b := newHistoryNode(t, "b", remote, 0)
		k := key("g", "k")
		if _, err := a.store.Write(ctx, Write{Key: k, Value: []byte("a1"), Fence: fence("lock", t1)}); err != nil {
			t.Fatal(err)
		}
		a.pushAll()
		t2, err := grant(ctx, "lock")
		if err != nil {
			t.Fatal(err)
		}
		b.pullAll()
		if _, err := b.store.Write(ctx, Write{Key: k, Value: []byte("b2"), IfVersion: u64(1), Fence: fence("lock", t2)}); err != nil {
			t.Fatal(err)
		}
		b.pushAll()
		if _, err := a.store.Write(ctx, Write{Key: k, Value: []byte("a-late"), Fence: fence("lock", t1)}); err != nil {
			t.Fatal(err)
		}
		if rep := a.pushAll(); rep.Parked != 1 {
			t.Fatalf("a's push %+v: want the late write parked", rep)
		}
		a.pullAll()
		wantLineage(t, a, k, "a1", "b2")
	})
}

// TestFencedTransition: a transition carries its fence into its write, its
// journal entry and the mark. A stale fence is rejected before the machine
// state is judged (a holder that lost its lock is told so, not only that
// the machine moved on) and changes nothing; the write checks it again in
// its group; an invalid fence is refused.
func TestFencedTransition(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	k := key("orders", "o1")
	rec, err := s.Transition(ctx, Transition{Key: k, To: "open", Action: "create", Fence: fence("leader", 3)}, nil)
	if err != nil || rec.Version != 1 {
		t.Fatalf("fenced create: %+v, %v", rec, err)
	}
	wantMark(t, s, "leader", 3)
	if js := mustJournal(t, s); len(js) != 1 || js[0].Fence != fence("leader", 3) {
		t.Fatalf("journal %+v", js)
	}

	if err := s.ObserveFence(ctx, "leader", 4); err != nil {
		t.Fatal(err)
	}
	before := snapshotOf(t, s, k)
	_, err = s.Transition(ctx, Transition{Key: k, From: "open", To: "paid", Action: "pay", Fence: fence("leader", 3)}, nil)
	wantFenceRejected(t, err, k, fence("leader", 3), 4)
	// From a machine state that is wrong too: the fence is judged first.
	_, err = s.Transition(ctx, Transition{Key: k, From: "paid", To: "shipped", Action: "ship", Fence: fence("leader", 3)}, nil)
	wantFenceRejected(t, err, k, fence("leader", 3), 4)
	// A grant observed between the transition's read and its write: the
	// write's own check rejects it.
	raced := func(ctx context.Context, w Write) (Record, error) {
		if err := s.ObserveFence(ctx, "leader", 5); err != nil {
			return Record{}, err
		}
		return s.Write(ctx, w)
	}
	_, err = s.Transition(ctx, Transition{Key: k, From: "open", To: "paid", Action: "pay", Fence: fence("leader", 4)}, raced)
	wantFenceRejected(t, err, k, fence("leader", 4), 5)
	if after := snapshotOf(t, s, k); !reflect.DeepEqual(after, before) {
		t.Fatalf("a rejected transition changed the store:\nbefore %+v\nafter  %+v", before, after)
	}

	rec, err = s.Transition(ctx, Transition{Key: k, From: "open", To: "paid", Action: "pay", Fence: fence("leader", 6)}, nil)
	if err != nil || rec.Version != 2 {
		t.Fatalf("transition under the current grant: %+v, %v", rec, err)
	}
	wantMark(t, s, "leader", 6)
	if js := mustJournal(t, s); len(js) != 2 || js[1].Fence != fence("leader", 6) {
		t.Fatalf("journal %+v", js)
	}
	if evs := mustEvents(t, s, k); len(evs) != 2 || evs[1].Action != "pay" {
		t.Fatalf("events %+v", evs)
	}

	for _, f := range []Fence{{Resource: "a/b", Token: 1}, {Resource: "r"}, {Token: 2}} {
		_, err := s.Transition(ctx, Transition{Key: k, From: "paid", To: "shipped", Action: "ship", Fence: f}, nil)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "fence" {
			t.Fatalf("fence %+v: %v, want an invalid fence field", f, err)
		}
	}
}

// TestFencedTransitionPushRejected: a transition the store accepted under a
// fence the lock has since been granted past is rejected by the shared
// store when pushed, like a put: parked with its rejection, and the store's
// copy follows the new holder's machine.
func TestFencedTransitionPushRejected(t *testing.T) {
	fenceRemotes(t, func(t *testing.T, remote syncer.Remote, grant func(context.Context, string) (uint64, error)) {
		ctx := context.Background()
		t1, err := grant(ctx, "leader")
		if err != nil {
			t.Fatal(err)
		}
		a := newSyncNode(t, "a", remote, "g")
		b := newSyncNode(t, "b", remote, "g")
		k := key("g", "m")
		if _, err := a.store.Transition(ctx, Transition{Key: k, To: "open", Action: "create", Fence: fence("leader", t1)}, nil); err != nil {
			t.Fatal(err)
		}
		a.pushAll()
		t2, err := grant(ctx, "leader")
		if err != nil {
			t.Fatal(err)
		}
		b.pullAll()
		if _, err := b.store.Transition(ctx, Transition{Key: k, From: "open", To: "cancelled", Action: "cancel", Fence: fence("leader", t2)}, nil); err != nil {
			t.Fatal(err)
		}
		b.pushAll()

		// a has not seen t2 nor b's transition: it accepts its own.
		late, err := a.store.Transition(ctx, Transition{Key: k, From: "open", To: "paid", Action: "pay", Fence: fence("leader", t1)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep := a.pushAll(); rep.Parked != 1 {
			t.Fatalf("a's push %+v: want the late transition parked", rep)
		}
		var fe *FenceRejectedError
		if err := a.store.WaitSynced(ctx, late.Seq); !errors.As(err, &fe) || *fe != (FenceRejectedError{Resource: "leader", Token: t1, Current: t2}) {
			t.Fatalf("WaitSynced of the late transition: %v", err)
		}
		if r := remoteGet(t, remote, k); string(r.Value) != string(msgpackOf("cancelled")) {
			t.Fatalf("remote holds %q, want the new holder's machine", r.Value)
		}
		if got := a.get(k); string(got.Value) != string(msgpackOf("cancelled")) || got.Pending || got.Version != 2 {
			t.Fatalf("a holds %q v%d pending=%v, want cancelled v2", got.Value, got.Version, got.Pending)
		}
	})
}
