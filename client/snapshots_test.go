package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

func TestClientTransition(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	ctx := context.Background()
	rec, err := c.Transition(ctx, "orders", "o1", client.Transition{To: "open", Action: "create"}, client.Actor("ann"))
	if err != nil || rec.Version != 1 {
		t.Fatalf("create: %+v, %v", rec, err)
	}
	_, err = c.Transition(ctx, "orders", "o1", client.Transition{From: "paid", To: "shipped", Action: "ship"})
	var e *client.Error
	if !errors.Is(err, client.ErrWrongState) || !errors.As(err, &e) || e.Machine == nil || e.Machine.Actual != "open" || e.Machine.Expected != "paid" {
		t.Fatalf("wrong state: %v", err)
	}
	type order struct {
		State  string `codec:"state"`
		Amount int    `codec:"amount"`
	}
	if _, err := c.Transition(ctx, "orders", "o1", client.Transition{From: "open", To: "paid", Action: "pay",
		Value: order{State: "paid", Amount: 12}}, client.Reason("card")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Transition(ctx, "orders", "o1", client.Transition{From: "paid", To: "shipped", Action: "ship"}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "orders", "o1")
	var o order
	if err != nil || got.Decode(&o) != nil || o != (order{State: "shipped", Amount: 12}) {
		t.Fatalf("machine %+v, %v", o, err)
	}
	evs, _, err := c.Events(ctx, "orders", client.EventsOptions{State: "o1"})
	if err != nil || len(evs) != 3 || evs[0].Action != "create" || evs[1].Action != "pay" || evs[1].Change.Reason != "card" || evs[2].Action != "ship" {
		t.Fatalf("events %+v, %v", evs, err)
	}
	for name, err := range map[string]error{
		"if_version": func() error {
			_, err := c.Transition(ctx, "orders", "o1", client.Transition{From: "a", To: "b", Action: "go"}, client.IfVersion(1))
			return err
		}(),
		"no action": func() error {
			_, err := c.Transition(ctx, "orders", "o1", client.Transition{From: "a", To: "b"})
			return err
		}(),
		"bad key": func() error {
			_, err := c.Transition(ctx, "orders", "", client.Transition{To: "b", Action: "go"})
			return err
		}(),
	} {
		if !errors.Is(err, client.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// Exactly one of many racing transitions wins.
	var wg sync.WaitGroup
	wins := make(chan string, 16)
	for i := range 16 {
		wg.Go(func() {
			to := fmt.Sprintf("done-%d", i)
			if _, err := c.Transition(ctx, "orders", "o1", client.Transition{From: "shipped", To: to, Action: "finish"}); err == nil {
				wins <- to
			} else if !errors.Is(err, client.ErrWrongState) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(wins)
	if n := len(wins); n != 1 {
		t.Fatalf("%d transitions won", n)
	}
}

func TestClientSnapshotCleanupReplay(t *testing.T) {
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-it",
		Snapshots: func(string) (int, int) { return 2, 5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(context.Background()) })
	s := startSidecar(t, store, "")
	c := newClient(t, s.path)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := c.Put(ctx, "g", "a", i); err != nil {
			t.Fatal(err)
		}
	}
	res, err := c.Snapshot(ctx, "g", "a")
	if err != nil || res.States != 1 || res.Taken != 1 || res.Snapshot.Version != 3 {
		t.Fatalf("snapshot: %+v, %v", res, err)
	}
	if res, err := c.Snapshot(ctx, "g", ""); err != nil || res.States != 1 || res.Taken != 0 {
		t.Fatalf("governor snapshot: %+v, %v", res, err)
	}
	if _, err := c.Snapshot(ctx, "g", "none"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("snapshot of a missing state: %v", err)
	}
	rep, err := c.Cleanup(ctx, "g", client.CleanupOptions{KeepEvents: 1, DryRun: true})
	if err != nil || !rep.DryRun || rep.States != 1 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	if _, err := c.Cleanup(ctx, "g", client.CleanupOptions{}); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("cleanup without a policy: %v", err)
	}
	var items []string
	for it, err := range c.ReplayAll(ctx, "g", client.ReplayOptions{Latest: true, Limit: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		if it.Snapshot != nil {
			items = append(items, fmt.Sprintf("snap:%d", it.Snapshot.Version))
			var v int
			if err := wire.Unmarshal(it.Snapshot.Value, &v); err != nil || v != 3 {
				t.Fatalf("snapshot value %d, %v", v, err)
			}
		} else {
			items = append(items, fmt.Sprintf("%s:%d", it.Event.Action, it.Event.Version))
		}
	}
	if fmt.Sprint(items) != "[snap:3]" {
		t.Fatalf("replay from the latest snapshot: %v", items)
	}
	page, _, done, err := c.Replay(ctx, "g", client.ReplayOptions{State: "a"})
	if err != nil || !done || len(page) != 3 || page[0].Event == nil || page[0].Event.Version != 1 {
		t.Fatalf("replay of a: %+v, %v", page, err)
	}
}
