package localcache

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// Long histories (docs/decisions/0019).
//
// A pulled record's missing history is stored with the record, in the
// mutation of its batch, when it takes at most a quarter of a transaction.
// A longer one (thousands of events: a node new to a state with
// HistoryFull, or with HistorySinceSnapshot when the shared store holds no
// snapshot of it) is cut by version into parts of that size (cutHistory).
// The oldest part goes with the record; each later one is stored in a
// mutation of its own, in version order, planned against the store as the
// earlier ones left it (storeLaterParts).
//
// The record goes first so that the local history never runs ahead of the
// local record: every part lies at or below the record's version, in the
// shared store's lineage. A local write of the state made between the
// mutations makes the version after the record's, where no imported event
// is, and the parts stored after it are all below it. Readers meanwhile see
// the record with the oldest parts of its history: the versions of the later
// parts are a gap (HistoryTop is the top of the parts stored; StateAtVersion
// answers them with a *HistoryGapError, StateAt inexactly or with the same
// error, Validate reports the gap), never a wrong answer. Snapshots, time
// marks and retention are those of a history imported up to the parts
// stored. Each part is planned and stored holding the snapshot planner's
// mutex, as the batch's mutation is, so no local snapshot, mark or cleanup
// plan interleaves with one; between parts they see the history stored so
// far, as for any other import.
//
// A crash or failure between the mutations loses nothing: the record's
// mutation lists the versions above its part as a hole (superseded.go),
// which each later part narrows and the last one drops, and the governor's
// cursor is stored only after the last part. The pull loop then redoes the
// page: the record is stale and HistoryTop is the top of the parts stored,
// so the pull brings and stores only the rest. If a local write of the state
// is pending by then (a record brings no history then), the hole makes the
// pull loop bring the rest once the write is settled
// (syncer.HistoryRefiller).
//
// The pull loop reads a bounded slice of a history at once (syncer
// FetchHistory): a history read short (History.Upto) is stored as any
// other, cut into parts when long, and the versions above it, up to the
// record's, are listed as a hole (shortHistory): in the record's
// mutation, the hole from where the read started moving up to its end
// (holeFilled), or, for a long one, left by its last part. The pull loop
// brings the next slice at its next poll, and so on.

// laterParts is the remote history of a batch's record after its first
// part.
type laterParts struct {
	rec   int              // the record's index in its batch
	parts []syncer.History // in version order
	// own is this node's op ids among its newest events, read before the
	// first part was stored (topOpIDs): the imported events are the
	// newest after it.
	own map[string]bool
	// from and after bound the hole the record's mutation lists: the whole
	// history is of the versions after from, the first part ends at after.
	// upto is where the history ends: the record's version, or below it
	// for a history read short (shortHistory), whose last part leaves the
	// hole above it listed.
	from, after, upto uint64
}

// cutHistory cuts h, the remote history of k, by version into parts that
// each take at most a quarter of a transaction (historyCost), oldest
// first; a version's event and snapshot go in one part. h fits one part
// when it is that small. The first part shares its transaction with the
// other records of its batch, which the pull loop keeps to well below a
// transaction (syncer.applyChunks).
func (s *Store) cutHistory(k Key, h syncer.History) []syncer.History {
	every, _ := s.opts.snapshotPolicy(k.Governor)
	maxCount, maxSize := s.limits.maxCount/4, s.limits.maxSize/4
	keyLen := len(eventKey(k, 0)) // snapshot, mark and outbox keys are as long
	evs := h.Events
	snaps := slices.SortedFunc(slices.Values(h.Snapshots), func(a, b syncer.Snapshot) int { return cmp.Compare(a.Version, b.Version) })
	var (
		parts       []syncer.History
		part        syncer.History
		count, size int64
	)
	for len(evs) > 0 || len(snaps) > 0 {
		v := uint64(math.MaxUint64)
		if len(evs) > 0 {
			v = evs[0].ToVersion
		}
		if len(snaps) > 0 {
			v = min(v, snaps[0].Version)
		}
		var next syncer.History
		var c, z int64
		for ; len(evs) > 0 && evs[0].ToVersion == v; evs = evs[1:] {
			e := fromSyncEvent(evs[0])
			n := eventSize(&e)
			c, z = s.limits.historyCost(c, z, keyLen, n, false)
			if every > 0 && v%uint64(every) == 0 {
				c, z = s.limits.historyCost(c, z, keyLen, n, true) // a snapshot taken of it: as large
			}
			next.Events = append(next.Events, evs[0])
		}
		for ; len(snaps) > 0 && snaps[0].Version == v; snaps = snaps[1:] {
			snap := fromSyncSnapshot(snaps[0])
			c, z = s.limits.historyCost(c, z, keyLen, snapshotSize(&snap), true)
			next.Snapshots = append(next.Snapshots, snaps[0])
		}
		if !part.Empty() && (count+c > maxCount || size+z > maxSize) {
			parts = append(parts, part)
			part, count, size = syncer.History{}, 0, 0
		}
		part.Events = append(part.Events, next.Events...)
		part.Snapshots = append(part.Snapshots, next.Snapshots...)
		count, size = count+c, size+z
	}
	return append(parts, part)
}

