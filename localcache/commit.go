package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Group commit.
//
// Write and WriteBatch validate their input, then hand one request to the
// committer goroutine and wait. The committer takes everything queued (up to
// maxGroupWrites writes or maxGroupBytes of values), evaluates each
// request's preconditions in order against a view staged over the group (so
// two writes to one key in a group see each other), answers failing requests
// at once, and stores the survivors in one Badger transaction: per write the
// new state record, its event and its journal entry, plus the meta counters.
// On disk the group is first appended to the write-ahead log with one
// fdatasync, shared by every writer in the group; the writers are answered
// then, and the group is handed to the applier goroutine, which applies it
// to Badger (which does not sync) and updates the read cache, while the
// committer goes on with the next group (see Pipeline below).
//
// A group larger than Badger's transaction limit is committed in several
// transactions, split between requests (a WriteBatch is never split).
//
// A writer that finds the committer idle, nothing queued and the last group
// a single request commits its own request the same way, on its own
// goroutine (see leadAlone): a lone writer, the common case at low load,
// then pays no goroutine hand-off on its way to the log and back.
const (
	maxGroupWrites = 2048
	maxGroupBytes  = 16 << 20
)

// request is one Write or WriteBatch, or one mutation of the sync side, on
// its way to the committer.
type request struct {
	ctx    context.Context
	writes []Write    // validated; values are the store's copies
	txn    *txnChecks // a transaction's checks (txn.go); nil for other writes
	mut    mutation
	bytes  int
	done   chan reply // buffered: the committer never blocks on a reply
}

type reply struct {
	recs []Record
	val  any // a mutation's result
	err  error
}

// staged is a request whose preconditions held: what to store for it.
type staged struct {
	req     *request
	records []*Record // new state records
	removed []Key     // state records deleted (a mutation's)
	changes []*Record // the changes subscribers get (see feed.go)
	seqs    []uint64  // a write's journal sequence numbers, one per record
	after   []func()  // a mutation's, run once it is durable
	fenced  bool      // a write's ops raise a fence mark (fence.go)
	ops     []kv      // every Badger operation, in order
	result  any       // a mutation's result
	meta    meta      // the counters after this request
}

// kv is one Badger operation of a staged request: a set, or a delete.
type kv struct {
	key, value []byte
	userMeta   byte
	del        bool
}

// Write stores one put or delete and returns the new record (without its
// Value) once it is durable.
//
// Errors: a failed precondition is a *VersionConflictError (errors.Is
// ErrVersionConflict); a delete of a missing or deleted state is a *KeyError
// wrapping ErrNotFound; invalid input is a *KeyError wrapping a *FieldError
// that wraps ErrInvalid or ErrTooLarge; ErrClosed once Close has begun. If
// ctx ends while the write waits for its commit, Write returns an error
// wrapping ctx.Err(): the write may or may not have been applied.
//
// The returned Clock.Vector is shared with the read cache: do not modify it.
func (s *Store) Write(ctx context.Context, w Write) (Record, error) {
	w, err := s.prepare(w)
	if err != nil {
		return Record{}, err
	}
	recs, err := s.submit(ctx, []Write{w}, len(w.Value))
	if err != nil {
		return Record{}, err
	}
	return recs[0], nil
}

// WriteBatch stores ws atomically: all of them or none (no record, event or
// journal entry of a failed batch is written). It returns the new records, in
// order, without their Values. Errors are those of Write, for the first
// failing item; besides, more than wire.MaxBatch items is a *FieldError
// wrapping ErrTooLarge, and one key twice is a *KeyError wrapping ErrInvalid.
// The journal entries of one batch share a BatchID. An empty batch does
// nothing.
func (s *Store) WriteBatch(ctx context.Context, ws []Write) ([]Record, error) {
	if len(ws) == 0 {
		return []Record{}, nil
	}
	if len(ws) > wire.MaxBatch {
		return nil, &FieldError{Field: "batch", Limit: wire.MaxBatch,
			Err: fmt.Errorf("%w: %d writes in one batch, limit %d", ErrTooLarge, len(ws), wire.MaxBatch)}
	}
	prepared := make([]Write, len(ws))
	seen := make(map[Key]struct{}, len(ws))
	size := 0
	for i, w := range ws {
		w, err := s.prepare(w)
		if err != nil {
			return nil, err
		}
		if _, dup := seen[w.Key]; dup {
			return nil, &KeyError{Op: "batch", Key: w.Key,
				Err: &FieldError{Field: "state", Err: fmt.Errorf("%w: key appears twice in one batch", ErrInvalid)}}
		}
		seen[w.Key] = struct{}{}
		prepared[i] = w
		size += len(w.Value)
	}
	return s.submit(ctx, prepared, size)
}

