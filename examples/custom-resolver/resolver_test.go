package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/conflict/conflicttest"
)

func enc(t *testing.T, v any) []byte {
	t.Helper()
	var b []byte
	if err := codec.NewEncoderBytes(&b, handle()).Encode(v); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMaxCount(t *testing.T) {
	c, err := sample("counters")
	if err != nil {
		t.Fatal(err)
	}
	for _, swapped := range []bool{false, true} {
		cc := c
		if swapped {
			cc = c.Swap()
		}
		d, err := MaxCount{}.Resolve(context.Background(), cc)
		if err != nil {
			t.Fatal(err)
		}
		// Last write wins picks node b's document; its count becomes 7.
		want := enc(t, map[string]any{"count": 7, "name": "page visits"})
		if d.Winner != conflict.Merged || !bytes.Equal(d.Value, want) || d.Resolver != Name {
			t.Errorf("swapped %v: %v %x by %s (%s), want merged %x", swapped, d.Winner, d.Value, d.Resolver, d.Reason, want)
		}
	}
	// The chosen document already holds the greater count: it wins as is.
	c.Remote.Value = enc(t, map[string]any{"count": 9})
	d, err := MaxCount{}.Resolve(context.Background(), c)
	if err != nil || d.Winner != conflict.Remote || d.Resolver != Name {
		t.Errorf("greater count chosen: %+v, %v", d, err)
	}
	// No count on one side: the fallback decides.
	c.Remote.Value = enc(t, "not a map")
	d, err = MaxCount{}.Resolve(context.Background(), c)
	if err != nil || d.Winner != conflict.Remote || d.Resolver != "maxcount>lww" {
		t.Errorf("no count: %+v, %v", d, err)
	}
}

func TestMaxCountDeterministic(t *testing.T) {
	conflicttest.CheckDeterminism(t, MaxCount{}, conflicttest.Seed(t), 5000)
	conflicttest.CheckDeterminism(t, MaxCount{Fallback: conflict.Causal{}}, conflicttest.Seed(t), 5000)
}

func TestRun(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"winner: merged", "resolver: maxcount\n", "value: map[count:7 name:page visits]"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"-governor", "other"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "winner: remote\nresolver: lww\n") {
		t.Errorf("other governor:\n%s", out.String())
	}
	if err := run(context.Background(), []string{"-resolvers", "*=nope"}, &out); err == nil {
		t.Error("an unknown resolver was accepted")
	}
}
