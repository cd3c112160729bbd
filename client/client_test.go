package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

func TestZeroValueDialsDefaultSocket(t *testing.T) {
	s := newFakeServer(t)
	t.Chdir(strings.TrimSuffix(s.path, "/tai.sock"))
	var c Client
	defer c.Close()
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.NodeID != "fake-node" || h.Version != wire.ProtocolVersion {
		t.Fatalf("hello = %+v", h)
	}
}

func TestPutGetDelete(t *testing.T) {
	s := newFakeServer(t)
	c := s.client(0)
	ctx := context.Background()

	type order struct {
		Status string `codec:"status"`
		Total  int    `codec:"total"`
	}
	rec, err := c.Put(ctx, "orders", "o-1", order{"paid", 42}, Actor("billing"), Reason("checkout"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Version != 1 || rec.Change.Actor != "billing" || rec.Change.Reason != "checkout" || rec.Value != nil {
		t.Fatalf("put record = %+v", rec.Record)
	}
	got, err := c.Get(ctx, "orders", "o-1")
	if err != nil {
		t.Fatal(err)
	}
	var o order
	if err := got.Decode(&o); err != nil {
		t.Fatal(err)
	}
	if o != (order{"paid", 42}) || got.Version != 1 || !got.FromCache || got.Updated().UnixNano() != got.UpdatedAt {
		t.Fatalf("get = %+v, decoded %+v", got.Record, o)
	}

	raw, _ := wire.Marshal("raw")
	if rec, err = c.PutRaw(ctx, "orders", "o-1", raw, IfVersion(1)); err != nil || rec.Version != 2 {
		t.Fatalf("PutRaw = %+v, %v", rec, err)
	}
	if rec, err = c.Delete(ctx, "orders", "o-1", IfVersion(2)); err != nil || rec.Version != 3 {
		t.Fatalf("Delete = %+v, %v", rec, err)
	}
	if _, err := c.Get(ctx, "orders", "o-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete: %v, want NotFound", err)
	}
	if err := (&Record{}).Decode(new(any)); err == nil {
		t.Fatal("Decode of a record without value succeeded")
	}
}

func TestTypedErrors(t *testing.T) {
	s := newFakeServer(t)
	c := s.client(1)
	ctx := context.Background()
	for range 5 {
		if _, err := c.Put(ctx, "g", "s", 1); err != nil {
			t.Fatal(err)
		}
	}
	// g/s is now at version 5.
	tests := []struct {
		name     string
		call     func() error
		is       error
		isNot    error
		expected uint64
		actual   uint64
	}{
		{
			name:     "if-version conflict",
			call:     func() error { _, err := c.Put(ctx, "g", "s", 2, IfVersion(3)); return err },
			is:       ErrVersionConflict,
			isNot:    ErrNotFound,
			expected: 3, actual: 5,
		},
		{
			name:     "if-absent conflict",
			call:     func() error { _, err := c.Put(ctx, "g", "s", 2, IfAbsent()); return err },
			is:       ErrVersionConflict,
			isNot:    ErrUnavailable,
			expected: 0, actual: 5,
		},
		{
			name:  "get missing",
			call:  func() error { _, err := c.Get(ctx, "g", "missing"); return err },
			is:    ErrNotFound,
			isNot: ErrVersionConflict,
		},
		{
			name:  "delete missing",
			call:  func() error { _, err := c.Delete(ctx, "g", "missing"); return err },
			is:    ErrNotFound,
			isNot: ErrInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.is)
			}
			if errors.Is(err, tt.isNot) {
				t.Fatalf("err = %v also matches %v", err, tt.isNot)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T is not a *Error", err)
			}
			if e.Governor != "g" || e.Retryable {
				t.Fatalf("error details = %+v", e)
			}
			if tt.is == ErrVersionConflict {
				if e.Expected == nil || e.Actual == nil || *e.Expected != tt.expected || *e.Actual != tt.actual {
					t.Fatalf("conflict details = %+v", e)
				}
			}
		})
	}
	// The failed writes changed nothing.
	if rec, err := c.Get(ctx, "g", "s"); err != nil || rec.Version != 5 {
		t.Fatalf("after conflicts: %+v, %v", rec, err)
	}
}

