package sockapi

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// decodeString decodes a record's value, a msgpack string.
func decodeString(t *testing.T, r *wire.Record) string {
	t.Helper()
	var s string
	if err := wire.Unmarshal(r.Value, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStrongReadAnswersSharedStore: a strong get or batch_get answers with
// the shared store's record, never with a pending local change (which a
// local read still returns); a state only the sidecar has is NotFound.
func TestStrongReadAnswersSharedStore(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy})
	c := ts.hello()
	sy.setRemote(t, "g", "k", "shared", 1)
	store.put("g", "k", "shared")
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "k", Value: mustMarshal(t, "local")}))
	mustOK(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "only", Value: mustMarshal(t, "x")}))

	r := mustOK(t, c.call(getReq("g", "k", wire.ReadStrong, 0)))
	if decodeString(t, r.Record) != "shared" || r.Record.Version != 1 || r.Record.Pending || r.Record.FromCache || r.Record.Stale {
		t.Fatalf("strong get over a pending local change: %+v", r.Record)
	}
	r = c.call(getReq("g", "only", wire.ReadStrong, 0))
	expectError(t, r, wire.CodeNotFound, "")
	if r.Error.Governor != "g" || r.Error.State != "only" {
		t.Fatalf("strong get of a state only the sidecar has: %+v", r.Error)
	}
	r = mustOK(t, c.call(wire.Request{Op: wire.OpBatchGet, Consistency: wire.ReadStrong,
		Keys: []wire.Key{{Governor: "g", State: "k"}, {Governor: "g", State: "only"}, {Governor: "g", State: "k"}}}))
	if len(r.Records) != 3 || r.Records[1] != nil || r.Records[0] == nil || r.Records[2] == nil {
		t.Fatalf("strong batch_get: %+v", r.Records)
	}
	for _, rec := range []*wire.Record{r.Records[0], r.Records[2]} {
		if decodeString(t, rec) != "shared" || rec.Version != 1 || rec.Pending || rec.FromCache {
			t.Fatalf("strong batch_get record: %+v", rec)
		}
	}
	r = mustOK(t, c.call(getReq("g", "k", wire.ReadLocal, 0)))
	if decodeString(t, r.Record) != "local" || r.Record.Version != 2 || !r.Record.Pending {
		t.Fatalf("local get: %+v", r.Record)
	}
}

// TestStrongReadUnavailable: a strong read whose local changes are not
// pushed in time is Unavailable (retryable) without holding later reads
// off the shared store; one that cannot reach the shared store is
// Unavailable, and so are strong reads for offlineHold after it, without
// asking.
func TestStrongReadUnavailable(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	ts := startServer(t, store, Options{Sync: sy, FetchTimeout: 50 * time.Millisecond})
	c := ts.hello()
	sy.setRemote(t, "g", "k", "v", 1)
	stall := func(on bool) {
		sy.mu.Lock()
		sy.stall = on
		sy.mu.Unlock()
	}

	stall(true)
	r := c.call(getReq("g", "k", wire.ReadStrong, 0))
	expectError(t, r, wire.CodeUnavailable, "")
	if !r.Error.Retryable || r.Error.State != "k" || !strings.Contains(r.Error.Message, "not pushed") {
		t.Fatalf("strong get, changes not pushed in time: %+v", r.Error)
	}
	stall(false)
	sy.fetches.Store(0)
	if r := mustOK(t, c.call(getReq("g", "k", wire.ReadStrong, 0))); r.Record.Version != 1 || sy.fetches.Load() != 1 {
		t.Fatalf("strong get after a slow push: %+v, %d fetches", r.Record, sy.fetches.Load())
	}

	sy.set(true, nil)
	r = c.call(getReq("g", "k", wire.ReadStrong, 0))
	expectError(t, r, wire.CodeUnavailable, "")
	if !r.Error.Retryable || r.Error.State != "k" || !strings.Contains(r.Error.Message, "could not be asked") {
		t.Fatalf("strong get offline: %+v", r.Error)
	}
	sy.set(false, nil)
	sy.fetches.Store(0)
	for _, req := range []wire.Request{getReq("g", "k", wire.ReadStrong, 0),
		{Op: wire.OpBatchGet, Consistency: wire.ReadStrong, Keys: []wire.Key{{Governor: "g", State: "k"}}}} {
		r = c.call(req)
		expectError(t, r, wire.CodeUnavailable, "")
		if !strings.Contains(r.Error.Message, "moments ago") {
			t.Fatalf("%s right after the shared store was unreachable: %+v", req.Op, r.Error)
		}
	}
	if n := sy.fetches.Load(); n != 0 {
		t.Fatalf("%d fetches while held off the shared store", n)
	}
	ts.srv.offlineUntil.Store(0) // as if offlineHold had passed
	mustOK(t, c.call(getReq("g", "k", wire.ReadStrong, 0)))
}

