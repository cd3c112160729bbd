package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/observe"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/txn"
)

// ObserveConfig is the telemetry of `tai-sidecar serve`: the admin
// endpoint, OTLP export of traces and metrics, and the log rate limit. All
// of it is off by default.
type ObserveConfig struct {
	// AdminAddr serves /healthz, /readyz, /status and /metrics: host:port
	// (loopback unless AdminAllowRemote) or unix:PATH. Empty: no endpoint.
	AdminAddr        string
	AdminAllowRemote bool
	OTLPTraces       bool
	OTLPMetrics      bool
	// OTLPProtocol is grpc or http/protobuf.
	OTLPProtocol string
	// OTLPEndpoint is a base URL (http://host:port); empty: the exporters'
	// OTEL_EXPORTER_OTLP_* variables, else their defaults.
	OTLPEndpoint   string
	MetricInterval time.Duration
	// LogBurst identical log messages (level and text) pass per LogWindow;
	// later ones are counted and reported when the window ends. 0: no limit.
	LogBurst  int
	LogWindow time.Duration
}

// validate reports the first combination of settings that cannot work
// (each setting is checked as it is read: config_settings.go).
func (c *ObserveConfig) validate() error {
	if c.AdminAddr == "" {
		return nil
	}
	_, err := c.adminNetwork()
	if errors.Is(err, errNotLoopback) {
		return fmt.Errorf("--admin-addr %q is not a loopback address: the endpoint has no authentication; "+
			"add --admin-allow-remote to serve it there anyway, or use unix:PATH", c.AdminAddr)
	}
	if err != nil {
		return fmt.Errorf("--admin-addr %q: %w", c.AdminAddr, err)
	}
	return nil
}

// errNotLoopback: the admin address is not a loopback one, and
// AdminAllowRemote is not set.
var errNotLoopback = errors.New("not a loopback address")

// adminNetwork checks AdminAddr and returns its network, "tcp" or "unix".
// Its errors say what is wrong with the address, not which setting gave it.
func (c *ObserveConfig) adminNetwork() (string, error) {
	if path, ok := strings.CutPrefix(c.AdminAddr, "unix:"); ok {
		if path == "" {
			return "", errors.New("unix: needs a path")
		}
		return "unix", nil
	}
	host, port, err := net.SplitHostPort(c.AdminAddr)
	if err != nil {
		return "", errors.New("want host:port or unix:PATH")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", errors.New("bad port")
	}
	if !c.AdminAllowRemote && !isLoopback(host) {
		return "", errNotLoopback
	}
	return "tcp", nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// limitLogs wraps h in the log rate limit.
func (c *ObserveConfig) limitLogs(h slog.Handler) slog.Handler {
	if c.LogBurst <= 0 {
		return h
	}
	return observe.RateLimit(h, c.LogBurst, c.LogWindow)
}

// flushLogs writes the reports of suppressed log messages still pending.
func flushLogs(log *slog.Logger) {
	if rl, ok := log.Handler().(*observe.RateLimited); ok {
		rl.Flush()
	}
}

// telemetry holds the providers and instruments of a serving sidecar. Its
// nil value means telemetry off: every method is then a no-op.
type telemetry struct {
	cfg    *ObserveConfig
	tp     *sdktrace.TracerProvider // nil: no traces
	mp     *sdkmetric.MeterProvider // nil: no metrics
	reg    *prometheus.Registry     // nil: no /metrics
	req    *observe.Requests
	remote *observe.RemoteObserver
	locks  *observe.LockObserver
	onPass func(context.Context) (context.Context, func(syncer.Report, error))
	onSync func(time.Duration, int) // nil: no metrics
	start  time.Time
	node   string
}

// startTelemetry builds the providers c asks for; nil when c asks for
// nothing (no admin endpoint, no OTLP).
func startTelemetry(ctx context.Context, c *ObserveConfig, node string, log *slog.Logger) (*telemetry, error) {
	if c.AdminAddr == "" && !c.OTLPTraces && !c.OTLPMetrics {
		return nil, nil
	}
	t := &telemetry{cfg: c, start: time.Now(), node: node}
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithAttributes(
		attribute.String("service.name", "tai-sidecar"), attribute.String("service.version", version),
		attribute.String("service.instance.id", node)))
	if err != nil {
		log.Warn("telemetry resource incomplete", "err", err) // the partial resource is still usable
	}
	var tp trace.TracerProvider = tracenoop.NewTracerProvider()
	if c.OTLPTraces {
		exp, err := c.traceExporter(ctx)
		if err != nil {
			return nil, err
		}
		t.tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		tp = t.tp
	}
	var readers []sdkmetric.Option
	if c.AdminAddr != "" {
		t.reg = prometheus.NewRegistry()
		t.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		exp, err := otelprom.New(otelprom.WithRegisterer(t.reg), otelprom.WithoutScopeInfo())
		if err != nil {
			return nil, fmt.Errorf("prometheus exporter: %w", err)
		}
		readers = append(readers, sdkmetric.WithReader(exp))
	}
	if c.OTLPMetrics {
		exp, err := c.metricExporter(ctx)
		if err != nil {
			t.shutdown(log)
			return nil, err
		}
		readers = append(readers, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(c.MetricInterval))))
	}
	var mp metric.MeterProvider
	if len(readers) > 0 {
		t.mp = sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(res))...)
		mp = t.mp
	} else {
		mp = metricnoop.NewMeterProvider()
	}
	if t.req, err = observe.NewRequests(tp, mp); err == nil {
		if t.remote, err = observe.NewRemoteObserver(tp, mp); err == nil {
			if t.locks, err = observe.NewLockObserver(mp); err == nil {
				t.onPass, err = observe.PushPasses(tp, mp)
			}
		}
	}
	if err == nil && t.mp != nil {
		t.onSync, err = observe.LogSyncs(mp)
	}
	if err != nil {
		t.shutdown(log)
		return nil, err
	}
	log.Info("telemetry", "otlp_traces", c.OTLPTraces, "otlp_metrics", c.OTLPMetrics, "otlp_protocol", c.OTLPProtocol,
		"prometheus", t.reg != nil)
	return t, nil
}

