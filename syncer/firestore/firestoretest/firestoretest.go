// Package firestoretest opens Firestore remotes on the emulator for tests.
package firestoretest

import (
	"context"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer/firestore"
)

// Project is the Firestore project id tests use on the emulator.
const Project = "tai-state-test"

// Open returns a Remote on the emulator under a fresh random root, so tests
// never see each other's data, closed when the test ends. Without an
// emulator the test fails: these tests are part of the suite, not optional.
func Open(t testing.TB) *firestore.Remote {
	t.Helper()
	requireEmulator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := firestore.Open(ctx, firestore.Config{ProjectID: Project, Root: "tests/" + rand.Text()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// requireEmulator fails the test when no emulator is configured.
func requireEmulator(t testing.TB) {
	t.Helper()
	if os.Getenv("FIRESTORE_EMULATOR_HOST") == "" {
		t.Fatal("FIRESTORE_EMULATOR_HOST is not set: these tests need the Firestore emulator. " +
			"Run them through scripts/test.sh, or with `scripts/emulator.sh run go test ./syncer/...`, " +
			"which start one (it needs the Debian package google-cloud-cli-firestore-emulator)")
	}
}
