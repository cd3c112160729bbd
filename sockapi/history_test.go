package sockapi

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// stepClock is a wall clock that moves one second after every reading, so
// that every write gets its own change time.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(time.Second)
	return t
}

// openHistoryStore opens an in-memory localcache whose clock steps.
func openHistoryStore(t *testing.T) *localcache.Store {
	t.Helper()
	clk := &stepClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	st, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-test", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(context.Background()); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return st
}

func mustOK(t *testing.T, r wire.Response) wire.Response {
	t.Helper()
	if r.Error != nil {
		t.Fatalf("unexpected error: %+v", r.Error)
	}
	return r
}

// TestFlushFake: flush waits for the connection's earlier writes to reach
// the shared store; parked entries count as done; a timeout is retryable.
func TestFlushFake(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{Sync: newFakeSync(store)})
	c := ts.hello()
	val := mustMarshal(t, 1)

	r := mustOK(t, c.call(wire.Request{Op: wire.OpFlush}))
	if r.FlushedSeq != 0 {
		t.Fatalf("empty flush: %+v", r)
	}
	// A write pipelined before the flush is waited for.
	c.send(&wire.Request{ID: 100, Op: wire.OpPut, Governor: "g", State: "a", Value: val})
	c.send(&wire.Request{ID: 101, Op: wire.OpFlush})
	if r := c.recv(); r.ID != 100 || r.Error != nil {
		t.Fatalf("put: %+v", r)
	}
	if r, err := c.tryRecvWithin(50 * time.Millisecond); err == nil {
		t.Fatalf("flush answered before the shared store had the write: %+v", r)
	}
	store.settle(localcache.Key{Governor: "g", State: "a"}, "", 1)
	if r := c.recv(); r.ID != 101 || r.Error != nil || r.FlushedSeq != 1 {
		t.Fatalf("flush: %+v %+v", r, r.Error)
	}

	// Parked counts as flushed.
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "b", Value: val}))
	store.settle(localcache.Key{Governor: "g", State: "b"}, "rejected", 0)
	if r := mustOK(t, c.call(wire.Request{Op: wire.OpFlush})); r.FlushedSeq != 2 {
		t.Fatalf("flush after park: %+v", r)
	}

	// Timeout: retryable, nothing was written.
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "c", Value: val}))
	r = c.call(wire.Request{Op: wire.OpFlush, TimeoutMS: 30})
	expectError(t, r, wire.CodeTimeout, "")
	if !r.Error.Retryable || !strings.Contains(r.Error.Message, "nothing was written") {
		t.Fatalf("flush timeout: %+v", r.Error)
	}
}

// TestFlushLocalOnly: without a shared store flush is Unavailable, not
// retryable.
func TestFlushLocalOnly(t *testing.T) {
	ts := startServer(t, openLocalcache(t, ""), Options{})
	c := ts.hello()
	r := c.call(wire.Request{Op: wire.OpFlush})
	expectError(t, r, wire.CodeUnavailable, "")
	if r.Error.Retryable || !strings.Contains(r.Error.Message, "shared store") {
		t.Fatalf("local-only flush: %+v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpFlush, TimeoutMS: 1})
	expectError(t, r, wire.CodeUnavailable, "")
	r = c.call(wire.Request{Op: wire.OpFlush, Governor: "g"})
	expectError(t, r, wire.CodeUnavailable, "")
	r = c.call(wire.Request{Op: wire.OpFlush})
	expectError(t, r, wire.CodeUnavailable, "")
}

// TestFlushLocalcache: flush over the real store waits for the journal
// until the entries are acked.
func TestFlushLocalcache(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{Sync: newFakeSync(nil)})
	c := ts.hello()
	put := mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 1)}))
	r := c.call(wire.Request{Op: wire.OpFlush, TimeoutMS: 20})
	expectError(t, r, wire.CodeTimeout, "")
	if !r.Error.Retryable {
		t.Fatalf("flush timeout not retryable: %+v", r.Error)
	}
	seq := store.LastSeq()
	c.send(&wire.Request{ID: 500, Op: wire.OpFlush, TimeoutMS: 10_000})
	if err := store.Ack(context.Background(), []syncer.Ack{{
		Key: syncer.Key{Governor: "g", State: "a"}, Seqs: []uint64{seq}, Outcome: syncer.OutcomePushed,
	}}); err != nil {
		t.Fatal(err)
	}
	if r := c.recv(); r.ID != 500 || r.Error != nil || r.FlushedSeq != seq {
		t.Fatalf("flush after ack (put %+v): %+v %+v", put.Record, r, r.Error)
	}
}

