package syncer

import (
	"context"
	"errors"
	"fmt"
)

// History in the shared store (docs/decisions/0019). Besides each state's
// record and its events, the shared store holds the snapshots nodes took
// (their K newest per state). The pull loop brings a state's remote
// history along with each remote record it applies, so that every node's
// local event log holds the same history: the events of the versions
// pulled, and, for a state the node has no history of yet (a fresh node:
// bootstrap), the remote snapshots and events from a starting point that
// HistoryMode chooses.

// Snapshot is a state's record at one version, as a node took it, and when
// it was taken (Unix nanoseconds). A snapshot of a deletion has Deleted set.
type Snapshot struct {
	Record
	TakenAt int64
}

// SnapshotStatus is what PutSnapshot did.
type SnapshotStatus uint8

// Snapshot statuses.
const (
	// SnapshotStored: the snapshot was written.
	SnapshotStored SnapshotStatus = iota + 1
	// SnapshotExists: the remote has a snapshot of that version already
	// (from this node or another); nothing was written.
	SnapshotExists
	// SnapshotUnsynced: the change that made the snapshot's version is not
	// in the remote's event log yet; try again after it is pushed.
	SnapshotUnsynced
	// SnapshotMismatch: the remote's event log holds the change under
	// another version (it was renumbered by a rebase), or holds another
	// change at that version: the snapshot is not of the shared history
	// and is never written.
	SnapshotMismatch
)

func (s SnapshotStatus) String() string {
	switch s {
	case SnapshotStored:
		return "stored"
	case SnapshotExists:
		return "exists"
	case SnapshotUnsynced:
		return "unsynced"
	case SnapshotMismatch:
		return "mismatch"
	}
	return "unknown"
}

// HistoryRemote is the part of a remote that holds history: its event log
// and its snapshots. syncer/firestore implements it.
type HistoryRemote interface {
	// Events is Remote.Events.
	Events(ctx context.Context, key Key, afterVersion uint64, limit int) ([]Event, error)
	// PutSnapshot stores snap unless the remote has a snapshot of its key
	// and version already, and only when the remote's event log holds
	// snap.OpID at snap.Version (see SnapshotStatus). After a write it
	// drops the key's snapshots beyond the keep newest (keep <= 0: none
	// dropped).
	PutSnapshot(ctx context.Context, snap Snapshot, keep int) (SnapshotStatus, error)
	// Snapshots returns the snapshots of key with versions above
	// afterVersion and at or below maxVersion, oldest first.
	Snapshots(ctx context.Context, key Key, afterVersion, maxVersion uint64) ([]Snapshot, error)
}

// HistoryMode says where the history of a state a node has none of starts.
type HistoryMode string

// History modes.
const (
	// HistorySinceSnapshot starts at the newest remote snapshot at or below
	// the version pulled, followed by the later events (the whole event
	// log when the state has no snapshot).
	HistorySinceSnapshot HistoryMode = "since_snapshot"
	// HistoryFull brings the whole remote event log and every remote
	// snapshot at or below the version pulled.
	HistoryFull HistoryMode = "full"
	// HistoryNone brings no history: pulled versions stay gaps in the
	// local log.
	HistoryNone HistoryMode = "none"
)

// ParseHistoryMode checks a history mode's name ("" is
// HistorySinceSnapshot).
func ParseHistoryMode(s string) (HistoryMode, error) {
	switch m := HistoryMode(s); m {
	case "":
		return HistorySinceSnapshot, nil
	case HistorySinceSnapshot, HistoryFull, HistoryNone:
		return m, nil
	}
	return "", fmt.Errorf("history %q: want %q, %q or %q", s, HistorySinceSnapshot, HistoryFull, HistoryNone)
}

