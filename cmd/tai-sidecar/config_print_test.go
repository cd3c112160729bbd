package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tai-state/tai-state/localcache"
)

// printConfig runs `config print` and returns what it printed.
func printConfig(t *testing.T, args []string, env map[string]string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(t.Context(), append([]string{"config", "print"}, args...), &out, io.Discard, envMap(env)); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// TestConfigPrintRoundTrip: the YAML config print writes is a config file
// that gives the same configuration, every value in it.
func TestConfigPrintRoundTrip(t *testing.T) {
	file := writeConfig(t, `log_level: warn
max_conns: 100
allow_uids: [5, 6]
per_governor:
  "*": {snapshot_every: 50, history_max_age: 720h}
  orders: {resolver: "merge", snapshot_keep: 9, history_keep_events: 50}
  billing: {resolver: "causal:version", history_max_age: 0}
`)
	args := []string{"--config", file, "--max-inflight", "7", "--idle-timeout", "90s", "--otlp-metrics"}
	env := map[string]string{"TAI_MAX_BATCH": "20", "TAI_GOVERNORS": "a,b", "TAI_FIRESTORE_PROJECT": "p"}
	orig := load(t, args, env).cfg

	out := printConfig(t, args, env)
	for _, want := range []string{"# Effective configuration", "Config file: " + file + " (flag --config).",
		"max_conns: 100 # file " + file + ":2", "max_inflight: 7 # flag --max-inflight", "max_batch: 20 # env TAI_MAX_BATCH",
		"max_conns_per_uid: 100 # default", "allow_uids: [5, 6] # file " + file + ":3", "socket: ./tai.sock # default"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	printed := filepath.Join(t.TempDir(), "printed.yaml")
	if err := os.WriteFile(printed, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	back := load(t, []string{"--config", printed}, nil)
	for _, s := range back.settings {
		if s.src != fromFile && s.value != nil {
			t.Errorf("%s is not in the printed file", s.fileKey())
		}
	}
	again := back.cfg
	for _, g := range []string{"*", "orders", "billing", "other"} {
		if a, b := fmt.Sprint(orig.Snapshots.For(g)), fmt.Sprint(again.Snapshots.For(g)); a != b {
			t.Errorf("snapshots of %s: %s, printed and read back %s", g, a, b)
		}
		if a, b := orig.Sync.Resolvers.For(g), again.Sync.Resolvers.For(g); a != b {
			t.Errorf("resolver of %s: %v, printed and read back %v", g, a, b)
		}
		if a, b := orig.History.For(g), again.History.For(g); a != b {
			t.Errorf("history retention of %s: %+v, printed and read back %+v", g, a, b)
		}
	}
	if r := orig.History.For("orders"); r != (localcache.Retention{MaxAge: 720 * time.Hour, KeepEvents: 50}) {
		t.Errorf("history retention of orders %+v", r)
	}
	// Entries are printed in full, so the maps differ in form only.
	orig.Snapshots, again.Snapshots = SnapshotConfig{}, SnapshotConfig{}
	orig.History, again.History = HistoryConfig{}, HistoryConfig{}
	orig.Sync.Resolvers = again.Sync.Resolvers
	if !reflect.DeepEqual(orig, again) {
		t.Fatalf("printed and read back:\n%+v\nwant\n%+v", again, orig)
	}
}

// TestConfigPrintJSON: --format json gives every value and its source.
func TestConfigPrintJSON(t *testing.T) {
	file := writeConfig(t, "log_level: warn\n\nper_governor:\n  \"*\":\n    snapshot_keep: 8\n  orders: {resolver: merge}\n")
	out := printConfig(t, []string{"--format", "json", "--max-inflight", "7"},
		map[string]string{"TAI_CONFIG": file, "TAI_MAX_CONNS": "40", "TAI_RESOLVERS": ""})
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	get := func(key string) printed {
		var p printed
		if err := json.Unmarshal(doc[key], &p); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		return p
	}
	for key, want := range map[string]printed{
		"max_conns":    {40.0, "env TAI_MAX_CONNS"},
		"max_inflight": {7.0, "flag --max-inflight"},
		"log_level":    {"warn", "file " + file + ":1"},
		"socket":       {"./tai.sock", "default"},
		"idle_timeout": {"5m0s", "default"},
		"otlp_traces":  {false, "default"},
		"max_value":    {1e6, "default"},
		"read_timeout": {"30s", "default"},
		"max_batch":    {500.0, "default"},
	} {
		if got := get(key); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v, want %+v", key, got, want)
		}
	}
	if _, ok := doc["resolvers"]; ok {
		t.Error("resolvers printed besides per_governor")
	}
	if n := len(doc); n != len((&Config{}).settings()) { // every setting but resolvers, and per_governor
		t.Errorf("%d keys printed", n)
	}
	var gov map[string]map[string]printed
	if err := json.Unmarshal(doc[perGovernorKey], &gov); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		g, key string
		want   printed
	}{
		{"*", govResolver, printed{"lww:lww", "default"}},
		{"*", govSnapshotEvery, printed{100.0, "default"}},
		{"*", govSnapshotKeep, printed{8.0, "file " + file + ":5"}},
		{"orders", govResolver, printed{"merge:lww", "file " + file + ":6"}},
		{"orders", govSnapshotKeep, printed{8.0, `"*": file ` + file + ":5"}},
		{"orders", govSnapshotEvery, printed{100.0, `"*": default`}},
	} {
		if got := gov[tc.g][tc.key]; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("per_governor.%s.%s: %+v, want %+v", tc.g, tc.key, got, tc.want)
		}
	}

	// With TAI_RESOLVERS, every resolver comes from it.
	out = printConfig(t, []string{"--format", "json"}, map[string]string{"TAI_CONFIG": file, "TAI_RESOLVERS": "orders=version"})
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(doc[perGovernorKey], &gov); err != nil {
		t.Fatal(err)
	}
	if got := gov["orders"][govResolver]; got != (printed{"version:lww", "env TAI_RESOLVERS"}) {
		t.Errorf("orders resolver %+v", got)
	}
	if got := gov["*"][govResolver]; got != (printed{"lww:lww", "env TAI_RESOLVERS"}) {
		t.Errorf("* resolver %+v", got)
	}
}

