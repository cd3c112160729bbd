package localcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// The change feed: every change of a state, local or remote, delivered to
// subscribers in the order the committer made the changes durable (so in
// version order per state), as soon as it is acknowledged.
//
// The committer never waits for a subscriber: each has a buffer bounded in
// changes and, optionally, in bytes, and one that falls behind by more is
// ended with ErrLagged (it then resubscribes and reads what it missed with
// List or Events). Bookkeeping of the sync side (acks that only record the
// synced version, records kept aside) is not a change and is not delivered.

// ErrLagged ends a subscription whose buffer filled up.
var ErrLagged = errors.New("subscriber fell behind the changes")

// FeedChange is one change of a state, as a subscription delivers it.
type FeedChange struct {
	// Record is the state after the change, with its value; a delete is a
	// tombstone (Deleted set). A state removed because the shared store has
	// no record of it (its creation lost a conflict) is a tombstone of
	// version 0.
	Record Record
	// Remote is set for a change that came from the shared store.
	Remote bool
}

// Subscription is a running subscription. Read changes from C until it is
// closed, then Err says why it ended.
type Subscription struct {
	C <-chan FeedChange

	c        chan FeedChange
	governor string
	prefix   string
	feed     *feed
	mu       sync.Mutex // guards c's closing and err, and the byte count
	done     bool
	err      error

	// The bytes of the changes in c, when bounded (maxBytes > 0): sizes
	// holds the size of each change offered (a ring, by offer count), and
	// the changes taken from c (offered less those still in it) are
	// subtracted when the next one is offered.
	maxBytes          int64
	bytes             int64
	sizes             []int64
	offered, released uint64
}

// Err returns why the subscription ended: nil after Close, ErrLagged,
// or ErrClosed when the store closed. It is nil while C is open.
func (sub *Subscription) Err() error {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.err
}

// Close ends the subscription; C is closed. It is safe to call more than
// once and concurrently with deliveries.
func (sub *Subscription) Close() {
	sub.feed.remove(sub)
	sub.end(nil)
}

func (sub *Subscription) end(err error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.done {
		return
	}
	sub.done, sub.err = true, err
	close(sub.c)
}

// offer delivers ch without blocking; a full buffer ends the subscription.
func (sub *Subscription) offer(ch FeedChange) bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.done {
		return false
	}
	var size int64
	if sub.maxBytes > 0 {
		taken := sub.offered - uint64(len(sub.c)) // at least: the reader may be taking one now
		for ; sub.released < taken; sub.released++ {
			sub.bytes -= sub.sizes[sub.released%uint64(len(sub.sizes))]
		}
		size = feedSize(&ch.Record)
		if sub.bytes > 0 && sub.bytes+size > sub.maxBytes {
			// One change always fits in an empty buffer, however large.
			sub.lagged()
			return false
		}
	}
	select {
	case sub.c <- ch:
		if sub.maxBytes > 0 {
			if sub.offered-sub.released == uint64(len(sub.sizes)) {
				// The buffer was full when taken was counted, and the
				// reader has since taken the oldest, whose slot this
				// change gets.
				sub.bytes -= sub.sizes[sub.released%uint64(len(sub.sizes))]
				sub.released++
			}
			sub.sizes[sub.offered%uint64(len(sub.sizes))] = size
			sub.offered++
			sub.bytes += size
		}
		return true
	default:
		sub.lagged()
		return false
	}
}

func (sub *Subscription) lagged() {
	sub.done, sub.err = true, ErrLagged
	close(sub.c)
}

// feedSize is what a buffered change costs, about: its variable-length
// fields and a fixed share for the rest.
func feedSize(r *Record) int64 {
	return int64(len(r.Value)+len(r.Governor)+len(r.State)+len(r.Origin)+len(r.OpID)+len(r.Change.Actor)+len(r.Change.Reason)) + 256
}

func (sub *Subscription) matches(k Key) bool {
	return k.Governor == sub.governor && strings.HasPrefix(k.State, sub.prefix)
}

