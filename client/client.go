// Package client is a thin Go client for tai-sidecar, the per-pod state
// daemon. It speaks the sidecar's wire protocol (package wire) over its Unix
// socket and imports nothing else from the project: an app that uses it does
// not pull in Badger, gRPC or Firestore.
//
// A Client pipelines requests over a small number of connections: each
// connection carries many requests at once and the sidecar may answer them in
// any order. The zero value is ready to use and connects lazily to
// ./tai.sock:
//
//	var c client.Client
//	defer c.Close()
//	rec, err := c.Put(ctx, "orders", "o-17", map[string]any{"status": "paid"},
//		client.IfVersion(3), client.Actor("billing"))
//
// # Errors
//
// A reply that reports a failure is returned as a *Error (an alias of
// wire.Error) carrying a code, the key it is about and details such as the
// expected and actual versions of a VersionConflict. Test for a kind of
// failure with errors.Is and the Err* sentinels, read details with errors.As:
//
//	_, err := c.Put(ctx, "orders", "o-17", v, client.IfVersion(3))
//	var e *client.Error
//	switch {
//	case errors.Is(err, client.ErrVersionConflict) && errors.As(err, &e):
//		// *e.Actual is the version the sidecar holds.
//	case errors.Is(err, client.ErrUnavailable):
//		// the sidecar is down or the connection broke; see ConnError.Sent.
//	}
//
// When the connection fails, every request waiting on it fails with a
// *ConnError, for which errors.Is(err, ErrUnavailable) holds; the next call
// dials again. A request that certainly never reached the sidecar (it was
// still queued when the connection broke) is not failed but sent again on a
// fresh connection, up to three attempts in all; nothing else is retried,
// because a write that may have been applied must not be applied twice. A
// context that ends makes its call return at once with an error for which
// errors.Is(err, ctx.Err()) holds (a *CanceledError, saying whether the
// request was sent, once it was handed to a connection): the reply, if one
// comes, is dropped, and a request not yet written is never sent.
package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// DefaultSocket is the socket path used when Client.Socket is empty.
const DefaultSocket = "./tai.sock"

// DefaultConns is the number of connections used when Client.Conns is zero.
const DefaultConns = 2

// DefaultWriteTimeout is the write timeout used when Client.WriteTimeout is
// zero: longer than the sidecar holds back reading a connection whose
// writes wait for the shared store.
const DefaultWriteTimeout = 2 * time.Minute

// DefaultName is the client name sent in hello when Client.Name is empty.
const DefaultName = "tai-state-go"

// Client talks to one sidecar. Its zero value is ready to use; set the
// exported fields before the first call and do not change them afterwards.
// A Client is safe for concurrent use by many goroutines; it must not be
// copied after first use. Close it to release its connections.
type Client struct {
	// Socket is the path of the sidecar's Unix socket; DefaultSocket if empty.
	Socket string
	// Dial, if set, opens connections instead of dialling Socket. Socket is
	// still used in error messages.
	Dial func(ctx context.Context) (net.Conn, error)
	// Conns is how many connections to spread requests over; DefaultConns
	// if zero or negative. Connections are opened when first needed.
	Conns int
	// Name identifies the client in the hello handshake (and the sidecar's
	// logs); DefaultName if empty.
	Name string
	// WriteTimeout is how long sending requests to the sidecar may make no
	// progress (between WriteTimeout and an eighth more) before the
	// connection is given up, as one the sidecar has stopped reading; the
	// next call dials a new one. The calls on it whose bytes had begun to go
	// fail with a ConnError whose Sent is true. The sidecar holds back
	// reading while many of a connection's writes wait for the shared store
	// (at most a minute each), so a limit below that can give up healthy
	// connections. DefaultWriteTimeout if zero; no limit if negative. A
	// call's context bounds the call itself either way.
	WriteTimeout time.Duration
	// WatchBuffer is how many changes a Watch holds for its reader before
	// it ends the watch as fallen behind; DefaultWatchBuffer if zero.
	WatchBuffer int

	ids    atomic.Uint64 // request ids, unique over the client's life
	rr     atomic.Uint64 // round-robin start for slot picking
	codecs sync.Pool     // *wire.Codec for encoding requests

	mu       sync.Mutex
	slots    []*slot
	sessions map[*conn]struct{} // connections of lock calls and ServeConflicts: see dialSession
	retired  map[*conn]struct{} // replaced while still draining replies: see retire
	closed   bool
	// shut is cancelled by Close: it ends dials and handshakes in
	// progress, which no slot holds yet. Created on first use (shutCtx).
	shut       context.Context
	cancelShut context.CancelFunc
}

