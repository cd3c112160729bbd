package observe

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/syncer"
)

// PushPasses returns a syncer.Options.OnPass hook: a span per push pass
// (push.pass: the commits of the pass are its children) with what the pass
// did, and the histogram tai.push.pass.duration (seconds).
func PushPasses(tp trace.TracerProvider, mp metric.MeterProvider) (func(context.Context) (context.Context, func(syncer.Report, error)), error) {
	tracer := tp.Tracer(scope)
	dur, err := mp.Meter(scope).Float64Histogram("tai.push.pass.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of push passes (journal to shared store)."))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	return func(ctx context.Context) (context.Context, func(syncer.Report, error)) {
		start := time.Now()
		ctx, span := tracer.Start(ctx, "push.pass", trace.WithSpanKind(trace.SpanKindInternal))
		return ctx, func(rep syncer.Report, err error) {
			if span.IsRecording() {
				span.SetAttributes(
					attribute.Int("tai.push.entries", rep.Entries),
					attribute.Int("tai.push.commits", rep.Commits),
					attribute.Int("tai.push.pushed", rep.Pushed),
					attribute.Int("tai.push.already_applied", rep.AlreadyApplied),
					attribute.Int("tai.push.conflicts", rep.Conflicts),
					attribute.Int("tai.push.superseded", rep.Superseded),
					attribute.Int("tai.push.parked", rep.Parked),
					attribute.Int("tai.push.blocked", rep.Blocked),
				)
				if err != nil {
					span.SetStatus(codes.Error, Outcome(err))
				}
			}
			span.End()
			dur.Record(context.Background(), time.Since(start).Seconds())
		}
	}, nil
}

