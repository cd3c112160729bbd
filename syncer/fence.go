package syncer

import (
	"errors"
	"fmt"
)

// Fence names the lock grant a change is made under: a write is valid only
// while no grant of Resource newer than Token exists. Tokens only grow per
// resource (see package txn). The zero Fence means "no fence".
// See docs/decisions/0013-fenced-writes.md.
type Fence struct {
	Resource string
	Token    uint64
}

// IsZero reports whether f is the zero Fence (no fence).
func (f Fence) IsZero() bool { return f == Fence{} }

// Validate checks a fence that is set: the resource is a valid lock name
// (a document id, as ValidateName checks) and the token is not 0.
func (f Fence) Validate() error {
	if err := ValidateName("fence resource", f.Resource); err != nil {
		return err
	}
	if f.Token == 0 {
		return errors.New("fence token must be greater than 0")
	}
	return nil
}

// ErrFenceRejected: a change's fence is stale (a newer grant of its lock
// exists), or it names a grant the shared store has no record of.
var ErrFenceRejected = errors.New("fence rejected")

// FenceRejectedError says why a fence was rejected. Current is the token
// the fence was judged against: the highest token the local store has seen
// for Resource (local check), or the lock's last granted token in the shared
// store (0: the lock has no record). It matches ErrFenceRejected.
type FenceRejectedError struct {
	Resource string
	Token    uint64
	Current  uint64
}

func (e *FenceRejectedError) Error() string { return "FenceRejected: " + e.Detail() }

// Detail says why the fence was rejected (Error without its prefix).
func (e *FenceRejectedError) Detail() string {
	switch {
	case e.Current > e.Token:
		return fmt.Sprintf("fence token %d of lock %q is stale: the lock was granted since, with token %d",
			e.Token, e.Resource, e.Current)
	case e.Current == 0:
		return fmt.Sprintf("fence token %d of lock %q: the shared store has no record of the lock", e.Token, e.Resource)
	}
	return fmt.Sprintf("fence token %d of lock %q was never granted: the lock's last token is %d",
		e.Token, e.Resource, e.Current)
}

// Unwrap makes errors.Is(err, ErrFenceRejected) hold.
func (e *FenceRejectedError) Unwrap() error { return ErrFenceRejected }

// CheckFence judges fence f against the last token granted on its lock in
// the shared store (last: 0 when the lock has no record), as every Remote's
// Commit does: the fence passes only when its token is the last one granted,
// whether or not that grant's lease is still running (the token decides, not
// the clock). A lower token is stale; a higher one, or any token of a lock
// with no record, was never granted. It returns nil or a
// *FenceRejectedError.
func CheckFence(f Fence, last uint64) error {
	if f.Token == last && last != 0 {
		return nil
	}
	return &FenceRejectedError{Resource: f.Resource, Token: f.Token, Current: last}
}

// FenceResources returns the distinct lock resources the fenced changes of
// b name, in order of first appearance: the locks a backend reads in its
// Commit transaction.
func FenceResources(b Batch) []string {
	var out []string
	seen := make(map[string]bool)
	for _, c := range b.Changes {
		if r := c.Fence.Resource; !c.Fence.IsZero() && !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// fenced reports whether a run holds a fenced entry: such runs are never
// coalesced (a stale fence must reject its own change only).
func fenced(p *part) bool {
	for _, e := range p.entries {
		if !e.Fence.IsZero() {
			return true
		}
	}
	return false
}

// decided reports whether err is one a Commit returns together with its
// results: nil, a *ConflictError or a *FenceRejectedError.
func decided(err error) bool {
	var conflict *ConflictError
	var rejected *FenceRejectedError
	return err == nil || errors.As(err, &conflict) || errors.As(err, &rejected)
}

// parkRejected parks unit u, whose commit rejected a fence (rej), with the
// remote record of each of its parts as the commit read it (results[i] is
// parts[i]'s): the change certainly was not applied, so the local side can
// adopt what the remote holds instead of keeping a value no other node will
// ever see.
func (s *Syncer) parkRejected(ps *passState, u *unit, parts []*part, results []Result, rej *FenceRejectedError) {
	remote := make(map[Key]*Record, len(parts))
	for i, p := range parts {
		r := Record{Key: p.key}
		if results[i].Exists {
			r = results[i].Remote.Clone()
			r.Key = p.key
		}
		remote[p.key] = &r
	}
	from := len(ps.parked)
	s.park(ps, u, rej)
	for i := from; i < len(ps.parked); i++ {
		ps.parked[i].Remote = remote[ps.parked[i].Key]
	}
}

// adoptParkedLocked makes the remote record of each parked entry that
// carries one the local record of its key, when no entry of the key is
// left pending (see Journal.Park). j.mu is held.
func (j *MemJournal) adoptParkedLocked(parked []Parked) {
	for _, p := range parked {
		if p.Remote == nil || j.hasPending(p.Key) {
			continue
		}
		if p.Remote.Version == 0 {
			delete(j.records, p.Key)
			continue
		}
		j.records[p.Key] = p.Remote.Clone()
		j.synced[p.Key] = p.Remote.Version
	}
}
