package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
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

// noRetentionLog starts the line a local-only sidecar without a history
// retention policy logs as it starts.
const noRetentionLog = "no history retention: without a shared store, the history and the journal grow"

// TestHistoryRetention: with history_keep_events in per_governor the
// sidecar cuts old history by itself, at snapshots, once the changes are in
// the shared store; /status counts what went; a local-only sidecar keeps
// the events of its changes (they are still in its journal).
func TestHistoryRetention(t *testing.T) {
	config := func(t *testing.T) []string {
		path := filepath.Join(shortTempDir(t), "tai.yaml")
		body := "per_governor:\n  \"*\": {snapshot_every: 10, history_keep_events: 5}\n  audit: {history_keep_events: 0}\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"--config", path, "--retention-every", "100ms", "--admin-addr", "127.0.0.1:0"}
	}
	fill := func(t *testing.T, c *client.Client, gov string, opts ...client.WriteOption) {
		for i := range 25 {
			if _, err := c.Put(context.Background(), gov, "s", i, opts...); err != nil {
				t.Fatal(err)
			}
		}
	}
	versions := func(t *testing.T, c *client.Client, gov string) []uint64 {
		evs, _, err := c.Events(context.Background(), gov, client.EventsOptions{State: "s"})
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, e := range evs {
			out = append(out, e.Version)
		}
		return out
	}
	removed := func(t *testing.T, base string) uint64 {
		_, body := httpGet(t, base+"/status")
		var st struct {
			Retention struct {
				EventsRemoved uint64 `json:"events_removed"`
			} `json:"history_retention"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status: %v\n%s", err, body)
		}
		return st.Retention.EventsRemoved
	}

	t.Run("shared", func(t *testing.T) {
		fs := newShared(t)
		s := startSidecar(t, append(fs.args("node-a", "hist", "audit"), config(t)...)...)
		c := s.Client()
		fill(t, c, "hist", client.Synced(0))
		fill(t, c, "audit", client.Synced(0))
		base := "http://" + adminAddr(t, s)
		// Keep 5 of 25: the cut is snapshot 20, events 1 to 20 go.
		eventually(t, 30*time.Second, func() string {
			if n := removed(t, base); n != 20 {
				return fmt.Sprintf("/status: %d events removed, want 20", n)
			}
			return ""
		})
		if got := versions(t, c, "hist"); !slices.Equal(got, []uint64{21, 22, 23, 24, 25}) {
			t.Fatalf("events of hist/s %v, want 21..25", got)
		}
		if p, err := c.StateAtVersion(context.Background(), "hist", "s", 20); err != nil || p.Record.Version != 20 {
			t.Fatalf("state at version 20 (the cut's snapshot): %+v, %v", p, err)
		}
		if n := len(versions(t, c, "audit")); n != 25 {
			t.Fatalf("audit (history_keep_events 0) kept %d events, want 25", n)
		}
		if !regexp.MustCompile(`msg="history retention" .*governor=hist `).MatchString(s.Logs()) {
			t.Fatalf("no retention log line:\n%s", s.Logs())
		}
		out, errOut, err := s.CLI("status", "--admin", strings.TrimPrefix(base, "http://"))
		if err != nil || !regexp.MustCompile(`history retention: +20 events, 1 snapshots removed since start\n`).MatchString(out) {
			t.Fatalf("status: %v\n%s%s", err, out, errOut)
		}
	})
	t.Run("local-only", func(t *testing.T) {
		cfg := config(t)
		s := startSidecar(t, cfg...)
		c := s.Client()
		fill(t, c, "hist")
		base := "http://" + adminAddr(t, s)
		// Every change waits in the journal: the cut merges the entries
		// of versions 1 to 20 into one change, keeps 20's event, and
		// removes 1 to 19.
		eventually(t, 30*time.Second, func() string {
			if n := removed(t, base); n != 19 {
				return fmt.Sprintf("/status: %d events removed, want 19", n)
			}
			return ""
		})
		if got := versions(t, c, "hist"); !slices.Equal(got, []uint64{20, 21, 22, 23, 24, 25}) {
			t.Fatalf("events of hist/s %v, want 20..25", got)
		}
		// A round may have run while the states were written: the status
		// line below checks the totals.
		if !regexp.MustCompile(`msg="history retention" .*governor=hist .*journal_entries_merged=[1-9]`).MatchString(s.Logs()) {
			t.Fatalf("no retention log line with the merged entries:\n%s", s.Logs())
		}
		if strings.Contains(s.Logs(), "history retention keeps the events of changes not yet in the shared store") ||
			strings.Contains(s.Logs(), noRetentionLog) {
			t.Fatalf("the held-back line or the no-retention line logged:\n%s", s.Logs())
		}
		out, errOut, err := s.CLI("status", "--admin", strings.TrimPrefix(base, "http://"))
		if err != nil || !regexp.MustCompile(`history retention: +19 events, 1 snapshots removed since start; 19 journal entries merged\n`).MatchString(out) {
			t.Fatalf("status: %v\n%s%s", err, out, errOut)
		}
		// Nothing more to do, and cleanup says so.
		out, errOut, err = s.CLI("cleanup", "hist", "--keep-events", "5")
		var rep struct{ Events, Held, Merged int }
		if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep != (struct{ Events, Held, Merged int }{}) {
			t.Fatalf("cleanup after the retention: %v\n%s%s", err, out, errOut)
		}
		if out, errOut, err := s.CLI("validate", "hist"); err != nil {
			t.Fatalf("validate: %v\n%s%s", err, out, errOut)
		}

		// Given a shared store, the sidecar pushes the merged journal:
		// the record as written, with the events it still has.
		if err := s.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		fs := newShared(t)
		args := fs.args("unused", "hist")
		i := slices.Index(args, "--node-id") // the data dir's own
		s.args = append(slices.Delete(args, i, i+2), cfg...)
		s.Start()
		if _, err := s.Client().Flush(context.Background(), 30*time.Second); err != nil {
			t.Fatal(err)
		}
		r, err := fs.get("hist", "s")
		var v int
		if err == nil {
			err = wire.Unmarshal(r.Value, &v)
		}
		if err != nil || r.Version != 25 || v != 24 {
			t.Fatalf("Firestore's hist/s: v%d %d (%v), want v25 24", r.Version, v, err)
		}
		var pushed []uint64
		for _, e := range fs.events("hist", "s") {
			pushed = append(pushed, e.ToVersion)
		}
		if !slices.Equal(pushed, []uint64{20, 21, 22, 23, 24, 25}) {
			t.Fatalf("events in Firestore %v, want 20..25", pushed)
		}
	})
}