// History is the remote history of one state that an applier stores with
// the state's record: snapshots and events, each in version order, all of
// versions above what the local store holds of the state and at or below
// the record's version.
type History struct {
	Snapshots []Snapshot
	Events    []Event
	// Upto, when not 0, says that the history was read only up to that
	// version (FetchHistory reads at most a bounded number of versions, and
	// of bytes, at once): the versions above it, up to the record's, are still to be
	// brought, and the applier lists them as a hole in its history
	// (HistoryRefiller) for the pull loop to bring later, a slice at a
	// time. From is then the version the read started after (its top):
	// the history read is the remote's of the versions after From up to
	// Upto, as the history mode says. 0: the history goes up to the
	// record's version.
	From, Upto uint64
}

// Empty says h holds nothing.
func (h History) Empty() bool { return len(h.Snapshots) == 0 && len(h.Events) == 0 }

// HistoryApplier is an Applier that stores remote history (see
// RemoteBatch.History).
type HistoryApplier interface {
	Applier
	// HistoryTop returns the highest version of key that the local history
	// holds (an event or a snapshot; 0: none).
	HistoryTop(ctx context.Context, key Key) (uint64, error)
}

// HistoryRefiller is an optional capability of a HistoryApplier (found by
// type assertion): it lists holes in the local history, runs of versions at
// or below a state's local record whose remote history the pull loop would
// not bring by itself. The local store removes the events of a local change
// that lost a conflict when its loss is acked, and adopts the shared store's
// record then: the winner's events of those versions come in only through
// a pull of the record, which the change stream may have delivered already
// (it was kept aside while the local change was pending), and a pull brings
// only the history above the local history's top, which a later local write
// may have raised past the hole. After a complete poll of a governor the
// pull loop reads the record of each of its holes' states and applies it
// with the remote history of the hole (refillHistory).
type HistoryRefiller interface {
	// HistoryHoles returns up to limit holes of governor's states whose
	// names sort after after ("": from the first), in name order.
	HistoryHoles(ctx context.Context, governor, after string, limit int) ([]HistoryHole, error)
	// HistoryRefilled says the local history of key now holds the remote
	// history of its hole up to version (0: the remote has no record of
	// key): the hole is gone, unless it was listed since up to a later
	// version.
	HistoryRefilled(ctx context.Context, key Key, version uint64) error
	// HistoryHole returns the hole listed in key's history, if any.
	HistoryHole(ctx context.Context, key Key) (HistoryHole, bool, error)
}

// HistoryHole is a hole in the local history of Key: the versions after
// After, up to the state's record, are to be brought from the remote.
type HistoryHole struct {
	Key   Key
	After uint64
}

// refillPage is how many holes one poll of a governor fills at most.
const refillPage = 100

// refillHistory fills the holes the applier lists (HistoryRefiller) in the
// history of governor's states: each state's record is read from the
// remote and applied with the remote history after the hole's start (as
// FetchHistory reads it from there, continuing it: see fetchHistory), and
// counted in rep. A history read short (History.Upto) leaves the rest of
// the hole listed (the applier moves its start up): the next poll brings
// the next slice. A state with a local write pending keeps its hole (no
// history is stored then). Failures are logged: the holes stay listed and
// the next poll tries again.
func (p *Puller) refillHistory(ctx context.Context, governor string, rep *PullReport) {
	rf, ok := p.applier.(HistoryRefiller)
	if !ok || p.opts.History == nil || p.opts.HistoryMode == HistoryNone {
		return
	}
	if err := p.refill(ctx, rf, governor, rep); err != nil && ctx.Err() == nil {
		p.log.Warn("pull: filling holes in the local history failed (retried at the next poll)", "governor", governor,
			"err", err)
	}
}

func (p *Puller) refill(ctx context.Context, rf HistoryRefiller, governor string, rep *PullReport) error {
	// A page at a time, taking up after the last poll's page: holes kept
	// (a local write pending) do not starve those after them.
	p.mu.Lock()
	from := p.refillFrom[governor]
	p.mu.Unlock()
	holes, err := rf.HistoryHoles(ctx, governor, from, refillPage)
	if err != nil {
		return err
	}
	next := ""
	if len(holes) == refillPage {
		next = holes[len(holes)-1].Key.State
	}
	p.mu.Lock()
	if p.refillFrom == nil {
		p.refillFrom = make(map[string]string)
	}
	p.refillFrom[governor] = next
	p.mu.Unlock()
	// One hole that cannot be filled now does not hold back the others.
	var errs []error
	for _, h := range holes {
		if err := p.fillHole(ctx, rf, h, rep); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Errorf("history of %s after v%d: %w", h.Key, h.After, err))
		}
	}
	return errors.Join(errs...)
}

