package localcache

import (
	"context"
	"fmt"

	"github.com/tai-state/tai-state/syncer"
)

// A store that another store shares its origin with. Op ids and vector
// clock entries count this store's changes under its origin (Store.Origin),
// and the shared store recognises a change it already has by them. A data
// dir restored from a copy of one that went on running (a volume snapshot),
// or two sidecars started from copies of one data dir, count again from
// the same point under the same origin: the shared store then takes the
// copy's new changes for the other's, already applied, and drops them.
// `tai-sidecar new-incarnation` (Options.NewIncarnation) prevents that
// before the copy serves; this catches it while it runs.
//
// A remote record of a state whose vector clock counts more changes of
// this store's origin than the local record does is proof: this store's
// changes of the state are all in its local record (pending ones too), the
// shared store can only hold those it pushed, and a record adopted from the
// shared store counts what the shared store holds. So the store that made
// the others is another one, under the same origin. The store then draws a
// new incarnation, in the mutation that applies the record, and its later
// changes are its own again. The changes it made under the old origin
// before that stay as they are; the push loop parks those the shared store
// takes for the other store's, and asks for a new incarnation too
// (syncer/applied.go, RenewOrigin).

// originReused reports whether the remote record r of a state proves that
// another store makes changes under origin (see above); cur is the local
// record of the state, nil when there is none.
func originReused(origin string, cur, r *Record) bool {
	return r.Clock.Vector[origin] > originCount(origin, cur)
}

// originCount is how many changes of origin record r counts (0 for nil).
func originCount(origin string, r *Record) uint64 {
	if r == nil {
		return 0
	}
	return r.Clock.Vector[origin]
}

// renewOrigin gives the store a new incarnation in tx (see above): was is
// the origin the remote record proof proved shared, against the local
// record cur. The store takes it once tx is durable; a mutation staged
// again draws another.
func (tx *mutTx) renewOrigin(s *Store, was string, cur, proof *Record) {
	renewed := newOrigin(s.nodeID)
	tx.set(metaOrigin, []byte(renewed))
	mine := originCount(was, cur)
	tx.after = append(tx.after, func() {
		s.origin.Store(&renewed)
		s.originRenewals.Add(1)
		s.log.Error("another store makes changes under this store's origin: a copy of this data dir, or the data dir "+
			"this one was restored from, went on writing; this store now writes under a new incarnation. "+
			"Changes made under the old origin since the copy may have been taken for the other store's and dropped "+
			"(see docs/operations.md, \"Data dir and node id\")",
			"origin", renewed, "was", was, "key", proof.Key.String(), "remote_version", proof.Version,
			"remote_count", proof.Clock.Vector[was], "local_count", mine)
	})
}

var _ syncer.OriginRenewer = (*Store)(nil)

// RenewOrigin implements syncer.OriginRenewer: the push loop found a change
// of this store's that the shared store took for another store's (proof):
// the store draws a new incarnation, when it still writes under origin.
func (s *Store) RenewOrigin(ctx context.Context, origin string, proof *syncer.OriginSharedError) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		if s.Origin() != origin {
			return nil, nil // renewed already
		}
		cur, err := tx.record(Key(proof.Key))
		if err != nil {
			return nil, err
		}
		tx.renewOrigin(s, origin, cur, fromSyncRecord(proof.Remote))
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: renew origin: %w", err)
	}
	return nil
}
