package localcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sync/semaphore"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Store is the local state store. All methods are safe for concurrent use.
// Open starts its goroutines (the group committer and the value log
// collector); Close stops them.
type Store struct {
	opts   Options
	log    *slog.Logger
	db     *badger.DB
	cache  *cache
	nodeID string
	origin atomic.Pointer[string] // see Origin; changed only by the committer (origin.go)
	// originRenewals counts the new incarnations drawn while open (origin.go).
	originRenewals atomic.Uint64
	ledger         ledgerState // the conflict ledger's retention (ledger.go)
	txlog          txLogState  // the transaction log's retention (txlog.go)

	// reqs carries write requests to the committer. Senders hold closeMu
	// for reading, and Close closes reqs holding it for writing, so no send
	// races the close.
	reqs    chan *request
	closeMu sync.RWMutex
	closing bool
	// closed is set once Close has begun: reads fail fast with ErrClosed.
	closed atomic.Bool
	// dbMu guards Badger against Close on the read path of cache misses
	// (cache hits never touch it).
	dbMu sync.RWMutex

	abort         chan struct{} // closed when Close gives up draining
	committerDone chan struct{}
	// applyQ carries logged groups from the committer to the applier (on
	// disk); the committer closes it when it returns.
	applyQ      chan applyJob
	applyBudget *semaphore.Weighted // see applyQueueBytes
	applierDone chan struct{}
	// inflight counts groups handed to the applier and not yet applied.
	inflight  atomic.Int64
	gcCancel  context.CancelFunc
	gcDone    chan struct{}
	ckCancel  context.CancelFunc
	ckDone    chan struct{}
	closeOnce sync.Once
	closeErr  error

	// meta is owned by the committer: the counters and clocks as of the last
	// group logged (on disk) or committed (in memory). metaStates,
	// metaJournal and metaParked mirror three of them, as of the last group
	// acknowledged, for Stats.
	meta         meta
	metaStates   atomic.Int64
	metaJournal  atomic.Int64
	metaParked   atomic.Int64
	commits      atomic.Uint64
	commitWrites atomic.Uint64
	walSyncs     atomic.Uint64 // write-ahead log appends (write and fdatasync)
	walSyncNanos atomic.Uint64 // their total duration

	// wal is the write-ahead log (nil in memory). The committer appends to
	// it; applied is the last group the applier applied to Badger and the
	// cache.
	wal     *wal
	applied atomic.Uint64
	// logged is the last group in the log, set by the committer before it
	// answers the group's writers; unapplied counts groups logged and not
	// yet applied (it never drops back after a failed apply). barrierCh is
	// closed and replaced, under barrierMu, when a group is applied or an
	// apply fails (see barrier).
	logged    atomic.Uint64
	unapplied atomic.Int64
	barrierMu sync.Mutex
	barrierCh chan struct{}
	// walBytes counts bytes appended to the log; ckBytes is its value when
	// the last checkpoint began. ckNotify wakes the checkpoint loop.
	walBytes atomic.Int64
	ckBytes  atomic.Int64
	ckNotify chan struct{}
	// ckMu serializes syncs of Badger's files (checkpoints, value log GC,
	// Close); it guards ckApplied and vlogSynced.
	ckMu       sync.Mutex
	ckApplied  uint64 // groups up to it are durable in Badger's files
	vlogSynced uint64 // value log files below this id were synced and are no longer written
	// failure is set when a group's outcome became unknown: writes then
	// fail with ErrFailed.
	failure atomic.Pointer[error]

	// repliedAt is when writers were last answered (unix nanoseconds).
	repliedAt atomic.Int64

	// journalCh wakes the syncer after new journal entries are
	// acknowledged (see Notify).
	journalCh chan struct{}
	// governors holds every governor with a stored record (see Governors).
	governors sync.Map // string -> struct{}
	// feed holds the change subscriptions (feed.go); ackCh is closed and
	// replaced, under ackMu, after each durable sync-side mutation
	// (WaitSynced).
	feed  feed
	ackMu sync.Mutex
	ackCh chan struct{}
	// lastSeq is the journal sequence number of the last acknowledged change.
	lastSeq atomic.Uint64
	// lost holds strict changes that lost a conflict, for WaitSynced (under
	// ackMu; bounded).
	lost map[uint64]lostChange
	// snaps takes automatic snapshots (snapshot.go).
	snaps snapshotter
	// retain applies the history retention policies (retention.go).
	retain retainer
	// cleanupMu runs one Cleanup at a time: a cleanup plans its merges of
	// journal entries from the journal as it read it (cleanup.go).
	cleanupMu sync.Mutex

	// limits cut groups into Badger transactions (see txnLimits).
	limits txnLimits

	// commitMu is held by whoever commits a group: the committer goroutine,
	// or a lone writer committing its own request (see leadAlone). It
	// guards meta and the fields below, which the doc comments call the
	// committer's.
	commitMu     sync.Mutex
	rview        *badger.Txn // see readView
	rviewApplied uint64
	walBuf       []byte
	syncEWMA     time.Duration // recent write-ahead log append+sync time
	lastGroup    int           // requests in the last group
	backlog      int           // requests queued when it was handed on
	// overlay holds the records of groups logged and not yet applied, and
	// overlayGroups their keys, oldest group first (see Pipeline). The
	// committer writes overlay holding ovMu; point reads read it holding
	// ovMu for reading.
	ovMu          sync.RWMutex
	overlay       map[Key]overlayEntry
	overlayGroups []overlayGroup
}

