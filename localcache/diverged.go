package localcache

import (
	"context"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// noteDiverged stages the ledger record of an ApplyDiverged decision: the
// remote record r replaces cur, a local record concurrent with it that has
// nothing left to push (syncer.DivergedConflict). The record is stored with
// the replacement, in the same mutation.
func (tx *mutTx) noteDiverged(node string, cur, r *Record) error {
	_, err := tx.putConflict(syncer.DivergedConflict(toSyncRecord(cur), toSyncRecord(r), node, time.Now(), syncer.Limits{}))
	return err
}

// trimLedgerAfterApply applies the ledger's retention when an ApplyRemote
// call recorded diverged decisions (see Ack for the push side's).
func (s *Store) trimLedgerAfterApply(ctx context.Context, res syncer.ApplyResult) {
	if res.Count(syncer.ApplyDiverged) == 0 {
		return
	}
	if err := s.trimLedger(ctx); err != nil {
		s.log.Warn("conflict ledger retention failed (retried after the next conflict)", "err", err)
	}
}
