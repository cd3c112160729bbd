package syncer

import (
	"context"

	"github.com/tai-state/tai-state/conflict"
)

// BaseReader is an optional capability of a Journal (found by type
// assertion): the record of a past version of a key, from the local event
// log, so that resolvers that merge (conflict.Merge) get the value a local
// change was made on. localcache.Store has it.
type BaseReader interface {
	// Base returns the record that version of key had, as the local event
	// that made it holds it (value, tombstone, clocks); ok is false when
	// the local store has no such event.
	Base(ctx context.Context, key Key, version uint64) (rec Record, ok bool, err error)
}

// base returns the common ancestor of p's change and the remote record it
// met: the version p was made on, with its value, or nil when that value
// cannot be found. A part rebased earlier in the pass was made on the
// remote record it was rebased onto. Otherwise the base is looked up in the
// local event log (BaseReader), then in the remote's (the shared history:
// a base pulled from the remote has no local event). A record found is
// taken only when its vector clock is the one the change was made on (the
// change's, less its own tick): after a conflict, local and remote version
// numbers may name different changes.
func (s *Syncer) base(ctx context.Context, p *part) *conflict.Base {
	if p.rebased {
		return &conflict.Base{Value: p.remote.Value, Version: p.remote.Version, Deleted: p.remote.Deleted}
	}
	first := p.entries[0]
	if first.BaseVersion == 0 {
		return &conflict.Base{} // both sides created the state
	}
	want := baseVector(first.Record)
	if br, ok := s.journal.(BaseReader); ok {
		rec, found, err := br.Base(ctx, p.key, first.BaseVersion)
		switch {
		case err != nil:
			s.log.Debug("conflict base: local event log", "key", p.key.String(), "version", first.BaseVersion, "err", err)
		case found && rec.Version == first.BaseVersion && sameVector(rec.Clock.Vector, want):
			return &conflict.Base{Value: rec.Value, Version: rec.Version, Deleted: rec.Deleted}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.CommitTimeout)
	defer cancel()
	evs, err := s.remote.Events(cctx, p.key, first.BaseVersion-1, 1)
	if err != nil {
		s.log.Debug("conflict base: remote event log", "key", p.key.String(), "version", first.BaseVersion, "err", err)
		return nil
	}
	if len(evs) == 1 && evs[0].ToVersion == first.BaseVersion && sameVector(evs[0].Clock.Vector, want) {
		e := evs[0]
		return &conflict.Base{Value: e.Value, Version: e.ToVersion, Deleted: e.Action == ActionDelete}
	}
	return nil
}

// baseVector is the vector clock of the record r's change was made on: r's
// less the tick of its origin.
func baseVector(r Record) map[string]uint64 {
	v := make(map[string]uint64, len(r.Clock.Vector))
	for n, x := range r.Clock.Vector {
		if n == r.Origin {
			x--
		}
		if x > 0 {
			v[n] = x
		}
	}
	return v
}

// sameVector reports whether two vector clocks are equal (a missing entry
// is 0).
func sameVector(a, b map[string]uint64) bool { return dominates(a, b) && dominates(b, a) }