// prepare validates w and returns it with a private copy of its value and
// precondition, which the cache may then share with readers.
func (s *Store) prepare(w Write) (Write, error) {
	op := "put"
	if w.Delete {
		op = "delete"
	}
	if err := validateKey(op, w.Key); err != nil {
		return w, err
	}
	fail := func(field string, limit int, sentinel error, format string, args ...any) error {
		return &KeyError{Op: op, Key: w.Key, Err: &FieldError{Field: field, Limit: int64(limit),
			Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}}
	}
	switch {
	case w.Delete && len(w.Value) > 0:
		return w, fail("value", 0, ErrInvalid, "a delete carries no value")
	case !w.Delete && len(w.Value) == 0:
		return w, fail("value", 0, ErrInvalid, "a put needs a value")
	case len(w.Value) > s.opts.MaxValueSize:
		return w, fail("value", s.opts.MaxValueSize, ErrTooLarge, "value is %d bytes, limit %d", len(w.Value), s.opts.MaxValueSize)
	case len(w.Actor) > wire.MaxMetaSize:
		return w, fail("actor", wire.MaxMetaSize, ErrTooLarge, "actor is %d bytes, limit %d", len(w.Actor), wire.MaxMetaSize)
	case len(w.Reason) > wire.MaxMetaSize:
		return w, fail("reason", wire.MaxMetaSize, ErrTooLarge, "reason is %d bytes, limit %d", len(w.Reason), wire.MaxMetaSize)
	case w.IfAbsent && w.IfVersion != nil && *w.IfVersion != 0:
		return w, fail("if_version", 0, ErrInvalid, "if_version %d contradicts if_absent", *w.IfVersion)
	}
	if err := checkWriteAction(w); err != nil {
		return w, &KeyError{Op: op, Key: w.Key, Err: err}
	}
	if err := checkFence(w.Fence); err != nil {
		return w, &KeyError{Op: op, Key: w.Key, Err: err}
	}
	if w.Delete {
		w.Value = nil
	} else {
		w.Value = bytes.Clone(w.Value)
	}
	if w.IfVersion != nil {
		v := *w.IfVersion
		w.IfVersion = &v
	}
	return w, nil
}

// errNotAcked wraps ctx.Err() when a writer stops waiting for its commit.
type errNotAcked struct{ err error }

func (e errNotAcked) Error() string {
	return "localcache: write not acknowledged (it may still be applied): " + e.err.Error()
}
func (e errNotAcked) Unwrap() error { return e.err }

func (s *Store) submit(ctx context.Context, ws []Write, size int) ([]Record, error) {
	rep := s.send(ctx, &request{ctx: ctx, writes: ws, bytes: size, done: make(chan reply, 1)})
	return rep.recs, rep.err
}

// send hands r to the committer and waits for its reply.
func (s *Store) send(ctx context.Context, r *request) reply {
	if err := ctx.Err(); err != nil {
		return reply{err: err}
	}
	s.closeMu.RLock()
	if s.closing {
		s.closeMu.RUnlock()
		return reply{err: ErrClosed}
	}
	if s.leadAlone(r) {
		s.closeMu.RUnlock()
		return <-r.done
	}
	select {
	case s.reqs <- r:
		s.closeMu.RUnlock()
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return reply{err: ctx.Err()} // never queued: not applied
	}
	select {
	case rep := <-r.done:
		return rep
	case <-ctx.Done():
		return reply{err: errNotAcked{ctx.Err()}}
	}
}

// leadAlone commits r on the calling goroutine, and reports whether it did,
// when the committer is idle, nothing is queued, the last group had a single
// request and the applier has no group: a lone writer then skips two
// goroutine hand-offs (to the committer and back), which cost about as much
// as its commit's own CPU. Requests queued meanwhile wait for the committer,
// which gathers them into the next group as before. With the applier idle,
// handing the group on does not wait for an apply, so the apply stays off
// the writer's path (see Pipeline). The caller holds closeMu for reading,
// so Close waits for the commit, and no such commit starts once reqs is
// closed. A test's hookGroup sends every request through the committer.
func (s *Store) leadAlone(r *request) bool {
	if s.opts.hookGroup != nil || len(s.reqs) > 0 || !s.commitMu.TryLock() {
		return false
	}
	defer s.commitMu.Unlock()
	if s.lastGroup+s.backlog > 1 || len(s.reqs) > 0 || s.inflight.Load() > 0 {
		return false // writers are busy or the applier is: the committer's turn
	}
	if s.opts.hookLead != nil {
		s.opts.hookLead()
	}
	s.commitGroup([]*request{r})
	s.lastGroup, s.backlog = 1, len(s.reqs)
	return true
}

