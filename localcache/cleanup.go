package localcache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Cleanup: retention of the local event log (docs/decisions/0015).
//
// A state's history can only be cut at one of its snapshots: the cut is a
// snapshot S, and cleanup removes the events of versions up to S (S's
// own event too: the snapshot holds the same record), the time marks up to
// S, and the snapshots older than S. What remains is complete from S on: S
// and every event after it, so replaying S and the later events gives the
// current record, StateAtVersion answers every version from S on that
// the log held, and StateAt answers every time from S's change time on
// as before; a time before it is a *HistoryGapError. S then stays as the
// base of the retained history (snapshot retention keeps it).
//
// Per state, the cut is the newest snapshot S such that every event up to S
// may go under the policy (older than MaxAge, and not among the newest
// KeepEvents), and none of them is still waiting in the journal (the push
// loop reads a change's event). A state without such a snapshot keeps all
// its events: take a snapshot first (Snapshot) when a state has none.
//
// On a local-only store (Options.LocalOnly) every change waits in the
// journal, so that rule alone would keep every event for good. There the
// journal entries of a state up to S are merged instead: the entry of the
// change that made S takes the base version of the first of them, and the
// others leave the journal (mergeJournal). What a shared store configured
// later receives is then one change from that base to S, with S's event,
// then the later changes as they were made. S's event stays while its
// change is in the journal (the cut removes the events below it); a later
// cut removes it.
//
// A merged change that was one of an atomic batch or transaction leaves it:
// the rest of the batch reaches the shared store as a batch, without it
// (its effect arrives with the state's later change), and a transaction
// whose change leaves has its log entry settled as committed, as a push
// would. A merged change's fence, strictness and checks go with it; the
// entry it merges into keeps its own. Entries that hold the cut back as
// before: a change whose writer waits for the shared store's outcome, and
// a run that is not each change made on the one before.

// CleanupPolicy says what Cleanup may remove.
type CleanupPolicy struct {
	Governor string
	// State, when set, limits the cleanup to that state.
	State string
	// MaxAge, when > 0: only events whose change time is more than MaxAge
	// before now may go.
	MaxAge time.Duration
	// KeepEvents, when > 0: the newest KeepEvents events of each state
	// stay. At least one of MaxAge and KeepEvents must be set; with both,
	// an event goes only if both allow it.
	KeepEvents int
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
}

// CleanupReport is what Cleanup removed (or, in a dry run, would remove).
type CleanupReport struct {
	States    int // states with snapshots examined
	Cleaned   int // states whose history was cut
	Events    int // events removed
	Snapshots int // snapshots removed (older than the cuts)
	// Held counts the states whose cut stopped short of a snapshot the
	// policy allows, because a change at or before it is still in the
	// journal (not yet in the shared store) and could not be merged.
	Held int
	// Merged counts the journal entries merged into later ones of their
	// state (local-only stores: see the comment above).
	Merged int
	// Cuts lists the first MaxReportedProblems states cut.
	Cuts []CleanupCut
}

// CleanupCut is the cut of one state.
type CleanupCut struct {
	Key Key
	// Base is the snapshot the state's retained history now starts from.
	Base      uint64
	Events    int
	Snapshots int
}

// cleanupPage is how many states one read of the snapshot keys lists, and
// cleanupChunk how many keys one mutation deletes.
const (
	cleanupPage  = 256
	cleanupChunk = 1000
)

