package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
)

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tai.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, args []string, env map[string]string) *loaded {
	t.Helper()
	l, err := loadConfig("serve", args, "", io.Discard, envMap(env), nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *loaded) setting(key string) *setting {
	for _, s := range l.settings {
		if s.fileKey() == key {
			return s
		}
	}
	panic("no setting " + key)
}

// TestConfigPrecedence: a flag wins over its variable, which wins over the
// config file, which wins over the default; each layer may give any
// setting, lists and booleans included.
func TestConfigPrecedence(t *testing.T) {
	file := writeConfig(t, `# settings
max_conns: 10
log_level: warn
idle_timeout: 1m
allow_uids: [1, 2]
otlp_traces: true
firestore_project: p
governors: orders, billing
`)
	env := map[string]string{"TAI_CONFIG": file}
	type want struct {
		conns   int
		level   string
		uids    []uint32
		traces  bool
		src     source
		line    int
		idle    time.Duration
		inflite int
	}
	check := func(name string, l *loaded, w want) {
		t.Helper()
		c := l.cfg
		if c.Security.MaxConns != w.conns || c.LogLevel != w.level || !slices.Equal(c.Security.AllowUIDs, w.uids) ||
			!slices.Equal(c.Security.Access.AllowUIDs, w.uids) || c.Observe.OTLPTraces != w.traces ||
			c.Security.IdleTimeout != w.idle || c.Security.MaxInflight != w.inflite {
			t.Errorf("%s: config %+v", name, c)
		}
		if s := l.setting("max_conns"); s.src != w.src || s.line != w.line {
			t.Errorf("%s: max_conns from %v line %d, want %v line %d", name, s.src, s.line, w.src, w.line)
		}
	}

	l := load(t, nil, nil)
	check("defaults", l, want{conns: 1024, level: "info", src: fromDefault, idle: 5 * time.Minute, inflite: 128})
	if l.setting("allow_uids").src != fromDefault || l.file != nil {
		t.Error("defaults: a config file was read")
	}

	l = load(t, nil, env)
	check("file", l, want{conns: 10, level: "warn", uids: []uint32{1, 2}, traces: true, src: fromFile, line: 2, idle: time.Minute, inflite: 128})
	if !slices.Equal(l.cfg.Sync.Governors, []string{"orders", "billing"}) {
		t.Errorf("governors %q", l.cfg.Sync.Governors)
	}

	env["TAI_MAX_CONNS"], env["TAI_LOG_LEVEL"], env["TAI_ALLOW_UIDS"], env["TAI_OTLP_TRACES"] = "20", "error", "3", "false"
	env["TAI_MAX_INFLIGHT"] = "" // empty: not given
	check("environment", load(t, nil, env),
		want{conns: 20, level: "error", uids: []uint32{3}, src: fromEnv, idle: time.Minute, inflite: 128})

	check("flags", load(t, []string{"--max-conns", "30", "--allow-uid", "4", "--allow-uid", "5", "--otlp-traces", "--max-inflight", "9"}, env),
		want{conns: 30, level: "error", uids: []uint32{4, 5}, traces: true, src: fromFlag, idle: time.Minute, inflite: 9})

	// --config wins over TAI_CONFIG.
	other := writeConfig(t, "max_conns: 77\n")
	l = load(t, []string{"--config", other}, map[string]string{"TAI_CONFIG": file})
	if l.cfg.Security.MaxConns != 77 || l.cfg.LogLevel != "info" || l.file.path != other {
		t.Errorf("--config over TAI_CONFIG: %+v", l.cfg)
	}
	// The global --socket is a flag: it wins over the file.
	sock := writeConfig(t, "socket: /from/file.sock\n")
	if l, err := loadConfig("serve", []string{"--config", sock}, "/global.sock", io.Discard, envMap(nil), nil); err != nil ||
		l.cfg.Socket != "/global.sock" || l.setting("socket").src != fromFlag {
		t.Errorf("global --socket: %v %+v", err, l)
	}
	if l := load(t, []string{"--config", sock}, map[string]string{"TAI_SOCKET": "/env.sock"}); l.cfg.Socket != "/env.sock" {
		t.Errorf("TAI_SOCKET over the file: %q", l.cfg.Socket)
	}
	if l := load(t, []string{"--config", sock}, nil); l.cfg.Socket != "/from/file.sock" {
		t.Errorf("socket from the file: %q", l.cfg.Socket)
	}
}

// TestConfigFileErrors: the file is read strictly, and every error names
// the file and the line.
func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", "max_conns: 10\nmax_con: 5\n", `:2: unknown key "max_con"`},
		{"flag name as key", "max-conns: 5\n", `:1: unknown key "max-conns" (did you mean "max_conns"?)`},
		{"variable as key", "TAI_MAX_CONNS: 5\n", `(did you mean "max_conns"?)`},
		{"config is not a key", "config: other.yaml\n", `:1: unknown key "config"`},
		{"key twice", "max_conns: 1\nlog_level: info\nmax_conns: 2\n", `:3: "max_conns" is given twice (first at line 1)`},
		{"not an integer", "log_level: info\nmax_conns: lots\n", `:2: max_conns "lots": not an integer`},
		{"integer out of range", "max_conns: 0\n", `:1: max_conns "0": out of range [1, 1048576]`},
		{"not a duration", "idle_timeout: 300\n", `:1: idle_timeout "300": not a duration`},
		{"not a boolean", "otlp_traces: yes\n", `:1: otlp_traces "yes": want true or false`},
		{"not a size", "memory_limit: lots\n", `:1: memory_limit "lots"`},
		{"bad choice", "\n\nlog_format: xml\n", `:3: log_format "xml": want text or json`},
		{"list for a single value", "max_conns: [1, 2]\n", `:1: max_conns: want a single value, not a list`},
		{"mapping for a list", "allow_uids: {a: 1}\n", `:1: allow_uids: want a list, not a mapping`},
		{"nested list item", "allow_uids: [1, [2]]\n", `:1: allow_uids[1]: want a single value, not a list`},
		{"bad uid", "allow_uids: [1, root]\n", `:1: allow_uids: "root" is not a numeric uid`},
		{"bad governor in list", "governors: [ok, a/b]\n", `:1: governors:`},
		{"not a mapping", "- a\n- b\n", `:1: want a mapping of settings, not a list`},
		{"two documents", "max_conns: 1\n---\nmax_conns: 2\n", ":2: more than one YAML document"},
		{"syntax in a second document", "max_conns: 1\n---\nmax_conns: [2\n", "yaml:"},
		{"syntax", "max_conns: [1\n", "yaml:"},
		{"per-uid above max", "max_conns: 10\nmax_conns_per_uid: 20\n", `:2: max_conns_per_uid "20": above max_conns 10 (FILE:1)`},
		{"value above frame", "max_frame: 65536\nmax_value: 1000000\n", `:2: max_value "1000000": above 57344`},
		{"batch above protocol", "max_batch: 501\n", `:1: max_batch "501": out of range [1, 500]`},
		{"depth zero", "max_value_depth: 0\n", `:1: max_value_depth "0": out of range [1, 60]`},
		{"read timeout too short", "read_timeout: 10ms\n", `:1: read_timeout "10ms": out of range [1s, 24h0m0s]`},
		{"admin not loopback", "admin_addr: 0.0.0.0:9464\n", "not a loopback address"},
		{"per_governor not a mapping", "per_governor: [a]\n", `:1: want a mapping of governors, not a list`},
		{"per_governor unknown key", "per_governor:\n  orders:\n    snapshot_evry: 5\n", `:3: per_governor.orders: unknown key "snapshot_evry"`},
		{"per_governor bad governor", "per_governor:\n  a/b: {}\n", `:2: per_governor: invalid name: governor "a/b" contains '/'`},
		{"per_governor entry not a mapping", "per_governor:\n  orders: 5\n", `:2: want a mapping of per_governor.orders settings`},
		{"snapshot every zero", "per_governor:\n  orders: {snapshot_every: 0}\n", `:2: per_governor.orders.snapshot_every "0": out of range`},
		{"snapshot keep negative", "per_governor:\n  \"*\":\n    snapshot_keep: -1\n", `:3: per_governor.*.snapshot_keep "-1": out of range`},
		{"snapshot every not a number", "per_governor:\n  orders: {snapshot_every: often}\n", `per_governor.orders.snapshot_every "often": not an integer`},
		{"unknown resolver", "per_governor:\n  orders: {resolver: nope}\n", `:2: per_governor.orders.resolver "nope":`},
		{"empty fallback", "per_governor:\n  orders: {resolver: \"merge:\"}\n", "want resolver[:fallback]"},
		{"resolvers twice", "resolvers: \"*=merge\"\nper_governor:\n  orders: {resolver: lww}\n",
			`:1: resolvers and ` + "FILE" + `:3: per_governor.orders.resolver both set the resolvers`},
		{"bad resolvers", "resolvers: \"orders=nope\"\n", `:1: resolvers "orders=nope":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			_, err := parseServe([]string{"--config", path}, "", io.Discard, envMap(nil))
			want := strings.ReplaceAll(tc.want, "FILE", path)
			if strings.HasPrefix(want, ":") {
				want = path + want
			}
			var ue *usageError
			if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want a usage error containing %q", err, want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := parseServe(nil, "", io.Discard, envMap(map[string]string{"TAI_CONFIG": "/nonexistent/tai.yaml"}))
		if err == nil || !strings.Contains(err.Error(), "config file: open /nonexistent/tai.yaml") || exitCode(err) != 2 {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		path := writeConfig(t, "# "+strings.Repeat("x", maxConfigFile)+"\n")
		if _, err := parseServe([]string{"--config", path}, "", io.Discard, envMap(nil)); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("empty and null values", func(t *testing.T) {
		path := writeConfig(t, "# nothing yet\nmax_conns:\nper_governor:\n  orders:\n")
		l := load(t, []string{"--config", path}, nil)
		if l.cfg.Security.MaxConns != defaultMaxConns || l.setting("max_conns").src != fromDefault {
			t.Fatalf("a null value was taken: %+v", l.cfg.Security)
		}
		if e, k := l.cfg.Snapshots.For("orders"); e != defaultSnapshotEvery || k != defaultSnapshotKeep {
			t.Fatalf("orders snapshots %d %d", e, k)
		}
		if _, err := parseServe([]string{"--config", writeConfig(t, "")}, "", io.Discard, envMap(nil)); err != nil {
			t.Fatalf("empty file: %v", err)
		}
	})
	t.Run("aliases", func(t *testing.T) {
		path := writeConfig(t, "max_conns: &n 64\nmax_conns_per_uid: *n\n")
		if l := load(t, []string{"--config", path}, nil); l.cfg.Security.MaxConnsPerUID != 64 {
			t.Fatalf("alias: %+v", l.cfg.Security)
		}
	})
}

// TestConfigPerGovernor: "*" is the default entry, a governor's own entry
// overrides it key by key, and the resolvers are the table --resolvers
// gives.
func TestConfigPerGovernor(t *testing.T) {
	file := writeConfig(t, `per_governor:
  "*": {resolver: "causal:version", snapshot_every: 50, snapshot_keep: 3}
  orders:
    resolver: merge
    snapshot_every: 10
  billing: {snapshot_keep: 7}
`)
	l := load(t, []string{"--config", file}, nil)
	want, err := conflict.ParseConfig("*=causal:version,orders=merge")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.cfg.Sync.Resolvers; got.String() != want.String() || got.Default != want.Default || len(got.Governors) != 1 ||
		got.Governors["orders"] != want.Governors["orders"] {
		t.Fatalf("resolvers %v, want %v as --resolvers gives", got, want)
	}
	if _, err := l.cfg.Sync.resolverSet(newAppHub(l.cfg.Sync.Resolvers)); err != nil {
		t.Fatal(err)
	}
	for g, w := range map[string][2]int{"orders": {10, 3}, "billing": {50, 7}, "other": {50, 3}, "*": {50, 3}} {
		if e, k := l.cfg.Snapshots.For(g); e != w[0] || k != w[1] {
			t.Errorf("snapshots of %s: every %d keep %d, want %v", g, e, k, w)
		}
	}

	// The same table given as resolvers in the file.
	l2 := load(t, []string{"--config", writeConfig(t, "resolvers: \"*=causal:version, orders=merge\"\n")}, nil)
	if l2.cfg.Sync.Resolvers.String() != want.String() {
		t.Fatalf("file resolvers %v", l2.cfg.Sync.Resolvers)
	}

	// TAI_RESOLVERS and --resolvers replace the file's resolvers whole.
	l = load(t, []string{"--config", file}, map[string]string{"TAI_RESOLVERS": "billing=version"})
	if got := l.cfg.Sync.Resolvers.String(); got != "*=lww:lww,billing=version:lww" {
		t.Fatalf("TAI_RESOLVERS over per_governor: %s", got)
	}
	if e, k := l.cfg.Snapshots.For("orders"); e != 10 || k != 3 {
		t.Fatalf("snapshots lost with TAI_RESOLVERS: %d %d", e, k)
	}
	l = load(t, []string{"--config", file, "--resolvers", "*=merge"}, map[string]string{"TAI_RESOLVERS": "billing=version"})
	if got := l.cfg.Sync.Resolvers.String(); got != "*=merge:lww" {
		t.Fatalf("--resolvers: %s", got)
	}

	// No file: lww everywhere, the default snapshot settings.
	l = load(t, nil, nil)
	if e, k := l.cfg.Snapshots.For("x"); e != defaultSnapshotEvery || k != defaultSnapshotKeep || l.cfg.Sync.Resolvers.String() != "*=lww:lww" {
		t.Fatalf("defaults: %d %d %s", e, k, l.cfg.Sync.Resolvers)
	}
}

// TestConfigHistoryRetention: history_max_age and history_keep_events per
// governor, "*" the default and an entry's 0 lifting a bound "*" sets;
// --retention-every; bad values are errors naming the line.
func TestConfigHistoryRetention(t *testing.T) {
	file := writeConfig(t, `per_governor:
  "*": {history_max_age: 720h}
  orders: {history_keep_events: 100}
  audit: {history_max_age: 0}
  carts: {history_max_age: 1h, history_keep_events: 10}
`)
	l := load(t, []string{"--config", file}, nil)
	for g, want := range map[string]localcache.Retention{
		"*":      {MaxAge: 720 * time.Hour},
		"other":  {MaxAge: 720 * time.Hour},
		"orders": {MaxAge: 720 * time.Hour, KeepEvents: 100},
		"audit":  {},
		"carts":  {MaxAge: time.Hour, KeepEvents: 10},
	} {
		if got := l.cfg.History.For(g); got != want {
			t.Errorf("retention of %s: %+v, want %+v", g, got, want)
		}
	}
	if l.cfg.RetentionEvery != localcache.DefaultRetentionEvery {
		t.Errorf("retention every %v", l.cfg.RetentionEvery)
	}
	l = load(t, []string{"--config", file, "--retention-every", "0"}, nil)
	if l.cfg.RetentionEvery != 0 {
		t.Errorf("--retention-every 0: %v", l.cfg.RetentionEvery)
	}
	if l := load(t, nil, nil); !l.cfg.History.For("x").IsZero() || l.cfg.History.Bounded() {
		t.Errorf("default retention %+v (bounded %v), want none", l.cfg.History.For("x"), l.cfg.History.Bounded())
	}
	for body, bounded := range map[string]bool{
		"per_governor:\n  audit: {history_max_age: 0}\n":                                                                   false,
		"per_governor:\n  orders: {history_keep_events: 10}\n":                                                             true,
		"per_governor:\n  \"*\": {history_keep_events: 5}\n  audit: {history_keep_events: 0}\n":                            true,
		"per_governor:\n  \"*\": {history_keep_events: 5}\n  a: {history_keep_events: 0}\n  b: {history_keep_events: 0}\n": true,
	} {
		if l := load(t, []string{"--config", writeConfig(t, body)}, nil); l.cfg.History.Bounded() != bounded {
			t.Errorf("%q: bounded %v, want %v", body, !bounded, bounded)
		}
	}
	for _, bad := range []string{
		"per_governor:\n  orders: {history_max_age: soon}\n",
		"per_governor:\n  orders: {history_max_age: 5s}\n",
		"per_governor:\n  orders: {history_keep_events: -1}\n",
		"per_governor:\n  orders: {history_keep: 3}\n",
	} {
		_, err := parseServe([]string{"--config", writeConfig(t, bad)}, "", io.Discard, envMap(nil))
		if err == nil || !strings.Contains(err.Error(), ":2: ") || exitCode(err) != 2 {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestExampleConfig: the example in docs/examples is a valid config file.
func TestExampleConfig(t *testing.T) {
	l := load(t, []string{"--config", "../../docs/examples/tai-sidecar.yaml"}, nil)
	c := l.cfg
	if c.Socket != "/run/tai/tai.sock" || c.Sync.Project != "my-project" || c.MemoryLimit != 256<<20 ||
		!slices.Equal(c.Security.Access.AllowUIDs, []uint32{1000, 1001}) || c.Observe.AdminAddr != "127.0.0.1:9464" {
		t.Fatalf("example: %+v", c)
	}
	if e, k := c.Snapshots.For("orders"); e != 20 || k != 5 {
		t.Errorf("orders snapshots %d %d", e, k)
	}
	if e, k := c.Snapshots.For("billing"); e != 100 || k != 10 {
		t.Errorf("billing snapshots %d %d", e, k)
	}
	if r := c.History.For("orders"); r != (localcache.Retention{MaxAge: 2160 * time.Hour}) || c.RetentionEvery != 10*time.Minute {
		t.Errorf("orders history retention %+v every %v", r, c.RetentionEvery)
	}
	if r := c.History.For("billing"); r != (localcache.Retention{KeepEvents: 1000}) {
		t.Errorf("billing history retention %+v", r)
	}
	if got := c.Sync.Resolvers.String(); got != "*=causal:version,orders=merge:lww" {
		t.Errorf("resolvers %s", got)
	}
	if l.setting("max_batch").src != fromFile || l.setting("read_timeout").line == 0 {
		t.Errorf("limits not read from the example")
	}
}

// TestServeRefusesInvalidConfig: serve checks the file before it does
// anything, with a usage error (exit status 2).
func TestServeRefusesInvalidConfig(t *testing.T) {
	dir := t.TempDir()
	bad := writeConfig(t, "data_dir: "+filepath.Join(dir, "data")+"\nmax_inflight: many\n")
	err := run(context.Background(), []string{"--socket", filepath.Join(dir, "s.sock"), "serve", "--config", bad},
		io.Discard, io.Discard, envMap(nil))
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), bad+`:2: max_inflight "many": not an integer`) {
		t.Fatalf("serve with an invalid file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("serve created its data dir before refusing: %v", err)
	}
}

// TestSettingsAreDefinedOnce: every setting has its own flag, key and
// TAI_* variable, and its default is valid.
func TestSettingsAreDefinedOnce(t *testing.T) {
	seen := map[string]string{}
	for _, s := range (&Config{}).settings() {
		for _, name := range []string{"flag " + s.flag, "key " + s.fileKey(), "env " + s.env[0]} {
			if other, dup := seen[name]; dup {
				t.Errorf("%s is used by %s and %s", name, other, s.flag)
			}
			seen[name] = s.flag
		}
		if !strings.HasPrefix(s.env[0], "TAI_") {
			t.Errorf("--%s: variable %s", s.flag, s.env[0])
		}
		if s.usage == "" || s.parse == nil {
			t.Errorf("--%s: no usage or no parse", s.flag)
		}
		if err := s.parse(s.def); err != nil {
			t.Errorf("--%s: default %q: %v", s.flag, s.def, err)
		}
	}
	if _, ok := seen["key "+perGovernorKey]; ok {
		t.Errorf("%s is both a setting and the per-governor section", perGovernorKey)
	}
}
