package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// histApplier is a MemJournal that holds no history and records the
// batches it is given.
type histApplier struct {
	*MemJournal
	mu      sync.Mutex
	batches []RemoteBatch
}

func (a *histApplier) HistoryTop(context.Context, Key) (uint64, error) { return 0, nil }

func (a *histApplier) ApplyRemote(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	a.mu.Lock()
	a.batches = append(a.batches, b)
	a.mu.Unlock()
	return a.MemJournal.ApplyRemote(ctx, b)
}

// histRemote is a history remote whose every state has versions 1..n,
// their values of value bytes.
type histRemote struct {
	n     uint64
	value int
}

func (r histRemote) Events(_ context.Context, k Key, after uint64, limit int) ([]Event, error) {
	var out []Event
	size := 0
	for v := after + 1; v <= r.n && len(out) < limit && size <= PageBytes; v++ {
		e := Event{Key: k, Action: ActionPut, FromVersion: v - 1, ToVersion: v, OpID: fmt.Sprint("op-", v),
			Value: make([]byte, r.value)}
		out = append(out, e)
		size += EventSize(e)
	}
	return out, nil
}

func (histRemote) PutSnapshot(context.Context, Snapshot, int) (SnapshotStatus, error) {
	return SnapshotStored, nil
}

func (histRemote) Snapshots(context.Context, Key, uint64, uint64) ([]Snapshot, error) {
	return nil, nil
}

// A page of records with long histories is applied in several calls of
// about applyChunkItems items, in order, the cursor stored by the last one
// only; every event up to each record's version comes along, in pages.
func TestPullHistoryChunks(t *testing.T) {
	const states, versions = 7, 450 // two states per call: 4 calls
	a := &histApplier{MemJournal: NewMemJournal("n")}
	var recs []Record
	for i := range states {
		recs = append(recs, Record{Key: Key{Governor: "g", State: fmt.Sprint("s", i)}, Version: versions, OpID: "op",
			Origin: "x", Clock: Clock{Vector: map[string]uint64{"x": versions}}})
	}
	p := NewPuller(a, nil, PullOptions{History: histRemote{n: versions}, HistoryMode: HistoryFull})
	res, err := p.apply(context.Background(), RemoteBatch{Records: recs, Governor: "g", Cursor: "c1"})
	if err != nil || len(res.Statuses) != states || res.Count(ApplyNewer) != states {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	if len(a.batches) != 4 {
		t.Fatalf("%d ApplyRemote calls, want 4", len(a.batches))
	}
	seen := 0
	for i, b := range a.batches {
		items := 0
		for j, h := range b.History {
			items += len(h.Events)
			if n := len(h.Events); n != versions || h.Events[0].ToVersion != 1 || h.Events[n-1].ToVersion != versions {
				t.Fatalf("history of %s: %d events", b.Records[j].Key, n)
			}
			if b.Records[j].Key != recs[seen].Key {
				t.Fatalf("call %d holds %s, want %s next", i, b.Records[j].Key, recs[seen].Key)
			}
			seen++
		}
		if items+len(b.Records) > applyChunkItems && len(b.Records) > 1 {
			t.Fatalf("call %d holds %d items", i, items)
		}
		if last := i == len(a.batches)-1; (b.Governor == "g" && b.Cursor == "c1") != last {
			t.Fatalf("call %d: governor %q cursor %q", i, b.Governor, b.Cursor)
		}
	}
	if c, _ := a.Cursor(context.Background(), "g"); c != "c1" {
		t.Fatalf("cursor %q", c)
	}
}

// snapRemote is a histRemote with snapshots at the given versions.
type snapRemote struct {
	histRemote
	at []uint64
}

func (r snapRemote) Snapshots(_ context.Context, k Key, after, max uint64) ([]Snapshot, error) {
	var out []Snapshot
	for _, v := range r.at {
		if v > after && v <= max {
			out = append(out, Snapshot{Record: Record{Key: k, Version: v, OpID: fmt.Sprint("op-", v)}})
		}
	}
	return out, nil
}

// A node that holds a state's history continues it event by event, unless
// so many versions are missing that it starts again at the newest remote
// snapshot (with since_snapshot; full brings everything).
func TestFetchHistoryAfterALongAbsence(t *testing.T) {
	ctx := context.Background()
	k := Key{Governor: "g", State: "s"}
	r := snapRemote{histRemote{n: 3000}, []uint64{1000, 2000, 2990}}
	for _, tc := range []struct {
		name          string
		top, version  uint64
		mode          HistoryMode
		snaps, events int
		first         uint64 // the first event's version
	}{
		{"a short absence continues", 2600, 3000, HistorySinceSnapshot, 1, 400, 2601},
		{"a long one starts at the newest snapshot", 5, 3000, HistorySinceSnapshot, 1, 10, 2991},
		{"full brings everything", 5, 3000, HistoryFull, 3, 2995, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := fetchHistory(ctx, r, k, tc.top, tc.version, tc.mode, fetchBound{}, false)
			if err != nil || len(h.Snapshots) != tc.snaps || len(h.Events) != tc.events || h.Events[0].ToVersion != tc.first {
				t.Fatalf("%d snapshots, %d events (first %+v), %v; want %d, %d from %d", len(h.Snapshots), len(h.Events),
					h.Events[0], err, tc.snaps, tc.events, tc.first)
			}
		})
	}
}

