package localcache

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Options configure a Store. The zero value is not usable: set Dir or
// InMemory.
type Options struct {
	// Dir is the Badger directory. Created if missing. The write-ahead log
	// lives in its subdirectory wal.
	Dir string
	// InMemory keeps everything in memory (for tests); Dir must be empty.
	InMemory bool
	// NodeID names this sidecar in op ids, origins and vector clocks. Empty:
	// the id stored in the database, or a new random one (then stored).
	NodeID string
	// NewIncarnation draws a new incarnation for the store's origin (see
	// Store.Origin) though its node id is unchanged: for a data dir restored
	// from a copy (a volume snapshot), whose changes would otherwise count
	// again from where the copy stood, under the origin the copied store
	// went on using. Set it once, on the first open of the restored copy:
	// every open with it draws another.
	NewIncarnation bool
	// Logger receives the store's and Badger's logs. Nil: discarded.
	Logger *slog.Logger
	// CacheBytes is the read cache's budget. 0: DefaultCacheBytes; negative:
	// no cache.
	CacheBytes int64
	// MaxValueSize is the largest value accepted. 0: wire.MaxValueSize.
	MaxValueSize int
	// Now is the wall clock. Nil: time.Now.
	Now func() time.Time
	// GCInterval is how often the value log is garbage collected. 0:
	// DefaultGCInterval; negative: never (and never in memory).
	GCInterval time.Duration
	// CheckpointInterval is how often Badger's files are synced so that the
	// write-ahead log can drop what they hold (also done when the log has
	// grown by checkpointBytes, and by Close). 0: DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// Snapshots returns, per governor, how often a state is snapshotted
	// (every that many versions, made by local writes; <= 0: never
	// automatically) and how many snapshots a state keeps (<= 0:
	// DefaultSnapshotKeep). Nil: DefaultSnapshotEvery and
	// DefaultSnapshotKeep for every governor. It is called on the write
	// path, for every local write: it must be fast and safe for concurrent
	// use.
	Snapshots func(governor string) (every, keep int)
	// Retention, when set, gives each governor's history retention: every
	// RetentionEvery, the store removes from each governor's history what a
	// Cleanup with that MaxAge and KeepEvents would (retention.go). The zero
	// Retention keeps a governor's history whole. Nil: the store removes
	// nothing by itself. Called from the retention goroutine only.
	Retention func(governor string) Retention
	// LocalOnly says that no shared store's push loop reads the journal
	// (the sidecar has none configured). Cleanups, the retention's too,
	// may then merge a state's journal entries up to the snapshot they cut
	// at into one change (cleanup.go): without a push every change stays in
	// the journal, and its event with it, so nothing could be cut. Do not
	// set it on a store whose journal a syncer reads.
	LocalOnly bool
	// RetentionEvery is how often the retention policies are applied. 0:
	// DefaultRetentionEvery; negative: never.
	RetentionEvery time.Duration
	// LedgerMaxEntries and LedgerMaxAge bound the conflict ledger: the
	// oldest entries beyond the count, and those older than the age, are
	// dropped. 0: DefaultLedgerMaxEntries, DefaultLedgerMaxAge.
	LedgerMaxEntries int
	LedgerMaxAge     time.Duration
	// OnLogSync, when set, is called after each append and fdatasync of the
	// write-ahead log (one per commit group) with the time it took and the
	// bytes appended, including failed ones. It runs on the commit path,
	// with every writer of the group waiting: it must be fast.
	OnLogSync func(d time.Duration, bytes int)

	// memTableSize overrides the Badger memtable size (tests use a small one
	// to exercise transaction splitting).
	memTableSize int64
	// valueLogFileSize overrides the size of Badger's value log files (tests
	// use a small one to make value log GC find a file to rewrite).
	valueLogFileSize int64
	// hookGroup, when set, is called by the committer before it gathers a
	// group (tests block it to make requests queue up).
	hookGroup func()
	// hookLead, when set, is called by a lone writer that commits its own
	// request (see leadAlone).
	hookLead func()
	// hookAfterWAL, when set, is called by the applier after a group is
	// durable in the write-ahead log and before it is applied to Badger; an
	// error stands for a crash there (tests).
	hookAfterWAL func() error
	// hookHistoryPart, when set, is called before each part of a long
	// remote history after the first is stored (part counts from 1); an
	// error stands for a crash there (tests).
	hookHistoryPart func(k Key, part int) error
	// hookApply, when set, is called by the applier with a group's sequence
	// number before it applies the group (tests delay the apply with it).
	hookApply func(seq uint64)
	// noCheckpoint keeps every write-ahead log segment, at Close too, so the
	// next Open replays groups Badger already holds (tests).
	noCheckpoint bool
}

// Defaults.
const (
	DefaultCacheBytes = 32 << 20
	DefaultGCInterval = 10 * time.Minute
	// DefaultCheckpointInterval bounds how much of the write-ahead log Open
	// replays after a crash, at the price of syncing Badger's files.
	DefaultCheckpointInterval = 2 * time.Second
	// checkpointBytes of log written since the last checkpoint start one.
	checkpointBytes = 32 << 20
)

