package localcache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// The read side of the event log: queries over events (QueryEvents), a
// state as of a past time or version (StateAt, StateAtVersion), a check of
// the log against itself and the current records (Validate), and an export
// as JSON lines (Export).
//
// What the local log holds. Every local write stores one event, keyed by
// state and the version it made (keys.go); events are never rewritten by
// the store itself. Changes made on other nodes come with their events
// when the pull loop brings the shared store's history (bootstrap.go);
// without it (a remote with no history, or --history none) they leave no
// local event, and a push that had to rebase commits this node's change
// under a later version than its event names. A local change that lost a
// conflict leaves the log when its loss is settled (superseded.go), and the
// winner's events take its versions when they are brought. So a state's
// local log may have gaps: versions with no local event. Every reader here says where a gap changes its answer:
// StateAt and StateAtVersion (PastState.Exact, *HistoryGapError), Validate
// (Gaps, kept apart from Violations).
//
// Every event holds the whole value of its version, not a delta: the state
// as of version V is event V itself, so nothing is replayed. Snapshots
// (snapshot.go) hold versions whose events cleanup removed (cleanup.go),
// and their time marks index the history by change time.

// Event query limits.
const (
	// DefaultEventLimit is how many events a query returns when its Limit
	// is <= 0.
	DefaultEventLimit = 100
	// MaxEventLimit is the most events one query page returns.
	MaxEventLimit = 1000
	// maxEventScan bounds the events one page examines when a time or action
	// filter skips most of them: the page then ends early, with a cursor.
	maxEventScan = 50_000
)

// ErrHistoryGap says the local event log does not hold what was asked for:
// the versions in question were made on other nodes (applied by the pull
// loop, which stores no local event), were this node's changes that the
// shared store committed under later versions, or were removed by cleanup
// (before the retained history).
var ErrHistoryGap = errors.New("not in the local history")

// HistoryGapError is returned when an answer falls into versions After+1
// through Through of Key, which have no local event. It wraps
// ErrHistoryGap.
type HistoryGapError struct {
	Op      string
	Key     Key
	After   uint64
	Through uint64
}

func (e *HistoryGapError) Error() string {
	return fmt.Sprintf("%s %s: versions %d to %d have no local event (made on other nodes, or removed by cleanup): %v",
		e.Op, e.Key, e.After+1, e.Through, ErrHistoryGap)
}

// Unwrap makes errors.Is(err, ErrHistoryGap) hold.
func (e *HistoryGapError) Unwrap() error { return ErrHistoryGap }

// EventQuery selects events of one governor.
type EventQuery struct {
	Governor string
	// State, when set, restricts the query to that state's events, in
	// version order. Empty: every state of Governor, ordered by state and
	// then version. States come in the store's key order: shorter names
	// first, names of one length in byte order.
	State string
	// From and To bound the change time (Change.Time): From <= time < To.
	// A zero bound is open. Non-zero bounds need From < To.
	From, To time.Time
	// Action, when set, selects the events of that action: ActionPut,
	// ActionDelete, or a transition's action (transitions are not puts
	// here).
	Action string
	// Limit is the most events returned: <= 0 means DefaultEventLimit; it
	// is capped at MaxEventLimit.
	Limit int
	// MaxBytes, when > 0, ends a page before its values would pass it (a
	// page holds at least one event when there is one).
	MaxBytes int
	// Cursor resumes after the last event of a previous page (EventPage.Next
	// of a query of the same Governor and State). It is a position only:
	// the filters may change between pages.
	Cursor string
}

// EventPage is one page of a query.
type EventPage struct {
	Events []Event
	// Next is the cursor of the following page; "" when the query is
	// complete. A page may hold fewer than Limit events, even none, while
	// Next is set (a filter skipped many events, or the page was the last
	// one and more events exist that the filter may still skip): keep
	// paging until Next is "".
	Next string
}

// QueryEvents returns a page of the events of q.Governor (or of one state),
// filtered by change time and action. Events are read from Badger after
// every acknowledged write is applied; their Values are the caller's.
//
// Errors: an invalid governor, action, time range or cursor is a
// *FieldError wrapping ErrInvalid (an invalid state name: a *KeyError
// holding one); ErrClosed; ctx's error.
func (s *Store) QueryEvents(ctx context.Context, q EventQuery) (EventPage, error) {
	if err := ctx.Err(); err != nil {
		return EventPage{}, err
	}
	f, err := checkEventQuery(q)
	if err != nil {
		return EventPage{}, err
	}
	var page EventPage
	err = s.scan(ctx, func(txn *badger.Txn) error {
		page, err = queryEvents(ctx, txn, f, maxEventScan)
		return err
	})
	if err != nil {
		return EventPage{}, fmt.Errorf("localcache: events of %s: %w", q.scope(), err)
	}
	return page, nil
}

func (q EventQuery) scope() string {
	if q.State != "" {
		return Key{Governor: q.Governor, State: q.State}.String()
	}
	return q.Governor
}

