package main

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
)

// Defaults and bounds of serve's request limits. docs/security.md lists
// them with the connection limits of security.go.
const (
	minMaxFrame        = 64 << 10
	maxMaxFrame        = 64 << 20
	defaultReadTimeout = 30 * time.Second
	minMemoryLimit     = 32 << 20
)

// settings defines every setting of serve, bound to c's fields: the one
// list that flags, environment variables, the config file, -h, config
// print and the docs follow. A setting's file key is its flag name with '_'
// for '-' unless it says otherwise.
func (c *Config) settings() []*setting {
	sec, syn, obs := &c.Security, &c.Sync, &c.Observe
	// Settings that rules between settings name (their errors name where
	// each setting involved was given: setting.named).
	maxFrame := intSetting("max-frame", "TAI_MAX_FRAME", wire.DefaultMaxFrame, minMaxFrame, maxMaxFrame, "largest accepted frame in bytes", &c.MaxFrame)
	maxConns := intSetting("max-conns", "TAI_MAX_CONNS", defaultMaxConns, 1, maxMaxConns, "most open connections", &sec.MaxConns)
	project := strSetting("firestore-project", "TAI_FIRESTORE_PROJECT", "",
		"Google Cloud project of the shared Firestore store (empty: local only). "+
			"Credentials are Google's application default credentials; FIRESTORE_EMULATOR_HOST selects an emulator", &syn.Project, nil)
	allowRemote := boolSetting("admin-allow-remote", "TAI_ADMIN_ALLOW_REMOTE",
		"let --admin-addr listen on a non-loopback address; the endpoint has no authentication", &obs.AdminAllowRemote)
	// needsProject refuses a setting of the shared store given without one.
	needsProject := func(s *setting) error {
		if s.text == "" || syn.Project != "" {
			return nil
		}
		return s.errorf("needs --firestore-project (TAI_FIRESTORE_PROJECT, firestore_project), which is not set")
	}
	return []*setting{
		strSetting("socket", "TAI_SOCKET", "./tai.sock", "Unix socket to serve on", &c.Socket, nonEmpty),
		strSetting("data-dir", "TAI_DATA_DIR", "./tai-data", "directory for the local store", &c.DataDir, nonEmpty),
		strSetting("node-id", "TAI_NODE_ID", "", "this sidecar's node id; default: generated once and kept in the data dir", &c.NodeID,
			func(s string) error {
				if s == "" {
					return nil
				}
				return validNodeID(s)
			}),
		strSetting("log-level", "TAI_LOG_LEVEL", "info", "debug, info, warn or error", &c.LogLevel,
			func(s string) error { _, err := parseLevel(s); return err }),
		strSetting("log-format", "TAI_LOG_FORMAT", "text", "text or json", &c.LogFormat, oneOf("text", "json")),
		int64Setting("cache-bytes", "TAI_CACHE_BYTES", localcache.DefaultCacheBytes, 0, math.MaxInt64, "memory for the hot read cache, in bytes", &c.CacheBytes),
		memoryLimitSetting(&c.MemoryLimit),
		maxFrame,
		durSetting("shutdown-timeout", "TAI_SHUTDOWN_TIMEOUT", 10*time.Second, time.Millisecond, 0, "how long shutdown waits for in-flight requests", &c.ShutdownTimeout),
		durSetting("retention-every", "TAI_RETENTION_EVERY", localcache.DefaultRetentionEvery, 0, 0,
			"how often the history retention of per_governor (history_max_age, history_keep_events) is applied; 0: never", &c.RetentionEvery),

		// Access and limits: security.go.
		maxConns,
		withCheck(intSetting("max-conns-per-uid", "TAI_MAX_CONNS_PER_UID", defaultMaxConnsPerUID, 1, maxMaxConns,
			"most open connections of one peer uid, at most --max-conns; the default follows a lower --max-conns", &sec.MaxConnsPerUID),
			func(s *setting) error {
				if sec.MaxConnsPerUID <= sec.MaxConns {
					return nil
				}
				if s.src == fromDefault {
					sec.MaxConnsPerUID = sec.MaxConns
					return nil
				}
				return s.errorf("above %s", maxConns.named())
			}),
		intSetting("max-inflight", "TAI_MAX_INFLIGHT", defaultMaxInflight, 1, maxMaxInflight, "most requests running at once in the background on one connection (writes, lock ops, reads that ask the shared store)", &sec.MaxInflight),
		durSetting("idle-timeout", "TAI_IDLE_TIMEOUT", defaultIdleTimeout, minIdleTimeout, maxIdleTimeout,
			"close a connection that sent no request, or took no reply, for this long", &sec.IdleTimeout),
		durSetting("read-timeout", "TAI_READ_TIMEOUT", defaultReadTimeout, minIdleTimeout, maxIdleTimeout,
			"close a connection whose peer took longer than this to send the rest of a request frame it began", &sec.ReadTimeout),
		withCheck(intSetting("max-value", "TAI_MAX_VALUE", wire.MaxValueSize, 1, wire.MaxValueSize,
			"largest app value in encoded bytes; the default follows a --max-frame too small for it", &sec.MaxValue),
			func(s *setting) error {
				most := sockapi.MaxValueFor(c.MaxFrame)
				if sec.MaxValue <= most {
					return nil
				}
				if s.src == fromDefault {
					sec.MaxValue = most
					return nil
				}
				return s.errorf("above %d, the largest value %s carries", most, maxFrame.named())
			}),
		intSetting("max-batch", "TAI_MAX_BATCH", wire.MaxBatch, 1, wire.MaxBatch, "most entries in one batch_get or batch_put", &sec.MaxBatch),
		intSetting("max-value-depth", "TAI_MAX_VALUE_DEPTH", sockapi.MaxValueDepthLimit, 1, sockapi.MaxValueDepthLimit,
			"how deep maps and arrays may nest inside an app value", &sec.MaxValueDepth),
		{
			flag: "access-file", env: []string{"TAI_ACCESS_FILE"},
			usage: "JSON file with the access policy: allowlists and per-governor rights (see docs/security.md)",
			parse: func(s string) error {
				sec.AccessFile, sec.Access = s, sockapi.Access{}
				if s == "" {
					return nil
				}
				a, err := loadAccess(s)
				sec.Access = a
				return err
			},
			value: func() any { return sec.AccessFile },
		},
		idsSetting("allow-uid", "allow_uids", "TAI_ALLOW_UIDS", "peer uid allowed to connect; none given: any peer that can open the socket",
			&sec.AllowUIDs, &sec.Access.AllowUIDs),
		idsSetting("allow-gid", "allow_gids", "TAI_ALLOW_GIDS", "peer primary gid allowed to connect", &sec.AllowGIDs, &sec.Access.AllowGIDs),

		// The shared store: sync.go.
		project,
		withCheck(strSetting("firestore-database", "TAI_FIRESTORE_DATABASE", "", "Firestore database id; empty: \"(default)\"", &syn.Database, nil),
			needsProject),
		withCheck(strSetting("root", "TAI_ROOT", "", "document path everything is stored under, e.g. deployments/prod; empty: the database root", &syn.Root, nil),
			needsProject),
		{
			flag: "governors", env: []string{"TAI_GOVERNORS"}, list: true, check: needsProject,
			usage: "governors to pull from the start, besides those with local states",
			parse: func(s string) error {
				syn.Governors = splitList(s)
				for _, g := range syn.Governors {
					if err := wire.ValidateName("governor", g); err != nil {
						return err
					}
				}
				return nil
			},
			value: func() any { return nonNil(syn.Governors) },
		},
		durSetting("flush-timeout", "TAI_FLUSH_TIMEOUT", 5*time.Second, 0, 0,
			"how long shutdown keeps pushing the journal to the shared store", &syn.FlushTimeout),
		strSetting("history", "TAI_HISTORY", string(syncer.HistorySinceSnapshot),
			"history pulled with the states this sidecar has none of (a fresh sidecar bootstraps with it): "+
				"since_snapshot (the newest shared snapshot and the later events), full (every event), none",
			&syn.History, func(s string) error { _, err := syncer.ParseHistoryMode(s); return err }),
		{
			flag: "resolvers", env: []string{"TAI_RESOLVERS"},
			usage: "conflict resolver per governor: governor=resolver[:fallback],..., governor * for the rest, " +
				"e.g. *=causal:version,orders=app:merge; resolvers lww, version, causal, merge, app (an app on the socket decides); default lww. " +
				"In the config file, per_governor's resolver keys say the same",
			parse: func(s string) error {
				cfg, err := conflict.ParseConfig(s)
				var reg *conflict.Registry
				if err == nil {
					reg, err = knownResolvers() // serve_apps.go
				}
				if err == nil {
					err = cfg.Validate(reg)
				}
				syn.Resolvers = cfg
				return err
			},
			// config print shows the resolvers under per_governor.
		},
		// The conflict ledger and storms: cli_conflicts.go.
		intSetting("storm-threshold", "TAI_STORM_THRESHOLD", syncer.DefaultStormThreshold, 1, math.MaxInt32,
			"a conflict storm is more than this many conflicts on one state within --storm-window (counted and logged once)",
			&syn.StormThreshold),
		durSetting("storm-window", "TAI_STORM_WINDOW", syncer.DefaultStormWindow, time.Millisecond, 0,
			"window of --storm-threshold", &syn.StormWindow),
		intSetting("ledger-max-entries", "TAI_LEDGER_MAX_ENTRIES", localcache.DefaultLedgerMaxEntries, 1, math.MaxInt32,
			"most conflict ledger entries kept locally (the oldest go first)", &syn.LedgerMaxEntries),
		durSetting("ledger-max-age", "TAI_LEDGER_MAX_AGE", localcache.DefaultLedgerMaxAge, time.Minute, 0,
			"how long conflict ledger entries are kept locally", &syn.LedgerMaxAge),
		durSetting("ledger-ttl", "TAI_LEDGER_TTL", firestore.DefaultLedgerTTL, time.Hour, 0,
			"how long the shared conflict ledger keeps a decision: each Firestore ledger document gets expire_at = decision time + this, "+
				"for a Firestore TTL policy on field expire_at of collection group conflicts", &syn.LedgerTTL),
		// Transactions: sockapi/txn.go.
		intSetting("txn-attempts", "TAI_TXN_ATTEMPTS", localcache.DefaultTxnAttempts, 1, 100,
			"most attempts of a strong transaction that loses to concurrent changes (backoff 10 ms to 1 s, with jitter)", &syn.TxnAttempts),

		// Telemetry: admin.go.
		withCheck(strSetting("admin-addr", "TAI_ADMIN_ADDR", "",
			"admin endpoint (/healthz, /readyz, /status, /metrics): 127.0.0.1:PORT, [::1]:PORT, localhost:PORT or unix:PATH; default: none",
			&obs.AdminAddr, nil),
			func(s *setting) error {
				if s.text == "" {
					return nil
				}
				_, err := obs.adminNetwork()
				if errors.Is(err, errNotLoopback) {
					return s.errorf("%v and %s: the endpoint has no authentication; allow remote addresses to serve it there anyway, or use unix:PATH",
						err, allowRemote.named())
				}
				if err != nil {
					return s.errorf("%v", err)
				}
				return nil
			}),
		allowRemote,
		boolSetting("otlp-traces", "TAI_OTLP_TRACES", "export traces with OTLP", &obs.OTLPTraces),
		boolSetting("otlp-metrics", "TAI_OTLP_METRICS", "export metrics with OTLP", &obs.OTLPMetrics),
		withEnv(strSetting("otlp-protocol", "TAI_OTLP_PROTOCOL", "grpc", "OTLP protocol: grpc or http/protobuf", &obs.OTLPProtocol,
			oneOf("grpc", "http/protobuf")), "OTEL_EXPORTER_OTLP_PROTOCOL"),
		strSetting("otlp-endpoint", "TAI_OTLP_ENDPOINT", "",
			"OTLP collector base URL, e.g. http://127.0.0.1:4317; default: OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT, "+
				"else localhost:4317 for grpc, localhost:4318 for http", &obs.OTLPEndpoint,
			func(s string) error {
				if s == "" {
					return nil
				}
				if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return errors.New("want a URL such as http://127.0.0.1:4317")
				}
				return nil
			}),
		durSetting("otlp-metric-interval", "TAI_OTLP_METRIC_INTERVAL", 30*time.Second, time.Millisecond, 0,
			"how often metrics are exported with OTLP", &obs.MetricInterval),
		intSetting("log-burst", "TAI_LOG_BURST", 10, 0, math.MaxInt32,
			"identical log messages let through per --log-window before the rest are counted; 0: no limit", &obs.LogBurst),
		durSetting("log-window", "TAI_LOG_WINDOW", 10*time.Second, time.Millisecond, 0, "window of --log-burst", &obs.LogWindow),
	}
}

