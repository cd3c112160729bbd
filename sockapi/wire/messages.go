package wire

// ProtocolVersion is the protocol version this package speaks. A connection
// starts with a hello that agrees on it.
const ProtocolVersion = 1

// Ops. Every request names one; an unknown op gets an UnknownOp error.
const (
	OpHello    = "hello"
	OpPing     = "ping"
	OpGet      = "get"
	OpPut      = "put"
	OpDelete   = "delete"
	OpBatchGet = "batch_get"
	OpBatchPut = "batch_put"
	OpList     = "list"
	OpStats    = "stats"
	// OpWatch starts a watch of a governor's changes, delivered as
	// server-push frames; OpUnwatch ends one.
	OpWatch   = "watch"
	OpUnwatch = "unwatch"
	// OpPending reports the journal (changes not yet in the shared store);
	// OpFailed lists the changes the shared store rejected for good.
	OpPending = "pending"
	OpFailed  = "failed"
	// OpFlush waits until every change written before it is in the shared
	// store.
	OpFlush = "flush"
	// History: OpEvents pages through a governor's local event log,
	// OpStateAt returns a state as of a past time or version, OpValidate
	// checks the event log.
	OpEvents   = "events"
	OpStateAt  = "state_at"
	OpValidate = "validate"
)

// Consistency levels (Request.Consistency). Reads: ReadLocal (the
// default), ReadBounded (with MaxStalenessMS), ReadStrong. Writes:
// WriteAsync (the default), WriteSync, WriteStrong.
const (
	ReadLocal   = "local"
	ReadBounded = "bounded"
	ReadStrong  = "strong"
	WriteAsync  = "async"
	WriteSync   = "sync"
	WriteStrong = "strong"
)

// Limits every sidecar enforces. The values a sidecar actually uses are
// announced in its hello reply.
const (
	// MaxValueSize is the largest app value, in encoded bytes: Firestore's
	// 1 MiB document limit less room for the name and metadata.
	MaxValueSize = 1_000_000
	// MaxBatch is the most items in one batch_get or batch_put (Firestore's
	// limit on writes in one commit).
	MaxBatch = 500
	// MaxTxnOps is the most operations (puts, deletes and checks) in one
	// txn: Firestore's limit on writes in one transaction.
	MaxTxnOps = 500
	// MaxTxnWrites is the most puts and deletes in one txn: each stores a
	// record and an event, two of Firestore's 500 writes per transaction.
	MaxTxnWrites = 250
	// MaxListLimit is the most records one list reply returns.
	MaxListLimit = 1000
	// DefaultListLimit applies when a list request sets no limit.
	DefaultListLimit = 100
	// MaxNameSize is the longest governor or state name, in bytes.
	MaxNameSize = 1500
	// MaxMetaSize is the longest actor or reason, in bytes.
	MaxMetaSize = 1024
)

