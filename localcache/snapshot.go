package localcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// Snapshots (docs/decisions/0015). A snapshot is a state's whole record
// at one version (value, deleted flag, change metadata, origin, op id,
// clocks), stored under its own key (kindSnap) beside the events. Events
// hold whole values too, so a snapshot is not needed to rebuild a version
// whose event is kept; it is what remains of a version once cleanup has
// removed the events up to it (the base the retained history starts from),
// and the starting point a replay or a new node can begin with.
//
// With every snapshot goes a time mark (kindMark, same version): the range
// of change times of the state's local events since the previous mark,
// and of the snapshot itself. StateAt skips a stretch of history whose
// times are all after the time asked without reading its events, so its
// cost is the marks plus the events of two stretches (see pastAt). Marks
// are small and stay while their events do: cleanup removes them with the
// events; snapshot retention does not.
//
// Automatic snapshots: a local write that makes a version that is a
// multiple of N (Options.Snapshots, default 100) marks the state due, and
// a background goroutine then snapshots that version from its event, in a
// mutation through the committer (durable in the write-ahead log, like a
// write). The write path only does the modulo and, one write in N, a map
// insert. A state is due again at the next multiple; a due state lost in a
// crash, or one of more than maxDueSnapshots waiting at once, is caught up
// at its next multiple. Versions made on other nodes get theirs when the
// pull loop stores their events (bootstrap.go). Each state keeps its K newest snapshots (default 5), plus its
// oldest one while no event at or below it is left (the base of its
// retained history, see Cleanup).
//
// Every change of snapshots, marks and the events cleanup removes is
// planned from a read and committed while holding snapshotter.work, so
// plans never race each other; writes only add events above them.

// Snapshot defaults.
const (
	DefaultSnapshotEvery = 100
	DefaultSnapshotKeep  = 5
	// maxDueSnapshots bounds the states waiting for an automatic snapshot.
	maxDueSnapshots = 4096
)

// Snapshot is a state's record at one version. Its Record has no sync
// fields (SyncedVersion, SyncedAt, Pending, Seq); Deleted is set for a
// snapshot of a deletion.
type Snapshot struct {
	Record
	TakenAt int64 // when it was taken (Unix nanoseconds)
}

// snapshotPolicy returns the snapshot interval (<= 0: no automatic
// snapshots) and retention of governor.
func (o *Options) snapshotPolicy(governor string) (every, keep int) {
	every, keep = DefaultSnapshotEvery, DefaultSnapshotKeep
	if o.Snapshots != nil {
		every, keep = o.Snapshots(governor)
		if keep <= 0 {
			keep = DefaultSnapshotKeep
		}
	}
	return every, keep
}

// snapshotter is the store's snapshot machinery.
type snapshotter struct {
	mu   sync.Mutex
	due  map[Key]uint64 // states due for an automatic snapshot, and the version
	wake chan struct{}
	// waiting counts the states due and not yet done (due, or taken from
	// it by the goroutine).
	waiting atomic.Int64
	// work serializes the changes of snapshots, marks and cleanup.
	work   sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// startSnapshots starts the automatic snapshot goroutine (Open).
func (s *Store) startSnapshots() {
	ctx, cancel := context.WithCancel(context.Background())
	s.snaps.wake = make(chan struct{}, 1)
	s.snaps.cancel = cancel
	s.snaps.done = make(chan struct{})
	go s.snapshotLoop(ctx)
}

// stopSnapshots stops it and waits for it (Close).
func (s *Store) stopSnapshots() {
	s.snaps.cancel()
	<-s.snaps.done
}

// noteSnapshotsDue marks the states a durable part's writes made due for a
// snapshot. Committer only.
func (s *Store) noteSnapshotsDue(part []*staged) {
	woke := false
	for _, st := range part {
		if st.req.mut != nil {
			continue
		}
		for _, rec := range st.records {
			every, _ := s.opts.snapshotPolicy(rec.Governor)
			if every <= 0 || rec.Version%uint64(every) != 0 {
				continue
			}
			s.snaps.mu.Lock()
			if s.snaps.due == nil {
				s.snaps.due = make(map[Key]uint64)
			}
			switch _, ok := s.snaps.due[rec.Key]; {
			case !ok && len(s.snaps.due) < maxDueSnapshots:
				s.snaps.waiting.Add(1)
				fallthrough
			case ok:
				s.snaps.due[rec.Key] = rec.Version
				woke = true
			}
			s.snaps.mu.Unlock()
		}
	}
	if woke {
		select {
		case s.snaps.wake <- struct{}{}:
		default:
		}
	}
}

// snapshotLoop takes the automatic snapshots until ctx ends.
func (s *Store) snapshotLoop(ctx context.Context) {
	defer close(s.snaps.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.snaps.wake:
		}
		s.snaps.mu.Lock()
		due := s.snaps.due
		s.snaps.due = nil
		s.snaps.mu.Unlock()
		for k, version := range due {
			if ctx.Err() != nil {
				return
			}
			if err := s.autoSnapshot(ctx, k, version); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				s.log.Warn("automatic snapshot failed", "governor", k.Governor, "state", k.State, "version", version, "err", err)
			}
			s.snaps.waiting.Add(-1)
		}
	}
}

