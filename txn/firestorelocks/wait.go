package firestorelocks

import (
	"context"
	"crypto/rand"
	"slices"
	"sync"
	"sync/atomic"
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
	until            time.Time // the record's end, at the latest, by the local clock
	wakeCh           chan struct{}
	cancel           context.CancelFunc
	wg               sync.WaitGroup

	mu     sync.Mutex
	seen   lockState   // the lock as its listener last delivered it
	seenAt time.Time   // when (local clock), zero before the first delivery
	pokes  int64       // the wait record's pokes last delivered
	poked  atomic.Bool // pokes went up since Poked last looked
	// delivered counts the lock's snapshots delivered (for tests, with
	// Locks.deliveriesHandled).
	delivered atomic.Int64
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
			if err := snap.DataTo(&d); err == nil && d.Until.After(snap.ReadTime) && !f.isOrphan(holder, d.WaitID) {
				return txn.Invalidf("holder %s is already waiting for %s", holder, d.Resource)
			}
		}
		return tx.Set(ref, waitDoc{Waiter: holder, Resource: resource, WaitID: id, Holds: holds,
			Since: snap.ReadTime, Until: snap.ReadTime.Add(wait)})
	})
	if err != nil {
		return nil, translate(ctx, "record lock wait", resource, err)
	}
	// The record ends wait after its read time by the store's clock: by
	// the local one, no later than wait from now.
	w := &fsWait{f: f, resource: resource, holder: holder, id: id, until: time.Now().Add(wait), wakeCh: make(chan struct{}, 1)}
	lctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	for i, r := range []*firestore.DocumentRef{f.lockRef(resource), ref} {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			it := r.Snapshots(lctx)
			defer it.Stop()
			for {
				snap, err := it.Next()
				if err != nil && lctx.Err() != nil {
					return
				}
				if err == nil {
					w.note(i == 0, snap)
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

// note records what a listener delivered: the lock's state, or whether the
// wait record's pokes went up.
func (w *fsWait) note(lock bool, snap *firestore.DocumentSnapshot) {
	if lock {
		s, err := decodeLock(snap)
		if err != nil {
			return // a real attempt will report it
		}
		w.f.lockDeliveries.Add(1)
		w.delivered.Add(1)
		w.mu.Lock()
		w.seen, w.seenAt = s, time.Now()
		w.mu.Unlock()
		return
	}
	var d waitDoc
	if !snap.Exists() || snap.DataTo(&d) != nil || d.WaitID != w.id {
		return
	}
	w.mu.Lock()
	if d.Pokes > w.pokes {
		w.pokes = d.Pokes
		w.poked.Store(true)
	}
	w.mu.Unlock()
}

// blockedSince returns the lock as its listener last delivered it, when
// that is at least as recent as after (a store read time) and shows the lock
// held, or being handed to another waiter, for at least skipMargin more,
// judged by the store's clock at the delivery plus the local time elapsed
// since; nil otherwise.
func (w *fsWait) blockedSince(after time.Time) *txn.HeldError {
	w.mu.Lock()
	s, at := w.seen, w.seenAt
	w.mu.Unlock()
	if at.IsZero() || s.now.Before(after) {
		return nil
	}
	h := s.blocked(w.holder)
	if h == nil {
		return nil
	}
	h.Remaining = h.Expires.Sub(s.now.Add(time.Since(at)))
	if h.Remaining < skipMargin {
		return nil
	}
	return h
}

// skipMargin is how much of a lease or handoff the lock's listener must show
// left for a wake-up to skip the grant transaction.
const skipMargin = 100 * time.Millisecond

// stop ends the listeners and deletes the wait's record (if still this
// wait's); if the lock is being handed to this wait, it passes it on. When
// that fails (the store cannot be reached), it is tried again in the
// background until it succeeds or the record ends: meanwhile the record
// would hold its place in the queue, and other waiters would give it a
// handoff window it never takes.
func (w *fsWait) stop() {
	w.cancel()
	w.wg.Wait()
	if err := w.end(); err != nil {
		w.f.log.Warn("delete lock wait record; retrying in the background", "holder", w.holder, "resource", w.resource, "err", err)
		w.f.orphan(w)
	}
}

// endRetryMin and endRetryMax space the background attempts to delete an
// orphaned wait record, and endRetryFor bounds them (Cleanup deletes a
// record left longer, once it has ended): a store unreachable for that long,
// or a closed client, does not keep a goroutine for a day-long wait.
const (
	endRetryMin = 250 * time.Millisecond
	endRetryMax = 30 * time.Second
	endRetryFor = 10 * time.Minute
)

// orphan retries w's end in the background until it succeeds or w's record
// has ended; meanwhile a new wait of w's holder may replace the record.
func (f *Locks) orphan(w *fsWait) {
	f.orphanMu.Lock()
	if f.orphans == nil {
		f.orphans = make(map[string]string)
	}
	f.orphans[w.holder] = w.id
	f.orphanMu.Unlock()
	go func() {
		defer func() {
			f.orphanMu.Lock()
			if f.orphans[w.holder] == w.id {
				delete(f.orphans, w.holder)
			}
			f.orphanMu.Unlock()
		}()
		start := time.Now()
		for delay := endRetryMin; ; delay = min(2*delay, endRetryMax) {
			time.Sleep(delay)
			if time.Now().After(w.until.Add(f.handoff)) {
				return // ended: no waiter counts it, and a handoff to it has lapsed
			}
			if time.Since(start) > endRetryFor {
				f.log.Warn("lock wait record left (Cleanup deletes it once it has ended)", "holder", w.holder, "resource", w.resource)
				return
			}
			if err := w.end(); err == nil {
				return
			}
		}
	}()
}

// isOrphan reports whether wait id of holder is one of this process's
// waits whose record is being deleted in the background.
func (f *Locks) isOrphan(holder, id string) bool {
	f.orphanMu.Lock()
	defer f.orphanMu.Unlock()
	return f.orphans[holder] == id
}

// end deletes w's record (if still w's) and passes on a handoff to w, under
// a short timeout of its own: the caller's context may have ended.
func (w *fsWait) end() error {
	if w.f.endHook != nil {
		if err := w.f.endHook(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ref, lref := w.f.waitRef(w.holder), w.f.lockRef(w.resource)
	return w.f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		snap, err := tx.Get(ref)
		if err != nil && !notFound(err) {
			return err
		}
		var d waitDoc
		mine := snap.Exists() && snap.DataTo(&d) == nil && d.WaitID == w.id
		s, err := getLock(tx, lref)
		if err != nil {
			return err
		}
		var pass *lockDoc
		if s.handedTo() != "" && s.doc.NextWait == w.id {
			waits, err := w.f.waitsFor(tx, w.resource)
			if err != nil {
				return err
			}
			pass = &s.doc
			w.f.handOff(pass, waits, s.now, w.id)
		}
		if mine {
			if err := tx.Delete(ref); err != nil {
				return err
			}
		}
		if pass != nil {
			return tx.Set(lref, *pass)
		}
		return nil
	})
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
	read  time.Time // the read time of the last grant transaction
	// tried is how many lock snapshots had been delivered when Try last
	// ran; counted is how many of them Wake counted as handled.
	tried, counted int64
}

// Try runs the grant transaction, unless the lock's listener has shown the
// lock held, or handed to another waiter, since that transaction last ran
// (a new holder or token, an extended lease, a release): a wake-up on such a
// change would only read the lock again, in a transaction that contends
// with its holder's. The listener's next delivery, or the end of the lease
// or handoff, wakes the wait again.
func (b *fsWaitBackend) Try(ctx context.Context) (txn.Grant, *txn.HeldError, error) {
	b.tried = b.w.delivered.Load()
	if h := b.w.blockedSince(b.read); h != nil {
		b.f.waitSkips.Add(1)
		return txn.Grant{}, h, nil
	}
	b.f.waitTries.Add(1)
	g, h, err := b.f.try(ctx, b.w.resource, b.w.holder, b.w.id, b.lease)
	if h != nil {
		b.read = h.Expires.Add(-h.Remaining)
	}
	return g, h, err
}

// stop ends the wait; every lock snapshot its listener delivered counts as
// handled.
func (b *fsWaitBackend) stop() {
	b.w.stop()
	b.f.deliveriesHandled.Add(b.w.delivered.Load() - b.counted)
}

func (b *fsWaitBackend) Poked() bool { return b.w.poked.Swap(false) }

// Wake is called each time Wait is about to wait: the deliveries seen by the
// last Try have then been handled, the walk that followed it included.
func (b *fsWaitBackend) Wake() <-chan struct{} {
	if b.tried > b.counted {
		b.f.deliveriesHandled.Add(b.tried - b.counted)
		b.counted = b.tried
	}
	return b.w.wakeCh
}

// View shows the graph in a read-only transaction: one consistent
// snapshot, judged at its read time.
func (b *fsWaitBackend) View(ctx context.Context, fn func(txn.WaitGraph) error) error {
	b.f.waitWalks.Add(1)
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
