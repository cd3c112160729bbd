package observe_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

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
	if _, names := collect(t, reader); names["tai.lock.held"] {
		t.Fatal("tai.lock.held is reported with no lock service")
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

// Grants acquired through an instrumented lock service are followed until
// they end: released; expired (found by the sweep once the deadline has
// passed); or lost (a release that finds another grant current). Each hold
// is recorded once, and the gauge counts the grants still held.
func TestLockHolds(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	o, err := observe.NewLockObserver(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	l := o.Wrap(losingLocks{txn.NewMemory(nil)})
	ctx := context.Background()
	acquire := func(resource string, lease time.Duration) txn.Grant {
		t.Helper()
		g, err := l.Acquire(ctx, resource, "alice", lease, 0)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	released := acquire("released", time.Minute)
	lost := acquire("lost", time.Minute)
	misnamed := acquire("misnamed", time.Minute)
	expired := acquire("expired", 50*time.Millisecond)
	extended := acquire("extended", 50*time.Millisecond)
	if _, err := l.Extend(ctx, extended, time.Minute); err != nil {
		t.Fatal(err)
	}
	if sums, _ := collect(t, reader); sums["tai.lock.held{}"] != 5 {
		t.Fatalf("held = %d, want 5 (all: %v)", sums["tai.lock.held{}"], sums)
	}
	time.Sleep(150 * time.Millisecond) // past expired's deadline and the sweep interval
	if err := l.Release(ctx, released); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second is not recorded again
		if err := l.Release(ctx, lost); !errors.Is(err, txn.ErrLockLost) {
			t.Fatalf("release of a lost grant: %v", err)
		}
	}
	if err := l.Release(ctx, misnamed); !errors.Is(err, txn.ErrLockLost) {
		t.Fatalf("release naming another holder: %v", err)
	}
	if err := l.Release(ctx, expired); !errors.Is(err, txn.ErrLockLost) { // swept already
		t.Fatalf("release of an expired grant: %v", err)
	}
	if sums, _ := collect(t, reader); sums["tai.lock.held{}"] != 2 {
		t.Errorf("held = %d, want 2: the extended and the misnamed grant (all: %v)", sums["tai.lock.held{}"], sums)
	}
	holds := holdDurations(t, reader)
	if len(holds) != 3 || len(holds["released"]) != 1 || len(holds["lost"]) != 1 || len(holds["expired"]) != 1 {
		t.Fatalf("holds by end: %v, want one released, one lost and one expired", holds)
	}
	// The released and the lost grant were held across the sleep (the lost
	// one until its release found it lost, its deadline being later); the
	// expired one until its deadline, not until the sweep found it.
	for _, end := range []string{"released", "lost"} {
		if d := holds[end][0]; d < 0.15 {
			t.Errorf("%s hold = %.3fs, want at least 0.15s", end, d)
		}
	}
	if d := holds["expired"][0]; d < 0.045 || d > 0.1 {
		t.Errorf("expired hold = %.3fs, want its 50 ms lease", d)
	}
}

// losingLocks finds the grants of resource "lost" taken by another holder
// when they are released, and those of "misnamed" held by another holder
// name with the same token (the grant is still current).
type losingLocks struct{ txn.Locks }

func (l losingLocks) Release(ctx context.Context, g txn.Grant) error {
	switch g.Resource {
	case "lost":
		return &txn.LostError{Op: "release", Grant: g, Holder: "bob", Token: g.Token + 1}
	case "misnamed":
		return &txn.LostError{Op: "release", Grant: g, Holder: "carol", Token: g.Token}
	}
	return l.Locks.Release(ctx, g)
}

// holdDurations collects tai.lock.hold.duration: each end's point as its
// sum, repeated count times as the mean (exact for a count of 1).
func holdDurations(t *testing.T, r *sdkmetric.ManualReader) map[string][]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string][]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			h, ok := m.Data.(metricdata.Histogram[float64])
			if m.Name != "tai.lock.hold.duration" || !ok {
				continue
			}
			for _, p := range h.DataPoints {
				end, _ := p.Attributes.Value("end")
				for range p.Count {
					out[end.AsString()] = append(out[end.AsString()], p.Sum/float64(p.Count))
				}
			}
		}
	}
	return out
}