// fillHole fills hole h (see refillHistory).
func (p *Puller) fillHole(ctx context.Context, rf HistoryRefiller, h HistoryHole, rep *PullReport) error {
	cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
	rec, err := p.remote.Get(cctx, h.Key)
	cancel()
	if errors.Is(err, ErrNotFound) {
		return rf.HistoryRefilled(ctx, h.Key, 0)
	}
	if err != nil {
		return err
	}
	rec.Key = h.Key
	after := h.After
	slices := maxRefillSlices
	if p.opts.MaxRefillSlices > 0 {
		slices = p.opts.MaxRefillSlices
	}
	for range slices {
		if after, err = p.fillSlice(ctx, rf, rec, after, rep); err != nil || after == 0 {
			return err
		}
	}
	return nil
}

// maxRefillSlices bounds how many slices of a hole's history (at most
// maxFetchedHistory versions and about maxFetchedHistoryBytes each) one
// refill reads, one after the other, each stored before the next is read:
// memory stays one slice's, and a long history arrives within a few
// refills rather than one slice a poll.
const maxRefillSlices = 25

// fillSlice reads the slice of rec's history after version after and
// stores it with rec. It returns where the next slice starts, or 0 when
// there is none: the hole is filled, or the slice was not stored (a local
// write of the state is pending: the hole waits for it).
func (p *Puller) fillSlice(ctx context.Context, rf HistoryRefiller, rec Record, after uint64, rep *PullReport) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
	defer cancel()
	hist, err := fetchHistory(cctx, p.opts.History, rec.Key, after, rec.Version, p.opts.HistoryMode, p.fetchBound(), true)
	if errors.Is(err, ErrUndecodable) {
		// As for a pulled record (withHistory): the history that does not
		// decode stays a gap, and the hole is given up rather than asked
		// for at every poll.
		p.log.Warn("remote history does not decode: the hole in the local history stays a gap", "key", rec.Key.String(),
			"after", after, "err", err)
		return 0, rf.HistoryRefilled(ctx, rec.Key, rec.Version)
	}
	if err != nil {
		return 0, err
	}
	res, err := p.applyRecords(ctx, RemoteBatch{Records: []Record{rec}, History: []History{hist}})
	if err != nil {
		return 0, err
	}
	rep.add(res)
	if st := res.Statuses[0]; !st.Applied() && st != ApplyStale {
		return 0, nil
	}
	if hist.Upto == 0 {
		return 0, rf.HistoryRefilled(ctx, rec.Key, rec.Version)
	}
	if hist.Upto <= after {
		return 0, nil // no way forward: the next refill tries again
	}
	return hist.Upto, nil
}

// historyPage is how many events one Events call asks for at most.
const historyPage = 1000

// maxContinuedHistory is how many missing versions of a state a node that
// holds its history continues with every event (HistorySinceSnapshot):
// beyond it (a node that was offline while the state changed thousands of
// times) it starts again at the newest snapshot, as a new node does,
// rather than read every event.
const maxContinuedHistory = 500

// maxFetchedHistory is how many versions of a state's history one fetch
// reads at most, above its starting point (PullOptions.MaxFetchedHistory
// sets another): a fetch holds every event and snapshot it reads in
// memory until the applier has stored them. With values of a few hundred
// bytes this bounds one state's history at a few MB;
// maxFetchedHistoryBytes bounds it with large values. The rest of a longer
// history comes later, a slice at a time (HistoryRefiller).
const maxFetchedHistory = 2000

// maxFetchedHistoryBytes is about how many bytes of events and snapshots
// (historySize) one fetch reads at most (PullOptions.MaxFetchedHistoryBytes
// sets another): without it, 2,000 versions of values of max_value (1 MB)
// would be 2 GB. A fetch stops after the version that takes it over (at
// least one version above its start, so that it moves on), returned short
// as with the version bound (History.Upto). It is also the budget of the
// histories a page of pulled records holds at once (applyGroups).
const maxFetchedHistoryBytes = 32 << 20