// Cleanup removes old history of one state or every state of a governor
// under p (see the comment above). States are cut one at a time, each cut
// in order from the oldest keys up (a crash in between leaves a history
// that starts later, never a hole). Cleanups run one at a time.
//
// Errors: an invalid governor or policy is a *FieldError wrapping
// ErrInvalid (an invalid state: a *KeyError holding one); ErrClosed; ctx's
// error (the report then says what was removed so far).
func (s *Store) Cleanup(ctx context.Context, p CleanupPolicy) (CleanupReport, error) {
	if err := checkCleanup(p); err != nil {
		return CleanupReport{}, err
	}
	s.cleanupMu.Lock()
	defer s.cleanupMu.Unlock()
	var rep CleanupReport
	pending := &pendingVersions{p: p, low: make(map[Key]uint64)}
	if s.opts.LocalOnly {
		pending.runs = make(map[Key]*journalRun)
	}
	cutoff := int64(0)
	if p.MaxAge > 0 {
		cutoff = s.opts.Now().Add(-p.MaxAge).UnixNano()
	}
	var after []byte // the last snapshot key of the previous page
	for {
		keys, err := s.snapshotStates(ctx, p, after)
		if err != nil {
			return rep, fmt.Errorf("localcache: cleanup %s: %w", p.scope(), err)
		}
		for _, k := range keys {
			rep.States++
			if err := s.cleanState(ctx, k, p, cutoff, pending, &rep); err != nil {
				return rep, fmt.Errorf("localcache: cleanup %s: %w", k, err)
			}
		}
		if len(keys) < cleanupPage {
			return rep, nil
		}
		after = append(versionedKey(kindSnap, keys[len(keys)-1], 1<<64-1), 0)
	}
}

func (p CleanupPolicy) scope() string {
	return EventQuery{Governor: p.Governor, State: p.State}.scope()
}

func checkCleanup(p CleanupPolicy) error {
	if err := wire.ValidateName("governor", p.Governor); err != nil {
		return &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	if p.State != "" {
		if err := validateKey("cleanup", Key{Governor: p.Governor, State: p.State}); err != nil {
			return err
		}
	}
	fail := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)}
	}
	switch {
	case p.MaxAge < 0:
		return fail("max_age", "max age %v is negative", p.MaxAge)
	case p.KeepEvents < 0:
		return fail("keep_events", "keep %d events is negative", p.KeepEvents)
	case p.MaxAge == 0 && p.KeepEvents == 0:
		return fail("max_age", "a cleanup needs a max age, a number of events to keep, or both")
	}
	return nil
}

// pendingVersions tracks, per state in a cleanup's scope, the lowest
// version of a change still in the journal (its event must stay) and, on a
// local-only store, the run of its entries that may be merged.
type pendingVersions struct {
	p     CleanupPolicy
	low   map[Key]uint64
	after uint64 // the last journal seq read
	// runs is nil when entries are never merged (a shared store's push
	// loop reads the journal).
	runs map[Key]*journalRun
	// seqs counts the entries held in runs: at most maxRunSeqs.
	seqs int
}

// journalRun is a state's journal entries from its first one, each made on
// the one before, all of them mergeable: entry i made version first+i.
type journalRun struct {
	first uint64
	seqs  []uint64
	// closed: an entry of the state that cannot join the run came after
	// it (or the run reached maxRunSeqs).
	closed bool
}

// top is the version the run's last entry made.
func (r *journalRun) top() uint64 { return r.first + uint64(len(r.seqs)) - 1 }

// maxRunSeqs bounds the journal entries one cleanup tracks for merging
// (8 bytes each): a journal longer than that is merged over several. A
// variable for tests.
var maxRunSeqs = 1 << 20

// mergeable reports whether j may be merged with the entries of its state
// around it: its writer does not wait for the shared store's outcome.
func mergeable(j *JournalEntry) bool { return !j.Confirm }

// catchUp reads the journal entries added since its last call, in txn.
// Each cut is planned in the transaction that caught up: a change written
// after the journal was read, and a snapshot of it taken since, would
// otherwise let the cut remove an event the push still needs. Entries
// pushed since an earlier call may stay in low: the cut is only more
// careful.
func (pv *pendingVersions) catchUp(txn *badger.Txn) error {
	return seqsIn(txn, kindJournal, pv.after, math.MaxInt, func(_ *badger.Txn, seq uint64, v []byte) error {
		j, err := decodeJournal(seq, v) // v is a copy: j's strings, which alias it, may become keys of low
		if err != nil {
			return fmt.Errorf("journal %d: %w", seq, err)
		}
		pv.note(&j)
		pv.after = seq
		return nil
	})
}

