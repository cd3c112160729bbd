package syncer

import (
	"context"
	"fmt"
)

// Where the remote holds a change it reports as already applied. Covers
// recognises a change by its op id or by its origin's count in the remote
// record's vector clock. Both are this store's to give only while no other
// store makes changes under its origin: a data dir restored from a copy of
// one that went on writing counts again from where the copy stood, and the
// remote then takes the copy's new changes for the other store's (which
// hold the same op ids and counts) and drops them. So before an
// AlreadyApplied change is acked, the push loop finds it in the remote, by
// its op id and its change time (Unix nanoseconds, which the two stores do
// not share): the remote record is the change itself, or the remote's
// latest events hold it. A change found nowhere is another store's: it is
// parked (OriginSharedError), and the journal draws a new incarnation
// (OriginRenewer). Only a change acked on its own is parked so; one acked
// with others (of an atomic batch, or the first changes of a run whose
// later ones are committed) is acked as before, with a warning.

// placement is where the remote holds a change it reports as already
// applied.
type placement uint8

const (
	// placedHere: at the versions the change made locally, or unknown (the
	// remote's events could not be read, or too many came after it, or too
	// large ones).
	placedHere placement = iota
	// placedElsewhere: under other versions (a rebase whose reply was lost).
	placedElsewhere
	// placedNowhere: the remote holds another change under its op id or
	// count: another store makes changes under this one's origin.
	placedNowhere
)

// maxPlaceEvents bounds the remote events read to find where a change was
// applied: the latest ones of the state. A change not among them (of a
// state with a longer history) is taken for placed here.
const maxPlaceEvents = 2000

// maxPlaceBytes bounds what those reads take (EventSize): 2,000 events of
// large values would be gigabytes. Past it, the place is unknown too.
const maxPlaceBytes = 32 << 20

// placeApplied finds where the remote holds the last of entries, a change
// of k it reports as already applied, with remote its record of k (see
// above). A change decided over in a conflict (a merge, a win) is placed by
// its decision, not here.
func (s *Syncer) placeApplied(ctx context.Context, k Key, entries []Entry, remote Record, exists bool) placement {
	last := entries[len(entries)-1].Record
	switch {
	case !exists:
		return placedHere
	case remote.OpID == last.OpID && remote.Change.Time != last.Change.Time:
		return placedNowhere
	case remote.OpID == last.OpID:
		return placedHere // the local store compares the versions (localcache's madeElsewhere)
	}
	// Most often the change is where it was made: read that version first.
	if last.Version <= remote.Version {
		evs, err := s.events(ctx, k, last.Version-1, 1)
		if err != nil {
			return s.placeUnknown(k, last, err)
		}
		if len(evs) == 1 && evs[0].ToVersion == last.Version && evs[0].OpID == last.OpID {
			if evs[0].Change.Time != last.Change.Time {
				return placedNowhere
			}
			return placedHere
		}
	}
	// Else the remote's latest versions, where a change rebased after a
	// lost reply was committed (below its base version, too, when its base
	// was local versions that lost).
	after := remote.Version - min(remote.Version, maxPlaceEvents)
	read := 0 // EventSize of the events read
	for from := after; from < remote.Version; {
		if read > maxPlaceBytes {
			return s.placeUnknown(k, last, fmt.Errorf("more than %d bytes of events after version %d", maxPlaceBytes, after))
		}
		evs, err := s.events(ctx, k, from, int(min(historyPage, remote.Version-from)))
		if err != nil {
			return s.placeUnknown(k, last, err)
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			read += EventSize(e)
			if e.OpID != last.OpID {
				continue
			}
			switch {
			case e.Change.Time != last.Change.Time:
				return placedNowhere
			case e.ToVersion == last.Version:
				return placedHere
			}
			return placedElsewhere
		}
		from = evs[len(evs)-1].ToVersion
	}
	if after > 0 {
		return placedHere // not in the versions read: unknown
	}
	return placedNowhere
}

// placeUnknown logs that where the remote holds change last of k is not
// known (err), and says placedHere.
func (s *Syncer) placeUnknown(k Key, last Record, err error) placement {
	s.log.Warn("push: a change was already applied; where the remote holds it is unknown, so its local events stay",
		"key", k.String(), "op", last.OpID, "version", last.Version, "err", err)
	return placedHere
}

// events is one Events call (remoteCall).
func (s *Syncer) events(ctx context.Context, k Key, after uint64, limit int) ([]Event, error) {
	cctx, cancel := s.remoteCall(ctx)
	defer cancel()
	return s.remote.Events(cctx, k, after, limit)
}

// OriginSharedError parks a change the remote reported as already applied
// but holds nowhere (see above): another store makes changes under this
// store's origin, and the remote took this one for one of them.
type OriginSharedError struct {
	Key    Key
	OpID   string // the change's
	Remote Record // the remote's record of Key
}

func (e *OriginSharedError) Error() string {
	return fmt.Sprintf("%s: the shared store counts change %s among those it has (its record v%d by %s, op %s), "+
		"but holds no such change: another store makes changes under this sidecar's origin (a copy of its data dir "+
		"went on writing); the change is parked, and the sidecar's later changes go under a new incarnation",
		e.Key, e.OpID, e.Remote.Version, e.Remote.Origin, e.Remote.OpID)
}

// OriginRenewer is an optional capability of a Journal: it draws a new
// incarnation for the store's origin, when the store still writes under
// origin (the origin of a change the remote took for another store's, see
// OriginSharedError), so that its later changes are its own again.
type OriginRenewer interface {
	RenewOrigin(ctx context.Context, origin string, proof *OriginSharedError) error
}

// originShared parks p's unit u after err, and asks the journal for a new
// incarnation.
func (s *Syncer) originShared(ctx context.Context, ps *passState, u *unit, p *part, err *OriginSharedError) {
	if r, ok := s.journal.(OriginRenewer); ok {
		origin := p.entries[len(p.entries)-1].Record.Origin
		if rerr := r.RenewOrigin(ctx, origin, err); rerr != nil {
			// The entries stay pending: the next pass finds them again.
			ps.transient = fmt.Errorf("renew origin: %w", rerr)
			for _, k := range u.keys() {
				ps.blocked[k] = true
			}
			return
		}
	}
	s.park(ps, u, err)
}
