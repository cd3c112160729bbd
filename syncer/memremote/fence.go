package memremote

import (
	"context"

	"github.com/tai-state/tai-state/syncer"
)

// LockTokens returns the last token granted on the lock of resource (0: the
// lock has no record), from the lock service fences are checked against
// (for example the Status of a txn.Memory).
type LockTokens func(ctx context.Context, resource string) (uint64, error)

// SetLockTokens makes Commit check the fences of changes against fn, as the
// Firestore remote checks them against the lock documents (see
// syncer.CheckFence). Without it (or with nil) no lock has a record, and
// every fenced change is FenceRejected. fn is called while the Remote is
// locked: it must not call the Remote. The check is atomic with the commit
// only as far as fn's answer stays true until Commit returns.
func (m *Remote) SetLockTokens(fn LockTokens) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locks = fn
}

// lockTokensLocked reads the last token of every lock b's fences name.
// m.mu is held.
func (m *Remote) lockTokensLocked(ctx context.Context, b syncer.Batch) (map[string]uint64, error) {
	resources := syncer.FenceResources(b)
	if len(resources) == 0 || m.locks == nil {
		return nil, nil
	}
	tokens := make(map[string]uint64, len(resources))
	for _, r := range resources {
		t, err := m.locks(ctx, r)
		if err != nil {
			return nil, err
		}
		tokens[r] = t
	}
	return tokens, nil
}