// Open opens (or creates) the store and starts its group committer (and,
// on disk, its applier).
func Open(opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if !opts.InMemory {
		if err := mkdirSynced(opts.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("localcache: open: %w", err)
		}
	}
	db, err := badger.Open(opts.badgerOptions())
	if err != nil {
		return nil, fmt.Errorf("localcache: open badger: %w", err)
	}
	s := &Store{
		opts:          opts,
		log:           opts.Logger,
		db:            db,
		cache:         newCache(opts.CacheBytes),
		limits:        newTxnLimits(db),
		reqs:          make(chan *request, 4096),
		abort:         make(chan struct{}),
		committerDone: make(chan struct{}),
		applyQ:        make(chan applyJob, applyQueueGroups),
		applyBudget:   semaphore.NewWeighted(applyQueueBytes),
		applierDone:   make(chan struct{}),
		overlay:       make(map[Key]overlayEntry),
		gcDone:        make(chan struct{}),
		ckDone:        make(chan struct{}),
		ckNotify:      make(chan struct{}, 1),
		barrierCh:     make(chan struct{}),
		journalCh:     make(chan struct{}, 1),
		ackCh:         make(chan struct{}),
	}
	if !opts.InMemory {
		if err := s.openWAL(); err != nil {
			if s.wal != nil {
				_ = s.wal.close()
			}
			_ = db.Close()
			return nil, fmt.Errorf("localcache: open: %w", err)
		}
	}
	s.logged.Store(s.applied.Load())
	if err := s.load(); err != nil {
		s.abandon()
		return nil, fmt.Errorf("localcache: open: %w", err)
	}
	if s.wal != nil && !opts.noCheckpoint {
		// Make the replayed groups and load's writes durable in Badger, and
		// drop the log they came from.
		if err := s.checkpoint(ckOpen); err != nil {
			s.abandon()
			return nil, fmt.Errorf("localcache: open: %w", err)
		}
	}
	s.log.Info("local store open", "dir", opts.Dir, "in_memory", opts.InMemory, "node_id", s.nodeID, "origin", s.Origin(),
		"states", s.meta.states, "journal_depth", s.meta.journal)
	go s.committer()
	if s.wal != nil {
		go s.applier()
	} else {
		close(s.applierDone)
	}
	gcCtx, cancel := context.WithCancel(context.Background())
	s.gcCancel = cancel
	go s.collectGarbage(gcCtx)
	ckCtx, cancel := context.WithCancel(context.Background())
	s.ckCancel = cancel
	go s.checkpointLoop(ckCtx)
	s.startSnapshots()
	s.startRetention()
	return s, nil
}