// committer is the goroutine that writes groups. It runs until Close closes
// reqs and it has drained them. It holds commitMu while it gathers and
// commits a group (see leadAlone).
//
// On disk it gathers a little longer than what is queued: the writers it
// just answered usually come back with their next write within a log sync or
// so, and a group that waits for them shares one sync among all of them.
// Without the wait the first writer back is committed alone and the others
// queue behind its sync: the writers split into a group of one and a group
// of the rest, two syncs for what one would carry. It waits until as many
// requests arrived as it answered last time (plus those that were already
// queued then), and at most gatherSyncs recent sync times after answering.
func (s *Store) committer() {
	defer close(s.committerDone)
	defer close(s.applyQ)
	defer func() {
		s.commitMu.Lock()
		s.dropView()
		s.commitMu.Unlock()
	}()
	var group []*request
	for {
		if s.opts.hookGroup != nil {
			s.opts.hookGroup()
		}
		r, ok := <-s.reqs
		if !ok {
			return
		}
		s.commitMu.Lock()
		group = append(group[:0], r)
		n, size := len(r.writes), r.bytes
		take := func(r *request) {
			group = append(group, r)
			n += len(r.writes)
			size += r.bytes
		}
	gather:
		for n < maxGroupWrites && size < maxGroupBytes {
			select {
			case r, ok = <-s.reqs:
				if !ok {
					break gather
				}
				take(r)
			default:
				break gather
			}
		}
		if target := s.backlog + s.lastGroup; ok && s.wal != nil && len(group) < target {
			if wait := s.syncEWMA*gatherSyncs/2 - time.Since(time.Unix(0, s.repliedAt.Load())); wait > 0 {
				timer := time.NewTimer(min(wait, maxGatherWait))
			wait:
				for len(group) < target && n < maxGroupWrites && size < maxGroupBytes {
					select {
					case r, ok = <-s.reqs:
						if !ok {
							break wait
						}
						take(r)
					case <-timer.C:
						break wait
					}
				}
				timer.Stop()
			}
		}
		s.commitGroup(group)
		s.lastGroup, s.backlog = len(group), len(s.reqs)
		s.commitMu.Unlock()
		clear(group)
		if !ok {
			return
		}
	}
}

// commitGroup stages and commits one group, and answers every request in it.
func (s *Store) commitGroup(group []*request) {
	select {
	case <-s.abort:
		for _, r := range group {
			r.done <- reply{err: ErrClosed}
		}
		return
	default:
	}
	if err := s.failedErr(); err != nil {
		for _, r := range group {
			r.done <- reply{err: err}
		}
		return
	}
	now := s.opts.Now()
	m := s.meta
	s.refreshView()
	s.pruneOverlay()
	g := &groupView{s: s, recs: make(map[Key]*Record)}
	defer g.discard()
	accepted := make([]*staged, 0, len(group))
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.done <- reply{err: err}
			continue
		}
		var st *staged
		var err error
		if r.mut != nil {
			st, err = s.stageMutation(r, &m, g)
		} else {
			st, err = s.stage(r, &m, now, g)
		}
		if err != nil {
			r.done <- reply{err: err}
			continue
		}
		g.add(st)
		accepted = append(accepted, st)
	}
	s.commitStaged(accepted)
}

// groupView is what the requests of one group are staged against: the
// records and other keys staged by earlier requests of the group, over the
// overlay, the cache and Badger. Committer only.
type groupView struct {
	s    *Store
	recs map[Key]*Record // nil: removed
	raw  map[string]kv
	// fresh is a read transaction opened, after every logged group was
	// applied, for reads of keys other than state records (mutations).
	fresh *badger.Txn
}

// record returns the current record of k (possibly a tombstone), or nil.
func (g *groupView) record(k Key) (*Record, error) {
	if rec, ok := g.recs[k]; ok {
		return rec, nil
	}
	if e, ok := g.s.overlay[k]; ok { // the committer's own map: no lock
		return e.rec, nil
	}
	if rec := g.s.cache.peek(k); rec != nil {
		return rec, nil
	}
	return readRecord(g.s.readView(), k)
}

// get returns the current value of a key that is not a state record (nil:
// absent). The overlay holds state records only, so the first such read of
// a group waits until the groups in the log are applied to Badger.
func (g *groupView) get(key []byte) ([]byte, error) {
	if op, ok := g.raw[string(key)]; ok {
		if op.del {
			return nil, nil
		}
		return op.value, nil
	}
	if g.fresh == nil {
		if err := g.s.barrier(context.Background()); err != nil {
			return nil, err
		}
		g.fresh = g.s.db.NewTransaction(false)
	}
	return getValue(g.fresh, key)
}

// add makes st's changes visible to the requests staged after it.
func (g *groupView) add(st *staged) {
	for _, rec := range st.records {
		g.recs[rec.Key] = rec
	}
	for _, k := range st.removed {
		g.recs[k] = nil
	}
	if st.req.mut == nil && !st.fenced {
		return // a write's event and journal entry are never read back in a group (its fence marks are)
	}
	if g.raw == nil {
		g.raw = make(map[string]kv)
	}
	for _, op := range st.ops {
		if op.key[0] != kindState {
			g.raw[string(op.key)] = op
		}
	}
}

