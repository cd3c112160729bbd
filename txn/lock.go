package txn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// DefaultLease is the lease of a grant when Acquire is given none.
const DefaultLease = 30 * time.Second

// MaxLease is the longest lease (and the longest wait) Acquire and Extend
// accept.
const MaxLease = 24 * time.Hour

// HandoffWindow is how long a released lock is kept for the waiter it is
// handed to (see Locks). A live waiter takes it within a round trip to the
// store; the window only matters when that waiter is gone without having
// ended its wait (its sidecar died): then the lock is free for all when the
// window ends, and later releases pass that waiter over.
const HandoffWindow = 3 * time.Second

// maxHops bounds a walk of the wait-for graph: a longer chain is not
// followed further (and reported as no cycle).
const maxHops = 64

// Locks is a service of leased, fenced, exclusive locks on named resources,
// shared by every sidecar of a deployment. Implementations: NewMemory (one
// process) and txn/firestorelocks.New (every sidecar on one Firestore
// database). All methods are safe for concurrent use.
//
// A holder is the identity of one thread of control (a connection, a
// session): it waits for at most one resource at a time, and locks are not
// re-entrant (a holder acquiring a lock it holds gets ErrLockHeld, or
// ErrDeadlock when it would wait).
//
// Errors, tested with errors.Is: ErrInvalid (bad names or durations),
// ErrLockHeld (*HeldError), ErrLockLost (*LostError), ErrTimeout (with
// ErrLockHeld: the wait ended), ErrDeadlock (*DeadlockError), ErrUnavailable
// (the shared store is unreachable or the context ended: the call may or may
// not have taken effect), ErrPermanent (the store refused the request).
//
// Waiters are served in the order they began to wait. Release hands the
// lock to the holder that has waited longest: for HandoffWindow nobody else
// can take it (Acquire fails with a *HeldError whose Handoff is set), and
// only that waiter is woken, so a release costs one grant however many
// wait. A lock whose lease runs out without a release goes to whichever
// waiter takes it first.
type Locks interface {
	// Acquire grants resource to holder for lease (0: DefaultLease). If
	// another holder has it, Acquire fails with a *HeldError at once when
	// wait is 0, or waits up to wait for it to be released or expire, and
	// then fails with a *HeldError matching ErrTimeout too. While it waits,
	// the wait is recorded; if the wait closes a cycle of waits, the cycle's
	// member with the greatest holder id fails with a *DeadlockError (it
	// keeps the locks it holds: its caller should release them).
	Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (Grant, error)
	// Release gives g's lock up. It fails with a *LostError if g is no
	// longer current: its lease ended, or the lock was taken by another
	// grant since.
	Release(ctx context.Context, g Grant) error
	// Extend starts a new lease (0: g's lease) on g's lock, from the time
	// the store commits it, and returns the grant with the new lease. It
	// fails with a *LostError if g is no longer current.
	Extend(ctx context.Context, g Grant, lease time.Duration) (Grant, error)
	// Status describes resource's lock.
	Status(ctx context.Context, resource string) (Status, error)
	// Cleanup deletes the records of locks that have been free (released or
	// expired) for longer than grace, and of waits that ended longer than
	// grace ago, and returns how many lock records it deleted. Fencing
	// tokens survive: a resource's next grant still gets a larger token.
	Cleanup(ctx context.Context, grace time.Duration) (int, error)
	// Deadlocks returns the most recent deadlocks detected, newest first, at
	// most limit (0: 100).
	Deadlocks(ctx context.Context, limit int) ([]Deadlock, error)
}

// Grant is a lock held: the fencing token identifies it.
type Grant struct {
	Resource string
	Holder   string
	// Token is the fencing token: larger than every token granted on
	// Resource before. Writes made under the lock carry it so the store can
	// reject an older holder's writes.
	Token uint64
	// Lease is the length of the lease.
	Lease time.Duration
	// Expires is when the lease ends by the store's clock, as closely as
	// the store tells it (never later than the real end).
	Expires time.Time
	// Deadline is when the holder must stop relying on the lock, by the
	// local clock: the time the request was sent plus Lease, which is never
	// after the lease's real end if clocks run at the same rate.
	Deadline time.Time
}

// Fence is what a write under the lock carries.
func (g Grant) Fence() Fence { return Fence{Resource: g.Resource, Token: g.Token} }

