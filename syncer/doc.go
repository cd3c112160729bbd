// Package syncer moves changes between the sidecar's local store and the
// shared remote store that every sidecar of a deployment uses (Firestore).
//
// This package defines the remote in its own terms: Remote is a small
// interface over records, versions, clocks and op ids, with a documented
// error contract (ErrNotFound, ErrConflict, ErrUnavailable, ErrPermanent,
// ErrTooLarge, ErrUndecodable). Backends live in their own packages: syncer/memremote (in
// memory, with fault injection, for fast tests) and syncer/firestore (Google
// Cloud Firestore). syncer/remotetest is the conformance suite that every
// backend passes.
//
// The Remote is shaped for the loops built on it:
//
//   - push: the journal is drained in order per key, several journal entries
//     of one key are coalesced into one Change (the newest record plus one
//     Event per entry), and Changes are sent in batches with Commit. Commit is
//     idempotent: a Change whose op the remote record already covers (its
//     vector clock entry for the change's origin node, or its last op id) is
//     reported AlreadyApplied, so a crash between a remote commit and the local
//     journal ack never applies a change twice. A Change made on a base version
//     that the remote has moved past is reported as a Conflict together with
//     the remote record, for a resolver to settle. Transient failures are
//     ErrUnavailable (retry with backoff), everything else is permanent.
//   - pull: Changes (poll) and the optional Watcher (listener) report the
//     records of a governor committed after a Cursor; the puller applies a
//     record when it is newer than the local one and no local write is
//     pending, and keeps the Cursor to resume from. A document that does
//     not decode is left out of the stream and reported (SkippedError), so
//     that it does not stop its governor; reads and commits of its key fail
//     with ErrUndecodable. The puller remembers such documents, across
//     restarts when the applier keeps them (UndecodableKeeper).
//   - strong and sync writes, multi-key transactions: Commit with Atomic set is
//     all or nothing, and each Change's BaseVersion is a compare-and-set
//     precondition checked inside the remote's transaction (CheckOnly changes
//     assert a version without writing).
//
// The push loop is Syncer (New, SyncOnce, Run, Flush): it drains a Journal,
// the local outbox that the local store implements (MemJournal in memory),
// into a Remote. See docs/decisions/0006-push-loop.md.
//
// The pull loop is Puller (NewPuller, PullOnce, Run, Fetch): it applies the
// remote changes of the served governors, and single keys on a cache miss, to
// an Applier, the local store as the puller sees it (MemJournal in memory).
// DecideApply says when a remote record replaces the local one. See
// docs/decisions/0007-pull-loop.md.
//
// History (bootstrap.go, bootstrap_push.go): with a HistoryRemote, the
// puller brings the remote events and snapshots of the records it applies
// (FetchHistory, RemoteBatch.History), which is also how a fresh node
// bootstraps; SnapshotPusher copies the local store's snapshots to the
// remote. See docs/decisions/0019-shared-history-and-bootstrap.md.
//
// See docs/decisions/0005-remote-interface.md.
package syncer