// abandon closes what Open opened after a failure. The write-ahead log is
// kept: the next Open replays it.
func (s *Store) abandon() {
	if s.wal != nil {
		_ = s.wal.close()
	}
	_ = s.db.Close()
}

// load reads the meta keys (checking the layout version) and settles the
// node id, writing what a fresh database lacks.
func (s *Store) load() error {
	var stored, storedOrigin string
	err := s.db.View(func(txn *badger.Txn) error {
		if v, err := getValue(txn, metaFormat); err != nil {
			return err
		} else if v != nil && (len(v) != 1 || v[0] != layoutVersion) {
			return fmt.Errorf("%w: layout version %v, this build reads %d", errCorrupt, v, layoutVersion)
		}
		v, err := getValue(txn, metaCounters)
		if err != nil {
			return err
		}
		if v != nil {
			if s.meta, err = decodeMeta(v); err != nil {
				return err
			}
		}
		v, err = getValue(txn, metaNode)
		if err != nil {
			return err
		}
		stored = string(v)
		v, err = getValue(txn, metaOrigin)
		storedOrigin = string(v)
		return err
	})
	if err != nil {
		return err
	}
	s.nodeID = s.opts.NodeID
	if s.nodeID == "" {
		s.nodeID = stored
	}
	if s.nodeID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		s.nodeID = hex.EncodeToString(b[:])
	}
	if strings.Contains(s.nodeID, originSep) {
		return fmt.Errorf("node id %q: %q is not allowed", s.nodeID, originSep)
	}
	if stored != "" && stored != s.nodeID {
		s.log.Warn("node id changed", "stored", stored, "node_id", s.nodeID)
	}
	origin := storedOrigin
	if node, _, _ := strings.Cut(storedOrigin, originSep); node != s.nodeID || s.opts.NewIncarnation {
		// A fresh store, one whose node id changed, or a restored copy: a
		// new incarnation.
		origin = newOrigin(s.nodeID)
		if node == s.nodeID {
			s.log.Warn("new incarnation", "origin", origin, "was", storedOrigin)
		}
	}
	s.origin.Store(&origin)
	s.metaStates.Store(s.meta.states)
	s.metaJournal.Store(s.meta.journal)
	s.metaParked.Store(s.meta.parked)
	s.lastSeq.Store(s.meta.seq)
	if err := s.loadGovernors(); err != nil {
		return err
	}
	if stored == s.nodeID && storedOrigin == origin {
		return nil
	}
	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(metaFormat, []byte{layoutVersion}); err != nil {
			return err
		}
		if err := txn.Set(metaOrigin, []byte(origin)); err != nil {
			return err
		}
		return txn.Set(metaNode, []byte(s.nodeID))
	})
}

// getValue returns a copy of key's value, or nil when it is missing.
func getValue(txn *badger.Txn, key []byte) ([]byte, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// Close stops accepting writes (they fail with ErrClosed), lets the
// committer finish every write already queued, then closes Badger. If ctx
// ends first, queued writes not yet committing fail with ErrClosed and Close
// returns ctx's error once Badger is closed. Calling Close again returns the
// first call's result.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx) })
	return s.closeErr
}

