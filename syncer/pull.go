package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Applier is the local store as the pull loop sees it. The local store
// (localcache) implements it; MemJournal is an in-memory one for tests.
//
// Methods must be safe for concurrent use with each other and with local
// writes. Errors are local failures: the pull of the governor concerned is
// retried with backoff from its stored cursor. A cancelled ctx returns an
// error wrapping ctx.Err().
type Applier interface {
	// ApplyRemote decides every record of b against the local store, in
	// order, with DecideApply, inside one local transaction (a long
	// history of a record follows in later ones, see RemoteBatch.History):
	//   - ApplyNewer, ApplyDiverged: the record replaces the local one
	//     (value, version, tombstone, clocks, metadata), the remote version
	//     is recorded as synced, and the node's Lamport clock and HLC move
	//     past the record's;
	//   - ApplyPending: the local record stays (a local write of the key is
	//     still to be pushed, and the push settles the key), but the remote
	//     record is kept aside: when the key's last pending entry is acked,
	//     the local store adopts this record instead of Ack.Remote if it is
	//     newer (DecideApply says ApplyNewer);
	//   - ApplyStale: nothing changes.
	// When b.Governor is set, b.Cursor is stored as the governor's change
	// cursor in the same transaction: a cursor is never stored ahead of the
	// records it covers. It returns one status per record, in order.
	ApplyRemote(ctx context.Context, b RemoteBatch) (ApplyResult, error)

	// Cursor returns the change cursor stored for governor (the zero
	// Cursor when none is: pull from the beginning).
	Cursor(ctx context.Context, governor string) (Cursor, error)
}

// RemoteBatch is what one ApplyRemote call applies.
type RemoteBatch struct {
	// Records are remote records (RemoteTime set), at most one per key.
	Records []Record
	// Governor, when set, names the governor whose change cursor becomes
	// Cursor in the same transaction; every record is then of that
	// governor. A read-repair (Fetch) leaves it empty.
	Governor string
	Cursor   Cursor
	// History, when set, holds one entry per record (parallel to Records):
	// the remote history of the record's key that the local store lacks
	// (bootstrap.go). A HistoryApplier stores a record's history with the
	// record, and only when it stores the record (or holds it already): in
	// the record's transaction, or, for a history longer than one
	// transaction holds, its oldest part there and the rest in later ones
	// before the cursor, the versions not stored yet a gap until then.
	History []History
}

// ApplyStatus is what ApplyRemote did with one remote record.
type ApplyStatus uint8

// Apply statuses; see DecideApply.
const (
	// ApplyNewer: stored; the local store had no record of the key, or the
	// remote record has seen everything the local one has, and more.
	ApplyNewer ApplyStatus = iota + 1
	// ApplyDiverged: stored over a local record that is concurrent with it
	// (each has changes the other has not) although no local write of the
	// key is pending: the local changes can never be pushed any more (they
	// were parked, or predate the journal), so the remote, shared by every
	// node, wins.
	ApplyDiverged
	// ApplyPending: not stored, a local write of the key is pending.
	ApplyPending
	// ApplyStale: not stored, the local record has everything the remote
	// one has (a re-delivery, or a remote record older than a local one).
	ApplyStale
)

func (s ApplyStatus) String() string {
	switch s {
	case ApplyNewer:
		return "newer"
	case ApplyDiverged:
		return "diverged"
	case ApplyPending:
		return "pending"
	case ApplyStale:
		return "stale"
	}
	return "unknown"
}

// Applied reports whether the record was stored.
func (s ApplyStatus) Applied() bool { return s == ApplyNewer || s == ApplyDiverged }

// ApplyResult is the outcome of one ApplyRemote call.
type ApplyResult struct {
	Statuses []ApplyStatus // one per record, in order
}

// Count returns how many records got status s.
func (r ApplyResult) Count(s ApplyStatus) int {
	n := 0
	for _, x := range r.Statuses {
		if x == s {
			n++
		}
	}
	return n
}

