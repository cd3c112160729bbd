package sockapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// fakeStore is an in-memory Store with localcache's semantics, for tests.
// It records every write it receives and checks it against the rules the
// server must enforce first; a write that breaks one is recorded in
// violations (the server let invalid input through).
type fakeStore struct {
	node string

	mu      sync.Mutex
	recs    map[localcache.Key]localcache.Record
	clock   int64
	pending map[localcache.Key]bool

	writes     atomic.Int64 // Write and WriteBatch calls
	violations []string     // guarded by mu

	// gate, when set, makes writes wait until it is closed (or ctx ends);
	// entered receives a value as each write starts waiting.
	gate    chan struct{}
	entered chan struct{}
	// hold, set before the server starts, gates the writes of some states
	// only: a write of state S waits like the gate until hold[S] is closed.
	hold map[string]chan struct{}
	// fail, when set, is returned by every call.
	fail error

	// The journal: every write gets a sequence number and stays pending
	// until the test acks or parks it (sync writes wait for that).
	seq     uint64
	journal map[uint64]localcache.JournalEntry
	parked  map[uint64]localcache.ParkedEntry
	synced  chan struct{} // closed and replaced when an entry is acked or parked
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		node:    "node-test",
		recs:    make(map[localcache.Key]localcache.Record),
		pending: make(map[localcache.Key]bool),
		journal: make(map[uint64]localcache.JournalEntry),
		parked:  make(map[uint64]localcache.ParkedEntry),
		synced:  make(chan struct{}),
	}
}

func (f *fakeStore) NodeID() string { return f.node }
func (f *fakeStore) Origin() string { return f.node + "~fake" }

func (f *fakeStore) Get(ctx context.Context, k localcache.Key) (localcache.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return localcache.Record{}, f.fail
	}
	r, ok := f.recs[k]
	if !ok || r.Deleted {
		return localcache.Record{}, &localcache.KeyError{Op: "get", Key: k, Err: localcache.ErrNotFound}
	}
	r.Pending = f.pending[k]
	return r, nil
}

func (f *fakeStore) GetMany(ctx context.Context, keys []localcache.Key) ([]*localcache.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	out := make([]*localcache.Record, len(keys))
	for i, k := range keys {
		if r, ok := f.recs[k]; ok && !r.Deleted {
			r.Pending = f.pending[k]
			out[i] = &r
		}
	}
	return out, nil
}

// validate applies the rules the server must have enforced.
func (f *fakeStore) validate(w localcache.Write) error {
	if err := wire.ValidateName("governor", w.Governor); err != nil {
		return err
	}
	if err := wire.ValidateName("state", w.State); err != nil {
		return err
	}
	switch {
	case w.Delete && w.Value != nil:
		return errors.New("delete with a value")
	case !w.Delete && len(w.Value) == 0:
		return errors.New("put without a value")
	case len(w.Value) > wire.MaxValueSize:
		return errors.New("value too large")
	case len(w.Actor) > wire.MaxMetaSize || len(w.Reason) > wire.MaxMetaSize:
		return errors.New("actor or reason too large")
	case w.IfVersion != nil && w.IfAbsent && *w.IfVersion != 0:
		return errors.New("if_version contradicts if_absent")
	}
	if !w.Delete {
		// Exactly one msgpack object (checked structurally: app values are
		// opaque, and some valid ones do not decode into an any).
		var raw wire.Raw
		if err := wire.Unmarshal(w.Value, &raw); err != nil || !bytes.Equal(raw, w.Value) {
			return fmt.Errorf("value is not one msgpack object: %v", err)
		}
	}
	return nil
}

func (f *fakeStore) wait(ctx context.Context, ws []localcache.Write) error {
	gate := f.gate
	for _, w := range ws {
		if h := f.hold[w.Key.State]; h != nil {
			gate = h
		}
	}
	if gate == nil {
		return nil
	}
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeStore) Write(ctx context.Context, w localcache.Write) (localcache.Record, error) {
	rs, err := f.WriteBatch(ctx, []localcache.Write{w})
	if err != nil {
		return localcache.Record{}, err
	}
	return rs[0], nil
}