// eventFilter is a checked EventQuery.
type eventFilter struct {
	prefix   []byte // every key the query covers starts with it
	seek     []byte // where the scan starts
	from, to int64  // change time bounds, [from, to)
	action   string
	limit    int
	maxBytes int
	filtered bool // a time or action filter may skip events
}

func checkEventQuery(q EventQuery) (eventFilter, error) {
	if err := wire.ValidateName("governor", q.Governor); err != nil {
		return eventFilter{}, &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	f := eventFilter{from: math.MinInt64, to: math.MaxInt64, action: q.Action, maxBytes: q.MaxBytes}
	if q.State != "" {
		k := Key{Governor: q.Governor, State: q.State}
		if err := validateKey("events", k); err != nil {
			return eventFilter{}, err
		}
		f.prefix = eventPrefix(k)
	} else {
		f.prefix = eventGovernorPrefix(q.Governor)
	}
	if err := checkMachineName(q.Action); err != nil {
		return eventFilter{}, &FieldError{Field: "action", Err: fmt.Errorf("%w: action %w", ErrInvalid, err)}
	}
	if !q.From.IsZero() {
		f.from = unixNanos(q.From)
	}
	if !q.To.IsZero() {
		f.to = unixNanos(q.To)
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return eventFilter{}, &FieldError{Field: "to", Err: fmt.Errorf("%w: the time range ends (%s) before it starts (%s)",
			ErrInvalid, q.To.Format(time.RFC3339Nano), q.From.Format(time.RFC3339Nano))}
	}
	f.filtered = q.Action != "" || !q.From.IsZero() || !q.To.IsZero()
	f.limit = q.Limit
	if f.limit <= 0 {
		f.limit = DefaultEventLimit
	}
	f.limit = min(f.limit, MaxEventLimit)
	f.seek = f.prefix
	if q.Cursor != "" {
		state, version, err := parseEventCursor(q.Cursor)
		if err != nil {
			return eventFilter{}, &FieldError{Field: "cursor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
		if q.State != "" && state != q.State {
			return eventFilter{}, &FieldError{Field: "cursor", Err: fmt.Errorf("%w: the cursor is of another state", ErrInvalid)}
		}
		// The smallest key after the cursor's event.
		f.seek = append(eventKey(Key{Governor: q.Governor, State: state}, version), 0)
	}
	return f, nil
}

// unixNanos is t in Unix nanoseconds, clamped to what an int64 holds.
func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// queryEvents reads one page; with a filter it examines at most budget
// events.
func queryEvents(ctx context.Context, txn *badger.Txn, f eventFilter, budget int) (EventPage, error) {
	// No value prefetching: most events are small enough to sit in the LSM
	// tree, where reading a value in place costs less than the prefetcher's
	// copy (2.4 times the throughput in BenchmarkEventQuery), and filtered
	// events are never copied.
	it := txn.NewIterator(badger.IteratorOptions{Prefix: f.prefix})
	defer it.Close()
	var (
		page    EventPage
		keys    eventKeys
		size    int
		scanned int
		lastKey []byte // the last key examined
		keptKey []byte // the key of the last event kept
	)
	for it.Seek(f.seek); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return EventPage{}, err
		}
		item := it.Item()
		if len(page.Events) == f.limit || (f.filtered && scanned == budget) {
			// More keys follow: resume after the last one examined.
			page.Next = eventCursor(lastKey)
			return page, nil
		}
		scanned++
		lastKey = item.KeyCopy(lastKey[:0])
		k, _, err := keys.parse(item.Key())
		if err != nil {
			return EventPage{}, err
		}
		var e Event
		var keep bool
		err = item.Value(func(v []byte) error {
			h, err := decodeEventHead(v)
			if err != nil {
				return fmt.Errorf("event %x: %w", item.Key(), err)
			}
			if h.time < f.from || h.time >= f.to || (f.action != "" && h.action != f.action) {
				return nil
			}
			keep = true
			e, err = decodeEvent(k, slices.Clone(v))
			if err != nil {
				return fmt.Errorf("event %x: %w", item.Key(), err)
			}
			return nil
		})
		if err != nil {
			return EventPage{}, err
		}
		if !keep {
			continue
		}
		if f.maxBytes > 0 && len(page.Events) > 0 && size+len(e.Value) > f.maxBytes {
			page.Next = eventCursor(keptKey)
			return page, nil
		}
		size += len(e.Value)
		page.Events = append(page.Events, e)
		keptKey = append(keptKey[:0], lastKey...)
	}
	return page, nil
}

// eventGovernorPrefix is the prefix of every event key of governor.
func eventGovernorPrefix(governor string) []byte { return governorPrefix(kindEvent, governor) }

// parseEventKey splits an event key (see eventKey) into its governor, state
// and version; the names alias b.
func parseEventKey(b []byte) (governor, state []byte, version uint64, err error) {
	return parseVersionedKey(kindEvent, b)
}

// eventKeys parses event keys, reusing the Key of the previous one while the
// governor and state stay the same (a scan meets many events per state).
type eventKeys struct {
	gov, state []byte
	key        Key
	ok         bool
}

func (p *eventKeys) parse(b []byte) (Key, uint64, error) {
	gov, state, version, err := parseEventKey(b)
	if err != nil {
		return Key{}, 0, fmt.Errorf("event key %x: %w", b, err)
	}
	if !p.ok || !bytes.Equal(gov, p.gov) || !bytes.Equal(state, p.state) {
		p.key = Key{Governor: string(gov), State: string(state)}
		p.gov = append(p.gov[:0], gov...)
		p.state = append(p.state[:0], state...)
		p.ok = true
	}
	return p.key, version, nil
}

// Cursors are the last event's state and version, after a format byte,
// in unpadded URL-safe base64: opaque to callers, checked when parsed.
const eventCursorFormat = 1

func eventCursor(key []byte) string {
	_, state, version, err := parseEventKey(key)
	if err != nil {
		return "" // keys come from the scan's own prefix: cannot happen
	}
	return stateCursor(state, version)
}

// stateCursor is the cursor of a position after version of state (replay
// cursors share the format).
func stateCursor(state []byte, version uint64) string {
	b := make([]byte, 0, 11+len(state))
	b = append(b, eventCursorFormat)
	b = binary.BigEndian.AppendUint16(b, uint16(len(state)))
	b = append(b, state...)
	b = binary.BigEndian.AppendUint64(b, version)
	return base64.RawURLEncoding.EncodeToString(b)
}

func parseEventCursor(c string) (state string, version uint64, err error) {
	errBad := errors.New("malformed cursor")
	if len(c) > 4*(wire.MaxNameSize+16)/3 {
		return "", 0, errBad
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 11 || b[0] != eventCursorFormat {
		return "", 0, errBad
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	if len(b) != 3+n+8 {
		return "", 0, errBad
	}
	return string(b[3 : 3+n]), binary.BigEndian.Uint64(b[3+n:]), nil
}

// eventHead is the start of an encoded event: enough to filter on.
type eventHead struct {
	action   string
	from, to uint64
	time     int64
}

// decodeEventHead reads the fields of an event up to its change time,
// without allocating.
func decodeEventHead(b []byte) (eventHead, error) {
	d := decoder{b: b}
	action, err := d.eventAction()
	if err != nil {
		return eventHead{}, err
	}
	h := eventHead{action: action}
	h.from = d.uvarint()
	h.to = d.uvarint()
	d.bytes() // actor
	d.bytes() // reason
	h.time = d.varint()
	if d.err != nil {
		return eventHead{}, fmt.Errorf("%w: event", d.err)
	}
	return h, nil
}

// --- a state as of a past time or version ---

// PastState is a state as of a past time or version.
type PastState struct {
	// Record holds what the state was: Value, Version, UpdatedAt, Change,
	// Origin, OpID and Clock of the change that made it. Deleted is
	// always false (a deleted state is ErrNotFound), and the sync fields
	// (SyncedVersion, SyncedAt, Pending, Seq) are zero: they describe the
	// present, not the past.
	Record
	// Exact is false when versions after Record.Version, through
	// UnknownThrough, have no local event (made on other nodes): one of
	// them may have been made before the time asked, so the state then may
	// have been any of those versions. Record is then the last version the
	// local history knows of.
	Exact          bool
	UnknownThrough uint64
}

// StateAt returns state k as it was at time at: the latest version (the one
// with the highest version number) whose change time is <= at. The current
// record counts as the latest version, so changes applied from other nodes
// count when they are the latest; older ones have no local event, which
// PastState.Exact reports.
//
// Errors: a *KeyError wrapping ErrNotFound when the state did not exist at
// at (never created by then, or deleted); a *HistoryGapError (ErrHistoryGap)
// when the local history cannot tell (the version that answers was made on
// another node and left no local event); an invalid key or a zero at is a
// *KeyError holding a *FieldError (ErrInvalid); ErrClosed.
//
// Snapshots count as versions (a snapshot answers for a version whose
// event cleanup removed); a time before the retained history is a
// *HistoryGapError.
//
// Cost: the current record, the state's time marks (one per snapshot
// taken, see snapshot.go), and the events of at most two stretches between
// marks (N versions each, unless snapshots were skipped): not proportional
// to the events after at.
func (s *Store) StateAt(ctx context.Context, k Key, at time.Time) (PastState, error) {
	if err := ctx.Err(); err != nil {
		return PastState{}, err
	}
	if err := validateKey("state_at", k); err != nil {
		return PastState{}, err
	}
	if at.IsZero() {
		return PastState{}, &KeyError{Op: "state_at", Key: k, Err: &FieldError{Field: "at", Err: fmt.Errorf("%w: no time given", ErrInvalid)}}
	}
	var p PastState
	err := s.scan(ctx, func(txn *badger.Txn) error {
		var err error
		p, err = pastAt(ctx, txn, k, unixNanos(at))
		return err
	})
	return p, pastErr("state at", k, err)
}

func pastErr(what string, k Key, err error) error {
	var ke *KeyError
	var ge *HistoryGapError
	if err == nil || errors.As(err, &ke) || errors.As(err, &ge) {
		return err
	}
	return fmt.Errorf("localcache: %s %s: %w", what, k, err)
}

// StateAtVersion returns state k as of version: the value and metadata of
// the change that made that version.
//
// Errors: a *KeyError wrapping ErrNotFound when version was a deletion
// (the state did not exist then) or is above the current version; a
// *HistoryGapError (ErrHistoryGap) when the version was made on another node
// and is not the current one (no local event holds it); version 0 or an
// invalid key is a *KeyError holding a *FieldError (ErrInvalid); ErrClosed.
//
// Cost: one event lookup, plus the current record. A version whose event
// is gone (removed by cleanup) is answered by the snapshot taken at that
// version, when there is one.
func (s *Store) StateAtVersion(ctx context.Context, k Key, version uint64) (PastState, error) {
	if err := ctx.Err(); err != nil {
		return PastState{}, err
	}
	if err := validateKey("state_at", k); err != nil {
		return PastState{}, err
	}
	if version == 0 {
		return PastState{}, &KeyError{Op: "state_at", Key: k, Err: &FieldError{Field: "version", Err: fmt.Errorf("%w: versions start at 1", ErrInvalid)}}
	}
	var p PastState
	err := s.scan(ctx, func(txn *badger.Txn) error {
		rec, err := readRecord(txn, k)
		if err != nil {
			return err
		}
		// Local changes that gave way leave the log when their loss is
		// settled (superseded.go), but a log written before that, or a
		// change parked and then replaced by a diverged record, may hold
		// such an event at a version above the record's, or at the
		// record's own version with another op: the record answers, not
		// the event.
		if rec != nil && version >= rec.Version {
			switch {
			case version > rec.Version || rec.Deleted:
				return &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
			}
			p = PastState{Record: pastRecord(rec), Exact: true}
			return nil
		}
		item, err := txn.Get(eventKey(k, version))
		switch {
		case err == nil:
			e, err := readEvent(item, k)
			if err != nil {
				return err
			}
			if e.Action == ActionDelete {
				return &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
			}
			p = PastState{Record: eventPast(e), Exact: true}
			return nil
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
		if sp, ok, err := snapshotPast(txn, k, version); ok {
			p = sp
			return err
		}
		switch {
		case rec == nil || version > rec.Version:
			return &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
		case version == rec.Version && rec.Deleted:
			return &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
		case version == rec.Version:
			p = PastState{Record: pastRecord(rec), Exact: true}
			return nil
		}
		return versionGap(txn, k, version, rec.Version)
	})
	return p, pastErr("state at version", k, err)
}

// versionGap returns the *HistoryGapError around version (which has no
// event and is below the current version cur): from the local event before
// it to the one after it (or the current record).
func versionGap(txn *badger.Txn, k Key, version, cur uint64) error {
	g := &HistoryGapError{Op: "state_at", Key: k, Through: cur - 1}
	pfx := eventPrefix(k)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx, Reverse: true})
	it.Seek(eventKey(k, version))
	if it.Valid() {
		_, _, v, err := parseEventKey(it.Item().Key())
		if err != nil {
			it.Close()
			return err
		}
		g.After = v
	}
	it.Close()
	it = txn.NewIterator(badger.IteratorOptions{Prefix: pfx, PrefetchValues: false})
	defer it.Close()
	it.Seek(eventKey(k, version))
	if it.Valid() {
		var h eventHead
		err := it.Item().Value(func(v []byte) error {
			var err error
			h, err = decodeEventHead(v)
			return err
		})
		if err != nil {
			return fmt.Errorf("event %x: %w", it.Item().Key(), err)
		}
		g.Through = max(h.from, version)
	}
	return g
}

// eventPast is the past record an event made (its Value is the event's).
func eventPast(e Event) Record {
	return Record{Key: e.Key, Value: e.Value, Version: e.ToVersion, UpdatedAt: e.Change.Time,
		Change: e.Change, Origin: e.Origin, OpID: e.OpID, Clock: e.Clock}
}

// pastRecord is rec without its sync fields.
func pastRecord(rec *Record) Record {
	return Record{Key: rec.Key, Value: rec.Value, Version: rec.Version, UpdatedAt: rec.UpdatedAt,
		Change: rec.Change, Origin: rec.Origin, OpID: rec.OpID, Clock: rec.Clock}
}

// --- validation ---

// Validation rules (Violation.Rule). The log of one state is its local
// events in version order. For each event e, with p the previous event of
// the same state (when there is one):
//
//   - RuleDecode: e's key and value decode.
//   - RuleKeyVersion: e.ToVersion is the version in e's key.
//   - RuleStep: e.ToVersion == e.FromVersion+1 (a local change makes one
//     version).
//   - RuleChain: e.FromVersion >= p.ToVersion. Equal: p made the version e
//     was made on (contiguous). Greater: versions p.ToVersion+1 through
//     e.FromVersion have no local event, which is a Gap, not a violation
//     (they came from other nodes, or are this node's changes the shared
//     store committed under later versions).
//   - RuleAction: a state that did not exist is not deleted: the first
//     event, when it creates the state (FromVersion 0), is a put, and a
//     delete contiguous with p is not preceded by a delete.
//   - RuleLamport, RuleHLC: e's Lamport time and HLC are above those of the
//     previous event of the same origin. This node's clocks never go back
//     and are not merged with other nodes', so they order one node's changes
//     only; events of different origins are not compared. A break means a
//     version number was used twice and the later change overwrote the
//     earlier one's event (decision 0008: a diverged remote record that
//     replaced local changes of higher versions).
//   - RuleCurrent: the state's record agrees with its last event l. When
//     the record is l's change (same op id): at the same version it equals
//     l (value bytes, deleted flag, origin, change metadata); at a higher
//     version the shared store committed l under a later number after
//     other nodes' changes (a Gap, GapRenumbered), and the value and deleted
//     flag must still be l's; at a lower version it is a violation. When the
//     record is another change: at a higher version it came from other
//     nodes after l (a Gap, GapElsewhere); at l's version or below, from
//     another origin, the local changes from the record's version on were
//     parked and the state took the other node's record, or lost a
//     conflict in a log written before lost changes left it at their
//     settle (a Gap, GapSuperseded); from l's own origin it is a
//     violation (this node's change missing from its log). No record
//     while l is a put is a violation.
//
// Every record in scope is checked too, of a state with no local event as
// well (a state only ever changed elsewhere, pulled without history, or
// whose events cleanup removed: none of these is a violation):
//
//   - RuleRecord: the record decodes (RuleCurrent reports one of a state
//     with local events that does not), its version is 1 or more, and it
//     is marked as a tombstone in the store (which listings skip by that
//     mark) exactly when it is one.
const (
	RuleDecode     = "decode"
	RuleKeyVersion = "key_version"
	RuleStep       = "step"
	RuleChain      = "chain"
	RuleAction     = "action"
	RuleLamport    = "lamport"
	RuleHLC        = "hlc"
	RuleCurrent    = "current"
	RuleRecord     = "record"
)

// Gap reasons (Gap.Reason).
const (
	// GapElsewhere: the versions were made on other nodes (or are local
	// changes committed under other numbers; the local log cannot tell).
	GapElsewhere = "elsewhere"
	// GapRenumbered: the state's last local change was committed to the
	// shared store under a later version, after changes of other nodes.
	GapRenumbered = "renumbered"
	// GapSuperseded: the record is another node's change at a version the
	// local log has events for, After+1 through Through: those local
	// changes lost to it and their events stayed in the log (changes
	// parked as rejected that a diverged record replaced, or changes that
	// lost a conflict in a log written before such changes left it at
	// their settle: superseded.go); the current lineage of those versions
	// is not in it.
	GapSuperseded = "superseded"
	// GapRemoved: the versions before the snapshot the state's retained
	// history starts from (Through+1): their events were removed by
	// cleanup (or never were in the local log).
	GapRemoved = "removed"
)

// MaxReportedProblems is the most violations, and separately the most
// gaps, a ValidationReport lists; the counts go on.
const MaxReportedProblems = 10_000

// Violation is one broken rule.
type Violation struct {
	Key     Key
	Version uint64 // the event's version (for RuleCurrent, the record's)
	Rule    string
	Message string
}

// Gap is a run of versions of Key, After+1 through Through, whose current
// lineage is not in the local log: no local event (GapElsewhere,
// GapRenumbered), or local events of changes that lost (GapSuperseded).
type Gap struct {
	Key     Key
	After   uint64
	Through uint64
	Reason  string
}

// ValidationReport is what Validate found.
type ValidationReport struct {
	States    int // states checked: with local events, or a record (a tombstone too)
	Events    int // events checked
	Snapshots int // snapshots checked
	// Violations lists the first MaxReportedProblems violations, by state
	// and then version; ViolationCount counts them all.
	Violations     []Violation
	ViolationCount int
	// Gaps lists the first MaxReportedProblems gaps; GapCount counts them
	// all. Gaps are expected wherever other nodes change the same states.
	Gaps     []Gap
	GapCount int
}

// OK says no violation was found.
func (r *ValidationReport) OK() bool { return r.ViolationCount == 0 }

func (r *ValidationReport) violation(k Key, version uint64, rule, format string, args ...any) {
	r.ViolationCount++
	if len(r.Violations) < MaxReportedProblems {
		r.Violations = append(r.Violations, Violation{Key: k, Version: version, Rule: rule, Message: fmt.Sprintf(format, args...)})
	}
}

func (r *ValidationReport) gap(k Key, after, through uint64, reason string) {
	r.GapCount++
	if len(r.Gaps) < MaxReportedProblems {
		r.Gaps = append(r.Gaps, Gap{Key: k, After: after, Through: through, Reason: reason})
	}
}

// Validate checks the local event log and the record of one state (state
// != "") or of every state of governor against the rules above (see
// RuleDecode and the rest), and reports every violation and gap it finds. It reads one
// consistent view, after every acknowledged write is applied.
//
// Errors (the report is then empty): an invalid governor is a *FieldError
// and an invalid state a *KeyError, both wrapping ErrInvalid; ErrClosed;
// ctx's error; a Badger read error. Corrupt events are violations, not
// errors.
func (s *Store) Validate(ctx context.Context, governor, state string) (ValidationReport, error) {
	if err := ctx.Err(); err != nil {
		return ValidationReport{}, err
	}
	f, err := checkEventQuery(EventQuery{Governor: governor, State: state})
	if err != nil {
		return ValidationReport{}, err
	}
	var rep ValidationReport
	err = s.scan(ctx, func(txn *badger.Txn) error {
		rep = ValidationReport{}
		v := validator{txn: txn, rep: &rep}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: f.prefix})
		defer it.Close()
		var keys eventKeys
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			k, version, err := keys.parse(item.Key())
			if err != nil {
				// Not one of this store's keys under the prefix: it cannot
				// be tied to a state.
				rep.violation(Key{Governor: governor}, 0, RuleDecode, "%v", err)
				continue
			}
			if k != v.key || !v.started {
				if err := v.finish(); err != nil {
					return err
				}
				v.start(k)
			}
			val, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			e, err := decodeEvent(k, val)
			rep.Events++
			if err != nil {
				rep.violation(k, version, RuleDecode, "event does not decode: %v", err)
				continue
			}
			v.event(version, e)
		}
		if err := v.finish(); err != nil {
			return err
		}
		if err := validateSnapshots(ctx, txn, f.prefix, &rep); err != nil {
			return err
		}
		return validateRecords(ctx, txn, Key{Governor: governor, State: state}, &rep)
	})
	if err != nil {
		return ValidationReport{}, fmt.Errorf("localcache: validate %s: %w", EventQuery{Governor: governor, State: state}.scope(), err)
	}
	return rep, nil
}

