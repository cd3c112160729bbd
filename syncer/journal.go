package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Journal is the local outbox that the push loop drains: the changes made on
// this node, in the order they were made, until the remote has them. The
// local store (localcache) implements it; MemJournal is an in-memory one for
// tests.
//
// Methods are called by one Syncer at a time, but a Journal must be safe for
// concurrent use with the local writes that append to it. Errors are local
// failures (the pass stops and is retried with backoff); a cancelled ctx
// returns an error wrapping ctx.Err().
type Journal interface {
	// Pending returns up to limit entries with Seq > afterSeq that are
	// neither acked nor parked, in journal (Seq) order. The entries of one
	// atomic local batch share a BatchID and have consecutive Seqs.
	Pending(ctx context.Context, afterSeq uint64, limit int) ([]Entry, error)

	// Ack marks entries as pushed, in one local transaction: it removes
	// them from the outbox and, for each key, records what the remote now
	// holds. Acks are applied in order; for each key concerned, once its
	// acked entries are removed:
	//   - if no entry of the key is left in the outbox, the local record of
	//     the key becomes Ack.Remote (of the key's last Ack in the call): the
	//     remote record is adopted (value, version, tombstone, clocks,
	//     metadata) and the state is no longer pending;
	//     A Remote with Version 0 means the remote has no record (a change
	//     that created the state lost): the local state is removed;
	//   - otherwise the local record is kept (a later local write is still to
	//     be pushed) and only the remote version is recorded.
	// A local store that is also the puller's Applier adopts, instead of
	// Ack.Remote, the remote record ApplyRemote kept aside for the key while
	// it was pending, when that one is newer (DecideApply says ApplyNewer):
	// a pull may deliver a remote change between a push's commit and its ack.
	// Acking an entry that is no longer pending is not an error.
	Ack(ctx context.Context, acks []Ack) error

	// Park moves entries out of the outbox into the failed list, with the
	// reason the remote rejected them for good. The local record keeps its
	// value; later entries of the same key stay pending. But when an entry
	// carries Parked.Remote (the remote certainly did not apply it: a fence
	// rejection) and no entry of its key is left pending, the local record
	// becomes that remote record, as on an Ack.
	Park(ctx context.Context, parked []Parked) error

	// Notify returns a channel that receives a value (without blocking the
	// writer: buffered, one pending signal at most) after new entries are
	// appended. It has one receiver, the Syncer's Run loop.
	Notify() <-chan struct{}
}

// JournalDepth is an optional capability of a Journal (found by type
// assertion): the number of pending entries, for stats. Without it the
// Syncer reports the depth it last saw, capped by its page size.
type JournalDepth interface {
	Depth() int64
}

// Entry is one local change waiting in the journal.
type Entry struct {
	// Seq orders the journal (strictly increasing, never reused).
	Seq uint64
	// BatchID is shared by the entries of one atomic local batch (they are
	// pushed all or nothing); a single write has its own.
	BatchID string
	// BaseVersion is the version the change was made on (0: the state did
	// not exist).
	BaseVersion uint64
	// Record is the record the change produced: Key, Version (BaseVersion+1),
	// Value or Deleted, UpdatedAt, Change, Origin (this node), OpID, Clock
	// (with this node's vector entry counting the change).
	Record Record
	// Event is the change's event (same op id, key, clocks).
	Event Event
	// Time is when the change was journaled (Unix nanoseconds).
	Time int64
	// Strict marks a compare-and-set made against the remote (a strong
	// write): on a true conflict it loses whatever the clocks say, so it
	// never overwrites a change it has not seen. Strict entries are not
	// coalesced with others.
	Strict bool
	// Fence, when set, is the lock grant the change was made under: the
	// remote rejects the change if the lock was granted again since (see
	// Change.Fence). Fenced entries are never coalesced with others.
	Fence Fence
	// Checks, on the first entry of a transaction, are the versions of the
	// states it checked without writing them: they are re-checked in the
	// remote transaction that applies the batch (see txncheck.go).
	Checks []Check
}

// Key returns the entry's key.
func (e Entry) Key() Key { return e.Record.Key }

// OpID returns the entry's op id.
func (e Entry) OpID() string { return e.Record.OpID }

// Outcome says how an acked entry reached the remote.
type Outcome uint8

// Outcomes.
const (
	// OutcomePushed: the remote applied the change now (possibly on top of a remote
	// version other than the entry's base, after a conflict it won).
	OutcomePushed Outcome = iota + 1
	// OutcomeAlreadyApplied: the remote had it already (a retry after a lost reply
	// or a crash before the ack); nothing was applied twice.
	OutcomeAlreadyApplied
	// OutcomeSuperseded: the change lost a conflict (or gave way with its
	// atomic batch); the remote record stays, and the local side adopts it.
	// A local store that keeps an event log drops the change's events: the
	// remote's history of those versions is another change's (see
	// HistoryRefiller).
	OutcomeSuperseded
)