// DecideApply decides what the local store does with an incoming remote
// record, as every Applier does (inside its transaction): local is the
// local record of the key when exists, pending says a local write of the
// key waits in the journal.
//
//  1. A pending local write: ApplyPending. The push of that write meets the
//     remote version and settles the key (rebase, last write wins), and the
//     local store adopts the outcome on Ack; the remote record kept aside by
//     ApplyRemote covers the window between a push's commit and its ack.
//  2. No local record: ApplyNewer (a tombstone too, so its version stays
//     known).
//  3. Otherwise the vector clocks decide. The remote record is newer when its
//     vector dominates the local one (every entry >=) and differs from it, or
//     equals it with a higher version (a version number moved by a rebase):
//     ApplyNewer. When the local vector dominates (equal vectors and a
//     version not below the remote's included): ApplyStale. Concurrent
//     vectors: ApplyDiverged (see its doc).
func DecideApply(local Record, exists, pending bool, remote Record) ApplyStatus {
	if pending {
		return ApplyPending
	}
	if !exists {
		return ApplyNewer
	}
	rl := dominates(remote.Clock.Vector, local.Clock.Vector)
	lr := dominates(local.Clock.Vector, remote.Clock.Vector)
	switch {
	case rl && lr: // equal vectors
		if remote.Version > local.Version {
			return ApplyNewer
		}
		return ApplyStale
	case rl:
		return ApplyNewer
	case lr:
		return ApplyStale
	}
	return ApplyDiverged
}

// PullOptions configure a Puller. The zero value pulls no governor.
type PullOptions struct {
	// Governors are the governors this sidecar serves.
	Governors []string
	// ListGovernors, when set, replaces Governors: it is called at the start
	// of every PullOnce and every Interval by Run, so the served set may
	// change while Run runs.
	ListGovernors func() []string
	// Logger receives failures and diverged records (nil: none).
	Logger *slog.Logger
	// Interval is the poll interval without a Watcher, and how often Run
	// refreshes the governor list (default 1s).
	Interval time.Duration
	// Resync is how often Run also polls a governor while its watch is up
	// (default 1m): a listener that silently stops delivering costs at most
	// that much staleness.
	Resync time.Duration
	// Backoff is the wait after failures (default 100ms to 30s).
	Backoff Backoff
	// Rewatch is how long a governor whose watch the remote rejected for
	// good (ErrPermanent: a missing index, or credentials refused for a
	// moment) is polled before a watch is tried again (default 10m).
	Rewatch time.Duration
	// PageSize is how many records one Changes call asks for (default 1000).
	PageSize int
	// CallTimeout bounds one Changes or Get call (default 30s).
	CallTimeout time.Duration
	// History, when set with an applier that is a HistoryApplier, is where
	// the history of the records pulled is read (bootstrap.go), as
	// HistoryMode says ("": HistorySinceSnapshot).
	History     HistoryRemote
	HistoryMode HistoryMode
	// MaxFetchedHistory is how many versions of a state's history one
	// fetch reads at most (default 2,000, see maxFetchedHistory): a
	// longer history is brought in slices, through the hole it leaves.
	MaxFetchedHistory int
	// MaxFetchedHistoryBytes is about how many bytes of events and
	// snapshots one fetch reads at most (default 32 MiB, see
	// maxFetchedHistoryBytes): a fetch stops after the version that takes
	// it over, and the rest comes in slices as above. A page of pulled
	// records is applied in groups whose histories take about that much.
	MaxFetchedHistoryBytes int
	// MaxRefillSlices is how many such slices one refill of a hole in a
	// state's local history reads, one after the other (default 25, see
	// maxRefillSlices).
	MaxRefillSlices int
	// MaxUndecodable is how many states the set of documents that do not
	// decode (Puller.Undecodable) holds at most (default 10,000): a
	// document of another state is then logged and counted
	// (PullStats.UndecodableDropped), not remembered, so that a flood of
	// them grows neither memory nor the local store without bound.
	MaxUndecodable int
	// UndecodableRechecks is how many of a governor's states in that set
	// a complete poll of the governor reads again at most, those checked
	// longest ago first, so that a document deleted since is forgotten
	// (default 3, see recheckUndecodable); UndecodableRecheckEvery is how
	// long a state is not read again after it was (default 1m).
	UndecodableRechecks     int
	UndecodableRecheckEvery time.Duration
}

