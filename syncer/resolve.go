package syncer

import (
	"context"
	"fmt"
	"time"

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
	// record is the conflict ledger's record of the decision.
	record *ConflictRecord
}

// decide settles a true conflict of p against the remote record: a strict
// part loses; otherwise the resolver of p's governor decides, or, without
// Options.Resolvers, last write wins (lwwWins). A resolver that fails,
// panics or returns an invalid decision is overruled by lwwWins. The
// decision carries its ledger record.
func (s *Syncer) decide(ctx context.Context, p *part, remote Record) decision {
	local := p.entries[len(p.entries)-1].Record
	if p.merged != nil {
		// Rebased on a merge of an earlier round: the change now pushed
		// has the merged value.
		local.Value, local.Deleted = p.merged, false
	}
	c := conflict.Conflict{
		Key:    conflict.Key{Governor: p.key.Governor, State: p.key.State},
		Local:  toSide(local),
		Remote: toSide(remote),
		Base:   s.base(ctx, p),
	}
	d := s.resolveConflict(ctx, p, c, local, remote)
	d.record = conflictRecord(p, c, d, s.remote.Limits(), time.Now())
	return d
}

// resolveConflict is decide's decision, without its record.
func (s *Syncer) resolveConflict(ctx context.Context, p *part, c conflict.Conflict, local, remote Record) decision {
	if p.entries[0].Strict {
		return decision{verdict: lose, resolver: resolverStrict,
			reason: "a strict write never overwrites a change it has not seen"}
	}
	if s.opts.Resolvers == nil {
		return lwwDecision(local, remote, "")
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
