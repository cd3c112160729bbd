// Package txn holds what spans keys and sidecars: leased locks with fencing
// tokens and deadlock detection.
//
// Locks is the lock service in the sidecar's own terms: Acquire (with an
// optional wait that never polls the store), Release, Extend, Status,
// Cleanup and Deadlocks. NewMemory implements it in one process, for tests
// and for a sidecar without a shared store; txn/firestorelocks implements it
// on Firestore, shared by every sidecar of a deployment. txn/locktest is the
// conformance suite both pass. The rules (token, clocks, waiting, deadlock
// victim, cleanup) are in docs/decisions/0010-locks.md.
//
// This package depends on no store's client library, so that what serves
// locks (the socket server) does not pull one in. For implementations it
// exports the request checks (CheckAcquire, CheckLease, CheckGrant,
// Invalidf) and the wait with deadlock detection (Wait, WaitBackend,
// WaitGraph).
package txn
