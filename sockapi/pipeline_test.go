package sockapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestPipelining sends hundreds of mixed requests on one connection before
// reading any reply, and matches the replies by id.
func TestPipelining(t *testing.T) {
	store := newFakeStore()
	for i := range 100 {
		store.put("g", fmt.Sprintf("r%d", i), i)
	}
	ts := startServer(t, store, Options{})
	c := ts.hello()

	const n = 600
	reqs := make(map[uint64]wire.Request, n)
	var order []uint64
	for i := range n {
		id := uint64(1000 + i)
		var req wire.Request
		switch i % 6 {
		case 0, 1:
			req = wire.Request{Op: wire.OpGet, Governor: "g", State: fmt.Sprintf("r%d", i%100)}
		case 2:
			req = wire.Request{Op: wire.OpPut, Governor: "w", State: fmt.Sprintf("w%d", i), Value: mustMarshal(t, i)}
		case 3:
			req = wire.Request{Op: wire.OpPing}
		case 4:
			req = wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{
				{Governor: "w", State: fmt.Sprintf("b%d-1", i), Value: mustMarshal(t, i)},
				{Governor: "w", State: fmt.Sprintf("b%d-2", i), Value: mustMarshal(t, -i)},
			}}
		case 5:
			req = wire.Request{Op: wire.OpGet, Governor: "g", State: "missing"}
		}
		req.ID = id
		reqs[id] = req
		order = append(order, id)
	}
	// Write everything in one burst from another goroutine while reading.
	var burst []byte
	for _, id := range order {
		req := reqs[id]
		var err error
		if burst, err = c.enc.AppendFrame(burst, &req); err != nil {
			t.Fatal(err)
		}
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.nc.Write(burst)
		werr <- err
	}()
	got := make(map[uint64]wire.Response, n)
	var replyOrder []uint64
	for range n {
		r := c.recv()
		if _, dup := got[r.ID]; dup {
			t.Fatalf("two replies for id %d", r.ID)
		}
		got[r.ID] = r
		replyOrder = append(replyOrder, r.ID)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	for id, req := range reqs {
		r, ok := got[id]
		if !ok {
			t.Fatalf("no reply for id %d", id)
		}
		switch {
		case req.Op == wire.OpGet && req.State == "missing":
			expectError(t, r, wire.CodeNotFound, "")
		case req.Op == wire.OpGet:
			var v int
			if r.Error != nil || wire.Unmarshal(r.Record.Value, &v) != nil || fmt.Sprintf("r%d", v) != req.State {
				t.Fatalf("id %d: get %s: %+v", id, req.State, r)
			}
		case req.Op == wire.OpPut:
			if r.Error != nil || r.Record.State != req.State || r.Record.Version != 1 {
				t.Fatalf("id %d: put: %+v", id, r)
			}
		case req.Op == wire.OpBatchPut:
			if r.Error != nil || len(r.Records) != 2 || r.Records[0].State != req.Items[0].State {
				t.Fatalf("id %d: batch_put: %+v", id, r)
			}
		case req.Op == wire.OpPing:
			if r.Error != nil {
				t.Fatalf("id %d: ping: %v", id, r.Error)
			}
		}
	}
	// Writes run concurrently with inline reads: the replies are not
	// simply in request order.
	inOrder := true
	for i := range replyOrder {
		if replyOrder[i] != order[i] {
			inOrder = false
			break
		}
	}
	t.Logf("replies in request order: %v", inOrder)
	if got := store.writes.Load(); got != n/6*2 {
		t.Fatalf("store writes %d, want %d", got, n/6*2)
	}
}

// TestOutOfOrderReplies holds a write in the store and checks that reads
// sent after it are answered first: writes never block the reader.
func TestOutOfOrderReplies(t *testing.T) {
	store := newFakeStore()
	store.gate = make(chan struct{})
	store.entered = make(chan struct{}, 16)
	store.put("g", "s", "v")
	ts := startServer(t, store, Options{})
	c := ts.hello()

	c.sendAll(
		&wire.Request{ID: 1, Op: wire.OpPut, Governor: "g", State: "p", Value: mustMarshal(t, 1)},
		&wire.Request{ID: 2, Op: wire.OpGet, Governor: "g", State: "s"},
		&wire.Request{ID: 3, Op: wire.OpPing},
		&wire.Request{ID: 4, Op: wire.OpDelete, Governor: "g", State: "s"},
	)
	<-store.entered
	<-store.entered
	for _, want := range []uint64{2, 3} {
		if r := c.recv(); r.ID != want || r.Error != nil {
			t.Fatalf("got reply %d (%v), want %d", r.ID, r.Error, want)
		}
	}
	close(store.gate)
	got := map[uint64]bool{}
	for range 2 {
		r := c.recv()
		if r.Error != nil {
			t.Fatalf("id %d: %v", r.ID, r.Error)
		}
		got[r.ID] = true
	}
	if !got[1] || !got[4] {
		t.Fatalf("write replies: %v", got)
	}
}

