package locktest

import (
	"context"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/txn"
)

// Granter returns a function that takes the lock of resource in l,
// releases it at once, and returns the grant's token: the lock's last token
// is then that one, and no lease runs. The conformance suites of stores that
// check fences against l (syncer/remotetest) use it to move a lock on.
func Granter(l txn.Locks) func(ctx context.Context, resource string) (uint64, error) {
	return func(ctx context.Context, resource string) (uint64, error) {
		g, err := l.Acquire(ctx, resource, "locktest-granter", time.Minute, 0)
		if err != nil {
			return 0, fmt.Errorf("grant %s: %w", resource, err)
		}
		if err := l.Release(ctx, g); err != nil {
			return 0, fmt.Errorf("release %s: %w", resource, err)
		}
		return g.Token, nil
	}
}
