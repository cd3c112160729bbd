package localcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// The sync side. The store is the push loop's Journal (its outbox) and the
// pull loop's Applier (syncer.Journal, syncer.Applier). What they change in
// Badger (acks, parked entries, remote records, change cursors) is a
// mutation: it goes through the committer and the write-ahead log exactly
// like a write, staged in order with the writes of its group, so a replay
// redoes it and a write staged after it sees it (docs/decisions/0004, 0008).
//
// Per state the record counts its journal entries still pending
// (Record.Pending); a remote record that arrives while some are is kept
// aside (kindAside) and settled when the last of them is acked or parked.

var (
	_ syncer.Journal      = (*Store)(nil)
	_ syncer.JournalDepth = (*Store)(nil)
	_ syncer.Applier      = (*Store)(nil)
)

// mutation is a change of the sync side, run by the committer. It reads
// and writes through tx and returns the value its caller gets back; on error
// nothing it wrote is kept.
type mutation func(tx *mutTx) (any, error)

// mutTx is what a mutation stages against and into. Committer only.
type mutTx struct {
	g       *groupView
	m       meta // the counters, changed in place
	recs    map[Key]*Record
	order   []Key // keys of recs, in first-touch order
	raw     map[string]kv
	ops     []kv
	changes []*Record // see staged.changes
	after   []func()  // see staged.after
}

// record returns the current record of k (possibly a tombstone), or nil.
func (tx *mutTx) record(k Key) (*Record, error) {
	if rec, ok := tx.recs[k]; ok {
		return rec, nil
	}
	return tx.g.record(k)
}

// get returns the value of a key that is not a state record, or nil.
func (tx *mutTx) get(key []byte) ([]byte, error) {
	if op, ok := tx.raw[string(key)]; ok {
		if op.del {
			return nil, nil
		}
		return op.value, nil
	}
	return tx.g.get(key)
}

func (tx *mutTx) set(key, value []byte) {
	op := kv{key: key, value: value}
	tx.raw[string(key)] = op
	tx.ops = append(tx.ops, op)
}

func (tx *mutTx) del(key []byte) {
	op := kv{key: key, del: true}
	tx.raw[string(key)] = op
	tx.ops = append(tx.ops, op)
}

func (tx *mutTx) touch(k Key) {
	if _, ok := tx.recs[k]; !ok {
		tx.order = append(tx.order, k)
	}
}

// putRecord stores rec as the record of its key, counting a state that
// comes to life or dies against prev (the record it replaces, or nil), and
// moves the node's clocks past rec's.
func (tx *mutTx) putRecord(prev, rec *Record) {
	tx.touch(rec.Key)
	tx.recs[rec.Key] = rec
	var userMeta byte
	if rec.Deleted {
		userMeta = userMetaTombstone
	}
	tx.ops = append(tx.ops, kv{key: stateKey(rec.Key), value: encodeRecord(rec), userMeta: userMeta})
	if prev == nil || prev.OpID != rec.OpID || prev.Version != rec.Version || prev.Deleted != rec.Deleted {
		tx.changes = append(tx.changes, rec)
	}
	tx.m.states += liveDelta(prev, rec)
	tx.m.lamport = max(tx.m.lamport, rec.Clock.Lamport)
	tx.m.hlc = max(tx.m.hlc, rec.Clock.HLC)
}

// removeRecord deletes the record of k (prev, which may be nil).
func (tx *mutTx) removeRecord(prev *Record, k Key) {
	tx.touch(k)
	tx.recs[k] = nil
	tx.ops = append(tx.ops, kv{key: stateKey(k), del: true})
	if prev != nil {
		tx.changes = append(tx.changes, &Record{Key: k, Deleted: true})
	}
	tx.m.states += liveDelta(prev, nil)
}

func liveDelta(prev, next *Record) int64 {
	live := func(r *Record) int64 {
		if r != nil && !r.Deleted {
			return 1
		}
		return 0
	}
	return live(next) - live(prev)
}