// Request is every request frame's body. Which fields matter depends on Op;
// docs/protocol.md lists them per op. Unknown fields are ignored.
type Request struct {
	ID uint64 `codec:"id"`
	Op string `codec:"op"`

	// hello
	Versions []uint32 `codec:"versions,omitempty"`
	Client   string   `codec:"client,omitempty"`

	// get, put, delete, list
	Governor string `codec:"governor,omitempty"`
	State    string `codec:"state,omitempty"`

	// put, delete: value and preconditions
	Value     Raw     `codec:"value,omitempty"`
	IfVersion *uint64 `codec:"if_version,omitempty"`
	IfAbsent  bool    `codec:"if_absent,omitempty"`

	// change metadata on every write
	Actor  string `codec:"actor,omitempty"`
	Reason string `codec:"reason,omitempty"`
	// put, delete, batch_put (every item): the lock grant the write is
	// made under (see Fence).
	Fence *Fence `codec:"fence,omitempty"`

	// get, batch_get: "local", "bounded" or "strong"; list: "local";
	// put, delete, batch_put: "async" or "sync". "" is the default.
	Consistency string `codec:"consistency,omitempty"`
	// bounded reads: the oldest the local copy may be, in milliseconds.
	MaxStalenessMS uint64 `codec:"max_staleness_ms,omitempty"`
	// sync writes: how long to wait for the shared store, in milliseconds
	// (0: the sidecar's default).
	TimeoutMS uint64 `codec:"timeout_ms,omitempty"`

	// unwatch: the watch to end (the id of the watch request).
	Watch uint64 `codec:"watch,omitempty"`
	// failed: list entries after this journal sequence number.
	After uint64 `codec:"after,omitempty"`

	// batch_get
	Keys []Key `codec:"keys,omitempty"`
	// batch_put
	Items []Item `codec:"items,omitempty"`
	// txn: the transaction's operations (see TxnOp); txlog: the outcome
	// to list ("committed" or "failed"; "": both).
	Ops     []TxnOp `codec:"ops,omitempty"`
	Outcome string  `codec:"outcome,omitempty"`

	// list, watch (prefix); list, failed, events (limit); list, events (cursor)
	Prefix string `codec:"prefix,omitempty"`
	Limit  int    `codec:"limit,omitempty"`
	Cursor string `codec:"cursor,omitempty"`

	// events: change time bounds in Unix ns, from <= time < to (0: open),
	// and "put" or "delete" ("": both).
	From   int64  `codec:"from,omitempty"`
	To     int64  `codec:"to,omitempty"`
	Action string `codec:"action,omitempty"`
	// state_at: the time (Unix ns) or the version to look at; exactly one
	// is set (0: not set).
	At      int64  `codec:"at,omitempty"`
	Version uint64 `codec:"version,omitempty"`

	// lock_acquire, lock_release, lock_extend, lock_status: the resource;
	// lock_release, lock_extend: the grant's token; lock_acquire,
	// lock_extend: the lease (0: the default); lock_acquire: how long to
	// wait for the lock (0: fail at once) and whether to bind it to the
	// connection.
	Resource string `codec:"resource,omitempty"`
	Token    uint64 `codec:"token,omitempty"`
	LeaseMS  uint64 `codec:"lease_ms,omitempty"`
	WaitMS   uint64 `codec:"wait_ms,omitempty"`
	Bind     bool   `codec:"bind,omitempty"`

	// transition: the machine state expected ("": none) and the new one
	// (action names the transition; value, when set, is the new value).
	FromState string `codec:"from_state,omitempty"`
	ToState   string `codec:"to_state,omitempty"`
	// cleanup: what may go (max_age_ms, keep_events: at least one), and
	// whether only to report it; replay: start each state at its newest
	// snapshot.
	MaxAgeMS   uint64 `codec:"max_age_ms,omitempty"`
	KeepEvents uint64 `codec:"keep_events,omitempty"`
	DryRun     bool   `codec:"dry_run,omitempty"`
	Latest     bool   `codec:"latest,omitempty"`

	// resolver_register: how long the app takes to answer a conflict (0:
	// the default); resolve: the conflict answered, the choice, and (with
	// value, and reason) the new value; deleted is refused.
	DeadlineMS uint64 `codec:"deadline_ms,omitempty"`
	ConflictID uint64 `codec:"conflict_id,omitempty"`
	Choice     string `codec:"choice,omitempty"`
	Deleted    bool   `codec:"deleted,omitempty"`

	// W3C trace context, optional on every request.
	Traceparent string `codec:"traceparent,omitempty"`
}

// Key names one state.
type Key struct {
	Governor string `codec:"governor"`
	State    string `codec:"state"`
}

// Item is one write in a batch_put: a put, or a delete when Delete is set.
type Item struct {
	Governor  string  `codec:"governor"`
	State     string  `codec:"state"`
	Value     Raw     `codec:"value,omitempty"`
	Delete    bool    `codec:"delete,omitempty"`
	IfVersion *uint64 `codec:"if_version,omitempty"`
	IfAbsent  bool    `codec:"if_absent,omitempty"`
}

