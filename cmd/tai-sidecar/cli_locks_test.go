package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/txn"
)

// cliLock runs a lock command that prints one JSON object.
func cliLock(t *testing.T, socket string, args ...string) map[string]any {
	t.Helper()
	out, err := cli(t, socket, append([]string{"lock"}, args...)...)
	if err != nil {
		t.Fatalf("lock %v: %v", args, err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("lock %v printed %q: %v", args, out, err)
	}
	return m
}

func TestCLILocks(t *testing.T) {
	socket, _ := testSidecarWith(t, sockapi.Options{Locks: txn.NewMemory(nil)}, nil)
	g := cliLock(t, socket, "acquire", "jobs")
	if g["resource"] != "jobs" || g["token"] != 1.0 || g["lease_ms"] != 30000.0 || g["holder"] == "" ||
		g["expires"] == nil || g["deadline"] == nil || g["bound"] != nil {
		t.Fatalf("grant %v", g)
	}
	if _, err := time.Parse(time.RFC3339Nano, g["deadline"].(string)); err != nil {
		t.Fatalf("deadline %v: %v", g["deadline"], err)
	}
	// The grant outlives the command's connection.
	st := cliLock(t, socket, "status", "jobs")
	if st["held"] != true || st["holder"] != g["holder"] || st["token"] != 1.0 || st["remaining_ms"].(float64) <= 0 {
		t.Fatalf("status %v", st)
	}

	_, err := cli(t, socket, "lock", "acquire", "jobs")
	var e *client.Error
	if !errors.Is(err, client.ErrLockHeld) || !errors.As(err, &e) || !strings.Contains(err.Error(), "held by") {
		t.Fatalf("acquire of a held lock: %v", err)
	}
	_, err = cli(t, socket, "lock", "acquire", "jobs", "--wait", "20ms")
	if !errors.Is(err, client.ErrLockHeld) || !errors.As(err, &e) || !e.Waited {
		t.Fatalf("acquire --wait of a held lock: %v", err)
	}

	ext := cliLock(t, socket, "extend", "jobs", "1", "--lease", "1m")
	if ext["token"] != 1.0 || ext["lease_ms"] != 60000.0 || ext["holder"] != g["holder"] {
		t.Fatalf("extended %v", ext)
	}
	rel := cliLock(t, socket, "release", "jobs", "1")
	if rel["released"] != true || rel["token"] != 1.0 {
		t.Fatalf("release %v", rel)
	}
	if st := cliLock(t, socket, "status", "jobs"); st["held"] != false || st["holder"] != nil || st["token"] != 1.0 {
		t.Fatalf("status after release %v", st)
	}
	if _, err := cli(t, socket, "lock", "release", "jobs", "1"); !errors.Is(err, client.ErrLockLost) {
		t.Fatalf("second release: %v", err)
	}
	if g := cliLock(t, socket, "acquire", "jobs", "--lease", "2s"); g["token"] != 2.0 || g["lease_ms"] != 2000.0 {
		t.Fatalf("second grant %v", g)
	}
}

func TestCLILockUsage(t *testing.T) {
	socket, _ := testSidecarWith(t, sockapi.Options{Locks: txn.NewMemory(nil)}, nil)
	for _, args := range [][]string{
		{"lock"},
		{"lock", "acquire"},
		{"lock", "bogus", "r"},
		{"lock", "acquire", "r", "5"},
		{"lock", "release", "r"},
		{"lock", "extend", "r"},
		{"lock", "release", "r", "abc"},
		{"lock", "release", "r", "0"},
		{"lock", "release", "r", "1", "--lease", "1s"},
		{"lock", "status", "r", "--wait", "1s"},
		{"lock", "extend", "r", "1", "--wait", "1s"},
		{"lock", "acquire", "r", "--lease", "-1s"},
		{"lock", "acquire", "r", "1", "2"},
	} {
		_, err := cli(t, socket, args...)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if st := cliLock(t, socket, "status", "r"); st["token"] != 0.0 {
		t.Fatalf("a refused command took the lock: %v", st)
	}
	_, err := cli(t, socket, "lock", "acquire", "a/b")
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("bad resource: %v", err)
	}
}

func TestCLILocksWithoutSharedStore(t *testing.T) {
	socket := testSidecar(t)
	_, err := cli(t, socket, "lock", "status", "r")
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "--firestore-project") {
		t.Fatalf("lock status without a shared store: %v", err)
	}
}

// TestLockCleanupLoop: the loop deletes the records of locks free for
// longer than the grace, and the next grant still gets a larger token.
func TestLockCleanupLoop(t *testing.T) {
	locks := txn.NewMemory(nil)
	ctx := context.Background()
	g, err := locks.Acquire(ctx, "r", "h", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := locks.Release(ctx, g); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runLockCleanup(lctx, locks, 5*time.Millisecond, 0, slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := locks.Status(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if st.Token == 0 { // no record left
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cleanup loop did not delete the released lock's record")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("loop returned %v", err)
	}
	g2, err := locks.Acquire(ctx, "r", "h", time.Minute, 0)
	if err != nil || g2.Token <= g.Token {
		t.Fatalf("grant after cleanup: %+v, %v", g2, err)
	}
}