// TestWriteInlineUntilPipelined checks how a connection's writes run: on
// the reader while the peer waits for each reply (a request sent meanwhile
// waits for the write), and on their own goroutines once the peer has had
// two requests in flight, found either way: a frame that arrived during a
// write served on the reader, or frames buffered behind a write.
func TestWriteInlineUntilPipelined(t *testing.T) {
	for _, how := range []string{"arrived during a write", "buffered behind a write"} {
		t.Run(how, func(t *testing.T) {
			store := newFakeStore()
			store.entered = make(chan struct{}, 16)
			held, later := make(chan struct{}), make(chan struct{})
			store.hold = map[string]chan struct{}{"10": held, "20": later}
			ts := startServer(t, store, Options{})
			c := ts.hello()
			put := func(id uint64) *wire.Request {
				return &wire.Request{ID: id, Op: wire.OpPut, Governor: "g", State: fmt.Sprint(id), Value: mustMarshal(t, id)}
			}
			for id := uint64(1); id <= 3; id++ { // one request at a time
				if r := c.call(*put(id)); r.Error != nil || r.Record.State != fmt.Sprint(id) || r.Record.Version != 1 {
					t.Fatalf("put %d: %+v", id, r)
				}
			}
			if how == "arrived during a write" {
				c.send(put(10))
				<-store.entered
				c.send(&wire.Request{ID: 11, Op: wire.OpPing})
				// The reader is serving the write: the ping waits for it.
				c.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := wire.ReadFrame(c.br, nil, 1<<20); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("a reply came while the write served on the reader was held (err %v)", err)
				}
				close(held)
				for _, want := range []uint64{10, 11} {
					if r := c.recv(); r.ID != want || r.Error != nil {
						t.Fatalf("got reply %d (%v), want %d", r.ID, r.Error, want)
					}
				}
			} else {
				c.sendAll(put(10), &wire.Request{ID: 11, Op: wire.OpPing})
				<-store.entered
				if r := c.recv(); r.ID != 11 {
					t.Fatalf("got reply %d, want the ping's (11) while the write is held", r.ID)
				}
				close(held)
				if r := c.recv(); r.ID != 10 || r.Error != nil {
					t.Fatalf("got reply %d (%v), want 10", r.ID, r.Error)
				}
			}
			// The connection pipelines now: a held write does not hold up
			// a request sent after it on its own.
			c.send(put(20))
			<-store.entered
			c.send(&wire.Request{ID: 21, Op: wire.OpPing})
			if r := c.recv(); r.ID != 21 {
				t.Fatalf("got reply %d, want the ping's (21) while the write is held", r.ID)
			}
			close(later)
			if r := c.recv(); r.ID != 20 || r.Error != nil {
				t.Fatalf("got reply %d (%v), want 20", r.ID, r.Error)
			}
			if n := store.writes.Load(); n != 5 {
				t.Fatalf("%d writes reached the store, want 5", n)
			}
		})
	}
}

