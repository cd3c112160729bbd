package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
)

// SyncConfig is the shared store of `tai-sidecar serve`. With no project
// the sidecar is local-only: writes stay in the journal until a project is
// configured.
type SyncConfig struct {
	Project  string
	Database string
	Root     string
	// Governors are pulled from the start, besides every governor the local
	// store holds a record of.
	Governors []string
	// FlushTimeout bounds the final push at shutdown.
	FlushTimeout time.Duration
	// History says where the pulled history of a state this node has none
	// of starts (--history: syncer.HistoryMode).
	History string
	// Resolvers says which conflict resolver settles the true conflicts
	// of each governor: --resolvers, e.g. "*=causal:version,orders=merge"
	// (zero: lww everywhere), or the config file's per_governor resolvers.
	Resolvers conflict.Config
	// StormThreshold and StormWindow define a conflict storm (syncer
	// Options); LedgerMaxEntries and LedgerMaxAge bound the local conflict
	// ledger (localcache Options).
	StormThreshold   int
	StormWindow      time.Duration
	LedgerMaxEntries int
	LedgerMaxAge     time.Duration
	// LedgerTTL sets the expire_at of the shared ledger's documents
	// (--ledger-ttl; firestore Config).
	LedgerTTL time.Duration
	// TxnAttempts is how often a strong txn is tried when it loses to
	// concurrent changes (--txn-attempts; sockapi Options).
	TxnAttempts int
	// Fault, from TAI_FAULT, injects a failure for crash tests:
	// "kill-after-remote-commit" makes the process SIGKILL itself right
	// after the shared store applied a push, before the journal ack.
	Fault string
}

// faultKillAfterRemoteCommit is the one fault TAI_FAULT knows.
const faultKillAfterRemoteCommit = "kill-after-remote-commit"

// Enabled reports whether a shared store is configured.
func (c *SyncConfig) Enabled() bool { return c.Project != "" }

