package sockapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// maxCursor caps a list cursor sent back by a client. Cursors are opaque
// strings produced by the store; the cap only bounds what a client can send.
const maxCursor = 4 * wire.MaxNameSize

// maxOpEcho caps how much of an unknown op name an error message repeats.
const maxOpEcho = 64

// handle serves one request frame. Reads are answered before it returns;
// writes are started on their own goroutine (goWrite), or served before it
// returns while the peer does not pipeline (write).
//
// Order of checks: decoding (shape and field types, see parseRequest), the
// hello rule (any op but hello before hello: ProtocolError, then the
// connection is closed), the id (must be non-zero: id 0 is reserved for
// errors that are not about a request), the access policy (authorize:
// PermissionDenied), then the op's own checks. Nothing
// reaches the store before every check of the request has passed.
func (c *conn) handle(body []byte) {
	req := &c.req
	id, werr := c.s.lim.parseRequest(body, req)
	if c.s.opts.Observer != nil {
		defer c.observeRequest(werr)() // spans and metrics: see observe.go
	}
	if werr != nil {
		c.s.counters.countRequest(opOther)
		c.replyError(id, werr)
		return
	}
	op := opIndex(req.Op)
	c.s.counters.countRequest(op)
	if !c.hello && op != opHello {
		c.replyError(req.ID, wire.Errorf(wire.CodeProtocol, "the first request on a connection must be hello"))
		c.closed = true
		return
	}
	if req.ID == 0 {
		c.replyError(0, invalid("id", "id is required and must not be 0"))
		return
	}
	if e := c.authorize(op, req); e != nil { // access policy: see access.go
		c.replyError(req.ID, e)
		return
	}
	switch op {
	case opHello:
		c.opHello(req)
	case opPing:
		c.resp = wire.Response{ID: req.ID}
		c.out.put(&c.resp, "")
	case opGet:
		c.opGet(req)
	case opPut, opDelete:
		c.opWrite(req, op == opDelete)
	case opBatchGet:
		c.opBatchGet(req)
	case opBatchPut:
		c.opBatchPut(req)
	case opList:
		c.opList(req)
	case opStats:
		c.opStats(req)
	case opWatch:
		c.opWatch(req)
	case opUnwatch:
		c.opUnwatch(req)
	case opPending:
		c.opPending(req)
	case opFailed:
		c.opFailed(req)
	case opFlush:
		c.opFlush(req)
	case opEvents:
		c.opEvents(req)
	case opStateAt:
		c.opStateAt(req)
	case opValidate:
		c.opValidate(req)
	case opConflicts:
		c.opConflicts(req) // conflicts.go
	case opLockAcquire, opLockRelease, opLockExtend, opLockStatus:
		c.opLock(op, req) // locks.go
	case opSnapshot, opTransition, opCleanup, opReplay:
		c.opEventSourcing(op, req) // snapshots.go
	case opResolverRegister:
		c.opResolverRegister(req) // resolver.go
	case opResolverUnregister:
		c.opResolverUnregister(req)
	case opResolve:
		c.opResolve(req)
	case opTxn:
		c.opTxn(req) // txn.go
	case opTxLog:
		c.opTxLog(req) // txlog.go
	default:
		if req.Op == "" {
			c.replyError(req.ID, invalid("op", "op is required"))
			return
		}
		name := req.Op
		if len(name) > maxOpEcho {
			name = name[:maxOpEcho] + "..."
		}
		c.replyError(req.ID, wire.Errorf(wire.CodeUnknownOp, "unknown op %q", name))
	}
}

