package sockapi

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// appResolvers returns a hub and the resolver set "*=app:lww" over it (the
// governor "plain" keeps lww, so apps cannot register for it).
func appResolvers(t *testing.T) (*conflict.AppHub, *conflict.Set) {
	t.Helper()
	cfg, err := conflict.ParseConfig("*=app:lww,plain=lww")
	if err != nil {
		t.Fatal(err)
	}
	hub := conflict.NewAppHub(conflict.AppOptions{Delegated: func(g string) bool { return cfg.For(g).Resolver == conflict.NameApp }})
	reg := conflict.NewRegistry()
	if err := reg.Register(conflict.NameApp, hub.Factory); err != nil {
		t.Fatal(err)
	}
	set, err := reg.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return hub, set
}

// testConflict is a conflict of g/s whose local side is the later one.
func testConflict(t *testing.T, gov string) conflict.Conflict {
	return conflict.Conflict{
		Key: conflict.Key{Governor: gov, State: "s"},
		Local: conflict.Side{Value: mustMarshal(t, map[string]int{"n": 3}), Version: 2, Origin: "b", OpID: "b-1",
			UpdatedAt: 7, Clock: conflict.Clock{Lamport: 2, HLC: 20, Vector: conflict.Vector{"a": 1, "b": 1}}},
		Remote: conflict.Side{Value: mustMarshal(t, map[string]int{"n": 5}), Version: 2, Origin: "a", OpID: "a-2",
			Clock: conflict.Clock{Lamport: 2, HLC: 10, Vector: conflict.Vector{"a": 2}}},
		Base: &conflict.Base{Value: mustMarshal(t, map[string]int{"n": 1}), Version: 1},
	}
}

// resolveAsync settles c with set on a goroutine; the decision arrives on
// the channel.
func resolveAsync(set *conflict.Set, c conflict.Conflict) <-chan conflict.Decision {
	ch := make(chan conflict.Decision, 1)
	go func() {
		d, _ := set.Resolve(context.Background(), c)
		ch <- d
	}()
	return ch
}

// register registers cl for gov and returns the registration's id.
func register(t *testing.T, cl *client, gov string, deadlineMS uint64) uint64 {
	t.Helper()
	r := cl.call(wire.Request{Op: wire.OpResolverRegister, Governor: gov, DeadlineMS: deadlineMS})
	if r.Error != nil || r.Resolver == nil || r.Resolver.Governor != gov || r.Push {
		t.Fatalf("resolver_register %s: %+v %v", gov, r, r.Error)
	}
	return r.ID
}

