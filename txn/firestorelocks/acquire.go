package firestorelocks

import (
	"context"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/txn"
)

// try takes the lock if it is free; otherwise it returns who holds it. The
// grant's deadline counts from the start of the transaction attempt that
// grants it (attempts that Firestore aborts, and their backoff, may take
// seconds before it): the lease starts at that attempt's commit.
func (f *Locks) try(ctx context.Context, resource, holder string, lease time.Duration) (txn.Grant, *txn.HeldError, error) {
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
		if held = s.blocked(holder); held != nil {
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
		if s.doc.Holder == "" && s.doc.Next != "" && s.doc.Next != holder {
			// The lock was handed to another waiter, which did not take it
			// in time: it is presumed gone, and later releases pass it over.
			d.Passed = append(d.Passed, s.doc.NextWait)
			if len(d.Passed) > maxPassed {
				d.Passed = d.Passed[len(d.Passed)-maxPassed:]
			}
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
	g, held, err := f.try(ctx, resource, holder, lease)
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