// moreSnapsRemote is a snapRemote whose Snapshots calls after the first
// also see the snapshots at later: another node took them since.
type moreSnapsRemote struct {
	snapRemote
	later []uint64
	calls *int
}

func (r moreSnapsRemote) Snapshots(ctx context.Context, k Key, after, max uint64) ([]Snapshot, error) {
	*r.calls++
	if *r.calls > 1 {
		r.at = slices.Sorted(slices.Values(append(slices.Clone(r.at), r.later...)))
	}
	return r.snapRemote.Snapshots(ctx, k, after, max)
}

// A fetch reads at most its bound of versions above where it starts, and
// stops after the version that takes it over its bound of bytes; it says
// where it stopped (Upto); fetches continued from there, a slice at a
// time, bring what one unbounded fetch brings, each version once, and
// never start again at a snapshot taken since.
func TestFetchHistoryBounded(t *testing.T) {
	ctx := context.Background()
	k := Key{Governor: "g", State: "s"}
	const limit = 100
	versions, bytes := fetchBound{versions: limit}, fetchBound{bytes: 50_000} // bytes: about 45 events of 1 KB
	for _, tc := range []struct {
		name         string
		top, version uint64
		mode         HistoryMode
		later        []uint64 // snapshots taken after the first fetch
		bound        fetchBound
		value        int // bytes of each event's value
	}{
		{"full", 0, 3000, HistoryFull, nil, versions, 0},
		{"full after a top", 1234, 3000, HistoryFull, nil, versions, 0},
		{"since a snapshot", 0, 1900, HistorySinceSnapshot, []uint64{1500}, versions, 0},
		{"since a snapshot after a long absence", 5, 1900, HistorySinceSnapshot, []uint64{1300, 1600}, versions, 0},
		{"continued", 1500, 1900, HistorySinceSnapshot, nil, versions, 0},
		{"a short one", 0, 3000, HistorySinceSnapshot, nil, versions, 0},
		{"full, by bytes", 0, 3000, HistoryFull, nil, bytes, 1000},
		{"full after a top, by bytes", 1234, 3000, HistoryFull, nil, bytes, 1000},
		{"since a snapshot, by bytes", 0, 1900, HistorySinceSnapshot, []uint64{1500}, bytes, 1000},
		{"by both", 0, 3000, HistoryFull, nil, fetchBound{versions: 30, bytes: 50_000}, 1000},
		{"by bytes, events larger than the bound", 5, 40, HistoryFull, nil, fetchBound{bytes: 500}, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := snapRemote{histRemote{n: 3000, value: tc.value}, []uint64{1000, 2000, 2990}}
			want, err := fetchHistory(ctx, base, k, tc.top, tc.version, tc.mode, fetchBound{}, false)
			if err != nil {
				t.Fatal(err)
			}
			// What one version (its event and its snapshot) takes at most.
			version := eventSize(Event{Key: k, OpID: "op-3000", Value: make([]byte, tc.value)}) +
				applySize(Record{Key: k, OpID: "op-3000"})
			r := moreSnapsRemote{snapRemote: base, later: tc.later, calls: new(int)}
			var got History
			top, continued := tc.top, false
			for slices := 0; ; slices++ {
				if slices > 100 {
					t.Fatal("no end")
				}
				h, err := fetchHistory(ctx, r, k, top, tc.version, tc.mode, tc.bound, continued)
				if err != nil {
					t.Fatal(err)
				}
				lo, hi := uint64(math.MaxUint64), uint64(0)
				for _, e := range h.Events {
					lo, hi = min(lo, e.ToVersion), max(hi, e.ToVersion)
				}
				for _, s := range h.Snapshots {
					lo, hi = min(lo, s.Version), max(hi, s.Version)
				}
				if n := tc.bound.versions; n > 0 && (len(h.Events) > int(n) || len(h.Snapshots) > int(n) || (hi > 0 && hi-lo >= n+1)) || h.From != top {
					t.Fatalf("slice %d from v%d: %d events, %d snapshots, versions %d to %d, from %d", slices, top,
						len(h.Events), len(h.Snapshots), lo, hi, h.From)
				}
				// Over the bound of bytes only by its last version (and the
				// snapshot a since_snapshot fetch starts at), and never
				// stopped short of it.
				if z := historySize(h); tc.bound.bytes > 0 && z > tc.bound.bytes+2*version ||
					tc.bound.bytes > 0 && tc.bound.versions == 0 && h.Upto != 0 && z <= tc.bound.bytes {
					t.Fatalf("slice %d from v%d: %d bytes, up to v%d; bound %d", slices, top, z, h.Upto, tc.bound.bytes)
				}
				if h.Upto != 0 && (h.Upto >= tc.version || hi > h.Upto || h.Upto <= top) {
					t.Fatalf("slice %d from v%d: up to %d, with versions up to %d", slices, top, h.Upto, hi)
				}
				got.Events = append(got.Events, h.Events...)
				got.Snapshots = append(got.Snapshots, h.Snapshots...)
				if h.Upto == 0 {
					if slices == 0 && tc.bound.bytes > 0 {
						t.Fatal("one slice brought everything")
					}
					break
				}
				top, continued = h.Upto, true
			}
			// The same events; the same snapshots, and those taken since of
			// versions the slices read.
			var extra []Snapshot
			for _, s := range got.Snapshots {
				if !slices.ContainsFunc(want.Snapshots, func(w Snapshot) bool { return w.Version == s.Version }) {
					extra = append(extra, s)
					if !slices.Contains(tc.later, s.Version) {
						t.Fatalf("snapshot %d brought", s.Version)
					}
				}
			}
			if !reflect.DeepEqual(got.Events, want.Events) || len(got.Snapshots)-len(extra) != len(want.Snapshots) {
				t.Fatalf("slices brought %d events, %d snapshots; one fetch brings %d, %d", len(got.Events),
					len(got.Snapshots), len(want.Events), len(want.Snapshots))
			}
		})
	}
	// FetchHistory's own bound.
	h, err := FetchHistory(ctx, histRemote{n: 3 * maxFetchedHistory}, k, 7, 3*maxFetchedHistory, HistoryFull)
	if err != nil || len(h.Events) != maxFetchedHistory || h.Events[0].ToVersion != 8 || h.Upto != 7+maxFetchedHistory || h.From != 7 {
		t.Fatalf("FetchHistory: %d events, from %d up to %d, %v", len(h.Events), h.From, h.Upto, err)
	}
}

