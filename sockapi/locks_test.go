package sockapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/txn"
)

// startLockServer serves a fake store with locks as the lock service.
func startLockServer(t *testing.T, locks txn.Locks, opts Options) *testServer {
	t.Helper()
	opts.Locks = locks
	return startServer(t, newFakeStore(), opts)
}

func acquireReq(res string, leaseMS, waitMS uint64, bind bool) wire.Request {
	return wire.Request{Op: wire.OpLockAcquire, Resource: res, LeaseMS: leaseMS, WaitMS: waitMS, Bind: bind}
}

// grantOf checks that r is a successful lock reply and returns its lock.
func grantOf(t testing.TB, r wire.Response) *wire.Lock {
	t.Helper()
	if r.Error != nil || r.Lock == nil {
		t.Fatalf("want a lock reply, got error %+v lock %+v", r.Error, r.Lock)
	}
	return r.Lock
}

// lockError checks that r is an error reply with code and returns it.
func lockError(t testing.TB, r wire.Response, code wire.Code) *wire.Error {
	t.Helper()
	if r.Error == nil || r.Error.Code != code {
		t.Fatalf("want %s, got error %+v lock %+v", code, r.Error, r.Lock)
	}
	if r.Lock != nil {
		t.Fatalf("error reply carries a lock: %+v", r.Lock)
	}
	return r.Error
}

func (c *client) status(res string) *wire.Lock {
	c.t.Helper()
	return grantOf(c.t, c.call(wire.Request{Op: wire.OpLockStatus, Resource: res}))
}

// start sends req with a fresh id and returns a channel that delivers its
// reply (read on another goroutine: the caller must not read c meanwhile).
func (c *client) start(req wire.Request) <-chan wire.Response {
	c.t.Helper()
	req.ID = c.id()
	c.send(&req)
	ch := make(chan wire.Response, 1)
	go func() {
		c.nc.SetReadDeadline(time.Now().Add(testTimeout))
		r, err := c.tryRecv()
		if err != nil {
			r.Error = wire.Errorf("recv", "%v", err)
		}
		ch <- r
	}()
	return ch
}

func await(t testing.TB, ch <-chan wire.Response) wire.Response {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatal("no reply")
	}
	return wire.Response{}
}

// waitStatus polls lock_status on c until cond holds.
func waitStatus(t testing.TB, c *client, res, what string, cond func(*wire.Lock) bool) *wire.Lock {
	t.Helper()
	var st *wire.Lock
	waitFor(t, what, func() bool {
		st = c.status(res)
		return cond(st)
	})
	return st
}

func TestLockOps(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	c := ts.hello()
	before := time.Now()

	g := grantOf(t, c.call(acquireReq("r", 0, 0, false)))
	if g.Resource != "r" || g.Token != 1 || g.LeaseMS != uint64(txn.DefaultLease.Milliseconds()) || g.Bound {
		t.Fatalf("grant %+v", g)
	}
	if !strings.HasPrefix(g.Holder, "node-test.") || !strings.HasSuffix(g.Holder, ".1") {
		t.Fatalf("holder %q: want node id, process id and connection number", g.Holder)
	}
	if d := time.Unix(0, g.Deadline); d.Before(before.Add(txn.DefaultLease)) || d.After(time.Now().Add(txn.DefaultLease)) {
		t.Fatalf("deadline %v is not the request time plus the lease", d)
	}
	if g.Expires == 0 {
		t.Fatal("grant without expires")
	}

	st := c.status("r")
	if !st.Held || st.Holder != g.Holder || st.Token != 1 || st.RemainingMS == 0 || st.RemainingMS > g.LeaseMS {
		t.Fatalf("status %+v", st)
	}

	ext := grantOf(t, c.call(wire.Request{Op: wire.OpLockExtend, Resource: "r", Token: 1, LeaseMS: 60_000}))
	if ext.Token != 1 || ext.LeaseMS != 60_000 || ext.Holder != g.Holder || ext.Deadline <= g.Deadline {
		t.Fatalf("extended %+v (was %+v)", ext, g)
	}
	ext = grantOf(t, c.call(wire.Request{Op: wire.OpLockExtend, Resource: "r", Token: 1}))
	if ext.LeaseMS != uint64(txn.DefaultLease.Milliseconds()) {
		t.Fatalf("extend without lease_ms: lease %d ms, want the default", ext.LeaseMS)
	}

	rel := grantOf(t, c.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: 1}))
	if rel.Resource != "r" || rel.Token != 1 || rel.Holder != g.Holder {
		t.Fatalf("release reply %+v", rel)
	}
	if st := c.status("r"); st.Held || st.Holder != "" || st.Token != 1 {
		t.Fatalf("status after release %+v", st)
	}
	if g2 := grantOf(t, c.call(acquireReq("r", 0, 0, false))); g2.Token != 2 {
		t.Fatalf("second grant has token %d, want 2", g2.Token)
	}
	if st := c.status("other"); st.Held || st.Token != 0 {
		t.Fatalf("status of a resource never locked %+v", st)
	}

	_, requests, _ := ts.srv.Stats()
	for _, op := range []string{wire.OpLockAcquire, wire.OpLockRelease, wire.OpLockExtend, wire.OpLockStatus} {
		if requests[op] == 0 {
			t.Errorf("stats count no %s: %v", op, requests)
		}
	}
}

