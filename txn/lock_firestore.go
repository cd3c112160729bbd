package txn

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sfs "github.com/tai-state/tai-state/syncer/firestore"
)

// FirestoreConfig says where the locks live in a Firestore database.
type FirestoreConfig struct {
	// Root is the document path everything is under, as syncer/firestore's
	// Config.Root ("" for the database root).
	Root string
	// MaxAttempts is how many times a transaction is tried when Firestore
	// aborts it for contention (default 20).
	MaxAttempts int
	// Logger receives deadlock reports (nil: discarded).
	Logger *slog.Logger
}

// Firestore is Locks on a Firestore database, shared by every sidecar that
// uses the same database and root. Layout:
//
//	{root}/locks/{resource}        holder, last token, lease; the lease runs from the document's update time
//	{root}/lockmeta/floor          the largest token of a lock document Cleanup deleted
//	{root}/lockwaits/{holder}      a wait: the resource waited for, the locks held, until when
//	{root}/lockdeadlocks/{id}      a deadlock detected: victim and cycle
//
// Leases are judged by Firestore's clock only: a lease starts at the commit
// time of the write that granted or extended it (the document's update
// time) and is compared with the read time of a transaction's read, so
// sidecars' clocks may disagree. See docs/decisions/0010-locks.md.
type Firestore struct {
	client      *firestore.Client
	root        string
	maxAttempts int
	log         *slog.Logger
}

