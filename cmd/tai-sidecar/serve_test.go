package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseServe(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(*Config) bool
		wantErr string
	}{
		{
			name: "defaults need no flags",
			check: func(c *Config) bool {
				return c.Socket == "./tai.sock" && c.DataDir == "./tai-data" && c.NodeID == "" && c.MemoryLimit == 0
			},
		},
		{
			name: "environment sets defaults",
			env:  map[string]string{"TAI_DATA_DIR": "/var/lib/tai", "TAI_NODE_ID": "edge-7", "TAI_CACHE_BYTES": "1024", "TAI_MEMORY_LIMIT": "64MiB"},
			check: func(c *Config) bool {
				return c.DataDir == "/var/lib/tai" && c.NodeID == "edge-7" && c.CacheBytes == 1024 && c.MemoryLimit == 64<<20
			},
		},
		{
			name: "flags win over environment",
			args: []string{"--data-dir", "/d", "--node-id", "n1", "--memory-limit", "128MiB", "--shutdown-timeout", "3s"},
			env:  map[string]string{"TAI_DATA_DIR": "/var/lib/tai", "TAI_NODE_ID": "edge-7", "TAI_MEMORY_LIMIT": "64MiB"},
			check: func(c *Config) bool {
				return c.DataDir == "/d" && c.NodeID == "n1" && c.MemoryLimit == 128<<20 && c.ShutdownTimeout == 3*time.Second
			},
		},
		{name: "bad node id", args: []string{"--node-id", "a/b"}, wantErr: "node id"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "log-level"},
		{name: "bad log format", args: []string{"--log-format", "xml"}, wantErr: "log-format"},
		{name: "tiny frame", args: []string{"--max-frame", "10"}, wantErr: "max-frame"},
		{name: "tiny memory limit", args: []string{"--memory-limit", "1MiB"}, wantErr: "memory-limit"},
		{name: "memory limit not a size", args: []string{"--memory-limit", "lots"}, wantErr: "memory-limit"},
		{name: "cache bytes env not a number", env: map[string]string{"TAI_CACHE_BYTES": "x"}, wantErr: "TAI_CACHE_BYTES"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseServe(tt.args, "./tai.sock", io.Discard, envMap(tt.env))
			if tt.wantErr != "" {
				var ue *usageError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("error %v, want a usage error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

func TestLoadNodeID(t *testing.T) {
	dir := t.TempDir()
	id, err := loadNodeID(dir, "")
	if err != nil || !strings.HasPrefix(id, "n-") {
		t.Fatalf("generated id %q, %v", id, err)
	}
	again, err := loadNodeID(dir, "")
	if err != nil || again != id {
		t.Fatalf("second start got %q, %v; want the kept %q", again, err, id)
	}
	if same, err := loadNodeID(dir, id); err != nil || same != id {
		t.Fatalf("flag equal to the kept id: %q, %v", same, err)
	}
	var differs *nodeIDError
	if _, err := loadNodeID(dir, "other"); !errors.As(err, &differs) || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("a different --node-id was accepted: %v", err)
	}
	// Through serve: a setting that cannot work (exit status 2), named where
	// it was given.
	err = run(context.Background(), []string{"serve", "--socket", filepath.Join(t.TempDir(), "s"), "--data-dir", dir},
		io.Discard, io.Discard, func(k string) string {
			if k == "TAI_NODE_ID" {
				return "other"
			}
			return ""
		})
	if exitCode(err) != 2 || !strings.HasPrefix(err.Error(), "TAI_NODE_ID=other: ") {
		t.Fatalf("serve with a different TAI_NODE_ID: %v (exit %d)", err, exitCode(err))
	}

	dir2 := t.TempDir()
	if id, err := loadNodeID(dir2, "edge-1"); err != nil || id != "edge-1" {
		t.Fatalf("flag on first start: %q, %v", id, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, nodeIDFile)); strings.TrimSpace(string(b)) != "edge-1" {
		t.Fatalf("node-id file holds %q", b)
	}

	dir3 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir3, nodeIDFile), []byte("bad id!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadNodeID(dir3, ""); err == nil {
		t.Fatal("a corrupt node-id file was accepted")
	}
}
