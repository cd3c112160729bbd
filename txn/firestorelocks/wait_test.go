package firestorelocks

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/txn"
)

// TestWaitersSkipExtends: a lease extended while others wait (as a
// connection-bound lock is, all the time) reaches every waiter through its
// listener, and costs them no transaction: no grant attempt, no graph walk.
// The release then hands the lock to each waiter in turn.
func TestWaitersSkipExtends(t *testing.T) {
	if os.Getenv("FIRESTORE_EMULATOR_HOST") == "" {
		t.Fatal("FIRESTORE_EMULATOR_HOST is not set: run through scripts/test.sh or scripts/emulator.sh run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := "tests/" + rand.Text()
	open := func() *Locks {
		c, err := firestore.NewClient(ctx, firestoretest.Project)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		l, err := New(c, Config{Root: root, MaxAttempts: 50})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	own, ws := open(), open() // the holder's sidecar, and the waiters'

	g, err := own.Acquire(ctx, "res", "leader", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	type result struct {
		g   txn.Grant
		err error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			g, err := ws.Acquire(ctx, "res", fmt.Sprintf("w-%d", i), time.Minute, time.Minute)
			if err == nil {
				err = ws.Release(ctx, g) // the next waiter's turn
			}
			results <- result{g, err}
		}()
	}
	handled := func() bool { return ws.deliveriesHandled.Load() == ws.lockDeliveries.Load() }
	eventually(t, ctx, "every waiter recorded, walked and listening", func() bool {
		st, err := own.Status(ctx, "res")
		return err == nil && len(st.Waiters) == n && ws.waitWalks.Load() >= n && ws.lockDeliveries.Load() >= n && handled()
	})
	tries, walks, delivered, skips := ws.waitTries.Load(), ws.waitWalks.Load(), ws.lockDeliveries.Load(), ws.waitSkips.Load()

	const extends = 5
	for k := 1; k <= extends; k++ {
		if g, err = own.Extend(ctx, g, time.Minute); err != nil {
			t.Fatal(err)
		}
		eventually(t, ctx, fmt.Sprintf("extension %d delivered to every waiter", k), func() bool {
			return ws.lockDeliveries.Load() >= delivered+n*int64(k)
		})
	}
	eventually(t, ctx, "every delivery handled", handled)
	if dt, dw := ws.waitTries.Load()-tries, ws.waitWalks.Load()-walks; dt != 0 || dw != 0 {
		t.Fatalf("%d extensions cost the %d waiters %d grant transactions and %d graph walks, want none", extends, n, dt, dw)
	}
	t.Logf("%d extensions: %d wake-ups without a transaction", extends, ws.waitSkips.Load()-skips)

	if err := own.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		if r.g.Token <= g.Token || seen[r.g.Token] {
			t.Fatalf("token %d after %d (seen %v)", r.g.Token, g.Token, seen)
		}
		seen[r.g.Token] = true
	}
	if ws.waitTries.Load() == tries {
		t.Fatal("the release was granted without a grant transaction")
	}
}

func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
