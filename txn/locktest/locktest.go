// Package locktest is the conformance suite for txn.Locks implementations,
// as testing/fstest is for file systems: an implementation's tests call Run
// with a constructor, and the suite checks grants and tokens, holding
// errors, leases and their expiry, waiting (prompt wake-up, timeout, the
// order of waiters), mutual exclusion with fenced writes, cleanup that keeps
// tokens growing, and deadlock detection.
package locktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/txn"
)

// ErrStale is what a Counter returns for a write with an old token.
var ErrStale = errors.New("stale fencing token")

// Counter is a store that counts fenced writes: Add increments the count
// unless f.Token is smaller than a token it has seen before (then ErrStale),
// as a store that checks fences does.
type Counter interface {
	Add(ctx context.Context, f txn.Fence) error
	Value(ctx context.Context) (int64, error)
}

// Options tune the suite.
type Options struct {
	// Goroutines and Rounds size the mutual exclusion test (default 8 and
	// 5).
	Goroutines, Rounds int
	// NewCounter returns an empty Counter for the mutual exclusion test
	// (default: one in memory).
	NewCounter func(t *testing.T) Counter
	// Timeout bounds each test (default 60s).
	Timeout time.Duration
}

// Run runs the suite; newLocks must return empty Locks each time (each
// subtest calls it, several times for several sidecars sharing one store:
// share marks such calls, which must return Locks on the same store as the
// first call of that subtest).
func Run(t *testing.T, o Options, newLocks func(t *testing.T, share txn.Locks) txn.Locks) {
	if o.Goroutines <= 0 {
		o.Goroutines = 8
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.NewCounter == nil {
		o.NewCounter = func(*testing.T) Counter { return &memCounter{} }
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks)
	}{
		{"AcquireRelease", testAcquireRelease},
		{"Invalid", testInvalid},
		{"Extend", testExtend},
		{"LeaseExpiry", testLeaseExpiry},
		{"WaitWakesOnRelease", testWaitWakes},
		{"WaitWakesOnExpiry", testWaitExpiry},
		{"WaitTimeout", testWaitTimeout},
		{"WaitersInOrder", testWaitersInOrder},
		{"WaitersInOrderAfterExpiry", testWaitersInOrderAfterExpiry},
		{"MutualExclusion", func(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
			testMutualExclusion(t, ctx, l, more, o)
		}},
		{"CleanupKeepsTokens", testCleanup},
		{"SelfWait", testSelfWait},
		{"Deadlock2", func(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
			testDeadlock(t, ctx, l, more, 2)
		}},
		{"Deadlock3", func(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
			testDeadlock(t, ctx, l, more, 3)
		}},
		{"ChainIsNoDeadlock", testChain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLocks(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			tc.fn(t, ctx, l, func() txn.Locks { return newLocks(t, l) })
		})
	}
}

type memCounter struct {
	mu    sync.Mutex
	n     int64
	fence uint64
}

func (c *memCounter) Add(_ context.Context, f txn.Fence) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.Token < c.fence {
		return ErrStale
	}
	c.n, c.fence = c.n+1, f.Token
	return nil
}

func (c *memCounter) Value(context.Context) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, nil
}

func acquire(t *testing.T, ctx context.Context, l txn.Locks, r, h string, lease, wait time.Duration) txn.Grant {
	t.Helper()
	g, err := l.Acquire(ctx, r, h, lease, wait)
	if err != nil {
		t.Fatalf("Acquire %s by %s: %v", r, h, err)
	}
	if g.Resource != r || g.Holder != h || g.Token == 0 {
		t.Fatalf("Acquire %s by %s: grant %+v", r, h, g)
	}
	return g
}

func release(t *testing.T, ctx context.Context, l txn.Locks, g txn.Grant) {
	t.Helper()
	if err := l.Release(ctx, g); err != nil {
		t.Fatalf("Release %s by %s: %v", g.Resource, g.Holder, err)
	}
}

func status(t *testing.T, ctx context.Context, l txn.Locks, r string) txn.Status {
	t.Helper()
	st, err := l.Status(ctx, r)
	if err != nil {
		t.Fatalf("Status %s: %v", r, err)
	}
	return st
}

