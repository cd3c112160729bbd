package localcache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// History shared with other nodes (docs/decisions/0019).
//
// Out: every snapshot this node takes is also put in an outbox (kindSnapOut,
// in saveSnapshot's mutation), which the syncer's snapshot pusher copies to
// the shared store (syncer.SnapshotSource); an entry leaves the outbox when
// the shared store has the snapshot, when it can never be written there,
// or when retention or cleanup dropped the snapshot.
//
// In: a remote record the pull loop applies may come with the remote
// history the local log lacks (syncer.RemoteBatch.History): events and
// snapshots above the local history's top. They are stored in the same
// mutation as the record, when the record is stored or the local one is as
// new, so a crash leaves either both or neither (a long history: its oldest
// part, the rest after it, longhistory.go); a record kept aside for a
// pending write brings none (its versions may be this node's own), nor do
// the remote events of this node's own changes (by op id). Events are only
// ever added at versions that have none (a local event is never replaced).
// An imported version that is a multiple of N gets its snapshot (the
// remote's, when it has one), and imported snapshots get their time marks,
// as local ones do. History imported into a hole below the local top
// (superseded.go: the versions of local changes that lost) widens the time
// mark whose stretch it falls in.

var (
	_ syncer.HistoryApplier = (*Store)(nil)
	_ syncer.SnapshotSource = (*Store)(nil)
)

func snapOutKey(k Key, version uint64) []byte { return versionedKey(kindSnapOut, k, version) }

// HistoryTop returns the highest version of k with a local event or
// snapshot (0: none) (syncer.HistoryApplier).
func (s *Store) HistoryTop(ctx context.Context, sk syncer.Key) (uint64, error) {
	k := Key(sk)
	var top uint64
	err := s.scan(ctx, func(txn *badger.Txn) error {
		ev, err := lastVersion(txn, kindEvent, k)
		if err != nil {
			return err
		}
		sn, err := lastVersion(txn, kindSnap, k)
		top = max(ev, sn)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("localcache: history top of %s: %w", k, err)
	}
	return top, nil
}

// SnapshotKeep implements syncer.SnapshotSource.
func (s *Store) SnapshotKeep(governor string) int {
	_, keep := s.opts.snapshotPolicy(governor)
	return keep
}

// UnpushedSnapshots implements syncer.SnapshotSource: the outbox in key
// order (governor, then state, in the store's key order, then version).
// Entries whose snapshot is gone are removed on the way.
func (s *Store) UnpushedSnapshots(ctx context.Context, after syncer.SnapshotRef, limit int) ([]syncer.Snapshot, error) {
	if limit <= 0 {
		limit = DefaultJournalLimit
	}
	seek := []byte{kindSnapOut}
	if after.Governor != "" {
		seek = append(snapOutKey(Key(after.Key), after.Version), 0)
	}
	var (
		out   []syncer.Snapshot
		stale []kv
	)
	err := s.scan(ctx, func(txn *badger.Txn) error {
		out, stale = nil, nil
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindSnapOut}})
		defer it.Close()
		for it.Seek(seek); it.Valid() && len(out) < limit; it.Next() {
			gov, state, version, err := parseVersionedKey(kindSnapOut, it.Item().Key())
			if err != nil {
				return fmt.Errorf("snapshot outbox key %x: %w", it.Item().Key(), err)
			}
			k := Key{Governor: string(gov), State: string(state)}
			item, err := txn.Get(snapKey(k, version))
			if errors.Is(err, badger.ErrKeyNotFound) {
				stale = append(stale, kv{key: it.Item().KeyCopy(nil), del: true})
				continue
			}
			if err != nil {
				return err
			}
			snap, err := readSnapshot(item, k)
			if err != nil {
				return err
			}
			out = append(out, toSyncSnapshot(snap))
		}
		return nil
	})
	if err == nil && len(stale) > 0 {
		err = s.commitOps(ctx, stale)
	}
	if err != nil {
		return nil, fmt.Errorf("localcache: snapshot outbox: %w", err)
	}
	return out, nil
}