// note records journal entry j.
func (pv *pendingVersions) note(j *JournalEntry) {
	if j.Key.Governor != pv.p.Governor || pv.p.State != "" && j.Key.State != pv.p.State {
		return
	}
	if low, ok := pv.low[j.Key]; !ok || j.Version < low {
		pv.low[j.Key] = j.Version
	}
	if pv.runs == nil {
		return
	}
	merge := mergeable(j)
	r := pv.runs[j.Key]
	switch {
	case r == nil:
		r = &journalRun{first: j.Version, closed: !merge}
		pv.runs[j.Key] = r
		if r.closed {
			return
		}
	case r.closed:
		return
	case !merge || j.BaseVersion != r.top():
		r.closed = true
		return
	}
	if pv.seqs >= maxRunSeqs {
		r.closed = true
		return
	}
	r.seqs = append(r.seqs, j.Seq)
	pv.seqs++
}

// mergeTop is the highest version k's journal entries may be merged up to
// (0: none): the top of its run, which starts at its oldest change in the
// journal.
func (pv *pendingVersions) mergeTop(k Key) uint64 {
	if r := pv.runs[k]; r != nil && len(r.seqs) > 0 && r.first == pv.low[k] {
		return r.top()
	}
	return 0
}

// snapshotStates lists up to cleanupPage states of p's scope that have
// snapshots, from the first snapshot key after after (nil: the start).
func (s *Store) snapshotStates(ctx context.Context, p CleanupPolicy, after []byte) ([]Key, error) {
	prefix := governorPrefix(kindSnap, p.Governor)
	if p.State != "" {
		prefix = versionedPrefix(kindSnap, Key{Governor: p.Governor, State: p.State})
	}
	var keys []Key
	err := s.scan(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		seek := prefix
		if after != nil {
			seek = after
		}
		for it.Seek(seek); it.Valid() && len(keys) < cleanupPage; {
			gov, state, _, err := parseVersionedKey(kindSnap, it.Item().Key())
			if err != nil {
				return fmt.Errorf("snapshot key %x: %w", it.Item().Key(), err)
			}
			k := Key{Governor: string(gov), State: string(state)}
			keys = append(keys, k)
			it.Seek(append(versionedKey(kindSnap, k, 1<<64-1), 0))
		}
		return nil
	})
	return keys, err
}

// cleanState cuts the history of k (see the comment at the top), keeping
// the events of the changes in the journal.
func (s *Store) cleanState(ctx context.Context, k Key, p CleanupPolicy, cutoff int64, pending *pendingVersions, rep *CleanupReport) error {
	s.snaps.work.Lock()
	defer s.snaps.work.Unlock()
	var pl cutPlan
	err := s.scan(ctx, func(txn *badger.Txn) error {
		if err := pending.catchUp(txn); err != nil {
			return err
		}
		var err error
		pl, err = planCut(ctx, txn, k, p, cutoff, pending.low[k], pending.mergeTop(k))
		return err
	})
	if err != nil {
		return err
	}
	if pl.held {
		rep.Held++
	}
	if pl.empty() {
		return nil
	}
	cut := pl.cut
	var merge []uint64 // the journal entries merged into the base's
	if pl.keepBase {
		r := pending.runs[k]
		merge = r.seqs[:cut.Base-r.first+1]
	}
	if !p.DryRun {
		// The entries are merged first: an event goes only once no
		// journal entry names it.
		n, err := s.mergeJournal(ctx, k, merge)
		rep.Merged += n
		if err != nil {
			return err
		}
		// The keys go a chunk at a time, each read just before its
		// mutation: a state with millions of events is never listed
		// whole.
		for _, kind := range []byte{kindEvent, kindMark} {
			upTo := cut.Base
			if kind == kindEvent && pl.keepBase {
				upTo--
			}
			for from := uint64(0); ; {
				keys, next, err := s.keysUpTo(ctx, kind, k, from, upTo, cleanupChunk)
				if err != nil || len(keys) == 0 {
					if err != nil {
						return err
					}
					break
				}
				if err := s.deleteKeys(ctx, keys); err != nil {
					return err
				}
				if kind == kindEvent {
					rep.Events += len(keys)
				}
				from = next
			}
		}
		for lo := 0; lo < len(pl.snaps); lo += cleanupChunk {
			chunk := pl.snaps[lo:min(lo+cleanupChunk, len(pl.snaps))]
			keys := make([][]byte, 0, 2*len(chunk))
			for _, v := range chunk {
				// With its entry in the outbox for the shared store, if
				// it is still there (bootstrap.go).
				keys = append(keys, snapKey(k, v), snapOutKey(k, v))
			}
			if err := s.deleteKeys(ctx, keys); err != nil {
				return err
			}
			rep.Snapshots += len(chunk)
		}
	} else {
		rep.Events += cut.Events
		rep.Snapshots += cut.Snapshots
		rep.Merged += max(len(merge)-1, 0)
	}
	rep.Cleaned++
	if len(rep.Cuts) < MaxReportedProblems {
		rep.Cuts = append(rep.Cuts, cut)
	}
	return nil
}

