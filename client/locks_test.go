package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/txn"
)

// startLockSidecar serves an in-memory store with in-memory locks (nil:
// none) and returns its socket path.
func startLockSidecar(t *testing.T, locks txn.Locks) string {
	t.Helper()
	return serveMemory(t, sockapi.Options{Locks: locks})
}

// serveMemory serves an in-memory store with opts and returns its socket
// path; the server and the store close when the test ends.
func serveMemory(t *testing.T, opts sockapi.Options) string {
	t.Helper()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-locks"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(store, opts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		store.Close(ctx)
	})
	return path
}

func newLockClient(t *testing.T, path string) *client.Client {
	t.Helper()
	c := client.New(path)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestLockCalls(t *testing.T) {
	c := newLockClient(t, startLockSidecar(t, txn.NewMemory(nil)))
	ctx := testCtx(t)
	before := time.Now()
	l, err := c.Acquire(ctx, "r", client.Lease(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if l.Resource != "r" || l.Token != 1 || l.Lease != 5*time.Second || l.Bound || l.Holder == "" ||
		l.Deadline.Before(before.Add(5*time.Second)) || l.Deadline.After(time.Now().Add(5*time.Second)) {
		t.Fatalf("grant %+v", l)
	}
	if f := l.Fence(); f != (client.Fence{Resource: "r", Token: 1}) {
		t.Fatalf("fence %+v", f)
	}
	st, err := c.LockStatus(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder != l.Holder || st.Token != 1 || st.Remaining <= 0 || st.Remaining > 5*time.Second || st.Expires.IsZero() {
		t.Fatalf("status %+v", st)
	}
	l2, err := c.Extend(ctx, l, client.Lease(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token != 1 || l2.Lease != time.Minute || !l2.Deadline.After(l.Deadline) {
		t.Fatalf("extended %+v", l2)
	}
	if err := c.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	if st, err := c.LockStatus(ctx, "r"); err != nil || st.Held || st.Token != 1 {
		t.Fatalf("status after release %+v, %v", st, err)
	}
}

func TestLockTypedErrors(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	c := newLockClient(t, path)
	ctx := testCtx(t)
	l, err := c.Acquire(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}

	_, err = c.Acquire(ctx, "r")
	var e *client.Error
	if !errors.Is(err, client.ErrLockHeld) || !errors.As(err, &e) || e.Lock == nil || e.Lock.Holder != l.Holder ||
		e.Lock.Token != 1 || e.Lock.RemainingMS == 0 || e.Waited || !e.Retryable {
		t.Fatalf("held: %v (%+v)", err, e)
	}
	_, err = c.Acquire(ctx, "r", client.Wait(20*time.Millisecond))
	if !errors.Is(err, client.ErrLockHeld) || !errors.As(err, &e) || !e.Waited {
		t.Fatalf("held after a wait: %v", err)
	}

	short, err := c.Acquire(ctx, "s", client.Lease(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lease to end", func() bool { st, _ := c.LockStatus(ctx, "s"); return st != nil && !st.Held })
	err = c.Release(ctx, short)
	if !errors.Is(err, client.ErrLockLost) || !errors.As(err, &e) || e.Retryable || e.Lock == nil || e.Lock.Resource != "s" {
		t.Fatalf("release of an expired grant: %v", err)
	}
	if _, err := c.Extend(ctx, short); !errors.Is(err, client.ErrLockLost) {
		t.Fatalf("extend of an expired grant: %v", err)
	}

	for _, tc := range []struct {
		name  string
		call  func() error
		field string
	}{
		{"bad resource", func() error { _, err := c.Acquire(ctx, "a/b"); return err }, "resource"},
		{"empty resource", func() error { _, err := c.LockStatus(ctx, ""); return err }, "resource"},
		{"negative lease", func() error { _, err := c.Acquire(ctx, "x", client.Lease(-1)); return err }, "lease_ms"},
		{"long wait", func() error { _, err := c.Acquire(ctx, "x", client.Wait(25*time.Hour)); return err }, "wait_ms"},
		{"long lease in extend", func() error { _, err := c.Extend(ctx, l, client.Lease(25*time.Hour)); return err }, "lease_ms"},
		{"release without token", func() error { return c.Release(ctx, &client.Lock{Resource: "r"}) }, "token"},
		{"short bound lease", func() error {
			return c.WithLock(ctx, "x", func(context.Context, client.Fence) error { return nil }, client.Lease(time.Millisecond))
		}, "lease_ms"},
	} {
		err := tc.call()
		if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &e) || e.Field != tc.field {
			t.Errorf("%s: %v, want InvalidArgument on %s", tc.name, err, tc.field)
		}
	}

	none := newLockClient(t, startLockSidecar(t, nil))
	_, err = none.Acquire(ctx, "r")
	if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &e) || e.Retryable {
		t.Fatalf("sidecar without locks: %v", err)
	}
}

// TestWithLockMutualExclusion: goroutines sharing one Client take turns;
// each WithLock is its own holder, so they wait for one another rather
// than deadlock with themselves.
func TestWithLockMutualExclusion(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	var inside, total atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		c := newLockClient(t, path)
		for range 8 {
			wg.Go(func() {
				for range 10 {
					err := c.WithLock(ctx, "m", func(ctx context.Context, f client.Fence) error {
						if n := inside.Add(1); n != 1 {
							t.Errorf("%d holders at once", n)
						}
						total.Add(1)
						time.Sleep(50 * time.Microsecond)
						inside.Add(-1)
						return nil
					}, client.Wait(10*time.Second))
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if total.Load() != 160 {
		t.Fatalf("%d critical sections, want 160", total.Load())
	}
	st, err := newLockClient(t, path).LockStatus(ctx, "m")
	if err != nil || st.Held || st.Token != 160 {
		t.Fatalf("final status %+v, %v", st, err)
	}
}

func TestWithLockReleasesAndReturnsFnError(t *testing.T) {
	c := newLockClient(t, startLockSidecar(t, txn.NewMemory(nil)))
	ctx := testCtx(t)
	boom := errors.New("boom")
	var fence client.Fence
	err := c.WithLock(ctx, "r", func(ctx context.Context, f client.Fence) error {
		fence = f
		st, err := c.LockStatus(ctx, "r")
		if err != nil || !st.Held || st.Token != f.Token {
			t.Errorf("status inside %+v, %v", st, err)
		}
		return boom
	})
	if err != boom {
		t.Fatalf("WithLock returned %v, want fn's error", err)
	}
	if st, err := c.LockStatus(ctx, "r"); err != nil || st.Held || fence.Resource != "r" || fence.Token != 1 {
		t.Fatalf("after WithLock: %+v, %v (fence %+v)", st, err, fence)
	}
}

// TestWithLockLost: a lock taken from under WithLock cancels fn's context,
// and WithLock's error says the lock was lost.
func TestWithLockLost(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	c, other := newLockClient(t, path), newLockClient(t, path)
	ctx := testCtx(t)
	err := c.WithLock(ctx, "r", func(fctx context.Context, f client.Fence) error {
		if err := other.Release(ctx, &client.Lock{Resource: f.Resource, Token: f.Token}); err != nil {
			return err
		}
		<-fctx.Done()
		return fctx.Err()
	}, client.Lease(300*time.Millisecond))
	var e *client.Error
	if !errors.Is(err, client.ErrLockLost) || !errors.Is(err, context.Canceled) || !errors.As(err, &e) ||
		e.Lock == nil || e.Lock.Resource != "r" {
		t.Fatalf("WithLock returned %v", err)
	}
}

// TestWithLockNestedDeadlock: two goroutines nest WithLock calls in
// opposite orders; nested calls are made by the outer call's holder, so the
// sidecar sees the cycle and fails one of them.
func TestWithLockNestedDeadlock(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	c := newLockClient(t, path)
	var held sync.WaitGroup
	held.Add(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, order := range [][2]string{{"a", "b"}, {"b", "a"}} {
		wg.Go(func() {
			errs[i] = c.WithLock(ctx, order[0], func(ctx context.Context, _ client.Fence) error {
				held.Done()
				held.Wait()
				return c.WithLock(ctx, order[1], func(context.Context, client.Fence) error { return nil })
			}, client.Wait(10*time.Second))
		})
	}
	wg.Wait()
	var deadlocks, ok int
	for _, err := range errs {
		var e *client.Error
		switch {
		case err == nil:
			ok++
		case errors.Is(err, client.ErrDeadlockDetected) && errors.As(err, &e) && e.Deadlock != nil && len(e.Deadlock.Cycle) == 2:
			deadlocks++
		default:
			t.Errorf("unexpected error %v", err)
		}
	}
	if deadlocks != 1 || ok != 1 {
		t.Fatalf("%d deadlocks and %d successes, want one of each: %v", deadlocks, ok, errs)
	}
}

// TestAcquireAbandoned: an Acquire whose context ends while it waits on a
// WithLock's connection leaves no lock behind when the grant comes later.
func TestAcquireAbandoned(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	c, other := newLockClient(t, path), newLockClient(t, path)
	x, err := other.Acquire(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	err = c.WithLock(ctx, "outer", func(fctx context.Context, _ client.Fence) error {
		wctx, cancel := context.WithCancel(fctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Acquire(wctx, "x", client.Wait(10*time.Second))
			done <- err
		}()
		eventually(t, "the wait", func() bool { st, _ := c.LockStatus(ctx, "x"); return st != nil && len(st.Waiters) == 1 })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			return fmt.Errorf("abandoned acquire: %v", err)
		}
		if err := other.Release(ctx, x); err != nil {
			return err
		}
		eventually(t, "the late grant released", func() bool {
			st, _ := c.LockStatus(ctx, "x")
			return st != nil && !st.Held && st.Token == 2
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCloseEndsWithLock: closing the Client closes WithLock's connection:
// fn's context ends and the sidecar releases the lock.
func TestCloseEndsWithLock(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	c, other := client.New(path), newLockClient(t, path)
	err := c.WithLock(ctx, "r", func(fctx context.Context, _ client.Fence) error {
		c.Close()
		<-fctx.Done()
		return nil
	})
	if !errors.Is(err, client.ErrClosed) {
		t.Fatalf("WithLock returned %v", err)
	}
	eventually(t, "the lock released", func() bool { st, _ := other.LockStatus(ctx, "r"); return st != nil && !st.Held })
	if _, err := c.Acquire(ctx, "r"); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
}

// TestWithLockWaitsForHolder: WithLock waits for a lock another process
// holds, and its grant has a larger token.
func TestWithLockWaitsForHolder(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	c, other := newLockClient(t, path), newLockClient(t, path)
	l, err := other.Acquire(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	go func() {
		for {
			if st, err := other.LockStatus(ctx, "r"); err != nil || len(st.Waiters) == 1 {
				released <- errors.Join(err, other.Release(ctx, l))
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	err = c.WithLock(ctx, "r", func(_ context.Context, f client.Fence) error {
		if f.Token != l.Token+1 {
			return fmt.Errorf("token %d after %d", f.Token, l.Token)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	var e *client.Error
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := other.Acquire(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	err = c.WithLock(short, "held", func(context.Context, client.Fence) error { return nil })
	if !(errors.Is(err, client.ErrLockHeld) && errors.As(err, &e) && e.Waited) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WithLock on a held lock until the deadline: %v", err)
	}
}

// slowReadConn delays every Read after the first (the hello reply): it
// stands for a reader goroutine that is scheduled late.
type slowReadConn struct {
	net.Conn
	reads atomic.Int64
	delay time.Duration
}

func (c *slowReadConn) Read(b []byte) (int, error) {
	if c.reads.Add(1) > 1 {
		time.Sleep(c.delay)
	}
	return c.Conn.Read(b)
}

// TestAcquireAbandonedTopLevel: a top-level Acquire whose context ends
// while its (unbound) grant is on the way releases that grant: the lock is
// not left held, by nobody, for its whole lease.
func TestAcquireAbandonedTopLevel(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	ctx := testCtx(t)
	other := newLockClient(t, path)
	x, err := other.Acquire(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	c := &client.Client{Socket: path, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		return &slowReadConn{Conn: nc, delay: 500 * time.Millisecond}, nil
	}}
	t.Cleanup(func() { c.Close() })
	go func() {
		time.Sleep(100 * time.Millisecond)
		other.Release(ctx, x)
	}()
	actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var ce *client.CanceledError
	if _, err := c.Acquire(actx, "x", client.Wait(5*time.Second)); !errors.Is(err, context.DeadlineExceeded) ||
		!errors.As(err, &ce) || !ce.Sent {
		t.Fatalf("Acquire: %v, want DeadlineExceeded, a CanceledError of a request sent", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := other.LockStatus(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned grant still holds the lock: holder %q, %v left (token %d)", st.Holder, st.Remaining, st.Token)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWithLockLostThenDeadline: the lock's connection breaks while fn runs
// (the sidecar releases the lock), and the caller's deadline passes before
// fn returns. WithLock still says the lock was lost: fn may not have run
// alone.
func TestWithLockLostThenDeadline(t *testing.T) {
	path := startLockSidecar(t, txn.NewMemory(nil))
	var mu sync.Mutex
	var conns []net.Conn
	c := &client.Client{Socket: path, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
		return nc, err
	}}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
	defer cancel()
	err := c.WithLock(ctx, "r", func(fctx context.Context, f client.Fence) error {
		mu.Lock()
		for _, nc := range conns {
			nc.Close() // the lock's connection among them
		}
		mu.Unlock()
		<-fctx.Done()
		<-ctx.Done()
		return nil
	})
	var ce *client.ConnError
	if !errors.As(err, &ce) {
		t.Fatalf("WithLock returned %v, want the connection's failure", err)
	}
}

// failingReleases fails its first n releases as unavailable.
type failingReleases struct {
	*txn.Memory
	n atomic.Int64
}

func (f *failingReleases) Release(ctx context.Context, g txn.Grant) error {
	if f.n.Add(-1) >= 0 {
		return fmt.Errorf("release: %w", txn.ErrUnavailable)
	}
	return f.Memory.Release(ctx, g)
}

// TestWithLockNestedReleaseRetried: a nested WithLock whose release fails
// for a moment does not keep its lock until the outer one returns: the
// release is tried again.
func TestWithLockNestedReleaseRetried(t *testing.T) {
	locks := &failingReleases{Memory: txn.NewMemory(nil)}
	path := startLockSidecar(t, locks)
	c, other := newLockClient(t, path), newLockClient(t, path)
	ctx := testCtx(t)
	err := c.WithLock(ctx, "outer", func(ctx context.Context, _ client.Fence) error {
		locks.n.Store(1)
		if err := c.WithLock(ctx, "inner", func(context.Context, client.Fence) error { return nil }); err != nil {
			return err
		}
		eventually(t, "the inner lock released while the outer one is held", func() bool {
			st, err := other.LockStatus(ctx, "inner")
			return err == nil && !st.Held
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