// Response is every reply frame's body, and the body of server-push frames.
// ID echoes the request's; Error is set on failure, and then no other field
// is (but Push and Watch, in the push frame that ends a watch, and Push and
// Lock, in the push frame of a lost bound lock).
//
// A frame with Push set answers no request: it is a change of the watch
// Watch (Record and Remote), or the end of that watch (Error). Its ID is the
// watch's id too, so that a client that never watches, or that forgot a
// watch, drops it as a reply to no request in flight. A push frame without
// Watch reports a lock bound to the connection that was lost (Lock and
// Error LockLost); its ID is the id of the lock_acquire that took it. A
// push frame with Conflict is a conflict for an app to decide; its ID is the
// id of the resolver_register that asked for it.
type Response struct {
	ID    uint64 `codec:"id"`
	Error *Error `codec:"error,omitempty"`

	// Push marks a server-push frame.
	Push bool `codec:"push,omitempty"`
	// watch reply and push frames: the watch's id (the watch request's id).
	Watch uint64 `codec:"watch,omitempty"`
	// push frames: the change came from the shared store (not this
	// sidecar's clients).
	Remote bool `codec:"remote,omitempty"`

	// hello
	Hello *Hello `codec:"hello,omitempty"`

	// get, put, delete
	Record *Record `codec:"record,omitempty"`
	// batch_get (nil entries for missing states), batch_put, list
	Records []*Record `codec:"records,omitempty"`
	// list: pass back to continue; empty when the listing is complete.
	Cursor string `codec:"cursor,omitempty"`

	// stats
	Stats *Stats `codec:"stats,omitempty"`

	// pending
	Pending *Pending `codec:"pending,omitempty"`
	// failed: one page of the failed list, and the after of the next page
	// (0 when this page is the last).
	Failed []*Failed `codec:"failed,omitempty"`
	Next   uint64    `codec:"next,omitempty"`

	// flush: the journal sequence number every change up to which is in
	// the shared store (absent: 0, nothing was written yet).
	FlushedSeq uint64 `codec:"flushed_seq,omitempty"`
	// events: one page of events; Cursor continues it.
	Events []*Event `codec:"events,omitempty"`
	// state_at
	Past *PastState `codec:"past,omitempty"`
	// validate
	Report *Report `codec:"report,omitempty"`
	// snapshot, cleanup; replay: one page of items, Cursor continues it,
	// Done marks the last page.
	Snapshot *SnapshotResult `codec:"snapshot,omitempty"`
	Cleanup  *CleanupReport  `codec:"cleanup,omitempty"`
	Replay   []*ReplayItem   `codec:"replay,omitempty"`
	Done     bool            `codec:"done,omitempty"`
	// conflicts: one page of the conflict ledger; Cursor continues it.
	Conflicts []*Conflict `codec:"conflicts,omitempty"`
	// lock_acquire, lock_release, lock_extend, lock_status; push frames:
	// a bound lock that was lost (with Error).
	Lock *Lock `codec:"lock,omitempty"`
	// resolver_register; push frames: a conflict for the app to answer
	// (see AppConflict).
	Resolver *Resolver    `codec:"resolver,omitempty"`
	Conflict *AppConflict `codec:"conflict,omitempty"`
	// txn: the transaction's id and attempts (Records holds the records
	// it wrote, in the order of its puts and deletes).
	Txn *TxnResult `codec:"txn,omitempty"`
	// txlog: one page of the transaction log; Cursor continues it.
	TxLog []*TxnLogEntry `codec:"txlog,omitempty"`
}

// Clock is the causal metadata of a change: Lamport and HLC (Unix ms << 16
// | counter) order changes; Vector counts, per node id, the changes of that
// node the state had seen.
type Clock struct {
	Lamport uint64            `codec:"lamport"`
	HLC     uint64            `codec:"hlc"`
	Vector  map[string]uint64 `codec:"vector,omitempty"`
}

// Event is one entry of a state's local event log: a change this sidecar
// made, from FromVersion to Version. Value is the value the change wrote
// (absent for a delete).
type Event struct {
	Governor    string `codec:"governor"`
	State       string `codec:"state"`
	Action      string `codec:"action"` // "put", "delete" or a transition's action
	FromVersion uint64 `codec:"from_version"`
	Version     uint64 `codec:"version"`
	Value       Raw    `codec:"value,omitempty"`
	Change      Change `codec:"change"`
	Origin      string `codec:"origin,omitempty"`
	OpID        string `codec:"op_id,omitempty"`
	Clock       Clock  `codec:"clock"`
}

