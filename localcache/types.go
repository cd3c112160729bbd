package localcache

import (
	"errors"
	"fmt"
	"maps"
	"time"
)

// Key names one state: governor › state.
type Key struct {
	Governor string
	State    string
}

func (k Key) String() string { return k.Governor + "/" + k.State }

// Change is the metadata of one change: who, why and when (Unix nanoseconds).
type Change struct {
	Actor  string
	Reason string
	Time   int64
}

// Clock is the causal metadata of a change. Lamport and HLC order events;
// Vector records, per node id, how many changes of that node a state has seen.
type Clock struct {
	Lamport uint64
	// HLC is a hybrid logical clock: Unix milliseconds << 16 | logical counter.
	HLC    uint64
	Vector map[string]uint64
}

// Clone returns c with its own copy of Vector.
func (c Clock) Clone() Clock {
	c.Vector = maps.Clone(c.Vector)
	return c
}

// Record is a state as stored. A deleted state is kept as a tombstone
// (Deleted set, Value nil) so versions keep growing across delete and re-create.
//
// Records returned by a Store share Value and Clock.Vector with the store's
// read cache: treat them as read-only (the store itself never modifies them).
// Use Clock.Clone before changing a vector.
type Record struct {
	Key
	Value     []byte // the app's msgpack document, verbatim
	Version   uint64 // 1 for the first write, +1 for each change
	Deleted   bool
	UpdatedAt int64 // Unix nanoseconds
	Change    Change
	Origin    string // node id that made this version
	OpID      string // op id of the change that made this version
	Clock     Clock
	// SyncedVersion is the version of this state the shared store held when
	// this node last heard from it (0: never), and SyncedAt when the shared
	// store committed that version (Unix nanoseconds, 0: unknown). Both are
	// stored with the record.
	SyncedVersion uint64
	SyncedAt      int64
	// Pending is true while a local change of this state waits in the
	// journal (not yet acked by the syncer, nor parked).
	Pending bool
	// Seq is the journal sequence number of the change, in the record a
	// Write returns (0 elsewhere): pass it to WaitSynced.
	Seq uint64

	// journaled counts the journal entries of this state still pending; it
	// is stored with the record and Pending is derived from it.
	journaled uint32
}

// Write is one put or delete. IfVersion, when set, requires the current
// version to equal it (0 means "must not exist"); IfAbsent requires that the
// state does not exist (a tombstone counts as absent).
type Write struct {
	Key
	Delete    bool
	Value     []byte
	IfVersion *uint64
	IfAbsent  bool
	Actor     string
	Reason    string
	// Strict marks a write whose precondition was checked against the
	// shared store's record (a strong write): its push loses any conflict
	// instead of overwriting a change it has not seen. It is refused while
	// the key's local record holds a change the shared store does not have
	// (WriteStrong, which sets it, then catches up and retries).
	Strict bool
	// Confirm marks a write whose writer waits for the shared store's
	// outcome (a sync write, WaitSynced): when its push loses a conflict,
	// WaitSynced reports *ConflictLostError, as for a strict write,
	// instead of nil.
	Confirm bool
	// Fence, when set, is the lock grant the write is made under: the
	// write is rejected (*FenceRejectedError) if the store has seen a
	// higher token for Fence.Resource, here and again when it is pushed
	// (see fence.go).
	Fence Fence
	// Action, when set, names a put in its event instead of ActionPut:
	// the action of a state machine transition (see Transition). Puts
	// only; at most MaxActionSize bytes of UTF-8, not "put" or "delete".
	Action string
}

// Event actions.
const (
	ActionPut    = "put"
	ActionDelete = "delete"
)

// Event is the immutable audit record of one change.
type Event struct {
	Key
	// Action is "put", "delete", or the action of the state machine
	// transition that made the change (a put: see Transition).
	Action      string
	FromVersion uint64
	ToVersion   uint64
	Value       []byte
	Change      Change
	Origin      string
	OpID        string
	Clock       Clock
}