// SnapshotsPushed implements syncer.SnapshotSource.
func (s *Store) SnapshotsPushed(ctx context.Context, refs []syncer.SnapshotRef) error {
	if len(refs) == 0 {
		return nil
	}
	ops := make([]kv, len(refs))
	for i, r := range refs {
		ops[i] = kv{key: snapOutKey(Key(r.Key), r.Version), del: true}
	}
	if err := s.commitOps(ctx, ops); err != nil {
		return fmt.Errorf("localcache: snapshot outbox: %w", err)
	}
	return nil
}

func toSyncSnapshot(snap Snapshot) syncer.Snapshot {
	return syncer.Snapshot{Record: toSyncRecord(&snap.Record), TakenAt: snap.TakenAt}
}

func fromSyncSnapshot(snap syncer.Snapshot) Snapshot {
	r := pastRecord(fromSyncRecord(snap.Record))
	r.Deleted = snap.Deleted
	return Snapshot{Record: r, TakenAt: snap.TakenAt}
}

// fromSyncEvent is the local event of a remote one (a transition's put
// gets the transition's action back); it shares Value and the vector.
func fromSyncEvent(e syncer.Event) Event {
	action := e.Action
	if action == ActionPut && e.Transition != "" {
		action = e.Transition
	}
	if action == ActionDelete {
		e.Value = nil
	}
	return Event{Key: Key(e.Key), Action: action, FromVersion: e.FromVersion, ToVersion: e.ToVersion,
		Value: e.Value, Change: Change(e.Change), Origin: e.Origin, OpID: e.OpID, Clock: Clock(e.Clock)}
}

// historyPlan is what storing one record's remote history writes.
type historyPlan struct {
	events []kv // stored where no event is
	ops    []kv // snapshots, their marks, dropped snapshots
}

// historyPlans is what storing the remote history of a batch's records
// writes in the batch's mutation, and after it (longhistory.go).
type historyPlans struct {
	first []*historyPlan // per record, the first part of its history (nil: none)
	later []laterParts   // the later parts of long histories, in record order
	// short holds, per record whose history was read short (History.Upto),
	// where the read started and ended: the versions above its end are
	// listed as a hole, and the hole listed from its start moves up.
	short map[int]shortHistory
}

// shortHistory is the span of a history read short: the versions after
// from up to upto.
type shortHistory struct{ from, upto uint64 }

// planHistories plans the history of each record of b (none when b has
// none): its first part (all of it unless it is long, see cutHistory). It
// holds snaps.work from a read of the store until unlock is called, after
// the plans are committed, so no snapshot, mark or cleanup change
// interleaves.
func (s *Store) planHistories(ctx context.Context, b syncer.RemoteBatch) (plans historyPlans, unlock func(), err error) {
	if !slices.ContainsFunc(b.History, func(h syncer.History) bool { return !h.Empty() || h.Upto != 0 }) {
		return historyPlans{}, func() {}, nil
	}
	if len(b.History) != len(b.Records) {
		return historyPlans{}, nil, fmt.Errorf("%d histories for %d records", len(b.History), len(b.Records))
	}
	s.snaps.work.Lock()
	err = s.scan(ctx, func(txn *badger.Txn) error {
		plans = historyPlans{first: make([]*historyPlan, len(b.Records)), short: make(map[int]shortHistory)}
		for i, h := range b.History {
			k, version := Key(b.Records[i].Key), b.Records[i].Version
			if h.Upto != 0 {
				if h.Upto <= h.From || h.Upto >= version {
					return fmt.Errorf("%w: history of %s read after v%d up to v%d, for v%d", ErrInvalid, k, h.From, h.Upto, version)
				}
				plans.short[i] = shortHistory{from: h.From, upto: h.Upto}
			}
			if h.Empty() {
				continue
			}
			if err := checkHistory(k, h, version); err != nil {
				return err
			}
			own, err := topOpIDs(txn, k, len(h.Events))
			if err != nil {
				return fmt.Errorf("history of %s: %w", k, err)
			}
			parts := s.cutHistory(k, h)
			if plans.first[i], err = s.planHistory(txn, k, parts[0], version, own); err != nil {
				return fmt.Errorf("history of %s: %w", k, err)
			}
			if len(parts) > 1 {
				lo, _ := historyBounds(h)
				_, after := historyBounds(parts[0])
				l := laterParts{rec: i, parts: parts[1:], own: own, from: lo - 1, after: after, upto: version}
				if sh, ok := plans.short[i]; ok {
					l.from, l.upto = sh.from, sh.upto
				}
				plans.later = append(plans.later, l)
			}
		}
		return nil
	})
	if err != nil {
		s.snaps.work.Unlock()
		return historyPlans{}, nil, err
	}
	return plans, s.snaps.work.Unlock, nil
}