func (g *groupView) discard() {
	if g.s.wal == nil {
		g.s.dropView() // in memory the group is committed now, and no overlay has it
	}
	if g.fresh != nil {
		g.fresh.Discard()
	}
}

// stage checks r's fences and preconditions against g and builds what to
// store. On success it advances *m; on failure *m is unchanged.
func (s *Store) stage(r *request, m *meta, now time.Time, g *groupView) (*staged, error) {
	mm := *m
	st := &staged{req: r, records: make([]*Record, 0, len(r.writes)), ops: make([]kv, 0, 3*len(r.writes))}
	nanos := now.UnixNano()
	var batchID string
	var marks map[string]uint64 // fence marks raised by this request

	checked, err := stageChecks(r, g) // txn.go
	if err != nil {
		return nil, err
	}
	origin := s.Origin()
	for i, w := range r.writes {
		if !w.Fence.IsZero() {
			if marks == nil {
				marks = make(map[string]uint64)
			}
			op := "put"
			if w.Delete {
				op = "delete"
			}
			if err := stageFence(g, st, marks, op, &w); err != nil {
				return nil, err
			}
		}
		cur, err := g.record(w.Key)
		if err != nil {
			return nil, fmt.Errorf("localcache: write %s: read current: %w", w.Key, err)
		}
		live := cur != nil && !cur.Deleted
		var actual, base uint64
		var prev Record
		if cur != nil {
			base, prev = cur.Version, *cur
		}
		if live {
			actual = cur.Version
		}
		switch {
		case w.Strict && uncommitted(cur):
			return nil, errStrictBehind // strong.go: pushed first, then checked
		case w.IfAbsent && live:
			return nil, &VersionConflictError{Key: w.Key, Expected: 0, Actual: actual}
		case w.IfVersion != nil && *w.IfVersion != actual:
			return nil, &VersionConflictError{Key: w.Key, Expected: *w.IfVersion, Actual: actual}
		case w.Delete && !live:
			return nil, &KeyError{Op: "delete", Key: w.Key, Err: ErrNotFound}
		}

		mm.seq++
		mm.lamport = lamportNext(mm.lamport)
		mm.hlc = hlcNext(mm.hlc, now)
		mm.journal++
		switch {
		case w.Delete:
			mm.states--
		case !live:
			mm.states++
		}
		opID := origin + "-" + strconv.FormatUint(mm.seq, 10)
		if i == 0 {
			batchID = opID
		}
		change := Change{Actor: w.Actor, Reason: w.Reason, Time: nanos}
		clock := Clock{Lamport: mm.lamport, HLC: mm.hlc, Vector: vectorTick(prev.Clock.Vector, origin)}
		rec := &Record{
			Key:           w.Key,
			Value:         w.Value,
			Version:       base + 1,
			Deleted:       w.Delete,
			UpdatedAt:     nanos,
			Change:        change,
			Origin:        origin,
			OpID:          opID,
			Clock:         clock,
			SyncedVersion: prev.SyncedVersion,
			SyncedAt:      prev.SyncedAt,
			Pending:       true,
			journaled:     prev.journaled + 1,
		}
		action := ActionPut
		if w.Action != "" {
			action = w.Action
		}
		var userMeta byte
		if w.Delete {
			action = ActionDelete
			userMeta = userMetaTombstone
		}
		ev := Event{Key: w.Key, Action: action, FromVersion: base, ToVersion: rec.Version, Value: w.Value,
			Change: change, Origin: origin, OpID: opID, Clock: clock}
		j := JournalEntry{Seq: mm.seq, OpID: opID, BatchID: batchID, Key: w.Key,
			BaseVersion: base, Version: rec.Version, Time: nanos, Strict: w.Strict || r.txn != nil, Confirm: w.Confirm, Fence: w.Fence}
		if i == 0 {
			j.Checks = checked
		}
		st.records = append(st.records, rec)
		st.seqs = append(st.seqs, mm.seq)
		st.changes = append(st.changes, rec)
		ops := writeOps(rec, &ev, &j, userMeta)
		st.ops = append(st.ops, ops[:]...)
	}
	if r.txn != nil && r.txn.logKey != nil {
		st.ops = append(st.ops, kv{key: txPushKey(batchID), value: r.txn.logKey}) // txlog.go
	}
	st.meta = mm
	*m = mm
	return st, nil
}

// part is the requests of one Badger transaction. The transaction is built
// where it is committed (see txnLimits).
type part struct {
	sts []*staged
}

// commitStaged commits acc in as few transactions as fit (one
// write-ahead log record for all of them), then publishes and answers. A
// request too large for any transaction gets ErrTooLarge, and the requests
// after it are staged again from the committed state (they may have
// depended on it).
func (s *Store) commitStaged(acc []*staged) {
	var parts []part
	for lo := 0; lo < len(acc); {
		n, err := s.limits.fit(acc[lo:])
		if err != nil {
			s.commitParts(parts)
			s.failed(acc[lo:lo+1], err)
			s.restage(acc[lo+1:])
			return
		}
		parts = append(parts, part{sts: acc[lo : lo+n]})
		lo += n
	}
	s.commitParts(parts)
}

