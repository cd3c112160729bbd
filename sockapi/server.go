package sockapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/txn"
)

// Store is what the server needs from the local store; *localcache.Store
// implements it. It must be safe for concurrent use: the server calls it
// from every connection at once.
//
// Every method must honour ctx: Shutdown cancels it when its own deadline
// passes and then waits for the calls to return. Errors are read with
// errors.Is / errors.As against localcache's sentinels and types:
// ErrNotFound (Get, and Write/WriteBatch deleting a missing state),
// *VersionConflictError, *FenceRejectedError (a write's stale fence),
// ErrTooLarge, ErrInvalid and ErrClosed. Anything else is reported to the
// client as Internal, and logged.
type Store interface {
	NodeID() string
	// Origin names the store's changes: the node id and the store's
	// incarnation (localcache.Store.Origin).
	Origin() string
	// Get returns a live state; a missing state or a tombstone is an error
	// wrapping localcache.ErrNotFound.
	Get(ctx context.Context, k localcache.Key) (localcache.Record, error)
	// GetMany returns one entry per key, nil for missing states.
	GetMany(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, error)
	// Write applies one put or delete durably and returns the new record
	// (without its value).
	Write(ctx context.Context, w localcache.Write) (localcache.Record, error)
	// WriteBatch applies all writes or none.
	WriteBatch(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error)
	// List returns live states of governor whose names start with prefix,
	// in name order after cursor, at most limit of them, stopping before
	// maxBytes of values; next is "" when the listing is complete.
	List(ctx context.Context, governor, prefix, cursor string, limit, maxBytes int) ([]localcache.Record, string, error)
	Stats() localcache.Stats

	// Subscribe delivers every change of governor's states whose names
	// start with prefix (watch), until the subscription is closed, falls
	// more than buffer changes or maxBytes behind (Err:
	// localcache.ErrLagged) or the store closes (localcache.ErrClosed).
	Subscribe(governor, prefix string, buffer int, maxBytes int64) (*localcache.Subscription, error)
	// WaitSynced waits until the journal entries seqs (Record.Seq of the
	// records Write and WriteBatch return) are in the shared store (sync
	// writes). One the shared store rejected for good is a
	// *localcache.ParkedError; ctx's error when ctx ends first.
	WaitSynced(ctx context.Context, seqs ...uint64) error
	// Journal returns up to limit journal entries (changes not yet in the
	// shared store) with Seq > afterSeq, oldest first (pending).
	Journal(ctx context.Context, afterSeq uint64, limit int) ([]localcache.JournalEntry, error)
	// Failed returns up to limit parked entries (rejected by the shared
	// store for good) with Seq > afterSeq, in journal order (failed).
	Failed(ctx context.Context, afterSeq uint64, limit int) ([]localcache.ParkedEntry, error)
	// LastSeq returns the journal sequence number of the last change
	// acknowledged; WaitFlushed waits until no journal entry up to upTo is
	// pending (flush), or ctx ends (its error).
	LastSeq() uint64
	WaitFlushed(ctx context.Context, upTo uint64) error

	// The local event log (see localcache/history.go): a page of events,
	// a state as of a time or a version, and a check of the log. Invalid
	// arguments wrap localcache.ErrInvalid; a state that did not exist
	// then, localcache.ErrNotFound; an answer the local log cannot give,
	// localcache.ErrHistoryGap.
	QueryEvents(ctx context.Context, q localcache.EventQuery) (localcache.EventPage, error)
	StateAt(ctx context.Context, k localcache.Key, at time.Time) (localcache.PastState, error)
	StateAtVersion(ctx context.Context, k localcache.Key, version uint64) (localcache.PastState, error)
	Validate(ctx context.Context, governor, state string) (localcache.ValidationReport, error)
}