func (o PullOptions) withDefaults() PullOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	o.Backoff = o.Backoff.withDefaults()
	if o.Resync <= 0 {
		o.Resync = time.Minute
	}
	if o.Rewatch <= 0 {
		o.Rewatch = 10 * time.Minute
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.HistoryMode == "" {
		o.HistoryMode = HistorySinceSnapshot
	}
	if o.MaxUndecodable <= 0 {
		o.MaxUndecodable = 10_000
	}
	if o.UndecodableRechecks <= 0 {
		o.UndecodableRechecks = 3
	}
	if o.UndecodableRecheckEvery <= 0 {
		o.UndecodableRecheckEvery = time.Minute
	}
	return o
}

// Puller brings remote changes into the local store. NewPuller starts
// nothing: PullOnce makes one pass, Run is the background loop, Fetch reads
// one key through (a cache miss, a read-repair). It is safe for concurrent
// use; the pulls of one governor never overlap.
type Puller struct {
	applier Applier
	keeper  UndecodableKeeper // the applier's, or nil (undecodable.go)
	remote  Remote
	opts    PullOptions
	log     *slog.Logger

	watches atomic.Uint64 // watch ids (freshness.watch)

	// undecMu serializes the changes of undecodable, which go to keeper
	// (I/O, not under mu) before they go to the map.
	undecMu sync.Mutex

	mu    sync.Mutex // guards locks, fresh, undecodable, checked and stats
	locks map[string]*sync.Mutex
	fresh map[string]freshness
	// freshView is a copy of fresh, replaced whenever fresh changes, so
	// that FreshAt, which every local read with a shared store calls,
	// takes no lock.
	freshView atomic.Pointer[map[string]freshness]
	// anyUndecodable: undecodable is not empty (set with mu held), so
	// that Undecodable takes no lock while it is.
	anyUndecodable atomic.Bool
	// undecodable holds, per key, the remote document the pull left out or
	// Fetch met, that does not decode and is the key's latest one as far
	// as the pull knows (see Undecodable); nil until loaded from keeper.
	// Changing it takes undecMu, then mu.
	undecodable map[Key]*UndecodableError
	// checked holds when each key of undecodable was last met or read
	// again (recheckUndecodable); a key missing was not since the start.
	checked map[Key]time.Time
	// refillFrom is, per governor, the state after which the next poll's
	// page of history holes starts (see refill).
	refillFrom map[string]string
	stats      PullStats
}

// freshness is how current the local copy of a governor is known to be.
type freshness struct {
	live bool      // a watch is up: every remote change arrives as it is committed
	at   time.Time // otherwise: the local copy held every change committed before at
	// watch identifies the watch that made it live: a watch that ends
	// leaves a newer one's freshness alone (a governor dropped and added
	// again runs a new watch while the old one stops).
	watch uint64
}

// FreshAt returns the time before which every remote change of governor is
// known to be in the local store: now while a watch of the governor is up,
// the start of the last complete poll otherwise, or the moment the last
// watch broke. ok is false when the governor was never pulled (since the
// Puller was made).
//
// A remote document that does not decode is left out of the pull (the
// governor's cursor goes past it, so that it does not stop every other
// state): FreshAt covers every change the pull could read, not the state of
// such a document, whose local copy (if any) stays at the last version that
// decoded. Undecodable names those states: a read of one must not take
// FreshAt as proof that its local copy is current.
func (p *Puller) FreshAt(governor string) (t time.Time, ok bool) {
	view := p.freshView.Load()
	if view == nil {
		return time.Time{}, false
	}
	f, ok := (*view)[governor]
	if !ok {
		return time.Time{}, false
	}
	if f.live {
		return time.Now(), true
	}
	return f.at, true
}

func (p *Puller) setFresh(governor string, f freshness) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setFreshLocked(governor, f)
}

// setFreshLocked records governor's freshness and publishes the new view
// (with mu held).
func (p *Puller) setFreshLocked(governor string, f freshness) {
	if p.fresh == nil {
		p.fresh = make(map[string]freshness)
	}
	p.fresh[governor] = f
	view := maps.Clone(p.fresh)
	p.freshView.Store(&view)
}

