package sockapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Buffer sizes of a connection.
const (
	readBufferSize = 16 << 10
	// keepBuffer is the largest frame or output buffer a connection keeps
	// between requests; larger ones are dropped after use so that idle
	// connections stay small.
	keepBuffer = 64 << 10
	// outHighWater is how many reply bytes may wait for the peer (queued,
	// or in a write that has not returned) before the reader stops reading
	// requests (backpressure on a peer that does not read its replies).
	outHighWater = 1 << 20
	// connBudget is how many bytes a connection may hold, its replies
	// waiting for the peer and what the requests running off the reader
	// hold (see outbox.reserve), before the reader stops reading requests.
	// It bounds the memory of requests that wait (a sync write keeps its
	// values until it replies) and of replies made before they are queued
	// (a strong read's records): MaxInflight of each at once would
	// otherwise not count.
	connBudget = 8 << 20
)

// conn is one client connection. One goroutine, the reader, runs serve: it
// reads frames, checks and decodes them, answers reads inline and starts a
// goroutine per write (at most MaxInflight at once), or serves a local write
// itself while the peer does not pipeline (see inlineWrite). Replies go
// through out.
type conn struct {
	s   *Server
	nc  net.Conn
	raw *rawSockIO // nc's raw I/O; nil: nc's own Read and Write
	w   io.Writer  // raw or nc; deadlines and Close always go to nc
	ctx context.Context
	log *slog.Logger
	id  uint64

	peer Peer // the peer's credentials; set before serve runs

	// Reader state: only the reader goroutine touches these.
	fr      frameReader
	armed   bool      // the idle deadline of the next frame is set
	idleAt  time.Time // the read deadline in force; zero: none
	probing bool      // the read deadline is a probe (see probeDelay)
	req     wire.Request
	reqSize int           // req's frame, header included (see takeSlot)
	resp    wire.Response // inline replies
	rec     wire.Record
	age1    uint64 // rec's AgeMS
	recs    []wire.Record
	ages    []uint64 // recs' AgeMS
	precs   []*wire.Record
	keys    []localcache.Key
	hello   bool
	closed  bool // a fatal reply was sent: stop reading
	// pipelined: the peer has had several requests in flight (see
	// inlineWrite). inlineWrites counts the writes served on the reader.
	pipelined    bool
	inlineWrites uint64

	// framing: part of a frame has arrived (see frameTimer); frameTimed:
	// idleAt is that frame's ReadTimeout deadline, not the idle one.
	framing    bool
	frameTimed bool

	// Observation of the current request (Options.Observer): see observe.go.
	obsEnd    func(wire.Code)
	replyCode wire.Code // code of the last reply put inline

	stopping atomic.Bool   // Shutdown: stop reading at the next frame
	sem      chan struct{} // one slot per running write
	order    order         // per-state arrival order of writes and reads
	writes   sync.WaitGroup
	out      outbox
	watches  watches    // see watch.go
	locks    *connLocks // see locks.go; nil until the first lock op
	// resolvers: see resolver.go; nil until the first resolver_register
	resolvers *connResolvers
}

func newConn(ctx context.Context, s *Server, nc net.Conn, id uint64) *conn {
	c := &conn{
		s:   s,
		nc:  nc,
		raw: newRawSockIO(nc),
		ctx: ctx,
		id:  id,
		log: s.log.With("conn", id),
		sem: make(chan struct{}, s.opts.MaxInflight),
	}
	var r io.Reader = nc
	c.w = nc
	if c.raw != nil {
		r, c.w = c.raw, c.raw
	}
	if s.opts.ReadTimeout > 0 {
		r = frameTimer{c: c, r: r}
	}
	c.fr = frameReader{br: bufio.NewReaderSize(r, readBufferSize), max: s.opts.MaxFrame}
	c.out.init(c)
	return c
}

// stopReading makes the reader stop at the next frame boundary. Safe to
// call from any goroutine.
func (c *conn) stopReading() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Unix(1, 0))
}

// serve runs the reader until the peer closes, a fatal protocol error, the
// idle timeout or Shutdown; then it waits for the running writes, flushes
// their replies and closes the connection.
func (c *conn) serve() {
	s := c.s
	s.counters.conns.Add(1)
	c.log.Debug("connection opened")
	panicked := false
	defer func() {
		if v := recover(); v != nil {
			// Last resort: a bug must cost one connection, not the daemon.
			panicked = true
			c.recovered(v)
		}
		if panicked {
			c.nc.Close()
		}
		c.closeLocks()
		c.closeResolvers()
		c.closeWatches()
		c.writes.Wait()
		if !panicked {
			c.out.flushWait()
		}
		c.nc.Close()
		s.removeConn(c)
		s.counters.conns.Add(-1)
		c.log.Debug("connection closed")
		s.connWG.Done()
	}()
	c.readLoop()
}