// mergeJournal merges k's journal entries seqs (a run: see journalRun)
// into the last one, which takes the first one's base version, and reports
// how many left the journal. It goes a chunk at a time, each in one
// mutation that merges the chunk's entries into the entry after them: the
// journal in between is the same change history, merged less far. An entry
// found changed since it was read (none is, on a local-only store) stops
// the merge with an error, before its chunk.
func (s *Store) mergeJournal(ctx context.Context, k Key, seqs []uint64) (int, error) {
	merged := 0
	for len(seqs) > 1 {
		n := min(len(seqs)-1, cleanupChunk)
		drop, keep := seqs[:n], seqs[n]
		_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
			var base, top uint64 // the first entry's base, the version the last one made
			for i, seq := range append(drop[:n:n], keep) {
				j, err := tx.journalEntry(seq)
				if err != nil {
					return nil, err
				}
				switch {
				case j.Key != k || i > 0 && j.BaseVersion != top || !mergeable(&j):
					return nil, fmt.Errorf("journal entry %d changed while it was merged", seq)
				case i == 0:
					base = j.BaseVersion
				case seq == keep:
					j.BaseVersion = base
					tx.set(journalKey(seq), encodeJournal(&j))
					continue
				}
				top = j.Version
				tx.del(journalKey(seq))
				if j.Strict { // a transaction's: settled as a push that applied it would
					if err := tx.txSettle(j.BatchID, "", "", ""); err != nil {
						return nil, err
					}
				}
			}
			cur, err := tx.record(k)
			if err != nil {
				return nil, err
			}
			if cur == nil || cur.journaled <= uint32(n) {
				return nil, fmt.Errorf("%w: %s counts fewer journal entries than it has", errCorrupt, k)
			}
			rec := *cur
			rec.journaled -= uint32(n)
			tx.putRecord(cur, &rec)
			tx.m.journal -= int64(n)
			return nil, nil
		})
		if err != nil {
			return merged, fmt.Errorf("merge journal entries: %w", err)
		}
		merged += n
		seqs = seqs[n:]
	}
	return merged, nil
}

// journalEntry returns the journal entry seq (an error when there is none).
func (tx *mutTx) journalEntry(seq uint64) (JournalEntry, error) {
	v, err := tx.get(journalKey(seq))
	if err != nil {
		return JournalEntry{}, err
	}
	if v == nil {
		return JournalEntry{}, fmt.Errorf("journal entry %d is gone", seq)
	}
	j, err := decodeJournal(seq, v)
	if err != nil {
		return JournalEntry{}, fmt.Errorf("journal %d: %w", seq, err)
	}
	return j, nil
}

// cutBaseSound reports whether k's snapshot at version is of the state's
// history, so that the events up to it may go: not above the record's
// version, and of the same change as the event at its version, if any. A
// snapshot of a local change that gave way is neither.
func cutBaseSound(txn *badger.Txn, k Key, version uint64) (bool, error) {
	rec, err := readRecord(txn, k)
	if err != nil || rec == nil || version > rec.Version {
		return false, err
	}
	item, err := txn.Get(snapKey(k, version))
	if err != nil {
		return false, err
	}
	snap, err := readSnapshot(item, k)
	if err != nil {
		return false, err
	}
	item, err = txn.Get(eventKey(k, version))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	e, err := readEvent(item, k)
	if err != nil {
		return false, err
	}
	return e.OpID == snap.OpID, nil
}

// cutPlan is a state's cut: the events and time marks up to cut.Base go,
// and the snapshots snaps (those below the base).
type cutPlan struct {
	cut   CleanupCut
	snaps []uint64
	marks bool // there are time marks to delete
	// keepBase: the change that made the base is in the journal, where the
	// entries of the state from the oldest one up to it are merged into its
	// own (local-only stores); its event stays.
	keepBase bool
	// held: a newer snapshot than the cut's was allowed by the policy but
	// not by a change still in the journal.
	held bool
}

