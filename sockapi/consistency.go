package sockapi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Sync is the shared store as the server uses it: to read through on a
// local miss, to repair a read that must be fresher than the local copy is
// known to be, and (through the Store's WaitSynced) to confirm sync writes.
// cmd/tai-sidecar implements it over the syncer's Puller. It must be safe
// for concurrent use.
type Sync interface {
	// Fetch reads k from the shared store and applies it to the local
	// store (a newer remote version replaces the local one unless a local
	// change of k is still pending). Errors wrap ErrRemoteNotFound when
	// the shared store never had k, ErrRemoteUnavailable when it cannot
	// be reached now, ErrRemoteUndecodable when its document of k does not
	// decode, or are ctx's error.
	Fetch(ctx context.Context, k localcache.Key) error
	// FreshAt returns the time before which every change of governor in
	// the shared store is known to be in the local store (now while a live
	// watch of the governor is up); ok is false when that is unknown.
	FreshAt(governor string) (t time.Time, ok bool)
	// WriteStrong applies ws (one write or an atomic batch) as a
	// compare-and-set against the shared store and returns once the shared
	// store has it (localcache.Store.WriteStrong). Errors: ErrRemoteUnavailable
	// (nothing was written), ErrRemoteUndecodable (the shared store's
	// document of a state does not decode: nothing was written),
	// *localcache.VersionConflictError (checked
	// against the shared store, or a concurrent change got there first),
	// *localcache.ParkedError, ctx's error (written locally, still to be
	// pushed), or the store's write errors.
	WriteStrong(ctx context.Context, ws []localcache.Write) ([]localcache.Record, error)
	// ReadStrong reads keys from the shared store and returns its
	// committed records, in order (nil: it never had the state, or holds
	// it deleted), after pushing the local changes of the keys pending
	// when it started (localcache.Store.ReadStrong); the local store
	// applies them as Fetch does, and repaired counts the keys whose
	// local copy that replaced. Errors: ErrRemoteUnavailable (the shared
	// store cannot be reached), ErrRemoteUndecodable (its document of a
	// key does not decode), ctx's error (the local changes were not
	// pushed in time), others (the changes keep arriving, the store's).
	ReadStrong(ctx context.Context, keys []localcache.Key) (recs []*localcache.Record, repaired int, err error)
}

// Errors a Sync's Fetch wraps.
var (
	ErrRemoteNotFound    = errors.New("not in the shared store")
	ErrRemoteUnavailable = errors.New("the shared store is unavailable")
	// ErrRemoteUndecodable: the shared store holds a document of the state
	// that is not a state record (written by another tool or version). It
	// is not a miss; asking again fails again until it is repaired.
	ErrRemoteUndecodable = errors.New("the shared store's document of the state does not decode")
)

// SyncUndecodable is an optional capability of a Sync (found by type
// assertion). Undecodable reports whether the shared store's latest
// document of k is known not to decode: the pull leaves such a document
// out, so FreshAt does not cover k, and a read of k that would rely on it
// asks the shared store instead (which reports the document).
type SyncUndecodable interface {
	Undecodable(k localcache.Key) bool
}

// Read levels, from the request's consistency.
type readLevel uint8

const (
	readLocal   readLevel = iota // the local copy; a miss reads through
	readBounded                  // the local copy if fresh within maxStale, else read-repair
	readStrong                   // read from the shared store first
)

type readMode struct {
	level    readLevel
	maxStale time.Duration
}

// readThroughFresh: a local miss of a governor whose local copy is known
// complete up to this long ago is answered NotFound without asking the
// shared store (a live watch keeps it at zero).
const readThroughFresh = time.Second

// offlineHold is how long reads skip a shared store found unreachable.
const offlineHold = 2 * time.Second

// fetchConcurrency bounds the shared-store reads one batch_get runs at
// once.
const fetchConcurrency = 8

// syncTimeoutCap is the longest wait a sync write's timeout_ms may ask for.
func (s *Server) syncTimeoutCap() time.Duration {
	return max(s.opts.SyncTimeout, maxSyncTimeout)
}

