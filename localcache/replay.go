package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/dgraph-io/badger/v4"
)

// Replay: the retained history of states as a starting snapshot and the
// events after it, in pages (docs/decisions/0015).
//
// Per state, in the order of QueryEvents (by state, then version): first
// its base, when it has one, then every event after the base. The base is
// the state's newest snapshot with ReplayQuery.Latest; otherwise its oldest
// snapshot when no event at or below it is left (cleanup cut the history
// there), and none when the log starts with the state's first event.
// Applying the items in order (a snapshot or a put sets the value, a
// delete removes it) rebuilds each state's latest version the local log
// knows of.

// ReplayQuery selects what Replay returns.
type ReplayQuery struct {
	Governor string
	// State, when set, limits the replay to that state.
	State string
	// Latest starts each state at its newest snapshot (the shortest
	// replay to its latest version) instead of the start of its retained
	// history.
	Latest bool
	// Limit is the most items one page returns: <= 0 means
	// DefaultEventLimit; it is capped at MaxEventLimit.
	Limit int
	// MaxBytes, when > 0, ends a page before its values would pass it (a
	// page holds at least one item when there is one).
	MaxBytes int
	// Cursor resumes after the last item of a previous page of the same
	// query (the format of EventQuery.Cursor: a state and a version).
	Cursor string
}

// ReplayItem is one step of a replay: a snapshot (a state's base) or an
// event; exactly one is set.
type ReplayItem struct {
	Snapshot *Snapshot
	Event    *Event
}

// ReplayPage is one page of a replay. Next is the cursor of the following
// page; "" when the replay is complete. A page may hold fewer items than
// the limit, even none, while Next is set.
type ReplayPage struct {
	Items []ReplayItem
	Next  string
}

