package sockapi

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// onlyConn returns the server side of srv's one connection.
func onlyConn(t *testing.T, srv *Server) *conn {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.conns) != 1 {
		t.Fatalf("%d connections, want 1", len(srv.conns))
	}
	for c := range srv.conns {
		return c
	}
	return nil
}

// heldReplies returns the reply bytes c holds: queued, in a write that has
// not returned, and reserved by requests running off the reader.
func heldReplies(c *conn) int {
	o := &c.out
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.buf) + o.sending + int(o.reserved.Load())
}

// watchHeld samples heldReplies(c) until the returned stop is called (or
// the test ends), which returns the most it saw.
func watchHeld(t *testing.T, c *conn) (stop func() int) {
	peak := 0
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			peak = max(peak, heldReplies(c))
			select {
			case <-done:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	})
	stop = sync.OnceValue(func() int {
		close(done)
		wg.Wait()
		return peak
	})
	t.Cleanup(func() { stop() })
	return stop
}

// gatedSync is a fakeSync whose strong reads wait until open is closed.
type gatedSync struct {
	*fakeSync
	open    chan struct{}
	entered atomic.Int64 // strong reads started
}

func (s *gatedSync) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	s.entered.Add(1)
	select {
	case <-s.open:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	return s.fakeSync.ReadStrong(ctx, keys)
}

// TestReplyBudgetStrongReads: a client pipelines strong gets and
// batch_gets of large values (made off the reader, from the shared store)
// and reads nothing. While the reads wait for the shared store, the reader
// stops once their reservations pass the reply budget; when they end, their
// replies wait for the client and the reader stays stopped. The reply bytes
// the server holds for the connection (queued, being written, reserved)
// never pass the budget plus one reply. Once the client reads, every reply
// arrives, correct, and the connection holds nothing.
func TestReplyBudgetStrongReads(t *testing.T) {
	store := newFakeStore()
	sy := &gatedSync{fakeSync: newFakeSync(store), open: make(chan struct{})}
	ts := startServer(t, store, Options{Sync: sy, FetchTimeout: testTimeout})
	want := valueOfSize(t, 900<<10)
	remote := func(state string) wire.Key {
		k := localcache.Key{Governor: "g", State: state}
		sy.mu.Lock()
		defer sy.mu.Unlock()
		sy.remote[k] = localcache.Record{Key: k, Value: want, Version: 1, Origin: "node-remote", SyncedVersion: 1}
		return wire.Key{Governor: k.Governor, State: k.State}
	}
	// 24 gets and 8 batch_gets of four states, all distinct (reads of a
	// state wait for each other): about 50 MB of replies.
	const n = 32
	var reqs []any
	for i := range n {
		req := &wire.Request{ID: uint64(i + 1), Op: wire.OpGet, Consistency: wire.ReadStrong}
		if i%4 == 3 {
			req.Op = wire.OpBatchGet
			for j := range 4 {
				req.Keys = append(req.Keys, remote(fmt.Sprint(i, ".", j)))
			}
		} else {
			k := remote(fmt.Sprint(i))
			req.Governor, req.State = k.Governor, k.State
		}
		reqs = append(reqs, req)
	}
	c := ts.hello()
	sc := onlyConn(t, ts.srv)
	peak := watchHeld(t, sc)
	c.sendAll(reqs...)

	read := func() uint64 {
		_, reqs, _ := ts.srv.Stats()
		return reqs[wire.OpGet] + reqs[wire.OpBatchGet]
	}
	waitFor(t, "the reader to stop at the budget", func() bool {
		sc.out.mu.Lock()
		defer sc.out.mu.Unlock()
		return uint64(sy.entered.Load()) == read() && sc.out.reserved.Load() > replyBudget
	})
	started := read()
	close(sy.open)
	// The reads end; their replies wait for the client (a state that lasts
	// until it reads), and the reader stays stopped.
	waitFor(t, "the replies to wait for the client", func() bool {
		sc.out.mu.Lock()
		defer sc.out.mu.Unlock()
		return sc.out.reserved.Load() == 0 && sc.out.writing && len(sc.out.buf)+sc.out.sending > outHighWater
	})
	if got := read(); got >= n {
		t.Fatalf("the server read all %d requests while their replies were not read", got)
	}
	got, limit := peak(), replyBudget+sc.readReserve(4)
	if got > limit {
		t.Fatalf("the connection held %d reply bytes, over the budget %d plus one reply", got, limit)
	}
	t.Logf("%d requests started within the budget, %d read in all while the client read nothing; at most %d reply bytes held",
		started, read(), got)

	for range n {
		r := c.recv()
		if r.Error != nil {
			t.Fatalf("reply %d: %v", r.ID, r.Error)
		}
		recs := r.Records
		if r.ID%4 != 0 {
			recs = []*wire.Record{r.Record}
		}
		if len(recs) == 0 {
			t.Fatalf("reply %d has no record", r.ID)
		}
		for _, rec := range recs {
			if rec == nil || !bytes.Equal(rec.Value, want) || rec.Version != 1 {
				t.Fatalf("reply %d: a record is not the shared store's", r.ID)
			}
		}
	}
	waitFor(t, "the connection to hold nothing", func() bool { return heldReplies(sc) == 0 })
}

