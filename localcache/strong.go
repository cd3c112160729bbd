package localcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// Strong reads and writes answer with the shared store's committed records
// only (docs/decisions/0016): a local change the shared store does not have
// yet is pushed first, and one it rejected for good is never an answer.

// Fetcher reads one state from the shared store and applies it to the local
// store (*syncer.Puller does). It must be safe for concurrent use.
type Fetcher interface {
	Fetch(ctx context.Context, key syncer.Key) (syncer.Record, syncer.ApplyStatus, error)
}

// ErrNotWritten is wrapped, with ctx's error, by a strong write or
// transaction that ended before it wrote anything: a retry cannot apply it
// twice. A strong write that ends later may have been stored locally (and
// then its push applies it, or drops it if it meets a concurrent change).
var ErrNotWritten = errors.New("nothing was written")

// maxStrongRounds bounds how often a strong read or write waits for local
// changes of its keys to be pushed before it gives up.
const maxStrongRounds = 3

// strongFetchConcurrency bounds the shared-store reads one strong read or
// write runs at once.
const strongFetchConcurrency = 8

// errStrictBehind: a strict write met a local record that is not the shared
// store's: a local change still to be pushed, or one the shared store
// rejected for good (see uncommitted). Its precondition would be checked
// against a change the shared store does not have.
var errStrictBehind = errors.New("the local record holds a change the shared store does not have")

// uncommitted reports whether rec holds a local change the shared store
// does not have: one still to be pushed (Pending), or one it rejected for
// good (parked: the record keeps the change, and SyncedVersion the version
// the shared store had).
func uncommitted(rec *Record) bool {
	return rec != nil && (rec.Pending || rec.Version != rec.SyncedVersion)
}

// WriteStrong applies ws (one write, or an atomic batch) as a
// compare-and-set against the shared store, and returns once the shared
// store has it:
//
//  1. every key is read from the shared store and brought up to date
//     locally;
//  2. the writes are stored and journaled as strict: their preconditions
//     (IfVersion, IfAbsent) are checked against the local records, now the
//     shared store's, and their push loses any conflict instead of
//     overwriting a change it has not seen. A local record holding a
//     change the shared store does not have fails the check (atomically,
//     with the write): WriteStrong then waits until the push loop has
//     pushed the pending changes of the keys (a change the shared store
//     rejected for good is replaced by the shared store's record) and goes
//     back to step 1, at most maxStrongRounds times;
//  3. it waits until the push loop has pushed them.
//
// Errors: a shared store that cannot be reached in step 1, and step 2
// failing (the keys' local changes not pushed while ctx lasts, or new ones
// arriving every round), are errors wrapping syncer.ErrUnavailable, and
// nothing is written; so is ctx ending in step 1, an error wrapping
// ErrNotWritten and ctx.Err(). A failed precondition is a *VersionConflictError, in
// step 2 (against the fresh record) or in step 3 when a concurrent change
// reached the shared store first (the local store then holds that change);
// its Actual is 0 for a deleted state. When ctx ends in step 3 the writes
// are durable locally and still to be pushed: the error wraps ctx.Err(). A
// rejected push is a *ParkedError. Other errors are Write's. The push loop
// must be running.
func (s *Store) WriteStrong(ctx context.Context, f Fetcher, ws []Write) ([]Record, error) {
	if len(ws) == 0 {
		return []Record{}, nil
	}
	return s.writeStrongTxn(ctx, f, Txn{Writes: ws}, func(strict []Write) ([]Record, error) {
		return s.writeStrict(ctx, strict)
	})
}

// writeStrongTxn runs the steps of WriteStrong for t, whose writes are
// stored (made strict) by write; t's checks are fetched and must be
// committed locally as its writes' keys must.
func (s *Store) writeStrongTxn(ctx context.Context, f Fetcher, t Txn, write func(strict []Write) ([]Record, error)) ([]Record, error) {
	keys := make([]Key, 0, len(t.Writes)+len(t.Checks))
	strict := make([]Write, len(t.Writes))
	for i, w := range t.Writes {
		keys = append(keys, w.Key)
		w.Strict = true
		strict[i] = w
	}
	for _, c := range t.Checks {
		keys = append(keys, c.Key)
	}
	var recs []Record
	for round := 0; ; round++ {
		shared, err := fetchKeys(ctx, f, keys)
		if err != nil {
			return nil, fmt.Errorf("localcache: strong write: %w: %w", ErrNotWritten, err)
		}
		recs, err = write(strict)
		if err == nil {
			break
		}
		if !errors.Is(err, errStrictBehind) {
			return nil, err
		}
		if round == maxStrongRounds {
			return nil, fmt.Errorf("localcache: strong write: %w: local changes of the states keep arriving", syncer.ErrUnavailable)
		}
		if err := s.catchUp(ctx, keys, shared); err != nil {
			return nil, fmt.Errorf("localcache: strong write: %w: the states' local changes were not pushed first: %w", syncer.ErrUnavailable, err)
		}
	}
	seqs := make([]uint64, len(recs))
	for i, r := range recs {
		seqs[i] = r.Seq
	}
	err := s.WaitSynced(ctx, seqs...)
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
			actual := lost.RemoteVersion
			if lost.RemoteDeleted {
				actual = 0 // a deleted state counts as absent, as in preconditions
			}
			return nil, &VersionConflictError{Key: w.Key, Expected: expected, Actual: actual}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("localcache: strong write: %w", err)
	}
	s.refreshSynced(ctx, recs)
	return recs, nil
}

