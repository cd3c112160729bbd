package txn_test

import (
	"log/slog"
	"testing"

	"github.com/tai-state/tai-state/txn"
	"github.com/tai-state/tai-state/txn/locktest"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func TestMemoryConformance(t *testing.T) {
	locktest.Run(t, locktest.Options{Goroutines: 16, Rounds: 20}, func(t *testing.T, share txn.Locks) txn.Locks {
		if share != nil {
			return share // one process: every "sidecar" is the same Memory
		}
		return txn.NewMemory(testLogger(t))
	})
}