func (f *fakeStore) WriteBatch(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error) {
	f.writes.Add(1)
	for _, w := range ws {
		if err := f.validate(w); err != nil {
			f.mu.Lock()
			f.violations = append(f.violations, fmt.Sprintf("%s/%s: %v", w.Governor, w.State, err))
			f.mu.Unlock()
			return nil, fmt.Errorf("%w: %v", localcache.ErrInvalid, err)
		}
	}
	if err := f.wait(ctx, ws); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	for _, w := range ws {
		cur, ok := f.recs[w.Key]
		live := ok && !cur.Deleted
		var actual uint64
		if live {
			actual = cur.Version
		}
		if w.IfVersion != nil && *w.IfVersion != actual {
			return nil, &localcache.VersionConflictError{Key: w.Key, Expected: *w.IfVersion, Actual: actual}
		}
		if w.IfAbsent && live {
			return nil, &localcache.VersionConflictError{Key: w.Key, Expected: 0, Actual: actual}
		}
		if w.Delete && !live {
			return nil, &localcache.KeyError{Op: "delete", Key: w.Key, Err: localcache.ErrNotFound}
		}
	}
	out := make([]localcache.Record, len(ws))
	for i, w := range ws {
		f.clock++
		cur := f.recs[w.Key]
		r := localcache.Record{
			Key:       w.Key,
			Value:     w.Value,
			Version:   cur.Version + 1,
			Deleted:   w.Delete,
			UpdatedAt: f.clock,
			Change:    localcache.Change{Actor: w.Actor, Reason: w.Reason, Time: f.clock},
			Origin:    f.Origin(),
			Pending:   true,
		}
		f.recs[w.Key] = r
		f.pending[w.Key] = true
		f.seq++
		f.journal[f.seq] = localcache.JournalEntry{Seq: f.seq, OpID: fmt.Sprintf("fake-%d", f.seq), Key: w.Key, BaseVersion: cur.Version, Version: r.Version, Time: f.clock}
		r.Value = nil
		r.Seq = f.seq
		out[i] = r
	}
	return out, nil
}

func (f *fakeStore) List(ctx context.Context, governor, prefix, cursor string, limit, maxBytes int) ([]localcache.Record, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, "", f.fail
	}
	var names []string
	for k, r := range f.recs {
		if k.Governor == governor && !r.Deleted && strings.HasPrefix(k.State, prefix) && k.State > cursor {
			names = append(names, k.State)
		}
	}
	sort.Strings(names)
	var out []localcache.Record
	bytes := 0
	for i, n := range names {
		r := f.recs[localcache.Key{Governor: governor, State: n}]
		if len(out) == limit || (len(out) > 0 && bytes+len(r.Value) > maxBytes) {
			return out, names[i-1], nil
		}
		bytes += len(r.Value)
		r.Pending = f.pending[r.Key]
		out = append(out, r)
	}
	return out, "", nil
}

func (f *fakeStore) Stats() localcache.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var live int64
	for _, r := range f.recs {
		if !r.Deleted {
			live++
		}
	}
	return localcache.Stats{States: live, Commits: uint64(f.writes.Load()),
		JournalDepth: int64(len(f.journal)), Parked: int64(len(f.parked))}
}

// Subscribe: the fake has no change feed (watches are tested against
// localcache).
func (f *fakeStore) Subscribe(governor, prefix string, buffer int, maxBytes int64) (*localcache.Subscription, error) {
	return nil, fmt.Errorf("fake store: no change feed: %w", localcache.ErrClosed)
}

