package sockapi

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/txn"
)

// The lock ops, lock_acquire, lock_release, lock_extend and lock_status,
// serve Options.Locks (docs/protocol.md, "Locks";
// docs/decisions/0012-lock-ops.md):
//
//   - The holder of a lock is the connection. Its holder id names the node,
//     this process (a random id drawn at start, so that a restarted sidecar
//     never reuses a holder id) and the connection; the waits of every
//     sidecar's connections form one wait-for graph.
//   - A grant is named by its resource and token: lock_release and
//     lock_extend work on any connection (the CLI releases a grant whose
//     process has exited). A connection waits for one lock at a time.
//   - A bound lock (bind) is extended by the server every third of its lease
//     while the connection lives, and released when the connection stops
//     reading. A renewal that fails for good is reported in a push frame
//     (LockLost, with the request id of the lock_acquire). An unbound grant
//     outlives its connection and ends with its lease.
//   - Lock ops run on goroutines (goLock), never on the reader: they call the
//     shared store, and an acquire may wait. A connection that holds bound
//     locks or waits for a lock is not idle (idleButLocking).

// Limits of the lock ops.
const (
	// maxBoundLocks caps the bound locks of one connection.
	maxBoundLocks = 256
	// minBoundLease is the shortest lease of a bound lock: the server
	// extends it every third of its lease.
	minBoundLease = 300 * time.Millisecond
	// lockCallTimeout bounds a call to the lock service beyond an acquire's
	// wait, and the release of a closing connection's bound locks.
	lockCallTimeout = 10 * time.Second
	// maxHolderNode is the most bytes of the node id a holder id repeats.
	maxHolderNode = 256
)

// holderNames makes the holder ids of one server: node id, a random id of
// the process, connection number.
type holderNames struct {
	once sync.Once
	base string
}

// forConn returns the holder id of connection conn.
func (h *holderNames) forConn(node string, conn uint64) string {
	h.once.Do(func() {
		if len(node) > maxHolderNode {
			node = strings.ToValidUTF8(node[:maxHolderNode], "")
		}
		h.base = node + "." + strings.ToLower(rand.Text()[:12])
	})
	return h.base + "." + strconv.FormatUint(conn, 10)
}

// connLocks is a connection's lock state.
type connLocks struct {
	holder string
	// ctx ends when the connection stops reading: it ends the waits and
	// the renewals.
	ctx      context.Context
	cancel   context.CancelFunc
	renewers sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	waiting string                // the resource an acquire waits for; "" when none
	bound   map[string]*boundLock // bound grants by resource
	binding int                   // bound acquires in flight
}

// boundLock is a grant bound to the connection, and its renewer.
type boundLock struct {
	id    uint64    // the lock_acquire's request id, for the push frame
	grant txn.Grant // guarded by connLocks.mu
	stop  context.CancelFunc
	done  chan struct{} // closed when the renewer has returned
}

// lockState returns the connection's lock state, made on first use. Only
// the reader calls it.
func (c *conn) lockState() *connLocks {
	if c.locks == nil {
		ctx, cancel := context.WithCancel(c.ctx)
		c.locks = &connLocks{
			holder: c.s.holders.forConn(c.s.store.NodeID(), c.id),
			ctx:    ctx,
			cancel: cancel,
			bound:  make(map[string]*boundLock),
		}
	}
	return c.locks
}

// busy reports whether the connection holds bound locks or waits for one.
func (l *connLocks) busy() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting != "" || len(l.bound) > 0 || l.binding > 0
}

// idleButLocking reports whether err, from the reader, is the idle timeout
// of a connection that holds bound locks, waits for a lock, decides
// conflicts for an app (resolver.go) or runs watches (watch.go), and then arms
// the idle deadline again: such a connection is not idle. A frame that has
// begun to arrive keeps its deadlines (idle or read timeout).
func (c *conn) idleButLocking(err error) bool {
	if c.stopping.Load() || c.framing || !isTimeout(err) || !(c.locks != nil && c.locks.busy() || c.resolving() || c.watching()) {
		return false
	}
	c.idleAt = time.Now().Add(c.s.opts.IdleTimeout)
	c.probing = false
	c.setReadDeadline(c.idleAt)
	return true
}

