package localcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

func wantWrongState(t testing.TB, err error, expected, actual string, version uint64, notMachine bool) {
	t.Helper()
	var ws *WrongStateError
	if !errors.Is(err, ErrWrongState) || !errors.As(err, &ws) {
		t.Fatalf("err = %v, want a wrong state", err)
	}
	if ws.Expected != expected || ws.Actual != actual || ws.Version != version || ws.NotMachine != notMachine {
		t.Fatalf("wrong state %+v, want expected %q actual %q version %d not machine %v", ws, expected, actual, version, notMachine)
	}
}

// A machine whose value is its state's name: created from no state, moved
// by transitions, each one event named by its action.
func TestTransitionStringMachine(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("orders", "o1")
	rec, err := s.Transition(ctx, Transition{Key: k, To: "open", Action: "create", Actor: "ann", Reason: "new order"}, nil)
	if err != nil || rec.Version != 1 {
		t.Fatalf("create: %+v, %v", rec, err)
	}
	if _, err := s.Transition(ctx, Transition{Key: k, To: "open", Action: "create"}, nil); err == nil {
		t.Fatal("creating an existing machine succeeded")
	} else {
		wantWrongState(t, err, "", "open", 1, false)
	}
	if _, err := s.Transition(ctx, Transition{Key: k, From: "paid", To: "shipped", Action: "ship"}, nil); err == nil {
		t.Fatal("a transition from the wrong state succeeded")
	} else {
		wantWrongState(t, err, "paid", "open", 1, false)
	}
	if _, err := s.Transition(ctx, Transition{Key: k, From: "open", To: "paid", Action: "pay"}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, k)
	if err != nil || string(got.Value) != string(msgpackOf("paid")) || got.Version != 2 {
		t.Fatalf("after pay: %+v, %v", got, err)
	}
	evs := mustEvents(t, s, k)
	if len(evs) != 2 || evs[0].Action != "create" || evs[1].Action != "pay" || evs[0].Change.Actor != "ann" ||
		evs[0].Change.Reason != "new order" || evs[1].FromVersion != 1 {
		t.Fatalf("events %+v", evs)
	}
	page := mustQuery(t, s, EventQuery{Governor: "orders", Action: "pay"})
	if len(page.Events) != 1 || page.Events[0].ToVersion != 2 {
		t.Fatalf("events of action pay: %+v", page.Events)
	}
	if page := mustQuery(t, s, EventQuery{Governor: "orders", Action: ActionPut}); len(page.Events) != 0 {
		t.Fatalf("transitions listed as plain puts: %+v", page.Events)
	}
	// The shared store gets a put.
	entries, err := s.Pending(ctx, 0, 0)
	if err != nil || len(entries) != 2 || entries[1].Event.Action != ActionPut || string(entries[1].Record.Value) != string(msgpackOf("paid")) {
		t.Fatalf("pending: %+v, %v", entries, err)
	}
	if rep, err := s.Validate(ctx, "orders", ""); err != nil || !rep.OK() {
		t.Fatalf("validate: %+v, %v", rep, err)
	}
}

