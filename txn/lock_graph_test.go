package txn

import (
	"slices"
	"testing"
)

type mapGraph struct{ holders, waits map[string]string }

func (g mapGraph) HolderOf(r string) (string, error)   { return g.holders[r], nil }
func (g mapGraph) WaitingFor(w string) (string, error) { return g.waits[w], nil }

func TestFindCycle(t *testing.T) {
	tests := []struct {
		name           string
		holders, waits map[string]string
		waiter, res    string
		want           []string // waiters of the cycle, from waiter
		victim         string
	}{
		{"free", nil, nil, "a", "r1", nil, ""},
		{"self", map[string]string{"r1": "a"}, nil, "a", "r1", []string{"a"}, "a"},
		{"chain", map[string]string{"r1": "b", "r2": "c"}, map[string]string{"b": "r2"}, "a", "r1", nil, ""},
		{"two", map[string]string{"r1": "b", "r2": "a"}, map[string]string{"b": "r2"}, "a", "r1", []string{"a", "b"}, "b"},
		{"three", map[string]string{"r1": "b", "r2": "c", "r3": "a"}, map[string]string{"b": "r2", "c": "r3"},
			"a", "r1", []string{"a", "b", "c"}, "c"},
		{"cycle elsewhere", map[string]string{"r1": "b", "r2": "c", "r3": "b"}, map[string]string{"b": "r2", "c": "r3"},
			"a", "r1", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cycle, err := findCycle(mapGraph{tc.holders, tc.waits}, tc.waiter, tc.res)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range cycle {
				got = append(got, e.Waiter)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("cycle %v, want waiters %v", cycle, tc.want)
			}
			if cycle != nil {
				if v := victim(cycle); v != tc.victim {
					t.Fatalf("victim %s, want %s", v, tc.victim)
				}
				if r := rotate(cycle, tc.victim); r[0].Waiter != tc.victim || len(r) != len(cycle) {
					t.Fatalf("rotate: %v", r)
				}
			}
		})
	}
}
