package localcache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// tickClock is a wall clock that moves one second after every reading, so
// every write group gets its own change time.
type tickClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTickClock() *tickClock { return &tickClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *tickClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(time.Second)
	return t
}

func withNow(now func() time.Time) func(*Options) { return func(o *Options) { o.Now = now } }

func mustQuery(t testing.TB, s *Store, q EventQuery) EventPage {
	t.Helper()
	p, err := s.QueryEvents(context.Background(), q)
	if err != nil {
		t.Fatalf("query %+v: %v", q, err)
	}
	return p
}

// queryAll pages through q and returns every event.
func queryAll(t testing.TB, s *Store, q EventQuery) []Event {
	t.Helper()
	var out []Event
	for pages := 0; ; pages++ {
		if pages > 10_000 {
			t.Fatal("query never ends")
		}
		p := mustQuery(t, s, q)
		out = append(out, p.Events...)
		if p.Next == "" {
			return out
		}
		q.Cursor = p.Next
	}
}

func evID(e Event) string { return fmt.Sprintf("%s@%d", e.Key, e.ToVersion) }

func evIDs(evs []Event) string {
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = evID(e)
	}
	return strings.Join(ids, " ")
}

// historyFixture writes, on disk, to governor g: a (3 puts), bb (put,
// delete, put), c (put), and one state of another governor, each write
// one second after the previous one. It returns the change time of each
// event by id.
func historyFixture(t *testing.T, s *Store) map[string]time.Time {
	t.Helper()
	times := map[string]time.Time{}
	note := func(r Record) { times[fmt.Sprintf("%s@%d", r.Key, r.Version)] = time.Unix(0, r.Change.Time) }
	note(mustPut(t, s, key("g", "a"), "a1"))
	note(mustPut(t, s, key("g", "bb"), "b1"))
	note(mustPut(t, s, key("g", "a"), "a2"))
	note(mustDelete(t, s, key("g", "bb")))
	note(mustPut(t, s, key("other", "a"), "x"))
	note(mustPut(t, s, key("g", "c"), "c1"))
	note(mustPut(t, s, key("g", "bb"), "b3"))
	note(mustPut(t, s, key("g", "a"), "a3"))
	return times
}

func TestEventQueryOrderFiltersAndPages(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, withNow(newTickClock().Now))
	defer closeStore(t, s)
	times := historyFixture(t, s)

	// Governor scan: by state (shorter names first), then version.
	all := "g/a@1 g/a@2 g/a@3 g/c@1 g/bb@1 g/bb@2 g/bb@3"
	if got := evIDs(mustQuery(t, s, EventQuery{Governor: "g"}).Events); got != all {
		t.Fatalf("governor scan = %s, want %s", got, all)
	}
	for _, limit := range []int{1, 2, 3, 7} {
		if got := evIDs(queryAll(t, s, EventQuery{Governor: "g", Limit: limit})); got != all {
			t.Fatalf("paged by %d = %s, want %s", limit, got, all)
		}
	}
	p := mustQuery(t, s, EventQuery{Governor: "g", Limit: 7})
	if len(p.Events) != 7 || p.Next != "" {
		t.Fatalf("exact fit: %d events, next %q; want 7 and no cursor", len(p.Events), p.Next)
	}

	// Values, metadata and clocks come back whole.
	evs := mustQuery(t, s, EventQuery{Governor: "g", State: "bb"}).Events
	if got := evIDs(evs); got != "g/bb@1 g/bb@2 g/bb@3" {
		t.Fatalf("state scan = %s", got)
	}
	if string(evs[0].Value) != "b1" || evs[1].Action != ActionDelete || evs[1].Value != nil || string(evs[2].Value) != "b3" {
		t.Fatalf("bb events = %+v", evs)
	}
	if evs[2].FromVersion != 2 || evs[2].Origin != s.Origin() || evs[2].OpID == "" || evs[2].Clock.Lamport <= evs[1].Clock.Lamport {
		t.Fatalf("bb@3 = %+v", evs[2])
	}

	cases := []struct {
		name string
		q    EventQuery
		want string
	}{
		{"deletes", EventQuery{Governor: "g", Action: ActionDelete}, "g/bb@2"},
		{"puts of a", EventQuery{Governor: "g", State: "a", Action: ActionPut}, "g/a@1 g/a@2 g/a@3"},
		{"from", EventQuery{Governor: "g", From: times["g/c@1"]}, "g/a@3 g/c@1 g/bb@3"},
		{"to (exclusive)", EventQuery{Governor: "g", To: times["g/a@2"]}, "g/a@1 g/bb@1"},
		{"range", EventQuery{Governor: "g", From: times["g/a@2"], To: times["g/c@1"]}, "g/a@2 g/bb@2"},
		{"range and action", EventQuery{Governor: "g", From: times["g/a@2"], To: times["g/c@1"], Action: ActionPut}, "g/a@2"},
		{"other governor", EventQuery{Governor: "other"}, "other/a@1"},
		{"no such governor", EventQuery{Governor: "none"}, ""},
		{"no such state", EventQuery{Governor: "g", State: "zz"}, ""},
		{"far future", EventQuery{Governor: "g", From: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}, ""},
		{"far past", EventQuery{Governor: "g", State: "c", From: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)}, "g/c@1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := evIDs(queryAll(t, s, tc.q)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
			tc.q.Limit = 1
			if got := evIDs(queryAll(t, s, tc.q)); got != tc.want {
				t.Fatalf("paged by 1: got %s, want %s", got, tc.want)
			}
		})
	}

	// MaxBytes: each value is 2 bytes; at least one event per page.
	p = mustQuery(t, s, EventQuery{Governor: "g", State: "a", MaxBytes: 5})
	if got := evIDs(p.Events); got != "g/a@1 g/a@2" || p.Next == "" {
		t.Fatalf("max bytes 5: %s, next %q", got, p.Next)
	}
	p = mustQuery(t, s, EventQuery{Governor: "g", State: "a", MaxBytes: 1})
	if got := evIDs(p.Events); got != "g/a@1" || p.Next == "" {
		t.Fatalf("max bytes 1: %s, next %q", got, p.Next)
	}
	if got := evIDs(queryAll(t, s, EventQuery{Governor: "g", MaxBytes: 1})); got != all {
		t.Fatalf("paged by bytes: %s", got)
	}

	// A governor cursor resumes a state query of the same state, and the
	// filters may change between pages.
	p = mustQuery(t, s, EventQuery{Governor: "g", Limit: 1})
	p = mustQuery(t, s, EventQuery{Governor: "g", State: "a", Cursor: p.Next, Action: ActionPut})
	if got := evIDs(p.Events); got != "g/a@2 g/a@3" {
		t.Fatalf("resumed state query: %s", got)
	}

	// The events survive a restart.
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	if got := evIDs(queryAll(t, s, EventQuery{Governor: "g", Limit: 2})); got != all {
		t.Fatalf("after a restart: %s", got)
	}
}