// eventually polls cond (a local check or a cheap read) until it holds.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitingFor waits until holder is recorded as waiting for r.
func waitingFor(t *testing.T, ctx context.Context, l txn.Locks, r, holder string) {
	t.Helper()
	eventually(t, ctx, holder+" waiting for "+r, func() bool {
		return slices.Contains(status(t, ctx, l, r).Waiters, holder)
	})
}

func testAcquireRelease(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	if st := status(t, ctx, l, "res"); st.Held || st.Token != 0 {
		t.Fatalf("Status of a new lock: %+v", st)
	}
	start := time.Now()
	g := acquire(t, ctx, l, "res", "alice", 0, 0)
	if g.Lease != txn.DefaultLease {
		t.Fatalf("default lease %v", g.Lease)
	}
	if g.Deadline.Before(start.Add(txn.DefaultLease)) || g.Deadline.After(time.Now().Add(txn.DefaultLease)) {
		t.Fatalf("Deadline %v not the request's start plus the lease", g.Deadline)
	}
	st := status(t, ctx, l, "res")
	if !st.Held || st.Holder != "alice" || st.Token != g.Token || st.Remaining <= 0 || st.Remaining > txn.DefaultLease {
		t.Fatalf("Status of a held lock: %+v (grant %+v)", st, g)
	}
	for _, h := range []string{"bob", "alice"} { // not re-entrant either
		_, err := l.Acquire(ctx, "res", h, 0, 0)
		var held *txn.HeldError
		if !errors.Is(err, txn.ErrLockHeld) || !errors.As(err, &held) || errors.Is(err, txn.ErrTimeout) {
			t.Fatalf("Acquire of a held lock by %s: %v, want a HeldError", h, err)
		}
		if held.Holder != "alice" || held.Token != g.Token || held.Remaining <= 0 || held.Expires.IsZero() {
			t.Fatalf("HeldError %+v", held)
		}
	}
	release(t, ctx, l, g)
	if st := status(t, ctx, l, "res"); st.Held || st.Token != g.Token {
		t.Fatalf("Status of a released lock: %+v", st)
	}
	if err := l.Release(ctx, g); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("second Release: %v, want ErrLockLost", err)
	}
	g2 := acquire(t, ctx, l, "res", "bob", time.Minute, 0)
	if g2.Token <= g.Token {
		t.Fatalf("token %d after %d", g2.Token, g.Token)
	}
	if err := l.Release(ctx, g); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("Release of an old grant: %v, want ErrLockLost", err)
	}
	var lost *txn.LostError
	if _, err := l.Extend(ctx, g, 0); !errors.As(err, &lost) || lost.Holder != "bob" || lost.Token != g2.Token {
		t.Fatalf("Extend of an old grant: %v, want a LostError naming bob", err)
	}
	// Another resource is independent.
	release(t, ctx, l, acquire(t, ctx, l, "other", "alice", 0, 0))
	release(t, ctx, l, g2)
}

func testInvalid(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	tests := []struct {
		name             string
		resource, holder string
		lease, wait      time.Duration
	}{
		{"empty resource", "", "h", 0, 0},
		{"slash", "a/b", "h", 0, 0},
		{"dots", "..", "h", 0, 0},
		{"reserved", "__x__", "h", 0, 0},
		{"empty holder", "r", "", 0, 0},
		{"negative lease", "r", "h", -time.Second, 0},
		{"huge lease", "r", "h", 48 * time.Hour, 0},
		{"negative wait", "r", "h", 0, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := l.Acquire(ctx, tc.resource, tc.holder, tc.lease, tc.wait); !errors.Is(err, txn.ErrInvalid) {
				t.Fatalf("Acquire: %v, want ErrInvalid", err)
			}
		})
	}
	if err := l.Release(ctx, txn.Grant{Resource: "r", Holder: "h"}); !errors.Is(err, txn.ErrInvalid) {
		t.Fatalf("Release of a grant without a token: %v", err)
	}
	if _, err := l.Status(ctx, "a/b"); !errors.Is(err, txn.ErrInvalid) {
		t.Fatalf("Status of a bad name: %v", err)
	}
	if _, err := l.Cleanup(ctx, -time.Second); !errors.Is(err, txn.ErrInvalid) {
		t.Fatalf("Cleanup with a negative grace: %v", err)
	}
}