// TestReplyBudgetBlockedEnds: while the reader waits for reads that hold
// more than the reply budget (strong batch_gets the shared store does not
// answer), closing the connection, or shutting the server down, releases
// every reservation and ends every goroutine of the connection.
func TestReplyBudgetBlockedEnds(t *testing.T) {
	// blocked starts a server whose strong reads wait (until
	// FetchTimeout, or a shutdown), pipelines strong batch_gets of large
	// values, and returns once the reader cannot read on.
	blocked := func(t *testing.T) (*testServer, *client, *conn) {
		store := newFakeStore()
		sy := newFakeSync(store)
		sy.stall = true
		ts := startServer(t, store, Options{Sync: sy, FetchTimeout: 500 * time.Millisecond})
		c := ts.hello()
		sc := onlyConn(t, ts.srv)
		var reqs []any
		for i := range 16 {
			keys := make([]wire.Key, 4) // distinct: reads of a state wait for each other
			for j := range keys {
				keys[j] = wire.Key{Governor: "g", State: fmt.Sprint(i, ".", j)}
			}
			reqs = append(reqs, &wire.Request{ID: uint64(i + 1), Op: wire.OpBatchGet, Keys: keys, Consistency: wire.ReadStrong})
		}
		c.sendAll(reqs...)
		waitFor(t, "the reader to stop at the budget", func() bool {
			_, read, _ := ts.srv.Stats()
			sc.out.mu.Lock()
			defer sc.out.mu.Unlock()
			return sy.stalled.Load() == int64(read[wire.OpBatchGet]) && sc.out.reserved.Load() > replyBudget
		})
		if _, read, _ := ts.srv.Stats(); read[wire.OpBatchGet] >= 16 {
			t.Fatalf("the reader read all %d requests", read[wire.OpBatchGet])
		}
		return ts, c, sc
	}
	connGone := func(t *testing.T, ts *testServer, sc *conn) {
		t.Helper()
		waitFor(t, "the connection to end", func() bool {
			n, _, _ := ts.srv.Stats()
			return n == 0
		})
		if n := sc.out.reserved.Load(); n != 0 {
			t.Fatalf("%d bytes still reserved after the connection ended", n)
		}
		waitFor(t, "the connection's goroutines to end", func() bool {
			buf := make([]byte, 1<<20)
			return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "sockapi.(*conn)")
		})
	}

	t.Run("close", func(t *testing.T) {
		ts, c, sc := blocked(t)
		c.nc.Close()
		connGone(t, ts, sc)
	})
	t.Run("shutdown", func(t *testing.T) {
		ts, c, sc := blocked(t)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		// Not a hard stop: the reads started end at once, the reader
		// reads no more, and the replies of the reads started go out.
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		got := c.expectClosed()
		if len(got) == 0 {
			t.Fatal("no reply to the reads started")
		}
		for _, r := range got {
			if r.Error == nil || r.Error.Code != wire.CodeUnavailable {
				t.Fatalf("reply %d: %+v, want Unavailable (shutting down)", r.ID, r.Error)
			}
		}
		connGone(t, ts, sc)
	})
}

// TestWriteReserve: what a write reserves for its reply covers the largest
// reply it can have: records with the longest names, actor and reason, the
// longest origin, every other field at its largest.
func TestWriteReserve(t *testing.T) {
	c := &conn{s: NewServer(newFakeStore(), Options{})}
	long := func(n int) string { return strings.Repeat("n", n) }
	req := &wire.Request{ID: math.MaxUint64, Actor: long(wire.MaxMetaSize), Reason: long(wire.MaxMetaSize)}
	for _, n := range []int{1, 2, 100} {
		keys := make([]localcache.Key, n)
		recs := make([]*wire.Record, n)
		for i := range keys {
			keys[i] = localcache.Key{Governor: long(wire.MaxNameSize), State: long(wire.MaxNameSize)}
			recs[i] = &wire.Record{Governor: keys[i].Governor, State: keys[i].State, Version: math.MaxUint64, Deleted: true,
				UpdatedAt: math.MinInt64, Change: wire.Change{Actor: req.Actor, Reason: req.Reason, Time: math.MinInt64},
				Origin: long(64) + "~" + long(8), FromCache: true, Pending: true, SyncedAt: math.MinInt64, Stale: true}
		}
		resp := &wire.Response{ID: req.ID, Records: recs, Txn: &wire.TxnResult{ID: long(64) + "-t" + long(13) + "-" + long(20), Attempts: math.MaxInt32}}
		if n == 1 {
			resp = &wire.Response{ID: req.ID, Record: recs[0]}
		}
		frame, err := wire.NewCodec().AppendFrame(nil, resp)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.writeReserve(keys, req); got < min(len(frame), c.s.opts.MaxFrame+wire.HeaderSize) {
			t.Errorf("%d records: reserved %d bytes for a reply of %d", n, got, len(frame))
		}
	}
}

// TestWatchesShareRoom: the watches of a connection whose client does not
// read add at most one frame beyond the limits together, not one each; the
// client then gets every change.
func TestWatchesShareRoom(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{})
	w := ts.hello()
	sc := onlyConn(t, ts.srv)
	other := ts.hello()
	const watches = 16
	for range watches {
		if r := w.call(wire.Request{Op: wire.OpWatch, Governor: "g"}); r.Error != nil {
			t.Fatal(r.Error)
		}
	}
	peak := watchHeld(t, sc)
	value := valueOfSize(t, 500<<10)
	if r := other.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: value}); r.Error != nil {
		t.Fatal(r.Error)
	}
	limit := outHighWater + len(value) + frameReserve
	waitFor(t, "the frames to wait for the client", func() bool { return heldReplies(sc) > outHighWater })
	// While the client reads nothing, nothing more is queued: the other
	// watches wait for room.
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if n := heldReplies(sc); n > limit {
			t.Fatalf("the watches queued %d bytes, over %d", n, limit)
		}
	}
	for i := range watches {
		p := w.recv()
		if !p.Push || p.Record == nil || !bytes.Equal(p.Record.Value, value) {
			t.Fatalf("push %d: %+v", i, p.Error)
		}
	}
	if got := peak(); got > limit {
		t.Fatalf("the connection held %d bytes, over %d", got, limit)
	}
}
