package syncer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/tai-state/tai-state/conflict"
)

// The conflict ledger: every true conflict the push loop settles is
// recorded with both sides, the base, the decision and who made it, in the
// local store (in the journal transaction that acks its outcome: Ack.Conflict)
// and in the remote (with the winning change: Change.Conflict, or through
// ConflictLog for a change that lost). See docs/decisions/0011.

// ConflictRecord is one settled true conflict.
type ConflictRecord struct {
	// ID identifies the conflict: a hash of its key, the local change's
	// op id and the remote record's op id and version. The same conflict
	// decided again (a retried pass) gets the same ID, so the remote writes
	// it once.
	ID  string
	Key Key
	// Local is the local change (the newest of its journal entries, with
	// the value it was pushed with); Remote the remote record it met.
	Local, Remote conflict.Side
	// BaseVersion is the version the local change was made on (0: the
	// state did not exist); Base is that version with its value when the
	// local store knew it (nil otherwise).
	BaseVersion uint64
	Base        *conflict.Base
	Winner      conflict.Winner
	// Merged is the value the resolver made from both sides (Winner
	// Merged).
	Merged   []byte
	Resolver string // who decided, e.g. "causal>lww", "strict"
	Reason   string
	Time     time.Time // when it was decided
	Node     string    // the node that decided (the local change's origin)
	Entries  int       // the journal entries the local side stands for
	// Omitted names the values left out to keep the record within the
	// size limit ("base", "local", "remote", "merged"; see FitConflict).
	Omitted []string
}

// Final returns the value and tombstone flag of the record the decision
// kept: the merged value, the local change's or the remote record's.
func (r ConflictRecord) Final() (value []byte, deleted bool) {
	switch r.Winner {
	case conflict.Merged:
		return r.Merged, false
	case conflict.Local:
		return r.Local.Value, r.Local.Deleted
	}
	return r.Remote.Value, r.Remote.Deleted
}

