package syncer

// Transactions (docs/decisions/0017): a local transaction is an atomic batch
// whose first entry also carries the versions of the states it checked
// without writing them. The push loop commits those checks as CheckOnly
// changes in the batch's remote transaction, so a check holds when the
// batch is applied, not only when it was made. A check that no longer holds
// makes the whole transaction give way: nothing of it is written, its
// entries are superseded and the local side adopts the remote records of
// its keys, as for a strict change that loses a conflict; each write is
// recorded in the conflict ledger as given way (ResolverGaveWay).

import (
	"context"
	"fmt"
	"time"
)

// Check is one version check of a transaction: the remote must hold Key at
// Version (a tombstone counts with its version; 0: the remote has no record
// of Key), made by OpID when that is set, when the transaction is applied.
// (Versions alone could match a different history: a local change that
// lost a conflict had the winner's version number.)
type Check struct {
	Key     Key
	Version uint64
	OpID    string
}

// checkParts returns a part per check of group's entries (a transaction's
// checks ride on its first entry).
func checkParts(group []Entry) []*part {
	var out []*part
	for _, e := range group {
		for _, c := range e.Checks {
			out = append(out, &part{key: c.Key, base: c.Version, check: true, checkOp: c.OpID})
		}
	}
	return out
}

// checkFailed settles an atomic unit's commit in which a check conflicted,
// and reports whether one did. If the remote already covers every write of
// the unit (the transaction was applied before, and its ack was lost), the
// writes are acked as already applied; otherwise the transaction gives way
// (see above).
func (s *Syncer) checkFailed(ctx context.Context, ps *passState, u *unit, b *batch, results []Result) bool {
	failed := -1
	applied := true
	for i, p := range b.owner {
		switch {
		case p.check && results[i].Status == Conflict && failed < 0:
			failed = i
		case !p.check:
			last := p.entries[len(p.entries)-1].Record
			applied = applied && results[i].Exists && Covers(results[i].Remote, Change{Record: last})
		}
	}
	if failed < 0 {
		return false
	}
	if applied {
		for i, p := range b.owner {
			if !p.check {
				s.ackPart(ctx, ps, p, Result{Key: p.key, Status: AlreadyApplied, Exists: true, Remote: results[i].Remote}, false)
			}
		}
		s.finishUnit(ps, u)
		return true
	}
	// Each write gives way: it goes to the ledger (ResolverGaveWay) before
	// its entries are acked as superseded, as a lost decision does
	// (resolve); if the ledger cannot take it, the entries stay pending.
	c, cr := b.owner[failed], results[failed]
	why := fmt.Sprintf("its transaction gave way: its check of %s at v%d failed (the shared store holds v%d)", c.key, c.base, cr.Remote.Version)
	if !cr.Exists {
		why = fmt.Sprintf("its transaction gave way: its check of %s at v%d failed (the shared store holds no record of it)", c.key, c.base)
	}
	records := make([]*ConflictRecord, len(b.owner))
	now := time.Now()
	for i, p := range b.owner {
		if !p.check {
			records[i] = gaveWayRecord(p, results[i].Remote, results[i].Exists, nil, why, s.remote.Limits(), now)
		}
	}
	if err := s.logConflicts(ctx, records); err != nil {
		ps.transient = err
		for _, k := range u.keys() {
			ps.blocked[k] = true
		}
		s.log.Debug("push: a transaction gives way; ledger write failed, will retry", "key", c.key.String(), "err", err)
		return true
	}
	for i, p := range b.owner {
		if p.check {
			continue
		}
		remote := results[i].Remote
		if !results[i].Exists {
			remote = Record{Key: p.key}
		}
		ps.acks = append(ps.acks, Ack{Key: p.key, Seqs: seqsOf(p.entries), Outcome: OutcomeSuperseded, Remote: remote,
			Conflict: records[i]})
		ps.rep.Superseded += len(p.entries)
	}
	s.log.Info("push: a transaction's check failed, the transaction gives way", "key", c.key.String(),
		"checked_version", c.base, "remote_version", cr.Remote.Version, "remote_exists", cr.Exists)
	s.finishUnit(ps, u)
	return true
}

// AppendTxn appends ws as one transaction that also checks checks (see
// Check), like Append. The checks are attached after the writes are
// appended: append before the push loop runs (it is for tests).
func (j *MemJournal) AppendTxn(checks []Check, ws ...MemWrite) ([]Entry, error) {
	out, err := j.Append(ws...)
	if err != nil || len(out) == 0 || len(checks) == 0 {
		return out, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := range j.pending {
		if j.pending[i].Seq == out[0].Seq {
			j.pending[i].Checks = append([]Check(nil), checks...)
		}
	}
	out[0].Checks = append([]Check(nil), checks...)
	return out, nil
}

// renumberings maps the local versions of this node's changes committed
// renumbered (key, version, op) to the versions they were committed at, for
// retargetChecks. It keeps the latest maxRenumberings: a transaction that
// checked a version is pushed soon after its change, or after a restart,
// which forgets them all (its checks then fail, and it gives way).
type renumberings struct {
	m    map[renumbering]uint64
	ring []renumbering // insertion order, to evict the oldest
	next int
}

type renumbering struct {
	key     Key
	version uint64
	op      string
}

const maxRenumberings = 4096

func (r *renumberings) add(k Key, version uint64, op string, committed uint64) {
	if op == "" {
		return // a check names the op that made its version
	}
	if r.m == nil {
		r.m = make(map[renumbering]uint64)
	}
	e := renumbering{k, version, op}
	if _, ok := r.m[e]; !ok {
		if len(r.ring) < maxRenumberings {
			r.ring = append(r.ring, e)
		} else {
			delete(r.m, r.ring[r.next])
			r.ring[r.next] = e
			r.next = (r.next + 1) % maxRenumberings
		}
	}
	r.m[e] = committed
}

func (r *renumberings) get(k Key, version uint64, op string) (uint64, bool) {
	v, ok := r.m[renumbering{k, version, op}]
	return v, ok
}
