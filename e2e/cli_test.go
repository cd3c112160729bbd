package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI drives the binary's client commands against a real sidecar.
func TestCLI(t *testing.T) {
	sc := startSidecar(t)
	// Local only and no retention: the sidecar says what that means.
	if !strings.Contains(sc.Logs(), noRetentionLog) {
		t.Errorf("no line saying the history and journal grow:\n%s", sc.Logs())
	}

	out, errOut, err := sc.CLI("put", "orders", "o-1", `{"status":"new","items":[1,2.5,"x"],"ok":true}`, "--actor", "alice", "--reason", "created")
	if err != nil {
		t.Fatalf("put: %v\n%s", err, errOut)
	}
	var put map[string]any
	if err := json.Unmarshal([]byte(out), &put); err != nil {
		t.Fatalf("put printed %q: %v", out, err)
	}
	if put["version"] != float64(1) {
		t.Fatalf("put printed version %v, want 1", put["version"])
	}

	out, errOut, err = sc.CLI("get", "orders", "o-1")
	if err != nil {
		t.Fatalf("get: %v\n%s", err, errOut)
	}
	var got struct {
		Value     map[string]any `json:"value"`
		Version   uint64         `json:"version"`
		UpdatedAt string         `json:"updated_at"`
		Change    struct {
			Actor  string `json:"actor"`
			Reason string `json:"reason"`
		} `json:"change"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get printed %q: %v", out, err)
	}
	if got.Version != 1 || got.Value["status"] != "new" || got.Value["ok"] != true || got.UpdatedAt == "" {
		t.Fatalf("get printed %s", out)
	}
	if items, _ := got.Value["items"].([]any); len(items) != 3 || items[0] != float64(1) || items[1] != 2.5 || items[2] != "x" {
		t.Fatalf("items did not round-trip: %s", out)
	}
	if got.Change.Actor != "alice" || got.Change.Reason != "created" {
		t.Fatalf("change metadata not kept: %s", out)
	}

	// A stale compare-and-set fails with a one-line message and status 1.
	_, errOut, err = sc.CLI("put", "orders", "o-1", `{"status":"paid"}`, "--if-version", "7")
	if exitCode(err) != 1 || !strings.Contains(strings.ToLower(errOut), "conflict") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Fatalf("stale put: exit %d, stderr %q", exitCode(err), errOut)
	}
	if _, errOut, err = sc.CLI("put", "orders", "o-1", `{"status":"paid"}`, "--if-version", "1"); err != nil {
		t.Fatalf("put with the right version: %v\n%s", err, errOut)
	}

	for _, name := range []string{"o-2", "o-3", "p-1"} {
		if _, errOut, err := sc.CLI("put", "orders", name, `1`); err != nil {
			t.Fatalf("put %s: %v\n%s", name, err, errOut)
		}
	}
	out, errOut, err = sc.CLI("list", "orders", "--prefix", "o-")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("list --prefix o- printed %d lines, want 3:\n%s", len(lines), out)
	}

	if _, errOut, err = sc.CLI("delete", "orders", "o-1"); err != nil {
		t.Fatalf("delete: %v\n%s", err, errOut)
	}
	_, errOut, err = sc.CLI("get", "orders", "o-1")
	if exitCode(err) != 1 || !strings.Contains(strings.ToLower(errOut), "not found") {
		t.Fatalf("get after delete: exit %d, stderr %q", exitCode(err), errOut)
	}

	_, errOut, err = sc.CLI("put", "orders", "bad/name", `1`)
	if exitCode(err) == 0 || errOut == "" {
		t.Fatalf("put with an invalid name: exit %d, stderr %q", exitCode(err), errOut)
	}
	_, errOut, err = sc.CLI("put", "orders", "o-9", `{not json`)
	if exitCode(err) == 0 || errOut == "" {
		t.Fatalf("put with invalid JSON: exit %d, stderr %q", exitCode(err), errOut)
	}

	out, errOut, err = sc.CLI("stats")
	if err != nil || !strings.Contains(out, "journal_depth") {
		t.Fatalf("stats: %v\n%s%s", err, out, errOut)
	}

	missing := filepath.Join(filepath.Dir(sc.Socket), "nobody.sock")
	_, errOut, err = runBinary("--socket", missing, "get", "orders", "o-2")
	if exitCode(err) != 1 || !strings.Contains(strings.ToLower(errOut), "no sidecar") {
		t.Fatalf("get without a sidecar: exit %d, stderr %q", exitCode(err), errOut)
	}
}