// TestLockHolderIDs: every connection has its own holder, and a new server
// (a restarted sidecar) never reuses one.
func TestLockHolderIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 2 {
		ts := startLockServer(t, txn.NewMemory(nil), Options{})
		for i := range 3 {
			g := grantOf(t, ts.hello().call(acquireReq(fmt.Sprint("r", i), 0, 0, false)))
			if seen[g.Holder] {
				t.Fatalf("holder %q used twice", g.Holder)
			}
			seen[g.Holder] = true
		}
		ts.stop()
	}
}

func TestLockHeldAndWaits(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 0, 0, false)))

	e := lockError(t, b.call(acquireReq("r", 0, 0, false)), wire.CodeLockHeld)
	if !e.Retryable || e.Waited || e.Lock == nil || e.Lock.Holder != g.Holder || e.Lock.Token != 1 ||
		!e.Lock.Held || e.Lock.RemainingMS == 0 || e.Lock.Expires == 0 {
		t.Fatalf("LockHeld %+v lock %+v", e, e.Lock)
	}
	e = lockError(t, b.call(acquireReq("r", 0, 30, false)), wire.CodeLockHeld)
	if !e.Waited || !strings.Contains(e.Message, "wait ended") {
		t.Fatalf("LockHeld after a wait: %+v", e)
	}
	e = lockError(t, a.call(acquireReq("r", 0, 0, false)), wire.CodeLockHeld)
	if !strings.Contains(e.Message, "this connection") {
		t.Fatalf("re-acquiring one's own lock: %q", e.Message)
	}

	// A waiter gets the lock when it is released, with a larger token.
	ch := b.start(acquireReq("r", 0, 10_000, false))
	waitStatus(t, a, "r", "the waiter in the status", func(st *wire.Lock) bool { return len(st.Waiters) == 1 })
	released := time.Now()
	grantOf(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}))
	g2 := grantOf(t, await(t, ch))
	if g2.Token != 2 || g2.Holder == g.Holder {
		t.Fatalf("waiter got %+v", g2)
	}
	// The lease of a grant after a wait runs from the grant, not from the
	// request.
	if d := time.Unix(0, g2.Deadline); d.Before(released.Add(txn.DefaultLease)) {
		t.Fatalf("deadline %v of a grant after a wait is before the release plus the lease (%v)", d, released.Add(txn.DefaultLease))
	}

	// A waiter gets an expired lock too.
	grantOf(t, a.call(acquireReq("s", 20, 0, false)))
	if g3 := grantOf(t, b.call(acquireReq("s", 0, 10_000, false))); g3.Token != 2 {
		t.Fatalf("waiter on an expiring lock got %+v", g3)
	}
}

func TestLockLost(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 20, 0, false)))
	waitStatus(t, a, "r", "the lease to end", func(st *wire.Lock) bool { return !st.Held })
	for _, op := range []string{wire.OpLockRelease, wire.OpLockExtend} {
		e := lockError(t, a.call(wire.Request{Op: op, Resource: "r", Token: g.Token}), wire.CodeLockLost)
		if e.Retryable || e.Lock == nil || e.Lock.Resource != "r" || e.Lock.Held || !strings.Contains(e.Message, "lease ended") {
			t.Fatalf("%s of an expired grant: %+v lock %+v", op, e, e.Lock)
		}
	}
	g2 := grantOf(t, b.call(acquireReq("r", 0, 0, false)))
	e := lockError(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}), wire.CodeLockLost)
	if e.Lock.Holder != g2.Holder || e.Lock.Token != g2.Token || !e.Lock.Held {
		t.Fatalf("release of a grant taken over: lock %+v, want the new grant %+v", e.Lock, g2)
	}
	lockError(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: 99}), wire.CodeLockLost)
	lockError(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "never", Token: 1}), wire.CodeLockLost)
}

