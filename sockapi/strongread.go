package sockapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Strong reads (get and batch_get with consistency "strong") answer with
// the shared store's committed records only (Sync.ReadStrong): the
// sidecar's own pending changes of the states are pushed first, and are
// never an answer by themselves (docs/decisions/0016).

// strongGet serves a strong get of k. It runs on its own goroutine
// (goWrite), after the connection's earlier writes to k.
func (c *conn) strongGet(k localcache.Key, m readMode) *wire.Response {
	recs, e := c.readStrong(wire.OpGet, k, []localcache.Key{k}, m)
	if e != nil {
		return c.errorResponse(e)
	}
	if recs[0] == nil {
		return c.errorResponse(c.storeError(wire.OpGet, k, &localcache.KeyError{Op: "get", Key: k, Err: localcache.ErrNotFound}))
	}
	rec := new(wire.Record)
	toWire(rec, recs[0], true)
	rec.FromCache = false
	c.stampAge(rec, new(uint64))
	return &wire.Response{Record: rec}
}

// strongBatch serves a strong batch_get of keys (one entry per key, nil for
// a state the shared store does not hold). It fails as a whole if the
// shared store cannot be asked about any key.
func (c *conn) strongBatch(keys []localcache.Key, m readMode) *wire.Response {
	recs, e := c.readStrong(wire.OpBatchGet, localcache.Key{}, keys, m)
	if e != nil {
		return c.errorResponse(e)
	}
	if e := c.batchTooLarge(recs); e != nil {
		return c.errorResponse(e)
	}
	wrecs := make([]wire.Record, len(recs))
	ages := make([]uint64, len(recs))
	out := make([]*wire.Record, len(recs))
	for i, r := range recs {
		if r != nil {
			toWire(&wrecs[i], r, true)
			wrecs[i].FromCache = false
			c.stampAge(&wrecs[i], &ages[i])
			out[i] = &wrecs[i]
		}
	}
	return &wire.Response{Records: out}
}

// readStrong runs Sync.ReadStrong for keys, for at most the fetch timeout
// of m (a graceful shutdown ends it at once), and returns one record per
// key or the error to reply with (about k, when the request names one
// state). Like fetch, after the shared store was found unreachable it
// answers Unavailable at once for offlineHold.
func (c *conn) readStrong(op string, k localcache.Key, keys []localcache.Key, m readMode) ([]*localcache.Record, *wire.Error) {
	if c.s.heldOffline() {
		return nil, unreachable(k, heldOfflineWhy)
	}
	off := &c.s.offlineUntil
	timeout := c.fetchTimeout(m)
	ctx, cancel := c.waitContext(timeout)
	recs, repaired, err := c.s.opts.Sync.ReadStrong(ctx, keys)
	draining := ctx.Err() == context.Canceled && c.ctx.Err() == nil
	cancel()
	if err == nil && len(recs) != len(keys) {
		err = fmt.Errorf("the shared store returned %d records for %d keys", len(recs), len(keys))
	}
	switch {
	case err == nil:
		off.Store(0)
		c.s.reads.noteRepairs(m, repaired)
		return recs, nil
	case c.ctx.Err() != nil:
		return nil, c.storeError(op, k, c.ctx.Err())
	case draining:
		return nil, unavailableAbout(k, "the sidecar is shutting down")
	case errors.Is(err, ErrRemoteUnavailable):
		c.log.Debug("shared store unavailable for a strong read", "governor", k.Governor, "state", k.State, "err", err)
		off.Store(time.Now().Add(offlineHold).UnixNano())
		return nil, unreachable(k, fmt.Sprintf("unavailable: %v", err))
	case errors.Is(err, ErrRemoteUndecodable):
		return nil, undecodable(k, "strong read", err)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, unavailableAbout(k,
			"strong read: the shared store did not answer, or this sidecar's pending changes of the states were not pushed to it, within %v", timeout)
	case errors.Is(err, localcache.ErrClosed), errors.Is(err, localcache.ErrFailed), errors.Is(err, localcache.ErrInvalid):
		return nil, c.storeError(op, k, err)
	}
	c.log.Warn("strong read failed", "governor", k.Governor, "state", k.State, "err", err)
	return nil, unavailableAbout(k, "strong read: not answered: %v", err)
}

// unavailableAbout is an Unavailable error (retryable) about k (none when
// k is zero).
func unavailableAbout(k localcache.Key, format string, args ...any) *wire.Error {
	e := wire.Errorf(wire.CodeUnavailable, format, args...)
	e.Governor, e.State = k.Governor, k.State
	return e
}
