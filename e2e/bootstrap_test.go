package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/syncer"
)

const bootGov = "boot"

// writeBootHistory writes puts, deletes and transitions on states
// s-0..s-(states-1) and the machine m, and returns the state names.
func writeBootHistory(t *testing.T, c *client.Client, states, rounds int, create bool) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	names := []string{"m"}
	for i := range states {
		names = append(names, fmt.Sprintf("s-%d", i))
	}
	for r := range rounds {
		for _, st := range names[1:] {
			if _, err := c.Put(ctx, bootGov, st, map[string]any{"round": r, "state": st}, client.Actor("alice"), client.Reason("e2e")); err != nil {
				t.Fatal(err)
			}
			if r%3 == 1 {
				if _, err := c.Delete(ctx, bootGov, st, client.Actor("bob")); err != nil {
					t.Fatal(err)
				}
			}
		}
		from := "open"
		if create && r == 0 {
			from = ""
		}
		if _, err := c.Transition(ctx, bootGov, "m", client.Transition{From: from, To: "open", Action: "reopen"}, client.Actor("bot")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Transition(ctx, bootGov, "m", client.Transition{From: "open", To: "open", Action: "touch"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Flush(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	return names
}

// cliOut runs a CLI command and returns its output; a command that fails
// returns its error line instead (a typed error is part of the answer).
func cliOut(s *sidecar, args ...string) string {
	out, errOut, err := s.CLI(args...)
	if err != nil {
		return "error: " + strings.TrimSpace(errOut)
	}
	return out
}

// bootEvent is the part of an event line the comparison needs.
type bootEvent struct {
	State   string `json:"state"`
	Version uint64 `json:"version"`
	Time    string `json:"time"`
}

// historyAnswers returns what s answers about the governor's history, as
// the CLI prints it: events, replays, validation, and state-at by version
// (every version of the states named, and one more) and by time (every
// event's time, and just before it).
func historyAnswers(t *testing.T, s *sidecar, names []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	out["events"] = cliOut(s, "events", bootGov)
	out["replay"] = cliOut(s, "replay", bootGov)
	out["replay --latest"] = cliOut(s, "replay", bootGov, "--latest")
	out["validate"] = cliOut(s, "validate", bootGov)
	top := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(out["events"]), "\n") {
		var e bootEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			continue // no events yet (or an error line): the comparison shows it
		}
		if !slices.Contains(names, e.State) {
			continue
		}
		top[e.State] = max(top[e.State], e.Version)
		at, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil {
			t.Fatal(err)
		}
		for _, tm := range []time.Time{at, at.Add(-time.Nanosecond)} {
			k := fmt.Sprintf("state-at %s --at %s", e.State, tm.Format(time.RFC3339Nano))
			out[k] = cliOut(s, "state-at", bootGov, e.State, "--at", tm.Format(time.RFC3339Nano))
		}
	}
	for _, st := range names {
		for v := uint64(1); v <= top[st]+1; v++ {
			out[fmt.Sprintf("state-at %s --version %d", st, v)] = cliOut(s, "state-at", bootGov, st, "--version", fmt.Sprint(v))
		}
	}
	return out
}

var takenAt = regexp.MustCompile(`"taken_at":"[^"]*",`)

// withoutTakenAt removes the snapshot times from answers.
func withoutTakenAt(answers map[string]string) map[string]string {
	for k, v := range answers {
		answers[k] = takenAt.ReplaceAllString(v, "")
	}
	return answers
}

// diffAnswers says how b's answers differ from a's ("" if not).
func diffAnswers(a, b map[string]string) string {
	var diffs []string
	for k, x := range a {
		if y := b[k]; x != y {
			diffs = append(diffs, fmt.Sprintf("%s:\n  A: %s\n  B: %s", k, x, y))
		}
	}
	if len(diffs) > 3 {
		diffs = append(diffs[:3], fmt.Sprintf("... and %d more", len(diffs)-3))
	}
	return strings.Join(diffs, "\n")
}

// snapshotsInFirestore waits until Firestore holds as many snapshots of
// the states as the validation of c counts.
func snapshotsInFirestore(t *testing.T, fs *shared, c *client.Client, names []string) {
	t.Helper()
	ctx := context.Background()
	eventually(t, 30*time.Second, func() string {
		rep, err := c.Validate(ctx, bootGov, "")
		if err != nil {
			return err.Error()
		}
		n := 0
		for _, st := range names {
			snaps, err := fs.remote.Snapshots(ctx, syncer.Key{Governor: bootGov, State: st}, 0, 1<<62)
			if err != nil {
				return err.Error()
			}
			n += len(snaps)
		}
		if n != rep.Snapshots {
			return fmt.Sprintf("%d snapshots in Firestore, %d on the writer", n, rep.Snapshots)
		}
		return ""
	})
}

// A fresh sidecar on an empty disk bootstraps a governor from Firestore
// (its states and their history) and then answers events, state-at,
// replay and validate exactly as the sidecar that wrote the history; a
// kill -9 during the bootstrap is completed by the restart, with no
// duplicates.
func TestBootstrapFreshSidecar(t *testing.T) {
	for _, tc := range []struct {
		name    string
		history string
		every   int
		cleanup bool
		kill    bool
	}{
		{"full history", "full", 4, false, false},
		{"since snapshot after cleanup", "since_snapshot", 1000, true, false},
		{"kill -9 during bootstrap", "full", 4, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newShared(t)
			cfg := snapshotConfig(t, tc.every, 3)
			a := startSidecar(t, append(fs.args("node-a", bootGov), cfg...)...)
			ca := a.Client()
			states := 3
			if tc.kill {
				states = 40
			}
			names := writeBootHistory(t, ca, states, 7, true)
			probe := names[:min(len(names), 4)] // the states state-at is asked about
			if tc.cleanup {
				if out, errOut, err := a.CLI("snapshot", bootGov); err != nil {
					t.Fatalf("snapshot: %v %s %s", err, out, errOut)
				}
				if out, errOut, err := a.CLI("cleanup", bootGov, "--max-age", "1ns"); err != nil {
					t.Fatalf("cleanup: %v %s %s", err, out, errOut)
				}
				writeBootHistory(t, ca, states, 1, false) // events after the snapshots
			}
			snapshotsInFirestore(t, fs, ca, names)
			want := historyAnswers(t, a, probe)

			b := startSidecar(t, append(fs.args("node-b", bootGov), append(cfg, "--history", tc.history)...)...)
			if tc.kill {
				// Kill -9 at several points of the bootstrap (which may be
				// complete already at the later ones): each restart goes
				// on from what the last one stored.
				for _, d := range []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond} {
					time.Sleep(d)
					b.Kill()
					b.Start()
				}
			}
			eventually(t, 2*time.Minute, func() string { return diffAnswers(want, historyAnswers(t, b, probe)) })
			if tc.cleanup {
				// Before the bootstrapped range: a typed gap, on both.
				for _, s := range []*sidecar{a, b} {
					_, err := s.Client().StateAtVersion(context.Background(), bootGov, "m", 1)
					if !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "not in the local history") {
						t.Fatalf("state-at before the bootstrapped history: %v", err)
					}
				}
			}
			// B keeps following A, with the events of what it pulls. Each
			// node takes its own snapshots of the new versions, at its own
			// time: when they were taken is left out.
			writeBootHistory(t, ca, states, 2, false)
			snapshotsInFirestore(t, fs, ca, names)
			want = withoutTakenAt(historyAnswers(t, a, probe))
			eventually(t, 2*time.Minute, func() string { return diffAnswers(want, withoutTakenAt(historyAnswers(t, b, probe))) })
			if rep, err := b.Client().Validate(context.Background(), bootGov, ""); err != nil || !rep.OK {
				t.Fatalf("validate B: %+v, %v", rep, err)
			}
		})
	}
}