// PastState is the state_at reply: the state as it was (Record, with its
// value; from_cache, pending and synced_at describe the present and are
// false or absent). Exact is false when versions after Record.Version,
// through UnknownThrough, have no local event: the state may then have been
// any of them, and Record is the last version the local history knows of.
type PastState struct {
	Record         Record `codec:"record"`
	OpID           string `codec:"op_id,omitempty"`
	Clock          Clock  `codec:"clock"`
	Exact          bool   `codec:"exact"`
	UnknownThrough uint64 `codec:"unknown_through,omitempty"`
}

// Report is the validate reply. Violations and Gaps list at most the first
// entries found (fewer than the counts when the reply would not fit a
// frame); ViolationCount and GapCount count them all. OK is
// ViolationCount == 0.
type Report struct {
	OK             bool         `codec:"ok"`
	States         int          `codec:"states"`
	Events         int          `codec:"events"`
	Snapshots      int          `codec:"snapshots,omitempty"`
	ViolationCount int          `codec:"violation_count"`
	Violations     []*Violation `codec:"violations,omitempty"`
	GapCount       int          `codec:"gap_count"`
	Gaps           []*Gap       `codec:"gaps,omitempty"`
}

// Violation is one broken rule of the event log.
type Violation struct {
	Governor string `codec:"governor"`
	State    string `codec:"state"`
	Version  uint64 `codec:"version"`
	Rule     string `codec:"rule"`
	Message  string `codec:"message"`
}

// Gap is a run of versions of a state, After+1 through Through, whose
// current lineage is not in the local log (changes made on other nodes,
// renumbered, or superseded); Reason says which.
type Gap struct {
	Governor string `codec:"governor"`
	State    string `codec:"state"`
	After    uint64 `codec:"after"`
	Through  uint64 `codec:"through"`
	Reason   string `codec:"reason"`
}

// Pending is the pending reply: the changes waiting for the shared store.
type Pending struct {
	// SharedStore is true when the sidecar syncs with a shared store;
	// without one the journal only grows.
	SharedStore bool `codec:"shared_store"`
	// Depth is the number of journal entries not yet in the shared store.
	Depth int64 `codec:"depth"`
	// Parked is the number of entries the shared store rejected for good
	// (see the failed op).
	Parked int64 `codec:"parked"`
	// OldestSeq and OldestTime (Unix ns) are the oldest entry's journal
	// sequence number and write time, OldestAgeMS its age; 0 when the
	// journal is empty.
	OldestSeq   uint64 `codec:"oldest_seq,omitempty"`
	OldestTime  int64  `codec:"oldest_time,omitempty"`
	OldestAgeMS int64  `codec:"oldest_age_ms,omitempty"`
	// Entries are receipts of the waiting changes, oldest first, after the
	// request's after, at most its limit; Next continues them (0: none left).
	Entries []*PendingEntry `codec:"entries,omitempty"`
	Next    uint64          `codec:"next,omitempty"`
}

// PendingEntry is the receipt of one acknowledged local change that is not
// yet in the shared store.
type PendingEntry struct {
	Seq         uint64 `codec:"seq"`
	Governor    string `codec:"governor"`
	State       string `codec:"state"`
	Version     uint64 `codec:"version"`
	BaseVersion uint64 `codec:"base_version"`
	OpID        string `codec:"op_id"`
	BatchID     string `codec:"batch_id,omitempty"`
	Time        int64  `codec:"time"`
}

// Failed is one entry of the failed list: a local change the shared store
// rejected for good. The change stays applied locally.
type Failed struct {
	Seq         uint64 `codec:"seq"`
	Governor    string `codec:"governor"`
	State       string `codec:"state"`
	Version     uint64 `codec:"version"`
	BaseVersion uint64 `codec:"base_version"`
	OpID        string `codec:"op_id,omitempty"`
	Time        int64  `codec:"time"`
	Reason      string `codec:"reason"`
	ParkedAt    int64  `codec:"parked_at"`
}

