package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestResolverAnswers: what a --exec command prints becomes the answer;
// anything else declines with a message saying what was wrong.
func TestResolverAnswers(t *testing.T) {
	for _, tt := range []struct {
		out, choice, err string
		value            any
	}{
		{out: `{"choice": "local", "reason": "r"}`, choice: wire.ChoiceLocal},
		{out: `{"choice": "remote"}`, choice: wire.ChoiceRemote},
		{out: `{"choice": "fallback", "value": null}`, choice: wire.ChoiceFallback},
		{out: `{"choice": "value", "value": {"n": 3}}`, choice: wire.ChoiceValue, value: map[string]any{"n": int64(3)}},
		{out: ``, err: "printed no answer"},
		{out: `not json`, err: "printed no answer"},
		{out: `{"choice": "value"}`, err: "without a value"},
		{out: `{"choice": "local", "value": 1}`, err: "only \"value\" takes one"},
		{out: `{"choice": "mine"}`, err: `choice "mine"`},
		{out: `{"choice": "local", "winner": "x"}`, err: "unknown field"},
		{out: `{"choice": "value", "value": null}`, err: "without a value"},
	} {
		res, err := parseAnswer([]byte(tt.out))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %+v, %v; want an error with %q", tt.out, res, err, tt.err)
			}
			continue
		}
		if err != nil || res.Choice != tt.choice {
			t.Errorf("%q: %+v, %v; want choice %s", tt.out, res, err, tt.choice)
			continue
		}
		if tt.value != nil {
			var got map[string]any
			if err := wire.Unmarshal(res.Value, &got); err != nil || got["n"] != tt.value.(map[string]any)["n"] {
				t.Errorf("%q: value %v (%v)", tt.out, got, err)
			}
		}
	}
}

// TestResolverCommand: the command reads the conflict as JSON (values as
// JSON documents, a tombstone as null) and its answer is taken; a failing
// command declines, with its standard error in the reason.
func TestResolverCommand(t *testing.T) {
	local, _ := wire.Marshal(map[string]any{"n": 12})
	base, _ := wire.Marshal(map[string]any{"n": 10})
	cf := client.Conflict{ID: 7, Governor: "cnt", State: "c1", Deadline: time.Now().Add(time.Minute),
		Local:  wire.ConflictSide{Value: local, Version: 2, Origin: "b", OpID: "b-1"},
		Remote: wire.ConflictSide{Version: 3, Deleted: true, Origin: "a", OpID: "a-2"},
		Base:   &wire.ConflictBase{Value: base, Version: 1}}
	in, err := conflictJSON(cf)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(in, &got); err != nil {
		t.Fatal(err)
	}
	l, r, b := got["local"].(map[string]any), got["remote"].(map[string]any), got["base"].(map[string]any)
	if got["id"] != 7.0 || got["state"] != "c1" || l["value"].(map[string]any)["n"] != 12.0 || r["value"] != nil ||
		r["deleted"] != true || b["value"].(map[string]any)["n"] != 10.0 || l["origin"] != "b" {
		t.Fatalf("the command reads %s", in)
	}

	ctx := context.Background()
	res, err := runResolver(ctx, `read -r c; case "$c" in *'"state":"c1"'*) echo '{"choice":"remote","reason":"saw c1"}';; esac`, cf)
	if err != nil || res.Choice != wire.ChoiceRemote || res.Reason != "saw c1" {
		t.Fatalf("answer %+v, %v", res, err)
	}
	if _, err := runResolver(ctx, `echo broken >&2; exit 3`, cf); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("failing command: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := runResolver(short, `sleep 5`, cf); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("slow command: %v", err)
	}
}