func TestClientSideValidation(t *testing.T) {
	s := newFakeServer(t)
	s.hello.MaxValue = 100
	s.hello.MaxBatch = 3
	c := s.client(1)
	ctx := context.Background()
	big := strings.Repeat("x", 200)
	tests := []struct {
		name  string
		call  func() error
		is    error
		field string
	}{
		{"empty governor", func() error { _, err := c.Get(ctx, "", "s"); return err }, ErrInvalidArgument, "governor"},
		{"slash in state", func() error { _, err := c.Put(ctx, "g", "a/b", 1); return err }, ErrInvalidArgument, "state"},
		{"reserved state", func() error { _, err := c.Delete(ctx, "g", "__x__"); return err }, ErrInvalidArgument, "state"},
		{"dot governor", func() error { _, _, err := c.List(ctx, ".", ListOptions{}); return err }, ErrInvalidArgument, "governor"},
		{"batch get bad key", func() error {
			_, err := c.BatchGet(ctx, []wire.Key{{Governor: "g", State: "ok"}, {Governor: "g", State: ".."}})
			return err
		}, ErrInvalidArgument, "keys"},
		{"batch item without value", func() error {
			_, err := c.BatchPut(ctx, []wire.Item{{Governor: "g", State: "s"}})
			return err
		}, ErrInvalidArgument, "items"},
		{"batch precondition option", func() error {
			v, _ := wire.Marshal(1)
			_, err := c.BatchPut(ctx, []wire.Item{{Governor: "g", State: "s", Value: v}}, IfVersion(1))
			return err
		}, ErrInvalidArgument, ""},
		{"empty raw value", func() error { _, err := c.PutRaw(ctx, "g", "s", nil); return err }, ErrInvalidArgument, "value"},
		{"nil value", func() error { _, err := c.Put(ctx, "g", "s", nil); return err }, ErrInvalidArgument, "value"},
		{"batch put bad name", func() error {
			v, _ := wire.Marshal(1)
			_, err := c.BatchPut(ctx, []wire.Item{{Governor: "__g__", State: "s", Value: v}})
			return err
		}, ErrInvalidArgument, "items"},
		{"long actor", func() error {
			_, err := c.Put(ctx, "g", "s", 1, Actor(strings.Repeat("a", wire.MaxMetaSize+1)))
			return err
		}, ErrTooLarge, "actor"},
		{"negative limit", func() error { _, _, err := c.List(ctx, "g", ListOptions{Limit: -1}); return err }, ErrInvalidArgument, "limit"},
		{"limit over max", func() error {
			_, _, err := c.List(ctx, "g", ListOptions{Limit: wire.MaxListLimit + 1})
			return err
		}, ErrInvalidArgument, "limit"},
		{"unencodable value", func() error { _, err := c.Put(ctx, "g", "s", complex(1, 2)); return err }, ErrInvalidArgument, "value"},
		// These need the sidecar's limits from hello.
		{"value over limit", func() error { _, err := c.Put(ctx, "g", "s", big); return err }, ErrTooLarge, "value"},
		{"batch item over limit", func() error {
			v, _ := wire.Marshal(big)
			_, err := c.BatchPut(ctx, []wire.Item{{Governor: "g", State: "s", Value: v}})
			return err
		}, ErrTooLarge, "value"},
		{"batch over limit", func() error {
			_, err := c.BatchGet(ctx, make4Keys())
			return err
		}, ErrTooLarge, "keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *Error
			if !errors.Is(err, tt.is) || !errors.As(err, &e) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
			if e.Field != tt.field {
				t.Fatalf("field = %q, want %q (%v)", e.Field, tt.field, err)
			}
		})
	}
	if n := s.requests.Load(); n != 0 {
		t.Fatalf("%d invalid requests reached the server", n)
	}
	// A frame over the announced cap is refused before it is sent too.
	s2 := newFakeServer(t)
	s2.hello.MaxFrame = 64
	c2 := s2.client(1)
	if _, err := c2.Put(ctx, "g", "s", strings.Repeat("y", 100)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	if err := c2.Ping(ctx); err != nil {
		t.Fatalf("ping after refused frame: %v", err)
	}
	if n := s2.requests.Load(); n != 1 {
		t.Fatalf("server saw %d requests, want only the ping", n)
	}
}

func make4Keys() []wire.Key {
	return []wire.Key{{Governor: "g", State: "a"}, {Governor: "g", State: "b"}, {Governor: "g", State: "c"}, {Governor: "g", State: "d"}}
}

