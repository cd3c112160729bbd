package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// testConflict makes a ledger record of k decided at at.
func testConflict(k Key, i int, at time.Time) *syncer.ConflictRecord {
	return &syncer.ConflictRecord{
		ID:          syncer.ConflictID(syncer.Key(k), fmt.Sprintf("n1-%d", i), "n2-1", 1),
		Key:         syncer.Key(k),
		Local:       conflict.Side{Value: []byte{0xa1, 'l'}, Version: 2, UpdatedAt: 5, Origin: "n1", OpID: fmt.Sprintf("n1-%d", i), Clock: conflict.Clock{Lamport: 2, HLC: 7, Vector: conflict.Vector{"n1": 2}}},
		Remote:      conflict.Side{Version: 2, Deleted: true, Origin: "n2", OpID: "n2-1", Clock: conflict.Clock{Lamport: 3, HLC: 9, Vector: conflict.Vector{"n1": 1, "n2": 1}}},
		BaseVersion: 1,
		Base:        &conflict.Base{Version: 1, Value: []byte{0xa1, 'b'}},
		Winner:      conflict.Remote,
		Resolver:    "causal>lww",
		Reason:      "because",
		Time:        at,
		Node:        "n1",
		Entries:     1,
		Omitted:     []string{"merged"},
	}
}

func ackConflicts(t *testing.T, s *Store, recs ...*syncer.ConflictRecord) {
	t.Helper()
	acks := make([]syncer.Ack, len(recs))
	for i, r := range recs {
		acks[i] = syncer.Ack{Key: r.Key, Outcome: syncer.OutcomeSuperseded, Conflict: r}
	}
	if err := s.Ack(context.Background(), acks); err != nil {
		t.Fatalf("ack: %v", err)
	}
}

func ledgerPage(t *testing.T, s *Store, q LedgerQuery) LedgerPage {
	t.Helper()
	p, err := s.Conflicts(context.Background(), q)
	if err != nil {
		t.Fatalf("conflicts %+v: %v", q, err)
	}
	return p
}

func ids(rs []syncer.ConflictRecord) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// TestLedgerStore: entries acked are stored once per id, round-trip every
// field, survive a restart, and are queried by governor, state, time range
// and pages.
func TestLedgerStore(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	t0 := time.Unix(1_900_000_000, 0)
	a, b, other := key("g", "a"), key("g", "b"), key("h", "a")
	var want []*syncer.ConflictRecord
	for i := range 6 {
		k := a
		if i%2 == 1 {
			k = b
		}
		want = append(want, testConflict(k, i, t0.Add(time.Duration(i)*time.Second)))
	}
	ackConflicts(t, s, want[3], want[0], want[1])
	ackConflicts(t, s, want[2], want[4], want[5], testConflict(other, 9, t0))
	again := *want[0]
	again.Time = t0.Add(time.Hour) // the same conflict decided again
	ackConflicts(t, s, &again)
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)

	all := ledgerPage(t, s, LedgerQuery{Governor: "g"})
	if all.Next != "" || len(all.Entries) != 6 {
		t.Fatalf("page %v next %q", ids(all.Entries), all.Next)
	}
	for i, r := range all.Entries {
		w := want[i]
		if r.ID != w.ID || r.Key != w.Key || !r.Time.Equal(w.Time) || r.Winner != w.Winner || r.Resolver != w.Resolver ||
			r.Reason != w.Reason || r.Node != w.Node || r.Entries != 1 || r.BaseVersion != 1 || r.Base == nil ||
			!bytes.Equal(r.Base.Value, w.Base.Value) || !bytes.Equal(r.Local.Value, w.Local.Value) || r.Remote.Value != nil ||
			!r.Remote.Deleted || r.Local.Clock.HLC != 7 || r.Remote.Clock.Vector["n2"] != 1 || r.Local.OpID != w.Local.OpID ||
			!slices.Equal(r.Omitted, w.Omitted) || r.Merged != nil {
			t.Fatalf("entry %d:\n got %+v\nwant %+v", i, r, *w)
		}
	}
	if p := ledgerPage(t, s, LedgerQuery{Governor: "g", State: "b"}); !slices.Equal(ids(p.Entries), ids([]syncer.ConflictRecord{*want[1], *want[3], *want[5]})) {
		t.Fatalf("state b: %v", ids(p.Entries))
	}
	p := ledgerPage(t, s, LedgerQuery{Governor: "g", From: t0.Add(time.Second), Until: t0.Add(3 * time.Second)})
	if !slices.Equal(ids(p.Entries), []string{want[1].ID, want[2].ID}) || p.Next != "" {
		t.Fatalf("range: %v %q", ids(p.Entries), p.Next)
	}
	var paged []string
	q := LedgerQuery{Governor: "g", Limit: 4}
	for range 5 {
		p := ledgerPage(t, s, q)
		paged = append(paged, ids(p.Entries)...)
		if p.Next == "" {
			break
		}
		q.Cursor = p.Next
	}
	if !slices.Equal(paged, ids(all.Entries)) {
		t.Fatalf("pages %v, want %v", paged, ids(all.Entries))
	}
	if p := ledgerPage(t, s, LedgerQuery{Governor: "g", MaxBytes: 1}); len(p.Entries) != 1 || p.Next == "" {
		t.Fatalf("byte-bounded page: %d entries, next %q", len(p.Entries), p.Next)
	}
	if p := ledgerPage(t, s, LedgerQuery{Governor: "h"}); len(p.Entries) != 1 || p.Entries[0].Key.Governor != "h" {
		t.Fatalf("governor h: %+v", p.Entries)
	}
	for _, q := range []LedgerQuery{
		{}, {Governor: "a/b"}, {Governor: "g", State: "x/y"}, {Governor: "g", Limit: -1},
		{Governor: "g", From: t0, Until: t0}, {Governor: "g", Cursor: "zz"}, {Governor: "g", Cursor: "00"},
	} {
		var fe *FieldError
		if _, err := s.Conflicts(context.Background(), q); !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) {
			t.Fatalf("query %+v: %v, want a *FieldError wrapping ErrInvalid", q, err)
		}
	}
}

