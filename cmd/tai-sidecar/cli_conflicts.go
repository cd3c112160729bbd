package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
)

// sinceFlag is a time given as RFC 3339, or as a duration before now
// ("10m": ten minutes ago).
type sinceFlag struct{ timeFlag }

func (f *sinceFlag) Set(s string) error {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return fmt.Errorf("want a duration before now, not %v", d)
		}
		f.t = time.Now().Add(-d)
		return nil
	}
	if err := f.timeFlag.Set(s); err != nil {
		return fmt.Errorf("want an RFC 3339 time such as 2030-01-02T15:04:05Z, or a duration such as 10m")
	}
	return nil
}

// conflictsFlags runs `conflicts GOV`: the conflict ledger of a governor
// (the true conflicts this sidecar's pushes settled), oldest first, one
// JSON object per line with the protocol's field names; values are JSON.
func conflictsFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	state := fs.String("state", "", "only the conflicts of state `S`")
	var since, until sinceFlag
	fs.Var(&since, "since", "only conflicts decided at or after `T` (RFC 3339, or a duration before now such as 1h)")
	fs.Var(&until, "until", "only conflicts decided before `T` (RFC 3339, or a duration before now)")
	limit := fs.Int("limit", 0, "print at most `N` conflicts (0: all)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *limit < 0 {
			return &usageError{"conflicts: --limit must not be negative"}
		}
		if !since.t.IsZero() && !until.t.IsZero() && !until.t.After(since.t) {
			return &usageError{"conflicts: --until must be after --since"}
		}
		opts := client.ConflictsOptions{State: *state, Since: since.t, Until: until.t, Limit: localcache.MaxLedgerLimit}
		if *limit > 0 {
			opts.Limit = min(*limit, opts.Limit)
		}
		n := 0
		for e, err := range c.ConflictsAll(ctx, pos[0], opts) {
			if err != nil {
				return err
			}
			if err := printProtocolJSON(out, e); err != nil {
				return err
			}
			if n++; n == *limit {
				break
			}
		}
		return nil
	}
}
