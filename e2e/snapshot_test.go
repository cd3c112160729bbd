package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// snapshotConfig writes a config file that snapshots every `every`
// versions and keeps `keep` snapshots, and returns the serve flag for it.
func snapshotConfig(t *testing.T, every, keep int) []string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "tai.yaml")
	body := fmt.Sprintf("per_governor:\n  \"*\": {snapshot_every: %d, snapshot_keep: %d}\n", every, keep)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--config", path}
}

// A state machine driven by transitions through the real binary, synced to
// Firestore: exactly one of racing transitions wins, snapshots are taken
// and survive kill -9, state_at answers through them before and after a
// cleanup, and the shared store holds the machine and its puts.
func TestSnapshotTransitionStateAt(t *testing.T) {
	fs := newShared(t)
	s := startSidecar(t, append(fs.args("node-a", "orders"), snapshotConfig(t, 5, 2)...)...)
	c := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const gov, machine = "orders", "o-1"

	// A history of 22 transitions (versions 1 to 22): the change time of
	// each.
	type step struct {
		version uint64
		state   string
		time    time.Time
	}
	var steps []step
	from := ""
	for i := range 22 {
		to := fmt.Sprintf("s%d", i)
		rec, err := c.Transition(ctx, gov, machine, client.Transition{From: from, To: to, Action: fmt.Sprintf("go%d", i%3)},
			client.Actor("e2e"))
		if err != nil {
			t.Fatalf("transition %d: %v", i, err)
		}
		steps = append(steps, step{version: rec.Version, state: to, time: time.Unix(0, rec.Change.Time)})
		from = to
	}
	// Racing transitions from one state: exactly one wins (version 23).
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []string
	for i := range 8 {
		wg.Go(func() {
			to := fmt.Sprintf("race-%d", i)
			_, err := c.Transition(ctx, gov, machine, client.Transition{From: from, To: to, Action: "race"})
			var e *client.Error
			switch {
			case err == nil:
				mu.Lock()
				won = append(won, to)
				mu.Unlock()
			case !errors.Is(err, client.ErrWrongState) || !errors.As(err, &e) || e.Machine == nil || e.Machine.Expected != from:
				t.Errorf("racing transition: %v", err)
			}
		})
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d racing transitions won: %v", len(won), won)
	}
	// A strong transition (version 24): the compare-and-set checked against
	// Firestore.
	if _, err := c.Transition(ctx, gov, machine, client.Transition{From: won[0], To: "done", Action: "finish"},
		client.StrongWrite(30*time.Second)); err != nil {
		t.Fatalf("strong transition: %v", err)
	}

	checkPast := func(when string, fromVersion uint64) {
		t.Helper()
		for _, st := range steps {
			p, err := c.StateAt(ctx, gov, machine, st.time)
			if st.version < fromVersion {
				if !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "not in the local history") {
					t.Fatalf("%s: state at version %d's time, before the retained history: %+v, %v", when, st.version, p, err)
				}
				continue
			}
			var got string
			if err != nil || wire.Unmarshal(p.Record.Value, &got) != nil || got != st.state || p.Record.Version != st.version {
				t.Fatalf("%s: state at version %d's time: %+v, %v; want %q", when, st.version, p, err, st.state)
			}
		}
	}
	checkPast("before restart", 0)

	// Automatic snapshots every 5 versions, the 2 newest kept.
	latest := func() (version uint64) {
		t.Helper()
		for it, err := range c.ReplayAll(ctx, gov, client.ReplayOptions{State: machine, Latest: true}) {
			if err != nil {
				t.Fatal(err)
			}
			if it.Snapshot != nil {
				version = it.Snapshot.Version
			}
		}
		return version
	}
	eventually(t, 30*time.Second, func() string {
		if v := latest(); v != 20 {
			return fmt.Sprintf("newest snapshot at version %d, want 20", v)
		}
		return ""
	})
	res, err := c.Snapshot(ctx, gov, machine)
	if err != nil || res.Snapshot.Version != 24 || res.Taken != 1 {
		t.Fatalf("snapshot: %+v, %v", res, err)
	}

	// kill -9 and restart: the snapshots and the history are still there.
	s.Kill()
	s.Start()
	c = s.Client()
	if v := latest(); v != 24 {
		t.Fatalf("newest snapshot after restart at version %d, want 24", v)
	}
	checkPast("after restart", 0)
	if rep, err := c.Validate(ctx, gov, ""); err != nil || !rep.OK || rep.Snapshots != 2 {
		t.Fatalf("validate: %+v, %v", rep, err)
	}

	// Once Firestore has every change, cleanup keeping the newest 3 of the
	// 24 events cuts the history at snapshot 20 (snapshot 24 would leave
	// fewer).
	if _, err := c.Flush(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Cleanup(ctx, gov, client.CleanupOptions{KeepEvents: 3})
	if err != nil || rep.Cleaned != 1 || len(rep.Cuts) != 1 || rep.Cuts[0].Base != 20 || rep.Events != 20 {
		t.Fatalf("cleanup: %+v, %v", rep, err)
	}
	checkPast("after cleanup", 20)
	var items []string
	for it, err := range c.ReplayAll(ctx, gov, client.ReplayOptions{State: machine}) {
		if err != nil {
			t.Fatal(err)
		}
		if it.Snapshot != nil {
			items = append(items, fmt.Sprintf("snap:%d", it.Snapshot.Version))
		} else {
			items = append(items, fmt.Sprintf("%s:%d", it.Event.Action, it.Event.Version))
		}
	}
	if want := "[snap:20 go2:21 go0:22 race:23 finish:24]"; fmt.Sprint(items) != want {
		t.Fatalf("replay after cleanup: %v, want %s", items, want)
	}

	// Firestore holds the machine in its final state, its changes as puts.
	rec, err := fs.get(gov, machine)
	var final string
	if err != nil || wire.Unmarshal(rec.Value, &final) != nil || final != "done" {
		t.Fatalf("Firestore record: %+v, %v", rec, err)
	}
	evs := fs.events(gov, machine)
	if len(evs) == 0 {
		t.Fatal("no events in Firestore")
	}
	for _, e := range evs {
		if e.Action != syncer.ActionPut {
			t.Fatalf("Firestore event %+v: want a put", e)
		}
	}
}