// autoSnapshot snapshots version of k from its event, unless the event is
// gone or a later snapshot exists.
func (s *Store) autoSnapshot(ctx context.Context, k Key, version uint64) error {
	_, keep := s.opts.snapshotPolicy(k.Governor)
	_, _, err := s.saveSnapshot(ctx, k, keep, func(txn *badger.Txn) (*Snapshot, error) {
		item, err := txn.Get(eventKey(k, version))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		e, err := readEvent(item, k)
		if err != nil {
			return nil, err
		}
		if last, err := lastMark(txn, k); err != nil || last >= version {
			return nil, err // a later snapshot covers it
		}
		snap := eventSnapshot(e, s.opts.Now().UnixNano())
		return &snap, nil
	})
	return err
}

// Snapshot takes a snapshot of state k at its current version (a deleted
// state too: the snapshot then records the deletion) and returns it, and
// whether it is new: a snapshot at that version may exist already. It
// keeps the governor's number of snapshots, dropping the oldest.
//
// Errors: a *KeyError wrapping ErrNotFound when k has no record; an
// invalid key is a *KeyError holding a *FieldError (ErrInvalid); ErrClosed;
// ctx's error.
func (s *Store) Snapshot(ctx context.Context, k Key) (Snapshot, bool, error) {
	if err := validateKey("snapshot", k); err != nil {
		return Snapshot{}, false, err
	}
	_, keep := s.opts.snapshotPolicy(k.Governor)
	snap, taken, err := s.saveSnapshot(ctx, k, keep, func(txn *badger.Txn) (*Snapshot, error) {
		rec, err := readRecord(txn, k)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			return nil, &KeyError{Op: "snapshot", Key: k, Err: ErrNotFound}
		}
		snap := recordSnapshot(rec, s.opts.Now().UnixNano())
		return &snap, nil
	})
	var ke *KeyError
	if err != nil && !errors.As(err, &ke) {
		err = fmt.Errorf("localcache: snapshot %s: %w", k, err)
	}
	return snap, taken, err
}

// SnapshotSummary is what SnapshotGovernor did.
type SnapshotSummary struct {
	States int // live states seen
	Taken  int // snapshots taken (the others had one at their version)
}

// SnapshotGovernor takes a snapshot of every live state of governor (see
// Snapshot), one state at a time: states written meanwhile may or may not
// be included.
//
// Errors: an invalid governor is a *FieldError wrapping ErrInvalid; those
// of Snapshot (a state deleted meanwhile is skipped).
func (s *Store) SnapshotGovernor(ctx context.Context, governor string) (SnapshotSummary, error) {
	var sum SnapshotSummary
	cursor := ""
	for {
		recs, next, err := s.List(ctx, governor, "", cursor, 0, 1<<20)
		if err != nil {
			return sum, err
		}
		for _, rec := range recs {
			_, taken, err := s.Snapshot(ctx, rec.Key)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return sum, err
			}
			sum.States++
			if taken {
				sum.Taken++
			}
		}
		if next == "" {
			return sum, nil
		}
		cursor = next
	}
}

