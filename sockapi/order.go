package sockapi

import (
	"sync"
	"sync/atomic"

	"github.com/tai-state/tai-state/localcache"
)

// order keeps a connection's requests on one state in the order they
// arrived, while writes to different states still run concurrently (so that
// the store's group commit can share one fsync among them):
//
//   - a write waits for the writes to the same states that arrived before it;
//   - a get or batch_get waits for the writes to its states that arrived
//     before it, so a pipelined read sees the connection's own earlier
//     writes;
//   - a list waits for every write that arrived before it.
//
// The reader goroutine registers writes (enter) in arrival order; each
// write's goroutine calls leave when the store has answered, before its reply
// is queued, so nothing waits on a peer that does not read.
type order struct {
	inflight atomic.Int64 // registered writes not yet left: the reads' fast path

	mu    sync.Mutex
	byKey map[localcache.Key]chan struct{} // latest write per state
	all   map[chan struct{}]struct{}       // every write in flight
}

// enter registers a write on keys. It returns the channels of the earlier
// writes to wait for and the channel to pass to leave.
func (o *order) enter(keys []localcache.Key) (wait []chan struct{}, done chan struct{}) {
	done = make(chan struct{})
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byKey == nil {
		o.byKey = make(map[localcache.Key]chan struct{})
		o.all = make(map[chan struct{}]struct{})
	}
	for _, k := range keys {
		if prev, ok := o.byKey[k]; ok {
			wait = append(wait, prev)
		}
		o.byKey[k] = done
	}
	o.all[done] = struct{}{}
	o.inflight.Add(1)
	return wait, done
}

// leave ends the write registered with done on keys and wakes its waiters.
func (o *order) leave(keys []localcache.Key, done chan struct{}) {
	o.mu.Lock()
	for _, k := range keys {
		if o.byKey[k] == done {
			delete(o.byKey, k)
		}
	}
	delete(o.all, done)
	o.inflight.Add(-1)
	o.mu.Unlock()
	close(done)
}

// before returns the channels of the writes in flight on keys; with no keys,
// of every write in flight.
func (o *order) before(keys []localcache.Key, all bool) []chan struct{} {
	if o.inflight.Load() == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var wait []chan struct{}
	if all {
		for ch := range o.all {
			wait = append(wait, ch)
		}
		return wait
	}
	for _, k := range keys {
		if ch, ok := o.byKey[k]; ok {
			wait = append(wait, ch)
		}
	}
	return wait
}
