package client

import (
	"context"
	"iter"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// ErrWrongState matches WrongState errors: a transition found its machine
// in another machine state than it expected (the error's Machine says
// which), or found no machine.
var ErrWrongState = wire.ErrWrongState

// Transition is a state machine transition (see Client.Transition).
type Transition struct {
	// From is the machine state expected; "" expects no state (the
	// transition creates the machine).
	From string
	// To is the new machine state (required).
	To string
	// Action names the transition; it becomes its event's action.
	// Required, and not "put" or "delete".
	Action string
	// Value, when not nil, is the whole new value (encoded like Put's): a
	// machine value in state To. Nil: the current value with its machine
	// state set to To, or the string To when the machine is created.
	Value any
}

// Transition moves the state machine gov/state from t.From to t.To: one
// compare-and-set of the state, whose event's action is t.Action. A
// machine is a state whose value is a string (the machine state) or a map
// with a string entry "state" (the machine state; the other entries are
// the machine's data, kept as they are). It returns the new record's
// metadata (no Value).
//
// opts: Actor, Reason, Synced, StrongWrite (the compare-and-set checked
// against the shared store) and WithFence, as for Put; a transition's
// precondition is t.From, so IfVersion and IfAbsent are refused.
//
// Errors: ErrWrongState when the machine is in another state (of
// transitions racing from one state, exactly one succeeds); ErrFenceRejected
// for a stale fence, judged before the machine state when the sidecar has
// seen the newer grant; the errors of Put.
func (c *Client) Transition(ctx context.Context, gov, state string, t Transition, opts ...WriteOption) (*Record, error) {
	if err := validKey(gov, state); err != nil {
		return nil, err
	}
	req := &wire.Request{Op: wire.OpTransition, Governor: gov, State: state, FromState: t.From, ToState: t.To, Action: t.Action}
	if t.Value != nil {
		b, err := wire.Marshal(t.Value)
		if err != nil {
			e := errorf(wire.CodeInvalidArgument, "encode value: %v", err)
			e.Governor, e.State, e.Field = gov, state, "value"
			return nil, e
		}
		req.Value = b
	}
	if err := applyWriteOptions(req, opts, true); err != nil {
		return nil, err
	}
	if req.IfVersion != nil || req.IfAbsent {
		e := errorf(wire.CodeInvalidArgument, "a transition's precondition is its From state: IfVersion and IfAbsent do not apply")
		e.Governor, e.State = gov, state
		return nil, e
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return oneRecord(resp)
}

// Snapshot takes a snapshot of state gov/state at its current version, or,
// with state "", of every live state of gov. The result's Snapshot
// describes one state's snapshot (without its value); Taken counts the
// snapshots that are new. Needs the admin right.
//
// Errors: ErrNotFound for a state that does not exist.
func (c *Client) Snapshot(ctx context.Context, gov, state string) (*wire.SnapshotResult, error) {
	if err := c.checkScope(gov, state); err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpSnapshot, Governor: gov, State: state})
	if err != nil {
		return nil, err
	}
	if resp.Snapshot == nil {
		return nil, protocolErrorf("snapshot reply carries no result")
	}
	return resp.Snapshot, nil
}

// CleanupOptions say what Client.Cleanup may remove.
type CleanupOptions struct {
	// State limits the cleanup to one state.
	State string
	// MaxAge: only events older than this may go (0: no age limit).
	MaxAge time.Duration
	// KeepEvents: the newest KeepEvents events of each state stay (0: no
	// count limit). At least one of MaxAge and KeepEvents must be set.
	KeepEvents int
	// DryRun reports what would be removed, removing nothing.
	DryRun bool
}

// Cleanup removes old local history of gov: per state, the events the
// options allow up to the state's newest snapshot whose earlier events may
// all go (the history then starts from that snapshot), and the snapshots
// older than it. Events of changes not yet in the shared store stay. It
// reports what it removed. Needs the admin right.
func (c *Client) Cleanup(ctx context.Context, gov string, opts CleanupOptions) (*wire.CleanupReport, error) {
	if err := c.checkScope(gov, opts.State); err != nil {
		return nil, err
	}
	if opts.MaxAge < 0 || opts.KeepEvents < 0 || (opts.MaxAge == 0 && opts.KeepEvents == 0) {
		e := errorf(wire.CodeInvalidArgument, "cleanup needs a positive MaxAge, KeepEvents, or both")
		e.Field = "max_age_ms"
		return nil, e
	}
	req := &wire.Request{Op: wire.OpCleanup, Governor: gov, State: opts.State, KeepEvents: uint64(opts.KeepEvents), DryRun: opts.DryRun}
	if opts.MaxAge > 0 {
		req.MaxAgeMS = uint64(max(opts.MaxAge/time.Millisecond, 1))
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Cleanup == nil {
		return nil, protocolErrorf("cleanup reply carries no report")
	}
	return resp.Cleanup, nil
}

// ReplayOptions select a replay.
type ReplayOptions struct {
	// State limits the replay to one state.
	State string
	// Latest starts each state at its newest snapshot instead of the start
	// of its retained history.
	Latest bool
	// Limit is the most items in one page: the sidecar's default (100) if
	// zero, at most 1000.
	Limit int
	// Cursor continues a replay: pass the cursor the previous page
	// returned.
	Cursor string
}

// Replay returns one page of the retained history of gov (or one state):
// per state, its starting snapshot when its history starts from one (after
// a cleanup, or with Latest), then its events, in version order; states in
// the order of Events. Applying the items in order (a snapshot or a put
// sets the value, a delete removes it) rebuilds every state. It returns
// the cursor of the next page and whether this page is the last.
func (c *Client) Replay(ctx context.Context, gov string, opts ReplayOptions) (items []*wire.ReplayItem, cursor string, done bool, err error) {
	if err := c.checkScope(gov, opts.State); err != nil {
		return nil, "", false, err
	}
	if err := checkLimit(wire.OpReplay, opts.Limit); err != nil {
		return nil, "", false, err
	}
	resp, err := c.do(ctx, &wire.Request{Op: wire.OpReplay, Governor: gov, State: opts.State, Latest: opts.Latest,
		Limit: opts.Limit, Cursor: opts.Cursor})
	if err != nil {
		return nil, "", false, err
	}
	for _, it := range resp.Replay {
		if it == nil || (it.Snapshot == nil) == (it.Event == nil) {
			return nil, "", false, protocolErrorf("replay reply has an item that is not one snapshot or one event")
		}
	}
	if resp.Done != (resp.Cursor == "") {
		return nil, "", false, protocolErrorf("replay reply: done is %v with cursor %q", resp.Done, resp.Cursor)
	}
	return resp.Replay, resp.Cursor, resp.Done, nil
}

// ReplayAll iterates over every item of the replay opts selects, following
// cursors from opts.Cursor on; opts.Limit is the page size. A failure is
// yielded once, with a nil item, and ends the iteration.
func (c *Client) ReplayAll(ctx context.Context, gov string, opts ReplayOptions) iter.Seq2[*wire.ReplayItem, error] {
	return func(yield func(*wire.ReplayItem, error) bool) {
		for {
			items, next, done, err := c.Replay(ctx, gov, opts)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, it := range items {
				if !yield(it, nil) {
					return
				}
			}
			if done {
				return
			}
			if next == opts.Cursor {
				yield(nil, protocolErrorf("replay cursor %q did not advance", next))
				return
			}
			opts.Cursor = next
		}
	}
}
