package conflict

import (
	"context"
	"fmt"
	"strconv"
)

// Names of the built-in resolvers.
const (
	NameLWW     = "lww"
	NameVersion = "version"
	NameCausal  = "causal"
	NameMerge   = "merge"
)

// LWW is last-write-wins: the side with the later hybrid logical clock wins,
// the greater origin (node id and store incarnation) breaks a tie. This is the push loop's rule
// before resolvers were pluggable, decision for decision, whenever the two
// (HLC, origin) pairs differ, which they always do for two different
// changes: a node never issues one HLC value twice. Equal pairs (a replayed
// or corrupt record) go on to the op id and then every other field, and two
// identical sides keep the remote one. A tombstone is a side like any other:
// a later deletion wins over an earlier write, a later write over an earlier
// deletion. LWW never fails and needs no fallback.
type LWW struct{}

// Resolve implements Resolver.
func (LWW) Resolve(_ context.Context, c Conflict) (Decision, error) { return lww(c), nil }

func lww(c Conflict) Decision {
	l, r := c.Local, c.Remote
	cmp := compareSides(l, r)
	w, win, lose := Remote, r, l
	if cmp > 0 {
		w, win, lose = Local, l, r
	}
	var why string
	switch {
	case cmp == 0:
		why = "both sides are the same record " + describe(r)
	case win.Clock.HLC != lose.Clock.HLC:
		why = fmt.Sprintf("%s at %s is later than %s at %s", describe(win), formatHLC(win.Clock.HLC),
			describe(lose), formatHLC(lose.Clock.HLC))
	case win.Origin != lose.Origin:
		why = fmt.Sprintf("%s and %s have the same clock %s: the greater origin wins", describe(win), describe(lose),
			formatHLC(win.Clock.HLC))
	default:
		why = fmt.Sprintf("%s and %s have the same clock %s and node: the greater op id, then record, wins",
			describe(win), describe(lose), formatHLC(win.Clock.HLC))
	}
	return pick(NameLWW, w, "last write wins: "+why)
}

// formatHLC formats an HLC value as its UTC wall time and logical counter.
func formatHLC(h uint64) string {
	return HLCTime(h).UTC().Format("2006-01-02T15:04:05.000Z") + "+" + strconv.FormatUint(h&(1<<HLCLogicalBits-1), 10)
}

// VersionWins is version-based: the side with the higher version number
// (the one that counts more changes) wins; equal versions go to Fallback
// (nil: LWW). A tombstone's version counts like any other.
type VersionWins struct {
	Fallback Resolver
}

// Resolve implements Resolver.
func (v VersionWins) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	l, r := c.Local, c.Remote
	switch {
	case l.Version > r.Version:
		return pick(NameVersion, Local, fmt.Sprintf("higher version wins: %s over %s", describe(l), describe(r))), nil
	case r.Version > l.Version:
		return pick(NameVersion, Remote, fmt.Sprintf("higher version wins: %s over %s", describe(r), describe(l))), nil
	}
	return fallback(ctx, NameVersion, v.Fallback, c, "both sides are at version "+strconv.FormatUint(l.Version, 10))
}

// Causal is causality-aware: when one side's vector clock dominates (it
// has seen everything the other has, and more), that side wins. Concurrent
// sides, and equal vectors on different records, go to Fallback (nil:
// LWW). A tombstone is ordered by its vector like any other side: a
// deletion made after seeing a write wins over it.
type Causal struct {
	Fallback Resolver
}

// Resolve implements Resolver.
func (cs Causal) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	l, r := c.Local, c.Remote
	switch l.Clock.Vector.Compare(r.Clock.Vector) {
	case After:
		return pick(NameCausal, Local, fmt.Sprintf("%s has seen %s: its vector %s dominates %s",
			describe(l), describe(r), l.Clock.Vector, r.Clock.Vector)), nil
	case Before:
		return pick(NameCausal, Remote, fmt.Sprintf("%s has seen %s: its vector %s dominates %s",
			describe(r), describe(l), r.Clock.Vector, l.Clock.Vector)), nil
	case Equal:
		return fallback(ctx, NameCausal, cs.Fallback, c, "both sides have the vector "+l.Clock.Vector.String())
	}
	lo, hi := l, r
	if compareSides(lo, hi) > 0 {
		lo, hi = hi, lo
	}
	return fallback(ctx, NameCausal, cs.Fallback, c, fmt.Sprintf("vectors %s of %s and %s of %s are concurrent",
		lo.Clock.Vector, describe(lo), hi.Clock.Vector, describe(hi)))
}

// fallback hands c to fb (nil: LWW) because of why, and records that in the
// decision.
func fallback(ctx context.Context, name string, fb Resolver, c Conflict, why string) (Decision, error) {
	d, err := orLWW(fb).Resolve(ctx, c)
	if err != nil {
		return Decision{}, fmt.Errorf("%s: fallback: %w", name, err)
	}
	d.Resolver = name + ">" + d.Resolver
	d.Reason = why + "; " + d.Reason
	return d, nil
}
