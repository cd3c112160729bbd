package localcache

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestTxLogRetentionAndQuery: entries older than TxLogMaxAge go when the
// retention runs (every txLogTrimEvery entries logged); queries filter by
// outcome, governor and time, and page with a cursor.
func TestTxLogRetentionAndQuery(t *testing.T) {
	ctx := context.Background()
	clk := newTestClock()
	s := openMem(t, func(o *Options) { o.Now = clk.Now })
	now := clk.Now()
	old := now.Add(-TxLogMaxAge - time.Hour)
	for i := range txLogTrimEvery {
		e := TxnLogEntry{ID: "t" + itoa(i), Time: now.Add(time.Duration(i) * time.Millisecond), Outcome: "committed", Attempts: 1,
			Ops: []TxnLogOp{{Op: "put", Key: key("g", "s"), Version: uint64(i + 1)}}}
		if i < 10 {
			e.Time = old.Add(time.Duration(i) * time.Millisecond)
		}
		if i%3 == 0 {
			e.Outcome, e.Code, e.Error = "failed", "VersionConflict", "version conflict"
			e.Ops[0].Key = key("h", "s")
		}
		if err := s.LogTxn(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.TxLog(ctx, TxLogQuery{Limit: MaxTxLogLimit})
	if err != nil || len(page.Entries) != txLogTrimEvery-10 || page.Entries[0].ID != "t10" || page.Next != "" {
		t.Fatalf("after retention: %d entries, first %+v, %v", len(page.Entries), page.Entries[0], err)
	}
	failed, err := s.TxLog(ctx, TxLogQuery{Outcome: "failed", Governor: "h", Limit: MaxTxLogLimit})
	if err != nil || len(failed.Entries) != 18 || failed.Entries[0].Code != "VersionConflict" || failed.Entries[0].Ops[0].Governor != "h" {
		t.Fatalf("failed transactions of h: %d, %v", len(failed.Entries), err)
	}
	var ids []string
	q := TxLogQuery{From: now.Add(20 * time.Millisecond), Until: now.Add(30 * time.Millisecond), Limit: 4}
	for {
		p, err := s.TxLog(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Entries {
			ids = append(ids, e.ID)
		}
		if q.Cursor = p.Next; q.Cursor == "" {
			break
		}
	}
	if len(ids) != 10 || ids[0] != "t20" || ids[9] != "t29" {
		t.Fatalf("paged time range: %v", ids)
	}
	var fe *FieldError
	for _, bad := range []TxLogQuery{{Limit: -1}, {Cursor: "zz"}, {Governor: "a/b"}, {From: now, Until: now}} {
		if _, err := s.TxLog(ctx, bad); !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
			t.Errorf("query %+v: %v, want an invalid field", bad, err)
		}
	}
}
