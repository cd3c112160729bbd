package localcache

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// Local changes that lost (docs/decisions/0019). A local change the push
// loop acks as superseded (it lost a conflict, or gave way with its batch
// or transaction) never reaches the shared store: the versions it made
// locally are made there by other changes. So the ack that settles it
// removes what it left in the local history, in the ack's own mutation:
// its event, a snapshot taken of it (with its outbox entry) and the time
// mark at its version, each only when it is that change's (by op id: a
// version number alone may name another change). The local log then holds
// the shared store's lineage, and the winner's history is imported as for
// any pulled record: HistoryTop no longer counts the lost versions.
//
// The winner's history of those versions does not always come by itself:
// the change stream may have delivered the winning record already (it was
// kept aside while the local change was pending), and a pull brings only
// the history above the local history's top, which a later local write
// may raise past them. So the settle lists the hole (kindHole: the
// versions after the lost changes' base, up to the record adopted) until
// the pull loop has read the state's record again and stored the remote
// history of the hole with it (syncer.HistoryRefiller). Imported events
// below a time mark widen that mark (planHistory).
//
// What the changes were stays in the conflict ledger: every superseded ack
// carries the record of its decision (syncer.ResolverGaveWay for a change
// that gave way with its batch), stored in the same mutation.
//
// A change the shared store committed under other versions than it made
// locally (it won a conflict, was merged, or was rebased) leaves the
// history the same way (madeElsewhere): the refill brings the shared
// store's events of those versions, its own included. While a later local
// write of the state is pending, neither kind leaves yet: that write was
// made on it, and a merge resolver finds its base by its events. The ack
// defers them (key kind d), and the ack that settles the state takes them
// out with its own (historyDrops).

var _ syncer.HistoryRefiller = (*Store)(nil)

// holeKey is the key of the hole listed in k's history.
func holeKey(k Key) []byte {
	b := stateKey(k)
	b[0] = kindHole
	return b
}

// dropLost removes from k's history what the local change op, which made
// version here and lost, left there (see above), and reports whether it
// found anything of it.
func (tx *mutTx) dropLost(k Key, version uint64, op string) (bool, error) {
	found := false
	ek := eventKey(k, version)
	v, err := tx.get(ek)
	if err != nil {
		return false, err
	}
	if v != nil {
		e, err := decodeEvent(k, v)
		if err != nil {
			return false, fmt.Errorf("event %s v%d: %w", k, version, err)
		}
		if e.OpID == op {
			tx.del(ek)
			found = true
		}
	}
	sk := snapKey(k, version)
	if v, err = tx.get(sk); err != nil {
		return false, err
	}
	if v != nil {
		snap, err := decodeSnapshot(k, v)
		if err != nil {
			return false, fmt.Errorf("snapshot %s v%d: %w", k, version, err)
		}
		if snap.OpID == op {
			tx.del(sk)
			tx.del(snapOutKey(k, version))
			found = true
		}
	}
	if !found {
		return false, nil
	}
	// The mark's stretch held the change (its event or snapshot): the
	// winner's event imported at that version may have another time.
	// Without the mark the stretch joins the next one down.
	mk := markKey(k, version)
	if v, err = tx.get(mk); err != nil {
		return false, err
	}
	if v != nil {
		tx.del(mk)
	}
	return true, nil
}

// madeElsewhere reports whether the entries js, which ack a acks as pushed
// or already applied (the caller asks it of those only), may hold other
// versions or values in the shared store than the ones they made locally:
// the push met a conflict (the change won it and was committed on top of the
// concurrent record, or was merged with it), or the remote record is the
// last entry's change under another version (rebased). Their events then
// leave the local history as a lost change's do, and the hole is refilled
// with the shared store's history, which holds the change where it was
// committed. When the remote record's last change is another's, the push
// loop found out from the remote's events (syncer.Ack.Renumbered).
func madeElsewhere(a syncer.Ack, js []JournalEntry) bool {
	last := js[len(js)-1]
	return a.Conflict != nil || a.Renumbered || (a.Remote.OpID == last.OpID && a.Remote.Version != last.Version)
}

// lostOp is a local change whose event leaves k's history: the version it
// made, and its op id.
type lostOp struct {
	version uint64
	op      string
}

// maxDeferred bounds the changes a state's history keeps while later
// writes of it are pending (historyDrops): beyond it, they leave at once.
const maxDeferred = 1024

// historyDrops returns the changes whose events leave k's history now (see
// dropLost): the entries js when leave says they do, and the ones deferred
// before, when the ack settles k. While a later write of k is pending (not
// settles), the entries' events stay and are deferred (key kind d): that
// write was made on them, and a merge resolver finds its base by their
// events when it meets the shared store's record. The ack that settles k
// then takes them out with its own.
func (tx *mutTx) historyDrops(k Key, js []JournalEntry, leave, settles bool) ([]lostOp, error) {
	var ops []lostOp
	if leave {
		for _, j := range js {
			ops = append(ops, lostOp{j.Version, j.OpID})
		}
	}
	if !settles && len(ops) == 0 {
		return nil, nil // nothing leaves, nothing to defer
	}
	v, err := tx.get(deferKey(k))
	if err != nil {
		return nil, err
	}
	deferred, err := decodeDeferred(k, v)
	if err != nil {
		return nil, err
	}
	switch {
	case settles:
		if v != nil {
			tx.del(deferKey(k))
		}
		return append(deferred, ops...), nil
	case len(deferred)+len(ops) > maxDeferred:
		return ops, nil // the pending writes' merges may find no base
	}
	tx.set(deferKey(k), appendDeferred(v, ops))
	return nil, nil
}

