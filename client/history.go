package client

import (
	"context"
	"iter"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Flush waits until every change the sidecar acknowledged before the call
// (this client's writes included) is in the shared store, or was rejected
// by it for good (see Failed), waiting at most timeout (0: the sidecar's
// default, 10 s; the sidecar caps it as a sync write's). It returns the
// journal sequence number it waited for (0: nothing was ever written).
//
// Errors: ErrTimeout (retryable: a flush writes nothing) when the shared
// store did not take everything in time; ErrUnavailable, not retryable, on
// a sidecar without a shared store.
func (c *Client) Flush(ctx context.Context, timeout time.Duration) (uint64, error) {
	if timeout < 0 {
		e := errorf(wire.CodeInvalidArgument, "flush timeout %v is negative", timeout)
		e.Field = "timeout_ms"
		return 0, e
	}
	req := &wire.Request{Op: wire.OpFlush}
	if timeout > 0 {
		req.TimeoutMS = uint64(max(timeout/time.Millisecond, 1))
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return 0, err
	}
	return resp.FlushedSeq, nil
}

// EventsOptions select events of a governor's local event log.
type EventsOptions struct {
	// State restricts the query to one state's events, in version order.
	// Empty: every state's, by state and then version.
	State string
	// From and To bound the change time: From <= time < To; a zero bound
	// is open.
	From, To time.Time
	// Action is "put", "delete", a transition's action, or "" (every
	// event).
	Action string
	// Limit is the most events in one page: the sidecar's default (100) if
	// zero, at most 1000. The sidecar may return fewer, even none, while it
	// returns a cursor: keep paging until the cursor is "".
	Limit int
	// Cursor continues a query: pass the cursor the previous page returned.
	Cursor string
}

// Events returns one page of the local event log of gov (the changes this
// sidecar made: changes applied from other nodes leave no event) and the
// cursor of the next page ("" when the query is complete).
func (c *Client) Events(ctx context.Context, gov string, opts EventsOptions) ([]*wire.Event, string, error) {
	if err := c.checkScope(gov, opts.State); err != nil {
		return nil, "", err
	}
	if err := checkLimit(wire.OpEvents, opts.Limit); err != nil {
		return nil, "", err
	}
	req := &wire.Request{Op: wire.OpEvents, Governor: gov, State: opts.State, Action: opts.Action, Limit: opts.Limit, Cursor: opts.Cursor}
	if err := setTimeRange(req, opts.From, opts.To); err != nil {
		return nil, "", err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, "", err
	}
	for _, e := range resp.Events {
		if e == nil {
			return nil, "", protocolErrorf("events reply has a missing event")
		}
	}
	return resp.Events, resp.Cursor, nil
}

// EventsAll iterates over every event opts selects, following cursors from
// opts.Cursor on; opts.Limit is the page size. A failure is yielded once,
// with a nil event, and ends the iteration.
func (c *Client) EventsAll(ctx context.Context, gov string, opts EventsOptions) iter.Seq2[*wire.Event, error] {
	return func(yield func(*wire.Event, error) bool) {
		for {
			evs, next, err := c.Events(ctx, gov, opts)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, e := range evs {
				if !yield(e, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if next == opts.Cursor {
				yield(nil, protocolErrorf("events cursor %q did not advance", next))
				return
			}
			opts.Cursor = next
		}
	}
}

// StateAt returns state gov/state as it was at time at: the latest version
// whose change time is not after at. PastState.Exact is false when versions
// made on other nodes (no local event) may have been the answer.
//
// Errors: ErrNotFound when the state did not exist then, or when the local
// history cannot tell (the answer was made on another node; the message
// says so); ErrInvalidArgument for a zero time.
func (c *Client) StateAt(ctx context.Context, gov, state string, at time.Time) (*wire.PastState, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	if at.IsZero() {
		e := errorf(wire.CodeInvalidArgument, "state_at needs a time")
		e.Governor, e.State, e.Field = gov, state, "at"
		return nil, e
	}
	ns, err := unixNanos("at", at)
	if err != nil {
		return nil, err
	}
	if ns == 0 {
		e := errorf(wire.CodeInvalidArgument, "state_at needs a time after the Unix epoch")
		e.Governor, e.State, e.Field = gov, state, "at"
		return nil, e
	}
	return c.stateAt(ctx, &wire.Request{Op: wire.OpStateAt, Governor: gov, State: state, At: ns})
}

// StateAtVersion returns version version (from 1) of state gov/state.
// Errors: ErrNotFound when that version is a delete, is above the current
// one, or was made on another node and is not the current one.
func (c *Client) StateAtVersion(ctx context.Context, gov, state string, version uint64) (*wire.PastState, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	if version == 0 {
		e := errorf(wire.CodeInvalidArgument, "versions start at 1")
		e.Governor, e.State, e.Field = gov, state, "version"
		return nil, e
	}
	return c.stateAt(ctx, &wire.Request{Op: wire.OpStateAt, Governor: gov, State: state, Version: version})
}

func (c *Client) stateAt(ctx context.Context, req *wire.Request) (*wire.PastState, error) {
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Past == nil {
		return nil, protocolErrorf("state_at reply carries no state")
	}
	return resp.Past, nil
}

// Validate checks the local event log of gov (state "": every state) and
// returns the report: Report.OK is false when a rule is broken. Gaps
// (versions made on other nodes) are not violations.
func (c *Client) Validate(ctx context.Context, gov, state string) (*wire.Report, error) {
	if err := c.checkScope(gov, state); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpValidate, Governor: gov, State: state})
	if err != nil {
		return nil, err
	}
	if resp.Report == nil {
		return nil, protocolErrorf("validate reply carries no report")
	}
	return resp.Report, nil
}

// checkScope checks a governor and an optional state.
func (c *Client) checkScope(gov, state string) error {
	if state == "" {
		return validName("governor", gov, gov, "")
	}
	return validKey(gov, state)
}

// unixNanos is t in Unix nanoseconds (0 for the zero time); a time before
// the epoch or past what an int64 holds is InvalidArgument.
func unixNanos(field string, t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, nil
	}
	if t.Before(time.Unix(0, 0)) || t.After(time.Unix(0, 1<<63-1)) {
		e := errorf(wire.CodeInvalidArgument, "%s %s is out of range (1970 to 2262)", field, t.Format(time.RFC3339Nano))
		e.Field = field
		return 0, e
	}
	return t.UnixNano(), nil
}

// checkLimit refuses a negative page size of op with InvalidArgument.
func checkLimit(op string, limit int) error {
	if limit < 0 {
		e := errorf(wire.CodeInvalidArgument, "%s limit %d is negative", op, limit)
		e.Field = "limit"
		return e
	}
	return nil
}

// setTimeRange sets req's from and to (Unix nanoseconds) for a query over
// [from, to]; a zero time leaves that end open.
func setTimeRange(req *wire.Request, from, to time.Time) error {
	var err error
	if req.From, err = unixNanos("from", from); err != nil {
		return err
	}
	req.To, err = unixNanos("to", to)
	return err
}
