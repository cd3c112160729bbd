package remotetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tai-state/tai-state/syncer"
)

// Grant takes the lock of resource in the lock service a Remote checks
// fences against (for example a txn.Locks on the same Firestore root; see
// txn/locktest.Granter), releases it, and returns the grant's token: the
// lock's last token is then that one, and no lease runs.
type Grant func(ctx context.Context, resource string) (uint64, error)

// fenceTests are the tests of fenced changes, run when Options.Fences is
// set.
var fenceTests = []struct {
	name string
	fn   func(t *testing.T, ctx context.Context, r syncer.Remote, l Grant, o Options)
}{
	{"FenceCommit", testFenceCommit},
	{"FenceBatch", testFenceBatch},
	{"FenceInvalid", testFenceInvalid},
	{"FenceConcurrent", testFenceConcurrent},
}

func grant(t *testing.T, ctx context.Context, l Grant, resource string) uint64 {
	t.Helper()
	tok, err := l(ctx, resource)
	if err != nil {
		t.Fatalf("grant %s: %v", resource, err)
	}
	return tok
}

func fenced(c syncer.Change, resource string, token uint64) syncer.Change {
	c.Fence = syncer.Fence{Resource: resource, Token: token}
	return c
}

// wantRejected checks a single-change Commit that must be FenceRejected
// with current as the lock's last token.
func wantRejected(t *testing.T, ctx context.Context, r syncer.Remote, c syncer.Change, current uint64) {
	t.Helper()
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
	var fe *syncer.FenceRejectedError
	if !errors.As(err, &fe) || !errors.Is(err, syncer.ErrFenceRejected) || errors.Is(err, syncer.ErrPermanent) {
		t.Fatalf("Commit with fence %+v: %v, want a *FenceRejectedError", c.Fence, err)
	}
	want := syncer.FenceRejectedError{Resource: c.Fence.Resource, Token: c.Fence.Token, Current: current}
	if *fe != want {
		t.Fatalf("rejection %+v, want %+v", *fe, want)
	}
	if len(res) != 1 || res[0].Status != syncer.FenceRejected || res[0].Rejected == nil || *res[0].Rejected != want {
		t.Fatalf("results %+v", res)
	}
}

// testFenceCommit: a fence passes with the lock's last token, even after
// the grant was released (the token decides, not the lease); an older
// token, a token never granted and a lock with no record are rejected and
// write nothing; a change the remote already has is AlreadyApplied whatever
// its fence.
func testFenceCommit(t *testing.T, ctx context.Context, r syncer.Remote, l Grant, _ Options) {
	key := syncer.Key{Governor: "g", State: "fenced"}
	t1 := grant(t, ctx, l, "res")
	c1 := fenced(change(key, 0, "a", nil, "by-1"), "res", t1)
	wantStatus(t, commit(t, ctx, r, false, c1), syncer.Applied)

	t2 := grant(t, ctx, l, "res")
	if t2 <= t1 {
		t.Fatalf("second grant token %d, first %d", t2, t1)
	}
	// The old holder's late write.
	late := fenced(change(key, 1, "a", c1.Record.Clock.Vector, "late"), "res", t1)
	wantRejected(t, ctx, r, late, t2)
	// Even on a wrong base version: the fence is judged first.
	wantRejected(t, ctx, r, fenced(change(key, 7, "z", nil, "late"), "res", t1), t2)
	sameRecord(t, get(t, ctx, r, key), c1.Record)

	c2 := fenced(change(key, 1, "b", c1.Record.Clock.Vector, "by-2"), "res", t2)
	wantStatus(t, commit(t, ctx, r, false, c2), syncer.Applied)
	sameRecord(t, get(t, ctx, r, key), c2.Record)
	if evs, err := r.Events(ctx, key, 0, 0); err != nil || len(evs) != 2 {
		t.Fatalf("events: %v %+v", err, evs)
	}

	// Idempotent: the first change again (a lost reply) is recognised, its
	// stale fence notwithstanding.
	wantStatus(t, commit(t, ctx, r, false, c1), syncer.AlreadyApplied)

	// A token never granted, and a lock that has no record.
	wantRejected(t, ctx, r, fenced(change(key, 2, "b", c2.Record.Clock.Vector, "x"), "res", t2+5), t2)
	wantRejected(t, ctx, r, fenced(change(key, 2, "b", c2.Record.Clock.Vector, "x"), "no-such-lock", 1), 0)
	sameRecord(t, get(t, ctx, r, key), c2.Record)
}

