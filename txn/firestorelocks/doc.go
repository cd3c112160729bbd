// Package firestorelocks implements txn.Locks on Google Cloud Firestore:
// leased, fenced locks with deadlock detection, shared by every sidecar
// that uses the same database and root. New returns them on a client the
// caller opened (and closes).
//
// The lock documents live beside the synced data, under the root the
// syncer uses, so that syncer/firestore's fence check reads the tokens the
// locks grant; their layout is syncer/firestore's LockDoc. Leases are
// judged by Firestore's clock only. The rules are in
// docs/decisions/0010-locks.md; txn/locktest is the conformance suite this
// package passes against the Firestore emulator.
package firestorelocks