// TestLockGrantOfAnotherConnection: a grant is named by resource and token,
// so any connection may extend or release it, and an unbound grant
// outlives the connection that took it.
func TestLockGrantOfAnotherConnection(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 0, 0, false)))
	a.nc.Close()
	time.Sleep(20 * time.Millisecond) // the server sees the close
	if st := b.status("r"); !st.Held || st.Holder != g.Holder {
		t.Fatalf("an unbound grant ended with its connection: %+v", st)
	}
	ext := grantOf(t, b.call(wire.Request{Op: wire.OpLockExtend, Resource: "r", Token: g.Token, LeaseMS: 5000}))
	if ext.Holder != g.Holder || ext.LeaseMS != 5000 {
		t.Fatalf("extend from another connection: %+v", ext)
	}
	rel := grantOf(t, b.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}))
	if rel.Holder != g.Holder {
		t.Fatalf("release from another connection: %+v", rel)
	}
	if st := b.status("r"); st.Held {
		t.Fatalf("still held: %+v", st)
	}
}

func TestLockDeadlock(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprint(n, " parties"), func(t *testing.T) {
			ts := startLockServer(t, txn.NewMemory(nil), Options{})
			cs := make([]*client, n)
			grants := make([]*wire.Lock, n)
			for i := range cs {
				cs[i] = ts.hello()
				grants[i] = grantOf(t, cs[i].call(acquireReq(fmt.Sprint("r", i), 0, 0, false)))
			}
			// Each waits for the next one's lock; the last closes the cycle.
			chs := make([]<-chan wire.Response, n)
			for i := range n - 1 {
				chs[i] = cs[i].start(acquireReq(fmt.Sprint("r", i+1), 0, 10_000, false))
				waitStatus(t, cs[n-1], fmt.Sprint("r", i+1), "the wait", func(st *wire.Lock) bool { return len(st.Waiters) == 1 })
			}
			chs[n-1] = cs[n-1].start(acquireReq("r0", 0, 10_000, false))
			type reply struct {
				party int
				r     wire.Response
			}
			first := make(chan reply, n)
			for i, ch := range chs {
				go func() {
					if r, ok := <-ch; ok {
						first <- reply{i, r}
					}
				}()
			}
			var got reply
			select {
			case got = <-first:
			case <-time.After(testTimeout):
				t.Fatal("no party was told of the deadlock")
			}
			victim := got.party
			e := lockError(t, got.r, wire.CodeDeadlockDetected)
			if !e.Retryable || e.Deadlock == nil || len(e.Deadlock.Cycle) != n || e.Deadlock.Victim != grants[victim].Holder ||
				e.Deadlock.Cycle[0].Waiter != grants[victim].Holder {
				t.Fatalf("party %d: %+v deadlock %+v", victim, e, e.Deadlock)
			}
			for i := range n {
				if grants[i].Holder > grants[victim].Holder {
					t.Fatalf("victim %s is not the greatest holder (%s)", grants[victim].Holder, grants[i].Holder)
				}
			}
			// The victim releases what it holds; the party waiting for it
			// proceeds.
			next := (victim + n - 1) % n
			grantOf(t, cs[victim].call(wire.Request{Op: wire.OpLockRelease, Resource: fmt.Sprint("r", victim), Token: 1}))
			select {
			case got = <-first:
			case <-time.After(testTimeout):
				t.Fatal("the party waiting for the victim's lock got no reply")
			}
			if g := grantOf(t, got.r); got.party != next || g.Resource != fmt.Sprint("r", victim) || g.Token != 2 {
				t.Fatalf("party %d got %+v, want party %d", got.party, g, next)
			}
		})
	}
	t.Run("cycle of one", func(t *testing.T) {
		ts := startLockServer(t, txn.NewMemory(nil), Options{})
		c := ts.hello()
		grantOf(t, c.call(acquireReq("r", 0, 0, false)))
		e := lockError(t, c.call(acquireReq("r", 0, 1000, false)), wire.CodeDeadlockDetected)
		if len(e.Deadlock.Cycle) != 1 {
			t.Fatalf("deadlock %+v", e.Deadlock)
		}
	})
}