// watchEnded records the end of watch id of governor, which was live:
// fresh as of at, unless another watch has made the governor live since.
func (p *Puller) watchEnded(governor string, id uint64, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.fresh[governor]; f.live && f.watch != id {
		return
	}
	p.setFreshLocked(governor, freshness{at: at})
}

// notePolled records a complete poll of governor that started at start:
// it never takes a live governor's freshness, nor moves it back.
func (p *Puller) notePolled(governor string, start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.fresh[governor]
	if !ok || !f.live && start.After(f.at) {
		p.setFreshLocked(governor, freshness{at: start})
	}
}

// NewPuller returns a Puller that applies remote's changes to applier.
func NewPuller(applier Applier, remote Remote, opts PullOptions) *Puller {
	opts = opts.withDefaults()
	keeper, _ := applier.(UndecodableKeeper)
	return &Puller{applier: applier, keeper: keeper, remote: remote, opts: opts, log: opts.Logger, locks: make(map[string]*sync.Mutex)}
}

// PullReport is what a pull did.
type PullReport struct {
	Governors int // governors pulled
	Calls     int // Changes calls (pages) that returned
	Records   int // remote records received
	Applied   int // stored: ApplyNewer
	Diverged  int // stored: ApplyDiverged
	Pending   int // not stored: a local write is pending
	Stale     int // not stored: the local store had them
	// Undecodable counts remote documents left out because they do not
	// decode (see Remote.Changes); the cursor went past them.
	Undecodable int
}

func (r *PullReport) add(res ApplyResult) {
	r.Records += len(res.Statuses)
	r.Applied += res.Count(ApplyNewer)
	r.Diverged += res.Count(ApplyDiverged)
	r.Pending += res.Count(ApplyPending)
	r.Stale += res.Count(ApplyStale)
}

// PullStats are the pull loop's counters.
type PullStats struct {
	Passes        uint64 // PullOnce calls
	Deliveries    uint64 // record groups applied (pages and watch deliveries)
	Records       uint64 // remote records received
	Applied       uint64 // records stored (newer or diverged)
	Diverged      uint64 // of those, stored over a diverged local record
	Pending       uint64 // records skipped because a local write was pending
	Stale         uint64 // records the local store had already
	Fetches       uint64 // Fetch calls
	WatchRestarts uint64 // watches restarted after they broke
	// Undecodable counts remote documents left out of pages and watch
	// deliveries because they do not decode (each time one is left out);
	// UndecodableStates is how many states' latest remote documents are
	// known not to decode now (see Puller.Undecodable); UndecodableDropped
	// counts documents not remembered because MaxUndecodable states were
	// (each time one was met), since the applier's store was made when it
	// is an UndecodableKeeper (it never goes down).
	Undecodable        uint64
	UndecodableStates  int
	UndecodableDropped uint64
	LastError          string
	LastErrorTime      time.Time
	LastDelivery       time.Time // when remote changes were last applied
}

// Stats returns a snapshot of the counters.
func (p *Puller) Stats() PullStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stats
	st.UndecodableStates = len(p.undecodable)
	return st
}

func (p *Puller) governors() []string {
	var gs []string
	if p.opts.ListGovernors != nil {
		gs = p.opts.ListGovernors()
	} else {
		gs = p.opts.Governors
	}
	gs = slices.Clone(gs)
	slices.Sort(gs)
	return slices.Compact(gs)
}

func (p *Puller) lock(governor string) *sync.Mutex {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.locks[governor]
	if l == nil {
		l = new(sync.Mutex)
		p.locks[governor] = l
	}
	return l
}

// apply hands one group of remote records to the applier, with their
// history (applyGroups, bootstrap.go), and counts it.
func (p *Puller) apply(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	res, err := p.applyGroups(ctx, b)
	if err != nil {
		return res, err
	}
	return p.applied(ctx, b, res)
}

