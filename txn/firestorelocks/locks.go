package firestorelocks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sfs "github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/txn"
)

// Config says where the locks live in a Firestore database.
type Config struct {
	// Root is the document path everything is under, as syncer/firestore's
	// Config.Root ("" for the database root).
	Root string
	// MaxAttempts is how many times a transaction is tried when Firestore
	// aborts it for contention (default 20).
	MaxAttempts int
	// Logger receives deadlock reports (nil: discarded).
	Logger *slog.Logger
}

// Locks is txn.Locks on a Firestore database, shared by every sidecar that
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
type Locks struct {
	client      *firestore.Client
	root        string
	maxAttempts int
	log         *slog.Logger
	handoff     time.Duration // txn.HandoffWindow (shorter in tests)

	// What waits did: grant transactions run and skipped (see
	// fsWaitBackend.Try), graph walks, lock snapshots delivered to their
	// listeners, and deliveries handled (a wait attempted and walked as it
	// had to after them, and is waiting again, or ended).
	waitTries, waitSkips, waitWalks, lockDeliveries, deliveriesHandled atomic.Int64

	// orphans are this process's waits whose records the end of the wait
	// could not delete (holder -> wait id): they are deleted in the
	// background, and a new wait of the holder replaces one meanwhile.
	orphanMu sync.Mutex
	orphans  map[string]string
	// endHook, when set (tests), runs before a wait's end transaction; an
	// error fails that attempt.
	endHook func() error
}