// LogSyncs returns a localcache.Options.OnLogSync hook that records the
// histogram tai.store.wal.sync.duration (seconds): how long each commit
// group's append and fdatasync of the write-ahead log took. Every write of
// the group waited that long, so its tail is the tail of write latency that
// the disk causes.
func LogSyncs(mp metric.MeterProvider) (func(time.Duration, int), error) {
	dur, err := mp.Meter(scope).Float64Histogram("tai.store.wal.sync.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of each write-ahead log append and fdatasync (one per commit group)."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	return func(d time.Duration, _ int) {
		dur.Record(context.Background(), d.Seconds())
	}, nil
}

// Store is what the store gauges read; *localcache.Store implements it.
type Store interface {
	Depth() int64
	Pending(ctx context.Context, afterSeq uint64, limit int) ([]syncer.Entry, error)
	Stats() localcache.Stats
}

// Sources are what the gauges are read from at collection time. Push and
// Pull are nil without a shared store.
type Sources struct {
	Store Store
	Push  func() syncer.Stats
	Pull  func() syncer.PullStats
}

// pendingTimeout bounds the read of the oldest journal entry at collection.
const pendingTimeout = time.Second

// RegisterGauges registers the instruments read at collection time from
// src (see docs/operations.md for the list). The registration lasts as long
// as mp.
func RegisterGauges(mp metric.MeterProvider, src Sources) error {
	m := mp.Meter(scope)
	var (
		insts []metric.Observable
		errs  []error
	)
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		insts = append(insts, g)
		return g
	}
	fgauge := func(name, unit, desc string) metric.Float64ObservableGauge {
		g, err := m.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		insts = append(insts, g)
		return g
	}
	fcounter := func(name, unit, desc string) metric.Float64ObservableCounter {
		c, err := m.Float64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		insts = append(insts, c)
		return c
	}
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		insts = append(insts, c)
		return c
	}

	depth := gauge("tai.journal.depth", "{entry}", "Journal entries not yet in the shared store.")
	oldest := fgauge("tai.journal.oldest_age", "s", "Age of the oldest journal entry (0: empty): how far the shared store lags behind local writes.")
	parked := gauge("tai.journal.parked", "{entry}", "Journal entries the shared store rejected for good.")
	states := gauge("tai.states", "{state}", "Live states in the local store.")
	commits := counter("tai.store.commits", "{commit}", "Local store transactions committed.")
	walSyncs := counter("tai.store.wal.syncs", "{sync}", "Commit groups appended to the write-ahead log, one fdatasync each.")
	walSyncTime := fcounter("tai.store.wal.sync_time", "s", "Total time of those appends: divided by tai.store.wal.syncs, the disk's latency per write.")
	hits := counter("tai.cache.hits", "{read}", "Reads served by the hot read cache.")
	misses := counter("tai.cache.misses", "{read}", "Reads the hot read cache missed.")
	ratio := fgauge("tai.cache.hit_ratio", "1", "Cache hits / (hits + misses) since start (0 before any read).")
	cacheBytes := gauge("tai.cache.size", "By", "Bytes held by the hot read cache (estimate).")
	retained := counter("tai.history.retention.removed", "{item}", "Removed by the history retention rounds (per_governor history_max_age, history_keep_events), by kind: events, snapshots, journal_entries (merged into later changes of their state on a sidecar without a shared store).")
	retentionErrors := counter("tai.history.retention.errors", "{cleanup}", "Cleanups of one governor's history by the retention rounds that failed (logged, retried next round).")
	renewals := counter("tai.store.origin_renewals", "{incarnation}", "New incarnations drawn since start because another store made changes under this store's origin: a copy of its data dir went on writing.")

	var (
		passes, pushCommits, pushed, already, conflicts, superseded, parkedPush metric.Int64ObservableCounter
		pushOK                                                                  metric.Float64ObservableGauge
		decided, storms                                                         metric.Int64ObservableCounter
		pullPasses, pullRecords, pullApplied, pullDiverged, pullSkipped         metric.Int64ObservableCounter
		fetches, restarts                                                       metric.Int64ObservableCounter
		pullUndecodable                                                         metric.Int64ObservableGauge
		pullUndecodableDropped                                                  metric.Int64ObservableCounter
	)
	if src.Push != nil {
		passes = counter("tai.push.passes", "{pass}", "Push passes made.")
		pushCommits = counter("tai.push.commits", "{commit}", "Shared-store commits that returned results.")
		pushed = counter("tai.push.entries", "{entry}", "Journal entries acked as in the shared store (pushed or already applied).")
		already = counter("tai.push.already_applied", "{entry}", "Of those, entries the shared store already had.")
		conflicts = counter("tai.push.conflicts", "{conflict}", "Conflicts met by pushes.")
		superseded = counter("tai.push.superseded", "{entry}", "Entries that lost a conflict.")
		parkedPush = counter("tai.push.parked", "{entry}", "Entries parked: rejected by the shared store for good.")
		pushOK = fgauge("tai.push.last_success", "s", "Unix time of the end of the last push pass that failed nothing (0: none).")
		decided = counter("tai.push.conflicts_decided", "{conflict}", "True conflicts settled and recorded in the conflict ledger, by resolver.")
		storms = counter("tai.push.conflict_storms", "{storm}", "Conflict storms: many conflicts on one state in a short time.")
	}
	if src.Pull != nil {
		pullPasses = counter("tai.pull.deliveries", "{delivery}", "Groups of remote changes applied (pages and watch deliveries).")
		pullRecords = counter("tai.pull.records", "{record}", "Remote records received.")
		pullApplied = counter("tai.pull.applied", "{record}", "Remote records stored locally (newer, or over a diverged record).")
		pullDiverged = counter("tai.pull.diverged", "{record}", "Of those, records stored over a diverged local record.")
		pullSkipped = counter("tai.pull.skipped", "{record}", "Remote records not stored, by reason (pending: a local write waits; stale: already held; undecodable: the document is not a state record, left out).")
		pullUndecodable = gauge("tai.pull.undecodable", "{state}", "States whose latest shared-store document does not decode: left out of the pull; reads that ask the shared store about them fail.")
		pullUndecodableDropped = counter("tai.pull.undecodable_dropped", "{document}", "Documents that do not decode, met while the most states the sidecar remembers such documents of did not decode already: counted in the log, not remembered. The count outlives a restart and never goes down.")
		fetches = counter("tai.pull.fetches", "{fetch}", "Single-key reads through to the shared store.")
		restarts = counter("tai.pull.watch_restarts", "{restart}", "Watches restarted after they broke.")
	}
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("observe: %w", err)
		}
	}
	pendingAttr := metric.WithAttributes(attribute.String("reason", "pending"))
	staleAttr := metric.WithAttributes(attribute.String("reason", "stale"))
	undecodableAttr := metric.WithAttributes(attribute.String("reason", "undecodable"))
	eventsAttr := metric.WithAttributes(attribute.String("kind", "events"))
	snapshotsAttr := metric.WithAttributes(attribute.String("kind", "snapshots"))
	journalAttr := metric.WithAttributes(attribute.String("kind", "journal_entries"))
	_, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		st := src.Store.Stats()
		o.ObserveInt64(depth, src.Store.Depth())
		age := 0.0
		if st.JournalDepth > 0 {
			pctx, cancel := context.WithTimeout(ctx, pendingTimeout)
			es, err := src.Store.Pending(pctx, 0, 1)
			cancel()
			if err == nil && len(es) > 0 {
				age = max(0, time.Since(time.Unix(0, es[0].Time)).Seconds())
			}
		}
		o.ObserveFloat64(oldest, age)
		o.ObserveInt64(parked, st.Parked)
		o.ObserveInt64(states, st.States)
		o.ObserveInt64(commits, int64(st.Commits))
		o.ObserveInt64(walSyncs, int64(st.WALSyncs))
		o.ObserveFloat64(walSyncTime, st.WALSyncTime.Seconds())
		o.ObserveInt64(hits, int64(st.CacheHits))
		o.ObserveInt64(misses, int64(st.CacheMisses))
		r := 0.0
		if n := st.CacheHits + st.CacheMisses; n > 0 {
			r = float64(st.CacheHits) / float64(n)
		}
		o.ObserveFloat64(ratio, r)
		o.ObserveInt64(cacheBytes, st.CacheBytes)
		o.ObserveInt64(renewals, int64(st.OriginRenewals))
		o.ObserveInt64(retained, int64(st.Retention.Events), eventsAttr)
		o.ObserveInt64(retained, int64(st.Retention.Snapshots), snapshotsAttr)
		o.ObserveInt64(retained, int64(st.Retention.Merged), journalAttr)
		o.ObserveInt64(retentionErrors, int64(st.Retention.Errors))
		if src.Push != nil {
			ps := src.Push()
			o.ObserveInt64(passes, int64(ps.Passes))
			o.ObserveInt64(pushCommits, int64(ps.Commits))
			o.ObserveInt64(pushed, int64(ps.EntriesPushed))
			o.ObserveInt64(already, int64(ps.AlreadyApplied))
			o.ObserveInt64(conflicts, int64(ps.Conflicts))
			o.ObserveInt64(superseded, int64(ps.Superseded))
			o.ObserveInt64(parkedPush, int64(ps.Parked))
			t := 0.0
			if !ps.LastSuccess.IsZero() {
				t = float64(ps.LastSuccess.UnixNano()) / 1e9
			}
			o.ObserveFloat64(pushOK, t)
			for res, n := range ps.ConflictsByResolver {
				o.ObserveInt64(decided, int64(n), metric.WithAttributes(attribute.String("resolver", res)))
			}
			o.ObserveInt64(storms, int64(ps.ConflictStorms))
		}
		if src.Pull != nil {
			ps := src.Pull()
			o.ObserveInt64(pullPasses, int64(ps.Deliveries))
			o.ObserveInt64(pullRecords, int64(ps.Records))
			o.ObserveInt64(pullApplied, int64(ps.Applied))
			o.ObserveInt64(pullDiverged, int64(ps.Diverged))
			o.ObserveInt64(pullSkipped, int64(ps.Pending), pendingAttr)
			o.ObserveInt64(pullSkipped, int64(ps.Stale), staleAttr)
			o.ObserveInt64(pullSkipped, int64(ps.Undecodable), undecodableAttr)
			o.ObserveInt64(pullUndecodable, int64(ps.UndecodableStates))
			o.ObserveInt64(pullUndecodableDropped, int64(ps.UndecodableDropped))
			o.ObserveInt64(fetches, int64(ps.Fetches))
			o.ObserveInt64(restarts, int64(ps.WatchRestarts))
		}
		return nil
	}, insts...)
	if err != nil {
		return fmt.Errorf("observe: %w", err)
	}
	return nil
}
