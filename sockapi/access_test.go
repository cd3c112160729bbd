package sockapi

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

func TestAccessDecisions(t *testing.T) {
	alice := Peer{UID: 1000, GID: 100, PID: 7, Known: true}
	bob := Peer{UID: 1001, GID: 200, PID: 8, Known: true}
	unknown := Peer{}
	policy := Access{
		Governors: map[string]GovernorAccess{
			"orders": {Read: []uint32{1000, 1001}, Write: []uint32{1000}},
			"closed": {},
		},
		Default: &GovernorAccess{Read: []uint32{1001}, Write: []uint32{1001}},
		Admin:   []uint32{1001},
	}
	cases := []struct {
		name     string
		access   Access
		peer     Peer
		perm     Perm
		governor string
		want     bool
	}{
		{"zero value allows reads", Access{}, alice, PermRead, "g", true},
		{"zero value allows writes", Access{}, alice, PermWrite, "g", true},
		{"zero value allows admin", Access{}, alice, PermAdmin, "", true},
		{"zero value allows unknown peers", Access{}, unknown, PermWrite, "g", true},
		{"no perm needed", policy, unknown, 0, "closed", true},
		{"listed reader", policy, bob, PermRead, "orders", true},
		{"listed writer", policy, alice, PermWrite, "orders", true},
		{"reader is not a writer", policy, bob, PermWrite, "orders", false},
		{"empty rule grants nothing", policy, alice, PermRead, "closed", false},
		{"default applies to other governors", policy, alice, PermRead, "other", false},
		{"default grants its uids", policy, bob, PermWrite, "other", true},
		{"unknown peer fails a rule", policy, unknown, PermRead, "orders", false},
		{"admin listed", policy, bob, PermAdmin, "", true},
		{"admin not listed", policy, alice, PermAdmin, "", false},
		{"empty admin list grants nobody", Access{Admin: []uint32{}}, alice, PermAdmin, "", false},
		{"without default, unlisted governors are open", Access{Governors: policy.Governors}, alice, PermWrite, "other", true},
		{"without admin list, admin is open", Access{Governors: policy.Governors}, alice, PermAdmin, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.access.Allows(tc.peer, tc.perm, tc.governor); got != tc.want {
				t.Fatalf("Allows(%+v, %s, %q) = %v, want %v", tc.peer, tc.perm, tc.governor, got, tc.want)
			}
		})
	}
}