// Fence names a grant in a write: the write is valid only while Token is
// the current grant of Resource.
type Fence struct {
	Resource string
	Token    uint64
}

// Status is the state of one resource's lock.
type Status struct {
	Resource string
	// Held is whether a lease is running.
	Held bool
	// Holder, Expires and Remaining describe the lease when Held.
	Holder    string
	Expires   time.Time
	Remaining time.Duration
	// Token is the last token granted (0 if the store has no record of the
	// lock).
	Token uint64
	// Waiters are the holders waiting for the lock, sorted.
	Waiters []string
	// Next is the waiter a released lock is being handed to ("" if none);
	// Held is then false.
	Next string
}

// WaitEdge is one step of the wait-for graph: Waiter waits for Resource,
// which Holder holds.
type WaitEdge struct {
	Waiter   string
	Resource string
	Holder   string
}

// Deadlock is a cycle of waits found, and the waiter that gave up to break
// it.
type Deadlock struct {
	Victim string
	Cycle  []WaitEdge
	// Time is when it was detected.
	Time time.Time
}

func (d Deadlock) String() string {
	parts := make([]string, len(d.Cycle))
	for i, e := range d.Cycle {
		parts[i] = fmt.Sprintf("%s waits for %s held by %s", e.Waiter, e.Resource, e.Holder)
	}
	return fmt.Sprintf("victim %s: %s", d.Victim, strings.Join(parts, "; "))
}

// Errors of Locks; test with errors.Is.
var (
	// ErrLockHeld: another holder (or the caller itself) holds the lock.
	ErrLockHeld = errors.New("lock held")
	// ErrLockLost: the grant is not current: its lease ended or another
	// grant took the lock.
	ErrLockLost = errors.New("lock lost")
	// ErrTimeout: a wait ended before the lock was free.
	ErrTimeout = errors.New("lock wait timed out")
	// ErrDeadlock: the wait closed a cycle of waits and was chosen to end.
	ErrDeadlock = errors.New("deadlock detected")
	// ErrInvalid: a bad resource or holder name, lease or wait.
	ErrInvalid = errors.New("invalid lock request")
	// ErrUnavailable is syncer's: the store is unreachable, contended or the
	// context ended; the call may have taken effect.
	ErrUnavailable = syncer.ErrUnavailable
	// ErrPermanent is syncer's: the store refused the request.
	ErrPermanent = syncer.ErrPermanent
)

// HeldError says who holds a lock. It matches ErrLockHeld, and ErrTimeout
// when Waited.
type HeldError struct {
	Resource  string
	Holder    string
	Token     uint64
	Expires   time.Time     // by the store's clock
	Remaining time.Duration // of the lease, when last seen
	Waited    bool          // the caller waited for it
	// Handoff: the lock was released and is being handed to Holder, a
	// waiter that has waited longer; Expires and Remaining are the end of
	// its HandoffWindow, and Token the last token granted.
	Handoff bool
}

func (e *HeldError) Error() string {
	verb := "held by"
	if e.Handoff {
		verb = "being handed to waiter"
	}
	s := fmt.Sprintf("lock %s: %s %s (token %d) for %s more", e.Resource, verb, e.Holder, e.Token,
		e.Remaining.Round(time.Millisecond))
	if e.Waited {
		s += ": " + ErrTimeout.Error()
	}
	return s
}

// Unwrap makes errors.Is see ErrLockHeld and, when Waited, ErrTimeout.
func (e *HeldError) Unwrap() []error {
	if e.Waited {
		return []error{ErrLockHeld, ErrTimeout}
	}
	return []error{ErrLockHeld}
}

// LostError says a grant is no longer current. It matches ErrLockLost.
type LostError struct {
	Op    string // "release" or "extend"
	Grant Grant
	// Holder and Token are the lock's current holder ("" if free) and last
	// token granted.
	Holder string
	Token  uint64
	// Expired is whether g's lease ended with no other grant since.
	Expired bool
}

func (e *LostError) Error() string {
	g := e.Grant
	switch {
	case e.Expired:
		return fmt.Sprintf("%s lock %s: grant %d of %s: lease ended: %v", e.Op, g.Resource, g.Token, g.Holder, ErrLockLost)
	case e.Holder == "":
		return fmt.Sprintf("%s lock %s: grant %d of %s: lock is free (last token %d): %v", e.Op, g.Resource, g.Token,
			g.Holder, e.Token, ErrLockLost)
	}
	return fmt.Sprintf("%s lock %s: grant %d of %s: now held by %s with token %d: %v", e.Op, g.Resource, g.Token,
		g.Holder, e.Holder, e.Token, ErrLockLost)
}

