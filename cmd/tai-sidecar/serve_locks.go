package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/firestorelocks"
)

// The lock service of `tai-sidecar serve`: txn/firestorelocks on the
// shared store, on the project, database and root the syncer uses, so that
// every sidecar of a deployment shares them (and the push's fence check
// reads the same lock documents). Without a shared store there is none: distributed locks
// need one, and the lock ops say so (Unavailable, naming
// --firestore-project).

// Cleanup of the lock records: every lockCleanupEvery, the records of locks
// free (released or expired) for longer than lockCleanupGrace, and of waits
// that ended as long ago, are deleted. Fencing tokens survive it.
const (
	lockCleanupEvery = time.Minute
	lockCleanupGrace = 5 * time.Minute
)

// lockService is the lock service and its Firestore client.
type lockService struct {
	client *firestore.Client
	locks  *firestorelocks.Locks
}

// openLocks connects the lock service of the shared store c names; nil
// when none is configured.
func openLocks(ctx context.Context, c *SyncConfig, log *slog.Logger) (*lockService, error) {
	if !c.Enabled() {
		log.Info("no shared store configured: lock ops are refused")
		return nil, nil
	}
	db := c.Database
	if db == "" {
		db = firestore.DefaultDatabaseID
	}
	client, err := firestore.NewClientWithDatabase(ctx, c.Project, db)
	if err != nil {
		return nil, fmt.Errorf("open firestore for locks: project %s database %s: %w", c.Project, db, err)
	}
	locks, err := firestorelocks.New(client, firestorelocks.Config{Root: c.Root, Logger: log})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("locks: %w", err)
	}
	return &lockService{client: client, locks: locks}, nil
}

// sockLocks is the lock service for sockapi.Options; nil without one.
func (l *lockService) sockLocks() txn.Locks {
	if l == nil {
		return nil
	}
	return l.locks
}

func (l *lockService) close(log *slog.Logger) {
	if err := l.client.Close(); err != nil {
		log.Warn("close the locks' firestore client", "err", err)
	}
}

// cleaner is what runLockCleanup needs of a lock service.
type cleaner interface {
	Cleanup(ctx context.Context, grace time.Duration) (int, error)
}

// runLockCleanup calls locks.Cleanup(grace) every interval until ctx ends,
// and returns nil then. A failed round is logged and tried again at the
// next tick.
func runLockCleanup(ctx context.Context, locks cleaner, every, grace time.Duration, log *slog.Logger) error {
	return onTicks(ctx, every, func() {
		cctx, cancel := context.WithTimeout(ctx, every)
		n, err := locks.Cleanup(cctx, grace)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("lock cleanup failed; trying again later", "deleted", n, "err", err)
		case n > 0:
			log.Info("lock cleanup", "deleted", n)
		}
	})
}

// onTicks calls fn every interval until ctx ends, and returns nil then.
func onTicks(ctx context.Context, every time.Duration, fn func()) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			fn()
		}
	}
}