func echoLevel(level string) string {
	if len(level) > maxOpEcho {
		return level[:maxOpEcho] + "..."
	}
	return level
}

// noSharedStore is the error of a request that needs a shared store on a
// sidecar without one.
func noSharedStore(level string) *wire.Error {
	e := wire.Errorf(wire.CodeUnavailable, "consistency %q needs a shared store, and none is configured: this sidecar is local only", level)
	e.Retryable = false
	e.Field = "consistency"
	return e
}

// readConsistency checks a read's consistency and max_staleness_ms. list
// (listing) accepts "local" only.
func (c *conn) readConsistency(req *wire.Request, listing bool) (readMode, *wire.Error) {
	switch req.Consistency {
	case "", wire.ReadLocal:
		return readMode{level: readLocal}, nil
	case wire.ReadBounded, wire.ReadStrong:
		if listing {
			return readMode{}, invalid("consistency", "list is served from the local store only: consistency %q is not supported", req.Consistency)
		}
	default:
		want := `"local", "bounded" or "strong"`
		if listing {
			want = `"local"`
		}
		return readMode{}, invalid("consistency", "consistency %q is not a read level: want %s", echoLevel(req.Consistency), want)
	}
	m := readMode{level: readStrong}
	if req.Consistency == wire.ReadBounded {
		if req.MaxStalenessMS == 0 {
			return readMode{}, invalid("max_staleness_ms", "consistency \"bounded\" needs max_staleness_ms > 0")
		}
		m.level = readBounded
		m.maxStale = time.Duration(min(req.MaxStalenessMS, uint64(maxStaleness/time.Millisecond))) * time.Millisecond
	}
	if c.s.opts.Sync == nil {
		return readMode{}, noSharedStore(req.Consistency)
	}
	return m, nil
}

// maxStaleness caps max_staleness_ms (so that it fits a Duration).
const maxStaleness = 365 * 24 * time.Hour

// writeMode is a write's consistency: sync waits for the shared store, for
// at most timeout.
type writeMode struct {
	sync    bool
	strong  bool // a compare-and-set against the shared store (implies waiting for it)
	timeout time.Duration
}

// writeConsistency checks a write's consistency and timeout_ms.
func (c *conn) writeConsistency(req *wire.Request) (writeMode, *wire.Error) {
	switch req.Consistency {
	case "", wire.WriteAsync:
		return writeMode{}, nil
	case wire.WriteSync, wire.WriteStrong:
	default:
		return writeMode{}, invalid("consistency", "consistency %q is not a write level: want \"async\", \"sync\" or \"strong\"", echoLevel(req.Consistency))
	}
	if c.s.opts.Sync == nil {
		return writeMode{}, noSharedStore(req.Consistency)
	}
	m := writeMode{sync: req.Consistency == wire.WriteSync, strong: req.Consistency == wire.WriteStrong, timeout: c.s.opts.SyncTimeout}
	if req.TimeoutMS > 0 {
		cp := c.s.syncTimeoutCap()
		m.timeout = time.Duration(min(req.TimeoutMS, uint64(cp/time.Millisecond))) * time.Millisecond
	}
	return m, nil
}

// freshWithin reports whether the local copy of k is known to hold every
// remote change of it made more than d ago: its governor's is, and the
// shared store's document of k is not one the pull left out (see
// SyncUndecodable).
func (c *conn) freshWithin(k localcache.Key, d time.Duration) bool {
	t, ok := c.s.opts.Sync.FreshAt(k.Governor)
	if !ok || time.Since(t) > d {
		return false
	}
	u, ok := c.s.opts.Sync.(SyncUndecodable)
	return !ok || !u.Undecodable(k)
}

// age is how far behind the shared store the local copy of k may be, in
// milliseconds (wire.Record.AgeMS): the time since the sidecar last knew
// it held every change of k's governor. ok is false when that is unknown:
// no shared store, a governor not pulled yet, or a state whose shared-store
// document does not decode.
func (c *conn) age(k localcache.Key) (ms uint64, ok bool) {
	sync := c.s.opts.Sync
	if sync == nil {
		return 0, false
	}
	t, ok := sync.FreshAt(k.Governor)
	if !ok {
		return 0, false
	}
	if u, isU := sync.(SyncUndecodable); isU && u.Undecodable(k) {
		return 0, false
	}
	return uint64(max(time.Since(t), 0).Milliseconds()), true
}