func (s *Store) close(ctx context.Context) error {
	s.stopRetention()
	s.stopSnapshots()
	s.closed.Store(true)
	s.closeMu.Lock()
	s.closing = true
	close(s.reqs)
	s.closeMu.Unlock()

	var errs []error
	select {
	case <-s.committerDone:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("localcache: close: draining writes: %w", ctx.Err()))
		close(s.abort)
		<-s.committerDone
	}
	// Groups in the log are applied and answered even after ctx ended: the
	// applier needs no more than the Badger commits.
	<-s.applierDone
	s.gcCancel()
	<-s.gcDone
	s.ckCancel()
	<-s.ckDone

	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	dbErr := s.db.Close()
	if dbErr != nil {
		errs = append(errs, fmt.Errorf("localcache: close badger: %w", dbErr))
	}
	if s.wal != nil {
		// The final checkpoint: with Badger's files synced, the log is no
		// longer needed. After a failure it stays, for the next Open.
		if dbErr == nil && s.failure.Load() == nil && !s.opts.noCheckpoint {
			if err := s.checkpoint(ckFinal); err != nil {
				errs = append(errs, fmt.Errorf("localcache: close: %w", err))
			}
		}
		if err := s.wal.close(); err != nil {
			errs = append(errs, fmt.Errorf("localcache: close write-ahead log: %w", err))
		}
	}
	s.endFeed()
	s.log.Info("local store closed")
	return errors.Join(errs...)
}

// NodeID returns this store's node id.
func (s *Store) NodeID() string { return s.nodeID }

// originSep separates the node id from the incarnation in an origin; node
// ids cannot hold it.
const originSep = "~"

// Origin returns the name this store's changes carry as their origin: the
// node id and a random incarnation drawn when the store was created (or its
// node id changed, or Options.NewIncarnation asked for one),
// "node~incarnation". Op ids and this node's vector clock
// entries count from 1 in every store, so a node that lost its data dir and
// comes back under the same node id (a StatefulSet pod, TAI_NODE_ID) must
// not make them again under the same name: the shared store would take its
// new changes for the lost store's, already applied.
//
// A store that meets proof that another store makes changes under its
// origin (originReused) draws a new incarnation while it runs.
func (s *Store) Origin() string { return *s.origin.Load() }

// newOrigin returns an origin of node with a new random incarnation.
func newOrigin(node string) string {
	return node + originSep + strings.ToLower(rand.Text()[:8])
}

// view runs fn in a Badger read transaction, failing with ErrClosed once the
// store is closing.
func (s *Store) view(fn func(txn *badger.Txn) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.closed.Load() {
		return ErrClosed
	}
	return s.db.View(fn)
}

// scan is view for reads that may touch the records of more than one
// write: it first waits until every group logged before the call is
// applied to Badger (see barrier).
func (s *Store) scan(ctx context.Context, fn func(txn *badger.Txn) error) error {
	if err := s.barrier(ctx); err != nil {
		return err
	}
	return s.view(fn)
}

// pending returns the logged and not yet applied record of k, if any.
func (s *Store) pending(k Key) (*Record, bool) {
	if s.unapplied.Load() == 0 {
		return nil, false
	}
	s.ovMu.RLock()
	e, ok := s.overlay[k]
	s.ovMu.RUnlock()
	return e.rec, ok
}

func validateKey(op string, k Key) error {
	if err := wire.ValidateName("governor", k.Governor); err != nil {
		return &KeyError{Op: op, Key: k, Err: &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}}
	}
	if err := wire.ValidateName("state", k.State); err != nil {
		return &KeyError{Op: op, Key: k, Err: &FieldError{Field: "state", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}}
	}
	return nil
}

// Get returns the state k. A missing or deleted state is a *KeyError
// wrapping ErrNotFound. The record's Value and Clock.Vector are shared with
// the read cache: do not modify them.
func (s *Store) Get(ctx context.Context, k Key) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if s.closed.Load() {
		return Record{}, ErrClosed
	}
	if err := validateKey("get", k); err != nil {
		return Record{}, err
	}
	rec, ok := s.pending(k)
	if !ok {
		rec = s.cache.get(k)
	}
	if rec == nil && !ok {
		epoch := s.cache.epoch(k)
		err := s.view(func(txn *badger.Txn) error {
			var err error
			rec, err = readRecord(txn, k)
			return err
		})
		if err != nil {
			return Record{}, fmt.Errorf("localcache: get %s: %w", k, err)
		}
		if rec != nil {
			s.cache.fill(k, rec, epoch)
		}
	}
	if rec == nil || rec.Deleted {
		return Record{}, &KeyError{Op: "get", Key: k, Err: ErrNotFound}
	}
	return *rec, nil
}

