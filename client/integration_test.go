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
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// sidecar is the real socket server over an in-memory store.
type sidecar struct {
	path  string
	store *localcache.Store
	srv   *sockapi.Server
	done  chan error
}

// startSidecar serves store (a new in-memory one if nil) on path (a new
// socket in a temporary directory if empty).
func startSidecar(t testing.TB, store *localcache.Store, path string) *sidecar {
	t.Helper()
	if store == nil {
		var err error
		store, err = localcache.Open(localcache.Options{InMemory: true, NodeID: "node-it"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close(context.Background()) })
	}
	if path == "" {
		path = filepath.Join(t.TempDir(), "tai.sock")
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{path: path, store: store, srv: sockapi.NewServer(store, sockapi.Options{}), done: make(chan error, 1)}
	go func() { s.done <- s.srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *sidecar) stop(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if err := <-s.done; err != nil {
		t.Errorf("serve: %v", err)
	}
	s.done <- nil // later stops return at once
}

func newClient(t testing.TB, path string) *client.Client {
	c := &client.Client{Socket: path, Name: "integration"}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSidecarRoundTrip(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	ctx := context.Background()

	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != wire.ProtocolVersion || h.NodeID != "node-it" || h.MaxBatch != wire.MaxBatch {
		t.Fatalf("hello = %+v", h)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	type cart struct {
		Items []string `codec:"items"`
		Note  string   `codec:"note"`
	}
	rec, err := c.Put(ctx, "shop", "cart-1", cart{Items: []string{"a", "b"}, Note: "gift"}, client.Actor("web"), client.Reason("add"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Version != 1 || rec.Value != nil || rec.Change.Actor != "web" || !strings.HasPrefix(rec.Origin, "node-it~") || !rec.Pending {
		t.Fatalf("put = %+v", rec.Record)
	}
	got, err := c.Get(ctx, "shop", "cart-1")
	if err != nil {
		t.Fatal(err)
	}
	var v cart
	if err := got.Decode(&v); err != nil || v.Note != "gift" || len(v.Items) != 2 || got.Version != 1 || !got.FromCache {
		t.Fatalf("get = %+v, %+v, %v", got.Record, v, err)
	}

	// Preconditions and typed errors.
	_, err = c.Put(ctx, "shop", "cart-1", "x", client.IfVersion(7))
	var e *client.Error
	if !errors.Is(err, client.ErrVersionConflict) || !errors.As(err, &e) ||
		e.Expected == nil || *e.Expected != 7 || e.Actual == nil || *e.Actual != 1 || e.State != "cart-1" {
		t.Fatalf("conflict: %v", err)
	}
	if _, err := c.Put(ctx, "shop", "cart-1", "x", client.IfAbsent()); !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("if-absent on a live state: %v", err)
	}
	if _, err := c.Get(ctx, "shop", "nope"); !errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("get missing: %v", err)
	}
	del, err := c.Delete(ctx, "shop", "cart-1", client.IfVersion(1))
	if err != nil || del.Version != 2 || !del.Deleted {
		t.Fatalf("delete = %+v, %v", del, err)
	}
	if _, err := c.Get(ctx, "shop", "cart-1"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if rec, err := c.Put(ctx, "shop", "cart-1", 1, client.IfAbsent()); err != nil || rec.Version != 3 {
		t.Fatalf("re-create = %+v, %v", rec, err)
	}

	// Batches.
	one, _ := wire.Marshal(1)
	recs, err := c.BatchPut(ctx, []wire.Item{
		{Governor: "shop", State: "b1", Value: one},
		{Governor: "shop", State: "b2", Value: one, IfAbsent: true},
		{Governor: "shop", State: "cart-1", Delete: true},
	}, client.Actor("batch"))
	if err != nil || len(recs) != 3 || recs[2].Version != 4 || !recs[2].Deleted {
		t.Fatalf("batch put = %v, %v", recs, err)
	}
	_, err = c.BatchPut(ctx, []wire.Item{
		{Governor: "shop", State: "b3", Value: one},
		{Governor: "shop", State: "b1", Value: one, IfVersion: new(uint64)},
	})
	if !errors.As(err, &e) || e.Code != wire.CodeVersionConflict || e.State != "b1" {
		t.Fatalf("conflicting batch: %v", err)
	}
	bg, err := c.BatchGet(ctx, []wire.Key{{Governor: "shop", State: "b1"}, {Governor: "shop", State: "b3"}, {Governor: "shop", State: "cart-1"}})
	if err != nil || len(bg) != 3 || bg[0] == nil || bg[1] != nil || bg[2] != nil {
		t.Fatalf("batch get = %v, %v", bg, err)
	}

	st, err := c.Stats(ctx)
	if err != nil || st.NodeID != "node-it" || st.Origin != rec.Origin || st.States != 2 || st.Requests["put"] == 0 {
		t.Fatalf("stats = %+v, %v", st, err)
	}
}

func TestSidecarList(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	ctx := context.Background()
	for i := range 30 {
		if _, err := c.Put(ctx, "g", fmt.Sprintf("k%02d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Put(ctx, "g", "other", 0); err != nil {
		t.Fatal(err)
	}
	page, next, err := c.List(ctx, "g", client.ListOptions{Prefix: "k", Limit: 7})
	if err != nil || len(page) != 7 || next == "" || page[6].State != "k06" {
		t.Fatalf("page = %d records, next %q, %v", len(page), next, err)
	}
	n := 0
	for rec, err := range c.ListAll(ctx, "g", client.ListOptions{Prefix: "k", Limit: 7}) {
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if rec.State != fmt.Sprintf("k%02d", n) || rec.Decode(&v) != nil || v != n {
			t.Fatalf("record %d = %s %d", n, rec.State, v)
		}
		n++
	}
	if n != 30 {
		t.Fatalf("listed %d, want 30", n)
	}
}

func TestSidecarConcurrent(t *testing.T) {
	const goroutines, rounds = 100, 10
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			state := fmt.Sprintf("s%03d", g)
			for r := range rounds {
				rec, err := c.Put(ctx, "conc", state, r, client.IfVersion(uint64(r)))
				if err != nil || rec.Version != uint64(r+1) {
					t.Errorf("%s round %d: %v, %v", state, r, rec, err)
					return
				}
				if _, err := c.Get(ctx, "conc", fmt.Sprintf("s%03d", (g+1)%goroutines)); err != nil && !errors.Is(err, client.ErrNotFound) {
					t.Errorf("read neighbour: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for rec, err := range c.ListAll(ctx, "conc", client.ListOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if rec.Version != rounds || rec.Decode(&v) != nil || v != rounds-1 {
			t.Fatalf("%s: version %d value %d", rec.State, rec.Version, v)
		}
		n++
	}
	if n != goroutines {
		t.Fatalf("%d states, want %d", n, goroutines)
	}
}

// TestSidecarRestart: when the sidecar goes away, calls fail with
// ErrUnavailable; once it is back on the same socket, the client redials.
func TestSidecarRestart(t *testing.T) {
	s := startSidecar(t, nil, "")
	// One connection: with two, the one the ping did not use may not have
	// seen the sidecar go yet, and a get written on it just before the old
	// sidecar closed it is rightly a ConnError with Sent (outcome unknown).
	c := &client.Client{Socket: s.path, Name: "integration", Conns: 1}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	if _, err := c.Put(ctx, "g", "s", "before"); err != nil {
		t.Fatal(err)
	}
	s.stop(t)
	err := c.Ping(ctx)
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("ping with the sidecar down: %v", err)
	}
	var ce *client.ConnError
	if !errors.As(err, &ce) {
		t.Fatalf("%v is not a ConnError", err)
	}
	s2 := startSidecar(t, s.store, s.path)
	rec, err := c.Get(ctx, "g", "s")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	var v string
	if rec.Decode(&v); v != "before" {
		t.Fatalf("value after restart = %q", v)
	}
	_ = s2
}

func BenchmarkGetParallelSidecar(b *testing.B) {
	s := startSidecar(b, nil, "")
	c := newClient(b, s.path)
	ctx := context.Background()
	if _, err := c.Put(ctx, "bench", "k", map[string]any{"n": 1, "s": "hello"}); err != nil {
		b.Fatal(err)
	}
	for _, p := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%dxGOMAXPROCS", p), func(b *testing.B) {
			b.SetParallelism(p)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Get(ctx, "bench", "k"); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