// refreshSynced gives records a strong write returned the sync fields they
// have now that the shared store holds them: written locally, they carried
// the previous version's SyncedAt. A record written again since (or a
// delete) gets SyncedAt 0: unknown.
func (s *Store) refreshSynced(ctx context.Context, recs []Record) {
	for i := range recs {
		recs[i].Pending, recs[i].SyncedAt = false, 0
		if cur, err := s.Get(ctx, recs[i].Key); err == nil && cur.Version == recs[i].Version {
			recs[i].SyncedAt = cur.SyncedAt
		}
	}
}

// writeStrict stores strict writes: one with Write, more with WriteBatch.
func (s *Store) writeStrict(ctx context.Context, strict []Write) ([]Record, error) {
	if len(strict) > 1 {
		return s.WriteBatch(ctx, strict)
	}
	rec, err := s.Write(ctx, strict[0])
	if err != nil {
		return nil, err
	}
	return []Record{rec}, nil
}

// catchUp brings the local records of keys back to the shared store's after
// a strict write found one of them uncommitted: a record holding a change
// the shared store rejected for good is replaced by shared's record of its
// key, and pending changes are waited for until the push loop settles them.
func (s *Store) catchUp(ctx context.Context, keys []Key, shared map[Key]fetched) error {
	local, err := s.getMany(ctx, keys, true)
	if err != nil {
		return err
	}
	for i, rec := range local {
		if rec != nil && !rec.Pending && uncommitted(rec) {
			if err := s.adoptShared(ctx, keys[i], shared[keys[i]].rec); err != nil {
				return err
			}
		}
	}
	return s.waitSettled(ctx, keys)
}

// adoptShared makes remote (nil: the shared store has no record) the local
// record of k if that still holds a change the shared store rejected for
// good and none is pending. The rejected change stays on the failed list.
func (s *Store) adoptShared(ctx context.Context, k Key, remote *Record) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		cur, err := tx.record(k)
		if err != nil || cur == nil || cur.Pending || !uncommitted(cur) {
			return nil, err
		}
		if remote == nil {
			tx.removeRecord(cur, k)
		} else {
			tx.putRecord(cur, remote)
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("adopt the shared store's record of %s: %w", k, err)
	}
	return nil
}

// waitSettled waits until no local change of keys is pending (the push loop
// acked or parked every one), or ctx ends.
func (s *Store) waitSettled(ctx context.Context, keys []Key) error {
	return s.waitJournal(ctx, func(txn *badger.Txn) (bool, error) {
		for _, k := range keys {
			rec, err := readRecord(txn, k)
			if err != nil {
				return false, fmt.Errorf("%s: %w", k, err)
			}
			if rec != nil && rec.Pending {
				return true, nil
			}
		}
		return false, nil
	})
}

// ReadStrong reads keys from the shared store through f and returns its
// records, in order: nil where the shared store never had the state or
// holds it deleted. They are what the shared store had committed when it
// answered, never a local change it does not have (a pending one, or one
// it rejected for good). The local store applies them as Fetch does;
// repaired counts the keys whose local copy that replaced.
//
// A local change of a key still pending when ReadStrong starts is pushed
// first (read your own writes): ReadStrong waits until the push loop has
// settled the keys and reads them again, at most maxStrongRounds times.
//
// Errors: an invalid key is a *KeyError; a shared store that cannot be
// reached is an error wrapping syncer.ErrUnavailable; ctx ending while the
// local changes wait to be pushed is an error wrapping ctx.Err(); local
// changes still arriving after maxStrongRounds is another error. The push
// loop must be running.
func (s *Store) ReadStrong(ctx context.Context, f Fetcher, keys []Key) (recs []*Record, repaired int, err error) {
	if len(keys) == 0 {
		return []*Record{}, 0, nil
	}
	fixed := make(map[Key]bool)
	for round := 0; ; round++ {
		local, err := s.getMany(ctx, keys, true)
		if err != nil {
			return nil, 0, err
		}
		pending := slices.ContainsFunc(local, func(r *Record) bool { return r != nil && r.Pending })
		shared, err := fetchKeys(ctx, f, keys)
		if err != nil {
			return nil, 0, fmt.Errorf("localcache: strong read %w", err)
		}
		for k, got := range shared {
			if got.repaired {
				fixed[k] = true
			}
		}
		if !pending {
			recs = make([]*Record, len(keys))
			for i, k := range keys {
				if rec := shared[k].rec; rec != nil && !rec.Deleted {
					c := *rec // one key twice gets two records: callers may change them
					recs[i] = &c
				}
			}
			return recs, len(fixed), nil
		}
		if round == maxStrongRounds {
			return nil, 0, errors.New("localcache: strong read: local changes of the states keep arriving")
		}
		if err := s.waitSettled(ctx, keys); err != nil {
			return nil, 0, fmt.Errorf("localcache: strong read: the states' local changes were not pushed first: %w", err)
		}
	}
}

// fetched is what the shared store answered about one key.
type fetched struct {
	rec      *Record // its record (a tombstone for a deleted state); nil: it never had the key
	repaired bool    // the local store applied rec
}

// fetchKeys reads keys from the shared store through f (each key once, at
// most strongFetchConcurrency at a time), applying them locally. The first
// failure, other than the shared store never having a key, ends it: the
// error names the key.
func fetchKeys(ctx context.Context, f Fetcher, keys []Key) (map[Key]fetched, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(map[Key]fetched, len(keys))
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, strongFetchConcurrency)
	asked := make(map[Key]bool, len(keys))
	for _, k := range keys {
		if asked[k] {
			continue
		}
		asked[k] = true
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			rec, st, err := f.Fetch(ctx, syncer.Key(k))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				out[k] = fetched{rec: fromSyncRecord(rec), repaired: st.Applied()}
			case errors.Is(err, syncer.ErrNotFound):
				out[k] = fetched{}
			case first == nil:
				first = fmt.Errorf("%s: %w", k, err)
				cancel()
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err() // ctx ended before every key was asked
	}
	return out, first
}
