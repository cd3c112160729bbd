package conflict_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/conflict/conflicttest"
)

var ctx = context.Background()

// lwwWins is the push loop's rule (syncer/push.go) as it stood before
// resolvers were pluggable, over the fields it reads.
func lwwWins(local, remote conflict.Side) bool {
	if local.Clock.HLC != remote.Clock.HLC {
		return local.Clock.HLC > remote.Clock.HLC
	}
	return local.Origin > remote.Origin
}

// TestLWWMatchesPushLoop: switching the push loop to LWW changes no
// decision: wherever the (HLC, origin) pairs differ it picks as lwwWins
// does, and where they are equal (never for two distinct changes) it still
// picks deterministically.
func TestLWWMatchesPushLoop(t *testing.T) {
	seed := conflicttest.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	compared := 0
	for i := range 20000 {
		c := conflicttest.Random(rng)
		d, err := conflict.LWW{}.Resolve(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if c.Local.Clock.HLC == c.Remote.Clock.HLC && c.Local.Origin == c.Remote.Origin {
			continue
		}
		compared++
		want := conflict.Remote
		if lwwWins(c.Local, c.Remote) {
			want = conflict.Local
		}
		if d.Winner != want {
			t.Fatalf("seed %d, conflict %d: LWW chose %v, lwwWins %v: %s", seed, i, d.Winner, want, d.Reason)
		}
	}
	if compared < 10000 {
		t.Errorf("only %d conflicts compared", compared)
	}
}

func side(origin string, version, hlc uint64, vec conflict.Vector, value []byte) conflict.Side {
	return conflict.Side{Value: value, Version: version, Origin: origin, OpID: origin + "-op",
		Clock: conflict.Clock{HLC: hlc, Lamport: version, Vector: vec}}
}

func tomb(s conflict.Side) conflict.Side {
	s.Deleted, s.Value = true, nil
	return s
}

// doc encodes fields as a msgpack map, in the order given (k1, v1, k2, v2...).
func doc(t testing.TB, kv ...any) []byte {
	t.Helper()
	out := []byte{0x80 | byte(len(kv)/2)}
	h := &codec.MsgpackHandle{WriteExt: true}
	for _, x := range kv {
		var b []byte
		if err := codec.NewEncoderBytes(&b, h).Encode(x); err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// decodeMap decodes a msgpack map for comparisons.
func decodeMap(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	h := &codec.MsgpackHandle{WriteExt: true}
	h.RawToString = true
	if err := codec.NewDecoderBytes(b, h).Decode(&m); err != nil {
		t.Fatalf("decode %x: %v", b, err)
	}
	return m
}

type resolverCase struct {
	name       string
	c          conflict.Conflict
	want       conflict.Winner
	resolver   string // Decision.Resolver
	value      []byte // for Merged
	reasonHas  string
	wantMerged map[string]any // for Merged: decoded value, when value is nil
}

func runCases(t *testing.T, r conflict.Resolver, cases []resolverCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			for _, swapped := range []bool{false, true} {
				c, want := tt.c, tt.want
				if swapped {
					c = c.Swap()
					want = map[conflict.Winner]conflict.Winner{conflict.Local: conflict.Remote,
						conflict.Remote: conflict.Local, conflict.Merged: conflict.Merged}[want]
				}
				d, err := r.Resolve(ctx, c)
				if err != nil {
					t.Fatalf("swapped %v: %v", swapped, err)
				}
				if d.Winner != want || d.Resolver != tt.resolver {
					t.Fatalf("swapped %v: %v by %q (%s), want %v by %q", swapped, d.Winner, d.Resolver, d.Reason, want, tt.resolver)
				}
				if !strings.Contains(d.Reason, tt.reasonHas) {
					t.Errorf("reason %q lacks %q", d.Reason, tt.reasonHas)
				}
				if tt.value != nil && !bytes.Equal(d.Value, tt.value) {
					t.Errorf("value %x, want %x", d.Value, tt.value)
				}
				if tt.wantMerged != nil && fmt.Sprint(decodeMap(t, d.Value)) != fmt.Sprint(tt.wantMerged) {
					t.Errorf("merged %v, want %v", decodeMap(t, d.Value), tt.wantMerged)
				}
				if want != conflict.Merged && d.Value != nil {
					t.Errorf("value %x on a %v decision", d.Value, want)
				}
			}
		})
	}
}