// opLock serves the lock ops. Checks: the lock service, then the resource,
// then the op's fields.
func (c *conn) opLock(op int, req *wire.Request) {
	if c.s.opts.Locks == nil {
		e := wire.Errorf(wire.CodeUnavailable,
			"locks need the shared store, and none is configured: this sidecar is local only (tai-sidecar serve --firestore-project)")
		e.Retryable = false
		c.replyError(req.ID, e)
		return
	}
	if e := checkName("resource", "resource", req.Resource); e != nil {
		c.replyError(req.ID, e)
		return
	}
	l := c.lockState()
	var e *wire.Error
	switch op {
	case opLockAcquire:
		e = c.lockAcquire(l, req)
	case opLockRelease:
		e = c.lockRelease(l, req)
	case opLockExtend:
		e = c.lockExtend(l, req)
	default:
		res := req.Resource
		c.goLock(req.ID, func() *wire.Response {
			ctx, cancel := context.WithTimeout(l.ctx, lockCallTimeout)
			defer cancel()
			st, err := c.s.opts.Locks.Status(ctx, res)
			if err != nil {
				return c.errorResponse(c.lockError(l, res, err))
			}
			return &wire.Response{Lock: statusToWire(st)}
		})
	}
	if e != nil {
		c.replyError(req.ID, e)
	}
}

// lockAcquire checks and starts a lock_acquire.
func (c *conn) lockAcquire(l *connLocks, req *wire.Request) *wire.Error {
	lease, e := lockDuration("lease_ms", req.LeaseMS)
	if e != nil {
		return e
	}
	if lease == 0 {
		lease = txn.DefaultLease
	}
	wait, e := lockDuration("wait_ms", req.WaitMS)
	if e != nil {
		return e
	}
	res, bind := req.Resource, req.Bind
	if bind && lease < minBoundLease {
		return invalid("lease_ms", "a bound lock's lease must be at least %d ms: the sidecar extends it every third of it",
			minBoundLease.Milliseconds())
	}
	l.mu.Lock()
	switch {
	case wait > 0 && l.waiting != "":
		e = invalid("wait_ms", "this connection already waits for lock %q: a connection waits for one lock at a time", l.waiting)
	case bind && len(l.bound)+l.binding >= maxBoundLocks:
		e = tooLarge("bind", maxBoundLocks, "this connection holds %d bound locks, limit %d", len(l.bound)+l.binding, maxBoundLocks)
	}
	if e == nil && wait > 0 {
		l.waiting = res
	}
	if e == nil && bind {
		l.binding++
	}
	l.mu.Unlock()
	if e != nil {
		return e
	}
	id := req.ID
	c.goLock(id, func() *wire.Response {
		ctx, cancel := context.WithTimeout(l.ctx, wait+lockCallTimeout)
		defer cancel()
		g, err := c.s.opts.Locks.Acquire(ctx, res, l.holder, lease, wait)
		l.mu.Lock()
		if wait > 0 {
			l.waiting = ""
		}
		closed := l.closed
		if bind {
			l.binding--
			if err == nil && !closed {
				c.bindLocked(l, id, g)
			}
		}
		l.mu.Unlock()
		switch {
		case err != nil:
			return c.errorResponse(c.lockError(l, res, err))
		case bind && closed:
			c.releaseBound([]txn.Grant{g})
			return c.errorResponse(wire.Errorf(wire.CodeUnavailable,
				"the connection stopped reading: the bound lock it was granted is released"))
		}
		c.observeGrant(ctx, g.Resource, g.Token) // fence.go
		return &wire.Response{Lock: grantToWire(g, bind)}
	})
	return nil
}

// lockRelease checks and starts a lock_release.
func (c *conn) lockRelease(l *connLocks, req *wire.Request) *wire.Error {
	if req.Token == 0 {
		return invalid("token", "token is required and must not be 0")
	}
	res, token := req.Resource, req.Token
	c.goLock(req.ID, func() *wire.Response {
		g, acquireID, bound := l.unbind(res, token)
		parent := l.ctx
		if bound {
			// The release of a bound lock outlives the connection: a
			// client may send it and close at once, and the connection's
			// close no longer sees the grant.
			parent = c.ctx
		}
		ctx, cancel := context.WithTimeout(parent, lockCallTimeout)
		defer cancel()
		g, err := onGrant(g, func(g txn.Grant) (txn.Grant, error) { return g, c.s.opts.Locks.Release(ctx, g) })
		if bound && err != nil && !errors.Is(err, txn.ErrLockLost) {
			// Not released: the lock stays bound to the connection, so
			// that it is renewed, and released when the connection closes.
			c.keepBound(l, acquireID, g)
		}
		if err != nil {
			return c.errorResponse(c.lockError(l, res, err))
		}
		return &wire.Response{Lock: &wire.Lock{Resource: res, Holder: g.Holder, Token: token}}
	})
	return nil
}