// Unwrap makes errors.Is(err, ErrLockLost) hold.
func (e *LostError) Unwrap() error { return ErrLockLost }

// DeadlockError is returned to the waiter chosen to break a cycle. It
// matches ErrDeadlock.
type DeadlockError struct {
	Deadlock
}

func (e *DeadlockError) Error() string { return ErrDeadlock.Error() + ": " + e.Deadlock.String() }

// Unwrap makes errors.Is(err, ErrDeadlock) hold.
func (e *DeadlockError) Unwrap() error { return ErrDeadlock }

// Invalidf returns an error matching ErrInvalid, described by format and
// args, for an implementation of Locks rejecting a request.
func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ValidateName checks a resource or holder name: a Firestore document id.
func ValidateName(kind, s string) error {
	if err := syncer.ValidateName(kind, s); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// CheckAcquire validates Acquire's arguments and returns the lease to
// grant: implementations of Locks call it first.
func CheckAcquire(resource, holder string, lease, wait time.Duration) (time.Duration, error) {
	if err := ValidateName("resource", resource); err != nil {
		return 0, err
	}
	if err := ValidateName("holder", holder); err != nil {
		return 0, err
	}
	if wait < 0 || wait > MaxLease {
		return 0, Invalidf("wait %v is not within [0, %v]", wait, MaxLease)
	}
	return CheckLease(lease, DefaultLease)
}

// CheckLease validates a lease (0 means def) and returns it rounded up to a
// millisecond.
func CheckLease(lease, def time.Duration) (time.Duration, error) {
	if lease == 0 {
		lease = def
	}
	if lease < time.Millisecond || lease > MaxLease {
		return 0, Invalidf("lease %v is not within [1ms, %v]", lease, MaxLease)
	}
	return (lease + time.Millisecond - 1).Truncate(time.Millisecond), nil
}

// CheckGrant validates a grant given to Release or Extend.
func CheckGrant(g Grant) error {
	if err := ValidateName("resource", g.Resource); err != nil {
		return err
	}
	if err := ValidateName("holder", g.Holder); err != nil {
		return err
	}
	if g.Token == 0 {
		return Invalidf("grant of %s has no token", g.Resource)
	}
	return nil
}

// WaitGraph is a consistent view of the wait-for graph (one snapshot of the
// store), which Wait walks through a WaitBackend.
type WaitGraph interface {
	// HolderOf returns who holds resource now ("" if free).
	HolderOf(resource string) (string, error)
	// WaitingFor returns what waiter is waiting for now ("" if nothing).
	WaitingFor(waiter string) (string, error)
}

// findCycle follows the wait-for graph from waiter, who waits for
// resource: resource's holder, what that holder waits for, its holder, and
// so on. It returns the edges of the cycle back to waiter, or nil if there
// is none through waiter.
func findCycle(g WaitGraph, waiter, resource string) ([]WaitEdge, error) {
	var edges []WaitEdge
	seen := map[string]bool{waiter: true}
	w, r := waiter, resource
	for range maxHops {
		h, err := g.HolderOf(r)
		if err != nil || h == "" {
			return nil, err
		}
		edges = append(edges, WaitEdge{Waiter: w, Resource: r, Holder: h})
		if h == waiter {
			return edges, nil
		}
		if seen[h] {
			return nil, nil // a cycle that waiter is not on: its members find it
		}
		seen[h] = true
		next, err := g.WaitingFor(h)
		if err != nil || next == "" {
			return nil, err
		}
		w, r = h, next
	}
	return nil, nil
}

// victim is the deterministic choice of the waiter that gives up: the
// greatest waiter id of the cycle.
func victim(cycle []WaitEdge) string {
	v := ""
	for _, e := range cycle {
		v = max(v, e.Waiter)
	}
	return v
}

// rotate puts the victim's edge first, so every member reports a cycle the
// same way.
func rotate(cycle []WaitEdge, v string) []WaitEdge {
	i := slices.IndexFunc(cycle, func(e WaitEdge) bool { return e.Waiter == v })
	if i <= 0 {
		return cycle
	}
	return append(slices.Clone(cycle[i:]), cycle[:i]...)
}
