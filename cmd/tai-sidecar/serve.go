package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	oklog "github.com/oklog/run"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
)

// Config is the effective configuration of `tai-sidecar serve`. Each field
// is a setting of config_settings.go, or made of several.
type Config struct {
	Socket          string
	DataDir         string
	NodeID          string
	nodeIDFrom      string // where NodeID was given, for errors: "--node-id x", "TAI_NODE_ID=x", ...
	LogLevel        string
	LogFormat       string
	CacheBytes      int64
	MemoryLimit     int64 // Go heap soft limit; 0: GOMEMLIMIT, else a share of the cgroup limit
	MaxFrame        int
	ShutdownTimeout time.Duration
	Security        SecurityConfig // access policy, connection and request limits: security.go
	Sync            SyncConfig     // the shared store: sync.go
	Observe         ObserveConfig  // admin endpoint, traces, metrics, log limit: admin.go
	// Snapshots are the per-governor snapshot settings of the config
	// file (config_governors.go); Snapshots.For is what the store takes.
	Snapshots SnapshotConfig
	// History is the per-governor history retention of the config file
	// (config_governors.go), applied every RetentionEvery (0: never).
	History        HistoryConfig
	RetentionEvery time.Duration
}

// Validate reports the first combination of settings that cannot work.
// Each setting is checked as it is read (config_settings.go).
func (c *Config) Validate() error {
	if err := c.Observe.validate(); err != nil {
		return err
	}
	return c.Sync.validate()
}

// parseServe reads serve's settings from its flags, the TAI_* environment
// and the config file (config.go); socket is the global --socket flag, ""
// when not given.
func parseServe(args []string, socket string, stderr io.Writer, getenv func(string) string) (*Config, error) {
	l, err := loadConfig("serve", args, socket, stderr, getenv, nil)
	if err != nil {
		return nil, err
	}
	for _, s := range l.settings {
		if s.flag == "node-id" {
			l.cfg.nodeIDFrom = s.named()
		}
	}
	return l.cfg, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, errors.New("want debug, info, warn or error")
	}
	return l, nil
}

func newLogger(c *Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel) // validated
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(c.Observe.limitLogs(h)) // repeated messages: admin.go
}

