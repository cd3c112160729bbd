package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// noRemote is a shared store that is never reached: enough for flush,
// which waits on the local journal.
type noRemote struct{}

func (noRemote) Fetch(ctx context.Context, k localcache.Key) error {
	return sockapi.ErrRemoteUnavailable
}
func (noRemote) FreshAt(string) (time.Time, bool) { return time.Time{}, false }
func (noRemote) WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	return nil, sockapi.ErrRemoteUnavailable
}
func (noRemote) ReadStrong(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, int, error) {
	return nil, 0, sockapi.ErrRemoteUnavailable
}

func TestClientFlush(t *testing.T) {
	ctx := context.Background()
	// Local only: Unavailable, not retryable.
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	_, err := c.Flush(ctx, 0)
	var e *client.Error
	if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &e) || e.Retryable {
		t.Fatalf("local-only flush: %v", err)
	}
	if _, err := c.Flush(ctx, -time.Second); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("negative timeout: %v", err)
	}

	// With a shared store.
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-it"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(store, sockapi.Options{Sync: noRemote{}})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	c = newClient(t, path)
	if seq, err := c.Flush(ctx, time.Second); err != nil || seq != 0 {
		t.Fatalf("empty flush: %d, %v", seq, err)
	}
	if _, err := c.Put(ctx, "g", "s", 1); err != nil {
		t.Fatal(err)
	}
	_, err = c.Flush(ctx, 20*time.Millisecond)
	if !errors.Is(err, client.ErrTimeout) || !errors.As(err, &e) || !e.Retryable {
		t.Fatalf("flush timeout: %v", err)
	}
	seq := store.LastSeq()
	if err := store.Ack(ctx, []syncer.Ack{{Key: syncer.Key{Governor: "g", State: "s"}, Seqs: []uint64{seq}, Outcome: syncer.OutcomePushed}}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Flush(ctx, time.Second); err != nil || got != seq {
		t.Fatalf("flush: %d, %v (want %d)", got, err, seq)
	}
}

func TestClientHistory(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := c.Put(ctx, "g", "a", i, client.Actor("bob")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctx, "g", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "g", "b", "x"); err != nil {
		t.Fatal(err)
	}

	// Events: one page, then every page of size 2.
	evs, next, err := c.Events(ctx, "g", client.EventsOptions{State: "a"})
	if err != nil || next != "" || len(evs) != 4 || evs[0].Version != 1 || evs[0].Change.Actor != "bob" || evs[3].Action != "delete" {
		t.Fatalf("events: %+v %q %v", evs, next, err)
	}
	var n int
	for e, err := range c.EventsAll(ctx, "g", client.EventsOptions{Limit: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(e.Origin, "node-it~") {
			t.Fatalf("event %+v", e)
		}
		n++
	}
	if n != 5 {
		t.Fatalf("EventsAll: %d events", n)
	}
	puts, _, err := c.Events(ctx, "g", client.EventsOptions{State: "a", Action: "put",
		From: time.Unix(0, evs[1].Change.Time), To: time.Unix(0, evs[3].Change.Time)})
	if err != nil || len(puts) != 2 || puts[0].Version != 2 {
		t.Fatalf("filtered events: %+v %v", puts, err)
	}

	// State as of a version and a time.
	p, err := c.StateAtVersion(ctx, "g", "a", 2)
	if err != nil || p.Record.Version != 2 || !p.Exact {
		t.Fatalf("state at version 2: %+v %v", p, err)
	}
	var v int
	if err := wire.Unmarshal(p.Record.Value, &v); err != nil || v != 2 {
		t.Fatalf("value at version 2: %d %v", v, err)
	}
	p, err = c.StateAt(ctx, "g", "a", time.Unix(0, evs[2].Change.Time))
	if err != nil || p.Record.Version != 3 {
		t.Fatalf("state at time of v3: %+v %v", p, err)
	}
	if _, err := c.StateAtVersion(ctx, "g", "a", 4); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("state at the delete: %v", err)
	}

	// Validate.
	rep, err := c.Validate(ctx, "g", "")
	if err != nil || !rep.OK || rep.States != 2 || rep.Events != 5 {
		t.Fatalf("validate: %+v %v", rep, err)
	}

	// Checked before sending.
	for name, err := range map[string]error{
		"events bad governor": func() error { _, _, err := c.Events(ctx, "", client.EventsOptions{}); return err }(),
		"events bad state":    func() error { _, _, err := c.Events(ctx, "g", client.EventsOptions{State: "a/b"}); return err }(),
		"events negative":     func() error { _, _, err := c.Events(ctx, "g", client.EventsOptions{Limit: -1}); return err }(),
		"events before 1970": func() error {
			_, _, err := c.Events(ctx, "g", client.EventsOptions{From: time.Unix(-5, 0)})
			return err
		}(),
		"events bad action":  func() error { _, _, err := c.Events(ctx, "g", client.EventsOptions{Action: "\xff"}); return err }(),
		"state_at zero time": func() error { _, err := c.StateAt(ctx, "g", "a", time.Time{}); return err }(),
		"state_at version 0": func() error { _, err := c.StateAtVersion(ctx, "g", "a", 0); return err }(),
		"validate bad state": func() error { _, err := c.Validate(ctx, "g", "a/b"); return err }(),
	} {
		if !errors.Is(err, client.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestReplayDeepValue: a value at the sidecar's depth limit comes back in
// every reply that carries it, replay's (four levels above the value)
// included, and the connection lives on.
func TestReplayDeepValue(t *testing.T) {
	s := startSidecar(t, nil, "")
	c := &client.Client{Socket: s.path, Conns: 1}
	t.Cleanup(func() { c.Close() })
	ctx := testCtx(t)
	v := append(bytes.Repeat([]byte{0x91}, 60), 0x01) // [[[...1...]]], 60 deep
	if _, err := c.PutRaw(ctx, "g", "deep", v); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "g", "deep"); err != nil {
		t.Fatalf("get: %v", err)
	}
	if _, _, err := c.Events(ctx, "g", client.EventsOptions{State: "deep"}); err != nil {
		t.Fatalf("events: %v", err)
	}
	if _, _, _, err := c.Replay(ctx, "g", client.ReplayOptions{State: "deep"}); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after the replay: %v", err)
	}
}
