package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Locks: leased, fenced, exclusive locks on named resources, shared by every
// sidecar of a deployment (they need the sidecar's shared store). A grant
// carries a fencing token, larger than every token granted on the resource
// before; writes made under the lock can carry it (Fence) so that the
// sidecar refuses those of a holder that lost the lock.
//
// The sidecar names the holder of a lock after the connection that asked
// for it, and detects deadlocks between holders. So that a goroutine's
// locks have one holder, WithLock runs its function with a context that
// carries a connection of its own, and every lock call made with that
// context (a nested WithLock, Acquire, Extend, Release) goes over it. A
// lock call with any other context uses a connection of the pool, except
// Acquire, which dials one for the call: two goroutines waiting on one
// pooled connection would be one holder waiting for itself.
//
// Errors are *Error replies: ErrLockHeld (Error.Lock says who holds it, or
// in Next which waiter a released lock is being handed to; Error.Waited
// when the wait ended in vain), ErrLockLost (the grant is no
// longer current), ErrDeadlockDetected (Error.Deadlock is the cycle: release
// the locks held and try again), ErrUnavailable (among others: a sidecar
// without a shared store, not retryable).

// MaxLockDuration is the longest lease and the longest wait the sidecar
// accepts.
const MaxLockDuration = 24 * time.Hour

// releaseTimeout bounds the release at the end of WithLock, which runs
// even when the caller's context has ended.
const releaseTimeout = 10 * time.Second

// defaultLockWait is how long WithLock waits for a held lock without a Wait
// option or a context deadline.
const defaultLockWait = 30 * time.Second

// Fence names a lock grant in a fenced write: the write is applied only if
// Token is still the current grant of Resource.
type Fence struct {
	Resource string
	Token    uint64
}

// Lock is a lock grant.
type Lock struct {
	Resource string
	// Holder is the sidecar's name of the holder (a connection).
	Holder string
	// Token is the fencing token.
	Token uint64
	// Lease is the length of the lease.
	Lease time.Duration
	// Expires is when the lease ends by the shared store's clock, as the
	// sidecar reported it; for display.
	Expires time.Time
	// Deadline is when the caller must stop relying on the lock, by this
	// process's clock: the time the request was sent plus Lease.
	Deadline time.Time
	// Bound: the sidecar renews the lease while the connection lives and
	// releases the lock when it closes (WithLock).
	Bound bool
}

// Fence returns the fence of writes made under l.
func (l *Lock) Fence() Fence { return Fence{Resource: l.Resource, Token: l.Token} }

// LockStatus is the state of a resource's lock.
type LockStatus struct {
	Resource string
	// Held is whether a lease runs; Holder, Expires and Remaining describe
	// it.
	Held      bool
	Holder    string
	Expires   time.Time
	Remaining time.Duration
	// Token is the last token granted (0: none known).
	Token uint64
	// Waiters are the holders waiting for the lock.
	Waiters []string
	// Next is the waiter a released lock is being handed to ("" if none):
	// waiters get a lock in the order they began to wait.
	Next string
}

// LockOption sets the lease or the wait of a lock call.
type LockOption func(*lockOptions)

type lockOptions struct {
	lease, wait time.Duration
	waitSet     bool
}

// Lease sets the lease of a grant or an extension (0: the default, 30 s; at
// most MaxLockDuration; rounded up to a millisecond). A lock WithLock binds
// to its connection needs at least 300 ms.
func Lease(d time.Duration) LockOption { return func(o *lockOptions) { o.lease = d } }

// Wait makes Acquire and WithLock wait up to d for a lock that is held
// (0: fail at once with ErrLockHeld; at most MaxLockDuration). The wait
// ends early if the context ends.
func Wait(d time.Duration) LockOption { return func(o *lockOptions) { o.wait, o.waitSet = d, true } }

// lockRequest builds a lock request and checks what the client can.
func lockRequest(op, resource string, opts []LockOption) (*wire.Request, lockOptions, error) {
	var o lockOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := wire.ValidateName("resource", resource); err != nil {
		e := errorf(wire.CodeInvalidArgument, "%v", err)
		e.Field = "resource"
		return nil, o, e
	}
	req := &wire.Request{Op: op, Resource: resource}
	var err error
	if req.LeaseMS, err = lockMillis("lease_ms", o.lease); err == nil {
		req.WaitMS, err = lockMillis("wait_ms", o.wait)
	}
	return req, o, err
}

