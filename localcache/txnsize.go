package localcache

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// txnLimits are the limits Badger puts on one transaction, counted the way
// Badger's Txn counts them (Txn.checkSize: entries, and an estimate of
// their size in the tree: the value itself below the value threshold, a
// value pointer above it, plus per-entry overhead).
//
// The committer splits a group into transactions with them instead of
// building the transactions itself: opening a Badger update transaction
// waits until every earlier commit is done, so a committer that built them
// would wait for the applier's apply of the previous group before it could
// log the next one. The transactions are built where they are committed (by
// the applier on disk), and always fit.
type txnLimits struct {
	maxCount, maxSize, threshold, maxValue int64
}

func newTxnLimits(db *badger.DB) txnLimits {
	o := db.Opts()
	return txnLimits{maxCount: db.MaxBatchCount(), maxSize: db.MaxBatchSize(), threshold: o.ValueThreshold,
		maxValue: o.ValueLogFileSize}
}

// entrySize is what one entry adds to a transaction's size.
func (l txnLimits) entrySize(key, value []byte) int64 { return l.entrySizeOf(len(key), len(value)) }

// entrySizeOf is entrySize of a key and a value of these lengths.
func (l txnLimits) entrySizeOf(keyLen, valueLen int) int64 {
	const overhead = 2 + 10 // meta bytes, and the version Badger appends to the key
	if int64(valueLen) < l.threshold {
		return int64(keyLen+valueLen) + overhead
	}
	return int64(keyLen) + 12 + overhead // a value pointer
}

// maxMetaSize bounds the meta counters' entry (encodeMeta) that ends every
// transaction.
var maxMetaSize = int64(len(metaCounters)+len(encodeMeta(meta{seq: ^uint64(0), lamport: ^uint64(0), hlc: ^uint64(0),
	states: -1 << 63, journal: -1 << 63, parked: -1 << 63}))) + 12

// check returns the error Badger's Txn would return for op's entry other
// than ErrTxnTooBig (keys are the store's own, so only sizes can be wrong).
func (l txnLimits) check(op kv) error {
	const maxKeySize = 65000 // Badger's
	switch {
	case len(op.key) > maxKeySize:
		return fmt.Errorf("key of %d bytes exceeds Badger's %d", len(op.key), maxKeySize)
	case int64(len(op.value)) > l.maxValue:
		return fmt.Errorf("value of %d bytes exceeds the %d-byte value log file", len(op.value), l.maxValue)
	}
	return nil
}

// fit returns how many of sts, from the first, fit one transaction together
// with the meta entry after them. 0 means sts[0] alone is too large (or
// holds an entry Badger refuses): err says which.
func (l txnLimits) fit(sts []*staged) (n int, err error) {
	// A transaction starts with Badger's own end-of-transaction entry
	// (newTransaction: count 1, size len("!badger!txn")+10), and ends with
	// the meta entry.
	count, size := int64(2), int64(len("!badger!txn")+10)+maxMetaSize
	for _, st := range sts {
		c, z := count, size
		for _, op := range st.ops {
			if err := l.check(op); err != nil {
				if n > 0 {
					return n, nil // the next transaction starts with it, and fails
				}
				return 0, err
			}
			c++
			z += l.entrySize(op.key, op.value)
		}
		if c >= l.maxCount || z >= l.maxSize {
			if n == 0 {
				return 0, badger.ErrTxnTooBig
			}
			return n, nil
		}
		count, size = c, z
		n++
	}
	return n, nil
}
