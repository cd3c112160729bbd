package firestore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/remotetest"
)

func TestConformance(t *testing.T) {
	remotetest.RunWith(t, remotetest.Options{Concurrency: 8, Rounds: 5, Fences: fencedRemote, Undecodable: undecodableRemote},
		func(t *testing.T) syncer.Remote { return firestoretest.Open(t) })
}

// undecodableRemote is a Remote and a Plant that writes its documents with
// the Firestore client directly.
func undecodableRemote(t *testing.T) (syncer.Remote, remotetest.Plant) {
	client, root := firestoretest.Client(t)
	return firestore.New(client, firestore.Config{Root: root}), func(t *testing.T, key syncer.Key) {
		firestoretest.PutUndecodable(t, client, root, key)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  firestore.Config
		ok   bool
	}{
		{"minimal", firestore.Config{ProjectID: "p"}, true},
		{"root", firestore.Config{ProjectID: "p", Root: "deployments/prod"}, true},
		{"nested root", firestore.Config{ProjectID: "p", Root: "a/b/c/d"}, true},
		{"no project", firestore.Config{}, false},
		{"collection root", firestore.Config{ProjectID: "p", Root: "deployments"}, false},
		{"empty segment", firestore.Config{ProjectID: "p", Root: "a//b/c"}, false},
		{"negative attempts", firestore.Config{ProjectID: "p", MaxAttempts: -1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		err  error
		want error
	}{
		{status.Error(codes.NotFound, "x"), syncer.ErrNotFound},
		{status.Error(codes.Unavailable, "x"), syncer.ErrUnavailable},
		{status.Error(codes.DeadlineExceeded, "x"), syncer.ErrUnavailable},
		{status.Error(codes.Aborted, "contention"), syncer.ErrUnavailable},
		{status.Error(codes.ResourceExhausted, "quota"), syncer.ErrUnavailable},
		{status.Error(codes.FailedPrecondition, "needs an index"), syncer.ErrPermanent},
		{status.Error(codes.PermissionDenied, "x"), syncer.ErrPermanent},
		{status.Error(codes.Unauthenticated, "x"), syncer.ErrPermanent},
		{status.Error(codes.InvalidArgument, "bad"), syncer.ErrPermanent},
		{status.Error(codes.InvalidArgument, "Document exceeds the maximum size"), syncer.ErrTooLarge},
		// An expired transaction (the emulator's words, then Firestore's):
		// a new one may succeed.
		{status.Error(codes.InvalidArgument, "Transaction is invalid or closed."), syncer.ErrUnavailable},
		{status.Error(codes.InvalidArgument, "The referenced transaction has expired or is no longer valid."), syncer.ErrUnavailable},
		{errors.New("connection reset"), syncer.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.err.Error(), func(t *testing.T) {
			if got := firestore.Kind(tc.err); got != tc.want {
				t.Fatalf("Kind = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRootsAreSeparate checks that two roots in one project do not see each
// other's states.
func TestRootsAreSeparate(t *testing.T) {
	ctx := context.Background()
	a, b := firestoretest.Open(t), firestoretest.Open(t)
	key := syncer.Key{Governor: "g", State: "s"}
	c := syncer.Change{Key: key, Record: syncer.Record{Value: []byte("v"), Version: 1, Origin: "n", OpID: "n-1",
		Clock: syncer.Clock{Vector: map[string]uint64{"n": 1}}}}
	if _, err := a.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("root b sees root a's state: %v", err)
	}
	if recs, _, err := b.Changes(ctx, "g", "", 0); err != nil || len(recs) != 0 {
		t.Fatalf("root b's changes: %v %v", err, recs)
	}
}

// TestLedgerExpireAt: every ledger document carries expire_at, its decision
// time plus Config.LedgerTTL, for a Firestore TTL policy.
func TestLedgerExpireAt(t *testing.T) {
	client, root := firestoretest.Client(t)
	const ttl = 48 * time.Hour
	r := firestore.New(client, firestore.Config{Root: root, LedgerTTL: ttl})
	ctx := context.Background()
	decided := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rec := syncer.ConflictRecord{ID: "c1", Key: syncer.Key{Governor: "g", State: "s"}, Time: decided, Node: "n1",
		Resolver: "lww", Winner: conflict.Remote}
	if err := r.LogConflicts(ctx, []syncer.ConflictRecord{rec}); err != nil {
		t.Fatal(err)
	}
	snap, err := client.Doc(root + "/conflicts/c1").Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := snap.DataAt("expire_at")
	if err != nil {
		t.Fatal(err)
	}
	if at, ok := v.(time.Time); !ok || !at.Equal(decided.Add(ttl)) {
		t.Fatalf("expire_at %v, want %v", v, decided.Add(ttl))
	}
	if err := (firestore.Config{ProjectID: "p", LedgerTTL: -time.Hour}).Validate(); err == nil {
		t.Fatal("a negative LedgerTTL is valid")
	}
}
