package observe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tai-state/tai-state/syncer"
)

// Attribute keys of shared-store calls.
const (
	attrMethod  = attribute.Key("tai.remote.method")
	attrOutcome = attribute.Key("tai.remote.outcome")
	attrChanges = attribute.Key("tai.remote.changes")
	attrRecords = attribute.Key("tai.remote.records")
)

// Outcomes of a shared-store call (the error class).
const (
	OutcomeOK          = "ok"
	OutcomeNotFound    = "not_found"
	OutcomeConflict    = "conflict"
	OutcomeTooLarge    = "too_large"
	OutcomeUndecodable = "undecodable"
	OutcomePermanent   = "permanent"
	OutcomeUnavailable = "unavailable"
	OutcomeCanceled    = "canceled"
	OutcomeError       = "error"
)

// OutcomeFenceRejected: a commit rejected a fenced change (the shared store
// answered: the change was stale, see syncer.CheckFence).
const OutcomeFenceRejected = "fence_rejected"

// Outcome classifies the error of a syncer.Remote call (see syncer's error
// contract).
func Outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	case errors.Is(err, syncer.ErrNotFound):
		return OutcomeNotFound
	case errors.Is(err, syncer.ErrConflict):
		return OutcomeConflict
	case errors.Is(err, syncer.ErrFenceRejected):
		return OutcomeFenceRejected
	case errors.Is(err, syncer.ErrTooLarge):
		return OutcomeTooLarge
	case errors.Is(err, syncer.ErrUndecodable):
		// A document that does not decode: a Get or Commit of its key, or
		// a page of Changes that left it out (and returned the rest).
		return OutcomeUndecodable
	case errors.Is(err, syncer.ErrPermanent):
		return OutcomePermanent
	case errors.Is(err, syncer.ErrUnavailable):
		return OutcomeUnavailable
	}
	return OutcomeError
}

// RemoteObserver instruments calls to the shared store: Wrap decorates a
// syncer.Remote (WrapHistory a syncer.HistoryRemote) so that each Get,
// Commit, Changes, Events, PutSnapshot and Snapshots gets a client
// span (method and outcome attributes; an error status for failures, not
// for not_found, conflict or fence_rejected), counts in tai.remote.calls by method and
// outcome, and a duration in tai.remote.call.duration by method. Commits
// also record tai.sync.lag: for each local change they applied, the time
// from the local write to the commit. A watch (syncer.Watcher) is counted
// when it ends, with no span: it lives for hours.
//
// It remembers whether the shared store answered lately (Reachability).
// Errors are classified (Outcome); their messages are not recorded.
type RemoteObserver struct {
	tracer trace.Tracer
	calls  metric.Int64Counter
	dur    metric.Float64Histogram
	lag    metric.Float64Histogram
	now    func() time.Time

	mu          sync.Mutex
	lastOK      time.Time
	lastFail    time.Time
	lastOutcome string
}