// pageRemote is a HistoryRemote that records the bytes (eventSize) each
// Events call returns.
type pageRemote struct {
	HistoryRemote
	pages *[]int
}

func (r pageRemote) Events(ctx context.Context, k Key, after uint64, limit int) ([]Event, error) {
	evs, err := r.HistoryRemote.Events(ctx, k, after, limit)
	n := 0
	for _, e := range evs {
		n += eventSize(e)
	}
	*r.pages = append(*r.pages, n)
	return evs, err
}

// TestFetchHistoryOfLargeValues: with values of max_value (1 MB), FetchHistory
// stops after the event that takes it over its default bound of bytes (32
// MiB), far below its 2,000 versions, and no Events call returns much more
// than what is left of the bound: the rest comes in the next slice, and
// the slices bring what one unbounded fetch brings.
func TestFetchHistoryOfLargeValues(t *testing.T) {
	ctx := context.Background()
	k := Key{Governor: "g", State: "s"}
	const versions, value = 40, 1_000_000
	var pages []int
	r := pageRemote{histRemote{n: versions, value: value}, &pages}
	h, err := FetchHistory(ctx, r, k, 0, versions, HistoryFull)
	if err != nil {
		t.Fatal(err)
	}
	one := eventSize(h.Events[0])
	cut := uint64(maxFetchedHistoryBytes/one + 1) // the event that takes it over
	if h.Upto != cut || uint64(len(h.Events)) != cut || h.Events[cut-1].ToVersion != cut || h.From != 0 {
		t.Fatalf("FetchHistory: %d events, up to v%d (from %d); want %d, up to v%d", len(h.Events), h.Upto, h.From, cut, cut)
	}
	read := 0
	for i, n := range pages {
		if n > maxFetchedHistoryBytes-read+maxEventBytes {
			t.Fatalf("Events call %d returned %d bytes, with %d read before", i, n, read)
		}
		read += n
	}
	rest, err := FetchHistory(ctx, r, k, h.Upto, versions, HistoryFull)
	if err != nil || rest.Upto != 0 || rest.From != cut || len(rest.Events) != versions-int(cut) {
		t.Fatalf("the rest: %d events, from %d up to %d, %v", len(rest.Events), rest.From, rest.Upto, err)
	}
	all, err := fetchHistory(ctx, r, k, 0, versions, HistoryFull, fetchBound{}, false)
	if err != nil || !reflect.DeepEqual(append(h.Events, rest.Events...), all.Events) {
		t.Fatalf("the slices differ from one unbounded fetch (%d events), %v", len(all.Events), err)
	}
}