// ConflictID is the ID of the conflict between the local change localOp of
// key and the remote record remoteOp at remoteVersion.
func ConflictID(key Key, localOp, remoteOp string, remoteVersion uint64) string {
	h := sha256.New()
	for _, s := range []string{key.Governor, key.State, localOp, remoteOp, strconv.FormatUint(remoteVersion, 10)} {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// ConflictLog is the remote's conflict ledger, part of every Remote.
// Records of changes that won a conflict are written by Commit with the
// change (Change.Conflict); LogConflicts writes the others. Errors are as
// for every Remote method.
type ConflictLog interface {
	// LogConflicts stores records in the ledger. A record whose ID is
	// stored already is left as it is: retrying is harmless.
	LogConflicts(ctx context.Context, recs []ConflictRecord) error
	// Conflicts returns the ledger's records of q.Governor (and q.State
	// when set) decided at q.From or later and before q.Until (zero: open),
	// oldest first, at most q.Limit of them (<= 0: a backend default).
	// Documents that are not conflict records (written by another tool or
	// version) are left out: the records are returned with a
	// *SkippedError naming them.
	Conflicts(ctx context.Context, q ConflictQuery) ([]ConflictRecord, error)
}

// ConflictQuery selects ledger records (ConflictLog.Conflicts).
type ConflictQuery struct {
	Governor    string
	State       string
	From, Until time.Time
	Limit       int
}

// conflictOverhead bounds a conflict record's size beside its values,
// names, op ids, reason and vector clocks.
const conflictOverhead = 1024

// ConflictSize estimates, from above, the bytes a conflict record takes in
// the remote.
func ConflictSize(r ConflictRecord) int {
	n := conflictOverhead + 2*(len(r.Key.Governor)+len(r.Key.State)) + len(r.ID) + len(r.Resolver) + len(r.Reason) +
		len(r.Node) + len(r.Merged)
	for _, s := range []conflict.Side{r.Local, r.Remote} {
		n += len(s.Value) + len(s.Origin) + len(s.OpID) + vectorSize(s.Clock.Vector)
	}
	if r.Base != nil {
		n += len(r.Base.Value)
	}
	return n
}

// FitConflict leaves values out of r until ConflictSize(r) <= max (<= 0:
// no limit), least needed first: the base, the losing side, the winning
// side, the merged value. What it left out is named in r.Omitted. The
// values are shared, not copied.
func FitConflict(r *ConflictRecord, max int) {
	if max <= 0 || ConflictSize(*r) <= max {
		return
	}
	if r.Base != nil {
		b := *r.Base // the caller's Base is not changed
		r.Base = &b
	}
	win, lose, winName, loseName := &r.Local, &r.Remote, "local", "remote"
	if r.Winner == conflict.Remote {
		win, lose, winName, loseName = lose, win, loseName, winName
	}
	var base *[]byte
	if r.Base != nil {
		base = &r.Base.Value
	}
	for _, d := range []struct {
		name string
		v    *[]byte
	}{{"base", base}, {loseName, &lose.Value}, {winName, &win.Value}, {"merged", &r.Merged}} {
		if ConflictSize(*r) <= max {
			return
		}
		if d.v == nil || *d.v == nil {
			continue
		}
		*d.v = nil
		r.Omitted = append(r.Omitted, d.name)
	}
}

// conflictRecord makes the ledger record of a true conflict of p decided
// as d.
func conflictRecord(p *part, c conflict.Conflict, d decision, lim Limits, now time.Time) *ConflictRecord {
	rec := &ConflictRecord{
		ID:          ConflictID(p.key, c.Local.OpID, c.Remote.OpID, c.Remote.Version),
		Key:         p.key,
		Local:       c.Local,
		Remote:      c.Remote,
		Resolver:    d.resolver,
		Reason:      d.reason,
		Time:        now,
		Node:        c.Local.Origin,
		Entries:     len(p.entries),
		Winner:      conflict.Local,
		BaseVersion: p.entries[0].BaseVersion,
	}
	switch {
	case d.verdict == lose:
		rec.Winner = conflict.Remote
	case d.merged != nil:
		rec.Winner = conflict.Merged
		rec.Merged = d.merged
	}
	if c.Base != nil {
		b := *c.Base
		rec.Base = &b
	}
	FitConflict(rec, lim.MaxRecordBytes)
	return rec
}

// ResolverGaveWay names the ledger record of a change that gave way with
// the atomic batch it was written in (a transaction, a batch write)
// without losing a conflict of its own: another item of the batch lost its
// conflict, or a check of the transaction failed. Its local side is the
// change as it would have been pushed, its remote side the shared store's
// record of the key, which stays (winner Remote); its reason names the
// item that made the batch give way. It is written like the records of
// lost decisions (ConflictLog.LogConflicts, then Ack.Conflict) but does not
// count as a conflict of its key (Stats, storms).
const ResolverGaveWay = "gave_way"

// gaveWayRecord makes the ResolverGaveWay record of p's change, for why,
// against remote, the shared store's record of p's key (exists: it has
// one). decided is the decision p's own conflict got in this round, if
// any: a win or a merge that the batch's giving way overrules (that record
// was to be committed with the change, so no ledger holds it).
func gaveWayRecord(p *part, remote Record, exists bool, decided *ConflictRecord, why string, lim Limits, now time.Time) *ConflictRecord {
	local := p.entries[len(p.entries)-1].Record
	if p.merged != nil {
		local.Value, local.Deleted = p.merged, false
	}
	if !exists {
		remote = Record{Key: p.key}
	}
	if decided != nil {
		why = fmt.Sprintf("the resolver %s decided for the local change, but %s", decided.Resolver, why)
	}
	rec := &ConflictRecord{
		ID:          ConflictID(p.key, local.OpID, remote.OpID, remote.Version),
		Key:         p.key,
		Local:       toSide(local),
		Remote:      toSide(remote),
		BaseVersion: p.entries[0].BaseVersion,
		Winner:      conflict.Remote,
		Resolver:    ResolverGaveWay,
		Reason:      why,
		Time:        now,
		Node:        local.Origin,
		Entries:     len(p.entries),
	}
	FitConflict(rec, lim.MaxRecordBytes)
	return rec
}

// CheckConflict validates a conflict record for a remote's ledger: its key,
// an ID that is a valid document name, and a winner.
func CheckConflict(r ConflictRecord) error {
	if err := ValidateKey(r.Key); err != nil {
		return err
	}
	if err := ValidateName("conflict id", r.ID); err != nil {
		return err
	}
	if r.Winner < conflict.Local || r.Winner > conflict.Merged {
		return fmt.Errorf("conflict %s: no winner", r.ID)
	}
	return nil
}

// CheckConflictQuery validates a ledger query.
func CheckConflictQuery(q ConflictQuery) error {
	if err := ValidateName("governor", q.Governor); err != nil {
		return err
	}
	if q.State != "" {
		if err := ValidateName("state", q.State); err != nil {
			return err
		}
	}
	if !q.From.IsZero() && !q.Until.IsZero() && !q.Until.After(q.From) {
		return fmt.Errorf("until (%v) is not after from (%v)", q.Until, q.From)
	}
	return nil
}

// CloneConflict returns r with its own copies of values, vectors and
// Omitted.
func CloneConflict(r ConflictRecord) ConflictRecord {
	r.Local, r.Remote, r.Base = r.Local.Clone(), r.Remote.Clone(), r.Base.Clone()
	r.Merged = slices.Clone(r.Merged)
	r.Omitted = slices.Clone(r.Omitted)
	return r
}