// applyRecords is apply without reading history: a Fetch (a read-through,
// or a strong op catching up) does not wait for it; the change stream
// delivers the record again later, and its history then comes along.
func (p *Puller) applyRecords(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	res, err := p.applyChunks(ctx, b)
	if err != nil {
		return res, fmt.Errorf("apply remote records: %w", err)
	}
	return p.applied(ctx, b, res)
}

// applied checks and counts what the applier did with b's records (res),
// as one delivery.
func (p *Puller) applied(ctx context.Context, b RemoteBatch, res ApplyResult) (ApplyResult, error) {
	if len(res.Statuses) != len(b.Records) {
		return res, fmt.Errorf("apply remote records: %d statuses for %d records", len(res.Statuses), len(b.Records))
	}
	p.clearUndecodable(ctx, b.Records)
	var rep PullReport
	rep.add(res)
	for i, s := range res.Statuses {
		if s == ApplyDiverged {
			r := b.Records[i]
			p.log.Warn("pull replaced a diverged local record with no pending write", "key", r.Key.String(),
				"remote_op", r.OpID, "remote_origin", r.Origin, "remote_version", r.Version, "remote_vector", r.Clock.Vector)
		}
	}
	p.mu.Lock()
	st := &p.stats
	st.Deliveries++
	st.Records += uint64(rep.Records)
	st.Applied += uint64(rep.Applied + rep.Diverged)
	st.Diverged += uint64(rep.Diverged)
	st.Pending += uint64(rep.Pending)
	st.Stale += uint64(rep.Stale)
	if len(b.Records) > 0 {
		st.LastDelivery = time.Now()
	}
	p.mu.Unlock()
	return res, nil
}

func (p *Puller) noteError(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.LastError = err.Error()
	p.stats.LastErrorTime = time.Now()
}

// PullOnce pulls every served governor once: from its stored cursor, page
// by page with Changes, until a page comes back short; each page is applied
// with its cursor in one ApplyRemote. A failing governor does not stop the
// others: the error joins every governor's failure. A document that does
// not decode is left out, counted and logged (see FreshAt), not an error.
func (p *Puller) PullOnce(ctx context.Context) (PullReport, error) {
	p.mu.Lock()
	p.stats.Passes++
	p.mu.Unlock()
	var rep PullReport
	var errs []error
	for _, g := range p.governors() {
		if err := p.pullGovernor(ctx, g, &rep); err != nil {
			errs = append(errs, fmt.Errorf("pull governor %s: %w", g, err))
		}
		rep.Governors++
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		p.noteError(err)
		return rep, err
	}
	return rep, nil
}

// pullGovernor pages through governor's changes since its stored cursor.
func (p *Puller) pullGovernor(ctx context.Context, governor string, rep *PullReport) error {
	return p.pullGovernorFrom(ctx, governor, nil, rep)
}

// pullGovernorFrom is pullGovernor from cursor from instead of the stored
// one, when from is set; it then leaves the stored cursor as it is (it is
// further on).
func (p *Puller) pullGovernorFrom(ctx context.Context, governor string, from *Cursor, rep *PullReport) error {
	l := p.lock(governor)
	l.Lock()
	defer l.Unlock()
	start := time.Now()
	// FreshAt must not vouch for the governor before the states it left
	// out in an earlier run are known again.
	if err := p.loadUndecodable(ctx); err != nil {
		return err
	}
	var cur Cursor
	if from != nil {
		cur = *from
	} else {
		var err error
		if cur, err = p.applier.Cursor(ctx, governor); err != nil {
			return fmt.Errorf("read cursor: %w", err)
		}
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
		recs, next, err := p.remote.Changes(cctx, governor, cur, p.opts.PageSize)
		cancel()
		var skipped *SkippedError
		if errors.As(err, &skipped) {
			err = nil // the page and its cursor go past the documents left out
		}
		if err != nil {
			return err
		}
		rep.Calls++
		if skipped != nil {
			// Before the cursor goes past them (UndecodableKeeper).
			if err := p.noteUndecodable(ctx, skipped.Docs, true); err != nil {
				return err
			}
			rep.Undecodable += len(skipped.Docs)
		}
		if len(recs) == 0 && next == cur {
			// Nothing new, or only documents left out that the cursor
			// cannot go past (see the backend's Changes).
			p.polled(ctx, governor, start, rep)
			return nil
		}
		b := RemoteBatch{Records: recs, Governor: governor, Cursor: next}
		if from != nil {
			b.Governor, b.Cursor = "", "" // the stored cursor stays
		}
		res, err := p.apply(ctx, b)
		if err != nil {
			return err
		}
		rep.add(res)
		n := len(recs)
		if skipped != nil {
			n += len(skipped.Docs)
		}
		if n < p.opts.PageSize && !cutByBytes(recs) {
			p.polled(ctx, governor, start, rep)
			return nil
		}
		cur = next
	}
}

