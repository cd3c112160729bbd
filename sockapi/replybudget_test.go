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

// heldBytes returns the bytes c holds: replies queued or in a write that
// has not returned, and what the requests running off the reader reserved.
func heldBytes(c *conn) int {
	o := &c.out
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.heldLocked()
}

// trackHeld makes c's outbox record the most it holds from now on (see
// outbox.peak), at every change, and returns a function that reads that
// most. Call it before the traffic to measure: a reservation made while
// it starts may go unseen.
func trackHeld(c *conn) (peak func() int) {
	o := &c.out
	o.mu.Lock()
	o.peak = o.heldLocked()
	o.track.Store(true)
	o.mu.Unlock()
	return func() int {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.peak
	}
}

// encodeFrames returns the frames of reqs, one after the other, and the
// size of the largest.
func encodeFrames(t *testing.T, reqs []any) (frames []byte, largest int) {
	t.Helper()
	enc := wire.NewCodec()
	for _, req := range reqs {
		n := len(frames)
		var err error
		if frames, err = enc.AppendFrame(frames, req); err != nil {
			t.Fatal(err)
		}
		largest = max(largest, len(frames)-n)
	}
	return frames, largest
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
	peak := trackHeld(sc)
	c.sendAll(reqs...)

	read := func() uint64 {
		_, reqs, _ := ts.srv.Stats()
		return reqs[wire.OpGet] + reqs[wire.OpBatchGet]
	}
	waitFor(t, "the reader to stop at the budget", func() bool {
		sc.out.mu.Lock()
		defer sc.out.mu.Unlock()
		return uint64(sy.entered.Load()) == read() && sc.out.reserved.Load() > connBudget
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
	_, frame := encodeFrames(t, reqs)
	got, limit := peak(), connBudget+frame+sc.readReserve(4)
	if got > limit {
		t.Fatalf("the connection held %d bytes, over the budget %d plus one request and its reply", got, limit)
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
	waitFor(t, "the connection to hold nothing", func() bool { return heldBytes(sc) == 0 })
}

// TestReplyBudgetBlockedEnds: while the reader waits for requests that
// hold more than the budget (strong batch_gets, or sync puts of large
// values, that the shared store does not answer), closing the connection,
// or shutting the server down, releases every reservation and ends every
// goroutine of the connection.
func TestReplyBudgetBlockedEnds(t *testing.T) {
	// blocked starts a server whose strong reads and sync writes wait
	// (until their timeout, or a shutdown), pipelines requests of op that
	// wait, and returns once the reader cannot read on. The sync writes'
	// timeout is longer: the reader takes some time to read 8 MiB of
	// their values, and the first must not end before it stops.
	blocked := func(t *testing.T, op string) (*testServer, *client, *conn) {
		store := newFakeStore()
		sy := newFakeSync(store)
		sy.stall = true
		ts := startServer(t, store, Options{Sync: sy, FetchTimeout: 500 * time.Millisecond})
		c := ts.hello()
		sc := onlyConn(t, ts.srv)
		value := valueOfSize(t, 512<<10)
		var reqs []any
		for i := range 32 {
			req := &wire.Request{ID: uint64(i + 1), Op: op}
			switch op {
			case wire.OpBatchGet:
				req.Consistency = wire.ReadStrong
				for j := range 4 { // distinct: reads of a state wait for each other
					req.Keys = append(req.Keys, wire.Key{Governor: "g", State: fmt.Sprint(i, ".", j)})
				}
			case wire.OpPut:
				req.Consistency, req.TimeoutMS = wire.WriteSync, 2000
				req.Governor, req.State, req.Value = "g", fmt.Sprint(i), value
			}
			reqs = append(reqs, req)
		}
		frames, _ := encodeFrames(t, reqs)
		sendInBackground(c, frames) // fails once the connection ends
		read := func() int64 {
			_, read, _ := ts.srv.Stats()
			return int64(read[op])
		}
		waitFor(t, "the reader to stop at the budget", func() bool {
			sc.out.mu.Lock()
			defer sc.out.mu.Unlock()
			return sy.stalled.Load()+store.writes.Load() == read() && sc.out.reserved.Load() > connBudget
		})
		if n := read(); n >= 32 {
			t.Fatalf("the reader read all %d requests", n)
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

	for _, op := range []string{wire.OpBatchGet, wire.OpPut} {
		t.Run(op+"/close", func(t *testing.T) {
			ts, c, sc := blocked(t, op)
			c.nc.Close()
			connGone(t, ts, sc)
		})
		t.Run(op+"/shutdown", func(t *testing.T) {
			ts, c, sc := blocked(t, op)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			// Not a hard stop: the requests started end at once, the
			// reader reads no more, and their replies go out.
			if err := ts.srv.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			got := c.expectClosed()
			if len(got) == 0 {
				t.Fatal("no reply to the requests started")
			}
			for _, r := range got {
				if r.Error == nil || r.Error.Code != wire.CodeUnavailable {
					t.Fatalf("reply %d: %+v, want Unavailable (shutting down)", r.ID, r.Error)
				}
			}
			connGone(t, ts, sc)
		})
	}
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
	peak := trackHeld(sc)
	value := valueOfSize(t, 500<<10)
	if r := other.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: value}); r.Error != nil {
		t.Fatal(r.Error)
	}
	limit := outHighWater + len(value) + frameReserve
	waitFor(t, "the frames to wait for the client", func() bool { return heldBytes(sc) > outHighWater })
	// While the client reads nothing, nothing more is queued: the other
	// watches wait for room.
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if n := peak(); n > limit {
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

// TestRequestBudget: a client pipelines 128 sync writes of large values
// (puts, or batch_puts) and reads nothing while the shared store does not
// take them. Each keeps its request until it replies, so the requests
// count in the connection's budget: the reader stops once they pass it,
// and the bytes the connection holds never pass the budget plus one
// request and its reply. Once the shared store takes the writes, every
// reply arrives and the connection holds nothing.
func TestRequestBudget(t *testing.T) {
	const n = 128
	value, quarter := valueOfSize(t, 128<<10), valueOfSize(t, 32<<10)
	for _, tc := range []struct {
		op   string
		item func(i int) *wire.Request // the write of request i
	}{
		{wire.OpPut, func(i int) *wire.Request {
			return &wire.Request{Governor: "g", State: fmt.Sprint(i), Value: value}
		}},
		{wire.OpBatchPut, func(i int) *wire.Request {
			req := &wire.Request{}
			for j := range 4 {
				req.Items = append(req.Items, wire.Item{Governor: "g", State: fmt.Sprint(i, ".", j), Value: quarter})
			}
			return req
		}},
	} {
		t.Run(tc.op, func(t *testing.T) {
			store := newFakeStore()
			ts := startServer(t, store, Options{Sync: newFakeSync(store)})
			c := ts.hello()
			sc := onlyConn(t, ts.srv)
			peak := trackHeld(sc)
			var reqs []any
			for i := range n {
				req := tc.item(i)
				req.ID, req.Op, req.Consistency = uint64(i+1), tc.op, wire.WriteSync
				reqs = append(reqs, req)
			}
			frames, frame := encodeFrames(t, reqs)
			sent := sendInBackground(c, frames)

			read := func() int {
				_, reqs, _ := ts.srv.Stats()
				return int(reqs[tc.op])
			}
			waitFor(t, "the reader to stop", func() bool {
				sc.out.mu.Lock()
				defer sc.out.mu.Unlock()
				r := read()
				return store.writes.Load() == int64(r) && (r == n || sc.out.reserved.Load() > connBudget)
			})
			// One request, and its reply: records without values.
			one := frame + sc.replyReserve(4*frameReserve)
			if got, limit := read()*frame, connBudget+one; got > limit {
				t.Fatalf("%d requests of up to %d bytes started while the client read nothing: %d bytes, over the budget %d plus one request",
					read(), frame, got, limit)
			}
			t.Logf("%d of %d requests read while the client read nothing", read(), n)

			settleUntil(t, store, func() {
				for range n {
					if r := c.recv(); r.Error != nil {
						t.Fatalf("reply %d: %v", r.ID, r.Error)
					}
				}
			})
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if got, limit := peak(), connBudget+one; got > limit {
				t.Fatalf("the connection held %d bytes, over the budget %d plus one request and its reply", got, limit)
			}
			waitFor(t, "the connection to hold nothing", func() bool { return heldBytes(sc) == 0 })
			if v := store.violationsList(); len(v) > 0 {
				t.Fatal(v)
			}
		})
	}
}

// TestRequestOverBudget: a sync batch_put larger than the whole budget
// (the frame limit raised above it) is still read and served, alone: the
// reader reads the next request once it has replied.
func TestRequestOverBudget(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{Sync: newFakeSync(store), MaxFrame: 2 * connBudget})
	c := ts.hello()
	sc := onlyConn(t, ts.srv)
	value := valueOfSize(t, wire.MaxValueSize)
	var reqs []any
	for i := range 2 {
		req := &wire.Request{ID: uint64(i + 1), Op: wire.OpBatchPut, Consistency: wire.WriteSync}
		for j := range connBudget/wire.MaxValueSize + 1 {
			req.Items = append(req.Items, wire.Item{Governor: "g", State: fmt.Sprint(i, ".", j), Value: value})
		}
		reqs = append(reqs, req)
	}
	frames, _ := encodeFrames(t, reqs)
	sent := sendInBackground(c, frames)
	waitFor(t, "the first request to run", func() bool { return store.writes.Load() == 1 && heldBytes(sc) > connBudget })
	if _, read, _ := ts.srv.Stats(); read[wire.OpBatchPut] != 1 {
		t.Fatalf("%d requests read while the first held more than the budget", read[wire.OpBatchPut])
	}
	settleUntil(t, store, func() {
		for i := range 2 {
			if r := c.recv(); r.Error != nil || r.ID != uint64(i+1) {
				t.Fatalf("reply %d: %+v", r.ID, r.Error)
			}
		}
	})
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection to hold nothing", func() bool { return heldBytes(sc) == 0 })
}

// sendInBackground writes frames, pipelined requests, from another
// goroutine (the server stops reading them while the client reads
// nothing), and returns the write's result.
func sendInBackground(c *client, frames []byte) <-chan error {
	sent := make(chan error, 1)
	go func() {
		c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
		_, err := c.nc.Write(frames)
		sent <- err
	}()
	return sent
}

// settleUntil acks the store's sync writes as they come, as the push loop
// would, until receive returns.
func settleUntil(t *testing.T, store *fakeStore, receive func()) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			store.settleAll()
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	defer wg.Wait()
	defer close(stop)
	receive()
}
