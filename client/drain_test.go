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
	path := serveMemory(t, sockapi.Options{})
	ctx := testCtx(t)
	first := newGatedConn()
	var dials atomic.Int64
	c := &client.Client{Socket: path, Conns: 1, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if err != nil || dials.Add(1) > 1 {
			return nc, err
		}
		first.Conn = nc
		return first, nil
	}}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// a is sent and applied; its reply waits unread.
	first.hold.Store(true)
	aDone := make(chan error, 1)
	go func() {
		_, err := c.Put(ctx, "g", "a", 1)
		aDone <- err
	}()
	check := client.New(path)
	defer check.Close()
	eventually(t, "a applied", func() bool {
		_, err := check.Get(ctx, "g", "a")
		return err == nil
	})

	// b's write fails: the connection drains.
	first.failWrites.Store(true)
	bDone := make(chan error, 1)
	go func() {
		_, err := c.Put(ctx, "g", "b", 1)
		bDone <- err
	}()
	select {
	case <-first.draining:
	case <-ctx.Done():
		t.Fatal("the connection did not start draining")
	}

	// The next call dials a new connection, and the old one goes on.
	if _, err := c.Get(ctx, "g", "a"); err != nil {
		t.Fatalf("get on a new connection: %v", err)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
	// b, none of whose bytes were written, is sent again on the new
	// connection at once, without waiting for the old one's drain.
	select {
	case err := <-bDone:
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
	if err := <-aDone; err != nil {
		t.Fatalf("put a, applied and answered before the write failed: %v", err)
	}
}