// endpoint returns the OTLP URL of signal ("traces", "metrics") from
// --otlp-endpoint, a base URL like OTEL_EXPORTER_OTLP_ENDPOINT: for HTTP the
// signal's path is appended when the URL has none.
func (c *ObserveConfig) endpoint(signal string) string {
	u := strings.TrimSuffix(c.OTLPEndpoint, "/")
	if c.OTLPProtocol == "http/protobuf" {
		if p, _ := url.Parse(u); p != nil && p.Path == "" {
			u += "/v1/" + signal
		}
	}
	return u
}

func (c *ObserveConfig) traceExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	var (
		exp sdktrace.SpanExporter
		err error
	)
	if c.OTLPProtocol == "grpc" {
		var opts []otlptracegrpc.Option
		if c.OTLPEndpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(c.endpoint("traces")))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	} else {
		var opts []otlptracehttp.Option
		if c.OTLPEndpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(c.endpoint("traces")))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	return exp, nil
}

func (c *ObserveConfig) metricExporter(ctx context.Context) (sdkmetric.Exporter, error) {
	var (
		exp sdkmetric.Exporter
		err error
	)
	if c.OTLPProtocol == "grpc" {
		var opts []otlpmetricgrpc.Option
		if c.OTLPEndpoint != "" {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(c.endpoint("metrics")))
		}
		exp, err = otlpmetricgrpc.New(ctx, opts...)
	} else {
		var opts []otlpmetrichttp.Option
		if c.OTLPEndpoint != "" {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(c.endpoint("metrics")))
		}
		exp, err = otlpmetrichttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp metric exporter: %w", err)
	}
	return exp, nil
}

// shutdownTimeout bounds the final export of traces and metrics.
const telemetryShutdownTimeout = 5 * time.Second

// shutdown flushes and stops the providers.
func (t *telemetry) shutdown(log *slog.Logger) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), telemetryShutdownTimeout)
	defer cancel()
	if t.tp != nil {
		if err := t.tp.Shutdown(ctx); err != nil {
			log.Warn("flush traces", "err", err)
		}
	}
	if t.mp != nil {
		if err := t.mp.Shutdown(ctx); err != nil {
			log.Warn("flush metrics", "err", err)
		}
	}
}

// requestObserver is the socket server's observer; nil with telemetry off.
func (t *telemetry) requestObserver() sockapi.Observer {
	if t == nil {
		return nil // an untyped nil: the server skips observing
	}
	return t.req
}

// wrapLocks instruments the lock service (nil without one).
func (t *telemetry) wrapLocks(l txn.Locks) txn.Locks {
	if t == nil {
		return l
	}
	return t.locks.Wrap(l) // nil stays nil
}

// wrapRemote instruments a shared-store client.
func (t *telemetry) wrapRemote(r syncer.Remote) syncer.Remote {
	if t == nil {
		return r
	}
	return t.remote.Wrap(r)
}

