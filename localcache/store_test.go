package localcache

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestPreconditions(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	type state int
	const (
		absent state = iota // never written
		live                // v1
		gone                // v1 put, v2 tombstone
	)
	tests := []struct {
		name      string
		start     state
		w         Write // Key is filled in
		wantVer   uint64
		wantDel   bool
		conflict  *[2]uint64 // expected, actual
		wantError error
	}{
		{name: "put absent", start: absent, w: Write{Value: []byte("x")}, wantVer: 1},
		{name: "put absent if_absent", start: absent, w: Write{Value: []byte("x"), IfAbsent: true}, wantVer: 1},
		{name: "put absent if_version 0", start: absent, w: Write{Value: []byte("x"), IfVersion: u64(0)}, wantVer: 1},
		{name: "put absent if_absent and if_version 0", start: absent, w: Write{Value: []byte("x"), IfAbsent: true, IfVersion: u64(0)}, wantVer: 1},
		{name: "put absent if_version 1", start: absent, w: Write{Value: []byte("x"), IfVersion: u64(1)}, conflict: &[2]uint64{1, 0}},
		{name: "put live", start: live, w: Write{Value: []byte("x")}, wantVer: 2},
		{name: "put live if_absent", start: live, w: Write{Value: []byte("x"), IfAbsent: true}, conflict: &[2]uint64{0, 1}},
		{name: "put live if_version 1", start: live, w: Write{Value: []byte("x"), IfVersion: u64(1)}, wantVer: 2},
		{name: "put live if_version 0", start: live, w: Write{Value: []byte("x"), IfVersion: u64(0)}, conflict: &[2]uint64{0, 1}},
		{name: "put live if_version 2", start: live, w: Write{Value: []byte("x"), IfVersion: u64(2)}, conflict: &[2]uint64{2, 1}},
		{name: "put gone", start: gone, w: Write{Value: []byte("x")}, wantVer: 3},
		{name: "put gone if_absent", start: gone, w: Write{Value: []byte("x"), IfAbsent: true}, wantVer: 3},
		{name: "put gone if_version 0", start: gone, w: Write{Value: []byte("x"), IfVersion: u64(0)}, wantVer: 3},
		{name: "put gone if_version 2", start: gone, w: Write{Value: []byte("x"), IfVersion: u64(2)}, conflict: &[2]uint64{2, 0}},
		{name: "delete live", start: live, w: Write{Delete: true}, wantVer: 2, wantDel: true},
		{name: "delete live if_version 1", start: live, w: Write{Delete: true, IfVersion: u64(1)}, wantVer: 2, wantDel: true},
		{name: "delete live if_version 3", start: live, w: Write{Delete: true, IfVersion: u64(3)}, conflict: &[2]uint64{3, 1}},
		{name: "delete live if_absent", start: live, w: Write{Delete: true, IfAbsent: true}, conflict: &[2]uint64{0, 1}},
		{name: "delete absent", start: absent, w: Write{Delete: true}, wantError: ErrNotFound},
		{name: "delete gone", start: gone, w: Write{Delete: true}, wantError: ErrNotFound},
		{name: "delete gone if_version 2", start: gone, w: Write{Delete: true, IfVersion: u64(2)}, conflict: &[2]uint64{2, 0}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := key("pre", "k"+itoa(i))
			switch tt.start {
			case live:
				mustPut(t, s, k, "old")
			case gone:
				mustPut(t, s, k, "old")
				mustDelete(t, s, k)
			}
			eventsBefore := len(mustEvents(t, s, k))
			journalBefore := len(mustJournal(t, s))
			w := tt.w
			w.Key = k
			rec, err := s.Write(ctx, w)
			switch {
			case tt.conflict != nil:
				wantConflict(t, err, tt.conflict[0], tt.conflict[1])
			case tt.wantError != nil:
				if !errors.Is(err, tt.wantError) {
					t.Fatalf("err = %v, want %v", err, tt.wantError)
				}
				var ke *KeyError
				if !errors.As(err, &ke) || ke.Key != k {
					t.Fatalf("err = %#v, want *KeyError for %s", err, k)
				}
			default:
				if err != nil {
					t.Fatalf("write: %v", err)
				}
				if rec.Version != tt.wantVer || rec.Deleted != tt.wantDel || rec.Value != nil || !rec.Pending {
					t.Fatalf("record = v%d deleted=%v value=%q pending=%v, want v%d deleted=%v, no value, pending",
						rec.Version, rec.Deleted, rec.Value, rec.Pending, tt.wantVer, tt.wantDel)
				}
				got, err := s.Get(ctx, k)
				if tt.wantDel {
					if !errors.Is(err, ErrNotFound) {
						t.Fatalf("get after delete: %v, want not found", err)
					}
				} else if err != nil || got.Version != tt.wantVer || string(got.Value) != "x" {
					t.Fatalf("get = v%d %q, %v; want v%d \"x\"", got.Version, got.Value, err, tt.wantVer)
				}
				if n := len(mustEvents(t, s, k)); n != eventsBefore+1 {
					t.Fatalf("events: %d, want %d", n, eventsBefore+1)
				}
				if n := len(mustJournal(t, s)); n != journalBefore+1 {
					t.Fatalf("journal: %d, want %d", n, journalBefore+1)
				}
				return
			}
			// A failed write leaves no trace.
			if n := len(mustEvents(t, s, k)); n != eventsBefore {
				t.Fatalf("events after failed write: %d, want %d", n, eventsBefore)
			}
			if n := len(mustJournal(t, s)); n != journalBefore {
				t.Fatalf("journal after failed write: %d, want %d", n, journalBefore)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	s := openMem(t, func(o *Options) { o.MaxValueSize = 16 })
	ctx := context.Background()
	ok := key("g", "s")
	long := strings.Repeat("x", 1501)
	tests := []struct {
		name  string
		w     Write
		want  error
		field string
	}{
		{"empty governor", Write{Key: key("", "s"), Value: []byte("v")}, ErrInvalid, "governor"},
		{"slash in governor", Write{Key: key("a/b", "s"), Value: []byte("v")}, ErrInvalid, "governor"},
		{"dotdot state", Write{Key: key("g", ".."), Value: []byte("v")}, ErrInvalid, "state"},
		{"dot state", Write{Key: key("g", "."), Value: []byte("v")}, ErrInvalid, "state"},
		{"reserved state", Write{Key: key("g", "__x__"), Value: []byte("v")}, ErrInvalid, "state"},
		{"long state", Write{Key: key("g", long), Value: []byte("v")}, ErrInvalid, "state"},
		{"bad utf8 state", Write{Key: key("g", "\xff"), Value: []byte("v")}, ErrInvalid, "state"},
		{"put without value", Write{Key: ok}, ErrInvalid, "value"},
		{"put with empty value", Write{Key: ok, Value: []byte{}}, ErrInvalid, "value"},
		{"delete with value", Write{Key: ok, Delete: true, Value: []byte("v")}, ErrInvalid, "value"},
		{"value too large", Write{Key: ok, Value: make([]byte, 17)}, ErrTooLarge, "value"},
		{"actor too large", Write{Key: ok, Value: []byte("v"), Actor: strings.Repeat("a", 1025)}, ErrTooLarge, "actor"},
		{"reason too large", Write{Key: ok, Value: []byte("v"), Reason: strings.Repeat("r", 1025)}, ErrTooLarge, "reason"},
		{"if_absent with if_version 3", Write{Key: ok, Value: []byte("v"), IfAbsent: true, IfVersion: u64(3)}, ErrInvalid, "if_version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(err error) {
				t.Helper()
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tt.field {
					t.Fatalf("err = %v, want field %q", err, tt.field)
				}
				var ke *KeyError
				if !errors.As(err, &ke) || ke.Key != tt.w.Key {
					t.Fatalf("err = %v, want *KeyError for %s", err, tt.w.Key)
				}
			}
			_, err := s.Write(ctx, tt.w)
			check(err)
			// The same write inside a batch fails the batch.
			_, err = s.WriteBatch(ctx, []Write{{Key: key("g", "fine"), Value: []byte("v")}, tt.w})
			check(err)
		})
	}
	t.Run("value at limit", func(t *testing.T) {
		if _, err := s.Write(ctx, Write{Key: key("g", "limit"), Value: make([]byte, 16), Actor: strings.Repeat("a", 1024)}); err != nil {
			t.Fatalf("write at limit: %v", err)
		}
	})
	t.Run("batch too large", func(t *testing.T) {
		ws := make([]Write, 501)
		for i := range ws {
			ws[i] = Write{Key: key("g", "b"+itoa(i)), Value: []byte("v")}
		}
		_, err := s.WriteBatch(ctx, ws)
		var fe *FieldError
		if !errors.Is(err, ErrTooLarge) || !errors.As(err, &fe) || fe.Field != "batch" || fe.Limit != 500 {
			t.Fatalf("err = %v, want batch too large", err)
		}
	})
	t.Run("duplicate key in batch", func(t *testing.T) {
		_, err := s.WriteBatch(ctx, []Write{
			{Key: key("g", "d"), Value: []byte("1")},
			{Key: key("g", "e"), Value: []byte("2")},
			{Key: key("g", "d"), Delete: true},
		})
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("err = %v, want invalid", err)
		}
	})
	t.Run("get invalid name", func(t *testing.T) {
		if _, err := s.Get(ctx, key("g", "a/b")); !errors.Is(err, ErrInvalid) {
			t.Fatalf("get: %v, want invalid", err)
		}
		if _, _, err := s.List(ctx, "", "", "", 10, 0); !errors.Is(err, ErrInvalid) {
			t.Fatalf("list: %v, want invalid", err)
		}
	})
	// Only the "value at limit" write got through.
	if js := mustJournal(t, s); len(js) != 1 || js[0].Key != key("g", "limit") {
		t.Fatalf("journal = %+v, want only g/limit", js)
	}
}

