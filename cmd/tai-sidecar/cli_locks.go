package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/tai-state/tai-state/client"
)

// lockJSON is how the CLI prints a grant or a lock's status.
type lockJSON struct {
	Resource    string   `json:"resource"`
	Held        *bool    `json:"held,omitempty"` // status only
	Holder      string   `json:"holder,omitempty"`
	Token       uint64   `json:"token"`
	LeaseMS     int64    `json:"lease_ms,omitempty"`
	Expires     string   `json:"expires,omitempty"`
	Deadline    string   `json:"deadline,omitempty"`
	RemainingMS int64    `json:"remaining_ms,omitempty"`
	Waiters     []string `json:"waiters,omitempty"`
	Next        string   `json:"next,omitempty"` // status only
	Released    bool     `json:"released,omitempty"`
}

func grantJSON(l *client.Lock) lockJSON {
	return lockJSON{Resource: l.Resource, Holder: l.Holder, Token: l.Token, LeaseMS: l.Lease.Milliseconds(),
		Expires: formatNanos(l.Expires.UnixNano()), Deadline: formatNanos(l.Deadline.UnixNano())}
}

// lockFlags runs `lock acquire|release|extend|status RES [TOKEN]`. The
// CLI's grants are never bound to its connection: the process exits right
// after, and the lock lives on until its lease ends or it is released.
func lockFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	lease := fs.Duration("lease", 0, "acquire, extend: the lease `D` (0: the sidecar's default, 30s)")
	wait := fs.Duration("wait", 0, "acquire: wait up to `D` for a held lock (0: fail at once)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		sub, res := pos[0], pos[1]
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		takes := map[string]struct {
			token       bool
			lease, wait bool
			usageArgs   string
		}{
			"acquire": {lease: true, wait: true, usageArgs: "RES [--lease D] [--wait D]"},
			"release": {token: true, usageArgs: "RES TOKEN"},
			"extend":  {token: true, lease: true, usageArgs: "RES TOKEN [--lease D]"},
			"status":  {usageArgs: "RES"},
		}
		t, ok := takes[sub]
		switch {
		case !ok:
			return &usageError{fmt.Sprintf("lock: unknown subcommand %q (want acquire, release, extend or status)", sub)}
		case t.token != (len(pos) == 3), set["lease"] && !t.lease, set["wait"] && !t.wait:
			return &usageError{"usage: tai-sidecar lock " + sub + " " + t.usageArgs}
		case *lease < 0 || *wait < 0:
			return &usageError{"lock: --lease and --wait must not be negative"}
		}
		var token uint64
		if t.token {
			var err error
			if token, err = strconv.ParseUint(pos[2], 10, 64); err != nil || token == 0 {
				return &usageError{fmt.Sprintf("lock %s: TOKEN %q is not a token (a positive integer)", sub, pos[2])}
			}
		}
		switch sub {
		case "acquire":
			l, err := c.Acquire(ctx, res, client.Lease(*lease), client.Wait(*wait))
			if err != nil {
				return err
			}
			return out.Encode(grantJSON(l))
		case "release":
			l := &client.Lock{Resource: res, Token: token}
			if err := c.Release(ctx, l); err != nil {
				return err
			}
			return out.Encode(lockJSON{Resource: res, Token: token, Released: true})
		case "extend":
			l, err := c.Extend(ctx, &client.Lock{Resource: res, Token: token}, client.Lease(*lease))
			if err != nil {
				return err
			}
			return out.Encode(grantJSON(l))
		}
		st, err := c.LockStatus(ctx, res)
		if err != nil {
			return err
		}
		j := lockJSON{Resource: st.Resource, Held: &st.Held, Holder: st.Holder, Token: st.Token, Waiters: st.Waiters,
			Next: st.Next, RemainingMS: (st.Remaining + time.Millisecond - 1).Milliseconds()}
		if st.Held {
			j.Expires = formatNanos(st.Expires.UnixNano())
		}
		return out.Encode(j)
	}
}