// checkHistory checks that h is of the history of k up to version, its
// events in version order.
func checkHistory(k Key, h syncer.History, version uint64) error {
	var prev uint64
	for _, e := range h.Events {
		if e.Key != syncer.Key(k) || e.ToVersion <= prev || e.ToVersion > version || e.OpID == "" {
			return fmt.Errorf("%w: remote event %s v%d (op %q) is not of the history of %s up to v%d, after v%d",
				ErrInvalid, e.Key, e.ToVersion, e.OpID, k, version, prev)
		}
		prev = e.ToVersion
	}
	return nil
}

// planHistory plans storing h, the remote history of k up to version
// (checkHistory), or a part of it; own is topOpIDs of the whole.
func (s *Store) planHistory(txn *badger.Txn, k Key, h syncer.History, version uint64, own map[string]bool) (*historyPlan, error) {
	every, keep := s.opts.snapshotPolicy(k.Governor)
	p := &historyPlan{}
	events := make([]Event, 0, len(h.Events))
	for _, se := range h.Events {
		e := fromSyncEvent(se)
		if own[e.OpID] {
			continue // this node's change, renumbered by the shared store: its event is in the log already
		}
		events = append(events, e)
		p.events = append(p.events, kv{key: eventKey(k, e.ToVersion), value: encodeEvent(&e)})
	}
	since, err := lastMark(txn, k)
	if err != nil {
		return nil, err
	}
	if p.ops, err = widenMarks(txn, k, since, events); err != nil {
		return nil, err
	}
	versions, err := snapshotVersions(txn, k)
	if err != nil {
		return nil, err
	}
	// The remote's snapshots, and one of every imported version that is
	// a multiple of N the remote has none of (as a local write of it
	// would take), in version order.
	snaps := make([]Snapshot, 0, len(h.Snapshots))
	for _, ss := range h.Snapshots {
		snaps = append(snaps, fromSyncSnapshot(ss))
	}
	for _, e := range events {
		if every > 0 && e.ToVersion%uint64(every) == 0 &&
			!slices.ContainsFunc(snaps, func(s Snapshot) bool { return s.Version == e.ToVersion }) {
			snaps = append(snaps, eventSnapshot(e, s.opts.Now().UnixNano()))
		}
	}
	slices.SortFunc(snaps, func(a, b Snapshot) int { return cmp.Compare(a.Version, b.Version) })
	imported := make(map[uint64][]byte)
	for _, snap := range snaps {
		if snap.Key != k || snap.Version <= since || snap.Version > version || slices.Contains(versions, snap.Version) {
			continue // not above the local history: the local one stays
		}
		m, err := summarize(txn, k, since, &snap)
		if err != nil {
			return nil, err
		}
		for _, e := range events {
			if e.ToVersion > since && e.ToVersion <= snap.Version {
				m.events++
				m.first = min(m.first, e.ToVersion)
				m.minTime = min(m.minTime, e.Change.Time)
				m.maxTime = max(m.maxTime, e.Change.Time)
			}
		}
		imported[snap.Version] = encodeSnapshot(&snap)
		versions = append(versions, snap.Version)
		p.ops = append(p.ops, kv{key: markKey(k, snap.Version), value: encodeMark(m)})
		since = snap.Version
	}
	slices.Sort(versions)
	drop := map[uint64]bool{}
	if len(versions) > keep {
		first, err := firstEvent(txn, k)
		if err != nil {
			return nil, err
		}
		if len(events) > 0 && (first == 0 || events[0].ToVersion < first) {
			first = events[0].ToVersion
		}
		olds := versions[:len(versions)-keep]
		if first == 0 || first > versions[0] {
			olds = olds[1:] // the oldest is the base of the retained history
		}
		for _, v := range olds {
			drop[v] = true
		}
	}
	for _, v := range versions {
		switch val, ok := imported[v]; {
		case ok && !drop[v]:
			p.ops = append(p.ops, kv{key: snapKey(k, v), value: val})
		case !ok && drop[v]:
			p.ops = append(p.ops, kv{key: snapKey(k, v), del: true}, kv{key: snapOutKey(k, v), del: true})
		}
	}
	return p, nil
}