func (c *conn) recovered(v any) {
	c.log.Error("panic serving connection; closing it", "panic", v, "stack", string(debug.Stack()))
	if c.s.onPanic != nil {
		c.s.onPanic(v)
	}
}

// probeDelay bounds a wait that rawSockIO started without a read that
// failed with EAGAIN (because a short read showed the socket empty): if
// nothing wakes the reader within it, the reader reads once more. This
// catches an end of stream or an error that arrived together with the last
// bytes read, whose poller event was used up by that read's wake-up. A
// connection that is idle for longer pays one wake-up per idle period.
const probeDelay = 20 * time.Millisecond

// readLoop serves the connection's requests until it must stop. On a socket
// with raw I/O (see rawSockIO) the whole loop runs inside poller-driven
// reads, so that waiting for the next request usually costs no system call:
// pump runs whenever the socket may be readable and returns false when it
// has read everything there is.
func (c *conn) readLoop() {
	if c.raw == nil {
		c.pump() // blocking reads: pump returns only to stop
		return
	}
	for {
		err := c.raw.serve(c.pump)
		if err == nil {
			return
		}
		if !c.probeExpired(err) && !c.idleButLocking(err) {
			c.readError(err)
			return
		}
		// serve starts with a read: the end of stream is seen now.
	}
}

// probeExpired reports whether err is the expiry of a probe deadline (not
// the idle timeout, not Shutdown), and if so restores the idle deadline.
func (c *conn) probeExpired(err error) bool {
	if !c.probing || !isTimeout(err) || c.stopping.Load() {
		return false
	}
	if !c.idleAt.IsZero() && !time.Now().Before(c.idleAt) {
		return false
	}
	c.probing = false
	c.setReadDeadline(c.idleAt)
	return true
}