// serve runs the sidecar until SIGINT or SIGTERM. The first signal starts a
// graceful shutdown: stop accepting, finish in-flight requests, close the
// store. A second signal exits at once; acknowledged writes are already on
// disk, so nothing acknowledged is lost either way.
func serve(ctx context.Context, args []string, socket string, stdout, stderr io.Writer, getenv func(string) string) error {
	c, err := parseServe(args, socket, stderr, getenv)
	if err != nil {
		return err
	}
	log := newLogger(c, stderr)
	defer flushLogs(log)
	if limit, from, err := applyMemoryLimit(c.MemoryLimit, getenv, cgroupMemoryMax); err != nil {
		log.Warn("reading the container memory limit", "err", err)
	} else if limit > 0 {
		log.Info("memory limit", "bytes", limit, "from", from)
	}

	if err := os.MkdirAll(c.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	nodeID, err := loadNodeID(c.DataDir, c.NodeID)
	var differs *nodeIDError
	if errors.As(err, &differs) {
		// A setting that cannot work: exit status 2, naming where it came from.
		return &usageError{fmt.Sprintf("%s: %v", c.nodeIDFrom, err)}
	}
	if err != nil {
		return err
	}
	log = log.With("node", nodeID)
	tel, err := startTelemetry(ctx, &c.Observe, nodeID, log)
	if err != nil {
		return err
	}
	defer tel.shutdown(log) // after the store closes: its last spans and metrics go out

	store, err := localcache.Open(localcache.Options{
		Dir:        filepath.Join(c.DataDir, "badger"),
		NodeID:     nodeID,
		Logger:     log.With("component", "localcache"),
		CacheBytes: c.CacheBytes,
		// The conflict ledger's retention (--ledger-max-entries, --ledger-max-age).
		LedgerMaxEntries: c.Sync.LedgerMaxEntries,
		LedgerMaxAge:     c.Sync.LedgerMaxAge,
		// Per-governor snapshot interval and retention (per_governor).
		Snapshots: c.Snapshots.For,
		// Per-governor history retention (per_governor), every
		// --retention-every.
		Retention:      c.History.For,
		RetentionEvery: cmp.Or(c.RetentionEvery, -1),
		// Without a shared store no push reads the journal: retention
		// may merge its entries (docs/operations.md).
		LocalOnly: !c.Sync.Enabled(),
		OnLogSync: tel.logSyncs(),
	})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
		defer cancel()
		if err := store.Close(closeCtx); err != nil {
			log.Error("close store", "err", err)
		}
	}()

	loops, err := openSync(ctx, &c.Sync, store, log, tel)
	if err != nil {
		return err
	}
	if loops == nil && (c.RetentionEvery == 0 || !c.History.Bounded()) {
		// Nothing will ever leave the journal or the history.
		log.Info("no history retention: without a shared store, the history and the journal grow with every write " +
			"(bound them with per_governor history_max_age or history_keep_events, and --retention-every)")
	}
	if loops != nil {
		defer loops.close(log)
	}
	locks, err := openLocks(ctx, &c.Sync, log.With("component", "locks")) // serve_locks.go
	if err != nil {
		return err
	}
	if locks != nil {
		defer locks.close(log)
	}
	if err := tel.registerGauges(store, loops); err != nil {
		return err
	}
	adm, err := tel.newAdmin(store, loops, log.With("component", "admin"))
	if err != nil {
		return err
	}

	ln, err := sockapi.Listen(c.Socket)
	if err != nil {
		return err
	}
	srv := sockapi.NewServer(store, c.Security.serverOptions(sockapi.Options{
		Logger:     log.With("component", "sockapi"),
		ServerName: "tai-sidecar/" + version,
		MaxFrame:   c.MaxFrame,
		Observer:   tel.requestObserver(),
		Sync:       loops.sockSync(), // nil: local only
		Locks:      tel.wrapLocks(locks.sockLocks()),
		Apps:       loops.appHub(), // nil: local only (serve_apps.go)

		TxnAttempts: c.Sync.TxnAttempts, // strong transactions (--txn-attempts)
	}))

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	var g oklog.Group
	{
		ctx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			select {
			case sig := <-sigs:
				log.Info("shutting down", "signal", sig.String())
				go func() { // a second signal aborts the graceful shutdown
					if sig, ok := <-sigs; ok {
						log.Warn("second signal: exiting now", "signal", sig.String())
						os.Exit(1)
					}
				}()
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, func(error) { cancel() })
	}
	{
		g.Add(func() error {
			log.Info("serving", "socket", c.Socket, "data_dir", c.DataDir, "version", version)
			return srv.Serve(ctx, ln)
		}, func(error) {
			shutCtx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(shutCtx); err != nil {
				log.Warn("shutdown", "err", err)
			}
		})
	}
	if adm != nil {
		g.Add(adm.run, adm.stop)
	}
	{
		ctx, cancel := context.WithCancel(ctx)
		g.Add(func() error { return releaseIdleHeap(ctx, log.With("component", "memory")) }, func(error) { cancel() })
	}
	if loops != nil {
		for _, run := range []func(context.Context) error{loops.push.Run, loops.pull.Run, loops.snaps.Run} {
			ctx, cancel := context.WithCancel(ctx)
			g.Add(func() error { return run(ctx) }, func(error) { cancel() })
		}
	}
	if locks != nil {
		ctx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			return runLockCleanup(ctx, locks.locks, lockCleanupEvery, lockCleanupGrace, log.With("component", "locks"))
		}, func(error) { cancel() })
	}
	err = g.Run()
	if loops != nil {
		// The server has stopped: no write can join the journal any more.
		loops.flush(c.Sync.FlushTimeout, log)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}

const nodeIDFile = "node-id"

// nodeIDError is a node id setting that differs from the one a data dir
// keeps.
type nodeIDError struct{ given, kept, path string }

func (e *nodeIDError) Error() string {
	return fmt.Sprintf("node id %q differs from %q kept in %s; a data dir belongs to one node", e.given, e.kept, e.path)
}

// loadNodeID returns the node id kept in dir, creating it on first start
// (from flag when given, else random). A flag that disagrees with the kept id
// is an error: the id names this node's changes everywhere, so it must not
// change under an existing store.
func loadNodeID(dir, flagID string) (string, error) {
	path := filepath.Join(dir, nodeIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if err := validNodeID(id); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if flagID != "" && flagID != id {
			return "", &nodeIDError{given: flagID, kept: id, path: path}
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read node id: %w", err)
	}
	id := flagID
	if id == "" {
		var r [8]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", err
		}
		id = "n-" + hex.EncodeToString(r[:])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o640); err != nil {
		return "", fmt.Errorf("write node id: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write node id: %w", err)
	}
	return id, syncFile(dir)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// validNodeID keeps node ids usable as names everywhere they appear (vector
// clock keys, op ids, Firestore fields): 1 to 64 of [A-Za-z0-9._-].
func validNodeID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node id %q: want 1 to 64 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("node id %q: only letters, digits, '.', '_' and '-' are allowed", id)
		}
	}
	return nil
}
