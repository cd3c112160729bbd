package txn

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is Locks in one process's memory, for tests and for a sidecar
// without a shared store. Its clock is the local one. The zero value is not
// usable: call NewMemory.
type Memory struct {
	log     *slog.Logger
	handoff time.Duration // HandoffWindow (shorter in tests)

	mu        sync.Mutex
	locks     map[string]*memLock
	floor     uint64 // the largest token of a lock record Cleanup deleted
	waits     map[string]*memWait
	waitSeq   uint64
	deadlocks []Deadlock

	// What waits did, for tests: grant attempts after a wake-up, and graph
	// walks.
	waitTries, waitWalks int
}

type memLock struct {
	holder  string // "" when released
	token   uint64
	lease   time.Duration
	expires time.Time // lease end (when held) or release time
	// A lock released, or whose lease or handoff ran out, being handed to
	// a waiter: its holder name and wait id, until nextUntil.
	next      string
	nextWait  uint64
	nextUntil time.Time
}

// handedTo returns the waiter a released l is being handed to at now ("" if
// none).
func (l *memLock) handedTo(now time.Time) string {
	if !l.held(now) && l.next != "" && now.Before(l.nextUntil) {
		return l.next
	}
	return ""
}

// lapsed reports whether l is free at now because a lease or a handoff ran
// out, not because it was released (to nobody).
func (l *memLock) lapsed(now time.Time) bool {
	return !l.held(now) && l.handedTo(now) == "" && (l.holder != "" || l.next != "")
}

// held reports whether a lease runs at now.
func (l *memLock) held(now time.Time) bool { return l.holder != "" && now.Before(l.expires) }

type memWait struct {
	id       uint64 // waits begun later have larger ids
	resource string
	wake     chan struct{}
	poked    atomic.Bool // set by Poke, cleared by Poked
}

// NewMemory returns empty in-memory locks. log may be nil.
func NewMemory(log *slog.Logger) *Memory {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Memory{log: log, handoff: HandoffWindow, locks: map[string]*memLock{}, waits: map[string]*memWait{}}
}

// heldLocked returns the holder of resource at now ("" if free).
func (m *Memory) heldLocked(resource string, now time.Time) (*memLock, bool) {
	l := m.locks[resource]
	return l, l != nil && l.held(now)
}

// handOffLocked hands the released lock l of resource to the waiter that
// has waited longest, other than the wait skip (0: none), and wakes that
// waiter only; with none left, l is free for all. Nothing else wakes a
// waiter but a poke (see Wait): a grant or an extended lease leaves the lock
// held, a handoff keeps it from the other waiters, and their timers cover
// the ends of leases and of handoffs.
func (m *Memory) handOffLocked(resource string, l *memLock, now time.Time, skip uint64) {
	l.next, l.nextWait = "", 0
	var head *memWait
	for holder, w := range m.waits {
		if w.resource == resource && w.id != skip && (head == nil || w.id < head.id) {
			head, l.next = w, holder
		}
	}
	if head != nil {
		l.nextWait, l.nextUntil = head.id, now.Add(m.handoff)
		signal(head.wake)
	}
}

func (m *Memory) tryLocked(resource, holder string, lease time.Duration, start time.Time) (Grant, *HeldError) {
	now := time.Now()
	l, held := m.heldLocked(resource, now)
	if held {
		return Grant{}, &HeldError{Resource: resource, Holder: l.holder, Token: l.token, Expires: l.expires,
			Remaining: l.expires.Sub(now)}
	}
	if l != nil && l.lapsed(now) && l.next != holder {
		// Freed by the end of a lease or of a handoff, not by a release:
		// the lock goes to the longest waiting, as a release would hand
		// it, passing over a waiter that did not take it in time (nextWait
		// is 0 without a handoff since the last grant).
		m.handOffLocked(resource, l, now, l.nextWait)
	}
	if l != nil {
		if next := l.handedTo(now); next != "" && next != holder {
			return Grant{}, &HeldError{Resource: resource, Holder: next, Token: l.token, Expires: l.nextUntil,
				Remaining: l.nextUntil.Sub(now), Handoff: true}
		}
	}
	if l == nil {
		l = &memLock{token: m.floor}
		m.locks[resource] = l
	}
	l.holder, l.token, l.lease, l.expires = holder, l.token+1, lease, now.Add(lease)
	l.next, l.nextWait = "", 0
	return Grant{Resource: resource, Holder: holder, Token: l.token, Lease: lease, Expires: l.expires,
		Deadline: start.Add(lease)}, nil
}

// Acquire implements Locks.
func (m *Memory) Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (Grant, error) {
	lease, err := CheckAcquire(resource, holder, lease, wait)
	if err != nil {
		return Grant{}, err
	}
	if err := ctx.Err(); err != nil {
		return Grant{}, fmt.Errorf("acquire lock %s: %w: %w", resource, ErrUnavailable, err)
	}
	start := time.Now()
	m.mu.Lock()
	g, held := m.tryLocked(resource, holder, lease, start)
	if held == nil || wait == 0 {
		m.mu.Unlock()
		if held != nil {
			return Grant{}, held
		}
		return g, nil
	}
	if w := m.waits[holder]; w != nil {
		m.mu.Unlock()
		return Grant{}, Invalidf("holder %s is already waiting for %s", holder, w.resource)
	}
	m.waitSeq++
	w := &memWait{id: m.waitSeq, resource: resource, wake: make(chan struct{}, 1)}
	m.waits[holder] = w
	m.mu.Unlock()
	defer m.endWait(holder, w)
	b := &memWaitBackend{m: m, w: w, resource: resource, holder: holder, lease: lease}
	return Wait(ctx, b, m.log, holder, wait, held)
}