// lockExtend checks and starts a lock_extend. lease_ms 0 keeps a bound
// lock's lease, and is txn.DefaultLease for any other grant (whose lease
// this connection may not know).
func (c *conn) lockExtend(l *connLocks, req *wire.Request) *wire.Error {
	if req.Token == 0 {
		return invalid("token", "token is required and must not be 0")
	}
	lease, e := lockDuration("lease_ms", req.LeaseMS)
	if e != nil {
		return e
	}
	res, token := req.Resource, req.Token
	l.mu.Lock()
	if b := l.bound[res]; b != nil && b.grant.Token == token && lease != 0 && lease < minBoundLease {
		e = invalid("lease_ms", "a bound lock's lease must be at least %d ms: the sidecar extends it every third of it",
			minBoundLease.Milliseconds())
	}
	l.mu.Unlock()
	if e != nil {
		return e
	}
	c.goLock(req.ID, func() *wire.Response {
		g, acquireID, bound := l.unbind(res, token)
		if lease == 0 && !bound {
			lease = txn.DefaultLease
		}
		ctx, cancel := context.WithTimeout(l.ctx, lockCallTimeout)
		defer cancel()
		ng, err := onGrant(g, func(g txn.Grant) (txn.Grant, error) { return c.s.opts.Locks.Extend(ctx, g, lease) })
		if bound && !errors.Is(err, txn.ErrLockLost) {
			if err != nil {
				ng = g // not extended: the renewer carries on with the grant it had
			}
			c.keepBound(l, acquireID, ng)
		}
		if err != nil {
			return c.errorResponse(c.lockError(l, res, err))
		}
		return &wire.Response{Lock: grantToWire(ng, bound)}
	})
	return nil
}

// onGrant calls fn with g, whose holder is this connection's. A grant is
// named by its resource and token: if the lock's current grant has g's
// token but another holder (a grant of another connection, or another
// sidecar), fn is called again with that holder.
func onGrant(g txn.Grant, fn func(txn.Grant) (txn.Grant, error)) (txn.Grant, error) {
	out, err := fn(g)
	var lost *txn.LostError
	if errors.As(err, &lost) && lost.Token == g.Token && lost.Holder != "" && lost.Holder != g.Holder {
		g.Holder = lost.Holder
		return fn(g)
	}
	return out, err
}

// unbind takes the bound grant of resource with token out of the
// connection's bound locks and stops its renewer, and returns it with the
// request id of its lock_acquire. bound is false (and g the grant as this
// connection would hold it) when there is none.
func (l *connLocks) unbind(resource string, token uint64) (g txn.Grant, acquireID uint64, bound bool) {
	l.mu.Lock()
	b := l.bound[resource]
	if b == nil || b.grant.Token != token {
		l.mu.Unlock()
		return txn.Grant{Resource: resource, Holder: l.holder, Token: token}, 0, false
	}
	delete(l.bound, resource)
	l.mu.Unlock()
	b.stop()
	<-b.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return b.grant, b.id, true
}

// keepBound binds g, a grant an op unbound, to the connection again, or
// releases it if the connection has closed meanwhile.
func (c *conn) keepBound(l *connLocks, id uint64, g txn.Grant) {
	l.mu.Lock()
	closed := l.closed
	if !closed {
		c.bindLocked(l, id, g)
	}
	l.mu.Unlock()
	if closed {
		c.releaseBound([]txn.Grant{g})
	}
}

// bindLocked binds g to the connection and starts its renewer. l.mu must
// be held and l not closed.
func (c *conn) bindLocked(l *connLocks, id uint64, g txn.Grant) {
	ctx, stop := context.WithCancel(l.ctx)
	b := &boundLock{id: id, grant: g, stop: stop, done: make(chan struct{})}
	l.bound[g.Resource] = b
	l.renewers.Add(1)
	go c.renew(l, b, ctx)
}

// renew extends b's lease every third of it until ctx ends. A renewal that
// finds the lock lost, or that has not succeeded by the grant's deadline,
// reports the loss (lockLost); a failure before that is retried every
// tenth of the lease.
func (c *conn) renew(l *connLocks, b *boundLock, ctx context.Context) {
	defer l.renewers.Done()
	defer close(b.done)
	defer c.endOnPanic()
	l.mu.Lock()
	g := b.grant
	l.mu.Unlock()
	timer := time.NewTimer(time.Until(nextRenewal(g)))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		cctx, cancel := context.WithDeadline(ctx, g.Deadline)
		ng, err := c.s.opts.Locks.Extend(cctx, g, g.Lease)
		cancel()
		if err == nil {
			// Kept even when stopped meanwhile: whoever stopped it takes
			// over the grant with its latest deadline.
			l.mu.Lock()
			b.grant = ng
			l.mu.Unlock()
			g = ng
		}
		switch {
		case ctx.Err() != nil:
			return // stopped: whoever stopped it takes over the grant
		case err == nil:
			timer.Reset(time.Until(nextRenewal(g)))
		case errors.Is(err, txn.ErrLockLost) || !time.Now().Before(g.Deadline):
			c.lockLost(l, b, g, err)
			return
		default:
			c.log.Warn("renewing a bound lock failed; retrying", "resource", g.Resource, "token", g.Token, "err", err)
			timer.Reset(min(g.Lease/10, time.Until(g.Deadline)))
		}
	}
}

