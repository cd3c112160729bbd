package firestoretest

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	gfs "cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/syncer"
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

// PutUndecodable writes a state document of key under root with client that
// does not decode, as another tool or version might write it: its version
// is a string. Its sync_time is the commit's, so it is in the change stream
// where a commit made then would be.
func PutUndecodable(t testing.TB, client *gfs.Client, root string, key syncer.Key) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := "governors/" + key.Governor + "/states/" + key.State
	if root != "" {
		path = root + "/" + path
	}
	_, err := client.Doc(path).Set(ctx, map[string]any{
		"governor": key.Governor, "state": key.State, "value": []byte("\x81\xa1v\x01"),
		"version": "three", "deleted": false, "origin": "another-tool", "op_id": "another-tool-1",
		"vector": map[string]any{"another-tool": 1}, "sync_time": gfs.ServerTimestamp,
	})
	if err != nil {
		t.Fatal(err)
	}
}
