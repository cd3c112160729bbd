package sockapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
	"github.com/tai-state/tai-state/txn"
)

// TestParseFence: the fence field is a map of resource and token; other
// shapes are InvalidArgument naming the field.
func TestParseFence(t *testing.T) {
	base := []any{"id", 1, "op", "put", "governor", "g", "state", "s", "value", 1}
	body := func(fence any) []byte { return omap(t, append(base, "fence", fence)...) }
	for _, tc := range []struct {
		name  string
		fence any
		want  *wire.Fence
		field string
	}{
		{"map", wire.Raw(omap(t, "resource", "lock", "token", 7)), &wire.Fence{Resource: "lock", Token: 7}, ""},
		{"unknown keys skipped", wire.Raw(omap(t, "x", []any{1, map[string]int{"a": 1}}, "token", 3, "resource", "r")),
			&wire.Fence{Resource: "r", Token: 3}, ""},
		{"nil", nil, nil, ""},
		{"empty map", wire.Raw(omap(t)), &wire.Fence{}, ""},
		{"nil token", wire.Raw(omap(t, "resource", "r", "token", nil)), &wire.Fence{Resource: "r"}, ""},
		{"array", []any{"r", 1}, nil, "fence"},
		{"string", "r:1", nil, "fence"},
		{"binary", []byte("r"), nil, "fence"},
		{"negative token", wire.Raw(omap(t, "resource", "r", "token", -1)), nil, "fence.token"},
		{"string token", wire.Raw(omap(t, "resource", "r", "token", "1")), nil, "fence.token"},
		{"int resource", wire.Raw(omap(t, "resource", 5, "token", 1)), nil, "fence.resource"},
		{"int key", wire.Raw{0x81, 0x01, 0x01}, nil, "fence"},
		{"too deep", wire.Raw(omap(t, "x", nested(wire.MaxDepth))), nil, "fence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req wire.Request
			_, werr := parseRequest(body(tc.fence), &req)
			if tc.field != "" {
				if werr == nil || werr.Code != wire.CodeInvalidArgument || werr.Field != tc.field {
					t.Fatalf("error %+v, want InvalidArgument on %s", werr, tc.field)
				}
				return
			}
			if werr != nil {
				t.Fatal(werr)
			}
			if (req.Fence == nil) != (tc.want == nil) || req.Fence != nil && *req.Fence != *tc.want {
				t.Fatalf("fence %+v, want %+v", req.Fence, tc.want)
			}
			if req.ID != 1 || req.State != "s" {
				t.Fatalf("request %+v", req)
			}
		})
	}
}

// TestFenceValidation: an invalid fence is refused before the store sees
// the write.
func TestFenceValidation(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	c := ts.hello()
	v := mustMarshal(t, 1)
	item := []wire.Item{{Governor: "g", State: "s", Value: v}}
	for _, tc := range []struct {
		fence wire.Fence
		field string
	}{
		{wire.Fence{Resource: "a/b", Token: 1}, "fence.resource"},
		{wire.Fence{Resource: "", Token: 1}, "fence.resource"},
		{wire.Fence{Resource: "__x__", Token: 1}, "fence.resource"},
		{wire.Fence{Resource: strings.Repeat("r", wire.MaxNameSize+1), Token: 1}, "fence.resource"},
		{wire.Fence{Resource: "r", Token: 0}, "fence.token"},
	} {
		f := tc.fence
		for _, req := range []wire.Request{
			{Op: wire.OpPut, Governor: "g", State: "s", Value: v, Fence: &f},
			{Op: wire.OpDelete, Governor: "g", State: "s", Fence: &f},
			{Op: wire.OpBatchPut, Items: item, Fence: &f},
		} {
			expectError(t, c.call(req), wire.CodeInvalidArgument, tc.field)
		}
	}
	if n := store.writes.Load(); n != 0 {
		t.Fatalf("the store received %d writes", n)
	}
}

// storeSync is the shared store over a real local store, as the sidecar
// wires it: the puller reads through, the store's strong writes run
// against it, and a push loop runs until the test ends.
type storeSync struct {
	store *localcache.Store
	pull  *syncer.Puller
}

func newStoreSync(t *testing.T, store *localcache.Store, remote syncer.Remote) *storeSync {
	push := syncer.New(store, remote, syncer.Options{Backoff: syncer.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond},
		Interval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = push.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &storeSync{store: store, pull: syncer.NewPuller(store, remote, syncer.PullOptions{})}
}

func (s *storeSync) Fetch(ctx context.Context, k localcache.Key) error {
	_, _, err := s.pull.Fetch(ctx, syncer.Key(k))
	if errors.Is(err, syncer.ErrNotFound) {
		return fmt.Errorf("%w: %v", ErrRemoteNotFound, err)
	}
	return err
}

func (s *storeSync) FreshAt(governor string) (time.Time, bool) { return s.pull.FreshAt(governor) }

func (s *storeSync) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	return s.store.WriteStrong(ctx, s.pull, ws)
}

func (s *storeSync) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	return s.store.ReadStrong(ctx, s.pull, keys)
}