func (o Outcome) String() string {
	switch o {
	case OutcomePushed:
		return "pushed"
	case OutcomeAlreadyApplied:
		return "already-applied"
	case OutcomeSuperseded:
		return "superseded"
	}
	return "unknown"
}

// Ack acknowledges journal entries of one key.
type Ack struct {
	Key     Key
	Seqs    []uint64 // the entries acked, in journal order
	Outcome Outcome
	// Remote is the remote record of Key after the push (RemoteTime set):
	// the local side adopts it when no later entry of Key is pending.
	Remote Record
	// Conflict, when set, is the ledger record of the true conflict these
	// entries met: the local side stores it in the same transaction as the
	// ack (once per ID).
	Conflict *ConflictRecord
	// Renumbered says that the remote holds these entries' changes under
	// other versions than the ones they made locally, though no conflict
	// was decided over them in this push: an earlier attempt committed them
	// rebased onto the remote's record, and its reply was lost (an
	// AlreadyApplied ack). Their events then leave the local history as a
	// renumbered change's do.
	Renumbered bool
}

// Parked is an entry the remote rejected for good.
type Parked struct {
	Seq    uint64
	Key    Key
	OpID   string
	Reason string
	Time   time.Time // when it was parked
	// FenceRejected, when set, says the entry was parked because its fence
	// did not pass (Reason is its message).
	FenceRejected *FenceRejectedError
	// Remote, when set, is the remote record of Key as the rejecting commit
	// read it (Version 0: the remote has none): the change was certainly
	// not applied, and the local side adopts it (see Journal.Park).
	Remote *Record
}

// MemWrite is one write appended to a MemJournal.
type MemWrite struct {
	Key    Key
	Value  []byte
	Delete bool
	Actor  string
	Reason string
	Strict bool  // see Entry.Strict
	Fence  Fence // see Entry.Fence
}

// ErrMemJournal is returned by a MemJournal whose Ack or Park was made to
// fail (FailAcks).
var ErrMemJournal = errors.New("memjournal: injected failure")

// MemJournal is an in-memory Journal that also plays the local store: it
// keeps a record per key and makes entries the way localcache does (version
// +1, op id node-seq, vector clock ticked for the node, Lamport and hybrid
// logical clock). It is for tests; all methods are safe for concurrent use.
type MemJournal struct {
	mu       sync.Mutex
	node     string
	now      func() time.Time
	seq      uint64
	lamport  uint64
	hlc      uint64
	records  map[Key]Record
	synced   map[Key]uint64 // remote version last acked
	pending  []Entry        // in Seq order
	parked   []Parked
	failAcks int
	acks     int
	ledger   []ConflictRecord // Ack.Conflict records, once per ID
	notify   chan struct{}
	// pull side (pull.go)
	cursors     map[string]Cursor // per governor
	aside       map[Key]Record    // remote records seen while a local write was pending
	failApplies int
	undecodable map[Key]UndecodableError // kept (UndecodableKeeper)
	// undecodableDropped is the count kept of the documents dropped.
	undecodableDropped uint64
}

// NewMemJournal returns an empty journal for node.
func NewMemJournal(node string) *MemJournal {
	return &MemJournal{node: node, now: time.Now, records: make(map[Key]Record),
		synced: make(map[Key]uint64), notify: make(chan struct{}, 1)}
}

// SetClock replaces the wall clock used for new entries' HLC and times.
func (j *MemJournal) SetClock(now func() time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.now = now
}

// FailAcks makes the next n calls of Ack or Park fail with ErrMemJournal
// without changing anything, as a crash after the remote commit would.
func (j *MemJournal) FailAcks(n int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failAcks = n
}

