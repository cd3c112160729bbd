package sockapi

import (
	"context"
	"fmt"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Fenced writes: put, delete, batch_put and transition may carry fence
// {resource, token}, the lock grant the write is made under. The store
// rejects a stale token (localcache/fence.go) and the push checks it again
// in the shared store; both come back as FenceRejected, with the fence and
// the token it was judged against (docs/decisions/0013-fenced-writes.md).

// fenceLevel is the nesting level of the fence map (in the request map).
const fenceLevel = 2

// decodeFence decodes the fence field: a map with resource (str) and token
// (non-negative integer), other keys skipped; nil is no fence.
func (s *scanner) decodeFence(req *wire.Request) (*fieldError, error) {
	t, n, _, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		req.Fence = nil
		return nil, nil
	case t != tMap:
		return typeError("fence", "a map", t), nil
	}
	f := &wire.Fence{}
	for range n {
		kt, kn, _, err := s.head()
		if err != nil {
			return nil, err
		}
		if kt != tStr {
			return &fieldError{field: "fence", msg: fmt.Sprintf("fence: map keys must be strings, not %s", kt)}, nil
		}
		var fe *fieldError
		switch string(s.b[s.off-int(kn) : s.off]) {
		case "resource":
			fe, err = s.strField("fence.resource", &f.Resource)
		case "token":
			fe, err = s.uintField("fence.token", &f.Token)
		default:
			err = s.skip(fenceLevel)
		}
		if fe != nil || err != nil {
			return fe, err
		}
	}
	req.Fence = f
	return nil, nil
}

// checkFence validates a write's fence: the resource is a lock name (the
// rules of state names: a document id) and the token is not 0.
func checkFence(f *wire.Fence) *wire.Error {
	if f == nil {
		return nil
	}
	if e := checkName("fence.resource", "fence resource", f.Resource); e != nil {
		return e
	}
	if f.Token == 0 {
		return invalid("fence.token", "fence token must be greater than 0")
	}
	return nil
}

// fenceOf is the store's fence of a request (zero: none).
func fenceOf(f *wire.Fence) localcache.Fence {
	if f == nil {
		return localcache.Fence{}
	}
	return localcache.Fence{Resource: f.Resource, Token: f.Token}
}

// fenceRejected is the FenceRejected error of a rejection; where says by
// whom, for the message.
func fenceRejected(r *localcache.FenceRejectedError, where string) *wire.Error {
	e := wire.Errorf(wire.CodeFenceRejected, "%s: %s", where, r.Detail())
	e.Fence = &wire.FenceRejection{Resource: r.Resource, Token: r.Token, Current: r.Current}
	return e
}

// fenceObserver is an optional capability of a Store (found by type
// assertion; *localcache.Store has it): raising its mark of a lock's
// tokens (localcache.Store.ObserveFence).
type fenceObserver interface {
	ObserveFence(ctx context.Context, resource string, token uint64) error
}

// observeGrant tells the store of a lock granted through this sidecar, so
// that it rejects the previous holders' late writes from now on. A failure
// is logged, not returned: the shared store still rejects those writes when
// they are pushed.
func (c *conn) observeGrant(ctx context.Context, resource string, token uint64) {
	o, ok := c.s.store.(fenceObserver)
	if !ok {
		return
	}
	if err := o.ObserveFence(ctx, resource, token); err != nil {
		c.log.Warn("record a lock grant's fencing token", "resource", resource, "token", token, "err", err)
	}
}
