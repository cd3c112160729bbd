package syncer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/tai-state/tai-state/conflict"
)

// Options configure a Syncer. The zero value is usable.
type Options struct {
	// Logger receives conflicts, parked entries and failures (nil: none).
	Logger *slog.Logger
	// Interval is how often Run makes a pass when nothing wakes it
	// (default 1s).
	Interval time.Duration
	// Backoff is the wait after passes that failed as a whole (the remote
	// or the journal down), and the time a key whose commit failed alone
	// is held back (default 100ms to 30s).
	Backoff Backoff
	// PageSize is how many journal entries one pass reads (default 1000),
	// at most half of them of one key. A pass reads more to complete an
	// atomic batch cut by the page, and reads past the entries of held
	// keys (up to maxScanPages pages).
	PageSize int
	// Concurrency is how many Commits a pass runs at once (default 4).
	Concurrency int
	// CommitTimeout bounds one Commit (default 30s).
	CommitTimeout time.Duration
	// MaxRetries is how many times a pass re-commits a change that met a
	// conflict it won before leaving it to the next pass (default 3).
	MaxRetries int
	// Resolvers settle true conflicts (a change made on a remote version
	// that another node's change has since replaced, neither having seen
	// the other): the resolver of the change's governor decides whether
	// the local change wins, loses, or is replaced by a merged value (see
	// package conflict; a *conflict.Set built from the sidecar's
	// configuration is one). Nil: last write wins (the later hybrid
	// logical clock, then the greater origin). Strict entries lose a true
	// conflict whatever the resolver says.
	Resolvers conflict.Resolver
	// StormThreshold and StormWindow define a conflict storm: more than
	// StormThreshold true conflicts of one state within StormWindow
	// (defaults DefaultStormThreshold, DefaultStormWindow). Each storm is
	// counted (Stats.ConflictStorms) and logged once.
	StormThreshold int
	StormWindow    time.Duration
	// OnPass, when set, is called at the start of every pass (tracing and
	// metrics): the pass runs with the context it returns, and end is
	// called with the pass's report and error when it is over.
	OnPass func(ctx context.Context) (passCtx context.Context, end func(Report, error))
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	o.Backoff = o.Backoff.withDefaults()
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 30 * time.Second
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 3
	}
	if o.StormThreshold <= 0 {
		o.StormThreshold = DefaultStormThreshold
	}
	if o.StormWindow <= 0 {
		o.StormWindow = DefaultStormWindow
	}
	if set, ok := o.Resolvers.(*conflict.Set); ok && set == nil {
		o.Resolvers = nil // a nil *conflict.Set: no resolvers, as documented
	}
	return o
}

// Syncer pushes the journal to the remote. New starts nothing: call SyncOnce
// for one pass, or Run for the background loop. It is safe for concurrent
// use; passes never overlap.
type Syncer struct {
	journal Journal
	remote  Remote
	opts    Options
	log     *slog.Logger

	pass sync.Mutex // held for a whole pass
	// suspects are keys whose commit failed transiently while others
	// succeeded: they are committed alone until they succeed, so that one
	// key the remote keeps failing does not hold back the keys batched
	// with it. Guarded by pass.
	suspects map[Key]bool
	// holds are keys held back after failing alone: passes skip their
	// entries (and the atomic batches holding them) until the hold ends,
	// so that one key the remote keeps failing holds back neither the
	// journal after it nor the loop. Guarded by pass.
	holds map[Key]*hold
	// renumbered remembers this node's changes committed renumbered in
	// earlier passes, for the checks of transactions pushed later (see
	// retargetChecks). Guarded by pass.
	renumbered renumberings

	mu     sync.Mutex // guards stats, oldest and storms
	stats  Stats
	storms storms
	oldest time.Time // journal time of the oldest pending entry seen (zero: none)
}

// New returns a Syncer that drains journal into remote.
func New(journal Journal, remote Remote, opts Options) *Syncer {
	opts = opts.withDefaults()
	return &Syncer{journal: journal, remote: remote, opts: opts, log: opts.Logger, suspects: make(map[Key]bool),
		holds: make(map[Key]*hold)}
}

// hold is a key held back: its consecutive failures, and until when.
type hold struct {
	failures int
	until    time.Time
}

// maxScanPages bounds how far past held entries a pass reads, in pages:
// entries beyond wait for the holds to end.
const maxScanPages = 16

// Stats are the push loop's counters, for the sidecar's stats and metrics.
type Stats struct {
	QueueDepth     int64         // journal entries pending (as of the last pass, or live with JournalDepth)
	OldestPending  time.Duration // age of the oldest pending entry (0: none)
	Passes         uint64        // SyncOnce calls
	Commits        uint64        // remote commits that returned results
	RemoteCalls    uint64        // remote calls made, failed ones included
	EntriesPushed  uint64        // entries acked as pushed or already applied
	AlreadyApplied uint64        // of those, entries the remote already had
	Conflicts      uint64        // conflicts met (rebases onto the syncer's own writes excluded)
	Superseded     uint64        // entries that lost a conflict
	Parked         uint64        // entries parked in the failed list
	LastError      string        // the last failure ("" : none since start)
	LastErrorTime  time.Time
	LastSuccess    time.Time // end of the last pass that failed nothing

	// ConflictsByResolver counts the true conflicts decided, by the
	// decision's resolver (e.g. "lww", "merge>lww", "strict").
	ConflictsByResolver map[string]uint64
	ConflictStorms      uint64 // conflict storms detected (see Options.StormThreshold)
}

// Stats returns a snapshot of the counters.
func (s *Syncer) Stats() Stats {
	s.mu.Lock()
	st := s.stats
	st.ConflictsByResolver = maps.Clone(st.ConflictsByResolver)
	if !s.oldest.IsZero() {
		st.OldestPending = time.Since(s.oldest)
	}
	s.mu.Unlock()
	if d, ok := s.journal.(JournalDepth); ok {
		st.QueueDepth = d.Depth()
		if st.QueueDepth == 0 {
			st.OldestPending = 0
		}
	}
	return st
}