func TestLockValidation(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	c := ts.hello()
	over := uint64(txn.MaxLease.Milliseconds()) + 1
	for _, tc := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
	}{
		{"no resource", wire.Request{Op: wire.OpLockAcquire}, wire.CodeInvalidArgument, "resource"},
		{"resource with slash", acquireReq("a/b", 0, 0, false), wire.CodeInvalidArgument, "resource"},
		{"reserved resource", wire.Request{Op: wire.OpLockStatus, Resource: "__x__"}, wire.CodeInvalidArgument, "resource"},
		{"dot resource", wire.Request{Op: wire.OpLockRelease, Resource: "..", Token: 1}, wire.CodeInvalidArgument, "resource"},
		{"long resource", acquireReq(strings.Repeat("r", wire.MaxNameSize+1), 0, 0, false), wire.CodeInvalidArgument, "resource"},
		{"invalid UTF-8", wire.Request{Op: wire.OpLockExtend, Resource: "\xff", Token: 1}, wire.CodeInvalidArgument, "resource"},
		{"lease over the limit", acquireReq("r", over, 0, false), wire.CodeInvalidArgument, "lease_ms"},
		{"wait over the limit", acquireReq("r", 0, over, false), wire.CodeInvalidArgument, "wait_ms"},
		{"bound lease too short", acquireReq("r", uint64(minBoundLease.Milliseconds())-1, 0, true), wire.CodeInvalidArgument, "lease_ms"},
		{"release without token", wire.Request{Op: wire.OpLockRelease, Resource: "r"}, wire.CodeInvalidArgument, "token"},
		{"extend without token", wire.Request{Op: wire.OpLockExtend, Resource: "r", LeaseMS: 10}, wire.CodeInvalidArgument, "token"},
		{"extend lease over the limit", wire.Request{Op: wire.OpLockExtend, Resource: "r", Token: 1, LeaseMS: over}, wire.CodeInvalidArgument, "lease_ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, c.call(tc.req), tc.code, tc.field)
		})
	}
	for _, tc := range []struct {
		field string
		value any
	}{
		{"resource", 7}, {"token", -1}, {"token", "1"}, {"lease_ms", -5}, {"lease_ms", 1.5}, {"wait_ms", "1s"}, {"bind", 1},
	} {
		t.Run(fmt.Sprintf("%s %v", tc.field, tc.value), func(t *testing.T) {
			id := c.id()
			c.send(map[string]any{"id": id, "op": wire.OpLockAcquire, "resource": "r", tc.field: tc.value})
			r := c.recv()
			if r.ID != id {
				t.Fatalf("reply id %d, want %d", r.ID, id)
			}
			expectError(t, r, wire.CodeInvalidArgument, tc.field)
		})
	}
	if st := c.status("r"); st.Token != 0 {
		t.Fatalf("a refused request took the lock: %+v", st)
	}

	t.Run("a second wait on one connection", func(t *testing.T) {
		other := ts.hello()
		g := grantOf(t, other.call(acquireReq("w", 0, 0, false)))
		ch := c.start(acquireReq("w", 0, 10_000, false))
		waitStatus(t, other, "w", "the wait", func(st *wire.Lock) bool { return len(st.Waiters) == 1 })
		// The first reply to come is the refused second wait.
		second := wire.Request{ID: c.id(), Op: wire.OpLockAcquire, Resource: "w2", WaitMS: 10}
		c.send(&second)
		expectError(t, await(t, ch), wire.CodeInvalidArgument, "wait_ms")
		grantOf(t, other.call(wire.Request{Op: wire.OpLockRelease, Resource: "w", Token: g.Token}))
		if g := grantOf(t, c.recv()); g.Resource != "w" {
			t.Fatalf("the first wait got %+v", g)
		}
	})

	t.Run("too many bound locks", func(t *testing.T) {
		b := ts.hello()
		for i := range maxBoundLocks {
			grantOf(t, b.call(acquireReq(fmt.Sprint("b", i), 0, 0, true)))
		}
		e := b.call(acquireReq("one-more", 0, 0, true))
		expectError(t, e, wire.CodeTooLarge, "bind")
		if e.Error.Limit != maxBoundLocks {
			t.Fatalf("limit %d", e.Error.Limit)
		}
		grantOf(t, b.call(acquireReq("one-more", 0, 0, false))) // unbound locks are not counted
	})
}