func strSetting(flag, env, def, usage string, p *string, check func(string) error) *setting {
	return &setting{
		flag: flag, env: []string{env}, def: def, usage: usage,
		parse: func(s string) error {
			*p = s
			if check != nil {
				return check(s)
			}
			return nil
		},
		value: func() any { return *p },
	}
}

func intSetting(flag, env string, def, lo, hi int, usage string, p *int) *setting {
	s := int64Setting(flag, env, int64(def), int64(lo), int64(hi), usage, nil)
	s.parse = func(t string) error {
		n, err := parseInt(t, int64(lo), int64(hi))
		*p = int(n)
		return err
	}
	s.value = func() any { return *p }
	return s
}

func int64Setting(flag, env string, def, lo, hi int64, usage string, p *int64) *setting {
	return &setting{
		flag: flag, env: []string{env}, def: strconv.FormatInt(def, 10), usage: usage,
		parse: func(t string) (err error) {
			*p, err = parseInt(t, lo, hi)
			return err
		},
		value: func() any { return *p },
	}
}

func parseInt(s string, lo, hi int64) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	switch {
	case err != nil:
		return 0, errors.New("not an integer")
	case n < lo || n > hi:
		if hi == math.MaxInt64 {
			return 0, fmt.Errorf("must be at least %d", lo)
		}
		return 0, fmt.Errorf("out of range [%d, %d]", lo, hi)
	}
	return n, nil
}