// stampAge sets the AgeMS of rec, a read's record, to *buf: 0 for a record
// read from the shared store in this request, else the age of the local
// copy (left nil when unknown).
func (c *conn) stampAge(rec *wire.Record, buf *uint64) {
	if !rec.FromCache {
		*buf, rec.AgeMS = 0, buf
		return
	}
	if ms, ok := c.age(localcache.Key{Governor: rec.Governor, State: rec.State}); ok {
		*buf, rec.AgeMS = ms, buf
	}
}

// needsFetch reports whether a read of k at mode must ask the shared store
// before answering (bounded and not fresh enough, or strong).
func (c *conn) needsFetch(k localcache.Key, m readMode) bool {
	switch m.level {
	case readStrong:
		return true
	case readBounded:
		return !c.freshWithin(k, m.maxStale)
	}
	return false
}

// readsThrough reports whether a local miss of k at mode is read through:
// a shared store is configured and the local copy of k is not known to be
// complete (within the bound of a bounded read, within readThroughFresh
// otherwise).
func (c *conn) readsThrough(k localcache.Key, m readMode) bool {
	if c.s.opts.Sync == nil || m.level == readStrong {
		return false // strong reads have fetched already
	}
	bound := readThroughFresh
	if m.level == readBounded {
		bound = m.maxStale
	}
	return !c.freshWithin(k, bound)
}

// fetchResult is what asking the shared store about one key found out.
type fetchResult struct {
	asked    bool   // the shared store answered (with a record or "never had it")
	why      string // why it could not be asked, when !asked
	repaired bool   // the local copy was behind: the shared store's record replaced it
	// undecodable, when set, is the fetch's error: the shared store's
	// document of the key does not decode (!asked: the local copy, if
	// any, is all there is, and it is stale).
	undecodable error
}