// validator checks the events of one state at a time, in version order.
type validator struct {
	txn     *badger.Txn
	rep     *ValidationReport
	key     Key
	started bool
	prev    *Event            // the previous event that decoded
	byNode  map[string]*Event // the previous event per origin
}

func (v *validator) start(k Key) {
	v.key, v.started, v.prev = k, true, nil
	v.rep.States++
	clear(v.byNode)
	if v.byNode == nil {
		v.byNode = make(map[string]*Event)
	}
}

func (v *validator) event(version uint64, e Event) {
	r, k := v.rep, v.key
	if e.ToVersion != version {
		r.violation(k, version, RuleKeyVersion, "the event stored under version %d says it made version %d", version, e.ToVersion)
	}
	if e.ToVersion != e.FromVersion+1 {
		r.violation(k, version, RuleStep, "the event goes from version %d to %d, not one step", e.FromVersion, e.ToVersion)
	}
	if p := v.prev; p == nil {
		if e.FromVersion > 0 {
			v.firstGap(e.FromVersion)
		} else if e.Action == ActionDelete {
			r.violation(k, version, RuleAction, "the first event deletes a state that did not exist")
		}
	} else {
		switch {
		case e.FromVersion < p.ToVersion:
			r.violation(k, version, RuleChain, "the event starts from version %d, behind the previous event's version %d", e.FromVersion, p.ToVersion)
		case e.FromVersion > p.ToVersion:
			r.gap(k, p.ToVersion, e.FromVersion, GapElsewhere)
		case e.Action == ActionDelete && p.Action == ActionDelete:
			r.violation(k, version, RuleAction, "the event deletes the state that version %d deleted", p.ToVersion)
		}
	}
	if p := v.byNode[e.Origin]; p != nil {
		if e.Clock.Lamport <= p.Clock.Lamport {
			r.violation(k, version, RuleLamport, "Lamport time %d is not above %d of version %d (same origin %q)",
				e.Clock.Lamport, p.Clock.Lamport, p.ToVersion, e.Origin)
		}
		if e.Clock.HLC <= p.Clock.HLC {
			r.violation(k, version, RuleHLC, "HLC %d is not above %d of version %d (same origin %q)",
				e.Clock.HLC, p.Clock.HLC, p.ToVersion, e.Origin)
		}
	}
	ev := e
	v.prev = &ev
	v.byNode[e.Origin] = &ev
}