// NewFirestore returns Locks on client under cfg.Root. It does not close
// the client.
func NewFirestore(client *firestore.Client, cfg FirestoreConfig) (*Firestore, error) {
	if cfg.Root != "" {
		parts := strings.Split(cfg.Root, "/")
		if len(parts)%2 != 0 {
			return nil, invalid("root %q is not a document path (collection/document/...)", cfg.Root)
		}
		for _, p := range parts {
			if err := ValidateName("root", p); err != nil {
				return nil, err
			}
		}
	}
	if cfg.MaxAttempts < 0 {
		return nil, invalid("negative MaxAttempts")
	}
	f := &Firestore{client: client, root: cfg.Root, maxAttempts: cfg.MaxAttempts, log: cfg.Logger}
	if f.maxAttempts == 0 {
		f.maxAttempts = 20
	}
	if f.log == nil {
		f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return f, nil
}

func (f *Firestore) coll(name string) *firestore.CollectionRef {
	if f.root != "" {
		return f.client.Doc(f.root).Collection(name)
	}
	return f.client.Collection(name)
}

func (f *Firestore) lockRef(resource string) *firestore.DocumentRef {
	return sfs.LockRef(f.client, f.root, resource)
}
func (f *Firestore) waitRef(holder string) *firestore.DocumentRef {
	return f.coll("lockwaits").Doc(holder)
}
func (f *Firestore) floorRef() *firestore.DocumentRef { return f.coll("lockmeta").Doc("floor") }

// lockDoc is a lock document; its layout is shared with the fence check of
// syncer/firestore's Commit, which reads the token.
type lockDoc = sfs.LockDoc

type floorDoc struct {
	Token int64 `firestore:"token"`
}

type waitDoc struct {
	Waiter   string    `firestore:"waiter"`
	Resource string    `firestore:"resource"`
	WaitID   string    `firestore:"wait_id"`
	Holds    []string  `firestore:"holds"`
	Until    time.Time `firestore:"until"` // the wait's end, by the store's clock
	Pokes    int64     `firestore:"pokes"` // bumped to wake the waiter
}

type edgeDoc struct {
	Waiter   string `firestore:"waiter"`
	Resource string `firestore:"resource"`
	Holder   string `firestore:"holder"`
}

type deadlockDoc struct {
	Victim string    `firestore:"victim"`
	Cycle  []edgeDoc `firestore:"cycle"`
	Time   time.Time `firestore:"time,serverTimestamp"`
}

// lockState is a lock document read at a time.
type lockState struct {
	exists bool
	doc    lockDoc
	start  time.Time // the document's update time
	now    time.Time // the read time
}

func (s lockState) end() time.Time {
	return s.start.Add(time.Duration(s.doc.LeaseMS) * time.Millisecond)
}

func (s lockState) held() bool { return s.exists && s.doc.Holder != "" && s.now.Before(s.end()) }

func (s lockState) heldError() *HeldError {
	return &HeldError{Resource: s.doc.Resource, Holder: s.doc.Holder, Token: uint64(s.doc.Token), Expires: s.end(),
		Remaining: s.end().Sub(s.now)}
}

// Error is a failed call to the store. It matches Kind (ErrUnavailable or
// ErrPermanent) and Err.
type Error struct {
	Op       string
	Resource string
	Kind     error
	Err      error
}

func (e *Error) Error() string {
	s := e.Op
	if e.Resource != "" {
		s += " " + e.Resource
	}
	return s + ": " + e.Kind.Error() + ": " + e.Err.Error()
}

// Unwrap returns Kind and the cause.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// translate maps an error of the client library to ours, and passes ours
// (returned from inside a transaction) through.
func translate(ctx context.Context, op, resource string, err error) error {
	var held *HeldError
	var lost *LostError
	switch {
	case errors.As(err, &held), errors.As(err, &lost), errors.Is(err, ErrInvalid):
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil:
		return &Error{Op: op, Resource: resource, Kind: ErrUnavailable, Err: err}
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind := sfs.Kind(err)
	if kind != ErrUnavailable {
		kind = ErrPermanent
	}
	return &Error{Op: op, Resource: resource, Kind: kind, Err: err}
}

func notFound(err error) bool { return status.Code(err) == codes.NotFound }

// getLock reads a lock document in tx.
func getLock(tx *firestore.Transaction, ref *firestore.DocumentRef) (lockState, error) {
	snap, err := tx.Get(ref)
	if err != nil && !notFound(err) {
		return lockState{}, err
	}
	return decodeLock(snap)
}

func decodeLock(snap *firestore.DocumentSnapshot) (lockState, error) {
	s := lockState{now: snap.ReadTime}
	if !snap.Exists() {
		return s, nil
	}
	if err := snap.DataTo(&s.doc); err != nil {
		return s, &Error{Op: "decode", Resource: snap.Ref.ID, Kind: ErrPermanent, Err: err}
	}
	s.exists, s.start = true, snap.UpdateTime
	s.doc.Resource = snap.Ref.ID
	return s, nil
}

func (f *Firestore) run(ctx context.Context, fn func(context.Context, *firestore.Transaction) error,
	opts ...firestore.TransactionOption) error {
	return f.client.RunTransaction(ctx, fn, append(opts, firestore.MaxAttempts(f.maxAttempts))...)
}

// try takes the lock if it is free; otherwise it returns who holds it. The
// grant's deadline counts from the start of the transaction attempt that
// grants it (attempts that Firestore aborts, and their backoff, may take
// seconds before it): the lease starts at that attempt's commit.
func (f *Firestore) try(ctx context.Context, resource, holder string, lease time.Duration) (Grant, *HeldError, error) {
	ref := f.lockRef(resource)
	var g Grant
	var held *HeldError
	err := f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		start := time.Now()
		g, held = Grant{}, nil
		s, err := getLock(tx, ref)
		if err != nil {
			return err
		}
		if s.held() {
			held = s.heldError()
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
					return &Error{Op: "decode", Resource: "lock floor", Kind: ErrPermanent, Err: err}
				}
			}
			last = fl.Token
		}
		d := lockDoc{Resource: resource, Holder: holder, Token: last + 1, LeaseMS: lease.Milliseconds(),
			FreeAt: s.now.Add(lease)}
		g = Grant{Resource: resource, Holder: holder, Token: uint64(d.Token), Lease: lease, Expires: d.FreeAt,
			Deadline: start.Add(lease)}
		return tx.Set(ref, d)
	})
	if err != nil {
		return Grant{}, nil, translate(ctx, "acquire lock", resource, err)
	}
	return g, held, nil
}

