package firestorelocks

import (
	"context"
	"slices"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/txn"
)

// current reads g's lock in tx and checks that g is its current grant.
func (f *Locks) current(tx *firestore.Transaction, op string, g txn.Grant) (lockState, error) {
	s, err := getLock(tx, f.lockRef(g.Resource))
	if err != nil {
		return s, err
	}
	switch {
	case !s.exists:
		return s, &txn.LostError{Op: op, Grant: g}
	case s.doc.Holder != g.Holder || uint64(s.doc.Token) != g.Token:
		return s, &txn.LostError{Op: op, Grant: g, Holder: s.doc.Holder, Token: uint64(s.doc.Token)}
	case !s.held():
		return s, &txn.LostError{Op: op, Grant: g, Token: uint64(s.doc.Token), Expired: true}
	}
	return s, nil
}

// Release implements txn.Locks. The document stays, free, so the token
// survives; Cleanup deletes it later. It reads the lock's waits and names
// in it the waiter it is handed to, whose listener wakes it; the others'
// listeners show them that the lock is not theirs to take.
func (f *Locks) Release(ctx context.Context, g txn.Grant) error {
	if err := txn.CheckGrant(g); err != nil {
		return err
	}
	err := f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		s, err := f.current(tx, "release", g)
		if err != nil {
			return err
		}
		waits, err := f.waitsFor(tx, g.Resource)
		if err != nil {
			return err
		}
		d := s.doc
		d.Holder = ""
		f.handOff(&d, waits, s.now, "")
		return tx.Set(f.lockRef(g.Resource), d)
	})
	if err != nil {
		return translate(ctx, "release lock", g.Resource, err)
	}
	return nil
}

// Extend implements txn.Locks. The write restarts the lease at its commit time;
// the deadline counts from the start of the attempt that commits (as in
// try).
func (f *Locks) Extend(ctx context.Context, g txn.Grant, lease time.Duration) (txn.Grant, error) {
	if err := txn.CheckGrant(g); err != nil {
		return txn.Grant{}, err
	}
	lease, err := txn.CheckLease(lease, g.Lease)
	if err != nil {
		return txn.Grant{}, err
	}
	var out txn.Grant
	err = f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		start := time.Now()
		s, err := f.current(tx, "extend", g)
		if err != nil {
			return err
		}
		d := s.doc
		d.LeaseMS, d.FreeAt = lease.Milliseconds(), s.now.Add(lease)
		out = g
		out.Lease, out.Expires, out.Deadline = lease, d.FreeAt, start.Add(lease)
		return tx.Set(f.lockRef(g.Resource), d)
	})
	if err != nil {
		return txn.Grant{}, translate(ctx, "extend lock", g.Resource, err)
	}
	return out, nil
}

// Status implements txn.Locks.
func (f *Locks) Status(ctx context.Context, resource string) (txn.Status, error) {
	if err := txn.ValidateName("resource", resource); err != nil {
		return txn.Status{}, err
	}
	snap, err := f.lockRef(resource).Get(ctx)
	if err != nil && !notFound(err) {
		return txn.Status{}, translate(ctx, "lock status", resource, err)
	}
	s, err := decodeLock(snap)
	if err != nil {
		return txn.Status{}, err
	}
	st := txn.Status{Resource: resource, Token: uint64(s.doc.Token), Next: s.handedTo()}
	if s.held() {
		st.Held, st.Holder, st.Expires, st.Remaining = true, s.doc.Holder, s.end(), s.end().Sub(s.now)
	}
	waits, err := f.coll("lockwaits").Where("resource", "==", resource).Documents(ctx).GetAll()
	if err != nil {
		return txn.Status{}, translate(ctx, "lock status", resource, err)
	}
	var docs []waitDoc
	for _, snap := range waits {
		var d waitDoc
		if snap.DataTo(&d) == nil && d.Until.After(snap.ReadTime) {
			st.Waiters = append(st.Waiters, d.Waiter)
			docs = append(docs, d)
		}
	}
	slices.Sort(st.Waiters)
	if s.lapsed() {
		if next, _, _ := f.turn(s, docs); next != nil {
			st.Next = next.Waiter // its turn, though nothing was written
		}
	}
	return st, nil
}
