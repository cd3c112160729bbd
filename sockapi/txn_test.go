package sockapi

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

func u64p(v uint64) *uint64 { return &v }
func boolPtr(b bool) *bool  { return &b }

// TestTxnOp: a txn writes all its puts and deletes or nothing; a failed
// check or precondition is a VersionConflict naming the key and the op;
// every transaction is in the txlog, which filters and pages.
func TestTxnOp(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{})
	c := ts.hello()
	v := mustMarshal(t, 100)

	r := c.call(wire.Request{Op: wire.OpTxn, Actor: "teller", Reason: "open", Ops: []wire.TxnOp{
		{Op: wire.TxnPut, Governor: "bank", State: "alice", Value: v, IfAbsent: true},
		{Op: wire.TxnPut, Governor: "bank", State: "bob", Value: v},
		{Op: wire.TxnCheck, Governor: "bank", State: "closed", Exists: boolPtr(false)},
	}})
	if r.Error != nil || len(r.Records) != 2 || r.Txn == nil || r.Txn.Attempts != 1 || r.Txn.ID == "" {
		t.Fatalf("txn: %+v", r)
	}
	if rec := r.Records[1]; rec.State != "bob" || rec.Version != 1 || !rec.Pending || rec.Change.Actor != "teller" {
		t.Fatalf("bob's record: %+v", rec)
	}

	// A failed check: nothing written, the key and the op in the error.
	r = c.call(wire.Request{Op: wire.OpTxn, Ops: []wire.TxnOp{
		{Op: wire.TxnPut, Governor: "bank", State: "alice", Value: mustMarshal(t, 50), IfVersion: u64p(1)},
		{Op: wire.TxnDelete, Governor: "bank", State: "bob"},
		{Op: wire.TxnCheck, Governor: "other", State: "limit", IfVersion: u64p(3)},
	}})
	e := r.Error
	if e == nil || e.Code != wire.CodeVersionConflict || e.Governor != "other" || e.State != "limit" ||
		e.Expected == nil || *e.Expected != 3 || e.Actual == nil || *e.Actual != 0 || !strings.Contains(e.Message, "ops[2] (check if_version 3") {
		t.Fatalf("failed check: %+v", e)
	}
	got := c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "bank", State: "alice"}, {Governor: "bank", State: "bob"}}})
	if got.Error != nil || got.Records[0].Version != 1 || got.Records[1] == nil {
		t.Fatalf("after the failed txn: %+v", got)
	}
	// A failed precondition of a write.
	r = c.call(wire.Request{Op: wire.OpTxn, Ops: []wire.TxnOp{
		{Op: wire.TxnPut, Governor: "bank", State: "alice", Value: mustMarshal(t, 50), IfVersion: u64p(7)},
	}})
	if e := r.Error; e == nil || e.Code != wire.CodeVersionConflict || e.State != "alice" || *e.Actual != 1 {
		t.Fatalf("failed precondition: %+v", e)
	}
	// A transfer.
	r = c.call(wire.Request{Op: wire.OpTxn, Ops: []wire.TxnOp{
		{Op: wire.TxnPut, Governor: "bank", State: "alice", Value: mustMarshal(t, 90), IfVersion: u64p(1)},
		{Op: wire.TxnPut, Governor: "bank", State: "bob", Value: mustMarshal(t, 110), IfVersion: u64p(1)},
	}})
	if r.Error != nil || r.Records[0].Version != 2 || r.Records[1].Version != 2 {
		t.Fatalf("transfer: %+v", r)
	}

	// The txlog: four transactions, two failed.
	log := c.call(wire.Request{Op: wire.OpTxLog})
	if log.Error != nil || len(log.TxLog) != 4 || log.Cursor != "" {
		t.Fatalf("txlog: %+v", log)
	}
	first := log.TxLog[0]
	if first.Outcome != wire.TxnCommitted || first.Actor != "teller" || first.Consistency != wire.WriteAsync || first.Attempts != 1 ||
		len(first.Ops) != 3 || first.Ops[1].State != "bob" || first.Ops[1].Version != 1 || first.Ops[2].Op != wire.TxnCheck || first.Time == 0 {
		t.Fatalf("first txlog entry: %+v", first)
	}
	if failed := log.TxLog[1]; failed.Outcome != wire.TxnFailed || failed.Code != string(wire.CodeVersionConflict) || failed.Error == "" {
		t.Fatalf("failed txlog entry: %+v", failed)
	}
	if f := c.call(wire.Request{Op: wire.OpTxLog, Outcome: wire.TxnFailed}); len(f.TxLog) != 2 {
		t.Fatalf("failed transactions: %+v", f)
	}
	if f := c.call(wire.Request{Op: wire.OpTxLog, Governor: "other"}); len(f.TxLog) != 1 || f.TxLog[0].Outcome != wire.TxnFailed {
		t.Fatalf("transactions of governor other: %+v", f)
	}
	var pages [][]*wire.TxnLogEntry
	cursor := ""
	for {
		p := c.call(wire.Request{Op: wire.OpTxLog, Limit: 3, Cursor: cursor})
		if p.Error != nil {
			t.Fatal(p.Error)
		}
		pages = append(pages, p.TxLog)
		if cursor = p.Cursor; cursor == "" {
			break
		}
	}
	if len(pages) != 2 || len(pages[0]) != 3 || len(pages[1]) != 1 || pages[1][0].ID != log.TxLog[3].ID {
		t.Fatalf("pages of 3: %d pages", len(pages))
	}
	if p := c.call(wire.Request{Op: wire.OpTxLog, From: log.TxLog[3].Time}); len(p.TxLog) != 1 {
		t.Fatalf("from the last one: %+v", p)
	}
}

