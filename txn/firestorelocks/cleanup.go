package firestorelocks

import (
	"context"
	"time"

	"cloud.google.com/go/firestore"

	sfs "github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/txn"
)

// cleanupBatch is how many documents one Cleanup transaction deletes.
const cleanupBatch = 200

// Cleanup implements txn.Locks. Candidates are found by a query on free_at
// against the local clock less grace, and each is deleted only if the
// store's clock, in the deleting transaction, agrees it has been free for
// grace. The floor document keeps the largest token deleted, and a lock
// document made again starts above it.
func (f *Locks) Cleanup(ctx context.Context, grace time.Duration) (int, error) {
	if grace < 0 {
		return 0, txn.Invalidf("negative grace %v", grace)
	}
	total := 0
	for {
		cut := time.Now().Add(-grace)
		snaps, err := f.coll(sfs.LockCollection).Where("free_at", "<", cut).Limit(cleanupBatch).Documents(ctx).GetAll()
		if err != nil {
			return total, translate(ctx, "lock cleanup", "", err)
		}
		refs := make([]*firestore.DocumentRef, len(snaps))
		for i, s := range snaps {
			refs[i] = s.Ref
		}
		n := 0
		if len(refs) > 0 {
			err = f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
				n = 0
				fsnap, err := tx.Get(f.floorRef())
				if err != nil && !notFound(err) {
					return err
				}
				var fl floorDoc
				if fsnap.Exists() {
					if err := fsnap.DataTo(&fl); err != nil {
						return &Error{Op: "decode", Resource: "lock floor", Kind: txn.ErrPermanent, Err: err}
					}
				}
				docs, err := tx.GetAll(refs)
				if err != nil {
					return err
				}
				floor := fl.Token
				var del []*firestore.DocumentRef
				for _, snap := range docs {
					s, err := decodeLock(snap)
					if err != nil || !s.exists {
						continue
					}
					free := s.start // released at its update time
					if s.doc.Holder != "" {
						free = s.end()
					} else if s.doc.NextUntil.After(free) {
						free = s.doc.NextUntil // and handed to a waiter until then
					}
					if !free.Add(grace).After(s.now) {
						floor = max(floor, s.doc.Token)
						del = append(del, snap.Ref)
					}
				}
				if len(del) == 0 {
					return nil
				}
				if floor != fl.Token {
					if err := tx.Set(f.floorRef(), floorDoc{Token: floor}); err != nil {
						return err
					}
				}
				for _, r := range del {
					if err := tx.Delete(r); err != nil {
						return err
					}
				}
				n = len(del)
				return nil
			})
			if err != nil {
				return total, translate(ctx, "lock cleanup", "", err)
			}
		}
		total += n
		if len(snaps) < cleanupBatch || n == 0 {
			break
		}
	}
	return total, f.cleanupWaits(ctx, grace)
}

// cleanupWaits deletes wait records that ended (their waiter went away
// without deleting them) longer than grace ago.
func (f *Locks) cleanupWaits(ctx context.Context, grace time.Duration) error {
	cut := time.Now().Add(-grace)
	snaps, err := f.coll("lockwaits").Where("until", "<", cut).Limit(cleanupBatch).Documents(ctx).GetAll()
	if err != nil {
		return translate(ctx, "lock wait cleanup", "", err)
	}
	for _, s := range snaps {
		ref := s.Ref
		err := f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
			snap, err := tx.Get(ref)
			if err != nil {
				if notFound(err) {
					return nil
				}
				return err
			}
			var d waitDoc
			if err := snap.DataTo(&d); err == nil && d.Until.Add(grace).After(snap.ReadTime) {
				return nil
			}
			return tx.Delete(ref)
		})
		if err != nil {
			return translate(ctx, "lock wait cleanup", ref.ID, err)
		}
	}
	return nil
}

// Deadlocks implements txn.Locks.
func (f *Locks) Deadlocks(ctx context.Context, limit int) ([]txn.Deadlock, error) {
	if limit <= 0 {
		limit = 100
	}
	snaps, err := f.coll("lockdeadlocks").OrderBy("time", firestore.Desc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, translate(ctx, "list deadlocks", "", err)
	}
	out := make([]txn.Deadlock, 0, len(snaps))
	for _, snap := range snaps {
		var d deadlockDoc
		if err := snap.DataTo(&d); err != nil {
			return nil, &Error{Op: "decode", Resource: "deadlock " + snap.Ref.ID, Kind: txn.ErrPermanent, Err: err}
		}
		dl := txn.Deadlock{Victim: d.Victim, Time: d.Time}
		for _, e := range d.Cycle {
			dl.Cycle = append(dl.Cycle, txn.WaitEdge(e))
		}
		out = append(out, dl)
	}
	return out, nil
}

var _ txn.Locks = (*Locks)(nil)
