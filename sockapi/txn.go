package sockapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// The txn op (docs/protocol.md, "txn"; docs/decisions/0017): puts, deletes
// and checks of several states, all or nothing, at the async, sync or
// strong level; every transaction is logged (txlog.go).

// TxnStore is an optional capability of a Store (found by type assertion;
// localcache.Store has it): transactions (localcache.Store.WriteTxn) and
// their log.
type TxnStore interface {
	WriteTxn(ctx context.Context, t localcache.Txn) ([]localcache.Record, error)
	LogTxn(ctx context.Context, e localcache.TxnLogEntry) error
	TxLog(ctx context.Context, q localcache.TxLogQuery) (localcache.TxLogPage, error)
}

// TxnSync is an optional capability of a Sync (found by type assertion):
// strong transactions (localcache.Store.WriteTxnStrong), tried at most
// attempts times; used is how many attempts it took. Errors are those of
// Sync.WriteStrong.
type TxnSync interface {
	WriteTxnStrong(ctx context.Context, t localcache.Txn, attempts int) (recs []localcache.Record, used int, err error)
}

// txnSeq numbers the transactions of this process, for their ids.
var txnSeq atomic.Uint64

// txnRequest is a validated txn request.
type txnRequest struct {
	txn   localcache.Txn
	keys  []localcache.Key // every key, for ordering
	index map[localcache.Key]int
	ops   []localcache.TxnLogOp
	what  []string // each op's precondition, for error messages
}

// checkTxn validates req's ops.
func (c *conn) checkTxn(req *wire.Request) (*txnRequest, *wire.Error) {
	switch {
	case len(req.Ops) == 0:
		return nil, invalid("ops", "ops is empty: a transaction needs at least one put, delete or check")
	case len(req.Ops) > wire.MaxTxnOps:
		return nil, tooLarge("ops", wire.MaxTxnOps, "ops has %d entries, limit %d (Firestore's writes per transaction)", len(req.Ops), wire.MaxTxnOps)
	}
	t := &txnRequest{index: make(map[localcache.Key]int, len(req.Ops)), ops: make([]localcache.TxnLogOp, len(req.Ops)),
		what: make([]string, len(req.Ops))}
	fence := fenceOf(req.Fence)
	for i, op := range req.Ops {
		prefix := fmt.Sprintf("ops[%d].", i)
		k, e := checkKey(prefix, op.Governor, op.State)
		if e != nil {
			return nil, e
		}
		if j, dup := t.index[k]; dup {
			return nil, invalid(prefix+"state", "ops[%d] and ops[%d] both name %s/%s: a transaction names each state at most once (to check a state it writes, give the write if_version)",
				j, i, k.Governor, k.State)
		}
		t.index[k] = i
		t.keys = append(t.keys, k)
		t.ops[i] = localcache.TxnLogOp{Op: op.Op, Key: k}
		t.what[i] = precondition(op)
		switch op.Op {
		case wire.TxnPut, wire.TxnDelete:
			del := op.Op == wire.TxnDelete
			if e := checkWriteFields(prefix, del, op.Value, op.IfVersion, op.IfAbsent, c.s.opts.MaxValue); e != nil {
				return nil, e
			}
			if op.Exists != nil {
				return nil, invalid(prefix+"exists", "exists applies to checks only: give a %s if_version or if_absent", op.Op)
			}
			t.txn.Writes = append(t.txn.Writes, localcache.Write{Key: k, Delete: del, Value: op.Value, IfVersion: op.IfVersion,
				IfAbsent: op.IfAbsent, Actor: req.Actor, Reason: req.Reason, Fence: fence})
		case wire.TxnCheck:
			ch, e := checkOf(prefix, k, op)
			if e != nil {
				return nil, e
			}
			t.txn.Checks = append(t.txn.Checks, ch)
		case "":
			return nil, invalid(prefix+"op", "op is required: \"put\", \"delete\" or \"check\"")
		default:
			return nil, invalid(prefix+"op", "op %q is not \"put\", \"delete\" or \"check\"", echoOp(op.Op))
		}
	}
	if n := len(t.txn.Writes); n > wire.MaxTxnWrites {
		return nil, tooLarge("ops", wire.MaxTxnWrites,
			"the transaction has %d puts and deletes, limit %d (each writes a record and an event: two of Firestore's 500 writes per transaction)", n, wire.MaxTxnWrites)
	}
	return t, nil
}

// checkOf validates a check op: exactly one of if_version, if_absent (the
// same as exists false) and exists; no value.
func checkOf(prefix string, k localcache.Key, op wire.TxnOp) (localcache.TxnCheck, *wire.Error) {
	ch := localcache.TxnCheck{Key: k, IfVersion: op.IfVersion, Exists: op.Exists}
	set := 0
	for _, b := range []bool{op.IfVersion != nil, op.IfAbsent, op.Exists != nil} {
		if b {
			set++
		}
	}
	switch {
	case len(op.Value) > 0:
		return ch, invalid(prefix+"value", "a check carries no value")
	case set == 0:
		return ch, invalid(prefix+"if_version", "a check needs one of if_version, if_absent and exists")
	case set > 1:
		return ch, invalid(prefix+"if_version", "a check takes one of if_version, if_absent and exists, not several")
	case op.IfAbsent:
		absent := false
		ch.Exists = &absent
	}
	return ch, nil
}

// precondition describes op's precondition ("" for none).
func precondition(op wire.TxnOp) string {
	switch {
	case op.IfVersion != nil:
		return "if_version " + strconv.FormatUint(*op.IfVersion, 10)
	case op.IfAbsent:
		return "if_absent"
	case op.Exists != nil && *op.Exists:
		return "exists"
	case op.Exists != nil:
		return "must not exist"
	}
	return ""
}

