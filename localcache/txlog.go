package localcache

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The transaction log: one entry per transaction a client ran (its id, a
// summary of its operations, attempts, outcome, error code, duration, actor
// and time), stored under keys ordered by start time (keys.go: v + time +
// id). Retention keeps at most TxLogMaxEntries entries, none older than
// TxLogMaxAge (the conflict ledger's approach: timelog.go); it runs every
// txLogTrimEvery entries logged.

// Transaction log bounds.
const (
	TxLogMaxEntries = 10_000
	TxLogMaxAge     = 7 * 24 * time.Hour
	// DefaultTxLogLimit is how many entries a query returns when its Limit
	// is 0; MaxTxLogLimit the most one page returns.
	DefaultTxLogLimit = 100
	MaxTxLogLimit     = 1000
	// txLogTrimEvery is how many entries are logged between two runs of
	// the retention.
	txLogTrimEvery = 64
)

// txLogState serializes the transaction log's retention.
type txLogState struct {
	mu     sync.Mutex
	logged atomic.Uint64
}

// TxnLogOp is one operation of a logged transaction: "put", "delete" or
// "check", its key, and the version it wrote (0 for a check, or when the
// transaction failed).
type TxnLogOp struct {
	Op string
	Key
	Version uint64
}

// TxnLogEntry is one transaction in the log. Outcome is "committed",
// "failed" or "gave_way" (wire.TxnCommitted...); Code and Error say why a
// transaction failed or gave way.
type TxnLogEntry struct {
	ID          string
	Time        time.Time // when it started
	Duration    time.Duration
	Actor       string
	Reason      string
	Consistency string
	Ops         []TxnLogOp
	Attempts    int
	Outcome     string
	Code        string
	Error       string
}

// TxLogQuery selects transaction log entries: those started at From or
// later and before Until (zero: open), with Outcome ("": any) and touching
// Governor ("": any), oldest first, after Cursor (a page's Next), at most
// Limit of them (0: DefaultTxLogLimit, capped at MaxTxLogLimit), stopping
// before MaxBytes of entries (0: no bound; at least one is returned).
type TxLogQuery struct {
	From, Until time.Time
	Outcome     string
	Governor    string
	Cursor      string
	Limit       int
	MaxBytes    int
}

// TxLogPage is one page of the transaction log; Next continues the query
// ("": done).
type TxLogPage struct {
	Entries []TxnLogEntry
	Next    string
}

// LogTxn adds e to the transaction log (durably) and applies the
// retention now and then.
func (s *Store) LogTxn(ctx context.Context, e TxnLogEntry) error {
	key := timeKey(kindTxLog, e.Time.UnixNano(), e.ID)
	if _, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		// The shared store may have settled it already (txSettle).
		prev, err := tx.get(key)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			if p, err := decodeTxnLog(prev); err == nil && p.Outcome != "" {
				e.Outcome, e.Code, e.Error = p.Outcome, p.Code, p.Error
			}
		}
		tx.set(key, encodeTxnLog(&e))
		return nil, nil
	}); err != nil {
		return fmt.Errorf("localcache: log transaction %s: %w", e.ID, err)
	}
	if s.txlog.logged.Add(1)%txLogTrimEvery == 0 {
		s.txlog.mu.Lock()
		defer s.txlog.mu.Unlock()
		if err := s.trimTime(ctx, kindTxLog, TxLogMaxEntries, TxLogMaxAge, nil); err != nil {
			return fmt.Errorf("localcache: transaction log retention: %w", err)
		}
	}
	return nil
}

// An async transaction written with Txn.LogID leaves, in its commit, the
// key txPushKey(its batch id) holding its log entry's key. When the push
// loop settles the transaction's journal entries (Ack, Park), txSettle drops
// that key and, unless the transaction was applied, sets the log entry's
// outcome: gave_way or failed. If LogTxn has not run yet (the shared store
// answered first, or the process died in between), txSettle writes the
// entry with what its key tells (id, start time) and the outcome, which
// LogTxn then keeps.

func txPushKey(batch string) []byte { return append([]byte{kindTxPush}, batch...) }

// txGaveWayMessage is the message of a transaction that gave way.
const txGaveWayMessage = "gave way in the shared store: another sidecar changed a state it wrote or checked first; " +
	"nothing of it was applied there, and this sidecar's copies of its states are the shared store's"

