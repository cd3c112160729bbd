package observe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tai-state/tai-state/txn"
)

// Outcomes of lock acquisitions (attribute outcome of
// tai.lock.acquire.duration), besides the remote call outcomes ok,
// unavailable, permanent and error.
const (
	LockHeld     = "held"     // refused at once: held, or being handed to a waiter
	LockTimeout  = "timeout"  // waited, in vain
	LockDeadlock = "deadlock" // the wait was a deadlock's victim
	LockInvalid  = "invalid"  // a bad request
)

// LockOutcome classifies the result of txn.Locks.Acquire.
func LockOutcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, txn.ErrTimeout):
		return LockTimeout
	case errors.Is(err, txn.ErrLockHeld):
		return LockHeld
	case errors.Is(err, txn.ErrDeadlock):
		return LockDeadlock
	case errors.Is(err, txn.ErrInvalid):
		return LockInvalid
	}
	return Outcome(err)
}

// LockObserver instruments a lock service: Wrap decorates a txn.Locks so
// that each Acquire records the histogram tai.lock.acquire.duration
// (seconds; attributes outcome, and waited: whether the call allowed a
// wait), which shows how long holders wait for locks, and how often in vain.
type LockObserver struct {
	dur metric.Float64Histogram
}

// NewLockObserver makes the instruments on mp.
func NewLockObserver(mp metric.MeterProvider) (*LockObserver, error) {
	dur, err := mp.Meter(scope).Float64Histogram("tai.lock.acquire.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of lock acquisitions, waits included."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	return &LockObserver{dur: dur}, nil
}

// Wrap returns l instrumented (nil stays nil).
func (o *LockObserver) Wrap(l txn.Locks) txn.Locks {
	if l == nil {
		return nil
	}
	return &observedLocks{Locks: l, dur: o.dur}
}

type observedLocks struct {
	txn.Locks
	dur metric.Float64Histogram
}

func (l *observedLocks) Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (txn.Grant, error) {
	start := time.Now()
	g, err := l.Locks.Acquire(ctx, resource, holder, lease, wait)
	l.dur.Record(context.Background(), time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("outcome", LockOutcome(err)), attribute.Bool("waited", wait > 0)))
	return g, err
}