// wrapHistory instruments h like wrapRemote.
func (t *telemetry) wrapHistory(h syncer.HistoryRemote) syncer.HistoryRemote {
	if t == nil {
		return h
	}
	return t.remote.WrapHistory(h)
}

// pushOptions adds the pass hook to o.
func (t *telemetry) pushOptions(o syncer.Options) syncer.Options {
	if t != nil {
		o.OnPass = t.onPass
	}
	return o
}

// logSyncs returns the store's OnLogSync hook (nil without metrics).
func (t *telemetry) logSyncs() func(time.Duration, int) {
	if t == nil {
		return nil
	}
	return t.onSync
}

// registerGauges makes the metrics read at collection time.
func (t *telemetry) registerGauges(store *localcache.Store, loops *syncLoops) error {
	if t == nil || t.mp == nil {
		return nil
	}
	src := observe.Sources{Store: store}
	if loops != nil {
		src.Push, src.Pull = loops.push.Stats, loops.pull.Stats
	}
	return observe.RegisterGauges(t.mp, src)
}

// admin is the admin endpoint.
type admin struct {
	ln    net.Listener
	srv   *http.Server
	log   *slog.Logger
	state *adminState
}

// adminState is what the endpoint reports.
type adminState struct {
	t     *telemetry
	store *localcache.Store
	loops *syncLoops // nil: no shared store
}

// newAdmin listens on the admin address; nil when none is configured.
func (t *telemetry) newAdmin(store *localcache.Store, loops *syncLoops, log *slog.Logger) (*admin, error) {
	if t == nil || t.cfg.AdminAddr == "" {
		return nil, nil
	}
	network, err := t.cfg.adminNetwork()
	if err != nil {
		return nil, fmt.Errorf("--admin-addr %q: %w", t.cfg.AdminAddr, err)
	}
	a := &admin{log: log, state: &adminState{t: t, store: store, loops: loops}}
	if network == "unix" {
		// As the API socket: a stale socket is replaced, a live one or
		// another file never is, and closing removes only this socket.
		a.ln, err = sockapi.Listen(strings.TrimPrefix(t.cfg.AdminAddr, "unix:"))
	} else {
		a.ln, err = net.Listen(network, t.cfg.AdminAddr)
	}
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", a.state.readyz)
	mux.HandleFunc("GET /status", a.state.status)
	mux.Handle("GET /metrics", promhttp.HandlerFor(t.reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{log}}))
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	log.Info("admin endpoint", "addr", a.ln.Addr().String())
	return a, nil
}

// slogPromLogger adapts the logger for promhttp's errors.
type slogPromLogger struct{ log *slog.Logger }

func (l slogPromLogger) Println(v ...any) { l.log.Warn("serving metrics", "err", fmt.Sprint(v...)) }

// run serves until stop.
func (a *admin) run() error {
	err := a.srv.Serve(a.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin endpoint: %w", err)
}

func (a *admin) stop(error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		a.srv.Close()
	}
}

// ready reports whether the sidecar should get traffic, and why not: the
// store is open (it is while the endpoint runs) and, with a shared store,
// the first push pass has finished and every served governor has been
// pulled once (or a pull has failed: the sidecar still serves, from its
// local copy).
func (s *adminState) ready() (bool, string) {
	if s.loops == nil {
		return true, "ready: local only"
	}
	ps := s.loops.push.Stats()
	if !(ps.Passes >= 2 || !ps.LastSuccess.IsZero() || !ps.LastErrorTime.IsZero()) {
		return false, "not ready: the first push to the shared store has not finished"
	}
	pl := s.loops.pull.Stats()
	if pl.LastErrorTime.IsZero() {
		for _, g := range s.loops.governors() {
			if _, ok := s.loops.pull.FreshAt(g); !ok {
				return false, "not ready: the first pull from the shared store has not finished"
			}
		}
	}
	return true, "ready"
}

func (s *adminState) readyz(w http.ResponseWriter, r *http.Request) {
	ok, why := s.ready()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, why)
}

// adminStatus is the /status reply (JSON).
type adminStatus struct {
	Node             string  `json:"node"`
	Version          string  `json:"version"`
	UptimeSeconds    float64 `json:"uptime_seconds"`
	Ready            bool    `json:"ready"`
	ReadyReason      string  `json:"ready_reason"`
	States           int64   `json:"states"`
	JournalDepth     int64   `json:"journal_depth"`
	OldestPendingSec float64 `json:"oldest_pending_seconds"`
	Parked           int64   `json:"parked"`
	// OriginRenewals counts the new incarnations drawn since start because
	// another store made changes under this one's origin (a copied data
	// dir): each is logged at error.
	OriginRenewals uint64 `json:"origin_renewals"`
	CacheHits      uint64 `json:"cache_hits"`
	CacheMisses    uint64 `json:"cache_misses"`
	// HistoryRetention is what the history retention rounds removed
	// since start (per_governor history_max_age, history_keep_events).
	HistoryRetention retentionStatus `json:"history_retention"`
	SharedStore      *sharedStatus   `json:"shared_store"` // nil: none configured
}

