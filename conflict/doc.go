// Package conflict holds what the sidecar needs to order changes and settle
// conflicts between them: clocks and resolvers.
//
// Clocks. Vector is a vector clock (one counter per node): Compare tells
// whether one state happened before another, after it, is the same, or is
// concurrent with it, and Merge joins two. Lamport is a Lamport clock and HLC
// a hybrid logical clock (Unix milliseconds << 16 | logical counter): both
// issue values that never go backwards, whatever the wall clock does, and
// observe the values of other nodes so that later local values are greater.
// The pure functions NextHLC and ObserveHLC are the same algorithm for a
// caller that owns the last value itself. Persisting the last values across
// restarts is the local store's business: a clock restarted from a persisted
// value with NewHLC or NewLamport, or one that observes it, never goes back.
//
// Resolvers. A Conflict is two versions of one state made concurrently (the
// local change and the remote record), with the common ancestor's value when
// it is known. A Resolver returns a Decision: the local side, the remote side
// or a merged value, and a reason. Built in: last-write-wins ("lww"),
// version-based ("version"), causality-aware ("causal") and field-level merge
// of msgpack maps ("merge"). Every built-in resolver is deterministic: given
// the same conflict with local and remote swapped it chooses the same record
// (or the same merged bytes), so every node settles a conflict alike.
//
// The app resolver ("app", made by an AppHub's Factory) hands a conflict to
// the app registered for its governor (over the sidecar's socket) and waits
// for its answer until a deadline; without an app, an answer in time, or
// when the app declines, its fallback decides. It is registered by the
// sidecar, not built in: it needs the hub the socket server shares.
//
// A Registry maps names to resolver factories (the built-ins and any
// registered by a custom build), and builds a Set from a Config that says
// which resolver and which fallback apply to each governor (default: lww).
// The resolvers a Set returns never fail: an error, a panic or an invalid
// decision of a resolver hands the conflict to its fallback.
//
// See docs/decisions/0009-conflict-resolvers.md and 0020-app-resolver.md.
package conflict
