package firestorelocks

import (
	"context"
	"slices"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/txn"
)

// try takes the lock if it is free; otherwise it returns who holds it. The
// grant's deadline counts from the start of the transaction attempt that
// grants it (attempts that Firestore aborts, and their backoff, may take
// seconds before it): the lease starts at that attempt's commit.
//
// wait is the caller's wait id ("" for a call that does not wait yet). A
// waiter that finds its wait among the lock's passed waits (a handoff to it
// lapsed, as it would if its sidecar had died) takes it out: it is alive,
// and later handoffs consider it again in its place.
func (f *Locks) try(ctx context.Context, resource, holder, wait string, lease time.Duration) (txn.Grant, *txn.HeldError, error) {
	ref := f.lockRef(resource)
	var g txn.Grant
	var held *txn.HeldError
	err := f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		start := time.Now()
		g, held = txn.Grant{}, nil
		s, err := getLock(tx, ref)
		if err != nil {
			return err
		}
		unpassed := wait != "" && slices.Contains(s.doc.Passed, wait)
		if unpassed {
			s.doc.Passed = slices.DeleteFunc(slices.Clone(s.doc.Passed), func(id string) bool { return id == wait })
		}
		if held = s.blocked(holder); held != nil {
			if unpassed && !s.held() {
				// Handed to another: writing it changes no lease (a held
				// lock's lease runs from its document's update time, so
				// that one waits for the lease's end).
				return tx.Set(ref, s.doc)
			}
			return nil
		}
		last := s.doc.Token
		if !s.exists {
			snap, err := tx.Get(f.floorRef())
			if err != nil && !notFound(err) {
				return err
			}
			var fl floorDoc
			if snap.Exists() {
				if err := snap.DataTo(&fl); err != nil {
					return &Error{Op: "decode", Resource: "lock floor", Kind: txn.ErrPermanent, Err: err}
				}
			}
			last = fl.Token
		}
		d := lockDoc{Resource: resource, Holder: holder, Token: last + 1, LeaseMS: lease.Milliseconds(),
			FreeAt: s.now.Add(lease), Passed: s.doc.Passed}
		if s.lapsed() && s.doc.Next != holder {
			// Freed by the end of a lease or of a handoff, not by a
			// release: the waiters take turns, in order, one handoff
			// window each (see turn). Nothing is written until the one
			// whose turn it is takes the lock: transactions that all read
			// the lock and then write it would wait for each other.
			waits, err := f.waitsFor(tx, resource)
			if err != nil {
				return err
			}
			next, until, passed := f.turn(s, waits)
			if next != nil && next.Waiter != holder {
				held = &txn.HeldError{Resource: resource, Holder: next.Waiter, Token: uint64(s.doc.Token),
					Expires: until, Remaining: until.Sub(s.now), Handoff: true}
				return nil
			}
			d.Passed = recorded(passed, waits, s.now)
		}
		g = txn.Grant{Resource: resource, Holder: holder, Token: uint64(d.Token), Lease: lease, Expires: d.FreeAt,
			Deadline: start.Add(lease)}
		return tx.Set(ref, d)
	})
	if err != nil {
		return txn.Grant{}, nil, translate(ctx, "acquire lock", resource, err)
	}
	return g, held, nil
}

// Acquire implements txn.Locks.
func (f *Locks) Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (txn.Grant, error) {
	lease, err := txn.CheckAcquire(resource, holder, lease, wait)
	if err != nil {
		return txn.Grant{}, err
	}
	g, held, err := f.try(ctx, resource, holder, "", lease)
	if err != nil || held == nil {
		return g, err
	}
	if wait == 0 {
		return txn.Grant{}, held
	}
	w, err := f.startWait(ctx, resource, holder, wait)
	if err != nil {
		return txn.Grant{}, err
	}
	b := &fsWaitBackend{f: f, w: w, lease: lease, read: held.Expires.Add(-held.Remaining)}
	defer b.stop()
	return txn.Wait(ctx, b, f.log, holder, wait, held)
}