// finish checks the current record of the state against its last event.
func (v *validator) finish() error {
	if !v.started || v.prev == nil {
		return nil
	}
	r, k, l := v.rep, v.key, v.prev
	rec, err := readRecord(v.txn, k)
	if err != nil {
		if !errors.Is(err, errCorrupt) {
			return fmt.Errorf("record of %s: %w", k, err)
		}
		r.violation(k, 0, RuleCurrent, "the record does not decode: %v", err)
		return nil
	}
	switch {
	case rec == nil:
		if l.Action != ActionDelete {
			r.violation(k, l.ToVersion, RuleCurrent, "the state has no record; its last event (version %d) is a put", l.ToVersion)
		}
	case rec.OpID == l.OpID && rec.Version == l.ToVersion:
		if d := recordDiff(rec, l, true); d != "" {
			r.violation(k, rec.Version, RuleCurrent, "the record differs from its event: %s", d)
		}
	case rec.OpID == l.OpID && rec.Version > l.ToVersion:
		r.gap(k, l.ToVersion, rec.Version, GapRenumbered)
		if d := recordDiff(rec, l, false); d != "" {
			r.violation(k, rec.Version, RuleCurrent, "the record (version %d) differs from its event (version %d): %s", rec.Version, l.ToVersion, d)
		}
	case rec.OpID == l.OpID:
		r.violation(k, rec.Version, RuleCurrent, "the record holds the change of version %d under the lower version %d", l.ToVersion, rec.Version)
	case rec.Version > l.ToVersion:
		r.gap(k, l.ToVersion, rec.Version, GapElsewhere)
	case rec.Origin != l.Origin:
		r.gap(k, rec.Version-1, l.ToVersion, GapSuperseded)
	default:
		r.violation(k, rec.Version, RuleCurrent, "the record is op %q of version %d, from this log's origin %q, and is not the last event (op %q, version %d)",
			rec.OpID, rec.Version, rec.Origin, l.OpID, l.ToVersion)
	}
	return nil
}

