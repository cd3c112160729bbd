package localcache

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// Transactions (docs/decisions/0017): puts and deletes with their
// preconditions, and checks of states they do not write, all or nothing.
// The checks and the writes are decided in one committer step (stageChecks,
// then stage), so nothing can come between them; the writes are journaled
// as one strict batch whose first entry carries the checked versions, and
// the push loop applies the batch in one remote transaction that checks
// them again.

// TxnCheck is a precondition on a state a transaction does not write:
// exactly one of IfVersion (the current version must equal it; 0: the state
// must not exist) and Exists (the state must exist, or must not) is set. A
// tombstone counts as absent.
type TxnCheck struct {
	Key
	IfVersion *uint64
	Exists    *bool
}

// Txn is a transaction: its writes (puts and deletes, with their own
// preconditions) and its checks. A key appears at most once in a Txn.
type Txn struct {
	Writes []Write
	Checks []TxnCheck
	// LogID and LogTime, when LogID is set, name the transaction log
	// entry the caller writes (LogTxn, with that ID and Time) once WriteTxn
	// returns: for an async transaction, whose fate in the shared store
	// comes later. If it gives way there, the entry's outcome becomes
	// gave_way (txlog.go).
	LogID   string
	LogTime time.Time
}

// CheckedVersion is the version of a checked state that a transaction was
// decided on (a tombstone's version; 0: no record) and the op that made it,
// journaled with it.
type CheckedVersion struct {
	Key
	Version uint64
	OpID    string
}

// txnChecks marks a committer request as a transaction's.
type txnChecks struct {
	checks []TxnCheck
	logKey []byte // the transaction log key of Txn.LogID; nil: none
}

// WriteTxn applies t atomically: if every check and every write's
// precondition holds, all the writes are stored in one commit and
// journaled as one batch; otherwise nothing is. It returns the new records,
// in the order of t.Writes. A transaction with checks only writes nothing:
// it returns no records, or the failed check's error.
//
// Errors: those of WriteBatch; besides, a failed check is a
// *VersionConflictError (Expected: the version required, 0 for absent and
// for a failed Exists true; Actual: the state's version, 0 if absent), an
// invalid check a *KeyError wrapping a *FieldError, a key in t twice a
// *KeyError wrapping ErrInvalid, and more than wire.MaxTxnOps operations
// or wire.MaxTxnWrites writes a *FieldError wrapping ErrTooLarge.
func (s *Store) WriteTxn(ctx context.Context, t Txn) ([]Record, error) {
	prepared, size, err := s.prepareTxn(t)
	if err != nil {
		return nil, err
	}
	if len(prepared) == 0 {
		return []Record{}, s.checkLocal(ctx, t.Checks)
	}
	tc := &txnChecks{checks: t.Checks}
	if t.LogID != "" {
		tc.logKey = timeKey(kindTxLog, t.LogTime.UnixNano(), t.LogID)
	}
	rep := s.send(ctx, &request{ctx: ctx, writes: prepared, txn: tc,
		bytes: size, done: make(chan reply, 1)})
	return rep.recs, rep.err
}

// prepareTxn validates t and returns its prepared writes and their size.
func (s *Store) prepareTxn(t Txn) ([]Write, int, error) {
	n := len(t.Writes) + len(t.Checks)
	switch {
	case n > wire.MaxTxnOps:
		return nil, 0, &FieldError{Field: "ops", Limit: wire.MaxTxnOps,
			Err: fmt.Errorf("%w: %d operations in one transaction, limit %d", ErrTooLarge, n, wire.MaxTxnOps)}
	case len(t.Writes) > wire.MaxTxnWrites:
		return nil, 0, &FieldError{Field: "ops", Limit: wire.MaxTxnWrites,
			Err: fmt.Errorf("%w: %d writes in one transaction, limit %d", ErrTooLarge, len(t.Writes), wire.MaxTxnWrites)}
	}
	seen := make(map[Key]struct{}, n)
	twice := func(k Key) error {
		if _, dup := seen[k]; dup {
			return &KeyError{Op: "txn", Key: k,
				Err: &FieldError{Field: "state", Err: fmt.Errorf("%w: key appears twice in one transaction", ErrInvalid)}}
		}
		seen[k] = struct{}{}
		return nil
	}
	prepared := make([]Write, len(t.Writes))
	size := 0
	for i, w := range t.Writes {
		w, err := s.prepare(w)
		if err != nil {
			return nil, 0, err
		}
		if err := twice(w.Key); err != nil {
			return nil, 0, err
		}
		prepared[i] = w
		size += len(w.Value)
	}
	for _, c := range t.Checks {
		if err := validateKey("check", c.Key); err != nil {
			return nil, 0, err
		}
		if (c.IfVersion == nil) == (c.Exists == nil) {
			return nil, 0, &KeyError{Op: "check", Key: c.Key,
				Err: &FieldError{Field: "if_version", Err: fmt.Errorf("%w: a check needs exactly one of if_version and exists", ErrInvalid)}}
		}
		if err := twice(c.Key); err != nil {
			return nil, 0, err
		}
	}
	return prepared, size, nil
}