// nextRenewal is when a bound grant is extended: a third into its lease.
func nextRenewal(g txn.Grant) time.Time {
	return g.Deadline.Add(-g.Lease * 2 / 3)
}

// lockLost drops a bound grant that could not be renewed and tells the
// client in a push frame, unless the grant was unbound meanwhile (the op
// that unbound it reports the outcome).
func (c *conn) lockLost(l *connLocks, b *boundLock, g txn.Grant, err error) {
	l.mu.Lock()
	mine := l.bound[g.Resource] == b
	if mine {
		delete(l.bound, g.Resource)
	}
	l.mu.Unlock()
	if !mine {
		return
	}
	e := c.lockError(l, g.Resource, err)
	if e.Code != wire.CodeLockLost {
		e = wire.Errorf(wire.CodeLockLost, "lock %q: grant %d: the lease ended before the sidecar could extend it (%s)",
			g.Resource, g.Token, e.Message)
		e.Lock = &wire.Lock{Resource: g.Resource}
	}
	c.log.Info("bound lock lost", "resource", g.Resource, "token", g.Token, "err", err)
	c.s.counters.countError(e.Code)
	c.out.putPush(&wire.Response{ID: b.id, Push: true, Lock: grantToWire(g, true), Error: e})
	c.out.flush()
	if !errors.Is(err, txn.ErrLockLost) {
		// The deadline passed with the renewals failing; the last one may
		// have been committed all the same. The client was told the lock
		// is lost: make it so, rather than let it be held for a lease.
		c.releaseBound([]txn.Grant{g})
	}
}

// closeLocks ends the connection's lock state when it stops reading: waits
// end, renewals stop, and bound locks are released.
func (c *conn) closeLocks() {
	l := c.locks
	if l == nil {
		return
	}
	l.mu.Lock()
	l.closed = true
	bound := make([]*boundLock, 0, len(l.bound))
	for _, b := range l.bound {
		bound = append(bound, b)
	}
	l.bound = nil
	l.mu.Unlock()
	l.cancel()
	l.renewers.Wait()
	grants := make([]txn.Grant, len(bound))
	for i, b := range bound {
		grants[i] = b.grant // the renewers have returned
	}
	c.releaseBound(grants)
}

// releaseBound releases bound grants the connection gave up (it stopped
// reading, or a grant's renewals failed past its deadline), at once, for at
// most lockCallTimeout (less if the server stops hard). A grant that cannot
// be released ends with its lease.
func (c *conn) releaseBound(grants []txn.Grant) {
	if len(grants) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, lockCallTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, g := range grants {
		wg.Go(func() {
			if err := c.s.opts.Locks.Release(ctx, g); err != nil {
				c.log.Info("releasing a bound lock the connection gave up failed; it ends with its lease",
					"resource", g.Resource, "token", g.Token, "err", err)
				return
			}
			c.log.Debug("bound lock released", "resource", g.Resource, "token", g.Token)
		})
	}
	wg.Wait()
}

// goLock runs fn, a lock op, on its own goroutine, in a write slot (so that
// a connection runs at most MaxInflight of them and its writes together),
// and queues its reply. Unlike goWrite it takes no place in the order of
// writes: lock ops touch no state. A lock op's reply has no value: it
// reserves frameReserve for it (see goWrite).
func (c *conn) goLock(id uint64, fn func() *wire.Response) {
	reserve := c.takeSlot(c.replyReserve(frameReserve))
	end := c.takeObservation()
	c.writes.Add(1)
	go func() {
		defer c.writes.Done()
		defer c.endOnPanic()
		defer func() { <-c.sem }()
		queued := false
		defer func() {
			if !queued {
				c.out.release(reserve)
			}
		}()
		resp := fn()
		resp.ID = id
		queued = true
		c.out.putAsync(resp, reserve)
		if end != nil {
			end(replyCodeOf(resp))
		}
	}()
}

