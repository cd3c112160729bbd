package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/client"
)

// TestCLIFence: put and delete take --fence RES:TOKEN; a stale token is
// FenceRejected, a malformed flag is a usage error.
func TestCLIFence(t *testing.T) {
	sock := testSidecar(t)
	if rec := cliRecord(t, sock, "put", "g", "s", "1", "--fence", "orders:lock:5"); rec["version"] != float64(1) {
		t.Fatalf("fenced put: %v", rec)
	}
	_, err := cli(t, sock, "put", "g", "s", "2", "--fence", "orders:lock:4")
	if !errors.Is(err, client.ErrFenceRejected) || !strings.Contains(err.Error(), "FenceRejected g/s") {
		t.Fatalf("stale put: %v", err)
	}
	_, err = cli(t, sock, "delete", "g", "s", "--fence", "orders:lock:4")
	if !errors.Is(err, client.ErrFenceRejected) {
		t.Fatalf("stale delete: %v", err)
	}
	if rec := cliRecord(t, sock, "delete", "g", "s", "--fence", "orders:lock:6"); rec["deleted"] != true {
		t.Fatalf("fenced delete: %v", rec)
	}
	for _, bad := range []string{"orders", "orders:", "orders:0", "orders:-1", ":3", "a/b:3", "orders:x"} {
		_, err := cli(t, sock, "put", "g", "s", "1", "--fence", bad)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-fence") {
			t.Fatalf("--fence %q: %v, want a usage error", bad, err)
		}
	}
}
