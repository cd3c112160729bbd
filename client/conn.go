package client

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Call states. A call is queued until the writer takes it; a waiter that
// leaves while its call is still queued marks it abandoned, and the writer
// then skips it, so the request never reaches the sidecar.
const (
	callQueued uint32 = iota
	callSent
	callAbandoned
)

// call is one request waiting for its reply.
type call struct {
	id    uint64
	frame []byte // the encoded request frame, header included
	state atomic.Uint32
	done  chan struct{} // closed once resp or err is set
	resp  *wire.Response
	err   error
}

// ioBufSize is the size of each connection's read buffer.
const ioBufSize = 64 << 10

// conn is one connection to the sidecar. Callers queue encoded requests
// under mu; its writer goroutine takes the whole queue each time it wakes
// and writes it with one vectored write, so requests queued while a write is
// in progress share the next one. Its reader goroutine hands each reply to
// the call waiting for its id. Both stop when the connection fails or is
// closed.
type conn struct {
	nc     net.Conn
	socket string
	hello  wire.Hello // as announced, with zero limits replaced by defaults
	// writeTimeout is Client.WriteTimeout with the default applied (<= 0:
	// none); the writer's deadline follows it (see writeDeadline).
	writeTimeout time.Duration

	dead     atomic.Bool  // set by fail
	inflight atomic.Int64 // calls in pending
	// idleAfter is half the sidecar's idle timeout (0: it has none); used
	// is when a call was last sent or answered (Unix ns). See retireIdle.
	idleAfter time.Duration
	used      atomic.Int64

	mu      sync.Mutex
	pending map[uint64]*call  // queued or sent, awaiting a reply
	queue   []*call           // not yet taken by the writer
	err     error             // why the connection failed
	wrErr   error             // why writing failed: the reader drains replies, then fails with it
	watches map[uint64]*Watch // running watches, by id: see watch.go
	locks   *lockSession      // set on a lock connection: see locks.go
	// resolver is set on ServeConflicts's connection: see resolver.go.
	resolver *resolverSession

	wake    chan struct{} // capacity 1: the queue is not empty
	closing chan struct{} // closed by fail
	wg      sync.WaitGroup
}

// aLongTimeAgo is a deadline in the past: setting it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// handshake sends hello on nc and reads the reply. ctx bounds it.
func handshake(ctx context.Context, nc net.Conn, br *bufio.Reader, id uint64, name string) (h wire.Hello, err error) {
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	defer func() {
		if !stop() {
			// ctx ended during the handshake: its I/O may have been cut short.
			if err == nil {
				err = ctx.Err()
			}
			return
		}
		nc.SetDeadline(time.Time{})
	}()

	cd := wire.NewCodec()
	frame, err := cd.AppendFrame(nil, &wire.Request{
		ID:       id,
		Op:       wire.OpHello,
		Versions: []uint32{wire.ProtocolVersion},
		Client:   name,
	})
	if err != nil {
		return h, err
	}
	if _, err := nc.Write(frame); err != nil {
		return h, err
	}
	body, err := wire.ReadFrame(br, nil, wire.DefaultMaxFrame)
	if err != nil {
		return h, err
	}
	var resp wire.Response
	if err := cd.Decode(body, &resp); err != nil {
		return h, protocolErrorf("decode hello reply: %v", err)
	}
	switch {
	case resp.Error != nil:
		return h, resp.Error
	case resp.Hello == nil:
		return h, protocolErrorf("hello reply carries no hello")
	case resp.Hello.Version != wire.ProtocolVersion:
		return h, protocolErrorf("sidecar chose protocol version %d; this client speaks %d",
			resp.Hello.Version, wire.ProtocolVersion)
	}
	h = *resp.Hello
	if h.MaxFrame <= 0 {
		h.MaxFrame = wire.DefaultMaxFrame
	}
	if h.MaxValue <= 0 {
		h.MaxValue = wire.MaxValueSize
	}
	if h.MaxBatch <= 0 {
		h.MaxBatch = wire.MaxBatch
	}
	return h, nil
}

// newConn starts the reader and writer of a connection whose handshake is
// done. br holds whatever was read past the hello reply.
func newConn(nc net.Conn, br *bufio.Reader, socket string, h wire.Hello, writeTimeout time.Duration) *conn {
	c := &conn{
		nc:           nc,
		socket:       socket,
		hello:        h,
		writeTimeout: writeTimeout,
		pending:      make(map[uint64]*call),
		wake:         make(chan struct{}, 1),
		closing:      make(chan struct{}),
		idleAfter:    time.Duration(h.IdleTimeoutMS) * time.Millisecond / 2,
	}
	c.used.Store(time.Now().UnixNano())
	maxFrame := max(h.MaxFrame, wire.DefaultMaxFrame)
	c.wg.Add(2)
	go c.readLoop(br, maxFrame)
	go c.writeLoop()
	return c
}

