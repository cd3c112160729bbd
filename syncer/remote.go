package syncer

import (
	"context"
	"maps"
	"time"
)

// Remote is the shared store that sidecars sync through, in the sidecar's own
// terms. Backends: syncer/memremote, syncer/firestore; syncer/remotetest is
// the conformance suite they pass.
//
// Every method is safe for concurrent use by many goroutines; concurrent
// Commits that touch the same key are serialized by the remote (each one
// either sees the other's result or conflicts with it). Every method takes a
// ctx that bounds it; a cancelled or expired ctx makes a method return an
// error wrapping ErrUnavailable (and ctx.Err()) unless it already finished.
//
// Errors, for every method (errors.Is):
//   - ErrUnavailable: transient (offline, timeout, overload, contention).
//     The call may or may not have taken effect; retrying is safe because
//     Commit is idempotent.
//   - ErrPermanent: the request itself is bad (invalid name or argument,
//     denied permission, broken configuration); retrying the same call fails
//     again. ErrTooLarge errors also match ErrPermanent.
//   - ErrUndecodable: the remote's document of a key is not a record the
//     backend can read (an *Error whose cause is an *UndecodableError); it
//     also matches ErrPermanent, never ErrNotFound.
//   - ErrNotFound and ErrConflict as documented on the method.
type Remote interface {
	// Get returns the remote record of key. A deleted state is returned as its
	// tombstone (Deleted set), so its version stays known; ErrNotFound means
	// the remote has never had the state, ErrUndecodable that it holds a
	// document of the state that does not decode. The read is strongly
	// consistent: it sees every Commit that returned before it started.
	Get(ctx context.Context, key Key) (Record, error)

	// Commit applies a batch of changes inside one remote transaction and
	// returns one Result per change, in order.
	//
	// Each change is decided against the remote's current record of its key
	// (see Decide, which every backend uses): a change whose op the remote
	// record already covers is AlreadyApplied (nothing written: re-committing
	// after a lost reply or a crash is harmless); a change whose BaseVersion
	// is not the remote's version is a Conflict, with the remote record in
	// the Result; otherwise it is Applied: its record is stored (RemoteTime
	// set by the remote) and its events appended, in the same transaction.
	//
	// Without Batch.Atomic, changes succeed or conflict one by one: the
	// non-conflicting ones are written even when others conflict. With Atomic,
	// a single Conflict writes nothing: the other changes are reported
	// Skipped. A key may appear only once in a batch.
	//
	// A change with a Fence is checked against the lock the fence names,
	// read in the same transaction (see CheckFence): when the fence does not
	// pass, the change is FenceRejected (unless the remote record already
	// covers its op: AlreadyApplied) and nothing of it is written; in an
	// Atomic batch nothing at all is written and the other changes are
	// reported Skipped (or Conflict).
	//
	// The error is nil when every change is Applied or AlreadyApplied. When
	// some conflict, the results are returned with a *ConflictError
	// (errors.Is ErrConflict) that describes the first conflict; when none
	// conflicts and some are FenceRejected, with the *FenceRejectedError of
	// the first of them (errors.Is ErrFenceRejected). A batch over
	// Limits fails with ErrTooLarge before anything is written; an invalid
	// change fails with ErrPermanent; a change whose key's remote document
	// does not decode fails the batch with ErrUndecodable naming that key,
	// and nothing is written (the document is never replaced as if absent).
	// With ErrUnavailable the results are nil and the batch may or may not
	// have been applied.
	Commit(ctx context.Context, b Batch) ([]Result, error)

	// Changes returns the records of governor committed after since (the
	// zero Cursor: from the beginning), oldest commit first, at most limit of
	// them (limit <= 0: a backend default), and the Cursor to pass next time
	// (since itself when nothing is returned), and none after the record
	// that takes their RecordSize over PageBytes. Tombstones are included. A
	// record that changed several times since the cursor is returned once, at
	// its latest version. A backend may also return records committed a short,
	// documented time before since (its overlap), so callers must apply a
	// record only when it is newer than what they hold.
	//
	// A document of governor that does not decode is left out, and the
	// Cursor goes past it, so that it does not stop the stream: the call then
	// returns the records and the Cursor with a *SkippedError that lists such
	// documents (errors.Is ErrUndecodable). The caller applies the records
	// and keeps the Cursor as usual, and reports the documents. Documents
	// left out count towards limit: a page is short (the stream's end) when
	// fewer than limit records and documents left out came back and the
	// records take at most PageBytes. Any other error comes with no records
	// and since.
	Changes(ctx context.Context, governor string, since Cursor, limit int) ([]Record, Cursor, error)

	// Events returns the events of key with ToVersion > afterVersion, in
	// version order: at most limit of them (limit <= 0: a backend default),
	// and none after the one that takes their EventSize over
	// PageBytes. A page shorter than limit that takes at most
	// PageBytes ends the log. The remote's event log is the history of
	// the remote record: the events appended by Applied changes.
	Events(ctx context.Context, key Key, afterVersion uint64, limit int) ([]Event, error)

	// Limits returns the size limits of one Commit, for batching.
	Limits() Limits

	// ConflictLog is the remote's conflict ledger (ledger.go).
	ConflictLog
}