// JournalEntry is one change waiting to be pushed to the shared store.
// Entries are ordered by Seq; entries written by one atomic batch share a
// BatchID (and are pushed together).
type JournalEntry struct {
	Seq         uint64
	OpID        string
	BatchID     string
	Key         Key
	BaseVersion uint64 // the version the change was made on
	Version     uint64 // the version it produced
	Time        int64
	Strict      bool  // a strong write: loses any conflict (syncer.Entry.Strict)
	Confirm     bool  // its writer waits for the outcome (Write.Confirm)
	Fence       Fence // the write's fence (syncer.Entry.Fence)
	// Checks, on the first entry of a transaction, are the versions of the
	// states it checked without writing them (syncer.Entry.Checks).
	Checks []CheckedVersion
}

// Errors. Write errors for one key are *KeyError values wrapping these.
var (
	ErrNotFound        = errors.New("state not found")
	ErrVersionConflict = errors.New("version conflict")
	ErrTooLarge        = errors.New("too large")
	ErrInvalid         = errors.New("invalid argument")
	ErrClosed          = errors.New("store closed")
	// ErrFailed: the store stopped taking writes because the outcome of one
	// became unknown (its write-ahead log or Badger failed). Reads still
	// work; reopening the store replays the log.
	ErrFailed = errors.New("store failed")
)

// VersionConflictError says a precondition failed: the request expected
// Expected (0: absent) and the store holds Actual (0: absent).
type VersionConflictError struct {
	Key      Key
	Expected uint64
	Actual   uint64
}

func (e *VersionConflictError) Error() string {
	return fmt.Sprintf("%s: version conflict: expected %d, actual %d", e.Key, e.Expected, e.Actual)
}

// Unwrap makes errors.Is(err, ErrVersionConflict) hold.
func (e *VersionConflictError) Unwrap() error { return ErrVersionConflict }

// FieldError says one field of a request is invalid or too large. Err wraps
// ErrInvalid or ErrTooLarge (so errors.Is works on either); Limit is the limit
// that was passed, for ErrTooLarge.
type FieldError struct {
	Field string // "governor", "state", "value", "actor", "reason", "if_version", "batch"
	Limit int64
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns the cause, which wraps ErrInvalid or ErrTooLarge.
func (e *FieldError) Unwrap() error { return e.Err }

// KeyError is an error about one key, for example ErrNotFound.
type KeyError struct {
	Op  string
	Key Key
	Err error
}

func (e *KeyError) Error() string { return e.Op + " " + e.Key.String() + ": " + e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// Stats is a snapshot of a Store's counters.
type Stats struct {
	States       int64  // live states (tombstones are not counted)
	JournalDepth int64  // journal entries not yet acked by the syncer
	Parked       int64  // journal entries the shared store rejected for good (see Failed)
	Commits      uint64 // Badger transactions committed (on disk, one write-ahead log sync each, but for groups too large for one transaction)
	CommitWrites uint64 // writes in those transactions: > Commits when group commit batches
	CacheHits    uint64
	CacheMisses  uint64
	CacheBytes   int64 // bytes held by the read cache (estimate)
	LSMBytes     int64 // size of the LSM tree files on disk (0 in memory)
	VlogBytes    int64 // size of the value log files on disk (0 in memory)
	WALBytes     int64 // records in the write-ahead log, not yet checkpointed (0 in memory)
	// WALSyncs is how many commit groups were appended to the write-ahead
	// log (one write and one fdatasync each), WALSyncTime their total
	// duration: the disk's share of a write's latency.
	WALSyncs    uint64
	WALSyncTime time.Duration
	// OriginRenewals is how many new incarnations the store drew since it
	// was opened because another store made changes under its origin
	// (origin.go): a copy of its data dir went on writing.
	OriginRenewals uint64
	// Retention counts what the history retention rounds did since the
	// store was opened (retention.go).
	Retention RetentionStats
}