// echoOp shortens an op name for an error message.
func echoOp(op string) string {
	if len(op) > maxOpEcho {
		return op[:maxOpEcho] + "..."
	}
	return op
}

// opTxn runs a transaction. The reply holds the records it wrote (in the
// order of its puts and deletes) and txn {id, attempts}.
func (c *conn) opTxn(req *wire.Request) {
	m, e := c.checkWrite(req)
	var t *txnRequest
	if e == nil {
		t, e = c.checkTxn(req)
	}
	ts, ok := c.s.store.(TxnStore)
	if e == nil && !ok {
		e = wire.Errorf(wire.CodeUnavailable, "this sidecar's store does not run transactions")
		e.Retryable = false
	}
	var strong TxnSync
	if e == nil && m.strong {
		if strong, ok = c.s.opts.Sync.(TxnSync); !ok {
			e = wire.Errorf(wire.CodeUnavailable, "this sidecar's shared store does not run strong transactions")
			e.Retryable = false
		}
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	level := req.Consistency
	if level == "" {
		level = wire.WriteAsync
	}
	entry := localcache.TxnLogEntry{
		ID:          c.s.store.NodeID() + "-t" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(txnSeq.Add(1), 10),
		Actor:       req.Actor,
		Reason:      req.Reason,
		Consistency: level,
		Ops:         t.ops,
	}
	var seqs []uint64
	c.goWrite(req.ID, t.keys, c.writeReserve(t.keys, req), func() *wire.Response {
		entry.Time = time.Now()
		var (
			rs  []localcache.Record
			err error
			e   *wire.Error
		)
		entry.Attempts = 1
		if m.strong {
			ctx, cancel := c.waitContext(m.timeout)
			rs, entry.Attempts, err = strong.WriteTxnStrong(ctx, t.txn, c.s.opts.TxnAttempts)
			cancel()
			if err != nil {
				e = c.strongError(m, wire.OpTxn, localcache.Key{}, err)
			}
			for i := range rs {
				rs[i].Pending = false
			}
		} else {
			tx := t.txn
			if !m.sync && c.s.opts.Sync != nil {
				// Its fate in the shared store comes later: the log
				// entry is updated if it gives way there.
				tx.LogID, tx.LogTime = entry.ID, entry.Time
			}
			if rs, err = ts.WriteTxn(c.ctx, tx); err != nil {
				e = c.storeError(wire.OpTxn, localcache.Key{}, err)
			}
		}
		if e == nil && len(rs) != len(t.txn.Writes) {
			e = c.storeError(wire.OpTxn, localcache.Key{}, fmt.Errorf("store returned %d records for %d writes", len(rs), len(t.txn.Writes)))
		}
		if e != nil {
			c.txnFailed(ts, &entry, t, e)
			return c.errorResponse(e)
		}
		recs := make([]wire.Record, len(rs))
		out := make([]*wire.Record, len(rs))
		for i := range rs {
			toWire(&recs[i], &rs[i], false)
			out[i] = &recs[i]
			seqs = append(seqs, rs[i].Seq)
			entry.Ops[t.index[rs[i].Key]].Version = rs[i].Version
		}
		resp := &wire.Response{Records: out, Txn: &wire.TxnResult{ID: entry.ID, Attempts: entry.Attempts}}
		if !m.sync {
			c.txnDone(ts, &entry, "", "")
		}
		return resp
	}, c.txnSyncThen(m, ts, &entry, t, func() []uint64 { return seqs }))
}

// txnSyncThen is syncThen for a sync transaction: it also logs the
// outcome once the shared store answered.
func (c *conn) txnSyncThen(m writeMode, ts TxnStore, entry *localcache.TxnLogEntry, t *txnRequest, seqs func() []uint64) func(*wire.Response) *wire.Response {
	then := c.syncThen(m, localcache.Key{}, seqs)
	if then == nil {
		return nil
	}
	return func(resp *wire.Response) *wire.Response {
		out := then(resp)
		if out.Error != nil {
			c.txnFailed(ts, entry, t, out.Error)
			return out
		}
		c.txnDone(ts, entry, "", "")
		return out
	}
}

// txnFailed completes a failed transaction's log entry and logs it; the
// message of an error about one key names its op.
func (c *conn) txnFailed(ts TxnStore, entry *localcache.TxnLogEntry, t *txnRequest, e *wire.Error) {
	if i, ok := t.index[localcache.Key{Governor: e.Governor, State: e.State}]; ok {
		what := t.ops[i].Op
		if t.what[i] != "" {
			what += " " + t.what[i]
		}
		e.Message = fmt.Sprintf("ops[%d] (%s %s/%s): %s", i, what, e.Governor, e.State, e.Message)
	}
	for i := range entry.Ops {
		entry.Ops[i].Version = 0
	}
	c.txnDone(ts, entry, string(e.Code), e.Message)
}

// txnDone logs entry with its outcome: committed when code is "". A
// failure to log is logged, not reported to the client.
func (c *conn) txnDone(ts TxnStore, entry *localcache.TxnLogEntry, code, msg string) {
	entry.Duration = time.Since(entry.Time)
	entry.Outcome, entry.Code, entry.Error = wire.TxnCommitted, code, msg
	if code != "" {
		entry.Outcome = wire.TxnFailed
	}
	// The log outlives the connection: a closing connection still logs.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), 5*time.Second)
	defer cancel()
	if err := ts.LogTxn(ctx, *entry); err != nil && !errors.Is(err, localcache.ErrClosed) {
		c.log.Warn("transaction log write failed", "txn", entry.ID, "err", err)
	}
}