// Acquire implements Locks.
func (f *Firestore) Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (Grant, error) {
	lease, err := checkAcquire(resource, holder, lease, wait)
	if err != nil {
		return Grant{}, err
	}
	g, held, err := f.try(ctx, resource, holder, lease)
	if err != nil || held == nil {
		return g, err
	}
	if wait == 0 {
		return Grant{}, held
	}
	w, err := f.startWait(ctx, resource, holder, wait)
	if err != nil {
		return Grant{}, err
	}
	defer w.stop()
	b := &fsWaitBackend{f: f, w: w, lease: lease}
	return waitLoop(ctx, b, f.log, holder, wait, held)
}

// fsWait is one recorded wait and its listeners.
type fsWait struct {
	f                *Firestore
	resource, holder string
	id               string
	wakeCh           chan struct{}
	cancel           context.CancelFunc
	wg               sync.WaitGroup
}

// startWait records holder's wait for resource and starts listening to the
// lock document and the wait's own record.
func (f *Firestore) startWait(ctx context.Context, resource, holder string, wait time.Duration) (*fsWait, error) {
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
				return invalid("holder %s is already waiting for %s", holder, d.Resource)
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
				if _, err := it.Next(); err != nil {
					if lctx.Err() == nil {
						f.log.Warn("lock wait listener", "resource", resource, "holder", holder, "err", err)
						signal(w.wakeCh)
					}
					return
				}
				signal(w.wakeCh)
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
func (f *Firestore) heldBy(ctx context.Context, holder string) ([]string, error) {
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
	f     *Firestore
	w     *fsWait
	lease time.Duration
}

func (b *fsWaitBackend) try(ctx context.Context) (Grant, *HeldError, error) {
	return b.f.try(ctx, b.w.resource, b.w.holder, b.lease)
}

func (b *fsWaitBackend) wake() <-chan struct{} { return b.w.wakeCh }

// cycle walks the graph in a read-only transaction: one consistent
// snapshot, judged at its read time.
func (b *fsWaitBackend) cycle(ctx context.Context) ([]WaitEdge, error) {
	var cycle []WaitEdge
	err := b.f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		var err error
		cycle, err = findCycle(fsGraph{b.f, tx}, b.w.holder, b.w.resource)
		return err
	}, firestore.ReadOnly)
	if err != nil {
		return nil, translate(ctx, "check lock waits", b.w.resource, err)
	}
	return cycle, nil
}

func (b *fsWaitBackend) poke(ctx context.Context, waiter string) error {
	_, err := b.f.waitRef(waiter).Update(ctx, []firestore.Update{{Path: "pokes", Value: firestore.Increment(1)}})
	if err != nil && !notFound(err) {
		return translate(ctx, "wake lock waiter", waiter, err)
	}
	return nil
}

func (b *fsWaitBackend) record(ctx context.Context, d Deadlock) error {
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
	f  *Firestore
	tx *firestore.Transaction
}

func (g fsGraph) holderOf(resource string) (string, error) {
	s, err := getLock(g.tx, g.f.lockRef(resource))
	if err != nil || !s.held() {
		return "", err
	}
	return s.doc.Holder, nil
}

func (g fsGraph) waitingFor(waiter string) (string, error) {
	snap, err := g.tx.Get(g.f.waitRef(waiter))
	if err != nil {
		if notFound(err) {
			return "", nil
		}
		return "", err
	}
	var d waitDoc
	if err := snap.DataTo(&d); err != nil {
		return "", &Error{Op: "decode", Resource: "wait of " + waiter, Kind: ErrPermanent, Err: err}
	}
	if !d.Until.After(snap.ReadTime) {
		return "", nil // a wait whose waiter is gone
	}
	return d.Resource, nil
}

// current reads g's lock in tx and checks that g is its current grant.
func (f *Firestore) current(tx *firestore.Transaction, op string, g Grant) (lockState, error) {
	s, err := getLock(tx, f.lockRef(g.Resource))
	if err != nil {
		return s, err
	}
	switch {
	case !s.exists:
		return s, &LostError{Op: op, Grant: g}
	case s.doc.Holder != g.Holder || uint64(s.doc.Token) != g.Token:
		return s, &LostError{Op: op, Grant: g, Holder: s.doc.Holder, Token: uint64(s.doc.Token)}
	case !s.held():
		return s, &LostError{Op: op, Grant: g, Token: uint64(s.doc.Token), Expired: true}
	}
	return s, nil
}