func TestWriteCopiesValue(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	buf := []byte("hello")
	k := key("g", "s")
	if _, err := s.Write(ctx, Write{Key: k, Value: buf}); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX") // the caller reuses its buffer
	rec, err := s.Get(ctx, k)
	if err != nil || string(rec.Value) != "hello" {
		t.Fatalf("get = %q, %v; want hello", rec.Value, err)
	}
}

func TestTombstoneVersionsEventsJournal(t *testing.T) {
	clock := newTestClock()
	s := openMem(t, func(o *Options) { o.Now = clock.Now; o.NodeID = "node-a" })
	ctx := context.Background()
	k := key("orders", "o-1")

	steps := []struct {
		w       Write
		version uint64
	}{
		{Write{Key: k, Value: []byte("v1"), Actor: "alice", Reason: "create"}, 1},
		{Write{Key: k, Value: []byte("v2"), Actor: "bob", Reason: "update"}, 2},
		{Write{Key: k, Delete: true, Actor: "carol", Reason: "cancel"}, 3},
		{Write{Key: k, Value: []byte("v4"), Actor: "dave", Reason: "revive"}, 4},
	}
	var recs []Record
	for i, st := range steps {
		clock.Set(clock.Now().Add(1e9))
		rec, err := s.Write(ctx, st.w)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if rec.Version != st.version || rec.Deleted != st.w.Delete {
			t.Fatalf("step %d: v%d deleted=%v, want v%d deleted=%v", i, rec.Version, rec.Deleted, st.version, st.w.Delete)
		}
		if rec.Key != k || rec.Origin != s.Origin() || rec.Change.Actor != st.w.Actor || rec.Change.Reason != st.w.Reason ||
			rec.Change.Time != clock.Now().UnixNano() || rec.UpdatedAt != clock.Now().UnixNano() {
			t.Fatalf("step %d: record metadata %+v", i, rec)
		}
		if rec.Clock.Vector[s.Origin()] != st.version || len(rec.Clock.Vector) != 1 {
			t.Fatalf("step %d: vector %v, want %s:%d", i, rec.Clock.Vector, s.Origin(), st.version)
		}
		if i > 0 {
			prev := recs[i-1]
			if rec.Clock.Lamport <= prev.Clock.Lamport || rec.Clock.HLC <= prev.Clock.HLC {
				t.Fatalf("step %d: clocks did not advance: %+v after %+v", i, rec.Clock, prev.Clock)
			}
			if rec.OpID == prev.OpID {
				t.Fatalf("step %d: op id reused: %s", i, rec.OpID)
			}
		}
		if got := HLCTime(rec.Clock.HLC); !got.Equal(clock.Now().Truncate(1e6)) {
			t.Fatalf("step %d: HLC time %v, want %v", i, got, clock.Now())
		}
		recs = append(recs, rec)
	}
	got, err := s.Get(ctx, k)
	if err != nil || got.Version != 4 || string(got.Value) != "v4" || got.Deleted || !got.Pending || got.SyncedVersion != 0 {
		t.Fatalf("get = %+v, %v", got, err)
	}

	evs := mustEvents(t, s, k)
	if len(evs) != 4 {
		t.Fatalf("events: %d, want 4", len(evs))
	}
	wantActions := []string{ActionPut, ActionPut, ActionDelete, ActionPut}
	wantValues := []string{"v1", "v2", "", "v4"}
	for i, e := range evs {
		r := recs[i]
		if e.Key != k || e.Action != wantActions[i] || e.FromVersion != uint64(i) || e.ToVersion != uint64(i+1) ||
			string(e.Value) != wantValues[i] || e.Change != r.Change || e.Origin != s.Origin() || e.OpID != r.OpID ||
			e.Clock.Lamport != r.Clock.Lamport || e.Clock.HLC != r.Clock.HLC || e.Clock.Vector[s.Origin()] != r.Version {
			t.Fatalf("event %d = %+v, record %+v", i, e, r)
		}
		at, err := s.EventAt(ctx, k, e.ToVersion)
		if err != nil || at.OpID != e.OpID {
			t.Fatalf("EventAt(%d) = %+v, %v", e.ToVersion, at, err)
		}
	}
	if _, err := s.EventAt(ctx, k, 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("EventAt(9): %v, want not found", err)
	}
	// Events of a state whose name extends k's are not k's.
	mustPut(t, s, key("orders", "o-10"), "other")
	if n := len(mustEvents(t, s, k)); n != 4 {
		t.Fatalf("events after sibling write: %d, want 4", n)
	}

	js := mustJournal(t, s)
	if len(js) != 5 {
		t.Fatalf("journal: %d entries, want 5", len(js))
	}
	for i, j := range js[:4] {
		r := recs[i]
		if j.Seq != uint64(i+1) || j.OpID != r.OpID || j.BatchID != r.OpID || j.Key != k ||
			j.BaseVersion != uint64(i) || j.Version != uint64(i+1) || j.Time != r.Change.Time {
			t.Fatalf("journal %d = %+v, record %+v", i, j, r)
		}
		if j.OpID != s.Origin()+"-"+itoa(i+1) {
			t.Fatalf("op id %q", j.OpID)
		}
	}
	if page, err := s.Journal(ctx, 2, 2); err != nil || len(page) != 2 || page[0].Seq != 3 || page[1].Seq != 4 {
		t.Fatalf("journal after 2, limit 2 = %+v, %v", page, err)
	}
	st := s.Stats()
	if st.States != 2 || st.JournalDepth != 5 || st.CommitWrites != 5 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestWriteBatch(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	mustPut(t, s, key("g", "existing"), "e1")

	t.Run("all succeed", func(t *testing.T) {
		recs, err := s.WriteBatch(ctx, []Write{
			{Key: key("g", "a"), Value: []byte("A")},
			{Key: key("g", "existing"), Value: []byte("e2"), IfVersion: u64(1)},
			{Key: key("g", "b"), Value: []byte("B"), IfAbsent: true},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 3 || recs[0].Version != 1 || recs[1].Version != 2 || recs[2].Version != 1 {
			t.Fatalf("records = %+v", recs)
		}
		js := mustJournal(t, s)
		last := js[len(js)-3:]
		for i, j := range last {
			if j.BatchID != recs[0].OpID || j.OpID != recs[i].OpID || j.Seq != last[0].Seq+uint64(i) {
				t.Fatalf("journal %d = %+v, want batch %s", i, j, recs[0].OpID)
			}
		}
	})

	before := mustJournal(t, s)
	statsBefore := s.Stats()
	failing := []struct {
		name string
		ws   []Write
		want error
	}{
		{"conflict in the middle", []Write{
			{Key: key("g", "new1"), Value: []byte("1")},
			{Key: key("g", "a"), Value: []byte("x"), IfVersion: u64(7)},
			{Key: key("g", "new2"), Value: []byte("2")},
		}, ErrVersionConflict},
		{"conflict last", []Write{
			{Key: key("g", "new1"), Value: []byte("1")},
			{Key: key("g", "existing"), Delete: true},
			{Key: key("g", "b"), Value: []byte("x"), IfAbsent: true},
		}, ErrVersionConflict},
		{"delete of missing", []Write{
			{Key: key("g", "new1"), Value: []byte("1")},
			{Key: key("g", "nope"), Delete: true},
		}, ErrNotFound},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.WriteBatch(ctx, tt.ws); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			for _, k := range []Key{key("g", "new1"), key("g", "new2")} {
				if _, err := s.Get(ctx, k); !errors.Is(err, ErrNotFound) {
					t.Fatalf("get %s after failed batch: %v", k, err)
				}
				if evs := mustEvents(t, s, k); len(evs) != 0 {
					t.Fatalf("events of %s after failed batch: %+v", k, evs)
				}
			}
			if rec, err := s.Get(ctx, key("g", "existing")); err != nil || rec.Version != 2 {
				t.Fatalf("existing = %+v, %v", rec, err)
			}
		})
	}
	if after := mustJournal(t, s); len(after) != len(before) {
		t.Fatalf("journal grew from %d to %d after failed batches", len(before), len(after))
	}
	if st := s.Stats(); st.States != statsBefore.States || st.JournalDepth != statsBefore.JournalDepth {
		t.Fatalf("stats changed after failed batches: %+v -> %+v", statsBefore, st)
	}
}

func TestGetMany(t *testing.T) {
	s := openMem(t, func(o *Options) { o.CacheBytes = -1 })
	ctx := context.Background()
	mustPut(t, s, key("g", "a"), "A")
	mustPut(t, s, key("g", "b"), "B")
	mustDelete(t, s, key("g", "b"))
	recs, err := s.GetMany(ctx, []Key{key("g", "a"), key("g", "b"), key("g", "c"), key("h", "a")})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || recs[0] == nil || string(recs[0].Value) != "A" || recs[1] != nil || recs[2] != nil || recs[3] != nil {
		t.Fatalf("GetMany = %v", recs)
	}
}

func TestList(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	var want []string
	for i := range 25 {
		name := "s" + string(rune('a'+i/10)) + itoa(i%10)
		mustPut(t, s, key("g", name), strings.Repeat("v", 100))
		want = append(want, name)
	}
	mustPut(t, s, key("g", "t1"), "t")
	mustPut(t, s, key("g2", "sa0"), "other governor")
	mustPut(t, s, key("g", "sb5x"), "deleted")
	mustDelete(t, s, key("g", "sb5x"))
	mustDelete(t, s, key("g", "sa3"))
	want = slices.DeleteFunc(want, func(n string) bool { return n == "sa3" })

	collect := func(t *testing.T, prefix, cursor string, limit, maxBytes int) (names []string, pages int) {
		t.Helper()
		for {
			recs, next, err := s.List(ctx, "g", prefix, cursor, limit, maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if limit > 0 && len(recs) > limit {
				t.Fatalf("page of %d records, limit %d", len(recs), limit)
			}
			size := 0
			for _, r := range recs {
				if r.Deleted || r.Governor != "g" || !strings.HasPrefix(r.State, prefix) {
					t.Fatalf("listed %+v", r)
				}
				size += len(r.Value)
				names = append(names, r.State)
			}
			if maxBytes > 0 && len(recs) > 1 && size > maxBytes {
				t.Fatalf("page of %d bytes, max %d", size, maxBytes)
			}
			if next == "" {
				return names, pages
			}
			if len(recs) == 0 || next != recs[len(recs)-1].State {
				t.Fatalf("next %q after %d records", next, len(recs))
			}
			cursor = next
			if pages > 100 {
				t.Fatal("listing does not end")
			}
		}
	}
	tests := []struct {
		name            string
		prefix, cursor  string
		limit, maxBytes int
		want            []string
		pages           int
	}{
		{"one page", "s", "", 100, 0, want, 1},
		{"pages of 10", "s", "", 10, 0, want, 3},
		{"pages of exactly all", "s", "", 24, 0, want, 1},
		{"max bytes", "s", "", 100, 250, want, 12},
		{"max bytes below one value", "s", "", 100, 10, want, 24},
		{"prefix", "sb", "", 3, 0, want[9:19], 4},
		{"cursor", "s", "sb9", 100, 0, want[19:], 1},
		{"cursor not a state", "s", "sb", 100, 0, want[9:], 1},
		{"cursor before prefix", "sc", "a", 100, 0, want[19:], 1},
		{"cursor after prefix", "sa", "sb", 100, 0, nil, 1},
		{"no match", "zz", "", 10, 0, nil, 1},
		{"everything", "", "", 0, 0, append(slices.Clone(want), "t1"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, pages := collect(t, tt.prefix, tt.cursor, tt.limit, tt.maxBytes)
			if !slices.Equal(names, tt.want) {
				t.Fatalf("listed %v, want %v", names, tt.want)
			}
			if pages != tt.pages {
				t.Fatalf("%d pages, want %d", pages, tt.pages)
			}
		})
	}
	t.Run("values are private", func(t *testing.T) {
		recs, _, err := s.List(ctx, "g", "t1", "", 1, 0)
		if err != nil || len(recs) != 1 {
			t.Fatal(recs, err)
		}
		recs[0].Value[0] = 'X'
		if rec, _ := s.Get(ctx, key("g", "t1")); !bytes.Equal(rec.Value, []byte("t")) {
			t.Fatalf("get after changing a listed value: %q", rec.Value)
		}
	})
}

func TestStatsCache(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	k := key("g", "hot")
	mustPut(t, s, k, "v")
	s2 := s.Stats()
	for range 10 {
		if _, err := s.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.CacheHits-s2.CacheHits != 10 || st.CacheBytes <= 0 {
		t.Fatalf("stats = %+v, want 10 more hits", st)
	}
	if _, err := s.Get(ctx, key("g", "cold")); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if s.Stats().CacheMisses != st.CacheMisses+1 {
		t.Fatalf("misses = %d, want %d", s.Stats().CacheMisses, st.CacheMisses+1)
	}
}

func TestNodeID(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(o *Options) { o.NodeID = "" })
	id := s.NodeID()
	if len(id) != 16 {
		t.Fatalf("generated node id %q", id)
	}
	closeStore(t, s)
	s = openDisk(t, dir, func(o *Options) { o.NodeID = "" })
	defer closeStore(t, s)
	if s.NodeID() != id {
		t.Fatalf("node id after reopen %q, want %q", s.NodeID(), id)
	}
	if _, err := Open(Options{InMemory: true, NodeID: "a/b"}); err == nil {
		t.Fatal("open with node id a/b succeeded")
	}
	if _, err := Open(Options{}); err == nil {
		t.Fatal("open without Dir succeeded")
	}
}

// TestOriginIncarnation: a store's origin is its node id and an incarnation
// kept with the store: the same across restarts, new for a new store under
// the same node id, for a store whose node id changed, and when asked for
// (Options.NewIncarnation).
func TestOriginIncarnation(t *testing.T) {
	origin := func(dir string, mod ...func(*Options)) string { // of the store in dir, opened and closed
		s := openDisk(t, dir, mod...)
		defer closeStore(t, s)
		return s.Origin()
	}
	dir := t.TempDir()
	first := origin(dir)
	if node, inc, ok := strings.Cut(first, "~"); !ok || node != "n1" || inc == "" {
		t.Fatalf("origin %q, want n1~incarnation", first)
	}
	if o := origin(dir); o != first {
		t.Fatalf("origin after a restart %q, want %q", o, first)
	}
	if o := origin(t.TempDir()); o == first || !strings.HasPrefix(o, "n1~") {
		t.Fatalf("a new store under the same node id writes as %q (the first one as %q)", o, first)
	}
	n2 := func(o *Options) { o.NodeID = "n2" }
	renamed := origin(dir, n2)
	if !strings.HasPrefix(renamed, "n2~") {
		t.Fatalf("origin after the node id changed: %q", renamed)
	}
	if o := origin(dir, n2); o != renamed {
		t.Fatalf("origin after a restart %q, want %q", o, renamed)
	}
	fresh := origin(dir, n2, func(o *Options) { o.NewIncarnation = true })
	if fresh == renamed || !strings.HasPrefix(fresh, "n2~") {
		t.Fatalf("origin with NewIncarnation %q (before: %q)", fresh, renamed)
	}
	if o := origin(dir, n2); o != fresh {
		t.Fatalf("origin after a restart %q, want the new incarnation %q", o, fresh)
	}

	if _, err := Open(Options{InMemory: true, NodeID: "a~b"}); err == nil {
		t.Fatal("a node id holding the origin separator was accepted")
	}
}