// TestResolverPushAndResolve: a registered connection gets each conflict
// of its governor in a push frame (the register's id, both sides with
// values, versions, origins and clocks, the base, the time left), keeps
// serving requests meanwhile, and its resolve settles the conflict.
func TestResolverPushAndResolve(t *testing.T) {
	hub, set := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub})
	app := ts.hello()
	regID := register(t, app, "g", 0)
	if !hub.Registered("g") {
		t.Fatal("hub does not know the app")
	}

	c := testConflict(t, "g")
	done := resolveAsync(set, c)
	p := app.recv()
	ac := p.Conflict
	if !p.Push || p.ID != regID || p.Watch != 0 || ac == nil || ac.ID == 0 || ac.Governor != "g" || ac.State != "s" ||
		ac.DeadlineMS == 0 || ac.DeadlineMS > 2000 {
		t.Fatalf("push frame: %+v", p)
	}
	if string(ac.Local.Value) != string(c.Local.Value) || ac.Local.Version != 2 || ac.Local.Origin != "b" ||
		ac.Local.OpID != "b-1" || ac.Local.UpdatedAt != 7 || ac.Local.Clock.HLC != 20 || ac.Local.Clock.Vector["b"] != 1 ||
		string(ac.Remote.Value) != string(c.Remote.Value) || ac.Remote.Origin != "a" || ac.Remote.Clock.Vector["a"] != 2 ||
		ac.Base == nil || ac.Base.Version != 1 || string(ac.Base.Value) != string(c.Base.Value) {
		t.Fatalf("conflict: %+v", ac)
	}
	if r := app.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
	merged := mustMarshal(t, map[string]int{"n": 7})
	r := app.call(wire.Request{Op: wire.OpResolve, ConflictID: ac.ID, Choice: wire.ChoiceValue, Value: merged, Reason: "sum"})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	d := <-done
	if d.Resolver != "app" || d.Winner != conflict.Merged || string(d.Value) != string(merged) || !strings.Contains(d.Reason, `("sum")`) {
		t.Fatalf("decision %+v", d)
	}

	// Each choice.
	for _, tc := range []struct {
		choice string
		winner conflict.Winner
	}{{wire.ChoiceLocal, conflict.Local}, {wire.ChoiceRemote, conflict.Remote}, {wire.ChoiceFallback, conflict.Local}} {
		done := resolveAsync(set, c)
		p := app.recv()
		if r := app.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: tc.choice}); r.Error != nil {
			t.Fatal(r.Error)
		}
		if d := <-done; d.Winner != tc.winner || tc.choice != wire.ChoiceFallback && d.Resolver != "app" ||
			tc.choice == wire.ChoiceFallback && d.Resolver != "app>lww" {
			t.Fatalf("choice %s: decision %+v", tc.choice, d)
		}
	}

	// Unregister: no app, the fallback decides at once; unregistering
	// again succeeds.
	for range 2 {
		if r := app.call(wire.Request{Op: wire.OpResolverUnregister, Governor: "g"}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	if hub.Registered("g") {
		t.Fatal("still registered after resolver_unregister")
	}
	if d, _ := set.Resolve(context.Background(), c); d.Resolver != "app>lww" || !strings.Contains(d.Reason, "no app registered") {
		t.Fatalf("decision without the app: %+v", d)
	}
}

// TestResolverValidation: every bad registration and answer gets a typed
// error naming its field, and changes nothing.
func TestResolverValidation(t *testing.T) {
	hub, set := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub, MaxValue: 20 << 10})
	app := ts.hello()
	other := ts.hello()
	for _, tc := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
	}{
		{"no governor", wire.Request{Op: wire.OpResolverRegister}, wire.CodeInvalidArgument, "governor"},
		{"bad governor", wire.Request{Op: wire.OpResolverRegister, Governor: "a/b"}, wire.CodeInvalidArgument, "governor"},
		{"deadline too short", wire.Request{Op: wire.OpResolverRegister, Governor: "g", DeadlineMS: 1}, wire.CodeInvalidArgument, "deadline_ms"},
		{"deadline too long", wire.Request{Op: wire.OpResolverRegister, Governor: "g", DeadlineMS: 10_001}, wire.CodeInvalidArgument, "deadline_ms"},
		{"not delegated", wire.Request{Op: wire.OpResolverRegister, Governor: "plain"}, wire.CodeInvalidArgument, "governor"},
		{"unregister without governor", wire.Request{Op: wire.OpResolverUnregister}, wire.CodeInvalidArgument, "governor"},
		{"resolve without id", wire.Request{Op: wire.OpResolve, Choice: "local"}, wire.CodeInvalidArgument, "conflict_id"},
		{"resolve without choice", wire.Request{Op: wire.OpResolve, ConflictID: 1}, wire.CodeInvalidArgument, "choice"},
		{"unknown choice", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "mine"}, wire.CodeInvalidArgument, "choice"},
		{"value without value", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "value"}, wire.CodeInvalidArgument, "value"},
		{"value with local", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "local", Value: wire.Raw{0x01}}, wire.CodeInvalidArgument, "value"},
		{"deleted", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "value", Value: wire.Raw{0x01}, Deleted: true}, wire.CodeInvalidArgument, "deleted"},
		{"value too large", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "value", Value: mustMarshal(t, strings.Repeat("x", 30<<10))}, wire.CodeTooLarge, "value"},
		{"reason too long", wire.Request{Op: wire.OpResolve, ConflictID: 1, Choice: "local", Reason: strings.Repeat("r", wire.MaxMetaSize+1)}, wire.CodeTooLarge, "reason"},
		{"unknown conflict", wire.Request{Op: wire.OpResolve, ConflictID: 99, Choice: "local"}, wire.CodeNotFound, "conflict_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, app.call(tc.req), tc.code, tc.field)
		})
	}
	// Wrong types are refused by the request decoder.
	for _, body := range []map[string]any{
		{"op": "resolve", "conflict_id": "1", "choice": "local"},
		{"op": "resolve", "conflict_id": 1, "choice": 1},
		{"op": "resolve", "conflict_id": -1, "choice": "local"},
		{"op": "resolve", "conflict_id": 1, "choice": "local", "deleted": "yes"},
		{"op": "resolver_register", "governor": "g", "deadline_ms": "2s"},
	} {
		body["id"] = app.id()
		app.send(body)
		if r := app.recv(); r.Error == nil || r.Error.Code != wire.CodeInvalidArgument {
			t.Fatalf("%v: %+v", body, r)
		}
	}

	// One app per governor: a second connection waits its turn; the same
	// connection twice is a mistake.
	register(t, app, "g", 50)
	expectError(t, app.call(wire.Request{Op: wire.OpResolverRegister, Governor: "g"}), wire.CodeInvalidArgument, "governor")
	r := other.call(wire.Request{Op: wire.OpResolverRegister, Governor: "g"})
	expectError(t, r, wire.CodeLockHeld, "")
	if !r.Error.Retryable {
		t.Fatal("LockHeld for a taken governor is not retryable")
	}

	// A conflict answered by another connection is unknown there; a late
	// answer is a Timeout (not retryable); a second answer is refused.
	done := resolveAsync(set, testConflict(t, "g"))
	p := app.recv()
	expectError(t, other.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: "local"}), wire.CodeNotFound, "conflict_id")
	if d := <-done; d.Resolver != "app>lww" || !strings.Contains(d.Reason, "timeout") {
		t.Fatalf("decision without an answer: %+v", d)
	}
	r = app.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: "local"})
	expectError(t, r, wire.CodeTimeout, "")
	if r.Error.Retryable || r.Error.Governor != "g" {
		t.Fatalf("late answer: %+v", r.Error)
	}
	// The app is not asked for 10 deadlines after it let one pass.
	time.Sleep(10*50*time.Millisecond + 50*time.Millisecond)
	done = resolveAsync(set, testConflict(t, "g"))
	p = app.recv()
	if r := app.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: "remote"}); r.Error != nil {
		t.Fatal(r.Error)
	}
	expectError(t, app.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: "remote"}), wire.CodeInvalidArgument, "conflict_id")
	if d := <-done; d.Winner != conflict.Remote {
		t.Fatalf("decision %+v", d)
	}
}