// TestLedgerRetention: the oldest entries beyond the count limit and those
// older than the age limit are dropped; concurrent acks keep the count
// right.
func TestLedgerRetention(t *testing.T) {
	clock := newTestClock()
	s := openMem(t, func(o *Options) { o.Now = clock.Now; o.LedgerMaxEntries = 5; o.LedgerMaxAge = time.Hour })
	now := clock.Now()
	var all []*syncer.ConflictRecord
	for i := range 8 {
		all = append(all, testConflict(key("g", "a"), i, now.Add(time.Duration(i)*time.Millisecond)))
	}
	var wg sync.WaitGroup
	for _, r := range all {
		wg.Go(func() { ackConflicts(t, s, r) })
	}
	wg.Wait()
	p := ledgerPage(t, s, LedgerQuery{Governor: "g"})
	if got, want := ids(p.Entries), ids([]syncer.ConflictRecord{*all[3], *all[4], *all[5], *all[6], *all[7]}); !slices.Equal(got, want) {
		t.Fatalf("after 8 entries with a limit of 5: %v, want %v", got, want)
	}
	// Two hours later, one new entry: the old ones are past the age limit.
	clock.Set(now.Add(2 * time.Hour))
	fresh := testConflict(key("g", "a"), 99, now.Add(2*time.Hour))
	ackConflicts(t, s, fresh)
	if p := ledgerPage(t, s, LedgerQuery{Governor: "g"}); !slices.Equal(ids(p.Entries), []string{fresh.ID}) {
		t.Fatalf("after the age limit: %v", ids(p.Entries))
	}
	// A dropped entry's id is free again.
	again := *all[7]
	again.Time = clock.Now()
	ackConflicts(t, s, &again)
	if p := ledgerPage(t, s, LedgerQuery{Governor: "g"}); len(p.Entries) != 2 {
		t.Fatalf("re-added entry: %v", ids(p.Entries))
	}
}

// TestStoreBase: the record of a past version from the local event log.
func TestStoreBase(t *testing.T) {
	s := openMem(t)
	k := key("g", "a")
	mustPut(t, s, k, "v1")
	mustPut(t, s, k, "v2")
	mustDelete(t, s, k)
	ctx := context.Background()
	for v, want := range map[uint64]string{1: "v1", 2: "v2"} {
		rec, ok, err := s.Base(ctx, syncer.Key(k), v)
		if err != nil || !ok || rec.Version != v || rec.Deleted || rec.Clock.Vector[s.Origin()] != v {
			t.Fatalf("base v%d: %+v %v %v", v, rec, ok, err)
		}
		if got := mustEvents(t, s, k)[v-1].Value; !bytes.Equal(rec.Value, got) || want == "" {
			t.Fatalf("base v%d value %q, want the event's %q", v, rec.Value, got)
		}
	}
	if rec, ok, err := s.Base(ctx, syncer.Key(k), 3); err != nil || !ok || !rec.Deleted {
		t.Fatalf("base v3 (the deletion): %+v %v %v", rec, ok, err)
	}
	if _, ok, err := s.Base(ctx, syncer.Key(k), 4); err != nil || ok {
		t.Fatalf("base v4: %v %v, want not found", ok, err)
	}
}