// Options configures a Server. The zero value of each field selects its
// default.
type Options struct {
	// Logger receives connection errors and internal failures. Default:
	// discard.
	Logger *slog.Logger
	// ServerName is announced in the hello reply and in stats, e.g.
	// "tai-sidecar/0.1.0". Default "tai-sidecar".
	ServerName string
	// MaxFrame caps a frame body in both directions. Default
	// wire.DefaultMaxFrame; at least minMaxFrame.
	MaxFrame int
	// MaxValue caps an app value, in encoded bytes. Default and upper bound
	// wire.MaxValueSize; it is lowered so that a record with the largest
	// value still fits in one frame (MaxValueFor(MaxFrame)).
	MaxValue int
	// MaxBatch caps the entries of one batch_get or batch_put. Default and
	// upper bound wire.MaxBatch.
	MaxBatch int
	// MaxValueDepth caps how deep maps and arrays may nest inside an app
	// value (a scalar is depth 0, [1] depth 1). Default and upper bound
	// MaxValueDepthLimit.
	MaxValueDepth int
	// MaxInflight caps the requests running off the reader at once for one
	// connection (writes, lock ops, reads that ask the shared store); when
	// that many are running the server stops reading from the connection
	// until one finishes. Default 128. (The memory they hold, requests and
	// replies, is bounded apart: see connBudget.)
	MaxInflight int
	// MaxConns caps open connections. A connection over the cap gets an
	// Unavailable error frame with id 0 and is closed. Default 1024.
	MaxConns int
	// MaxConnsPerUID caps the open connections of one peer uid, refused
	// like those over MaxConns, so that one uid cannot take every
	// connection. Peers whose credentials are unknown are not counted.
	// Default 256.
	MaxConnsPerUID int
	// Access is the access policy by peer uid and gid (see Access). The
	// zero value allows every peer every op.
	Access Access
	// IdleTimeout closes a connection on which no complete request arrived
	// for that long, or whose peer did not take a reply for that long (up
	// to an eighth longer: the deadlines are not moved on every request).
	// 0 means no timeout.
	IdleTimeout time.Duration
	// ReadTimeout closes a connection whose peer started a request frame
	// and did not send all of it within that long, after a Timeout error
	// frame with id 0. 0 means no timeout (IdleTimeout still applies).
	ReadTimeout time.Duration
	// Observer, when set, is told about every request (see Observer).
	// Default: none, at no cost.
	Observer Observer

	// Sync is the shared store, for reads that read through or repair and
	// for sync writes; nil: local only (bounded and strong reads and sync
	// writes are refused).
	Sync Sync
	// FetchTimeout bounds a read's call to the shared store: a bounded or
	// strong read, and the read-through of a local miss (which uses at
	// most defaultReadThrough). Default 5 s.
	FetchTimeout time.Duration
	// SyncTimeout is how long a sync write waits for the shared store when
	// the request sets no timeout_ms. Default 10 s. A request may ask for
	// up to max(SyncTimeout, 1 minute).
	SyncTimeout time.Duration
	// TxnAttempts is how often a strong txn is tried when it loses to
	// concurrent changes (txn.go). Default localcache.DefaultTxnAttempts.
	TxnAttempts int
	// WatchBuffer is how many changes a watch may fall behind (not yet
	// written to the peer) before it is ended as lagging. Default
	// localcache.DefaultSubscribeBuffer.
	WatchBuffer int
	// WatchBufferBytes bounds the same changes in bytes (values, names and
	// metadata; one change always fits, however large). Default 8 MiB.
	WatchBufferBytes int64
	// MaxWatches caps the watches open on one connection. Default 64.
	MaxWatches int

	// Locks is the lock service of the lock ops (locks.go); nil: they fail
	// with Unavailable (not retryable), as distributed locks need the
	// shared store.
	Locks txn.Locks

	// Apps are the apps that decide conflicts, for resolver_register and
	// resolve (resolver.go): the hub whose Factory the push loop's "app"
	// resolver was made by. Nil: resolver_register fails with Unavailable
	// (not retryable), as conflicts need the shared store.
	Apps *conflict.AppHub
}