// validateRecords checks the records of the states in scope (every state
// of scope's governor, or scope's state when set) by RuleRecord, and counts
// the states without local events, which the walk of the events did not.
func validateRecords(ctx context.Context, txn *badger.Txn, scope Key, rep *ValidationReport) error {
	prefix := statePrefix(scope.Governor, scope.State) // a state's own key, then longer names
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	events := txn.NewIterator(badger.IteratorOptions{}) // keys only: does a state have events
	defer events.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		item := it.Item()
		k, err := parseStateKey(item.Key())
		if err != nil {
			rep.violation(Key{Governor: scope.Governor}, 0, RuleRecord, "record key %x does not parse: %v", item.Key(), err)
			continue
		}
		if scope.State != "" && k.State != scope.State {
			break // a longer name: the state's own record comes first
		}
		ep := eventPrefix(k)
		events.Seek(ep)
		logged := events.ValidForPrefix(ep)
		if !logged {
			rep.States++
		}
		if err := checkRecord(item, k, logged, rep); err != nil {
			return err
		}
	}
	return nil
}

// checkRecord checks the record of k in item by RuleRecord; logged says k
// has local events.
func checkRecord(item *badger.Item, k Key, logged bool, rep *ValidationReport) error {
	v, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	rec, err := decodeRecord(k, v)
	if err != nil {
		if !logged { // otherwise RuleCurrent reported it
			rep.violation(k, 0, RuleRecord, "the record does not decode: %v", err)
		}
		return nil
	}
	if rec.Version == 0 {
		rep.violation(k, 0, RuleRecord, "the record has version 0")
	}
	if marked := item.UserMeta()&userMetaTombstone != 0; marked != rec.Deleted {
		rep.violation(k, rec.Version, RuleRecord, "the record is %s, and marked as %s in the store", tombstoneWord(rec.Deleted), tombstoneWord(marked))
	}
	return nil
}

