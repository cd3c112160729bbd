package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Event sourcing commands: snapshot, transition, cleanup, replay.

func snapshotFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		res, err := c.Snapshot(ctx, pos[0], optionalState(pos))
		if err != nil {
			return err
		}
		return printProtocolJSON(out, res)
	}
}

func transitionFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	from := fs.String("from", "", "the machine state `S` expected (empty: the machine must not exist yet)")
	to := fs.String("to", "", "the new machine state `S` (required)")
	action := fs.String("action", "", "the transition's name `A`, which its event records (required)")
	value := fs.String("value", "", "the whole new value, a `JSON` document naming the new state (default: the current value with its state set)")
	writeOpts := writeFlags(fs, false)
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *to == "" || *action == "" {
			return &usageError{"transition: --to and --action are required"}
		}
		opts, err := writeOpts()
		if err != nil {
			return err
		}
		t := client.Transition{From: *from, To: *to, Action: *action}
		if *value != "" {
			b, err := jsonToMsgpack([]byte(*value))
			if err != nil {
				return &usageError{"transition: --value: " + err.Error()}
			}
			t.Value = wire.Raw(b)
		}
		rec, err := c.Transition(ctx, pos[0], pos[1], t, opts...)
		if err != nil {
			return err
		}
		return printRecord(out, rec)
	}
}

func cleanupFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	maxAge := fs.Duration("max-age", 0, "remove only events older than `D`, e.g. 720h")
	keep := fs.Int("keep-events", 0, "keep the newest `N` events of each state")
	dryRun := fs.Bool("dry-run", false, "only report what would be removed")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *maxAge < 0 || *keep < 0 || (*maxAge == 0 && *keep == 0) {
			return &usageError{"cleanup: give --max-age, --keep-events, or both (positive)"}
		}
		rep, err := c.Cleanup(ctx, pos[0], client.CleanupOptions{State: optionalState(pos), MaxAge: *maxAge, KeepEvents: *keep, DryRun: *dryRun})
		if err != nil {
			return err
		}
		return printProtocolJSON(out, rep)
	}
}

// replayLine is a line replay prints: an event in the export format, or a
// snapshot in the same format (action put, or delete for a deleted
// state's) marked as one.
type replayLine struct {
	Snapshot bool   `json:"snapshot,omitempty"`
	TakenAt  string `json:"taken_at,omitempty"`
	localcache.ExportedEvent
}

func replayFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	latest := fs.Bool("latest", false, "start each state at its newest snapshot")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		conv := localcache.NewJSONValues()
		opts := client.ReplayOptions{State: optionalState(pos), Latest: *latest, Limit: localcache.MaxEventLimit}
		for it, err := range c.ReplayAll(ctx, pos[0], opts) {
			if err != nil {
				return err
			}
			var line replayLine
			if s := it.Snapshot; s != nil {
				action := localcache.ActionPut
				if s.Deleted {
					action = localcache.ActionDelete
				}
				line.Snapshot, line.TakenAt = true, time.Unix(0, s.TakenAt).UTC().Format(time.RFC3339Nano)
				line.ExportedEvent = exportedEvent(&wire.Event{Governor: s.Governor, State: s.State, Action: action,
					Version: s.Version, Value: s.Value, Change: s.Change, Origin: s.Origin, OpID: s.OpID, Clock: s.Clock}, conv)
			} else {
				line.ExportedEvent = exportedEvent(it.Event, conv)
			}
			if err := out.Encode(line); err != nil {
				return fmt.Errorf("replay: %w", err)
			}
		}
		return nil
	}
}

// optionalState is the optional STATE after GOV ("" when not given).
func optionalState(pos []string) string {
	if len(pos) > 1 {
		return pos[1]
	}
	return ""
}
