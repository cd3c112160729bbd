package client

import (
	"context"
	"errors"
	"sync"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// DefaultWatchBuffer is how many changes a Watch holds for its reader when
// Client.WatchBuffer is zero.
const DefaultWatchBuffer = 1024

// Change is one change a Watch delivers: the state after the change, with
// its value (a delete is a record with Deleted set and no value), and
// whether it came from the shared store (another sidecar) rather than from
// this sidecar's clients.
type Change struct {
	Record
	Remote bool
}

// Watch is a running watch of a governor's changes (see Client.Watch).
// Read the changes from Changes until it is closed, then Err says why the
// watch ended.
type Watch struct {
	id uint64
	cn *conn
	c  *Client
	ch chan *Change

	mu   sync.Mutex
	done bool
	err  error
	stop func() bool // stops the context watcher
}

// Changes returns the channel of changes, in the order the sidecar made
// them (version order per state). It is closed when the watch ends.
func (w *Watch) Changes() <-chan *Change { return w.ch }

// ID returns the watch's id on its connection.
func (w *Watch) ID() uint64 { return w.id }

// Err returns why the watch ended: nil while it runs and after Close; an
// error matching ErrUnavailable (retryable) when the sidecar ended it
// because it fell behind, when the reader of Changes fell more than
// Client.WatchBuffer changes behind, or when the connection failed; ErrClosed
// when the Client was closed. Start a new watch then (and re-read the
// states to catch up).
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close ends the watch: Changes is closed (changes not read yet are
// dropped) and the sidecar is told to stop. It is safe to call more than
// once.
func (w *Watch) Close() error {
	if w.end(nil) {
		w.cn.dropWatch(w.id)
		w.unwatch()
	}
	return nil
}

// end closes the channel with err unless the watch already ended; it
// reports whether it did.
func (w *Watch) end(err error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false
	}
	w.done, w.err = true, err
	close(w.ch)
	if w.stop != nil {
		w.stop()
	}
	return true
}

// deliver hands a push frame of the watch to its reader. The connection's
// reader calls it and must not block: a reader of Changes that falls a
// whole buffer behind ends the watch.
func (w *Watch) deliver(resp *wire.Response) {
	if resp.Error != nil {
		w.end(resp.Error)
		w.cn.dropWatch(w.id)
		return
	}
	if resp.Record == nil {
		return // nothing this version knows how to deliver
	}
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	select {
	case w.ch <- &Change{Record: Record{Record: *resp.Record}, Remote: resp.Remote}:
		w.mu.Unlock()
		return
	default:
	}
	w.mu.Unlock()
	e := errorf(wire.CodeUnavailable, "the watch's reader fell more than %d changes behind; the watch was ended: start it again", cap(w.ch))
	if w.end(e) {
		w.cn.dropWatch(w.id)
		w.unwatch()
	}
}

// unwatch tells the sidecar to stop the watch, without waiting for the
// reply (the connection's reader drops it).
func (w *Watch) unwatch() {
	id := w.c.ids.Add(1)
	frame, err := w.c.encode(&wire.Request{ID: id, Op: wire.OpUnwatch, Watch: w.id})
	if err != nil {
		return
	}
	cl := &call{id: id, frame: frame, done: make(chan struct{})}
	_ = w.cn.send(cl) // a failed connection has ended the watch anyway
}

// Watch starts a watch of the states of gov whose names start with prefix
// ("" for all): every change made from now on, by this sidecar's clients or
// arriving from the shared store, is delivered on the Watch's Changes
// channel, in order. The watch runs on one of the client's connections,
// alongside other requests, until Close, until ctx ends (which closes it),
// or until it fails (see Watch.Err).
func (c *Client) Watch(ctx context.Context, gov, prefix string) (*Watch, error) {
	if err := validName("governor", gov, gov, ""); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slots, err := c.getSlots()
	if err != nil {
		return nil, err
	}
	size := c.WatchBuffer
	if size <= 0 {
		size = DefaultWatchBuffer
	}
	for attempt := 1; ; attempt++ {
		cn, err := c.connect(ctx, c.pick(slots))
		if err != nil {
			return nil, err
		}
		id := c.ids.Add(1)
		frame, err := c.encode(&wire.Request{ID: id, Op: wire.OpWatch, Governor: gov, Prefix: prefix})
		if err != nil {
			return nil, err
		}
		w := &Watch{id: id, cn: cn, c: c, ch: make(chan *Change, size)}
		// Registered before the request is sent: pushes may follow the
		// reply at once.
		if err := cn.addWatch(w); err != nil {
			return nil, err
		}
		cl := &call{id: id, frame: frame, done: make(chan struct{})}
		err = cn.send(cl)
		var resp *wire.Response
		if err == nil {
			resp, err = cn.wait(ctx, cl)
		}
		if err != nil {
			cn.dropWatch(id)
			var ce *ConnError
			if errors.As(err, &ce) && !ce.Sent && attempt < maxAttempts {
				continue
			}
			if ctx.Err() != nil {
				w.unwatch() // the sidecar may have started it
			}
			return nil, err
		}
		if resp.Error != nil {
			cn.dropWatch(id)
			return nil, resp.Error
		}
		w.mu.Lock()
		if !w.done {
			w.stop = context.AfterFunc(ctx, func() { w.Close() })
		}
		w.mu.Unlock()
		return w, nil
	}
}

// addWatch registers w to receive its push frames.
func (c *conn) addWatch(w *Watch) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.errFor(false)
	}
	if c.watches == nil {
		c.watches = make(map[uint64]*Watch)
	}
	c.watches[w.id] = w
	return nil
}

func (c *conn) dropWatch(id uint64) {
	c.mu.Lock()
	delete(c.watches, id)
	c.mu.Unlock()
}

// push hands a server-push frame to its watch, to the lock connection
// (a lost bound lock, see locks.go) or to the resolver connection (a
// conflict to decide, see resolver.go); frames of a watch that ended are
// dropped.
func (c *conn) push(resp *wire.Response) {
	c.mu.Lock()
	w, s, r := c.watches[resp.Watch], c.locks, c.resolver
	c.mu.Unlock()
	switch {
	case w != nil:
		w.deliver(resp)
	case resp.Watch == 0 && resp.Conflict != nil && r != nil:
		r.push(resp)
	case resp.Watch == 0 && s != nil:
		s.push(resp)
	}
}