func (f *fakeStore) WaitSynced(ctx context.Context, seqs ...uint64) error {
	for {
		f.mu.Lock()
		ch, pending := f.synced, false
		for _, seq := range seqs {
			if _, ok := f.journal[seq]; ok {
				pending = true
			} else if p, ok := f.parked[seq]; ok {
				f.mu.Unlock()
				return &localcache.ParkedError{Seq: seq, Key: p.Key, Reason: p.Reason}
			}
		}
		f.mu.Unlock()
		if !pending {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeStore) Journal(ctx context.Context, afterSeq uint64, limit int) ([]localcache.JournalEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []localcache.JournalEntry
	for seq := afterSeq + 1; seq <= f.seq && len(out) < limit; seq++ {
		if j, ok := f.journal[seq]; ok {
			out = append(out, j)
		}
	}
	return out, nil
}

func (f *fakeStore) Failed(ctx context.Context, afterSeq uint64, limit int) ([]localcache.ParkedEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []localcache.ParkedEntry
	for seq := afterSeq + 1; seq <= f.seq && len(out) < limit; seq++ {
		if p, ok := f.parked[seq]; ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func (f *fakeStore) LastSeq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// WaitFlushed waits until no journal entry up to upTo is pending (parked
// entries count as done).
func (f *fakeStore) WaitFlushed(ctx context.Context, upTo uint64) error {
	for {
		f.mu.Lock()
		ch, pending := f.synced, false
		for seq := range f.journal {
			if seq <= upTo {
				pending = true
			}
		}
		f.mu.Unlock()
		if !pending {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// The fake keeps no event log: history is tested against localcache
// (history_test.go).
func (f *fakeStore) QueryEvents(ctx context.Context, q localcache.EventQuery) (localcache.EventPage, error) {
	return localcache.EventPage{}, nil
}

func (f *fakeStore) StateAt(ctx context.Context, k localcache.Key, at time.Time) (localcache.PastState, error) {
	return localcache.PastState{}, &localcache.KeyError{Op: "state_at", Key: k, Err: localcache.ErrNotFound}
}

func (f *fakeStore) StateAtVersion(ctx context.Context, k localcache.Key, version uint64) (localcache.PastState, error) {
	return localcache.PastState{}, &localcache.KeyError{Op: "state_at", Key: k, Err: localcache.ErrNotFound}
}

func (f *fakeStore) Validate(ctx context.Context, governor, state string) (localcache.ValidationReport, error) {
	return localcache.ValidationReport{}, nil
}

// settle acks (reason "") or parks every pending journal entry of k, as
// the push loop would, and records the synced time.
func (f *fakeStore) settle(k localcache.Key, reason string, syncedAt int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for seq, j := range f.journal {
		if j.Key != k {
			continue
		}
		delete(f.journal, seq)
		if reason != "" {
			f.parked[seq] = localcache.ParkedEntry{JournalEntry: j, Reason: reason, ParkedAt: f.clock}
		}
	}
	f.pending[k] = false
	if r, ok := f.recs[k]; ok && reason == "" {
		r.SyncedVersion, r.SyncedAt = r.Version, syncedAt
		f.recs[k] = r
	}
	close(f.synced)
	f.synced = make(chan struct{})
}

// settleAll acks every pending journal entry, as the push loop would, and
// returns how many it acked.
func (f *fakeStore) settleAll() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.journal)
	for seq, j := range f.journal {
		delete(f.journal, seq)
		f.pending[j.Key] = false
	}
	close(f.synced)
	f.synced = make(chan struct{})
	return n
}

// put stores a record directly (test setup).
func (f *fakeStore) put(gov, state string, value any) {
	b, err := wire.Marshal(value)
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := localcache.Key{Governor: gov, State: state}
	f.clock++
	cur := f.recs[k]
	f.recs[k] = localcache.Record{Key: k, Value: b, Version: cur.Version + 1, UpdatedAt: f.clock,
		Change: localcache.Change{Time: f.clock}, Origin: f.Origin()}
}

func (f *fakeStore) violationsList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}
