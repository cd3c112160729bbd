package sockapi

import (
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// opTxLog returns one page of the transaction log: the transactions started
// at from <= time < to (0: open), optionally only those with an outcome
// ("committed" or "failed") or touching a governor, oldest first. limit and
// cursor work as for conflicts (checkTimePage).
func (c *conn) opTxLog(req *wire.Request) {
	e := checkTimePage(req)
	if e == nil && req.Governor != "" {
		e = checkName("governor", "governor", req.Governor)
	}
	switch req.Outcome {
	case "", wire.TxnCommitted, wire.TxnFailed, wire.TxnGaveWay:
	default:
		if e == nil {
			e = invalid("outcome", "outcome %q is not %q, %q or %q", echoOp(req.Outcome), wire.TxnCommitted, wire.TxnFailed, wire.TxnGaveWay)
		}
	}
	ts, ok := c.s.store.(TxnStore)
	if e == nil && !ok {
		e = wire.Errorf(wire.CodeUnavailable, "this sidecar's store keeps no transaction log")
		e.Retryable = false
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	q := localcache.TxLogQuery{
		Outcome:  req.Outcome,
		Governor: req.Governor,
		Cursor:   req.Cursor,
		Limit:    min(req.Limit, localcache.MaxTxLogLimit),
		MaxBytes: c.s.opts.MaxFrame - frameReserve,
	}
	q.From, q.Until = timeBounds(req)
	page, err := ts.TxLog(c.ctx, q)
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpTxLog, localcache.Key{Governor: req.Governor}, err))
		return
	}
	out := make([]*wire.TxnLogEntry, len(page.Entries))
	for i, en := range page.Entries {
		w := &wire.TxnLogEntry{ID: en.ID, Time: en.Time.UnixNano(), DurationNS: int64(en.Duration), Actor: en.Actor,
			Reason: en.Reason, Consistency: en.Consistency, Attempts: en.Attempts, Outcome: en.Outcome, Code: en.Code,
			Error: en.Error, Ops: make([]wire.TxnLogOp, len(en.Ops))}
		for j, op := range en.Ops {
			w.Ops[j] = wire.TxnLogOp{Op: op.Op, Governor: op.Governor, State: op.State, Version: op.Version}
		}
		out[i] = w
	}
	c.resp = wire.Response{ID: req.ID, TxLog: out, Cursor: page.Next}
	c.out.put(&c.resp, "limit")
	c.resp = wire.Response{}
}
