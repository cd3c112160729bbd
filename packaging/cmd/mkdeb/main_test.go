package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/packaging/deb"
	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--binary", "x"},
		{"--version", "1.0.0"},
		{"--binary", "x", "--version", "1.0.0", "extra"},
		{"--binary", "x", "--version", "not-a-version"},
		{"--binary", "x", "--version", "1.0.0", "--arch", "sparc"},
		{"--no-such-flag"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("mkdeb %q: %v, want a usage error", args, err)
		}
		if out.Len() > 0 {
			t.Errorf("mkdeb %q printed %q", args, out.String())
		}
	}
}

// TestWritesConventionalName builds a package with the command's flags and
// finds it, and nothing else, in --out under the conventional name.
func TestWritesConventionalName(t *testing.T) {
	bin, err := testbin.Build(filepath.Join(t.TempDir(), "tai-sidecar"), testbin.ReleaseFlags("2.0.0")...)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--binary", bin, "--version", "v2.0.0", "--out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("mkdeb: %v\n%s", err, stderr.Bytes())
	}
	arch, _ := deb.DebArch(runtime.GOARCH)
	want := filepath.Join(out, "tai-sidecar_2.0.0_"+arch+".deb")
	if got := strings.TrimSpace(stdout.String()); got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != 1 || entries[0].Name() != filepath.Base(want) {
		t.Errorf("--out holds %v, want only %s", entries, filepath.Base(want))
	}
	if _, err := exec.LookPath("dpkg-deb"); err == nil {
		if b, err := exec.Command("dpkg-deb", "--field", want, "Version").Output(); err != nil || strings.TrimSpace(string(b)) != "2.0.0" {
			t.Errorf("dpkg-deb --field Version: %q, %v", b, err)
		}
	}

	// A failed build leaves nothing behind.
	if err := run(context.Background(), []string{"--binary", "main.go", "--version", "2.0.0", "--out", out}, &stdout, &stderr); err == nil {
		t.Error("mkdeb packaged a file that is not a binary")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 1 {
		t.Errorf("a failed build left %v", entries)
	}
}