// shutCtx returns the context Close cancels.
func (c *Client) shutCtx() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.initShut()
	return c.shut
}

// initShut creates the context Close cancels. c.mu must be held.
func (c *Client) initShut() {
	if c.shut == nil {
		c.shut, c.cancelShut = context.WithCancel(context.Background())
		if c.closed {
			c.cancelShut()
		}
	}
}

// slot holds one of the client's connections, redialled when it fails.
type slot struct {
	cur atomic.Pointer[conn]
	sem chan struct{} // capacity 1: held while dialling
}

// New returns a Client for the sidecar listening on socket.
func New(socket string) *Client {
	return &Client{Socket: socket}
}

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

// Close closes the client's connections. Calls in flight fail with
// ErrClosed, and so does every later call. Close waits for the connections'
// goroutines to stop.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.initShut()
	c.cancelShut()
	slots, sessions, retired := c.slots, c.sessions, c.retired
	c.sessions, c.retired = nil, nil
	c.mu.Unlock()
	for _, s := range slots {
		if cn := s.cur.Load(); cn != nil {
			cn.close(ErrClosed)
		}
	}
	for cn := range sessions {
		cn.close(ErrClosed)
	}
	for cn := range retired {
		cn.close(ErrClosed)
	}
	return nil
}

// retire lets cn, a connection whose write failed, go on draining the
// replies the sidecar sent before it (conn.writeFailed) after a new one took
// its slot: cut short, the calls it would answer end in a connection
// error, with their outcome unknown. It closes itself when the drain ends;
// Close closes it sooner.
func (c *Client) retire(cn *conn) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cn.close(ErrClosed)
		return
	}
	if c.retired == nil {
		c.retired = make(map[*conn]struct{})
	}
	c.retired[cn] = struct{}{}
	c.mu.Unlock()
	go func() {
		cn.wg.Wait()
		c.mu.Lock()
		delete(c.retired, cn)
		c.mu.Unlock()
	}()
}

// getSlots returns the client's slots, creating them on first use.
func (c *Client) getSlots() ([]*slot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.slots == nil {
		n := c.Conns
		if n <= 0 {
			n = DefaultConns
		}
		c.slots = make([]*slot, n)
		for i := range c.slots {
			c.slots[i] = &slot{sem: make(chan struct{}, 1)}
		}
	}
	return c.slots, nil
}

// pick returns the slot with the fewest calls in flight, starting the search
// at a rotating position so that ties are spread round robin. A slot without
// a live connection counts as idle: using it dials.
func (c *Client) pick(slots []*slot) *slot {
	n := uint64(len(slots))
	start := c.rr.Add(1)
	var best *slot
	var bestLoad int64
	for i := range n {
		s := slots[(start+i)%n]
		var load int64
		if cn := s.cur.Load(); cn != nil && !cn.dead.Load() {
			load = cn.inflight.Load()
		}
		if best == nil || load < bestLoad {
			best, bestLoad = s, load
		}
	}
	return best
}

// connect returns s's live connection, dialling a new one if there is none.
func (c *Client) connect(ctx context.Context, s *slot) (*conn, error) {
	if cn := s.cur.Load(); cn != nil && !cn.dead.Load() && !cn.retireIdle() {
		return cn, nil
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.shutCtx().Done():
		return nil, ErrClosed
	}
	defer func() { <-s.sem }()
	old := s.cur.Load()
	if old != nil && !old.dead.Load() {
		return old, nil // another caller dialled while we waited
	}
	switch {
	case old != nil && old.draining():
		c.retire(old)
	case old != nil:
		old.close(ErrClosed) // already failed: this only reaps its goroutines
	}
	cn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cn.close(ErrClosed)
		return nil, ErrClosed
	}
	s.cur.Store(cn)
	c.mu.Unlock()
	return cn, nil
}

