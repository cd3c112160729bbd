// Command custom-resolver shows a custom conflict resolver in a custom
// build: it registers MaxCount in a conflict.Registry next to the built-in
// resolvers, builds the per-governor resolvers from a configuration (as the
// sidecar does from its flags), and settles one sample conflict.
//
//	go run ./examples/custom-resolver -resolvers '*=lww,counters=maxcount:lww'
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/conflict"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "custom-resolver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("custom-resolver", flag.ContinueOnError)
	spec := fs.String("resolvers", "*=lww,counters=maxcount", "governor=resolver[:fallback],...")
	governor := fs.String("governor", "counters", "governor of the sample conflict")
	if err := fs.Parse(args); err != nil {
		return err
	}

	reg := conflict.NewRegistry()
	if err := reg.Register(Name, Factory); err != nil {
		return err
	}
	cfg, err := conflict.ParseConfig(*spec)
	if err != nil {
		return err
	}
	set, err := reg.Build(cfg)
	if err != nil {
		return err
	}

	c, err := sample(*governor)
	if err != nil {
		return err
	}
	d, err := set.Resolve(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "winner: %v\nresolver: %s\nreason: %s\n", d.Winner, d.Resolver, d.Reason)
	if d.Winner == conflict.Merged {
		var m map[string]any
		h := handle()
		if err := codec.NewDecoderBytes(d.Value, h).Decode(&m); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "value: %v\n", m)
	}
	return nil
}

// sample is a conflict on a counter: node a counted to 7, node b (later) to
// 5 and renamed it.
func sample(governor string) (conflict.Conflict, error) {
	enc := func(v any) ([]byte, error) {
		var b []byte
		err := codec.NewEncoderBytes(&b, handle()).Encode(v)
		return b, err
	}
	lv, err := enc(map[string]any{"count": 7, "name": "visits"})
	if err != nil {
		return conflict.Conflict{}, err
	}
	rv, err := enc(map[string]any{"count": 5, "name": "page visits"})
	if err != nil {
		return conflict.Conflict{}, err
	}
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return conflict.Conflict{
		Key: conflict.Key{Governor: governor, State: "visits"},
		Local: conflict.Side{Value: lv, Version: 8, Origin: "a", OpID: "a-8",
			Clock: conflict.Clock{HLC: conflict.MakeHLC(t, 0), Vector: conflict.Vector{"a": 7}}},
		Remote: conflict.Side{Value: rv, Version: 6, Origin: "b", OpID: "b-6",
			Clock: conflict.Clock{HLC: conflict.MakeHLC(t.Add(time.Second), 0), Vector: conflict.Vector{"b": 5}}},
	}, nil
}
