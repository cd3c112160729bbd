package observe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
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

// How a hold ended (attribute end of tai.lock.hold.duration).
const (
	HoldReleased = "released" // released through this sidecar
	HoldExpired  = "expired"  // its deadline passed first
	HoldLost     = "lost"     // found no longer current before its deadline: released through another sidecar
)

// LockObserver instruments a lock service: Wrap decorates a txn.Locks so
// that each Acquire records the histogram tai.lock.acquire.duration
// (seconds; attributes outcome, and waited: whether the call allowed a
// wait), which shows how long holders wait for locks, and how often in vain.
//
// It also follows the grants acquired through it until they end: the
// histogram tai.lock.hold.duration (seconds; attribute end) records how long
// each was held, and the gauge tai.lock.held counts those still held. A hold
// ends when it is released through this sidecar; or when its deadline
// passes first (expired: it counts until the deadline, and the next call or
// collection records it); or when a release or an extension finds it no
// longer current before then (lost: it counts until then). Grants made
// before a restart, or through another sidecar, are not followed.
type LockObserver struct {
	meter   metric.Meter
	acquire metric.Float64Histogram
	holds   *holds
	held    metric.Int64ObservableGauge
	gauge   sync.Once // its callback, registered by the first Wrap
}

// NewLockObserver makes the instruments on mp.
func NewLockObserver(mp metric.MeterProvider) (*LockObserver, error) {
	m := mp.Meter(scope)
	acquire, err := m.Float64Histogram("tai.lock.acquire.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of lock acquisitions, waits included."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	hold, err := m.Float64Histogram("tai.lock.hold.duration", metric.WithUnit("s"),
		metric.WithDescription("How long locks acquired through this sidecar were held, by how the hold ended."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	held, err := m.Int64ObservableGauge("tai.lock.held", metric.WithUnit("{lock}"),
		metric.WithDescription("Locks acquired through this sidecar and still held."))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	return &LockObserver{meter: m, acquire: acquire, held: held,
		holds: &holds{hold: hold, byGrant: map[grantKey]heldGrant{}}}, nil
}

// Wrap returns l instrumented (nil stays nil: a sidecar without locks
// reports no lock gauge either).
func (o *LockObserver) Wrap(l txn.Locks) txn.Locks {
	if l == nil {
		return nil
	}
	o.gauge.Do(func() {
		_, err := o.meter.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
			ob.ObserveInt64(o.held, int64(o.holds.count()))
			return nil
		}, o.held)
		if err != nil {
			otel.Handle(fmt.Errorf("observe: %w", err))
		}
	})
	return &observedLocks{Locks: l, acquire: o.acquire, holds: o.holds}
}

type observedLocks struct {
	txn.Locks
	acquire metric.Float64Histogram
	holds   *holds
}

func (l *observedLocks) Acquire(ctx context.Context, resource, holder string, lease, wait time.Duration) (txn.Grant, error) {
	start := time.Now()
	g, err := l.Locks.Acquire(ctx, resource, holder, lease, wait)
	l.acquire.Record(context.Background(), time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("outcome", LockOutcome(err)), attribute.Bool("waited", wait > 0)))
	if err == nil {
		l.holds.granted(g)
	}
	return g, err
}

func (l *observedLocks) Release(ctx context.Context, g txn.Grant) error {
	err := l.Locks.Release(ctx, g)
	switch {
	case err == nil:
		l.holds.ended(g, HoldReleased)
	case grantOver(err, g):
		l.holds.ended(g, HoldLost)
	}
	return err
}

func (l *observedLocks) Extend(ctx context.Context, g txn.Grant, lease time.Duration) (txn.Grant, error) {
	ng, err := l.Locks.Extend(ctx, g, lease)
	switch {
	case err == nil:
		l.holds.extended(ng)
	case grantOver(err, g):
		l.holds.ended(g, HoldLost)
	}
	return ng, err
}

// grantOver reports whether err says that g's grant is over: not when the
// lock still has g's token under another holder (a call naming the wrong
// holder, which sockapi makes again with the right one).
func grantOver(err error, g txn.Grant) bool {
	var lost *txn.LostError
	if !errors.As(err, &lost) {
		return false
	}
	return lost.Token != g.Token || lost.Holder == ""
}

// sweepEvery is how often, at most, holds looks for grants whose deadline
// has passed.
const sweepEvery = 100 * time.Millisecond

type grantKey struct {
	resource string
	token    uint64
}

type heldGrant struct {
	since    time.Time // when Acquire returned it
	deadline time.Time // the grant's Deadline, moved by extensions
}

// holds follows the grants acquired through the observed locks until they
// end, and records each hold's duration.
type holds struct {
	hold metric.Float64Histogram

	mu        sync.Mutex
	byGrant   map[grantKey]heldGrant
	earliest  time.Time // no deadline in byGrant is before it
	lastSweep time.Time
}

func (h *holds) granted(g txn.Grant) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked(now)
	h.byGrant[grantKey{g.Resource, g.Token}] = heldGrant{since: now, deadline: g.Deadline}
	if len(h.byGrant) == 1 || g.Deadline.Before(h.earliest) {
		h.earliest = g.Deadline
	}
}

func (h *holds) extended(g txn.Grant) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked(now)
	k := grantKey{g.Resource, g.Token}
	if hg, ok := h.byGrant[k]; ok {
		hg.deadline = g.Deadline // later: earliest stays a lower bound
		h.byGrant[k] = hg
	}
}

func (h *holds) ended(g txn.Grant, end string) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	k := grantKey{g.Resource, g.Token}
	hg, ok := h.byGrant[k]
	if ok {
		delete(h.byGrant, k)
		until := now
		if end == HoldLost && hg.deadline.Before(now) {
			until, end = hg.deadline, HoldExpired
		}
		h.record(until.Sub(hg.since), end)
	}
	h.sweepLocked(now)
}

func (h *holds) count() int {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked(now)
	return len(h.byGrant)
}

// sweepLocked ends the holds whose deadline has passed, at most every
// sweepEvery.
func (h *holds) sweepLocked(now time.Time) {
	if len(h.byGrant) == 0 || !now.After(h.earliest) || now.Sub(h.lastSweep) < sweepEvery {
		return
	}
	h.lastSweep = now
	var earliest time.Time
	for k, hg := range h.byGrant {
		if now.After(hg.deadline) {
			delete(h.byGrant, k)
			h.record(hg.deadline.Sub(hg.since), HoldExpired)
			continue
		}
		if earliest.IsZero() || hg.deadline.Before(earliest) {
			earliest = hg.deadline
		}
	}
	h.earliest = earliest
}

func (h *holds) record(d time.Duration, end string) {
	h.hold.Record(context.Background(), max(d, 0).Seconds(), metric.WithAttributes(attribute.String("end", end)))
}