// durSetting is a duration of at least lo and, unless hi is 0, at most hi.
func durSetting(flag, env string, def, lo, hi time.Duration, usage string, p *time.Duration) *setting {
	return &setting{
		flag: flag, env: []string{env}, def: def.String(), usage: usage,
		parse: func(s string) error {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				return errors.New("not a duration (e.g. 5m, 90s)")
			case hi > 0 && (d < lo || d > hi):
				return fmt.Errorf("out of range [%v, %v]", lo, hi)
			case d < lo:
				return fmt.Errorf("must be at least %v", lo)
			}
			*p = d
			return nil
		},
		value: func() any { return p.String() },
	}
}

func boolSetting(flag, env, usage string, p *bool) *setting {
	return &setting{
		flag: flag, env: []string{env}, def: "false", usage: usage, boolean: true,
		parse: func(s string) error {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return errors.New("want true or false")
			}
			*p = b
			return nil
		},
		value: func() any { return *p },
	}
}

// idsSetting is a list of uids or gids, own, that is also added to the
// access policy's list, policy (which the access file may have filled).
func idsSetting(flag, key, env, usage string, own, policy *[]uint32) *setting {
	return &setting{
		flag: flag, key: key, env: []string{env}, usage: usage, list: true,
		parse: func(s string) (err error) {
			*own = nil
			if s != "" {
				*own, err = parseIDs([]string{s})
			}
			return err
		},
		check: func(*setting) error {
			for _, id := range *own {
				if !slices.Contains(*policy, id) {
					*policy = append(*policy, id)
				}
			}
			return nil
		},
		value: func() any { return nonNil(*own) },
	}
}

func memoryLimitSetting(p *int64) *setting {
	return &setting{
		flag: "memory-limit", env: []string{"TAI_MEMORY_LIMIT"},
		usage: "soft limit of the Go heap, e.g. 128MiB; default: GOMEMLIMIT, else 70% of the container's memory limit",
		parse: func(s string) error {
			*p = 0
			if s == "" {
				return nil
			}
			n, err := parseBytes(s)
			if err != nil {
				return err
			}
			if n != 0 && n < minMemoryLimit {
				return fmt.Errorf("%d bytes is below 32 MiB: too little for the store", n)
			}
			*p = n
			return nil
		},
		value: func() any { return *p },
	}
}

func withCheck(s *setting, check func(*setting) error) *setting {
	s.check = check
	return s
}

// withEnv adds a variable read when the setting's own is not set.
func withEnv(s *setting, env string) *setting {
	s.env = append(s.env, env)
	return s
}

func nonEmpty(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func oneOf(choices ...string) func(string) error {
	return func(s string) error {
		if !slices.Contains(choices, s) {
			return fmt.Errorf("want %s", orList(choices))
		}
		return nil
	}
}

// orList is "a or b", "a, b or c".
func orList(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