// cutByBytes says whether a page of Changes was cut short by its bytes
// (PageBytes) rather than by the end of the stream.
func cutByBytes(recs []Record) bool {
	size := 0
	for _, r := range recs {
		size += RecordSize(r)
	}
	return size > PageBytes
}

// polled follows a complete poll of governor that started at start: the
// governor is fresh as of start, and the poll's bounded extra work is done
// (neither fails the poll).
func (p *Puller) polled(ctx context.Context, governor string, start time.Time, rep *PullReport) {
	p.notePolled(governor, start)
	p.refillHistory(ctx, governor, rep) // bootstrap.go
	p.recheckUndecodable(ctx, governor) // undecodable.go
}

// Fetch reads key from the remote and applies it locally (a cache miss or a
// read-repair), returning the remote record and what the local store did
// with it (a pending local write, for one, keeps the local record). A key
// the remote never had is an error wrapping ErrNotFound; a deleted one is
// its tombstone. A remote document of key that does not decode is an error
// wrapping ErrUndecodable (and ErrPermanent, not ErrNotFound), whose
// *UndecodableError names the document; the local copy is left as it is.
func (p *Puller) Fetch(ctx context.Context, key Key) (Record, ApplyStatus, error) {
	p.mu.Lock()
	p.stats.Fetches++
	p.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
	rec, err := p.remote.Get(cctx, key)
	cancel()
	var bad *UndecodableError
	switch {
	case errors.As(err, &bad):
		if kerr := p.noteUndecodable(ctx, []*UndecodableError{bad}, false); kerr != nil {
			p.log.Warn("undecodable documents: cannot remember one a read met", "key", key.String(), "err", kerr)
		}
	case errors.Is(err, ErrNotFound):
		p.forgetUndecodable(ctx, key)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("fetch %s: %w", key, err)
	}
	rec.Key = key
	res, err := p.applyRecords(ctx, RemoteBatch{Records: []Record{rec}})
	if err != nil {
		return Record{}, 0, fmt.Errorf("fetch %s: %w", key, err)
	}
	return rec, res.Statuses[0], nil
}

