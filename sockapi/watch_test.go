package sockapi

import (
	"bytes"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestWatch: a watch gets every matching change, local, as push frames
// marked push and carrying its id, in version order, with values; the
// watching connection keeps serving requests meanwhile; after the unwatch
// reply no push of that watch arrives.
func TestWatch(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{})
	w := ts.hello()
	other := ts.hello()

	ack := w.call(wire.Request{Op: wire.OpWatch, Governor: "g", Prefix: "a"})
	if ack.Error != nil || ack.Watch != ack.ID || ack.Push {
		t.Fatalf("watch reply: %+v", ack)
	}
	put := func(state string, v int) {
		t.Helper()
		if r := other.call(wire.Request{Op: wire.OpPut, Governor: "g", State: state, Value: mustMarshal(t, v)}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	put("a1", 1)
	put("b1", 2) // not under the prefix
	put("a1", 3)
	put("a2", 4)
	if r := other.call(wire.Request{Op: wire.OpDelete, Governor: "g", State: "a2"}); r.Error != nil {
		t.Fatal(r.Error)
	}
	if r := other.call(wire.Request{Op: wire.OpPut, Governor: "h", State: "a1", Value: mustMarshal(t, 9)}); r.Error != nil {
		t.Fatal(r.Error) // another governor
	}
	type change struct {
		state   string
		version uint64
		value   int
		deleted bool
	}
	want := []change{{"a1", 1, 1, false}, {"a1", 2, 3, false}, {"a2", 1, 4, false}, {"a2", 2, 0, true}}
	for i, wc := range want {
		p := w.recv()
		if !p.Push || p.Watch != ack.ID || p.ID != ack.ID || p.Error != nil || p.Record == nil || p.Remote {
			t.Fatalf("push %d: %+v", i, p)
		}
		r := p.Record
		var v int
		if !wc.deleted {
			if err := wire.Unmarshal(r.Value, &v); err != nil {
				t.Fatal(err)
			}
		}
		if r.Governor != "g" || r.State != wc.state || r.Version != wc.version || v != wc.value || r.Deleted != wc.deleted {
			t.Fatalf("push %d: got %s v%d value %d deleted %v, want %+v", i, r.State, r.Version, v, r.Deleted, wc)
		}
	}
	// Requests still work on the watching connection.
	if r := w.call(wire.Request{Op: wire.OpPing}); r.Error != nil || r.Push {
		t.Fatalf("ping: %+v", r)
	}
	// A second watch with the same id is refused; unwatch ends it.
	w.send(&wire.Request{ID: ack.ID, Op: wire.OpWatch, Governor: "g"})
	expectError(t, w.recv(), wire.CodeInvalidArgument, "id")
	un := w.call(wire.Request{Op: wire.OpUnwatch, Watch: ack.ID})
	if un.Error != nil || un.Push {
		t.Fatalf("unwatch: %+v", un)
	}
	put("a1", 5)
	if r := w.call(wire.Request{Op: wire.OpPing}); r.Push || r.Error != nil {
		t.Fatalf("after unwatch, got %+v", r)
	}
	// Unwatching again succeeds.
	if r := w.call(wire.Request{Op: wire.OpUnwatch, Watch: ack.ID}); r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestWatchLagged: a client that does not read its push frames does not
// make the server buffer without bound: the watch falls behind its buffer
// and ends with a push frame carrying a retryable Unavailable error, after
// which the connection still serves.
func TestWatchLagged(t *testing.T) {
	// Bounded by the changes' count, and by their bytes (1024 changes of
	// 64 KiB are more than the 300 writes below).
	for name, opts := range map[string]Options{"count": {WatchBuffer: 4}, "bytes": {WatchBufferBytes: 256 << 10}} {
		t.Run(name, func(t *testing.T) { testWatchLagged(t, opts) })
	}
}

func testWatchLagged(t *testing.T, opts Options) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, opts)
	w := ts.hello()
	other := ts.hello()
	ack := w.call(wire.Request{Op: wire.OpWatch, Governor: "g"})
	if ack.Error != nil {
		t.Fatal(ack.Error)
	}
	big := mustMarshal(t, bytes.Repeat([]byte{'x'}, 64<<10))
	const writes = 300 // ~19 MiB of changes: more than the socket, outbox and feed buffers hold
	for i := range writes {
		if r := other.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: big}); r.Error != nil {
			t.Fatalf("write %d: %v", i, r.Error)
		}
	}
	got := 0
	for {
		p := w.recv()
		if !p.Push || p.Watch != ack.ID {
			t.Fatalf("unexpected frame %+v", p)
		}
		if p.Error != nil {
			if p.Error.Code != wire.CodeUnavailable || !p.Error.Retryable {
				t.Fatalf("end of watch: %+v", p.Error)
			}
			break
		}
		got++
		if p.Record.Version != uint64(got) {
			t.Fatalf("push %d has version %d", got, p.Record.Version)
		}
	}
	if got >= writes {
		t.Fatalf("got all %d changes: the watch did not lag", got)
	}
	if r := w.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestWatchClosedWithConnection: closing a connection ends its watches
// (the store's feed loses its subscriber, and the server shuts down
// cleanly).
func TestWatchClosedWithConnection(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{MaxWatches: 2})
	w := ts.hello()
	for range 2 {
		if r := w.call(wire.Request{Op: wire.OpWatch, Governor: "g"}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	r := w.call(wire.Request{Op: wire.OpWatch, Governor: "g"})
	expectError(t, r, wire.CodeTooLarge, "")
	w.nc.Close()
	other := ts.hello()
	if r := other.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1)}); r.Error != nil {
		t.Fatal(r.Error)
	}
	waitFor(t, "the connection to close", func() bool { n, _, _ := ts.srv.Stats(); return n == 1 })
}

// TestWatchFakeStore: a store without a change feed refuses a watch with
// an error, not a crash.
func TestWatchFakeStore(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{})
	c := ts.hello()
	expectError(t, c.call(wire.Request{Op: wire.OpWatch, Governor: "g"}), wire.CodeUnavailable, "")
}