// restage stages and commits rest again.
func (s *Store) restage(rest []*staged) {
	if len(rest) == 0 {
		return
	}
	reqs := make([]*request, len(rest))
	for i, st := range rest {
		reqs[i] = st.req
	}
	s.commitGroup(reqs)
}

// commitParts makes parts durable in the write-ahead log with one sync,
// answers them and hands them to the applier (on disk), or commits,
// publishes and answers them (in memory).
//
// Once a group is in the log its outcome is decided, and its writers are
// told it succeeded: it is applied to Badger by the applier or, if that
// fails, when the store is next opened (the store fails meanwhile; see
// applyFailed). A failure to write the log fails the store and answers the
// group's writes with an error saying they may be applied: whether the
// record reached the disk is unknown.
func (s *Store) commitParts(parts []part) {
	if len(parts) == 0 {
		return
	}
	if s.wal == nil {
		s.commitMemory(parts)
		return
	}
	seq := s.wal.nextSeq()
	s.walBuf = encodeWALGroup(s.walBuf[:0], seq, parts)
	start := time.Now()
	err := s.wal.append(s.walBuf)
	n := len(s.walBuf)
	s.noteSync(time.Since(start), n)
	if cap(s.walBuf) > 4<<20 {
		s.walBuf = nil
	}
	if err != nil {
		s.unknown(parts, err)
		return
	}
	s.noteWALAppend(n)
	// The group is durable: from here on, staging and point reads see it
	// through the overlay until the applier has it in Badger and the cache,
	// and scans wait for its apply (see Pipeline).
	last := parts[len(parts)-1].sts
	s.meta = last[len(last)-1].meta
	keys := make([]Key, 0, len(parts))
	journaled := false
	s.ovMu.Lock()
	for _, p := range parts {
		for _, st := range p.sts {
			for _, rec := range st.records {
				s.overlay[rec.Key] = overlayEntry{rec: rec, seq: seq}
				keys = append(keys, rec.Key)
			}
			for _, k := range st.removed {
				s.overlay[k] = overlayEntry{seq: seq}
				keys = append(keys, k)
			}
			journaled = journaled || st.req.mut == nil
		}
	}
	s.ovMu.Unlock()
	s.overlayGroups = append(s.overlayGroups, overlayGroup{seq: seq, keys: keys})
	s.unapplied.Add(1)
	s.logged.Store(seq)
	for _, p := range parts {
		s.answer(p.sts)
		s.publish(p.sts)
	}
	if journaled {
		s.notifyJournal()
	}
	s.inflight.Add(1)
	weight := min(int64(n), applyQueueBytes)
	if err := s.applyBudget.Acquire(context.Background(), weight); err != nil {
		panic(err) // a background context: Acquire cannot fail
	}
	s.applyQ <- applyJob{seq: seq, parts: parts, weight: weight}
}

// commitMemory commits parts in memory, publishes and answers them.
func (s *Store) commitMemory(parts []part) {
	for i, p := range parts {
		txn, err := s.build(p.sts)
		if err == nil {
			err = txn.Commit()
			txn.Discard()
		}
		if err == nil {
			s.meta = p.sts[len(p.sts)-1].meta
			s.published(p.sts)
			s.publish(p.sts)
			for _, st := range p.sts {
				if st.req.mut == nil {
					s.notifyJournal()
					break
				}
			}
			continue
		}
		// Nothing was applied; the parts after it are staged again.
		var rest []*staged
		for _, q := range parts[i+1:] {
			rest = append(rest, q.sts...)
		}
		s.failed(p.sts, err)
		s.restage(rest)
		return
	}
}

// Pipeline.
//
// On disk, a group's Badger apply overlaps the next group's log append and
// sync: the committer (stage 1) gathers, stages, cuts the group into
// transactions (txnLimits) and appends it to the log, then hands it to the
// applier (stage 2), which builds and commits the transactions in Badger and
// updates the cache. The committer never waits for Badger's commits: it
// stages against the overlay, the cache and a read view kept across groups
// (readView). The
// committer answers the group's writers as soon as the group is durable in
// the log, before it hands it on: the apply is off the writers' path.
//
// An acknowledged write stays visible to every later read all the same:
// point reads (Get, GetMany) consult the overlay below before the cache and
// Badger whenever a group is logged and not applied (s.unapplied > 0), and
// every read that goes to Badger for more than one key's record (scans,
// events, the journal) first waits until the groups logged when it began
// are applied (Store.barrier).
//
// Staging must see groups that are in the log but not yet in Badger: the
// committer keeps them in an overlay (key -> latest record logged, with its
// group's sequence number) consulted before the cache and Badger. The
// applier publishes s.applied after a group is in Badger and the cache; the
// committer then drops the group's overlay entries that no later group
// superseded, before it opens the read transaction it stages against. The
// meta counters are the committer's (s.meta, as of the last logged group);
// the applier only mirrors them for Stats.
//
// The committer runs ahead of the applier by at most applyQueueBytes of log
// records (applyBudget), which bounds the overlay and the memory the queued
// groups hold. It does not wait for each apply: a Badger write that stalls
// (its memtable full while a flush runs, tens of ms and more) would hold up
// the next group's commit, and every writer with it. With the committer
// waiting for the applier to take each group, put c=16 (tai-bench, 10 s
// each, three interleaved pairs) ran 8,710 to 10,215 puts/s against 9,723
// to 10,562 with the queue.
//
// A failed apply cannot be reported to the group's writers: they were
// answered when the group reached the log. The store fails instead (writes
// get ErrFailed, scans that would miss the group get ErrFailed, point reads
// still see it in the overlay), and the next Open replays the log.

