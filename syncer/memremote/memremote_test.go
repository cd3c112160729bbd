package memremote_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/memremote"
	"github.com/tai-state/tai-state/syncer/remotetest"
)

func TestConformance(t *testing.T) {
	remotetest.RunWith(t, remotetest.Options{Concurrency: 32, Rounds: 50, Fences: fencedRemote, Undecodable: undecodableRemote},
		func(t *testing.T) syncer.Remote { return memremote.New() })
}

func undecodableRemote(*testing.T) (syncer.Remote, remotetest.Plant) {
	m := memremote.New()
	return m, func(_ *testing.T, key syncer.Key) {
		m.PutUndecodable(key, errors.New("version: a string, not an integer (planted)"))
	}
}

func put(key syncer.Key, base uint64, op string) syncer.Change {
	v := map[string]uint64{"n": base + 1}
	return syncer.Change{Key: key, BaseVersion: base,
		Record: syncer.Record{Value: []byte("v"), Version: base + 1, Origin: "n", OpID: op, Clock: syncer.Clock{Vector: v}},
		Events: []syncer.Event{{Action: syncer.ActionPut, FromVersion: base, ToVersion: base + 1, OpID: op}}}
}

func TestFaults(t *testing.T) {
	ctx := context.Background()
	key := syncer.Key{Governor: "g", State: "s"}
	t.Run("FailNext", func(t *testing.T) {
		m := memremote.New()
		m.FailNext(2)
		for i := range 2 {
			if _, err := m.Get(ctx, key); !syncer.IsTransient(err) {
				t.Fatalf("call %d: %v, want ErrUnavailable", i, err)
			}
		}
		if _, err := m.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
			t.Fatalf("third call: %v", err)
		}
		if n := m.Calls("get"); n != 3 {
			t.Fatalf("Calls(get) = %d", n)
		}
	})
	t.Run("LostReply", func(t *testing.T) {
		m := memremote.New()
		m.LoseNextReplies(1)
		c := put(key, 0, "n-1")
		if _, err := m.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}}); !syncer.IsTransient(err) {
			t.Fatalf("lost reply: %v", err)
		}
		res, err := m.Commit(ctx, syncer.Batch{Changes: []syncer.Change{c}})
		if err != nil || res[0].Status != syncer.AlreadyApplied {
			t.Fatalf("retry: %v %+v", err, res)
		}
		if evs, _ := m.Events(ctx, key, 0, 0); len(evs) != 1 {
			t.Fatalf("%d events", len(evs))
		}
	})
	t.Run("Offline", func(t *testing.T) {
		m := memremote.New()
		m.SetOffline(true)
		if _, err := m.Commit(ctx, syncer.Batch{Changes: []syncer.Change{put(key, 0, "n-1")}}); !syncer.IsTransient(err) {
			t.Fatalf("offline commit: %v", err)
		}
		done := make(chan error, 1)
		m.SetOffline(false)
		go func() {
			done <- m.Watch(ctx, "g", "", func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error { return nil })
		}()
		// Wait until the watch has started, then break it.
		deadline := time.Now().Add(10 * time.Second)
		for m.Calls("watch") == 0 {
			if time.Now().After(deadline) {
				t.Fatal("watch did not start")
			}
			time.Sleep(time.Millisecond)
		}
		m.SetOffline(true)
		select {
		case err := <-done:
			if !syncer.IsTransient(err) {
				t.Fatalf("watch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("watch not broken by going offline")
		}
	})
	t.Run("Delay", func(t *testing.T) {
		m := memremote.New()
		m.SetDelay(time.Hour)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		if _, err := m.Get(cctx, key); !syncer.IsTransient(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("delayed get: %v", err)
		}
	})
	t.Run("Hook", func(t *testing.T) {
		m := memremote.New()
		denied := syncer.Errorf("get", key, syncer.ErrPermanent, "denied")
		m.SetHook(func(op string, k syncer.Key) error {
			if op == "get" && k == key {
				return denied
			}
			return nil
		})
		if _, err := m.Get(ctx, key); err != denied {
			t.Fatalf("hook: %v", err)
		}
		m.SetHook(nil)
		if _, err := m.Get(ctx, key); !errors.Is(err, syncer.ErrNotFound) {
			t.Fatalf("hook removed: %v", err)
		}
	})
}
