// Package conflicttest tests conflict resolvers: random conflicts, and a
// check that a resolver is deterministic (it settles a conflict the same
// way whichever side is local), for the built-in resolvers and custom ones
// alike.
package conflicttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/conflict"
)

// SeedEnv names the environment variable that fixes the seed Seed returns,
// to replay a failure.
const SeedEnv = "TAI_TEST_SEED"

// Seed returns the seed for a randomized test: $TAI_TEST_SEED when set,
// otherwise the time. It logs the seed, so a failure can be replayed.
func Seed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(SeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with %s=%d)", seed, SeedEnv, seed)
	return seed
}

// Fields are the field names of the documents Random makes: few, so that
// both sides often touch the same ones.
var Fields = []string{"count", "name", "tags", "x", "y"}

// Random returns a random conflict on governor "g": sides on nodes a, b and
// c, made on a common base (sometimes unknown, absent or deleted), with
// msgpack map values derived from the base's (fields kept, changed, added
// or removed, encoded in random field order), and sometimes tombstones,
// values that are not maps, garbage, identical sides, or sides whose clocks
// or versions tie.
func Random(rng *rand.Rand) conflict.Conflict {
	c := conflict.Conflict{Key: conflict.Key{Governor: "g", State: "s" + strconv.Itoa(rng.IntN(3))}}
	var base map[string]any
	if rng.IntN(8) > 0 {
		b := &conflict.Base{Version: uint64(rng.IntN(4))}
		switch {
		case b.Version == 0:
		case rng.IntN(10) == 0:
			b.Deleted = true
		default:
			base = randomDoc(rng)
			b.Value = encodeValue(rng, base)
		}
		c.Base = b
	} else if rng.IntN(2) == 0 {
		base = randomDoc(rng)
	}
	var bv uint64
	if c.Base != nil {
		bv = c.Base.Version
	}
	c.Local = randomSide(rng, base, bv)
	switch rng.IntN(12) {
	case 0: // the same record on both sides
		c.Remote = c.Local
		c.Remote.Clock = c.Local.Clock.Clone()
	case 1: // the same clock and node, another change
		c.Remote = randomSide(rng, base, bv)
		c.Remote.Clock.HLC, c.Remote.Origin = c.Local.Clock.HLC, c.Local.Origin
	default:
		c.Remote = randomSide(rng, base, bv)
	}
	return c
}

var nodes = []string{"a", "b", "c"}

// hlc0 is the HLC of the conflicts' base time.
var hlc0 = conflict.MakeHLC(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), 0)

func randomSide(rng *rand.Rand, base map[string]any, baseVersion uint64) conflict.Side {
	s := conflict.Side{
		Version:   baseVersion + 1 + uint64(rng.IntN(3)),
		Origin:    nodes[rng.IntN(len(nodes))],
		OpID:      "op" + strconv.Itoa(rng.IntN(6)),
		UpdatedAt: int64(rng.IntN(1000)),
		Clock: conflict.Clock{
			Lamport: uint64(rng.IntN(10)),
			HLC:     hlc0 + uint64(rng.IntN(3))<<conflict.HLCLogicalBits + uint64(rng.IntN(3)),
			Vector:  conflict.Vector{},
		},
	}
	for _, n := range nodes {
		if x := rng.IntN(4); x > 0 || rng.IntN(4) == 0 {
			s.Clock.Vector[n] = uint64(x)
		}
	}
	switch rng.IntN(20) {
	case 0, 1:
		s.Deleted = true
	case 2: // not a map
		s.Value = encodeValue(rng, rng.IntN(100))
	case 3: // garbage
		s.Value = []byte{0x82, 0xa1, 'x'}
	default:
		s.Value = encodeValue(rng, mutate(rng, base))
	}
	return s
}

// values is the pool field values are drawn from (small, so that two sides
// often make the same change).
var values = []any{nil, 0, 1, 2, int64(300), "a", "b", true, 1.5, []any{"a", 1}, map[string]any{"k": "v"}}

