package syncer

import "slices"

// record keeps r (nil: nothing) in the ledger unless its ID is there.
// j.mu is held.
func (j *MemJournal) record(r *ConflictRecord) {
	if r == nil || slices.ContainsFunc(j.ledger, func(x ConflictRecord) bool { return x.ID == r.ID }) {
		return
	}
	j.ledger = append(j.ledger, *r)
}

// Conflicts returns the conflict ledger: the records acks carried, in the
// order they were acked.
func (j *MemJournal) Conflicts() []ConflictRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.ledger)
}
