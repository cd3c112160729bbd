package observe_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tai-state/tai-state/observe"
	"github.com/tai-state/tai-state/txn"
)

// Acquisitions through an instrumented lock service are timed by outcome
// and by whether they could wait; the other calls pass through.
func TestLockObserver(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	o, err := observe.NewLockObserver(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	if o.Wrap(nil) != nil {
		t.Fatal("Wrap(nil) is not nil: a sidecar without locks would seem to have them")
	}
	l := o.Wrap(txn.NewMemory(nil))
	ctx := context.Background()
	g, err := l.Acquire(ctx, "r", "alice", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, "r", "bob", time.Minute, 0); !errors.Is(err, txn.ErrLockHeld) {
		t.Fatalf("second Acquire: %v", err)
	}
	if _, err := l.Acquire(ctx, "r", "bob", time.Minute, 50*time.Millisecond); !errors.Is(err, txn.ErrTimeout) {
		t.Fatalf("Acquire with a wait: %v", err)
	}
	if _, err := l.Acquire(ctx, "bad name/", "bob", time.Minute, 0); !errors.Is(err, txn.ErrInvalid) {
		t.Fatalf("Acquire of a bad name: %v", err)
	}
	if err := l.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	sums, _ := collect(t, reader)
	for outcome, want := range map[string]int64{"ok,waited=false": 1, "held,waited=false": 1, "timeout,waited=true": 1,
		"invalid,waited=false": 1} {
		key := "tai.lock.acquire.duration{outcome=" + outcome + "}#count"
		if sums[key] != want {
			t.Errorf("%s = %d, want %d (all: %v)", key, sums[key], want, sums)
		}
	}
}

func TestLockOutcome(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                     "ok",
		&txn.HeldError{}:                        "held",
		&txn.HeldError{Waited: true}:            "timeout",
		&txn.DeadlockError{}:                    "deadlock",
		fmt.Errorf("x: %w", txn.ErrInvalid):     "invalid",
		fmt.Errorf("x: %w", txn.ErrUnavailable): "unavailable",
		fmt.Errorf("x: %w", txn.ErrPermanent):   "permanent",
		errors.New("other"):                     "error",
	} {
		if got := observe.LockOutcome(err); got != want {
			t.Errorf("LockOutcome(%v) = %q, want %q", err, got, want)
		}
	}
}