// maxEventBytes is the largest event a remote holds: an event is one
// Firestore document (FirestoreLimits' MaxRecordBytes). Once what is left
// of a fetch's byte bound is less than a page (PageBytes), the fetch
// asks Events for no more events than fit in it at that size (at least
// one), so that a page of the largest events takes it at most one event
// over its bound.
const maxEventBytes = 1 << 20

// fetchBound bounds one fetch of a state's history: at most versions
// versions above where it starts, and about bytes of events and snapshots
// (historySize). 0: no bound.
type fetchBound struct {
	versions uint64
	bytes    int
}

// FetchHistory reads the remote history of key above top (what the local
// store holds, see HistoryApplier.HistoryTop) up to version, as mode says:
// with top 0 and HistorySinceSnapshot, the newest snapshot at or below
// version and the events after it; with HistoryFull every snapshot and
// event; with top > 0, the snapshots and events after top (a node that has
// a history of a state continues it), except with HistorySinceSnapshot when
// more than maxContinuedHistory versions are missing and the remote has a
// snapshot above top: then from that snapshot, as a new node (the versions
// between are a gap in the local history). It reads at most
// maxFetchedHistory versions above where it starts (top, or that snapshot),
// and stops after the version that takes what it read over
// maxFetchedHistoryBytes: a history that goes on above is returned short,
// with Upto set (see History). Errors are the remote's.
func FetchHistory(ctx context.Context, r HistoryRemote, key Key, top, version uint64, mode HistoryMode) (History, error) {
	return fetchHistory(ctx, r, key, top, version, mode, fetchBound{versions: maxFetchedHistory, bytes: maxFetchedHistoryBytes}, false)
}

// fetchHistory is FetchHistory within bound; continued says the local
// history of key is still being brought up (a hole is listed in it: an
// earlier fetch was short, or a lost change left it), so the read
// continues at top and never starts again at a snapshot: the starting
// point was chosen when the state's history was first fetched, and the
// slices after it store what one unbounded fetch would have.
func fetchHistory(ctx context.Context, r HistoryRemote, key Key, top, version uint64, mode HistoryMode, bound fetchBound, continued bool) (History, error) {
	h := History{From: top}
	if mode == HistoryNone || version <= top {
		return h, nil
	}
	after := top
	snaps, err := r.Snapshots(ctx, key, top, version)
	if err != nil {
		return History{}, fmt.Errorf("snapshots of %s: %w", key, err)
	}
	if n := len(snaps); n > 0 && !continued && mode == HistorySinceSnapshot && (top == 0 || version-top > maxContinuedHistory) {
		snaps = snaps[n-1:]
		after = snaps[0].Version
	}
	end := version
	if bound.versions > 0 && version-after > bound.versions {
		end = after + bound.versions
		h.Upto = end
	}
	for len(snaps) > 0 && snaps[len(snaps)-1].Version > end {
		snaps = snaps[:len(snaps)-1]
	}
	h.Snapshots = snaps
	// size is what the events read take, with the snapshots up to the
	// last one's version (the first counted).
	size, counted := 0, 0
	for after < end {
		want := int(min(historyPage, end-after))
		if left := bound.bytes - size; bound.bytes > 0 && left < PageBytes {
			want = min(want, max(1, left/maxEventBytes))
		}
		evs, err := r.Events(ctx, key, after, want)
		if err != nil {
			return History{}, fmt.Errorf("events of %s: %w", key, err)
		}
		page := 0 // EventSize of evs, as Events measures it
		for _, e := range evs {
			page += EventSize(e)
			if e.ToVersion <= after {
				return History{}, fmt.Errorf("events of %s: %w: version %d after %d", key, ErrPermanent, e.ToVersion, after)
			}
			if e.ToVersion > end {
				return h, nil
			}
			e.Key = key
			h.Events = append(h.Events, e)
			after = e.ToVersion
			// The version read, with its snapshot and those below it.
			size += eventSize(e)
			for ; counted < len(snaps) && snaps[counted].Version <= after; counted++ {
				size += applySize(snaps[counted].Record)
			}
			if bound.bytes > 0 && size > bound.bytes && after < end {
				h.Snapshots, h.Upto = snaps[:counted], after
				return h, nil
			}
		}
		if len(evs) < want && page <= PageBytes {
			break // the end of the log, not of a page cut by its bytes
		}
	}
	return h, nil
}

