package conflict_test

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/conflict/conflicttest"
)

func TestVectorCompare(t *testing.T) {
	type V = conflict.Vector
	tests := []struct {
		name string
		a, b V
		want conflict.Ordering
	}{
		{"both empty", nil, V{}, conflict.Equal},
		{"zero entries are missing ones", V{"a": 0}, nil, conflict.Equal},
		{"same", V{"a": 1, "b": 2}, V{"b": 2, "a": 1}, conflict.Equal},
		{"before: smaller entry", V{"a": 1, "b": 2}, V{"a": 2, "b": 2}, conflict.Before},
		{"before: missing node", V{"a": 1}, V{"a": 1, "b": 1}, conflict.Before},
		{"before: empty", nil, V{"a": 1}, conflict.Before},
		{"after", V{"a": 3, "b": 1}, V{"a": 2}, conflict.After},
		{"concurrent", V{"a": 2, "b": 1}, V{"a": 1, "b": 2}, conflict.Concurrent},
		{"concurrent: disjoint nodes", V{"a": 1}, V{"b": 1}, conflict.Concurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Compare(tt.b); got != tt.want {
				t.Errorf("%v.Compare(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
			if got, want := tt.a.Dominates(tt.b), tt.want == conflict.After || tt.want == conflict.Equal; got != want {
				t.Errorf("%v.Dominates(%v) = %v, want %v", tt.a, tt.b, got, want)
			}
			if got, want := tt.a.HappenedBefore(tt.b), tt.want == conflict.Before; got != want {
				t.Errorf("%v.HappenedBefore(%v) = %v, want %v", tt.a, tt.b, got, want)
			}
		})
	}
}

func TestVectorOps(t *testing.T) {
	v := conflict.Vector{"a": 1, "b": 0}
	orig := v.Clone()
	w := v.Tick("a").Tick("c")
	if !reflect.DeepEqual(v, orig) {
		t.Fatalf("Tick modified its receiver: %v", v)
	}
	if want := (conflict.Vector{"a": 2, "b": 0, "c": 1}); !reflect.DeepEqual(w, want) {
		t.Errorf("Tick = %v, want %v", w, want)
	}
	if got := conflict.Vector(nil).Tick("x"); !reflect.DeepEqual(got, conflict.Vector{"x": 1}) {
		t.Errorf("nil.Tick = %v", got)
	}
	m := v.Merge(conflict.Vector{"b": 3, "d": 0})
	if want := (conflict.Vector{"a": 1, "b": 3}); !reflect.DeepEqual(m, want) {
		t.Errorf("Merge = %v, want %v", m, want)
	}
	if !reflect.DeepEqual(v, orig) {
		t.Fatalf("Merge modified its receiver: %v", v)
	}
	c := v.Clone()
	c["a"] = 9
	if v["a"] != 1 {
		t.Error("Clone shares the map")
	}
	if conflict.Vector(nil).Clone() != nil {
		t.Error("nil.Clone() != nil")
	}
	if got := (conflict.Vector{"b": 2, "a": 1, "z": 0}).String(); got != "{a:1 b:2}" {
		t.Errorf("String = %q", got)
	}
	for _, bad := range []conflict.Vector{{"": 1}, {"a": conflict.Limit}} {
		if err := bad.Validate(); !errors.Is(err, conflict.ErrInvalidClock) {
			t.Errorf("Validate(%v) = %v, want ErrInvalidClock", bad, err)
		}
	}
	if err := (conflict.Vector{"a": conflict.Limit - 1}).Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// randomVector draws from few nodes and small counts, so that every
// ordering is frequent; it sometimes holds explicit zeros.
func randomVector(rng *rand.Rand) conflict.Vector {
	v := conflict.Vector{}
	for _, n := range []string{"a", "b", "c", "d"} {
		if rng.IntN(3) > 0 {
			v[n] = uint64(rng.IntN(3))
		}
	}
	if rng.IntN(10) == 0 {
		return nil
	}
	return v
}

func TestVectorLaws(t *testing.T) {
	seed := conflicttest.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	eq := func(a, b conflict.Vector) bool { return a.Compare(b) == conflict.Equal }
	counts := map[conflict.Ordering]int{}
	for i := range 20000 {
		a, b, c := randomVector(rng), randomVector(rng), randomVector(rng)
		fail := func(law string) {
			t.Fatalf("seed %d, case %d: %s fails for a=%v b=%v c=%v", seed, i, law, a, b, c)
		}
		counts[a.Compare(b)]++
		// Merge is a join: commutative, associative, idempotent, an upper
		// bound of both, and the least one.
		if !reflect.DeepEqual(a.Merge(b), b.Merge(a)) {
			fail("merge commutative")
		}
		if !reflect.DeepEqual(a.Merge(b).Merge(c), a.Merge(b.Merge(c))) {
			fail("merge associative")
		}
		if !eq(a.Merge(a), a) || !reflect.DeepEqual(a.Merge(b).Merge(b), a.Merge(b)) {
			fail("merge idempotent")
		}
		m := a.Merge(b)
		if !m.Dominates(a) || !m.Dominates(b) {
			fail("merge is an upper bound")
		}
		if c.Dominates(a) && c.Dominates(b) && !c.Dominates(m) {
			fail("merge is the least upper bound")
		}
		// Happened-before is a strict partial order.
		if a.HappenedBefore(a) {
			fail("happened-before irreflexive")
		}
		if a.HappenedBefore(b) && b.HappenedBefore(c) && !a.HappenedBefore(c) {
			fail("happened-before transitive")
		}
		if a.HappenedBefore(b) && b.HappenedBefore(a) {
			fail("happened-before antisymmetric")
		}
		// Compare is consistent with its converse and with Dominates.
		inverse := map[conflict.Ordering]conflict.Ordering{conflict.Before: conflict.After, conflict.After: conflict.Before,
			conflict.Equal: conflict.Equal, conflict.Concurrent: conflict.Concurrent}
		if b.Compare(a) != inverse[a.Compare(b)] {
			fail("compare converse")
		}
		if a.Dominates(b) != (a.Compare(b) == conflict.After || a.Compare(b) == conflict.Equal) {
			fail("dominates is after or equal")
		}
		if eq(a, b) != (a.String() == b.String()) {
			fail("equal vectors format alike")
		}
		// A tick moves strictly forward, and past what was merged.
		if !a.HappenedBefore(a.Tick("b")) || !b.HappenedBefore(m.Tick("a")) {
			fail("tick happens after")
		}
	}
	for _, o := range []conflict.Ordering{conflict.Before, conflict.Equal, conflict.After, conflict.Concurrent} {
		if counts[o] == 0 {
			t.Errorf("no pair was %v: the generator is too narrow", o)
		}
	}
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func TestHLCNowAndObserve(t *testing.T) {
	c := conflict.NewHLC(0)
	v1 := c.Now(t0)
	if v1 != conflict.MakeHLC(t0, 0) {
		t.Fatalf("Now = %x, want the wall time with counter 0", v1)
	}
	// Same millisecond, then a wall clock that went back: the counter counts.
	if v := c.Now(t0); v != v1+1 {
		t.Errorf("Now in the same ms = %x, want %x", v, v1+1)
	}
	if v := c.Now(t0.Add(-time.Hour)); v != v1+2 {
		t.Errorf("Now after the wall clock went back = %x, want %x", v, v1+2)
	}
	// The wall clock moves on: the counter resets.
	if v := c.Now(t0.Add(time.Millisecond)); v != conflict.MakeHLC(t0.Add(time.Millisecond), 0) {
		t.Errorf("Now a ms later = %x", v)
	}
	// A remote node an hour ahead: its time is adopted, and local values
	// stay above it until the local wall clock catches up.
	ahead := conflict.MakeHLC(t0.Add(time.Hour), 7)
	v, err := c.Observe(ahead, t0)
	if err != nil || v != ahead+1 {
		t.Fatalf("Observe(ahead) = %x, %v; want %x", v, err, ahead+1)
	}
	if got := conflict.HLCSkew(v, t0); got != time.Hour {
		t.Errorf("HLCSkew = %v, want 1h", got)
	}
	if v := c.Now(t0.Add(time.Second)); v != ahead+2 {
		t.Errorf("Now after observing a clock ahead = %x, want %x", v, ahead+2)
	}
	if v := c.Now(t0.Add(2 * time.Hour)); v != conflict.MakeHLC(t0.Add(2*time.Hour), 0) {
		t.Errorf("Now once the wall clock passed it = %x", v)
	}
	// A remote node behind changes nothing but the counter.
	last := c.Last()
	if v, err := c.Observe(conflict.MakeHLC(t0, 0), t0); err != nil || v != last+1 {
		t.Errorf("Observe(behind) = %x, %v; want %x", v, err, last+1)
	}
	// Out of range: refused, clock unchanged.
	last = c.Last()
	for _, bad := range []uint64{conflict.Limit, 1<<64 - 1} {
		if v, err := c.Observe(bad, t0); !errors.Is(err, conflict.ErrInvalidClock) || v != last || c.Last() != last {
			t.Errorf("Observe(%x) = %x, %v; want ErrInvalidClock and %x kept", bad, v, err, last)
		}
	}
	if got := conflict.HLCTime(conflict.MakeHLC(t0, 5)); !got.Equal(t0) {
		t.Errorf("HLCTime = %v, want %v", got, t0)
	}
	// Wall clocks before 1970 or beyond the clock's range are ignored.
	d := conflict.NewHLC(0)
	if v := d.Now(time.Unix(-5, 0)); v != 1 {
		t.Errorf("Now before 1970 = %d, want 1", v)
	}
	if v := d.Now(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)); v >= conflict.Limit {
		t.Errorf("Now in 9999 = %x, at or above Limit", v)
	}
}

func TestLamport(t *testing.T) {
	c := conflict.NewLamport(5)
	if v := c.Tick(); v != 6 {
		t.Errorf("Tick = %d, want 6", v)
	}
	if v, err := c.Observe(10); err != nil || v != 11 {
		t.Errorf("Observe(10) = %d, %v; want 11", v, err)
	}
	if v, err := c.Observe(3); err != nil || v != 12 {
		t.Errorf("Observe(3) = %d, %v; want 12", v, err)
	}
	if v, err := c.Observe(conflict.Limit); !errors.Is(err, conflict.ErrInvalidClock) || v != 12 || c.Last() != 12 {
		t.Errorf("Observe(Limit) = %d, %v; want ErrInvalidClock, 12 kept", v, err)
	}
}

// TestClocksMonotonic drives a Lamport clock and an HLC through random
// interleavings of local events, observations (behind, ahead, far ahead,
// out of range) and a wall clock that jumps backwards and forwards, and
// restarts them from their last value: no value ever goes back.
func TestClocksMonotonic(t *testing.T) {
	seed := conflicttest.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	for run := range 200 {
		hlc, lam := conflict.NewHLC(0), conflict.NewLamport(0)
		wall := t0
		var lastH, lastL uint64
		for step := range 500 {
			fail := func(format string, args ...any) {
				t.Fatalf("seed %d, run %d, step %d: "+format, append([]any{seed, run, step}, args...)...)
			}
			switch rng.IntN(10) {
			case 0: // the wall clock jumps back, up to a day
				wall = wall.Add(-time.Duration(rng.Int64N(int64(24 * time.Hour))))
			case 1: // or forward
				wall = wall.Add(time.Duration(rng.Int64N(int64(time.Hour))))
			case 2: // restart from the persisted values
				hlc, lam = conflict.NewHLC(hlc.Last()), conflict.NewLamport(lam.Last())
			}
			wall = wall.Add(time.Duration(rng.IntN(3)) * time.Millisecond)
			var h, l uint64
			if rng.IntN(3) == 0 {
				var remote uint64
				switch rng.IntN(5) {
				case 0:
					remote = lastH - min(lastH, uint64(rng.Int64N(1<<30)))
				case 1:
					remote = lastH + uint64(rng.Int64N(1<<30))
				case 2:
					remote = conflict.MakeHLC(wall.Add(time.Duration(rng.Int64N(int64(48*time.Hour)))), 0)
				case 3:
					remote = conflict.Limit - 1 - uint64(rng.IntN(2))
					if rng.IntN(20) > 0 {
						remote = uint64(rng.IntN(1000))
					}
				default:
					remote = conflict.Limit + uint64(rng.Int64N(1<<40))
				}
				var errH, errL error
				h, errH = hlc.Observe(remote, wall)
				l, errL = lam.Observe(remote)
				if remote >= conflict.Limit {
					if !errors.Is(errH, conflict.ErrInvalidClock) || !errors.Is(errL, conflict.ErrInvalidClock) {
						fail("Observe(%x) = %v, %v; want ErrInvalidClock", remote, errH, errL)
					}
					if h != lastH || l != lastL {
						fail("a refused observation moved the clocks")
					}
					continue
				}
				if errH != nil || errL != nil {
					fail("Observe(%x): %v, %v", remote, errH, errL)
				}
				if h <= remote || l <= remote {
					fail("Observe(%x) = %x, %x: not past the remote value", remote, h, l)
				}
			} else {
				h, l = hlc.Now(wall), lam.Tick()
				if h < conflict.MakeHLC(wall, 0) {
					fail("Now(%v) = %x, behind the wall clock", wall, h)
				}
			}
			if h <= lastH || l <= lastL {
				fail("went back: hlc %x after %x, lamport %d after %d", h, lastH, l, lastL)
			}
			if hlc.Last() != h || lam.Last() != l {
				fail("Last disagrees with the value issued")
			}
			lastH, lastL = h, l
		}
	}
}

// TestHLCRestartObserve: a clock that starts from nothing and observes the
// persisted last value (with a wall clock behind it) continues after it.
func TestHLCRestartObserve(t *testing.T) {
	persisted := conflict.MakeHLC(t0, 42)
	c := conflict.NewHLC(0)
	v, err := c.Observe(persisted, t0.Add(-time.Minute))
	if err != nil || v <= persisted {
		t.Fatalf("Observe(persisted) = %x, %v; want > %x", v, err, persisted)
	}
	if n := c.Now(t0.Add(-time.Minute)); n <= v {
		t.Errorf("Now = %x after %x", n, v)
	}
	if n := conflict.NewHLC(persisted).Now(t0); n <= persisted {
		t.Errorf("NewHLC(persisted).Now = %x, want > %x", n, persisted)
	}
}

// TestClocksConcurrent: values issued concurrently are all distinct.
func TestClocksConcurrent(t *testing.T) {
	hlc, lam := conflict.NewHLC(0), conflict.NewLamport(0)
	const workers, each = 8, 1000
	var mu sync.Mutex
	seenH, seenL := make(map[uint64]bool), make(map[uint64]bool)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			hs, ls := make([]uint64, 0, each), make([]uint64, 0, each)
			for i := range each {
				if i%3 == 0 {
					h, _ := hlc.Observe(uint64(w*i), t0)
					l, _ := lam.Observe(uint64(w * i))
					hs, ls = append(hs, h), append(ls, l)
					continue
				}
				hs, ls = append(hs, hlc.Now(t0)), append(ls, lam.Tick())
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range hs {
				if seenH[hs[i]] || seenL[ls[i]] {
					t.Errorf("value issued twice: hlc %x, lamport %d", hs[i], ls[i])
				}
				seenH[hs[i]], seenL[ls[i]] = true, true
			}
		})
	}
	wg.Wait()
	if len(seenH) != workers*each || hlc.Last() != conflict.MakeHLC(t0, 0)+workers*each-1 {
		t.Errorf("%d distinct HLC values, last %x", len(seenH), hlc.Last())
	}
}
