package main

import (
	"context"
	"errors"
	"flag"
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
	"github.com/tai-state/tai-state/sockapi/wire"
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
	// Resolvers says which conflict resolver settles the true conflicts
	// of each governor, in conflict.ParseConfig's form, e.g.
	// "*=causal:version,orders=merge" ("": lww everywhere).
	Resolvers string
	// Fault, from TAI_FAULT, injects a failure for crash tests:
	// "kill-after-remote-commit" makes the process SIGKILL itself right
	// after the shared store applied a push, before the journal ack.
	Fault string
}

// faultKillAfterRemoteCommit is the one fault TAI_FAULT knows.
const faultKillAfterRemoteCommit = "kill-after-remote-commit"

// Enabled reports whether a shared store is configured.
func (c *SyncConfig) Enabled() bool { return c.Project != "" }

// addSyncFlags registers the shared-store flags on fs; each has a TAI_*
// environment variable that sets its default.
func addSyncFlags(fs *flag.FlagSet, getenv func(string) string, c *SyncConfig) {
	fs.StringVar(&c.Project, "firestore-project", getenv("TAI_FIRESTORE_PROJECT"),
		"Google Cloud project of the shared Firestore store (env TAI_FIRESTORE_PROJECT; empty: local only). "+
			"Credentials are Google's application default credentials; FIRESTORE_EMULATOR_HOST selects an emulator")
	fs.StringVar(&c.Database, "firestore-database", getenv("TAI_FIRESTORE_DATABASE"),
		"Firestore database id (env TAI_FIRESTORE_DATABASE; default \"(default)\")")
	fs.StringVar(&c.Root, "root", getenv("TAI_ROOT"),
		"document path everything is stored under, e.g. deployments/prod (env TAI_ROOT; default: the database root)")
	c.Governors = splitList(getenv("TAI_GOVERNORS"))
	fs.Func("governors", "comma-separated governors to pull from the start, besides those with local states (env TAI_GOVERNORS)", func(s string) error {
		c.Governors = splitList(s)
		return nil
	})
	c.FlushTimeout = 5 * time.Second
	if v := getenv("TAI_FLUSH_TIMEOUT"); v != "" {
		c.FlushTimeout = -1 // reported by validate
		if d, err := time.ParseDuration(v); err == nil {
			c.FlushTimeout = d
		}
	}
	c.Fault = getenv("TAI_FAULT")
	fs.DurationVar(&c.FlushTimeout, "flush-timeout", c.FlushTimeout,
		"how long shutdown keeps pushing the journal to the shared store (env TAI_FLUSH_TIMEOUT)")
	fs.StringVar(&c.Resolvers, "resolvers", getenv("TAI_RESOLVERS"),
		"conflict resolver per governor: governor=resolver[:fallback],..., governor * for the rest, "+
			"e.g. *=causal:version,orders=merge; resolvers lww, version, causal, merge (env TAI_RESOLVERS; default lww)")
}

// resolverSet builds the conflict resolvers of --resolvers.
func (c *SyncConfig) resolverSet() (*conflict.Set, error) {
	cfg, err := conflict.ParseConfig(c.Resolvers)
	if err != nil {
		return nil, fmt.Errorf("--resolvers (TAI_RESOLVERS): %w", err)
	}
	set, err := conflict.NewRegistry().Build(cfg)
	if err != nil {
		return nil, fmt.Errorf("--resolvers (TAI_RESOLVERS): %w", err)
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

// validate reports the first setting that cannot work.
func (c *SyncConfig) validate() error {
	if c.Fault != "" && c.Fault != faultKillAfterRemoteCommit {
		return fmt.Errorf("TAI_FAULT=%q: the only fault is %q", c.Fault, faultKillAfterRemoteCommit)
	}
	if c.FlushTimeout < 0 {
		return errors.New("--flush-timeout (TAI_FLUSH_TIMEOUT) must be a non-negative duration such as 5s")
	}
	for _, g := range c.Governors {
		if err := wire.ValidateName("governor", g); err != nil {
			return fmt.Errorf("--governors: %w", err)
		}
	}
	if _, err := c.resolverSet(); err != nil {
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
	return firestore.Config{ProjectID: c.Project, DatabaseID: c.Database, Root: c.Root}
}

// syncLoops are the push and pull loops of a sidecar with a shared store.
type syncLoops struct {
	remote *firestore.Remote
	store  *localcache.Store
	push   *syncer.Syncer
	pull   *syncer.Puller
	// governors lists the served governors (readiness: admin.go).
	governors func() []string
}

// openSync connects the shared store and builds the loops over store; nil
// when none is configured.
func openSync(ctx context.Context, c *SyncConfig, store *localcache.Store, log *slog.Logger, tel *telemetry) (*syncLoops, error) {
	if !c.Enabled() {
		log.Info("no shared store configured: local only, changes stay in the journal")
		return nil, nil
	}
	resolvers, err := c.resolverSet()
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
	return &syncLoops{
		remote:    remote,
		store:     store,
		push:      syncer.New(store, tel.wrapRemote(pushTo), tel.pushOptions(syncer.Options{Logger: log.With("component", "push"), Resolvers: resolvers})),
		pull:      syncer.NewPuller(store, tel.wrapRemote(remote), syncer.PullOptions{ListGovernors: governors, Logger: log.With("component", "pull")}),
		governors: governors,
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
	return pullSync{l.pull, l.store}
}

// pullSync adapts the Puller (and the store's strong writes) to
// sockapi.Sync, translating their errors.
type pullSync struct {
	p     *syncer.Puller
	store *localcache.Store
}

func (s pullSync) Fetch(ctx context.Context, k localcache.Key) error {
	_, _, err := s.p.Fetch(ctx, syncer.Key{Governor: k.Governor, State: k.State})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syncer.ErrNotFound):
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteNotFound, err)
	case errors.Is(err, syncer.ErrUnavailable):
		return fmt.Errorf("%w: %v", sockapi.ErrRemoteUnavailable, err)
	}
	return err
}

func (s pullSync) FreshAt(governor string) (time.Time, bool) { return s.p.FreshAt(governor) }

func (s pullSync) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	recs, err := s.store.WriteStrong(ctx, s.p, ws)
	if errors.Is(err, syncer.ErrUnavailable) {
		return nil, fmt.Errorf("%w: %v", sockapi.ErrRemoteUnavailable, err)
	}
	return recs, err
}

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