// historySetup writes a small history: g/a put 1, put 2, delete, put 4;
// g/b put 1.
func historySetup(t *testing.T) (*localcache.Store, *client) {
	t.Helper()
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	for i, w := range []wire.Request{
		{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 1), Actor: "alice", Reason: "first"},
		{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 2)},
		{Op: wire.OpDelete, Governor: "g", State: "a"},
		{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, 4)},
		{Op: wire.OpPut, Governor: "g", State: "b", Value: mustMarshal(t, "x")},
	} {
		if r := c.call(w); r.Error != nil {
			t.Fatalf("write %d: %+v", i, r.Error)
		}
	}
	return store, c
}

func TestEventsOp(t *testing.T) {
	store, c := historySetup(t)
	r := mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g"}))
	if len(r.Events) != 5 || r.Cursor != "" {
		t.Fatalf("events: %d events, cursor %q", len(r.Events), r.Cursor)
	}
	e := r.Events[0]
	if e.State != "a" || e.Version != 1 || e.FromVersion != 0 || e.Action != "put" || e.Change.Actor != "alice" ||
		e.Change.Reason != "first" || !strings.HasPrefix(e.Origin, "node-test~") || e.OpID == "" || e.Clock.Lamport == 0 || e.Clock.HLC == 0 ||
		e.Clock.Vector[e.Origin] == 0 || string(e.Value) != string(mustMarshal(t, 1)) {
		t.Fatalf("first event: %+v", e)
	}
	if d := r.Events[2]; d.Action != "delete" || d.Version != 3 || len(d.Value) != 0 {
		t.Fatalf("delete event: %+v", d)
	}

	// One state, one action, a time range.
	r = mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g", State: "a", Action: "put"}))
	if len(r.Events) != 3 {
		t.Fatalf("puts of a: %+v", r.Events)
	}
	from, to := r.Events[1].Change.Time, r.Events[2].Change.Time
	r = mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g", State: "a", From: from, To: to}))
	if len(r.Events) != 2 || r.Events[0].Version != 2 || r.Events[1].Version != 3 {
		t.Fatalf("time range: %+v", r.Events)
	}

	// Paging: every event once, in order.
	var got []uint64
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging never ends")
		}
		r := mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g", Limit: 2, Cursor: cursor}))
		if len(r.Events) > 2 {
			t.Fatalf("page of %d events over limit 2", len(r.Events))
		}
		for _, e := range r.Events {
			got = append(got, e.Version)
		}
		if r.Cursor == "" {
			break
		}
		cursor = r.Cursor
	}
	if len(got) != 5 {
		t.Fatalf("paged versions: %v", got)
	}

	// An unknown governor has no events.
	if r := mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "other"})); len(r.Events) != 0 || r.Cursor != "" {
		t.Fatalf("unknown governor: %+v", r)
	}

	// Invalid inputs.
	for _, tc := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
	}{
		{"no governor", wire.Request{Op: wire.OpEvents}, wire.CodeInvalidArgument, "governor"},
		{"bad state", wire.Request{Op: wire.OpEvents, Governor: "g", State: "a/b"}, wire.CodeInvalidArgument, "state"},
		{"bad action", wire.Request{Op: wire.OpEvents, Governor: "g", Action: "\xff"}, wire.CodeInvalidArgument, "action"},
		{"negative limit", wire.Request{Op: wire.OpEvents, Governor: "g", Limit: -1}, wire.CodeInvalidArgument, "limit"},
		{"empty range", wire.Request{Op: wire.OpEvents, Governor: "g", From: 5, To: 5}, wire.CodeInvalidArgument, "to"},
		{"bad cursor", wire.Request{Op: wire.OpEvents, Governor: "g", Cursor: "not a cursor"}, wire.CodeInvalidArgument, "cursor"},
		{"long cursor", wire.Request{Op: wire.OpEvents, Governor: "g", Cursor: strings.Repeat("x", maxCursor+1)}, wire.CodeTooLarge, "cursor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, c.call(tc.req), tc.code, tc.field)
		})
	}
	_ = store
}

