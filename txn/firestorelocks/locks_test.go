package firestorelocks_test

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/firestorelocks"
	"github.com/tai-state/tai-state/txn/locktest"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// openClient returns a client on the emulator, closed when the test ends.
func openClient(t *testing.T) *firestore.Client {
	t.Helper()
	if os.Getenv("FIRESTORE_EMULATOR_HOST") == "" {
		t.Fatal("FIRESTORE_EMULATOR_HOST is not set: these tests need the Firestore emulator. " +
			"Run them through scripts/test.sh, or with `scripts/emulator.sh run go test ./txn/...`, " +
			"which start one (it needs the Debian package google-cloud-cli-firestore-emulator)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := firestore.NewClient(ctx, firestoretest.Project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openLocks returns Firestore locks under root on a client of their own,
// as a sidecar has.
func openLocks(t *testing.T, root string) *firestorelocks.Locks {
	t.Helper()
	l, err := firestorelocks.New(openClient(t), firestorelocks.Config{Root: root, MaxAttempts: 50, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestConformance(t *testing.T) {
	roots := map[txn.Locks]string{}
	locktest.Run(t, locktest.Options{
		Goroutines: 6, Rounds: 5,
		NewCounter: func(t *testing.T) locktest.Counter {
			c := openClient(t)
			return &fsCounter{client: c, ref: c.Doc("tests/" + rand.Text() + "/counters/c")}
		},
	}, func(t *testing.T, share txn.Locks) txn.Locks {
		root := "tests/" + rand.Text()
		if share != nil {
			root = roots[share]
		}
		l := openLocks(t, root)
		roots[l] = root
		return l
	})
}

// fsCounter is a counter document written with a fence check inside the
// transaction: a write whose token is below the last one written is
// rejected.
type fsCounter struct {
	client *firestore.Client
	ref    *firestore.DocumentRef
}

func (c *fsCounter) Add(ctx context.Context, f txn.Fence) error {
	return c.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		var n, fence int64
		snap, err := tx.Get(c.ref)
		switch {
		case err == nil:
			n, fence = snap.Data()["n"].(int64), snap.Data()["fence"].(int64)
		case status.Code(err) != codes.NotFound:
			return err
		}
		if int64(f.Token) < fence {
			return locktest.ErrStale
		}
		return tx.Set(c.ref, map[string]any{"n": n + 1, "fence": int64(f.Token)})
	}, firestore.MaxAttempts(50))
}

func (c *fsCounter) Value(ctx context.Context) (int64, error) {
	snap, err := c.ref.Get(ctx)
	if err != nil {
		return 0, err
	}
	return snap.Data()["n"].(int64), nil
}

func TestConfig(t *testing.T) {
	for _, root := range []string{"a", "a//b/c", "a/b/c", "a/__x__"} {
		if _, err := firestorelocks.New(nil, firestorelocks.Config{Root: root}); !errors.Is(err, txn.ErrInvalid) {
			t.Errorf("root %q: %v, want ErrInvalid", root, err)
		}
	}
	if _, err := firestorelocks.New(nil, firestorelocks.Config{Root: "deployments/prod"}); err != nil {
		t.Errorf("good root: %v", err)
	}
}