// TestPipeliningFoundLater: a peer that begins to pipeline after many
// writes one at a time is found within probeEvery writes (a write served
// on the reader looks for bytes sent meanwhile only now and then), and its
// writes then run on their own goroutines.
func TestPipeliningFoundLater(t *testing.T) {
	store := newFakeStore()
	store.entered = make(chan struct{}, 16)
	store.hold = map[string]chan struct{}{}
	for i := range probeEvery + 1 {
		store.hold[fmt.Sprint(200+i)] = make(chan struct{})
	}
	ts := startServer(t, store, Options{})
	c := ts.hello()
	put := func(id uint64) *wire.Request {
		return &wire.Request{ID: id, Op: wire.OpPut, Governor: "g", State: fmt.Sprint(id), Value: mustMarshal(t, id)}
	}
	for id := uint64(1); id <= 2*probeFirst+3; id++ { // one request at a time, past the first probes
		if r := c.call(*put(id)); r.Error != nil {
			t.Fatalf("put %d: %v", id, r.Error)
		}
	}
	// Now a ping follows each write before its reply: on the reader, the
	// ping waits for the write, until the connection is found to pipeline.
	for i := range probeEvery + 1 {
		id := uint64(200 + i)
		c.send(put(id))
		<-store.entered
		c.send(&wire.Request{ID: id + 1000, Op: wire.OpPing})
		c.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := wire.ReadFrame(c.br, nil, 1<<20)
		c.nc.SetReadDeadline(time.Time{})
		if err == nil { // the ping's reply came while the write was held
			if i == 0 {
				t.Fatal("the first write after the one-at-a-time ones already ran on its own goroutine")
			}
			close(store.hold[fmt.Sprint(id)])
			if r := c.recv(); r.ID != id || r.Error != nil {
				t.Fatalf("got reply %d (%v), want %d", r.ID, r.Error, id)
			}
			t.Logf("found pipelining after %d overlapping writes", i)
			return
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
		close(store.hold[fmt.Sprint(id)])
		first, second := c.recv(), c.recv()
		if first.Error != nil || second.Error != nil || first.ID+second.ID != 2*id+1000 {
			t.Fatalf("got replies %d (%v) and %d (%v), want %d and %d", first.ID, first.Error, second.ID, second.Error, id, id+1000)
		}
		if first.ID == id+1000 { // on its own goroutine after all, slower than the deadline
			return
		}
	}
	t.Fatalf("no write ran on its own goroutine after %d overlapping ones", probeEvery+1)
}

// TestMaxInflight checks the per-connection cap on running writes: the
// server stops reading when it is reached and resumes as writes finish.
func TestMaxInflight(t *testing.T) {
	store := newFakeStore()
	store.gate = make(chan struct{})
	store.entered = make(chan struct{}, 100)
	ts := startServer(t, store, Options{MaxInflight: 4})
	c := ts.hello()
	var reqs []any
	for i := range 10 {
		reqs = append(reqs, &wire.Request{ID: uint64(10 + i), Op: wire.OpPut, Governor: "g", State: fmt.Sprint(i), Value: mustMarshal(t, i)})
	}
	c.sendAll(append(reqs, &wire.Request{ID: 99, Op: wire.OpPing})...)
	for range 4 {
		<-store.entered
	}
	// The reader is blocked on the fifth write: it must not read the ping.
	c.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := wire.ReadFrame(c.br, nil, 1<<20); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got a reply while the in-flight cap was reached (err %v)", err)
	}
	if n := len(store.entered); n != 0 {
		t.Fatalf("%d writes beyond the cap entered the store", n)
	}
	close(store.gate)
	ids := map[uint64]bool{}
	for range 11 {
		r := c.recv()
		if r.Error != nil {
			t.Fatalf("id %d: %v", r.ID, r.Error)
		}
		ids[r.ID] = true
	}
	if len(ids) != 11 || !ids[99] {
		t.Fatalf("replies: %v", ids)
	}
}