// Defaults and bounds of Options.
const (
	defaultServerName  = "tai-sidecar"
	defaultMaxInflight = 128
	// defaultWatchBufferBytes: with the default 64 watches a connection,
	// a peer that reads none of its pushes pins at most 512 MiB, not the
	// 1024 changes of up to 1 MB each per watch of the count alone.
	defaultWatchBufferBytes = 8 << 20
	defaultMaxConns         = 1024
	defaultMaxPerUID        = 256
	defaultMaxWatches       = 64
	// defaultFetchTimeout bounds a bounded or strong read's call to the
	// shared store; defaultReadThrough the read-through of a local miss.
	defaultFetchTimeout = 5 * time.Second
	defaultReadThrough  = 2 * time.Second
	// defaultSyncTimeout is how long a sync write waits for the shared
	// store; maxSyncTimeout the most a request's timeout_ms may ask.
	defaultSyncTimeout = 10 * time.Second
	maxSyncTimeout     = time.Minute
	// frameReserve is the room a frame keeps beside a value: two names of
	// wire.MaxNameSize, actor and reason of wire.MaxMetaSize, the origin
	// node id and the record's fixed fields, with margin.
	frameReserve = 8 << 10
	// minMaxFrame is the smallest accepted MaxFrame.
	minMaxFrame = 2 * frameReserve
)

// MaxValueFor returns the largest MaxValue that frames of maxFrame bytes
// carry: wire.MaxValueSize, or less when a frame is smaller, so that a
// record with the largest value still fits in one frame.
func MaxValueFor(maxFrame int) int { return min(wire.MaxValueSize, maxFrame-frameReserve) }

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ServerName == "" {
		o.ServerName = defaultServerName
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = wire.DefaultMaxFrame
	}
	if o.MaxFrame < minMaxFrame {
		o.MaxFrame = minMaxFrame
	}
	if o.MaxFrame > 1<<31-1 {
		o.MaxFrame = 1<<31 - 1
	}
	if o.MaxValue <= 0 || o.MaxValue > MaxValueFor(o.MaxFrame) {
		o.MaxValue = MaxValueFor(o.MaxFrame)
	}
	if o.MaxBatch <= 0 || o.MaxBatch > wire.MaxBatch {
		o.MaxBatch = wire.MaxBatch
	}
	if o.MaxValueDepth <= 0 || o.MaxValueDepth > MaxValueDepthLimit {
		o.MaxValueDepth = MaxValueDepthLimit
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = defaultMaxInflight
	}
	if o.MaxConns <= 0 {
		o.MaxConns = defaultMaxConns
	}
	if o.MaxConnsPerUID <= 0 {
		o.MaxConnsPerUID = defaultMaxPerUID
	}
	if o.IdleTimeout < 0 {
		o.IdleTimeout = 0
	}
	if o.ReadTimeout < 0 {
		o.ReadTimeout = 0
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = defaultFetchTimeout
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = defaultSyncTimeout
	}
	if o.WatchBufferBytes <= 0 {
		o.WatchBufferBytes = defaultWatchBufferBytes
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = localcache.DefaultSubscribeBuffer
	}
	if o.MaxWatches <= 0 {
		o.MaxWatches = defaultMaxWatches
	}
	return o
}

// ErrServing is returned by a second call to Serve.
var ErrServing = errors.New("sockapi: server is already serving")

// Server serves the wire protocol on a listener. Create it with NewServer,
// run it with Serve and stop it with Shutdown (graceful) or by cancelling
// Serve's context (immediate).
type Server struct {
	store Store
	opts  Options
	lim   limits // opts' request limits, for parseRequest
	log   *slog.Logger
	start time.Time

	counters counters
	reads    readCounters // stale reads and read repairs (conflicts.go)
	denied   deniedLog
	// offlineUntil: reads do not ask the shared store before this time
	// (Unix ns; 0: ask), after it was found unreachable (consistency.go).
	offlineUntil atomic.Int64

	mu       sync.Mutex
	serving  bool
	closing  bool
	ln       net.Listener
	lnClosed bool
	cancel   context.CancelFunc // cancels connection contexts: hard stop
	conns    map[*conn]struct{}
	uidConns map[uint32]int // open connections per known peer uid
	connWG   sync.WaitGroup
	done     chan struct{} // closed when Serve returns
	// draining is closed when Shutdown or a hard stop begins: sync writes
	// stop waiting for the shared store (consistency.go).
	draining  chan struct{}
	drainOnce sync.Once
	nextConn  uint64
	// holders names this process in lock holder ids (locks.go).
	holders holderNames

	// onPanic, when set, is called with every recovered panic (tests).
	onPanic func(v any)
}

