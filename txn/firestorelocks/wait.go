package firestorelocks

import (
	"context"
	"crypto/rand"
	"slices"
	"sync"
	"time"

	"cloud.google.com/go/firestore"

	sfs "github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/txn"
)

// fsWait is one recorded wait and its listeners.
type fsWait struct {
	f                *Locks
	resource, holder string
	id               string
	wakeCh           chan struct{}
	cancel           context.CancelFunc
	wg               sync.WaitGroup
}

// startWait records holder's wait for resource and starts listening to the
// lock document and the wait's own record.
func (f *Locks) startWait(ctx context.Context, resource, holder string, wait time.Duration) (*fsWait, error) {
	holds, err := f.heldBy(ctx, holder)
	if err != nil {
		return nil, err
	}
	id := rand.Text()
	ref := f.waitRef(holder)
	err = f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		snap, err := tx.Get(ref)
		if err != nil && !notFound(err) {
			return err
		}
		if snap.Exists() {
			var d waitDoc
			if err := snap.DataTo(&d); err == nil && d.Until.After(snap.ReadTime) {
				return txn.Invalidf("holder %s is already waiting for %s", holder, d.Resource)
			}
		}
		return tx.Set(ref, waitDoc{Waiter: holder, Resource: resource, WaitID: id, Holds: holds,
			Until: snap.ReadTime.Add(wait)})
	})
	if err != nil {
		return nil, translate(ctx, "record lock wait", resource, err)
	}
	w := &fsWait{f: f, resource: resource, holder: holder, id: id, wakeCh: make(chan struct{}, 1)}
	lctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	for _, r := range []*firestore.DocumentRef{f.lockRef(resource), ref} {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			it := r.Snapshots(lctx)
			defer it.Stop()
			for {
				_, err := it.Next()
				if err != nil && lctx.Err() != nil {
					return
				}
				select { // wake the waiter without blocking: one wake-up pending is enough
				case w.wakeCh <- struct{}{}:
				default:
				}
				if err != nil {
					f.log.Warn("lock wait listener", "resource", resource, "holder", holder, "err", err)
					return
				}
			}
		}()
	}
	return w, nil
}

// stop ends the listeners and deletes the wait's record (if still this
// wait's), under a short timeout of its own: the caller's context may have
// ended.
func (w *fsWait) stop() {
	w.cancel()
	w.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ref := w.f.waitRef(w.holder)
	err := w.f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		snap, err := tx.Get(ref)
		if err != nil {
			if notFound(err) {
				return nil
			}
			return err
		}
		var d waitDoc
		if err := snap.DataTo(&d); err != nil || d.WaitID != w.id {
			return nil
		}
		return tx.Delete(ref)
	})
	if err != nil {
		w.f.log.Warn("delete lock wait record (Cleanup deletes it later)", "holder", w.holder, "err", err)
	}
}

// heldBy lists the locks holder holds now (for the wait record).
func (f *Locks) heldBy(ctx context.Context, holder string) ([]string, error) {
	snaps, err := f.coll(sfs.LockCollection).Where("holder", "==", holder).Documents(ctx).GetAll()
	if err != nil {
		return nil, translate(ctx, "list locks held", holder, err)
	}
	var out []string
	for _, snap := range snaps {
		s, err := decodeLock(snap)
		if err != nil {
			return nil, err
		}
		if s.held() {
			out = append(out, s.doc.Resource)
		}
	}
	slices.Sort(out)
	return out, nil
}

type fsWaitBackend struct {
	f     *Locks
	w     *fsWait
	lease time.Duration
}

func (b *fsWaitBackend) Try(ctx context.Context) (txn.Grant, *txn.HeldError, error) {
	return b.f.try(ctx, b.w.resource, b.w.holder, b.lease)
}

func (b *fsWaitBackend) Wake() <-chan struct{} { return b.w.wakeCh }

// View shows the graph in a read-only transaction: one consistent
// snapshot, judged at its read time.
func (b *fsWaitBackend) View(ctx context.Context, fn func(txn.WaitGraph) error) error {
	err := b.f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		return fn(fsGraph{b.f, tx})
	}, firestore.ReadOnly)
	if err != nil {
		return translate(ctx, "check lock waits", b.w.resource, err)
	}
	return nil
}

func (b *fsWaitBackend) Poke(ctx context.Context, waiter string) error {
	_, err := b.f.waitRef(waiter).Update(ctx, []firestore.Update{{Path: "pokes", Value: firestore.Increment(1)}})
	if err != nil && !notFound(err) {
		return translate(ctx, "wake lock waiter", waiter, err)
	}
	return nil
}

func (b *fsWaitBackend) Record(ctx context.Context, d txn.Deadlock) error {
	doc := deadlockDoc{Victim: d.Victim}
	for _, e := range d.Cycle {
		doc.Cycle = append(doc.Cycle, edgeDoc(e))
	}
	if _, _, err := b.f.coll("lockdeadlocks").Add(ctx, doc); err != nil {
		return translate(ctx, "record deadlock", b.w.resource, err)
	}
	return nil
}

// fsGraph reads the wait-for graph inside a read-only transaction.
type fsGraph struct {
	f  *Locks
	tx *firestore.Transaction
}

func (g fsGraph) HolderOf(resource string) (string, error) {
	s, err := getLock(g.tx, g.f.lockRef(resource))
	if err != nil || !s.held() {
		return "", err
	}
	return s.doc.Holder, nil
}

func (g fsGraph) WaitingFor(waiter string) (string, error) {
	snap, err := g.tx.Get(g.f.waitRef(waiter))
	if err != nil {
		if notFound(err) {
			return "", nil
		}
		return "", err
	}
	var d waitDoc
	if err := snap.DataTo(&d); err != nil {
		return "", &Error{Op: "decode", Resource: "wait of " + waiter, Kind: txn.ErrPermanent, Err: err}
	}
	if !d.Until.After(snap.ReadTime) {
		return "", nil // a wait whose waiter is gone
	}
	return d.Resource, nil
}