// TestManyConnections runs many clients at once, each pipelining a mix of
// requests (run with -race).
func TestManyConnections(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	const conns, perConn = 24, 150
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	for ci := range conns {
		c := ts.hello()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- clientWorkload(c, ci, perConn)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every connection wrote its own counter state perConn/3 times.
	for ci := range conns {
		r, err := store.Get(context.Background(), localcache.Key{Governor: "many", State: fmt.Sprint(ci)})
		if err != nil || r.Version != perConn/3 {
			t.Fatalf("conn %d: version %d, %v", ci, r.Version, err)
		}
	}
	conns0, reqs, _ := ts.srv.Stats()
	if reqs[wire.OpPut] != conns*perConn/3 || conns0 != conns {
		t.Fatalf("stats: conns %d, requests %v", conns0, reqs)
	}
}

// clientWorkload sends n requests in windows of 10 and checks the replies.
// It uses no testing.T: it runs on its own goroutine.
func clientWorkload(c *client, ci, n int) error {
	state := fmt.Sprint(ci)
	version := uint64(0)
	for i := 0; i < n; i += 3 {
		// A conditional put, then reads that may run before or after it.
		put := wire.Request{ID: uint64(i + 1), Op: wire.OpPut, Governor: "many", State: state, Value: mustMarshalNoT(i), IfVersion: &version}
		get := wire.Request{ID: uint64(i + 2), Op: wire.OpGet, Governor: "many", State: state}
		list := wire.Request{ID: uint64(i + 3), Op: wire.OpList, Governor: "many", Limit: 5}
		var frames []byte
		for _, r := range []*wire.Request{&put, &get, &list} {
			var err error
			if frames, err = c.enc.AppendFrame(frames, r); err != nil {
				return err
			}
		}
		c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
		if _, err := c.nc.Write(frames); err != nil {
			return err
		}
		for range 3 {
			r, err := c.tryRecv()
			if err != nil {
				return fmt.Errorf("conn %d: %w", ci, err)
			}
			switch r.ID {
			case put.ID:
				if r.Error != nil || r.Record.Version != version+1 {
					return fmt.Errorf("conn %d put: %+v %v", ci, r.Record, r.Error)
				}
			case get.ID:
				if r.Error != nil && r.Error.Code != wire.CodeNotFound {
					return fmt.Errorf("conn %d get: %v", ci, r.Error)
				}
			case list.ID:
				if r.Error != nil {
					return fmt.Errorf("conn %d list: %v", ci, r.Error)
				}
			default:
				return fmt.Errorf("conn %d: unexpected id %d", ci, r.ID)
			}
		}
		version++
	}
	return nil
}

func mustMarshalNoT(v any) wire.Raw {
	b, err := wire.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestSlowReader has a client pipeline gets of a large value without
// reading: the server stops reading once replies pile up, and everything is
// delivered once the client reads.
func TestSlowReader(t *testing.T) {
	store := newFakeStore()
	big := bytes.Repeat([]byte{'z'}, 200<<10)
	store.put("g", "big", big)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	const n = 100 // 20 MB of replies, far beyond socket buffers and the high water mark
	var frames []byte
	for i := range n {
		var err error
		frames, err = c.enc.AppendFrame(frames, &wire.Request{ID: uint64(i + 1), Op: wire.OpGet, Governor: "g", State: "big"})
		if err != nil {
			t.Fatal(err)
		}
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.nc.Write(frames)
		werr <- err
	}()
	// Let the server fill the socket before reading anything. A few replies
	// (200 KiB each) are more than the socket holds, so once the server has
	// served that many gets it is stuck writing to us: this state is stable
	// until we read, so polling for it does not depend on timing.
	const stuckAfter = 4
	waitFor(t, "the server to block on the slow reader", func() bool {
		_, reqs, _ := ts.srv.Stats()
		return reqs[wire.OpGet] >= stuckAfter && serverWriting(ts.srv)
	})
	// Backpressure: while nothing is read, the server stops reading
	// requests long before the last one.
	if _, reqs, _ := ts.srv.Stats(); reqs[wire.OpGet] >= n {
		t.Fatalf("the server read all %d requests while its replies were not read", n)
	}
	want := mustMarshal(t, big)
	for i := range n {
		r := c.recv()
		if r.ID != uint64(i+1) || r.Error != nil || !bytes.Equal(r.Record.Value, want) {
			t.Fatalf("reply %d: id %d, %v", i, r.ID, r.Error)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
}

// serverWriting reports whether a connection of srv has replies waiting for
// the peer: queued, or in a write that has not returned.
func serverWriting(srv *Server) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for sc := range srv.conns {
		sc.out.mu.Lock()
		w := sc.out.writing || len(sc.out.buf) > 0
		sc.out.mu.Unlock()
		if w {
			return true
		}
	}
	return false
}

// TestHalfClose: a client that sends writes and closes its write side gets
// every reply before the server closes.
func TestHalfClose(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	c := ts.hello()
	for i := range 50 {
		c.send(&wire.Request{ID: uint64(i + 1), Op: wire.OpPut, Governor: "g", State: fmt.Sprint(i), Value: mustMarshal(t, i)})
	}
	c.nc.(*net.UnixConn).CloseWrite()
	got := c.expectClosed()
	if len(got) != 50 {
		t.Fatalf("got %d replies, want 50", len(got))
	}
	for _, r := range got {
		if r.Error != nil {
			t.Fatal(r.Error)
		}
	}
}

func TestShutdownFinishesInflightWrites(t *testing.T) {
	store := newFakeStore()
	store.gate = make(chan struct{})
	store.entered = make(chan struct{}, 16)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	idle := ts.hello()
	const n = 5
	var reqs []any
	for i := range n {
		reqs = append(reqs, &wire.Request{ID: uint64(i + 1), Op: wire.OpPut, Governor: "g", State: fmt.Sprint(i), Value: mustMarshal(t, i)})
	}
	c.sendAll(reqs...)
	for range n {
		<-store.entered
	}
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	// New connections are refused once the listener is closed.
	waitFor(t, "the listener to close", func() bool {
		nc, err := net.Dial("unix", ts.path)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while writes were in flight", err)
	default:
	}
	close(store.gate)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	got := c.expectClosed()
	if len(got) != n {
		t.Fatalf("got %d replies, want %d", len(got), n)
	}
	for _, r := range got {
		if r.Error != nil || r.Record.Version != 1 {
			t.Fatalf("reply %d: %+v %v", r.ID, r.Record, r.Error)
		}
	}
	if got := idle.expectClosed(); len(got) != 0 {
		t.Fatalf("idle connection got %+v", got)
	}
	if _, err := os.Stat(ts.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left behind: %v", err)
	}
	ts.stop() // Serve returned nil
}

func TestShutdownDeadline(t *testing.T) {
	store := newFakeStore()
	store.gate = make(chan struct{}) // never opened: writes only end by cancellation
	store.entered = make(chan struct{}, 16)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	c.send(&wire.Request{ID: 1, Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1)})
	<-store.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want deadline exceeded", err)
	}
	// Shutdown returned after Serve did; its result arrives at once.
	select {
	case err := <-ts.errc:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		ts.down = true
	case <-time.After(testTimeout):
		t.Fatal("Serve still running after Shutdown returned")
	}
	c.expectClosed()
}

func TestServeContextCancel(t *testing.T) {
	store := newFakeStore()
	path := socketDir(t) + "/s.sock"
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(store, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	ts := &testServer{t: t, srv: srv, path: path, down: true}
	c := ts.hello()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return")
	}
	c.expectClosed()
	if err := srv.Serve(context.Background(), ln); !errors.Is(err, ErrServing) {
		t.Fatalf("second Serve: %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown after Serve returned: %v", err)
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	srv := NewServer(newFakeStore(), Options{})
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	path := socketDir(t) + "/s.sock"
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), ln); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("listener still accepting")
	}
}

func TestIdleTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	ts := startServer(t, newFakeStore(), Options{IdleTimeout: timeout})
	// The server's last deadline is set after it answered the hello, so
	// the connection cannot close sooner than timeout after this.
	start := time.Now()
	c := ts.hello()
	if got := c.expectClosed(); len(got) != 0 {
		t.Fatalf("got %+v", got)
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("closed after %v, before the idle timeout %v", d, timeout)
	}
}

// TestIdleTimeoutBusy: a connection that keeps sending requests is not idle,
// however long it lives. The timeout is generous against a slow machine:
// only a stall of a whole second between two pings would close it.
func TestIdleTimeoutBusy(t *testing.T) {
	const timeout = time.Second
	ts := startServer(t, newFakeStore(), Options{IdleTimeout: timeout})
	c := ts.hello()
	// A ping every timeout/20 (pacing, not a wait) for 2.5 timeouts.
	tick := time.NewTicker(timeout / 20)
	defer tick.Stop()
	start := time.Now()
	for time.Since(start) < 2*timeout+timeout/2 {
		if r := c.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
			t.Fatal(r.Error)
		}
		<-tick.C
	}
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{MaxConns: 2})
	a := ts.hello()
	ts.hello()
	c := ts.dial()
	got := c.expectClosed()
	if len(got) != 1 || got[0].ID != 0 {
		t.Fatalf("over the cap: %+v", got)
	}
	expectError(t, got[0], wire.CodeUnavailable, "")
	if !got[0].Error.Retryable {
		t.Fatal("Unavailable must be retryable")
	}
	a.nc.Close()
	waitFor(t, "the closed connection to be released", func() bool {
		n, _, _ := ts.srv.Stats()
		return n == 1
	})
	if r := ts.hello().call(wire.Request{Op: wire.OpPing}); r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestStoreErrors maps store failures to error codes without leaking them.