// TestResolverLocalOnly: without a hub (no shared store) registering is
// Unavailable, not retryable.
func TestResolverLocalOnly(t *testing.T) {
	ts := startServer(t, openLocalcache(t, ""), Options{})
	r := ts.hello().call(wire.Request{Op: wire.OpResolverRegister, Governor: "g"})
	expectError(t, r, wire.CodeUnavailable, "")
	if r.Error.Retryable {
		t.Fatal("retryable")
	}
}

// TestResolverDisconnect: an app that disconnects while a conflict waits
// for it hands the conflict to the fallback at once, and frees the
// governor for another app.
func TestResolverDisconnect(t *testing.T) {
	hub, set := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub})
	app := ts.hello()
	register(t, app, "g", uint64(conflict.MaxAppDeadline.Milliseconds()))
	done := resolveAsync(set, testConflict(t, "g"))
	if p := app.recv(); p.Conflict == nil {
		t.Fatalf("push: %+v", p)
	}
	start := time.Now()
	app.nc.Close()
	d := <-done
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "app: the app went away (disconnected or unregistered) before it answered") {
		t.Fatalf("decision %+v", d)
	}
	if waited := time.Since(start); waited >= conflict.MaxAppDeadline {
		t.Fatalf("the fallback waited for the deadline (%v)", waited)
	}
	waitFor(t, "the governor to be free", func() bool { return !hub.Registered("g") })
	register(t, ts.hello(), "g", 0)
}

// TestResolverNotIdle: a registered connection outlives the idle timeout;
// an unregistered one does not.
func TestResolverNotIdle(t *testing.T) {
	hub, _ := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub, IdleTimeout: 100 * time.Millisecond})
	app := ts.hello()
	register(t, app, "g", 0)
	idle := ts.hello()
	idle.expectClosed()
	if r := app.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
	if !hub.Registered("g") {
		t.Fatal("registration lost")
	}
}

// TestResolverAccess: registering needs write and read on the governor;
// resolver_register by a peer without them is PermissionDenied.
func TestResolverAccess(t *testing.T) {
	uid := uint32(os.Getuid())
	hub, _ := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub, Access: Access{Governors: map[string]GovernorAccess{
		"writeonly": {Write: []uint32{uid}},
		"readonly":  {Read: []uint32{uid}},
		"both":      {Read: []uint32{uid}, Write: []uint32{uid}},
	}}})
	app := ts.hello()
	expectError(t, app.call(wire.Request{Op: wire.OpResolverRegister, Governor: "writeonly"}), wire.CodePermissionDenied, "governor")
	expectError(t, app.call(wire.Request{Op: wire.OpResolverRegister, Governor: "readonly"}), wire.CodePermissionDenied, "governor")
	register(t, app, "both", 0)
}

// TestResolverUnregisterPending: resolver_unregister hands the conflicts
// waiting for the connection to the fallback at once; an answer after it
// finds no such conflict.
func TestResolverUnregisterPending(t *testing.T) {
	hub, set := appResolvers(t)
	ts := startServer(t, openLocalcache(t, ""), Options{Apps: hub})
	app := ts.hello()
	register(t, app, "g", uint64(conflict.MaxAppDeadline.Milliseconds()))
	done := resolveAsync(set, testConflict(t, "g"))
	p := app.recv()
	start := time.Now()
	if r := app.call(wire.Request{Op: wire.OpResolverUnregister, Governor: "g"}); r.Error != nil {
		t.Fatal(r.Error)
	}
	d := <-done
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "app: the app went away (disconnected or unregistered) before it answered") ||
		time.Since(start) >= conflict.MaxAppDeadline {
		t.Fatalf("decision %+v after %v", d, time.Since(start))
	}
	expectError(t, app.call(wire.Request{Op: wire.OpResolve, ConflictID: p.Conflict.ID, Choice: "local"}), wire.CodeNotFound, "conflict_id")
}