// Snapshots returns the snapshots of state k, oldest first.
//
// Errors: an invalid key is a *KeyError holding a *FieldError; ErrClosed;
// ctx's error.
func (s *Store) Snapshots(ctx context.Context, k Key) ([]Snapshot, error) {
	if err := validateKey("snapshots", k); err != nil {
		return nil, err
	}
	var out []Snapshot
	err := s.scan(ctx, func(txn *badger.Txn) error {
		out = nil
		it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindSnap, k), PrefetchValues: true, PrefetchSize: 8})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			snap, err := readSnapshot(it.Item(), k)
			if err != nil {
				return err
			}
			out = append(out, snap)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: snapshots of %s: %w", k, err)
	}
	return out, nil
}

// saveSnapshot stores the snapshot source returns (nil: none to take) with
// its time mark, and drops the snapshots beyond keep. It returns the
// snapshot at that version (the stored one, if there was one already) and
// whether it took it.
func (s *Store) saveSnapshot(ctx context.Context, k Key, keep int, source func(txn *badger.Txn) (*Snapshot, error)) (Snapshot, bool, error) {
	s.snaps.work.Lock()
	defer s.snaps.work.Unlock()
	var (
		snap  *Snapshot
		ops   []kv
		taken bool
	)
	err := s.scan(ctx, func(txn *badger.Txn) error {
		var err error
		if snap, err = source(txn); err != nil || snap == nil {
			return err
		}
		item, err := txn.Get(snapKey(k, snap.Version))
		if err == nil {
			stored, err := readSnapshot(item, k)
			if err != nil || stored.OpID == snap.OpID {
				snap = &stored
				return err
			}
			// The stored snapshot is of a local change that gave way (the
			// state's version was made again by another change): replace it.
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		ops, err = planSnapshot(txn, snap, keep)
		ops = append(ops, kv{key: snapOutKey(k, snap.Version), value: []byte{}}) // copied to the shared store (bootstrap.go)
		taken = true
		return err
	})
	if err != nil || snap == nil {
		return Snapshot{}, false, err
	}
	if taken {
		if err := s.commitOps(ctx, ops); err != nil {
			return Snapshot{}, false, err
		}
	}
	return *snap, taken, nil
}

// commitOps stores ops in one mutation through the committer.
func (s *Store) commitOps(ctx context.Context, ops []kv) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		for _, op := range ops {
			if op.del {
				tx.del(op.key)
			} else {
				tx.set(op.key, op.value)
			}
		}
		return nil, nil
	})
	return err
}

// planSnapshot returns the operations that store snap (not stored yet),
// its time mark, and drop the snapshots beyond keep.
func planSnapshot(txn *badger.Txn, snap *Snapshot, keep int) ([]kv, error) {
	k := snap.Key
	ops := []kv{{key: snapKey(k, snap.Version), value: encodeSnapshot(snap)}}
	last, err := lastMark(txn, k)
	if err != nil {
		return nil, err
	}
	if last < snap.Version {
		m, err := summarize(txn, k, last, snap)
		if err != nil {
			return nil, err
		}
		ops = append(ops, kv{key: markKey(k, snap.Version), value: encodeMark(m)})
	}
	versions, err := snapshotVersions(txn, k)
	if err != nil {
		return nil, err
	}
	versions = append(versions, snap.Version)
	slices.Sort(versions)
	if len(versions) <= keep {
		return ops, nil
	}
	drop := versions[:len(versions)-keep]
	first, err := firstEvent(txn, k)
	if err != nil {
		return nil, err
	}
	if first == 0 || first > versions[0] {
		drop = drop[1:] // the oldest is the base of the retained history
	}
	for _, v := range drop {
		ops = append(ops, kv{key: snapKey(k, v), del: true}, kv{key: snapOutKey(k, v), del: true})
	}
	return ops, nil
}

