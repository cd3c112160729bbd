package firestoretest

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	gfs "cloud.google.com/go/firestore"
)

// Client returns a Firestore client on the emulator, closed when the test
// ends, and a fresh random root: for tests that put a Remote and other
// services (txn's locks) on one root, as a sidecar does.
func Client(t testing.TB) (*gfs.Client, string) {
	t.Helper()
	requireEmulator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := gfs.NewClient(ctx, Project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, "tests/" + rand.Text()
}