// TestTxnValidation: every malformed txn and txlog request is refused with
// a typed error naming the field, before anything is written.
func TestTxnValidation(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{})
	c := ts.hello()
	v := mustMarshal(t, 1)
	put := func(state string) wire.TxnOp {
		return wire.TxnOp{Op: wire.TxnPut, Governor: "g", State: state, Value: v}
	}
	many := func(n int, op func(i int) wire.TxnOp) []wire.TxnOp {
		out := make([]wire.TxnOp, n)
		for i := range out {
			out[i] = op(i)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
		limit int64
	}{
		{"no ops", wire.Request{}, wire.CodeInvalidArgument, "ops", 0},
		{"no op", wire.Request{Ops: []wire.TxnOp{{Governor: "g", State: "s", Value: v}}}, wire.CodeInvalidArgument, "ops[0].op", 0},
		{"unknown op", wire.Request{Ops: []wire.TxnOp{{Op: "upsert", Governor: "g", State: "s", Value: v}}}, wire.CodeInvalidArgument, "ops[0].op", 0},
		{"bad governor", wire.Request{Ops: []wire.TxnOp{put("a"), {Op: wire.TxnPut, Governor: "a/b", State: "s", Value: v}}}, wire.CodeInvalidArgument, "ops[1].governor", 0},
		{"reserved state", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnPut, Governor: "g", State: "__x__", Value: v}}}, wire.CodeInvalidArgument, "ops[0].state", 0},
		{"key twice", wire.Request{Ops: []wire.TxnOp{put("a"), put("b"), put("a")}}, wire.CodeInvalidArgument, "ops[2].state", 0},
		{"write and check", wire.Request{Ops: []wire.TxnOp{put("a"), {Op: wire.TxnCheck, Governor: "g", State: "a", IfVersion: u64p(1)}}}, wire.CodeInvalidArgument, "ops[1].state", 0},
		{"put without value", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnPut, Governor: "g", State: "s"}}}, wire.CodeInvalidArgument, "ops[0].value", 0},
		{"delete with value", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnDelete, Governor: "g", State: "s", Value: v}}}, wire.CodeInvalidArgument, "ops[0].value", 0},
		{"put with exists", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnPut, Governor: "g", State: "s", Value: v, Exists: boolPtr(true)}}}, wire.CodeInvalidArgument, "ops[0].exists", 0},
		{"check without precondition", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnCheck, Governor: "g", State: "s"}}}, wire.CodeInvalidArgument, "ops[0].if_version", 0},
		{"check with two", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnCheck, Governor: "g", State: "s", IfVersion: u64p(1), Exists: boolPtr(true)}}}, wire.CodeInvalidArgument, "ops[0].if_version", 0},
		{"check with value", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnCheck, Governor: "g", State: "s", Value: v, IfAbsent: true}}}, wire.CodeInvalidArgument, "ops[0].value", 0},
		{"if_version contradicts if_absent", wire.Request{Ops: []wire.TxnOp{{Op: wire.TxnPut, Governor: "g", State: "s", Value: v, IfAbsent: true, IfVersion: u64p(2)}}}, wire.CodeInvalidArgument, "ops[0].if_version", 0},
		{"too many ops", wire.Request{Ops: many(501, func(i int) wire.TxnOp {
			return wire.TxnOp{Op: wire.TxnCheck, Governor: "g", State: strconv.Itoa(i), IfVersion: u64p(0)}
		})}, wire.CodeTooLarge, "ops", 500},
		{"too many writes", wire.Request{Ops: many(251, func(i int) wire.TxnOp { return put(strconv.Itoa(i)) })}, wire.CodeTooLarge, "ops", 250},
		{"bad consistency", wire.Request{Ops: []wire.TxnOp{put("a")}, Consistency: "bounded"}, wire.CodeInvalidArgument, "consistency", 0},
		{"strong without a shared store", wire.Request{Ops: []wire.TxnOp{put("a")}, Consistency: wire.WriteStrong}, wire.CodeUnavailable, "consistency", 0},
		{"bad fence", wire.Request{Ops: []wire.TxnOp{put("a")}, Fence: &wire.Fence{Resource: "r"}}, wire.CodeInvalidArgument, "fence.token", 0},
	} {
		tc.req.Op = wire.OpTxn
		r := c.call(tc.req)
		if e := r.Error; e == nil || e.Code != tc.code || e.Field != tc.field || tc.limit != 0 && e.Limit != tc.limit {
			t.Errorf("%s: %+v, want %s on %q", tc.name, e, tc.code, tc.field)
		}
	}
	// Wrong msgpack types, sent as raw maps.
	for _, tc := range []struct {
		name  string
		ops   any
		field string
	}{
		{"ops not an array", map[string]any{"op": "put"}, "ops"},
		{"op entry not a map", []any{"put"}, "ops[0]"},
		{"exists not a boolean", []any{map[string]any{"op": "check", "governor": "g", "state": "s", "exists": "yes"}}, "ops[0].exists"},
		{"if_version not an integer", []any{map[string]any{"op": "check", "governor": "g", "state": "s", "if_version": "1"}}, "ops[0].if_version"},
		{"op not a string", []any{map[string]any{"op": 1, "governor": "g", "state": "s"}}, "ops[0].op"},
	} {
		id := c.id()
		c.send(map[string]any{"id": id, "op": "txn", "ops": tc.ops})
		r := c.recv()
		if e := r.Error; r.ID != id || e == nil || e.Code != wire.CodeInvalidArgument || e.Field != tc.field {
			t.Errorf("%s: %+v, want InvalidArgument on %q", tc.name, r.Error, tc.field)
		}
	}
	if d := store.Depth(); d != 0 {
		t.Fatalf("journal depth %d after refused transactions", d)
	}
	for _, tc := range []struct {
		req   wire.Request
		field string
	}{
		{wire.Request{Outcome: "maybe"}, "outcome"},
		{wire.Request{Governor: "a/b"}, "governor"},
		{wire.Request{Limit: -1}, "limit"},
		{wire.Request{From: 5, To: 5}, "to"},
		{wire.Request{Cursor: "zz"}, "cursor"},
	} {
		tc.req.Op = wire.OpTxLog
		if r := c.call(tc.req); r.Error == nil || r.Error.Code != wire.CodeInvalidArgument || r.Error.Field != tc.field {
			t.Errorf("txlog %+v: %+v, want InvalidArgument on %q", tc.req, r.Error, tc.field)
		}
	}
}