// A machine whose value is a map with a "state" entry keeps its other
// entries byte for byte; a transition may also carry a whole new value.
func TestTransitionMapMachine(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("orders", "o2")
	v1 := msgpackOf(map[string]any{"amount": 12.5, "items": []any{"a", int64(2)}, "state": "open", "z": []byte{1, 2}})
	if _, err := s.Write(ctx, Write{Key: k, Value: v1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Transition(ctx, Transition{Key: k, From: "open", To: "paid-in-full", Action: "pay"}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := parseMachine(got.Value)
	if !ok || !m.isMap || m.state != "paid-in-full" {
		t.Fatalf("value after the transition is not the machine: %x", got.Value)
	}
	if want := string(v1[:m.start]) + string(appendMsgpackString(nil, "paid-in-full")) + string(v1[m.start+len("\xa4open"):]); string(got.Value) != want {
		t.Fatalf("value %x, want %x (other entries unchanged)", got.Value, want)
	}
	var decoded map[string]any
	if err := wire.Unmarshal(got.Value, &decoded); err != nil || decoded["amount"] != 12.5 || decoded["state"] != "paid-in-full" {
		t.Fatalf("decoded %v, %v", decoded, err)
	}

	v3 := msgpackOf(map[string]any{"state": "shipped", "carrier": "ups"})
	if _, err := s.Transition(ctx, Transition{Key: k, From: "paid-in-full", To: "shipped", Action: "ship", Value: v3}, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, k); string(got.Value) != string(v3) {
		t.Fatalf("value %x, want the transition's", got.Value)
	}
	// A value that names another machine state, or none, is refused.
	for _, v := range [][]byte{msgpackOf("lost"), msgpackOf(map[string]any{"status": "lost"}), msgpackOf(3)} {
		_, err := s.Transition(ctx, Transition{Key: k, From: "shipped", To: "delivered", Action: "deliver", Value: v}, nil)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "value" {
			t.Fatalf("transition with value %x: %v", v, err)
		}
	}
	// A state that is not a machine.
	if _, err := s.Write(ctx, Write{Key: k, Value: msgpackOf(map[string]any{"state": 7})}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Transition(ctx, Transition{Key: k, From: "shipped", To: "delivered", Action: "deliver"}, nil)
	wantWrongState(t, err, "shipped", "", 4, true)
}

func TestTransitionInvalid(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("g", "m")
	long := string(make([]byte, MaxActionSize+1))
	for _, c := range []struct {
		t     Transition
		field string
	}{
		{Transition{Key: k, From: "a", Action: "go"}, "to"},
		{Transition{Key: k, From: "a", To: "b"}, "action"},
		{Transition{Key: k, From: "a", To: "b", Action: "put"}, "action"},
		{Transition{Key: k, From: "a", To: "b", Action: "delete"}, "action"},
		{Transition{Key: k, From: "a", To: "b", Action: long}, "action"},
		{Transition{Key: k, From: "a", To: "\xff", Action: "go"}, "to"},
		{Transition{Key: k, From: long, To: "b", Action: "go"}, "from"},
		{Transition{Key: key("g", ""), From: "a", To: "b", Action: "go"}, "state"},
	} {
		_, err := s.Transition(ctx, c.t, nil)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: %v, want invalid %s", c.t, err, c.field)
		}
	}
	if _, err := s.Write(ctx, Write{Key: k, Delete: true, Action: "x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a named delete: %v", err)
	}
}

// Of many transitions racing from one machine state, exactly one wins;
// every other names the winner's state.
func TestTransitionConcurrent(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("g", "race")
	if _, err := s.Transition(ctx, Transition{Key: k, To: "start", Action: "create"}, nil); err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		from := fmt.Sprintf("r%d", round)
		if round == 0 {
			from = "start"
		}
		const n = 32
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, errs[i] = s.Transition(ctx, Transition{Key: k, From: from, To: fmt.Sprintf("r%d-%d", round+1, i), Action: "step"}, nil)
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			if err == nil {
				if winner >= 0 {
					t.Fatalf("round %d: transitions %d and %d both won", round, winner, i)
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no transition won: %v", round, errs[0])
		}
		won := fmt.Sprintf("r%d-%d", round+1, winner)
		for i, err := range errs {
			if i != winner {
				var ws *WrongStateError
				if !errors.As(err, &ws) || ws.Actual != won || ws.Expected != from {
					t.Fatalf("round %d: loser %d: %v, want a wrong state naming %q", round, i, err, won)
				}
			}
		}
		// Move to a well-known name for the next round.
		if _, err := s.Transition(ctx, Transition{Key: k, From: won, To: fmt.Sprintf("r%d", round+1), Action: "rename"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(mustEvents(t, s, k)); got != 41 {
		t.Fatalf("%d events, want 1 + 2 per round", got)
	}
}

// A write that changes only the machine's data does not fail a racing
// transition: it re-reads and finds its state still expected.
func TestTransitionRetriesDataChanges(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("g", "m")
	if _, err := s.Write(ctx, Write{Key: k, Value: msgpackOf(map[string]any{"state": "a", "n": 0})}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	write := func(ctx context.Context, w Write) (Record, error) {
		calls++
		if calls == 1 { // another writer changes the data first
			if _, err := s.Write(ctx, Write{Key: k, Value: msgpackOf(map[string]any{"state": "a", "n": 1})}); err != nil {
				return Record{}, err
			}
		}
		return s.Write(ctx, w)
	}
	rec, err := s.Transition(ctx, Transition{Key: k, From: "a", To: "b", Action: "go"}, write)
	if err != nil || rec.Version != 3 || calls != 2 {
		t.Fatalf("transition: %+v, %v after %d writes", rec, err, calls)
	}
	var got map[string]any
	cur, _ := s.Get(ctx, k)
	if err := wire.Unmarshal(cur.Value, &got); err != nil || got["state"] != "b" || fmt.Sprint(got["n"]) != "1" {
		t.Fatalf("value %v, %v", got, err)
	}
}

func TestParseMachine(t *testing.T) {
	for _, c := range []struct {
		v     []byte
		state string
		ok    bool
	}{
		{msgpackOf("idle"), "idle", true},
		{msgpackOf(map[string]any{"state": "x", "a": map[string]any{"b": []any{1, 2.5, nil, true}}}), "x", true},
		{append(msgpackOf("idle"), 0xc0), "", false},                                                                  // trailing bytes
		{[]byte{0x82, 0xa5, 's', 't', 'a', 't', 'e', 0xa1, 'a', 0xa5, 's', 't', 'a', 't', 'e', 0xa1, 'b'}, "", false}, // "state" twice
		{[]byte{0x81, 0xa5, 's', 't', 'a', 't', 'e'}, "", false},                                                      // truncated
		{[]byte{0x81, 0xa1, 'x', 0xdc, 0xff, 0xff}, "", false},                                                        // a huge array that is not there
		{[]byte{0xc1}, "", false},
		{msgpackOf(map[string]any{"other": "x"}), "", false},
		{nil, "", false},
	} {
		m, ok := parseMachine(c.v)
		if ok != c.ok || (ok && m.state != c.state) {
			t.Errorf("parseMachine(%x) = %+v, %v; want %q, %v", c.v, m, ok, c.state, c.ok)
		}
	}
	long := string(make([]byte, 70000))
	for _, s := range []string{"", "a", string(make([]byte, 31)), string(make([]byte, 32)), string(make([]byte, 300)), long} {
		b := appendMsgpackString(nil, s)
		var got string
		if err := wire.Unmarshal(b, &got); err != nil || got != s {
			t.Errorf("string of %d bytes: %v", len(s), err)
		}
	}
}

// msgpackOf encodes v (a test value that always encodes).
func msgpackOf(v any) []byte {
	b, err := wire.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzParseMachine checks that parsing never panics and that a map
// machine's splice is a machine in the new state.
func FuzzParseMachine(f *testing.F) {
	f.Add(msgpackOf(map[string]any{"state": "a", "n": []any{1, "x"}}))
	f.Add(msgpackOf("s"))
	f.Fuzz(func(t *testing.T, v []byte) {
		m, ok := parseMachine(v)
		if !ok || !m.isMap {
			return
		}
		out := m.with(v, "next")
		if m2, ok := parseMachine(out); !ok || m2.state != "next" {
			t.Fatalf("splice of %x: %x does not parse", v, out)
		}
	})
}

// A transition's event keeps its action's name (event format 2); a named
// event that names a delete, or names nothing, does not decode.
func TestNamedEventCodec(t *testing.T) {
	e := Event{Key: key("g", "s"), Action: "approve", FromVersion: 1, ToVersion: 2, Value: []byte{0xa1, 'x'},
		Change: Change{Actor: "a", Reason: "r", Time: 5}, Origin: "n1", OpID: "n1-2", Clock: Clock{Lamport: 3, HLC: 4, Vector: map[string]uint64{"n1": 2}}}
	b := encodeEvent(&e)
	if b[0] != formatEventV2 {
		t.Fatalf("format %d, want %d", b[0], formatEventV2)
	}
	got, err := decodeEvent(e.Key, b)
	if err != nil || got.Action != "approve" || got.ToVersion != 2 || string(got.Value) != "\xa1x" || got.Clock.Vector["n1"] != 2 {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	if h, err := decodeEventHead(b); err != nil || h.action != "approve" || h.time != 5 {
		t.Fatalf("head %+v, %v", h, err)
	}
	if b := encodeEvent(&Event{Action: ActionPut}); b[0] != formatV1 {
		t.Fatalf("a put is written in format %d", b[0])
	}
	for _, bad := range [][]byte{
		{formatEventV2, actionDelete, 1, 'x'},
		{formatEventV2, actionPut, 0},
		append([]byte{formatEventV2, actionPut, 6}, "delete"...),
		append([]byte{formatEventV2, actionPut, 3}, "put"...),
	} {
		if _, err := decodeEventHead(bad); !errors.Is(err, errCorrupt) {
			t.Errorf("head of %x: %v", bad, err)
		}
	}
}