// NewRemoteObserver returns an observer reporting to tp and mp.
func NewRemoteObserver(tp trace.TracerProvider, mp metric.MeterProvider) (*RemoteObserver, error) {
	m := mp.Meter(scope)
	calls, err := m.Int64Counter("tai.remote.calls", metric.WithUnit("{call}"),
		metric.WithDescription("Calls to the shared store (Firestore), by method and outcome."))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	dur, err := m.Float64Histogram("tai.remote.call.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of calls to the shared store, by method."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	lag, err := m.Float64Histogram("tai.sync.lag", metric.WithUnit("s"),
		metric.WithDescription("Time from a local write to its commit in the shared store."),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	return &RemoteObserver{tracer: tp.Tracer(scope), calls: calls, dur: dur, lag: lag, now: time.Now}, nil
}

// Reachability reports when the shared store last answered a call (any
// outcome but unavailable, canceled or error counts as an answer) and when
// a call last failed to reach it, with that failure's outcome.
type Reachability struct {
	LastAnswer  time.Time
	LastFailure time.Time
	Outcome     string // of the last failure
}

// Reachable: the last call that reached a verdict was answered.
func (r Reachability) Reachable() bool {
	return !r.LastAnswer.IsZero() && !r.LastAnswer.Before(r.LastFailure)
}

// Reachability returns what the calls so far showed.
func (o *RemoteObserver) Reachability() Reachability {
	o.mu.Lock()
	defer o.mu.Unlock()
	return Reachability{LastAnswer: o.lastOK, LastFailure: o.lastFail, Outcome: o.lastOutcome}
}

func (o *RemoteObserver) note(outcome string, at time.Time) {
	switch outcome {
	case OutcomeCanceled:
		return // says nothing about the remote
	case OutcomeUnavailable, OutcomeError:
		o.mu.Lock()
		o.lastFail, o.lastOutcome = at, outcome
		o.mu.Unlock()
	default:
		o.mu.Lock()
		o.lastOK = at
		o.mu.Unlock()
	}
}

// Wrap returns r instrumented. The result implements syncer.Watcher when r
// does.
func (o *RemoteObserver) Wrap(r syncer.Remote) syncer.Remote {
	ir := &instrumented{o: o, r: r}
	if w, ok := r.(syncer.Watcher); ok {
		return &instrumentedWatcher{instrumented: ir, w: w}
	}
	return ir
}

// call starts the span of one call; done ends it and counts the call.
func (o *RemoteObserver) call(ctx context.Context, method string, attrs ...attribute.KeyValue) (context.Context, func(err error, more ...attribute.KeyValue) string) {
	start := o.now()
	ctx, span := o.tracer.Start(ctx, "remote."+method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(append(attrs, attrMethod.String(method))...))
	return ctx, func(err error, more ...attribute.KeyValue) string {
		outcome := Outcome(err)
		end := o.now()
		if span.IsRecording() {
			span.SetAttributes(attrOutcome.String(outcome))
			span.SetAttributes(more...)
			if err != nil && outcome != OutcomeNotFound && outcome != OutcomeConflict && outcome != OutcomeFenceRejected {
				span.SetStatus(codes.Error, outcome)
			}
		}
		span.End()
		bg := context.Background()
		o.calls.Add(bg, 1, metric.WithAttributes(attrMethod.String(method), attrOutcome.String(outcome)))
		o.dur.Record(bg, end.Sub(start).Seconds(), metric.WithAttributes(attrMethod.String(method)))
		o.note(outcome, end)
		return outcome
	}
}

type instrumented struct {
	o *RemoteObserver
	r syncer.Remote
}

func (i *instrumented) Get(ctx context.Context, key syncer.Key) (syncer.Record, error) {
	ctx, done := i.o.call(ctx, "get")
	rec, err := i.r.Get(ctx, key)
	done(err)
	return rec, err
}

func (i *instrumented) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	ctx, done := i.o.call(ctx, "commit", attrChanges.Int(len(b.Changes)), attribute.Bool("tai.remote.atomic", b.Atomic))
	res, err := i.r.Commit(ctx, b)
	done(err)
	if (err == nil || errors.Is(err, syncer.ErrConflict) || errors.Is(err, syncer.ErrFenceRejected)) && len(res) == len(b.Changes) {
		i.o.recordLag(b, res)
	}
	return res, err
}

// recordLag records tai.sync.lag for each local change the commit applied.
func (o *RemoteObserver) recordLag(b syncer.Batch, res []syncer.Result) {
	now := o.now()
	bg := context.Background()
	for j, r := range res {
		ch := &b.Changes[j]
		if r.Status != syncer.Applied || ch.CheckOnly {
			continue
		}
		if len(ch.Events) == 0 {
			if t := ch.Record.Change.Time; t > 0 {
				o.lag.Record(bg, max(0, now.Sub(time.Unix(0, t)).Seconds()))
			}
			continue
		}
		for _, e := range ch.Events {
			if t := e.Change.Time; t > 0 {
				o.lag.Record(bg, max(0, now.Sub(time.Unix(0, t)).Seconds()))
			}
		}
	}
}

func (i *instrumented) Changes(ctx context.Context, governor string, since syncer.Cursor, limit int) ([]syncer.Record, syncer.Cursor, error) {
	ctx, done := i.o.call(ctx, "changes")
	recs, next, err := i.r.Changes(ctx, governor, since, limit)
	done(err, attrRecords.Int(len(recs)))
	return recs, next, err
}

func (i *instrumented) Events(ctx context.Context, key syncer.Key, afterVersion uint64, limit int) ([]syncer.Event, error) {
	return i.o.events(ctx, i.r.Events, key, afterVersion, limit)
}

// events is one Events call through fn, counted and traced.
func (o *RemoteObserver) events(ctx context.Context, fn func(context.Context, syncer.Key, uint64, int) ([]syncer.Event, error),
	key syncer.Key, afterVersion uint64, limit int) ([]syncer.Event, error) {
	ctx, done := o.call(ctx, "events")
	es, err := fn(ctx, key, afterVersion, limit)
	done(err, attrRecords.Int(len(es)))
	return es, err
}

func (i *instrumented) Limits() syncer.Limits { return i.r.Limits() }

func (i *instrumented) LogConflicts(ctx context.Context, recs []syncer.ConflictRecord) error {
	ctx, done := i.o.call(ctx, "log_conflicts", attrRecords.Int(len(recs)))
	err := i.r.LogConflicts(ctx, recs)
	done(err)
	return err
}

func (i *instrumented) Conflicts(ctx context.Context, q syncer.ConflictQuery) ([]syncer.ConflictRecord, error) {
	ctx, done := i.o.call(ctx, "conflicts")
	recs, err := i.r.Conflicts(ctx, q)
	done(err, attrRecords.Int(len(recs)))
	return recs, err
}

// WrapHistory returns h instrumented as Wrap does a Remote: its Events,
// PutSnapshot and Snapshots calls (bootstrap and snapshot copies) count
// and trace as methods events, put_snapshot and snapshots.
func (o *RemoteObserver) WrapHistory(h syncer.HistoryRemote) syncer.HistoryRemote {
	return &instrumentedHistory{o: o, h: h}
}

type instrumentedHistory struct {
	o *RemoteObserver
	h syncer.HistoryRemote
}

func (i *instrumentedHistory) Events(ctx context.Context, key syncer.Key, afterVersion uint64, limit int) ([]syncer.Event, error) {
	return i.o.events(ctx, i.h.Events, key, afterVersion, limit)
}

func (i *instrumentedHistory) PutSnapshot(ctx context.Context, snap syncer.Snapshot, keep int) (syncer.SnapshotStatus, error) {
	ctx, done := i.o.call(ctx, "put_snapshot")
	st, err := i.h.PutSnapshot(ctx, snap, keep)
	done(err)
	return st, err
}

func (i *instrumentedHistory) Snapshots(ctx context.Context, key syncer.Key, afterVersion, maxVersion uint64) ([]syncer.Snapshot, error) {
	ctx, done := i.o.call(ctx, "snapshots")
	ss, err := i.h.Snapshots(ctx, key, afterVersion, maxVersion)
	done(err, attrRecords.Int(len(ss)))
	return ss, err
}

type instrumentedWatcher struct {
	*instrumented
	w syncer.Watcher
}

// Watch counts each watch when it ends (method "watch"), and each delivery
// as an answer of the shared store.
func (i *instrumentedWatcher) Watch(ctx context.Context, governor string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	o := i.o
	err := i.w.Watch(ctx, governor, since, func(recs []syncer.Record, next syncer.Cursor, skipped []*syncer.UndecodableError) error {
		o.note(OutcomeOK, o.now())
		return fn(recs, next, skipped)
	})
	outcome := Outcome(err)
	o.calls.Add(context.Background(), 1, metric.WithAttributes(attrMethod.String("watch"), attrOutcome.String(outcome)))
	if ctx.Err() == nil {
		o.note(outcome, o.now())
	}
	return err
}