// tombstoneWord names a record that is a tombstone or not.
func tombstoneWord(deleted bool) string {
	if deleted {
		return "a tombstone"
	}
	return "not a tombstone"
}

// recordDiff says how rec differs from the change of event e ("" if not).
// all compares the origin and change metadata too (renumbered changes
// keep them, but compare only the value and deleted flag: the shared store
// is the authority on the rest).
func recordDiff(rec *Record, e *Event, all bool) string {
	var diffs []string
	if rec.Deleted != (e.Action == ActionDelete) {
		diffs = append(diffs, fmt.Sprintf("deleted %t, event action %s", rec.Deleted, e.Action))
	}
	if !bytes.Equal(rec.Value, e.Value) {
		diffs = append(diffs, fmt.Sprintf("value of %d bytes, event value of %d bytes", len(rec.Value), len(e.Value)))
	}
	if all && rec.Origin != e.Origin {
		diffs = append(diffs, fmt.Sprintf("origin %q, event origin %q", rec.Origin, e.Origin))
	}
	if all && rec.Change != e.Change {
		diffs = append(diffs, "change metadata (actor, reason, time) differs")
	}
	var b bytes.Buffer
	for i, d := range diffs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(d)
	}
	return b.String()
}

// --- export ---

// ExportedEvent is one line of Export: an event as JSON, with these field
// names, which do not change.
type ExportedEvent struct {
	Governor    string `json:"governor"`
	State       string `json:"state"`
	Version     uint64 `json:"version"` // the version the event made
	FromVersion uint64 `json:"from_version"`
	Action      string `json:"action"` // "put" or "delete"
	// Time is the change time, RFC 3339 in UTC with nanoseconds; TimeNS
	// the same in Unix nanoseconds.
	Time    string            `json:"time"`
	TimeNS  int64             `json:"time_ns"`
	Actor   string            `json:"actor"`
	Reason  string            `json:"reason"`
	Origin  string            `json:"origin"`
	OpID    string            `json:"op_id"`
	Lamport uint64            `json:"lamport"`
	HLC     uint64            `json:"hlc"`
	Vector  map[string]uint64 `json:"vector"`
	// ValueB64 is the stored value (the app's msgpack bytes) in standard
	// padded base64; present on every put, absent on deletes.
	ValueB64 *string `json:"value_b64,omitempty"`
	// Value is the value as JSON, present when the msgpack converts
	// without loss of kind: nil, booleans, integers, finite floats, UTF-8
	// strings, arrays, and maps with string keys. Binary strings,
	// extensions (timestamps included), non-string map keys, NaN and
	// infinities leave it out (ValueB64 still holds the value).
	Value json.RawMessage `json:"value,omitempty"`
}