// lockMillis converts a lease or wait to whole milliseconds, rounded up.
func lockMillis(field string, d time.Duration) (uint64, error) {
	if d < 0 || d > MaxLockDuration {
		e := errorf(wire.CodeInvalidArgument, "%s %v is not within [0, %v]", field, d, MaxLockDuration)
		e.Field = field
		return 0, e
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond), nil
}

// lockFromWire converts a grant; sent is when its request was sent.
func lockFromWire(resp *wire.Response, sent time.Time) (*Lock, error) {
	w := resp.Lock
	if w == nil || w.Token == 0 {
		return nil, protocolErrorf("lock reply carries no grant")
	}
	lease := time.Duration(w.LeaseMS) * time.Millisecond
	return &Lock{Resource: w.Resource, Holder: w.Holder, Token: w.Token, Lease: lease,
		Expires: time.Unix(0, w.Expires), Deadline: sent.Add(lease), Bound: w.Bound}, nil
}

// Acquire takes the lock on resource, unbound: it is held until its lease
// ends (opts: Lease, default 30 s), unless released or extended. With Wait
// it waits for a held lock; otherwise a held lock fails at once with
// ErrLockHeld. Use WithLock for a lock kept while a function runs. If ctx
// ends before the reply, Acquire returns a *CanceledError (errors.Is with
// ctx.Err() holds), and a grant that comes later is released.
func (c *Client) Acquire(ctx context.Context, resource string, opts ...LockOption) (*Lock, error) {
	req, _, err := lockRequest(wire.OpLockAcquire, resource, opts)
	if err != nil {
		return nil, err
	}
	s := sessionFrom(ctx, c)
	private := s == nil
	if private {
		if s, err = c.openSession(ctx); err != nil {
			return nil, err
		}
	}
	sent := time.Now()
	resp, err := s.acquire(ctx, req, private)
	if err != nil {
		return nil, err
	}
	return lockFromWire(resp, sent)
}

// Release gives l up. A grant that is no longer current (its lease ended,
// or another grant took the lock) fails with ErrLockLost.
func (c *Client) Release(ctx context.Context, l *Lock) error {
	req, _, err := lockRequest(wire.OpLockRelease, l.Resource, nil)
	if err != nil {
		return err
	}
	req.Token = l.Token
	_, err = c.lockCall(ctx, req)
	return err
}

// Extend starts a new lease on l (opts: Lease; by default 30 s, or a bound
// lock's own lease) and returns the extended grant. A grant that is no
// longer current fails with ErrLockLost.
func (c *Client) Extend(ctx context.Context, l *Lock, opts ...LockOption) (*Lock, error) {
	req, _, err := lockRequest(wire.OpLockExtend, l.Resource, opts)
	if err != nil {
		return nil, err
	}
	req.Token, req.WaitMS = l.Token, 0
	sent := time.Now()
	resp, err := c.lockCall(ctx, req)
	if err != nil {
		return nil, err
	}
	return lockFromWire(resp, sent)
}

