package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// startAppSidecar serves an in-memory store whose conflicts of every
// governor go to apps ("*=app:lww"; hub nil: a local-only sidecar). It
// returns the socket path and the resolvers the push loop would use.
func startAppSidecar(t *testing.T, hub *conflict.AppHub) (string, *conflict.Set) {
	t.Helper()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-app"})
	if err != nil {
		t.Fatal(err)
	}
	var set *conflict.Set
	if hub != nil {
		reg := conflict.NewRegistry()
		if err := reg.Register(conflict.NameApp, hub.Factory); err != nil {
			t.Fatal(err)
		}
		if set, err = reg.Build(conflict.Config{Default: conflict.Choice{Resolver: conflict.NameApp}}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(store, sockapi.Options{Apps: hub})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		store.Close(ctx)
	})
	return path, set
}

// counterConflict is a conflict of counter g/name: base n=1, local n=1+l,
// remote n=1+r.
func counterConflict(t *testing.T, name string, l, r int) conflict.Conflict {
	enc := func(n int) []byte {
		b, err := wire.Marshal(map[string]int{"n": n})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return conflict.Conflict{
		Key:    conflict.Key{Governor: "g", State: name},
		Local:  conflict.Side{Value: enc(1 + l), Version: 2, Origin: "b", OpID: "b-" + name, Clock: conflict.Clock{HLC: 20}},
		Remote: conflict.Side{Value: enc(1 + r), Version: 2, Origin: "a", OpID: "a-" + name, Clock: conflict.Clock{HLC: 10}},
		Base:   &conflict.Base{Value: enc(1), Version: 1},
	}
}

// counterDoc is a counter's document.
type counterDoc struct {
	N int `codec:"n"`
}

// sumCounters adds both sides' increments to the base.
func sumCounters(_ context.Context, c client.Conflict) (client.Resolution, error) {
	var base, l, r counterDoc
	if c.Base == nil {
		return client.Decline("no base"), nil
	}
	for _, x := range []struct {
		raw []byte
		v   *counterDoc
	}{{c.Base.Value, &base}, {c.Local.Value, &l}, {c.Remote.Value, &r}} {
		if err := wire.Unmarshal(x.raw, x.v); err != nil {
			return client.Resolution{}, err
		}
	}
	return client.NewValue(map[string]int{"n": base.N + (l.N - base.N) + (r.N - base.N)}, "summed")
}

// TestServeConflicts: a Go app serving conflicts decides many at once
// (a merged counter each); a second app for the same governor is refused;
// when the app stops, the governor is free and the fallback decides.
func TestServeConflicts(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	path, set := startAppSidecar(t, hub)
	c := client.New(path)
	defer c.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	served := make(chan error, 1)
	registered := make(chan time.Duration, 1)
	go func() {
		served <- c.ServeConflicts(ctx, "g", sumCounters, client.AnswerWithin(5*time.Second),
			client.OnRegistered(func(d time.Duration) { registered <- d }))
	}()
	if d := <-registered; d != 5*time.Second || !hub.Registered("g") {
		t.Fatalf("registered with deadline %v (hub knows it: %v)", d, hub.Registered("g"))
	}

	if err := c.ServeConflicts(testCtx(t), "g", sumCounters); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("second app: %v, want ErrLockHeld", err)
	}

	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d, err := set.Resolve(context.Background(), counterConflict(t, fmt.Sprint("c", i), i, 2*i))
			if err != nil {
				t.Error(err)
				return
			}
			var got counterDoc
			if d.Winner != conflict.Merged || d.Resolver != "app" || wire.Unmarshal(d.Value, &got) != nil ||
				got.N != 1+3*i || !strings.Contains(d.Reason, `("summed")`) {
				t.Errorf("conflict %d: %+v (n=%d)", i, d, got.N)
			}
		})
	}
	wg.Wait()

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("ServeConflicts: %v", err)
	}
	eventually(t, "the registration to end", func() bool { return !hub.Registered("g") })
	d, _ := set.Resolve(context.Background(), counterConflict(t, "after", 1, 1))
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "no app registered") {
		t.Fatalf("decision without the app: %+v", d)
	}
}

// TestServeConflictsDeclines: an error of the app's function declines the
// conflict (the fallback decides, the error is the reason), and a
// resolution the sidecar refuses is reported to OnAnswerError.
func TestServeConflictsDeclines(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	path, set := startAppSidecar(t, hub)
	c := client.New(path)
	defer c.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	refused := make(chan error, 1)
	fn := func(_ context.Context, cf client.Conflict) (client.Resolution, error) {
		if cf.State == "bad" {
			return client.Resolution{Choice: "mine"}, nil
		}
		return client.Resolution{}, errors.New("cannot tell")
	}
	go c.ServeConflicts(ctx, "g", fn, client.AnswerWithin(time.Second),
		client.OnAnswerError(func(_ client.Conflict, err error) { refused <- err }))
	eventually(t, "the app to register", func() bool { return hub.Registered("g") })
	d, _ := set.Resolve(context.Background(), counterConflict(t, "x", 1, 1))
	if d.Resolver != "app>lww" || !strings.HasPrefix(d.Reason, `app declined ("cannot tell")`) {
		t.Fatalf("decision %+v", d)
	}
	d, _ = set.Resolve(context.Background(), counterConflict(t, "bad", 1, 1))
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "timeout") {
		t.Fatalf("decision after an invalid answer: %+v", d)
	}
	if err := <-refused; !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("refused answer: %v", err)
	}
}

// TestServeConflictsLocalOnly: a sidecar without a shared store has no
// conflicts to hand out; client-side checks come first.
func TestServeConflictsLocalOnly(t *testing.T) {
	path, _ := startAppSidecar(t, nil)
	c := client.New(path)
	defer c.Close()
	if err := c.ServeConflicts(testCtx(t), "g", sumCounters); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("local only: %v", err)
	}
	if err := c.ServeConflicts(testCtx(t), "a/b", sumCounters); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("bad governor: %v", err)
	}
	for _, d := range []time.Duration{time.Minute, 5 * time.Millisecond, -time.Second} { // refused before dialling
		if err := c.ServeConflicts(testCtx(t), "g", sumCounters, client.AnswerWithin(d)); !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("deadline %v: %v", d, err)
		}
	}
}

// An app that decides the conflicts of governor "counters" (the sidecar runs
// with --resolvers 'counters=app:lww'): both sides' increments are kept.
func ExampleClient_ServeConflicts() {
	c := client.New("/run/tai/tai.sock")
	defer c.Close()
	sum := func(_ context.Context, cf client.Conflict) (client.Resolution, error) {
		var base, local, remote counterDoc
		if cf.Base == nil || cf.Local.Deleted || cf.Remote.Deleted {
			return client.Decline("not two counters with a known base"), nil
		}
		for _, x := range []struct {
			raw []byte
			v   *counterDoc
		}{{cf.Base.Value, &base}, {cf.Local.Value, &local}, {cf.Remote.Value, &remote}} {
			if err := wire.Unmarshal(x.raw, x.v); err != nil {
				return client.Resolution{}, err // declines: the fallback decides
			}
		}
		return client.NewValue(counterDoc{N: local.N + remote.N - base.N}, "sum of both increments")
	}
	// Runs until the context ends or the connection to the sidecar fails.
	if err := c.ServeConflicts(context.Background(), "counters", sum, client.AnswerWithin(time.Second)); err != nil {
		fmt.Println("conflict app:", err)
	}
}