// empty reports whether the plan deletes nothing.
func (pl cutPlan) empty() bool { return pl.cut.Events == 0 && len(pl.snaps) == 0 && !pl.marks }

// planCut finds k's cut (an empty plan: nothing to cut). pending is the
// lowest version of k's changes in the journal (0: none), mergeTop the
// highest one they may be merged up to (0: none).
func planCut(ctx context.Context, txn *badger.Txn, k Key, p CleanupPolicy, cutoff int64, pending, mergeTop uint64) (cutPlan, error) {
	snaps, err := snapshotVersions(txn, k)
	if err != nil || len(snaps) == 0 {
		return cutPlan{}, err
	}
	// Per snapshot i: how many events are at or below it, and the newest
	// change time among them.
	count := make([]int, len(snaps))
	newest := make([]int64, len(snaps))
	total, i, maxTime := 0, 0, int64(-1<<63)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix(k)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return cutPlan{}, err
		}
		_, _, v, err := parseEventKey(it.Item().Key())
		if err != nil {
			return cutPlan{}, err
		}
		for ; i < len(snaps) && snaps[i] < v; i++ {
			count[i], newest[i] = total, maxTime
		}
		h, err := itemEventHead(it.Item())
		if err != nil {
			return cutPlan{}, err
		}
		total++
		maxTime = max(maxTime, h.time)
	}
	for ; i < len(snaps); i++ {
		count[i], newest[i] = total, maxTime
	}
	c, held := -1, false
	for j := len(snaps) - 1; j >= 0 && c < 0; j-- {
		switch {
		case p.MaxAge > 0 && count[j] > 0 && newest[j] >= cutoff:
		case p.KeepEvents > 0 && count[j] > total-p.KeepEvents:
		case pending > 0 && snaps[j] >= pending && snaps[j] > mergeTop:
			held = true
		default:
			ok, err := cutBaseSound(txn, k, snaps[j])
			if err != nil {
				return cutPlan{}, err
			}
			if ok {
				c = j
			}
		}
	}
	if c < 0 {
		return cutPlan{held: held}, nil
	}
	base := snaps[c]
	marks, _, err := keysUpTo(txn, kindMark, k, 0, base, 1)
	if err != nil {
		return cutPlan{}, err
	}
	keepBase := pending > 0 && base >= pending
	events := count[c]
	if keepBase {
		events-- // the base's own, which a journal entry names
	}
	return cutPlan{cut: CleanupCut{Key: k, Base: base, Events: events, Snapshots: c}, snaps: snaps[:c], marks: len(marks) > 0,
		keepBase: keepBase, held: held}, nil
}

// keysUpTo returns at most limit keys of kind of k with versions from from
// to upTo, and the version after the last one.
func keysUpTo(txn *badger.Txn, kind byte, k Key, from, upTo uint64, limit int) ([][]byte, uint64, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: versionedPrefix(kind, k)})
	defer it.Close()
	var keys [][]byte
	next := from
	for it.Seek(versionedKey(kind, k, from)); it.Valid() && len(keys) < limit; it.Next() {
		_, _, v, err := parseVersionedKey(kind, it.Item().Key())
		if err != nil {
			return nil, 0, err
		}
		if v > upTo {
			break
		}
		keys = append(keys, it.Item().KeyCopy(nil))
		next = v + 1
	}
	return keys, next, nil
}

// keysUpTo is keysUpTo in a read transaction of its own.
func (s *Store) keysUpTo(ctx context.Context, kind byte, k Key, from, upTo uint64, limit int) (keys [][]byte, next uint64, err error) {
	err = s.scan(ctx, func(txn *badger.Txn) error {
		keys, next, err = keysUpTo(txn, kind, k, from, upTo, limit)
		return err
	})
	return keys, next, err
}

// deleteKeys deletes keys in one mutation.
func (s *Store) deleteKeys(ctx context.Context, keys [][]byte) error {
	ops := make([]kv, len(keys))
	for i, key := range keys {
		ops[i] = kv{key: key, del: true}
	}
	return s.commitOps(ctx, ops)
}
