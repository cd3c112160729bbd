package sockapi

import (
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Admin ops about the journal: pending (what waits for the shared store)
// and failed (what the shared store rejected for good).

// Pages of the failed list.
const (
	defaultFailedLimit = 100
	maxFailedLimit     = 1000
	// failedEntryOverhead bounds the encoded size of a failed entry beside
	// its names, op id and reason.
	failedEntryOverhead = 160
)

// opPending reports the journal's depth, the parked count and the oldest
// entry still waiting, with a page of receipts of the waiting changes:
// entries after req.After, at most limit (default 100, at most 1000, fewer
// to fit a frame); next continues them.
func (c *conn) opPending(req *wire.Request) {
	limit, e := pageLimit(req.Limit)
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	st := c.s.store.Stats()
	p := &wire.Pending{SharedStore: c.s.opts.Sync != nil, Depth: st.JournalDepth, Parked: st.Parked}
	if st.JournalDepth > 0 {
		oldest, err := c.s.store.Journal(c.ctx, 0, 1)
		var js []localcache.JournalEntry
		if err == nil {
			js, err = c.s.store.Journal(c.ctx, req.After, limit+1)
		}
		if err != nil {
			c.replyError(req.ID, c.storeError(wire.OpPending, localcache.Key{}, err))
			return
		}
		if len(oldest) > 0 {
			p.OldestSeq, p.OldestTime = oldest[0].Seq, oldest[0].Time
			p.OldestAgeMS = max(time.Since(time.Unix(0, oldest[0].Time)).Milliseconds(), 0)
		}
		more := len(js) > limit
		if more {
			js = js[:limit]
		}
		budget := c.s.opts.MaxFrame - frameReserve
		for i := range js {
			j := &js[i]
			budget -= failedEntryOverhead + len(j.Key.Governor) + len(j.Key.State) + len(j.OpID) + len(j.BatchID)
			if budget < 0 && len(p.Entries) > 0 {
				more = true
				break
			}
			p.Entries = append(p.Entries, &wire.PendingEntry{Seq: j.Seq, Governor: j.Key.Governor, State: j.Key.State,
				Version: j.Version, BaseVersion: j.BaseVersion, OpID: j.OpID, BatchID: j.BatchID, Time: j.Time})
		}
		if more && len(p.Entries) > 0 {
			p.Next = p.Entries[len(p.Entries)-1].Seq
		}
	}
	c.resp = wire.Response{ID: req.ID, Pending: p}
	c.out.put(&c.resp, "")
}

// pageLimit is the page size of pending and failed: 0 means 100, more than
// 1000 means 1000, negative is InvalidArgument.
func pageLimit(l int) (int, *wire.Error) {
	switch {
	case l < 0:
		return 0, invalid("limit", "limit must not be negative")
	case l == 0:
		return defaultFailedLimit, nil
	}
	return min(l, maxFailedLimit), nil
}

// opFailed returns one page of the failed list: entries after req.After,
// at most limit of them (default 100, at most 1000) and fewer when the
// page would not fit in a frame. next is the after of the next page, 0 when
// there is none.
func (c *conn) opFailed(req *wire.Request) {
	limit, e := pageLimit(req.Limit)
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	ps, err := c.s.store.Failed(c.ctx, req.After, limit+1)
	if err != nil {
		c.replyError(req.ID, c.storeError(wire.OpFailed, localcache.Key{}, err))
		return
	}
	more := len(ps) > limit
	if more {
		ps = ps[:limit]
	}
	budget := c.s.opts.MaxFrame - frameReserve
	out := make([]*wire.Failed, 0, len(ps))
	for i := range ps {
		p := &ps[i]
		budget -= failedEntryOverhead + len(p.Key.Governor) + len(p.Key.State) + len(p.OpID) + len(p.Reason)
		if budget < 0 && len(out) > 0 {
			more = true
			break
		}
		out = append(out, &wire.Failed{
			Seq:         p.Seq,
			Governor:    p.Key.Governor,
			State:       p.Key.State,
			Version:     p.Version,
			BaseVersion: p.BaseVersion,
			OpID:        p.OpID,
			Time:        p.Time,
			Reason:      p.Reason,
			ParkedAt:    p.ParkedAt,
		})
	}
	c.resp = wire.Response{ID: req.ID, Failed: out}
	if more && len(out) > 0 {
		c.resp.Next = out[len(out)-1].Seq
	}
	c.out.put(&c.resp, "limit")
	c.resp = wire.Response{}
}