type retentionStatus struct {
	Rounds           uint64 `json:"rounds"`
	EventsRemoved    uint64 `json:"events_removed"`
	SnapshotsRemoved uint64 `json:"snapshots_removed"`
	// JournalMerged: journal entries merged into later changes of their
	// state (a sidecar without a shared store).
	JournalMerged uint64 `json:"journal_entries_merged"`
	Errors        uint64 `json:"errors"`
}

// historyRetention is s's history retention, zero for a nil s.
func (s *adminStatus) historyRetention() retentionStatus {
	if s == nil {
		return retentionStatus{}
	}
	return s.HistoryRetention
}

type sharedStatus struct {
	Reachable        bool      `json:"reachable"`
	LastAnswer       time.Time `json:"last_answer,omitzero"`
	LastFailure      time.Time `json:"last_failure,omitzero"`
	FailureOutcome   string    `json:"failure_outcome,omitempty"`
	LastPushSuccess  time.Time `json:"last_push_success,omitzero"`
	LastPushError    string    `json:"last_push_error,omitempty"`
	LastPushErrorAt  time.Time `json:"last_push_error_at,omitzero"`
	LastPullError    string    `json:"last_pull_error,omitempty"`
	LastPullErrorAt  time.Time `json:"last_pull_error_at,omitzero"`
	LastPullDelivery time.Time `json:"last_pull_delivery,omitzero"`
	EntriesPushed    uint64    `json:"entries_pushed"`
	RecordsPulled    uint64    `json:"records_pulled"`
	Conflicts        uint64    `json:"conflicts"`
	// Documents the pull left out because they do not decode, the states
	// whose latest shared-store document does not decode now (remembered
	// across restarts), and the documents not remembered because too many
	// states' documents did not decode already.
	UndecodableSkipped uint64 `json:"undecodable_skipped"`
	UndecodableStates  int    `json:"undecodable_states"`
	UndecodableDropped uint64 `json:"undecodable_dropped"`
}

func (s *adminState) status(w http.ResponseWriter, r *http.Request) {
	st := s.store.Stats()
	out := adminStatus{
		Node:           s.t.node,
		Version:        version,
		UptimeSeconds:  time.Since(s.t.start).Seconds(),
		States:         st.States,
		JournalDepth:   st.JournalDepth,
		Parked:         st.Parked,
		OriginRenewals: st.OriginRenewals,
		CacheHits:      st.CacheHits,
		CacheMisses:    st.CacheMisses,
		HistoryRetention: retentionStatus{Rounds: st.Retention.Rounds, EventsRemoved: st.Retention.Events,
			SnapshotsRemoved: st.Retention.Snapshots, JournalMerged: st.Retention.Merged, Errors: st.Retention.Errors},
	}
	out.Ready, out.ReadyReason = s.ready()
	if st.JournalDepth > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		if es, err := s.store.Pending(ctx, 0, 1); err == nil && len(es) > 0 {
			out.OldestPendingSec = max(0, time.Since(time.Unix(0, es[0].Time)).Seconds())
		}
		cancel()
	}
	if s.loops != nil {
		reach := s.t.remote.Reachability()
		ps, pl := s.loops.push.Stats(), s.loops.pull.Stats()
		out.SharedStore = &sharedStatus{
			Reachable:        reach.Reachable(),
			LastAnswer:       reach.LastAnswer,
			LastFailure:      reach.LastFailure,
			FailureOutcome:   reach.Outcome,
			LastPushSuccess:  ps.LastSuccess,
			LastPushError:    ps.LastError,
			LastPushErrorAt:  ps.LastErrorTime,
			LastPullError:    pl.LastError,
			LastPullErrorAt:  pl.LastErrorTime,
			LastPullDelivery: pl.LastDelivery,
			EntriesPushed:    ps.EntriesPushed,
			RecordsPulled:    pl.Records,
			Conflicts:        ps.Conflicts,

			UndecodableSkipped: pl.Undecodable,
			UndecodableStates:  pl.UndecodableStates,
			UndecodableDropped: pl.UndecodableDropped,
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
