package firestore_test

import (
	"testing"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/remotetest"
	"github.com/tai-state/tai-state/txn/firestorelocks"
	"github.com/tai-state/tai-state/txn/locktest"
)

// fencedRemote is a Remote and txn/firestorelocks on one root, as in a
// sidecar: Commit checks fences against the lock documents the locks write.
func fencedRemote(t *testing.T) (syncer.Remote, remotetest.Grant) {
	client, root := firestoretest.Client(t)
	locks, err := firestorelocks.New(client, firestorelocks.Config{Root: root, MaxAttempts: 50})
	if err != nil {
		t.Fatal(err)
	}
	return firestore.New(client, firestore.Config{Root: root, MaxAttempts: 50}), locktest.Granter(locks)
}