// expectFenceRejected checks a FenceRejected reply about gov/state.
func expectFenceRejected(t *testing.T, r wire.Response, state string, want wire.FenceRejection) {
	t.Helper()
	expectError(t, r, wire.CodeFenceRejected, "")
	if e := r.Error; e.Retryable || e.Fence == nil || *e.Fence != want || e.Governor != "g" || e.State != state {
		t.Fatalf("FenceRejected %+v (fence %+v), want %+v on g/%s", e, e.Fence, want, state)
	}
}

// fencedServerStore returns a store and a memremote whose lock "lock" was
// last granted with token 5; grant(n) records a new grant, made through
// another sidecar.
func fencedServerStore(t *testing.T) (*localcache.Store, *memremote.Remote, func(token uint64)) {
	remote := memremote.New()
	var token atomic.Uint64
	token.Store(5)
	remote.SetLockTokens(func(_ context.Context, resource string) (uint64, error) {
		if resource != "lock" {
			return 0, nil
		}
		return token.Load(), nil
	})
	return openLocalcache(t, ""), remote, token.Store
}

// TestFencedWrites: writes under a stale fence are rejected by the sidecar
// with FenceRejected and its details; a sync or strong write the shared
// store rejects for its fence also gets FenceRejected (with the shared
// store's token), and is on the failed list with that reason.
func TestFencedWrites(t *testing.T) {
	store, remote, grant := fencedServerStore(t)
	c := startServer(t, store, Options{Sync: newStoreSync(t, store, remote), SyncTimeout: 10 * time.Second}).hello()
	v := mustMarshal(t, "v")
	f := func(tok uint64) *wire.Fence { return &wire.Fence{Resource: "lock", Token: tok} }

	r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(5), Consistency: "sync"})
	if r.Error != nil || r.Record.Version != 1 || r.Record.Pending {
		t.Fatalf("fenced sync put: %+v %v", r.Record, r.Error)
	}
	// Below the token this sidecar has seen: rejected here.
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(4)})
	expectFenceRejected(t, r, "a", wire.FenceRejection{Resource: "lock", Token: 4, Current: 5})
	r = c.call(wire.Request{Op: wire.OpDelete, Governor: "g", State: "a", Fence: f(3)})
	expectFenceRejected(t, r, "a", wire.FenceRejection{Resource: "lock", Token: 3, Current: 5})
	r = c.call(wire.Request{Op: wire.OpBatchPut, Fence: f(4), Items: []wire.Item{
		{Governor: "g", State: "b", Value: v}, {Governor: "g", State: "c", Value: v}}})
	expectFenceRejected(t, r, "b", wire.FenceRejection{Resource: "lock", Token: 4, Current: 5})
	for _, s := range []string{"b", "c"} {
		if _, err := store.Get(context.Background(), localcache.Key{Governor: "g", State: s}); !errors.Is(err, localcache.ErrNotFound) {
			t.Fatalf("g/%s written by a rejected batch: %v", s, err)
		}
	}

	// The lock is granted again elsewhere (token 6): this sidecar has not
	// seen it and accepts the write; the shared store rejects it.
	grant(6)
	rej := wire.FenceRejection{Resource: "lock", Token: 5, Current: 6}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(5), Consistency: "sync"})
	expectFenceRejected(t, r, "a", rej)
	if !strings.Contains(r.Error.Message, "failed list") {
		t.Fatalf("message %q", r.Error.Message)
	}
	r = c.call(wire.Request{Op: wire.OpBatchPut, Fence: f(5), Consistency: "sync", Items: []wire.Item{
		{Governor: "g", State: "b", Value: v}, {Governor: "g", State: "c", Value: v}}})
	expectFenceRejected(t, r, "b", rej)
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(5), Consistency: "strong"})
	expectFenceRejected(t, r, "a", rej)
	r = c.call(wire.Request{Op: wire.OpFailed})
	if r.Error != nil || len(r.Failed) != 4 {
		t.Fatalf("failed list: %+v %v", r.Failed, r.Error)
	}
	for _, fl := range r.Failed {
		if !strings.Contains(fl.Reason, "FenceRejected") {
			t.Fatalf("failed entry %+v", fl)
		}
	}
	if rec, err := remote.Get(context.Background(), syncer.Key{Governor: "g", State: "a"}); err != nil || rec.Version != 1 {
		t.Fatalf("remote g/a: %+v, %v", rec, err)
	}

	// Under the new grant everything goes through, and the old token is
	// now rejected here.
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(6), Consistency: "strong"})
	if r.Error != nil {
		t.Fatalf("strong put under the current grant: %v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: v, Fence: f(5)})
	expectFenceRejected(t, r, "a", wire.FenceRejection{Resource: "lock", Token: 5, Current: 6})
}

// TestFencedTransitions: a transition's fence is checked like a put's, by
// the sidecar (before the machine state) and by the shared store (a sync or
// strong transition it rejects gets FenceRejected with its token); a bad
// fence is InvalidArgument.
func TestFencedTransitions(t *testing.T) {
	store, remote, grant := fencedServerStore(t)
	c := startServer(t, store, Options{Sync: newStoreSync(t, store, remote), SyncTimeout: 10 * time.Second}).hello()
	tr := func(from, to string, tok uint64, consistency string) wire.Response {
		return c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: from, ToState: to,
			Action: "go-" + to, Fence: &wire.Fence{Resource: "lock", Token: tok}, Consistency: consistency})
	}
	r := tr("", "open", 5, wire.WriteSync)
	if r.Error != nil || r.Record.Version != 1 || r.Record.Pending {
		t.Fatalf("fenced sync transition: %+v %v", r.Record, r.Error)
	}
	// Below the token this sidecar has seen, from the right machine state
	// or not.
	expectFenceRejected(t, tr("open", "paid", 4, ""), "m", wire.FenceRejection{Resource: "lock", Token: 4, Current: 5})
	expectFenceRejected(t, tr("paid", "shipped", 4, ""), "m", wire.FenceRejection{Resource: "lock", Token: 4, Current: 5})

	// Granted again elsewhere: the shared store rejects what this sidecar
	// accepts.
	grant(6)
	rej := wire.FenceRejection{Resource: "lock", Token: 5, Current: 6}
	expectFenceRejected(t, tr("open", "paid", 5, wire.WriteSync), "m", rej)
	expectFenceRejected(t, tr("open", "paid", 5, wire.WriteStrong), "m", rej)
	if rec, err := remote.Get(context.Background(), syncer.Key{Governor: "g", State: "m"}); err != nil || rec.Version != 1 {
		t.Fatalf("remote g/m: %+v, %v", rec, err)
	}
	r = tr("open", "paid", 6, wire.WriteStrong)
	if r.Error != nil || r.Record.Pending {
		t.Fatalf("strong transition under the current grant: %+v %v", r.Record, r.Error)
	}
	if rec, err := remote.Get(context.Background(), syncer.Key{Governor: "g", State: "m"}); err != nil || string(rec.Value) != string(mustMarshal(t, "paid")) {
		t.Fatalf("remote g/m: %+v, %v", rec, err)
	}

	r = c.call(wire.Request{Op: wire.OpTransition, Governor: "g", State: "m", FromState: "paid", ToState: "x",
		Action: "go", Fence: &wire.Fence{Resource: "lock"}})
	expectError(t, r, wire.CodeInvalidArgument, "fence.token")
}

