// Package sockapi serves tai-sidecar's wire protocol (package wire) on a
// Unix socket, in front of the local store.
//
// # Running
//
// Listen creates the socket (mode 0660, never replacing a live socket or a
// file that is not a socket); NewServer wraps a Store; Serve accepts until
// Shutdown (graceful: in-flight requests finish and their replies are
// written) or until its context is cancelled (immediate).
//
// # Connections
//
// A connection carries length-prefixed frames (wire.ReadFrame's rules)
// whose bodies are msgpack maps decoded into wire.Request (see
// parseRequest for the exact decoding rules), and replies are wire.Response
// frames with the request's id. The first request must be hello, offering
// wire.ProtocolVersion; the reply announces the server's limits.
//
// Requests are pipelined: a client may send many before reading replies,
// and replies come back in any order, matched by id. Ids are chosen by the
// client and must be non-zero; id 0 marks an error that is not about a
// request (a broken frame, too many connections). Reads (get, batch_get,
// list, ping, stats, pending, failed) are answered by the connection's
// reader as they arrive, while writes (put, delete, batch_put), and reads
// that ask the shared store (see Consistency below), run concurrently, up to
// Options.MaxInflight per connection, so that the store's group commit can
// share one fsync among them. Requests on the same state keep their arrival
// order (see order): a write is applied after the connection's earlier writes
// to its states, a get or batch_get sees the connection's earlier writes to
// its states, and a list sees every earlier write of the connection. Writes
// to different states may be applied in any order; a client that needs an
// order across states waits for the reply (or uses one batch_put). When
// MaxInflight writes are running, or the connection holds too many bytes
// (replies the peer has not read, and the requests running off the reader
// with what they set aside for their replies: see outbox.waitRoom), the
// server stops reading from the connection.
//
// A client that closes its write side still gets the replies to every
// request it sent; then the server closes the connection.
//
// # Request rules
//
//   - Names (governor, state) follow wire.ValidateName. list's prefix is
//     optional: at most wire.MaxNameSize bytes of UTF-8 without '/'.
//   - put needs a value (msgpack nil counts as no value: delete instead),
//     of at most the hello's max_value bytes, nesting maps and arrays at
//     most Options.MaxValueDepth (at most MaxValueDepthLimit,
//     wire.MaxDepth-4) levels deep so that every reply carrying it decodes. delete takes no value and no
//     if_absent. if_absent means "if_version 0"; both may be set only if
//     they agree.
//   - actor, reason and hello's client: UTF-8, at most wire.MaxMetaSize
//     bytes (TooLarge over it).
//   - put, delete and batch_put may carry a fence (fence.go): a resource
//     name (wire.ValidateName) and a token above 0.
//   - transition (snapshots.go): from_state, to_state and action are UTF-8
//     of at most localcache.MaxActionSize bytes; to_state and action are
//     required, action is not "put" or "delete"; no if_version, if_absent
//     or fence. cleanup needs max_age_ms, keep_events or both.
//   - batch_get and batch_put: at most the hello's max_batch entries
//     (Options.MaxBatch; TooLarge).
//     batch_put is atomic, writes each state at most once, and applies the
//     request's actor and reason to every item; an empty batch succeeds
//     without touching the store. batch_get replies with one entry per key,
//     nil for a missing state.
//   - txn (txn.go): puts, deletes and checks, at most wire.MaxTxnOps of
//     them (wire.MaxTxnWrites writes), each state at most once, all or
//     nothing at every level; a check takes exactly one of if_version,
//     if_absent and exists. Every txn that passes validation is logged
//     (txlog.go).
//   - list: limit 0 means wire.DefaultListLimit, above wire.MaxListLimit is
//     lowered to it, negative is InvalidArgument. Pages also stop before the
//     reply would exceed max_frame; a non-empty cursor means "more".
//   - consistency: see Consistency below; list accepts only "local".
//   - Records carry pending and synced_at as the store holds them, and
//     from_cache unless the request asked the shared store. Write replies
//     carry the new record without its value.
//
// # Consistency (consistency.go)
//
// With Options.Sync (the shared store) set: a local read that misses reads
// through (Sync.Fetch, then the local store again) unless Sync.FreshAt says
// the governor's local copy is complete; "bounded" reads repair the same
// way when the governor is not known fresh within max_staleness_ms, and
// answer with the local record marked stale when the shared store cannot
// be reached; "strong" reads answer with the shared store's committed
// records only (Sync.ReadStrong, which pushes the sidecar's pending changes
// of the states first; strongread.go), Unavailable when they cannot. "sync"
// writes wait after the local write for Store.WaitSynced; "strong" writes
// are Sync.WriteStrong. Without Options.Sync those levels are Unavailable
// (not retryable). A state whose shared-store document does not decode
// (SyncUndecodable) is never taken for fresh with its governor; reads that
// need that document, and strong writes of it, are Unavailable, not
// retryable, and name it.
//
// # Watches (watch.go)
//
// watch subscribes to the store's change feed and sends each change as a
// server-push frame (wire.Response with Push and Watch set) until unwatch,
// the connection's end, or the watch falling behind its buffer (a last push
// frame with an Unavailable error).
//
// # Locks (locks.go)
//
// lock_acquire, lock_release, lock_extend and lock_status serve
// Options.Locks (Unavailable without it), on goroutines of their own in
// write slots but outside the order of writes. The holder of a lock is the
// connection; a bound lock is renewed while the connection lives, released
// when it stops reading, and its loss is a push frame (LockLost).
//
// # Conflicts decided by apps (resolver.go)
//
// resolver_register makes the connection the app that decides the
// conflicts of a governor (Options.Apps, a conflict.AppHub; Unavailable
// without it); each conflict is a push frame carrying the registration's
// id and the conflict, resolve answers it, and the registration ends with
// resolver_unregister or the connection.
//
// # Errors
//
// Every failure is a wire.Error in the reply with the request's id:
// InvalidArgument (with field, e.g. "items[3].state") for a malformed
// request or a bad field, TooLarge (with field and limit) for values,
// batches and replies over a limit, UnknownOp, NotFound and VersionConflict
// (with governor, state, and expected/actual versions) from the store,
// Unavailable while shutting down or over the connection cap, Timeout,
// Internal (details are logged, never sent). A request that breaks any rule
// never reaches the store.
//
// A body that is not a valid request (garbage, wrong field types, nesting
// too deep) gets InvalidArgument with the id when it can be read from the
// body, else 0, and the connection stays open: framing is intact. A frame
// over max_frame (TooLarge, id 0) or an empty frame (ProtocolError, id 0)
// means framing is lost: the error is sent and the connection closed. Any
// other op before hello, or a hello without a common version, is a
// ProtocolError and closes the connection (a hello without versions is
// InvalidArgument; a second hello is InvalidArgument). A truncated frame at
// end of stream closes the connection quietly.
package sockapi
