package remotetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// Plant writes a document of key that does not decode into a Remote, as
// another tool or another version of the sidecar might, not through Commit:
// a field of the wrong type, with a commit time that puts it in the change
// stream after every commit that returned before Plant was called.
type Plant func(t *testing.T, key syncer.Key)

// testUndecodable: a document that does not decode fails the reads and
// commits of its key with ErrUndecodable (never ErrNotFound, never
// overwritten), and is left out of Changes and Watch, which go past it and
// keep delivering every other state of its governor.
func testUndecodable(t *testing.T, ctx context.Context, r syncer.Remote, plant Plant) {
	a := syncer.Key{Governor: "u", State: "a"}
	bad := syncer.Key{Governor: "u", State: "bad"}
	b := syncer.Key{Governor: "u", State: "b"}
	ca := change(a, 0, "n", nil, "a1")
	commit(t, ctx, r, false, ca)
	plant(t, bad)
	commit(t, ctx, r, false, change(b, 0, "n", nil, "b1"))

	_, err := r.Get(ctx, bad)
	first := wantUndecodable(t, "Get", err, bad)

	// A commit does not take the document for absent: it fails, and
	// writes nothing of its batch.
	ca2 := change(a, 1, "n", ca.Record.Clock.Vector, "a2")
	_, err = r.Commit(ctx, syncer.Batch{Changes: []syncer.Change{ca2, change(bad, 0, "n", nil, "over")}})
	wantUndecodable(t, "Commit", err, bad)
	var re *syncer.Error
	if !errors.As(err, &re) || re.Key != bad {
		t.Fatalf("Commit's error does not name %s: %v", bad, err)
	}
	if got := get(t, ctx, r, a); got.Version != 1 {
		t.Fatalf("a batch refused for %s wrote %s v%d", bad, a, got.Version)
	}
	_, err = r.Get(ctx, bad)
	wantUndecodable(t, "Get after the refused commit", err, bad)

	// Changes leaves it out and goes past it.
	recs, next, err := r.Changes(ctx, "u", "", 0)
	wantSkipped(t, "Changes", err, bad)
	if len(recs) != 2 || recs[0].Key != a || recs[1].Key != b {
		t.Fatalf("Changes: %v, want %s and %s", keysOf(recs), a, b)
	}
	if recs, again, err := r.Changes(ctx, "u", next, 0); err != nil || len(recs) != 0 || again != next {
		t.Fatalf("Changes after the cursor: %v %q %v, want nothing", keysOf(recs), again, err)
	}

	// Pages of one: the document left out takes its place in a page.
	var got []syncer.Key
	left := 0
	cur := syncer.Cursor("")
	for range 10 {
		recs, next, err := r.Changes(ctx, "u", cur, 1)
		n := len(recs)
		var sk *syncer.SkippedError
		if errors.As(err, &sk) {
			n += len(sk.Docs)
			left += len(sk.Docs)
			err = nil
		}
		if err != nil {
			t.Fatalf("Changes by 1: %v", err)
		}
		if n > 1 {
			t.Fatalf("Changes by 1 returned %d records and documents left out", n)
		}
		got = append(got, keysOf(recs)...)
		if len(recs) == 0 && next == cur {
			break
		}
		cur = next
	}
	if len(got) != 2 || got[0] != a || got[1] != b || left != 1 {
		t.Fatalf("paging by 1: %v and %d left out, want %s, %s and 1", got, left, a, b)
	}

	// Written again, it is left out again (a new version).
	plant(t, bad)
	_, again, err := r.Changes(ctx, "u", next, 0)
	var sk *syncer.SkippedError
	if !errors.As(err, &sk) || len(sk.Docs) != 1 || sk.Docs[0].Key != bad {
		t.Fatalf("Changes after the document was written again: %v", err)
	}
	if !first.Time.IsZero() && !sk.Docs[0].Time.After(first.Time) {
		t.Fatalf("the document written again has time %v, the first %v", sk.Docs[0].Time, first.Time)
	}
	if again == next {
		t.Fatal("the cursor did not go past the document written again")
	}

	if w, ok := r.(syncer.Watcher); ok {
		watchUndecodable(t, ctx, w, r, plant)
	}
}