// LockStatus describes the lock on resource.
func (c *Client) LockStatus(ctx context.Context, resource string) (*LockStatus, error) {
	req, _, err := lockRequest(wire.OpLockStatus, resource, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.lockCall(ctx, req)
	if err != nil {
		return nil, err
	}
	w := resp.Lock
	if w == nil {
		return nil, protocolErrorf("lock_status reply carries no lock")
	}
	st := &LockStatus{Resource: w.Resource, Held: w.Held, Holder: w.Holder, Token: w.Token, Waiters: w.Waiters,
		Next: w.Next, Remaining: time.Duration(w.RemainingMS) * time.Millisecond}
	if w.Expires != 0 {
		st.Expires = time.Unix(0, w.Expires)
	}
	return st, nil
}

// lockCall sends a lock request over ctx's lock connection, or the pool.
func (c *Client) lockCall(ctx context.Context, req *wire.Request) (*wire.Response, error) {
	if s := sessionFrom(ctx, c); s != nil {
		return s.do(ctx, req)
	}
	return c.do(ctx, req)
}

// WithLock takes the lock on resource, runs fn while holding it, and
// releases it. fn gets the grant's fence, for fenced writes, and a context
// that is cancelled if the lock is lost; lock calls made with that context
// are made by the same holder (see the package's lock notes), so nested
// WithLock calls can be found in a deadlock.
//
// The lock is bound to a connection of its own: the sidecar extends its
// lease (opts: Lease, default 30 s, at least 300 ms) while fn runs,
// releases it if this process dies (the connection closes), and reports a
// lease it could not extend, which cancels fn's context. WithLock waits for
// a held lock up to the Wait option; without one, until ctx's deadline, or
// 30 s when ctx has none.
//
// WithLock returns fn's error. If the lock was lost while fn ran, the
// error also matches ErrLockLost (or ErrUnavailable, when the connection to
// the sidecar broke): fn may not have run alone. A release that fails
// otherwise is not reported: the lock ends when its connection closes, and
// a nested WithLock, whose lock stays on the outer one's connection, keeps
// trying to release it in the background.
func (c *Client) WithLock(ctx context.Context, resource string, fn func(ctx context.Context, fence Fence) error,
	opts ...LockOption) error {
	req, o, err := lockRequest(wire.OpLockAcquire, resource, opts)
	if err != nil {
		return err
	}
	if !o.waitSet {
		wait := defaultLockWait
		if d, ok := ctx.Deadline(); ok {
			wait = min(max(time.Until(d), 0), MaxLockDuration)
		}
		req.WaitMS, _ = lockMillis("wait_ms", wait)
	}
	req.Bind = true
	s := sessionFrom(ctx, c)
	nested := s != nil
	if !nested {
		if s, err = c.openSession(ctx); err != nil {
			return err
		}
		defer s.close()
	}
	req.ID = c.ids.Add(1)
	lost := s.watchLoss(req.ID)
	defer s.dropLoss(req.ID)
	sent := time.Now()
	resp, err := s.acquire(ctx, req, false) // a bound grant: it ends with the connection too
	if err != nil {
		return err
	}
	l, err := lockFromWire(resp, sent)
	if err != nil {
		return err
	}

	lctx, cancel := context.WithCancelCause(withSession(ctx, s))
	watched := make(chan struct{})
	var lostErr error // why the lock was lost while fn ran; read after watched
	go func() {
		defer close(watched)
		select {
		case e := <-lost:
			lostErr = e
		case <-s.cn.closing:
			s.cn.mu.Lock()
			lostErr = s.cn.errFor(true)
			s.cn.mu.Unlock()
		case <-lctx.Done():
			return
		}
		cancel(lostErr)
	}()
	ferr := fn(lctx, l.Fence())
	cancel(nil)
	<-watched
	if lostErr != nil {
		// Lost: already released, or ending with its lease. Also when ctx
		// ended since: fn may not have run alone.
		return errors.Join(lostErr, ferr)
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer rcancel()
	switch err := c.Release(withSession(rctx, s), l); {
	case errors.Is(err, ErrLockLost):
		return errors.Join(err, ferr)
	case err != nil && nested:
		// The lock stays bound to the outer WithLock's connection, renewed,
		// until that returns: keep trying to release it meanwhile.
		go s.releaseLater(l)
	}
	// Any other failure to release: the lock ends when its connection
	// closes, or with its lease.
	return ferr
}

// releaseLater retries the release of l, a bound lock of the session, until
// it goes through or is lost, the session's connection closes (which
// releases it), or releaseRetries attempts have failed.
func (s *lockSession) releaseLater(l *Lock) {
	wait := 100 * time.Millisecond
	for range releaseRetries {
		select {
		case <-s.cn.closing:
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		err := s.c.Release(withSession(ctx, s), l)
		cancel()
		if err == nil || errors.Is(err, ErrLockLost) {
			return
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// releaseRetries bounds releaseLater: about a minute and a half of tries.
const releaseRetries = 20

// lockSession is a connection of its own that holds locks as one holder:
// WithLock opens one and passes it down in the context of its function.
type lockSession struct {
	c  *Client
	cn *conn

	mu   sync.Mutex
	lost map[uint64]chan *Error // by lock_acquire id: the loss of its bound grant
}

type sessionKey struct{}

// withSession returns ctx carrying s.
func withSession(ctx context.Context, s *lockSession) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

// sessionFrom returns the lock connection ctx carries for c, or nil.
func sessionFrom(ctx context.Context, c *Client) *lockSession {
	s, _ := ctx.Value(sessionKey{}).(*lockSession)
	if s == nil || s.c != c {
		return nil
	}
	return s
}

// openSession dials a connection for lock calls. Client.Close closes it too.
func (c *Client) openSession(ctx context.Context) (*lockSession, error) {
	s := &lockSession{c: c, lost: make(map[uint64]chan *Error)}
	cn, err := c.dialSession(ctx, func(cn *conn) { cn.locks = s })
	if err != nil {
		return nil, err
	}
	s.cn = cn
	return s, nil
}

// close closes the session's connection: the sidecar releases its bound
// locks and ends its waits.
func (s *lockSession) close() { s.c.closeSession(s.cn) }

// dialSession dials a connection of its own for a session (lock calls,
// ServeConflicts): attach runs under the connection's lock before any frame
// can arrive, to route its push frames. Client.Close closes the connection
// too; closeSession closes it earlier.
func (c *Client) dialSession(ctx context.Context, attach func(*conn)) (*conn, error) {
	if _, err := c.getSlots(); err != nil {
		return nil, err
	}
	cn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	cn.mu.Lock()
	attach(cn)
	cn.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cn.close(ErrClosed)
		return nil, ErrClosed
	}
	if c.sessions == nil {
		c.sessions = make(map[*conn]struct{})
	}
	c.sessions[cn] = struct{}{}
	return cn, nil
}

// closeSession closes a connection dialSession opened.
func (c *Client) closeSession(cn *conn) {
	c.mu.Lock()
	delete(c.sessions, cn)
	c.mu.Unlock()
	cn.close(ErrClosed)
}

// send queues req (whose id is set if it has none) on the session's
// connection.
func (s *lockSession) send(req *wire.Request) (*call, error) {
	if req.ID == 0 {
		req.ID = s.c.ids.Add(1)
	}
	frame, err := s.c.encode(req)
	if err != nil {
		return nil, err
	}
	if err := checkLimits(req, len(frame)-wire.HeaderSize, &s.cn.hello); err != nil {
		return nil, err
	}
	cl := &call{id: req.ID, frame: frame, done: make(chan struct{})}
	return cl, s.cn.send(cl)
}

// do sends req and waits for its reply.
func (s *lockSession) do(ctx context.Context, req *wire.Request) (*wire.Response, error) {
	cl, err := s.send(req)
	if err != nil {
		return nil, err
	}
	return reply(s.cn.wait(ctx, cl))
}

// acquire sends a lock_acquire and waits for its reply. If ctx ends first,
// a grant that comes later is released. With private set the session is
// the call's own and is closed once done: after the reply, or, when ctx
// ends first, after that release (closing the connection would not free an
// unbound grant, and would fail the release).
func (s *lockSession) acquire(ctx context.Context, req *wire.Request, private bool) (*wire.Response, error) {
	done := func() {
		if private {
			s.close()
		}
	}
	cl, err := s.send(req)
	if err != nil {
		done()
		return nil, err
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		select {
		case <-cl.done: // the reply came too: use it rather than give it up
		default:
			if s.cn.abandonQueued(cl) {
				done() // never sent: nothing to undo
				return nil, &CanceledError{Err: ctx.Err()}
			}
			go func() { // ends with the reply, or with the connection
				defer done()
				<-cl.done
				if cl.err == nil && cl.resp.Error == nil && cl.resp.Lock != nil {
					rel := &wire.Request{Op: wire.OpLockRelease, Resource: cl.resp.Lock.Resource, Token: cl.resp.Lock.Token}
					rctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
					defer cancel()
					_, _ = s.do(rctx, rel) // failing, it ends with its lease or its connection
				}
			}()
			return nil, &CanceledError{Err: ctx.Err(), Sent: true}
		}
	}
	done()
	return reply(cl.resp, cl.err)
}

// reply turns a reply carrying an error into that error.
func reply(resp *wire.Response, err error) (*wire.Response, error) {
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp, nil
}

// watchLoss returns the channel on which the loss of the bound grant of
// lock_acquire id arrives.
func (s *lockSession) watchLoss(id uint64) <-chan *Error {
	ch := make(chan *Error, 1)
	s.mu.Lock()
	s.lost[id] = ch
	s.mu.Unlock()
	return ch
}

func (s *lockSession) dropLoss(id uint64) {
	s.mu.Lock()
	delete(s.lost, id)
	s.mu.Unlock()
}

// push takes a push frame of the session's connection: the loss of a bound
// grant. The connection's reader calls it: it does not block.
func (s *lockSession) push(resp *wire.Response) {
	if resp.Error == nil {
		return
	}
	s.mu.Lock()
	ch := s.lost[resp.ID]
	s.mu.Unlock()
	if ch != nil {
		select {
		case ch <- resp.Error:
		default:
		}
	}
}
