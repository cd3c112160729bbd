package conflict

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"strconv"
	"strings"
)

// Key names a state: the governor that owns it and its name.
type Key struct {
	Governor string
	State    string
}

func (k Key) String() string { return k.Governor + "/" + k.State }

// Side is one version of a state in a conflict: what the remote holds, or
// the local change that met it.
type Side struct {
	Value     []byte // the app's msgpack document, verbatim (nil for a tombstone)
	Version   uint64
	Deleted   bool  // a tombstone: the state was deleted
	UpdatedAt int64 // Unix nanoseconds, from the node that made the change
	Origin    string
	OpID      string
	Clock     Clock
}

// Base is the common ancestor of both sides: the version the local change
// was made on. A Base with Version 0 or Deleted means the state did not
// exist then (both sides created it).
type Base struct {
	Value   []byte
	Version uint64
	Deleted bool
}

// absent reports whether the state did not exist at the base.
func (b Base) absent() bool { return b.Version == 0 || b.Deleted }

// Conflict is two versions of one state made concurrently: the local change
// and the remote record it met. Base is their common ancestor when the local
// store knows its value (nil otherwise).
type Conflict struct {
	Key    Key
	Local  Side
	Remote Side
	Base   *Base
}

// Clone returns c with its own copies of values and vector clocks.
func (c Conflict) Clone() Conflict {
	c.Local, c.Remote = c.Local.Clone(), c.Remote.Clone()
	c.Base = c.Base.Clone()
	return c
}

// Clone returns s with its own copies of Value and the vector clock.
func (s Side) Clone() Side {
	s.Value = slices.Clone(s.Value)
	s.Clock = s.Clock.Clone()
	return s
}

// Clone returns a copy of b with its own Value (nil for nil).
func (b *Base) Clone() *Base {
	if b == nil {
		return nil
	}
	c := *b
	c.Value = slices.Clone(c.Value)
	return &c
}

// Swap returns c seen from the other node: local and remote exchanged. A
// deterministic resolver chooses the same record for c and c.Swap().
func (c Conflict) Swap() Conflict {
	c.Local, c.Remote = c.Remote, c.Local
	return c
}

// Winner says which record a Decision keeps.
type Winner uint8

// Winners. The zero value is not one of them.
const (
	Local  Winner = iota + 1 // the local change wins
	Remote                   // the remote record wins
	Merged                   // a new value made from both (Decision.Value)
)

func (w Winner) String() string {
	switch w {
	case Local:
		return "local"
	case Remote:
		return "remote"
	case Merged:
		return "merged"
	}
	return "winner(" + strconv.Itoa(int(w)) + ")"
}

// Decision is how a conflict is settled.
type Decision struct {
	Winner Winner
	// Value is the merged document when Winner is Merged (a live state,
	// not a tombstone); nil otherwise.
	Value []byte
	// Resolver names the resolver that decided, followed by the fallbacks
	// that did, e.g. "causal>lww".
	Resolver string
	// Reason explains the decision for people (the conflict ledger, logs).
	// It names nodes, versions and clocks, never values.
	Reason string
}

// Validate checks that d can be applied.
func (d Decision) Validate() error {
	switch d.Winner {
	case Local, Remote:
		return nil
	case Merged:
		if len(d.Value) == 0 {
			return errorf(ErrInvalidDecision, "merged decision without a value")
		}
		return nil
	}
	return errorf(ErrInvalidDecision, "no winner (%v)", d.Winner)
}

// Resolver settles conflicts. Resolve returns a Decision for c, or an error
// when it cannot decide (a Set then hands c to the fallback). It must not
// modify c, and must be safe for concurrent use.
//
// Resolvers should be deterministic: the same decision for the same
// conflict on every node, whichever side is local (c.Swap() yields the same
// record or the same merged bytes), or nodes may settle one conflict in
// different ways. conflicttest.CheckDeterminism tests that.
type Resolver interface {
	Resolve(ctx context.Context, c Conflict) (Decision, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, c Conflict) (Decision, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, c Conflict) (Decision, error) { return f(ctx, c) }

// pick returns the decision for winner w (Local or Remote).
func pick(name string, w Winner, reason string) Decision {
	return Decision{Winner: w, Resolver: name, Reason: reason}
}

// compareSides is a total order on sides over every field, for tie-breaks
// that must not depend on which side is local. It returns 0 only for sides
// that are the same record.
func compareSides(a, b Side) int {
	if c := cmp.Compare(a.Clock.HLC, b.Clock.HLC); c != 0 {
		return c
	}
	if c := strings.Compare(a.Origin, b.Origin); c != 0 {
		return c
	}
	if c := strings.Compare(a.OpID, b.OpID); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	if a.Deleted != b.Deleted {
		if a.Deleted {
			return 1
		}
		return -1
	}
	if c := bytes.Compare(a.Value, b.Value); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Clock.Lamport, b.Clock.Lamport); c != 0 {
		return c
	}
	if c := compareVectors(a.Clock.Vector, b.Clock.Vector); c != 0 {
		return c
	}
	return cmp.Compare(a.UpdatedAt, b.UpdatedAt)
}

// describe names a side for reasons: its origin node and version.
func describe(s Side) string {
	var b strings.Builder
	if s.Deleted {
		b.WriteString("deletion ")
	}
	b.WriteString("v")
	b.WriteString(strconv.FormatUint(s.Version, 10))
	b.WriteString(" by node ")
	b.WriteString(strconv.Quote(s.Origin))
	if s.OpID != "" {
		b.WriteString(" (op ")
		b.WriteString(s.OpID)
		b.WriteString(")")
	}
	return b.String()
}