func TestLocksWithoutService(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{})
	c := ts.hello()
	for _, op := range []string{wire.OpLockAcquire, wire.OpLockRelease, wire.OpLockExtend, wire.OpLockStatus} {
		e := lockError(t, c.call(wire.Request{Op: op, Resource: "r", Token: 1}), wire.CodeUnavailable)
		if e.Retryable || !strings.Contains(e.Message, "--firestore-project") {
			t.Fatalf("%s: %+v", op, e)
		}
	}
}

func TestLockAccess(t *testing.T) {
	uid := uint32(os.Getuid())
	for _, tc := range []struct {
		name   string
		access Access
		ok     bool
	}{
		{"no policy", Access{}, true},
		{"listed", Access{Locks: []uint32{uid}}, true},
		{"empty list", Access{Locks: []uint32{}}, false},
		{"other uid", Access{Locks: []uint32{uid + 1}}, false},
		{"governor rules do not apply", Access{Default: &GovernorAccess{}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startLockServer(t, txn.NewMemory(nil), Options{Access: tc.access})
			c := ts.hello()
			for _, op := range []string{wire.OpLockAcquire, wire.OpLockStatus, wire.OpLockExtend, wire.OpLockRelease} {
				r := c.call(wire.Request{Op: op, Resource: "r", Token: 1})
				if tc.ok {
					if r.Error != nil && r.Error.Code == wire.CodePermissionDenied {
						t.Fatalf("%s denied: %+v", op, r.Error)
					}
					continue
				}
				expectError(t, r, wire.CodePermissionDenied, "")
				if !strings.Contains(r.Error.Message, "lock") {
					t.Fatalf("message %q does not name the right", r.Error.Message)
				}
			}
		})
	}
}

func TestLockBoundReleasedOnClose(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b := ts.hello(), ts.hello()
	var grants []*wire.Lock
	for i := range 3 {
		grants = append(grants, grantOf(t, a.call(acquireReq(fmt.Sprint("r", i), 0, 0, true))))
		if !grants[i].Bound {
			t.Fatalf("grant %+v is not bound", grants[i])
		}
	}
	grantOf(t, a.call(acquireReq("unbound", 0, 0, false)))
	ch := b.start(acquireReq("r0", 0, 10_000, false))
	a.nc.Close()
	if g := grantOf(t, await(t, ch)); g.Token != grants[0].Token+1 {
		t.Fatalf("waiter got %+v", g)
	}
	for i := 1; i < 3; i++ {
		waitStatus(t, b, fmt.Sprint("r", i), "the bound lock released", func(st *wire.Lock) bool { return !st.Held })
	}
	if st := b.status("unbound"); !st.Held {
		t.Fatalf("the unbound lock was released with its connection: %+v", st)
	}
}

// TestLockBoundRenewed: a bound lock outlives many leases while its
// connection lives; an unbound one with the same lease does not.
func TestLockBoundRenewed(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b := ts.hello(), ts.hello()
	lease := uint64(minBoundLease.Milliseconds())
	g := grantOf(t, a.call(acquireReq("bound", lease, 0, true)))
	u := grantOf(t, a.call(acquireReq("unbound", lease, 0, false)))
	end := time.Now().Add(4 * minBoundLease)
	for time.Now().Before(end) {
		if st := b.status("bound"); !st.Held || st.Token != g.Token {
			t.Fatalf("bound lock not kept: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := b.status("unbound"); st.Held {
		t.Fatalf("unbound lock outlived its lease: %+v (grant %+v)", st, u)
	}
	// Extending a bound lock keeps it bound, with the new lease.
	ext := grantOf(t, a.call(wire.Request{Op: wire.OpLockExtend, Resource: "bound", Token: g.Token, LeaseMS: 2 * lease}))
	if !ext.Bound || ext.LeaseMS != 2*lease {
		t.Fatalf("extended %+v", ext)
	}
	time.Sleep(3 * minBoundLease)
	if st := b.status("bound"); !st.Held || st.Token != g.Token {
		t.Fatalf("bound lock not kept after extend: %+v", st)
	}
	grantOf(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "bound", Token: g.Token}))
	// A renewer left running would push a loss before the ping's reply
	// (call checks the reply's id).
	time.Sleep(minBoundLease)
	a.call(wire.Request{Op: wire.OpPing})
}

// flakyLocks fails Extend with ErrUnavailable while failing is set.
type flakyLocks struct {
	*txn.Memory
	failing atomic.Bool
}