// readRecord returns the stored record of k (possibly a tombstone), or nil.
func readRecord(txn *badger.Txn, k Key) (*Record, error) {
	item, err := txn.Get(stateKey(k))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, err
	}
	return decodeRecord(k, v)
}

// GetMany returns the states keys, in order, with nil entries for missing or
// deleted states. The records share Value and Clock.Vector with the read
// cache: do not modify them.
func (s *Store) GetMany(ctx context.Context, keys []Key) ([]*Record, error) {
	return s.getMany(ctx, keys, false)
}

// getMany is GetMany; with tombstones, deleted states are returned as their
// tombstones instead of nil.
func (s *Store) getMany(ctx context.Context, keys []Key, tombstones bool) ([]*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	for _, k := range keys {
		if err := validateKey("get", k); err != nil {
			return nil, err
		}
	}
	out := make([]*Record, len(keys))
	var missed []int
	pending := s.unapplied.Load() > 0
	if pending {
		s.ovMu.RLock()
	}
	for i, k := range keys {
		if pending {
			if e, ok := s.overlay[k]; ok {
				out[i] = e.rec
				continue
			}
		}
		if rec := s.cache.get(k); rec != nil {
			out[i] = rec
		} else {
			missed = append(missed, i)
		}
	}
	if pending {
		s.ovMu.RUnlock()
	}
	if len(missed) > 0 {
		epochs := make([]uint64, len(missed))
		for j, i := range missed {
			epochs[j] = s.cache.epoch(keys[i])
		}
		err := s.view(func(txn *badger.Txn) error {
			for j, i := range missed {
				rec, err := readRecord(txn, keys[i])
				if err != nil {
					return fmt.Errorf("%s: %w", keys[i], err)
				}
				if rec != nil {
					s.cache.fill(keys[i], rec, epochs[j])
				}
				out[i] = rec
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("localcache: get many: %w", err)
		}
	}
	for i, rec := range out {
		if rec != nil && rec.Deleted && !tombstones {
			out[i] = nil
		} else if rec != nil {
			c := *rec
			out[i] = &c // callers may change the Record itself
		}
	}
	return out, nil
}

// List returns up to limit live states of governor whose names start with
// prefix and sort after cursor, in name order. It stops before the values
// would pass maxBytes (but always returns at least one record when there is
// one); maxBytes <= 0 means no byte limit. limit <= 0 means
// wire.DefaultListLimit; it is capped at wire.MaxListLimit. next is the
// cursor for the following page, "" when the listing is complete. The records
// are read from Badger, not the cache; their Values are the caller's.
func (s *Store) List(ctx context.Context, governor, prefix, cursor string, limit, maxBytes int) (recs []Record, next string, err error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	if err := wire.ValidateName("governor", governor); err != nil {
		return nil, "", &FieldError{Field: "governor", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	if limit <= 0 {
		limit = wire.DefaultListLimit
	}
	limit = min(limit, wire.MaxListLimit)
	pfx := statePrefix(governor, prefix)
	seek := pfx
	var skip []byte // the cursor's own key, when the scan starts there
	if cursor != "" && cursor >= prefix {
		seek = statePrefix(governor, cursor)
		skip = seek
	}
	err = s.scan(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
		defer it.Close()
		size := 0
		for it.Seek(seek); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			if item.UserMeta()&userMetaTombstone != 0 {
				continue
			}
			if skip != nil && bytes.Equal(item.Key(), skip) {
				continue
			}
			if len(recs) == limit {
				next = recs[len(recs)-1].State
				return nil
			}
			k, err := parseStateKey(item.Key()) // copies the names
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			rec, err := decodeRecord(k, v)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			if maxBytes > 0 && len(recs) > 0 && size+len(rec.Value) > maxBytes {
				next = recs[len(recs)-1].State
				return nil
			}
			size += len(rec.Value)
			recs = append(recs, *rec)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("localcache: list %s: %w", governor, err)
	}
	return recs, next, nil
}

// Events returns the audit trail of state k, oldest first (empty when the
// state never existed).
func (s *Store) Events(ctx context.Context, k Key) ([]Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := validateKey("events", k); err != nil {
		return nil, err
	}
	pfx := eventPrefix(k)
	var events []Event
	err := s.scan(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx, PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			e, err := readEvent(it.Item(), k)
			if err != nil {
				return err
			}
			events = append(events, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: events %s: %w", k, err)
	}
	return events, nil
}

// EventAt returns the event that made version of state k (a journal entry's
// Key and Version name one). A missing event is a *KeyError wrapping
// ErrNotFound.
func (s *Store) EventAt(ctx context.Context, k Key, version uint64) (Event, error) {
	if err := ctx.Err(); err != nil {
		return Event{}, err
	}
	if err := validateKey("event", k); err != nil {
		return Event{}, err
	}
	var e Event
	err := s.scan(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get(eventKey(k, version))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return &KeyError{Op: "event", Key: k, Err: ErrNotFound}
		}
		if err != nil {
			return err
		}
		e, err = readEvent(item, k)
		return err
	})
	var ke *KeyError
	if errors.As(err, &ke) {
		return Event{}, err
	}
	if err != nil {
		return Event{}, fmt.Errorf("localcache: event %s v%d: %w", k, version, err)
	}
	return e, nil
}

func readEvent(item *badger.Item, k Key) (Event, error) {
	v, err := item.ValueCopy(nil)
	if err != nil {
		return Event{}, err
	}
	e, err := decodeEvent(k, v)
	if err != nil {
		return Event{}, fmt.Errorf("event %x: %w", item.Key(), err)
	}
	return e, nil
}

// DefaultJournalLimit is how many entries Journal returns when limit <= 0.
const DefaultJournalLimit = 1000

// Journal returns up to limit journal entries with Seq > afterSeq, in Seq
// order. limit <= 0 means DefaultJournalLimit.
func (s *Store) Journal(ctx context.Context, afterSeq uint64, limit int) ([]JournalEntry, error) {
	var out []JournalEntry
	err := s.scanSeqs(ctx, kindJournal, afterSeq, limit, func(_ *badger.Txn, seq uint64, v []byte) error {
		j, err := decodeJournal(seq, v)
		if err != nil {
			return fmt.Errorf("journal %d: %w", seq, err)
		}
		out = append(out, j)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: journal: %w", err)
	}
	return out, nil
}

// scanSeqs calls fn with the values under kind (keys kind + BE u64 seq: the
// journal, the failed list) with seq > afterSeq, in seq order, at most limit
// of them (limit <= 0: DefaultJournalLimit), in one read transaction after
// the barrier.
func (s *Store) scanSeqs(ctx context.Context, kind byte, afterSeq uint64, limit int, fn func(txn *badger.Txn, seq uint64, v []byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if limit <= 0 {
		limit = DefaultJournalLimit
	}
	if afterSeq == math.MaxUint64 {
		return nil
	}
	return s.scan(ctx, func(txn *badger.Txn) error { return seqsIn(txn, kind, afterSeq, limit, fn) })
}

// seqsIn is scanSeqs in txn: at most limit values (limit > 0), each a copy
// of its own.
func seqsIn(txn *badger.Txn, kind byte, afterSeq uint64, limit int, fn func(txn *badger.Txn, seq uint64, v []byte) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind}, PrefetchValues: true, PrefetchSize: min(limit, 100)})
	defer it.Close()
	n := 0
	for it.Seek(binary.BigEndian.AppendUint64([]byte{kind}, afterSeq+1)); it.Valid() && n < limit; it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != 9 {
			return fmt.Errorf("key %x: %w", k, errBadKey)
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if err := fn(txn, binary.BigEndian.Uint64(k[1:]), v); err != nil {
			return err
		}
		n++
	}
	return nil
}

// Stats returns the store's counters. It reads file sizes from Dir, so call
// it for reporting, not on a hot path.
func (s *Store) Stats() Stats {
	st := Stats{
		States:         s.metaStates.Load(),
		JournalDepth:   s.metaJournal.Load(),
		Parked:         s.metaParked.Load(),
		Commits:        s.commits.Load(),
		CommitWrites:   s.commitWrites.Load(),
		WALSyncs:       s.walSyncs.Load(),
		WALSyncTime:    time.Duration(s.walSyncNanos.Load()),
		OriginRenewals: s.originRenewals.Load(),
		Retention:      s.retentionStats(),
	}
	st.CacheHits, st.CacheMisses, st.CacheBytes = s.cache.stats()
	if !s.opts.InMemory {
		st.LSMBytes, st.VlogBytes = dirSizes(s.opts.Dir)
		st.WALBytes = s.wal.size()
	}
	return st
}

func dirSizes(dir string) (lsm, vlog int64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		switch filepath.Ext(e.Name()) {
		case ".sst":
			lsm += info.Size()
		case ".vlog":
			vlog += info.Size()
		}
	}
	return lsm, vlog
}

// collectGarbage runs Badger's value log GC every GCInterval until ctx ends.
func (s *Store) collectGarbage(ctx context.Context) {
	defer close(s.gcDone)
	if s.opts.InMemory || s.opts.GCInterval < 0 {
		return
	}
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for ctx.Err() == nil {
			err := s.gcOnce()
			if errors.Is(err, ErrFailed) {
				return // the store logged its failure; nothing is moved any more
			}
			if err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					s.log.Warn("value log gc", "err", err)
				}
				break
			}
		}
	}
}