const h0 = 1 << 40

func TestLWW(t *testing.T) {
	v := []byte{0x01}
	runCases(t, conflict.LWW{}, []resolverCase{
		{name: "later hlc wins", c: conflict.Conflict{Local: side("a", 3, h0+2, nil, v), Remote: side("b", 9, h0+1, nil, v)},
			want: conflict.Local, resolver: "lww", reasonHas: "is later than"},
		{name: "same hlc: greater origin wins", c: conflict.Conflict{Local: side("a", 3, h0, nil, v), Remote: side("b", 3, h0, nil, v)},
			want: conflict.Remote, resolver: "lww", reasonHas: "greater origin"},
		{name: "later deletion wins", c: conflict.Conflict{Local: tomb(side("a", 3, h0+5, nil, nil)), Remote: side("b", 3, h0, nil, v)},
			want: conflict.Local, resolver: "lww", reasonHas: "deletion v3"},
		{name: "later write wins over a deletion", c: conflict.Conflict{Local: tomb(side("a", 3, h0, nil, nil)), Remote: side("b", 3, h0+1, nil, v)},
			want: conflict.Remote, resolver: "lww"},
	})
	same := side("a", 3, h0, nil, v)
	d, _ := conflict.LWW{}.Resolve(ctx, conflict.Conflict{Local: same, Remote: same})
	if d.Winner != conflict.Remote || !strings.Contains(d.Reason, "same record") {
		t.Errorf("identical sides: %v (%s), want remote", d.Winner, d.Reason)
	}
}

func TestVersionWins(t *testing.T) {
	v := []byte{0x01}
	r := conflict.VersionWins{}
	runCases(t, r, []resolverCase{
		{name: "higher version wins", c: conflict.Conflict{Local: side("a", 5, h0, nil, v), Remote: side("b", 4, h0+9, nil, v)},
			want: conflict.Local, resolver: "version", reasonHas: "higher version wins: v5"},
		{name: "tie goes to lww", c: conflict.Conflict{Local: side("a", 4, h0, nil, v), Remote: side("b", 4, h0+9, nil, v)},
			want: conflict.Remote, resolver: "version>lww", reasonHas: "both sides are at version 4; last write wins"},
		{name: "a deletion's version counts", c: conflict.Conflict{Local: tomb(side("a", 6, h0, nil, nil)), Remote: side("b", 5, h0+9, nil, v)},
			want: conflict.Local, resolver: "version"},
	})
	// Another fallback.
	fb := conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
		return conflict.Decision{Winner: conflict.Merged, Value: []byte{0xc0}, Resolver: "custom", Reason: "why not"}, nil
	})
	d, err := conflict.VersionWins{Fallback: fb}.Resolve(ctx, conflict.Conflict{Local: side("a", 4, h0, nil, v), Remote: side("b", 4, h0, nil, v)})
	if err != nil || d.Winner != conflict.Merged || d.Resolver != "version>custom" {
		t.Errorf("custom fallback: %+v, %v", d, err)
	}
	failing := conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
		return conflict.Decision{}, errors.New("boom")
	})
	if _, err := (conflict.VersionWins{Fallback: failing}).Resolve(ctx, conflict.Conflict{}); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("failing fallback: %v", err)
	}
}

func TestCausal(t *testing.T) {
	v := []byte{0x01}
	type V = conflict.Vector
	runCases(t, conflict.Causal{}, []resolverCase{
		{name: "dominating side wins", c: conflict.Conflict{Local: side("a", 3, h0, V{"a": 2, "b": 1}, v), Remote: side("b", 3, h0+9, V{"b": 1}, v)},
			want: conflict.Local, resolver: "causal", reasonHas: "dominates"},
		{name: "concurrent goes to lww", c: conflict.Conflict{Local: side("a", 3, h0, V{"a": 2}, v), Remote: side("b", 3, h0+9, V{"b": 1}, v)},
			want: conflict.Remote, resolver: "causal>lww", reasonHas: "are concurrent"},
		{name: "equal vectors go to lww", c: conflict.Conflict{Local: side("a", 3, h0+9, V{"a": 1}, v), Remote: side("b", 3, h0, V{"a": 1}, v)},
			want: conflict.Local, resolver: "causal>lww", reasonHas: "both sides have the vector {a:1}"},
		{name: "a deletion that saw the write wins", c: conflict.Conflict{Local: tomb(side("a", 3, h0, V{"a": 1, "b": 1}, nil)), Remote: side("b", 3, h0+9, V{"b": 1}, v)},
			want: conflict.Local, resolver: "causal"},
	})
	r := conflict.Causal{Fallback: conflict.VersionWins{}}
	d, err := r.Resolve(ctx, conflict.Conflict{Local: side("a", 2, h0, V{"a": 2}, v), Remote: side("b", 2, h0+9, V{"b": 1}, v)})
	if err != nil || d.Resolver != "causal>version>lww" || d.Winner != conflict.Remote {
		t.Errorf("chained fallbacks: %+v, %v", d, err)
	}
}