// resolverSet builds the conflict resolvers of --resolvers (or the config
// file's per_governor resolvers); "app" asks the apps of hub
// (serve_apps.go).
func (c *SyncConfig) resolverSet(hub *conflict.AppHub) (*conflict.Set, error) {
	reg, err := resolverRegistry(hub)
	if err != nil {
		return nil, err
	}
	set, err := reg.Build(c.Resolvers)
	if err != nil {
		return nil, fmt.Errorf("resolvers: %w", err)
	}
	return set, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// validate reports the first combination of settings that cannot work
// (each setting is checked as it is read: config_settings.go).
func (c *SyncConfig) validate() error {
	if c.Fault != "" && c.Fault != faultKillAfterRemoteCommit {
		return fmt.Errorf("TAI_FAULT=%q: the only fault is %q", c.Fault, faultKillAfterRemoteCommit)
	}
	if _, err := c.resolverSet(newAppHub(c.Resolvers)); err != nil {
		return err
	}
	if !c.Enabled() {
		if c.Database != "" || c.Root != "" || len(c.Governors) > 0 {
			return errors.New("--firestore-database, --root and --governors need --firestore-project")
		}
		return nil
	}
	return c.firestoreConfig().Validate()
}

func (c *SyncConfig) firestoreConfig() firestore.Config {
	return firestore.Config{ProjectID: c.Project, DatabaseID: c.Database, Root: c.Root, LedgerTTL: c.LedgerTTL}
}

// syncLoops are the push and pull loops of a sidecar with a shared store.
type syncLoops struct {
	remote *firestore.Remote
	store  *localcache.Store
	push   *syncer.Syncer
	pull   *syncer.Puller
	snaps  *syncer.SnapshotPusher // copies local snapshots to the shared store
	// governors lists the served governors (readiness: admin.go).
	governors func() []string
	// apps are the apps that decide conflicts (serve_apps.go).
	apps *conflict.AppHub
}

// openSync connects the shared store and builds the loops over store; nil
// when none is configured.
func openSync(ctx context.Context, c *SyncConfig, store *localcache.Store, log *slog.Logger, tel *telemetry) (*syncLoops, error) {
	if !c.Enabled() {
		log.Info("no shared store configured: local only, changes stay in the journal")
		return nil, nil
	}
	apps := newAppHub(c.Resolvers)
	resolvers, err := c.resolverSet(apps)
	if err != nil {
		return nil, err
	}
	remote, err := firestore.Open(ctx, c.firestoreConfig())
	if err != nil {
		return nil, fmt.Errorf("open firestore: %w", err)
	}
	configured := slices.Clone(c.Governors)
	governors := func() []string {
		gs := append(store.Governors(), configured...)
		slices.Sort(gs)
		return slices.Compact(gs)
	}
	log.Info("shared store", "project", c.Project, "database", c.Database, "root", c.Root,
		"resolvers", resolvers.Config().String())
	var pushTo syncer.Remote = remote
	if c.Fault == faultKillAfterRemoteCommit {
		log.Warn("fault injection: the process kills itself after the first push the shared store applies", "fault", c.Fault)
		pushTo = killAfterCommit{remote}
	}
	pushOpts := syncer.Options{Logger: log.With("component", "push"), Resolvers: resolvers,
		StormThreshold: c.StormThreshold, StormWindow: c.StormWindow}
	pullOpts := syncer.PullOptions{ListGovernors: governors, Logger: log.With("component", "pull"),
		History: tel.wrapHistory(remote), HistoryMode: syncer.HistoryMode(c.History)}
	return &syncLoops{
		remote:    remote,
		store:     store,
		push:      syncer.New(store, tel.wrapRemote(pushTo), tel.pushOptions(pushOpts)),
		pull:      syncer.NewPuller(store, tel.wrapRemote(remote), pullOpts),
		snaps:     syncer.NewSnapshotPusher(store, tel.wrapHistory(remote), syncer.SnapshotPushOptions{Logger: log.With("component", "snapshots")}),
		governors: governors,
		apps:      apps,
	}, nil
}

// flush pushes what the journal holds, for at most timeout: the last step
// of a graceful shutdown, after the server stopped taking writes.
func (l *syncLoops) flush(timeout time.Duration, log *slog.Logger) {
	if timeout <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	log.Info("pushing the journal before exit", "timeout", timeout)
	if err := l.push.Flush(ctx); err != nil {
		log.Warn("final push incomplete: the journal keeps the rest for the next start", "err", err)
		return
	}
	log.Info("journal pushed", "took", time.Since(start).Round(time.Millisecond))
}

func (l *syncLoops) close(log *slog.Logger) {
	if err := l.remote.Close(); err != nil {
		log.Warn("close firestore client", "err", err)
	}
}

// sockSync is the shared store as the socket server uses it (read-through,
// bounded and strong reads); nil without a shared store.
func (l *syncLoops) sockSync() sockapi.Sync {
	if l == nil {
		return nil
	}
	return pullSync{l.pull, l.push, l.store}
}

// pullSync adapts the Puller (and the store's strong writes) to
// sockapi.Sync, translating their errors.
type pullSync struct {
	p     *syncer.Puller
	push  *syncer.Syncer
	store *localcache.Store
}

func (s pullSync) Fetch(ctx context.Context, k localcache.Key) error {
	_, err := s.FetchRepair(ctx, k)
	return err
}

// FetchRepair implements sockapi.SyncCounters: a record the store applied
// (newer, or over a diverged one) repaired the local copy.
func (s pullSync) FetchRepair(ctx context.Context, k localcache.Key) (bool, error) {
	_, st, err := s.p.Fetch(ctx, syncer.Key{Governor: k.Governor, State: k.State})
	return st.Applied(), fetchError(err)
}

// ConflictCounts implements sockapi.SyncCounters.
func (s pullSync) ConflictCounts() sockapi.ConflictCounts {
	st := s.push.Stats()
	return sockapi.ConflictCounts{ByResolver: st.ConflictsByResolver, Storms: st.ConflictStorms}
}

// fetchError translates an error of Puller.Fetch for sockapi.Sync.
func fetchError(err error) error {
	if errors.Is(err, syncer.ErrNotFound) {
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteNotFound, err)
	}
	return remoteError(err)
}

// remoteError translates the shared store's errors of a strong read or
// write (a Fetch failed) for sockapi.Sync. A document that does not decode
// is described by itself: its path, when it was written, and why.
func remoteError(err error) error {
	var bad *syncer.UndecodableError
	switch {
	case errors.Is(err, syncer.ErrUnavailable):
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteUnavailable, err)
	case errors.As(err, &bad):
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteUndecodable, bad)
	case errors.Is(err, syncer.ErrUndecodable):
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteUndecodable, err)
	}
	return err
}

func (s pullSync) FreshAt(governor string) (time.Time, bool) { return s.p.FreshAt(governor) }

// Undecodable implements sockapi.SyncUndecodable.
func (s pullSync) Undecodable(k localcache.Key) bool {
	return s.p.Undecodable(syncer.Key{Governor: k.Governor, State: k.State}) != nil
}

func (s pullSync) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	recs, err := s.store.WriteStrong(ctx, s.p, ws)
	if e := remoteError(err); e != err {
		return nil, e
	}
	return recs, err
}

func (s pullSync) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	recs, repaired, err := s.store.ReadStrong(ctx, s.p, keys)
	if e := remoteError(err); e != err {
		return nil, 0, e
	}
	return recs, repaired, err
}

var _ sockapi.SyncUndecodable = pullSync{}

// killAfterCommit is the remote of TAI_FAULT=kill-after-remote-commit.
type killAfterCommit struct{ *firestore.Remote }

func (k killAfterCommit) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	res, err := k.Remote.Commit(ctx, b)
	if err == nil {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	return res, err
}