// watchUndecodable: a watch leaves out the documents that do not decode,
// those there when it starts and those written while it runs, and delivers
// the rest.
func watchUndecodable(t *testing.T, ctx context.Context, w syncer.Watcher, r syncer.Remote, plant Plant) {
	type delivery struct {
		recs    []syncer.Record
		next    syncer.Cursor
		skipped []*syncer.UndecodableError
	}
	ch := make(chan delivery, 100)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		w.Watch(wctx, "u", "", func(recs []syncer.Record, next syncer.Cursor, skipped []*syncer.UndecodableError) error {
			ch <- delivery{recs, next, skipped}
			return nil
		})
	})
	defer func() {
		stop()
		wg.Wait()
	}()
	seen := make(map[syncer.Key]bool)
	left := make(map[syncer.Key]int)
	var last syncer.Cursor
	waitFor := func(want ...syncer.Key) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			all := true
			for _, k := range want {
				all = all && seen[k]
			}
			if all {
				return
			}
			select {
			case d := <-ch:
				for _, rec := range d.recs {
					seen[rec.Key] = true
				}
				for _, s := range d.skipped {
					if s.Key.Governor != "u" || s.Doc == "" || s.Err == nil {
						t.Fatalf("watch left out %+v", s)
					}
					seen[s.Key] = true
					left[s.Key]++
				}
				last = d.next
			case <-deadline:
				t.Fatalf("watch did not deliver %v; saw %v", want, seen)
			}
		}
	}
	a, b := syncer.Key{Governor: "u", State: "a"}, syncer.Key{Governor: "u", State: "b"}
	bad, bad2 := syncer.Key{Governor: "u", State: "bad"}, syncer.Key{Governor: "u", State: "bad2"}
	waitFor(a, b, bad)
	plant(t, bad2)
	c := syncer.Key{Governor: "u", State: "c"}
	commit(t, ctx, r, false, change(c, 0, "n", nil, "c1"))
	waitFor(c, bad2)
	if left[bad] != 1 || left[bad2] != 1 || left[a]+left[b]+left[c] != 0 {
		t.Fatalf("watch left out %v, want %s and %s once each", left, bad, bad2)
	}
	// The watch's cursor is past all of it.
	recs, _, err := r.Changes(ctx, "u", last, 0)
	if err != nil || len(recs) != 0 {
		t.Fatalf("Changes after the watch's cursor: %v %v", keysOf(recs), err)
	}
}

// wantUndecodable checks that err is the ErrUndecodable of key, and returns
// its *UndecodableError.
func wantUndecodable(t *testing.T, what string, err error, key syncer.Key) *syncer.UndecodableError {
	t.Helper()
	var bad *syncer.UndecodableError
	switch {
	case !errors.Is(err, syncer.ErrUndecodable) || !errors.Is(err, syncer.ErrPermanent):
		t.Fatalf("%s: %v, want ErrUndecodable and ErrPermanent", what, err)
	case errors.Is(err, syncer.ErrNotFound) || syncer.IsTransient(err):
		t.Fatalf("%s: %v also matches ErrNotFound or ErrUnavailable", what, err)
	case !errors.As(err, &bad) || bad.Key != key || bad.Doc == "" || bad.Err == nil:
		t.Fatalf("%s: %v does not describe the document of %s", what, err, key)
	}
	return bad
}

// wantSkipped checks that err is the *SkippedError of a page that left out
// key's document only.
func wantSkipped(t *testing.T, what string, err error, key syncer.Key) {
	t.Helper()
	var sk *syncer.SkippedError
	if !errors.As(err, &sk) || len(sk.Docs) != 1 || !errors.Is(err, syncer.ErrUndecodable) {
		t.Fatalf("%s: %v, want a *SkippedError of one document", what, err)
	}
	wantUndecodable(t, what, sk.Docs[0], key)
}

func keysOf(recs []syncer.Record) []syncer.Key {
	keys := make([]syncer.Key, len(recs))
	for i, r := range recs {
		keys[i] = r.Key
	}
	return keys
}