// dial opens a connection and performs the hello handshake. Close ends
// both.
func (c *Client) dial(ctx context.Context) (*conn, error) {
	callerCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.shutCtx(), cancel)
	defer stop()
	cn, err := c.dialHello(ctx)
	switch {
	case err == nil:
		return cn, nil
	case c.shutCtx().Err() != nil && callerCtx.Err() == nil:
		return nil, ErrClosed
	case ctx.Err() != nil && callerCtx.Err() != nil:
		return nil, callerCtx.Err()
	}
	return nil, err
}

// dialHello opens a connection and performs the hello handshake.
func (c *Client) dialHello(ctx context.Context) (*conn, error) {
	var nc net.Conn
	var err error
	if c.Dial != nil {
		nc, err = c.Dial(ctx)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "unix", c.socket())
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ConnError{Op: "dial", Socket: c.socket(), Err: err}
	}
	name := c.Name
	if name == "" {
		name = DefaultName
	}
	br := bufio.NewReaderSize(nc, ioBufSize)
	h, err := handshake(ctx, nc, br, c.ids.Add(1), name)
	if err != nil {
		nc.Close()
		var werr *wire.Error
		switch {
		case errors.As(err, &werr):
			return nil, werr // the sidecar refused us: not worth retrying
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		return nil, &ConnError{Op: "hello", Socket: c.socket(), Err: err}
	}
	wt := c.WriteTimeout
	if wt == 0 {
		wt = DefaultWriteTimeout
	}
	return newConn(nc, br, c.socket(), h, wt), nil
}

// encode returns req as a frame.
func (c *Client) encode(req *wire.Request) ([]byte, error) {
	cd, _ := c.codecs.Get().(*wire.Codec)
	if cd == nil {
		cd = wire.NewCodec()
	}
	defer c.codecs.Put(cd)
	frame, err := cd.AppendFrame(nil, req)
	if err != nil {
		return nil, errorf(wire.CodeInvalidArgument, "encode %s request: %v", req.Op, err)
	}
	return frame, nil
}

// conn returns a live connection, for callers that need one without sending.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	slots, err := c.getSlots()
	if err != nil {
		return nil, err
	}
	return c.connect(ctx, c.pick(slots))
}

// maxAttempts bounds how often a request is sent on a fresh connection after
// its connection failed before it was written.
const maxAttempts = 3

// do sends req and waits for its reply. A reply carrying an error is
// returned as that *Error.
func (c *Client) do(ctx context.Context, req *wire.Request) (*wire.Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slots, err := c.getSlots()
	if err != nil {
		return nil, err
	}
	req.ID = c.ids.Add(1)
	frame, err := c.encode(req)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		cn, err := c.connect(ctx, c.pick(slots))
		if err != nil {
			return nil, err
		}
		if err := checkLimits(req, len(frame)-wire.HeaderSize, &cn.hello); err != nil {
			return nil, err
		}
		cl := &call{id: req.ID, frame: frame, done: make(chan struct{})}
		err = cn.send(cl)
		var resp *wire.Response
		if err == nil {
			resp, err = cn.wait(ctx, cl)
		}
		if err != nil {
			var ce *ConnError
			if errors.As(err, &ce) && !ce.Sent && attempt < maxAttempts && ctx.Err() == nil {
				continue // never reached the sidecar: safe to send again
			}
			return nil, err
		}
		if resp.Error != nil {
			return nil, resp.Error
		}
		return resp, nil
	}
}

// checkLimits rejects, before sending, a request the sidecar would refuse
// for its size. A frame over the sidecar's cap would make it close the
// connection, failing every other request on it.
func checkLimits(req *wire.Request, body int, h *wire.Hello) error {
	if body > h.MaxFrame {
		e := errorf(wire.CodeTooLarge, "request is %d bytes, the sidecar accepts at most %d", body, h.MaxFrame)
		e.Limit = int64(h.MaxFrame)
		return e
	}
	if len(req.Value) > h.MaxValue {
		return tooLargeValue(req.Governor, req.State, len(req.Value), h.MaxValue)
	}
	for _, it := range req.Items {
		if len(it.Value) > h.MaxValue {
			return tooLargeValue(it.Governor, it.State, len(it.Value), h.MaxValue)
		}
	}
	if n := max(len(req.Items), len(req.Keys)); n > h.MaxBatch {
		e := errorf(wire.CodeTooLarge, "batch of %d, the sidecar accepts at most %d", n, h.MaxBatch)
		e.Field = "items"
		if req.Op == wire.OpBatchGet {
			e.Field = "keys"
		}
		e.Limit = int64(h.MaxBatch)
		return e
	}
	return nil
}

