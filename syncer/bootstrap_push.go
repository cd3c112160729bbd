package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// SnapshotRef names one snapshot: a state and a version.
type SnapshotRef struct {
	Key
	Version uint64
}

// SnapshotSource is the local store's outbox of snapshots for the shared
// store: every snapshot the node took itself waits there until the shared
// store has it (or it can never be written there). The local store
// (localcache) implements it.
type SnapshotSource interface {
	// UnpushedSnapshots returns up to limit snapshots of the outbox that
	// come after the ref after (the zero ref: from the start), in the
	// source's order, which is stable. A snapshot that retention dropped
	// leaves the outbox with it.
	UnpushedSnapshots(ctx context.Context, after SnapshotRef, limit int) ([]Snapshot, error)
	// SnapshotsPushed removes refs from the outbox (refs not in it are
	// ignored).
	SnapshotsPushed(ctx context.Context, refs []SnapshotRef) error
	// SnapshotKeep is how many snapshots of a state of governor are kept
	// (the same retention applies in the shared store).
	SnapshotKeep(governor string) int
}

// SnapshotPushOptions configure a SnapshotPusher.
type SnapshotPushOptions struct {
	// Logger receives failures (nil: none).
	Logger *slog.Logger
	// Interval is how often Run looks at the outbox (default 1s).
	Interval time.Duration
	// CallTimeout bounds one PutSnapshot call (default 30s).
	CallTimeout time.Duration
}

// SnapshotPushStats are the snapshot pusher's counters.
type SnapshotPushStats struct {
	Stored    uint64 // written to the shared store
	Existing  uint64 // the shared store had them already
	Mismatch  uint64 // never writable (renumbered changes): dropped from the outbox
	Unsynced  uint64 // attempts that found the change not pushed yet
	LastError string
}

// SnapshotPusher copies the local store's snapshots to the shared store,
// in the background: the snapshots are taken from the local store's outbox,
// so a write never waits for it, and a crash loses nothing (the outbox is
// durable, and writing a snapshot twice keeps one).
type SnapshotPusher struct {
	src    SnapshotSource
	remote HistoryRemote
	opts   SnapshotPushOptions
	log    *slog.Logger

	mu    sync.Mutex
	stats SnapshotPushStats
}

// NewSnapshotPusher returns a pusher from src to remote; it starts nothing.
func NewSnapshotPusher(src SnapshotSource, remote HistoryRemote, opts SnapshotPushOptions) *SnapshotPusher {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 30 * time.Second
	}
	return &SnapshotPusher{src: src, remote: remote, opts: opts, log: opts.Logger}
}

// Stats returns a copy of the counters.
func (p *SnapshotPusher) Stats() SnapshotPushStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// snapshotPage is how many outbox entries one read returns.
const snapshotPage = 100

// PushOnce pushes every snapshot of the outbox once and returns how many
// are still waiting (their changes not pushed yet). The first failing
// write ends the pass with its error; what was pushed before it left the
// outbox.
func (p *SnapshotPusher) PushOnce(ctx context.Context) (waiting int, err error) {
	var after SnapshotRef
	for {
		snaps, err := p.src.UnpushedSnapshots(ctx, after, snapshotPage)
		if err != nil {
			return waiting, p.fail(fmt.Errorf("read the snapshot outbox: %w", err))
		}
		var done []SnapshotRef
		for _, s := range snaps {
			after = SnapshotRef{Key: s.Key, Version: s.Version}
			cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
			st, err := p.remote.PutSnapshot(cctx, s, p.src.SnapshotKeep(s.Governor))
			cancel()
			if err != nil {
				if perr := p.src.SnapshotsPushed(ctx, done); perr != nil {
					err = errors.Join(err, perr)
				}
				return waiting, p.fail(fmt.Errorf("push snapshot %s v%d: %w", s.Key, s.Version, err))
			}
			p.count(st)
			switch st {
			case SnapshotUnsynced:
				waiting++
				continue
			case SnapshotMismatch:
				p.log.Warn("snapshot not of the shared history (its change was renumbered): not pushed",
					"key", s.Key.String(), "version", s.Version, "op", s.OpID)
			}
			done = append(done, after)
		}
		if err := p.src.SnapshotsPushed(ctx, done); err != nil {
			return waiting, p.fail(fmt.Errorf("clear the snapshot outbox: %w", err))
		}
		if len(snaps) < snapshotPage {
			return waiting, nil
		}
	}
}

func (p *SnapshotPusher) count(st SnapshotStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch st {
	case SnapshotStored:
		p.stats.Stored++
	case SnapshotExists:
		p.stats.Existing++
	case SnapshotMismatch:
		p.stats.Mismatch++
	case SnapshotUnsynced:
		p.stats.Unsynced++
	}
}

func (p *SnapshotPusher) fail(err error) error {
	p.mu.Lock()
	p.stats.LastError = err.Error()
	p.mu.Unlock()
	return err
}

// Run pushes the outbox every Interval until ctx is done, and returns nil
// then. Failures are logged and retried at the next interval.
func (p *SnapshotPusher) Run(ctx context.Context) error {
	t := time.NewTicker(p.opts.Interval)
	defer t.Stop()
	for {
		if _, err := p.PushOnce(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("snapshot push failed, will retry", "err", err, "retry_in", p.opts.Interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
