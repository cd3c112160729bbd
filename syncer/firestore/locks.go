package firestore

import (
	"fmt"
	"time"

	"cloud.google.com/go/firestore"
)

// Lock documents. Package txn/firestorelocks keeps its leased locks in the
// same database, under the same root: one document per resource. Commit
// reads the lock document of every fenced change in its transaction to
// check the fence (syncer.CheckFence). The layout is defined here, once,
// and txn/firestorelocks uses it (it imports this package, not the other
// way round).

// LockCollection is the collection of lock documents under the root.
const LockCollection = "locks"

// LockDoc is the lock document {root}/locks/{resource}. Its update time (a
// commit time) is when the current lease started, or when the lock was
// released. Token is the last token granted on the resource: a fence passes
// only with that token.
type LockDoc struct {
	Resource string `firestore:"resource"`
	Holder   string `firestore:"holder"` // "" when released
	Token    int64  `firestore:"token"`  // the last token granted
	LeaseMS  int64  `firestore:"lease_ms"`
	// FreeAt is when the lock is free by the store's clock (the release or
	// the end of its handoff, or the lease's end), for txn's cleanup query
	// only: for a lease, the read time of the granting transaction plus the
	// lease, a little before the real end.
	FreeAt time.Time `firestore:"free_at"`
	// Next and NextWait name the waiter (holder and wait id) a released
	// lock is being handed to, until NextUntil by the store's clock; Passed
	// are the waits whose handoff lapsed, which later releases pass over
	// (see txn/firestorelocks).
	Next      string    `firestore:"next,omitempty"`
	NextWait  string    `firestore:"next_wait,omitempty"`
	NextUntil time.Time `firestore:"next_until,omitempty"`
	Passed    []string  `firestore:"passed,omitempty"`
}

// LockRef returns the lock document of resource under root ("" for the
// database root).
func LockRef(client *firestore.Client, root, resource string) *firestore.DocumentRef {
	if root != "" {
		return client.Doc(root).Collection(LockCollection).Doc(resource)
	}
	return client.Collection(LockCollection).Doc(resource)
}

// lockTokens returns the last token of each lock in resources, read as
// snaps (in the same order; a missing document: no record, token 0).
func lockTokens(resources []string, snaps []*firestore.DocumentSnapshot) (map[string]uint64, error) {
	if len(resources) == 0 {
		return nil, nil
	}
	tokens := make(map[string]uint64, len(resources))
	for i, snap := range snaps {
		if !snap.Exists() {
			continue
		}
		var d LockDoc
		if err := snap.DataTo(&d); err != nil {
			return nil, fmt.Errorf("decode lock %s: %w", snap.Ref.Path, err)
		}
		if d.Token > 0 {
			tokens[resources[i]] = uint64(d.Token)
		}
	}
	return tokens, nil
}