// Replay returns one page of the replay q selects (see the comment above).
// It reads one consistent view per page, after every acknowledged write is
// applied; items never appear twice across pages.
//
// Errors: an invalid governor or cursor is a *FieldError wrapping
// ErrInvalid (an invalid state: a *KeyError holding one); ErrClosed; ctx's
// error.
func (s *Store) Replay(ctx context.Context, q ReplayQuery) (ReplayPage, error) {
	f, err := checkEventQuery(EventQuery{Governor: q.Governor, State: q.State, Limit: q.Limit, MaxBytes: q.MaxBytes})
	if err != nil {
		return ReplayPage{}, err
	}
	r := replayer{q: q, limit: f.limit, evPrefix: f.prefix}
	r.snapPrefix = bytes.Clone(f.prefix)
	r.snapPrefix[0] = kindSnap
	if q.Cursor != "" {
		if r.from, r.after, err = parseEventCursor(q.Cursor); err != nil {
			return ReplayPage{}, &FieldError{Field: "cursor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
		if q.State != "" && r.from != q.State {
			return ReplayPage{}, &FieldError{Field: "cursor", Err: fmt.Errorf("%w: the cursor is of another state", ErrInvalid)}
		}
	}
	var page ReplayPage
	err = s.scan(ctx, func(txn *badger.Txn) error {
		var err error
		page, err = r.read(ctx, txn)
		return err
	})
	if err != nil {
		return ReplayPage{}, fmt.Errorf("localcache: replay %s: %w", EventQuery{Governor: q.Governor, State: q.State}.scope(), err)
	}
	return page, nil
}

// replayer reads one page.
type replayer struct {
	q                    ReplayQuery
	limit                int
	evPrefix, snapPrefix []byte
	// from and after: the cursor's state and the version after which it
	// resumes in that state (math.MaxUint64: after the whole state).
	from      string
	after     uint64
	out       ReplayPage
	size      int    // bytes of values in out
	lastState []byte // the state of the last item (or of the last state done)
	lastVer   uint64
}

// errPageFull ends a page early.
var errPageFull = errors.New("page full")

func (r *replayer) read(ctx context.Context, txn *badger.Txn) (ReplayPage, error) {
	evIt := txn.NewIterator(badger.IteratorOptions{Prefix: r.evPrefix})
	defer evIt.Close()
	snIt := txn.NewIterator(badger.IteratorOptions{Prefix: r.snapPrefix})
	defer snIt.Close()
	if r.q.Cursor != "" {
		k := Key{Governor: r.q.Governor, State: r.from}
		evIt.Seek(eventPrefix(k))
		snIt.Seek(versionedPrefix(kindSnap, k))
	} else {
		evIt.Rewind()
		snIt.Rewind()
	}
	for {
		if err := ctx.Err(); err != nil {
			return ReplayPage{}, err
		}
		// The next state: the lower of the two iterators' (both lay out
		// governor and state alike, after the kind byte).
		var next []byte
		for _, it := range []*badger.Iterator{evIt, snIt} {
			if !it.Valid() {
				continue
			}
			_, state, _, err := parseVersionedKey(it.Item().Key()[0], it.Item().Key())
			if err != nil {
				return ReplayPage{}, fmt.Errorf("key %x: %w", it.Item().Key(), err)
			}
			if next == nil || stateLess(state, next) {
				next = bytes.Clone(state)
			}
		}
		if next == nil {
			return r.out, nil
		}
		err := r.state(txn, Key{Governor: r.q.Governor, State: string(next)}, evIt, snIt)
		if errors.Is(err, errPageFull) {
			r.out.Next = stateCursor(r.lastState, r.lastVer)
			return r.out, nil
		}
		if err != nil {
			return ReplayPage{}, err
		}
	}
}

// stateLess orders state names as the keys do: shorter first, then bytes.
func stateLess(a, b []byte) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return bytes.Compare(a, b) < 0
}

// state replays k, leaving both iterators past its keys.
func (r *replayer) state(txn *badger.Txn, k Key, evIt, snIt *badger.Iterator) error {
	skip := uint64(0) // items up to it were returned by earlier pages
	if r.q.Cursor != "" && k.State == r.from {
		skip = r.after
	}
	if skip == math.MaxUint64 {
		evIt.Seek(append(eventKey(k, math.MaxUint64), 0))
		snIt.Seek(append(snapKey(k, math.MaxUint64), 0))
		return nil
	}
	var snaps []uint64 // versions, oldest first
	snPrefix := versionedPrefix(kindSnap, k)
	for ; snIt.Valid() && bytes.HasPrefix(snIt.Item().Key(), snPrefix); snIt.Next() {
		_, _, v, err := parseVersionedKey(kindSnap, snIt.Item().Key())
		if err != nil {
			return err
		}
		snaps = append(snaps, v)
	}
	var baseVer uint64 // 0: no base
	if len(snaps) > 0 {
		first, err := firstEvent(txn, k)
		if err != nil {
			return err
		}
		switch {
		case r.q.Latest:
			baseVer = snaps[len(snaps)-1]
		case first == 0 || first > snaps[0]:
			baseVer = snaps[0]
		}
	}
	if baseVer > skip {
		if err := r.addSnapshot(txn, k, baseVer); err != nil {
			return err
		}
	}
	evPrefix := eventPrefix(k)
	var last uint64 // the last event's version
	evIt.Seek(eventKey(k, max(skip, baseVer)+1))
	for ; evIt.Valid() && bytes.HasPrefix(evIt.Item().Key(), evPrefix); evIt.Next() {
		_, _, v, err := parseEventKey(evIt.Item().Key())
		if err != nil {
			return err
		}
		e, err := readEvent(evIt.Item(), k)
		if err != nil {
			return err
		}
		if err := r.add(ReplayItem{Event: &e}, k, v, len(e.Value)); err != nil {
			return err
		}
		last = v
	}
	// A snapshot newer than every event (the events of those versions were
	// not kept here: made elsewhere and pulled without history, say) ends
	// the replay: it is the latest version the local log knows of.
	if n := len(snaps); n > 0 && snaps[n-1] > max(skip, baseVer, last) {
		top := snaps[n-1]
		rec, err := readRecord(txn, k)
		if err != nil {
			return err
		}
		// One above the record's version is of a local change that gave way.
		if rec == nil || top <= rec.Version {
			if err := r.addSnapshot(txn, k, top); err != nil {
				return err
			}
		}
	}
	r.lastState, r.lastVer = []byte(k.State), math.MaxUint64
	return nil
}

// addSnapshot appends k's snapshot at version (see add).
func (r *replayer) addSnapshot(txn *badger.Txn, k Key, version uint64) error {
	item, err := txn.Get(snapKey(k, version))
	if err != nil {
		return err
	}
	snap, err := readSnapshot(item, k)
	if err != nil {
		return err
	}
	return r.add(ReplayItem{Snapshot: &snap}, k, version, len(snap.Value))
}

// add appends an item of version of k, or returns errPageFull (the page
// then resumes at the item).
func (r *replayer) add(item ReplayItem, k Key, version uint64, size int) error {
	if len(r.out.Items) == r.limit || (r.q.MaxBytes > 0 && len(r.out.Items) > 0 && r.size+size > r.q.MaxBytes) {
		return errPageFull
	}
	r.out.Items = append(r.out.Items, item)
	r.size += size
	r.lastState, r.lastVer = []byte(k.State), version
	return nil
}
