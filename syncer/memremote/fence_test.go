package memremote_test

import (
	"context"

	"testing"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
	"github.com/tai-state/tai-state/syncer/remotetest"
	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/locktest"
)

// fencedRemote is a Remote that checks fences against in-memory locks.
func fencedRemote(*testing.T) (syncer.Remote, remotetest.Grant) {
	locks := txn.NewMemory(nil)
	m := memremote.New()
	m.SetLockTokens(func(ctx context.Context, resource string) (uint64, error) {
		st, err := locks.Status(ctx, resource)
		return st.Token, err
	})
	return m, locktest.Granter(locks)
}