func tooLargeValue(gov, state string, n, limit int) error {
	e := errorf(wire.CodeTooLarge, "value is %d bytes, limit %d", n, limit)
	e.Governor, e.State, e.Field, e.Limit = gov, state, "value", int64(limit)
	return e
}

// validKey checks a governor and state name before they are sent.
func validKey(gov, state string) error {
	if err := validName("governor", gov, gov, state); err != nil {
		return err
	}
	if err := validName("state", state, gov, state); err != nil {
		return err
	}
	return nil
}

// validName returns a nil error interface, or an *Error.
func validName(kind, name, gov, state string) error {
	if err := wire.ValidateName(kind, name); err != nil {
		e := errorf(wire.CodeInvalidArgument, "%v", err)
		e.Governor, e.State, e.Field = gov, state, kind
		return e
	}
	return nil
}

// Hello returns the hello of one of the client's connections (connecting if
// needed): the protocol version agreed, the sidecar's name and node id, and
// its limits (zero limits in the reply are reported as the protocol's
// defaults).
func (c *Client) Hello(ctx context.Context) (wire.Hello, error) {
	cn, err := c.conn(ctx)
	if err != nil {
		return wire.Hello{}, err
	}
	return cn.hello, nil
}

// Ping checks that the sidecar answers.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.do(ctx, &wire.Request{Op: wire.OpPing})
	return err
}

// Get returns the state gov/state. A state that does not exist (or was
// deleted) fails with an error matching ErrNotFound.
//
// By default the sidecar answers from its local store, reading a state it
// does not hold through from the shared store; opts ask for fresher reads
// (Bounded, Strong). Record.FromCache, Pending, SyncedAt and Stale tell
// what the answer is based on.
func (c *Client) Get(ctx context.Context, gov, state string, opts ...ReadOption) (*Record, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	req := &wire.Request{Op: wire.OpGet, Governor: gov, State: state}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return oneRecord(resp)
}

// Put stores value as the state gov/state and returns its new metadata (the
// returned Record has no Value). value is encoded with wire.Marshal: structs
// by their codec tags, []byte as msgpack bin; a wire.Raw is sent verbatim.
// Preconditions that fail give an error matching ErrVersionConflict.
func (c *Client) Put(ctx context.Context, gov, state string, value any, opts ...WriteOption) (*Record, error) {
	b, err := wire.Marshal(value)
	if err != nil {
		e := errorf(wire.CodeInvalidArgument, "encode value: %v", err)
		e.Governor, e.State, e.Field = gov, state, "value"
		return nil, e
	}
	return c.PutRaw(ctx, gov, state, b, opts...)
}

// PutRaw is Put for a value that is already an encoded msgpack document. The
// sidecar stores it as given.
func (c *Client) PutRaw(ctx context.Context, gov, state string, msgpack []byte, opts ...WriteOption) (*Record, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	if len(msgpack) == 0 || len(msgpack) == 1 && msgpack[0] == 0xc0 {
		e := errorf(wire.CodeInvalidArgument, "value is empty or nil")
		e.Governor, e.State, e.Field = gov, state, "value"
		return nil, e
	}
	req := &wire.Request{Op: wire.OpPut, Governor: gov, State: state, Value: wire.Raw(msgpack)}
	if err := applyWriteOptions(req, opts, true); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return oneRecord(resp)
}

// Delete deletes the state gov/state and returns the metadata of the
// deletion (its version is the deleted state's version plus one). Deleting a
// state that does not exist fails with an error matching ErrNotFound.
func (c *Client) Delete(ctx context.Context, gov, state string, opts ...WriteOption) (*Record, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	req := &wire.Request{Op: wire.OpDelete, Governor: gov, State: state}
	if err := applyWriteOptions(req, opts, true); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return oneRecord(resp)
}