// txSettle records the outcome of the async transaction of batch, if it
// has a log entry on its way: outcome "" means it was applied (the entry
// stays committed). Only the first settlement of a batch counts.
func (tx *mutTx) txSettle(batch string, outcome, code, msg string) error {
	pk := txPushKey(batch)
	key, err := tx.get(pk)
	if err != nil || key == nil {
		return err
	}
	tx.del(pk)
	if outcome == "" {
		return nil
	}
	if len(key) < 9 || key[0] != kindTxLog {
		return fmt.Errorf("%w: transaction %s on its way to the shared store names log key %x", errCorrupt, batch, key)
	}
	e := TxnLogEntry{ID: string(key[9:]), Time: time.Unix(0, int64(binary.BigEndian.Uint64(key[1:9])))}
	v, err := tx.get(key)
	if err != nil {
		return err
	}
	if v != nil {
		if e, err = decodeTxnLog(v); err != nil {
			return fmt.Errorf("transaction log entry %x: %w", key, err)
		}
	}
	e.Outcome, e.Code, e.Error = outcome, code, msg
	tx.set(slices.Clone(key), encodeTxnLog(&e))
	return nil
}

// TxLog returns a page of the transaction log. Invalid arguments are
// *FieldError wrapping ErrInvalid.
func (s *Store) TxLog(ctx context.Context, q TxLogQuery) (TxLogPage, error) {
	if q.Governor != "" {
		if err := validateKey("txlog", Key{Governor: q.Governor, State: "x"}); err != nil {
			return TxLogPage{}, &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultTxLogLimit
	}
	r := timeRange{From: q.From, Until: q.Until, Cursor: q.Cursor, Limit: min(limit, MaxTxLogLimit), MaxBytes: q.MaxBytes, field: "txlog"}
	var page TxLogPage
	next, err := s.scanTime(ctx, kindTxLog, r, func(key, v []byte) (bool, error) {
		e, err := decodeTxnLog(v)
		if err != nil {
			return false, fmt.Errorf("transaction log entry %x: %w", key, err)
		}
		if q.Outcome != "" && e.Outcome != q.Outcome || q.Governor != "" && !e.touches(q.Governor) {
			return false, nil
		}
		page.Entries = append(page.Entries, e)
		return true, nil
	})
	if err != nil {
		return TxLogPage{}, fmt.Errorf("localcache: txlog: %w", err)
	}
	page.Next = next
	return page, nil
}

// touches reports whether e has an operation on governor.
func (e *TxnLogEntry) touches(governor string) bool {
	for _, op := range e.Ops {
		if op.Governor == governor {
			return true
		}
	}
	return false
}

// --- encoding ---
//
//	entry: format=1, s id, i time, i duration, s actor, s reason,
//	       s consistency, s outcome, s code, s error, u attempts,
//	       u n, n × (s op, s governor, s state, u version)

func encodeTxnLog(e *TxnLogEntry) []byte {
	b := []byte{formatV1}
	b = appendString(b, e.ID)
	b = binary.AppendVarint(b, e.Time.UnixNano())
	b = binary.AppendVarint(b, int64(e.Duration))
	for _, s := range []string{e.Actor, e.Reason, e.Consistency, e.Outcome, e.Code, e.Error} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(max(e.Attempts, 0)))
	b = binary.AppendUvarint(b, uint64(len(e.Ops)))
	for _, op := range e.Ops {
		b = appendString(b, op.Op)
		b = appendString(b, op.Governor)
		b = appendString(b, op.State)
		b = binary.AppendUvarint(b, op.Version)
	}
	return b
}

func decodeTxnLog(v []byte) (TxnLogEntry, error) {
	d := decoder{b: v}
	if f := d.byte(); d.err == nil && f != formatV1 {
		return TxnLogEntry{}, fmt.Errorf("%w: transaction log format %d", errCorrupt, f)
	}
	// Strings alias v: the caller's copy of the value.
	str := d.string
	e := TxnLogEntry{ID: str(), Time: time.Unix(0, d.varint()), Duration: time.Duration(d.varint())}
	e.Actor, e.Reason, e.Consistency, e.Outcome, e.Code, e.Error = str(), str(), str(), str(), str(), str()
	e.Attempts = int(d.uvarint())
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail()
	}
	if d.err == nil && n > 0 {
		e.Ops = make([]TxnLogOp, n)
		for i := range e.Ops {
			e.Ops[i] = TxnLogOp{Op: str(), Key: Key{Governor: str(), State: str()}, Version: d.uvarint()}
		}
	}
	return e, d.done("transaction log entry")
}