// opHello agrees on the protocol version. versions must list
// wire.ProtocolVersion: a missing list is InvalidArgument, a list without it
// is ProtocolError and closes the connection. A second hello is
// InvalidArgument (field "op").
func (c *conn) opHello(req *wire.Request) {
	if c.hello {
		c.replyError(req.ID, invalid("op", "hello was already done on this connection"))
		return
	}
	if len(req.Versions) == 0 {
		c.replyError(req.ID, invalid("versions", "versions is required"))
		return
	}
	if !slices.Contains(req.Versions, wire.ProtocolVersion) {
		c.replyError(req.ID, wire.Errorf(wire.CodeProtocol,
			"no common protocol version: the server speaks %d, the client offered %v", wire.ProtocolVersion, req.Versions))
		c.closed = true
		return
	}
	if e := checkMeta("client", req.Client); e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.hello = true
	o := &c.s.opts
	c.log.Debug("hello", "client", req.Client)
	c.resp = wire.Response{ID: req.ID, Hello: &wire.Hello{
		Version:  wire.ProtocolVersion,
		Server:   o.ServerName,
		NodeID:   c.s.store.NodeID(),
		MaxFrame: o.MaxFrame,
		MaxValue: o.MaxValue,
		MaxBatch: o.MaxBatch,

		IdleTimeoutMS: o.IdleTimeout.Milliseconds(),
	}}
	c.out.put(&c.resp, "")
}