// applyJob is a group in the log, to be applied to Badger.
type applyJob struct {
	seq    uint64
	parts  []part
	weight int64 // of applyBudget, released once applied
}

// applyQueueBytes bounds the log records of the groups logged and not yet
// applied (applyBudget); applyQueueGroups bounds their number.
const (
	applyQueueBytes  = 8 << 20
	applyQueueGroups = 256
)

// overlayEntry is the latest record of a key in a group not yet applied.
type overlayEntry struct {
	rec *Record
	seq uint64
}

// overlayGroup lists the keys a logged group put in the overlay.
type overlayGroup struct {
	seq  uint64
	keys []Key
}

// The committer's read view.
//
// Staging reads a record from Badger only when it is in neither the
// overlay nor the cache. Opening a Badger transaction waits until every
// commit in progress is done, the applier's included, which would put each
// group's apply on the next group's path. So the committer keeps one read
// transaction (s.rview) across groups, and prunes the overlay only of groups
// that transaction's snapshot holds (s.rviewApplied: the last group applied
// when it was opened). It opens a newer one when the view has fallen
// viewRefreshLag groups behind and the applier is idle, or maxViewLag groups
// behind in any case, which bounds the overlay and how long the view holds
// old versions in Badger. Not after every group: even with the applier
// idle, opening a transaction waits until Badger's watermark goroutine has
// taken in the applier's last commit, and opening and discarding one each
// wakes that goroutine. Renewing it after every group cost a lone writer
// (put c=1) about 4 µs (median; 20 at p90) of its staging and 2 µs (16 at
// p90) to discard it; at c=16, renewing it only every viewRefreshLag
// groups gave 8 to 13% more puts/s and 8% less CPU per put (bench/RESULTS.md).
const (
	viewRefreshLag = 8
	maxViewLag     = 64
)

// readView returns the committer's read transaction, opening it if needed.
// Committer only.
func (s *Store) readView() *badger.Txn {
	if s.rview == nil {
		s.rviewApplied = s.applied.Load() // before: the snapshot holds at least this
		s.rview = s.db.NewTransaction(false)
	}
	return s.rview
}

// refreshView drops the read view if a newer one is due (see readView).
// Committer only.
func (s *Store) refreshView() {
	if s.rview == nil {
		return
	}
	applied := s.applied.Load()
	lag := applied - s.rviewApplied
	if lag >= maxViewLag || lag >= viewRefreshLag && applied == s.logged.Load() {
		s.dropView()
	}
}

func (s *Store) dropView() {
	if s.rview != nil {
		s.rview.Discard()
		s.rview = nil
	}
}

// pruneOverlay drops the overlay entries of groups the applier has applied
// and the read view holds (unless a later group superseded them). Committer
// only.
func (s *Store) pruneOverlay() {
	applied := s.applied.Load()
	if s.rview != nil {
		applied = min(applied, s.rviewApplied)
	}
	if len(s.overlayGroups) == 0 || s.overlayGroups[0].seq > applied {
		return
	}
	s.ovMu.Lock()
	i := 0
	for ; i < len(s.overlayGroups) && s.overlayGroups[i].seq <= applied; i++ {
		g := s.overlayGroups[i]
		for _, k := range g.keys {
			if e, ok := s.overlay[k]; ok && e.seq == g.seq {
				delete(s.overlay, k)
			}
		}
	}
	s.ovMu.Unlock()
	if i > 0 {
		n := copy(s.overlayGroups, s.overlayGroups[i:])
		clear(s.overlayGroups[n:])
		s.overlayGroups = s.overlayGroups[:n]
	}
}

// applier is the goroutine that applies logged groups to Badger, in log
// order. It runs until the committer closes applyQ, and applies every group
// queued before that.
func (s *Store) applier() {
	defer close(s.applierDone)
	for job := range s.applyQ {
		s.apply(job)
		s.applyBudget.Release(job.weight)
		s.inflight.Add(-1)
	}
}