// summarize returns the time mark of snap: the state's local events after
// version since (the previous mark) up to snap's version, and snap itself.
func summarize(txn *badger.Txn, k Key, since uint64, snap *Snapshot) (mark, error) {
	m := mark{since: since, first: snap.Version, minTime: snap.Change.Time, maxTime: snap.Change.Time}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(k)})
	defer it.Close()
	for it.Seek(eventKey(k, since+1)); it.Valid(); it.Next() {
		_, _, v, err := parseEventKey(it.Item().Key())
		if err != nil {
			return mark{}, err
		}
		if v > snap.Version {
			break
		}
		h, err := itemEventHead(it.Item())
		if err != nil {
			return mark{}, err
		}
		m.events++
		m.first = min(m.first, v)
		m.minTime = min(m.minTime, h.time)
		m.maxTime = max(m.maxTime, h.time)
	}
	return m, nil
}

// itemEventHead decodes the head of the event item holds.
func itemEventHead(item *badger.Item) (eventHead, error) {
	var h eventHead
	err := item.Value(func(v []byte) error {
		var err error
		h, err = decodeEventHead(v)
		return err
	})
	if err != nil {
		return eventHead{}, fmt.Errorf("event %x: %w", item.Key(), err)
	}
	return h, nil
}

// lastMark returns the version of k's newest time mark (0: none).
func lastMark(txn *badger.Txn, k Key) (uint64, error) {
	return lastVersion(txn, kindMark, k)
}

// lastVersion returns the highest version of k's keys of kind (0: none).
func lastVersion(txn *badger.Txn, kind byte, k Key) (uint64, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kind, k), Reverse: true})
	defer it.Close()
	it.Seek(versionedKey(kind, k, math.MaxUint64))
	if !it.Valid() {
		return 0, nil
	}
	_, _, v, err := parseVersionedKey(kind, it.Item().Key())
	return v, err
}

// firstEvent returns the lowest version of k that has an event (0: none).
func firstEvent(txn *badger.Txn, k Key) (uint64, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(k)})
	defer it.Close()
	it.Rewind()
	if !it.Valid() {
		return 0, nil
	}
	_, _, v, err := parseEventKey(it.Item().Key())
	return v, err
}