// NewServer returns a server for store. It starts nothing.
func NewServer(store Store, opts Options) *Server {
	opts = opts.withDefaults()
	return &Server{
		store:    store,
		opts:     opts,
		lim:      limits{batch: opts.MaxBatch, valueDepth: opts.MaxValueDepth},
		log:      opts.Logger,
		start:    time.Now(),
		conns:    make(map[*conn]struct{}),
		uidConns: make(map[uint32]int),
		done:     make(chan struct{}),
		draining: make(chan struct{}),
	}
}

// Serve accepts connections on ln and serves them until Shutdown is called
// or ctx is done; it closes ln. It returns nil after Shutdown or ctx, once
// every connection goroutine has exited, or the listener's error if
// accepting fails for good (after closing every connection).
//
// Cancelling ctx is a hard stop: in-flight store calls are cancelled and
// connections closed at once. Use Shutdown to drain. Serve may be called
// once; a second call returns ErrServing.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return ErrServing
	}
	s.serving = true
	if s.closing {
		// Shutdown came first.
		s.mu.Unlock()
		ln.Close()
		close(s.done)
		return nil
	}
	cctx, cancel := context.WithCancel(ctx)
	s.ln, s.cancel = ln, cancel
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, s.hardStop)
	err := s.acceptLoop(cctx, ln)
	if err != nil {
		s.hardStop()
	}
	stop()
	s.connWG.Wait()
	cancel()
	close(s.done)
	return err
}