// Release implements Locks. The document stays, free, so the token
// survives; Cleanup deletes it later.
func (f *Firestore) Release(ctx context.Context, g Grant) error {
	if err := checkGrant(g); err != nil {
		return err
	}
	err := f.run(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		s, err := f.current(tx, "release", g)
		if err != nil {
			return err
		}
		d := s.doc
		d.Holder, d.FreeAt = "", s.now
		return tx.Set(f.lockRef(g.Resource), d)
	})
	if err != nil {
		return translate(ctx, "release lock", g.Resource, err)
	}
	return nil
}

// Extend implements Locks. The write restarts the lease at its commit time;
// the deadline counts from the start of the attempt that commits (as in
// try).
func (f *Firestore) Extend(ctx context.Context, g Grant, lease time.Duration) (Grant, error) {
	if err := checkGrant(g); err != nil {
		return Grant{}, err
	}
	lease, err := checkLease(lease, g.Lease)
	if err != nil {
		return Grant{}, err
	}
	var out Grant
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
		return Grant{}, translate(ctx, "extend lock", g.Resource, err)
	}
	return out, nil
}

// Status implements Locks.
func (f *Firestore) Status(ctx context.Context, resource string) (Status, error) {
	if err := ValidateName("resource", resource); err != nil {
		return Status{}, err
	}
	snap, err := f.lockRef(resource).Get(ctx)
	if err != nil && !notFound(err) {
		return Status{}, translate(ctx, "lock status", resource, err)
	}
	s, err := decodeLock(snap)
	if err != nil {
		return Status{}, err
	}
	st := Status{Resource: resource, Token: uint64(s.doc.Token)}
	if s.held() {
		st.Held, st.Holder, st.Expires, st.Remaining = true, s.doc.Holder, s.end(), s.end().Sub(s.now)
	}
	waits, err := f.coll("lockwaits").Where("resource", "==", resource).Documents(ctx).GetAll()
	if err != nil {
		return Status{}, translate(ctx, "lock status", resource, err)
	}
	for _, snap := range waits {
		var d waitDoc
		if snap.DataTo(&d) == nil && d.Until.After(snap.ReadTime) {
			st.Waiters = append(st.Waiters, d.Waiter)
		}
	}
	slices.Sort(st.Waiters)
	return st, nil
}

// cleanupBatch is how many documents one Cleanup transaction deletes.
const cleanupBatch = 200

// Cleanup implements Locks. Candidates are found by a query on free_at
// against the local clock less grace, and each is deleted only if the
// store's clock, in the deleting transaction, agrees it has been free for
// grace. The floor document keeps the largest token deleted, and a lock
// document made again starts above it.
func (f *Firestore) Cleanup(ctx context.Context, grace time.Duration) (int, error) {
	if grace < 0 {
		return 0, invalid("negative grace %v", grace)
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
						return &Error{Op: "decode", Resource: "lock floor", Kind: ErrPermanent, Err: err}
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
func (f *Firestore) cleanupWaits(ctx context.Context, grace time.Duration) error {
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

// Deadlocks implements Locks.
func (f *Firestore) Deadlocks(ctx context.Context, limit int) ([]Deadlock, error) {
	if limit <= 0 {
		limit = 100
	}
	snaps, err := f.coll("lockdeadlocks").OrderBy("time", firestore.Desc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, translate(ctx, "list deadlocks", "", err)
	}
	out := make([]Deadlock, 0, len(snaps))
	for _, snap := range snaps {
		var d deadlockDoc
		if err := snap.DataTo(&d); err != nil {
			return nil, &Error{Op: "decode", Resource: "deadlock " + snap.Ref.ID, Kind: ErrPermanent, Err: err}
		}
		dl := Deadlock{Victim: d.Victim, Time: d.Time}
		for _, e := range d.Cycle {
			dl.Cycle = append(dl.Cycle, WaitEdge(e))
		}
		out = append(out, dl)
	}
	return out, nil
}

var _ Locks = (*Firestore)(nil)
