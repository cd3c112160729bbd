package txn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestMemoryWakesOnlyOnRelease: waiters of a lock are not woken by
// another lock's traffic, nor by their own lock's lease being extended;
// its release wakes them, and each gets it in turn.
func TestMemoryWakesOnlyOnRelease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := NewMemory(nil)
	counts := func() (tries, walks int) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.waitTries, m.waitWalks
	}
	g, err := m.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	type result struct {
		g   Grant
		err error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			holder := fmt.Sprintf("w-%d", i)
			g, err := m.Acquire(ctx, "res", holder, time.Minute, time.Minute)
			if err == nil {
				err = m.Release(ctx, g) // the next waiter's turn
			}
			results <- result{g, err}
		}()
	}
	for {
		st, err := m.Status(ctx, "res")
		if err != nil {
			t.Fatal(err)
		}
		if _, walks := counts(); len(st.Waiters) == n && walks == n {
			break
		}
		time.Sleep(time.Millisecond)
	}

	for range 50 { // another lock's traffic
		o, err := m.Acquire(ctx, "other", "busy", time.Minute, 0)
		if err != nil {
			t.Fatal(err)
		}
		if o, err = m.Extend(ctx, o, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := m.Release(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		if g, err = m.Extend(ctx, g, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// A wake-up either is still pending or has run its attempt by now.
	m.mu.Lock()
	pending := 0
	for _, w := range m.waits {
		pending += len(w.wake)
	}
	m.mu.Unlock()
	if tries, walks := counts(); tries != 0 || walks != n || pending != 0 {
		t.Fatalf("after extends and another lock's traffic the %d waiters tried %d times and walked the graph %d times, want 0 and %d (%d wake-ups pending)",
			n, tries, walks, n, pending)
	}

	if err := m.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	last := g.Token
	tokens := map[uint64]bool{}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		if r.g.Token <= last || tokens[r.g.Token] {
			t.Fatalf("token %d after %d (seen: %v)", r.g.Token, last, tokens)
		}
		tokens[r.g.Token] = true
	}
}

// TestMemoryHandoff: a release hands the lock to the longest waiting
// holder only. When that wait ends without taking it, the lock passes on to
// the next; when its waiter never comes, the others may take it once the
// handoff window ends.
func TestMemoryHandoff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := NewMemory(nil)
	m.handoff = 300 * time.Millisecond
	// ghost is a wait whose waiter never wakes (as one whose goroutine is
	// stuck), recorded before the real waiters.
	ghost := func(holder string) *memWait {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.waitSeq++
		w := &memWait{id: m.waitSeq, resource: "res", wake: make(chan struct{}, 1)}
		m.waits[holder] = w
		return w
	}
	acquire := func(holder string, wait time.Duration) (Grant, error) {
		return m.Acquire(ctx, "res", holder, time.Minute, wait)
	}
	g, err := acquire("leader", 0)
	if err != nil {
		t.Fatal(err)
	}
	slow := ghost("slow")
	done := make(chan error, 1)
	go func() {
		g, err := acquire("next", time.Minute)
		if err == nil {
			err = m.Release(ctx, g)
		}
		done <- err
	}()
	for st, _ := m.Status(ctx, "res"); len(st.Waiters) < 2; st, _ = m.Status(ctx, "res") {
		time.Sleep(time.Millisecond)
	}

	if err := m.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	st, _ := m.Status(ctx, "res")
	var held *HeldError
	if _, err := acquire("newcomer", 0); !errors.As(err, &held) || !held.Handoff || held.Holder != "slow" || st.Next != "slow" {
		t.Fatalf("right after the release: Acquire %v, status %+v; want the lock handed to slow", err, st)
	}
	if len(slow.wake) != 1 {
		t.Fatal("the release did not wake the waiter it handed the lock to")
	}
	m.endWait("slow", slow) // slow gives up: the lock passes on to next at once
	if err := <-done; err != nil {
		t.Fatalf("next: %v", err)
	}

	// A handoff whose waiter never comes ends with the window.
	if g, err = acquire("leader", 0); err != nil {
		t.Fatal(err)
	}
	ghost("gone")
	if err := m.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := acquire("late", time.Minute); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < m.handoff/2 {
		t.Fatalf("late took the lock %v after the release, within gone's handoff window (%v)", took, m.handoff)
	}
}

// TestMemoryExpiryHandsOn: a lease that runs out with no release hands the
// lock to the longest waiter, as a release would: the first call after the
// end (here a newcomer's) names it, the expired holder's release says its
// lease ended, and a handoff that lapses passes that waiter over.
func TestMemoryExpiryHandsOn(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(nil)
	m.handoff = 200 * time.Millisecond
	g, err := m.Acquire(ctx, "res", "leader", 100*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.waitSeq++
	ghost := &memWait{id: m.waitSeq, resource: "res", wake: make(chan struct{}, 1)} // never wakes
	m.waits["ghost"] = ghost
	m.mu.Unlock()
	time.Sleep(150 * time.Millisecond) // the lease ends

	var held *HeldError
	if _, err := m.Acquire(ctx, "res", "newcomer", time.Minute, 0); !errors.As(err, &held) || !held.Handoff || held.Holder != "ghost" {
		t.Fatalf("a newcomer's Acquire after the lease ended: %v, want the lock being handed to ghost", err)
	}
	if len(ghost.wake) != 1 {
		t.Fatal("the handoff did not wake the waiter it names")
	}
	var lost *LostError
	if err := m.Release(ctx, g); !errors.As(err, &lost) || !lost.Expired {
		t.Fatalf("the expired holder's Release: %v, want its lease ended", err)
	}
	if st, _ := m.Status(ctx, "res"); st.Held || st.Next != "ghost" {
		t.Fatalf("Status: %+v, want free and handed to ghost", st)
	}
	time.Sleep(250 * time.Millisecond) // the handoff lapses
	if _, err := m.Acquire(ctx, "res", "newcomer", time.Minute, 0); err != nil {
		t.Fatalf("a newcomer's Acquire after ghost's handoff lapsed: %v", err)
	}
}