// lockDuration reads lease_ms or wait_ms: at most txn.MaxLease.
func lockDuration(field string, ms uint64) (time.Duration, *wire.Error) {
	if limit := uint64(txn.MaxLease.Milliseconds()); ms > limit {
		return 0, invalid(field, "%s %d is over the limit of %d (%v)", field, ms, limit, txn.MaxLease)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// ceilMS is d in whole milliseconds, rounded up (0 for d <= 0).
func ceilMS(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}

func grantToWire(g txn.Grant, bound bool) *wire.Lock {
	return &wire.Lock{
		Resource: g.Resource,
		Holder:   g.Holder,
		Token:    g.Token,
		LeaseMS:  ceilMS(g.Lease),
		Expires:  g.Expires.UnixNano(),
		Deadline: g.Deadline.UnixNano(),
		Bound:    bound,
	}
}

func statusToWire(st txn.Status) *wire.Lock {
	w := &wire.Lock{Resource: st.Resource, Token: st.Token, Held: st.Held, Waiters: st.Waiters, Next: st.Next}
	if st.Held {
		w.Holder, w.Expires, w.RemainingMS = st.Holder, st.Expires.UnixNano(), ceilMS(st.Remaining)
	}
	return w
}

// lockError translates an error of the lock service into the reply's
// error. The store's own messages are logged, never sent.
func (c *conn) lockError(l *connLocks, resource string, err error) *wire.Error {
	var (
		held *txn.HeldError
		lost *txn.LostError
		dead *txn.DeadlockError
		e    *wire.Error
	)
	switch {
	case errors.As(err, &held):
		who := held.Holder
		if who == l.holder {
			who = "this connection (locks are not re-entrant)"
		}
		left := time.Duration(ceilMS(held.Remaining)) * time.Millisecond
		if held.Handoff {
			e = wire.Errorf(wire.CodeLockHeld, "lock %q was released and is being handed to %s, which waited for it "+
				"longer, for at most %v more", held.Resource, held.Holder, left)
			e.Lock = &wire.Lock{Resource: held.Resource, Token: held.Token, Next: held.Holder,
				Expires: held.Expires.UnixNano(), RemainingMS: ceilMS(held.Remaining)}
		} else {
			e = wire.Errorf(wire.CodeLockHeld, "lock %q is held by %s with token %d for %v more", held.Resource, who,
				held.Token, left)
			e.Lock = &wire.Lock{Resource: held.Resource, Holder: held.Holder, Token: held.Token, Held: true,
				Expires: held.Expires.UnixNano(), RemainingMS: ceilMS(held.Remaining)}
		}
		if held.Waited {
			e.Message += ": the wait ended"
			e.Waited = true
		}
	case errors.As(err, &lost):
		e = wire.Errorf(wire.CodeLockLost, "%s", lost.Error())
		e.Lock = &wire.Lock{Resource: lost.Grant.Resource, Holder: lost.Holder, Token: lost.Token, Held: lost.Holder != "" && !lost.Expired}
	case errors.As(err, &dead):
		e = wire.Errorf(wire.CodeDeadlockDetected, "waiting for lock %q would deadlock; this connection is the victim: "+
			"release the locks it holds and try again (%s)", resource, dead.Deadlock.String())
		d := &wire.Deadlock{Victim: dead.Victim}
		for _, w := range dead.Cycle {
			d.Cycle = append(d.Cycle, wire.WaitEdge(w))
		}
		e.Deadlock = d
	case errors.Is(err, txn.ErrInvalid):
		// The server's checks should have caught it first.
		c.log.Warn("lock service rejected a request the server accepted", "resource", resource, "err", err)
		e = invalid("", "%v", err)
	case l.ctx.Err() != nil:
		e = wire.Errorf(wire.CodeUnavailable, "the connection stopped reading (or the sidecar is shutting down): the lock call was abandoned")
	case errors.Is(err, txn.ErrUnavailable):
		c.log.Debug("lock service unavailable", "resource", resource, "err", err)
		e = wire.Errorf(wire.CodeUnavailable,
			"the shared store did not answer the lock call (it may have taken effect: a grant ends with its lease)")
	case errors.Is(err, txn.ErrPermanent):
		c.log.Error("the shared store refused a lock call", "resource", resource, "err", err)
		e = wire.Errorf(wire.CodeUnavailable, "the shared store refused the lock call; see the sidecar's log")
		e.Retryable = false
	default:
		c.log.Error("lock call failed", "resource", resource, "err", err)
		return wire.Errorf(wire.CodeInternal, "internal error")
	}
	return e
}
