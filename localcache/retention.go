package localcache

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"
)

// History retention: the store runs Cleanup by itself, every
// Options.RetentionEvery, for each governor whose Options.Retention policy
// removes something (docs/decisions/0015). It removes what a cleanup op
// with the same policy would: history cut at snapshots, never the events of
// changes still in the journal.

// Retention is a governor's history retention: the MaxAge and KeepEvents
// of the cleanups the store runs by itself (see CleanupPolicy). The zero
// Retention keeps everything.
type Retention struct {
	MaxAge     time.Duration
	KeepEvents int
}

// IsZero reports whether r keeps everything.
func (r Retention) IsZero() bool { return r.MaxAge <= 0 && r.KeepEvents <= 0 }

// DefaultRetentionEvery is how often the store applies the retention
// policies when Options.RetentionEvery is 0.
const DefaultRetentionEvery = 10 * time.Minute

// RetentionStats counts what the store's retention rounds did since Open
// (Stats.Retention).
type RetentionStats struct {
	Rounds    uint64 // rounds run (each over every governor with a policy)
	Events    uint64 // events removed
	Snapshots uint64 // snapshots removed (older than the cuts)
	Merged    uint64 // journal entries merged into later ones (local-only stores: see Options.LocalOnly)
	Errors    uint64 // cleanups of one governor that failed (logged; retried next round)
}

// retainer runs the retention rounds (Open starts it, Close stops it).
type retainer struct {
	cancel                                    context.CancelFunc
	done                                      chan struct{}
	rounds, events, snapshots, merged, errors atomic.Uint64
	// held: the governors whose cut changes still in the journal held
	// back, logged once each (the retention goroutine's own).
	held map[string]bool
}

// startRetention starts the retention goroutine, when a policy is set.
func (s *Store) startRetention() {
	s.retain.done = make(chan struct{})
	s.retain.held = make(map[string]bool)
	if s.opts.Retention == nil || s.opts.RetentionEvery < 0 {
		s.retain.cancel = func() {}
		close(s.retain.done)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.retain.cancel = cancel
	go s.retentionLoop(ctx)
}

// stopRetention stops it and waits for it (Close).
func (s *Store) stopRetention() {
	s.retain.cancel()
	<-s.retain.done
}

func (s *Store) retentionLoop(ctx context.Context) {
	defer close(s.retain.done)
	t := time.NewTicker(s.opts.RetentionEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.retainOnce(ctx); errors.Is(err, ErrFailed) || ctx.Err() != nil {
			return
		}
	}
}

// retainOnce applies every governor's retention policy once. A governor
// whose cleanup fails is logged and counted, and the round goes on with the
// next; it returns ErrFailed once the store has failed, or ctx's error.
func (s *Store) retainOnce(ctx context.Context) error {
	govs := s.Governors()
	slices.Sort(govs)
	s.retain.rounds.Add(1)
	for _, gov := range govs {
		r := s.opts.Retention(gov)
		if r.IsZero() {
			continue
		}
		rep, err := s.Cleanup(ctx, CleanupPolicy{Governor: gov, MaxAge: max(r.MaxAge, 0), KeepEvents: max(r.KeepEvents, 0)})
		// Events last: a reader that waits for them finds the others.
		s.retain.snapshots.Add(uint64(rep.Snapshots))
		s.retain.merged.Add(uint64(rep.Merged))
		s.retain.events.Add(uint64(rep.Events))
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrFailed):
			return err
		case err != nil:
			s.retain.errors.Add(1)
			s.log.Warn("history retention failed for a governor (retried next round)", "governor", gov, "err", err,
				"events_removed", rep.Events)
		case rep.Events > 0 || rep.Snapshots > 0 || rep.Merged > 0:
			s.log.Info("history retention", "governor", gov, "states_cut", rep.Cleaned, "events_removed", rep.Events,
				"snapshots_removed", rep.Snapshots, "journal_entries_merged", rep.Merged, "states_held", rep.Held,
				"max_age", r.MaxAge, "keep_events", r.KeepEvents)
		}
		if rep.Held > 0 && !s.retain.held[gov] {
			s.retain.held[gov] = true
			s.log.Info("history retention keeps the events of changes not yet in the shared store (logged once per governor)",
				"governor", gov, "states_held", rep.Held)
		}
	}
	return nil
}

func (s *Store) retentionStats() RetentionStats {
	return RetentionStats{
		Rounds:    s.retain.rounds.Load(),
		Events:    s.retain.events.Load(),
		Snapshots: s.retain.snapshots.Load(),
		Merged:    s.retain.merged.Load(),
		Errors:    s.retain.errors.Load(),
	}
}