// Run pulls until ctx is done and returns nil then. Each served governor
// gets a goroutine: with a Watcher remote it watches from the stored cursor
// and applies each delivery with its cursor, restarting from the last stored
// cursor after a break (capped exponential backoff with jitter, reset by
// the next delivery); a remote without a Watcher, or a watch the remote
// rejects for good (ErrPermanent), is polled every Interval. The governor
// list is refreshed every Interval: new governors start, dropped ones stop.
func (p *Puller) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	running := make(map[string]context.CancelFunc)
	defer func() {
		for _, cancel := range running {
			cancel()
		}
		wg.Wait()
	}()
	ticker := time.NewTicker(p.opts.Interval)
	defer ticker.Stop()
	for {
		want := make(map[string]bool)
		for _, g := range p.governors() {
			want[g] = true
			if running[g] != nil {
				continue
			}
			gctx, cancel := context.WithCancel(ctx)
			running[g] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.runGovernor(gctx, g)
			}()
		}
		for g, cancel := range running {
			if !want[g] {
				cancel()
				delete(running, g)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// runGovernor keeps governor pulled until ctx is done.
func (p *Puller) runGovernor(ctx context.Context, governor string) {
	w, watch := p.remote.(Watcher)
	var rewatch time.Time // when a watch rejected for good is tried again
	var failures atomic.Int64
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for ctx.Err() == nil {
		var err error
		if watch {
			err = p.watch(ctx, w, governor, &failures)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrPermanent) {
				p.log.Error("pull watch rejected, polling instead", "governor", governor, "err", err,
					"watch_again_in", p.opts.Rewatch)
				watch = false
				rewatch = time.Now().Add(p.opts.Rewatch)
			}
			p.mu.Lock()
			p.stats.WatchRestarts++
			p.mu.Unlock()
		} else {
			var rep PullReport
			err = p.pullGovernor(ctx, governor, &rep)
			if err == nil {
				failures.Store(0)
				if w != nil && !rewatch.IsZero() && !time.Now().Before(rewatch) {
					watch = true // try the watch again
					continue
				}
				timer.Reset(p.opts.Interval)
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		n := failures.Add(1)
		wait := p.opts.Backoff.Delay(int(n))
		err = fmt.Errorf("pull governor %s: %w", governor, err)
		p.noteError(err)
		p.log.Warn("pull failed, will retry", "governor", governor, "err", err, "failures", n, "retry_in", wait)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// watch runs one Watch of governor; it returns when the watch ends (always
// with an error).
//
// It polls first, from the stored cursor, in pages: a listener's first
// delivery holds every state changed since its cursor, a whole governor on
// a new node, and is applied in one go. The watch starts from the cursor
// the poll reached. The governor counts as live (FreshAt: now) only after
// the watch's first delivery and a second poll from that same cursor: a
// listener's first snapshot may lack a change committed while the listener
// started (Firestore's emulator shows it), and the cursor the delivery
// stored may be past it. While the watch is up the governor is also polled
// every Resync, so a listener that silently stops delivering costs at most
// that much staleness. When the watch ends, the governor is fresh as of its
// end, or, when a delivery could not be applied, of the last one that was.
func (p *Puller) watch(ctx context.Context, w Watcher, governor string, failures *atomic.Int64) error {
	var caughtUp PullReport
	if err := p.pullGovernor(ctx, governor, &caughtUp); err != nil {
		return fmt.Errorf("poll before the watch: %w", err)
	}
	cur, err := p.applier.Cursor(ctx, governor)
	if err != nil {
		return fmt.Errorf("read cursor: %w", err)
	}
	start := cur
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var resyncs sync.WaitGroup
	defer resyncs.Wait()
	l := p.lock(governor)
	live := false
	id := p.watches.Add(1)
	// evidence is the latest time before which every remote change is
	// known to be here: the arrival of a delivery applied, or the start of
	// a poll that completed (Unix ns).
	var evidence atomic.Int64
	err = w.Watch(wctx, governor, cur, func(recs []Record, next Cursor, skipped []*UndecodableError) error {
		at := time.Now()
		if len(skipped) > 0 {
			// Before the cursor goes past them (UndecodableKeeper).
			if err := p.noteUndecodable(ctx, skipped, true); err != nil {
				return err
			}
		}
		if len(recs) > 0 || next != cur {
			if err := p.applyDelivery(ctx, l, RemoteBatch{Records: recs, Governor: governor, Cursor: next}); err != nil {
				return err
			}
			cur = next
		}
		failures.Store(0) // the watch is up
		if !live {
			var rep PullReport
			if err := p.pullGovernorFrom(ctx, governor, &start, &rep); err != nil {
				return fmt.Errorf("poll after the watch started: %w", err)
			}
			live = true
			p.setFresh(governor, freshness{live: true, watch: id})
			resyncs.Go(func() { p.resync(wctx, governor, &evidence, cancel) })
		}
		laterOf(&evidence, at.UnixNano())
		return nil
	})
	if cause := context.Cause(wctx); err != nil && cause != nil && ctx.Err() == nil {
		err = cause // the resyncs ended it
	}
	cancel(nil)
	if live {
		// Not the time the end was noticed: a listener whose link was
		// lost stops delivering before it reports the loss.
		p.watchEnded(governor, id, time.Unix(0, evidence.Load()))
	}
	return err
}

// laterOf moves v to t if t is later.
func laterOf(v *atomic.Int64, t int64) {
	for {
		old := v.Load()
		if t <= old || v.CompareAndSwap(old, t) {
			return
		}
	}
}

// applyDelivery applies one watch delivery under the governor's lock l.
func (p *Puller) applyDelivery(ctx context.Context, l *sync.Mutex, b RemoteBatch) error {
	l.Lock()
	defer l.Unlock()
	_, err := p.apply(ctx, b)
	return err
}

// resync polls governor every Resync until ctx is done (the watch ended).
// A poll that completes is evidence of freshness (see watch). A failed
// poll is logged; when no evidence has come for one and a half Resync, it
// ends the watch (stop): a governor counts as live only while something
// shows it is.
func (p *Puller) resync(ctx context.Context, governor string, evidence *atomic.Int64, stop context.CancelCauseFunc) {
	t := time.NewTicker(p.opts.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var rep PullReport
		begun := time.Now()
		err := p.pullGovernor(ctx, governor, &rep)
		switch {
		case err == nil:
			laterOf(evidence, begun.UnixNano())
		case ctx.Err() == nil:
			p.noteError(fmt.Errorf("resync governor %s: %w", governor, err))
			p.log.Warn("pull resync failed", "governor", governor, "err", err)
			if time.Since(time.Unix(0, evidence.Load())) > p.opts.Resync*3/2 {
				stop(fmt.Errorf("no delivery or poll for %v, and the resync failed: %w",
					time.Since(time.Unix(0, evidence.Load())).Round(time.Millisecond), err))
				return
			}
		}
		if rep.Applied+rep.Diverged > 0 {
			// Usually the watch had stopped delivering; a change committed
			// just before the poll may also have been on its way.
			p.log.Info("pull resync applied changes the watch had not delivered", "governor", governor,
				"applied", rep.Applied, "diverged", rep.Diverged)
		}
	}
}

// ApplyRemote implements Applier: the records kept aside for pending keys
// are adopted by Ack when newer than the acked remote record.
func (j *MemJournal) ApplyRemote(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	if err := ctx.Err(); err != nil {
		return ApplyResult{}, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failApplies > 0 {
		j.failApplies--
		return ApplyResult{}, ErrMemJournal
	}
	res := ApplyResult{Statuses: make([]ApplyStatus, len(b.Records))}
	for i, r := range b.Records {
		if b.Governor != "" && r.Governor != b.Governor {
			return ApplyResult{}, fmt.Errorf("memjournal: record %s is not of governor %s", r.Key, b.Governor)
		}
		local, exists := j.records[r.Key]
		pending := j.hasPending(r.Key)
		s := DecideApply(local, exists, pending, r)
		res.Statuses[i] = s
		switch {
		case s.Applied():
			j.adopt(r)
		case s == ApplyPending:
			if j.aside == nil {
				j.aside = make(map[Key]Record)
			}
			if prev, ok := j.aside[r.Key]; !ok || DecideApply(prev, true, false, r) == ApplyNewer {
				j.aside[r.Key] = r.Clone()
			}
		}
	}
	if b.Governor != "" {
		if j.cursors == nil {
			j.cursors = make(map[string]Cursor)
		}
		j.cursors[b.Governor] = b.Cursor
	}
	return res, nil
}

// adopt makes r the local record of its key. j.mu must be held.
func (j *MemJournal) adopt(r Record) {
	r = r.Clone()
	j.records[r.Key] = r
	j.synced[r.Key] = r.Version
	j.lamport = max(j.lamport, r.Clock.Lamport)
	j.hlc = max(j.hlc, r.Clock.HLC)
}

// Cursor implements Applier.
func (j *MemJournal) Cursor(ctx context.Context, governor string) (Cursor, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cursors[governor], nil
}

// FailApplies makes the next n ApplyRemote calls fail with ErrMemJournal
// without changing anything.
func (j *MemJournal) FailApplies(n int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failApplies = n
}

// Keys returns the keys of the local records of governor, sorted.
func (j *MemJournal) Keys(governor string) []Key {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Key
	for k := range j.records {
		if k.Governor == governor {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b Key) int {
		if a.State < b.State {
			return -1
		}
		if a.State > b.State {
			return 1
		}
		return 0
	})
	return out
}

var _ Applier = (*MemJournal)(nil)
