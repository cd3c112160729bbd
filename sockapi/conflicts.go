package sockapi

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// The conflict ledger over the socket (the conflicts op), and the counters
// of conflicts and stale reads in the stats op.

// ConflictLedger is an optional capability of a Store (found by type
// assertion; localcache.Store has it): the conflict ledger of the true
// conflicts this sidecar's pushes settled. Invalid arguments wrap
// localcache.ErrInvalid.
type ConflictLedger interface {
	Conflicts(ctx context.Context, q localcache.LedgerQuery) (localcache.LedgerPage, error)
}

// ConflictCounts are the push loop's conflict counters, for stats.
type ConflictCounts struct {
	ByResolver map[string]uint64 // true conflicts settled, by resolver
	Storms     uint64            // conflict storms detected
}

// SyncCounters is an optional capability of a Sync (found by type
// assertion): what the stats op reports of the shared store beside the
// server's own counters.
type SyncCounters interface {
	// ConflictCounts returns the push loop's conflict counters.
	ConflictCounts() ConflictCounts
	// FetchRepair is Sync.Fetch that also reports whether the local copy
	// was behind the shared store (and was repaired with its record).
	FetchRepair(ctx context.Context, k localcache.Key) (repaired bool, err error)
}

// readCounters count bounded and strong reads that found the local copy
// behind the shared store, and the states they repaired.
type readCounters struct {
	stale   atomic.Uint64
	repairs atomic.Uint64
}

// noteRepairs counts a read at mode that repaired n states.
func (r *readCounters) noteRepairs(m readMode, n int) {
	if n == 0 || m.level == readLocal {
		return
	}
	r.stale.Add(1)
	r.repairs.Add(uint64(n))
}

// addConflictStats fills in st's conflict and stale-read counters.
func (s *Server) addConflictStats(st *wire.Stats) {
	st.StaleReads, st.ReadRepairs = s.reads.stale.Load(), s.reads.repairs.Load()
	if sc, ok := s.opts.Sync.(SyncCounters); ok {
		cc := sc.ConflictCounts()
		st.ConflictsByResolver, st.ConflictStorms = cc.ByResolver, cc.Storms
	}
}

// opConflicts returns one page of the conflict ledger of a governor (or of
// one state): entries decided at from <= time < to (0: open), oldest
// first. limit: 0 means localcache.DefaultLedgerLimit, negative is
// InvalidArgument, above localcache.MaxLedgerLimit is lowered to it. The
// reply stays under max_frame (an entry alone over it is TooLarge); its
// cursor continues the query, and a page may be empty while the cursor is
// set.
func (c *conn) opConflicts(req *wire.Request) {
	e := checkHistoryScope(req)
	if e == nil {
		e = checkTimePage(req)
	}
	ledger, ok := c.s.store.(ConflictLedger)
	if e == nil && !ok {
		e = wire.Errorf(wire.CodeUnavailable, "this sidecar's store keeps no conflict ledger")
		e.Retryable = false
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	q := localcache.LedgerQuery{
		Governor: req.Governor,
		State:    req.State,
		Cursor:   req.Cursor,
		Limit:    min(req.Limit, localcache.MaxLedgerLimit),
		MaxBytes: c.s.opts.MaxFrame - frameReserve,
	}
	q.From, q.Until = timeBounds(req)
	page, err := ledger.Conflicts(c.ctx, q)
	if err != nil {
		c.replyError(req.ID, c.historyError(wire.OpConflicts, localcache.Key{Governor: req.Governor, State: req.State}, err))
		return
	}
	out := make([]*wire.Conflict, len(page.Entries))
	for i := range page.Entries {
		out[i] = wireConflict(&page.Entries[i])
	}
	c.resp = wire.Response{ID: req.ID, Conflicts: out, Cursor: page.Next}
	c.out.put(&c.resp, "limit")
	c.resp = wire.Response{}
}

// checkTimePage checks the paging fields of a query over a time-ordered
// log (conflicts, txlog): cursor, limit, from and to.
func checkTimePage(req *wire.Request) *wire.Error {
	switch {
	case len(req.Cursor) > maxCursor:
		return tooLarge("cursor", maxCursor, "cursor is %d bytes, limit %d", len(req.Cursor), maxCursor)
	case req.Limit < 0:
		return invalid("limit", "limit must not be negative")
	case req.From < 0 || req.To < 0:
		return invalid("from", "from and to must not be negative")
	case req.From != 0 && req.To != 0 && req.From >= req.To:
		return invalid("to", "to (%d) must be after from (%d)", req.To, req.From)
	}
	return nil
}

// timeBounds returns the time range of a query checked by checkTimePage
// (zero: open).
func timeBounds(req *wire.Request) (from, until time.Time) {
	if req.From != 0 {
		from = time.Unix(0, req.From)
	}
	if req.To != 0 {
		until = time.Unix(0, req.To)
	}
	return from, until
}

// wireConflict converts a ledger entry.
func wireConflict(r *syncer.ConflictRecord) *wire.Conflict {
	side := wireSide
	value, deleted := r.Final()
	w := &wire.Conflict{
		ID:          r.ID,
		Governor:    r.Key.Governor,
		State:       r.Key.State,
		Time:        r.Time.UnixNano(),
		Node:        r.Node,
		Resolver:    r.Resolver,
		Reason:      r.Reason,
		Winner:      r.Winner.String(),
		Entries:     r.Entries,
		BaseVersion: r.BaseVersion,
		Local:       side(r.Local),
		Remote:      side(r.Remote),
		Merged:      wire.Raw(r.Merged),
		Value:       wire.Raw(value),
		Deleted:     deleted,
		Omitted:     r.Omitted,
	}
	if b := r.Base; b != nil {
		w.Base = &wire.ConflictBase{Value: wire.Raw(b.Value), Version: b.Version, Deleted: b.Deleted}
	}
	return w
}

// wireSide converts one side of a conflict.
func wireSide(s conflict.Side) wire.ConflictSide {
	return wire.ConflictSide{Value: wire.Raw(s.Value), Version: s.Version, Deleted: s.Deleted, UpdatedAt: s.UpdatedAt,
		Origin: s.Origin, OpID: s.OpID, Clock: wire.Clock{Lamport: s.Clock.Lamport, HLC: s.Clock.HLC, Vector: s.Clock.Vector}}
}