// apply commits job's transactions and updates the cache. After any failure
// (this group's or an earlier one) the group is left to the replay at the
// next Open, and the store is failed: its writers were answered already.
func (s *Store) apply(job applyJob) {
	if s.opts.hookApply != nil {
		s.opts.hookApply(job.seq)
	}
	var err error
	if s.opts.hookAfterWAL != nil {
		err = s.opts.hookAfterWAL()
	}
	if err == nil {
		err = s.failedErr()
	}
	if err != nil {
		s.applyFailed(job.parts, fmt.Errorf("apply group %d: %w", job.seq, err))
		return
	}
	for i, p := range job.parts {
		txn, err := s.build(p.sts)
		if err == nil {
			err = txn.Commit()
			txn.Discard()
		}
		if err != nil {
			s.applyFailed(job.parts[i:], fmt.Errorf("apply group %d: %w", job.seq, err))
			return
		}
		for _, st := range p.sts {
			s.cacheStaged(st)
		}
	}
	// Order matters to point reads: the cache holds the group before
	// unapplied drops (a read that sees it drop finds the group in the cache
	// or Badger), and the overlay entries stay until the committer prunes
	// them after applied moves.
	s.applied.Store(job.seq)
	s.unapplied.Add(-1)
	s.wakeBarrier()
}

// applyFailed fails the store after a logged and acknowledged group could
// not be applied. Its records stay in the overlay (unapplied never drops
// back to zero), so point reads still see them; scans that would miss them
// get the failure.
func (s *Store) applyFailed(parts []part, cause error) {
	err := s.fail(cause)
	s.log.Error("acknowledged writes are in the write-ahead log but not in the store: refusing writes and scans until it is reopened",
		"err", err, "writes", countWrites(parts))
	s.wakeBarrier()
}

func countWrites(parts []part) int {
	n := 0
	for _, p := range parts {
		for _, st := range p.sts {
			n += len(st.records)
		}
	}
	return n
}