// BatchGet returns the states named by keys, in order; the entry of a state
// that does not exist is nil.
// opts are as for Get, and apply to every key.
func (c *Client) BatchGet(ctx context.Context, keys []wire.Key, opts ...ReadOption) ([]*Record, error) {
	for _, k := range keys {
		if err := validKey(k.Governor, k.State); err != nil {
			err.(*Error).Field = "keys"
			return nil, err
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	req := &wire.Request{Op: wire.OpBatchGet, Keys: keys}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Records) != len(keys) {
		return nil, protocolErrorf("batch_get of %d keys answered with %d records", len(keys), len(resp.Records))
	}
	return wrapRecords(resp.Records), nil
}

// BatchPut applies items (puts, and deletes where Item.Delete is set) all or
// nothing, and returns the new metadata of each, in order. Preconditions are
// per item (Item.IfVersion, Item.IfAbsent), not options; Actor, Reason and
// WithFence apply to every item. If one item's precondition fails, nothing
// is written and the error names that item's key.
func (c *Client) BatchPut(ctx context.Context, items []wire.Item, opts ...WriteOption) ([]*Record, error) {
	for _, it := range items {
		if err := validKey(it.Governor, it.State); err != nil {
			err.(*Error).Field = "items"
			return nil, err
		}
		if it.Delete == (len(it.Value) > 0) {
			e := errorf(wire.CodeInvalidArgument, "an item needs either a value or Delete")
			e.Governor, e.State, e.Field = it.Governor, it.State, "items"
			return nil, e
		}
	}
	if len(items) == 0 {
		return nil, nil
	}
	req := &wire.Request{Op: wire.OpBatchPut, Items: items}
	if err := applyWriteOptions(req, opts, false); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Records) != len(items) {
		return nil, protocolErrorf("batch_put of %d items answered with %d records", len(items), len(resp.Records))
	}
	for _, r := range resp.Records {
		if r == nil {
			return nil, protocolErrorf("batch_put reply has a missing record")
		}
	}
	return wrapRecords(resp.Records), nil
}

// ListOptions select a page of a governor's states.
type ListOptions struct {
	// Prefix keeps only states whose name starts with it.
	Prefix string
	// Limit is the most records in one page: the sidecar's default
	// (wire.DefaultListLimit) if zero, at most wire.MaxListLimit. The sidecar
	// may return fewer to keep the reply small.
	Limit int
	// Cursor continues a listing: pass the cursor the previous page returned.
	Cursor string
}

// List returns one page of the live states of gov in name order, and the
// cursor of the next page ("" when there are no more).
func (c *Client) List(ctx context.Context, gov string, opts ListOptions) ([]*Record, string, error) {
	if err := validName("governor", gov, gov, ""); err != nil {
		return nil, "", err
	}
	if opts.Limit < 0 || opts.Limit > wire.MaxListLimit {
		e := errorf(wire.CodeInvalidArgument, "list limit %d out of range [0, %d]", opts.Limit, wire.MaxListLimit)
		e.Field = "limit"
		return nil, "", e
	}
	resp, err := c.do(ctx, &wire.Request{
		Op:       wire.OpList,
		Governor: gov,
		Prefix:   opts.Prefix,
		Limit:    opts.Limit,
		Cursor:   opts.Cursor,
	})
	if err != nil {
		return nil, "", err
	}
	for _, r := range resp.Records {
		if r == nil {
			return nil, "", protocolErrorf("list reply has a missing record")
		}
	}
	return wrapRecords(resp.Records), resp.Cursor, nil
}

// ListAll iterates over all the states of gov that opts selects, following
// cursors from opts.Cursor on; opts.Limit is the page size. A failure is
// yielded once, with a nil Record, and ends the iteration.
//
//	for rec, err := range c.ListAll(ctx, "orders", client.ListOptions{}) {
//		if err != nil {
//			return err
//		}
//		...
//	}
func (c *Client) ListAll(ctx context.Context, gov string, opts ListOptions) iter.Seq2[*Record, error] {
	return func(yield func(*Record, error) bool) {
		for {
			recs, next, err := c.List(ctx, gov, opts)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, r := range recs {
				if !yield(r, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if next == opts.Cursor {
				yield(nil, protocolErrorf("list cursor %q did not advance", next))
				return
			}
			opts.Cursor = next
		}
	}
}

// Stats returns the sidecar's counters.
func (c *Client) Stats(ctx context.Context) (*wire.Stats, error) {
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpStats})
	if err != nil {
		return nil, err
	}
	if resp.Stats == nil {
		return nil, protocolErrorf("stats reply carries no stats")
	}
	return resp.Stats, nil
}

