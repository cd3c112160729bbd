package localcache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// DefaultTxnAttempts is how often a strong transaction is tried when it
// loses to concurrent changes, unless told otherwise.
const DefaultTxnAttempts = 5

// txnBackoff spaces the attempts of a strong transaction: 10 ms doubling up
// to 1 s, with jitter.
var txnBackoff = syncer.Backoff{Min: 10 * time.Millisecond, Max: time.Second}

// WriteTxnStrong applies t against the shared store, as WriteStrong applies
// a batch: every key (written or checked) is read from the shared store,
// the checks and preconditions are decided on those records, and the
// writes are pushed in one shared-store transaction that checks every
// version again. When that transaction loses to a concurrent change (the
// contention of many writers), the whole transaction is tried again after
// a backoff (10 ms to 1 s, with jitter), at most attempts times in all
// (attempts <= 0: DefaultTxnAttempts); a precondition that no longer holds
// against the fresh records then fails it with a *VersionConflictError.
// used is the number of attempts made. The records returned are the
// shared store's: not pending.
//
// A transaction with checks only reads its keys from the shared store
// (ReadStrong) and checks them. Errors: those of WriteTxn and WriteStrong;
// every attempt lost: an error wrapping syncer.ErrUnavailable; ctx ending
// before anything was written (between attempts, or in a transaction
// with checks only): an error wrapping ErrNotWritten and ctx.Err().
func (s *Store) WriteTxnStrong(ctx context.Context, f Fetcher, t Txn, attempts int) (recs []Record, used int, err error) {
	if attempts <= 0 {
		attempts = DefaultTxnAttempts
	}
	if _, _, err := s.prepareTxn(t); err != nil {
		return nil, 0, err
	}
	if len(t.Writes) == 0 {
		if err := s.checkShared(ctx, f, t.Checks); err != nil {
			if ctx.Err() != nil && !errors.Is(err, ErrVersionConflict) {
				err = fmt.Errorf("localcache: strong transaction: %w: %w", ErrNotWritten, err)
			}
			return nil, 1, err
		}
		return []Record{}, 1, nil
	}
	for used = 1; ; used++ {
		stored := false
		recs, err = s.writeStrongTxn(ctx, f, t, func(strict []Write) ([]Record, error) {
			rs, err := s.WriteTxn(ctx, Txn{Writes: strict, Checks: t.Checks})
			stored = err == nil
			return rs, err
		})
		if err == nil {
			for i := range recs {
				recs[i].Pending = false // the shared store has them
			}
		}
		if err == nil || !stored || !errors.Is(err, ErrVersionConflict) {
			return recs, used, err
		}
		if used == attempts {
			return nil, used, fmt.Errorf("localcache: strong transaction: %w: lost to concurrent changes %d times (last: %w)",
				syncer.ErrUnavailable, used, err)
		}
		select {
		case <-time.After(txnBackoff.Delay(used)):
		case <-ctx.Done():
			// The last attempt gave way: none of it stayed.
			return nil, used, fmt.Errorf("localcache: strong transaction: %w: %w", ErrNotWritten, ctx.Err())
		}
	}
}

// checkShared checks a transaction without writes against the shared
// store's records.
func (s *Store) checkShared(ctx context.Context, f Fetcher, checks []TxnCheck) error {
	keys := make([]Key, len(checks))
	for i, c := range checks {
		keys[i] = c.Key
	}
	recs, _, err := s.ReadStrong(ctx, f, keys)
	if err != nil {
		return err
	}
	for i, c := range checks {
		if err := checkFails(c, recs[i]); err != nil {
			return err
		}
	}
	return nil
}