// Export writes the events q selects as JSON lines (ExportedEvent), in the
// order of QueryEvents, and returns how many it wrote. q.Limit and
// q.MaxBytes are ignored; q.Cursor resumes after an event. It reads page
// by page, each page one consistent view: events written during the export
// may or may not be included, events never appear twice.
//
// Errors: those of QueryEvents; w's write error.
func (s *Store) Export(ctx context.Context, q EventQuery, w io.Writer) (int, error) {
	q.Limit, q.MaxBytes = MaxEventLimit, 0
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	conv := NewJSONValues()
	n := 0
	for {
		page, err := s.QueryEvents(ctx, q)
		if err != nil {
			return n, err
		}
		for _, e := range page.Events {
			if err := enc.Encode(ExportEvent(e, conv)); err != nil {
				return n, fmt.Errorf("localcache: export: %w", err)
			}
			n++
		}
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("localcache: export: %w", err)
	}
	return n, nil
}

// ExportEvent returns the export line of e; conv converts its value.
func ExportEvent(e Event, conv *JSONValues) ExportedEvent {
	x := ExportedEvent{
		Governor: e.Governor, State: e.State, Version: e.ToVersion, FromVersion: e.FromVersion, Action: e.Action,
		Time: time.Unix(0, e.Change.Time).UTC().Format(time.RFC3339Nano), TimeNS: e.Change.Time,
		Actor: e.Change.Actor, Reason: e.Change.Reason, Origin: e.Origin, OpID: e.OpID,
		Lamport: e.Clock.Lamport, HLC: e.Clock.HLC, Vector: e.Clock.Vector,
	}
	if x.Vector == nil {
		x.Vector = map[string]uint64{}
	}
	if e.Action != ActionDelete {
		b := base64.StdEncoding.EncodeToString(e.Value)
		x.ValueB64 = &b
		x.Value = conv.Convert(e.Value)
	}
	return x
}

