package sockapi

import (
	"context"
	"errors"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Ops over the shared store's progress (flush) and the local event log
// (events, state_at, validate). Their replies are rare and go through the
// codec (see appendResponseFrame).

// Bounds of the event replies: eventOverhead bounds the encoded size of an
// event beside its value, names, metadata and vector clock; vectorEntry
// each vector clock entry beside its node id.
const (
	eventOverhead = 256
	vectorEntry   = 16
)

// opFlush waits until every change acknowledged before the request (the
// connection's own earlier writes included) is in the shared store, or was
// parked (see failed), for at most timeout_ms (default and cap as a sync
// write's). Without a shared store it is Unavailable, not retryable. A
// timeout is Timeout, retryable: a flush writes nothing.
func (c *conn) opFlush(req *wire.Request) {
	if c.s.opts.Sync == nil {
		e := wire.Errorf(wire.CodeUnavailable, "flush needs a shared store, and none is configured: this sidecar is local only")
		e.Retryable = false
		c.replyError(req.ID, e)
		return
	}
	timeout := c.s.opts.SyncTimeout
	if req.TimeoutMS > 0 {
		timeout = time.Duration(min(req.TimeoutMS, uint64(c.s.syncTimeoutCap()/time.Millisecond))) * time.Millisecond
	}
	c.awaitWrites(nil, true) // the connection's earlier writes are acknowledged first
	seq := c.s.store.LastSeq()
	// The wait runs in goWrite's second step: it holds up no later request.
	c.goWrite(req.ID, nil, c.replyReserve(frameReserve), func() *wire.Response { return &wire.Response{} }, func(*wire.Response) *wire.Response {
		if e := c.flushWait(seq, timeout); e != nil {
			return c.errorResponse(e)
		}
		return &wire.Response{FlushedSeq: seq}
	})
}

// flushWait waits until no journal entry up to seq is pending, for at most
// timeout, and returns nil or the error to reply with. A graceful shutdown
// ends the wait at once.
func (c *conn) flushWait(seq uint64, timeout time.Duration) *wire.Error {
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-c.s.draining:
			cancel()
		case <-stop:
		}
	}()
	err := c.s.store.WaitFlushed(ctx, seq)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil:
		return wire.Errorf(wire.CodeTimeout,
			"the shared store did not take every change up to journal entry %d within %v (nothing was written: retry, or see pending)",
			seq, timeout)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return wire.Errorf(wire.CodeUnavailable, "the sidecar is shutting down")
	}
	return c.storeError(wire.OpFlush, localcache.Key{}, err)
}

// historyError translates an error of the event log: invalid arguments the
// store found (a cursor it cannot read, a range it refuses) are
// InvalidArgument with the store's field; ErrHistoryGap is NotFound (not
// retryable: the local log will not learn those versions); the rest as
// storeError.
func (c *conn) historyError(op string, k localcache.Key, err error) *wire.Error {
	var (
		fe  *localcache.FieldError
		gap *localcache.HistoryGapError
	)
	switch {
	case errors.As(err, &gap):
		e := wire.Errorf(wire.CodeNotFound,
			"not in the local history: versions %d to %d have no local event (made on other nodes, or removed by cleanup)", gap.After+1, gap.Through)
		e.Governor, e.State = gap.Key.Governor, gap.Key.State
		return e
	case errors.Is(err, localcache.ErrHistoryGap):
		e := wire.Errorf(wire.CodeNotFound, "not in the local history")
		e.Governor, e.State = k.Governor, k.State
		return e
	case errors.Is(err, localcache.ErrInvalid) && errors.As(err, &fe):
		return invalid(fe.Field, "%v", fe.Err)
	}
	return c.storeError(op, k, err)
}

// checkHistoryScope checks the governor and the optional state of events
// and validate.
func checkHistoryScope(req *wire.Request) *wire.Error {
	if e := checkName("governor", "governor", req.Governor); e != nil {
		return e
	}
	if req.State != "" {
		return checkName("state", "state", req.State)
	}
	return nil
}

// opEvents returns one page of the local event log of a governor (or of
// one state): events with from <= change time < to, of one action when
// set. limit: 0 means localcache.DefaultEventLimit, negative is
// InvalidArgument, above localcache.MaxEventLimit is lowered to it. The
// reply stays under max_frame like list's; its cursor continues the query,
// and a page may be empty while the cursor is set.
func (c *conn) opEvents(req *wire.Request) {
	e := checkHistoryScope(req)
	if e == nil && len(req.Cursor) > maxCursor {
		e = tooLarge("cursor", maxCursor, "cursor is %d bytes, limit %d", len(req.Cursor), maxCursor)
	}
	if e == nil && req.Limit < 0 {
		e = invalid("limit", "limit must not be negative")
	}
	if e == nil {
		e = checkAction("action", req.Action) // snapshots.go
	}
	if e == nil && req.From != 0 && req.To != 0 && req.From >= req.To {
		e = invalid("to", "to (%d) must be after from (%d)", req.To, req.From)
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	q := localcache.EventQuery{
		Governor: req.Governor,
		State:    req.State,
		Action:   req.Action,
		Limit:    min(max(req.Limit, 0), localcache.MaxEventLimit),
		MaxBytes: c.s.opts.MaxFrame - frameReserve,
		Cursor:   req.Cursor,
	}
	if req.From != 0 {
		q.From = time.Unix(0, req.From)
	}
	if req.To != 0 {
		q.To = time.Unix(0, req.To)
	}
	c.awaitWrites(nil, true)
	page, err := c.s.store.QueryEvents(c.ctx, q)
	if err == nil {
		if n := fittingEvents(page.Events, c.s.opts.MaxFrame-frameReserve/2-len(page.Next)); n < len(page.Events) {
			q.Limit = max(n, 1)
			page, err = c.s.store.QueryEvents(c.ctx, q)
		}
	}
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpEvents, localcache.Key{Governor: req.Governor, State: req.State}, err))
		return
	}
	out := make([]*wire.Event, len(page.Events))
	for i := range page.Events {
		out[i] = wireEvent(&page.Events[i])
	}
	c.resp = wire.Response{ID: req.ID, Events: out, Cursor: page.Next}
	c.out.put(&c.resp, "limit")
	c.resp = wire.Response{}
}

