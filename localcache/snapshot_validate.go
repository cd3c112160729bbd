package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Snapshot rules (Violation.Rule), checked by Validate after the events:
//
//   - RuleSnapshot: a snapshot decodes, is stored under its own version,
//     and agrees with the event of that version when the log holds it
//     (deleted flag and action, value bytes, origin, op id, change
//     metadata).
//   - RuleReplay: replaying a state's newest snapshot and the events after
//     it gives the current record. When events follow the snapshot,
//     RuleCurrent checks the last one; when none does, the record must be
//     the snapshot's change (same op id at the same version: same value and
//     deleted flag), another node's change at that version, or a later
//     version; a record behind the snapshot, or none while the snapshot is
//     not a deletion, is a violation.
//   - RuleMark: every event a time mark covers (versions after the
//     previous mark up to the mark's own) has a change time within the
//     mark's range, which StateAt relies on to skip stretches of history.
const (
	RuleSnapshot = "snapshot"
	RuleReplay   = "replay"
	RuleMark     = "time_mark"
)

// firstGap reports the versions below a state's first event (which starts
// from version from): when a snapshot at from is the base of the retained
// history, those before it (GapRemoved); when the base is the first
// event's own version (a cut kept the event: its change was in the journal),
// all of them (GapRemoved); otherwise all of them (GapElsewhere).
func (v *validator) firstGap(from uint64) {
	_, err := v.txn.Get(snapKey(v.key, from))
	if err == nil {
		if from > 1 {
			v.rep.gap(v.key, 0, from-1, GapRemoved)
		}
		return
	}
	reason := GapElsewhere
	if _, err := v.txn.Get(snapKey(v.key, from+1)); err == nil {
		reason = GapRemoved
	}
	v.rep.gap(v.key, 0, from, reason)
}

// validateSnapshots checks the snapshots and time marks under the event
// prefix eventScope (a governor's or a state's).
func validateSnapshots(ctx context.Context, txn *badger.Txn, eventScope []byte, rep *ValidationReport) error {
	prefix := bytes.Clone(eventScope)
	prefix[0] = kindSnap
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	var newest *Snapshot // the newest snapshot of the state being read
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		gov, state, version, err := parseVersionedKey(kindSnap, it.Item().Key())
		if err != nil {
			rep.violation(Key{}, 0, RuleSnapshot, "snapshot key %x does not parse: %v", it.Item().Key(), err)
			continue
		}
		k := Key{Governor: string(gov), State: string(state)}
		if newest != nil && newest.Key != k {
			if err := checkReplay(txn, newest, rep); err != nil {
				return err
			}
			newest = nil
		}
		rep.Snapshots++
		snap, err := readSnapshot(it.Item(), k)
		if err != nil {
			rep.violation(k, version, RuleSnapshot, "%v", err)
			continue
		}
		if err := checkSnapshotEvent(txn, &snap, rep); err != nil {
			return err
		}
		newest = &snap
	}
	if newest != nil {
		if err := checkReplay(txn, newest, rep); err != nil {
			return err
		}
	}
	prefix[0] = kindMark
	return validateMarks(ctx, txn, prefix, rep)
}

// checkSnapshotEvent compares snap with the event of its version.
func checkSnapshotEvent(txn *badger.Txn, snap *Snapshot, rep *ValidationReport) error {
	k := snap.Key
	item, err := txn.Get(eventKey(k, snap.Version))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	e, err := decodeEvent(k, v)
	if err != nil {
		return nil // RuleDecode reported it
	}
	if d := recordDiff(&snap.Record, &e, true); d != "" {
		rep.violation(k, snap.Version, RuleSnapshot, "the snapshot differs from its event: %s", d)
	}
	return nil
}

// checkReplay checks the newest snapshot of a state against its record,
// when no event follows the snapshot.
func checkReplay(txn *badger.Txn, snap *Snapshot, rep *ValidationReport) error {
	k := snap.Key
	last, err := lastVersion(txn, kindEvent, k)
	if err != nil || last >= snap.Version {
		return err // RuleCurrent checks the last event against the record
	}
	rec, err := readRecord(txn, k)
	if err != nil {
		if !errors.Is(err, errCorrupt) {
			return fmt.Errorf("record of %s: %w", k, err)
		}
		return nil // RuleCurrent reported it
	}
	switch {
	case rec == nil:
		if !snap.Deleted {
			rep.violation(k, snap.Version, RuleReplay, "the state has no record; its newest snapshot (version %d) is not a deletion", snap.Version)
		}
	case rec.Version < snap.Version:
		rep.violation(k, rec.Version, RuleReplay, "the record (version %d) is behind the newest snapshot (version %d)", rec.Version, snap.Version)
	case rec.Version == snap.Version && rec.OpID == snap.OpID:
		ev := Event{Action: ActionPut, Value: snap.Value, Origin: snap.Origin, Change: snap.Change}
		if snap.Deleted {
			ev.Action = ActionDelete
		}
		if d := recordDiff(rec, &ev, false); d != "" {
			rep.violation(k, rec.Version, RuleReplay, "the record differs from the snapshot of its version: %s", d)
		}
	}
	return nil
}

// validateMarks checks every time mark under prefix against its events.
func validateMarks(ctx context.Context, txn *badger.Txn, prefix []byte, rep *ValidationReport) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		gov, state, version, err := parseVersionedKey(kindMark, it.Item().Key())
		if err != nil {
			rep.violation(Key{}, 0, RuleMark, "time mark key %x does not parse: %v", it.Item().Key(), err)
			continue
		}
		k := Key{Governor: string(gov), State: string(state)}
		m, err := itemMark(it.Item())
		if err != nil {
			rep.violation(k, version, RuleMark, "%v", err)
			continue
		}
		if m.since >= version || m.minTime > m.maxTime {
			rep.violation(k, version, RuleMark, "the time mark covers versions %d to %d and times %d to %d: an empty range",
				m.since+1, version, m.minTime, m.maxTime)
			continue
		}
		if err := checkMarkEvents(txn, k, version, m, rep); err != nil {
			return err
		}
	}
	return nil
}

// checkMarkEvents checks the change times of the events mark m (at
// version) covers.
func checkMarkEvents(txn *badger.Txn, k Key, version uint64, m mark, rep *ValidationReport) error {
	ev := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(k)})
	defer ev.Close()
	for ev.Seek(eventKey(k, m.since+1)); ev.Valid(); ev.Next() {
		_, _, v, err := parseEventKey(ev.Item().Key())
		if err != nil || v > version {
			return nil
		}
		h, err := itemEventHead(ev.Item())
		if err != nil {
			continue // RuleDecode reported it
		}
		if h.time < m.minTime || h.time > m.maxTime {
			rep.violation(k, version, RuleMark, "event %d has change time %d, outside the time mark's range %d to %d",
				v, h.time, m.minTime, m.maxTime)
			return nil
		}
	}
	return nil
}
