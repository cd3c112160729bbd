package sockapi

import (
	"context"
	"errors"
	"math"
	"time"
	"unicode/utf8"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Event sourcing ops over the local history (localcache/snapshot.go,
// docs/decisions/0015): snapshot and cleanup (admin upkeep), transition (a
// state machine's compare-and-set, a write), replay (paged, a read).

// EventSourcing is what the snapshot, transition, cleanup and replay ops
// need of the store beyond Store; *localcache.Store has it. A store
// without it refuses those ops: Unavailable, not retryable.
type EventSourcing interface {
	// Snapshot takes a snapshot of k at its current version; taken is false
	// when one existed at that version. A state with no record is an error
	// wrapping localcache.ErrNotFound.
	Snapshot(ctx context.Context, k localcache.Key) (snap localcache.Snapshot, taken bool, err error)
	// SnapshotGovernor snapshots every live state of governor.
	SnapshotGovernor(ctx context.Context, governor string) (localcache.SnapshotSummary, error)
	// Transition runs t as a compare-and-set through write (nil: the
	// store's own Write). A machine in another state is a
	// *localcache.WrongStateError.
	Transition(ctx context.Context, t localcache.Transition, write localcache.WriteFunc) (localcache.Record, error)
	// Cleanup removes old history under p and reports what went.
	Cleanup(ctx context.Context, p localcache.CleanupPolicy) (localcache.CleanupReport, error)
	// Replay returns one page of a state's or a governor's history.
	Replay(ctx context.Context, q localcache.ReplayQuery) (localcache.ReplayPage, error)
}

// opEventSourcing serves snapshot, transition, cleanup and replay.
func (c *conn) opEventSourcing(op int, req *wire.Request) {
	es, ok := c.s.store.(EventSourcing)
	if !ok {
		e := wire.Errorf(wire.CodeUnavailable, "%s: this sidecar's store keeps no snapshots", req.Op)
		e.Retryable = false
		c.replyError(req.ID, e)
		return
	}
	switch op {
	case opSnapshot:
		c.opSnapshot(es, req)
	case opTransition:
		c.opTransition(es, req)
	case opCleanup:
		c.opCleanup(es, req)
	case opReplay:
		c.opReplay(es, req)
	}
}

// opSnapshot snapshots one state (state set) or every live state of a
// governor. It runs after the connection's earlier writes, off the
// reader.
func (c *conn) opSnapshot(es EventSourcing, req *wire.Request) {
	if e := checkHistoryScope(req); e != nil {
		c.replyError(req.ID, e)
		return
	}
	k := localcache.Key{Governor: req.Governor, State: req.State}
	if req.State == "" {
		c.awaitWrites(nil, true)
		c.goWrite(req.ID, nil, c.replyReserve(frameReserve), func() *wire.Response {
			sum, err := es.SnapshotGovernor(c.ctx, k.Governor) // not req: the reader reuses it
			if err != nil {
				return c.errorResponse(c.historyError(wire.OpSnapshot, k, err))
			}
			return &wire.Response{Snapshot: &wire.SnapshotResult{States: sum.States, Taken: sum.Taken}}
		}, nil)
		return
	}
	c.goWrite(req.ID, []localcache.Key{k}, c.replyReserve(frameReserve), func() *wire.Response {
		snap, taken, err := es.Snapshot(c.ctx, k)
		if err != nil {
			return c.errorResponse(c.historyError(wire.OpSnapshot, k, err))
		}
		res := &wire.SnapshotResult{States: 1, Snapshot: wireSnapshot(&snap, false)}
		if taken {
			res.Taken = 1
		}
		return &wire.Response{Snapshot: res}
	}, nil)
}

// wireSnapshot is snap as replies carry it, with its value or without.
func wireSnapshot(snap *localcache.Snapshot, value bool) *wire.Snapshot {
	r := &snap.Record
	out := &wire.Snapshot{
		Governor: r.Governor, State: r.State, Version: r.Version, Deleted: r.Deleted, UpdatedAt: r.UpdatedAt,
		Change: wire.Change{Actor: r.Change.Actor, Reason: r.Change.Reason, Time: r.Change.Time},
		Origin: r.Origin, OpID: r.OpID, Clock: wireClock(r.Clock), TakenAt: snap.TakenAt,
	}
	if value && len(r.Value) > 0 {
		out.Value = wire.Raw(r.Value)
	}
	return out
}

// opTransition moves a state machine from from_state to to_state (see
// localcache.Transition): one compare-and-set and its event, named by
// action. Consistency and fence as a put's: async (default), sync, or
// strong (the compare-and-set checked against the shared store).
func (c *conn) opTransition(es EventSourcing, req *wire.Request) {
	k, e := checkKey("", req.Governor, req.State)
	if e == nil {
		e = checkTransitionFields(req, c.s.opts.MaxValue)
	}
	var m writeMode
	if e == nil {
		m, e = c.checkWrite(req) // actor, reason, fence, consistency
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	t := localcache.Transition{Key: k, From: req.FromState, To: req.ToState, Action: req.Action,
		Value: req.Value, Actor: req.Actor, Reason: req.Reason, Fence: fenceOf(req.Fence), Confirm: m.sync}
	var seq uint64
	c.goWrite(req.ID, []localcache.Key{k}, c.writeReserve([]localcache.Key{k}, req), func() *wire.Response {
		var strongErr *wire.Error
		var write localcache.WriteFunc
		if m.strong {
			write = func(_ context.Context, w localcache.Write) (localcache.Record, error) {
				recs, e := c.writeStrong(m, wire.OpTransition, k, []localcache.Write{w})
				if e != nil {
					strongErr = e
					if e.Code == wire.CodeVersionConflict {
						return localcache.Record{}, &localcache.VersionConflictError{Key: k} // read again
					}
					return localcache.Record{}, e
				}
				return recs[0], nil
			}
		}
		r, err := es.Transition(c.ctx, t, write)
		var we *wire.Error
		switch {
		case errors.As(err, &we):
			return c.errorResponse(we)
		case err != nil && strongErr != nil && errors.Is(err, localcache.ErrVersionConflict):
			return c.errorResponse(strongErr)
		case err != nil:
			return c.errorResponse(c.transitionError(k, err))
		}
		seq = r.Seq
		rec := new(wire.Record)
		toWire(rec, &r, false)
		if m.strong {
			rec.Pending = false
		}
		return &wire.Response{Record: rec}
	}, c.syncThen(m, k, func() []uint64 { return []uint64{seq} }))
}

// checkTransitionFields checks what a transition carries beside its key
// and metadata.
func checkTransitionFields(req *wire.Request, maxValue int) *wire.Error {
	switch {
	case req.IfVersion != nil || req.IfAbsent:
		field := "if_version"
		if req.IfAbsent {
			field = "if_absent"
		}
		return invalid(field, "a transition's precondition is its from_state: it takes no %s", field)
	case req.ToState == "":
		return invalid("to_state", "to_state (the new machine state) is required")
	case req.Action == "":
		return invalid("action", "action (the transition's name) is required")
	case req.Action == localcache.ActionPut || req.Action == localcache.ActionDelete:
		return invalid("action", "action %q names plain writes: give the transition another name", req.Action)
	case len(req.Value) > maxValue:
		return tooLarge("value", maxValue, "value is %d bytes, limit %d", len(req.Value), maxValue)
	}
	for _, f := range []struct{ field, s string }{{"from_state", req.FromState}, {"to_state", req.ToState}, {"action", req.Action}} {
		if e := checkAction(f.field, f.s); e != nil {
			return e
		}
	}
	return nil
}

// checkAction checks an action or a machine state name: UTF-8, at most
// localcache.MaxActionSize bytes.
func checkAction(field, s string) *wire.Error {
	if len(s) > localcache.MaxActionSize {
		return tooLarge(field, localcache.MaxActionSize, "%s is %d bytes, limit %d", field, len(s), localcache.MaxActionSize)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "%s is not valid UTF-8", field)
	}
	return nil
}

// transitionError translates a transition's error: a machine in another
// state is WrongState; invalid input the store found (a value that is not
// a machine in the new state) is InvalidArgument; the rest as a put's.
func (c *conn) transitionError(k localcache.Key, err error) *wire.Error {
	var (
		ws *localcache.WrongStateError
		fe *localcache.FieldError
	)
	switch {
	case errors.As(err, &ws):
		e := wire.Errorf(wire.CodeWrongState, "%v", ws)
		e.Governor, e.State = ws.Key.Governor, ws.Key.State
		e.Machine = &wire.MachineState{Expected: ws.Expected, Actual: ws.Actual, Version: ws.Version, NotMachine: ws.NotMachine}
		return e
	case errors.Is(err, localcache.ErrInvalid) && errors.As(err, &fe):
		e := invalid(fe.Field, "%v", fe.Err)
		e.Governor, e.State = k.Governor, k.State
		return e
	}
	return c.storeError(wire.OpPut, k, err)
}

// opCleanup removes old local history of a governor (or one state): events
// older than max_age_ms and/or beyond the newest keep_events of each state
// (at least one of them), never after a state's newest snapshot the
// policy allows (see localcache.Cleanup). dry_run only reports.
func (c *conn) opCleanup(es EventSourcing, req *wire.Request) {
	e := checkHistoryScope(req)
	if e == nil && req.MaxAgeMS == 0 && req.KeepEvents == 0 {
		e = invalid("max_age_ms", "cleanup needs max_age_ms, keep_events, or both")
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	p := localcache.CleanupPolicy{
		Governor:   req.Governor,
		State:      req.State,
		MaxAge:     time.Duration(min(req.MaxAgeMS, uint64(math.MaxInt64/int64(time.Millisecond)))) * time.Millisecond,
		KeepEvents: int(min(req.KeepEvents, uint64(math.MaxInt32))),
		DryRun:     req.DryRun,
	}
	k := localcache.Key{Governor: req.Governor, State: req.State}
	c.awaitWrites(nil, true)
	c.goWrite(req.ID, nil, c.replyReserve(c.s.opts.MaxFrame), func() *wire.Response {
		rep, err := es.Cleanup(c.ctx, p)
		if err != nil {
			return c.errorResponse(c.historyError(wire.OpCleanup, k, err))
		}
		out := &wire.CleanupReport{DryRun: p.DryRun, States: rep.States, Cleaned: rep.Cleaned, Events: rep.Events,
			Snapshots: rep.Snapshots, Held: rep.Held, Merged: rep.Merged}
		const entryOverhead = 96
		budget := c.s.opts.MaxFrame - frameReserve
		for _, cut := range rep.Cuts {
			if budget -= entryOverhead + len(cut.Key.Governor) + len(cut.Key.State); budget < 0 {
				break
			}
			out.Cuts = append(out.Cuts, &wire.CleanupCut{Governor: cut.Key.Governor, State: cut.Key.State,
				Base: cut.Base, Events: cut.Events, Snapshots: cut.Snapshots})
		}
		return &wire.Response{Cleanup: out}
	}, nil)
}

// opReplay returns one page of the retained history of a governor (or one
// state): each state's base snapshot, then its events (see
// localcache.Replay). limit as events'; the reply stays under max_frame,
// its cursor continues the replay, and done marks the last page.
func (c *conn) opReplay(es EventSourcing, req *wire.Request) {
	e := checkHistoryScope(req)
	if e == nil && len(req.Cursor) > maxCursor {
		e = tooLarge("cursor", maxCursor, "cursor is %d bytes, limit %d", len(req.Cursor), maxCursor)
	}
	if e == nil && req.Limit < 0 {
		e = invalid("limit", "limit must not be negative")
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	q := localcache.ReplayQuery{
		Governor: req.Governor,
		State:    req.State,
		Latest:   req.Latest,
		Limit:    min(max(req.Limit, 0), localcache.MaxEventLimit),
		MaxBytes: c.s.opts.MaxFrame - frameReserve,
		Cursor:   req.Cursor,
	}
	c.awaitWrites(nil, true)
	page, err := es.Replay(c.ctx, q)
	if err == nil {
		if n := fittingEvents(replayEvents(page.Items), c.s.opts.MaxFrame-frameReserve/2-len(page.Next)); n < len(page.Items) {
			q.Limit = max(n, 1)
			page, err = es.Replay(c.ctx, q)
		}
	}
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpReplay, localcache.Key{Governor: req.Governor, State: req.State}, err))
		return
	}
	out := make([]*wire.ReplayItem, len(page.Items))
	for i, it := range page.Items {
		if it.Snapshot != nil {
			out[i] = &wire.ReplayItem{Snapshot: wireSnapshot(it.Snapshot, true)}
		} else {
			out[i] = &wire.ReplayItem{Event: wireEvent(it.Event)}
		}
	}
	c.resp = wire.Response{ID: req.ID, Replay: out, Cursor: page.Next, Done: page.Next == ""}
	c.out.put(&c.resp, "limit")
	c.resp = wire.Response{}
}

// replayEvents returns items as events (a snapshot as the event of its
// version), to size the reply.
func replayEvents(items []localcache.ReplayItem) []localcache.Event {
	evs := make([]localcache.Event, len(items))
	for i, it := range items {
		if it.Event != nil {
			evs[i] = *it.Event
			continue
		}
		r := &it.Snapshot.Record
		evs[i] = localcache.Event{Key: r.Key, Value: r.Value, Change: r.Change, Origin: r.Origin, OpID: r.OpID, Clock: r.Clock}
	}
	return evs
}
