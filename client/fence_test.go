package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestWithFence: fenced writes (puts, deletes, batches and transitions)
// against the real server: a stale token is rejected with ErrFenceRejected
// and the details; an invalid fence is refused before it is sent.
func TestWithFence(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := client.New(s.path)
	defer c.Close()
	ctx := context.Background()
	f := func(tok uint64) client.WriteOption {
		return client.WithFence(client.Fence{Resource: "orders", Token: tok})
	}

	if _, err := c.Put(ctx, "g", "s", 1, f(3)); err != nil {
		t.Fatal(err)
	}
	check := func(err error) {
		t.Helper()
		var e *client.Error
		if !errors.Is(err, client.ErrFenceRejected) || !errors.As(err, &e) || e.Retryable || e.Fence == nil ||
			*e.Fence != (wire.FenceRejection{Resource: "orders", Token: 2, Current: 3}) {
			t.Fatalf("err = %v, want a fence rejection", err)
		}
	}
	_, err := c.Put(ctx, "g", "s", 2, f(2))
	check(err)
	_, err = c.Delete(ctx, "g", "s", f(2))
	check(err)
	_, err = c.BatchPut(ctx, []wire.Item{{Governor: "g", State: "t", Value: wire.Raw{0x01}}}, f(2))
	check(err)
	if _, err := c.Transition(ctx, "g", "m", client.Transition{To: "open", Action: "create"}, f(3)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Transition(ctx, "g", "m", client.Transition{From: "open", To: "paid", Action: "pay"}, f(2))
	check(err)
	if _, err := c.BatchPut(ctx, []wire.Item{{Governor: "g", State: "t", Value: wire.Raw{0x01}}}, f(4)); err != nil {
		t.Fatal(err)
	}
	if m, err := s.store.FenceMark(ctx, "orders"); err != nil || m != 4 {
		t.Fatalf("mark %d, %v", m, err)
	}
	if _, err := c.Transition(ctx, "g", "m", client.Transition{From: "open", To: "paid", Action: "pay"}, f(4)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "g", "m"); err != nil || got.Version != 2 {
		t.Fatalf("machine after the fenced transitions: %+v, %v", got, err)
	}

	for _, tc := range []struct {
		fence client.Fence
		field string
	}{{client.Fence{Resource: "a/b", Token: 1}, "fence.resource"}, {client.Fence{Resource: "r"}, "fence.token"}} {
		_, err := c.Put(ctx, "g", "s", 1, client.WithFence(tc.fence))
		var e *client.Error
		if !errors.As(err, &e) || e.Code != wire.CodeInvalidArgument || e.Field != tc.field {
			t.Fatalf("fence %+v: %v", tc.fence, err)
		}
	}
}