// historyCost adds to count and size what storing one remote item adds to
// a transaction at most: its entry (an event or a snapshot) with a value of
// at most n bytes, a time mark it adds or widens, and for a snapshot the
// older snapshot and outbox entry retention may drop.
func (l txnLimits) historyCost(count, size int64, keyLen, n int, snapshot bool) (int64, int64) {
	const markLen = 1 + 5*binary.MaxVarintLen64 // encodeMark
	count, size = count+2, size+l.entryBound(keyLen, n)+l.entrySizeOf(keyLen, markLen)
	if snapshot {
		count, size = count+2, size+2*l.entrySizeOf(keyLen, 0)
	}
	return count, size
}

// entryBound bounds entrySize of a value of at most n bytes: a value just
// below the threshold, kept in the tree, weighs more than any above it.
func (l txnLimits) entryBound(keyLen, n int) int64 {
	return l.entrySizeOf(keyLen, int(min(int64(n), l.threshold-1)))
}

// historyBounds returns the lowest and the highest version h holds.
func historyBounds(h syncer.History) (lo, hi uint64) {
	lo = math.MaxUint64
	for _, e := range h.Events {
		lo, hi = min(lo, e.ToVersion), max(hi, e.ToVersion)
	}
	for _, s := range h.Snapshots {
		lo, hi = min(lo, s.Version), max(hi, s.Version)
	}
	return lo, hi
}

// storeLaterParts stores the parts of b's long histories after their first
// ones, each in a mutation of its own, then b's cursor, which the batch's
// mutation left out (see above). statuses are the batch's.
func (s *Store) storeLaterParts(ctx context.Context, b syncer.RemoteBatch, later []laterParts, statuses []syncer.ApplyStatus) error {
	for i := range later {
		l := &later[i]
		if !historyStored(statuses[l.rec]) {
			continue // no part of it was stored
		}
		for j := range l.parts {
			if hook := s.opts.hookHistoryPart; hook != nil {
				if err := hook(Key(b.Records[l.rec].Key), j+1); err != nil {
					return err
				}
			}
			stored, err := s.storePart(ctx, b.Records[l.rec], l, j)
			if err != nil {
				return fmt.Errorf("history of %s: %w", b.Records[l.rec].Key, err)
			}
			if !stored {
				break // the hole stays listed: the pull loop brings the rest later
			}
		}
	}
	if b.Governor == "" || len(later) == 0 {
		return nil
	}
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		tx.set(cursorKey(b.Governor), []byte(b.Cursor))
		return nil, nil
	})
	return err
}

// storePart stores part j of l, the history of record r, and reports
// whether it did: not when the local record is no longer r or a later one
// (partStored). The hole the record's mutation listed then starts above
// the part, and the last part drops it (or, for a history read short,
// leaves it above the history read).
func (s *Store) storePart(ctx context.Context, r syncer.Record, l *laterParts, j int) (bool, error) {
	k := Key(r.Key)
	s.snaps.work.Lock()
	defer s.snaps.work.Unlock()
	var p *historyPlan
	err := s.scan(ctx, func(txn *badger.Txn) error {
		var err error
		p, err = s.planHistory(txn, k, l.parts[j], r.Version, l.own)
		return err
	})
	if err != nil {
		return false, err
	}
	res, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		cur, err := tx.record(k)
		if err != nil || !partStored(cur, r) {
			return false, err
		}
		if err := tx.storeHistory(p); err != nil {
			return false, err
		}
		upTo := l.upto
		if j < len(l.parts)-1 {
			_, upTo = historyBounds(l.parts[j])
		}
		return true, tx.holeFilled(k, l.from, upTo)
	})
	if err != nil {
		return false, err
	}
	return res.(bool), nil
}

// partStored says whether a later part of the history of remote record r,
// whose first part was stored with it, is stored over cur, the local
// record now: when the local record is r or later, as when r brought its
// history (historyStored), or when a local write is pending above r's
// version (the part is of the shared store's versions below it).
func partStored(cur *Record, r syncer.Record) bool {
	if cur == nil {
		return false
	}
	return cur.Version > r.Version || historyStored(syncer.DecideApply(toSyncRecord(cur), true, cur.journaled > 0, r))
}