// testFenceBatch: without Atomic a rejected change writes nothing and the
// others apply; with Atomic nothing is written. A conflict in the batch
// takes precedence in the error.
func testFenceBatch(t *testing.T, ctx context.Context, r syncer.Remote, l Grant, _ Options) {
	k := func(s string) syncer.Key { return syncer.Key{Governor: "g", State: s} }
	old := grant(t, ctx, l, "batch-lock")
	cur := grant(t, ctx, l, "batch-lock")
	other := grant(t, ctx, l, "other-lock")

	stale := fenced(change(k("a"), 0, "n", nil, "a"), "batch-lock", old)
	plain := change(k("b"), 0, "n", nil, "b")
	good := fenced(change(k("c"), 0, "n", nil, "c"), "batch-lock", cur)
	good2 := fenced(change(k("d"), 0, "n", nil, "d"), "other-lock", other)
	res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{stale, plain, good, good2}})
	var fe *syncer.FenceRejectedError
	if !errors.As(err, &fe) || fe.Token != old || fe.Current != cur {
		t.Fatalf("Commit: %v, want the rejection of the stale change", err)
	}
	wantStatus(t, res, syncer.FenceRejected, syncer.Applied, syncer.Applied, syncer.Applied)
	if _, err := r.Get(ctx, k("a")); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("a rejected change was written: %v", err)
	}
	for _, c := range []syncer.Change{plain, good, good2} {
		sameRecord(t, get(t, ctx, r, c.Key), c.Record)
	}

	// Atomic: one stale fence and nothing is written.
	e := fenced(change(k("e"), 0, "n", nil, "e"), "batch-lock", cur)
	f := change(k("f"), 0, "n", nil, "f")
	res, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{e, f, stale}, Atomic: true})
	if !errors.Is(err, syncer.ErrFenceRejected) {
		t.Fatalf("atomic: %v", err)
	}
	wantStatus(t, res, syncer.Skipped, syncer.Skipped, syncer.FenceRejected)
	for _, key := range []syncer.Key{k("a"), k("e"), k("f")} {
		if _, err := r.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
			t.Fatalf("%s written by a rejected atomic batch: %v", key, err)
		}
	}

	// A conflict and a rejection: the error is the conflict's.
	conflicting := change(k("b"), 0, "m", nil, "b-again")
	res, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{stale, conflicting}})
	if !errors.Is(err, syncer.ErrConflict) {
		t.Fatalf("conflict and rejection: %v", err)
	}
	wantStatus(t, res, syncer.FenceRejected, syncer.Conflict)
}

// testFenceInvalid: a malformed fence is a permanent error, not a
// rejection.
func testFenceInvalid(t *testing.T, ctx context.Context, r syncer.Remote, _ Grant, _ Options) {
	key := syncer.Key{Governor: "g", State: "s"}
	for _, f := range []syncer.Fence{{Resource: "a/b", Token: 1}, {Resource: "r", Token: 0}, {Token: 3},
		{Resource: "__x__", Token: 1}} {
		c := change(key, 0, "n", nil, "v")
		c.Fence = f
		_, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
		if !errors.Is(err, syncer.ErrPermanent) || errors.Is(err, syncer.ErrFenceRejected) {
			t.Fatalf("fence %+v: %v, want ErrPermanent", f, err)
		}
	}
	if _, err := r.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("invalid fences wrote: %v", err)
	}
}

// testFenceConcurrent: writers race to change one state, each under the
// token it last learned (a writer learns the current one only after a
// rejection, as a paused holder would), while the lock is granted again
// every few writes. Each change records its token in its value; the state's
// history must show the tokens never going back: once a newer grant's write
// landed, no older holder's write lands after it.
func testFenceConcurrent(t *testing.T, ctx context.Context, r syncer.Remote, l Grant, o Options) {
	key := syncer.Key{Governor: "g", State: "contended"}
	const resource = "contended-lock"
	var current atomic.Uint64
	current.Store(grant(t, ctx, l, resource))
	var rejected, applied atomic.Int64
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var writers, granter sync.WaitGroup
	errs := make(chan error, o.Concurrency+1)
	progress := make(chan struct{}, o.Concurrency)
	for w := range o.Concurrency {
		writers.Add(1)
		go func() {
			defer writers.Done()
			node := fmt.Sprintf("w%d", w)
			tok := current.Load()
			for done := 0; done < o.Rounds; {
				var base uint64
				var vec map[string]uint64
				if rec, err := r.Get(ctx, key); err == nil {
					base, vec = rec.Version, rec.Clock.Vector
				} else if !errors.Is(err, syncer.ErrNotFound) {
					errs <- err
					return
				}
				c := fenced(change(key, base, node, vec, strconv.FormatUint(tok, 10)), resource, tok)
				res, err := r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
				switch {
				case errors.Is(err, syncer.ErrFenceRejected):
					rejected.Add(1)
					tok = current.Load()
				case errors.Is(err, syncer.ErrConflict), syncer.IsTransient(err) && ctx.Err() == nil:
				case err != nil:
					errs <- err
					return
				case res[0].Status == syncer.Applied:
					applied.Add(1)
					done++
					select {
					case progress <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	writersDone := make(chan struct{})
	granter.Add(1)
	go func() { // the lock changes hands every few writes
		defer granter.Done()
		for {
			for range o.Concurrency/2 + 1 {
				select {
				case <-progress:
				case <-writersDone:
					return
				}
			}
			tok, err := l(ctx, resource)
			if err != nil {
				errs <- err
				return
			}
			current.Store(tok)
		}
	}()
	writers.Wait()
	close(writersDone)
	granter.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var evs []syncer.Event
	for {
		page, err := r.Events(ctx, key, uint64(len(evs)), 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		evs = append(evs, page...)
	}
	if int64(len(evs)) < applied.Load() { // more if a transient failure hid an applied commit
		t.Fatalf("%d events, %d changes applied", len(evs), applied.Load())
	}
	var last uint64
	for _, e := range evs {
		tok, err := strconv.ParseUint(string(e.Value), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if tok < last {
			t.Fatalf("event %d was written under token %d after a write under token %d", e.ToVersion, tok, last)
		}
		last = tok
	}
	if rejected.Load() == 0 {
		t.Fatal("no write was rejected: the test did not make any holder stale")
	}
	t.Logf("%d changes applied, %d rejected as stale", applied.Load(), rejected.Load())
}