func testExtend(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	g := acquire(t, ctx, l, "res", "alice", time.Second, 0)
	g2, err := l.Extend(ctx, g, time.Minute)
	if err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if g2.Token != g.Token || g2.Lease != time.Minute || !g2.Deadline.After(g.Deadline) {
		t.Fatalf("Extend: %+v from %+v", g2, g)
	}
	if st := status(t, ctx, l, "res"); st.Remaining <= time.Second {
		t.Fatalf("Status after Extend: %+v", st)
	}
	release(t, ctx, l, g2)
}

func testLeaseExpiry(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	const lease = 500 * time.Millisecond
	old := acquire(t, ctx, l, "res", "alice", lease, 0)
	// alice stops extending; bob waits for the lease to end.
	start := time.Now()
	g := acquire(t, ctx, l, "res", "bob", time.Minute, 10*time.Second)
	waited := time.Since(start)
	t.Logf("the next holder got the lock %v after asking; lease %v", waited, lease)
	if g.Token <= old.Token {
		t.Fatalf("token %d after an expired %d", g.Token, old.Token)
	}
	if waited > lease+5*time.Second {
		t.Fatalf("waited %v for a %v lease", waited, lease)
	}
	if err := l.Release(ctx, old); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("Release by the expired holder: %v, want ErrLockLost", err)
	}
	if _, err := l.Extend(ctx, old, 0); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("Extend by the expired holder: %v, want ErrLockLost", err)
	}
	release(t, ctx, l, g)

	// A lease that ended with nobody taking the lock is lost too.
	g = acquire(t, ctx, l, "res2", "carol", 200*time.Millisecond, 0)
	eventually(t, ctx, "the lease to end", func() bool { return !status(t, ctx, l, "res2").Held })
	var lost *txn.LostError
	if _, err := l.Extend(ctx, g, 0); !errors.As(err, &lost) || !lost.Expired {
		t.Fatalf("Extend after the lease ended: %v, want an expired LostError", err)
	}
	if err := l.Release(ctx, g); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("Release after the lease ended: %v, want ErrLockLost", err)
	}
}

func testWaitWakes(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
	other := more() // the waiter is on another sidecar
	g := acquire(t, ctx, l, "res", "alice", time.Minute, 0)
	type result struct {
		g   txn.Grant
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		g, err := other.Acquire(ctx, "res", "bob", time.Minute, 30*time.Second)
		done <- result{g, err, time.Now()}
	}()
	waitingFor(t, ctx, l, "res", "bob")
	released := time.Now()
	release(t, ctx, l, g)
	r := <-done
	if r.err != nil {
		t.Fatalf("waiting Acquire: %v", r.err)
	}
	latency := r.at.Sub(released)
	t.Logf("wake-up latency after release: %v", latency)
	if latency > 3*time.Second {
		t.Fatalf("the waiter took %v to get a released lock", latency)
	}
	if r.g.Token <= g.Token {
		t.Fatalf("token %d after %d", r.g.Token, g.Token)
	}
	if st := status(t, ctx, l, "res"); len(st.Waiters) != 0 || st.Holder != "bob" {
		t.Fatalf("Status after the wait: %+v", st)
	}
	release(t, ctx, other, r.g)
}

func testWaitExpiry(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
	other := more()
	const lease = 700 * time.Millisecond
	g := acquire(t, ctx, l, "res", "alice", lease, 0)
	got := acquire(t, ctx, other, "res", "bob", time.Minute, 30*time.Second)
	late := time.Since(g.Deadline)
	t.Logf("the waiter got the lock %v after the old lease's local deadline", late)
	if late < -100*time.Millisecond || late > 3*time.Second {
		t.Fatalf("the waiter got an expiring lock %v after its deadline", late)
	}
	release(t, ctx, other, got)
}