func (f *flakyLocks) Extend(ctx context.Context, g txn.Grant, lease time.Duration) (txn.Grant, error) {
	if f.failing.Load() {
		return txn.Grant{}, fmt.Errorf("extend: %w", txn.ErrUnavailable)
	}
	return f.Memory.Extend(ctx, g, lease)
}

// TestLockBoundLostIsPushed: a bound lock that another connection released,
// or that could not be renewed before its deadline, is reported in a push
// frame carrying the acquire's id.
func TestLockBoundLostIsPushed(t *testing.T) {
	locks := &flakyLocks{Memory: txn.NewMemory(nil)}
	ts := startLockServer(t, locks, Options{})
	a, b := ts.hello(), ts.hello()
	lease := uint64(minBoundLease.Milliseconds())

	acq := acquireReq("r", lease, 0, true)
	acq.ID = a.id()
	a.send(&acq)
	g := grantOf(t, a.recv())
	grantOf(t, b.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}))
	p := a.recv()
	if !p.Push || p.ID != acq.ID || p.Watch != 0 || p.Lock == nil || p.Lock.Token != g.Token || !p.Lock.Bound ||
		p.Error == nil || p.Error.Code != wire.CodeLockLost {
		t.Fatalf("push frame %+v lock %+v error %+v", p, p.Lock, p.Error)
	}

	acq = acquireReq("s", lease, 0, true)
	acq.ID = a.id()
	a.send(&acq)
	g = grantOf(t, a.recv())
	locks.failing.Store(true)
	p = a.recv()
	if !p.Push || p.ID != acq.ID || p.Lock == nil || p.Lock.Resource != "s" || p.Error == nil ||
		p.Error.Code != wire.CodeLockLost || !strings.Contains(p.Error.Message, "before the sidecar could extend it") {
		t.Fatalf("push frame %+v lock %+v error %+v", p, p.Lock, p.Error)
	}
	if time.Now().Before(time.Unix(0, g.Deadline)) {
		t.Fatal("loss reported before the grant's deadline")
	}
	locks.failing.Store(false)
	// The lost grant is no longer bound: releasing it reports the loss.
	lockError(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "s", Token: g.Token}), wire.CodeLockLost)
	_, _, errs := ts.srv.Stats()
	if errs[string(wire.CodeLockLost)] < 3 {
		t.Fatalf("LockLost counted %d times: %v", errs[string(wire.CodeLockLost)], errs)
	}
}

// TestLockIdleTimeout: a connection that holds a bound lock, or waits for
// a lock, is not closed as idle; one that holds none is.
func TestLockIdleTimeout(t *testing.T) {
	idle := 100 * time.Millisecond
	ts := startLockServer(t, txn.NewMemory(nil), Options{IdleTimeout: idle})
	holder, waiter, plain := ts.hello(), ts.hello(), ts.hello()
	g := grantOf(t, holder.call(acquireReq("r", 0, 0, true)))
	ch := waiter.start(acquireReq("r", 0, 10_000, false))
	plain.expectClosed()
	time.Sleep(5 * idle)
	if st := ts.hello().status("r"); !st.Held || st.Holder != g.Holder || len(st.Waiters) != 1 {
		t.Fatalf("status %+v", st)
	}
	grantOf(t, holder.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}))
	if g2 := grantOf(t, await(t, ch)); g2.Token != g.Token+1 {
		t.Fatalf("waiter got %+v", g2)
	}
	holder.expectClosed() // idle again
}

// TestLockWaitEndsWithConnection: a wait ends when its connection closes,
// and a shutdown ends the waits with Unavailable.
func TestLockWaitEndsWithConnection(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	a, b, c := ts.hello(), ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 0, 0, false)))
	b.start(acquireReq("r", 0, 60_000, false))
	waitStatus(t, a, "r", "the wait", func(st *wire.Lock) bool { return len(st.Waiters) == 1 })
	b.nc.Close()
	waitStatus(t, a, "r", "the wait to end", func(st *wire.Lock) bool { return len(st.Waiters) == 0 })
	grantOf(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}))
	if st := a.status("r"); st.Held {
		t.Fatalf("a closed connection's wait took the lock: %+v", st)
	}

	grantOf(t, a.call(acquireReq("r", 0, 0, false)))
	ch := c.start(acquireReq("r", 0, 60_000, false))
	waitStatus(t, a, "r", "the wait", func(st *wire.Lock) bool { return len(st.Waiters) == 1 })
	start := time.Now()
	ts.stop()
	if e := lockError(t, await(t, ch), wire.CodeUnavailable); !e.Retryable {
		t.Fatalf("wait ended by shutdown: %+v", e)
	}
	if d := time.Since(start); d > testTimeout/2 {
		t.Fatalf("shutdown took %v: it waited for the lock wait", d)
	}
}