// TestEventsMaxFrame: a page stays under max_frame, and paging still
// returns every event.
func TestEventsMaxFrame(t *testing.T) {
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{MaxFrame: minMaxFrame})
	c := ts.hello()
	big := mustMarshal(t, strings.Repeat("v", ts.srv.opts.MaxValue-16))
	const n = 5
	for i := 0; i < n; i++ {
		mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: big}))
	}
	seen, cursor := 0, ""
	for pages := 0; ; pages++ {
		if pages > 4*n {
			t.Fatal("paging never ends")
		}
		r := mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g", Cursor: cursor}))
		seen += len(r.Events)
		if r.Cursor == "" {
			break
		}
		cursor = r.Cursor
	}
	if seen != n {
		t.Fatalf("saw %d events, want %d", seen, n)
	}
}

func TestStateAtOp(t *testing.T) {
	_, c := historySetup(t)
	evs := mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "g", State: "a"})).Events
	if len(evs) != 4 {
		t.Fatalf("events: %d", len(evs))
	}
	// By version.
	r := mustOK(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", Version: 1}))
	p := r.Past
	if p == nil || p.Record.Version != 1 || string(p.Record.Value) != string(mustMarshal(t, 1)) || !p.Exact ||
		p.Record.Change.Actor != "alice" || p.OpID == "" || p.Clock.Lamport == 0 || p.Record.FromCache {
		t.Fatalf("state at version 1: %+v", p)
	}
	// By time: just after version 2, before the delete.
	r = mustOK(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", At: evs[1].Change.Time}))
	if r.Past == nil || r.Past.Record.Version != 2 || !r.Past.Exact || r.Past.UnknownThrough != 0 {
		t.Fatalf("state at time of v2: %+v", r.Past)
	}
	// Deleted then, before it existed, a version above the current one.
	expectError(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", At: evs[2].Change.Time}), wire.CodeNotFound, "")
	expectError(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", At: evs[0].Change.Time - 1}), wire.CodeNotFound, "")
	expectError(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", Version: 3}), wire.CodeNotFound, "")
	expectError(t, c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", Version: 99}), wire.CodeNotFound, "")

	for _, tc := range []struct {
		name  string
		req   wire.Request
		field string
	}{
		{"neither", wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a"}, "at"},
		{"both", wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", At: 1, Version: 1}, "version"},
		{"no state", wire.Request{Op: wire.OpStateAt, Governor: "g", Version: 1}, "state"},
		{"bad governor", wire.Request{Op: wire.OpStateAt, Governor: "__x__", State: "a", Version: 1}, "governor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, c.call(tc.req), wire.CodeInvalidArgument, tc.field)
		})
	}
}

func TestValidateOp(t *testing.T) {
	_, c := historySetup(t)
	r := mustOK(t, c.call(wire.Request{Op: wire.OpValidate, Governor: "g"}))
	rep := r.Report
	if rep == nil || !rep.OK || rep.States != 2 || rep.Events != 5 || rep.ViolationCount != 0 || len(rep.Violations) != 0 {
		t.Fatalf("validate: %+v", rep)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpValidate, Governor: "g", State: "b"}))
	if r.Report == nil || !r.Report.OK || r.Report.States != 1 || r.Report.Events != 1 {
		t.Fatalf("validate one state: %+v", r.Report)
	}
	expectError(t, c.call(wire.Request{Op: wire.OpValidate}), wire.CodeInvalidArgument, "governor")
	expectError(t, c.call(wire.Request{Op: wire.OpValidate, Governor: "g", State: "a/b"}), wire.CodeInvalidArgument, "state")
}

// TestHistoryAccess: events and state_at need read on the governor,
// validate and flush need admin.
func TestHistoryAccess(t *testing.T) {
	store := openHistoryStore(t)
	nobody := []uint32{}
	ts := startServer(t, store, Options{Access: Access{Admin: nobody, Governors: map[string]GovernorAccess{"g": {Read: nobody, Write: nobody}}}})
	c := ts.hello()
	for _, tc := range []struct {
		req   wire.Request
		field string
	}{
		{wire.Request{Op: wire.OpEvents, Governor: "g"}, "governor"},
		{wire.Request{Op: wire.OpStateAt, Governor: "g", State: "a", Version: 1}, "governor"},
		{wire.Request{Op: wire.OpValidate, Governor: "g"}, ""},
		{wire.Request{Op: wire.OpFlush}, ""},
	} {
		expectError(t, c.call(tc.req), wire.CodePermissionDenied, tc.field)
	}
}

// TestParseHistoryFields: from, to, at are Unix ns (non-negative, at most
// MaxInt64), version a non-negative integer, action a string.
func TestParseHistoryFields(t *testing.T) {
	var req wire.Request
	body := omap(t, "id", 1, "op", "events", "governor", "g", "from", 5, "to", 9, "action", "put", "at", 7, "version", 3)
	if _, e := parseRequest(body, &req); e != nil {
		t.Fatal(e)
	}
	if req.Op != wire.OpEvents || req.From != 5 || req.To != 9 || req.Action != "put" || req.At != 7 || req.Version != 3 {
		t.Fatalf("decoded %+v", req)
	}
	for _, tc := range []struct {
		field string
		value any
	}{
		{"from", -1},
		{"to", uint64(1 << 63)},
		{"at", "now"},
		{"at", 1.5},
		{"version", -3},
		{"version", "3"},
		{"action", 7},
	} {
		id, e := parseRequest(omap(t, "id", 2, "op", "events", tc.field, tc.value), &req)
		if e == nil || e.Code != wire.CodeInvalidArgument || e.Field != tc.field || id != 2 {
			t.Errorf("%s = %v: got id %d, %+v", tc.field, tc.value, id, e)
		}
	}
}

// historyStub is a real store whose history answers are set by the test.
type historyStub struct {
	*localcache.Store
	rep localcache.ValidationReport
	gap error
}

func (h *historyStub) Validate(ctx context.Context, governor, state string) (localcache.ValidationReport, error) {
	return h.rep, nil
}

func (h *historyStub) StateAtVersion(ctx context.Context, k localcache.Key, version uint64) (localcache.PastState, error) {
	return localcache.PastState{}, h.gap
}

// TestValidateReportFits: a report whose lists would pass max_frame is cut,
// its counts kept.
func TestValidateReportFits(t *testing.T) {
	k := localcache.Key{Governor: "g", State: "s"}
	stub := &historyStub{Store: openLocalcache(t, "")}
	for i := range 5000 {
		stub.rep.Violations = append(stub.rep.Violations, localcache.Violation{Key: k, Version: uint64(i + 1), Rule: "step",
			Message: strings.Repeat("m", 200)})
		stub.rep.Gaps = append(stub.rep.Gaps, localcache.Gap{Key: k, After: uint64(i), Through: uint64(i + 1), Reason: "elsewhere"})
	}
	stub.rep.ViolationCount, stub.rep.GapCount, stub.rep.States, stub.rep.Events = 5000, 5000, 1, 5000
	ts := startServer(t, stub, Options{MaxFrame: minMaxFrame})
	c := ts.hello()
	r := mustOK(t, c.call(wire.Request{Op: wire.OpValidate, Governor: "g"}))
	rep := r.Report
	if rep == nil || rep.OK || rep.ViolationCount != 5000 || rep.GapCount != 5000 || len(rep.Violations) == 0 ||
		len(rep.Violations) >= 5000 || rep.Violations[0].Version != 1 || rep.Violations[0].Rule != "step" {
		t.Fatalf("cut report: ok %v, %d of %d violations, %d of %d gaps", rep.OK, len(rep.Violations), rep.ViolationCount,
			len(rep.Gaps), rep.GapCount)
	}
}

// TestStateAtGap: an answer the local log does not hold is NotFound, saying
// which versions.
func TestStateAtGap(t *testing.T) {
	k := localcache.Key{Governor: "g", State: "s"}
	stub := &historyStub{Store: openLocalcache(t, ""), gap: &localcache.HistoryGapError{Op: "state_at", Key: k, After: 2, Through: 5}}
	ts := startServer(t, stub, Options{})
	c := ts.hello()
	r := c.call(wire.Request{Op: wire.OpStateAt, Governor: "g", State: "s", Version: 4})
	expectError(t, r, wire.CodeNotFound, "")
	if r.Error.Retryable || r.Error.State != "s" || !strings.Contains(r.Error.Message, "versions 3 to 5") ||
		!strings.Contains(r.Error.Message, "local history") {
		t.Fatalf("gap: %+v", r.Error)
	}
}

// TestFlushAtShutdown: a graceful shutdown ends a waiting flush at once.
func TestFlushAtShutdown(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{Sync: newFakeSync(store), SyncTimeout: time.Minute})
	c := ts.hello()
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1)}))
	c.send(&wire.Request{ID: 1 << 40, Op: wire.OpFlush})
	if r, err := c.tryRecvWithin(30 * time.Millisecond); err == nil {
		t.Fatalf("flush answered while the write is pending: %+v", r)
	}
	start := time.Now()
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	r := c.recv()
	expectError(t, r, wire.CodeUnavailable, "")
	<-stopped
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}
