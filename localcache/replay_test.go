package localcache

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tai-state/tai-state/syncer/memremote"
)

// replayPages pages through q and returns its items as "state:kind:version"
// strings, and the states they rebuild (state -> value, "" when deleted).
func replayPages(t *testing.T, s *Store, q ReplayQuery) ([]string, map[string]string) {
	t.Helper()
	var items []string
	states := map[string]string{}
	for pages := 0; ; pages++ {
		if pages > 10_000 {
			t.Fatal("replay does not end")
		}
		p, err := s.Replay(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range p.Items {
			switch {
			case it.Snapshot != nil && it.Event == nil:
				items = append(items, fmt.Sprintf("%s:snap:%d", it.Snapshot.State, it.Snapshot.Version))
				states[it.Snapshot.State] = string(it.Snapshot.Value)
			case it.Event != nil && it.Snapshot == nil:
				items = append(items, fmt.Sprintf("%s:%s:%d", it.Event.State, it.Event.Action, it.Event.ToVersion))
				states[it.Event.State] = string(it.Event.Value)
			default:
				t.Fatalf("item %+v", it)
			}
		}
		if p.Next == "" {
			return items, states
		}
		q.Cursor = p.Next
	}
}

// A replay gives each state's base (after cleanup, or the newest snapshot
// with Latest) and the events after it, in order, across pages, and
// rebuilds every state's latest version.
func TestReplay(t *testing.T) {
	s := openMem(t, withNow(newTickClock().Now), withSnapshots(5, 5))
	ctx := context.Background()
	a, b, only := key("g", "a"), key("g", "bb"), key("g", "c")
	fillVersions(t, s, a, 1, 12)
	mustPut(t, s, b, "b1")
	mustDelete(t, s, b)
	mustPut(t, s, key("other", "x"), "x")
	fillVersions(t, s, only, 1, 10)
	waitSnapshots(t, s)
	drain(t, s, memremote.New())
	// c's history is cut at 10: only its snapshot is left.
	if _, err := s.Cleanup(ctx, CleanupPolicy{Governor: "g", State: "c", KeepEvents: 0, MaxAge: 1}); err != nil {
		t.Fatal(err)
	}
	if got := len(mustEvents(t, s, only)); got != 0 {
		t.Fatalf("c has %d events after cleanup", got)
	}

	want := []string{"a:put:1"}
	for v := 2; v <= 12; v++ {
		want = append(want, fmt.Sprintf("a:put:%d", v))
	}
	want = append(want, "c:snap:10", "bb:put:1", "bb:delete:2") // key order: shorter names first
	for _, limit := range []int{1, 2, 5, 1000} {
		items, states := replayPages(t, s, ReplayQuery{Governor: "g", Limit: limit})
		if fmt.Sprint(items) != fmt.Sprint(want) {
			t.Fatalf("limit %d: replay %v, want %v", limit, items, want)
		}
		if states["a"] != "v12" || states["bb"] != "" || states["c"] != "v10" {
			t.Fatalf("rebuilt %v", states)
		}
	}
	items, _ := replayPages(t, s, ReplayQuery{Governor: "g", Latest: true, Limit: 3})
	if want := "[a:snap:10 a:put:11 a:put:12 c:snap:10 bb:put:1 bb:delete:2]"; fmt.Sprint(items) != want {
		t.Fatalf("latest: %v, want %s", items, want)
	}
	items, _ = replayPages(t, s, ReplayQuery{Governor: "g", State: "a", Latest: true})
	if want := "[a:snap:10 a:put:11 a:put:12]"; fmt.Sprint(items) != want {
		t.Fatalf("latest of a: %v, want %s", items, want)
	}
	// MaxBytes ends pages early, never before one item.
	items, _ = replayPages(t, s, ReplayQuery{Governor: "g", MaxBytes: 1})
	if fmt.Sprint(items) != fmt.Sprint(want) {
		t.Fatalf("max bytes 1: %v", items)
	}

	p, err := s.Replay(ctx, ReplayQuery{Governor: "g", State: "a", Limit: 2})
	if err != nil || p.Next == "" {
		t.Fatalf("first page: %+v, %v", p, err)
	}
	if _, err := s.Replay(ctx, ReplayQuery{Governor: "g", State: "bb", Cursor: p.Next}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("cursor of another state: %v", err)
	}
	for _, q := range []ReplayQuery{{Governor: "g", Cursor: "!!"}, {Governor: ""}, {Governor: "g", State: "a/b"}} {
		if _, err := s.Replay(ctx, q); !errors.Is(err, ErrInvalid) {
			t.Fatalf("replay %+v: %v", q, err)
		}
	}
}