// TestLockMutualExclusion: many connections take one lock in turns, bound
// or not, waiting or retrying; no two are ever inside at once.
func TestLockMutualExclusion(t *testing.T) {
	ts := startLockServer(t, txn.NewMemory(nil), Options{})
	const workers, rounds = 12, 15
	var inside, total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		c := ts.hello()
		wg.Go(func() {
			for i := range rounds {
				bind := (w+i)%2 == 0
				req := wire.Request{ID: c.id(), Op: wire.OpLockAcquire, Resource: "m", WaitMS: 10_000, Bind: bind}
				if w%3 == 0 {
					req.WaitMS = 0 // retry instead of waiting
				}
				var r wire.Response
				for {
					frame, _ := c.enc.AppendFrame(nil, &req)
					c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
					if _, err := c.nc.Write(frame); err != nil {
						errs <- err
						return
					}
					var err error
					if r, err = c.tryRecv(); err != nil {
						errs <- err
						return
					}
					if r.Error == nil || r.Error.Code != wire.CodeLockHeld || req.WaitMS != 0 {
						break
					}
					time.Sleep(time.Millisecond)
				}
				if r.Error != nil || r.Lock == nil {
					errs <- fmt.Errorf("worker %d: acquire: %+v", w, r.Error)
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("worker %d: %d holders at once", w, n)
				}
				total.Add(1)
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				rel := wire.Request{ID: c.id(), Op: wire.OpLockRelease, Resource: "m", Token: r.Lock.Token}
				frame, _ := c.enc.AppendFrame(nil, &rel)
				if _, err := c.nc.Write(frame); err != nil {
					errs <- err
					return
				}
				if r, err := c.tryRecv(); err != nil || r.Error != nil {
					errs <- fmt.Errorf("worker %d: release: %v %+v", w, err, r.Error)
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
	if got := total.Load(); got != workers*rounds {
		t.Fatalf("%d critical sections, want %d", got, workers*rounds)
	}
	st := ts.hello().status("m")
	if st.Held || st.Token != workers*rounds {
		t.Fatalf("final status %+v", st)
	}
	if !slices.Equal(st.Waiters, nil) {
		t.Fatalf("waiters left: %v", st.Waiters)
	}
}

// TestLockErrorsMapping checks the translation of every error of the lock
// service, and that the store's own messages are not sent.
func TestLockErrorsMapping(t *testing.T) {
	srv := NewServer(newFakeStore(), Options{})
	c := &conn{s: srv, log: srv.log, ctx: context.Background()}
	l := &connLocks{holder: "me", ctx: context.Background()}
	for _, tc := range []struct {
		err       error
		code      wire.Code
		retryable bool
	}{
		{fmt.Errorf("secret: %w", txn.ErrUnavailable), wire.CodeUnavailable, true},
		{fmt.Errorf("secret: %w", txn.ErrPermanent), wire.CodeUnavailable, false},
		{fmt.Errorf("secret: %w", txn.ErrInvalid), wire.CodeInvalidArgument, false},
		{errors.New("secret"), wire.CodeInternal, false},
		{&txn.HeldError{Resource: "r", Holder: "h", Token: 3, Remaining: time.Second}, wire.CodeLockHeld, true},
		{&txn.LostError{Op: "extend", Grant: txn.Grant{Resource: "r", Token: 2}, Expired: true}, wire.CodeLockLost, false},
		{&txn.DeadlockError{Deadlock: txn.Deadlock{Victim: "v", Cycle: []txn.WaitEdge{{Waiter: "v", Resource: "r", Holder: "v"}}}},
			wire.CodeDeadlockDetected, true},
	} {
		e := c.lockError(l, "r", tc.err)
		if e.Code != tc.code || e.Retryable != tc.retryable {
			t.Errorf("%v: %s retryable %v, want %s retryable %v", tc.err, e.Code, e.Retryable, tc.code, tc.retryable)
		}
		if (e.Code == wire.CodeUnavailable || e.Code == wire.CodeInternal) && strings.Contains(e.Message, "secret") {
			t.Errorf("store message sent: %q", e.Message)
		}
	}
	// A lock being handed to a waiter names it in next, not as its holder.
	e := c.lockError(l, "r", &txn.HeldError{Resource: "r", Holder: "w", Token: 3, Remaining: time.Second, Handoff: true})
	if e.Code != wire.CodeLockHeld || e.Lock == nil || e.Lock.Next != "w" || e.Lock.Holder != "" || e.Lock.Held ||
		e.Lock.RemainingMS != 1000 || !strings.Contains(e.Message, "handed to w") {
		t.Errorf("handoff: %+v lock %+v", e, e.Lock)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	closing := &connLocks{holder: "me", ctx: ctx}
	if e := c.lockError(closing, "r", fmt.Errorf("x: %w", txn.ErrUnavailable)); e.Code != wire.CodeUnavailable ||
		!strings.Contains(e.Message, "stopped reading") {
		t.Errorf("call ended with its connection: %+v", e)
	}
}

// slowReleaseLocks' Release takes a store round trip and honours its
// context, as the Firestore implementation does; it fails the first
// failReleases calls as unavailable.
type slowReleaseLocks struct {
	*txn.Memory
	failReleases atomic.Int64
}

func (s *slowReleaseLocks) Release(ctx context.Context, g txn.Grant) error {
	if s.failReleases.Add(-1) >= 0 {
		return fmt.Errorf("release: %w", txn.ErrUnavailable)
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("release: %w: %w", txn.ErrUnavailable, ctx.Err())
	case <-time.After(50 * time.Millisecond):
	}
	return s.Memory.Release(ctx, g)
}

// TestBoundLockReleaseThenClose: a client that releases a bound lock and
// closes its connection without waiting for the reply leaves no lock held
// (the close used to cut the release short, and no longer saw the grant).
func TestBoundLockReleaseThenClose(t *testing.T) {
	ts := startLockServer(t, &slowReleaseLocks{Memory: txn.NewMemory(nil)}, Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 30_000, 0, true)))
	a.send(&wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token, ID: a.id()})
	time.Sleep(10 * time.Millisecond) // the release is in flight
	a.nc.Close()
	waitFor(t, "the lock released", func() bool { return !b.status("r").Held })
}

// TestBoundLockReleaseFailsThenClose: a bound lock whose release failed
// stays bound to its connection, renewed, and is released when the
// connection closes.
func TestBoundLockReleaseFailsThenClose(t *testing.T) {
	locks := &slowReleaseLocks{Memory: txn.NewMemory(nil)}
	locks.failReleases.Store(1)
	ts := startLockServer(t, locks, Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 30_000, 0, true)))
	lockError(t, a.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: g.Token}), wire.CodeUnavailable)
	if st := b.status("r"); !st.Held || st.Token != g.Token {
		t.Fatalf("after a failed release: %+v, want still held", st)
	}
	a.nc.Close()
	waitFor(t, "the lock released", func() bool { return !b.status("r").Held })
}