// TestFenceObservesGrants: a lock granted through the sidecar raises the
// store's mark at once, so the previous holder's late write is rejected
// here though nothing was written under the new grant.
func TestFenceObservesGrants(t *testing.T) {
	store := openLocalcache(t, "")
	ts := startServer(t, store, Options{Locks: txn.NewMemory(nil)})
	c := ts.hello()
	acquire := func() uint64 {
		t.Helper()
		r := c.call(wire.Request{Op: wire.OpLockAcquire, Resource: "r"})
		if r.Error != nil || r.Lock == nil || r.Lock.Token == 0 {
			t.Fatalf("lock_acquire: %+v %v", r.Lock, r.Error)
		}
		return r.Lock.Token
	}
	t1 := acquire()
	if r := c.call(wire.Request{Op: wire.OpLockRelease, Resource: "r", Token: t1}); r.Error != nil {
		t.Fatal(r.Error)
	}
	t2 := acquire()
	r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1),
		Fence: &wire.Fence{Resource: "r", Token: t1}})
	expectFenceRejected(t, r, "s", wire.FenceRejection{Resource: "r", Token: t1, Current: t2})
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1),
		Fence: &wire.Fence{Resource: "r", Token: t2}})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
}

// TestBatchPutLimitWithSharedStore: with a shared store a batch_put is one
// Firestore transaction too, so it holds at most 250 items (each a record and
// an event); one more is refused before anything is written.
func TestBatchPutLimitWithSharedStore(t *testing.T) {
	store := openLocalcache(t, "")
	remote := memremote.New()
	ts := startServer(t, store, Options{Sync: newStoreSync(t, store, remote), SyncTimeout: 10 * time.Second})
	c := ts.hello()
	items := func(n int) []wire.Item {
		its := make([]wire.Item, n)
		for i := range its {
			its[i] = wire.Item{Governor: "g", State: fmt.Sprint("s", i), Value: mustMarshal(t, i)}
		}
		return its
	}
	r := c.call(wire.Request{Op: wire.OpBatchPut, Items: items(wire.MaxTxnWrites + 1)})
	expectError(t, r, wire.CodeTooLarge, "items")
	if r.Error.Limit != wire.MaxTxnWrites {
		t.Fatalf("limit %d, want %d", r.Error.Limit, wire.MaxTxnWrites)
	}
	if _, err := store.Get(context.Background(), localcache.Key{Governor: "g", State: "s0"}); !errors.Is(err, localcache.ErrNotFound) {
		t.Fatalf("a refused batch wrote: %v", err)
	}
	r = c.call(wire.Request{Op: wire.OpBatchPut, Items: items(wire.MaxTxnWrites), Consistency: "sync"})
	if r.Error != nil || len(r.Records) != wire.MaxTxnWrites || r.Records[0].Pending {
		t.Fatalf("sync batch of %d: %v", wire.MaxTxnWrites, r.Error)
	}
}