func TestMerge(t *testing.T) {
	base := &conflict.Base{Version: 4, Value: doc(t, "a", 1, "b", 1, "c", 1, "d", 1)}
	l := func(value []byte) conflict.Side { return side("n1", 5, h0+1, conflict.Vector{"n1": 5}, value) }
	r := func(value []byte) conflict.Side { return side("n2", 5, h0, conflict.Vector{"n2": 5}, value) }
	runCases(t, conflict.Merge{}, []resolverCase{
		{name: "disjoint changes are both kept",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "d", 1, "a", 2, "b", 1, "c", 1)), Remote: r(doc(t, "a", 1, "b", 1, "c", 3))},
			want: conflict.Merged, resolver: "merge",
			// Sorted fields; "d" removed by the remote, "a" changed locally, "c" remotely.
			value:     doc(t, "a", 2, "b", 1, "c", 3),
			reasonHas: `"a" from v5 by node "n1"`},
		{name: "added fields are kept",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "a", 1, "b", 1, "c", 1, "d", 1, "x", "l")), Remote: r(doc(t, "y", "r", "a", 1, "b", 1, "c", 1, "d", 1))},
			want: conflict.Merged, resolver: "merge",
			wantMerged: map[string]any{"a": 1, "b": 1, "c": 1, "d": 1, "x": "l", "y": "r"}},
		{name: "the same change on both sides",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "a", 7, "b", 1, "c", 1, "d", 1)), Remote: r(doc(t, "a", 7, "b", 2, "c", 1, "d", 1))},
			want: conflict.Remote, resolver: "merge", reasonHas: "the result is v5 by node \"n2\""},
		{name: "overlapping fields take the fallback's side, the rest is merged",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "a", 2, "b", 2, "c", 1, "d", 1)), Remote: r(doc(t, "a", 3, "b", 1, "c", 3, "d", 1))},
			want: conflict.Merged, resolver: "merge>lww", reasonHas: `"a" changed on both sides went to lww: last write wins`,
			wantMerged: map[string]any{"a": 2, "b": 2, "c": 3, "d": 1}},
		{name: "result equal to one side: that side wins as it is",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "a", 2, "b", 1, "c", 1, "d", 1)), Remote: r(doc(t, "d", 1, "c", 1, "b", 1, "a", 1))},
			want: conflict.Local, resolver: "merge", reasonHas: "the result is v5"},
		{name: "overlap resolved to the only changing side",
			c:    conflict.Conflict{Base: base, Local: l(doc(t, "a", 2, "b", 1, "c", 1, "d", 1)), Remote: r(doc(t, "a", 3, "b", 1, "c", 1, "d", 1))},
			want: conflict.Local, resolver: "merge>lww"},
		{name: "absent base: both created the state",
			c:    conflict.Conflict{Base: &conflict.Base{}, Local: l(doc(t, "a", 1, "x", 1)), Remote: r(doc(t, "a", 1, "y", 2))},
			want: conflict.Merged, resolver: "merge",
			wantMerged: map[string]any{"a": 1, "x": 1, "y": 2}},
		{name: "deleted base counts as empty",
			c:    conflict.Conflict{Base: &conflict.Base{Version: 3, Deleted: true}, Local: l(doc(t, "a", 1)), Remote: r(doc(t, "a", 2))},
			want: conflict.Local, resolver: "merge>lww"},
		{name: "unknown base goes to the fallback",
			c:    conflict.Conflict{Local: l(doc(t, "a", 1)), Remote: r(doc(t, "b", 2))},
			want: conflict.Local, resolver: "merge>lww", reasonHas: "base version is unknown"},
		{name: "a deletion goes to the fallback",
			c:    conflict.Conflict{Base: base, Local: tomb(l(nil)), Remote: r(doc(t, "b", 2))},
			want: conflict.Local, resolver: "merge>lww", reasonHas: "a side is a deletion"},
		{name: "a value that is not a map goes to the fallback",
			c:    conflict.Conflict{Base: base, Local: l([]byte{0x05}), Remote: r(doc(t, "b", 2))},
			want: conflict.Local, resolver: "merge>lww", reasonHas: "not a map"},
		{name: "a base that is not a map goes to the fallback",
			c:    conflict.Conflict{Base: &conflict.Base{Version: 1, Value: []byte{0x91, 0x01}}, Local: l(doc(t, "a", 1)), Remote: r(doc(t, "b", 2))},
			want: conflict.Local, resolver: "merge>lww", reasonHas: "base v1"},
		{name: "non-string keys go to the fallback",
			c:    conflict.Conflict{Base: base, Local: l([]byte{0x81, 0x01, 0x02}), Remote: r(doc(t, "b", 2))},
			want: conflict.Local, resolver: "merge>lww", reasonHas: "field name is not a string"},
	})

	// A fallback that merges the whole document decides it.
	fb := conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
		return conflict.Decision{Winner: conflict.Merged, Value: doc(t, "z", 0), Resolver: "mine"}, nil
	})
	d, err := conflict.Merge{Fallback: fb}.Resolve(ctx, conflict.Conflict{Base: base,
		Local: l(doc(t, "a", 2)), Remote: r(doc(t, "a", 3))})
	if err != nil || d.Winner != conflict.Merged || !bytes.Equal(d.Value, doc(t, "z", 0)) || d.Resolver != "merge>mine" {
		t.Errorf("merging fallback: %+v, %v", d, err)
	}
	// The merged value keeps field values verbatim, nested ones included.
	nested := doc(t, "n", map[string]any{"k": []any{1, "x", nil}}, "m", nil)
	d, err = conflict.Merge{}.Resolve(ctx, conflict.Conflict{Base: &conflict.Base{}, Local: l(nested), Remote: r(doc(t, "o", 1.5))})
	if err != nil || d.Winner != conflict.Merged {
		t.Fatalf("nested: %+v, %v", d, err)
	}
	if got := fmt.Sprint(decodeMap(t, d.Value)); got != "map[m:<nil> n:map[k:[1 x <nil>]] o:1.5]" {
		t.Errorf("nested merge = %s", got)
	}
}