// lostReplyLocks' Extend commits (a lease of a minute, so that only a
// release ends it soon), then fails as unavailable (its reply was lost).
type lostReplyLocks struct{ *txn.Memory }

func (l lostReplyLocks) Extend(ctx context.Context, g txn.Grant, lease time.Duration) (txn.Grant, error) {
	if _, err := l.Memory.Extend(ctx, g, time.Minute); err != nil {
		return txn.Grant{}, err
	}
	return txn.Grant{}, fmt.Errorf("extend: %w", txn.ErrUnavailable)
}

// TestBoundLockLostIsReleased: renewals whose replies are lost keep the
// lock held in the store while the sidecar sees its deadline pass. The
// client is told the lock is lost, and then it is: the sidecar releases
// it, rather than leave it held for another lease.
func TestBoundLockLostIsReleased(t *testing.T) {
	ts := startLockServer(t, lostReplyLocks{txn.NewMemory(nil)}, Options{})
	a, b := ts.hello(), ts.hello()
	g := grantOf(t, a.call(acquireReq("r", 600, 0, true)))
	lost := a.recv()
	if !lost.Push || lost.Error == nil || lost.Error.Code != wire.CodeLockLost || lost.Lock == nil || lost.Lock.Token != g.Token {
		t.Fatalf("push after the renewals failed: %+v (error %+v)", lost, lost.Error)
	}
	waitFor(t, "the lost lock released", func() bool { return !b.status("r").Held })
}