// send queues cl for the writer. It fails, without sending, when the
// connection has already failed.
func (c *conn) send(cl *call) error {
	c.mu.Lock()
	if c.err != nil || c.wrErr != nil {
		err := c.errFor(false)
		c.mu.Unlock()
		return err
	}
	c.pending[cl.id] = cl
	c.inflight.Add(1)
	c.queue = append(c.queue, cl)
	c.mu.Unlock()
	if c.idleAfter > 0 {
		c.used.Store(time.Now().UnixNano())
	}
	select {
	case c.wake <- struct{}{}:
	default: // the writer is already due to run
	}
	return nil
}

// wait waits for cl's reply or for ctx to end. A waiter that leaves drops
// its call: a reply that arrives later is discarded, and a call the writer
// has not taken yet is never sent.
func (c *conn) wait(ctx context.Context, cl *call) (*wire.Response, error) {
	select {
	case <-cl.done:
		return cl.resp, cl.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	_, waiting := c.pending[cl.id]
	if waiting {
		delete(c.pending, cl.id)
		c.inflight.Add(-1)
	}
	c.mu.Unlock()
	if !waiting {
		// Answered (or failed) while ctx ended: the outcome is known, use it.
		<-cl.done
		return cl.resp, cl.err
	}
	sent := !cl.state.CompareAndSwap(callQueued, callAbandoned)
	return nil, &CanceledError{Err: ctx.Err(), Sent: sent}
}

// abandonQueued drops cl if the writer has not taken it yet, so that it is
// never sent, and reports whether it did.
func (c *conn) abandonQueued(cl *call) bool {
	if !cl.state.CompareAndSwap(callQueued, callAbandoned) {
		return false
	}
	c.mu.Lock()
	if _, ok := c.pending[cl.id]; ok {
		delete(c.pending, cl.id)
		c.inflight.Add(-1)
	}
	c.mu.Unlock()
	return true
}

// writeLoop writes queued calls. Everything queued when it wakes goes out
// in one vectored write, so requests queued while a write is in progress
// share the next one.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	var (
		batch    []*call
		sent     []*call
		bufs     net.Buffers
		deadline time.Time
	)
	for {
		select {
		case <-c.wake:
		case <-c.closing:
			return
		}
		c.mu.Lock()
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()

		sent, bufs = sent[:0], bufs[:0]
		for i, cl := range batch {
			batch[i] = nil
			if cl.state.CompareAndSwap(callQueued, callSent) {
				sent = append(sent, cl)
				bufs = append(bufs, cl.frame)
			}
		}
		if len(sent) == 0 {
			continue
		}
		todo := bufs // WriteTo consumes its receiver
		var n int64
		var err error
		for {
			if c.writeTimeout > 0 {
				var moved bool
				if deadline, moved = writeDeadline(deadline, c.writeTimeout); moved {
					c.nc.SetWriteDeadline(deadline)
				}
			}
			var m int64
			m, err = todo.WriteTo(c.nc)
			n += m
			if m > 0 && len(todo) > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				// The sidecar reads, slowly (it holds requests back
				// while many wait for the shared store): only a write
				// that makes no progress for writeTimeout gives up.
				continue
			}
			break
		}
		if err != nil {
			// Calls none of whose bytes left were not sent: fail them as
			// such, so that they are retried on a new connection.
			var off int64
			for _, cl := range sent {
				if off >= n {
					cl.state.CompareAndSwap(callSent, callQueued)
				}
				off += int64(len(cl.frame))
			}
			c.writeFailed(&ConnError{Op: "write", Socket: c.socket, Err: err})
			return
		}
		clear(sent)
		clear(bufs)
	}
}

// writeDeadline returns the write deadline d moved, if less than t is left
// before it, to t and an eighth from now, and whether it moved. Moving a
// deadline costs a timer update in the runtime: a busy connection moves it
// about once per t/8 rather than for every write, and every write still
// has at least t.
func writeDeadline(d time.Time, t time.Duration) (time.Time, bool) {
	now := time.Now()
	if !d.Before(now.Add(t)) {
		return d, false
	}
	return now.Add(t + t/8), true
}

// readLoop reads replies and hands each to its call.
func (c *conn) readLoop(br *bufio.Reader, maxFrame int) {
	defer c.wg.Done()
	cd := wire.NewReplyCodec()
	var buf []byte
	for {
		body, err := wire.ReadFrame(br, buf, maxFrame)
		if err != nil {
			c.mu.Lock()
			cause := c.wrErr
			c.mu.Unlock()
			if cause == nil {
				cause = &ConnError{Op: "read", Socket: c.socket, Err: err}
			}
			c.fail(cause)
			return
		}
		if cap(body) <= ioBufSize {
			buf = body // reuse: decoding copies what it keeps
		} else {
			buf = nil // do not pin a rare large buffer
		}
		resp := new(wire.Response)
		if err := cd.Decode(body, resp); err != nil {
			c.fail(&ConnError{Op: "read", Socket: c.socket, Err: protocolErrorf("decode reply: %v", err)})
			return
		}
		if resp.Push {
			// A server-push frame: it answers no request.
			c.push(resp)
			continue
		}
		if resp.ID == 0 {
			// An error about the connection itself: the sidecar closes it next.
			var cause error = protocolErrorf("reply without request id")
			if resp.Error != nil {
				cause = resp.Error
			}
			c.fail(&ConnError{Op: "read", Socket: c.socket, Err: cause})
			return
		}
		c.mu.Lock()
		cl := c.pending[resp.ID]
		if cl != nil {
			delete(c.pending, resp.ID)
			c.inflight.Add(-1)
		}
		c.mu.Unlock()
		if cl == nil {
			continue // its waiter left
		}
		if c.idleAfter > 0 {
			c.used.Store(time.Now().UnixNano())
		}
		cl.resp = resp
		close(cl.done)
	}
}