// acceptLoop accepts until the listener is closed. It returns nil when it
// was closed by Shutdown or a hard stop.
func (s *Server) acceptLoop(ctx context.Context, ln net.Listener) error {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			if !temporaryAcceptError(err) {
				return fmt.Errorf("sockapi: accept: %w", err)
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		backoff = 0
		peer, ok := s.admit(nc)
		if !ok {
			continue
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue // the next Accept fails: the listener is closed
		}
		if len(s.conns) >= s.opts.MaxConns {
			s.mu.Unlock()
			s.reject(nc, wire.Errorf(wire.CodeUnavailable, "too many connections (limit %d)", s.opts.MaxConns))
			s.log.Warn("connection rejected: too many connections", "limit", s.opts.MaxConns)
			continue
		}
		if peer.Known && s.uidConns[peer.UID] >= s.opts.MaxConnsPerUID {
			s.mu.Unlock()
			s.reject(nc, wire.Errorf(wire.CodeUnavailable, "too many connections from uid %d (limit %d)", peer.UID, s.opts.MaxConnsPerUID))
			s.log.Warn("connection rejected: too many connections from one uid", "uid", peer.UID, "limit", s.opts.MaxConnsPerUID)
			continue
		}
		s.nextConn++
		c := newConn(ctx, s, nc, s.nextConn)
		c.peer = peer
		if peer.Known {
			s.uidConns[peer.UID]++
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

func temporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// admit reads the peer's credentials and checks them against the
// allowlist. A refused connection gets a PermissionDenied frame with id 0
// and is closed; ok is false.
func (s *Server) admit(nc net.Conn) (p Peer, ok bool) {
	p, err := peerOf(nc)
	if err != nil {
		// The peer may have gone already; without credentials it is
		// unknown, which an allowlist refuses.
		s.log.Debug("reading peer credentials failed", "err", err)
	}
	a := &s.opts.Access
	if a.AllowsPeer(p) {
		return p, true
	}
	msg := fmt.Sprintf("uid %d gid %d may not connect", p.UID, p.GID)
	if !p.Known {
		msg = "peer credentials unknown: may not connect"
	}
	s.reject(nc, wire.Errorf(wire.CodePermissionDenied, "%s", msg))
	s.logDenied(p, "connection refused: peer not allowed")
	return p, false
}

// reject tells a refused connection why it is closed, with e in a frame
// with id 0, and closes it.
func (s *Server) reject(nc net.Conn, e *wire.Error) {
	defer nc.Close()
	s.counters.countError(e.Code)
	frame, err := wire.NewCodec().AppendFrame(nil, &wire.Response{Error: e})
	if err != nil {
		return
	}
	// A new socket's send buffer is empty: this does not block, but bound
	// it anyway.
	nc.SetWriteDeadline(time.Now().Add(time.Second))
	nc.Write(frame)
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// closeListenerLocked closes the listener once. s.mu must be held.
func (s *Server) closeListenerLocked() {
	if s.ln != nil && !s.lnClosed {
		s.lnClosed = true
		s.ln.Close()
	}
}

// hardStop stops everything now: no more accepts, store calls cancelled,
// connections closed.
func (s *Server) hardStop() {
	s.drainOnce.Do(func() { close(s.draining) })
	s.mu.Lock()
	s.closing = true
	s.closeListenerLocked()
	if s.cancel != nil {
		s.cancel()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		c.stopping.Store(true)
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Not under s.mu: Close waits for a reader that is busy inside its
	// poller callback (see rawSockIO) to leave it, and connections that end
	// meanwhile take s.mu to remove themselves.
	for _, c := range conns {
		c.nc.Close()
	}
}

// Shutdown stops the server gracefully: it closes the listener, stops
// reading new requests (a request whose frame was not read yet gets no
// reply), lets in-flight requests finish and their replies be written, then
// closes the connections, and returns once Serve has returned.
//
// If ctx ends first, Shutdown cancels the in-flight store calls, closes
// every connection, waits for Serve to return and returns ctx's error.
// Calling Shutdown before Serve makes a later Serve return nil at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.drainOnce.Do(func() { close(s.draining) })
	s.mu.Lock()
	s.closing = true
	serving := s.serving
	s.closeListenerLocked()
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()
	if !serving {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.hardStop()
		<-s.done
		return ctx.Err()
	}
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.peer.Known {
		if s.uidConns[c.peer.UID]--; s.uidConns[c.peer.UID] <= 0 {
			delete(s.uidConns, c.peer.UID)
		}
	}
	s.mu.Unlock()
}

// Stats returns the number of open connections, and the requests served per
// op and the error replies sent per code since NewServer. Requests that are
// not one of the known ops (unknown op, or a body that could not be read as a
// request) count under "other". The maps are fresh copies.
func (s *Server) Stats() (conns int64, requests, errors map[string]uint64) {
	requests, errors = s.counters.snapshot()
	return s.counters.conns.Load(), requests, errors
}

// counters are the server's request, error and connection counts.
type counters struct {
	conns    atomic.Int64
	requests [numOps]atomic.Uint64
	errors   [len(errorCodes)]atomic.Uint64
}

// Ops by index, for counting. opOther counts anything else.
const (
	opHello = iota
	opPing
	opGet
	opPut
	opDelete
	opBatchGet
	opBatchPut
	opList
	opStats
	opWatch
	opUnwatch
	opPending
	opFailed
	opFlush
	opEvents
	opStateAt
	opValidate
	opLockAcquire
	opLockRelease
	opLockExtend
	opLockStatus
	opConflicts
	opSnapshot
	opTransition
	opCleanup
	opReplay
	opResolverRegister
	opResolverUnregister
	opResolve
	opTxn
	opTxLog
	opOther
	numOps
)

var opNames = [numOps]string{
	opHello: wire.OpHello, opPing: wire.OpPing, opGet: wire.OpGet, opPut: wire.OpPut,
	opDelete: wire.OpDelete, opBatchGet: wire.OpBatchGet, opBatchPut: wire.OpBatchPut,
	opList: wire.OpList, opStats: wire.OpStats, opWatch: wire.OpWatch, opUnwatch: wire.OpUnwatch,
	opPending: wire.OpPending, opFailed: wire.OpFailed, opFlush: wire.OpFlush, opEvents: wire.OpEvents,
	opStateAt: wire.OpStateAt, opValidate: wire.OpValidate,
	opLockAcquire: wire.OpLockAcquire, opLockRelease: wire.OpLockRelease, opLockExtend: wire.OpLockExtend,
	opLockStatus: wire.OpLockStatus, opConflicts: wire.OpConflicts,
	opSnapshot: wire.OpSnapshot, opTransition: wire.OpTransition, opCleanup: wire.OpCleanup, opReplay: wire.OpReplay,
	opResolverRegister: wire.OpResolverRegister, opResolverUnregister: wire.OpResolverUnregister, opResolve: wire.OpResolve,
	opTxn: wire.OpTxn, opTxLog: wire.OpTxLog,
	opOther: "other",
}

func opIndex(op string) int {
	switch op {
	case wire.OpHello:
		return opHello
	case wire.OpPing:
		return opPing
	case wire.OpGet:
		return opGet
	case wire.OpPut:
		return opPut
	case wire.OpDelete:
		return opDelete
	case wire.OpBatchGet:
		return opBatchGet
	case wire.OpBatchPut:
		return opBatchPut
	case wire.OpList:
		return opList
	case wire.OpStats:
		return opStats
	case wire.OpWatch:
		return opWatch
	case wire.OpUnwatch:
		return opUnwatch
	case wire.OpPending:
		return opPending
	case wire.OpFailed:
		return opFailed
	case wire.OpFlush:
		return opFlush
	case wire.OpEvents:
		return opEvents
	case wire.OpStateAt:
		return opStateAt
	case wire.OpValidate:
		return opValidate
	case wire.OpLockAcquire:
		return opLockAcquire
	case wire.OpLockRelease:
		return opLockRelease
	case wire.OpLockExtend:
		return opLockExtend
	case wire.OpLockStatus:
		return opLockStatus
	case wire.OpConflicts:
		return opConflicts
	case wire.OpSnapshot:
		return opSnapshot
	case wire.OpTransition:
		return opTransition
	case wire.OpCleanup:
		return opCleanup
	case wire.OpReplay:
		return opReplay
	case wire.OpResolverRegister:
		return opResolverRegister
	case wire.OpResolverUnregister:
		return opResolverUnregister
	case wire.OpResolve:
		return opResolve
	case wire.OpTxn:
		return opTxn
	case wire.OpTxLog:
		return opTxLog
	}
	return opOther
}

// errorCodes lists the codes the server counts; the last slot counts any
// other code.
var errorCodes = [...]wire.Code{
	wire.CodeNotFound, wire.CodeVersionConflict, wire.CodeFenceRejected, wire.CodeLockHeld,
	wire.CodeDeadlockDetected, wire.CodeUnavailable, wire.CodeInvalidArgument, wire.CodeUnknownOp,
	wire.CodeTooLarge, wire.CodeTimeout, wire.CodeProtocol, wire.CodeInternal, wire.CodePermissionDenied,
	wire.CodeLockLost, wire.CodeWrongState, "other",
}

func (c *counters) countRequest(op int) { c.requests[op].Add(1) }

func (c *counters) countError(code wire.Code) {
	for i, k := range errorCodes[:len(errorCodes)-1] {
		if k == code {
			c.errors[i].Add(1)
			return
		}
	}
	c.errors[len(errorCodes)-1].Add(1)
}

// snapshot copies the non-zero counts into maps.
func (c *counters) snapshot() (requests, errors map[string]uint64) {
	requests = make(map[string]uint64)
	for i := range c.requests {
		if n := c.requests[i].Load(); n > 0 {
			requests[opNames[i]] = n
		}
	}
	errors = make(map[string]uint64)
	for i := range c.errors {
		if n := c.errors[i].Load(); n > 0 {
			errors[string(errorCodes[i])] = n
		}
	}
	return requests, errors
}
