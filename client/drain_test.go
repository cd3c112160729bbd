package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi"
)

// gatedConn fails its writes once failWrites is set, and while hold is set
// what it reads waits for release (or Close). draining is closed when the client
// sets a read deadline on it after a failed write: it is draining.
type gatedConn struct {
	net.Conn
	failWrites, hold atomic.Bool
	release          chan struct{}
	draining         chan struct{}
	closed           chan struct{}
	closeOnce        sync.Once
	drainOnce        sync.Once
}

func newGatedConn() *gatedConn {
	return &gatedConn{release: make(chan struct{}), draining: make(chan struct{}), closed: make(chan struct{})}
}

func (c *gatedConn) Write(b []byte) (int, error) {
	if c.failWrites.Load() {
		return 0, errors.New("broken pipe (injected)")
	}
	return c.Conn.Write(b)
}

func (c *gatedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.hold.Load() { // held when the data comes: the reader may be waiting already
		select {
		case <-c.release:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return n, err
}

func (c *gatedConn) SetReadDeadline(t time.Time) error {
	if c.failWrites.Load() && !t.IsZero() {
		c.drainOnce.Do(func() { close(c.draining) })
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *gatedConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestReconnectLetsTheOldConnectionDrain: after a write fails, the
// connection's reader goes on taking the replies the sidecar sent before;
// a call that dials a new connection meanwhile must not cut that short.
// Before, it closed the old connection, and a put the sidecar had applied
// and answered failed with a connection error (outcome unknown).
func TestReconnectLetsTheOldConnectionDrain(t *testing.T) {
	d := startDrain(t)
	c, first, ctx, check := d.c, d.first, d.ctx, d.check

	// The next call dials a new connection, and the old one goes on.
	if _, err := c.Get(ctx, "g", "a"); err != nil {
		t.Fatalf("get on a new connection: %v", err)
	}
	if n := d.dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
	// b, none of whose bytes were written, is sent again on the new
	// connection at once, without waiting for the old one's drain.
	select {
	case err := <-d.bDone:
		if err != nil {
			t.Fatalf("put b, whose write failed before any byte went: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("put b waits for the old connection's drain")
	}
	if _, err := check.Get(ctx, "g", "b"); err != nil {
		t.Fatalf("put b succeeded, get: %v", err)
	}
	close(first.release)
	if err := <-d.aDone; err != nil {
		t.Fatalf("put a, applied and answered before the write failed: %v", err)
	}
}

// TestCloseDuringDrain: a call in flight when Close is called fails with
// ErrClosed, as Close promises, also when its connection is draining after a
// failed write. Before, it failed with the write's connection error.
func TestCloseDuringDrain(t *testing.T) {
	d := startDrain(t)
	if err := d.c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.aDone:
		if !errors.Is(err, client.ErrClosed) {
			t.Fatalf("put a, in flight at Close: %v, want ErrClosed", err)
		}
	case <-d.ctx.Done():
		t.Fatal("put a did not end at Close")
	}
}

type drain struct {
	c, check *client.Client
	first    *gatedConn
	ctx      context.Context
	aDone    chan error // put a: applied, its reply held unread
	bDone    chan error // put b: its write failed
	dials    *atomic.Int64
}

// startDrain returns a client whose connection is draining: put a was sent
// and applied and its reply waits unread, and then put b's write failed.
func startDrain(t *testing.T) drain {
	t.Helper()
	path := serveMemory(t, sockapi.Options{})
	d := drain{ctx: testCtx(t), first: newGatedConn(), aDone: make(chan error, 1), bDone: make(chan error, 1),
		dials: new(atomic.Int64)}
	d.c = &client.Client{Socket: path, Conns: 1, Dial: func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		nc, err := nd.DialContext(ctx, "unix", path)
		if err != nil || d.dials.Add(1) > 1 {
			return nc, err
		}
		d.first.Conn = nc
		return d.first, nil
	}}
	t.Cleanup(func() { d.c.Close() })
	if err := d.c.Ping(d.ctx); err != nil {
		t.Fatal(err)
	}

	// a is sent and applied; its reply waits unread.
	d.first.hold.Store(true)
	go func() {
		_, err := d.c.Put(d.ctx, "g", "a", 1)
		d.aDone <- err
	}()
	d.check = client.New(path)
	t.Cleanup(func() { d.check.Close() })
	eventually(t, "a applied", func() bool {
		_, err := d.check.Get(d.ctx, "g", "a")
		return err == nil
	})

	// b's write fails: the connection drains.
	d.first.failWrites.Store(true)
	go func() {
		_, err := d.c.Put(d.ctx, "g", "b", 1)
		d.bDone <- err
	}()
	select {
	case <-d.first.draining:
	case <-d.ctx.Done():
		t.Fatal("the connection did not start draining")
	}
	return d
}
