package syncer

import (
	"context"
	"fmt"

	"github.com/tai-state/tai-state/conflict"
)

// Resolver names for decisions the push loop makes without
// Options.Resolvers: the built-in last-write-wins rule and the rule of
// strict entries.
const (
	resolverLWW    = conflict.NameLWW
	resolverStrict = "strict"
)

// decision is how the push loop settled a true conflict of one part.
type decision struct {
	verdict verdict // win or lose
	// merged is the value to push instead of the part's newest value
	// (a resolver's merged decision; verdict is then win).
	merged   []byte
	resolver string // who decided, e.g. "causal>lww"
	reason   string // for logs: nodes, versions and clocks, never values
}

// decide settles a true conflict of p against the remote record: a strict
// part loses; otherwise the resolver of p's governor decides, or, without
// Options.Resolvers, last write wins (lwwWins). A resolver that fails,
// panics or returns an invalid decision is overruled by lwwWins.
func (s *Syncer) decide(ctx context.Context, p *part, remote Record) decision {
	local := p.entries[len(p.entries)-1].Record
	if p.entries[0].Strict {
		return decision{verdict: lose, resolver: resolverStrict,
			reason: "a strict write never overwrites a change it has not seen"}
	}
	if s.opts.Resolvers == nil {
		return lwwDecision(local, remote, "")
	}
	c := conflict.Conflict{
		Key:    conflict.Key{Governor: p.key.Governor, State: p.key.State},
		Local:  toSide(local),
		Remote: toSide(remote),
	}
	if base := p.entries[0].BaseVersion; base == 0 {
		// The state did not exist when the local change was made: both
		// sides created it. A known base version's value is not in the
		// journal entry, so Base stays nil for it (resolvers that need the
		// value, like merge, hand the conflict to their fallback).
		c.Base = &conflict.Base{Version: 0}
	}
	d, err := safeResolve(ctx, s.opts.Resolvers, c)
	if err != nil {
		return lwwDecision(local, remote, fmt.Sprintf("resolver failed (%v)", err))
	}
	out := decision{resolver: d.Resolver, reason: d.Reason}
	switch d.Winner {
	case conflict.Local:
		out.verdict = win
	case conflict.Remote:
		out.verdict = lose
	case conflict.Merged:
		out.verdict = win
		out.merged = d.Value
	}
	return out
}

// lwwDecision is lwwWins as a decision; failure, when set, says why it
// overrules a resolver.
func lwwDecision(local, remote Record, failure string) decision {
	d := decision{verdict: lose, resolver: resolverLWW}
	winner, loser := remote, local
	if lwwWins(local, remote) {
		d.verdict = win
		winner, loser = local, remote
	}
	d.reason = fmt.Sprintf("last write wins: v%d by node %q at HLC %d over v%d by node %q at HLC %d",
		winner.Version, winner.Origin, winner.Clock.HLC, loser.Version, loser.Origin, loser.Clock.HLC)
	if failure != "" {
		d.resolver = "!>" + resolverLWW
		d.reason = failure + "; " + d.reason
	}
	return d
}

// safeResolve calls r, turning a panic into an error and checking the
// decision: Options.Resolvers may be any conflict.Resolver, not only a
// conflict.Set (which never fails).
func safeResolve(ctx context.Context, r conflict.Resolver, c conflict.Conflict) (d conflict.Decision, err error) {
	defer func() {
		if p := recover(); p != nil {
			d, err = conflict.Decision{}, fmt.Errorf("panic: %v", p)
		}
	}()
	d, err = r.Resolve(ctx, c)
	if err != nil {
		return conflict.Decision{}, err
	}
	if err := d.Validate(); err != nil {
		return conflict.Decision{}, err
	}
	if d.Resolver == "" {
		d.Resolver = "custom"
	}
	return d, nil
}

// toSide is r as a side of a conflict.Conflict, with its own copy of the
// vector clock (the value is shared: resolvers must not modify it).
func toSide(r Record) conflict.Side {
	return conflict.Side{
		Value:     r.Value,
		Version:   r.Version,
		Deleted:   r.Deleted,
		UpdatedAt: r.UpdatedAt,
		Origin:    r.Origin,
		OpID:      r.OpID,
		Clock: conflict.Clock{
			Lamport: r.Clock.Lamport,
			HLC:     r.Clock.HLC,
			Vector:  conflict.Vector(r.Clock.Clone().Vector),
		},
	}
}