// New returns locks on client under cfg.Root. It does not close the
// client.
func New(client *firestore.Client, cfg Config) (*Locks, error) {
	if cfg.Root != "" {
		parts := strings.Split(cfg.Root, "/")
		if len(parts)%2 != 0 {
			return nil, txn.Invalidf("root %q is not a document path (collection/document/...)", cfg.Root)
		}
		for _, p := range parts {
			if err := txn.ValidateName("root", p); err != nil {
				return nil, err
			}
		}
	}
	if cfg.MaxAttempts < 0 {
		return nil, txn.Invalidf("negative MaxAttempts")
	}
	f := &Locks{client: client, root: cfg.Root, maxAttempts: cfg.MaxAttempts, log: cfg.Logger, handoff: txn.HandoffWindow}
	if f.maxAttempts == 0 {
		f.maxAttempts = 20
	}
	if f.log == nil {
		f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return f, nil
}

func (f *Locks) coll(name string) *firestore.CollectionRef {
	if f.root != "" {
		return f.client.Doc(f.root).Collection(name)
	}
	return f.client.Collection(name)
}

func (f *Locks) lockRef(resource string) *firestore.DocumentRef {
	return sfs.LockRef(f.client, f.root, resource)
}
func (f *Locks) waitRef(holder string) *firestore.DocumentRef {
	return f.coll("lockwaits").Doc(holder)
}
func (f *Locks) floorRef() *firestore.DocumentRef { return f.coll("lockmeta").Doc("floor") }

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
	Since    time.Time `firestore:"since"` // the wait's start, by the store's clock: its place in the queue
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

func (s lockState) heldError() *txn.HeldError {
	return &txn.HeldError{Resource: s.doc.Resource, Holder: s.doc.Holder, Token: uint64(s.doc.Token), Expires: s.end(),
		Remaining: s.end().Sub(s.now)}
}

// handedTo returns the waiter a released lock is being handed to ("" if
// none).
func (s lockState) handedTo() string {
	if s.exists && s.doc.Holder == "" && s.doc.Next != "" && s.now.Before(s.doc.NextUntil) {
		return s.doc.Next
	}
	return ""
}

// lapsed reports whether the lock is free because a lease or a handoff ran
// out, not because it was released (to nobody).
func (s lockState) lapsed() bool {
	return s.exists && !s.held() && s.handedTo() == "" && (s.doc.Holder != "" || s.doc.Next != "")
}

// blocked returns why holder cannot take the lock: a lease runs, or the
// lock is being handed to another waiter; nil if it can.
func (s lockState) blocked(holder string) *txn.HeldError {
	if s.held() {
		return s.heldError()
	}
	if next := s.handedTo(); next != "" && next != holder {
		return &txn.HeldError{Resource: s.doc.Resource, Holder: next, Token: uint64(s.doc.Token),
			Expires: s.doc.NextUntil, Remaining: s.doc.NextUntil.Sub(s.now), Handoff: true}
	}
	return nil
}

// maxPassed bounds a lock's list of waits whose handoff lapsed.
const maxPassed = 16

// handOff sets up d, a released lock read at now, to be handed to the
// longest waiting of waits (the lock's waits, read in the same
// transaction), passing over the wait skip and those in d.Passed; with none
// left the lock is free for all. It keeps in d.Passed only the waits still
// recorded.
func (f *Locks) handOff(d *lockDoc, waits []waitDoc, now time.Time, skip string) {
	head := headOf(waits, d.Passed, now, skip)
	d.Next, d.NextWait, d.NextUntil, d.FreeAt = "", "", time.Time{}, now
	d.Passed = recorded(d.Passed, waits, now)
	if head != nil {
		d.Next, d.NextWait, d.NextUntil = head.Waiter, head.WaitID, now.Add(f.handoff)
		d.FreeAt = d.NextUntil
	}
}

// recorded returns the waits of passed that are still recorded in waits at
// now, at most maxPassed (the last ones).
func recorded(passed []string, waits []waitDoc, now time.Time) []string {
	var out []string
	for _, id := range passed {
		live := slices.ContainsFunc(waits, func(w waitDoc) bool { return w.WaitID == id && w.Until.After(now) })
		if live && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	if len(out) > maxPassed {
		out = out[len(out)-maxPassed:]
	}
	return out
}

// headOf returns the longest waiting of waits at now, passing over the wait
// skip, those in passed and those that ended; nil if none.
func headOf(waits []waitDoc, passed []string, now time.Time, skip string) *waitDoc {
	var head *waitDoc
	for i := range waits {
		w := &waits[i]
		switch {
		case !w.Until.After(now) || w.WaitID == skip || slices.Contains(passed, w.WaitID):
		case head == nil || w.Since.Before(head.Since) || w.Since.Equal(head.Since) && w.Waiter < head.Waiter:
			head = w
		}
	}
	return head
}

// turn returns whose turn it is at s.now to take s's lock, which a lease or a
// handoff left with nobody it was released to: from that end on, the waits
// in order (waits, the lock's waits) get one handoff window each, the wait
// of a lapsed handoff and those in the lock's passed waits excluded. It
// returns that wait and the end of its window, and the lock's passed waits
// with those whose window went by; nil when every wait had its turn.
func (f *Locks) turn(s lockState, waits []waitDoc) (*waitDoc, time.Time, []string) {
	end, passed := s.end(), slices.Clone(s.doc.Passed)
	if s.doc.Holder == "" { // a handoff lapsed
		end, passed = s.doc.NextUntil, append(passed, s.doc.NextWait)
	}
	for {
		head := headOf(waits, passed, s.now, "")
		if head == nil {
			return nil, time.Time{}, passed
		}
		until := end.Add(f.handoff)
		if s.now.Before(until) {
			return head, until, passed
		}
		passed, end = append(passed, head.WaitID), until // each wait once: the loop ends
	}
}

// waitsFor reads the recorded waits for resource in tx.
func (f *Locks) waitsFor(tx *firestore.Transaction, resource string) ([]waitDoc, error) {
	snaps, err := tx.Documents(f.coll("lockwaits").Where("resource", "==", resource)).GetAll()
	if err != nil {
		return nil, err
	}
	out := make([]waitDoc, 0, len(snaps))
	for _, snap := range snaps {
		var d waitDoc
		if snap.DataTo(&d) == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// Error is a failed call to the store. It matches Kind (txn.ErrUnavailable or
// txn.ErrPermanent) and Err.
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
	var held *txn.HeldError
	var lost *txn.LostError
	switch {
	case errors.As(err, &held), errors.As(err, &lost), errors.Is(err, txn.ErrInvalid):
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil:
		return &Error{Op: op, Resource: resource, Kind: txn.ErrUnavailable, Err: err}
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind := sfs.Kind(err)
	if kind != txn.ErrUnavailable {
		kind = txn.ErrPermanent
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
		return s, &Error{Op: "decode", Resource: snap.Ref.ID, Kind: txn.ErrPermanent, Err: err}
	}
	s.exists, s.start = true, snap.UpdateTime
	s.doc.Resource = snap.Ref.ID
	return s, nil
}

func (f *Locks) run(ctx context.Context, fn func(context.Context, *firestore.Transaction) error,
	opts ...firestore.TransactionOption) error {
	return f.client.RunTransaction(ctx, fn, append(opts, firestore.MaxAttempts(f.maxAttempts))...)
}
