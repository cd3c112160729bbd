package conflicttest_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/conflict/conflicttest"
)

// TestCheckConflictCatches: the check finds resolvers that depend on which
// side is local, or that modify the conflict.
func TestCheckConflictCatches(t *testing.T) {
	bad := map[string]conflict.ResolverFunc{
		"always local": func(context.Context, conflict.Conflict) (conflict.Decision, error) {
			return conflict.Decision{Winner: conflict.Local}, nil
		},
		"merges the local value": func(_ context.Context, c conflict.Conflict) (conflict.Decision, error) {
			return conflict.Decision{Winner: conflict.Merged, Value: append([]byte{0x92}, c.Local.Value...)}, nil
		},
		"fails one way": func(_ context.Context, c conflict.Conflict) (conflict.Decision, error) {
			if c.Local.Origin < c.Remote.Origin {
				return conflict.Decision{}, context.Canceled
			}
			return conflict.LWW{}.Resolve(context.Background(), c)
		},
		"modifies the conflict": func(_ context.Context, c conflict.Conflict) (conflict.Decision, error) {
			c.Local.Clock.Vector["zz"] = 1
			return conflict.LWW{}.Resolve(context.Background(), c)
		},
	}
	for name, r := range bad {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 7))
			for range 200 {
				if err := conflicttest.CheckConflict(context.Background(), r, conflicttest.Random(rng)); err != nil {
					t.Logf("caught: %s", strings.SplitN(err.Error(), "\n", 2)[0])
					return
				}
			}
			t.Errorf("not caught in 200 conflicts")
		})
	}
}
