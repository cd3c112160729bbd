package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"134217728", 134217728, true},
		{"128MiB", 128 << 20, true},
		{"512 KiB", 512 << 10, true},
		{"2GiB", 2 << 30, true},
		{"10B", 10, true},
		{"", 0, false},
		{"-1", 0, false},
		{"12MB", 0, false},
		{"1.5GiB", 0, false},
		{"9999999999999GiB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseBytes(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("parseBytes(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestApplyMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	dir := t.TempDir()
	cg := filepath.Join(dir, "memory.max")
	noenv := func(string) string { return "" }

	if err := os.WriteFile(cg, []byte("1000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, from, err := applyMemoryLimit(64<<20, noenv, cg); err != nil || got != 64<<20 || from != "--memory-limit" || debug.SetMemoryLimit(-1) != 64<<20 {
		t.Fatalf("explicit: %d from %s, %v", got, from, err)
	}
	if got, from, err := applyMemoryLimit(0, noenv, cg); err != nil || got != 700000000 || from != "cgroup" || debug.SetMemoryLimit(-1) != 700000000 {
		t.Fatalf("cgroup: %d from %s, %v", got, from, err)
	}
	if err := os.WriteFile(cg, []byte("max\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, from, err := applyMemoryLimit(0, noenv, cg); err != nil || got != 0 || from != "none" {
		t.Fatalf("unlimited cgroup: %d from %s, %v", got, from, err)
	}
	if got, from, err := applyMemoryLimit(0, noenv, filepath.Join(dir, "missing")); err != nil || got != 0 || from != "none" {
		t.Fatalf("no cgroup: %d from %s, %v", got, from, err)
	}
	env := func(k string) string {
		if k == "GOMEMLIMIT" {
			return "100MiB"
		}
		return ""
	}
	debug.SetMemoryLimit(100 << 20) // what the runtime does with GOMEMLIMIT at start
	if got, from, err := applyMemoryLimit(0, env, cg); err != nil || got != 100<<20 || from != "GOMEMLIMIT" {
		t.Fatalf("GOMEMLIMIT: %d from %s, %v", got, from, err)
	}
}