// fetchBound is how much one fetch of the puller reads at most.
func (p *Puller) fetchBound() fetchBound {
	b := fetchBound{versions: maxFetchedHistory, bytes: maxFetchedHistoryBytes}
	if p.opts.MaxFetchedHistory > 0 {
		b.versions = uint64(p.opts.MaxFetchedHistory)
	}
	if p.opts.MaxFetchedHistoryBytes > 0 {
		b.bytes = p.opts.MaxFetchedHistoryBytes
	}
	return b
}

// applyGroups applies b with the remote history of each record that the
// local store lacks, a group of records at a time: it fetches the
// histories of the records from the first not applied yet until they take
// the page budget (the fetch bound's bytes, see withHistory), applies that
// group (applyChunks), and goes on with the next. A page of records
// (up to PageSize) or a watch's first delivery thus holds at most about
// twice the fetch bound of history at once, not every record's history.
// Only the last group's call stores the governor's cursor: a crash between
// groups redoes the page from the old cursor (the records applied already
// are then stale, and their history is in).
func (p *Puller) applyGroups(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	var out ApplyResult
	for start := 0; ; {
		part, end, err := p.withHistory(ctx, b, start)
		if err != nil {
			return out, fmt.Errorf("remote history: %w", err)
		}
		res, err := p.applyChunks(ctx, part)
		if err != nil {
			return out, fmt.Errorf("apply remote records: %w", err)
		}
		out.Statuses = append(out.Statuses, res.Statuses...)
		if end >= len(b.Records) {
			return out, nil
		}
		start = end
	}
}

// withHistory returns the group of b's records that starts at start, with
// the remote history of each that the local store lacks (nil History when
// the puller brings none), and the index of the record after the group.
// The group ends after the record whose history takes the group's over
// the fetch bound's bytes (at least one record), or at the end of b; only
// a group that ends b keeps its cursor. A record whose remote history does
// not decode (ErrUndecodable) gets none, and a warning.
func (p *Puller) withHistory(ctx context.Context, b RemoteBatch, start int) (RemoteBatch, int, error) {
	part := b
	part.Records = b.Records[start:]
	ha, ok := p.applier.(HistoryApplier)
	if !ok || p.opts.History == nil || p.opts.HistoryMode == HistoryNone {
		return part, len(b.Records), nil
	}
	bound := p.fetchBound()
	part.History = make([]History, 0, len(part.Records))
	size := 0
	for _, r := range part.Records {
		if size > bound.bytes {
			break
		}
		h, err := p.historyOf(ctx, ha, r, bound)
		if err != nil {
			return RemoteBatch{}, 0, err
		}
		part.History = append(part.History, h)
		size += historySize(h)
	}
	part.Records = part.Records[:len(part.History)]
	end := start + len(part.Records)
	if end < len(b.Records) {
		part.Governor, part.Cursor = "", ""
	}
	return part, end, nil
}