// fetch asks the shared store about k and applies what it has, for at most
// timeout. An error that is not about the shared store (the connection's
// context ended) comes back as err.
//
// After a read found the shared store unreachable, reads do not ask it
// again for offlineHold: they answer at once as if it were unreachable
// (bounded reads stale, strong reads Unavailable) instead of each waiting
// out the timeout.
func (c *conn) fetch(k localcache.Key, timeout time.Duration) (fetchResult, error) {
	off := &c.s.offlineUntil
	if c.s.heldOffline() {
		return fetchResult{why: heldOfflineWhy}, nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	var repaired bool
	var err error
	if sc, ok := c.s.opts.Sync.(SyncCounters); ok {
		repaired, err = sc.FetchRepair(ctx, k)
	} else {
		err = c.s.opts.Sync.Fetch(ctx, k)
	}
	cancel()
	switch {
	case err == nil, errors.Is(err, ErrRemoteNotFound):
		off.Store(0)
		return fetchResult{asked: true, repaired: repaired}, nil
	case c.ctx.Err() != nil:
		return fetchResult{}, c.ctx.Err()
	case errors.Is(err, ErrRemoteUndecodable):
		// The pull logs each such document once; a read does not again.
		off.Store(0)
		return fetchResult{why: "its document of the state does not decode", undecodable: err}, nil
	case errors.Is(err, ErrRemoteUnavailable), errors.Is(err, context.DeadlineExceeded):
		c.log.Debug("shared store unavailable for a read", "governor", k.Governor, "state", k.State, "err", err)
		off.Store(time.Now().Add(offlineHold).UnixNano())
		return fetchResult{why: fmt.Sprintf("unavailable: %v", err)}, nil
	default:
		c.log.Warn("shared store read failed", "governor", k.Governor, "state", k.State, "err", err)
		return fetchResult{why: "it failed (see the sidecar's log)"}, nil
	}
}

// heldOffline reports whether reads skip the shared store now: it was found
// unreachable less than offlineHold ago.
func (s *Server) heldOffline() bool {
	until := s.offlineUntil.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// heldOfflineWhy says why a read did not ask the shared store while
// heldOffline.
var heldOfflineWhy = fmt.Sprintf("it was unreachable moments ago; asking again after %v", offlineHold)

// fetchTimeout is the bound of the shared-store read of a read at mode.
func (c *conn) fetchTimeout(m readMode) time.Duration {
	if m.level == readLocal {
		return min(c.s.opts.FetchTimeout, defaultReadThrough)
	}
	return c.s.opts.FetchTimeout
}

// undecodable is the error of a read or write of k that found the shared
// store's document of k undecodable (err, wrapping ErrRemoteUndecodable,
// says which document, and why): not retryable, and not NotFound, since
// the state exists there.
func undecodable(k localcache.Key, what string, err error) *wire.Error {
	e := unavailableAbout(k, "%s: %v (the state cannot be read from the shared store or written to it "+
		"until that document is repaired or deleted)", what, err)
	e.Retryable = false
	return e
}

// unreachable is the error of a strong read that could not ask the shared
// store.
func unreachable(k localcache.Key, why string) *wire.Error {
	return unavailableAbout(k, "strong read: the shared store could not be asked (%s)", why)
}

// fetchGet serves a get that asks the shared store: it fetches k, then
// reads the local store, which now holds what the shared store had (or a
// pending local change, which is newer). A strong get is strongGet's. It
// runs on its own goroutine (goWrite), after the connection's earlier
// writes to k.
func (c *conn) fetchGet(k localcache.Key, m readMode) *wire.Response {
	if m.level == readStrong {
		return c.strongGet(k, m)
	}
	fr, err := c.fetch(k, c.fetchTimeout(m))
	if err != nil {
		return c.errorResponse(c.storeError(wire.OpGet, k, err))
	}
	if fr.repaired {
		c.s.reads.noteRepairs(m, 1)
	}
	r, err := c.s.store.Get(c.ctx, k)
	if err != nil {
		e := c.storeError(wire.OpGet, k, err)
		if e.Code == wire.CodeNotFound && fr.undecodable != nil {
			return c.errorResponse(undecodable(k, "state not found locally", fr.undecodable))
		}
		if e.Code == wire.CodeNotFound && !fr.asked {
			e.Message = "state not found locally, and the shared store could not be asked: " + fr.why
		}
		return c.errorResponse(e)
	}
	rec := new(wire.Record)
	toWire(rec, &r, true)
	rec.FromCache = !fr.asked
	rec.Stale = !fr.asked && m.level != readLocal
	c.stampAge(rec, new(uint64))
	return &wire.Response{Record: rec}
}

// fetchBatch serves a batch_get that asks the shared store about keys
// (with only, about those of its indexes), then reads them all locally. A
// strong batch_get is strongBatch's.
func (c *conn) fetchBatch(keys []localcache.Key, only []int, m readMode) *wire.Response {
	if m.level == readStrong {
		return c.strongBatch(keys, m)
	}
	if only == nil {
		only = make([]int, len(keys))
		for i := range keys {
			only[i] = i
		}
	}
	results := make([]fetchResult, len(keys))
	for i := range results {
		results[i].asked = true // keys not fetched are not stale
	}
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, fetchConcurrency)
		errMu    sync.Mutex
		firstErr error
	)
	timeout := c.fetchTimeout(m)
	for _, i := range only {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fr, err := c.fetch(keys[i], timeout)
			if err != nil {
				errMu.Lock()
				firstErr = err
				errMu.Unlock()
			}
			results[i] = fr
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return c.errorResponse(c.storeError(wire.OpBatchGet, localcache.Key{}, firstErr))
	}
	repaired := 0
	for _, fr := range results {
		if fr.repaired {
			repaired++
		}
	}
	c.s.reads.noteRepairs(m, repaired)
	got, err := c.s.store.GetMany(c.ctx, keys)
	if err == nil && len(got) != len(keys) {
		err = fmt.Errorf("store returned %d records for %d keys", len(got), len(keys))
	}
	if err != nil {
		return c.errorResponse(c.storeError(wire.OpBatchGet, localcache.Key{}, err))
	}
	if e := c.batchTooLarge(got); e != nil {
		return c.errorResponse(e)
	}
	fetched := make([]bool, len(keys))
	for _, i := range only {
		fetched[i] = true
		if got[i] == nil && results[i].undecodable != nil {
			return c.errorResponse(undecodable(keys[i], "state not found locally", results[i].undecodable))
		}
	}
	recs := make([]wire.Record, len(got))
	ages := make([]uint64, len(got))
	out := make([]*wire.Record, len(got))
	for i, r := range got {
		if r == nil {
			continue
		}
		toWire(&recs[i], r, true)
		if fetched[i] {
			recs[i].FromCache = !results[i].asked
			recs[i].Stale = !results[i].asked && m.level != readLocal
		}
		c.stampAge(&recs[i], &ages[i])
		out[i] = &recs[i]
	}
	return &wire.Response{Records: out}
}