func testWaitTimeout(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	g := acquire(t, ctx, l, "res", "alice", time.Minute, 0)
	const wait = 400 * time.Millisecond
	start := time.Now()
	_, err := l.Acquire(ctx, "res", "bob", 0, wait)
	took := time.Since(start)
	var held *txn.HeldError
	if !errors.Is(err, txn.ErrTimeout) || !errors.As(err, &held) || held.Holder != "alice" || !held.Waited {
		t.Fatalf("Acquire that waits too short: %v, want a HeldError matching ErrTimeout", err)
	}
	if took < wait || took > wait+3*time.Second {
		t.Fatalf("a %v wait took %v", wait, took)
	}
	if st := status(t, ctx, l, "res"); len(st.Waiters) != 0 {
		t.Fatalf("waiters after the wait ended: %v", st.Waiters)
	}
	// The context ends a wait as well.
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(cctx, "res", "carol", 0, time.Minute); !errors.Is(err, txn.ErrUnavailable) {
		t.Fatalf("Acquire whose context ends: %v, want ErrUnavailable", err)
	}
	release(t, ctx, l, g)
}

// testWaitersInOrder: waiters get the lock in the order they began to
// wait, and a newcomer that does not wait cannot take it from them, neither
// while one holds it nor between two waiters' turns.
func testWaitersInOrder(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
	g := acquire(t, ctx, l, "res", "alice", time.Minute, 0)
	const n = 4
	sidecars := []txn.Locks{more(), more()}
	order := make(chan string, n)
	errs := make(chan error, 2*n)
	// checked[i] is closed once w-i has tried to take the lock as a
	// newcomer after its release; w-(i+1) holds the lock until then.
	checked := make([]chan struct{}, n)
	for i := range checked {
		checked[i] = make(chan struct{})
	}
	eve := func(when string) {
		if _, err := l.Acquire(ctx, "res", "eve", time.Second, 0); !errors.Is(err, txn.ErrLockHeld) {
			errs <- fmt.Errorf("a newcomer's Acquire %s: %v, want ErrLockHeld", when, err)
		}
	}
	var wg sync.WaitGroup
	for i := range n {
		holder := fmt.Sprintf("w-%d", i)
		wg.Go(func() {
			defer close(checked[i])
			sc := sidecars[i%len(sidecars)]
			g, err := sc.Acquire(ctx, "res", holder, time.Minute, 30*time.Second)
			if err != nil {
				errs <- fmt.Errorf("%s: Acquire: %w", holder, err)
				return
			}
			order <- holder
			eve("while " + holder + " holds the lock")
			if i > 0 {
				<-checked[i-1]
			}
			if err := sc.Release(ctx, g); err != nil {
				errs <- fmt.Errorf("%s: Release: %w", holder, err)
				return
			}
			if i < n-1 {
				eve("after " + holder + " released it to the next waiter")
			}
		})
		waitingFor(t, ctx, l, "res", holder) // the next one begins to wait after this one
	}
	release(t, ctx, l, g)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	close(order)
	var got []string
	for h := range order {
		got = append(got, h)
	}
	if want := []string{"w-0", "w-1", "w-2", "w-3"}; !slices.Equal(got, want) {
		t.Fatalf("the waiters got the lock in the order %v, want %v", got, want)
	}
}

