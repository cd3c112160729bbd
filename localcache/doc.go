// Package localcache is the sidecar's local, durable state store, on Badger.
//
// It keeps, per state (governor › state), the latest record (or a tombstone
// after a delete, so versions keep growing across delete and re-create), an
// immutable event per change, and a journal of changes waiting to be pushed
// to the shared store. One Badger transaction stores all three for every
// write, and a write is acknowledged only once its group is durable in the
// store's write-ahead log (wal.go, checkpoint.go): Badger runs without
// syncing, and Open replays the log after a crash.
//
// Writes go through a single committer goroutine that groups concurrent
// requests, checks their preconditions in order, and commits the group in one
// transaction, so concurrent writers share one log sync (see commit.go). A
// bounded, sharded read cache in front of Badger serves hot keys without a
// Badger lookup (see cache.go).
//
// Every change carries clocks: a Lamport time and a hybrid logical clock
// (Unix milliseconds << 16 | logical counter), both never going backwards,
// also across restarts, and a per-state vector clock.
//
// Records returned by the store share their Value and Clock.Vector with its
// cache: callers must treat them as read-only.
//
// Reads and the apply. On disk a write is acknowledged once its group is in
// the log, before the applier has put it in Badger and the cache (see
// Pipeline in commit.go). Every acknowledged write must still be visible to
// every later read, so a read path must do one of two things:
//
//   - a point read of one key's state record consults the overlay of logged,
//     unapplied records first, then the cache, then Badger (Store.pending;
//     it costs one atomic load when nothing is pending);
//   - anything else that reads Badger (iterators, events, the journal, any
//     read of keys a write group stores besides the state record) first
//     calls Store.barrier, or goes through Store.scan, which waits until the
//     groups logged when the call began are applied (at once when nothing is
//     pending, otherwise at most two applies). After a failed apply barrier
//     returns ErrFailed: the read would miss acknowledged writes.
//
// On-disk layout: keys.go; value encoding: codec.go.
package localcache