// wireEvent is ev as replies carry it.
func wireEvent(ev *localcache.Event) *wire.Event {
	out := &wire.Event{
		Governor:    ev.Governor,
		State:       ev.State,
		Action:      ev.Action,
		FromVersion: ev.FromVersion,
		Version:     ev.ToVersion,
		Change:      wire.Change{Actor: ev.Change.Actor, Reason: ev.Change.Reason, Time: ev.Change.Time},
		Origin:      ev.Origin,
		OpID:        ev.OpID,
		Clock:       wireClock(ev.Clock),
	}
	if ev.Action != localcache.ActionDelete && len(ev.Value) > 0 {
		out.Value = wire.Raw(ev.Value)
	}
	return out
}

// fittingEvents returns how many of evs fit in budget bytes of reply, by a
// generous estimate of each event's encoded size.
func fittingEvents(evs []localcache.Event, budget int) int {
	total := 0
	for i := range evs {
		e := &evs[i]
		total += eventOverhead + len(e.Value) + len(e.Governor) + len(e.State) +
			len(e.Change.Actor) + len(e.Change.Reason) + len(e.Origin) + len(e.OpID)
		for node := range e.Clock.Vector {
			total += vectorEntry + len(node)
		}
		if total > budget {
			return i
		}
	}
	return len(evs)
}

func wireClock(c localcache.Clock) wire.Clock {
	return wire.Clock{Lamport: c.Lamport, HLC: c.HLC, Vector: c.Vector}
}

// opStateAt returns a state as of a past time (at, Unix ns) or version:
// exactly one of them. A state that did not exist then is NotFound; an
// answer the local log does not hold (made on another node) is NotFound
// too, with a message that says so.
func (c *conn) opStateAt(req *wire.Request) {
	k, e := checkKey("", req.Governor, req.State)
	if e == nil {
		switch {
		case req.At == 0 && req.Version == 0:
			e = invalid("at", "state_at needs at (Unix ns) or version")
		case req.At != 0 && req.Version != 0:
			e = invalid("version", "state_at takes at or version, not both")
		}
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.awaitWrites([]localcache.Key{k}, false)
	var (
		p   localcache.PastState
		err error
	)
	if req.Version != 0 {
		p, err = c.s.store.StateAtVersion(c.ctx, k, req.Version)
	} else {
		p, err = c.s.store.StateAt(c.ctx, k, time.Unix(0, req.At))
	}
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpStateAt, k, err))
		return
	}
	past := &wire.PastState{
		OpID:           p.OpID,
		Clock:          wireClock(p.Clock),
		Exact:          p.Exact,
		UnknownThrough: p.UnknownThrough,
	}
	toWire(&past.Record, &p.Record, true)
	past.Record.FromCache, past.Record.Pending, past.Record.SyncedAt = false, false, 0
	c.resp = wire.Response{ID: req.ID, Past: past}
	c.out.put(&c.resp, "value")
	c.resp = wire.Response{}
}

// opValidate checks the local event log of a governor (or of one state)
// and returns the report. The lists are cut, before the counts are, to fit
// max_frame.
func (c *conn) opValidate(req *wire.Request) {
	if e := checkHistoryScope(req); e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.awaitWrites(nil, true)
	k := localcache.Key{Governor: req.Governor, State: req.State}
	rep, err := c.s.store.Validate(c.ctx, req.Governor, req.State)
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpValidate, k, err))
		return
	}
	out := &wire.Report{
		OK:             rep.OK(),
		States:         rep.States,
		Events:         rep.Events,
		Snapshots:      rep.Snapshots,
		ViolationCount: rep.ViolationCount,
		GapCount:       rep.GapCount,
	}
	const entryOverhead = 96
	budget := c.s.opts.MaxFrame - frameReserve
	for _, v := range rep.Violations {
		if budget -= entryOverhead + len(v.Key.Governor) + len(v.Key.State) + len(v.Rule) + len(v.Message); budget < 0 {
			break
		}
		out.Violations = append(out.Violations, &wire.Violation{
			Governor: v.Key.Governor, State: v.Key.State, Version: v.Version, Rule: v.Rule, Message: v.Message,
		})
	}
	for _, g := range rep.Gaps {
		if budget -= entryOverhead + len(g.Key.Governor) + len(g.Key.State) + len(g.Reason); budget < 0 {
			break
		}
		out.Gaps = append(out.Gaps, &wire.Gap{
			Governor: g.Key.Governor, State: g.Key.State, After: g.After, Through: g.Through, Reason: g.Reason,
		})
	}
	c.resp = wire.Response{ID: req.ID, Report: out}
	c.out.put(&c.resp, "")
	c.resp = wire.Response{}
}
