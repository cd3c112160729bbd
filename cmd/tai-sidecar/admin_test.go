package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

func TestAdminAddrValidation(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		remote bool
		err    string
	}{
		{"127.0.0.1:9464", false, ""},
		{"[::1]:0", false, ""},
		{"localhost:9464", false, ""},
		{"unix:/run/tai/admin.sock", false, ""},
		{"0.0.0.0:9464", false, "not a loopback address"},
		{":9464", false, "not a loopback address"},
		{"10.1.2.3:9464", false, "not a loopback address"},
		{"0.0.0.0:9464", true, ""},
		{"127.0.0.1", false, "want host:port"},
		{"127.0.0.1:http", false, "bad port"},
		{"unix:", false, "needs a path"},
	} {
		c := ObserveConfig{AdminAddr: tc.addr, AdminAllowRemote: tc.remote, OTLPProtocol: "grpc",
			MetricInterval: 1, LogWindow: 1}
		err := c.validate()
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q (allow remote %v): %v, want %q", tc.addr, tc.remote, err, tc.err)
		}
	}
}

// /readyz with a shared store: not ready until the first push pass has
// finished and every served governor was pulled once.
func TestReadiness(t *testing.T) {
	ctx := context.Background()
	remote := memremote.New()
	journal := syncer.NewMemJournal("n1")
	loops := &syncLoops{
		push:      syncer.New(journal, remote, syncer.Options{}),
		pull:      syncer.NewPuller(journal, remote, syncer.PullOptions{Governors: []string{"g"}}),
		governors: func() []string { return []string{"g"} },
	}
	s := &adminState{loops: loops}
	if ok, why := s.ready(); ok || !strings.Contains(why, "push") {
		t.Fatalf("ready before any pass: %v %q", ok, why)
	}
	if _, err := loops.push.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, why := s.ready(); ok || !strings.Contains(why, "pull") {
		t.Fatalf("ready before the first pull: %v %q", ok, why)
	}
	if _, err := loops.pull.PullOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, why := s.ready(); !ok {
		t.Fatalf("not ready after push and pull: %q", why)
	}
	// A failing first pull also ends the wait: the sidecar serves its local
	// copy, and /status says why the shared store is behind.
	remote.SetOffline(true)
	loops2 := &syncLoops{
		push:      syncer.New(journal, remote, syncer.Options{}),
		pull:      syncer.NewPuller(journal, remote, syncer.PullOptions{Governors: []string{"g"}}),
		governors: func() []string { return []string{"g"} },
	}
	s2 := &adminState{loops: loops2}
	loops2.push.SyncOnce(ctx)
	if _, err := loops2.pull.PullOnce(ctx); err == nil {
		t.Fatal("pull while offline succeeded")
	}
	if ok, why := s2.ready(); !ok {
		t.Fatalf("not ready after a failed first pull: %q", why)
	}
	if ok, _ := (&adminState{}).ready(); !ok {
		t.Fatal("a local-only sidecar is not ready")
	}
}

// TestAdminUnixSocket: the admin socket is made as the API socket is. A
// file in its way is never removed (before, anything that was a socket and
// did not answer at once was removed), and stopping removes the socket.
func TestAdminUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "tai-admin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")
	tel := &telemetry{cfg: &ObserveConfig{AdminAddr: "unix:" + path}}
	log := slog.New(slog.DiscardHandler)

	os.WriteFile(path, []byte("precious"), 0o600)
	if _, err := tel.newAdmin(nil, nil, log); err == nil || !errors.Is(err, sockapi.ErrNotSocket) {
		t.Fatalf("admin socket over a regular file: %v, want ErrNotSocket", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("the file in the way was changed: %q, %v", b, err)
	}
	os.Remove(path)

	a, err := tel.newAdmin(nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tel.newAdmin(nil, nil, log); !errors.Is(err, sockapi.ErrSocketInUse) {
		t.Fatalf("second admin socket on a live one: %v, want ErrSocketInUse", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.run() }()
	a.stop(nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("admin socket left after stop: %v", err)
	}
}