func TestAccessAllowsPeer(t *testing.T) {
	p := Peer{UID: 1000, GID: 100, Known: true}
	cases := []struct {
		name   string
		access Access
		peer   Peer
		want   bool
	}{
		{"no allowlist", Access{}, p, true},
		{"no allowlist, unknown peer", Access{}, Peer{}, true},
		{"uid listed", Access{AllowUIDs: []uint32{5, 1000}}, p, true},
		{"gid listed", Access{AllowGIDs: []uint32{100}}, p, true},
		{"neither listed", Access{AllowUIDs: []uint32{5}, AllowGIDs: []uint32{6}}, p, false},
		{"unknown peer with allowlist", Access{AllowUIDs: []uint32{0}}, Peer{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.access.AllowsPeer(tc.peer); got != tc.want {
				t.Fatalf("AllowsPeer = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAccessValidate(t *testing.T) {
	for _, g := range []string{"", "a/b", "..", "__x__", "bad\xff"} {
		a := Access{Governors: map[string]GovernorAccess{g: {}}}
		if err := a.Validate(); !errors.Is(err, ErrInvalidAccess) {
			t.Errorf("governor %q: Validate() = %v, want ErrInvalidAccess", g, err)
		}
	}
	a := Access{Governors: map[string]GovernorAccess{"orders": {}}, Default: &GovernorAccess{}}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestEveryOpHasAPerm keeps the access policy complete: every op but hello
// and ping needs a right, so a new op cannot slip past the policy.
func TestEveryOpHasAPerm(t *testing.T) {
	for op := range numOps {
		switch op {
		case opHello, opPing, opUnwatch, opResolverUnregister, opResolve, opOther:
			if opPerms[op] != 0 {
				t.Errorf("%s needs %s; it must need none", opNames[op], opPerms[op])
			}
		default:
			if p := opPerms[op]; p != PermRead && p != PermWrite && p != PermAdmin && p != PermLock {
				t.Errorf("op %s has no right in opPerms", opNames[op])
			}
		}
	}
}

// TestPeerNotAllowedIsRefused connects over a real socket as ourselves
// with an allowlist that leaves our uid and gid out: the connection gets
// one PermissionDenied frame with id 0 and is closed. The refusal is
// logged once per peer process, however often it reconnects.
func TestPeerNotAllowedIsRefused(t *testing.T) {
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	logs := &lockedBuffer{}
	ts := startServer(t, newFakeStore(), Options{
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Access: Access{AllowUIDs: []uint32{uid + 1}, AllowGIDs: []uint32{gid + 1}},
	})
	for range 3 {
		c := ts.dial()
		got := c.expectClosed()
		if len(got) != 1 || got[0].ID != 0 {
			t.Fatalf("refused connection got %+v, want one frame with id 0", got)
		}
		expectError(t, got[0], wire.CodePermissionDenied, "")
		if got[0].Error.Retryable {
			t.Fatal("PermissionDenied must not be retryable")
		}
	}
	if n := strings.Count(logs.String(), "connection refused"); n != 1 {
		t.Fatalf("refusal logged %d times, want once per peer:\n%s", n, logs)
	}
	if _, _, errs := ts.srv.Stats(); errs[string(wire.CodePermissionDenied)] != 3 {
		t.Fatalf("error counts %v, want 3 PermissionDenied", errs)
	}
}

// TestPeerAllowedByGID lets us in by our gid alone.
func TestPeerAllowedByGID(t *testing.T) {
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	ts := startServer(t, newFakeStore(), Options{Access: Access{AllowUIDs: []uint32{uid + 1}, AllowGIDs: []uint32{gid}}})
	if r := ts.hello().call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestGovernorAccessOverSocket allows our uid to read governor "ro" only,
// to read and write "rw", nothing else (Default), and no admin ops.
func TestGovernorAccessOverSocket(t *testing.T) {
	uid := uint32(os.Getuid())
	logs := &lockedBuffer{}
	store := newFakeStore()
	ts := startServer(t, store, Options{
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Access: Access{
			AllowUIDs: []uint32{uid},
			Governors: map[string]GovernorAccess{
				"ro": {Read: []uint32{uid}},
				"rw": {Read: []uint32{uid}, Write: []uint32{uid}},
			},
			Default: &GovernorAccess{},
			Admin:   []uint32{},
		},
	})
	c := ts.hello()
	one := mustMarshal(t, 1)
	// Seed "ro" through "rw"'s rights: write to rw, then check ro is
	// read-only.
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "rw", State: "s", Value: one}); r.Error != nil {
		t.Fatal(r.Error)
	}
	if r := c.call(wire.Request{Op: wire.OpGet, Governor: "rw", State: "s"}); r.Error != nil || r.Record == nil {
		t.Fatalf("get rw/s: %+v", r)
	}

	denied := []struct {
		name  string
		req   wire.Request
		field string
		gov   string
	}{
		{"put on read-only", wire.Request{Op: wire.OpPut, Governor: "ro", State: "s", Value: one}, "governor", "ro"},
		{"delete on read-only", wire.Request{Op: wire.OpDelete, Governor: "ro", State: "s"}, "governor", "ro"},
		{"batch_put touching read-only", wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{
			{Governor: "rw", State: "a", Value: one}, {Governor: "ro", State: "b", Value: one}}}, "items[1].governor", "ro"},
		{"get on default", wire.Request{Op: wire.OpGet, Governor: "other", State: "s"}, "governor", "other"},
		{"list on default", wire.Request{Op: wire.OpList, Governor: "other"}, "governor", "other"},
		{"batch_get touching default", wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{
			{Governor: "ro", State: "s"}, {Governor: "other", State: "s"}}}, "keys[1].governor", "other"},
		{"stats without admin", wire.Request{Op: wire.OpStats}, "", ""},
		{"invalid governor name is not echoed", wire.Request{Op: wire.OpGet, Governor: "a/b", State: "s"}, "governor", ""},
	}
	for _, tc := range denied {
		t.Run(tc.name, func(t *testing.T) {
			r := c.call(tc.req)
			expectError(t, r, wire.CodePermissionDenied, tc.field)
			if r.Error.Governor != tc.gov || r.Error.Retryable {
				t.Fatalf("error %+v: want governor %q, not retryable", r.Error, tc.gov)
			}
		})
	}

	allowed := []wire.Request{
		{Op: wire.OpGet, Governor: "ro", State: "missing"}, // NotFound, not denied
		{Op: wire.OpList, Governor: "ro"},
		{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "ro", State: "s"}, {Governor: "rw", State: "s"}}},
		{Op: wire.OpPing},
		{Op: "frobnicate"}, // UnknownOp: no right needed to learn the op is unknown
	}
	for _, req := range allowed {
		r := c.call(req)
		if r.Error != nil && r.Error.Code == wire.CodePermissionDenied {
			t.Fatalf("%s denied: %+v", req.Op, r.Error)
		}
	}
	if _, err := store.Get(t.Context(), localcache.Key{Governor: "rw", State: "a"}); !errors.Is(err, localcache.ErrNotFound) {
		t.Fatal("a denied batch_put wrote part of its items")
	}
	if n := strings.Count(logs.String(), "request denied"); n != 1 {
		t.Fatalf("denials logged %d times, want once per peer:\n%s", n, logs)
	}
}

// TestMaxConnsPerUID refuses our uid's connections over its cap with an
// Unavailable frame, and takes new ones once one closes.
func TestMaxConnsPerUID(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{MaxConnsPerUID: 2, MaxConns: 10})
	a := ts.hello()
	ts.hello()
	c := ts.dial()
	got := c.expectClosed()
	if len(got) != 1 || got[0].ID != 0 {
		t.Fatalf("over the per-uid cap: %+v", got)
	}
	expectError(t, got[0], wire.CodeUnavailable, "")
	if !strings.Contains(got[0].Error.Message, "uid") {
		t.Fatalf("message %q does not say the cap is per uid", got[0].Error.Message)
	}
	a.nc.Close()
	waitFor(t, "the closed connection to be released", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.uidConns[uint32(os.Getuid())] == 1
	})
	if r := ts.hello().call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestPeerCredentials reads our own credentials back over a real socket.
func TestPeerCredentials(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{})
	ts.hello()
	var seen Peer
	waitFor(t, "the connection to be registered", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for c := range ts.srv.conns {
			seen = c.peer
			return true
		}
		return false
	})
	if !seen.Known || seen.UID != uint32(os.Getuid()) || seen.GID != uint32(os.Getgid()) || seen.PID != int32(os.Getpid()) {
		t.Fatalf("peer %+v, want uid %d gid %d pid %d", seen, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

func TestDeniedLogIsBounded(t *testing.T) {
	var d deniedLog
	for i := range maxDeniedPeers + 10 {
		if !d.first(Peer{UID: 1, PID: int32(i)}) {
			t.Fatalf("peer %d reported as seen", i)
		}
	}
	if len(d.seen) > maxDeniedPeers {
		t.Fatalf("deniedLog holds %d peers, cap %d", len(d.seen), maxDeniedPeers)
	}
	if d.first(Peer{UID: 1, PID: int32(maxDeniedPeers + 9)}) {
		t.Fatal("a recent peer was logged twice")
	}
}

// lockedBuffer is a log sink the server writes from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