// Badger tuning for a sidecar that shares the pod's memory with the app.
//
// Anonymous memory Badger holds: numMemtables skiplist arenas of about
// 1.3 × memTableSize, the block and index caches (the index cache also holds
// bloom filters, so table metadata stays bounded however large the LSM
// grows), and, while compactions run, table builders of about twice the
// table size each. Small memtables and tables (every level's tables are
// baseTableSize: Badger's default doubles the size per level) keep those
// builders small; compression is off because a compressing builder holds
// every block twice and runs extra goroutines (and the bulky part of the
// data, values, lives in the uncompressed value log anyway). Tables and value
// log files are mmapped: their pages count as file-backed resident memory
// until the next checkpoint has the kernel reclaim them (mapped.go), so what
// stays resident is about the memtables and what was written or read since.
// The sizes are measured choices (docs/decisions/0018): halving the
// memtables and tables took a million-put run from about 244 to 157-183 MiB
// resident at no measurable cost in throughput.
//
// valueThreshold: encoded records, events and journal entries below it are
// stored inside the LSM tree; larger ones go to the value log, with a 12-byte
// pointer in the tree. With a low threshold the LSM tree holds little more
// than keys, so compactions (the main cost of a write-heavy LSM, in CPU and
// in builder memory) move a fraction of the data, and a 1 MB value counts as
// a pointer towards Badger's per-transaction limit, so large writes do not
// split commit groups. A state read that misses the cache pays one extra
// mmapped read; events, written once and rarely read, are exactly what a
// value log is for. Tiny states (counters, flags) and journal entries stay
// inline, so hot small keys leave no value log garbage. Overwritten states
// do leave garbage in the value log: collectGarbage reclaims it.
const (
	memTableSize     = 4 << 20
	numMemtables     = 2
	baseTableSize    = 512 << 10
	blockCacheSize   = 8 << 20
	indexCacheSize   = 8 << 20
	valueLogFileSize = 64 << 20
	valueThreshold   = 256
	numCompactors    = 2

	// In memory there is no value log: values must fit the tree, and so
	// must a transaction holding a 1 MB state and its event.
	inMemoryMemTableSize = 16 << 20
	inMemoryThreshold    = 1 << 20
)

func (o Options) withDefaults() (Options, error) {
	if o.InMemory && o.Dir != "" {
		return o, fmt.Errorf("localcache: options: Dir and InMemory are exclusive")
	}
	if !o.InMemory && o.Dir == "" {
		return o, fmt.Errorf("localcache: options: Dir is required unless InMemory")
	}
	if o.NodeID != "" {
		if err := wire.ValidateName("node id", o.NodeID); err != nil {
			return o, fmt.Errorf("localcache: options: %w", err)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.MaxValueSize <= 0 {
		o.MaxValueSize = wire.MaxValueSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.GCInterval == 0 {
		o.GCInterval = DefaultGCInterval
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.RetentionEvery == 0 {
		o.RetentionEvery = DefaultRetentionEvery
	}
	if o.memTableSize == 0 {
		o.memTableSize = memTableSize
		if o.InMemory {
			o.memTableSize = inMemoryMemTableSize
		}
	}
	return o, nil
}

func (o Options) badgerOptions() badger.Options {
	var bo badger.Options
	threshold := int64(valueThreshold)
	if o.InMemory {
		// No value log in memory: every value must be below the threshold.
		bo = badger.DefaultOptions("").WithInMemory(true)
		threshold = inMemoryThreshold
	} else {
		bo = badger.DefaultOptions(o.Dir)
	}
	// Badger requires the threshold to fit one transaction.
	threshold = min(threshold, o.memTableSize*15/100)
	bo = bo.
		WithLogger(badgerLogger{o.Logger.With("component", "badger")}).
		// Durability comes from the write-ahead log (wal.go): Badger's own
		// logs are synced only by checkpoints.
		WithSyncWrites(false).
		WithDetectConflicts(false).
		WithMetricsEnabled(false). // expvar is process-global; Stats reads sizes itself
		WithMemTableSize(o.memTableSize).
		WithNumMemtables(numMemtables).
		WithNumLevelZeroTables(numMemtables + 1).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(blockCacheSize).
		WithIndexCacheSize(indexCacheSize).
		WithValueLogFileSize(cmp.Or(o.valueLogFileSize, valueLogFileSize)).
		WithValueThreshold(threshold).
		WithNumCompactors(numCompactors).
		WithNumGoroutines(2).
		WithBaseTableSize(baseTableSize).
		WithCompression(options.None)
	// Every level's tables are baseTableSize (Badger doubles the size per
	// level by default): compaction builds at most that much per builder.
	bo.TableSizeMultiplier = 1
	return bo
}

// badgerLogger adapts a *slog.Logger to badger.Logger. Badger's info
// messages (table opens, compactions) are routine, so they go out at Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, format string, args []any) {
	ctx := context.Background()
	if !b.l.Enabled(ctx, level) {
		return
	}
	b.l.Log(ctx, level, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (b badgerLogger) Errorf(format string, args ...any) { b.log(slog.LevelError, format, args) }
func (b badgerLogger) Warningf(format string, args ...any) {
	b.log(slog.LevelWarn, format, args)
}
func (b badgerLogger) Infof(format string, args ...any)  { b.log(slog.LevelDebug, format, args) }
func (b badgerLogger) Debugf(format string, args ...any) { b.log(slog.LevelDebug-4, format, args) }