// stageMutation runs r's mutation against g. On success it advances *m.
func (s *Store) stageMutation(r *request, m *meta, g *groupView) (*staged, error) {
	tx := &mutTx{g: g, m: *m, recs: make(map[Key]*Record), raw: make(map[string]kv)}
	res, err := r.mut(tx)
	if err != nil {
		return nil, err
	}
	st := &staged{req: r, ops: tx.ops, changes: tx.changes, after: tx.after, result: res, meta: tx.m}
	for _, k := range tx.order {
		if rec := tx.recs[k]; rec != nil {
			st.records = append(st.records, rec)
		} else {
			st.removed = append(st.removed, k)
		}
	}
	*m = tx.m
	return st, nil
}

// mutate runs mut in the committer and returns its result once it is
// durable (like a write).
func (s *Store) mutate(ctx context.Context, mut mutation) (any, error) {
	rep := s.send(ctx, &request{ctx: ctx, mut: mut, done: make(chan reply, 1)})
	return rep.val, rep.err
}

// notifyJournal wakes the syncer (see Notify).
func (s *Store) notifyJournal() {
	select {
	case s.journalCh <- struct{}{}:
	default:
	}
}

// Notify returns the channel that receives a value after new journal
// entries are acknowledged to their writers (syncer.Journal).
func (s *Store) Notify() <-chan struct{} { return s.journalCh }

// Depth returns the number of journal entries pending (syncer.JournalDepth).
func (s *Store) Depth() int64 { return s.metaJournal.Load() }

