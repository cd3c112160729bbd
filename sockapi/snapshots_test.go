package sockapi

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Transitions over the socket: created from no state, moved by action, a
// wrong expected state is WrongState naming the state found.
func TestTransitionOp(t *testing.T) {
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	tr := func(from, to, action string) wire.Response {
		return c.call(wire.Request{Op: wire.OpTransition, Governor: "orders", State: "o1",
			FromState: from, ToState: to, Action: action, Actor: "ann"})
	}
	r := mustOK(t, tr("", "open", "create"))
	if r.Record.Version != 1 || !r.Record.Pending || r.Record.Value != nil {
		t.Fatalf("create: %+v", r.Record)
	}
	mustOK(t, tr("open", "paid", "pay"))
	r = tr("open", "shipped", "ship")
	expectError(t, r, wire.CodeWrongState, "")
	if m := r.Error.Machine; m == nil || m.Expected != "open" || m.Actual != "paid" || m.Version != 2 || m.NotMachine ||
		r.Error.Governor != "orders" || r.Error.State != "o1" || r.Error.Retryable {
		t.Fatalf("wrong state: %+v %+v", r.Error, r.Error.Machine)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpGet, Governor: "orders", State: "o1"}))
	if !bytes.Equal(r.Record.Value, mustMarshal(t, "paid")) {
		t.Fatalf("value %x", r.Record.Value)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpEvents, Governor: "orders", Action: "pay"}))
	if len(r.Events) != 1 || r.Events[0].Action != "pay" || r.Events[0].Version != 2 || r.Events[0].Change.Actor != "ann" {
		t.Fatalf("events of pay: %+v", r.Events)
	}
	// A map machine with a new value that names the new state.
	v := mustMarshal(t, map[string]any{"state": "shipped", "carrier": "ups"})
	mustOK(t, c.call(wire.Request{Op: wire.OpTransition, Governor: "orders", State: "o1", FromState: "paid", ToState: "shipped", Action: "ship", Value: v}))
	r = c.call(wire.Request{Op: wire.OpTransition, Governor: "orders", State: "o1", FromState: "shipped", ToState: "done", Action: "finish", Value: v})
	expectError(t, r, wire.CodeInvalidArgument, "value")
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "orders", State: "o1", Value: mustMarshal(t, 42)}))
	r = c.call(wire.Request{Op: wire.OpTransition, Governor: "orders", State: "o1", FromState: "shipped", ToState: "done", Action: "finish"})
	expectError(t, r, wire.CodeWrongState, "")
	if !r.Error.Machine.NotMachine {
		t.Fatalf("not a machine: %+v", r.Error.Machine)
	}

	long := strings.Repeat("x", localcache.MaxActionSize+1)
	for _, c2 := range []struct {
		name  string
		req   wire.Request
		code  wire.Code
		field string
	}{
		{"no to_state", wire.Request{FromState: "a", Action: "go"}, wire.CodeInvalidArgument, "to_state"},
		{"no action", wire.Request{FromState: "a", ToState: "b"}, wire.CodeInvalidArgument, "action"},
		{"put action", wire.Request{FromState: "a", ToState: "b", Action: "put"}, wire.CodeInvalidArgument, "action"},
		{"long action", wire.Request{FromState: "a", ToState: "b", Action: long}, wire.CodeTooLarge, "action"},
		{"bad from", wire.Request{FromState: "\xff", ToState: "b", Action: "go"}, wire.CodeInvalidArgument, "from_state"},
		{"if_version", wire.Request{FromState: "a", ToState: "b", Action: "go", IfVersion: u64(1)}, wire.CodeInvalidArgument, "if_version"},
		{"strong without shared store", wire.Request{FromState: "a", ToState: "b", Action: "go", Consistency: "strong"}, wire.CodeUnavailable, "consistency"},
		{"bad state", wire.Request{State: "a/b", FromState: "a", ToState: "b", Action: "go"}, wire.CodeInvalidArgument, "state"},
	} {
		req := c2.req
		req.Op, req.Governor = wire.OpTransition, "orders"
		if req.State == "" {
			req.State = "o2"
		}
		expectError(t, c.call(req), c2.code, c2.field)
	}
}

// Of transitions racing from one state over many connections, exactly one
// wins; the others are WrongState naming the winner's state.
func TestTransitionOpConcurrent(t *testing.T) {
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{})
	c0 := ts.hello()
	mustOK(t, c0.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", ToState: "idle", Action: "create"}))
	const n = 16
	resps := make([]wire.Response, n)
	var wg sync.WaitGroup
	for i := range n {
		c := ts.hello()
		wg.Go(func() {
			resps[i] = c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: "idle",
				ToState: fmt.Sprintf("busy-%d", i), Action: "start"})
		})
	}
	wg.Wait()
	won := ""
	for i, r := range resps {
		if r.Error == nil {
			if won != "" {
				t.Fatalf("two transitions won: %s and busy-%d", won, i)
			}
			won = fmt.Sprintf("busy-%d", i)
		}
	}
	for _, r := range resps {
		if r.Error != nil && (r.Error.Code != wire.CodeWrongState || r.Error.Machine.Actual != won) {
			t.Fatalf("loser: %+v, want WrongState naming %q", r.Error, won)
		}
	}
	if won == "" {
		t.Fatal("no transition won")
	}
}