// Pending reports the sidecar's journal: how many local changes wait for
// the shared store, how many it rejected for good, and the oldest waiting.
func (c *Client) Pending(ctx context.Context) (*wire.Pending, error) {
	return c.PendingPage(ctx, 0, 0)
}

// PendingPage is Pending with a chosen page of receipts: the waiting changes
// after the journal entry after (0: from the oldest), at most limit (0: the
// sidecar's default, 100; at most 1000). The reply's Next is the after of the
// next page (0 when there is none).
func (c *Client) PendingPage(ctx context.Context, after uint64, limit int) (*wire.Pending, error) {
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpPending, After: after, Limit: limit})
	if err != nil {
		return nil, err
	}
	if resp.Pending == nil {
		return nil, protocolErrorf("pending reply carries no pending")
	}
	return resp.Pending, nil
}

// Failed returns one page of the failed list (local changes the shared store
// rejected for good), in journal order after the entry after (0: from the
// start), at most limit entries (0: the sidecar's default, 100; at most
// 1000), and the after of the next page (0 when there is none).
func (c *Client) Failed(ctx context.Context, after uint64, limit int) ([]*wire.Failed, uint64, error) {
	if err := checkLimit(wire.OpFailed, limit); err != nil {
		return nil, 0, err
	}
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpFailed, After: after, Limit: limit})
	if err != nil {
		return nil, 0, err
	}
	for _, f := range resp.Failed {
		if f == nil {
			return nil, 0, protocolErrorf("failed reply has a missing entry")
		}
	}
	if resp.Next != 0 && resp.Next <= after {
		return nil, 0, protocolErrorf("failed list cursor %d did not advance past %d", resp.Next, after)
	}
	return resp.Failed, resp.Next, nil
}

func oneRecord(resp *wire.Response) (*Record, error) {
	if resp.Record == nil {
		return nil, protocolErrorf("reply carries no record")
	}
	return &Record{Record: *resp.Record}, nil
}

func wrapRecords(rs []*wire.Record) []*Record {
	out := make([]*Record, len(rs))
	for i, r := range rs {
		if r != nil {
			out[i] = &Record{Record: *r}
		}
	}
	return out
}

// Record is a state as the sidecar returned it: the wire record (name,
// version, change metadata, whether it came from the local cache and whether
// a local change is pending) plus helpers. Records returned by writes carry
// no Value.
type Record struct {
	wire.Record
}

// Decode decodes the record's value into v, as wire.Unmarshal does.
func (r *Record) Decode(v any) error {
	if len(r.Value) == 0 {
		return fmt.Errorf("decode %s/%s: record carries no value", r.Governor, r.State)
	}
	if err := wire.Unmarshal(r.Value, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", r.Governor, r.State, err)
	}
	return nil
}

// Updated returns when this version was written, by the sidecar's clock.
func (r *Record) Updated() time.Time { return time.Unix(0, r.UpdatedAt) }

// Age returns how far behind the shared store a read's record may be: the
// time since the sidecar last knew it held every change of the state's
// governor (0 while it watches the governor live, and for a record read
// from the shared store in the request). ok is false when the sidecar does
// not know (no shared store, a governor not pulled yet) and for records
// that writes return.
func (r *Record) Age() (age time.Duration, ok bool) {
	if r.AgeMS == nil {
		return 0, false
	}
	return time.Duration(min(*r.AgeMS, uint64(math.MaxInt64/time.Millisecond))) * time.Millisecond, true
}

// WriteOption sets a precondition or change metadata on a write.
type WriteOption func(*writeOptions)

type writeOptions struct {
	ifVersion     *uint64
	ifAbsent      bool
	actor, reason string
	sync          bool
	strong        bool
	syncTimeout   time.Duration
	fence         *Fence // fence.go
}

// Synced makes the write answer only once the shared store has committed
// it (consistency "sync"), waiting at most timeout (0: the sidecar's
// default, 10 s). If the shared store does not confirm it in time the
// error matches ErrTimeout and is not retryable: the change is durable
// locally and syncs later, and a retry would write again. A change the
// shared store rejects for good fails with ErrUnavailable (not retryable)
// naming the reason, or ErrFenceRejected for a stale fence (WithFence). A
// change that meets a concurrent one in the shared store and loses the
// conflict (by the governor's resolver) fails with ErrVersionConflict
// (Actual: the shared store's version): it was applied locally, then
// replaced by the shared store's record. A sidecar without a shared store
// refuses sync writes (ErrUnavailable, not retryable).
func Synced(timeout time.Duration) WriteOption {
	return func(o *writeOptions) { o.sync, o.syncTimeout = true, timeout }
}