// JSONValues converts msgpack values to JSON (ExportedEvent.Value). Not
// safe for concurrent use.
type JSONValues struct {
	h *codec.MsgpackHandle
}

// NewJSONValues returns a converter.
func NewJSONValues() *JSONValues {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true // str and bin are distinct: str decodes to string, bin to []byte
	h.MaxDepth = wire.MaxDepth
	h.MaxInitLen = 1024
	return &JSONValues{h: h}
}

// Convert returns b as JSON, or nil when b is not one whole msgpack value
// that converts cleanly.
func (c *JSONValues) Convert(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	dec := codec.NewDecoderBytes(b, c.h)
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil
	}
	var rest any
	if err := dec.Decode(&rest); !errors.Is(err, io.EOF) {
		return nil // trailing bytes
	}
	v, ok := jsonClean(v)
	if !ok {
		return nil
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return out
}

// jsonFloat is a finite float that keeps a ".0" when its value is integral
// (22.0, not 22), as the CLI renders values: the JSON still says it is a
// float.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	b := strconv.AppendFloat(nil, float64(f), 'g', -1, 64)
	if !bytes.ContainsAny(b, ".eE") {
		b = append(b, ".0"...)
	}
	return b, nil
}

// jsonClean returns v with its maps keyed by strings, or false when v holds
// something JSON has no plain counterpart for.
func jsonClean(v any) (any, bool) {
	switch x := v.(type) {
	case nil, bool, int64, uint64:
		return v, true
	case float64:
		return jsonFloat(x), !math.IsNaN(x) && !math.IsInf(x, 0)
	case string:
		return x, utf8.ValidString(x)
	case []any:
		for i, e := range x {
			c, ok := jsonClean(e)
			if !ok {
				return nil, false
			}
			x[i] = c
		}
		return x, true
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok || !utf8.ValidString(ks) {
				return nil, false
			}
			c, ok := jsonClean(e)
			if !ok {
				return nil, false
			}
			m[ks] = c
		}
		return m, true
	}
	return nil, false
}