// Pending returns up to limit journal entries with Seq > afterSeq, in
// journal order, each with the record and event its change produced
// (syncer.Journal). limit <= 0 means DefaultJournalLimit.
func (s *Store) Pending(ctx context.Context, afterSeq uint64, limit int) ([]syncer.Entry, error) {
	var out []syncer.Entry
	err := s.scanSeqs(ctx, kindJournal, afterSeq, limit, func(txn *badger.Txn, seq uint64, v []byte) error {
		j, err := decodeJournal(seq, v)
		if err != nil {
			return fmt.Errorf("journal %d: %w", seq, err)
		}
		evItem, err := txn.Get(eventKey(j.Key, j.Version))
		if err != nil {
			return fmt.Errorf("journal %d: event %s v%d: %w", seq, j.Key, j.Version, err)
		}
		ev, err := readEvent(evItem, j.Key)
		if err != nil {
			return fmt.Errorf("journal %d: %w", seq, err)
		}
		if ev.OpID != j.OpID {
			return fmt.Errorf("journal %d: %w: event %s v%d is op %s, not %s", seq, errCorrupt, j.Key, j.Version, ev.OpID, j.OpID)
		}
		out = append(out, syncer.Entry{
			Seq:         seq,
			BatchID:     j.BatchID,
			BaseVersion: j.BaseVersion,
			Record:      eventRecord(ev),
			Event:       toSyncEvent(ev),
			Time:        j.Time,
			Strict:      j.Strict,
			Fence:       j.Fence,
			Checks:      syncChecks(j.Checks), // txn.go
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: pending: %w", err)
	}
	return out, nil
}

// Ack removes pushed entries from the journal and settles their keys
// (syncer.Journal): a key with no entry left adopts the remote record (or
// the one kept aside, when newer); otherwise only the remote version is
// recorded. Entries acked as superseded, or committed by the shared store
// under other versions, take their changes' events and snapshots out of
// the history and list the hole for the pull loop; while a later write of
// the key is pending, they wait for the ack that settles it
// (superseded.go). Acking entries that are no longer pending changes
// nothing.
func (s *Store) Ack(ctx context.Context, acks []syncer.Ack) error {
	if len(acks) == 0 {
		return nil
	}
	remotes := make([]*Record, len(acks))
	superseded := false
	for i, a := range acks {
		if a.Remote.Version > 0 {
			remotes[i] = fromSyncRecord(a.Remote)
		}
		superseded = superseded || a.Outcome == syncer.OutcomeSuperseded
	}
	res, err := s.ack(ctx, acks, remotes, superseded)
	if errors.Is(err, errHistoryMoves) {
		res, err = s.ack(ctx, acks, remotes, true)
	}
	if err != nil {
		return fmt.Errorf("localcache: ack: %w", err)
	}
	if n := res.(int); n > 0 {
		if err := s.trimLedger(ctx); err != nil {
			s.log.Warn("conflict ledger retention failed (retried after the next conflict)", "err", err)
		}
	}
	return nil
}

// errHistoryMoves: an ack takes changes out of the history (superseded.go),
// and was made without the snapshot planner's mutex.
var errHistoryMoves = errors.New("an acked change leaves the history")

// ack makes Ack's mutation; it returns the number of conflict ledger
// records added. Changes leave the history (superseded.go) only when
// history is true: then no snapshot, mark or cleanup plan may interleave,
// and the snapshot planner's mutex is held. Without it, such an ack fails
// with errHistoryMoves and changes nothing.
func (s *Store) ack(ctx context.Context, acks []syncer.Ack, remotes []*Record, history bool) (any, error) {
	if history {
		s.snaps.work.Lock()
		defer s.snaps.work.Unlock()
	}
	return s.mutate(ctx, func(tx *mutTx) (any, error) {
		// last is, per key, the last ack of this call that removes an
		// entry of it: that one settles the key. An ack whose entries are
		// gone (acked before, or by an earlier ack of this call) removes
		// nothing.
		last := make(map[Key]int, len(acks))
		repeated := false // a key has more than one ack
		for i, a := range acks {
			if _, ok := last[Key(a.Key)]; ok {
				repeated = true
			}
			last[Key(a.Key)] = i
		}
		if repeated {
			clear(last)
			taken := make(map[uint64]bool)
			for i, a := range acks {
				for _, seq := range a.Seqs {
					if taken[seq] {
						continue
					}
					taken[seq] = true
					v, err := tx.get(journalKey(seq))
					if err != nil {
						return nil, err
					}
					if v != nil {
						last[Key(a.Key)] = i
					}
				}
			}
		}
		dropped := make(map[Key]uint64) // per key, the lowest version a lost change left
		through := make(map[Key]uint64) // per key, the version the hole it left goes up to
		logged := 0                     // conflict ledger entries added
		for i, a := range acks {
			k := Key(a.Key)
			if a.Conflict != nil {
				added, err := tx.putConflict(a.Conflict)
				if err != nil {
					return nil, err
				}
				if added {
					logged++
				}
			}
			js, err := tx.ackedEntries(k, a.Seqs)
			if err != nil {
				return nil, err
			}
			if len(js) == 0 {
				continue
			}
			removed := uint32(len(js))
			cur, err := tx.record(k)
			if err != nil {
				return nil, err
			}
			if cur == nil {
				return nil, fmt.Errorf("%w: %s has journal entries and no record", errCorrupt, k)
			}
			lost := a.Outcome == syncer.OutcomeSuperseded
			// The ack settles k when no later write of k is pending (nor
			// acked later in this call).
			settles := cur.journaled <= removed && last[k] == i
			drops, err := tx.historyDrops(k, js, lost || madeElsewhere(a, js), settles) // superseded.go
			if err != nil {
				return nil, err
			}
			if len(drops) > 0 && !history {
				return nil, errHistoryMoves
			}
			for _, d := range drops {
				found, err := tx.dropLost(k, d.version, d.op)
				if err != nil {
					return nil, err
				}
				if dv := dropped[k]; found && (dv == 0 || d.version < dv) {
					dropped[k] = d.version
				}
			}
			for _, j := range js {
				seq := j.Seq
				tx.del(journalKey(seq))
				if lost && (j.Strict || j.Confirm) {
					l := lostChange{key: k, remoteVersion: a.Remote.Version, remoteDeleted: a.Remote.Deleted, strict: j.Strict,
						conflicted: a.Conflict != nil && a.Conflict.Resolver != syncer.ResolverGaveWay}
					tx.after = append(tx.after, func() { s.noteLost(seq, l) })
				}
				if j.Strict && lost {
					if err := tx.txSettle(j.BatchID, wire.TxnGaveWay, string(wire.CodeVersionConflict), txGaveWayMessage); err != nil {
						return nil, err
					}
				} else if j.Strict {
					if err := tx.txSettle(j.BatchID, "", "", ""); err != nil {
						return nil, err
					}
				}
			}
			tx.m.journal -= int64(removed)
			rec := *cur
			rec.journaled -= min(rec.journaled, removed)
			if !settles {
				// A later write of k is still to be pushed (or acked
				// later in this call): keep the local record.
				rec.Pending = rec.journaled > 0
				rec.SyncedVersion = a.Remote.Version
				rec.SyncedAt = remoteTime(a.Remote)
				tx.putRecord(cur, &rec)
				// A hole the lost changes left is below the later
				// writes, up to the shared store's version.
				through[k] = a.Remote.Version
				continue
			}
			if err := tx.settle(cur, k, remotes[i]); err != nil {
				return nil, err
			}
			through[k] = 0
			if rec := tx.recs[k]; rec != nil {
				through[k] = rec.Version
			}
		}
		// Listed once every ack is in: the last ack of a key may remove
		// nothing (acked before), and the hole is an earlier one's.
		for k, lowest := range dropped {
			if err := tx.listHole(k, lowest, through[k]); err != nil { // superseded.go
				return nil, err
			}
		}
		return logged, nil
	})
}

// ackedEntries returns the journal entries of seqs (in journal order) that
// are still in the journal (the others were acked before), checking that
// they are k's.
func (tx *mutTx) ackedEntries(k Key, seqs []uint64) ([]JournalEntry, error) {
	var js []JournalEntry
	for _, seq := range seqs {
		if len(js) > 0 && seq <= js[len(js)-1].Seq {
			continue // named twice
		}
		v, err := tx.get(journalKey(seq))
		if err != nil {
			return nil, err
		}
		if v == nil {
			continue // acked before
		}
		j, err := decodeJournal(seq, v)
		if err != nil {
			return nil, fmt.Errorf("journal %d: %w", seq, err)
		}
		if j.Key != k {
			return nil, fmt.Errorf("ack of journal entry %d under %s: the entry is of %s", seq, k, j.Key)
		}
		js = append(js, j)
	}
	return js, nil
}

// settle makes the record of k, whose last journal entry just left the
// journal, the later of remote (nil: the remote has no record) and the
// record kept aside for k, and drops the one kept aside. Both are records
// the shared store held, so the later is the one of the higher version:
// the shared store's own order, also when their vector clocks are
// concurrent (a shared store written before changes had to have seen the
// record they replace, see syncer.Decide).
func (tx *mutTx) settle(cur *Record, k Key, remote *Record) error {
	next := remote
	aside, err := tx.aside(k)
	if err != nil {
		return err
	}
	if aside != nil {
		tx.del(asideKey(k))
		if next == nil || aside.Version > next.Version {
			next = aside
		}
	}
	if next == nil {
		tx.removeRecord(cur, k)
		return nil
	}
	tx.putRecord(cur, next)
	return nil
}

// aside returns the remote record kept aside for k, or nil.
func (tx *mutTx) aside(k Key) (*Record, error) {
	v, err := tx.get(asideKey(k))
	if err != nil || v == nil {
		return nil, err
	}
	rec, err := decodeRecord(k, v)
	if err != nil {
		return nil, fmt.Errorf("remote record of %s kept aside: %w", k, err)
	}
	rec.journaled, rec.Pending = 0, false
	return rec, nil
}

// Park moves entries the shared store rejected for good from the journal to
// the failed list, with their reason (syncer.Journal). The local record
// keeps its value; when its last pending entry is parked, a remote record
// kept aside for it is applied as ApplyRemote would now. An entry the shared
// store certainly did not apply (syncer.Parked.Remote: a fence rejection)
// instead settles its key, when it was the last pending, as an ack does,
// and its event leaves the history as a lost change's does (superseded.go).
func (s *Store) Park(ctx context.Context, parked []syncer.Parked) error {
	if len(parked) == 0 {
		return nil
	}
	if slices.ContainsFunc(parked, func(p syncer.Parked) bool { return p.Remote != nil }) {
		s.snaps.work.Lock() // changes may leave the history: see Store.ack
		defer s.snaps.work.Unlock()
	}
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		for _, p := range parked {
			v, err := tx.get(journalKey(p.Seq))
			if err != nil {
				return nil, err
			}
			if v == nil {
				continue
			}
			j, err := decodeJournal(p.Seq, v)
			if err != nil {
				return nil, fmt.Errorf("journal %d: %w", p.Seq, err)
			}
			tx.del(journalKey(p.Seq))
			tx.set(parkedKey(p.Seq), encodeParked(&ParkedEntry{JournalEntry: j, Reason: p.Reason, ParkedAt: p.Time.UnixNano(),
				FenceRejected: p.FenceRejected}))
			if j.Strict {
				code := wire.CodeUnavailable
				if p.FenceRejected != nil {
					code = wire.CodeFenceRejected
				}
				msg := fmt.Sprintf("the shared store refused it for good: %s (journal entry %d is on the failed list)", p.Reason, p.Seq)
				if err := tx.txSettle(j.BatchID, wire.TxnFailed, string(code), msg); err != nil {
					return nil, err
				}
			}
			tx.m.journal--
			tx.m.parked++
			cur, err := tx.record(j.Key)
			if err != nil {
				return nil, err
			}
			if cur == nil {
				return nil, fmt.Errorf("%w: %s has journal entries and no record", errCorrupt, j.Key)
			}
			rec := *cur
			rec.journaled -= min(rec.journaled, 1)
			rec.Pending = rec.journaled > 0
			if p.Remote != nil {
				// Certainly not applied (a fence rejection): the change
				// never happened in the shared store. When it was the last
				// pending, adopt what the shared store holds (fence.go).
				if err := tx.parkRejected(j, cur, &rec, parkedRemote(p.Remote)); err != nil {
					return nil, err
				}
				continue
			}
			if rec.journaled == 0 {
				aside, err := tx.aside(j.Key)
				if err != nil {
					return nil, err
				}
				if aside != nil {
					tx.del(asideKey(j.Key))
					if st := syncer.DecideApply(toSyncRecord(&rec), true, false, toSyncRecord(aside)); st.Applied() {
						if st == syncer.ApplyDiverged {
							if err := tx.noteDiverged(s.Origin(), &rec, aside); err != nil { // diverged.go
								return nil, err
							}
						}
						tx.putRecord(cur, aside)
						continue
					}
				}
			}
			tx.putRecord(cur, &rec)
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: park: %w", err)
	}
	return nil
}

// parkRejected settles the parking of j, which the shared store certainly
// did not apply (remote is its record there, Version 0 when it has none):
// j's event leaves k's history as a lost change's does, at once when j was
// the last pending write of its key (rec, cur's record without it), and
// the key adopts remote; while later writes made on j are pending, with
// the ack that settles them (historyDrops).
func (tx *mutTx) parkRejected(j JournalEntry, cur, rec, remote *Record) error {
	k := j.Key
	settles := rec.journaled == 0
	drops, err := tx.historyDrops(k, []JournalEntry{j}, true, settles) // superseded.go
	if err != nil {
		return err
	}
	var lowest uint64
	for _, d := range drops {
		found, err := tx.dropLost(k, d.version, d.op)
		if err != nil {
			return err
		}
		if found && (lowest == 0 || d.version < lowest) {
			lowest = d.version
		}
	}
	if !settles {
		tx.putRecord(cur, rec)
		return tx.listHole(k, lowest, remote.Version)
	}
	if err := tx.settle(cur, k, remote); err != nil {
		return err
	}
	var through uint64
	if r := tx.recs[k]; r != nil {
		through = r.Version
	}
	return tx.listHole(k, lowest, through)
}

// ParkedEntry is a journal entry the shared store rejected for good, in the
// failed list.
type ParkedEntry struct {
	JournalEntry
	Reason   string
	ParkedAt int64 // Unix nanoseconds
	// FenceRejected, when set, says the shared store rejected the entry's
	// fence (Current: the lock's last token there).
	FenceRejected *FenceRejectedError
}

// Failed returns up to limit parked entries with Seq > afterSeq, in journal
// order. limit <= 0 means DefaultJournalLimit.
func (s *Store) Failed(ctx context.Context, afterSeq uint64, limit int) ([]ParkedEntry, error) {
	var out []ParkedEntry
	err := s.scanSeqs(ctx, kindParked, afterSeq, limit, func(_ *badger.Txn, seq uint64, v []byte) error {
		p, err := decodeParked(seq, v)
		if err != nil {
			return fmt.Errorf("parked %d: %w", seq, err)
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: failed list: %w", err)
	}
	return out, nil
}

// ApplyRemote applies remote records (syncer.Applier): each is decided with
// syncer.DecideApply against the local record, in one durable local change
// together with their remote history and the governor's change cursor. A
// long history is stored in several (longhistory.go): its oldest part with
// the record, the rest after it, and then the cursor.
func (s *Store) ApplyRemote(ctx context.Context, b syncer.RemoteBatch) (syncer.ApplyResult, error) {
	recs := make([]*Record, len(b.Records))
	for i, r := range b.Records {
		if b.Governor != "" && r.Key.Governor != b.Governor {
			return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: record %s in a batch of governor %q", r.Key, b.Governor)
		}
		if err := validateKey("apply", Key(r.Key)); err != nil {
			return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: %w", err)
		}
		recs[i] = fromSyncRecord(r)
	}
	if b.Governor != "" {
		if err := validateKey("apply", Key{Governor: b.Governor, State: "x"}); err != nil {
			return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: %w", err)
		}
	}
	plans, unlock, err := s.planHistories(ctx, b) // bootstrap.go
	if err != nil {
		return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: %w", err)
	}
	long := make(map[int]uint64, len(plans.later)) // per record with a long history, where its first part ends
	for _, l := range plans.later {
		long[l.rec] = l.after
	}
	res, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		statuses := make([]syncer.ApplyStatus, len(recs))
		origin, renewed := s.Origin(), false
		for i, r := range recs {
			cur, err := tx.record(r.Key)
			if err != nil {
				return nil, err
			}
			if !renewed && originReused(origin, cur, r) { // origin.go
				tx.renewOrigin(s, origin, cur, r)
				renewed = true
			}
			var local syncer.Record
			if cur != nil {
				local = toSyncRecord(cur)
			}
			st := syncer.DecideApply(local, cur != nil, cur != nil && cur.journaled > 0, b.Records[i])
			statuses[i] = st
			if plans.first != nil && plans.first[i] != nil && historyStored(st) { // bootstrap.go
				if err := tx.storeHistory(plans.first[i]); err != nil {
					return nil, err
				}
				if after, ok := long[i]; ok { // the rest comes in later mutations (longhistory.go)
					if err := tx.listHole(r.Key, after+1, r.Version); err != nil {
						return nil, err
					}
				}
			}
			if sh, ok := plans.short[i]; ok && historyStored(st) { // read short: the rest at the next polls
				if err := tx.listHole(r.Key, sh.upto+1, r.Version); err != nil {
					return nil, err
				}
				if _, ok := long[i]; !ok { // else its last part moves the hole up
					if err := tx.holeFilled(r.Key, sh.from, sh.upto); err != nil {
						return nil, err
					}
				}
			}
			switch {
			case st.Applied():
				if st == syncer.ApplyDiverged {
					if err := tx.noteDiverged(s.Origin(), cur, r); err != nil { // diverged.go
						return nil, err
					}
				}
				tx.putRecord(cur, r)
			case st == syncer.ApplyPending:
				aside, err := tx.aside(r.Key)
				if err != nil {
					return nil, err
				}
				if aside == nil || r.Version > aside.Version { // the shared store's order, as in settle
					tx.set(asideKey(r.Key), encodeRecord(r))
				}
			}
		}
		if b.Governor != "" && len(long) == 0 { // else stored after the long histories' later parts
			tx.set(cursorKey(b.Governor), []byte(b.Cursor))
		}
		return syncer.ApplyResult{Statuses: statuses}, nil
	})
	unlock()
	if err != nil {
		return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: %w", err)
	}
	result := res.(syncer.ApplyResult)
	if err := s.storeLaterParts(ctx, b, plans.later, result.Statuses); err != nil {
		return syncer.ApplyResult{}, fmt.Errorf("localcache: apply remote: %w", err)
	}
	s.trimLedgerAfterApply(ctx, result)
	return result, nil
}

// Cursor returns the change cursor stored for governor (syncer.Applier).
func (s *Store) Cursor(ctx context.Context, governor string) (syncer.Cursor, error) {
	var c syncer.Cursor
	err := s.scan(ctx, func(txn *badger.Txn) error {
		v, err := getValue(txn, cursorKey(governor))
		c = syncer.Cursor(v)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("localcache: cursor %q: %w", governor, err)
	}
	return c, nil
}

// --- conversions between the store's records and the syncer's ---

// eventRecord is the record a local change produced, rebuilt from its event.
func eventRecord(ev Event) syncer.Record {
	return syncer.Record{
		Key:       syncer.Key(ev.Key),
		Value:     ev.Value,
		Version:   ev.ToVersion,
		Deleted:   ev.Action == ActionDelete,
		UpdatedAt: ev.Change.Time,
		Change:    syncer.ChangeMeta(ev.Change),
		Origin:    ev.Origin,
		OpID:      ev.OpID,
		Clock:     syncer.Clock(ev.Clock),
	}
}

func toSyncEvent(ev Event) syncer.Event {
	action, transition := ev.Action, ""
	if action != ActionDelete && action != ActionPut {
		action, transition = ActionPut, ev.Action // a transition is a put to the shared store
	}
	return syncer.Event{
		Transition:  transition,
		Key:         syncer.Key(ev.Key),
		Action:      action,
		FromVersion: ev.FromVersion,
		ToVersion:   ev.ToVersion,
		Value:       ev.Value,
		Change:      syncer.ChangeMeta(ev.Change),
		Origin:      ev.Origin,
		OpID:        ev.OpID,
		Clock:       syncer.Clock(ev.Clock),
	}
}

// toSyncRecord is r as the syncer sees it; it shares Value and the vector.
func toSyncRecord(r *Record) syncer.Record {
	out := syncer.Record{
		Key:       syncer.Key(r.Key),
		Value:     r.Value,
		Version:   r.Version,
		Deleted:   r.Deleted,
		UpdatedAt: r.UpdatedAt,
		Change:    syncer.ChangeMeta(r.Change),
		Origin:    r.Origin,
		OpID:      r.OpID,
		Clock:     syncer.Clock(r.Clock),
	}
	if r.SyncedAt != 0 {
		out.RemoteTime = time.Unix(0, r.SyncedAt)
	}
	return out
}

// fromSyncRecord is the local record of a remote record, with its own
// copies of Value and the vector (it is stored and cached).
func fromSyncRecord(r syncer.Record) *Record {
	r = r.Clone()
	if r.Deleted || len(r.Value) == 0 {
		r.Value = nil
	}
	return &Record{
		Key:           Key(r.Key),
		Value:         r.Value,
		Version:       r.Version,
		Deleted:       r.Deleted,
		UpdatedAt:     r.UpdatedAt,
		Change:        Change(r.Change),
		Origin:        r.Origin,
		OpID:          r.OpID,
		Clock:         Clock(r.Clock),
		SyncedVersion: r.Version,
		SyncedAt:      remoteTime(r),
	}
}

func remoteTime(r syncer.Record) int64 {
	if r.RemoteTime.IsZero() {
		return 0
	}
	return r.RemoteTime.UnixNano()
}