// errIdle is why a connection idle for half the sidecar's idle timeout is
// given up.
var errIdle = errors.New("idle for half the sidecar's idle timeout")

// retireIdle gives the connection up if it has been idle for half the
// sidecar's idle timeout, and reports whether it did. The sidecar may close
// an idle connection just as a request arrives on it, and that request's
// outcome would be unknown: a new connection is dialled instead. A
// connection with a watch, a lock session or a conflict resolver is kept:
// the sidecar does not count it as idle.
func (c *conn) retireIdle() bool {
	if c.idleAfter <= 0 || c.inflight.Load() > 0 || time.Since(time.Unix(0, c.used.Load())) < c.idleAfter {
		return false
	}
	c.mu.Lock()
	if c.err != nil || c.wrErr != nil || len(c.pending) > 0 || len(c.watches) > 0 || c.locks != nil || c.resolver != nil {
		c.mu.Unlock()
		return false
	}
	// From here no call is queued on it: send sees wrErr.
	cause := &ConnError{Op: "send", Socket: c.socket, Err: errIdle}
	c.wrErr = cause
	c.mu.Unlock()
	c.fail(cause)
	return true
}

// drainTimeout bounds how long the reader keeps reading after a write
// failed.
const drainTimeout = 2 * time.Second

// writeFailed ends the connection after a failed write. The sidecar may
// have answered requests before it stopped reading (a graceful shutdown
// does): their replies may still be unread, so the reader takes them, for
// at most drainTimeout, before failing the connection with cause. A call
// the sidecar answered thus gets its answer, not a connection error that
// leaves its outcome unknown. No new call is sent meanwhile, and the calls
// none of whose bytes were sent fail at once, as not sent: they are sent
// again on a new connection, without waiting for the drain.
func (c *conn) writeFailed(cause error) {
	c.mu.Lock()
	c.wrErr = cause
	var unsent []*call
	for id, cl := range c.pending {
		if cl.state.CompareAndSwap(callQueued, callAbandoned) {
			delete(c.pending, id)
			unsent = append(unsent, cl)
		}
	}
	c.queue = nil
	c.inflight.Add(-int64(len(unsent)))
	errs := make([]error, len(unsent))
	for i := range unsent {
		errs[i] = c.errFor(false)
	}
	c.dead.Store(true) // before any call can see wrErr and look for another connection
	c.mu.Unlock()
	for i, cl := range unsent {
		cl.err = errs[i]
		close(cl.done)
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(drainTimeout)); err != nil {
		c.fail(cause)
	}
}

// draining reports whether the connection's write failed and its reader
// is still taking the replies sent before (writeFailed).
func (c *conn) draining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wrErr != nil && c.err == nil
}

// errFor returns the error for a call on the failed connection (or, while
// the reader drains it, one whose writing failed). c.mu must be held.
func (c *conn) errFor(sent bool) error {
	err := c.err
	if err == nil {
		err = c.wrErr
	}
	ce, ok := err.(*ConnError)
	if !ok {
		return err
	}
	e := *ce
	e.Sent = sent
	return &e
}

// fail marks the connection failed with cause, closes it and fails every
// waiting call. Only the first cause counts, and a failed write comes first,
// except for ErrClosed: Close promises it to every call in flight.
func (c *conn) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if c.wrErr != nil && cause != ErrClosed {
		cause = c.wrErr // the write failed first (the drain may be cut short)
	}
	c.err = cause
	c.dead.Store(true)
	pending := c.pending
	c.pending = nil
	c.queue = nil
	watches, werr := c.watches, c.errFor(true)
	c.watches = nil
	close(c.closing)
	errs := make(map[*call]error, len(pending))
	for _, cl := range pending {
		// A call the writer has not taken will never be sent.
		sent := !cl.state.CompareAndSwap(callQueued, callAbandoned)
		errs[cl] = c.errFor(sent)
	}
	c.inflight.Add(-int64(len(pending)))
	c.mu.Unlock()

	c.nc.Close()
	for cl, err := range errs {
		cl.err = err
		close(cl.done)
	}
	for _, w := range watches {
		w.end(werr)
	}
}

// close fails the connection with cause and waits for its goroutines.
func (c *conn) close(cause error) {
	c.fail(cause)
	c.wg.Wait()
}