// PageBytes bounds what one Events or Changes call returns (by EventSize,
// RecordSize): with values of up to 1 MB, a page of a thousand events or
// records could otherwise take a gigabyte. A page is cut after the event
// or record that takes it over, so it takes at most PageBytes and one more.
const PageBytes = 4 << 20

// Watcher is an optional capability of a Remote (find it with a type
// assertion): a listener for remote changes that pushes instead of being
// polled.
type Watcher interface {
	// Watch calls fn with the records of governor committed after since, as
	// Changes would return them, and then with each later group of changes as
	// they are committed, until ctx is done (it returns an error wrapping
	// ctx.Err() and ErrUnavailable), fn returns an error (returned as is), or
	// the listener breaks (ErrUnavailable: watch again from the last cursor fn
	// was given). The first call may carry no records. Documents that do not
	// decode are left out of records, as Changes leaves them out, and given
	// in skipped (nil when none); next goes past them. fn is called from one
	// goroutine, one call at a time; it must not block for long.
	Watch(ctx context.Context, governor string, since Cursor, fn func(records []Record, next Cursor, skipped []*UndecodableError) error) error
}

// Key names one state: governor › state.
type Key struct {
	Governor string
	State    string
}

func (k Key) String() string { return k.Governor + "/" + k.State }

// ChangeMeta is the metadata of one change: who, why and when (Unix nanoseconds).
type ChangeMeta struct {
	Actor  string
	Reason string
	Time   int64
}

// Clock is the causal metadata of a record or event. Vector holds, per node
// id, how many changes of this state that node had made when the record was
// written: the remote uses it to recognise ops it already has.
type Clock struct {
	Lamport uint64
	HLC     uint64 // hybrid logical clock: Unix milliseconds << 16 | logical counter
	Vector  map[string]uint64
}

// Clone returns c with its own copy of Vector.
func (c Clock) Clone() Clock {
	c.Vector = maps.Clone(c.Vector)
	return c
}

// Record is a state as the remote holds it. A deleted state is a tombstone:
// Deleted set, Value nil, Version still counting.
type Record struct {
	Key
	Value     []byte // the app's msgpack document, verbatim
	Version   uint64 // 1 for the first write, +1 per change; never goes back
	Deleted   bool
	UpdatedAt int64 // Unix nanoseconds, from the node that made the change
	Change    ChangeMeta
	Origin    string // node id that made this version
	OpID      string // op id of the (last) change that made this version
	Clock     Clock
	// RemoteTime is when the remote committed this version. It is set by the
	// remote and ignored in a Change. In the Result of a change just
	// Applied, a backend that cannot learn its commit time reports when the
	// commit returned.
	RemoteTime time.Time
}

// Event actions.
const (
	ActionPut    = "put"
	ActionDelete = "delete"
)

// Event is the immutable record of one change, as appended to the remote's
// event log. OpID identifies it: appending the same event twice keeps one.
type Event struct {
	Key
	Action      string // ActionPut or ActionDelete
	FromVersion uint64
	ToVersion   uint64
	Value       []byte
	Change      ChangeMeta
	Origin      string
	OpID        string
	Clock       Clock
	// Transition is the action name of the state machine transition that
	// made a put ("" otherwise): kept with the event so that every node's
	// history names it, ignored by conflict resolution (Action is ActionPut).
	Transition string
}

