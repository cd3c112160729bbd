package conflict

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Ordering is how two clock values relate in the happened-before order.
type Ordering int8

// Orderings. The zero value is not one of them.
const (
	Before     Ordering = iota + 1 // the first happened before the second
	Equal                          // the same point
	After                          // the first happened after the second
	Concurrent                     // neither has seen the other
)

func (o Ordering) String() string {
	switch o {
	case Before:
		return "before"
	case Equal:
		return "equal"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	}
	return "ordering(" + strconv.Itoa(int(o)) + ")"
}

// Vector is a vector clock: for each node id, how many changes of that node
// a state has seen. A missing entry counts as 0, so {a:0} equals {}. A nil
// Vector is the empty clock. Methods never modify their receiver or
// arguments: a Vector may be shared once built.
type Vector map[string]uint64

// Compare returns how v relates to o: Before when o has seen everything v
// has and more, After for the reverse, Equal when they have seen the same,
// Concurrent otherwise.
func (v Vector) Compare(o Vector) Ordering {
	less, greater := false, false
	for n, x := range v {
		y := o[n]
		if x < y {
			less = true
		} else if x > y {
			greater = true
		}
	}
	for n, y := range o {
		if _, ok := v[n]; !ok && y > 0 {
			less = true
		}
	}
	switch {
	case less && greater:
		return Concurrent
	case less:
		return Before
	case greater:
		return After
	}
	return Equal
}

// Dominates reports whether v has seen everything o has (v is After or
// Equal to o).
func (v Vector) Dominates(o Vector) bool {
	for n, y := range o {
		if v[n] < y {
			return false
		}
	}
	return true
}

// HappenedBefore reports whether v happened before o (strictly).
func (v Vector) HappenedBefore(o Vector) bool { return v.Compare(o) == Before }

// Merge returns a new vector holding, for every node, the greater of v's and
// o's entries (their least upper bound). Zero entries are dropped.
func (v Vector) Merge(o Vector) Vector {
	m := make(Vector, max(len(v), len(o)))
	for n, x := range v {
		if x > 0 {
			m[n] = x
		}
	}
	for n, y := range o {
		if y > m[n] {
			m[n] = y
		}
	}
	return m
}

// Tick returns a new vector: v with node's entry incremented. Its entry
// must be below Limit (Validate checks vectors that come from elsewhere).
func (v Vector) Tick(node string) Vector {
	m := v.Clone()
	if m == nil {
		m = make(Vector, 1)
	}
	m[node]++
	return m
}

// Clone returns a copy of v (nil for nil).
func (v Vector) Clone() Vector {
	if v == nil {
		return nil
	}
	m := make(Vector, len(v))
	for n, x := range v {
		m[n] = x
	}
	return m
}

// Get returns node's entry (0 when missing).
func (v Vector) Get(node string) uint64 { return v[node] }

// Validate checks a vector received from another process: node ids are
// not empty and entries are below Limit, so a Tick cannot overflow.
func (v Vector) Validate() error {
	for n, x := range v {
		if n == "" {
			return fmt.Errorf("%w: vector clock with an empty node id", ErrInvalidClock)
		}
		if x >= Limit {
			return fmt.Errorf("%w: vector clock entry %q is %d, at least %d", ErrInvalidClock, n, x, uint64(Limit))
		}
	}
	return nil
}

// Nodes returns v's node ids with a nonzero entry, sorted.
func (v Vector) Nodes() []string {
	ns := make([]string, 0, len(v))
	for n, x := range v {
		if x > 0 {
			ns = append(ns, n)
		}
	}
	slices.Sort(ns)
	return ns
}

// String formats v with sorted node ids and without zero entries, e.g.
// "{a:1 b:3}": equal vectors format alike.
func (v Vector) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range v.Nodes() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(n)
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(v[n], 10))
	}
	b.WriteByte('}')
	return b.String()
}

// compareVectors is a total order on vectors (for tie-breaks): by sorted
// node ids, then entries. Equal vectors (Compare == Equal) compare 0.
func compareVectors(a, b Vector) int {
	an, bn := a.Nodes(), b.Nodes()
	for i := 0; i < len(an) && i < len(bn); i++ {
		if c := strings.Compare(an[i], bn[i]); c != 0 {
			return c
		}
		if c := cmp.Compare(a[an[i]], b[bn[i]]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(an), len(bn))
}