// TestLedgerMergeTwoStores: two stores change different fields of the same
// map concurrently; under merge both changes survive, whichever pushes
// first, and the deciding store's ledger explains the value both hold. The
// base comes from the deciding store's own event log when it made the base
// version, and from the remote's history when it pulled it.
func TestLedgerMergeTwoStores(t *testing.T) {
	orig := []byte{0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x01} // {"a": 1, "b": 1}
	docA := []byte{0x82, 0xa1, 'a', 0x02, 0xa1, 'b', 0x01} // {"a": 2, "b": 1}
	docB := []byte{0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02} // {"a": 1, "b": 2}
	want := []byte{0x82, 0xa1, 'a', 0x02, 0xa1, 'b', 0x02} // {"a": 2, "b": 2}
	set, err := conflict.NewRegistry().Build(conflict.Config{Default: conflict.Choice{Resolver: conflict.NameMerge}})
	if err != nil {
		t.Fatal(err)
	}
	for _, creatorDecides := range []bool{false, true} {
		t.Run(fmt.Sprintf("creatorDecides=%v", creatorDecides), func(t *testing.T) {
			ctx := context.Background()
			remote := memremote.New()
			nodes := map[string]*syncNode{}
			for _, name := range []string{"na", "nb"} {
				n := newSyncNode(t, name, remote, "g")
				n.push = syncer.New(n.store, remote, syncer.Options{Resolvers: set})
				nodes[name] = n
			}
			a, b := nodes["na"], nodes["nb"]
			k := key("g", "doc")
			write := func(n *syncNode, v []byte) {
				if _, err := n.store.Write(ctx, Write{Key: k, Value: v}); err != nil {
					t.Fatal(err)
				}
			}
			write(a, orig)
			a.pushAll()
			b.pullAll()
			write(a, docA)
			write(b, docB)
			first, decider := a, b
			if creatorDecides {
				first, decider = b, a
			}
			first.pushAll()
			events := remote.Calls("events")
			if rep := decider.pushAll(); rep.Conflicts != 1 || rep.Pushed != 1 {
				t.Fatalf("deciding push %+v", rep)
			}
			if creatorDecides && remote.Calls("events") != events {
				t.Fatalf("the creator asked the remote for a base its own event log holds")
			}
			a.pullAll()
			b.pullAll()
			for _, n := range []*syncNode{a, b} {
				if got := n.get(k); !bytes.Equal(got.Value, want) || got.Pending {
					t.Fatalf("%s holds %x (pending %v), want %x", n.node, got.Value, got.Pending, want)
				}
			}
			p := ledgerPage(t, decider.store, LedgerQuery{Governor: "g", State: "doc"})
			if len(p.Entries) != 1 {
				t.Fatalf("decider's ledger: %+v", p.Entries)
			}
			r := p.Entries[0]
			if v, _ := r.Final(); r.Winner != conflict.Merged || !bytes.Equal(v, want) || r.Base == nil ||
				!bytes.Equal(r.Base.Value, orig) || r.Node != decider.store.Origin() {
				t.Fatalf("ledger entry %+v", r)
			}
			if p := ledgerPage(t, first.store, LedgerQuery{Governor: "g"}); len(p.Entries) != 0 {
				t.Fatalf("the first pusher recorded %d conflicts", len(p.Entries))
			}
			recs, err := remote.Conflicts(ctx, syncer.ConflictQuery{Governor: "g"})
			if err != nil || len(recs) != 1 || recs[0].ID != r.ID {
				t.Fatalf("remote ledger %+v %v", recs, err)
			}
		})
	}
}

// TestTimeLogPageStopsBeforeMaxBytes: a page of a time-ordered log ends
// before the entry that would take it past MaxBytes (it used to end after
// it, so one large entry could push a reply over the frame limit).
func TestTimeLogPageStopsBeforeMaxBytes(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	base := time.Now().UnixNano()
	var ops []kv
	for i := range 4 {
		ops = append(ops, kv{key: timeKey(kindLedger, base+int64(i), fmt.Sprint("e", i)), value: make([]byte, 100)})
	}
	if err := s.commitOps(ctx, ops); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ maxBytes, want int }{{1, 1}, {150, 1}, {200, 2}, {399, 3}, {400, 4}} {
		kept := 0
		next, err := s.scanTime(ctx, kindLedger, timeRange{Limit: 10, MaxBytes: tc.maxBytes, field: "conflicts"},
			func(key, v []byte) (bool, error) { kept++; return true, nil })
		if err != nil || kept != tc.want || (next == "") != (tc.want == 4) {
			t.Errorf("MaxBytes %d: %d entries (next %q), %v; want %d", tc.maxBytes, kept, next, err, tc.want)
		}
	}
}