// barrier waits until every group logged when it is called is applied to
// Badger. Reads that go to Badger other than for one key's record call it
// first (see the package comment). It returns at once when nothing is
// pending; otherwise it waits for at most the applies of two groups.
func (s *Store) barrier(ctx context.Context) error {
	target := s.logged.Load()
	for s.applied.Load() < target {
		s.barrierMu.Lock()
		ch := s.barrierCh
		s.barrierMu.Unlock()
		if s.applied.Load() >= target {
			return nil
		}
		if err := s.failedErr(); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// wakeBarrier wakes the reads waiting in barrier.
func (s *Store) wakeBarrier() {
	s.barrierMu.Lock()
	close(s.barrierCh)
	s.barrierCh = make(chan struct{})
	s.barrierMu.Unlock()
}

// unknown fails the store with cause and answers parts (whose transactions
// are not committed) with an error saying their outcome is unknown.
func (s *Store) unknown(parts []part, cause error) {
	err := errNotAcked{s.fail(cause)}
	for _, p := range parts {
		for _, st := range p.sts {
			s.uncacheStaged(st)
			st.req.done <- reply{err: err}
		}
	}
}

// cacheStaged puts st's committed records in the read cache.
func (s *Store) cacheStaged(st *staged) {
	for _, rec := range st.records {
		s.cache.set(rec.Key, rec)
	}
	for _, k := range st.removed {
		s.cache.invalidate(k)
	}
}

// uncacheStaged drops the keys of st, whose outcome is unknown, from the
// read cache.
func (s *Store) uncacheStaged(st *staged) {
	for _, rec := range st.records {
		s.cache.invalidate(rec.Key)
	}
	for _, k := range st.removed {
		s.cache.invalidate(k)
	}
}

// noteSync records a log append of n bytes and its sync, which took d: the
// counters, the recent sync time (a moving average) and OnLogSync.
func (s *Store) noteSync(d time.Duration, n int) {
	if s.opts.OnLogSync != nil {
		s.opts.OnLogSync(d, n)
	}
	s.walSyncs.Add(1)
	s.walSyncNanos.Add(uint64(max(d, 0)))
	if s.syncEWMA == 0 {
		s.syncEWMA = d
		return
	}
	s.syncEWMA += (d - s.syncEWMA) / 8
}

const (
	// gatherSyncs is how long, in halves of the recent log sync time, the
	// committer waits after answering a group for its writers to come back
	// (see committer). Put c=16 over the socket, 256 B values: at one half
	// the groups split into one write and fifteen (8.3 writes a group); at
	// three halves they hold 14.5 or more, for 7 to 35% more puts/s and 10
	// to 20% less CPU per put (c=4 and c=32 gain too). At c=64 the writers'
	// round trip is much longer than a sync and the wait no longer pays: up
	// to 10% fewer puts/s there (docs/decisions/0002).
	gatherSyncs = 3

	// maxGatherWait caps the committer's wait for more writers.
	maxGatherWait = 2 * time.Millisecond
)

// encodeWALGroup appends the write-ahead log payload of parts (group seq) to
// b: every entry of their transactions, in order, with the meta counters
// each transaction stores.
func encodeWALGroup(b []byte, seq uint64, parts []part) []byte {
	ops := 0
	for _, p := range parts {
		for _, st := range p.sts {
			ops += len(st.ops)
		}
		ops++ // meta
	}
	b = appendWALGroupHeader(b, seq, ops)
	for _, p := range parts {
		for _, st := range p.sts {
			for _, op := range st.ops {
				if op.del {
					b = appendWALOp(b, walOpDelete, 0, op.key, nil)
				} else {
					b = appendWALOp(b, walOpSet, op.userMeta, op.key, op.value)
				}
			}
		}
		b = appendWALOp(b, walOpSet, 0, metaCounters, encodeMeta(p.sts[len(p.sts)-1].meta))
	}
	return b
}

// build returns a write transaction holding part's entries and the meta
// after its last request. Parts are cut with txnLimits.fit, so they fit.
func (s *Store) build(part []*staged) (*badger.Txn, error) {
	txn := s.db.NewTransaction(true)
	for _, st := range part {
		for _, op := range st.ops {
			var err error
			if op.del {
				err = txn.Delete(op.key)
			} else {
				err = txn.SetEntry(badger.NewEntry(op.key, op.value).WithMeta(op.userMeta))
			}
			if err != nil {
				txn.Discard()
				return nil, err
			}
		}
	}
	if err := txn.SetEntry(badger.NewEntry(metaCounters, encodeMeta(part[len(part)-1].meta))); err != nil {
		txn.Discard()
		return nil, err
	}
	return txn, nil
}

// published makes a part committed in memory visible: cache, counters,
// replies.
func (s *Store) published(part []*staged) {
	for _, st := range part {
		s.cacheStaged(st)
	}
	s.answer(part)
}

// answer updates the counters for a part that is durable (in the log, or
// committed in memory) and replies to its writers.
func (s *Store) answer(part []*staged) {
	m := part[len(part)-1].meta
	s.metaStates.Store(m.states)
	s.metaJournal.Store(m.journal)
	s.metaParked.Store(m.parked)
	s.lastSeq.Store(m.seq)
	writes := 0
	for _, st := range part {
		if st.req.mut == nil {
			writes += len(st.records)
		}
		for _, rec := range st.records {
			s.noteGovernor(rec.Key.Governor)
		}
	}
	s.commits.Add(1)
	s.commitWrites.Add(uint64(writes))
	s.noteSnapshotsDue(part)
	s.repliedAt.Store(time.Now().UnixNano())
	mutated := false
	defer func() {
		if mutated {
			s.ackDone()
		}
	}()
	for _, st := range part {
		if st.req.mut != nil {
			mutated = true
			for _, fn := range st.after {
				fn()
			}
			st.req.done <- reply{val: st.result}
			continue
		}
		recs := make([]Record, len(st.records))
		for i, rec := range st.records {
			recs[i] = *rec
			recs[i].Value = nil
			recs[i].Seq = st.seqs[i]
		}
		st.req.done <- reply{recs: recs}
	}
}

// failed answers part with err after its transaction could not be built or
// committed.
func (s *Store) failed(part []*staged, err error) {
	if errors.Is(err, badger.ErrTxnTooBig) {
		// Only a single request that alone exceeds a transaction gets here.
		err = &FieldError{Field: "batch", Err: fmt.Errorf("%w: the writes exceed one transaction", ErrTooLarge)}
		part[0].req.done <- reply{err: err}
		return
	}
	// The commit's outcome is unknown: drop the keys from the cache, and
	// reload the counters from Badger. Sequence numbers and clocks only move
	// forward, so no op id or clock value is ever issued twice.
	s.log.Error("commit failed", "err", err, "requests", len(part))
	for _, st := range part {
		s.uncacheStaged(st)
	}
	last := part[len(part)-1].meta
	if s.wal == nil {
		var reloaded meta
		rerr := s.db.View(func(txn *badger.Txn) error {
			v, err := getValue(txn, metaCounters)
			if err != nil || v == nil {
				return err
			}
			reloaded, err = decodeMeta(v)
			return err
		})
		if rerr == nil {
			s.meta = reloaded
		} else {
			s.log.Error("reload counters after failed commit", "err", rerr)
		}
	}
	// On disk nothing of part was logged, and s.meta is as of the last
	// logged group, which Badger may not have yet: it stays.
	s.meta.seq = max(s.meta.seq, last.seq)
	s.meta.lamport = max(s.meta.lamport, last.lamport)
	s.meta.hlc = max(s.meta.hlc, last.hlc)
	if s.wal == nil {
		s.metaStates.Store(s.meta.states)
		s.metaJournal.Store(s.meta.journal)
		s.metaParked.Store(s.meta.parked)
	}
	err = fmt.Errorf("localcache: commit: %w", err)
	for _, st := range part {
		st.req.done <- reply{err: err}
	}
}