// snapshot, cleanup and replay over the socket.
func TestSnapshotCleanupReplayOps(t *testing.T) {
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	for i := 1; i <= 6; i++ {
		mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: mustMarshal(t, i)}))
	}
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "b", Value: mustMarshal(t, "b")}))
	r := mustOK(t, c.call(wire.Request{Op: wire.OpSnapshot, Governor: "g", State: "a"}))
	if s := r.Snapshot; s.States != 1 || s.Taken != 1 || s.Snapshot == nil || s.Snapshot.Version != 6 || s.Snapshot.Value != nil ||
		s.Snapshot.TakenAt == 0 || s.Snapshot.OpID == "" {
		t.Fatalf("snapshot: %+v %+v", r.Snapshot, r.Snapshot.Snapshot)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpSnapshot, Governor: "g"}))
	if r.Snapshot.States != 2 || r.Snapshot.Taken != 1 || r.Snapshot.Snapshot != nil {
		t.Fatalf("governor snapshot: %+v", r.Snapshot)
	}
	expectError(t, c.call(wire.Request{Op: wire.OpSnapshot, Governor: "g", State: "none"}), wire.CodeNotFound, "")

	// The journal still holds every change (no shared store): cleanup cuts
	// nothing.
	r = mustOK(t, c.call(wire.Request{Op: wire.OpCleanup, Governor: "g", KeepEvents: 1}))
	if r.Cleanup.States != 2 || r.Cleanup.Cleaned != 0 || r.Cleanup.Events != 0 {
		t.Fatalf("cleanup with everything pending: %+v", r.Cleanup)
	}
	expectError(t, c.call(wire.Request{Op: wire.OpCleanup, Governor: "g"}), wire.CodeInvalidArgument, "max_age_ms")
	expectError(t, c.call(wire.Request{Op: wire.OpCleanup, Governor: "g", State: "a/b", KeepEvents: 1}), wire.CodeInvalidArgument, "state")

	var items []string
	q := wire.Request{Op: wire.OpReplay, Governor: "g", Latest: true, Limit: 1}
	for range 20 {
		r = mustOK(t, c.call(q))
		for _, it := range r.Replay {
			switch {
			case it.Snapshot != nil:
				items = append(items, fmt.Sprintf("%s:snap:%d", it.Snapshot.State, it.Snapshot.Version))
				if len(it.Snapshot.Value) == 0 {
					t.Fatalf("replay snapshot without its value: %+v", it.Snapshot)
				}
			case it.Event != nil:
				items = append(items, fmt.Sprintf("%s:%s:%d", it.Event.State, it.Event.Action, it.Event.Version))
			}
		}
		if r.Done != (r.Cursor == "") {
			t.Fatalf("done %v with cursor %q", r.Done, r.Cursor)
		}
		if r.Done {
			break
		}
		q.Cursor = r.Cursor
	}
	if want := "[a:snap:6 b:snap:1]"; fmt.Sprint(items) != want {
		t.Fatalf("replay %v, want %s", items, want)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpReplay, Governor: "g", State: "a"}))
	if len(r.Replay) != 6 || r.Replay[0].Event == nil || !r.Done {
		t.Fatalf("replay of a: %+v", r)
	}
	expectError(t, c.call(wire.Request{Op: wire.OpReplay, Governor: "g", Cursor: "bad"}), wire.CodeInvalidArgument, "cursor")
	expectError(t, c.call(wire.Request{Op: wire.OpReplay, Governor: "g", Limit: -1}), wire.CodeInvalidArgument, "limit")

	r = mustOK(t, c.call(wire.Request{Op: wire.OpValidate, Governor: "g"}))
	if !r.Report.OK || r.Report.Snapshots != 2 {
		t.Fatalf("validate: %+v", r.Report)
	}
}

// A store without snapshots refuses the ops, not retryable.
func TestEventSourcingNeedsStore(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{})
	c := ts.hello()
	for _, op := range []string{wire.OpSnapshot, wire.OpTransition, wire.OpCleanup, wire.OpReplay} {
		r := c.call(wire.Request{Op: op, Governor: "g", State: "s", ToState: "b", Action: "go", KeepEvents: 1})
		expectError(t, r, wire.CodeUnavailable, "")
		if r.Error.Retryable {
			t.Fatalf("%s: retryable", op)
		}
	}
}

