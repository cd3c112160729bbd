package sockapi

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Watches: a watch request subscribes to the store's change feed for one
// governor (and name prefix); the reply acknowledges it, and from then on a
// goroutine per watch turns each change into a server-push frame, in the
// feed's order (commit order, so version order per state).
//
// Flow control: the goroutine stops taking changes while the connection has
// no room for a frame (more than outHighWater bytes waiting for the peer, or
// more than connBudget held: see outbox.waitRoom), so a peer that does not
// read costs a bounded outbox; the feed then buffers up to
// Options.WatchBuffer changes and Options.WatchBufferBytes, and one more
// ends the watch as lagging: a last push frame carries an Unavailable error
// (retryable), and the peer starts again.

// watch is one running watch of a connection.
type watch struct {
	id   uint64
	sub  *localcache.Subscription
	stop atomic.Bool   // unwatch or close: drop what is still buffered
	done chan struct{} // closed when the goroutine has exited
}

// watches are a connection's running watches, by id.
type watches struct {
	mu sync.Mutex
	m  map[uint64]*watch
	wg sync.WaitGroup
}

// watching reports whether the connection runs a watch: it waits for
// pushes, so it is not idle without requests.
func (c *conn) watching() bool {
	ws := &c.watches
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.m) > 0
}

// opWatch starts a watch of governor's states whose names start with
// prefix. Its id is the request's id; the reply carries it in watch.
func (c *conn) opWatch(req *wire.Request) {
	e := checkName("governor", "governor", req.Governor)
	if e == nil {
		e = checkPrefix(req.Prefix)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	ws := &c.watches
	ws.mu.Lock()
	n, dup := len(ws.m), ws.m[req.ID] != nil
	ws.mu.Unlock()
	switch {
	case dup:
		c.replyError(req.ID, invalid("id", "watch %d is already running on this connection: use a new id", req.ID))
		return
	case n >= c.s.opts.MaxWatches:
		c.replyError(req.ID, tooLarge("", c.s.opts.MaxWatches,
			"%d watches are running on this connection, the limit: unwatch one, or use another connection", n))
		return
	}
	sub, err := c.s.store.Subscribe(req.Governor, req.Prefix, c.s.opts.WatchBuffer, c.s.opts.WatchBufferBytes)
	if err != nil {
		c.replyError(req.ID, c.storeError(wire.OpWatch, localcache.Key{Governor: req.Governor}, err))
		return
	}
	w := &watch{id: req.ID, sub: sub, done: make(chan struct{})}
	ws.mu.Lock()
	if ws.m == nil {
		ws.m = make(map[uint64]*watch)
	}
	ws.m[w.id] = w
	ws.wg.Add(1)
	ws.mu.Unlock()
	// The acknowledgement goes out before any push of this watch: the
	// goroutine starts after it is queued.
	c.resp = wire.Response{ID: req.ID, Watch: req.ID}
	c.out.put(&c.resp, "")
	c.log.Debug("watch started", "watch", w.id, "governor", req.Governor, "prefix", req.Prefix)
	go c.runWatch(w)
}

// opUnwatch ends the watch req.Watch. No push frame of that watch follows
// the reply. Ending a watch that is not running (it already ended, or
// never ran) succeeds.
func (c *conn) opUnwatch(req *wire.Request) {
	if req.Watch == 0 {
		c.replyError(req.ID, invalid("watch", "watch (the id of the watch to end) is required"))
		return
	}
	ws := &c.watches
	ws.mu.Lock()
	w := ws.m[req.Watch]
	delete(ws.m, req.Watch)
	ws.mu.Unlock()
	if w != nil {
		w.stop.Store(true)
		w.sub.Close()
		<-w.done
	}
	c.resp = wire.Response{ID: req.ID}
	c.out.put(&c.resp, "")
}

// closeWatches ends every watch of the connection and waits for their
// goroutines (the connection is closing).
func (c *conn) closeWatches() {
	ws := &c.watches
	ws.mu.Lock()
	for id, w := range ws.m {
		w.stop.Store(true)
		w.sub.Close()
		delete(ws.m, id)
	}
	ws.mu.Unlock()
	ws.wg.Wait()
}

// runWatch turns w's changes into push frames until the subscription ends.
func (c *conn) runWatch(w *watch) {
	ws := &c.watches
	defer ws.wg.Done()
	defer close(w.done)
	defer func() {
		if v := recover(); v != nil {
			// End the connection, as a panicking write does.
			w.sub.Close()
			c.recovered(v)
			c.stopReading()
			go c.nc.Close() // see endOnPanic
		}
	}()
	var rec wire.Record
	for ch := range w.sub.C {
		if w.stop.Load() {
			continue // drain: unwatch waits for the channel to close
		}
		toWire(&rec, &ch.Record, true)
		ok := c.out.putPushInRoom(&wire.Response{ID: w.id, Push: true, Watch: w.id, Remote: ch.Remote, Record: &rec})
		rec = wire.Record{}
		if !ok || len(w.sub.C) == 0 && !c.out.flush() {
			w.sub.Close() // the connection is broken
		}
	}
	err := w.sub.Err()
	ws.mu.Lock()
	if ws.m[w.id] == w {
		delete(ws.m, w.id)
	}
	ws.mu.Unlock()
	if err == nil || w.stop.Load() {
		return // unwatch, or the connection closes
	}
	var e *wire.Error
	switch {
	case errors.Is(err, localcache.ErrLagged):
		e = wire.Errorf(wire.CodeUnavailable,
			"the watch fell more than %d changes or %d bytes behind (the client did not read them fast enough) and was ended: start it again, and re-read the states it covers to catch up",
			c.s.opts.WatchBuffer, c.s.opts.WatchBufferBytes)
	case errors.Is(err, localcache.ErrClosed):
		e = wire.Errorf(wire.CodeUnavailable, "the store closed: the sidecar is shutting down")
	default:
		c.log.Error("watch ended", "watch", w.id, "err", err)
		e = wire.Errorf(wire.CodeInternal, "internal error")
	}
	c.log.Debug("watch ended", "watch", w.id, "reason", err)
	c.s.counters.countError(e.Code)
	c.out.putPush(&wire.Response{ID: w.id, Push: true, Watch: w.id, Error: e})
	c.out.flush()
}

// putPush queues a push frame (from a goroutine of the connection, not the
// reader).
func (o *outbox) putPush(resp *wire.Response) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.appendLocked(resp, "value")
}

// putPushInRoom queues a push frame once the connection has room for it
// (see waitRoom): the watches of a connection, however many, add at most
// one frame beyond its limits together. It returns false once a write has
// failed.
func (o *outbox) putPushInRoom(resp *wire.Response) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.waitRoomLocked() {
		return false
	}
	o.appendLocked(resp, "value")
	return true
}