// Report is what one pass did.
type Report struct {
	Entries        int  // pending entries read
	Commits        int  // remote commits that returned results
	Pushed         int  // entries acked as pushed
	AlreadyApplied int  // entries acked as already in the remote
	Superseded     int  // entries that lost a conflict (acked; the remote record was adopted)
	Conflicts      int  // conflicts met
	Parked         int  // entries parked for good
	Blocked        int  // entries left pending after transient failures
	Held           int  // entries skipped: their keys are held back after failing
	More           bool // the page was full: more entries wait
}

// Done is how many entries left the journal in the pass.
func (r Report) Done() int { return r.Pushed + r.AlreadyApplied + r.Superseded + r.Parked }

// Run pushes until ctx is done: a pass when the journal signals new entries,
// at least every Options.Interval (and when a held key's hold ends), at once
// again while a pass leaves more entries, and after a pass that failed as a
// whole (the remote or the journal down, not one key) a capped exponential
// backoff with jitter (new entries do not cut it short). It returns nil when
// ctx is done.
func (s *Syncer) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.journal.Notify():
		}
		rep, stalled, err := s.syncPass(ctx, false)
		if ctx.Err() != nil {
			return nil
		}
		var wait time.Duration
		switch {
		case stalled:
			failures++
			wait = s.opts.Backoff.Delay(failures)
			if err != nil {
				s.log.Warn("push pass failed", "err", err, "failures", failures, "retry_in", wait)
			}
		case rep.More:
			failures = 0
			wait = 0
		default:
			failures = 0
			wait = s.opts.Interval
			if d := s.nextRelease(time.Now()); d > 0 {
				wait = min(wait, d)
			}
		}
		timer.Reset(wait) // timers of Go 1.23+: no stale tick survives Reset
		if failures > 0 {
			// Back off: new entries do not wake the loop early.
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
			timer.Reset(0)
		}
	}
}

// Flush makes passes until one finds nothing more to push, or fails, or ctx
// is done: the final flush at shutdown. Keys held back are tried too. It
// returns the last pass's error, or ctx's.
func (s *Syncer) Flush(ctx context.Context) error {
	for {
		rep, _, err := s.syncPass(ctx, true)
		if err != nil {
			return err
		}
		if rep.Blocked > 0 {
			return fmt.Errorf("push: %d entries left pending", rep.Blocked)
		}
		if !rep.More {
			return nil
		}
	}
}

// part is one key's share of a unit: consecutive journal entries of the key,
// coalesced into one Change.
type part struct {
	key     Key
	entries []Entry
	// base is the remote version to commit on and rebased says the
	// entries are renumbered on top of it (after a conflict the change won,
	// or a remote version moved by this syncer's own earlier resolution).
	base    uint64
	rebased bool
	remote  Record // the remote record rebased onto
	// merged, when set, is the value a resolver merged from both sides
	// after a conflict: it replaces the newest entry's value in the record
	// pushed (and in its event, so the event at the record's version holds
	// the record's value).
	merged []byte
	// conflict is the ledger record of the conflict the change won (or
	// was merged in): committed with the change and acked with it.
	conflict *ConflictRecord
	// check marks a transaction's version check of a key it does not
	// write: no entries, committed as a CheckOnly change on base (and
	// checkOp, the op that made that version, when known).
	check   bool
	checkOp string
}

// unit is what must be committed together: one part (a run of one key's
// entries), or one part per key of an atomic local batch.
type unit struct {
	atomic   bool
	parts    []*part
	attempts int
	solo     bool // commit alone (a batch it was in was rejected without naming a key)
	tag      int  // nonzero: commit only with the units of the same tag (half of a failed batch)
	done     bool
}

func (u *unit) keys() []Key {
	ks := make([]Key, len(u.parts))
	for i, p := range u.parts {
		ks[i] = p.key
	}
	return ks
}

func (u *unit) seqs() int {
	n := 0
	for _, p := range u.parts {
		n += len(p.entries)
	}
	return n
}

// change builds p's Change: the newest record and one event per entry;
// rebased, the events are renumbered from base and the clocks merged with
// the remote record's; merged, the newest record and event carry the
// merged value.
func (p *part) change() Change {
	if p.check {
		return Change{Key: p.key, BaseVersion: p.base, CheckOnly: true, Record: Record{OpID: p.checkOp}}
	}
	last := p.entries[len(p.entries)-1]
	rec := last.Record.Clone()
	rec.Key = p.key
	evs := make([]Event, len(p.entries))
	for i, e := range p.entries {
		evs[i] = e.Event.Clone()
		evs[i].Key = p.key
	}
	if p.rebased {
		v := p.base
		for i := range evs {
			evs[i].FromVersion = v
			v++
			evs[i].ToVersion = v
		}
		rec.Version = v
		// Each event comes after the remote record now, each after the one
		// before (their Lamport times rise from the remote's), and the last
		// one makes the record: a change made on it (on another node, which
		// pulled it) looks its base up by this version and vector clock.
		prev := p.remote.Clock
		for i := range evs {
			evs[i].Clock = rebaseClock(evs[i].Clock, prev)
			prev = evs[i].Clock
		}
		rec.Clock = prev.Clone()
	}
	if p.merged != nil {
		rec.Value = append([]byte(nil), p.merged...)
		rec.Deleted = false
		ev := &evs[len(evs)-1]
		ev.Action, ev.Transition = ActionPut, ""
		ev.Value = rec.Value
	}
	return Change{Key: p.key, BaseVersion: p.base, Record: rec, Events: evs, Conflict: p.conflict, Fence: last.Fence}
}

// rebaseClock is clock c of a change committed on top of the remote record
// whose clock is remote: its Lamport clock after the remote's, its vector
// clock merged with the remote's (a new map: c's is not modified).
func rebaseClock(c, remote Clock) Clock {
	c.Lamport = max(c.Lamport, remote.Lamport+1)
	c.Vector = conflict.Vector(c.Vector).Merge(remote.Vector)
	return c
}