// badHistRemote is a histRemote whose history of state bad does not decode.
type badHistRemote struct{ histRemote }

func (r badHistRemote) Events(ctx context.Context, k Key, after uint64, limit int) ([]Event, error) {
	if k.State == "bad" {
		return nil, &Error{Op: "events", Key: k, Kind: ErrUndecodable,
			Err: &UndecodableError{Key: k, Doc: "governors/g/events/op-2", Err: errors.New("to_version: a string")}}
	}
	return r.histRemote.Events(ctx, k, after, limit)
}

// A record whose remote history does not decode is applied without it,
// with a warning; the others of the page get theirs, and the cursor moves.
func TestPullUndecodableHistory(t *testing.T) {
	a := &histApplier{MemJournal: NewMemJournal("n")}
	var logs strings.Builder
	p := NewPuller(a, nil, PullOptions{History: badHistRemote{histRemote{n: 3}}, HistoryMode: HistoryFull,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	var recs []Record
	for _, s := range []string{"bad", "good"} {
		recs = append(recs, Record{Key: Key{Governor: "g", State: s}, Version: 3, OpID: "op", Origin: "x",
			Clock: Clock{Vector: map[string]uint64{"x": 3}}})
	}
	res, err := p.apply(context.Background(), RemoteBatch{Records: recs, Governor: "g", Cursor: "c1"})
	if err != nil || res.Count(ApplyNewer) != 2 {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	b := a.batches[0]
	if len(b.History[0].Events) != 0 || len(b.History[1].Events) != 3 {
		t.Fatalf("histories: %d and %d events, want 0 and 3", len(b.History[0].Events), len(b.History[1].Events))
	}
	if c, _ := a.Cursor(context.Background(), "g"); c != "c1" {
		t.Fatalf("cursor %q", c)
	}
	if !strings.Contains(logs.String(), "remote history does not decode") || !strings.Contains(logs.String(), "governors/g/events/op-2") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// holeApplier is a histApplier that lists holes in its history.
type holeApplier struct {
	*histApplier
	holes    []HistoryHole
	refilled map[Key]uint64
}

func (a *holeApplier) HistoryHoles(_ context.Context, _, after string, limit int) ([]HistoryHole, error) {
	var out []HistoryHole
	for _, h := range a.holes {
		if h.Key.State > after && len(out) < limit {
			out = append(out, h)
		}
	}
	return out, nil
}

func (a *holeApplier) HistoryHole(_ context.Context, k Key) (HistoryHole, bool, error) {
	for _, h := range a.holes {
		if h.Key == k {
			return h, true, nil
		}
	}
	return HistoryHole{}, false, nil
}

func (a *holeApplier) HistoryRefilled(_ context.Context, k Key, version uint64) error {
	a.refilled[k] = version
	return nil
}

// getRemote is a remote that only answers Get, from recs.
type getRemote struct {
	Remote
	recs map[Key]Record
}

func (r getRemote) Get(_ context.Context, k Key) (Record, error) {
	rec, ok := r.recs[k]
	if !ok {
		return Record{}, Errorf("get", k, ErrNotFound, "no record")
	}
	return rec, nil
}

// A poll fills the holes the applier lists: each state's record is read and
// applied with the remote history after the hole's start; a state the
// remote has no record of has nothing to fill; one with a local write
// pending keeps its hole.
func TestRefillHistory(t *testing.T) {
	ctx := context.Background()
	filled, gone, pending := Key{Governor: "g", State: "filled"}, Key{Governor: "g", State: "gone"}, Key{Governor: "g", State: "pending"}
	j := NewMemJournal("n")
	if _, err := j.Append(MemWrite{Key: pending, Value: []byte("local")}); err != nil {
		t.Fatal(err)
	}
	a := &holeApplier{histApplier: &histApplier{MemJournal: j}, refilled: make(map[Key]uint64),
		holes: []HistoryHole{{Key: filled, After: 2}, {Key: gone, After: 1}, {Key: pending, After: 0}}}
	rec := func(k Key) Record {
		return Record{Key: k, Version: 5, OpID: "op-5", Origin: "x", Clock: Clock{Vector: map[string]uint64{"x": 5}}}
	}
	r := getRemote{recs: map[Key]Record{filled: rec(filled), pending: rec(pending)}}
	p := NewPuller(a, r, PullOptions{History: histRemote{n: 5}, HistoryMode: HistorySinceSnapshot})
	var rep PullReport
	p.refillHistory(ctx, "g", &rep)
	if len(a.batches) != 2 || rep.Applied != 1 || rep.Pending != 1 {
		t.Fatalf("%d ApplyRemote calls, report %+v; want the records of %s and %s", len(a.batches), rep, filled, pending)
	}
	if h := a.batches[0].History[0]; a.batches[0].Governor != "" || len(h.Events) != 3 || h.Events[0].ToVersion != 3 {
		t.Fatalf("history applied with %s: %+v (governor %q); want versions 3 to 5, no cursor", filled, h, a.batches[0].Governor)
	}
	if len(a.refilled) != 2 || a.refilled[filled] != 5 || a.refilled[gone] != 0 {
		t.Fatalf("refilled %v; want %s up to 5, %s (no record)", a.refilled, filled, gone)
	}
	if _, ok := a.refilled[pending]; ok {
		t.Fatalf("the hole of %s, which has a local write pending, was dropped", pending)
	}
}

// failGetRemote is a getRemote whose Get of one key fails.
type failGetRemote struct {
	getRemote
	fail Key
	err  error
}

func (r failGetRemote) Get(ctx context.Context, k Key) (Record, error) {
	if k == r.fail {
		return Record{}, r.err
	}
	return r.getRemote.Get(ctx, k)
}

// TestRefillPastAFailingHole: a hole that cannot be filled now (its record
// cannot be read) does not hold back the holes after it; one whose remote
// history does not decode is given up, a gap, rather than asked for at
// every poll.
func TestRefillPastAFailingHole(t *testing.T) {
	ctx := context.Background()
	// In this order; badHistRemote's history of state "bad" does not decode.
	down, bad, filled := Key{Governor: "g", State: "down"}, Key{Governor: "g", State: "bad"}, Key{Governor: "g", State: "filled"}
	rec := func(k Key) Record {
		return Record{Key: k, Version: 5, OpID: "op-5", Origin: "x", Clock: Clock{Vector: map[string]uint64{"x": 5}}}
	}
	a := &holeApplier{histApplier: &histApplier{MemJournal: NewMemJournal("n")}, refilled: make(map[Key]uint64),
		holes: []HistoryHole{{Key: down, After: 2}, {Key: bad, After: 2}, {Key: filled, After: 2}}}
	r := failGetRemote{getRemote: getRemote{recs: map[Key]Record{bad: rec(bad), filled: rec(filled)}}, fail: down,
		err: Errorf("get", down, ErrUnavailable, "no route")}
	p := NewPuller(a, r, PullOptions{History: badHistRemote{histRemote{n: 5}}, HistoryMode: HistorySinceSnapshot})
	var rep PullReport
	p.refillHistory(ctx, "g", &rep)
	if a.refilled[filled] != 5 {
		t.Fatalf("refilled %v: the hole of %s, after one that failed, was not filled", a.refilled, filled)
	}
	if v, ok := a.refilled[bad]; !ok || v != 5 {
		t.Fatalf("refilled %v: the hole of %s, whose history does not decode, was not given up", a.refilled, bad)
	}
	if _, ok := a.refilled[down]; ok {
		t.Fatalf("the hole of %s, whose record could not be read, was dropped", down)
	}
}

// TestRefillTakesTurns: each poll fills a page of holes, taking up after the
// last poll's page, so that a page of holes that stay (their states have a
// local write pending) does not keep the holes after it waiting for good.
func TestRefillTakesTurns(t *testing.T) {
	ctx := context.Background()
	j := NewMemJournal("n")
	a := &holeApplier{histApplier: &histApplier{MemJournal: j}, refilled: make(map[Key]uint64)}
	r := getRemote{recs: make(map[Key]Record)}
	for i := range refillPage + 1 {
		k := Key{Governor: "g", State: fmt.Sprintf("s%04d", i)}
		a.holes = append(a.holes, HistoryHole{Key: k, After: 2})
		r.recs[k] = Record{Key: k, Version: 5, OpID: "op-5", Origin: "x", Clock: Clock{Vector: map[string]uint64{"x": 5}}}
		if i < refillPage { // the first page stays: a local write is pending
			if _, err := j.Append(MemWrite{Key: k, Value: []byte("local")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	last := a.holes[refillPage].Key
	p := NewPuller(a, r, PullOptions{History: histRemote{n: 5}, HistoryMode: HistorySinceSnapshot})
	var rep PullReport
	p.refillHistory(ctx, "g", &rep)
	if len(a.refilled) != 0 {
		t.Fatalf("first poll refilled %v; want none (every state of the page has a write pending)", a.refilled)
	}
	p.refillHistory(ctx, "g", &rep)
	if a.refilled[last] != 5 || len(a.refilled) != 1 {
		t.Fatalf("second poll refilled %v; want %s, after the first page", a.refilled, last)
	}
}

// heldBytes counts the bytes of history (historySize) fetched and not yet
// given to the applier, and the most it reached.
type heldBytes struct{ now, most int }

// heldRemote is a HistoryRemote that counts what its Events calls return
// into held.
type heldRemote struct {
	HistoryRemote
	held *heldBytes
}

func (r heldRemote) Events(ctx context.Context, k Key, after uint64, limit int) ([]Event, error) {
	evs, err := r.HistoryRemote.Events(ctx, k, after, limit)
	for _, e := range evs {
		r.held.now += eventSize(e)
	}
	r.held.most = max(r.held.most, r.held.now)
	return evs, err
}

// heldApplier is a histApplier that takes what each ApplyRemote call holds
// off held, and fails its call failAt (counted from 1; 0: none).
type heldApplier struct {
	*histApplier
	held   *heldBytes
	calls  int
	failAt int
}

func (a *heldApplier) ApplyRemote(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	if a.calls++; a.calls == a.failAt {
		return ApplyResult{}, ErrMemJournal
	}
	for _, h := range b.History {
		a.held.now -= historySize(h)
	}
	return a.histApplier.ApplyRemote(ctx, b)
}

// A page whose records' histories together take more than the page budget
// (the fetch bound of bytes) is applied in groups: the histories of a
// group are fetched, the group is applied, then the next one's are, so that
// what the page holds at once stays within about twice the budget. The
// records go in order, each with its whole history, and only the last call
// stores the cursor: a failure between groups leaves the old cursor, and
// the page applied again finds the first groups' records in.
func TestPullHistoryGroups(t *testing.T) {
	ctx := context.Background()
	const states, versions, value, budget = 10, 20, 10_000, 500_000 // 200 KB a history: groups of 3
	held := &heldBytes{}
	a := &heldApplier{histApplier: &histApplier{MemJournal: NewMemJournal("n")}, held: held, failAt: 4}
	var recs []Record
	for i := range states {
		recs = append(recs, Record{Key: Key{Governor: "g", State: fmt.Sprint("s", i)}, Version: versions, OpID: "op",
			Origin: "x", Clock: Clock{Vector: map[string]uint64{"x": versions}}})
	}
	p := NewPuller(a, nil, PullOptions{History: heldRemote{histRemote{n: versions, value: value}, held},
		HistoryMode: HistoryFull, MaxFetchedHistoryBytes: budget})
	page := RemoteBatch{Records: recs, Governor: "g", Cursor: "c1"}

	// One record a call (a history takes most of one): the fourth call,
	// the first of the second group, fails.
	if _, err := p.apply(ctx, page); !errors.Is(err, ErrMemJournal) {
		t.Fatalf("apply: %v, want the applier's failure", err)
	}
	if c, _ := a.Cursor(ctx, "g"); c != "" || len(a.Keys("g")) != 3 {
		t.Fatalf("after a failure in the second group: cursor %q, records %v; want none, and the first group's", c, a.Keys("g"))
	}
	*held, a.batches = heldBytes{}, nil
	res, err := p.apply(ctx, page)
	if err != nil || len(res.Statuses) != states || res.Count(ApplyStale) != 3 || res.Count(ApplyNewer) != states-3 {
		t.Fatalf("apply again: %+v, %v; want the first group stale, the others newer", res, err)
	}
	if held.most > 2*budget+versions*value || held.now != 0 {
		t.Fatalf("the page held up to %d bytes of history at once (%d left); budget %d", held.most, held.now, budget)
	}
	seen := 0
	for i, b := range a.batches {
		for j, h := range b.History {
			if b.Records[j].Key != recs[seen].Key || len(h.Events) != versions {
				t.Fatalf("call %d holds %s with %d events, want %s next, with %d", i, b.Records[j].Key, len(h.Events),
					recs[seen].Key, versions)
			}
			seen++
		}
		if last := i == len(a.batches)-1; (b.Governor == "g" && b.Cursor == "c1") != last || !last && b.Governor != "" {
			t.Fatalf("call %d: governor %q cursor %q", i, b.Governor, b.Cursor)
		}
	}
	if c, _ := a.Cursor(ctx, "g"); c != "c1" || seen != states {
		t.Fatalf("cursor %q, %d records applied", c, seen)
	}
	if st := p.Stats(); st.Deliveries != 1 || st.Records != states || st.Applied != states-3 || st.Stale != 3 {
		t.Fatalf("stats %+v; want one delivery of the page", st)
	}
}
