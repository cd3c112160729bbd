package firestorelocks

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/txn"
)

// TestWaitersSkipExtends: a lease extended while others wait (as a
// connection-bound lock is, all the time) reaches every waiter through its
// listener, and costs them no transaction: no grant attempt, no graph walk.
// The release then hands the lock to each waiter in turn.
func TestWaitersSkipExtends(t *testing.T) {
	ctx, open := setup(t)
	own, ws := open(), open() // the holder's sidecar, and the waiters'

	g, err := own.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	type result struct {
		g   txn.Grant
		err error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			g, err := ws.Acquire(ctx, "res", fmt.Sprintf("w-%d", i), time.Minute, time.Minute)
			if err == nil {
				err = ws.Release(ctx, g) // the next waiter's turn
			}
			results <- result{g, err}
		}()
	}
	handled := func() bool { return ws.deliveriesHandled.Load() == ws.lockDeliveries.Load() }
	eventually(t, ctx, "every waiter recorded, walked and listening", func() bool {
		st, err := own.Status(ctx, "res")
		return err == nil && len(st.Waiters) == n && ws.waitWalks.Load() >= n && ws.lockDeliveries.Load() >= n && handled()
	})
	tries, walks, delivered, skips := ws.waitTries.Load(), ws.waitWalks.Load(), ws.lockDeliveries.Load(), ws.waitSkips.Load()

	const extends = 5
	for k := 1; k <= extends; k++ {
		if g, err = own.Extend(ctx, g, time.Minute); err != nil {
			t.Fatal(err)
		}
		eventually(t, ctx, fmt.Sprintf("extension %d delivered to every waiter", k), func() bool {
			return ws.lockDeliveries.Load() >= delivered+n*int64(k)
		})
	}
	eventually(t, ctx, "every delivery handled", handled)
	if dt, dw := ws.waitTries.Load()-tries, ws.waitWalks.Load()-walks; dt != 0 || dw != 0 {
		t.Fatalf("%d extensions cost the %d waiters %d grant transactions and %d graph walks, want none", extends, n, dt, dw)
	}
	t.Logf("%d extensions: %d wake-ups without a transaction", extends, ws.waitSkips.Load()-skips)

	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		if r.g.Token <= g.Token || seen[r.g.Token] {
			t.Fatalf("token %d after %d (seen %v)", r.g.Token, g.Token, seen)
		}
		seen[r.g.Token] = true
	}
	if ws.waitTries.Load() == tries {
		t.Fatal("the release was granted without a grant transaction")
	}
}