func randomDoc(rng *rand.Rand) map[string]any {
	d := make(map[string]any)
	for _, f := range Fields {
		if rng.IntN(3) > 0 {
			d[f] = values[rng.IntN(len(values))]
		}
	}
	return d
}

// mutate returns a copy of base with some fields changed, removed or added.
func mutate(rng *rand.Rand, base map[string]any) map[string]any {
	d := make(map[string]any, len(base))
	for k, v := range base {
		d[k] = v
	}
	for range rng.IntN(3) {
		f := Fields[rng.IntN(len(Fields))]
		if rng.IntN(3) == 0 {
			delete(d, f)
		} else {
			d[f] = values[rng.IntN(len(values))]
		}
	}
	return d
}

// encodeValue encodes v as msgpack; a map's fields go in an order drawn
// from rng (not sorted), as an app might write them.
func encodeValue(rng *rand.Rand, v any) []byte {
	h := &codec.MsgpackHandle{WriteExt: true}
	enc := func(x any) []byte {
		var b []byte
		if err := codec.NewEncoderBytes(&b, h).Encode(x); err != nil {
			panic(err)
		}
		return b
	}
	m, ok := v.(map[string]any)
	if !ok {
		return enc(v)
	}
	keys := make([]string, 0, len(m))
	for _, f := range Fields {
		if _, ok := m[f]; ok {
			keys = append(keys, f)
		}
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	out := []byte{0x80 | byte(len(keys))}
	for _, k := range keys {
		out = append(out, enc(k)...)
		out = append(out, enc(m[k])...)
	}
	return out
}

// Outcome returns the record that d keeps for c: the winning side, or for
// a merged decision a side holding only the merged value.
func Outcome(c conflict.Conflict, d conflict.Decision) conflict.Side {
	switch d.Winner {
	case conflict.Local:
		return c.Local
	case conflict.Remote:
		return c.Remote
	}
	return conflict.Side{Value: d.Value}
}

// CheckDeterminism resolves n random conflicts (Random, from seed) with r,
// each as it is and swapped, and reports an error for each where r keeps a
// different record (or different merged bytes), fails one way only, names
// the winner inconsistently, or modifies the conflict.
func CheckDeterminism(t testing.TB, r conflict.Resolver, seed uint64, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := context.Background()
	for i := range n {
		c := Random(rng)
		if err := CheckConflict(ctx, r, c); err != nil {
			t.Errorf("seed %d, conflict %d: %v\nconflict: %+v", seed, i, err, c)
			return
		}
	}
}

// CheckConflict resolves c and c.Swap() with r and returns an error when
// the decisions differ (see CheckDeterminism).
func CheckConflict(ctx context.Context, r conflict.Resolver, c conflict.Conflict) error {
	orig := c.Clone()
	d1, err1 := r.Resolve(ctx, c)
	if !reflect.DeepEqual(c, orig) {
		return fmt.Errorf("the resolver modified the conflict")
	}
	s := c.Swap()
	d2, err2 := r.Resolve(ctx, s)
	if (err1 == nil) != (err2 == nil) {
		return fmt.Errorf("fails one way only: %v / swapped: %v", err1, err2)
	}
	if err1 != nil {
		return nil
	}
	for _, d := range []conflict.Decision{d1, d2} {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("decision %+v: %w", d, err)
		}
	}
	o1, o2 := Outcome(c, d1), Outcome(s, d2)
	if !reflect.DeepEqual(o1, o2) {
		return fmt.Errorf("different outcomes:\n  %v by %s: %s\n  swapped: %v by %s: %s", d1.Winner, d1.Resolver, d1.Reason,
			d2.Winner, d2.Resolver, d2.Reason)
	}
	if !reflect.DeepEqual(c.Local, c.Remote) {
		mirror := map[conflict.Winner]conflict.Winner{conflict.Local: conflict.Remote, conflict.Remote: conflict.Local,
			conflict.Merged: conflict.Merged}
		if mirror[d1.Winner] != d2.Winner {
			return fmt.Errorf("winner %v, swapped %v", d1.Winner, d2.Winner)
		}
	}
	return nil
}