// widenMarks returns the operations that widen the time marks of k whose
// stretches get events: those of events that are stored at or below the
// newest mark (since), in a hole of the history (superseded.go), so that
// StateAt never skips one. An event in no mark's stretch (the mark that
// ended it was dropped with a lost change) needs none.
func widenMarks(txn *badger.Txn, k Key, since uint64, events []Event) ([]kv, error) {
	widened := make(map[uint64]mark)
	var order []uint64
	for _, e := range events {
		v := e.ToVersion
		if v > since {
			continue
		}
		if _, err := txn.Get(eventKey(k, v)); err == nil {
			continue // not stored: the local event stays
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return nil, err
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindMark, k)})
		it.Seek(markKey(k, v))
		if !it.Valid() {
			it.Close()
			continue
		}
		_, _, mv, err := parseVersionedKey(kindMark, it.Item().Key())
		if err != nil {
			it.Close()
			return nil, err
		}
		m, ok := widened[mv]
		if !ok {
			m, err = itemMark(it.Item())
		}
		it.Close()
		if err != nil {
			return nil, err
		}
		if m.since >= v {
			continue
		}
		if !ok {
			order = append(order, mv)
		}
		m.events++
		m.first = min(m.first, v)
		m.minTime = min(m.minTime, e.Change.Time)
		m.maxTime = max(m.maxTime, e.Change.Time)
		widened[mv] = m
	}
	ops := make([]kv, 0, len(order))
	for _, mv := range order {
		ops = append(ops, kv{key: markKey(k, mv), value: encodeMark(widened[mv])})
	}
	return ops, nil
}

// topOpIDs returns the op ids of the n newest local events of k. A local
// change the shared store committed under a later version (a rebase) is
// among them: such changes were pending when the newer remote versions
// arrived, so no remote version lies between them and the top of the log.
func topOpIDs(txn *badger.Txn, k Key, n int) (map[string]bool, error) {
	ids := make(map[string]bool)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(k), Reverse: true})
	defer it.Close()
	for it.Seek(eventKey(k, math.MaxUint64)); it.Valid() && len(ids) < n; it.Next() {
		e, err := readEvent(it.Item(), k)
		if err != nil {
			return nil, err
		}
		ids[e.OpID] = true
	}
	return ids, nil
}

// storeHistory stages p in tx: the events at versions with none, and the
// snapshot operations.
func (tx *mutTx) storeHistory(p *historyPlan) error {
	for _, op := range p.events {
		cur, err := tx.get(op.key)
		if err != nil {
			return err
		}
		if cur == nil {
			tx.set(op.key, op.value)
		}
	}
	for _, op := range p.ops {
		if op.del {
			tx.del(op.key)
		} else {
			tx.set(op.key, op.value)
		}
	}
	return nil
}

// historyStored says whether a record applied with status st stores its
// history: when the local record is the remote one or newer, and no local
// write of the key is pending.
func historyStored(st syncer.ApplyStatus) bool { return st.Applied() || st == syncer.ApplyStale }