// snapshotVersions returns the versions of k's snapshots, in order.
func snapshotVersions(txn *badger.Txn, k Key) ([]uint64, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kindSnap, k)})
	defer it.Close()
	var out []uint64
	for it.Rewind(); it.Valid(); it.Next() {
		_, _, v, err := parseVersionedKey(kindSnap, it.Item().Key())
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func snapKey(k Key, version uint64) []byte { return versionedKey(kindSnap, k, version) }
func markKey(k Key, version uint64) []byte { return versionedKey(kindMark, k, version) }

// recordSnapshot is the snapshot of rec.
func recordSnapshot(rec *Record, takenAt int64) Snapshot {
	r := pastRecord(rec)
	r.Deleted = rec.Deleted
	return Snapshot{Record: r, TakenAt: takenAt}
}

// eventSnapshot is the snapshot of the version e made.
func eventSnapshot(e Event, takenAt int64) Snapshot {
	r := eventPast(e)
	if e.Action == ActionDelete {
		r.Deleted, r.Value = true, nil
	}
	return Snapshot{Record: r, TakenAt: takenAt}
}

// --- encoding ---
//
//	snapshot: format=1, flags(bit0 deleted), u version, i updatedAt,
//	          change, s origin, s opID, clock, i takenAt, s value
//	mark:     format=1, u since, u events, u first, i minTime, i maxTime

func encodeSnapshot(snap *Snapshot) []byte {
	r := &snap.Record
	b := make([]byte, 0, snapshotSize(snap))
	var flags byte
	if r.Deleted {
		flags |= 1
	}
	b = append(b, formatV1, flags)
	b = binary.AppendUvarint(b, r.Version)
	b = binary.AppendVarint(b, r.UpdatedAt)
	b = appendChange(b, r.Change)
	b = appendString(b, r.Origin)
	b = appendString(b, r.OpID)
	b = appendClock(b, r.Clock)
	b = binary.AppendVarint(b, snap.TakenAt)
	return appendBytes(b, r.Value)
}

// snapshotSize bounds the encoded size of snap.
func snapshotSize(snap *Snapshot) int {
	r := &snap.Record
	return 2 + 4*binary.MaxVarintLen64 + len(r.Change.Actor) + len(r.Change.Reason) + len(r.Origin) + len(r.OpID) +
		clockSize(r.Clock) + len(r.Value) + 4*binary.MaxVarintLen64
}

// snapshotHead is the start of an encoded snapshot.
type snapshotHead struct {
	version uint64
	deleted bool
	time    int64 // change time
}

// head reads a snapshot up to its change time, without allocating.
func (d *decoder) snapshotHead() snapshotHead {
	if f := d.byte(); f != formatV1 {
		d.fail()
	}
	h := snapshotHead{deleted: d.byte()&1 != 0, version: d.uvarint()}
	d.varint() // updatedAt
	d.bytes()  // actor
	d.bytes()  // reason
	h.time = d.varint()
	return h
}

// decodeSnapshot decodes a snapshot of k from b, which it aliases.
func decodeSnapshot(k Key, b []byte) (Snapshot, error) {
	d := decoder{b: b}
	if f := d.byte(); d.err == nil && f != formatV1 {
		return Snapshot{}, fmt.Errorf("%w: snapshot format %d", errCorrupt, f)
	}
	snap := Snapshot{Record: Record{Key: k}}
	r := &snap.Record
	r.Deleted = d.byte()&1 != 0
	r.Version = d.uvarint()
	r.UpdatedAt = d.varint()
	r.Change = d.change()
	r.Origin = d.string()
	r.OpID = d.string()
	r.Clock = d.clock()
	snap.TakenAt = d.varint()
	if v := d.bytes(); len(v) > 0 {
		r.Value = v
	}
	return snap, d.done("snapshot")
}

func readSnapshot(item *badger.Item, k Key) (Snapshot, error) {
	v, err := item.ValueCopy(nil)
	if err != nil {
		return Snapshot{}, err
	}
	snap, err := decodeSnapshot(k, v)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %x: %w", item.Key(), err)
	}
	_, _, version, err := parseVersionedKey(kindSnap, item.Key())
	if err == nil && version != snap.Version {
		err = fmt.Errorf("snapshot %x: %w: it holds version %d", item.Key(), errCorrupt, snap.Version)
	}
	return snap, err
}

// mark is a time mark: the local events of a state in versions since+1
// through the mark's version (its key), and the snapshot at that version.
type mark struct {
	since            uint64 // the previous mark's version (0: none)
	events           uint64 // local events in the stretch
	first            uint64 // the lowest version of the stretch with an event or the snapshot
	minTime, maxTime int64  // the range of their change times
}

func encodeMark(m mark) []byte {
	b := make([]byte, 0, 1+5*binary.MaxVarintLen64)
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, m.since)
	b = binary.AppendUvarint(b, m.events)
	b = binary.AppendUvarint(b, m.first)
	b = binary.AppendVarint(b, m.minTime)
	return binary.AppendVarint(b, m.maxTime)
}

func decodeMark(b []byte) (mark, error) {
	d := decoder{b: b}
	if f := d.byte(); d.err == nil && f != formatV1 {
		return mark{}, fmt.Errorf("%w: time mark format %d", errCorrupt, f)
	}
	m := mark{since: d.uvarint(), events: d.uvarint(), first: d.uvarint(), minTime: d.varint(), maxTime: d.varint()}
	return m, d.done("time mark")
}

// itemMark decodes the time mark item holds.
func itemMark(item *badger.Item) (mark, error) {
	var m mark
	err := item.Value(func(v []byte) error {
		var err error
		m, err = decodeMark(v)
		return err
	})
	if err != nil {
		return mark{}, fmt.Errorf("time mark %x: %w", item.Key(), err)
	}
	return m, nil
}