// checkFails returns the error of check c against cur (nil: absent), or
// nil if it holds.
func checkFails(c TxnCheck, cur *Record) error {
	var actual uint64
	if cur != nil && !cur.Deleted {
		actual = cur.Version
	}
	switch {
	case c.IfVersion != nil && *c.IfVersion != actual:
		return &VersionConflictError{Key: c.Key, Expected: *c.IfVersion, Actual: actual}
	case c.Exists != nil && *c.Exists != (actual != 0):
		return &VersionConflictError{Key: c.Key, Expected: 0, Actual: actual}
	}
	return nil
}

// checkLocal checks a transaction without writes against the local store.
func (s *Store) checkLocal(ctx context.Context, checks []TxnCheck) error {
	keys := make([]Key, len(checks))
	for i, c := range checks {
		keys[i] = c.Key
	}
	recs, err := s.getMany(ctx, keys, true)
	if err != nil {
		return err
	}
	for i, c := range checks {
		if err := checkFails(c, recs[i]); err != nil {
			return err
		}
	}
	return nil
}

// stageChecks checks r's transaction checks against g (the committer's view,
// with the earlier writes of its group) and returns the versions they were
// decided on. A strict transaction (a strong one) refuses a checked record
// that holds a change the shared store does not have, as its writes do.
func stageChecks(r *request, g *groupView) ([]CheckedVersion, error) {
	if r.txn == nil || len(r.txn.checks) == 0 {
		return nil, nil
	}
	strict := len(r.writes) > 0 && r.writes[0].Strict
	out := make([]CheckedVersion, len(r.txn.checks))
	for i, c := range r.txn.checks {
		cur, err := g.record(c.Key)
		if err != nil {
			return nil, fmt.Errorf("localcache: check %s: read current: %w", c.Key, err)
		}
		if strict && uncommitted(cur) {
			return nil, errStrictBehind
		}
		if err := checkFails(c, cur); err != nil {
			return nil, err
		}
		out[i] = CheckedVersion{Key: c.Key}
		if cur != nil {
			out[i].Version, out[i].OpID = cur.Version, cur.OpID
		}
	}
	return out, nil
}

// appendChecks encodes a journal entry's checks (codec.go, format 4).
func appendChecks(b []byte, cs []CheckedVersion) []byte {
	b = binary.AppendUvarint(b, uint64(len(cs)))
	for _, c := range cs {
		b = appendString(b, c.Governor)
		b = appendString(b, c.State)
		b = binary.AppendUvarint(b, c.Version)
		b = appendString(b, c.OpID)
	}
	return b
}

// checks decodes what appendChecks wrote.
func (d *decoder) checks() []CheckedVersion {
	n := d.uvarint()
	if d.err != nil || n == 0 || n > uint64(len(d.b)) {
		d.fail() // format 4 is written for entries with checks only
		return nil
	}
	out := make([]CheckedVersion, n)
	for i := range out {
		out[i] = CheckedVersion{Key: Key{Governor: d.string(), State: d.string()}, Version: d.uvarint(), OpID: d.string()}
	}
	return out
}

// syncChecks converts a journal entry's checks for the push loop.
func syncChecks(cs []CheckedVersion) []syncer.Check {
	if len(cs) == 0 {
		return nil
	}
	out := make([]syncer.Check, len(cs))
	for i, c := range cs {
		out[i] = syncer.Check{Key: syncer.Key(c.Key), Version: c.Version, OpID: c.OpID}
	}
	return out
}