func deferKey(k Key) []byte {
	b := stateKey(k)
	b[0] = kindDefer
	return b
}

// appendDeferred appends ops to b, a deferred list: each a uvarint
// version, a uvarint length and the op id.
func appendDeferred(b []byte, ops []lostOp) []byte {
	b = slices.Clone(b)
	for _, o := range ops {
		b = binary.AppendUvarint(b, o.version)
		b = binary.AppendUvarint(b, uint64(len(o.op)))
		b = append(b, o.op...)
	}
	return b
}

func decodeDeferred(k Key, b []byte) ([]lostOp, error) {
	var ops []lostOp
	for len(b) > 0 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("%w: deferred history of %s", errCorrupt, k)
		}
		b = b[n:]
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return nil, fmt.Errorf("%w: deferred history of %s", errCorrupt, k)
		}
		ops = append(ops, lostOp{v, string(b[n : n+int(l)])})
		b = b[n+int(l):]
	}
	return ops, nil
}

// listHole lists the hole lost changes left in k's history, from version
// lowest (0: they left none) up to version through (0: the shared store
// has no record of k: nothing to bring), joined with the one listed
// already.
func (tx *mutTx) listHole(k Key, lowest, through uint64) error {
	if lowest == 0 || through == 0 {
		return nil
	}
	after := lowest - 1
	v, err := tx.get(holeKey(k))
	if err != nil {
		return err
	}
	if v != nil {
		a, t, err := decodeHole(k, v)
		if err != nil {
			return err
		}
		after, through = min(after, a), max(through, t)
	}
	tx.set(holeKey(k), encodeHole(after, through))
	return nil
}

// holeFilled records that the remote history of k's versions after from
// up to upTo is stored (longhistory.go): the hole listed in k's history
// then starts at upTo, or is gone when it ends there. A hole that starts
// below from (a lost change's, joined with it) stays as it is, for the
// pull loop to fill.
func (tx *mutTx) holeFilled(k Key, from, upTo uint64) error {
	v, err := tx.get(holeKey(k))
	if err != nil || v == nil {
		return err
	}
	after, through, err := decodeHole(k, v)
	switch {
	case err != nil:
		return err
	case after < from || after >= upTo:
	case through <= upTo:
		tx.del(holeKey(k))
	default:
		tx.set(holeKey(k), encodeHole(upTo, through))
	}
	return nil
}

func encodeHole(after, through uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, after), through)
}

func decodeHole(k Key, v []byte) (after, through uint64, err error) {
	if len(v) != 16 {
		return 0, 0, fmt.Errorf("%w: history hole of %s: %d bytes", errCorrupt, k, len(v))
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil
}

// HistoryHoles implements syncer.HistoryRefiller.
func (s *Store) HistoryHoles(ctx context.Context, governor, after string, limit int) ([]syncer.HistoryHole, error) {
	prefix := holeKey(Key{Governor: governor})
	seek := prefix
	if after != "" {
		seek = append(holeKey(Key{Governor: governor, State: after}), 0) // the first name after it
	}
	var out []syncer.HistoryHole
	err := s.scan(ctx, func(txn *badger.Txn) error {
		out = nil
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(seek); it.Valid() && len(out) < limit; it.Next() {
			key := it.Item().KeyCopy(nil)
			key[0] = kindState
			k, err := parseStateKey(key)
			if err != nil {
				return fmt.Errorf("history hole key %x: %w", it.Item().Key(), err)
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			after, _, err := decodeHole(k, v)
			if err != nil {
				return err
			}
			out = append(out, syncer.HistoryHole{Key: syncer.Key(k), After: after})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: history holes of %s: %w", governor, err)
	}
	return out, nil
}

// HistoryHole implements syncer.HistoryRefiller.
func (s *Store) HistoryHole(ctx context.Context, sk syncer.Key) (syncer.HistoryHole, bool, error) {
	k := Key(sk)
	var (
		h  syncer.HistoryHole
		ok bool
	)
	err := s.scan(ctx, func(txn *badger.Txn) error {
		v, err := getValue(txn, holeKey(k))
		if err != nil || v == nil {
			ok = false
			return err
		}
		after, _, err := decodeHole(k, v)
		h, ok = syncer.HistoryHole{Key: sk, After: after}, err == nil
		return err
	})
	if err != nil {
		return syncer.HistoryHole{}, false, fmt.Errorf("localcache: history hole of %s: %w", k, err)
	}
	return h, ok, nil
}

// HistoryRefilled implements syncer.HistoryRefiller.
func (s *Store) HistoryRefilled(ctx context.Context, sk syncer.Key, version uint64) error {
	k := Key(sk)
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		v, err := tx.get(holeKey(k))
		if err != nil || v == nil {
			return nil, err
		}
		_, through, err := decodeHole(k, v)
		if err != nil {
			return nil, err
		}
		if version == 0 || through <= version {
			tx.del(holeKey(k))
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: history of %s refilled: %w", k, err)
	}
	return nil
}
