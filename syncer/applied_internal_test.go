package syncer

import (
	"context"
	"testing"
)

// eventsRemote is a Remote whose every state has the history of a
// histRemote (versions 1..n, op ids op-1..op-n, change time 0), and that
// counts its Events calls.
type eventsRemote struct {
	Remote
	h     histRemote
	calls *int
}

func (r eventsRemote) Events(ctx context.Context, k Key, after uint64, limit int) ([]Event, error) {
	*r.calls++
	return r.h.Events(ctx, k, after, limit)
}

// TestPlaceApplied: where the remote holds a change it reports as already
// applied, by op id and change time (applied.go).
func TestPlaceApplied(t *testing.T) {
	ctx := context.Background()
	k := Key{Governor: "g", State: "s"}
	change := func(version uint64, op string, at int64) []Entry {
		return []Entry{{Record: Record{Key: k, Version: version, OpID: op, Change: ChangeMeta{Time: at}}}}
	}
	cases := []struct {
		name    string
		n       uint64 // the remote's versions
		value   int
		entries []Entry
		remote  Record
		want    placement
		calls   int // most Events calls
	}{
		{"the record is the change", 10, 10, change(10, "op-10", 0), Record{Version: 10, OpID: "op-10"}, placedHere, 0},
		{"the record has its op id, another change time", 10, 10, change(10, "op-10", 7), Record{Version: 10, OpID: "op-10"},
			placedNowhere, 0},
		{"its event is at its version", 10, 10, change(4, "op-4", 0), Record{Version: 10, OpID: "op-10"}, placedHere, 1},
		{"its event is at its version, another change time", 10, 10, change(4, "op-4", 7), Record{Version: 10, OpID: "op-10"},
			placedNowhere, 1},
		{"renumbered", 10, 10, change(2, "op-6", 0), Record{Version: 10, OpID: "op-10"}, placedElsewhere, 2},
		{"renumbered below its local version", 10, 10, change(12, "op-6", 0), Record{Version: 10, OpID: "op-10"},
			placedElsewhere, 1},
		{"nowhere in the whole log", 10, 10, change(4, "mine", 0), Record{Version: 10, OpID: "op-10"}, placedNowhere, 2},
		{"nowhere in the latest 2,000 of a longer log", 3000, 10, change(2500, "mine", 0), Record{Version: 3000, OpID: "op-3000"},
			placedHere, 4},
		{"large events: the bytes read are bounded", 3000, 1 << 20, change(2500, "mine", 0),
			Record{Version: 3000, OpID: "op-3000"}, placedHere, 12},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			s := New(NewMemJournal("n"), eventsRemote{h: histRemote{n: tc.n, value: tc.value}, calls: &calls}, Options{})
			if got := s.placeApplied(ctx, k, tc.entries, tc.remote, true); got != tc.want || calls > tc.calls {
				t.Fatalf("placed %d after %d Events calls, want %d after at most %d", got, calls, tc.want, tc.calls)
			}
		})
	}
	if got := New(NewMemJournal("n"), eventsRemote{calls: new(int)}, Options{}).placeApplied(ctx, k, change(1, "op-1", 0),
		Record{}, false); got != placedHere {
		t.Fatalf("with no remote record: %d", got)
	}
}