func TestStoreErrors(t *testing.T) {
	cases := []struct {
		err  error
		code wire.Code
	}{
		{localcache.ErrClosed, wire.CodeUnavailable},
		{fmt.Errorf("apply: %w", localcache.ErrFailed), wire.CodeUnavailable},
		{fmt.Errorf("put: %w", localcache.ErrTooLarge), wire.CodeTooLarge},
		{context.DeadlineExceeded, wire.CodeTimeout},
		{errors.New("disk on fire at /var/lib/secret"), wire.CodeInternal},
	}
	for _, tc := range cases {
		t.Run(string(tc.code), func(t *testing.T) {
			store := newFakeStore()
			ts := startServer(t, store, Options{})
			c := ts.hello()
			store.mu.Lock()
			store.fail = tc.err
			store.mu.Unlock()
			for _, req := range []wire.Request{
				{Op: wire.OpGet, Governor: "g", State: "s"},
				{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1)},
				{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "s"}}},
				{Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "s", Delete: true}}},
				{Op: wire.OpList, Governor: "g"},
			} {
				r := c.call(req)
				if r.Error == nil || r.Error.Code != tc.code {
					t.Fatalf("%s: got %+v, want %s", req.Op, r.Error, tc.code)
				}
				if errors.Is(tc.err, localcache.ErrFailed) && r.Error.Retryable {
					t.Fatalf("%s: a failed store's error is marked retryable", req.Op)
				}
				if bytes.Contains([]byte(r.Error.Message), []byte("secret")) {
					t.Fatalf("%s: internal detail leaked: %q", req.Op, r.Error.Message)
				}
			}
		})
	}
}

// TestNoGoroutinesAfterShutdown: once Serve has returned, no goroutine of
// the server is left, whatever the connections were doing.
func TestNoGoroutinesAfterShutdown(t *testing.T) {
	store := newFakeStore()
	store.gate = make(chan struct{})
	store.entered = make(chan struct{}, 64)
	ts := startServer(t, store, Options{})
	busy := ts.hello()
	var reqs []any
	for i := range 8 {
		reqs = append(reqs, &wire.Request{ID: uint64(i + 1), Op: wire.OpPut, Governor: "g", State: fmt.Sprint(i), Value: mustMarshal(t, i)})
	}
	busy.sendAll(reqs...)
	for range 8 {
		<-store.entered
	}
	ts.hello()                          // idle after hello
	ts.dial()                           // no hello
	ts.dial().writeRaw([]byte{0, 0, 1}) // half a header
	serverGoroutines := func() bool {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		return strings.Contains(stacks, "sockapi.(*conn)") || strings.Contains(stacks, "sockapi.(*Server)") ||
			strings.Contains(stacks, "sockapi.(*outbox)")
	}
	if !serverGoroutines() {
		t.Fatal("the check sees no server goroutine while the server runs")
	}
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	close(store.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ts.stop()
	waitFor(t, "server goroutines to exit", func() bool { return !serverGoroutines() })
}

// TestEndOfStreamWithLastRequest: a peer that sends its last request and
// closes at once (both often reach the server together) gets its reply, and
// the server notices the end of the stream and releases the connection.
func TestEndOfStreamWithLastRequest(t *testing.T) {
	store := newFakeStore()
	store.put("g", "s", "v")
	ts := startServer(t, store, Options{})
	get := func(c *client) []byte {
		f, err := c.enc.AppendFrame(nil, &wire.Request{ID: 5, Op: wire.OpGet, Governor: "g", State: "s"})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	t.Run("half close", func(t *testing.T) {
		for range 20 {
			c := ts.hello()
			c.writeRaw(get(c))
			c.nc.(*net.UnixConn).CloseWrite()
			got := c.expectClosed()
			if len(got) != 1 || got[0].ID != 5 || got[0].Error != nil {
				t.Fatalf("got %+v", got)
			}
		}
	})
	t.Run("close", func(t *testing.T) {
		for range 20 {
			c := ts.hello()
			c.writeRaw(get(c))
			c.nc.Close()
		}
		waitFor(t, "the server to release closed connections", func() bool {
			n, _, _ := ts.srv.Stats()
			return n == 0
		})
	})
}