// feed holds the subscriptions of a store.
type feed struct {
	n    atomic.Int32 // len(subs), read without the lock on the commit path
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

func (f *feed) remove(sub *Subscription) {
	f.mu.Lock()
	if _, ok := f.subs[sub]; ok {
		delete(f.subs, sub)
		f.n.Add(-1)
	}
	f.mu.Unlock()
}

// DefaultSubscribeBuffer is the buffer of a subscription when Subscribe is
// given none.
const DefaultSubscribeBuffer = 1024

// Subscribe delivers every change of the states of governor whose names
// start with prefix, made from now on, until sub.Close, ErrLagged (more
// than buffer changes not yet received, or, when maxBytes > 0, changes of
// more than maxBytes: values, names and metadata) or the store's Close.
// buffer <= 0 means DefaultSubscribeBuffer.
func (s *Store) Subscribe(governor, prefix string, buffer int, maxBytes int64) (*Subscription, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if err := validateKey("subscribe", Key{Governor: governor, State: "x"}); err != nil {
		return nil, err
	}
	if prefix != "" {
		if err := validateKey("subscribe", Key{Governor: governor, State: prefix}); err != nil {
			return nil, err
		}
	}
	if buffer <= 0 {
		buffer = DefaultSubscribeBuffer
	}
	c := make(chan FeedChange, buffer)
	sub := &Subscription{C: c, c: c, governor: governor, prefix: prefix, feed: &s.feed}
	if maxBytes > 0 {
		sub.maxBytes, sub.sizes = maxBytes, make([]int64, buffer)
	}
	s.feed.mu.Lock()
	if s.feed.subs == nil {
		s.feed.subs = make(map[*Subscription]struct{})
	}
	s.feed.subs[sub] = struct{}{}
	s.feed.n.Add(1)
	s.feed.mu.Unlock()
	return sub, nil
}

// publish delivers the changes of durable requests. Committer only.
func (s *Store) publish(sts []*staged) {
	if s.feed.n.Load() == 0 {
		return
	}
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	for _, st := range sts {
		remote := st.req.mut != nil
		for _, rec := range st.changes {
			for sub := range s.feed.subs {
				if !sub.matches(rec.Key) {
					continue
				}
				if !sub.offer(FeedChange{Record: *rec, Remote: remote}) {
					delete(s.feed.subs, sub)
					s.feed.n.Add(-1)
				}
			}
		}
	}
}

// endFeed ends every subscription with ErrClosed (Close).
func (s *Store) endFeed() {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	for sub := range s.feed.subs {
		sub.end(ErrClosed)
		delete(s.feed.subs, sub)
	}
	s.feed.n.Store(0)
}

// --- waiting for the shared store ---

// ParkedError says a change was parked: the shared store rejected it for
// good (see Failed). A change parked for its fence carries the rejection,
// which errors.As and errors.Is (ErrFenceRejected) see.
type ParkedError struct {
	Seq           uint64
	Key           Key
	Reason        string
	FenceRejected *FenceRejectedError
}

func (e *ParkedError) Error() string {
	return fmt.Sprintf("change %d of %s was rejected by the shared store: %s", e.Seq, e.Key, e.Reason)
}

// Unwrap returns the fence rejection, if the change was parked for it.
func (e *ParkedError) Unwrap() error {
	if e.FenceRejected == nil {
		return nil
	}
	return e.FenceRejected
}

// WaitSynced waits until the journal entries seqs (Record.Seq of writes)
// are acked by the syncer: the shared store has them. An entry that was
// parked instead is a *ParkedError. It returns ctx's error when ctx ends
// first (the changes stay in the journal and sync later).
func (s *Store) WaitSynced(ctx context.Context, seqs ...uint64) error {
	return s.waitJournal(ctx, func(txn *badger.Txn) (bool, error) {
		for _, seq := range seqs {
			if v, err := getValue(txn, journalKey(seq)); err != nil || v != nil {
				return v != nil, err
			}
			if l, ok := s.takeLost(seq); ok {
				seq, l = s.conflictOf(seqs, seq, l)
				return false, &ConflictLostError{Seq: seq, Key: l.key, RemoteVersion: l.remoteVersion, RemoteDeleted: l.remoteDeleted,
					Strict: l.strict}
			}
			v, err := getValue(txn, parkedKey(seq))
			if err != nil {
				return false, err
			}
			if v == nil {
				continue // acked
			}
			p, err := decodeParked(seq, v)
			if err != nil {
				return false, fmt.Errorf("parked %d: %w", seq, err)
			}
			return false, &ParkedError{Seq: seq, Key: p.Key, Reason: p.Reason, FenceRejected: p.FenceRejected}
		}
		return false, nil
	})
}

// waitJournal calls pending in a read transaction after the barrier, again
// after every durable sync-side mutation, until it reports nothing pending
// or an error, or ctx ends.
func (s *Store) waitJournal(ctx context.Context, pending func(txn *badger.Txn) (bool, error)) error {
	for {
		s.ackMu.Lock()
		ch := s.ackCh
		s.ackMu.Unlock()
		var more bool
		err := s.scan(ctx, func(txn *badger.Txn) error {
			var err error
			more, err = pending(txn)
			return err
		})
		if err != nil || !more {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ackDone wakes WaitSynced after a mutation is durable. Committer only.
func (s *Store) ackDone() {
	s.ackMu.Lock()
	close(s.ackCh)
	s.ackCh = make(chan struct{})
	s.ackMu.Unlock()
}

// LastSeq returns the journal sequence number of the last change
// acknowledged (0: none yet): pass it to WaitFlushed to wait for everything
// written so far.
func (s *Store) LastSeq() uint64 { return s.lastSeq.Load() }

// WaitFlushed waits until no journal entry with Seq <= upTo is pending: the
// push loop got every change made up to then to the shared store, or parked
// it (see Failed). It returns ctx's error when ctx ends first.
func (s *Store) WaitFlushed(ctx context.Context, upTo uint64) error {
	return s.waitJournal(ctx, func(txn *badger.Txn) (bool, error) {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindJournal}})
		defer it.Close()
		it.Rewind()
		if !it.Valid() {
			return false, nil
		}
		seq, err := parseJournalKey(it.Item().Key())
		if err != nil {
			return false, fmt.Errorf("journal key %x: %w", it.Item().Key(), err)
		}
		return seq <= upTo, nil
	})
}

// ConflictLostError says a strict change (Write.Strict), or one made with
// Write.Confirm, met a change it had not seen in the shared store and lost
// (a strict one always does; another by the governor's resolver): the local
// store adopted the shared store's record, at RemoteVersion.
type ConflictLostError struct {
	Seq           uint64
	Key           Key
	RemoteVersion uint64
	RemoteDeleted bool // the shared store's record is a tombstone
	Strict        bool // the change was strict
}

func (e *ConflictLostError) Error() string {
	return fmt.Sprintf("change %d of %s lost to a concurrent change: the shared store holds version %d", e.Seq, e.Key, e.RemoteVersion)
}

// Unwrap makes errors.Is(err, ErrVersionConflict) hold.
func (e *ConflictLostError) Unwrap() error { return ErrVersionConflict }

// lostChange is a strict or confirmed change that lost a conflict.
// conflicted says it met a true conflict (the ack carried the ledger
// record of its decision, not one of a change given way with its batch):
// the item of a batch that gave way whole which caused it, rather than one
// carried along.
type lostChange struct {
	key           Key
	remoteVersion uint64
	remoteDeleted bool
	strict        bool
	conflicted    bool
}

// maxLost bounds the lost changes remembered for WaitSynced: a sync or
// strong write asks within its timeout (at most a minute) of its push. When
// it is reached the oldest (lowest seq) is forgotten: one whose waiter gave
// up or never came, rather than a fresh one still to be asked for.
const maxLost = 4096

func (s *Store) noteLost(seq uint64, l lostChange) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.lost == nil {
		s.lost = make(map[uint64]lostChange)
	}
	if len(s.lost) >= maxLost {
		oldest := seq
		for q := range s.lost {
			oldest = min(oldest, q)
		}
		delete(s.lost, oldest)
	}
	s.lost[seq] = l
}

// conflictOf takes the lost changes of seqs, of which seq (l) is the first:
// a batch gives way whole, and the one to name is the item that met a
// concurrent change, not the first one carried along.
func (s *Store) conflictOf(seqs []uint64, seq uint64, l lostChange) (uint64, lostChange) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	for _, q := range seqs {
		o, ok := s.lost[q]
		if !ok {
			continue
		}
		delete(s.lost, q)
		if o.conflicted && !l.conflicted {
			seq, l = q, o
		}
	}
	return seq, l
}

func (s *Store) takeLost(seq uint64) (lostChange, bool) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	l, ok := s.lost[seq]
	delete(s.lost, seq)
	return l, ok
}