// TestDeterminism: every built-in resolver, with every built-in fallback,
// keeps the same record (or the same merged bytes) for a conflict and its
// swap.
func TestDeterminism(t *testing.T) {
	seed := conflicttest.Seed(t)
	reg := conflict.NewRegistry()
	for _, name := range reg.Names() {
		for _, fbName := range reg.Names() {
			t.Run(name+":"+fbName, func(t *testing.T) {
				fb, err := reg.New(fbName, nil)
				if err != nil {
					t.Fatal(err)
				}
				r, err := reg.New(name, fb)
				if err != nil {
					t.Fatal(err)
				}
				conflicttest.CheckDeterminism(t, r, seed, 5000)
			})
		}
	}
}

// TestRandomCoverage: the random conflicts reach every kind of decision,
// so TestDeterminism means something.
func TestRandomCoverage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string]int{}
	for range 5000 {
		c := conflicttest.Random(rng)
		for _, r := range []conflict.Resolver{conflict.LWW{}, conflict.VersionWins{}, conflict.Causal{}, conflict.Merge{}} {
			d, err := r.Resolve(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			seen[d.Resolver+" "+d.Winner.String()]++
		}
	}
	for _, want := range []string{"lww local", "lww remote", "version local", "version>lww remote", "causal remote",
		"causal>lww local", "merge merged", "merge local", "merge>lww merged", "merge>lww remote"} {
		if seen[want] == 0 {
			t.Errorf("no decision %q in %v", want, seen)
		}
	}
}
