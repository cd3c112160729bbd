package syncer

import (
	"fmt"
	"time"

	"github.com/tai-state/tai-state/conflict"
)

// ResolverDiverged names the decision a local store makes alone when a
// remote record meets a local record it is concurrent with and no local
// write of the key is pending (ApplyDiverged): the local changes can never
// be pushed any more (they were parked), so the shared store's record,
// which every other node converges on, replaces them.
const ResolverDiverged = "diverged"

// DivergedConflict is the ledger record of an ApplyDiverged decision made
// by node at now: remote replaced local. Like the push loop's records, it
// is identified by the key, the local op and the remote op and version, so
// the same decision made again (a re-delivered remote record) is recorded
// once. Only the deciding node's ledger has it: the shared store never held
// the local side. Values are left out as FitConflict does beyond lim.
func DivergedConflict(local, remote Record, node string, now time.Time, lim Limits) *ConflictRecord {
	rec := &ConflictRecord{
		ID:       ConflictID(remote.Key, local.OpID, remote.OpID, remote.Version),
		Key:      remote.Key,
		Local:    toSide(local),
		Remote:   toSide(remote),
		Winner:   conflict.Remote,
		Resolver: ResolverDiverged,
		Reason: fmt.Sprintf("the local v%d by node %q (vector %v) can no longer be pushed and is concurrent with the "+
			"shared store's v%d by node %q (vector %v), which replaces it", local.Version, local.Origin, local.Clock.Vector,
			remote.Version, remote.Origin, remote.Clock.Vector),
		Time: now,
		Node: node,
	}
	FitConflict(rec, lim.MaxRecordBytes)
	return rec
}