func TestEventQueryScanBudget(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	for i := range 10 {
		mustPut(t, s, key("g", "s"), itoa(i))
	}
	mustDelete(t, s, key("g", "s"))
	// With a budget of 3 events examined per page, the delete (the 11th
	// event) is found on the fourth page; the first three are empty but
	// carry a cursor.
	f, err := checkEventQuery(EventQuery{Governor: "g", Action: ActionDelete})
	if err != nil {
		t.Fatal(err)
	}
	var got []Event
	empty := 0
	for pages := 0; pages < 20; pages++ {
		var page EventPage
		err := s.scan(context.Background(), func(txn *badger.Txn) error {
			page, err = queryEvents(context.Background(), txn, f, 3)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) == 0 {
			empty++
		}
		got = append(got, page.Events...)
		if page.Next == "" {
			break
		}
		st, v, err := parseEventCursor(page.Next)
		if err != nil {
			t.Fatal(err)
		}
		f.seek = append(eventKey(key("g", st), v), 0)
	}
	if evIDs(got) != "g/s@11" || empty != 3 {
		t.Fatalf("got %s with %d empty pages, want g/s@11 after 3", evIDs(got), empty)
	}
}

func TestEventQueryInvalid(t *testing.T) {
	s := openMem(t)
	mustPut(t, s, key("g", "a"), "v")
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	otherState := eventCursor(eventKey(key("g", "b"), 1))
	cases := []struct {
		name  string
		q     EventQuery
		field string
	}{
		{"no governor", EventQuery{}, "governor"},
		{"governor with slash", EventQuery{Governor: "a/b"}, "governor"},
		{"bad state", EventQuery{Governor: "g", State: "a/b"}, "state"},
		{"bad action", EventQuery{Governor: "g", Action: "\xff"}, "action"},
		{"empty range", EventQuery{Governor: "g", From: t0, To: t0}, "to"},
		{"reversed range", EventQuery{Governor: "g", From: t0.Add(time.Hour), To: t0}, "to"},
		{"garbage cursor", EventQuery{Governor: "g", Cursor: "!!!"}, "cursor"},
		{"short cursor", EventQuery{Governor: "g", Cursor: base64.RawURLEncoding.EncodeToString([]byte{1, 0, 5, 'a'})}, "cursor"},
		{"cursor format", EventQuery{Governor: "g", Cursor: base64.RawURLEncoding.EncodeToString(make([]byte, 11))}, "cursor"},
		{"huge cursor", EventQuery{Governor: "g", Cursor: strings.Repeat("A", 1<<20)}, "cursor"},
		{"cursor of another state", EventQuery{Governor: "g", State: "a", Cursor: otherState}, "cursor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.QueryEvents(context.Background(), tc.q)
			var fe *FieldError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("err = %v, want a %s field error wrapping ErrInvalid", err, tc.field)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.QueryEvents(ctx, EventQuery{Governor: "g"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

// Every acknowledged write is in the next query, while the write-ahead log
// holds groups the applier has not put in Badger yet.
func TestEventQuerySeesAcknowledgedWrites(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := key("g", "w"+itoa(w))
			for i := range 40 {
				rec, err := s.Write(ctx, Write{Key: k, Value: []byte(itoa(i))})
				if err != nil {
					errs <- err
					return
				}
				p, err := s.QueryEvents(ctx, EventQuery{Governor: "g", State: k.State, Cursor: eventCursor(eventKey(k, rec.Version-1))})
				if err != nil {
					errs <- err
					return
				}
				if len(p.Events) != 1 || p.Events[0].ToVersion != rec.Version || string(p.Events[0].Value) != itoa(i) {
					errs <- fmt.Errorf("%s: after writing v%d the query returns %s", k, rec.Version, evIDs(p.Events))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(queryAll(t, s, EventQuery{Governor: "g", Limit: MaxEventLimit})); n != 8*40 {
		t.Fatalf("%d events, want %d", n, 8*40)
	}
}

func TestStateAt(t *testing.T) {
	s := openDisk(t, t.TempDir(), withNow(newTickClock().Now))
	defer closeStore(t, s)
	k := key("g", "s")
	r1 := mustPut(t, s, k, "v1")
	r2, err := s.Write(context.Background(), Write{Key: k, Value: []byte("v2"), Actor: "alice", Reason: "fix"})
	if err != nil {
		t.Fatal(err)
	}
	r3 := mustDelete(t, s, k)
	r4 := mustPut(t, s, k, "v4")
	at := func(r Record) time.Time { return time.Unix(0, r.Change.Time) }
	ctx := context.Background()

	cases := []struct {
		name  string
		at    time.Time
		value string // "" : not found
		ver   uint64
	}{
		{"before creation", at(r1).Add(-time.Nanosecond), "", 0},
		{"at creation", at(r1), "v1", 1},
		{"between", at(r1).Add(500 * time.Millisecond), "v1", 1},
		{"second", at(r2), "v2", 2},
		{"deleted", at(r3), "", 0},
		{"after delete", at(r3).Add(time.Millisecond), "", 0},
		{"re-created", at(r4), "v4", 4},
		{"now", time.Now().Add(100 * 365 * 24 * time.Hour), "v4", 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.StateAt(ctx, k, tc.at)
			if tc.value == "" {
				var ke *KeyError
				if !errors.Is(err, ErrNotFound) || !errors.As(err, &ke) || ke.Key != k {
					t.Fatalf("got %+v, %v; want not found", p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(p.Value) != tc.value || p.Version != tc.ver || !p.Exact || p.Deleted || p.Key != k {
				t.Fatalf("got %+v, want %s at v%d, exact", p, tc.value, tc.ver)
			}
		})
	}
	p, err := s.StateAt(ctx, k, at(r2))
	if err != nil {
		t.Fatal(err)
	}
	if p.Change.Actor != "alice" || p.Change.Reason != "fix" || p.OpID != r2.OpID || p.Origin != s.Origin() ||
		p.Clock.Lamport != r2.Clock.Lamport || p.UpdatedAt != r2.Change.Time || p.SyncedVersion != 0 || p.Pending {
		t.Fatalf("metadata of v2: %+v, written %+v", p, r2)
	}

	for v, want := range map[uint64]string{1: "v1", 2: "v2", 4: "v4"} {
		p, err := s.StateAtVersion(ctx, k, v)
		if err != nil || string(p.Value) != want || p.Version != v || !p.Exact {
			t.Fatalf("version %d: %+v, %v; want %s", v, p, err, want)
		}
	}
	for _, v := range []uint64{3, 5, math.MaxUint64} {
		if _, err := s.StateAtVersion(ctx, k, v); !errors.Is(err, ErrNotFound) {
			t.Fatalf("version %d: %v, want not found", v, err)
		}
	}
	if _, err := s.StateAt(ctx, key("g", "never"), time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("never written: %v", err)
	}
	if _, err := s.StateAtVersion(ctx, key("g", "never"), 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("never written, version 1: %v", err)
	}

	for _, tc := range []struct {
		name  string
		err   error
		field string
	}{
		{"zero time", func() error { _, err := s.StateAt(ctx, k, time.Time{}); return err }(), "at"},
		{"version 0", func() error { _, err := s.StateAtVersion(ctx, k, 0); return err }(), "version"},
		{"bad key", func() error { _, err := s.StateAt(ctx, key("g", ""), time.Now()); return err }(), "state"},
		{"bad governor", func() error { _, err := s.StateAtVersion(ctx, key("a/b", "s"), 1); return err }(), "governor"},
	} {
		var fe *FieldError
		var ke *KeyError
		if !errors.Is(tc.err, ErrInvalid) || !errors.As(tc.err, &fe) || fe.Field != tc.field || !errors.As(tc.err, &ke) {
			t.Fatalf("%s: %v, want a key error holding a %s field error", tc.name, tc.err, tc.field)
		}
	}
}

// histNode is a store with its push and pull loops over a shared remote.
type histNode struct {
	t     *testing.T
	store *Store
	push  *syncer.Syncer
	pull  *syncer.Puller
}

func newHistNode(t *testing.T, node string, remote syncer.Remote, now func() time.Time) *histNode {
	t.Helper()
	s := openDisk(t, t.TempDir(), func(o *Options) { o.NodeID = node; o.Now = now })
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return &histNode{t: t, store: s,
		push: syncer.New(s, remote, syncer.Options{Backoff: syncer.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond}}),
		pull: syncer.NewPuller(s, remote, syncer.PullOptions{Governors: []string{"g"}}),
	}
}

func (n *histNode) sync() {
	n.t.Helper()
	if _, err := n.push.SyncOnce(context.Background()); err != nil {
		n.t.Fatal(err)
	}
	if _, err := n.pull.PullOnce(context.Background()); err != nil {
		n.t.Fatal(err)
	}
}

func wantGap(t *testing.T, err error, after, through uint64) {
	t.Helper()
	var ge *HistoryGapError
	if !errors.Is(err, ErrHistoryGap) || !errors.As(err, &ge) || ge.After != after || ge.Through != through {
		t.Fatalf("err = %v, want a history gap %d..%d", err, after+1, through)
	}
}

// Changes of other nodes reach a store without local events: StateAt and
// StateAtVersion say where that leaves them unsure.
func TestStateAtWithRemoteChanges(t *testing.T) {
	remote := memremote.New()
	clock := newTickClock()
	a := newHistNode(t, "na", remote, clock.Now)
	b := newHistNode(t, "nb", remote, clock.Now)
	ctx := context.Background()
	k := key("g", "s")

	r1 := mustPut(t, a.store, k, "a1")
	a.sync()
	b.sync()
	r2 := mustPut(t, b.store, k, "b2")
	r3 := mustPut(t, b.store, k, "b3")
	b.sync()
	a.sync() // a holds b3 (version 3), with events of version 1 only
	if got, err := a.store.Get(ctx, k); err != nil || got.Version != 3 || string(got.Value) != "b3" {
		t.Fatalf("a after pull: %+v, %v", got, err)
	}
	at := func(r Record) time.Time { return time.Unix(0, r.Change.Time) }

	// The current record answers for times at or after its change.
	p, err := a.store.StateAt(ctx, k, at(r3))
	if err != nil || string(p.Value) != "b3" || !p.Exact || p.Origin != b.store.Origin() {
		t.Fatalf("at b3: %+v, %v", p, err)
	}
	// Before it, a only knows version 1, and that versions 2 and 3 came
	// later from elsewhere: version 3 is after, version 2 unknown.
	p, err = a.store.StateAt(ctx, k, at(r2))
	if err != nil || string(p.Value) != "a1" || p.Exact || p.UnknownThrough != 2 {
		t.Fatalf("at b2 on a: %+v, %v; want a1, not exact, unknown through 2", p, err)
	}
	p, err = a.store.StateAt(ctx, k, at(r1))
	if err != nil || string(p.Value) != "a1" || p.Exact {
		t.Fatalf("at a1 on a: %+v, %v", p, err)
	}
	if _, err := a.store.StateAt(ctx, k, at(r1).Add(-time.Nanosecond)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before creation: %v", err)
	}
	_, err = a.store.StateAtVersion(ctx, k, 2)
	wantGap(t, err, 1, 2)
	if p, err := a.store.StateAtVersion(ctx, k, 3); err != nil || string(p.Value) != "b3" || !p.Exact {
		t.Fatalf("version 3 (the record): %+v, %v", p, err)
	}

	// A local write after the pull: its event starts from version 3.
	r4 := mustPut(t, a.store, k, "a4")
	if r4.Version != 4 {
		t.Fatalf("a4 is version %d", r4.Version)
	}
	p, err = a.store.StateAt(ctx, k, at(r3))
	if err != nil || string(p.Value) != "a1" || p.Exact || p.UnknownThrough != 3 {
		t.Fatalf("at b3 after a4: %+v, %v; want a1, unknown through 3", p, err)
	}
	_, err = a.store.StateAtVersion(ctx, k, 2)
	wantGap(t, err, 1, 3)

	// b's history of the same state: created elsewhere, then local.
	if _, err := b.store.StateAt(ctx, k, at(r1).Add(-time.Nanosecond)); !errors.Is(err, ErrHistoryGap) {
		t.Fatalf("b before any of its own events: %v", err)
	}
	p, err = b.store.StateAt(ctx, k, at(r2))
	if err != nil || string(p.Value) != "b2" || !p.Exact {
		t.Fatalf("b at b2: %+v, %v", p, err)
	}
	wantGap(t, func() error { _, err := b.store.StateAtVersion(ctx, k, 1); return err }(), 0, 1)

	// Validate reports the gaps, and no violation.
	rep, err := a.store.Validate(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.GapCount != 1 || rep.Gaps[0] != (Gap{Key: k, After: 1, Through: 3, Reason: GapElsewhere}) {
		t.Fatalf("a: %+v", rep)
	}
	rep, err = b.store.Validate(ctx, "g", "s")
	if err != nil {
		t.Fatal(err)
	}
	// b: version 1 from a, then b2, b3 (pushed, same versions), then a4
	// pulled once b syncs.
	b.sync()
	a.sync()
	b.sync()
	rep, err = b.store.Validate(ctx, "g", "s")
	if err != nil {
		t.Fatal(err)
	}
	want := []Gap{{Key: k, After: 0, Through: 1, Reason: GapElsewhere}, {Key: k, After: 3, Through: 4, Reason: GapElsewhere}}
	if !rep.OK() || fmt.Sprint(rep.Gaps) != fmt.Sprint(want) || rep.States != 1 || rep.Events != 2 {
		t.Fatalf("b: %+v, want gaps %v", rep, want)
	}
}

func TestValidateCleanHistory(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	historyFixture(t, s)
	for i := range 50 {
		mustPut(t, s, key("g", "many"), itoa(i))
	}
	if _, err := s.WriteBatch(context.Background(), []Write{{Key: key("g", "x"), Value: []byte("1")}, {Key: key("g", "a"), Delete: true}}); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		rep, err := s.Validate(context.Background(), "g", "")
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() || rep.GapCount != 0 || rep.States != 5 || rep.Events != 7+1+50+1 {
			t.Fatalf("report %+v", rep)
		}
		rep, err = s.Validate(context.Background(), "g", "a")
		if err != nil || !rep.OK() || rep.States != 1 || rep.Events != 4 {
			t.Fatalf("state a: %+v, %v", rep, err)
		}
		rep, err = s.Validate(context.Background(), "g", "none")
		if err != nil || !rep.OK() || rep.States != 0 {
			t.Fatalf("no such state: %+v, %v", rep, err)
		}
	}
	check(s)
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	check(s)

	if _, err := s.Validate(context.Background(), "", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no governor: %v", err)
	}
	if _, err := s.Validate(context.Background(), "g", "a/b"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad state: %v", err)
	}
}

// putRaw stores key/value in Badger directly, bypassing the committer: the
// damage Validate must find.
func putRaw(t *testing.T, s *Store, kvs ...[]byte) {
	t.Helper()
	waitApplied(t, s)
	err := s.db.Update(func(txn *badger.Txn) error {
		for i := 0; i < len(kvs); i += 2 {
			if err := txn.Set(kvs[i], kvs[i+1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestValidateFindsEveryViolation(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	// Four states with damage, one clean, all in one governor.
	for i := range 5 {
		mustPut(t, s, key("g", "a"), itoa(i))
	}
	mustPut(t, s, key("g", "b"), "b1")
	mustPut(t, s, key("g", "b"), "b2")
	mustPut(t, s, key("g", "c"), "c1")
	mustPut(t, s, key("g", "d"), "d1")
	mustPut(t, s, key("g", "e"), "e1")
	waitApplied(t, s)

	evs := mustEvents(t, s, key("g", "a"))
	// a@2: stored under version 2 but says 7 (key_version, step, and the
	// next event starts behind it: chain).
	bad := evs[1]
	bad.ToVersion = 7
	// a@4: its Lamport time and HLC go back.
	back := evs[3]
	back.Clock.Lamport, back.Clock.HLC = 1, 1
	// b: both events turned into deletes: b@1 deletes a state that did not
	// exist, b@2 a deleted one (action), and the record, a put, is not its
	// last event (current).
	bEvs := mustEvents(t, s, key("g", "b"))
	b1 := bEvs[0]
	b1.Action, b1.Value = ActionDelete, nil
	b2 := bEvs[1]
	b2.Action, b2.Value = ActionDelete, nil
	// c: the record's value differs from its event's (current).
	cRec, err := s.Get(ctx, key("g", "c"))
	if err != nil {
		t.Fatal(err)
	}
	cRec.Value = []byte("tampered")
	// d: the event does not decode.
	putRaw(t, s,
		eventKey(key("g", "a"), 2), encodeEvent(&bad),
		eventKey(key("g", "a"), 4), encodeEvent(&back),
		eventKey(key("g", "b"), 1), encodeEvent(&b1),
		eventKey(key("g", "b"), 2), encodeEvent(&b2),
		stateKey(key("g", "c")), encodeRecord(&cRec),
		eventKey(key("g", "d"), 1), []byte{formatV1, 9},
	)

	rep, err := s.Validate(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range rep.Violations {
		got = append(got, fmt.Sprintf("%s@%d %s", v.Key, v.Version, v.Rule))
		if v.Message == "" {
			t.Errorf("violation without a message: %+v", v)
		}
	}
	want := []string{
		"g/a@2 key_version", "g/a@2 step", "g/a@3 chain",
		"g/a@4 lamport", "g/a@4 hlc",
		"g/b@1 action", "g/b@2 action", "g/b@2 current",
		"g/c@1 current",
		"g/d@1 decode",
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") || rep.ViolationCount != len(want) || rep.OK() {
		t.Fatalf("violations:\n%s\nwant:\n%s\n(%+v)", strings.Join(got, "\n"), strings.Join(want, "\n"), rep)
	}
	if rep.States != 5 || rep.Events != 10 {
		t.Fatalf("states %d, events %d", rep.States, rep.Events)
	}
	rep, err = s.Validate(ctx, "g", "e")
	if err != nil || !rep.OK() {
		t.Fatalf("clean state: %+v, %v", rep, err)
	}
}

func TestValidateCurrentRecord(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	rec := func(k Key) Record {
		r, err := s.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, st := range []string{"behind", "other-op", "renumbered", "renumbered-bad", "superseded", "elsewhere", "gone", "gone-deleted"} {
		mustPut(t, s, key("g", st), "v1")
		mustPut(t, s, key("g", st), "v2")
	}
	mustDelete(t, s, key("g", "gone-deleted"))

	behind := rec(key("g", "behind"))
	behind.Version = 1
	otherOp := rec(key("g", "other-op"))
	otherOp.OpID = "n1-999"
	renum := rec(key("g", "renumbered"))
	renum.Version = 5
	renumBad := rec(key("g", "renumbered-bad"))
	renumBad.Version, renumBad.Value = 5, []byte("x")
	sup := rec(key("g", "superseded"))
	sup.Version, sup.Origin, sup.OpID, sup.Value = 2, "nx", "nx-1", []byte("theirs")
	elsewhere := rec(key("g", "elsewhere"))
	elsewhere.Version, elsewhere.Origin, elsewhere.OpID = 4, "nx", "nx-2"
	putRaw(t, s,
		stateKey(behind.Key), encodeRecord(&behind),
		stateKey(otherOp.Key), encodeRecord(&otherOp),
		stateKey(renum.Key), encodeRecord(&renum),
		stateKey(renumBad.Key), encodeRecord(&renumBad),
		stateKey(sup.Key), encodeRecord(&sup),
		stateKey(elsewhere.Key), encodeRecord(&elsewhere),
	)
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(stateKey(key("g", "gone"))); err != nil {
			return err
		}
		return txn.Delete(stateKey(key("g", "gone-deleted")))
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Validate(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	var vs, gs []string
	for _, v := range rep.Violations {
		vs = append(vs, fmt.Sprintf("%s@%d %s", v.Key.State, v.Version, v.Rule))
	}
	for _, g := range rep.Gaps {
		gs = append(gs, fmt.Sprintf("%s %d-%d %s", g.Key.State, g.After, g.Through, g.Reason))
	}
	// Key order: shorter names first.
	wantV := "gone@2 current, behind@1 current, other-op@2 current, renumbered-bad@5 current"
	wantG := "elsewhere 2-4 elsewhere, renumbered 2-5 renumbered, superseded 1-2 superseded, renumbered-bad 2-5 renumbered"
	if strings.Join(vs, ", ") != wantV || strings.Join(gs, ", ") != wantG {
		t.Fatalf("violations: %s\nwant:       %s\ngaps: %s\nwant: %s", strings.Join(vs, ", "), wantV, strings.Join(gs, ", "), wantG)
	}
}

// A change that loses a conflict, and one the shared store commits under a
// later version, leave the local log with gaps, not violations, on nodes
// that pull no history.
func TestValidateAfterConflicts(t *testing.T) {
	remote := memremote.New()
	clock := newTickClock()
	a := newHistNode(t, "na", remote, clock.Now)
	b := newHistNode(t, "nb", remote, clock.Now)
	ctx := context.Background()
	for i := range 4 {
		k := key("g", "s"+itoa(i))
		mustPut(t, a.store, k, "a1")
		a.sync()
		b.sync()
		// Concurrent changes of version 2 on both nodes.
		mustPut(t, a.store, k, "a2")
		mustPut(t, b.store, k, "b2")
		if i%2 == 0 {
			b.sync()
			a.sync()
		} else {
			a.sync()
			b.sync()
		}
		a.sync()
		b.sync()
	}
	// b pushed first (s0, s2): a's change lost, its event left a's log,
	// and a holds b's record of the same version (made elsewhere: these
	// nodes pull no history). a pushed first (s1, s3): b's change won on
	// top of it, as version 3, and its event left b's log (it made version
	// 2 there, which is a's in the shared store): b holds no event of s1
	// and s3, and validate checks the events of s0 and s2 only, and the
	// records of all four.
	want := map[*histNode]string{
		a: "s0 1-2 elsewhere, s1 2-3 elsewhere, s2 1-2 elsewhere, s3 2-3 elsewhere",
		b: "s0 0-1 elsewhere, s2 0-1 elsewhere",
	}
	states := map[*histNode]int{a: 4, b: 4}
	for _, n := range []*histNode{a, b} {
		rep, err := n.store.Validate(ctx, "g", "")
		if err != nil {
			t.Fatal(err)
		}
		var gs []string
		for _, g := range rep.Gaps {
			gs = append(gs, fmt.Sprintf("%s %d-%d %s", g.Key.State, g.After, g.Through, g.Reason))
		}
		if !rep.OK() || rep.States != states[n] || strings.Join(gs, ", ") != want[n] {
			t.Fatalf("%s: %+v\ngaps: %s\nwant: %s", n.store.NodeID(), rep, strings.Join(gs, ", "), want[n])
		}
	}
}

func TestExportJSONLines(t *testing.T) {
	s := openDisk(t, t.TempDir(), withNow(newTickClock().Now))
	defer closeStore(t, s)
	ctx := context.Background()
	h := &codec.MsgpackHandle{}
	h.WriteExt = true
	mp := func(v any) []byte {
		var b []byte
		if err := codec.NewEncoderBytes(&b, h).Encode(v); err != nil {
			t.Fatal(err)
		}
		return b
	}
	values := []struct {
		state string
		value []byte
		json  string // "" : no "value"
	}{
		{"doc", mp(map[string]any{"n": 1, "s": "x", "l": []any{true, nil, 2.5}, "m": map[string]any{"neg": -3}}),
			`{"l":[true,null,2.5],"m":{"neg":-3},"n":1,"s":"x"}`},
		{"nil", mp(nil), `null`},
		{"big", mp(uint64(math.MaxUint64)), `18446744073709551615`},
		{"float", mp(map[string]any{"c": 22.0, "r": []any{2.0, 1e21, 3e-7}}), `{"c":22.0,"r":[2.0,1e+21,3e-07]}`}, // floats stay floats
		{"bin", mp([]byte{1, 2}), ""},
		{"intkey", mp(map[int]string{1: "a"}), ""},
		{"nan", mp(math.NaN()), ""},
		{"time", append([]byte{0xd6, 0xff}, 0, 0, 0, 1), ""},
		{"trailing", append(mp("x"), 0xc0), ""},
		{"notmsgpack", []byte{0xc1}, ""},
	}
	for _, v := range values {
		if _, err := s.Write(ctx, Write{Key: key("g", v.state), Value: v.value, Actor: "alice", Reason: "r <&>"}); err != nil {
			t.Fatal(err)
		}
	}
	mustDelete(t, s, key("g", "nil"))
	mustPut(t, s, key("other", "x"), "y")

	var out bytes.Buffer
	n, err := s.Export(ctx, EventQuery{Governor: "g"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(values)+1 {
		t.Fatalf("exported %d events, want %d", n, len(values)+1)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), n, out.String())
	}
	evs := queryAll(t, s, EventQuery{Governor: "g"})
	byState := map[string]map[string]json.RawMessage{}
	for i, line := range lines {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		var x ExportedEvent
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			t.Fatal(err)
		}
		e := evs[i]
		if x.Governor != "g" || x.State != e.State || x.Version != e.ToVersion || x.FromVersion != e.FromVersion ||
			x.Action != e.Action || x.TimeNS != e.Change.Time || x.Actor != "alice" && e.Action == ActionPut ||
			x.OpID != e.OpID || x.Origin != s.Origin() || x.Lamport != e.Clock.Lamport || x.HLC != e.Clock.HLC || x.Vector[s.Origin()] == 0 {
			t.Fatalf("line %d = %s, event %+v", i, line, e)
		}
		if tm, err := time.Parse(time.RFC3339Nano, x.Time); err != nil || tm.UnixNano() != e.Change.Time {
			t.Fatalf("time %q: %v", x.Time, err)
		}
		for _, f := range []string{"governor", "state", "version", "from_version", "action", "time", "time_ns", "actor", "reason", "origin", "op_id", "lamport", "hlc", "vector"} {
			if _, ok := fields[f]; !ok {
				t.Fatalf("line %d has no %q: %s", i, f, line)
			}
		}
		if e.Action == ActionDelete {
			if _, ok := fields["value_b64"]; ok || fields["value"] != nil {
				t.Fatalf("delete with a value: %s", line)
			}
			continue
		}
		if x.ValueB64 == nil {
			t.Fatalf("put without value_b64: %s", line)
		}
		if raw, err := base64.StdEncoding.DecodeString(*x.ValueB64); err != nil || !bytes.Equal(raw, e.Value) {
			t.Fatalf("value_b64 of %s: %v", e.State, err)
		}
		byState[e.State] = fields
	}
	if !strings.Contains(out.String(), `"reason":"r <&>"`) {
		t.Fatalf("HTML escaping in %s", out.String())
	}
	for _, v := range values {
		got, ok := byState[v.state]["value"]
		if v.json == "" {
			if ok {
				t.Errorf("%s: value %s, want none", v.state, got)
			}
			continue
		}
		if string(got) != v.json {
			t.Errorf("%s: value %s, want %s", v.state, got, v.json)
		}
	}

	// A filtered export, and one that fails to write.
	out.Reset()
	n, err = s.Export(ctx, EventQuery{Governor: "g", Action: ActionDelete}, &out)
	if err != nil || n != 1 || strings.Count(out.String(), "\n") != 1 || !strings.Contains(out.String(), `"action":"delete"`) {
		t.Fatalf("deletes: %d, %v: %s", n, err, out.String())
	}
	if _, err := s.Export(ctx, EventQuery{Governor: "g"}, failWriter{}); err == nil {
		t.Fatal("export to a failing writer succeeded")
	}
	if _, err := s.Export(ctx, EventQuery{}, &out); !errors.Is(err, ErrInvalid) {
		t.Fatalf("export without a governor: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// An export larger than one page streams every event once, in order.
func TestExportManyPages(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	const states, per = 30, 80 // 2,400 events: three pages
	for i := range per {
		ws := make([]Write, states)
		for j := range ws {
			ws[j] = Write{Key: key("g", fmt.Sprintf("s%02d", j)), Value: []byte(itoa(i))}
		}
		if _, err := s.WriteBatch(ctx, ws); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	n, err := s.Export(ctx, EventQuery{Governor: "g"}, &out)
	if err != nil || n != states*per {
		t.Fatalf("exported %d, %v", n, err)
	}
	sc := bufio.NewScanner(&out)
	i := 0
	for sc.Scan() {
		var x ExportedEvent
		if err := json.Unmarshal(sc.Bytes(), &x); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("s%02d", i/per); x.State != want || x.Version != uint64(i%per+1) {
			t.Fatalf("line %d: %s@%d, want %s@%d", i, x.State, x.Version, want, i%per+1)
		}
		i++
	}
	if i != n {
		t.Fatalf("%d lines, %d exported", i, n)
	}
}

// TestValidateStatesWithoutEvents: states pulled without their history
// (a tombstone among them) have records and no local event: Validate
// counts them and finds nothing wrong with them; a record of such a state
// that does not decode, has version 0, or is marked as a tombstone in the
// store while it is not one (or the other way round) is a violation.
func TestValidateStatesWithoutEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := memremote.New()
	writer := openMem(t, func(o *Options) { o.NodeID = "writer" })
	mustPut(t, writer, key("g", "pulled"), "p1")
	mustPut(t, writer, key("g", "gone"), "g1")
	mustDelete(t, writer, key("g", "gone"))
	drain(t, writer, r)

	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	p := syncer.NewPuller(s, r, syncer.PullOptions{Governors: []string{"g"}, HistoryMode: syncer.HistoryNone})
	if _, err := p.PullOnce(ctx); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, key("g", "local"), "l1")
	if evs := mustEvents(t, s, key("g", "pulled")); len(evs) != 0 {
		t.Fatalf("events of a state pulled without history: %+v", evs)
	}
	rep, err := s.Validate(ctx, "g", "")
	if err != nil || !rep.OK() || rep.States != 3 || rep.Events != 1 {
		t.Fatalf("report %+v, %v; want 3 states (2 without events), 1 event, no violation", rep, err)
	}
	for _, st := range []string{"pulled", "gone"} {
		if rep, err := s.Validate(ctx, "g", st); err != nil || !rep.OK() || rep.States != 1 || rep.Events != 0 {
			t.Fatalf("state %s: %+v, %v", st, rep, err)
		}
	}
	if rep, err := s.Validate(ctx, "g", "pull"); err != nil || rep.States != 0 {
		t.Fatalf("no such state (a prefix of one): %+v, %v", rep, err)
	}

	// Damage, written past the committer (which marks tombstones).
	pulled, err := s.Get(ctx, key("g", "pulled"))
	if err != nil {
		t.Fatal(err)
	}
	v0 := pulled
	v0.Key, v0.Version = key("g", "v0"), 0
	unmarked := pulled
	unmarked.Key, unmarked.Deleted, unmarked.Value = key("g", "unmarked"), true, nil
	putRaw(t, s,
		stateKey(key("g", "bad")), []byte{formatRecordV2},
		stateKey(v0.Key), encodeRecord(&v0),
		stateKey(unmarked.Key), encodeRecord(&unmarked),
	)
	err = s.db.Update(func(txn *badger.Txn) error {
		return txn.SetEntry(badger.NewEntry(stateKey(key("g", "marked")), encodeRecord(&pulled)).WithMeta(userMetaTombstone))
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = s.Validate(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range rep.Violations {
		got = append(got, fmt.Sprintf("%s@%d %s", v.Key.State, v.Version, v.Rule))
	}
	// Key order: the records walked by name.
	want := "bad@0 record, marked@1 record, unmarked@1 record, v0@0 record"
	if strings.Join(got, ", ") != want || rep.States != 7 {
		t.Fatalf("violations %s (%d states)\nwant %s (7 states)\n%+v", strings.Join(got, ", "), rep.States, want, rep)
	}
}
