package client

import (
	"context"
	"iter"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// TxnOp is one operation of a transaction (see Txn): build them with
// TxnPut, TxnDelete and TxnCheck, or fill in the wire struct.
type TxnOp = wire.TxnOp

// TxnPut is a put of a transaction; value is encoded as msgpack. ifVersion,
// when not nil, requires the state's version to equal it (0: absent).
func TxnPut(gov, state string, value any, ifVersion *uint64) (TxnOp, error) {
	b, err := wire.Marshal(value)
	if err != nil {
		e := errorf(wire.CodeInvalidArgument, "encode value: %v", err)
		e.Governor, e.State, e.Field = gov, state, "value"
		return TxnOp{}, e
	}
	return TxnOp{Op: wire.TxnPut, Governor: gov, State: state, Value: b, IfVersion: ifVersion}, nil
}

// TxnDelete is a delete of a transaction, with an optional version
// precondition.
func TxnDelete(gov, state string, ifVersion *uint64) TxnOp {
	return TxnOp{Op: wire.TxnDelete, Governor: gov, State: state, IfVersion: ifVersion}
}

// TxnCheckVersion is a check of a state the transaction does not write: its
// version must be version (0: the state must not exist).
func TxnCheckVersion(gov, state string, version uint64) TxnOp {
	return TxnOp{Op: wire.TxnCheck, Governor: gov, State: state, IfVersion: &version}
}

// TxnCheckExists is a check that a state exists (or, with exists false,
// does not).
func TxnCheckExists(gov, state string, exists bool) TxnOp {
	return TxnOp{Op: wire.TxnCheck, Governor: gov, State: state, Exists: &exists}
}

// TxnResult is what a transaction returns: the records it wrote, in the
// order of its puts and deletes, its id in the sidecar's txlog, and how
// many attempts it took (more than 1 only at the strong level).
type TxnResult struct {
	Records  []*Record
	ID       string
	Attempts int
}

// Txn runs ops as one transaction: every put and delete is applied, or none
// is. A failed check or precondition is an *Error with code
// VersionConflict naming the state (Expected, Actual). opts take Actor,
// Reason, WithFence (for the whole transaction), Synced or StrongWrite
// (the consistency: default async); IfVersion and IfAbsent are per op.
// At most wire.MaxTxnOps operations, wire.MaxTxnWrites of them writes.
func (c *Client) Txn(ctx context.Context, ops []TxnOp, opts ...WriteOption) (*TxnResult, error) {
	writes := 0
	for i, op := range ops {
		if err := validKey(op.Governor, op.State); err != nil {
			err.(*Error).Field = "ops"
			return nil, err
		}
		switch op.Op {
		case wire.TxnPut, wire.TxnDelete:
			writes++
		case wire.TxnCheck:
		default:
			e := errorf(wire.CodeInvalidArgument, "ops[%d]: op %q is not put, delete or check", i, op.Op)
			e.Field = "ops"
			return nil, e
		}
	}
	switch {
	case len(ops) == 0:
		e := errorf(wire.CodeInvalidArgument, "a transaction needs at least one operation")
		e.Field = "ops"
		return nil, e
	case len(ops) > wire.MaxTxnOps:
		e := errorf(wire.CodeTooLarge, "%d operations in one transaction, limit %d", len(ops), wire.MaxTxnOps)
		e.Field, e.Limit = "ops", wire.MaxTxnOps
		return nil, e
	}
	req := &wire.Request{Op: wire.OpTxn, Ops: ops}
	if err := applyWriteOptions(req, opts, false); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Records) != writes || resp.Txn == nil {
		return nil, protocolErrorf("txn of %d writes answered with %d records", writes, len(resp.Records))
	}
	for _, r := range resp.Records {
		if r == nil {
			return nil, protocolErrorf("txn reply has a missing record")
		}
	}
	return &TxnResult{Records: wrapRecords(resp.Records), ID: resp.Txn.ID, Attempts: resp.Txn.Attempts}, nil
}

// TxLogOptions select entries of the sidecar's transaction log.
type TxLogOptions struct {
	// Since and Until bound the start time: Since <= time < Until; a zero
	// bound is open.
	Since, Until time.Time
	// Outcome keeps only "committed", "failed" or "gave_way" transactions
	// ("": all).
	Outcome string
	// Governor keeps only transactions with an operation on it ("": all).
	Governor string
	// Limit is the most entries in one page: the sidecar's default (100) if
	// zero, at most 1000. Keep paging until the cursor is "".
	Limit int
	// Cursor continues a query: pass the cursor the previous page returned.
	Cursor string
}

// TxLog returns one page of the sidecar's transaction log, oldest first,
// and the cursor of the next page ("" when the query is complete).
func (c *Client) TxLog(ctx context.Context, opts TxLogOptions) ([]*wire.TxnLogEntry, string, error) {
	if err := checkLimit(wire.OpTxLog, opts.Limit); err != nil {
		return nil, "", err
	}
	req := &wire.Request{Op: wire.OpTxLog, Governor: opts.Governor, Outcome: opts.Outcome, Limit: opts.Limit, Cursor: opts.Cursor}
	if err := setTimeRange(req, opts.Since, opts.Until); err != nil {
		return nil, "", err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, "", err
	}
	for _, e := range resp.TxLog {
		if e == nil {
			return nil, "", protocolErrorf("txlog reply has a missing entry")
		}
	}
	return resp.TxLog, resp.Cursor, nil
}

// TxLogAll iterates over every entry opts selects, following cursors. A
// failure is yielded once, with a nil entry, and ends the iteration.
func (c *Client) TxLogAll(ctx context.Context, opts TxLogOptions) iter.Seq2[*wire.TxnLogEntry, error] {
	return allPages("txlog", opts.Cursor, func(cursor string) ([]*wire.TxnLogEntry, string, error) {
		opts.Cursor = cursor
		return c.TxLog(ctx, opts)
	})
}
