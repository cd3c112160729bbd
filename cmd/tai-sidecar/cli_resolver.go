package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// The resolver command: a shell command decides a governor's conflicts
// (app-delegated resolution, docs/protocol.md "Conflict resolution by an
// app"). Each conflict runs the command once, with the conflict as one JSON
// object on its standard input; the command prints its answer as one JSON
// object. A command that fails, prints no valid answer or outlives the
// conflict's deadline declines it: the sidecar's fallback resolver decides.

// resolverConflict is what the command reads.
type resolverConflict struct {
	ID       uint64        `json:"id"`
	Governor string        `json:"governor"`
	State    string        `json:"state"`
	Deadline time.Time     `json:"deadline"`
	Local    resolverSide  `json:"local"`
	Remote   resolverSide  `json:"remote"`
	Base     *resolverBase `json:"base"` // null when the sidecar does not know it
}

type resolverSide struct {
	Value     json.RawMessage `json:"value"` // null for a tombstone
	Version   uint64          `json:"version"`
	Deleted   bool            `json:"deleted"`
	UpdatedAt time.Time       `json:"updated_at"`
	Origin    string          `json:"origin"`
	OpID      string          `json:"op_id"`
}

type resolverBase struct {
	Value   json.RawMessage `json:"value"`
	Version uint64          `json:"version"`
	Deleted bool            `json:"deleted"`
}

// resolverAnswer is what the command prints.
type resolverAnswer struct {
	Choice string          `json:"choice"`
	Value  json.RawMessage `json:"value"`
	Reason string          `json:"reason"`
}

// maxAnswer bounds what the command may print.
const maxAnswer = 16 << 20

func resolverFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	command := fs.String("exec", "", "shell `COMMAND` that decides each conflict: it reads the conflict as JSON on standard input "+
		`and prints {"choice": "local"|"remote"|"value"|"fallback", "value": JSON (with "value"), "reason": "..."}`)
	deadline := fs.Duration("deadline", 0, "how long the sidecar waits for each answer, 10ms to 10s (0: the sidecar's default, 2s)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *command == "" {
			return &usageError{"resolver needs --exec COMMAND"}
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		var mu sync.Mutex // out is shared by the conflicts' goroutines
		emit := func(v any) {
			mu.Lock()
			defer mu.Unlock()
			_ = out.Encode(v) // stdout gone: the decisions still reach the sidecar
		}
		decide := func(ctx context.Context, cf client.Conflict) (client.Resolution, error) {
			res, err := runResolver(ctx, *command, cf)
			line := map[string]any{"id": cf.ID, "governor": cf.Governor, "state": cf.State, "choice": res.Choice, "reason": res.Reason}
			if err != nil {
				line["choice"], line["error"] = wire.ChoiceFallback, err.Error()
			}
			emit(line)
			return res, err
		}
		registered := func(d time.Duration) {
			emit(map[string]any{"registered": pos[0], "deadline_ms": d.Milliseconds()})
		}
		return c.ServeConflicts(ctx, pos[0], decide, client.AnswerWithin(*deadline), client.OnRegistered(registered))
	}
}

// runResolver runs command for cf and returns its answer.
func runResolver(ctx context.Context, command string, cf client.Conflict) (client.Resolution, error) {
	in, err := conflictJSON(cf)
	if err != nil {
		return client.Resolution{}, err
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxAnswer, 4<<10
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.Join(strings.Fields(stderr.String()), " ")
		if ctx.Err() != nil {
			return client.Resolution{}, fmt.Errorf("--exec did not answer before the conflict's deadline")
		}
		return client.Resolution{}, fmt.Errorf("--exec failed: %v: %s", err, msg)
	}
	return parseAnswer(stdout.Bytes())
}

// conflictJSON is cf as the command reads it.
func conflictJSON(cf client.Conflict) ([]byte, error) {
	side := func(s wire.ConflictSide) (resolverSide, error) {
		v, err := valueJSON(s.Value, s.Deleted)
		return resolverSide{Value: v, Version: s.Version, Deleted: s.Deleted,
			UpdatedAt: time.Unix(0, s.UpdatedAt).UTC(), Origin: s.Origin, OpID: s.OpID}, err
	}
	rc := resolverConflict{ID: cf.ID, Governor: cf.Governor, State: cf.State, Deadline: cf.Deadline.UTC()}
	var err error
	if rc.Local, err = side(cf.Local); err != nil {
		return nil, fmt.Errorf("local value: %w", err)
	}
	if rc.Remote, err = side(cf.Remote); err != nil {
		return nil, fmt.Errorf("remote value: %w", err)
	}
	if b := cf.Base; b != nil {
		v, err := valueJSON(b.Value, b.Deleted)
		if err != nil {
			return nil, fmt.Errorf("base value: %w", err)
		}
		rc.Base = &resolverBase{Value: v, Version: b.Version, Deleted: b.Deleted}
	}
	return json.Marshal(rc)
}

// valueJSON is a msgpack value as JSON: null for a tombstone or no value.
func valueJSON(raw []byte, deleted bool) (json.RawMessage, error) {
	if deleted || len(raw) == 0 {
		return json.RawMessage("null"), nil
	}
	return msgpackToJSON(raw)
}

// parseAnswer reads the command's answer.
func parseAnswer(b []byte) (client.Resolution, error) {
	var a resolverAnswer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return client.Resolution{}, fmt.Errorf("--exec printed no answer object: %v", err)
	}
	hasValue := len(a.Value) > 0 && string(a.Value) != "null"
	switch a.Choice {
	case wire.ChoiceLocal, wire.ChoiceRemote, wire.ChoiceFallback:
		if hasValue {
			return client.Resolution{}, fmt.Errorf("--exec answered %q with a value: only \"value\" takes one", a.Choice)
		}
		return client.Resolution{Choice: a.Choice, Reason: a.Reason}, nil
	case wire.ChoiceValue:
		if !hasValue {
			return client.Resolution{}, errors.New(`--exec answered "value" without a value`)
		}
		v, err := jsonToMsgpack(a.Value)
		if err != nil {
			return client.Resolution{}, fmt.Errorf("--exec's value: %w", err)
		}
		return client.Resolution{Choice: wire.ChoiceValue, Value: v, Reason: a.Reason}, nil
	}
	return client.Resolution{}, fmt.Errorf(`--exec answered choice %q, not "local", "remote", "value" or "fallback"`, a.Choice)
}

// limitedBuffer keeps at most max bytes of what is written to it (and
// accepts the rest, so that the writer is not failed).
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
