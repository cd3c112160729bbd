package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/syncer"
)

// ledgerLine is what `tai-sidecar conflicts` prints of an entry.
type ledgerLine struct {
	ID       string          `json:"id"`
	Governor string          `json:"governor"`
	State    string          `json:"state"`
	Node     string          `json:"node"`
	Resolver string          `json:"resolver"`
	Reason   string          `json:"reason"`
	Winner   string          `json:"winner"`
	Value    json.RawMessage `json:"value"`
	Base     *struct {
		Value   json.RawMessage `json:"value"`
		Version uint64          `json:"version"`
	} `json:"base"`
	BaseVersion uint64 `json:"base_version"`
	Local       struct {
		Value  json.RawMessage `json:"value"`
		Origin string          `json:"origin"`
		OpID   string          `json:"op_id"`
		Clock  struct {
			HLC uint64 `json:"hlc"`
		} `json:"clock"`
	} `json:"local"`
	Remote struct {
		Value  json.RawMessage `json:"value"`
		Origin string          `json:"origin"`
		OpID   string          `json:"op_id"`
	} `json:"remote"`
}

// ledgerOf runs `conflicts GOV` on s and returns its lines by state.
func ledgerOf(t *testing.T, s *sidecar, gov string) map[string]ledgerLine {
	t.Helper()
	out, errOut, err := s.CLI("conflicts", gov)
	if err != nil {
		t.Fatalf("conflicts %s: %v\n%s", gov, err, errOut)
	}
	lines := map[string]ledgerLine{}
	for l := range strings.Lines(out) {
		var e ledgerLine
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("conflicts line %q: %v", l, err)
		}
		if _, dup := lines[e.State]; dup {
			t.Fatalf("two conflicts of %s/%s:\n%s", gov, e.State, out)
		}
		lines[e.State] = e
	}
	return lines
}

// decodedJSON decodes rec's value into a value of like's type and returns
// it as JSON.
func decodedJSON(rec *client.Record, like any) ([]byte, error) {
	v := reflect.New(reflect.TypeOf(like))
	if err := rec.Decode(v.Interface()); err != nil {
		return nil, err
	}
	return json.Marshal(v.Elem().Interface())
}

