package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/syncer"
)

// TestClientConflicts pages through a sidecar's conflict ledger, with its
// filters, and checks arguments before sending.
func TestClientConflicts(t *testing.T) {
	ctx := context.Background()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-it"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(context.Background()) })
	t0 := time.Unix(1_900_000_000, 0)
	var acks []syncer.Ack
	for i := range 7 {
		k := syncer.Key{Governor: "g", State: fmt.Sprintf("s%d", i%2)}
		op := fmt.Sprintf("node-it-%d", i)
		acks = append(acks, syncer.Ack{Key: k, Outcome: syncer.OutcomePushed, Conflict: &syncer.ConflictRecord{
			ID: syncer.ConflictID(k, op, "n2-1", 1), Key: k, Winner: conflict.Local, Resolver: "lww", Reason: "later",
			Time: t0.Add(time.Duration(i) * time.Second), Node: "node-it",
			Local:  conflict.Side{Value: []byte{0xa1, 'x'}, Version: 2, Origin: "node-it", OpID: op},
			Remote: conflict.Side{Value: []byte{0xa1, 'y'}, Version: 1, Origin: "n2", OpID: "n2-1"},
		}})
	}
	if err := store.Ack(ctx, acks); err != nil {
		t.Fatal(err)
	}
	s := startSidecar(t, store, "")
	c := newClient(t, s.path)

	n := 0
	for e, err := range c.ConflictsAll(ctx, "g", client.ConflictsOptions{Limit: 3}) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Winner != "local" || e.Node != "node-it" || string(e.Value) != "\xa1x" || e.Time != t0.Add(time.Duration(n)*time.Second).UnixNano() {
			t.Fatalf("entry %d: %+v", n, e)
		}
		n++
	}
	if n != 7 {
		t.Fatalf("%d entries, want 7", n)
	}
	page, next, err := c.Conflicts(ctx, "g", client.ConflictsOptions{State: "s1", Since: t0.Add(2 * time.Second), Until: t0.Add(6 * time.Second)})
	if err != nil || len(page) != 2 || page[0].State != "s1" || next != "" {
		t.Fatalf("filtered page: %+v %q %v", page, next, err)
	}
	for _, bad := range []struct {
		gov  string
		opts client.ConflictsOptions
	}{{"", client.ConflictsOptions{}}, {"g", client.ConflictsOptions{State: "a/b"}}, {"g", client.ConflictsOptions{Limit: -1}}} {
		if _, _, err := c.Conflicts(ctx, bad.gov, bad.opts); !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("conflicts %q %+v: %v, want ErrInvalidArgument", bad.gov, bad.opts, err)
		}
	}
}