// TestStrongReadAtShutdown: a graceful shutdown ends a strong read that
// waits for its pushes at once (the push loop stops with the server).
func TestStrongReadAtShutdown(t *testing.T) {
	store := newFakeStore()
	sy := newFakeSync(store)
	sy.stall = true
	ts := startServer(t, store, Options{Sync: sy, FetchTimeout: time.Hour})
	c := ts.hello()
	c.send(&wire.Request{ID: 7, Op: wire.OpGet, Governor: "g", State: "k", Consistency: wire.ReadStrong})
	waitFor(t, "the strong read waiting", func() bool { return sy.stalled.Load() == 1 })
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	r := c.recv()
	expectError(t, r, wire.CodeUnavailable, "")
	if r.ID != 7 || !strings.Contains(r.Error.Message, "shutting down") || r.Error.State != "k" {
		t.Fatalf("strong read at shutdown: %+v", r.Error)
	}
	<-stopped
}

// TestStrongReadOwnWrites: over a real store and push loop, many
// connections each write their own state asynchronously and read it back
// strongly at once (get and batch_get): the read carries that write, as
// the shared store committed it.
func TestStrongReadOwnWrites(t *testing.T) {
	for _, tc := range []struct {
		name          string
		remote        func(t *testing.T) syncer.Remote
		conns, rounds int
	}{
		{"memremote", func(*testing.T) syncer.Remote { return memremote.New() }, 12, 15},
		{"firestore", func(t *testing.T) syncer.Remote { return firestoretest.Open(t) }, 4, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := openLocalcache(t, "")
			ts := startServer(t, store, Options{Sync: newStoreSync(t, store, tc.remote(t)), FetchTimeout: 20 * time.Second})
			var wg sync.WaitGroup
			for i := range tc.conns {
				c := ts.hello()
				wg.Go(func() {
					state := fmt.Sprintf("c%d", i)
					for round := range tc.rounds {
						want := fmt.Sprintf("%d-%d", i, round)
						if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: state, Value: mustMarshal(t, want)}); r.Error != nil {
							t.Errorf("put: %v", r.Error)
							return
						}
						read := c.call(getReq("g", state, wire.ReadStrong, 0))
						batch := c.call(wire.Request{Op: wire.OpBatchGet, Consistency: wire.ReadStrong,
							Keys: []wire.Key{{Governor: "g", State: state}, {Governor: "g", State: "nobody"}}})
						if read.Error != nil || batch.Error != nil || len(batch.Records) != 2 || batch.Records[1] != nil {
							t.Errorf("%s: strong reads: %v, %v, %+v", state, read.Error, batch.Error, batch.Records)
							return
						}
						for _, rec := range []*wire.Record{read.Record, batch.Records[0]} {
							var got string
							if rec == nil || wire.Unmarshal(rec.Value, &got) != nil || got != want || rec.Version != uint64(round+1) || rec.Pending {
								t.Errorf("%s: strong read after writing %q: %+v", state, want, rec)
								return
							}
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