// TestConfigPrintErrors: an invalid configuration, or a bad use of the
// command, is a usage error (exit status 2) that says what is wrong.
func TestConfigPrintErrors(t *testing.T) {
	bad := writeConfig(t, "max_conns: 5\nmax_conns_per_uid: 6\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"config", "print", "--config", bad}, bad + `:2: max_conns_per_uid "6": above max_conns 5 (` + bad + `:1)`},
		{[]string{"config", "print", "--max-batch", "0"}, `config print: --max-batch "0": out of range [1, 500]`},
		{[]string{"config", "print", "--format", "toml"}, `--format "toml": want yaml or json`},
		{[]string{"config", "print", "extra"}, `unexpected argument "extra"`},
		{[]string{"config"}, "usage: tai-sidecar config print"},
		{[]string{"config", "show"}, "usage: tai-sidecar config print"},
	} {
		var out bytes.Buffer
		err := run(t.Context(), tc.args, &out, io.Discard, envMap(nil))
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) || out.Len() != 0 {
			t.Errorf("%v: error %v (exit %d), printed %q; want exit 2 and %q", tc.args, err, exitCode(err), out.String(), tc.want)
		}
	}
}

// TestConfigPrintIsYAML: the output parses as YAML whose keys are the
// config file's.
func TestConfigPrintIsYAML(t *testing.T) {
	var m map[string]any
	if err := yaml.Unmarshal([]byte(printConfig(t, nil, nil)), &m); err != nil {
		t.Fatal(err)
	}
	if m["max_frame"] != 4194304 || m["allow_uids"] == nil || m[perGovernorKey] == nil {
		t.Fatalf("printed %v", m)
	}
}
