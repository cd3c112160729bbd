package main

import (
	"errors"
	"testing"

	"github.com/tai-state/tai-state/client"
)

// TestCLITxn runs transactions from the command line (OPS as an argument),
// prints their records and {id, attempts}, refuses malformed OPS, and
// prints the transaction log with its filters.
func TestCLITxn(t *testing.T) {
	sock := testSidecar(t)
	out, err := cli(t, sock, "txn", "--actor", "teller",
		`[{"op":"put","governor":"bank","state":"alice","value":{"balance":100},"if_absent":true},
		  {"op":"put","governor":"bank","state":"bob","value":{"balance":100}},
		  {"op":"check","governor":"bank","state":"closed","exists":false}]`)
	lines := jsonLines(t, out)
	if err != nil || len(lines) != 3 || lines[0]["state"] != "alice" || lines[1]["version"] != 1.0 ||
		lines[0]["pending"] != true || lines[2]["attempts"] != 1.0 || lines[2]["id"] == "" {
		t.Fatalf("txn: %s %v", out, err)
	}
	_, err = cli(t, sock, "txn", `[{"op":"delete","governor":"bank","state":"bob","if_version":1},
		{"op":"check","governor":"bank","state":"alice","if_version":9}]`)
	if !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("txn with a failed check: %v", err)
	}
	var ue *usageError
	for _, ops := range []string{`{"op":"put"}`, `[{"op":"put","governor":"g","state":"s","value":nul}]`, `[{"opp":"put"}]`, `[] []`} {
		if _, err := cli(t, sock, "txn", ops); !errors.As(err, &ue) {
			t.Errorf("txn %s: %v, want a usage error", ops, err)
		}
	}
	if _, err := cli(t, sock, "txn", `[]`); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("empty txn: %v", err)
	}

	out, err = cli(t, sock, "txlog")
	if lines := jsonLines(t, out); err != nil || len(lines) != 2 || lines[0]["outcome"] != "committed" || lines[0]["actor"] != "teller" ||
		len(lines[0]["ops"].([]any)) != 3 || lines[1]["code"] != "VersionConflict" {
		t.Fatalf("txlog: %s %v", out, err)
	}
	out, err = cli(t, sock, "txlog", "--outcome", "failed", "--governor", "bank", "--limit", "1")
	if lines := jsonLines(t, out); err != nil || len(lines) != 1 || lines[0]["outcome"] != "failed" {
		t.Fatalf("txlog of failed transactions: %s %v", out, err)
	}
	if _, err := cli(t, sock, "txlog", "--limit", "-1"); !errors.As(err, &ue) {
		t.Fatalf("txlog --limit -1: %v", err)
	}
	if _, err := cli(t, sock, "txlog", "--outcome", "maybe"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("txlog --outcome maybe: %v", err)
	}
}
