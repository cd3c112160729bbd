package localcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
)

// The conflict ledger: every true conflict the push loop settled, stored
// in the journal transaction that acks its outcome (syncer.Ack.Conflict),
// once per conflict id, under keys ordered by decision time (keys.go: x +
// time + id, and y + id to find it by id). Retention keeps at most
// Options.LedgerMaxEntries entries, none older than Options.LedgerMaxAge;
// it runs after acks that added entries.

// Ledger defaults and bounds.
const (
	DefaultLedgerMaxEntries = 10_000
	DefaultLedgerMaxAge     = 30 * 24 * time.Hour
	// DefaultLedgerLimit is how many entries a query returns when its
	// Limit is 0; MaxLedgerLimit the most one page returns.
	DefaultLedgerLimit = 100
	MaxLedgerLimit     = 1000
)

// ledgerState serializes the ledger's retention.
type ledgerState struct {
	mu sync.Mutex
}

// LedgerQuery selects conflict ledger entries: those of Governor (and State
// when set) decided at From or later and before Until (zero: open), oldest
// first, after Cursor (a page's Next), at most Limit of them (0:
// DefaultLedgerLimit, capped at MaxLedgerLimit), stopping before MaxBytes
// of values (0: no bound; at least one entry is returned).
type LedgerQuery struct {
	Governor    string
	State       string
	From, Until time.Time
	Cursor      string
	Limit       int
	MaxBytes    int
}

// LedgerPage is one page of ledger entries; Next continues the query ("":
// done).
type LedgerPage struct {
	Entries []syncer.ConflictRecord
	Next    string
}

// putConflict stages r in the ledger unless its id is there, and reports
// whether it did.
func (tx *mutTx) putConflict(r *syncer.ConflictRecord) (bool, error) {
	idKey := ledgerIDKey(r.ID)
	v, err := tx.get(idKey)
	if err != nil || v != nil {
		return false, err
	}
	nanos := max(r.Time.UnixNano(), 0)
	tx.set(ledgerKey(nanos, r.ID), encodeConflict(r))
	tx.set(idKey, binary.BigEndian.AppendUint64(nil, uint64(nanos)))
	return true, nil
}