// Hello is the hello reply: what was agreed and the server's limits.
type Hello struct {
	Version  uint32 `codec:"version"`
	Server   string `codec:"server"`
	NodeID   string `codec:"node_id"`
	MaxFrame int    `codec:"max_frame"`
	MaxValue int    `codec:"max_value"`
	MaxBatch int    `codec:"max_batch"`
	// IdleTimeoutMS is how long, in milliseconds, a connection may stay
	// idle before the sidecar closes it (0 or absent: it does not).
	IdleTimeoutMS int64 `codec:"idle_timeout_ms,omitempty"`
}

// Change is the metadata of a change: who made it, why, and when (Unix
// nanoseconds, the sidecar's clock).
type Change struct {
	Actor  string `codec:"actor,omitempty"`
	Reason string `codec:"reason,omitempty"`
	Time   int64  `codec:"time"`
}

// Record is a state as a reply carries it. Write replies leave Value out.
type Record struct {
	Governor  string `codec:"governor"`
	State     string `codec:"state"`
	Value     Raw    `codec:"value,omitempty"`
	Version   uint64 `codec:"version"`
	Deleted   bool   `codec:"deleted,omitempty"`
	UpdatedAt int64  `codec:"updated_at"`
	Change    Change `codec:"change"`
	Origin    string `codec:"origin,omitempty"`
	// FromCache: served from this sidecar's local store.
	FromCache bool `codec:"from_cache"`
	// Pending: a local change to this state is not yet in the shared store.
	Pending bool `codec:"pending"`
	// SyncedAt: when the shared store committed the version this sidecar
	// last heard of (Unix ns); 0 unknown or never.
	SyncedAt int64 `codec:"synced_at,omitempty"`
	// AgeMS: how far behind the shared store this copy may be, in
	// milliseconds: the time since the sidecar last knew it held every
	// change of the state's governor (0 while it watches the governor
	// live, and for a record read from the shared store in this request).
	// Reads only; nil when unknown: no shared store, a governor not pulled
	// yet, or a state whose shared-store document does not decode.
	AgeMS *uint64 `codec:"age_ms,omitempty"`
	// Stale: the read asked for freshness (bounded, strong) that could not
	// be confirmed; the record is the local copy and may be behind.
	Stale bool `codec:"stale,omitempty"`
}

// Stats is the stats reply.
type Stats struct {
	NodeID        string            `codec:"node_id"`
	Origin        string            `codec:"origin"`
	Server        string            `codec:"server"`
	UptimeSeconds float64           `codec:"uptime_seconds"`
	Connections   int64             `codec:"connections"`
	Requests      map[string]uint64 `codec:"requests"`
	Errors        map[string]uint64 `codec:"errors"`
	States        int64             `codec:"states"`
	JournalDepth  int64             `codec:"journal_depth"`
	Commits       uint64            `codec:"commits"`
	CommitWrites  uint64            `codec:"commit_writes"`
	CacheHits     uint64            `codec:"cache_hits"`
	CacheMisses   uint64            `codec:"cache_misses"`
	CacheBytes    int64             `codec:"cache_bytes"`
	LSMBytes      int64             `codec:"lsm_bytes"`
	VlogBytes     int64             `codec:"vlog_bytes"`
	// Parked: journal entries the shared store rejected for good.
	Parked int64 `codec:"parked,omitempty"`
	// ConflictsByResolver counts the true conflicts pushes settled, by
	// resolver; ConflictStorms the conflict storms detected (many
	// conflicts on one state in a short time).
	ConflictsByResolver map[string]uint64 `codec:"conflicts,omitempty"`
	ConflictStorms      uint64            `codec:"conflict_storms"`
	// StaleReads counts bounded and strong reads that found the local copy
	// behind the shared store; ReadRepairs the states they repaired.
	StaleReads  uint64 `codec:"stale_reads"`
	ReadRepairs uint64 `codec:"read_repairs"`
}
