package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/txn"
)

// Locks across real sidecars sharing one Firestore root (the emulator).

// lockSidecars starts n sidecars on one fresh root.
func lockSidecars(t *testing.T, n int) (*shared, []*sidecar) {
	t.Helper()
	fs := newShared(t)
	scs := make([]*sidecar, n)
	for i := range scs {
		scs[i] = startSidecar(t, fs.args(fmt.Sprintf("node-%c", 'a'+i), "locks")...)
	}
	return fs, scs
}

// TestLockMutualExclusion: clients of three sidecars take turns on one
// lock; under it each reads a counter from the shared store and writes it
// plus one, synced. No increment is lost. (The lease only matters if a
// holder fails; it is long enough that the emulator's slow contended
// transactions, up to about 2 s each, never delay a renewal past it.)
func TestLockMutualExclusion(t *testing.T) {
	fs, scs := lockSidecars(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const perSidecar, rounds = 2, 4
	var inside atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, len(scs)*perSidecar)
	for _, sc := range scs {
		for range perSidecar {
			c := sc.Client()
			wg.Go(func() {
				for range rounds {
					err := c.WithLock(ctx, "counter", func(lctx context.Context, _ client.Fence) error {
						if n := inside.Add(1); n != 1 {
							return fmt.Errorf("%d holders at once", n)
						}
						defer inside.Add(-1)
						n, version := 0, uint64(0)
						rec, err := c.Get(lctx, "locks", "counter", client.Strong())
						switch {
						case err == nil:
							if err := rec.Decode(&n); err != nil {
								return err
							}
							version = rec.Version
						case !errors.Is(err, client.ErrNotFound):
							return fmt.Errorf("strong read: %w", err)
						}
						_, err = c.Put(lctx, "locks", "counter", n+1, client.IfVersion(version), client.Synced(20*time.Second))
						return err
					}, client.Lease(10*time.Second), client.Wait(time.Minute))
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	want := len(scs) * perSidecar * rounds
	r, err := fs.get("locks", "counter")
	if err != nil {
		t.Fatal(err)
	}
	var got int
	if err := wire.Unmarshal(r.Value, &got); err != nil || got != want || r.Version != uint64(want) {
		t.Fatalf("counter in the shared store = %d at version %d (%v), want %d", got, r.Version, err, want)
	}
}

// TestLockHolderKilled: the sidecar of a bound lock's holder is killed
// (SIGKILL): the lock ends with its lease, and a waiter on another sidecar
// gets it with a larger token.
func TestLockHolderKilled(t *testing.T) {
	_, scs := lockSidecars(t, 2)
	a, b := scs[0], scs[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, cb := a.Client(), b.Client()

	held := make(chan client.Fence, 1)
	holderDone := make(chan error, 1)
	go func() {
		holderDone <- ca.WithLock(ctx, "job", func(lctx context.Context, f client.Fence) error {
			held <- f
			<-lctx.Done() // until the sidecar goes
			return nil
		}, client.Lease(2*time.Second))
	}()
	var first client.Fence
	select {
	case first = <-held:
	case err := <-holderDone:
		t.Fatal(err)
	}
	st, err := cb.LockStatus(ctx, "job")
	if err != nil || !st.Held || st.Token != first.Token || !strings.HasPrefix(st.Holder, "node-a.") {
		t.Fatalf("status from the other sidecar: %+v, %v", st, err)
	}
	a.Kill()
	if err := <-holderDone; !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("the holder's WithLock returned %v, want the broken connection", err)
	}
	killed := time.Now()
	l, err := cb.Acquire(ctx, "job", client.Wait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if l.Token <= first.Token || !strings.HasPrefix(l.Holder, "node-b.") {
		t.Fatalf("grant after the kill %+v, first token %d", l, first.Token)
	}
	t.Logf("lock taken over %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := cb.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
}

// TestLockWaiterKilled: waiters are served in order, across sidecars, and a
// waiter whose sidecar is killed (SIGKILL: its wait record stays in the
// shared store) costs the lock one handoff window, after which the next
// waiter gets it, and later releases pass the dead waiter over.
func TestLockWaiterKilled(t *testing.T) {
	_, scs := lockSidecars(t, 3)
	a, b, c := scs[0], scs[1], scs[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca, cb, cc := a.Client(), b.Client(), c.Client()
	waiting := func(n int) {
		t.Helper()
		for {
			st, err := ca.LockStatus(ctx, "job")
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Waiters) == n {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	acquire := func(cl *client.Client) <-chan *client.Lock {
		ch := make(chan *client.Lock, 1)
		go func() {
			l, err := cl.Acquire(ctx, "job", client.Lease(time.Minute), client.Wait(time.Minute))
			if err != nil {
				t.Log(err)
			}
			ch <- l
		}()
		return ch
	}

	first, err := ca.Acquire(ctx, "job", client.Lease(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	bGot := acquire(cb) // first in line
	waiting(1)
	cGot := acquire(cc)
	waiting(2)
	b.Kill()
	if l := <-bGot; l != nil {
		t.Fatalf("the killed sidecar's waiter got %+v", l)
	}
	if err := ca.Release(ctx, first); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	st, err := ca.LockStatus(ctx, "job")
	if err != nil || st.Held || !strings.HasPrefix(st.Next, "node-b.") {
		t.Fatalf("status right after the release: %+v, %v; want the lock handed to node-b's (dead) waiter, first in line", st, err)
	}
	l := <-cGot
	if l == nil || !strings.HasPrefix(l.Holder, "node-c.") || l.Token <= first.Token {
		t.Fatalf("the second waiter got %+v", l)
	}
	t.Logf("the next waiter got the lock %v after the release (handoff window %v)",
		time.Since(released).Round(time.Millisecond), txn.HandoffWindow)

	// node-b's wait record still says it waits, and is still first in
	// line; the next release passes it over.
	aGot := acquire(ca)
	waiting(2) // node-b's dead waiter, and node-a's
	if err := cc.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	st, err = cc.LockStatus(ctx, "job")
	if err != nil || strings.HasPrefix(st.Next, "node-b.") ||
		!strings.HasPrefix(st.Next, "node-a.") && !strings.HasPrefix(st.Holder, "node-a.") {
		t.Fatalf("status right after the next release: %+v, %v; want it handed to node-a's waiter", st, err)
	}
	if l := <-aGot; l == nil {
		t.Fatal("node-a's waiter did not get the lock")
	}
}

// TestLockBoundReleasedWithConnection: closing the connection of a bound
// lock releases it at once, not when its lease ends.
func TestLockBoundReleasedWithConnection(t *testing.T) {
	_, scs := lockSidecars(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, cb := client.New(scs[0].Socket), scs[1].Client()
	err := ca.WithLock(ctx, "conn", func(lctx context.Context, _ client.Fence) error {
		ca.Close()
		<-lctx.Done()
		return nil
	}, client.Lease(time.Minute))
	if !errors.Is(err, client.ErrClosed) {
		t.Fatalf("WithLock returned %v", err)
	}
	l, err := cb.Acquire(ctx, "conn", client.Wait(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if l.Token != 2 {
		t.Fatalf("grant %+v, want token 2", l)
	}
}

// TestLockDeadlockAcrossSidecars: parties on different sidecars each hold
// a lock and wait for the next one's; one of them is told DeadlockDetected,
// and once it gives up its lock the others finish.
func TestLockDeadlockAcrossSidecars(t *testing.T) {
	_, scs := lockSidecars(t, 3)
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprint(n, " parties"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var holding sync.WaitGroup
			holding.Add(n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				c := scs[i%len(scs)].Client()
				mine, next := fmt.Sprintf("d%d-%d", n, i), fmt.Sprintf("d%d-%d", n, (i+1)%n)
				wg.Go(func() {
					errs[i] = c.WithLock(ctx, mine, func(lctx context.Context, _ client.Fence) error {
						holding.Done()
						holding.Wait()
						return c.WithLock(lctx, next, func(context.Context, client.Fence) error { return nil },
							client.Wait(time.Minute))
					}, client.Lease(10*time.Second))
				})
			}
			wg.Wait()
			victims := 0
			for i, err := range errs {
				var e *client.Error
				switch {
				case err == nil:
				case errors.Is(err, client.ErrDeadlockDetected) && errors.As(err, &e) && e.Deadlock != nil &&
					len(e.Deadlock.Cycle) == n && e.Deadlock.Victim == e.Deadlock.Cycle[0].Waiter:
					victims++
				default:
					t.Errorf("party %d: %v", i, err)
				}
			}
			if victims != 1 {
				t.Fatalf("%d parties were told of the deadlock, want 1: %v", victims, errs)
			}
		})
	}
}

// TestLockCLI: the CLI takes a lock on one sidecar (not bound: it outlives
// the command), another sidecar sees and releases it; a sidecar without a
// shared store refuses lock commands, naming the flag.
func TestLockCLI(t *testing.T) {
	_, scs := lockSidecars(t, 2)
	out, _, err := scs[0].CLI("lock", "acquire", "cli", "--lease", "1m")
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	var g struct {
		Holder string `json:"holder"`
		Token  uint64 `json:"token"`
	}
	if err := json.Unmarshal([]byte(out), &g); err != nil || g.Token != 1 {
		t.Fatalf("acquire printed %q (%v)", out, err)
	}
	out, _, err = scs[1].CLI("lock", "status", "cli")
	if err != nil || !strings.Contains(out, `"held":true`) || !strings.Contains(out, g.Holder) {
		t.Fatalf("status on the other sidecar: %q, %v", out, err)
	}
	if _, stderr, err := scs[1].CLI("lock", "acquire", "cli"); exitCode(err) != 1 || !strings.Contains(stderr, "LockHeld") {
		t.Fatalf("acquire of a held lock: exit %d, %q", exitCode(err), stderr)
	}
	if out, _, err := scs[1].CLI("lock", "release", "cli", "1"); err != nil || !strings.Contains(out, `"released":true`) {
		t.Fatalf("release on the other sidecar: %q, %v", out, err)
	}
	if out, _, err := scs[0].CLI("lock", "status", "cli"); err != nil || !strings.Contains(out, `"held":false`) {
		t.Fatalf("status after release: %q, %v", out, err)
	}

	local := startSidecar(t)
	_, stderr, err := local.CLI("lock", "status", "cli")
	if exitCode(err) != 1 || !strings.Contains(stderr, "--firestore-project") {
		t.Fatalf("local-only sidecar: exit %d, %q", exitCode(err), stderr)
	}
}

// TestLockMetrics: a sidecar's lock acquisitions are timed by outcome on
// its /metrics, and the locks acquired through it are followed: how long
// they were held, and how many are held.
func TestLockMetrics(t *testing.T) {
	fs := newShared(t)
	s := startSidecar(t, append(fs.args("node-a", "locks"), "--admin-addr", "127.0.0.1:0")...)
	for _, res := range []string{"m", "n"} {
		if _, _, err := s.CLI("lock", "acquire", res, "--lease", "1m"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.CLI("lock", "acquire", "m", "--wait", "100ms"); exitCode(err) != 1 {
		t.Fatalf("acquire of a held lock with a wait: %v", err)
	}
	if _, _, err := s.CLI("lock", "release", "m", "1"); err != nil {
		t.Fatal(err)
	}
	_, body := httpGet(t, "http://"+adminAddr(t, s)+"/metrics")
	for _, want := range []struct{ prefix, attr, value string }{
		{"tai_lock_acquire_duration_seconds_count{", `outcome="ok"`, "2"},
		{"tai_lock_acquire_duration_seconds_count{", `outcome="timeout"`, "1"},
		{"tai_lock_hold_duration_seconds_count{", `end="released"`, "1"},
		{"tai_lock_held ", "", "1"}, // n
	} {
		found := false
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, want.prefix) && strings.Contains(line, want.attr) &&
				strings.HasSuffix(line, " "+want.value) {
				found = true
			}
		}
		if !found {
			t.Errorf("/metrics has no %s...} with %s and value %s", want.prefix, want.attr, want.value)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