func (c *conn) opGet(req *wire.Request) {
	k, e := checkKey("", req.Governor, req.State)
	var m readMode
	if e == nil {
		m, e = c.readConsistency(req, false)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.awaitWrites([]localcache.Key{k}, false) // does not keep the slice: it stays on the stack
	if c.needsFetch(k, m) {
		c.goWrite(req.ID, []localcache.Key{k}, c.readReserve(1), func() *wire.Response { return c.fetchGet(k, m) }, nil)
		return
	}
	r, err := c.s.store.Get(c.ctx, k)
	if err != nil {
		if errors.Is(err, localcache.ErrNotFound) && c.readsThrough(k, m) {
			c.goWrite(req.ID, []localcache.Key{k}, c.readReserve(1), func() *wire.Response { return c.fetchGet(k, m) }, nil)
			return
		}
		c.replyError(req.ID, c.storeError("get", k, err))
		return
	}
	toWire(&c.rec, &r, true)
	c.stampAge(&c.rec, &c.age1)
	c.resp = wire.Response{ID: req.ID, Record: &c.rec}
	c.out.put(&c.resp, "value")
	c.rec = wire.Record{} // do not pin the value
}

// opWrite serves put and delete. put requires value (msgpack nil counts as
// absent: store "nothing" by deleting); delete refuses value and if_absent.
// if_absent means if_version 0; both may be set only if they agree.
func (c *conn) opWrite(req *wire.Request, del bool) {
	k, e := checkKey("", req.Governor, req.State)
	if e == nil {
		e = checkWriteFields("", del, req.Value, req.IfVersion, req.IfAbsent, c.s.opts.MaxValue)
	}
	var m writeMode
	if e == nil {
		m, e = c.checkWrite(req)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	w := localcache.Write{
		Key:       k,
		Delete:    del,
		Value:     req.Value, // parseRequest copied it out of the frame buffer
		IfVersion: req.IfVersion,
		IfAbsent:  req.IfAbsent,
		Actor:     req.Actor,
		Reason:    req.Reason,
		Fence:     fenceOf(req.Fence),
		Confirm:   m.sync,
	}
	op := wire.OpPut
	if del {
		op = wire.OpDelete
	}
	var seq uint64
	c.write(m, req, []localcache.Key{k}, func() *wire.Response {
		if m.strong {
			rs, e := c.writeStrong(m, op, k, []localcache.Write{w})
			if e != nil {
				return c.errorResponse(e)
			}
			rec := new(wire.Record)
			toWire(rec, &rs[0], false)
			rec.Pending = false
			return &wire.Response{Record: rec}
		}
		r, err := c.s.store.Write(c.ctx, w)
		if err != nil {
			return c.errorResponse(c.storeError(op, k, err))
		}
		seq = r.Seq
		rec := new(wire.Record)
		toWire(rec, &r, false)
		return &wire.Response{Record: rec}
	}, c.syncThen(m, k, func() []uint64 { return []uint64{seq} }))
}

// syncThen returns, for a sync write, the step that waits for the shared
// store once the write is applied (see goWrite); nil for an async write.
// seqs returns the journal entries of the write.
func (c *conn) syncThen(m writeMode, k localcache.Key, seqs func() []uint64) func(*wire.Response) *wire.Response {
	if !m.sync {
		return nil
	}
	return func(resp *wire.Response) *wire.Response {
		if e := c.syncWait(m, k, seqs()); e != nil {
			return c.errorResponse(e)
		}
		recs := resp.Records
		if resp.Record != nil {
			recs = []*wire.Record{resp.Record}
		}
		c.refreshSynced(recs)
		return resp
	}
}

// opBatchGet reads up to Options.MaxBatch states. The reply has one entry per
// key, in order, nil for a missing state. A reply that would exceed
// max_frame is TooLarge (field "keys"): fetch fewer keys at once.
func (c *conn) opBatchGet(req *wire.Request) {
	if max := c.s.opts.MaxBatch; len(req.Keys) > max {
		c.replyError(req.ID, tooLarge("keys", max, "keys has %d entries, limit %d", len(req.Keys), max))
		return
	}
	m, e := c.readConsistency(req, false)
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	keys := c.keys[:0]
	for i, wk := range req.Keys {
		k, e := checkKey(fmt.Sprintf("keys[%d].", i), wk.Governor, wk.State)
		if e != nil {
			c.replyError(req.ID, e)
			return
		}
		keys = append(keys, k)
	}
	c.keys = keys
	c.awaitWrites(keys, false)
	if len(keys) > 0 && slices.ContainsFunc(keys, func(k localcache.Key) bool { return c.needsFetch(k, m) }) {
		keys := slices.Clone(keys)
		c.goWrite(req.ID, uniqueKeys(keys), c.readReserve(len(keys)), func() *wire.Response { return c.fetchBatch(keys, nil, m) }, nil)
		return
	}
	var got []*localcache.Record
	if len(keys) > 0 {
		var err error
		got, err = c.s.store.GetMany(c.ctx, keys)
		if err == nil && len(got) != len(keys) {
			err = fmt.Errorf("store returned %d records for %d keys", len(got), len(keys))
		}
		if err != nil {
			c.replyError(req.ID, c.storeError(wire.OpBatchGet, localcache.Key{}, err))
			return
		}
	}
	var misses []int
	for i, r := range got {
		if r == nil && c.readsThrough(keys[i], m) {
			misses = append(misses, i)
		}
	}
	if len(misses) > 0 {
		keys := slices.Clone(keys)
		c.goWrite(req.ID, uniqueKeys(keys), c.readReserve(len(keys)), func() *wire.Response { return c.fetchBatch(keys, misses, m) }, nil)
		return
	}
	if e := c.batchTooLarge(got); e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.resp = wire.Response{ID: req.ID, Records: c.readRecords(got)}
	c.out.put(&c.resp, "keys")
	c.releaseRecords()
}

// uniqueKeys returns keys without repeats (a new slice): the keys an
// ordered operation registers (see order.enter) must be distinct.
func uniqueKeys(keys []localcache.Key) []localcache.Key {
	seen := make(map[localcache.Key]struct{}, len(keys))
	out := make([]localcache.Key, 0, len(keys))
	for _, k := range keys {
		if _, ok := seen[k]; !ok {
			seen[k] = struct{}{}
			out = append(out, k)
		}
	}
	return out
}

// batchTooLarge refuses a batch_get reply that cannot fit before encoding
// it: values and names alone are a lower bound of its size.
func (c *conn) batchTooLarge(got []*localcache.Record) *wire.Error {
	size := 0
	for _, r := range got {
		if r != nil {
			size += len(r.Value) + len(r.Governor) + len(r.State)
		}
	}
	if max := c.s.opts.MaxFrame; size > max {
		return tooLarge("keys", max, "reply would be over %d bytes, over max_frame %d: fetch fewer keys at once", size, max)
	}
	return nil
}

// checkWrite checks what every write request may carry besides its
// states: actor, reason, fence and write consistency.
func (c *conn) checkWrite(req *wire.Request) (writeMode, *wire.Error) {
	if e := checkMeta("actor", req.Actor); e != nil {
		return writeMode{}, e
	}
	if e := checkMeta("reason", req.Reason); e != nil {
		return writeMode{}, e
	}
	if e := checkFence(req.Fence); e != nil { // fence.go
		return writeMode{}, e
	}
	return c.writeConsistency(req)
}

// opBatchPut applies up to Options.MaxBatch writes atomically. Each item obeys
// the put/delete rules, and a batch writes each state at most once. actor,
// reason and fence apply to every item. An empty batch succeeds without
// touching the store.
func (c *conn) opBatchPut(req *wire.Request) {
	m, e := c.checkWrite(req)
	if max := c.s.opts.MaxBatch; e == nil && len(req.Items) > max {
		e = tooLarge("items", max, "items has %d entries, limit %d", len(req.Items), max)
	}
	if max := wire.MaxTxnWrites; e == nil && c.s.opts.Sync != nil && len(req.Items) > max {
		// The batch is atomic in the shared store too: one Firestore
		// transaction, which a larger batch would not fit.
		e = tooLarge("items", max,
			"items has %d entries, limit %d with a shared store (each writes a record and an event: two of Firestore's 500 writes per transaction)",
			len(req.Items), max)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	if len(req.Items) == 0 {
		c.resp = wire.Response{ID: req.ID}
		c.out.put(&c.resp, "")
		return
	}
	ws := make([]localcache.Write, len(req.Items))
	keys := make([]localcache.Key, len(req.Items))
	seen := make(map[localcache.Key]int, len(req.Items))
	for i, it := range req.Items {
		prefix := fmt.Sprintf("items[%d].", i)
		k, e := checkKey(prefix, it.Governor, it.State)
		if e == nil {
			e = checkWriteFields(prefix, it.Delete, it.Value, it.IfVersion, it.IfAbsent, c.s.opts.MaxValue)
		}
		if e == nil {
			if j, dup := seen[k]; dup {
				e = invalid(prefix+"state", "items[%d] and items[%d] both write %s/%s: a batch writes each state at most once",
					j, i, k.Governor, k.State)
			}
		}
		if e != nil {
			c.replyError(req.ID, e)
			return
		}
		seen[k] = i
		keys[i] = k
		ws[i] = localcache.Write{
			Key:       k,
			Delete:    it.Delete,
			Value:     it.Value,
			IfVersion: it.IfVersion,
			IfAbsent:  it.IfAbsent,
			Actor:     req.Actor,
			Reason:    req.Reason,
			Fence:     fenceOf(req.Fence),
			Confirm:   m.sync,
		}
	}
	var seqs []uint64
	c.write(m, req, keys, func() *wire.Response {
		var rs []localcache.Record
		var err error
		if m.strong {
			var e *wire.Error
			if rs, e = c.writeStrong(m, wire.OpBatchPut, localcache.Key{}, ws); e != nil {
				return c.errorResponse(e)
			}
			for i := range rs {
				rs[i].Pending = false
			}
		} else {
			rs, err = c.s.store.WriteBatch(c.ctx, ws)
		}
		if err == nil && len(rs) != len(ws) {
			err = fmt.Errorf("store returned %d records for %d writes", len(rs), len(ws))
		}
		if err != nil {
			return c.errorResponse(c.storeError(wire.OpBatchPut, localcache.Key{}, err))
		}
		recs := make([]wire.Record, len(rs))
		out := make([]*wire.Record, len(rs))
		for i := range rs {
			toWire(&recs[i], &rs[i], false)
			out[i] = &recs[i]
			seqs = append(seqs, rs[i].Seq)
		}
		return &wire.Response{Records: out}
	}, c.syncThen(m, localcache.Key{}, func() []uint64 { return seqs }))
}

// opList lists live states of a governor in name order. limit: 0 means
// wire.DefaultListLimit, negative is InvalidArgument, above
// wire.MaxListLimit is lowered to it (the cursor tells the client to go on).
// prefix is optional: at most wire.MaxNameSize bytes of UTF-8 without '/'.
// The reply stays under max_frame: the store stops before max_frame less
// frameReserve bytes of values, and if names and metadata would still
// overflow, the page is fetched again with fewer records.
func (c *conn) opList(req *wire.Request) {
	e := checkName("governor", "governor", req.Governor)
	if e == nil {
		e = checkPrefix(req.Prefix)
	}
	if e == nil && len(req.Cursor) > maxCursor {
		e = tooLarge("cursor", maxCursor, "cursor is %d bytes, limit %d", len(req.Cursor), maxCursor)
	}
	if e == nil && req.Limit < 0 {
		e = invalid("limit", "limit must not be negative")
	}
	if e == nil {
		_, e = c.readConsistency(req, true)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	limit := req.Limit
	switch {
	case limit == 0:
		limit = wire.DefaultListLimit
	case limit > wire.MaxListLimit:
		limit = wire.MaxListLimit
	}
	maxFrame := c.s.opts.MaxFrame
	maxBytes := maxFrame - frameReserve
	c.awaitWrites(nil, true)
	recs, next, err := c.s.store.List(c.ctx, req.Governor, req.Prefix, req.Cursor, limit, maxBytes)
	if err == nil {
		if n := fitting(recs, maxFrame-frameReserve/2-len(next)); n < len(recs) {
			recs, next, err = c.s.store.List(c.ctx, req.Governor, req.Prefix, req.Cursor, max(n, 1), maxBytes)
		}
	}
	if err != nil {
		c.replyError(req.ID, c.storeError(wire.OpList, localcache.Key{Governor: req.Governor}, err))
		return
	}
	ptrs := make([]*localcache.Record, len(recs))
	for i := range recs {
		ptrs[i] = &recs[i]
	}
	c.resp = wire.Response{ID: req.ID, Records: c.readRecords(ptrs), Cursor: next}
	c.out.put(&c.resp, "limit")
	c.releaseRecords()
}

// fitting returns how many of recs fit in budget bytes of reply, by a
// generous estimate of each record's encoded size.
func fitting(recs []localcache.Record, budget int) int {
	const perRecord = 256 // field names, numbers, headers
	total := 0
	for i := range recs {
		r := &recs[i]
		total += perRecord + len(r.Value) + len(r.Governor) + len(r.State) +
			len(r.Change.Actor) + len(r.Change.Reason) + len(r.Origin)
		if total > budget {
			return i
		}
	}
	return len(recs)
}

// opStats merges the store's statistics with the server's counters.
func (c *conn) opStats(req *wire.Request) {
	st := c.s.store.Stats()
	conns, requests, errs := c.s.Stats()
	c.resp = wire.Response{ID: req.ID, Stats: &wire.Stats{
		NodeID:        c.s.store.NodeID(),
		Origin:        c.s.store.Origin(),
		Server:        c.s.opts.ServerName,
		UptimeSeconds: time.Since(c.s.start).Seconds(),
		Connections:   conns,
		Requests:      requests,
		Errors:        errs,
		States:        st.States,
		JournalDepth:  st.JournalDepth,
		Parked:        st.Parked,
		Commits:       st.Commits,
		CommitWrites:  st.CommitWrites,
		CacheHits:     st.CacheHits,
		CacheMisses:   st.CacheMisses,
		CacheBytes:    st.CacheBytes,
		LSMBytes:      st.LSMBytes,
		VlogBytes:     st.VlogBytes,
	}}
	c.s.addConflictStats(c.resp.Stats)
	c.out.put(&c.resp, "")
}

// readRecords converts the store records a local read returns into the
// connection's reusable reply slices (valid until releaseRecords), each
// with its age. nil entries stay nil.
func (c *conn) readRecords(rs []*localcache.Record) []*wire.Record {
	if len(rs) == 0 {
		return nil
	}
	if cap(c.recs) < len(rs) {
		c.recs = make([]wire.Record, len(rs))
		c.precs = make([]*wire.Record, len(rs))
		c.ages = make([]uint64, len(rs))
	}
	recs, out, ages := c.recs[:len(rs)], c.precs[:len(rs)], c.ages[:len(rs)]
	for i, r := range rs {
		if r == nil {
			out[i] = nil
			continue
		}
		toWire(&recs[i], r, true)
		c.stampAge(&recs[i], &ages[i])
		out[i] = &recs[i]
	}
	return out
}

// releaseRecords drops the references the reusable reply slices hold, once
// the reply is encoded, so that they do not pin values.
func (c *conn) releaseRecords() {
	clear(c.recs)
	clear(c.precs)
	c.resp = wire.Response{}
}

// toWire converts a store record. Every record the server returns comes
// from the local store: FromCache is true (a read that asked the shared
// store clears it); Pending and SyncedAt are the store's. Write replies
// leave the value out.
func toWire(dst *wire.Record, r *localcache.Record, withValue bool) {
	*dst = wire.Record{
		Governor:  r.Governor,
		State:     r.State,
		Version:   r.Version,
		Deleted:   r.Deleted,
		UpdatedAt: r.UpdatedAt,
		Change:    wire.Change{Actor: r.Change.Actor, Reason: r.Change.Reason, Time: r.Change.Time},
		Origin:    r.Origin,
		FromCache: true,
		Pending:   r.Pending,
		SyncedAt:  r.SyncedAt,
	}
	if withValue {
		dst.Value = wire.Raw(r.Value)
	}
}

// errorResponse counts e and wraps it in a reply.
func (c *conn) errorResponse(e *wire.Error) *wire.Response {
	c.s.counters.countError(e.Code)
	return &wire.Response{Error: e}
}

// storeError translates a store error into the reply's error. k names the
// state the request was about, when there is one. Internal details are
// logged, never sent.
func (c *conn) storeError(op string, k localcache.Key, err error) *wire.Error {
	var (
		vc  *localcache.VersionConflictError
		ke  *localcache.KeyError
		fe  *localcache.FieldError
		fre *localcache.FenceRejectedError
		e   *wire.Error
	)
	if errors.As(err, &ke) {
		k = ke.Key
	}
	write := op == wire.OpPut || op == wire.OpDelete || op == wire.OpBatchPut
	switch {
	case errors.As(err, &vc):
		if vc.Key != (localcache.Key{}) {
			k = vc.Key
		}
		exp, act := vc.Expected, vc.Actual
		e = wire.Errorf(wire.CodeVersionConflict, "version conflict")
		e.Expected, e.Actual = &exp, &act
	case errors.As(err, &fre):
		e = fenceRejected(fre, "rejected by this sidecar") // fence.go
	case errors.Is(err, localcache.ErrNotFound):
		e = wire.Errorf(wire.CodeNotFound, "state not found")
	case errors.Is(err, localcache.ErrTooLarge):
		// The store's limit may be lower than the server's.
		e = tooLarge("value", c.s.opts.MaxValue, "too large")
		if errors.As(err, &fe) {
			e.Field, e.Limit = fe.Field, fe.Limit
			e.Message = fe.Field + " too large"
		}
	case errors.Is(err, localcache.ErrInvalid):
		// The server's checks should have caught it first.
		c.log.Warn("store rejected a request the server accepted", "op", op, "err", err)
		e = invalid("", "invalid write")
		if errors.As(err, &fe) {
			e.Field = fe.Field
			e.Message = "invalid " + fe.Field
		}
	case errors.Is(err, localcache.ErrClosed):
		e = wire.Errorf(wire.CodeUnavailable, "the store is closed")
	case errors.Is(err, localcache.ErrFailed):
		// Acknowledged writes are safe in the store's log; it refuses
		// requests until a restart replays it. Retrying here cannot help.
		c.log.Error("store has failed", "op", op, "err", err)
		e = wire.Errorf(wire.CodeUnavailable, "the local store stopped after a failure; restart the sidecar")
		e.Retryable = false
		if write {
			e.Message += "; the write may or may not have been applied"
		}
	case errors.Is(err, context.Canceled):
		e = wire.Errorf(wire.CodeUnavailable, "the server is shutting down")
		if write {
			e.Message += "; the write may or may not have been applied"
		}
	case errors.Is(err, context.DeadlineExceeded):
		e = wire.Errorf(wire.CodeTimeout, "the store did not answer in time")
		if write {
			e.Message += "; the write may or may not have been applied"
		}
	default:
		c.log.Error("store failed", "op", op, "governor", k.Governor, "state", k.State, "err", err)
		return wire.Errorf(wire.CodeInternal, "internal error")
	}
	e.Governor, e.State = k.Governor, k.State
	return e
}

// Request checks. Each returns nil or the error to reply with; field names
// the offending request field ("items[3].state").

func invalid(field, format string, args ...any) *wire.Error {
	e := wire.Errorf(wire.CodeInvalidArgument, format, args...)
	e.Field = field
	return e
}

func tooLarge(field string, limit int, format string, args ...any) *wire.Error {
	e := wire.Errorf(wire.CodeTooLarge, format, args...)
	e.Field, e.Limit = field, int64(limit)
	return e
}

func checkName(field, kind, s string) *wire.Error {
	if err := wire.ValidateName(kind, s); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

// checkKey validates a governor and state name; prefix is prepended to the
// field names ("keys[2].").
func checkKey(prefix, governor, state string) (localcache.Key, *wire.Error) {
	if e := checkName(prefix+"governor", "governor", governor); e != nil {
		return localcache.Key{}, e
	}
	if e := checkName(prefix+"state", "state", state); e != nil {
		return localcache.Key{}, e
	}
	return localcache.Key{Governor: governor, State: state}, nil
}

// checkWriteFields applies the put/delete rules to one write.
func checkWriteFields(prefix string, del bool, value wire.Raw, ifVersion *uint64, ifAbsent bool, maxValue int) *wire.Error {
	switch {
	case del && len(value) > 0:
		return invalid(prefix+"value", "a delete carries no value")
	case del && ifAbsent:
		return invalid(prefix+"if_absent", "if_absent applies to puts only")
	case !del && len(value) == 0:
		return invalid(prefix+"value", "value is required (msgpack nil is no value: delete the state instead)")
	case len(value) > maxValue:
		return tooLarge(prefix+"value", maxValue, "value is %d bytes, limit %d", len(value), maxValue)
	case ifVersion != nil && ifAbsent && *ifVersion != 0:
		// if_absent is if_version 0: both together must agree.
		return invalid(prefix+"if_version", "if_version %d contradicts if_absent", *ifVersion)
	}
	return nil
}

// checkMeta checks actor, reason and the hello's client name: UTF-8, at most
// wire.MaxMetaSize bytes.
func checkMeta(field, s string) *wire.Error {
	if len(s) > wire.MaxMetaSize {
		return tooLarge(field, wire.MaxMetaSize, "%s is %d bytes, limit %d", field, len(s), wire.MaxMetaSize)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "%s is not valid UTF-8", field)
	}
	return nil
}

func checkPrefix(p string) *wire.Error {
	switch {
	case len(p) > wire.MaxNameSize:
		return invalid("prefix", "prefix is %d bytes, limit %d", len(p), wire.MaxNameSize)
	case !utf8.ValidString(p):
		return invalid("prefix", "prefix is not valid UTF-8")
	case strings.IndexByte(p, '/') >= 0:
		return invalid("prefix", "prefix contains '/'")
	}
	return nil
}