func TestBatch(t *testing.T) {
	s := newFakeServer(t)
	c := s.client(0)
	ctx := context.Background()
	one, _ := wire.Marshal(1)
	two, _ := wire.Marshal("two")
	recs, err := c.BatchPut(ctx, []wire.Item{
		{Governor: "g", State: "a", Value: one},
		{Governor: "g", State: "b", Value: two, IfAbsent: true},
	}, Actor("batcher"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].State != "a" || recs[1].Version != 1 || recs[1].Change.Actor != "batcher" {
		t.Fatalf("BatchPut = %+v", recs)
	}
	// All or nothing: the second item's precondition fails, so "c" is not written.
	_, err = c.BatchPut(ctx, []wire.Item{
		{Governor: "g", State: "c", Value: one},
		{Governor: "g", State: "a", Value: one, IfVersion: ptr(uint64(7))},
	})
	var e *Error
	if !errors.As(err, &e) || e.Code != wire.CodeVersionConflict || e.State != "a" || *e.Expected != 7 || *e.Actual != 1 {
		t.Fatalf("conflicting batch: %v", err)
	}
	got, err := c.BatchGet(ctx, []wire.Key{{Governor: "g", State: "b"}, {Governor: "g", State: "c"}, {Governor: "g", State: "a"}})
	if err != nil {
		t.Fatal(err)
	}
	var s0 string
	var a0 int
	if len(got) != 3 || got[1] != nil || got[0].Decode(&s0) != nil || s0 != "two" || got[2].Decode(&a0) != nil || a0 != 1 {
		t.Fatalf("BatchGet = %+v", got)
	}
	if recs, err := c.BatchGet(ctx, nil); recs != nil || err != nil {
		t.Fatalf("empty BatchGet = %v, %v", recs, err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestListAndListAll(t *testing.T) {
	s := newFakeServer(t)
	c := s.client(0)
	ctx := context.Background()
	for i := range 25 {
		if _, err := c.Put(ctx, "g", fmt.Sprintf("s%02d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Put(ctx, "g", "other", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "h", "s00", 0); err != nil {
		t.Fatal(err)
	}
	page, next, err := c.List(ctx, "g", ListOptions{Prefix: "s", Limit: 10})
	if err != nil || len(page) != 10 || page[0].State != "s00" || next != "s09" {
		t.Fatalf("first page: %d records, next %q, %v", len(page), next, err)
	}
	var n int
	for rec, err := range c.ListAll(ctx, "g", ListOptions{Prefix: "s", Limit: 10}) {
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := rec.Decode(&v); err != nil || rec.State != fmt.Sprintf("s%02d", n) || v != n {
			t.Fatalf("record %d: %s = %d (%v)", n, rec.State, v, err)
		}
		n++
	}
	if n != 25 {
		t.Fatalf("ListAll yielded %d records, want 25", n)
	}
	// Breaking out early stops fetching pages.
	before := s.requests.Load()
	for range c.ListAll(ctx, "g", ListOptions{Limit: 5}) {
		break
	}
	if got := s.requests.Load() - before; got != 1 {
		t.Fatalf("early break fetched %d pages", got)
	}
	// An error is yielded once and ends the iteration.
	var errs int
	for rec, err := range c.ListAll(ctx, "bad/gov", ListOptions{}) {
		if err == nil || rec != nil {
			t.Fatalf("got %v, %v", rec, err)
		}
		errs++
	}
	if errs != 1 {
		t.Fatalf("%d errors yielded", errs)
	}
}

func TestStatsAndPing(t *testing.T) {
	s := newFakeServer(t)
	c := s.client(0)
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "g", "s", 1); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.NodeID != "fake-node" || st.States != 1 || st.Requests["ping"] != 1 || st.Requests["put"] != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestPipeliningOutOfOrder holds every reply until all requests have
// arrived on the one connection, then answers them in reverse order.
func TestPipeliningOutOfOrder(t *testing.T) {
	const n = 20
	s := newFakeServer(t)
	var mu sync.Mutex
	var held []*wire.Request
	s.handle = func(fc *fakeConn, req *wire.Request) {
		mu.Lock()
		held = append(held, req)
		if len(held) < n {
			mu.Unlock()
			return
		}
		batch := held
		held = nil
		mu.Unlock()
		for i := len(batch) - 1; i >= 0; i-- {
			r := batch[i]
			v, _ := wire.Marshal("value of " + r.State)
			fc.reply(&wire.Response{ID: r.ID, Record: &wire.Record{Governor: r.Governor, State: r.State, Value: v, Version: 1}})
		}
	}
	c := s.client(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			state := fmt.Sprintf("s%d", i)
			rec, err := c.Get(ctx, "g", state)
			if err != nil {
				errs <- err
				return
			}
			var v string
			if err := rec.Decode(&v); err != nil || rec.State != state || v != "value of "+state {
				errs <- fmt.Errorf("%s got record %s = %q (%v)", state, rec.State, v, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.accepted.Load(); got != 1 {
		t.Fatalf("%d connections used, want 1", got)
	}
}

// TestConcurrentClients runs 100 goroutines, each driving its own state
// through a chain of conditional writes while reading others.
func TestConcurrentClients(t *testing.T) {
	const goroutines, rounds = 100, 30
	s := newFakeServer(t)
	c := s.client(3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			state := fmt.Sprintf("s%d", g)
			for r := range rounds {
				var opt WriteOption = IfVersion(uint64(r))
				if r == 0 {
					opt = IfAbsent()
				}
				rec, err := c.Put(ctx, "g", state, r, opt)
				if err != nil || rec.Version != uint64(r+1) {
					t.Errorf("%s round %d: %v, %v", state, r, rec, err)
					failures.Add(1)
					return
				}
				got, err := c.Get(ctx, "g", state)
				var v int
				if err != nil || got.Decode(&v) != nil || v != r {
					t.Errorf("%s round %d read back %v (%v)", state, r, v, err)
					failures.Add(1)
					return
				}
				if err := c.Ping(ctx); err != nil {
					t.Errorf("ping: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if failures.Load() > 0 {
		return
	}
	var n int
	for rec, err := range c.ListAll(ctx, "g", ListOptions{Limit: 17}) {
		if err != nil {
			t.Fatal(err)
		}
		if rec.Version != rounds {
			t.Fatalf("%s at version %d, want %d", rec.State, rec.Version, rounds)
		}
		n++
	}
	if n != goroutines {
		t.Fatalf("listed %d states, want %d", n, goroutines)
	}
	if got := s.accepted.Load(); got < 1 || got > 3 {
		t.Fatalf("%d connections, want 1..3", got)
	}
}

// stallServer answers every request except gets of the state "slow", which
// it holds until release is closed.
func stallServer(t *testing.T) (s *fakeServer, release func()) {
	s = newFakeServer(t)
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	inner := s.handle
	s.handle = func(fc *fakeConn, req *wire.Request) {
		if req.Op == wire.OpGet && req.State == "slow" {
			go func() {
				<-ch
				v, _ := wire.Marshal("late")
				fc.reply(&wire.Response{ID: req.ID, Record: &wire.Record{Governor: "g", State: "slow", Value: v}})
			}()
			return
		}
		inner(fc, req)
	}
	return s, release
}

func TestContextDeadlineWhileServerStalls(t *testing.T) {
	s, release := stallServer(t)
	c := s.client(1)
	bg := context.Background()
	if _, err := c.Put(bg, "g", "fast", 1); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "g", "slow")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Get returned after %v", d)
	}

	// Cancellation works the same way.
	ctx2, cancel2 := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { _, err := c.Get(ctx2, "g", "slow"); done <- err }()
	waitFor(t, "second slow get to reach the server", func() bool { return s.requests.Load() == 3 })
	cancel2()
	var ce *CanceledError
	if err := <-done; !errors.Is(err, context.Canceled) || !errors.As(err, &ce) || !ce.Sent {
		t.Fatalf("err = %v, want Canceled, the request sent", err)
	}

	// The late replies are dropped; the connection keeps working.
	release()
	for range 10 {
		rec, err := c.Get(bg, "g", "fast")
		if err != nil || rec.State != "fast" {
			t.Fatalf("get after stall: %+v, %v", rec, err)
		}
	}
	if got := s.accepted.Load(); got != 1 {
		t.Fatalf("%d connections, want the first one reused", got)
	}
	// A context that has already ended sends nothing.
	before := s.requests.Load()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping with ended ctx: %v", err)
	}
	if s.requests.Load() != before {
		t.Fatal("a request with an ended context was sent")
	}
}

func TestServerClosesConnection(t *testing.T) {
	s, _ := stallServer(t)
	c := s.client(1)
	bg := context.Background()
	if err := c.Ping(bg); err != nil {
		t.Fatal(err)
	}
	const n = 5
	errs := make(chan error, n)
	for range n {
		go func() { _, err := c.Get(bg, "g", "slow"); errs <- err }()
	}
	waitFor(t, "stalled gets to reach the server", func() bool { return s.requests.Load() == n+1 })
	s.closeConns()
	for range n {
		err := <-errs
		ce := errorsAsConn(err)
		if !errors.Is(err, ErrUnavailable) || ce == nil || ce.Op != "read" || !ce.Sent || ce.Socket != s.path {
			t.Fatalf("err = %#v, want a read ConnError matching ErrUnavailable", err)
		}
		var e *Error
		if errors.As(err, &e) {
			t.Fatalf("a connection failure is not a sidecar reply, got *Error %v", e)
		}
	}
	// The next call dials again.
	if _, err := c.Put(bg, "g", "after", 1); err != nil {
		t.Fatalf("put after reconnect: %v", err)
	}
	if got := s.accepted.Load(); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
}

func TestServerErrorFrameBeforeClose(t *testing.T) {
	s := newFakeServer(t)
	s.handle = func(fc *fakeConn, req *wire.Request) {
		fc.reply(&wire.Response{Error: wire.Errorf(wire.CodeProtocol, "bad frame")})
		fc.nc.Close()
	}
	c := s.client(1)
	err := c.Ping(context.Background())
	var e *Error
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrProtocol) || !errors.As(err, &e) || e.Message != "bad frame" {
		t.Fatalf("err = %v", err)
	}
}

// gatedConn blocks writes after the first (the hello) until it is closed.
type gatedConn struct {
	net.Conn
	writes atomic.Int64
	closed chan struct{}
	once   sync.Once
}

func (g *gatedConn) Write(b []byte) (int, error) {
	if g.writes.Add(1) > 1 {
		<-g.closed
		return 0, net.ErrClosed
	}
	return g.Conn.Write(b)
}

func (g *gatedConn) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.Conn.Close()
}

// TestUnsentRequestIsRetried: when a connection breaks, a request still
// queued behind a blocked write was never sent, so it is sent again on a new
// connection, while the request being written fails as possibly sent.
func TestUnsentRequestIsRetried(t *testing.T) {
	s := newFakeServer(t)
	var dials atomic.Int64
	var first atomic.Pointer[gatedConn]
	c := &Client{Socket: s.path, Conns: 1, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", s.path)
		if err != nil || dials.Add(1) > 1 {
			return nc, err
		}
		g := &gatedConn{Conn: nc, closed: make(chan struct{})}
		first.Store(g)
		return g, nil
	}}
	defer c.Close()
	bg := context.Background()

	errA := make(chan error, 1)
	go func() { _, err := c.Put(bg, "g", "a", 1); errA <- err }()
	waitFor(t, "the first write to block", func() bool { g := first.Load(); return g != nil && g.writes.Load() == 2 })
	cn := c.slots[0].cur.Load()
	errB := make(chan error, 1)
	go func() { _, err := c.Put(bg, "g", "b", 2); errB <- err }()
	waitFor(t, "the second put to queue", func() bool { return cn.inflight.Load() == 2 })

	s.closeConns()
	err := <-errA
	if ce := errorsAsConn(err); ce == nil || !ce.Sent {
		t.Fatalf("put a: %v, want a ConnError with Sent", err)
	}
	if err := <-errB; err != nil {
		t.Fatalf("put b was not retried: %v", err)
	}
	if _, err := c.Get(bg, "g", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(bg, "g", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get a: %v (its write was never delivered)", err)
	}
}

func TestDialFailure(t *testing.T) {
	path := t.TempDir() + "/absent.sock"
	c := New(path)
	defer c.Close()
	err := c.Ping(context.Background())
	ce := errorsAsConn(err)
	if !errors.Is(err, ErrUnavailable) || ce == nil || ce.Op != "dial" || ce.Sent || ce.Socket != path {
		t.Fatalf("err = %v", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("cause %v is not a *net.OpError", err)
	}
	// A sidecar that appears later is found.
	s := newFakeServer(t)
	c2 := New(s.path)
	defer c2.Close()
	if err := c2.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestHelloRejected(t *testing.T) {
	t.Run("version", func(t *testing.T) {
		s := newFakeServer(t)
		s.hello.Version = 99
		err := s.client(1).Ping(context.Background())
		if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("hang", func(t *testing.T) {
		ln, err := net.Listen("unix", t.TempDir()+"/h.sock")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			nc, err := ln.Accept()
			if err == nil {
				defer nc.Close()
				buf := make([]byte, 1024)
				for {
					if _, err := nc.Read(buf); err != nil {
						return
					}
				}
			}
		}()
		c := New(ln.Addr().String())
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestClose(t *testing.T) {
	s, _ := stallServer(t)
	c := s.client(2)
	bg := context.Background()
	done := make(chan error, 1)
	go func() { _, err := c.Get(bg, "g", "slow"); done <- err }()
	waitFor(t, "the slow get to reach the server", func() bool { return s.requests.Load() == 1 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("in-flight call: %v, want ErrClosed", err)
	}
	if err := c.Ping(bg); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	waitFor(t, "the server to see the connection close", func() bool { return s.openConns() == 0 })
}

func TestRequestsSpreadOverConns(t *testing.T) {
	s, release := stallServer(t)
	c := s.client(3)
	bg := context.Background()
	const n = 9
	done := make(chan error, n)
	for range n {
		go func() { _, err := c.Get(bg, "g", "slow"); done <- err }()
	}
	waitFor(t, "gets to reach the server", func() bool { return s.requests.Load() == n })
	var loads []int64
	for _, sl := range c.slots {
		if cn := sl.cur.Load(); cn != nil {
			loads = append(loads, cn.inflight.Load())
		}
	}
	release()
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if len(loads) != 3 {
		t.Fatalf("in flight per connection %v, want 3 connections", loads)
	}
	for _, l := range loads {
		if l == 0 {
			t.Fatalf("in flight per connection %v: one is idle", loads)
		}
	}
}

func BenchmarkGetParallel(b *testing.B) {
	s := newFakeServer(b)
	c := s.client(0)
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

// TestWriteTimeoutGivesUpAStuckConnection: a sidecar that stops reading a
// connection would hold its writer, and every call routed to it, for as long
// as it does. Past WriteTimeout the connection is given up: the call being
// written fails as sent (its outcome is unknown), and the next call dials a
// new connection.
func TestWriteTimeoutGivesUpAStuckConnection(t *testing.T) {
	s := newFakeServer(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the server's cleanup waits for its handlers
	var stuck atomic.Pointer[fakeConn]
	serve := s.handle
	s.handle = func(fc *fakeConn, req *wire.Request) {
		if stuck.CompareAndSwap(nil, fc) || stuck.Load() == fc {
			<-release // the first connection is never read again
			return
		}
		serve(fc, req)
	}
	c := s.client(1)
	c.WriteTimeout = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	pinged := make(chan error, 1)
	go func() { pinged <- c.Ping(ctx) }()
	for s.requests.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// More than the socket's buffers hold: the write cannot finish.
	start := time.Now()
	_, err := c.Put(ctx, "g", "big", make([]byte, 900_000))
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Op != "write" || !ce.Sent || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("put on a connection that is not read: %v (%#v), want a write ConnError, sent, deadline exceeded", err, ce)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the put failed after %v", d)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after the stuck connection was given up: %v", err)
	}
	if n := s.accepted.Load(); n != 2 {
		t.Fatalf("%d connections accepted, want 2", n)
	}
	// The ping in flight on the stuck connection fails as sent, or was
	// answered after a retry on the new one; it does not hang.
	select {
	case err := <-pinged:
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("ping on the stuck connection: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the ping on the stuck connection never returned")
	}
}

func TestWriteDeadlineMovesRarely(t *testing.T) {
	const timeout = 80 * time.Millisecond
	d, moved := writeDeadline(time.Time{}, timeout)
	if !moved || time.Until(d) < timeout {
		t.Fatalf("first deadline %v from now, moved %v; want at least %v", time.Until(d), moved, timeout)
	}
	if d2, moved := writeDeadline(d, timeout); moved || !d2.Equal(d) {
		t.Fatalf("a deadline with more than the timeout left moved to %v", d2)
	}
	time.Sleep(timeout / 4) // less than the timeout is left now
	d3, moved := writeDeadline(d, timeout)
	if !moved || time.Until(d3) < timeout {
		t.Fatalf("deadline %v from now, moved %v; want at least %v", time.Until(d3), moved, timeout)
	}
}

// TestWriteTimeoutAllowsASlowReader: a sidecar that reads a connection
// slowly (it holds requests back while many wait for the shared store)
// makes progress: no write is given up, however long it takes in all.
func TestWriteTimeoutAllowsASlowReader(t *testing.T) {
	s := newFakeServer(t)
	serve := s.handle
	s.handle = func(fc *fakeConn, req *wire.Request) {
		time.Sleep(25 * time.Millisecond)
		serve(fc, req)
	}
	c := s.client(1)
	// Well above a busy machine's scheduling stalls (a loaded CI machine
	// running the race detector stalled one for over 500 ms), well below
	// the time the whole takes.
	c.WriteTimeout = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 150 // 15 MB: far more than the socket's buffers, read over 3.75 s and more
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := c.Put(ctx, "g", fmt.Sprint("s", i), make([]byte, 100_000))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("put through a slow reader: %v", err)
		}
	}
	if got := s.accepted.Load(); got != 1 {
		t.Fatalf("%d connections accepted, want 1", got)
	}
}

// TestCloseEndsAHandshake: Close fails the calls waiting for a connection
// whose hello the sidecar never answers, with ErrClosed.
func TestCloseEndsAHandshake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn // accepted, never read or answered
	var mu sync.Mutex
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, nc)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, nc := range held {
			nc.Close()
		}
	}()
	c := &Client{Socket: path, Conns: 1}
	errs := make(chan error, 2)
	for range 2 { // one in the handshake, one waiting for the slot
		go func() { errs <- c.Ping(context.Background()) }()
	}
	for accepted := 0; accepted == 0; { // the first is in its handshake
		time.Sleep(time.Millisecond)
		mu.Lock()
		accepted = len(held)
		mu.Unlock()
	}
	c.Close()
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("ping when the client closed: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a ping waiting for the handshake outlived Close")
		}
	}
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after Close: %v", err)
	}
}

// TestIdleConnectionRetired: a connection idle for half the sidecar's idle
// timeout (from its hello) is given up and a new one dialled, rather than
// used just as the sidecar may close it, which would leave the call's
// outcome unknown. Without an idle timeout a connection is kept.
func TestIdleConnectionRetired(t *testing.T) {
	for _, idle := range []int64{0, 60_000} {
		s := newFakeServer(t)
		s.hello.IdleTimeoutMS = idle
		var dials atomic.Int64
		c := &Client{Socket: s.path, Conns: 1, Dial: func(ctx context.Context) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.path)
		}}
		bg := context.Background()
		for i := range 2 {
			if _, err := c.Put(bg, "g", "k", i); err != nil {
				t.Fatal(err)
			}
		}
		cn := c.slots[0].cur.Load()
		if want := time.Duration(idle) * time.Millisecond / 2; cn.idleAfter != want || dials.Load() != 1 {
			t.Fatalf("idle timeout %d ms: retire after %v, want %v; %d dials", idle, cn.idleAfter, want, dials.Load())
		}
		cn.used.Store(time.Now().Add(-time.Hour).UnixNano()) // idle for an hour
		if _, err := c.Put(bg, "g", "k", 3); err != nil {
			t.Fatal(err)
		}
		wantDials := int64(1)
		if idle > 0 {
			wantDials = 2
		}
		if dials.Load() != wantDials || cn.dead.Load() != (idle > 0) {
			t.Fatalf("idle timeout %d ms, connection idle for an hour: %d dials, old one dead %v", idle, dials.Load(), cn.dead.Load())
		}
		waitFor(t, "one connection open", func() bool { return s.openConns() == 1 })
		c.Close()
	}
}

// TestRecordAge: Age reads age_ms; a record without it (a write's, or a
// read the sidecar could not date) has no age.
func TestRecordAge(t *testing.T) {
	if age, ok := (&Record{}).Age(); ok || age != 0 {
		t.Fatalf("no age_ms: %v, %v", age, ok)
	}
	for ms, want := range map[uint64]time.Duration{0: 0, 1500: 1500 * time.Millisecond, math.MaxUint64: math.MaxInt64 / time.Millisecond * time.Millisecond} {
		r := &Record{Record: wire.Record{AgeMS: &ms}}
		if age, ok := r.Age(); !ok || age != want {
			t.Errorf("age_ms %d: %v, %v; want %v", ms, age, ok, want)
		}
	}
}