// gcOnce runs one pass of Badger's value log GC. A pass moves the live
// values of one value log file to the current one and then deletes the old
// file. Badger does not sync the moved values (SyncWrites is off), so the
// old file must outlive a sync of Badger's files: an open iterator makes
// Badger defer the deletion until the iterator closes, after that sync.
//
// When that sync fails, the moved values may never reach the disk, and the
// store fails (see checkpoint). The iterator is then left open for the life
// of the process, so the old file is never deleted: the tables that still
// point into it stay readable after a crash or at the next Open.
func (s *Store) gcOnce() error {
	if err := s.failedErr(); err != nil {
		return err
	}
	txn := s.db.NewTransaction(false)
	it := txn.NewIterator(badger.IteratorOptions{})
	keep := false
	defer func() {
		if !keep {
			it.Close()
			txn.Discard()
		}
	}()
	if err := s.db.RunValueLogGC(0.5); err != nil {
		return err
	}
	if s.wal == nil {
		return nil
	}
	s.ckMu.Lock()
	defer s.ckMu.Unlock()
	if err := s.syncBadgerFiles(); err != nil {
		keep = true
		return s.fail(fmt.Errorf("sync after value log gc: %w", err))
	}
	return nil
}

// Governors returns, in no particular order, every governor this store holds
// a record of (tombstones included): the governors this node serves.
func (s *Store) Governors() []string {
	var out []string
	s.governors.Range(func(k, _ any) bool {
		out = append(out, k.(string))
		return true
	})
	return out
}

// noteGovernor adds governor to the set Governors returns.
func (s *Store) noteGovernor(governor string) {
	if _, ok := s.governors.Load(governor); !ok {
		s.governors.Store(governor, struct{}{})
	}
}

// loadGovernors fills the governor set at Open, seeking from one governor's
// records to the next (names are UTF-8: no state name holds a 0xff byte).
func (s *Store) loadGovernors() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindState}})
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			k, err := parseStateKey(it.Item().Key())
			if err != nil {
				return fmt.Errorf("state key %x: %w", it.Item().Key(), err)
			}
			s.noteGovernor(k.Governor)
			it.Seek(append(statePrefix(k.Governor, ""), 0xff))
		}
		return nil
	})
}
