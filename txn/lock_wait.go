package txn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// timerSlack is added to a lease's remaining time before a waiter tries
// again, so that it does not wake a moment before the store agrees the
// lease ended.
const timerSlack = 2 * time.Millisecond

// A wait retries what failed for a moment (the store unavailable: a read
// of the lock or of the graph, a poke of a deadlock's victim) after
// waitRetryMin, doubling up to waitRetryMax, rather than give up its place
// in the queue (or leave a deadlock in place) for one failed call.
const (
	waitRetryMin = 100 * time.Millisecond
	waitRetryMax = 5 * time.Second
)

// WaitBackend is what Wait needs from an implementation of Locks, for one
// recorded wait of one holder for one resource.
type WaitBackend interface {
	// Try tries to take the lock: a grant, or who holds it.
	Try(ctx context.Context) (Grant, *HeldError, error)
	// View calls fn with a consistent view of the wait-for graph.
	View(ctx context.Context, fn func(WaitGraph) error) error
	// Poke wakes waiter, so that it walks the graph again.
	Poke(ctx context.Context, waiter string) error
	// Record stores a deadlock detected.
	Record(ctx context.Context, d Deadlock) error
	// Wake is signalled when the lock or this wait's record changed.
	Wake() <-chan struct{}
	// Poked reports whether another waiter poked this one since the last
	// call, and clears it.
	Poked() bool
}

// Wait is Acquire's wait, for implementations of Locks: after held (whose
// Resource is the lock waited for) was seen, it waits until the lock is
// granted, the wait times out, ctx ends, or this wait is the victim of a
// deadlock. A wait is woken by a change of the lock or of its own wait
// record (another waiter found a cycle whose victim it is) and by a timer at
// the end of the holder's lease; it never polls.
//
// It walks the wait-for graph before it first waits, and again when it wakes
// to a new grant of the lock (another holder, or the same holder's new
// token) or was poked. Nothing else can close a cycle through it: a cycle
// needs a new edge, a new wait is walked by its own waiter once it is
// recorded, and a new grant of this lock by this lock's waiters. So a lease
// extended, a lock handed to another waiter, or a wake that finds the lock
// as it was, costs no walk.
func Wait(ctx context.Context, b WaitBackend, log *slog.Logger, holder string, wait time.Duration,
	held *HeldError) (Grant, error) {
	deadline := time.Now().Add(wait)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	poked := map[string]bool{}
	var walked *HeldError   // the grant the graph was last walked against
	var retry time.Duration // after a failure that may pass: when to try again (0: none)
	failed := func(what string, err error) error {
		if !errors.Is(err, ErrUnavailable) || ctx.Err() != nil || !time.Now().Before(deadline) {
			return err
		}
		retry = min(max(2*retry, waitRetryMin), waitRetryMax)
		log.Warn("lock wait: "+what+" failed; retrying", "resource", held.Resource, "in", retry, "err", err)
		return nil
	}
	for {
		var cycle []WaitEdge
		// A handoff is no edge of the graph: the waiter it goes to is not
		// its holder yet.
		if b.Poked() || !held.Handoff && (walked == nil || held.Holder != walked.Holder || held.Token != walked.Token) {
			err := b.View(ctx, func(g WaitGraph) error {
				var err error
				cycle, err = findCycle(g, holder, held.Resource)
				return err
			})
			switch {
			case err == nil:
				walked = held
			case failed("reading the wait-for graph", err) != nil:
				return Grant{}, err
			default:
				walked, cycle = nil, nil // walk again at the retry
			}
		}
		if cycle != nil {
			v := victim(cycle)
			d := Deadlock{Victim: v, Cycle: rotate(cycle, v), Time: time.Now()}
			if v == holder {
				log.Warn("deadlock detected", "victim", v, "cycle", d.String())
				if err := b.Record(ctx, d); err != nil {
					log.Warn("record deadlock", "victim", v, "err", err)
				}
				return Grant{}, &DeadlockError{Deadlock: d}
			}
			if !poked[v] {
				log.Info("deadlock found; waking its victim", "waiter", holder, "victim", v, "cycle", d.String())
				if err := b.Poke(ctx, v); err != nil {
					log.Warn("wake deadlock victim; walking again to retry", "victim", v, "err", err)
					retry = min(max(2*retry, waitRetryMin), waitRetryMax)
					walked = nil
				} else {
					poked[v] = true
				}
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			held.Waited = true
			return Grant{}, held
		}
		next := min(left, held.Remaining+timerSlack)
		if retry > 0 {
			next = min(next, retry)
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return Grant{}, fmt.Errorf("acquire lock %s: %w: %w", held.Resource, ErrUnavailable, ctx.Err())
		case <-b.Wake():
		case <-timer.C:
		}
		g, h, err := b.Try(ctx)
		switch {
		case err == nil && h == nil:
			return g, nil
		case err == nil:
			held = h
			if walked != nil {
				retry = 0 // nothing left to retry
			}
		case failed("trying the lock", err) != nil:
			return Grant{}, err
		}
	}
}

// signal sends on a channel of capacity 1 without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