// waitContext returns the context of a wait on the shared store: it ends
// after timeout, with the connection, or as soon as a graceful shutdown
// begins (with context.Canceled): the push loop stops with the server, so
// waiting on for it is pointless.
func (c *conn) waitContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	go func() {
		select {
		case <-c.s.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// syncWait is the second half of a sync write: it waits until the shared
// store has the journal entries seqs, for at most m.timeout, and returns
// nil or the error to reply with. k names the state of a single write.
//
// A graceful shutdown ends the wait at once (the push loop stops with the
// server): the change is durable locally and syncs after the restart.
func (c *conn) syncWait(m writeMode, k localcache.Key, seqs []uint64) *wire.Error {
	ctx, cancel := c.waitContext(m.timeout)
	err := c.s.store.WaitSynced(ctx, seqs...)
	draining := ctx.Err() == context.Canceled
	cancel()
	var (
		pe   *localcache.ParkedError
		lost *localcache.ConflictLostError
		e    *wire.Error
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &lost):
		actual := lost.RemoteVersion
		if lost.RemoteDeleted {
			actual = 0
		}
		if lost.Strict { // a transaction's (txn.go)
			e = wire.Errorf(wire.CodeVersionConflict,
				"the shared store held a concurrent change: the change gave way and none of it was applied (this sidecar's copy follows the shared store's)")
		} else {
			e = wire.Errorf(wire.CodeVersionConflict,
				"the shared store held a concurrent change that won the conflict (see the conflict ledger): the change was applied locally, then replaced by the shared store's record, which this sidecar's copy now follows")
		}
		e.Actual = &actual
		k = lost.Key
	case errors.As(err, &pe) && pe.FenceRejected != nil: // fence.go
		e = fenceRejected(pe.FenceRejected, fmt.Sprintf(
			"the shared store rejected the change (journal entry %d is on the failed list; this sidecar's copy follows the shared store's)", pe.Seq))
		k = pe.Key
	case errors.As(err, &pe):
		e = wire.Errorf(wire.CodeUnavailable,
			"the change is applied locally, but the shared store rejected it for good: %s (journal entry %d is on the failed list; do not retry unchanged)",
			pe.Reason, pe.Seq)
		e.Retryable = false
		k = pe.Key
	case errors.Is(err, context.DeadlineExceeded) && !draining && c.ctx.Err() == nil:
		e = wire.Errorf(wire.CodeTimeout,
			"the change is durable locally and will sync to the shared store, but the shared store did not confirm it within %v; do not retry (a retry would write again): read it back or watch it",
			m.timeout)
		e.Retryable = false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e = wire.Errorf(wire.CodeUnavailable,
			"the sidecar is shutting down; the change is durable locally and will sync to the shared store later (do not retry: a retry would write again)")
		e.Retryable = false
	default:
		e = c.storeError(wire.OpPut, k, err)
		e.Message += "; the change is durable locally and will sync later"
		e.Retryable = false
	}
	e.Governor, e.State = k.Governor, k.State
	return e
}

// refreshSynced updates the sync fields of write replies after a sync
// write: pending and synced_at as the store holds them now (the record of
// a state written again since keeps what the write returned, not
// pending).
func (c *conn) refreshSynced(recs []*wire.Record) {
	keys := make([]localcache.Key, len(recs))
	for i, r := range recs {
		keys[i] = localcache.Key{Governor: r.Governor, State: r.State}
		r.Pending = false
	}
	got, err := c.s.store.GetMany(c.ctx, keys)
	if err != nil || len(got) != len(recs) {
		return // the reply stays right, with synced_at unknown
	}
	for i, g := range got {
		if g != nil && g.Version == recs[i].Version {
			recs[i].Pending, recs[i].SyncedAt = g.Pending, g.SyncedAt
		}
	}
}

// writeStrong runs a strong write (see Sync.WriteStrong) for at most
// m.timeout (a graceful shutdown ends it at once) and returns its records,
// or the error to reply with. k names the state of a single write.
func (c *conn) writeStrong(m writeMode, op string, k localcache.Key, ws []localcache.Write) ([]localcache.Record, *wire.Error) {
	ctx, cancel := c.waitContext(m.timeout)
	defer cancel()
	recs, err := c.s.opts.Sync.WriteStrong(ctx, ws)
	if err == nil {
		return recs, nil
	}
	return nil, c.strongError(m, op, k, err)
}

// strongError is the error to reply with when a strong write (or
// transaction) failed with err.
func (c *conn) strongError(m writeMode, op string, k localcache.Key, err error) *wire.Error {
	var (
		pe *localcache.ParkedError
		e  *wire.Error
	)
	switch {
	case errors.Is(err, ErrRemoteUnavailable) && errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil:
		e = wire.Errorf(wire.CodeUnavailable, "strong write: the shared store did not answer within %v; nothing was written (%v)", m.timeout, err)
	case errors.Is(err, ErrRemoteUnavailable):
		e = wire.Errorf(wire.CodeUnavailable, "strong write: the shared store could not be asked; nothing was written (%v)", err)
	case errors.Is(err, ErrRemoteUndecodable):
		e = undecodable(k, "strong write: nothing was written", err)
	case errors.As(err, &pe) && pe.FenceRejected != nil: // fence.go
		e = fenceRejected(pe.FenceRejected, fmt.Sprintf(
			"strong write: the shared store rejected the change (journal entry %d is on the failed list; this sidecar's copy follows the shared store's)", pe.Seq))
		k = pe.Key
	case errors.As(err, &pe):
		e = wire.Errorf(wire.CodeUnavailable,
			"strong write: the shared store rejected the change for good: %s (journal entry %d is on the failed list; do not retry unchanged)", pe.Reason, pe.Seq)
		e.Retryable = false
		k = pe.Key
	case errors.Is(err, localcache.ErrNotWritten) && errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil:
		e = wire.Errorf(wire.CodeTimeout, "strong write: the shared store did not answer within %v; nothing was written", m.timeout)
		e.Retryable = true
	case errors.Is(err, localcache.ErrNotWritten) && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		e = wire.Errorf(wire.CodeUnavailable, "strong write: the server is shutting down; nothing was written")
		e.Retryable = true
	case errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil:
		e = wire.Errorf(wire.CodeTimeout,
			"strong write: stored locally, but the shared store did not confirm it within %v; its push will apply it, or drop it if a concurrent change got there first: read it back before retrying",
			m.timeout)
		e.Retryable = false
	case errors.Is(err, context.Canceled):
		// Shutdown: the change may be stored already, waiting for its push,
		// which the next start makes. A retry could apply it twice.
		e = wire.Errorf(wire.CodeUnavailable,
			"strong write: the server is shutting down; the change may be stored locally, and then its push after the restart applies it, or drops it if a concurrent change got there first: read it back before retrying")
		e.Retryable = false
	default:
		e = c.storeError(op, k, err)
	}
	if k != (localcache.Key{}) {
		e.Governor, e.State = k.Governor, k.State
	}
	return e
}