// Conflicts returns a page of the conflict ledger. Invalid arguments are
// *FieldError wrapping ErrInvalid.
func (s *Store) Conflicts(ctx context.Context, q LedgerQuery) (LedgerPage, error) {
	if err := validateKey("conflicts", Key{Governor: q.Governor, State: "x"}); err != nil {
		return LedgerPage{}, &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	if q.State != "" {
		if err := validateKey("conflicts", Key{Governor: q.Governor, State: q.State}); err != nil {
			return LedgerPage{}, &FieldError{Field: "state", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultLedgerLimit
	}
	r := timeRange{From: q.From, Until: q.Until, Cursor: q.Cursor, Limit: min(limit, MaxLedgerLimit), MaxBytes: q.MaxBytes, field: "conflicts"}
	var page LedgerPage
	next, err := s.scanTime(ctx, kindLedger, r, func(key, v []byte) (bool, error) {
		r, err := decodeConflict(v)
		if err != nil {
			return false, fmt.Errorf("ledger entry %x: %w", key, err)
		}
		if r.Key.Governor != q.Governor || q.State != "" && r.Key.State != q.State {
			return false, nil
		}
		page.Entries = append(page.Entries, r)
		return true, nil
	})
	page.Next = next
	var fe *FieldError
	if errors.As(err, &fe) {
		return LedgerPage{}, err
	}
	if err != nil {
		return LedgerPage{}, fmt.Errorf("localcache: conflicts: %w", err)
	}
	return page, nil
}

// ledgerLimits returns the retention options, defaults applied.
func (s *Store) ledgerLimits() (maxEntries int64, maxAge time.Duration) {
	maxEntries, maxAge = int64(s.opts.LedgerMaxEntries), s.opts.LedgerMaxAge
	if maxEntries <= 0 {
		maxEntries = DefaultLedgerMaxEntries
	}
	if maxAge <= 0 {
		maxAge = DefaultLedgerMaxAge
	}
	return maxEntries, maxAge
}

// trimLedger applies the ledger's retention after entries were added: it
// drops the oldest entries beyond the count limit and those older than the
// age limit. It counts the entries with a key-only scan each time (entries
// are added rarely, and the count limit bounds the scan), so concurrent
// acks cannot make a kept count drift.
func (s *Store) trimLedger(ctx context.Context) error {
	s.ledger.mu.Lock()
	defer s.ledger.mu.Unlock()
	maxEntries, maxAge := s.ledgerLimits()
	return s.trimTime(ctx, kindLedger, maxEntries, maxAge, func(k []byte) []byte { return ledgerIDKey(string(k[9:])) })
}

// Base returns the record that version of k had, from the local event
// that made it (syncer.BaseReader): ok is false when there is none.
func (s *Store) Base(ctx context.Context, k syncer.Key, version uint64) (syncer.Record, bool, error) {
	ev, err := s.EventAt(ctx, Key(k), version)
	switch {
	case errors.Is(err, ErrNotFound):
		return syncer.Record{}, false, nil
	case err != nil:
		return syncer.Record{}, false, err
	}
	return eventRecord(ev), true, nil
}

var _ syncer.BaseReader = (*Store)(nil)

// --- encoding ---
//
//	conflict: format=1, s id, s governor, s state, i time, s node,
//	          s resolver, s reason, winner byte, u entries, u baseVersion,
//	          base flags (bit0 known, bit1 deleted), [u version, s value],
//	          side local, side remote, s merged, u n, n × s omitted
//	side:     flags (bit0 deleted), u version, i updatedAt, s origin,
//	          s opID, clock, s value

func appendSide(b []byte, s conflict.Side) []byte {
	var flags byte
	if s.Deleted {
		flags = 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, s.Version)
	b = binary.AppendVarint(b, s.UpdatedAt)
	b = appendString(b, s.Origin)
	b = appendString(b, s.OpID)
	b = appendClock(b, Clock{Lamport: s.Clock.Lamport, HLC: s.Clock.HLC, Vector: s.Clock.Vector})
	return appendBytes(b, s.Value)
}

func encodeConflict(r *syncer.ConflictRecord) []byte {
	b := make([]byte, 0, syncer.ConflictSize(*r))
	b = append(b, formatV1)
	for _, s := range []string{r.ID, r.Key.Governor, r.Key.State} {
		b = appendString(b, s)
	}
	b = binary.AppendVarint(b, r.Time.UnixNano())
	for _, s := range []string{r.Node, r.Resolver, r.Reason} {
		b = appendString(b, s)
	}
	b = append(b, byte(r.Winner))
	b = binary.AppendUvarint(b, uint64(r.Entries))
	b = binary.AppendUvarint(b, r.BaseVersion)
	switch {
	case r.Base == nil:
		b = append(b, 0)
	default:
		flags := byte(1)
		if r.Base.Deleted {
			flags |= 2
		}
		b = append(b, flags)
		b = binary.AppendUvarint(b, r.Base.Version)
		b = appendBytes(b, r.Base.Value)
	}
	b = appendSide(b, r.Local)
	b = appendSide(b, r.Remote)
	b = appendBytes(b, r.Merged)
	b = binary.AppendUvarint(b, uint64(len(r.Omitted)))
	for _, o := range r.Omitted {
		b = appendString(b, o)
	}
	return b
}

// value returns a stored value: nil when empty.
func (d *decoder) value() []byte {
	v := d.bytes()
	if len(v) == 0 {
		return nil
	}
	return v
}

func (d *decoder) side() conflict.Side {
	flags := d.byte()
	s := conflict.Side{Deleted: flags&1 != 0, Version: d.uvarint(), UpdatedAt: d.varint(), Origin: d.string(),
		OpID: d.string()}
	c := d.clock()
	s.Clock = conflict.Clock{Lamport: c.Lamport, HLC: c.HLC, Vector: c.Vector}
	s.Value = d.value()
	return s
}

// decodeConflict decodes a ledger entry from b, which it aliases.
func decodeConflict(b []byte) (syncer.ConflictRecord, error) {
	d := &decoder{b: b}
	if f := d.byte(); d.err == nil && f != formatV1 {
		return syncer.ConflictRecord{}, fmt.Errorf("%w: conflict format %d", errCorrupt, f)
	}
	var r syncer.ConflictRecord
	r.ID, r.Key.Governor, r.Key.State = d.string(), d.string(), d.string()
	r.Time = time.Unix(0, d.varint())
	r.Node, r.Resolver, r.Reason = d.string(), d.string(), d.string()
	r.Winner = conflict.Winner(d.byte())
	r.Entries = int(d.uvarint())
	r.BaseVersion = d.uvarint()
	if flags := d.byte(); flags&1 != 0 {
		r.Base = &conflict.Base{Deleted: flags&2 != 0, Version: d.uvarint(), Value: d.value()}
	}
	r.Local, r.Remote = d.side(), d.side()
	r.Merged = d.value()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail()
	}
	for i := uint64(0); d.err == nil && i < n; i++ {
		r.Omitted = append(r.Omitted, d.string())
	}
	if err := d.done("conflict"); err != nil {
		return syncer.ConflictRecord{}, err
	}
	return r, nil
}
