package localcache

import (
	"context"
	"errors"
	"fmt"

	"github.com/tai-state/tai-state/syncer"
)

// Fetcher reads one state from the shared store and applies it to the local
// store (*syncer.Puller does).
type Fetcher interface {
	Fetch(ctx context.Context, key syncer.Key) (syncer.Record, syncer.ApplyStatus, error)
}

// maxStrongRounds bounds how often WriteStrong pushes local writes of its
// keys before it gives up on catching the shared store without one pending.
const maxStrongRounds = 3

// WriteStrong applies ws (one write, or an atomic batch) as a
// compare-and-set against the shared store, and returns once the shared
// store has it:
//
//  1. every key is read from the shared store and brought up to date
//     locally (after pushing local writes of the keys still pending), so
//     the preconditions (IfVersion, IfAbsent) are checked against the
//     shared store's records;
//  2. the writes are stored and journaled as strict: their push loses any
//     conflict instead of overwriting a change it has not seen;
//  3. it waits until the push loop has pushed them.
//
// Errors: a shared store that cannot be reached in step 1 is an error
// wrapping syncer.ErrUnavailable, and nothing is written. A failed
// precondition is a *VersionConflictError, in step 1 (against the fresh
// record) or in step 3 when a concurrent change reached the shared store
// first (the local store then holds that change). When ctx ends in step 3
// the writes are durable locally and still to be pushed: the error wraps
// ctx.Err(). A rejected push is a *ParkedError. Other errors are Write's.
// The push loop must be running.
func (s *Store) WriteStrong(ctx context.Context, f Fetcher, ws []Write) ([]Record, error) {
	if len(ws) == 0 {
		return []Record{}, nil
	}
	for round := 0; ; round++ {
		pending := false
		for _, w := range ws {
			_, st, err := f.Fetch(ctx, syncer.Key(w.Key))
			if err != nil && !errors.Is(err, syncer.ErrNotFound) {
				return nil, fmt.Errorf("localcache: strong write %s: %w", w.Key, err)
			}
			pending = pending || st == syncer.ApplyPending
		}
		if !pending {
			break
		}
		if round == maxStrongRounds {
			return nil, fmt.Errorf("localcache: strong write: %w: local writes of the keys keep arriving", syncer.ErrUnavailable)
		}
		if err := s.WaitFlushed(ctx, s.LastSeq()); err != nil {
			return nil, fmt.Errorf("localcache: strong write: push the pending writes first: %w", err)
		}
	}
	strict := make([]Write, len(ws))
	for i, w := range ws {
		w.Strict = true
		strict[i] = w
	}
	var recs []Record
	var err error
	if len(strict) == 1 {
		var rec Record
		rec, err = s.Write(ctx, strict[0])
		recs = []Record{rec}
	} else {
		recs, err = s.WriteBatch(ctx, strict)
	}
	if err != nil {
		return nil, err
	}
	seqs := make([]uint64, len(recs))
	for i, r := range recs {
		seqs[i] = r.Seq
	}
	err = s.WaitSynced(ctx, seqs...)
	var lost *ConflictLostError
	if errors.As(err, &lost) {
		for i, w := range strict {
			if w.Key != lost.Key {
				continue
			}
			expected := recs[i].Version - 1
			if w.IfVersion != nil {
				expected = *w.IfVersion
			}
			return nil, &VersionConflictError{Key: w.Key, Expected: expected, Actual: lost.RemoteVersion}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("localcache: strong write: %w", err)
	}
	return recs, nil
}