// Change is one state's part of a Batch: the new record, the version it was
// made on, and the events it stands for. Several local changes of one key may
// be coalesced into one Change: Record is then the newest of them and Events
// holds one Event per local change, in order.
type Change struct {
	// Key is the state to change; Record.Key must be empty or equal to it.
	Key Key
	// BaseVersion is the remote version the change was made on (0: the state
	// must not exist remotely). It is compared with the remote's version
	// inside the transaction: a compare-and-set.
	BaseVersion uint64
	// Record is the new record (Version > BaseVersion). Record.Origin and
	// Record.OpID must be set: with Record.Clock.Vector[Record.Origin] they
	// make the change idempotent (see Covers).
	Record Record
	// Events are appended when the change is applied.
	Events []Event
	// CheckOnly asserts BaseVersion and writes nothing (Events are ignored,
	// and Record but for its OpID: when set, the remote record must also
	// have been made by that op): a version check inside an atomic batch.
	CheckOnly bool
	// Fence, when set, makes the change valid only while its lock has not
	// been granted again (see Commit and CheckFence).
	Fence Fence
	// Conflict, when set, is the ledger record of the conflict this change
	// won: a remote with a ConflictLog stores it in the same transaction
	// when the change is Applied (never twice: by its ID).
	Conflict *ConflictRecord
}

// Batch is what one Commit applies.
type Batch struct {
	Changes []Change
	// Atomic makes the batch all or nothing: one conflict and nothing is
	// written.
	Atomic bool
}

// Status is the outcome of one Change.
type Status uint8

// Statuses.
const (
	// Applied: the change was written (or, for CheckOnly, the check held).
	Applied Status = iota + 1
	// AlreadyApplied: the remote record already covers the change's op;
	// nothing was written.
	AlreadyApplied
	// Conflict: the remote version is not the change's BaseVersion.
	Conflict
	// Skipped: not written because another change of an Atomic batch
	// conflicted or was fence-rejected.
	Skipped
	// FenceRejected: not written because the change's Fence did not pass
	// (Result.Rejected says why).
	FenceRejected
)

func (s Status) String() string {
	switch s {
	case Applied:
		return "applied"
	case AlreadyApplied:
		return "already-applied"
	case Conflict:
		return "conflict"
	case Skipped:
		return "skipped"
	case FenceRejected:
		return "fence-rejected"
	}
	return "unknown"
}

// Result is the outcome of one Change of a Batch.
type Result struct {
	Key    Key
	Status Status
	// Exists says whether the remote holds a record of Key (a tombstone
	// counts); Remote is that record: the one written for Applied, the one
	// already there otherwise (for Skipped, as read before the batch).
	Exists bool
	Remote Record
	// Rejected says why a FenceRejected change's fence did not pass.
	Rejected *FenceRejectedError
}

// Cursor is an opaque position in a governor's stream of remote changes, as
// returned by Changes and Watch; the zero Cursor is the beginning. A Cursor
// is meant to be stored (for example in the local store) and is only valid
// for the backend and governor that returned it.
type Cursor string

// Limits are the size limits of one Commit.
type Limits struct {
	// MaxWrites is the most documents one Commit may write: one per Change
	// that is not CheckOnly, plus one per Event.
	MaxWrites int
	// MaxRecordBytes is the largest record or event (value and metadata) as
	// the remote stores it; see RecordSize.
	MaxRecordBytes int
	// MaxBatchBytes is the most bytes one Commit may carry; see BatchSize.
	MaxBatchBytes int
}

// Clone returns r with its own copies of Value and Clock.Vector.
func (r Record) Clone() Record {
	if r.Value != nil {
		r.Value = append([]byte(nil), r.Value...)
	}
	r.Clock = r.Clock.Clone()
	return r
}

// Clone returns e with its own copies of Value and Clock.Vector.
func (e Event) Clone() Event {
	if e.Value != nil {
		e.Value = append([]byte(nil), e.Value...)
	}
	e.Clock = e.Clock.Clone()
	return e
}