// historyOf fetches the remote history of r that the local store lacks
// (none when it holds r's version), within bound. A history that does not
// decode is none, with a warning.
func (p *Puller) historyOf(ctx context.Context, ha HistoryApplier, r Record, bound fetchBound) (History, error) {
	top, err := ha.HistoryTop(ctx, r.Key)
	if err != nil {
		return History{}, fmt.Errorf("local history of %s: %w", r.Key, err)
	}
	if top >= r.Version {
		return History{}, nil
	}
	continued, err := p.continuesHistory(ctx, r.Key)
	if err != nil {
		return History{}, fmt.Errorf("local history of %s: %w", r.Key, err)
	}
	cctx, cancel := context.WithTimeout(ctx, p.opts.CallTimeout)
	defer cancel()
	h, err := fetchHistory(cctx, p.opts.History, r.Key, top, r.Version, p.opts.HistoryMode, bound, continued)
	if errors.Is(err, ErrUndecodable) {
		// An event or snapshot document of the state does not decode:
		// the record comes without its history (a gap in the local
		// log, as with HistoryNone) rather than hold back its
		// governor until the document is repaired.
		p.log.Warn("remote history does not decode: the record is applied without it", "key", r.Key.String(),
			"version", r.Version, "err", err)
		return History{}, nil
	}
	return h, err
}

// continuesHistory says whether the local history of key is still being
// brought up: the applier lists a hole in it (an earlier fetch was short,
// or a lost change left it), which the refill continues from its start
// without starting again at a snapshot. The fetch from top then continues
// too (fetchHistory): starting again at a snapshot would skip nothing the
// refill does not bring.
func (p *Puller) continuesHistory(ctx context.Context, key Key) (bool, error) {
	rf, ok := p.applier.(HistoryRefiller)
	if !ok {
		return false, nil
	}
	_, ok, err := rf.HistoryHole(ctx, key)
	return ok, err
}

// One ApplyRemote call stores at most about applyChunkItems records and
// history items (events and snapshots) and applyChunkBytes of them (see
// applySize): the local store writes each call in one transaction, which
// has a size limit (a few hundred KB with small memtables). A page of
// records, or a watch's first delivery of a whole governor, is applied in
// several calls.
const (
	applyChunkItems = 1000
	applyChunkBytes = 256 << 10
)

// applyChunks applies b in calls within applyChunkItems and
// applyChunkBytes, the records in order (a record and its history always
// in one call); only the last call stores the governor's cursor, so a crash
// between them redoes the page from the old cursor (the records applied
// already are then stale, and their history is in).
func (p *Puller) applyChunks(ctx context.Context, b RemoteBatch) (ApplyResult, error) {
	var out ApplyResult
	for start := 0; start < len(b.Records) || start == 0; {
		end, items, size := start, 0, 0
		for end < len(b.Records) {
			n, z := 1, applySize(b.Records[end])
			if b.History != nil {
				n += historyItems(b.History[end])
				z += historySize(b.History[end])
			}
			if end > start && (items+n > applyChunkItems || size+z > applyChunkBytes) {
				break
			}
			items, size = items+n, size+z
			end++
		}
		part := RemoteBatch{Records: b.Records[start:end]}
		if b.History != nil {
			part.History = b.History[start:end]
		}
		if end == len(b.Records) {
			part.Governor, part.Cursor = b.Governor, b.Cursor
		}
		res, err := p.applier.ApplyRemote(ctx, part)
		if err != nil {
			return out, err
		}
		out.Statuses = append(out.Statuses, res.Statuses...)
		if end == len(b.Records) {
			break
		}
		start = end
	}
	return out, nil
}

// applySize estimates the bytes a record takes in the local store's
// transaction (its value in full, though a large one is stored apart).
func applySize(r Record) int {
	return 128 + len(r.Governor) + len(r.State) + len(r.Value) + len(r.Change.Actor) + len(r.Change.Reason) +
		len(r.Origin) + len(r.OpID) + vectorSize(r.Clock.Vector)
}

// historySize estimates the bytes h takes (applySize of its snapshots and
// events): in the local store's transaction, and in memory until stored.
func historySize(h History) int {
	n := 0
	for _, s := range h.Snapshots {
		n += applySize(s.Record)
	}
	for _, e := range h.Events {
		n += eventSize(e)
	}
	return n
}

// eventSize is applySize for an event.
func eventSize(e Event) int {
	return 128 + len(e.Governor) + len(e.State) + len(e.Value) + len(e.Change.Actor) + len(e.Change.Reason) +
		len(e.Origin) + len(e.OpID) + vectorSize(e.Clock.Vector)
}

func historyItems(h History) int { return len(h.Events) + len(h.Snapshots) }
