package client

import (
	"context"
	"iter"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// ConflictsOptions select entries of a governor's conflict ledger.
type ConflictsOptions struct {
	// State restricts the query to one state's conflicts ("": every
	// state's).
	State string
	// Since and Until bound the decision time: Since <= time < Until; a
	// zero bound is open.
	Since, Until time.Time
	// Limit is the most entries in one page: the sidecar's default (100)
	// if zero, at most 1000. A page may hold fewer, even none, while it
	// returns a cursor: keep paging until the cursor is "".
	Limit int
	// Cursor continues a query: pass the cursor the previous page returned.
	Cursor string
}

// Conflicts returns one page of the conflict ledger of gov: the true
// conflicts this sidecar's pushes settled (both sides, the base, the
// resolver, the winner and why), oldest first, and the cursor of the next
// page ("" when the query is complete).
func (c *Client) Conflicts(ctx context.Context, gov string, opts ConflictsOptions) ([]*wire.Conflict, string, error) {
	if err := c.checkScope(gov, opts.State); err != nil {
		return nil, "", err
	}
	if err := checkLimit(wire.OpConflicts, opts.Limit); err != nil {
		return nil, "", err
	}
	req := &wire.Request{Op: wire.OpConflicts, Governor: gov, State: opts.State, Limit: opts.Limit, Cursor: opts.Cursor}
	if err := setTimeRange(req, opts.Since, opts.Until); err != nil {
		return nil, "", err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, "", err
	}
	for _, e := range resp.Conflicts {
		if e == nil {
			return nil, "", protocolErrorf("conflicts reply has a missing entry")
		}
	}
	return resp.Conflicts, resp.Cursor, nil
}

// ConflictsAll iterates over every ledger entry opts selects, following
// cursors from opts.Cursor on; opts.Limit is the page size. A failure is
// yielded once, with a nil entry, and ends the iteration.
func (c *Client) ConflictsAll(ctx context.Context, gov string, opts ConflictsOptions) iter.Seq2[*wire.Conflict, error] {
	return allPages("conflicts", opts.Cursor, func(cursor string) ([]*wire.Conflict, string, error) {
		opts.Cursor = cursor
		return c.Conflicts(ctx, gov, opts)
	})
}

// allPages iterates over the entries of every page page returns, following
// cursors from cursor on. A failure (or a cursor that does not advance) is
// yielded once, with a zero entry, and ends the iteration. what names the
// op in errors.
func allPages[T any](what, cursor string, page func(cursor string) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		for {
			entries, next, err := page(cursor)
			if err != nil {
				yield(zero, err)
				return
			}
			for _, e := range entries {
				if !yield(e, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if next == cursor {
				yield(zero, protocolErrorf("%s cursor %q did not advance", what, next))
				return
			}
			cursor = next
		}
	}
}