// setReadDeadline sets the read deadline (zero: none) unless Shutdown has
// asked the reader to stop, whose deadline in the past it keeps.
func (c *conn) setReadDeadline(t time.Time) {
	c.nc.SetReadDeadline(t)
	if c.stopping.Load() {
		// Shutdown set its deadline before ours: restore it.
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// pump reads and serves requests. It returns true when the connection must
// stop (end of stream, fatal error, Shutdown), and false when the source
// would block: the socket must become readable before pump is called again,
// which resumes where it stopped.
func (c *conn) pump() bool {
	for !c.closed && !c.stopping.Load() {
		if !c.fr.buffered() {
			// The next read may block: send what is waiting first.
			if !c.out.flush() {
				return true
			}
			if t := c.s.opts.IdleTimeout; t > 0 && !c.armed {
				// Once per frame: a peer trickling one frame's bytes
				// does not keep an idle connection open.
				c.armed = true
				c.armIdle(t)
			}
		}
		body, err := c.fr.next()
		if err == errWouldBlock {
			c.beforeWait()
			return false
		}
		if err != nil && c.idleButLocking(err) {
			continue
		}
		if err != nil {
			c.readError(err)
			return true
		}
		c.armed = false
		if c.framing {
			c.endFrame()
		}
		c.reqSize = wire.HeaderSize + len(body)
		c.handle(body) // body is not used after this: see frameReader
		if !c.out.waitRoom() {
			return true
		}
	}
	return true
}

// armIdle moves the idle deadline to at least t from now. Moving a
// deadline costs a timer update in the runtime, so it moves to t + t/8 from
// now, and only once less than t is left: a busy connection moves it about
// once per t/8, not once per request, and an idle one is closed between t
// and t + t/8 after its last request. A pending probe stays in force (it
// costs a timer update too); probeExpired puts the idle deadline back.
func (c *conn) armIdle(t time.Duration) {
	var moved bool
	if c.idleAt, moved = atLeast(c.idleAt, t); moved && !c.probing {
		c.setReadDeadline(c.idleAt)
	}
}

// atLeast returns deadline d moved, if less than t is left before it, to t
// plus 1/idleSlack from now, and whether it moved: the rule of the idle and
// write deadlines (see armIdle).
func atLeast(d time.Time, t time.Duration) (time.Time, bool) {
	now := time.Now()
	if !d.Before(now.Add(t)) {
		return d, false
	}
	return now.Add(t + t/idleSlack), true
}

// idleSlack: the idle and write deadlines are set 1/idleSlack later than
// IdleTimeout, so that they need not move on every request (see armIdle).
const idleSlack = 8

// beforeWait arms a probe (see probeDelay) when the wait pump is about to
// return to rests on a short read and no probe is armed yet. An armed probe
// is left alone, also for a wait that follows EAGAIN: it fires at most once
// per probeDelay and costs one more read, while moving the deadline for
// every request would cost a timer update per request.
func (c *conn) beforeWait() {
	if c.probing || !c.raw.guessed() {
		return
	}
	d := time.Now().Add(probeDelay)
	if !c.idleAt.IsZero() && c.idleAt.Before(d) {
		d = c.idleAt
	}
	c.probing = true
	c.setReadDeadline(d)
}

// frameTimer is the connection's source when Options.ReadTimeout is set:
// before a read that must wait for more of a frame that has begun to arrive,
// it starts that frame's read deadline. A frame that arrives whole costs
// nothing.
type frameTimer struct {
	c *conn
	r io.Reader
}

func (t frameTimer) Read(p []byte) (int, error) {
	if c := t.c; !c.framing && c.fr.started() {
		c.startFrame()
	}
	return t.r.Read(p)
}

// startFrame sets the read deadline of a frame that has begun to arrive:
// ReadTimeout from now, unless the idle deadline comes first.
func (c *conn) startFrame() {
	c.framing = true
	d := time.Now().Add(c.s.opts.ReadTimeout)
	if !c.idleAt.IsZero() && !d.Before(c.idleAt) {
		return
	}
	c.idleAt, c.frameTimed, c.probing = d, true, false
	c.setReadDeadline(d)
}

// endFrame drops the read deadline of a frame that has arrived; without
// IdleTimeout the next frame may then take as long as it likes to begin.
func (c *conn) endFrame() {
	c.framing = false
	if c.frameTimed && c.s.opts.IdleTimeout == 0 {
		c.idleAt = time.Time{}
		c.setReadDeadline(time.Time{})
	}
	c.frameTimed = false
}

// readError ends the read loop. A frame over MaxFrame or an empty frame
// means framing is lost: the peer gets an error with id 0 before the
// connection closes, and so does a frame that took longer than ReadTimeout
// (Timeout). End of stream, a truncated frame, the idle timeout or Shutdown
// close quietly.
func (c *conn) readError(err error) {
	switch {
	case errors.Is(err, wire.ErrFrameTooLarge):
		e := wire.Errorf(wire.CodeTooLarge, "%v", err)
		e.Limit = int64(c.s.opts.MaxFrame)
		c.replyError(0, e)
	case errors.Is(err, wire.ErrEmptyFrame):
		c.replyError(0, wire.Errorf(wire.CodeProtocol, "empty frame"))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
	case c.stopping.Load():
	case (errors.Is(err, context.DeadlineExceeded) || isTimeout(err)) && c.frameTimed:
		c.replyError(0, wire.Errorf(wire.CodeTimeout, "a request frame took longer than the read timeout (%v) to arrive",
			c.s.opts.ReadTimeout))
		c.log.Debug("closing connection: a request frame took longer than the read timeout")
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		c.log.Debug("closing idle connection")
	default:
		c.log.Debug("read failed", "err", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// replyError sends an error reply.
func (c *conn) replyError(id uint64, e *wire.Error) {
	c.s.counters.countError(e.Code)
	c.out.put(&wire.Response{ID: id, Error: e}, "")
}

// outbox collects encoded replies and writes them to the connection. Any
// goroutine may add a reply; the one that flushes writes everything queued,
// including replies added while it writes, so concurrent replies share
// write calls and the socket is written by one goroutine at a time.
//
// Flushing rules: the reader flushes before it might block on a read (so
// replies to a pipelined burst go out together) and when it has to wait
// for a write slot; a finished write flushes unless another finished write
// is about to add its reply (that one flushes instead).
type outbox struct {
	c       *conn
	mu      sync.Mutex
	cond    sync.Cond // signalled when a write completes
	enc     *wire.Codec
	buf     []byte
	spare   []byte
	writing bool
	sending int // the size of the write in progress (writing set)
	err     error
	queued  atomic.Int32 // finished writes about to add their reply
	// reserved is what the requests running off the reader hold (see
	// reserve): the reader adds to it without mu, and it is given back
	// under mu, which wakes the goroutines in waitRoom.
	reserved atomic.Int64
	// peak, once track is set (by tests), is the most the connection has
	// held (see heldLocked) since: recorded at every change, not sampled.
	track atomic.Bool
	peak  int
	// deadline is the socket's write deadline, touched only by the one
	// goroutine writing (writing set).
	deadline time.Time
}

func (o *outbox) init(c *conn) {
	o.c = c
	o.cond.L = &o.mu
	o.enc = wire.NewCodec()
}

// put encodes and queues resp. A reply over MaxFrame is replaced by a
// TooLarge error (naming field, when given), so the peer never receives a
// frame it may refuse.
func (o *outbox) put(resp *wire.Response, field string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.c.replyCode = o.appendLocked(resp, field) // put is the reader's: see observe.go
}

// putAsync queues the reply of a finished write, gives back the n bytes
// reserved for it (its own bytes count from now on), and flushes unless
// another finished write is queued behind it.
func (o *outbox) putAsync(resp *wire.Response, n int) {
	o.queued.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.releaseLocked(n) // first: nothing is counted twice
	o.appendLocked(resp, "")
	if o.queued.Add(-1) == 0 {
		o.flushLocked()
	}
}

// reserve counts n bytes in the connection's budget for a request the
// reader starts off the reader: its frame, which it holds until it
// replies, and the most its reply can take (or an estimate, for replies
// without values), so that the reply counts while it is being made.
// putAsync gives them back. It never waits: the reader waits before it
// reads the next request (waitRoom) while the connection holds more than
// connBudget, so a request larger than the whole budget still runs (and
// the reader then waits until it has replied and its reply is written).
func (o *outbox) reserve(n int) {
	if o.track.Load() {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.reserved.Add(int64(n))
		o.notePeakLocked()
		return
	}
	o.reserved.Add(int64(n))
}

// heldLocked is what the connection holds: replies waiting for the peer
// (queued, or in a write that has not returned) and what is reserved.
func (o *outbox) heldLocked() int {
	return len(o.buf) + o.sending + int(o.reserved.Load())
}

// notePeakLocked records held in peak when tracking. It is called at the
// changes that add to held (reserve, appendLocked); the others move bytes
// from the queue to the write in progress, or drop them.
func (o *outbox) notePeakLocked() {
	if o.track.Load() {
		o.peak = max(o.peak, o.heldLocked())
	}
}

// release gives back n reserved bytes of a request that queued no reply
// (it panicked).
func (o *outbox) release(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.releaseLocked(n)
}

func (o *outbox) releaseLocked(n int) {
	o.reserved.Add(-int64(n))
	o.cond.Broadcast()
}

// appendLocked encodes resp into the queue and returns the error code of
// what was queued ("" for success).
func (o *outbox) appendLocked(resp *wire.Response, field string) (code wire.Code) {
	if o.err != nil {
		return replyCodeOf(resp)
	}
	n := len(o.buf)
	buf, ok := appendResponseFrame(o.buf, resp)
	var err error
	if !ok {
		buf, err = o.enc.AppendFrame(o.buf, resp)
	}
	if err == nil && len(buf)-n-wire.HeaderSize > o.c.s.opts.MaxFrame {
		size := len(buf) - n - wire.HeaderSize
		e := wire.Errorf(wire.CodeTooLarge, "reply would be %d bytes, over max_frame %d", size, o.c.s.opts.MaxFrame)
		e.Field, e.Limit = field, int64(o.c.s.opts.MaxFrame)
		o.c.s.counters.countError(e.Code)
		resp = &wire.Response{ID: resp.ID, Error: e, Push: resp.Push, Watch: resp.Watch}
		buf, _ = appendResponseFrame(buf[:n], resp)
	}
	if err != nil {
		// Our own types always encode; if not, fail this request only.
		o.c.log.Error("encoding reply failed", "id", resp.ID, "err", err)
		e := wire.Errorf(wire.CodeInternal, "internal error")
		o.c.s.counters.countError(e.Code)
		resp = &wire.Response{ID: resp.ID, Error: e}
		buf, _ = appendResponseFrame(buf[:n], resp)
	}
	o.buf = buf
	o.notePeakLocked()
	return replyCodeOf(resp)
}

// flush writes the queued replies unless another goroutine is writing
// (then that one writes them). It returns false once a write has failed.
func (o *outbox) flush() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked()
	return o.err == nil
}

// flushLocked writes until nothing is queued. It releases o.mu while
// writing.
func (o *outbox) flushLocked() {
	if o.writing || len(o.buf) == 0 {
		return
	}
	o.writing = true
	defer func() {
		o.writing = false
		o.cond.Broadcast()
	}()
	idle := o.c.s.opts.IdleTimeout
	for len(o.buf) > 0 && o.err == nil {
		b := o.buf
		o.buf, o.spare, o.sending = o.spare[:0], nil, len(b)
		o.mu.Unlock()
		if idle > 0 {
			var moved bool
			if o.deadline, moved = atLeast(o.deadline, idle); moved {
				o.c.nc.SetWriteDeadline(o.deadline)
			}
		}
		_, err := o.c.w.Write(b)
		o.mu.Lock()
		o.sending = 0
		if err != nil {
			o.err = err
			o.buf = nil
			if !errors.Is(err, net.ErrClosed) {
				o.c.log.Debug("write failed", "err", err)
			}
			return
		}
		if cap(b) <= keepBuffer {
			o.spare = b[:0]
		}
	}
}

// flushWait waits for a running write to finish, then flushes.
func (o *outbox) flushWait() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.writing {
		o.cond.Wait()
	}
	o.flushLocked()
}

// waitRoom blocks while the connection holds too much: more than
// outHighWater reply bytes waiting for the peer (queued, or in a write that
// has not returned), or more than connBudget with what is reserved (see
// reserve). It writes the queue itself when no other goroutine is writing.
// It returns false once a write has failed.
func (o *outbox) waitRoom() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.waitRoomLocked()
}

// waitRoomLocked is waitRoom with o.mu held. It releases o.mu while it
// waits or writes.
func (o *outbox) waitRoomLocked() bool {
	for o.err == nil {
		out := len(o.buf) + o.sending
		if out <= outHighWater && o.heldLocked() <= connBudget {
			break
		}
		if o.writing || len(o.buf) == 0 {
			o.cond.Wait() // for a write to end, or reserved bytes to come back
		} else {
			o.flushLocked()
		}
	}
	return o.err == nil
}

// write runs fn, req (a put, delete or batch_put of keys) in mode m, and
// queues its reply: on the reader itself when the write is local (neither
// strong nor sync, so then is nil) and the connection is not pipelining
// (see inlineWrite), otherwise with goWrite. then is as for goWrite.
func (c *conn) write(m writeMode, req *wire.Request, keys []localcache.Key, fn func() *wire.Response, then func(*wire.Response) *wire.Response) {
	id := req.ID
	if m.strong || m.sync || !c.inlineWrite() {
		c.goWrite(id, keys, c.writeReserve(keys, req), fn, then)
		return
	}
	resp := fn()
	c.inlineWrites++
	if c.fr.br.Buffered() > 0 || c.probeWrite() && c.raw.pending() {
		// Sent before the peer could see this reply: it pipelines.
		c.pipelined = true
	}
	resp.ID = id
	c.out.put(resp, "")
	c.out.flush() // the peer waits for it; the next read may block
}

// inlineWrite reports whether a write may run on the reader: a peer that
// sends one request and waits for its reply gains nothing from a goroutine
// per write, and the reader saves starting one and handing the reply over.
// It may not when another write of the connection is running, and never
// again once the connection has shown that it pipelines: a frame was
// buffered behind a write, or bytes arrived while a write ran on the reader
// (seen before its reply is sent, so they were sent without waiting for
// it). The requests of a pipelining peer must reach the store together, to
// share a commit, and not wait behind each other's. Only with the raw
// socket, which can look for such bytes without reading them.
func (c *conn) inlineWrite() bool {
	if c.pipelined || c.raw == nil || c.order.inflight.Load() > 0 {
		return false
	}
	if c.fr.buffered() {
		c.pipelined = true
		return false
	}
	return true
}

// probeWrite reports whether the write just served on the reader should
// look at the socket for bytes that arrived meanwhile (see inlineWrite): the
// first probeFirst writes of a connection, then every probeEvery-th. The
// look is a system call that, for a peer that waits for each reply, never
// finds anything (measured: about 7 of 100 µs of CPU per put at 16
// connections, bench/RESULTS.md); a peer
// that begins to pipeline later still shows it within probeEvery writes,
// which share no commit until then.
func (c *conn) probeWrite() bool {
	return c.inlineWrites <= probeFirst || c.inlineWrites%probeEvery == 0
}

const (
	probeFirst = 16
	probeEvery = 8
)

// goWrite runs fn, a write, on its own goroutine and queues its reply. It
// blocks while MaxInflight writes are running (backpressure: the reader
// stops reading), flushing first so the peer sees the replies it waits
// for. The request's frame and reply bytes for its reply count in the
// connection's budget until the reply is queued (see takeSlot, and
// readReserve, writeReserve and replyReserve for the reply's sizes).
//
// keys are the states fn writes (or reads: a read that asks the shared
// store runs here too), all distinct: fn starts only after the
// connection's earlier writes to them have been applied, and later ones
// wait for fn (see order).
//
// then, when not nil, runs after fn succeeded and the order was left, and
// gives the final reply: a sync write waits there for the shared store
// without holding up the connection's later writes to the same states.
func (c *conn) goWrite(id uint64, keys []localcache.Key, reply int, fn func() *wire.Response, then func(*wire.Response) *wire.Response) {
	reserve := c.takeSlot(reply)
	wait, done := c.order.enter(keys)
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
		left := false
		defer func() {
			if !left {
				c.order.leave(keys, done)
			}
		}()
		for _, ch := range wait {
			<-ch
		}
		resp := fn()
		c.order.leave(keys, done)
		left = true
		if then != nil && resp.Error == nil {
			resp = then(resp)
		}
		resp.ID = id
		queued = true
		c.out.putAsync(resp, reserve)
		if end != nil {
			end(replyCodeOf(resp))
		}
	}()
}

// takeSlot takes a write slot for the current request, which the reader
// starts off the reader (goWrite, goLock), and reserves in the connection's
// budget the request's frame and reply bytes for its reply: until it
// replies, the request keeps its decoded fields (values, a batch), about
// as much memory as its frame. It returns what it reserved, for putAsync
// or release to give back. It blocks while MaxInflight of them are
// running, flushing first so the peer sees the replies it waits for.
func (c *conn) takeSlot(reply int) int {
	select {
	case c.sem <- struct{}{}:
	default:
		c.out.flush()
		c.sem <- struct{}{}
	}
	n := c.reqSize + reply
	c.out.reserve(n)
	return n
}

// Reservations: what a request started off the reader sets aside, in the
// connection's budget, for its reply (see outbox.reserve).

// recordReserve is the room a record without its value takes in a reply
// beside its names, actor and reason (its other fields, the origin, the
// msgpack headers, with margin), and the room of a reply's own fields.
const recordReserve = 256

// replyReserve is the reservation of a reply of at most n bytes: n, but no
// more than a frame (a larger reply is replaced by a TooLarge error).
func (c *conn) replyReserve(n int) int {
	return min(n, c.s.opts.MaxFrame) + wire.HeaderSize
}

// readReserve is the reservation of a read of n states that runs off the
// reader (it asks the shared store): the largest reply it can have, n
// records with values of max_value.
func (c *conn) readReserve(n int) int {
	return c.replyReserve(n * (c.s.opts.MaxValue + frameReserve))
}

// writeReserve is the reservation of req, a write of keys: a record
// without its value per key, with req's actor and reason.
func (c *conn) writeReserve(keys []localcache.Key, req *wire.Request) int {
	n := recordReserve
	for _, k := range keys {
		n += recordReserve + len(k.Governor) + len(k.State) + len(req.Actor) + len(req.Reason)
	}
	return c.replyReserve(n)
}

// endOnPanic, deferred by a goroutine of the connection (by one that holds
// a write slot, before the deferred call that releases it, so that it runs
// after it), ends the connection when the goroutine panics. Close waits for
// a reader inside its poller callback (see rawSockIO) to leave it, so the
// reader must be able to: the write slot is released first, and
// stopReading makes it stop.
func (c *conn) endOnPanic() {
	if v := recover(); v != nil {
		c.recovered(v)
		c.stopReading()
		// Not here: closing the raw socket waits for the reader to leave
		// its poller, and the reader may be waiting for this goroutine (an
		// unwatch for its done, a bound lock's op for its renewer).
		go c.nc.Close()
	}
}

// awaitWrites blocks the reader until the connection's writes to keys that
// arrived before the current request (with all: every such write) have been
// applied, so that a pipelined read sees them. Replies already queued are
// flushed first: the peer may be waiting for them.
func (c *conn) awaitWrites(keys []localcache.Key, all bool) {
	if c.order.inflight.Load() == 0 {
		return
	}
	wait := c.order.before(keys, all)
	if len(wait) == 0 {
		return
	}
	c.out.flush()
	for _, ch := range wait {
		<-ch
	}
}