// The new fields parse with their types, as the codec decodes them.
func TestParseEventSourcingFields(t *testing.T) {
	body := omap(t, "id", 1, "op", "cleanup", "governor", "g", "from_state", "a", "to_state", "b",
		"max_age_ms", 5, "keep_events", 7, "dry_run", true, "latest", true)
	var req wire.Request
	if _, e := parseRequest(body, &req); e != nil {
		t.Fatal(e)
	}
	if req.Op != wire.OpCleanup || req.FromState != "a" || req.ToState != "b" || req.MaxAgeMS != 5 || req.KeepEvents != 7 ||
		!req.DryRun || !req.Latest {
		t.Fatalf("parsed %+v", req)
	}
	for _, tc := range []struct {
		field string
		value any
	}{
		{"from_state", 1}, {"to_state", true}, {"max_age_ms", -1}, {"keep_events", "x"}, {"dry_run", 1}, {"latest", "yes"},
	} {
		id, e := parseRequest(omap(t, "id", 2, "op", "cleanup", tc.field, tc.value), &req)
		if e == nil || e.Code != wire.CodeInvalidArgument || e.Field != tc.field || id != 2 {
			t.Errorf("%s = %v: got id %d, %+v", tc.field, tc.value, id, e)
		}
	}
}

// strongStub is a shared store whose strong writes are the local store's
// batch writes; before, when set, runs once first (a concurrent change that
// reaches the shared store ahead of the write).
type strongStub struct {
	store  *localcache.Store
	mu     sync.Mutex
	before func()
}

func (s *strongStub) setBefore(f func()) {
	s.mu.Lock()
	s.before = f
	s.mu.Unlock()
}

func (s *strongStub) Fetch(context.Context, localcache.Key) error { return nil }
func (s *strongStub) FreshAt(string) (time.Time, bool)            { return time.Time{}, false }
func (s *strongStub) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	s.mu.Lock()
	f := s.before
	s.before = nil
	s.mu.Unlock()
	if f != nil {
		f()
	}
	return s.store.WriteBatch(ctx, ws)
}

// ReadStrong reads the local store: it is the shared store here.
func (s *strongStub) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	recs, err := s.store.GetMany(ctx, keys)
	return recs, 0, err
}

// A strong transition that loses its compare-and-set to a change of the
// machine's data reads again and succeeds; to a change of its state, it is
// WrongState naming the new state. A sync transition waits for the shared
// store.
func TestTransitionOpStrongAndSync(t *testing.T) {
	store := openHistoryStore(t)
	stub := &strongStub{store: store}
	ts := startServer(t, store, Options{Sync: stub})
	c := ts.hello()
	ctx := context.Background()
	k := localcache.Key{Governor: "g", State: "m"}
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "m", Value: mustMarshal(t, map[string]any{"state": "a", "n": 1})}))
	stub.setBefore(func() {
		if _, err := store.Write(ctx, localcache.Write{Key: k, Value: mustMarshal(t, map[string]any{"state": "a", "n": 2})}); err != nil {
			t.Error(err)
		}
	})
	r := mustOK(t, c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: "a", ToState: "b",
		Action: "go", Consistency: wire.WriteStrong}))
	if r.Record.Version != 3 || r.Record.Pending {
		t.Fatalf("strong transition: %+v", r.Record)
	}
	stub.setBefore(func() {
		if _, err := store.Write(ctx, localcache.Write{Key: k, Value: mustMarshal(t, "c")}); err != nil {
			t.Error(err)
		}
	})
	r = c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: "b", ToState: "d",
		Action: "go", Consistency: wire.WriteStrong})
	expectError(t, r, wire.CodeWrongState, "")
	if r.Error.Machine.Actual != "c" {
		t.Fatalf("strong transition lost to a state change: %+v", r.Error.Machine)
	}
	// Nothing pushes the journal here: a sync transition is stored, then
	// times out waiting for the shared store.
	r = c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: "c", ToState: "d",
		Action: "go", Consistency: wire.WriteSync, TimeoutMS: 50})
	expectError(t, r, wire.CodeTimeout, "")
	if got, err := store.Get(ctx, k); err != nil || !bytes.Equal(got.Value, mustMarshal(t, "d")) {
		t.Fatalf("after the sync transition: %+v, %v", got, err)
	}
}

// TestSnapshotGovernorPipelined: a governor-wide snapshot runs off the
// reader, which meanwhile reads the next request into the same buffer: the
// snapshot must take the governor it was asked for.
func TestSnapshotGovernorPipelined(t *testing.T) {
	store := openHistoryStore(t)
	ts := startServer(t, store, Options{})
	c := ts.hello()
	for _, st := range []string{"s1", "s2"} {
		mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "a", State: st, Value: mustMarshal(t, 1)}))
	}
	const n = 100
	for i := range n {
		c.send(&wire.Request{ID: uint64(2*i + 1000), Op: wire.OpSnapshot, Governor: "a"})
		c.send(&wire.Request{ID: uint64(2*i + 1001), Op: wire.OpGet, Governor: fmt.Sprint("other", i), State: "x"})
	}
	for range 2 * n {
		r := c.recv()
		if r.ID%2 == 0 && (r.Error != nil || r.Snapshot == nil || r.Snapshot.States != 2) {
			t.Fatalf("snapshot of a (id %d): %+v, %v", r.ID, r.Snapshot, r.Error)
		}
	}
}