func seqsOf(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

// passState is one pass's bookkeeping.
type passState struct {
	rep     Report
	queues  map[Key][]*unit
	order   []*unit
	blocked map[Key]bool
	// failedAlone are the keys whose commit failed alone, or that met
	// conflicts past Options.MaxRetries, with the error. When other
	// entries of the pass got through, they are held back after it
	// (holdBack); when none did, the remote may be down for all keys, and
	// the pass stalled.
	failedAlone map[Key]error
	// stalled says the journal failed to take the pass's acks or parked
	// entries (see also unheldLeft).
	stalled bool
	// oldestHeld is the journal time of the first entry skipped as held
	// (0: none).
	oldestHeld int64
	acks       []Ack
	parked     []Parked
	errs       []error
	// transient is the last transient commit error: the pass's error if
	// entries stay blocked.
	transient error
	tags      int // for splitting failed batches
}

// SyncOnce makes one push pass: it reads a page of pending entries, plans
// them into changes (coalescing each key's consecutive entries, keeping
// atomic local batches whole), and commits them in rounds (each round
// commits every key's next change, batched within the remote's Limits and
// several commits at once), acking or parking the entries after each round.
//
// The error is non-nil when the journal failed, or when commits failed
// transiently (the entries concerned stay pending; their keys were blocked
// for the rest of the pass, other keys went on). Entries rejected for good
// are parked, not errors.
func (s *Syncer) SyncOnce(ctx context.Context) (Report, error) {
	rep, _, err := s.syncPass(ctx, false)
	return rep, err
}

// syncPass is SyncOnce, also saying whether the pass failed as a whole
// (entries stayed pending that no hold accounts for): Run backs off then.
// With ignoreHolds it pushes held keys too (the final flush).
func (s *Syncer) syncPass(ctx context.Context, ignoreHolds bool) (Report, bool, error) {
	if s.opts.OnPass == nil {
		return s.syncOnce(ctx, ignoreHolds)
	}
	ctx, end := s.opts.OnPass(ctx)
	rep, stalled, err := s.syncOnce(ctx, ignoreHolds)
	end(rep, err)
	return rep, stalled, err
}

func (s *Syncer) syncOnce(ctx context.Context, ignoreHolds bool) (Report, bool, error) {
	s.pass.Lock()
	defer s.pass.Unlock()
	s.mu.Lock()
	s.stats.Passes++
	s.mu.Unlock()

	ps := &passState{queues: make(map[Key][]*unit), blocked: make(map[Key]bool), failedAlone: make(map[Key]error)}
	entries, more, err := s.read(ctx, ps, time.Now(), ignoreHolds)
	if err != nil {
		s.noteError(err)
		return Report{}, true, err
	}
	ps.rep.Entries = len(entries)
	ps.rep.More = more
	s.plan(ps, entries)

	for ctx.Err() == nil {
		ready := s.ready(ps)
		if len(ready) == 0 {
			break
		}
		batches := s.pack(ready)
		outs := s.commitAll(ctx, batches)
		allTransient := true
		for _, o := range outs {
			if !IsTransient(o.err) {
				allTransient = false
			}
		}
		// Several commits and every one failed: the remote is down, not
		// one key. A lone failed commit is split in two to tell.
		outage := allTransient && len(batches) > 1
		before := ps.rep
		for i, b := range batches {
			s.settle(ctx, ps, b, outs[i], outage)
		}
		if err := s.flushAcks(ctx, ps); err != nil {
			// Not acked: the entries stay pending (the next pass finds the
			// pushed ones already applied).
			ps.rep.Blocked += ps.rep.Done() - before.Done()
			ps.rep.Pushed, ps.rep.AlreadyApplied = before.Pushed, before.AlreadyApplied
			ps.rep.Superseded, ps.rep.Parked = before.Superseded, before.Parked
			ps.errs = append(ps.errs, err)
			ps.stalled = true
			break
		}
		if outage {
			break // leave the rest to the next pass
		}
	}
	// Everything not settled stays pending.
	for _, u := range ps.order {
		if !u.done {
			ps.rep.Blocked += u.seqs()
		}
	}
	if ps.rep.Blocked > 0 && ps.transient != nil {
		ps.errs = append(ps.errs, ps.transient)
	}
	if err := ctx.Err(); err != nil && ps.rep.Blocked > 0 {
		ps.errs = append(ps.errs, err)
	}
	if ps.rep.Done() == 0 {
		// Nothing got through: the remote may be down for every key, and
		// no key is to blame, unless it was held back before (it failed
		// alone while others got through) and is failing still.
		maps.DeleteFunc(ps.failedAlone, func(k Key, _ error) bool { return s.holds[k] == nil })
	}
	s.holdBack(ps, time.Now())
	s.finish(ps, entries)
	stalled := ps.stalled || unheldLeft(ps)
	if len(ps.errs) > 0 {
		err := fmt.Errorf("push: %w", errors.Join(ps.errs...))
		s.noteError(err)
		return ps.rep, stalled, err
	}
	return ps.rep, stalled, nil
}

// holdBack holds the keys that failed alone in the pass back, for longer
// after each consecutive failure (Options.Backoff), and forgets holds long
// over (their keys' entries left the journal some other way).
func (s *Syncer) holdBack(ps *passState, now time.Time) {
	for k, err := range ps.failedAlone {
		h := s.holds[k]
		if h == nil {
			h = &hold{}
			s.holds[k] = h
		}
		h.failures++
		wait := s.opts.Backoff.Delay(h.failures)
		h.until = now.Add(wait)
		s.log.Warn("push of a state failed, holding it back", "key", k.String(), "failures", h.failures, "retry_in", wait,
			"err", err)
	}
	for k, h := range s.holds {
		if now.Sub(h.until) > s.opts.Backoff.Max+s.opts.Interval {
			delete(s.holds, k)
		}
	}
}

// nextRelease returns how long until the first hold ends (0: none).
func (s *Syncer) nextRelease(now time.Time) time.Duration {
	s.pass.Lock()
	defer s.pass.Unlock()
	var next time.Duration
	for _, h := range s.holds {
		if d := h.until.Sub(now); d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	return next
}

// unheldLeft reports whether the pass left entries pending that their keys
// being held back does not account for: a unit not done none of whose keys
// failed alone, nor follows (in a key's queue) one that did.
func unheldLeft(ps *passState) bool {
	held := make(map[Key]bool, len(ps.failedAlone))
	for k := range ps.failedAlone {
		held[k] = true
	}
	for _, u := range ps.order {
		if u.done {
			continue
		}
		keys := u.keys()
		if !slices.ContainsFunc(keys, func(k Key) bool { return held[k] }) {
			return true
		}
		for _, k := range keys {
			held[k] = true
		}
	}
	return false
}

// read returns a page of pending entries, completed so that the last atomic
// batch in it is whole, and whether more may wait. It skips the entries of
// keys held back at now (unless ignoreHolds), with the atomic batches that
// write or check them and every later entry of those batches' keys (a key's
// entries are pushed in journal order, after the transactions checking it),
// counting them in ps (Report.Held, oldestHeld). It takes at most half a
// page of one key's entries, deferring the rest of that key the same way,
// so that a key stuck with a page of entries leaves room for the others. It
// reads at most maxScanPages pages: entries past them wait for the next pass.
func (s *Syncer) read(ctx context.Context, ps *passState, now time.Time, ignoreHolds bool) ([]Entry, bool, error) {
	skip := make(map[Key]bool)     // held, or behind a held entry
	deferred := make(map[Key]bool) // over the per-key share, or behind such an entry
	if !ignoreHolds {
		for k, h := range s.holds {
			if now.Before(h.until) {
				skip[k] = true
			}
		}
	}
	perKey := make(map[Key]int)
	share := max(s.opts.PageSize/2, 1)
	var es, group []Entry
	take := func() { // group is one whole atomic batch, or one entry
		var keys []Key
		for _, e := range group {
			keys = append(keys, e.Key())
			for _, c := range e.Checks {
				keys = append(keys, c.Key)
			}
		}
		switch {
		case slices.ContainsFunc(keys, func(k Key) bool { return skip[k] }):
			for _, k := range keys {
				skip[k] = true
			}
			if ps.rep.Held == 0 {
				ps.oldestHeld = group[0].Time
			}
			ps.rep.Held += len(group)
		case slices.ContainsFunc(keys, func(k Key) bool { return deferred[k] || perKey[k] >= share }):
			for _, k := range keys {
				deferred[k] = true
			}
		default:
			for _, e := range group {
				perKey[e.Key()]++
			}
			es = append(es, group...)
		}
		group = group[:0]
	}
	var after uint64
	for read := 0; ; {
		// A page, then small steps to end the group it cuts.
		const step = 64
		n := max(s.opts.PageSize-len(es)-len(group), step)
		page, err := s.journal.Pending(ctx, after, n)
		if err != nil {
			return nil, false, fmt.Errorf("read journal: %w", err)
		}
		for _, e := range page {
			if len(group) > 0 && groupID(e) != groupID(group[0]) {
				take()
				if len(es) >= s.opts.PageSize {
					return es, true, nil
				}
			}
			group = append(group, e)
		}
		if len(page) < n {
			if len(group) > 0 {
				take()
			}
			return es, len(deferred) > 0, nil
		}
		after = page[len(page)-1].Seq
		if read += len(page); read >= maxScanPages*s.opts.PageSize {
			// Mostly held entries: push what was found (the group cut
			// here waits) and read again from the head.
			return es, len(es) > 0, nil
		}
	}
}

func groupID(e Entry) string {
	if e.BatchID == "" {
		return "#" + strconv.FormatUint(e.Seq, 10)
	}
	return e.BatchID
}

// plan turns entries into units, queued per key in journal order.
func (s *Syncer) plan(ps *passState, entries []Entry) {
	lim := s.remote.Limits()
	open := make(map[Key]*unit) // each key's run that may still grow
	add := func(u *unit) {
		ps.order = append(ps.order, u)
		for _, k := range u.keys() {
			ps.queues[k] = append(ps.queues[k], u)
		}
	}
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && groupID(entries[j]) == groupID(entries[i]) {
			j++
		}
		group := entries[i:j]
		i = j
		keys := make(map[Key]*part)
		var parts []*part
		for _, e := range group {
			p := keys[e.Key()]
			if p == nil || !contiguous(p, e) {
				p = &part{key: e.Key(), base: e.BaseVersion}
				keys[e.Key()] = p
				parts = append(parts, p)
			}
			p.entries = append(p.entries, e)
		}
		for _, c := range checkParts(group) { // txncheck.go
			if v, ok := s.renumbered.get(c.key, c.base, c.checkOp); ok {
				c.base = v
			}
			parts = append(parts, c)
		}
		if len(parts) > 1 {
			// An atomic local batch: one unit, ending every run it touches.
			for _, p := range parts {
				delete(open, p.key)
			}
			add(&unit{atomic: true, parts: parts})
			continue
		}
		p := parts[0]
		if u := open[p.key]; u != nil && canJoin(u.parts[0], p, lim) {
			u.parts[0].entries = append(u.parts[0].entries, p.entries...)
			continue
		}
		u := &unit{parts: []*part{p}}
		open[p.key] = u
		add(u)
	}
}

func contiguous(p *part, e Entry) bool {
	return p.entries[len(p.entries)-1].Record.Version == e.BaseVersion
}

// canJoin says whether run q can be coalesced after run p within lim. The
// run must fit with room to spare for the conflict record (one more write
// of up to MaxRecordBytes) that it carries once it wins a conflict: a run
// that fits only without it would be refused as too large, and parked,
// for being coalesced.
func canJoin(p, q *part, lim Limits) bool {
	if !contiguous(p, q.entries[0]) || p.entries[0].Strict != q.entries[0].Strict || fenced(p) || fenced(q) {
		return false
	}
	const record, conflict = 1, 1 // writes besides the events
	if lim.MaxWrites > 0 && record+len(p.entries)+len(q.entries)+conflict > lim.MaxWrites {
		return false
	}
	if lim.MaxBatchBytes > 0 {
		joined := &part{key: p.key, base: p.base, entries: append(p.entries[:len(p.entries):len(p.entries)], q.entries...)}
		if BatchSize(Batch{Changes: []Change{joined.change()}})+lim.MaxRecordBytes > lim.MaxBatchBytes {
			return false
		}
	}
	return true
}

// ready returns the units at the head of every queue they are in, whose
// keys are not blocked, in journal order.
func (s *Syncer) ready(ps *passState) []*unit {
	var out []*unit
	for _, u := range ps.order {
		if u.done {
			continue
		}
		ok := true
		for _, k := range u.keys() {
			q := ps.queues[k]
			if ps.blocked[k] || len(q) == 0 || q[0] != u {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, u)
		}
	}
	return out
}

// batch is one Commit: units and their changes, in order.
type batch struct {
	units   []*unit
	changes []Change
	owner   []*part // owner[i] made changes[i]
	atomic  bool
	// writes and bytes are Writes and BatchSize of the changes, kept as
	// units join so that packing stays linear.
	writes, bytes int
}

// pack groups ready units into commits: an atomic unit alone, suspects and
// solo units alone, the rest together up to the remote's Limits.
func (s *Syncer) pack(ready []*unit) []*batch {
	lim := s.remote.Limits()
	var out []*batch
	var cur *batch
	tagged := make(map[int]*batch)
	for _, u := range ready {
		b := &batch{units: []*unit{u}, atomic: u.atomic}
		for _, p := range u.parts {
			b.changes = append(b.changes, p.change())
			b.owner = append(b.owner, p)
		}
		b.writes, b.bytes = Writes(Batch{Changes: b.changes}), BatchSize(Batch{Changes: b.changes})
		alone := u.atomic || u.solo
		for _, k := range u.keys() {
			alone = alone || s.suspects[k]
		}
		if alone {
			out = append(out, b)
			continue
		}
		if u.tag != 0 {
			if t := tagged[u.tag]; t != nil {
				t.units = append(t.units, u)
				t.changes = append(t.changes, b.changes...)
				t.owner = append(t.owner, b.owner...)
				t.writes += b.writes
				t.bytes += b.bytes
				continue
			}
			tagged[u.tag] = b
			out = append(out, b)
			continue
		}
		if cur != nil {
			if (lim.MaxWrites <= 0 || cur.writes+b.writes <= lim.MaxWrites) &&
				(lim.MaxBatchBytes <= 0 || cur.bytes+b.bytes <= lim.MaxBatchBytes) {
				cur.units = append(cur.units, u)
				cur.changes = append(cur.changes, b.changes...)
				cur.owner = append(cur.owner, b.owner...)
				cur.writes += b.writes
				cur.bytes += b.bytes
				continue
			}
		}
		cur = b
		out = append(out, b)
	}
	return out
}

type outcome struct {
	results []Result
	err     error
}

// commitAll commits the batches, Options.Concurrency at a time, and waits
// for all of them.
func (s *Syncer) commitAll(ctx context.Context, batches []*batch) []outcome {
	outs := make([]outcome, len(batches))
	sem := make(chan struct{}, s.opts.Concurrency)
	var wg sync.WaitGroup
	for i, b := range batches {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, s.opts.CommitTimeout)
			defer cancel()
			res, err := s.remote.Commit(cctx, Batch{Changes: b.changes, Atomic: b.atomic})
			outs[i] = outcome{res, err}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	s.stats.RemoteCalls += uint64(len(batches))
	for _, o := range outs {
		if o.err == nil || errors.Is(o.err, ErrConflict) {
			s.stats.Commits++
		}
	}
	s.mu.Unlock()
	return outs
}

// settle handles the outcome of one commit of ps's round. outage says that
// every commit of the round failed transiently.
func (s *Syncer) settle(ctx context.Context, ps *passState, b *batch, out outcome, outage bool) {
	err := out.err
	if decided(err) && len(out.results) != len(b.changes) {
		err = Errorf("commit", Key{}, ErrPermanent, "remote returned %d results for %d changes", len(out.results), len(b.changes))
	}
	switch {
	case decided(err):
		ps.rep.Commits++
		if b.atomic {
			s.settleAtomic(ctx, ps, b.units[0], b, out.results)
			return
		}
		for i, res := range out.results {
			p := b.owner[i]
			u := b.units[unitIndex(b, p)]
			switch res.Status {
			case Applied, AlreadyApplied:
				if err := s.ackPart(ctx, ps, p, res, len(u.parts) == 1); err != nil {
					s.originShared(ctx, ps, u, p, err) // applied.go
					continue
				}
				s.finishUnit(ps, u)
			case Conflict:
				s.resolve(ctx, ps, u, []*part{p}, []Result{res})
			case FenceRejected:
				s.parkRejected(ps, u, []*part{p}, []Result{res}, res.Rejected) // fence.go
			default: // Skipped: not without Atomic; leave it to the next pass
				for _, k := range u.keys() {
					ps.blocked[k] = true
				}
			}
		}
	case IsTransient(err):
		ps.transient = err
		if !outage && len(b.units) > 1 {
			// Maybe one key fails the whole batch: split it in two and
			// try the halves next round (a bisection), unless the
			// remote turns out to be down.
			ps.tags += 2
			for i, u := range b.units {
				u.tag = ps.tags - 1
				if i >= len(b.units)/2 {
					u.tag = ps.tags
				}
			}
			s.log.Debug("push commit failed, splitting it", "changes", len(b.changes), "err", err)
			return
		}
		for _, u := range b.units {
			for _, k := range u.keys() {
				ps.blocked[k] = true
				if !outage {
					// Failing alone while others got through: commit it
					// alone until it succeeds, and hold it back for a
					// while.
					s.suspects[k] = true
					ps.failedAlone[k] = err
				}
			}
		}
		s.log.Debug("push commit failed, will retry", "changes", len(b.changes), "err", err)
	default:
		// Permanent (or a malformed reply): find the culprit.
		var re *Error
		culprit := -1
		if errors.As(err, &re) && re.Key != (Key{}) {
			for _, p := range b.owner {
				if p.key == re.Key {
					culprit = unitIndex(b, p)
					break
				}
			}
		}
		switch {
		case culprit >= 0:
			s.park(ps, b.units[culprit], err)
		case len(b.units) == 1:
			s.park(ps, b.units[0], err)
		default:
			for _, u := range b.units {
				u.solo = true // isolate the culprit next round
			}
		}
	}
}

func unitIndex(b *batch, p *part) int {
	for i, u := range b.units {
		for _, q := range u.parts {
			if q == p {
				return i
			}
		}
	}
	return -1
}

// ackPart acks p's entries after res (Applied or AlreadyApplied). With
// mayPark, an AlreadyApplied change the remote holds nowhere is not acked:
// the error to park it with is returned (ackApplied).
func (s *Syncer) ackPart(ctx context.Context, ps *passState, p *part, res Result, mayPark bool) *OriginSharedError {
	if res.Status == AlreadyApplied {
		return s.ackApplied(ctx, ps, p.key, p.entries, res.Remote, res.Exists, p.conflict, mayPark)
	}
	ps.acks = append(ps.acks, Ack{Key: p.key, Seqs: seqsOf(p.entries), Outcome: OutcomePushed, Remote: res.Remote, Conflict: p.conflict})
	ps.rep.Pushed += len(p.entries)
	if p.rebased && p.merged == nil {
		s.retargetChecks(ps, p, res.Remote.Version)
	}
	return nil
}

// retargetChecks moves the checks of the version p's last entry made
// locally to the version it was committed at: p was renumbered on top of
// the remote's record (a rebase, or a conflict it won whole), and the state
// is still what those transactions saw. A merged p is not: its checks stay,
// and fail. The checks later in p's key's queue in this pass move now; the
// version is remembered for the transactions of later passes (made before
// the local store took the committed version in), while the process runs.
func (s *Syncer) retargetChecks(ps *passState, p *part, committed uint64) {
	last := p.entries[len(p.entries)-1].Record
	s.renumbered.add(p.key, last.Version, last.OpID, committed)
	for _, u := range ps.queues[p.key] {
		for _, q := range u.parts {
			if q.check && q.key == p.key && q.base == last.Version && q.checkOp == last.OpID {
				q.base = committed
			}
		}
	}
}

// ackApplied acks entries of k that the remote already has (its record is
// remote) with the decision made over them: decided, or else the one an
// earlier attempt committed whose reply was lost (lostDecision). Without a
// decision it places them (applied.go): when the remote holds them nowhere
// and mayPark, it acks nothing and returns the error to park them with;
// otherwise it acks them anyway, with a warning.
func (s *Syncer) ackApplied(ctx context.Context, ps *passState, k Key, entries []Entry, remote Record, exists bool,
	decided *ConflictRecord, mayPark bool) *OriginSharedError {
	if decided == nil {
		decided = s.lostDecision(ctx, k, entries, remote, exists)
	}
	place := placedHere
	if decided == nil {
		place = s.placeApplied(ctx, k, entries, remote, exists)
	}
	if place == placedNowhere {
		err := &OriginSharedError{Key: k, OpID: entries[len(entries)-1].OpID(), Remote: remote}
		if mayPark {
			return err
		}
		s.log.Warn("push: a change the shared store holds nowhere is acked with the changes it goes with", "err", err)
		place = placedHere
	}
	ps.acks = append(ps.acks, Ack{Key: k, Seqs: seqsOf(entries), Outcome: OutcomeAlreadyApplied, Remote: remote, Conflict: decided,
		Renumbered: place == placedElsewhere})
	ps.rep.AlreadyApplied += len(entries)
	return nil
}

// lostDecisionWindow is how long before a change's local time its decision
// may be dated (the same node's clock: only a clock stepped back moves it
// earlier).
const lostDecisionWindow = time.Minute

// lostDecision finds the ledger record of a conflict decided over
// entries, a change of key k the remote already has (its record is
// remote), in an earlier attempt whose commit reached the remote but whose
// reply did not (or whose ack was lost in a crash): the record was
// committed with the change, and the local ledger must get it too. A
// change committed after a decision is renumbered on the remote's version
// and carries the remote's vector clock entries too, so only a remote
// record at another version or with another vector clock than the local
// change has the remote's ledger asked. A failed query is logged and the
// change acked without the record.
func (s *Syncer) lostDecision(ctx context.Context, k Key, entries []Entry, remote Record, exists bool) *ConflictRecord {
	last := entries[len(entries)-1].Record
	if !exists || remote.Version == last.Version && sameVector(remote.Clock.Vector, last.Clock.Vector) {
		return nil
	}
	ops := make(map[string]bool, len(entries))
	for _, e := range entries {
		ops[e.Record.OpID] = true
	}
	from := time.Unix(0, entries[0].Record.UpdatedAt).Add(-lostDecisionWindow)
	cctx, cancel := s.remoteCall(ctx)
	defer cancel()
	recs, err := s.remote.Conflicts(cctx, ConflictQuery{Governor: k.Governor, State: k.State, From: from})
	var skipped *SkippedError
	switch {
	case errors.As(err, &skipped):
		s.log.Warn("push: remote conflict records that do not decode are left out", "key", k.String(), "err", err)
	case err != nil:
		s.log.Warn("push: a change was already applied; its conflict decision, if any, stays out of the local ledger",
			"key", k.String(), "err", err)
		return nil
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if ops[recs[i].Local.OpID] && recs[i].Winner != conflict.Remote {
			s.log.Info("push: a change was already applied with a conflict decision; the decision joins the local ledger",
				"key", k.String(), "conflict", recs[i].ID, "resolver", recs[i].Resolver)
			return &recs[i]
		}
	}
	return nil
}

// finishUnit removes u from the head of its keys' queues.
func (s *Syncer) finishUnit(ps *passState, u *unit) {
	u.done = true
	for _, k := range u.keys() {
		if q := ps.queues[k]; len(q) > 0 && q[0] == u {
			ps.queues[k] = q[1:]
		}
		delete(s.suspects, k)
		delete(s.holds, k)
	}
}

// verdict is how a conflict is settled.
type verdict uint8

const (
	rebase verdict = iota + 1 // the remote holds nothing this change has not seen: commit on top of it
	win                       // a true conflict the local change wins (or a merged value replaces both)
	lose                      // a true conflict the local change loses
)

// judge settles a conflict of p against the remote record. It first drops
// (and acks as already applied) p's leading entries that the remote already
// has. A true conflict is decided by decide (strict entries lose, then the
// governor's resolver, or last write wins).
func (s *Syncer) judge(ctx context.Context, ps *passState, p *part, remote Record, exists bool) decision {
	if !exists {
		return decision{verdict: rebase}
	}
	covered := 0
	for covered < len(p.entries) {
		e := p.entries[covered]
		c := Change{Record: e.Record}
		if !Covers(remote, c) {
			break
		}
		covered++
	}
	if covered > 0 {
		// An earlier commit of these entries reached the remote, its reply
		// did not: a decision it carried is in the remote's ledger only.
		s.ackApplied(ctx, ps, p.key, p.entries[:covered], remote, exists, p.conflict, false)
		p.conflict, p.merged = nil, nil
		p.entries = p.entries[covered:]
	}
	first := p.entries[0].Record
	if p.entries[0].Strict {
		// A strict change (a transaction's, a strong write's) is applied
		// only on the very record it was made on. Having seen the remote
		// record is not enough: its base may be a local change that gave
		// way since, and its value was computed from that.
		if sameVector(remote.Clock.Vector, baseVector(first)) {
			return decision{verdict: rebase}
		}
		return s.decide(ctx, p, remote)
	}
	if dominates(first.Clock.Vector, remote.Clock.Vector) {
		return decision{verdict: rebase}
	}
	if remote.Origin == first.Origin && remote.Clock.Vector[first.Origin]+1 >= first.Clock.Vector[first.Origin] &&
		s.madeOn(ctx, p, remote) {
		// The remote's last version is this node's, made with every earlier
		// op of this node: whatever else it holds was settled then.
		return decision{verdict: rebase}
	}
	return s.decide(ctx, p, remote)
}

// madeOn reports whether p's first entry was made on the value the remote
// record holds. After this node's change won a conflict the remote holds
// that change, on which its next local writes were made; after it was
// merged the remote holds the merged value, which the next local writes
// (made on the change before the merge) have not seen: rebasing them would
// undo the merge, so they meet the remote as a true conflict.
func (s *Syncer) madeOn(ctx context.Context, p *part, remote Record) bool {
	base := s.base(ctx, p)
	return base != nil && base.Deleted == remote.Deleted && bytes.Equal(base.Value, remote.Value)
}

// dominates reports whether vector a has seen everything b has.
func dominates(a, b map[string]uint64) bool {
	for n, x := range b {
		if a[n] < x {
			return false
		}
	}
	return true
}

// lwwWins is last-write-wins: the later hybrid logical clock wins, the
// greater origin (node id and store incarnation) breaks a tie. Every node decides the same way.
func lwwWins(local, remote Record) bool {
	if local.Clock.HLC != remote.Clock.HLC {
		return local.Clock.HLC > remote.Clock.HLC
	}
	return local.Origin > remote.Origin
}

// resolve settles conflicting parts of unit u (all its parts when atomic)
// against the results for them.
func (s *Syncer) resolve(ctx context.Context, ps *passState, u *unit, parts []*part, results []Result) {
	lost := false
	var why string // how the first part that lost did
	merged := make([][]byte, len(parts))
	records := make([]*ConflictRecord, len(parts))
	for i, p := range parts {
		res := results[i]
		if res.Status != Conflict {
			continue
		}
		d := s.judge(ctx, ps, p, res.Remote, res.Exists)
		if d.verdict == rebase {
			s.log.Debug("push rebased on the remote version", "key", p.key, "local_base", p.entries[0].BaseVersion,
				"remote_version", res.Remote.Version)
			continue
		}
		ps.rep.Conflicts++
		records[i] = d.record
		s.noteConflict(p.key, d.resolver)
		local := p.entries[len(p.entries)-1].Record
		winner := "local"
		switch {
		case d.verdict == lose:
			winner = "remote"
			if !lost {
				why = fmt.Sprintf("its batch gave way: %s met a concurrent change (v%d by node %q) and lost",
					p.key, res.Remote.Version, res.Remote.Origin)
			}
			lost = true
		case d.merged != nil:
			winner = "merged"
			merged[i] = d.merged
		}
		s.log.Info("push conflict resolved", "key", p.key.String(), "winner", winner, "resolver", d.resolver,
			"reason", d.reason, "local_op", local.OpID, "local_origin", local.Origin, "local_base", p.entries[0].BaseVersion,
			"local_version", local.Version, "local_hlc", local.Clock.HLC, "local_vector", local.Clock.Vector,
			"remote_op", res.Remote.OpID, "remote_origin", res.Remote.Origin, "remote_version", res.Remote.Version,
			"remote_hlc", res.Remote.Clock.HLC, "remote_vector", res.Remote.Clock.Vector, "entries", len(p.entries))
	}
	if lost {
		// The change (the whole atomic batch) gives way: every entry is
		// superseded and the local side adopts the remote records. The
		// parts that lost no conflict of their own give way too, and are
		// recorded as such (ResolverGaveWay): the local store drops the
		// events of superseded changes, and the ledger keeps what they
		// were. The records go to the remote's ledger first: if they
		// cannot, the entries stay pending and the next pass decides again
		// (the same records, by ID).
		now := time.Now()
		for i, p := range parts {
			if p.check || results[i].Status == AlreadyApplied || records[i] != nil && records[i].Winner == conflict.Remote {
				continue
			}
			records[i] = gaveWayRecord(p, results[i].Remote, results[i].Exists, records[i], why, s.remote.Limits(), now)
		}
		if err := s.logConflicts(ctx, records); err != nil {
			ps.transient = err
			for _, k := range u.keys() {
				ps.blocked[k] = true
			}
			s.log.Debug("push conflict: ledger write failed, will retry", "keys", len(parts), "err", err)
			return
		}
		for i, p := range parts {
			if p.check {
				continue
			}
			if results[i].Status == AlreadyApplied {
				s.ackPart(ctx, ps, p, results[i], false)
				continue
			}
			remote := results[i].Remote
			if !results[i].Exists {
				remote = Record{Key: p.key}
			}
			ps.acks = append(ps.acks, Ack{Key: p.key, Seqs: seqsOf(p.entries), Outcome: OutcomeSuperseded, Remote: remote,
				Conflict: records[i]})
			ps.rep.Superseded += len(p.entries)
		}
		s.finishUnit(ps, u)
		return
	}
	for i, p := range parts {
		if results[i].Status == Conflict {
			p.base = 0
			if results[i].Exists {
				p.base = results[i].Remote.Version
			}
			p.rebased = true
			p.remote = results[i].Remote
			if records[i] != nil {
				// A new decision; a plain rebase keeps the last one's.
				p.merged = merged[i]
				p.conflict = records[i]
			}
		}
	}
	u.attempts++
	if u.attempts > s.opts.MaxRetries {
		for _, k := range u.keys() {
			ps.blocked[k] = true
			ps.failedAlone[k] = fmt.Errorf("the remote record kept changing: %d conflicts in a pass", u.attempts)
		}
	}
}

// settleAtomic handles the results of an atomic unit's commit.
func (s *Syncer) settleAtomic(ctx context.Context, ps *passState, u *unit, b *batch, results []Result) {
	conflict := false
	for _, r := range results {
		if r.Status == FenceRejected { // the whole batch: nothing of it was written
			s.parkRejected(ps, u, b.owner, results, r.Rejected) // fence.go
			return
		}
		if r.Status == Conflict {
			conflict = true
		}
	}
	if s.checkFailed(ctx, ps, u, b, results) { // txncheck.go
		return
	}
	if !conflict {
		for i, p := range b.owner {
			if !p.check {
				s.ackPart(ctx, ps, p, results[i], false)
			}
		}
		s.finishUnit(ps, u)
		return
	}
	s.resolve(ctx, ps, u, b.owner, results)
}

// park moves u's entries to the failed list.
func (s *Syncer) park(ps *passState, u *unit, err error) {
	now := time.Now()
	reason := err.Error()
	var rejected *FenceRejectedError
	errors.As(err, &rejected)
	for _, p := range u.parts {
		if p.check {
			continue
		}
		for _, e := range p.entries {
			ps.parked = append(ps.parked, Parked{Seq: e.Seq, Key: p.key, OpID: e.OpID(), Reason: reason, Time: now,
				FenceRejected: rejected})
		}
		s.log.Error("push rejected for good: entries parked", "key", p.key.String(), "entries", len(p.entries),
			"first_op", p.entries[0].OpID(), "err", err)
	}
	ps.rep.Parked += u.seqs()
	s.finishUnit(ps, u)
}

// flushAcks hands the round's acks and parked entries to the journal.
func (s *Syncer) flushAcks(ctx context.Context, ps *passState) error {
	if len(ps.acks) > 0 {
		if err := s.journal.Ack(ctx, ps.acks); err != nil {
			// The remote has these changes; the next pass finds them
			// already applied.
			for _, a := range ps.acks {
				ps.blocked[a.Key] = true
			}
			ps.acks = nil
			return fmt.Errorf("ack journal: %w", err)
		}
		ps.acks = nil
	}
	if len(ps.parked) > 0 {
		if err := s.journal.Park(ctx, ps.parked); err != nil {
			ps.parked = nil
			return fmt.Errorf("park journal entries: %w", err)
		}
		ps.parked = nil
	}
	return nil
}

// finish updates the stats after a pass.
func (s *Syncer) finish(ps *passState, entries []Entry) {
	now := time.Now()
	r := ps.rep
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats
	st.EntriesPushed += uint64(r.Pushed + r.AlreadyApplied)
	st.AlreadyApplied += uint64(r.AlreadyApplied)
	st.Conflicts += uint64(r.Conflicts)
	st.Superseded += uint64(r.Superseded)
	st.Parked += uint64(r.Parked)
	left := make(map[uint64]bool)
	for _, u := range ps.order {
		if !u.done {
			for _, p := range u.parts {
				for _, e := range p.entries {
					left[e.Seq] = true
				}
			}
		}
	}
	st.QueueDepth = int64(len(left) + r.Held)
	s.oldest = time.Time{}
	for _, e := range entries {
		if left[e.Seq] {
			s.oldest = time.Unix(0, e.Time)
			break
		}
	}
	if ps.oldestHeld != 0 && (s.oldest.IsZero() || ps.oldestHeld < s.oldest.UnixNano()) {
		s.oldest = time.Unix(0, ps.oldestHeld)
	}
	if s.oldest.IsZero() && r.More && len(entries) > 0 {
		// Only entries after this page are left: the page's last one is a
		// lower bound of their age.
		s.oldest = time.Unix(0, entries[len(entries)-1].Time)
	}
	if len(ps.errs) == 0 && r.Blocked+r.Held == 0 {
		st.LastSuccess = now
	}
}

func (s *Syncer) noteError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.LastError = err.Error()
	s.stats.LastErrorTime = time.Now()
}
