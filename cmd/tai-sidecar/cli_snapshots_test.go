package main

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi"
)

func TestCLISnapshotTransitionReplay(t *testing.T) {
	clk := &stepClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	sock, _ := testSidecarWith(t, sockapi.Options{}, clk.Now)
	rec := cliRecord(t, sock, "transition", "orders", "o1", "--to", "open", "--action", "create", "--actor", "ann")
	if rec["version"] != 1.0 {
		t.Fatalf("create: %v", rec)
	}
	cliRecord(t, sock, "transition", "orders", "o1", "--from", "open", "--to", "paid", "--action", "pay",
		"--value", `{"state":"paid","amount":12}`)
	rec = cliRecord(t, sock, "get", "orders", "o1")
	if v, _ := rec["value"].(map[string]any); v["state"] != "paid" || v["amount"] != 12.0 {
		t.Fatalf("machine after pay: %v", rec)
	}
	_, err := cli(t, sock, "transition", "orders", "o1", "--from", "open", "--to", "shipped", "--action", "ship")
	var e *client.Error
	if !errors.Is(err, client.ErrWrongState) || !errors.As(err, &e) || e.Machine.Actual != "paid" {
		t.Fatalf("transition from the wrong state: %v", err)
	}
	out, err := cli(t, sock, "events", "orders", "--action", "pay")
	if evs := jsonLines(t, out); err != nil || len(evs) != 1 || evs[0]["action"] != "pay" {
		t.Fatalf("events of pay: %s %v", out, err)
	}

	out, err = cli(t, sock, "snapshot", "orders", "o1")
	var res map[string]any
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res["taken"] != 1.0 || res["states"] != 1.0 {
		t.Fatalf("snapshot: %s %v", out, err)
	}
	if snap, _ := res["snapshot"].(map[string]any); snap["version"] != 2.0 {
		t.Fatalf("snapshot: %s", out)
	}
	out, err = cli(t, sock, "replay", "orders", "--latest")
	lines := jsonLines(t, out)
	if err != nil || len(lines) != 1 || lines[0]["snapshot"] != true || lines[0]["version"] != 2.0 || lines[0]["taken_at"] == nil {
		t.Fatalf("replay --latest: %s %v", out, err)
	}
	if v, _ := lines[0]["value"].(map[string]any); v["state"] != "paid" {
		t.Fatalf("replayed snapshot value: %s", out)
	}
	out, err = cli(t, sock, "replay", "orders", "o1")
	if lines := jsonLines(t, out); err != nil || len(lines) != 2 || lines[0]["action"] != "create" || lines[1]["action"] != "pay" {
		t.Fatalf("replay: %s %v", out, err)
	}
	out, err = cli(t, sock, "cleanup", "orders", "--keep-events", "1", "--dry-run")
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res["dry_run"] != true || res["states"] != 1.0 {
		t.Fatalf("cleanup: %s %v", out, err)
	}

	var ue *usageError
	for _, args := range [][]string{
		{"transition", "orders", "o1", "--from", "a"},
		{"transition", "orders", "o1", "--to", "b", "--action", "go", "--value", "{"},
		{"cleanup", "orders"},
		{"cleanup", "orders", "--keep-events", "-1"},
		{"snapshot"},
		{"replay", "orders", "a", "b"},
	} {
		if _, err := cli(t, sock, args...); !errors.As(err, &ue) {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, err := cli(t, sock, "transition", "orders", "o1", "--from", "paid", "--to", "b", "--action", "go", "--if-version", "1"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("transition with --if-version: %v", err)
	}

	// Under a lock grant: --fence, judged before the machine state.
	cliRecord(t, sock, "transition", "orders", "o2", "--to", "open", "--action", "create", "--fence", "leader:2")
	if _, err := cli(t, sock, "transition", "orders", "o2", "--from", "open", "--to", "paid", "--action", "pay", "--fence", "leader:1"); !errors.Is(err, client.ErrFenceRejected) {
		t.Errorf("transition under a stale fence: %v", err)
	}
	if rec := cliRecord(t, sock, "transition", "orders", "o2", "--from", "open", "--to", "paid", "--action", "pay", "--fence", "leader:2"); rec["version"] != 2.0 {
		t.Errorf("transition under the current fence: %v", rec)
	}
}