// testWaitersInOrderAfterExpiry: when leases run out with no release, the
// lock still goes to the waiters in the order they began to wait, and a
// newcomer that keeps trying cannot take it from them.
func testWaitersInOrderAfterExpiry(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
	const n, lease = 3, 700 * time.Millisecond
	first := acquire(t, ctx, l, "res", "alice", 3*time.Second, 0) // time for all to begin waiting
	sidecars := []txn.Locks{more(), more()}
	type grant struct {
		holder string
		token  uint64
	}
	grants := make(chan grant, n)
	errs := make(chan error, n+1)
	var wg sync.WaitGroup
	for i := range n {
		holder := fmt.Sprintf("w-%d", i)
		wg.Go(func() {
			g, err := sidecars[i%len(sidecars)].Acquire(ctx, "res", holder, lease, 30*time.Second)
			if err != nil {
				errs <- fmt.Errorf("%s: Acquire: %w", holder, err)
				return
			}
			grants <- grant{holder, g.Token} // and never released: the lease runs out
		})
		waitingFor(t, ctx, l, "res", holder)
	}
	if st := status(t, ctx, l, "res"); !st.Held || st.Holder != "alice" {
		t.Fatalf("alice's lease ended before the waiters were all waiting: %+v", st)
	}
	stop := make(chan struct{})
	var eve sync.WaitGroup
	eve.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			g, err := l.Acquire(ctx, "res", "eve", time.Minute, 0)
			if err == nil {
				errs <- fmt.Errorf("a newcomer took the lock (token %d) from the waiters", g.Token)
				return
			}
			if !errors.Is(err, txn.ErrLockHeld) {
				errs <- fmt.Errorf("a newcomer's Acquire: %v, want ErrLockHeld", err)
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	eve.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	close(grants)
	var got []string
	token := first.Token
	for g := range grants {
		got = append(got, g.holder)
		if g.token != token+1 {
			t.Errorf("%s got token %d after %d", g.holder, g.token, token)
		}
		token = g.token
	}
	if want := []string{"w-0", "w-1", "w-2"}; !slices.Equal(got, want) {
		t.Fatalf("the waiters got the lock in the order %v, want %v", got, want)
	}
}

func testMutualExclusion(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks, o Options) {
	counter := o.NewCounter(t)
	sidecars := []txn.Locks{l, more(), more()}
	var inside atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, o.Goroutines)
	for i := range o.Goroutines {
		wg.Go(func() {
			l := sidecars[i%len(sidecars)]
			holder := fmt.Sprintf("worker-%d", i)
			for range o.Rounds {
				g, err := l.Acquire(ctx, "counter", holder, 10*time.Second, 30*time.Second)
				if err != nil {
					errs <- fmt.Errorf("%s: Acquire: %w", holder, err)
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("%s: %d holders at once", holder, n)
				}
				err = counter.Add(ctx, g.Fence())
				inside.Add(-1)
				if err != nil {
					errs <- fmt.Errorf("%s: Add with token %d: %w", holder, g.Token, err)
					return
				}
				if err := l.Release(ctx, g); err != nil {
					errs <- fmt.Errorf("%s: Release: %w", holder, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n, err := counter.Value(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(o.Goroutines * o.Rounds); n != want {
		t.Fatalf("count %d, want %d", n, want)
	}
	// A paused old holder's write is rejected by the fence.
	old := acquire(t, ctx, l, "counter", "paused", 100*time.Millisecond, 0)
	g := acquire(t, ctx, l, "counter", "next", time.Minute, 10*time.Second)
	if err := counter.Add(ctx, g.Fence()); err != nil {
		t.Fatalf("Add by the current holder: %v", err)
	}
	if err := counter.Add(ctx, old.Fence()); !errors.Is(err, ErrStale) {
		t.Fatalf("Add with the expired holder's token: %v, want ErrStale", err)
	}
	release(t, ctx, l, g)
}

func testCleanup(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	g := acquire(t, ctx, l, "gone", "alice", 0, 0)
	release(t, ctx, l, g)
	expired := acquire(t, ctx, l, "expired", "alice", 100*time.Millisecond, 0)
	held := acquire(t, ctx, l, "held", "alice", time.Minute, 0)
	// Nothing has been free for an hour.
	if n, err := l.Cleanup(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Cleanup(1h): %d, %v; want 0", n, err)
	}
	eventually(t, ctx, "a lease to end", func() bool { return !status(t, ctx, l, "expired").Held })
	var n int
	eventually(t, ctx, "Cleanup to delete the free locks", func() bool {
		k, err := l.Cleanup(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		n += k
		return n >= 2
	})
	if n != 2 {
		t.Fatalf("Cleanup deleted %d locks, want 2", n)
	}
	if st := status(t, ctx, l, "gone"); st.Token != 0 {
		t.Fatalf("Status of a cleaned-up lock: %+v", st)
	}
	if st := status(t, ctx, l, "held"); !st.Held || st.Token != held.Token {
		t.Fatalf("Cleanup touched a held lock: %+v", st)
	}
	for _, old := range []txn.Grant{g, expired} {
		again := acquire(t, ctx, l, old.Resource, "bob", 0, 0)
		if again.Token <= old.Token {
			t.Fatalf("%s: token %d after cleanup, had %d", old.Resource, again.Token, old.Token)
		}
		release(t, ctx, l, again)
	}
	if err := l.Release(ctx, expired); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("Release of a cleaned-up grant: %v", err)
	}
	release(t, ctx, l, held)
}

func testSelfWait(t *testing.T, ctx context.Context, l txn.Locks, _ func() txn.Locks) {
	g := acquire(t, ctx, l, "res", "alice", time.Minute, 0)
	_, err := l.Acquire(ctx, "res", "alice", 0, 10*time.Second)
	var dl *txn.DeadlockError
	if !errors.As(err, &dl) || dl.Victim != "alice" || len(dl.Cycle) != 1 {
		t.Fatalf("waiting for a lock one holds: %v, want a one-edge DeadlockError", err)
	}
	release(t, ctx, l, g)
}

// testDeadlock makes n parties each hold one lock and wait for the next
// party's: exactly one (the greatest id) fails with ErrDeadlock, gives its
// lock up, and the others get theirs in turn.
func testDeadlock(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks, n int) {
	holders := make([]string, n)
	sidecars := make([]txn.Locks, n)
	grants := make([]txn.Grant, n)
	for i := range n {
		holders[i] = fmt.Sprintf("party-%d", i)
		sidecars[i] = l
		if i > 0 {
			sidecars[i] = more()
		}
		grants[i] = acquire(t, ctx, sidecars[i], fmt.Sprintf("res-%d", i), holders[i], time.Minute, 0)
	}
	type result struct {
		i   int
		err error
	}
	results := make(chan result, n)
	start := time.Now()
	// The victim waits first, so the cycle is closed by another party,
	// which must wake the victim.
	order := []int{n - 1}
	for i := range n - 1 {
		order = append(order, i)
	}
	for k, i := range order {
		want := fmt.Sprintf("res-%d", (i+1)%n)
		go func() {
			l := sidecars[i]
			g, err := l.Acquire(ctx, want, holders[i], time.Minute, 45*time.Second)
			if err == nil {
				err = l.Release(ctx, g)
			}
			if rerr := l.Release(ctx, grants[i]); rerr != nil && err == nil {
				err = rerr
			}
			results <- result{i, err}
		}()
		if k < n-1 { // the last wait closes the cycle and may end at once
			waitingFor(t, ctx, l, want, holders[i])
		}
	}
	victims := 0
	for range n {
		r := <-results
		var dl *txn.DeadlockError
		switch {
		case errors.As(r.err, &dl):
			victims++
			t.Logf("%s: %v (after %v)", holders[r.i], r.err, time.Since(start))
			if r.i != n-1 || dl.Victim != holders[n-1] || len(dl.Cycle) != n {
				t.Errorf("%s: deadlock %+v, want %s the victim of a %d-cycle", holders[r.i], dl.Deadlock, holders[n-1], n)
			}
		case r.err != nil:
			t.Errorf("%s: %v", holders[r.i], r.err)
		default:
			t.Logf("%s got its lock after %v", holders[r.i], time.Since(start))
		}
	}
	if victims != 1 {
		t.Fatalf("%d parties failed with ErrDeadlock, want 1", victims)
	}
	ds, err := l.Deadlocks(ctx, 10)
	if err != nil || len(ds) != 1 || ds[0].Victim != holders[n-1] || len(ds[0].Cycle) != n {
		t.Fatalf("Deadlocks: %+v, %v", ds, err)
	}
}

// testChain: a waits for b's lock, b for c's: no cycle, and everyone gets
// their lock once c releases.
func testChain(t *testing.T, ctx context.Context, l txn.Locks, more func() txn.Locks) {
	other := more()
	c := acquire(t, ctx, l, "r1", "c", time.Minute, 0)
	b := acquire(t, ctx, other, "r2", "b", time.Minute, 0)
	errs := make(chan error, 2)
	go func() { // b waits for r1
		g, err := other.Acquire(ctx, "r1", "b", time.Minute, 30*time.Second)
		if err == nil {
			err = errors.Join(other.Release(ctx, g), other.Release(ctx, b))
		}
		errs <- err
	}()
	waitingFor(t, ctx, l, "r1", "b")
	go func() { // a waits for r2
		g, err := l.Acquire(ctx, "r2", "a", time.Minute, 30*time.Second)
		if err == nil {
			err = l.Release(ctx, g)
		}
		errs <- err
	}()
	waitingFor(t, ctx, l, "r2", "a")
	release(t, ctx, l, c)
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("chain: %v", err)
		}
	}
	if ds, err := l.Deadlocks(ctx, 10); err != nil || len(ds) != 0 {
		t.Fatalf("Deadlocks after a chain: %+v, %v", ds, err)
	}
}
