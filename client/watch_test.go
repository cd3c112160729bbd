package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi"
)

// TestWatchPipelined: a watch shares its connection with many concurrent
// requests; it sees every change in order, requests keep being answered,
// and Close ends it.
func TestWatchPipelined(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := &client.Client{Socket: s.path, Conns: 1}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w, err := c.Watch(ctx, "g", "w-")
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 50
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				if _, err := c.Put(ctx, "g", fmt.Sprintf("w-%d", i), j); err != nil {
					errc <- err
					return
				}
				if _, err := c.Put(ctx, "g", "other", j); err != nil { // not watched
					errc <- err
					return
				}
			}
		}()
	}
	last := map[string]uint64{}
	for n := 0; n < writers*each; n++ {
		select {
		case ch, ok := <-w.Changes():
			if !ok {
				t.Fatalf("watch ended after %d changes: %v", n, w.Err())
			}
			if ch.Remote || ch.Governor != "g" || ch.Version != last[ch.State]+1 {
				t.Fatalf("change %d: %+v (last version of %s: %d)", n, ch.Record.Record, ch.State, last[ch.State])
			}
			var v int
			if err := ch.Decode(&v); err != nil || uint64(v) != ch.Version-1 {
				t.Fatalf("change %d: value %d (%v), version %d", n, v, err, ch.Version)
			}
			last[ch.State] = ch.Version
		case err := <-errc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("after %d changes: %v", n, ctx.Err())
		}
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-w.Changes(); ok {
		// Changes not read are dropped: the channel is closed.
		for range w.Changes() {
		}
	}
	if w.Err() != nil {
		t.Fatalf("Err after Close: %v", w.Err())
	}
	// The connection still serves.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWatchSlowReader: a reader that does not keep up ends its own watch
// (ErrUnavailable) without stalling the other requests on the connection.
func TestWatchSlowReader(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := &client.Client{Socket: s.path, Conns: 1, WatchBuffer: 2}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := c.Watch(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := c.Put(ctx, "g", "s", i); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range w.Changes() {
		n++
	}
	if !errors.Is(w.Err(), client.ErrUnavailable) || n > 2 {
		t.Fatalf("after %d changes, Err = %v; want ErrUnavailable after at most 2", n, w.Err())
	}
	if _, err := c.Get(ctx, "g", "s"); err != nil {
		t.Fatal(err)
	}
}

// TestWatchContext: the watch's context bounds it, and a watch on a
// sidecar that goes away ends with ErrUnavailable.
func TestWatchContext(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := &client.Client{Socket: s.path, Conns: 1}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.Watch(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range w.Changes() {
	}
	if w.Err() != nil {
		t.Fatalf("Err after ctx ended: %v", w.Err())
	}

	w2, err := c.Watch(context.Background(), "g", "")
	if err != nil {
		t.Fatal(err)
	}
	s.stop(t)
	for range w2.Changes() {
	}
	if !errors.Is(w2.Err(), client.ErrUnavailable) {
		t.Fatalf("Err after the sidecar stopped: %v", w2.Err())
	}
	if _, err := c.Watch(context.Background(), "bad/name", ""); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("bad governor: %v", err)
	}
}

// TestWatchNotIdle: a connection that only watches (it sends no requests
// while changes are pushed to it) is not closed by the idle timeout.
func TestWatchNotIdle(t *testing.T) {
	path := serveMemory(t, sockapi.Options{IdleTimeout: time.Second})
	ctx := testCtx(t)
	c := &client.Client{Socket: path, Conns: 1}
	t.Cleanup(func() { c.Close() })
	w, err := c.Watch(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	writer := &client.Client{Socket: path}
	t.Cleanup(func() { writer.Close() })
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		if _, err := writer.Put(ctx, "g", "s", 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		for len(w.Changes()) > 0 {
			<-w.Changes()
		}
		if err := w.Err(); err != nil {
			t.Fatalf("the watch ended after the idle timeout: %v", err)
		}
	}
}