// setup returns a context for the test and a function that opens Locks,
// each on a client of its own (as sidecars have), under one new root.
func setup(t *testing.T) (context.Context, func() *Locks) {
	t.Helper()
	if os.Getenv("FIRESTORE_EMULATOR_HOST") == "" {
		t.Fatal("FIRESTORE_EMULATOR_HOST is not set: run through scripts/test.sh or scripts/emulator.sh run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	root := "tests/" + rand.Text()
	return ctx, func() *Locks {
		c, err := firestore.NewClient(ctx, firestoretest.Project)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		l, err := New(c, Config{Root: root, MaxAttempts: 50})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
}

// TestReleaseWakesOnlyTheNext: each release hands the lock to the waiter
// that has waited longest, and costs one grant transaction, that waiter's:
// the others' listeners show them the lock is not theirs.
func TestReleaseWakesOnlyTheNext(t *testing.T) {
	ctx, open := setup(t)
	own, ws := open(), open()
	g, err := own.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	grants := make(chan txn.Grant)
	errs := make(chan error, n)
	turn := make([]chan struct{}, n) // closed: release the lock
	for i := range n {
		turn[i] = make(chan struct{})
		holder := fmt.Sprintf("w-%d", i)
		go func() {
			g, err := ws.Acquire(ctx, "res", holder, time.Minute, time.Minute)
			if err != nil {
				errs <- err
				return
			}
			grants <- g
			<-turn[i]
			errs <- ws.Release(ctx, g)
		}()
		eventually(t, ctx, holder+" waiting", func() bool {
			st, err := own.Status(ctx, "res")
			return err == nil && len(st.Waiters) == i+1
		})
	}
	handled := func() bool { return ws.deliveriesHandled.Load() == ws.lockDeliveries.Load() }
	eventually(t, ctx, "every waiter listening", func() bool { return ws.lockDeliveries.Load() >= n && handled() })

	tries, delivered := ws.waitTries.Load(), ws.lockDeliveries.Load()
	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var got txn.Grant
		select {
		case got = <-grants:
		case err := <-errs:
			t.Fatal(err)
		}
		if want := fmt.Sprintf("w-%d", i); got.Holder != want {
			t.Fatalf("release %d went to %s, want %s (the longest waiting)", i, got.Holder, want)
		}
		// Every waiter left has seen the lock change and acted on it.
		left := int64(n - 1 - i)
		eventually(t, ctx, "the release delivered to every waiter left", func() bool {
			return ws.lockDeliveries.Load() >= delivered+left && handled()
		})
		if d := ws.waitTries.Load() - tries; d != 1 {
			t.Fatalf("release %d cost %d grant transactions with %d waiters, want 1", i, d, left+1)
		}
		tries, delivered = ws.waitTries.Load(), ws.lockDeliveries.Load()
		close(turn[i])
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestHandoffPassesOn: a wait that ends while the lock is being handed to
// it passes the lock on to the next waiter at once; and a handoff whose
// waiter is gone (its sidecar died, its record stays) ends with the window,
// and later releases pass that waiter over.
func TestHandoffPassesOn(t *testing.T) {
	ctx, open := setup(t)
	own, ws := open(), open()
	ws.handoff = time.Hour // a wait passing the lock on must not wait for the window
	acquired := func(l *Locks, holder string) <-chan error {
		done := make(chan error, 1)
		go func() {
			g, err := l.Acquire(ctx, "res", holder, time.Minute, time.Minute)
			if err == nil {
				err = l.Release(ctx, g)
			}
			done <- err
		}()
		return done
	}
	waiting := func(n int) {
		eventually(t, ctx, fmt.Sprint(n, " waiting"), func() bool {
			st, err := own.Status(ctx, "res")
			return err == nil && len(st.Waiters) == n
		})
	}

	g, err := ws.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	// bob's wait is recorded and listening, but nobody runs it: it ends
	// when the test says.
	bob, err := ws.startWait(ctx, "res", "bob", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	waiting(1)
	carol := acquired(ws, "carol")
	waiting(2)
	if err := ws.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	var held *txn.HeldError
	if _, err := own.Acquire(ctx, "res", "newcomer", time.Minute, 0); !errors.As(err, &held) || !held.Handoff || held.Holder != "bob" {
		t.Fatalf("a newcomer's Acquire after the release: %v, want the lock being handed to bob", err)
	}
	if st, err := own.Status(ctx, "res"); err != nil || st.Next != "bob" || st.Held {
		t.Fatalf("Status after the release: %+v, %v; want it handed to bob", st, err)
	}
	bob.stop()
	if err := <-carol; err != nil {
		t.Fatalf("carol, after bob's wait ended: %v", err)
	}

	// A waiter that is gone: its record says it waits, but nobody listens.
	own.handoff = 500 * time.Millisecond
	if g, err = own.Acquire(ctx, "res", "leader", time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	ghost := waitDoc{Waiter: "ghost", Resource: "res", WaitID: "ghost-wait", Since: time.Now().Add(-time.Minute),
		Until: time.Now().Add(time.Hour)}
	if _, err := own.waitRef("ghost").Set(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	waiting(1)
	dave := acquired(ws, "dave")
	waiting(2)
	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	if err := <-dave; err != nil {
		t.Fatalf("dave, after the handoff to ghost ended: %v", err)
	}
	if took := time.Since(released); took < own.handoff/2 {
		t.Fatalf("dave took the lock %v after the release, within ghost's handoff window (%v)", took, own.handoff)
	}
	// The next release passes ghost over.
	if g, err = own.Acquire(ctx, "res", "leader", time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	erin := acquired(ws, "erin")
	waiting(2)
	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	if d := readLock(t, ctx, own, "res"); d.Next == "ghost" || !slices.Contains(d.Passed, "ghost-wait") {
		t.Fatalf("the release after ghost's lapsed handoff: lock %+v, want ghost passed over", d)
	}
	if err := <-erin; err != nil {
		t.Fatal(err)
	}
}

// TestExpiryHandsOn: after a lease that runs out with no release, the lock
// is the longest waiter's for one handoff window, as after a release,
// though nothing is written: a newcomer is turned away and status names
// that waiter, the expired holder's release says its lease ended, and once
// the window went by the lock is free again and that waiter passed over.
func TestExpiryHandsOn(t *testing.T) {
	ctx, open := setup(t)
	own := open()
	own.handoff = 500 * time.Millisecond
	g, err := own.Acquire(ctx, "res", "leader", 300*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	ghost := waitDoc{Waiter: "ghost", Resource: "res", WaitID: "ghost-wait", Since: time.Now().Add(-time.Minute),
		Until: time.Now().Add(time.Hour)} // recorded, but nobody listens
	if _, err := own.waitRef("ghost").Set(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // the lease ends

	var held *txn.HeldError
	if _, err := own.Acquire(ctx, "res", "newcomer", time.Minute, 0); !errors.As(err, &held) || !held.Handoff || held.Holder != "ghost" {
		t.Fatalf("a newcomer's Acquire after the lease ended: %v, want the lock being handed to ghost", err)
	}
	var lost *txn.LostError
	if err := own.Release(ctx, g); !errors.As(err, &lost) || !lost.Expired {
		t.Fatalf("the expired holder's Release: %v, want its lease ended", err)
	}
	if st, err := own.Status(ctx, "res"); err != nil || st.Held || st.Next != "ghost" {
		t.Fatalf("Status: %+v, %v; want free and handed to ghost", st, err)
	}
	time.Sleep(own.handoff + 100*time.Millisecond) // the handoff lapses
	ng, err := own.Acquire(ctx, "res", "newcomer", time.Minute, 0)
	if err != nil {
		t.Fatalf("a newcomer's Acquire after ghost's handoff lapsed: %v", err)
	}
	if d := readLock(t, ctx, own, "res"); d.Holder != "newcomer" || uint64(d.Token) != ng.Token || !slices.Contains(d.Passed, "ghost-wait") {
		t.Fatalf("the lock after the lapsed handoff: %+v, want newcomer's, with ghost passed over", d)
	}
}

// TestLiveWaiterUnpassed: a waiter whose handoff lapsed though it is alive
// (it was slow) is passed over by later handoffs only until its next
// attempt, which takes its wait out of the passed waits.
func TestLiveWaiterUnpassed(t *testing.T) {
	ctx, open := setup(t)
	own := open()
	own.handoff = 300 * time.Millisecond
	g, err := own.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	// bob's and dave's waits are recorded and listening, but run only
	// when the test says.
	bob, err := own.startWait(ctx, "res", "bob", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.stop()
	if err := own.Release(ctx, g); err != nil { // handed to bob, who is slow
		t.Fatal(err)
	}
	time.Sleep(own.handoff + 100*time.Millisecond)
	if g, err = own.Acquire(ctx, "res", "carol", time.Minute, 0); err != nil { // passes bob over
		t.Fatal(err)
	}
	dave, err := own.startWait(ctx, "res", "dave", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	next := func() lockDoc { return readLock(t, ctx, own, "res") }
	if d := next(); d.Next != "dave" || !slices.Contains(d.Passed, bob.id) {
		t.Fatalf("after carol's release: %+v, want it handed to dave, bob passed over", d)
	}
	// bob tries: the lock is dave's for now, but bob is no longer passed.
	if _, held, err := own.try(ctx, "res", "bob", bob.id, time.Minute); err != nil || held == nil || held.Holder != "dave" {
		t.Fatalf("bob's attempt: %v, %v; want the lock being handed to dave", held, err)
	}
	if d := next(); slices.Contains(d.Passed, bob.id) {
		t.Fatalf("after bob's attempt: %+v, want bob no longer passed over", d)
	}
	dave.stop() // dave gives up: the lock passes on, to bob
	if d := next(); d.Next != "bob" {
		t.Fatalf("after dave's wait ended: %+v, want it handed to bob", d)
	}
}

// readLock reads resource's lock document.
func readLock(t *testing.T, ctx context.Context, l *Locks, resource string) lockDoc {
	t.Helper()
	snap, err := l.lockRef(resource).Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := decodeLock(snap)
	if err != nil {
		t.Fatal(err)
	}
	return s.doc
}

func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestWaitRecordOrphaned: a wait whose end could not delete its record (the
// store unreachable for a moment) is deleted in the background, and its
// holder may wait again at once. Before, the record lingered until its end
// (the whole wait asked for), holding a place in the queue, and the holder's
// next wait failed with "already waiting".
func TestWaitRecordOrphaned(t *testing.T) {
	ctx, open := setup(t)
	own, ws := open(), open()
	var failNext atomic.Bool // the next end attempt fails
	ws.endHook = func() error {
		if failNext.Swap(false) {
			return errors.New("the store cannot be reached")
		}
		return nil
	}
	orphans := func() int {
		ws.orphanMu.Lock()
		defer ws.orphanMu.Unlock()
		return len(ws.orphans)
	}
	// cutShort waits for res as holder until a short deadline, and fails
	// the wait's end.
	cutShort := func(res, holder string) {
		t.Helper()
		failNext.Store(true)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := ws.Acquire(short, res, holder, time.Minute, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait cut short: %v", err)
		}
		if failNext.Load() || orphans() != 1 {
			t.Fatalf("the wait's end did not fail: %d orphans", orphans())
		}
	}

	g, err := own.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	cutShort("res", "w")
	// The holder waits again at once: its orphaned record is replaced.
	got := make(chan error, 1)
	go func() {
		g2, err := ws.Acquire(ctx, "res", "w", time.Minute, time.Minute)
		if err == nil && g2.Holder != "w" {
			err = fmt.Errorf("granted to %s", g2.Holder)
		}
		got <- err
	}()
	eventually(t, ctx, "the second wait recorded", func() bool {
		st, err := own.Status(ctx, "res")
		return err == nil && len(st.Waiters) == 1
	})
	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the holder's second wait: %v", err)
	}
	eventually(t, ctx, "the replaced orphan forgotten", func() bool { return orphans() == 0 })

	// An orphan nobody replaces is deleted in the background.
	g3, err := own.Acquire(ctx, "res2", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	cutShort("res2", "w2")
	eventually(t, ctx, "the orphaned record deleted", func() bool {
		st, err := own.Status(ctx, "res2")
		return err == nil && len(st.Waiters) == 0 && orphans() == 0
	})
	if err := own.Release(ctx, g3); err != nil {
		t.Fatal(err)
	}
}