// StrongWrite makes the write a compare-and-set against the shared store
// (consistency "strong"): the sidecar reads the states from the shared store,
// checks IfVersion/IfAbsent against them, and answers once the shared store
// has committed the change, waiting at most timeout (0: the sidecar's
// default). A concurrent change that reached the shared store first makes it
// fail with ErrVersionConflict. A shared store that cannot be reached fails
// it with ErrUnavailable (retryable: nothing was written), and so does a
// state whose document in the shared store does not decode (not retryable:
// nothing was written). Not confirmed in time: ErrTimeout, not retryable
// (read it back first).
func StrongWrite(timeout time.Duration) WriteOption {
	return func(o *writeOptions) { o.strong, o.syncTimeout = true, timeout }
}

// ReadOption selects the consistency of a read.
type ReadOption func(*wire.Request)

// Bounded accepts the local copy if the sidecar knows it holds every change
// of the governor made more than maxStaleness ago; otherwise the sidecar
// reads the state from the shared store first (read-repair). If the shared
// store cannot be reached, or its document of the state does not decode,
// the local copy is returned with Stale set (without one: ErrNotFound, or
// ErrUnavailable, not retryable, for a document that does not decode).
// maxStaleness is rounded up to a millisecond.
func Bounded(maxStaleness time.Duration) ReadOption {
	ms := uint64((maxStaleness + time.Millisecond - 1) / time.Millisecond)
	if maxStaleness <= 0 {
		ms = 1
	}
	return func(r *wire.Request) { r.Consistency, r.MaxStalenessMS = wire.ReadBounded, ms }
}

// Strong reads the state from the shared store first; if the shared store
// cannot be reached the read fails with ErrUnavailable (retryable), and if
// its document of the state does not decode, with ErrUnavailable, not
// retryable.
func Strong() ReadOption {
	return func(r *wire.Request) { r.Consistency, r.MaxStalenessMS = wire.ReadStrong, 0 }
}

// IfVersion makes the write succeed only if the state's current version is v
// (0: only if the state does not exist).
func IfVersion(v uint64) WriteOption {
	return func(o *writeOptions) { o.ifVersion = &v }
}

// IfAbsent makes the write succeed only if the state does not exist (a
// deleted state counts as absent).
func IfAbsent() WriteOption {
	return func(o *writeOptions) { o.ifAbsent = true }
}

// Actor records who made the change (at most wire.MaxMetaSize bytes).
func Actor(a string) WriteOption {
	return func(o *writeOptions) { o.actor = a }
}

// Reason records why the change was made (at most wire.MaxMetaSize bytes).
func Reason(r string) WriteOption {
	return func(o *writeOptions) { o.reason = r }
}

func applyWriteOptions(req *wire.Request, opts []WriteOption, preconditions bool) error {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	for _, m := range []struct{ field, s string }{{"actor", o.actor}, {"reason", o.reason}} {
		if len(m.s) > wire.MaxMetaSize {
			e := errorf(wire.CodeTooLarge, "%s is %d bytes, limit %d", m.field, len(m.s), wire.MaxMetaSize)
			e.Field, e.Limit = m.field, wire.MaxMetaSize
			return e
		}
	}
	if !preconditions && (o.ifVersion != nil || o.ifAbsent) {
		return errorf(wire.CodeInvalidArgument, "%s preconditions are set per item (if_version, if_absent), not as options", req.Op)
	}
	req.IfVersion, req.IfAbsent = o.ifVersion, o.ifAbsent
	req.Actor, req.Reason = o.actor, o.reason
	fence, err := wireFence(o.fence)
	if err != nil {
		return err
	}
	req.Fence = fence
	if o.sync && o.strong {
		return errorf(wire.CodeInvalidArgument, "Synced and StrongWrite are two consistency levels: give one")
	}
	if o.sync || o.strong {
		req.Consistency = wire.WriteSync
		if o.strong {
			req.Consistency = wire.WriteStrong
		}
		if o.syncTimeout > 0 {
			req.TimeoutMS = uint64(max(o.syncTimeout/time.Millisecond, 1))
		}
	}
	return nil
}