// Append journals writes as one atomic local batch (one write: a single
// change) and returns their entries. A delete of a missing or deleted state
// is an error.
func (j *MemJournal) Append(ws ...MemWrite) ([]Entry, error) {
	if len(ws) == 0 {
		return nil, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now()
	out := make([]Entry, 0, len(ws))
	staged := make(map[Key]Record)
	for _, w := range ws {
		if err := ValidateKey(w.Key); err != nil {
			return nil, err
		}
		cur, ok := staged[w.Key]
		if !ok {
			cur, ok = j.records[w.Key]
		}
		if w.Delete && (!ok || cur.Deleted) {
			return nil, fmt.Errorf("memjournal: delete %s: %w", w.Key, ErrNotFound)
		}
		j.seq++
		j.lamport = max(j.lamport, cur.Clock.Lamport) + 1
		j.hlc = nextHLC(j.hlc, now)
		op := j.node + "-" + strconv.FormatUint(j.seq, 10)
		vec := cur.Clock.Clone().Vector
		if vec == nil {
			vec = make(map[string]uint64)
		}
		vec[j.node]++
		clock := Clock{Lamport: j.lamport, HLC: j.hlc, Vector: vec}
		meta := ChangeMeta{Actor: w.Actor, Reason: w.Reason, Time: now.UnixNano()}
		rec := Record{Key: w.Key, Value: slices.Clone(w.Value), Version: cur.Version + 1, Deleted: w.Delete,
			UpdatedAt: now.UnixNano(), Change: meta, Origin: j.node, OpID: op, Clock: clock}
		action := ActionPut
		if w.Delete {
			action = ActionDelete
			rec.Value = nil
		}
		ev := Event{Key: w.Key, Action: action, FromVersion: cur.Version, ToVersion: rec.Version,
			Value: rec.Value, Change: meta, Origin: j.node, OpID: op, Clock: clock.Clone()}
		e := Entry{Seq: j.seq, BaseVersion: cur.Version, Record: rec, Event: ev, Time: now.UnixNano(), Strict: w.Strict,
			Fence: w.Fence}
		if len(out) > 0 {
			e.BatchID = out[0].BatchID
		} else {
			e.BatchID = op
		}
		staged[w.Key] = rec
		out = append(out, e)
	}
	for k, r := range staged {
		j.records[k] = r
	}
	for _, e := range out {
		j.pending = append(j.pending, cloneEntry(e))
	}
	select {
	case j.notify <- struct{}{}:
	default:
	}
	for i := range out {
		out[i] = cloneEntry(out[i])
	}
	return out, nil
}

// nextHLC is the hybrid logical clock value after last at wall time now.
func nextHLC(last uint64, now time.Time) uint64 {
	pt := uint64(max(now.UnixMilli(), 0)) << 16
	if pt > last {
		return pt
	}
	return last + 1
}

func cloneEntry(e Entry) Entry {
	e.Record = e.Record.Clone()
	e.Event = e.Event.Clone()
	return e
}

// Pending implements Journal.
func (j *MemJournal) Pending(ctx context.Context, afterSeq uint64, limit int) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	i, _ := slices.BinarySearchFunc(j.pending, afterSeq+1, func(e Entry, s uint64) int { return cmpUint(e.Seq, s) })
	var out []Entry
	for ; i < len(j.pending) && (limit <= 0 || len(out) < limit); i++ {
		out = append(out, cloneEntry(j.pending[i]))
	}
	return out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Ack implements Journal.
func (j *MemJournal) Ack(ctx context.Context, acks []Ack) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failAcks > 0 {
		j.failAcks--
		return ErrMemJournal
	}
	j.acks++
	done := make(map[uint64]bool)
	last := make(map[Key]Record)
	for _, a := range acks {
		for _, s := range a.Seqs {
			done[s] = true
		}
		last[a.Key] = a.Remote
		j.record(a.Conflict)
	}
	j.remove(done)
	for k, remote := range last {
		j.synced[k] = remote.Version
		if !j.hasPending(k) {
			if seen, ok := j.aside[k]; ok {
				// A remote record pulled while the key was pending: adopt it
				// if it is newer than the one the push saw.
				delete(j.aside, k)
				if DecideApply(remote, remote.Version != 0, false, seen) == ApplyNewer {
					remote = seen
				}
			}
			if remote.Version == 0 { // the remote never had it: the local write is undone
				delete(j.records, k)
				continue
			}
			r := remote.Clone()
			r.Key = k
			j.records[k] = r
			j.synced[k] = r.Version
			j.lamport = max(j.lamport, r.Clock.Lamport)
			j.hlc = max(j.hlc, r.Clock.HLC)
		}
	}
	return nil
}

func (j *MemJournal) remove(done map[uint64]bool) {
	j.pending = slices.DeleteFunc(j.pending, func(e Entry) bool { return done[e.Seq] })
}

func (j *MemJournal) hasPending(k Key) bool {
	for _, e := range j.pending {
		if e.Record.Key == k {
			return true
		}
	}
	return false
}

// Park implements Journal.
func (j *MemJournal) Park(ctx context.Context, parked []Parked) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failAcks > 0 {
		j.failAcks--
		return ErrMemJournal
	}
	done := make(map[uint64]bool)
	for _, p := range parked {
		done[p.Seq] = true
		j.parked = append(j.parked, p)
	}
	j.remove(done)
	j.adoptParkedLocked(parked) // fence.go
	return nil
}

// Notify implements Journal.
func (j *MemJournal) Notify() <-chan struct{} { return j.notify }

// Depth implements JournalDepth.
func (j *MemJournal) Depth() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return int64(len(j.pending))
}

// Record returns the local record of key.
func (j *MemJournal) Record(key Key) (Record, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.records[key]
	return r.Clone(), ok
}

// Synced returns the remote version last acked for key.
func (j *MemJournal) Synced(key Key) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.synced[key]
}

// ParkedEntries returns the failed list.
func (j *MemJournal) ParkedEntries() []Parked {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.parked)
}

// AckCalls returns how many Ack calls succeeded.
func (j *MemJournal) AckCalls() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.acks
}

var (
	_ Journal      = (*MemJournal)(nil)
	_ JournalDepth = (*MemJournal)(nil)
)
