package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/txn/firestorelocks"
)

// TestFencedWrites: two real sidecars on one Firestore root; the test
// process takes the locks itself, with txn/firestorelocks on the same
// root. Holder A writes under its grant through sidecar 1, pauses past its
// lease, and B takes the lock and writes through sidecar 2. A's late write
// through sidecar 1, which has not seen B's grant, is accepted there and
// rejected inside the Firestore commit: it is on sidecar 1's failed list,
// Firestore keeps B's value, and sidecar 1's copy follows it. A sync write
// under A's fence fails with FenceRejected; once sidecar 1 has seen B's
// token, A's writes are rejected at once.
func TestFencedWrites(t *testing.T) {
	fs := newShared(t)
	s1 := startSidecar(t, fs.args("node-1", "g")...)
	s2 := startSidecar(t, fs.args("node-2", "g")...)
	c1, c2 := s1.Client(), s2.Client()
	ctx := context.Background()
	fsClient, _ := firestoretest.Client(t)
	locks, err := firestorelocks.New(fsClient, firestorelocks.Config{Root: fs.root, MaxAttempts: 50})
	if err != nil {
		t.Fatal(err)
	}
	value := func(rec interface{ Decode(any) error }) string {
		t.Helper()
		var s string
		if err := rec.Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	firestoreValue := func() string {
		t.Helper()
		rec, err := fs.get("g", "k")
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if err := wire.Unmarshal(rec.Value, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	// A holds the lock and writes under it.
	ga, err := locks.Acquire(ctx, "ledger", "holder-a", time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	fenceA := client.WithFence(client.Fence{Resource: ga.Resource, Token: ga.Token})
	if _, err := c1.Put(ctx, "g", "k", "a1", fenceA, client.Synced(0)); err != nil {
		t.Fatal(err)
	}

	// A pauses past its lease: B waits for the lock and gets it.
	gb, err := locks.Acquire(ctx, "ledger", "holder-b", time.Minute, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if gb.Token <= ga.Token {
		t.Fatalf("B's token %d is not above A's %d", gb.Token, ga.Token)
	}
	fenceB := client.WithFence(client.Fence{Resource: gb.Resource, Token: gb.Token})
	eventually(t, 30*time.Second, func() string {
		rec, err := c2.Get(ctx, "g", "k")
		if err != nil || rec.Version != 1 {
			return fmt.Sprintf("sidecar 2 has not seen a1: %+v, %v", rec, err)
		}
		return ""
	})
	if _, err := c2.Put(ctx, "g", "k", "b1", fenceB, client.IfVersion(1), client.Synced(0)); err != nil {
		t.Fatal(err)
	}

	// A wakes up and writes through sidecar 1, which has not seen B's
	// grant: accepted there, rejected inside the Firestore commit.
	late, err := c1.Put(ctx, "g", "k", "a-late", fenceA)
	if err != nil {
		t.Fatalf("late write: %v (sidecar 1 had not seen token %d: it should accept it)", err, gb.Token)
	}
	eventually(t, 30*time.Second, func() string {
		failed, _, err := c1.Failed(ctx, 0, 0)
		if err != nil {
			return err.Error()
		}
		for _, f := range failed {
			if f.Governor == "g" && f.State == "k" && f.Version == late.Version && strings.Contains(f.Reason, "FenceRejected") {
				return ""
			}
		}
		return fmt.Sprintf("the late write is not on sidecar 1's failed list: %+v", failed)
	})
	if v := firestoreValue(); v != "b1" {
		t.Fatalf("Firestore holds %q, want B's b1", v)
	}
	eventually(t, 30*time.Second, func() string {
		rec, err := c1.Get(ctx, "g", "k")
		if err != nil || rec.Pending || value(rec) != "b1" {
			return fmt.Sprintf("sidecar 1's copy: %+v, %v; want b1", rec, err)
		}
		return ""
	})

	// A sync write under A's fence: FenceRejected, with Firestore's token.
	_, err = c1.Put(ctx, "g", "k", "a-sync", fenceA, client.Synced(0))
	var e *client.Error
	if !errors.Is(err, client.ErrFenceRejected) || !errors.As(err, &e) || e.Retryable ||
		*e.Fence != (wire.FenceRejection{Resource: "ledger", Token: ga.Token, Current: gb.Token}) {
		t.Fatalf("sync write under the stale fence: %v (%+v)", err, e)
	}

	// Once sidecar 1 has seen B's token (B writes through it), A's writes
	// are rejected there at once, and nothing is journaled.
	if _, err := c1.Put(ctx, "g", "other", "b-via-1", fenceB, client.Synced(0)); err != nil {
		t.Fatal(err)
	}
	before, err := c1.Pending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c1.Put(ctx, "g", "k", "a-again", fenceA)
	if !errors.Is(err, client.ErrFenceRejected) || !errors.As(err, &e) || e.Fence.Current != gb.Token ||
		!strings.Contains(e.Message, "this sidecar") {
		t.Fatalf("write under the stale fence after sidecar 1 saw B's token: %v", err)
	}
	_, err = c1.Delete(ctx, "g", "k", fenceA)
	if !errors.Is(err, client.ErrFenceRejected) {
		t.Fatalf("delete under the stale fence: %v", err)
	}
	if after, err := c1.Pending(ctx); err != nil || after.Depth != before.Depth {
		t.Fatalf("a rejected write was journaled: depth %d then %+v, %v", before.Depth, after, err)
	}
	// B, still the holder, goes on through either sidecar.
	if _, err := c1.Put(ctx, "g", "k", "b2", fenceB, client.Synced(0)); err != nil {
		t.Fatal(err)
	}
	if v := firestoreValue(); v != "b2" {
		t.Fatalf("Firestore holds %q, want b2", v)
	}
}