// endWait ends holder's wait w. A wait that ends while the lock is being
// handed to it passes the lock on.
func (m *Memory) endWait(holder string, w *memWait) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.waits[holder] == w {
		delete(m.waits, holder)
	}
	if l := m.locks[w.resource]; l != nil && l.nextWait == w.id {
		if now := time.Now(); l.handedTo(now) != "" {
			m.handOffLocked(w.resource, l, now, w.id)
		}
	}
}

type memWaitBackend struct {
	m                *Memory
	w                *memWait
	resource, holder string
	lease            time.Duration
}

// try starts the lease, and its deadline, now: a grant after a wait ends a
// lease after it, not after the Acquire call began.
func (b *memWaitBackend) Try(context.Context) (Grant, *HeldError, error) {
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	b.m.waitTries++
	g, h := b.m.tryLocked(b.resource, b.holder, b.lease, time.Now())
	return g, h, nil
}

func (b *memWaitBackend) View(_ context.Context, fn func(WaitGraph) error) error {
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	b.m.waitWalks++
	return fn(memGraph{b.m, time.Now()})
}

func (b *memWaitBackend) Poke(_ context.Context, waiter string) error {
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	if w := b.m.waits[waiter]; w != nil {
		w.poked.Store(true)
		signal(w.wake)
	}
	return nil
}

func (b *memWaitBackend) Poked() bool { return b.w.poked.Swap(false) }

func (b *memWaitBackend) Record(_ context.Context, d Deadlock) error {
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	b.m.deadlocks = append(b.m.deadlocks, d)
	return nil
}

func (b *memWaitBackend) Wake() <-chan struct{} { return b.w.wake }

// memGraph is the wait-for graph of a Memory whose mutex is held.
type memGraph struct {
	m   *Memory
	now time.Time
}

func (g memGraph) HolderOf(resource string) (string, error) {
	if l, held := g.m.heldLocked(resource, g.now); held {
		return l.holder, nil
	}
	return "", nil
}

func (g memGraph) WaitingFor(waiter string) (string, error) {
	if w := g.m.waits[waiter]; w != nil {
		return w.resource, nil
	}
	return "", nil
}

// current checks that g is the current grant of its lock.
func (m *Memory) currentLocked(op string, g Grant, now time.Time) (*memLock, error) {
	l := m.locks[g.Resource]
	switch {
	case l == nil:
		return nil, &LostError{Op: op, Grant: g, Token: m.floor}
	case l.holder != g.Holder || l.token != g.Token:
		return nil, &LostError{Op: op, Grant: g, Holder: l.holder, Token: l.token}
	case !now.Before(l.expires):
		return nil, &LostError{Op: op, Grant: g, Token: l.token, Expired: true}
	}
	return l, nil
}

// Release implements Locks.
func (m *Memory) Release(ctx context.Context, g Grant) error {
	if err := CheckGrant(g); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release lock %s: %w: %w", g.Resource, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	l, err := m.currentLocked("release", g, now)
	if err != nil {
		return err
	}
	l.holder, l.expires = "", now
	m.handOffLocked(g.Resource, l, now, 0)
	return nil
}

// Extend implements Locks.
func (m *Memory) Extend(ctx context.Context, g Grant, lease time.Duration) (Grant, error) {
	if err := CheckGrant(g); err != nil {
		return Grant{}, err
	}
	lease, err := CheckLease(lease, g.Lease)
	if err != nil {
		return Grant{}, err
	}
	if err := ctx.Err(); err != nil {
		return Grant{}, fmt.Errorf("extend lock %s: %w: %w", g.Resource, ErrUnavailable, err)
	}
	start := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := m.currentLocked("extend", g, start)
	if err != nil {
		return Grant{}, err
	}
	l.lease, l.expires = lease, start.Add(lease)
	g.Lease, g.Expires, g.Deadline = lease, l.expires, start.Add(lease)
	return g, nil
}

// Status implements Locks.
func (m *Memory) Status(ctx context.Context, resource string) (Status, error) {
	if err := ValidateName("resource", resource); err != nil {
		return Status{}, err
	}
	if err := ctx.Err(); err != nil {
		return Status{}, fmt.Errorf("lock status %s: %w: %w", resource, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	st := Status{Resource: resource}
	l, held := m.heldLocked(resource, now)
	if l != nil {
		st.Token = l.token
	}
	if held {
		st.Held, st.Holder, st.Expires, st.Remaining = true, l.holder, l.expires, l.expires.Sub(now)
	}
	if l != nil {
		st.Next = l.handedTo(now)
	}
	for waiter, w := range m.waits {
		if w.resource == resource {
			st.Waiters = append(st.Waiters, waiter)
		}
	}
	slices.Sort(st.Waiters)
	return st, nil
}

// Cleanup implements Locks. Memory has no wait records to clean: a wait's
// record goes when Acquire returns.
func (m *Memory) Cleanup(ctx context.Context, grace time.Duration) (int, error) {
	if grace < 0 {
		return 0, Invalidf("negative grace %v", grace)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("lock cleanup: %w: %w", ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cut := time.Now().Add(-grace)
	n := 0
	for r, l := range m.locks {
		if l.expires.Before(cut) && !l.nextUntil.After(cut) { // released, or expired, and any handoff ended, before the cut
			m.floor = max(m.floor, l.token)
			delete(m.locks, r)
			n++
		}
	}
	return n, nil
}

// Deadlocks implements Locks.
func (m *Memory) Deadlocks(ctx context.Context, limit int) ([]Deadlock, error) {
	if limit <= 0 {
		limit = 100
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Deadlock, 0, min(limit, len(m.deadlocks)))
	for i := len(m.deadlocks) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, m.deadlocks[i])
	}
	return out, nil
}

var _ Locks = (*Memory)(nil)
