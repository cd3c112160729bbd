package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	oklog "github.com/oklog/run"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Config is the effective configuration of `tai-sidecar serve`.
type Config struct {
	Socket          string
	DataDir         string
	NodeID          string
	LogLevel        string
	LogFormat       string
	CacheBytes      int64
	MemoryLimit     int64 // Go heap soft limit; 0: GOMEMLIMIT, else a share of the cgroup limit
	MaxFrame        int
	ShutdownTimeout time.Duration
	Security        SecurityConfig // access policy and connection limits: security.go
	Sync            SyncConfig     // the shared store: sync.go
	Observe         ObserveConfig  // admin endpoint, traces, metrics, log limit: admin.go
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Socket == "":
		return errors.New("--socket must not be empty")
	case c.DataDir == "":
		return errors.New("--data-dir must not be empty")
	case c.CacheBytes < 0:
		return errors.New("--cache-bytes must not be negative")
	case c.MemoryLimit != 0 && c.MemoryLimit < 32<<20:
		return fmt.Errorf("--memory-limit %d is below 32 MiB: too little for the store", c.MemoryLimit)
	case c.MaxFrame < 64<<10 || c.MaxFrame > 64<<20:
		return fmt.Errorf("--max-frame %d out of range [64 KiB, 64 MiB]", c.MaxFrame)
	case c.ShutdownTimeout <= 0:
		return errors.New("--shutdown-timeout must be positive")
	}
	if c.NodeID != "" {
		if err := validNodeID(c.NodeID); err != nil {
			return err
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
	if err := c.Observe.validate(); err != nil {
		return err
	}
	return c.Sync.validate()
}

// parseServe reads serve's flags; each has a TAI_* environment variable that
// sets its default, and a flag given on the command line wins.
func parseServe(args []string, socket string, stderr io.Writer, getenv func(string) string) (*Config, error) {
	c := &Config{Socket: socket}
	fs := flag.NewFlagSet("tai-sidecar serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Socket, "socket", socket, "Unix socket to serve on (env TAI_SOCKET)")
	fs.StringVar(&c.DataDir, "data-dir", envOr(getenv, "TAI_DATA_DIR", "./tai-data"), "directory for the local store (env TAI_DATA_DIR)")
	fs.StringVar(&c.NodeID, "node-id", getenv("TAI_NODE_ID"), "this sidecar's node id (env TAI_NODE_ID; default: generated once and kept in the data dir)")
	fs.StringVar(&c.LogLevel, "log-level", envOr(getenv, "TAI_LOG_LEVEL", "info"), "debug, info, warn or error (env TAI_LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", envOr(getenv, "TAI_LOG_FORMAT", "text"), "text or json (env TAI_LOG_FORMAT)")
	cache, err := envInt(getenv, "TAI_CACHE_BYTES", 32<<20)
	if err != nil {
		return nil, err
	}
	fs.Int64Var(&c.CacheBytes, "cache-bytes", cache, "memory for the hot read cache (env TAI_CACHE_BYTES)")
	memLimit := getenv("TAI_MEMORY_LIMIT")
	fs.Func("memory-limit", "soft limit of the Go heap, e.g. 128MiB (env TAI_MEMORY_LIMIT; default: GOMEMLIMIT, else 70% of the container's memory limit)", func(s string) error {
		memLimit = s
		return nil
	})
	maxFrame, err := envInt(getenv, "TAI_MAX_FRAME", wire.DefaultMaxFrame)
	if err != nil {
		return nil, err
	}
	fs.IntVar(&c.MaxFrame, "max-frame", int(maxFrame), "largest accepted frame in bytes (env TAI_MAX_FRAME)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long shutdown waits for in-flight requests")
	sec := addSecurityFlags(fs, getenv)
	addSyncFlags(fs, getenv, &c.Sync)
	addObserveFlags(fs, getenv, &c.Observe)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Sprintf("serve: unexpected argument %q", fs.Arg(0))}
	}
	if c.Security, err = sec.config(); err != nil {
		return nil, err
	}
	if memLimit != "" {
		n, err := parseBytes(memLimit)
		if err != nil {
			return nil, &usageError{"serve: --memory-limit: " + err.Error()}
		}
		c.MemoryLimit = n
	}
	if err := c.Validate(); err != nil {
		return nil, &usageError{"serve: " + err.Error()}
	}
	return c, nil
}

func envInt(getenv func(string) string, key string, def int64) (int64, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, &usageError{fmt.Sprintf("%s=%q: not an integer", key, v)}
	}
	return n, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
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
	if loops != nil {
		defer loops.close(log)
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
	if loops != nil {
		for _, run := range []func(context.Context) error{loops.push.Run, loops.pull.Run} {
			ctx, cancel := context.WithCancel(ctx)
			g.Add(func() error { return run(ctx) }, func(error) { cancel() })
		}
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
			return "", fmt.Errorf("--node-id %q differs from %q kept in %s; a data dir belongs to one node", flagID, id, path)
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