// sameJSON reports whether two JSON documents are equal.
func sameJSON(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// TestConflictLedgerTwoSidecars: b makes changes while it cannot reach
// Firestore, a makes conflicting ones meanwhile; when b is back, its pushes
// meet true conflicts and b decides them, under lww (governor l: one change
// of b loses, one wins) and under merge (governor m: both sidecars changed
// different fields of a document they both had). Every conflict is in b's
// ledger and in Firestore's, a's ledger is empty, both sidecars converge,
// and each entry explains the value both hold.
func TestConflictLedgerTwoSidecars(t *testing.T) {
	fs := newShared(t)
	args := func(node string) []string {
		return append(fs.args(node, "l", "m"), "--resolvers", "*=lww,m=merge", "--flush-timeout", "100ms")
	}
	a := startSidecar(t, args("node-a")...)
	b := startSidecar(t, args("node-b")...)
	ca := a.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	put := func(c *client.Client, gov, state string, v any) {
		t.Helper()
		if _, err := c.Put(ctx, gov, state, v); err != nil {
			t.Fatalf("put %s/%s: %v", gov, state, err)
		}
	}
	synced := func(c *client.Client, who, gov, state string) {
		t.Helper()
		eventually(t, 30*time.Second, func() string {
			rec, err := c.Get(ctx, gov, state)
			if err != nil || rec.Pending {
				return fmt.Sprintf("%s: %s/%s not in Firestore yet: %+v %v", who, gov, state, rec, err)
			}
			return ""
		})
	}

	// m/doc exists on both sidecars: made on a, pulled by b.
	put(ca, "m", "doc", map[string]int{"a": 1, "b": 1})
	eventually(t, 30*time.Second, func() string {
		rec, err := b.Client().Get(ctx, "m", "doc")
		if err != nil || rec.Version != 1 {
			return fmt.Sprintf("b: m/doc %+v %v", rec, err)
		}
		return ""
	})

	// b loses the shared store (nothing answers at its emulator address).
	b.Kill()
	b.Env = []string{"FIRESTORE_EMULATOR_HOST=127.0.0.1:1"}
	b.Start()
	cb := b.Client()
	put(cb, "l", "first", "from-b") // then a's later write: a's wins
	put(ca, "l", "first", "from-a")
	put(ca, "l", "second", "from-a") // then b's later write: b's wins
	synced(ca, "a", "l", "first")
	synced(ca, "a", "l", "second")
	put(cb, "l", "second", "from-b")
	put(ca, "m", "doc", map[string]int{"a": 2, "b": 1})
	put(cb, "m", "doc", map[string]int{"a": 1, "b": 2})
	synced(ca, "a", "m", "doc")

	// b is back: it pushes, meets the conflicts and decides them.
	b.Kill()
	b.Env = nil
	b.Start()
	cb = b.Client()
	want := map[string]any{"l/first": "from-a", "l/second": "from-b", "m/doc": map[string]int{"a": 2, "b": 2}}
	eventually(t, 60*time.Second, func() string {
		for k, w := range want {
			gov, state, _ := strings.Cut(k, "/")
			for who, c := range map[string]*client.Client{"a": ca, "b": cb} {
				rec, err := c.Get(ctx, gov, state)
				if err != nil {
					return fmt.Sprintf("%s: %s: %v", who, k, err)
				}
				got, err := decodedJSON(rec, w)
				wantJSON, _ := json.Marshal(w)
				if err != nil || rec.Pending || !sameJSON(got, wantJSON) {
					return fmt.Sprintf("%s: %s = %s (pending %v, %v), want %s", who, k, got, rec.Pending, err, wantJSON)
				}
			}
		}
		return ""
	})

	// b's ledger explains every value; a decided nothing.
	for _, gov := range []string{"l", "m"} {
		if got := ledgerOf(t, a, gov); len(got) != 0 {
			t.Fatalf("a's ledger of %s: %+v", gov, got)
		}
	}
	l, m := ledgerOf(t, b, "l"), ledgerOf(t, b, "m")
	wantWinner := map[string]string{"l/first": "remote", "l/second": "local", "m/doc": "merged"}
	wantResolver := map[string]string{"l/first": "lww", "l/second": "lww", "m/doc": "merge"}
	for k, w := range want {
		gov, state, _ := strings.Cut(k, "/")
		e, ok := l[state]
		if gov == "m" {
			e, ok = m[state]
		}
		if !ok {
			t.Fatalf("b's ledger has no conflict of %s", k)
		}
		wantValue, _ := json.Marshal(w)
		if e.Winner != wantWinner[k] || e.Resolver != wantResolver[k] || !strings.HasPrefix(e.Node, "node-b~") || e.Reason == "" ||
			!sameJSON(e.Value, wantValue) || !strings.HasPrefix(e.Local.Origin, "node-b~") || !strings.HasPrefix(e.Remote.Origin, "node-a~") ||
			e.Local.OpID == "" || e.Remote.OpID == "" || e.Local.Clock.HLC == 0 {
			t.Fatalf("b's ledger entry of %s: %+v; want winner %s by %s, value %s", k, e, wantWinner[k], wantResolver[k], wantValue)
		}
		if gov == "m" {
			base := []byte(`{"a":1,"b":1}`)
			if e.BaseVersion != 1 || e.Base == nil || !sameJSON(e.Base.Value, base) {
				t.Fatalf("m/doc entry lacks its base %s: %+v", base, e.Base)
			}
		}
		// The same record, by id, in Firestore's ledger.
		recs, err := fs.remote.Conflicts(ctx, syncer.ConflictQuery{Governor: gov, State: state})
		if err != nil || len(recs) != 1 || recs[0].ID != e.ID || recs[0].Winner.String() != e.Winner || recs[0].Node != e.Node {
			t.Fatalf("Firestore's ledger of %s: %+v, %v; want entry %s", k, recs, err, e.ID)
		}
	}
	st, err := cb.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ConflictsByResolver["lww"] != 2 || st.ConflictsByResolver["merge"] != 1 || st.ConflictStorms != 0 {
		t.Fatalf("b's stats: conflicts %v, storms %d", st.ConflictsByResolver, st.ConflictStorms)
	}
}
