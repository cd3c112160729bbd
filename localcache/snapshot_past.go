package localcache

import (
	"context"
	"errors"
	"math"

	"github.com/dgraph-io/badger/v4"
)

// pastAt finds the state of k at time at (Unix nanoseconds): the highest
// version whose change time is <= at, among the current record, the events
// and the snapshots (a snapshot answers for a version whose event cleanup
// removed).
//
// It walks the versions from the newest down. The time marks (snapshot.go)
// cut the history into stretches, each with the range of its change times:
// a stretch whose times are all after at is skipped without reading it; the
// first stretch that has a time <= at is read, newest first. So the cost is
// the number of marks plus the events of at most two stretches (the one
// above the newest mark, and the one that answers), not the events after
// at. Versions known to be made after at but with nothing below them that
// answers make a *HistoryGapError.
func pastAt(ctx context.Context, txn *badger.Txn, k Key, at int64) (PastState, error) {
	rec, err := readRecord(txn, k)
	if err != nil {
		return PastState{}, err
	}
	if rec != nil && rec.Change.Time <= at {
		if rec.Deleted {
			return PastState{}, &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
		}
		return PastState{Record: pastRecord(rec), Exact: true}, nil
	}
	l := pastLookup{ctx: ctx, txn: txn, k: k, at: at}
	if rec != nil {
		l.firstAfter = rec.Version
	}
	if l.snaps, err = snapshotHeads(txn, k); err != nil {
		return PastState{}, err
	}
	top := uint64(math.MaxUint64)
	if rec != nil {
		// Events above the record's version are of local changes that gave
		// way (kept by logs written before such changes left the log at
		// their settle, superseded.go): not part of the state's history.
		top = rec.Version
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindMark, k), Reverse: true})
	defer it.Close()
	for it.Seek(markKey(k, math.MaxUint64)); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return PastState{}, err
		}
		_, _, version, err := parseVersionedKey(kindMark, it.Item().Key())
		if err != nil {
			return PastState{}, err
		}
		m, err := itemMark(it.Item())
		if err != nil {
			return PastState{}, err
		}
		if version > top || m.since >= version {
			continue // not below what was read (a corrupt mark: validate reports it)
		}
		if p, ok, err := l.scan(version, top); ok || err != nil {
			return p, err
		}
		if m.minTime > at {
			l.firstAfter = m.first // everything in the stretch was made after at
		} else if p, ok, err := l.scan(m.since, version); ok || err != nil {
			return p, err
		}
		top = m.since
	}
	if p, ok, err := l.scan(0, top); ok || err != nil {
		return p, err
	}
	// Every version known here was made after at. Versions restart at 1
	// only for a new state (tombstones keep them growing), so if version 1
	// is among them the state did not exist yet.
	if l.firstAfter <= 1 {
		return PastState{}, &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
	}
	return PastState{}, &HistoryGapError{Op: "state_at", Key: k, After: 0, Through: l.firstAfter - 1}
}

// pastLookup is one pastAt.
type pastLookup struct {
	ctx   context.Context
	txn   *badger.Txn
	k     Key
	at    int64
	snaps []snapshotHead // oldest first
	// firstAfter is the lowest version known to be made after at (0: none
	// known): versions between the answer and it have no local event.
	firstAfter uint64
}

// scan reads the events and snapshots of versions lo+1 through hi, newest
// first, for the first one made at or before l.at: ok reports it was found
// (its answer is p, or err).
func (l *pastLookup) scan(lo, hi uint64) (p PastState, ok bool, err error) {
	if hi <= lo {
		return PastState{}, false, nil
	}
	si := len(l.snaps) - 1
	for si >= 0 && l.snaps[si].version > hi {
		si--
	}
	it := l.txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(l.k), Reverse: true})
	defer it.Close()
	it.Seek(eventKey(l.k, hi))
	for {
		if err := l.ctx.Err(); err != nil {
			return PastState{}, true, err
		}
		var ev uint64 // the next event's version (0: none left)
		if it.Valid() {
			_, _, v, err := parseEventKey(it.Item().Key())
			if err != nil {
				return PastState{}, true, err
			}
			if v > lo {
				ev = v
			}
		}
		var sv uint64 // the next snapshot's version (0: none left)
		if si >= 0 && l.snaps[si].version > lo {
			sv = l.snaps[si].version
		}
		switch {
		case ev == 0 && sv == 0:
			return PastState{}, false, nil
		case sv > ev: // a snapshot whose event is gone
			h := l.snaps[si]
			si--
			if h.time > l.at {
				l.firstAfter = sv
				continue
			}
			return l.answerSnapshot(sv, h.deleted)
		case sv == ev:
			si-- // the event stands for it
		}
		h, err := itemEventHead(it.Item())
		if err != nil {
			return PastState{}, true, err
		}
		if h.time > l.at {
			l.firstAfter = h.to
			it.Next()
			continue
		}
		e, err := readEvent(it.Item(), l.k)
		if err != nil {
			return PastState{}, true, err
		}
		p, err := l.answer(eventPast(e), e.Action == ActionDelete)
		return p, true, err
	}
}

// answerSnapshot answers with the snapshot at version.
func (l *pastLookup) answerSnapshot(version uint64, deleted bool) (PastState, bool, error) {
	item, err := l.txn.Get(snapKey(l.k, version))
	if err != nil {
		return PastState{}, true, err
	}
	snap, err := readSnapshot(item, l.k)
	if err != nil {
		return PastState{}, true, err
	}
	snap.Deleted = false
	p, err := l.answer(snap.Record, deleted)
	return p, true, err
}

// answer is the past state when r, a version made at or before l.at, is
// the highest such version the local history holds.
func (l *pastLookup) answer(r Record, deleted bool) (PastState, error) {
	exact := l.firstAfter == 0 || l.firstAfter <= r.Version+1
	if deleted {
		if exact {
			return PastState{}, &KeyError{Op: "state_at", Key: l.k, Err: ErrNotFound}
		}
		return PastState{}, &HistoryGapError{Op: "state_at", Key: l.k, After: r.Version, Through: l.firstAfter - 1}
	}
	p := PastState{Record: r, Exact: exact}
	if !exact {
		p.UnknownThrough = l.firstAfter - 1
	}
	return p, nil
}

// snapshotHeads returns the heads of k's snapshots, oldest first.
func snapshotHeads(txn *badger.Txn, k Key) ([]snapshotHead, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindSnap, k)})
	defer it.Close()
	var out []snapshotHead
	for it.Rewind(); it.Valid(); it.Next() {
		var h snapshotHead
		err := it.Item().Value(func(v []byte) error {
			d := decoder{b: v}
			h = d.snapshotHead()
			return d.err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// snapshotPast answers StateAtVersion for a version that has no event,
// from the snapshot at that version: ok is false when there is none.
func snapshotPast(txn *badger.Txn, k Key, version uint64) (p PastState, ok bool, err error) {
	item, err := txn.Get(snapKey(k, version))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return PastState{}, false, nil
	}
	if err != nil {
		return PastState{}, true, err
	}
	snap, err := readSnapshot(item, k)
	if err != nil {
		return PastState{}, true, err
	}
	if snap.Deleted {
		return PastState{}, true, &KeyError{Op: "state_at", Key: k, Err: ErrNotFound}
	}
	return PastState{Record: snap.Record, Exact: true}, true, nil
}
