package localcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Time-ordered logs: the conflict ledger (ledger.go) and the transaction
// log (txlog.go) store their entries under kind + BE u64 time (Unix ns) +
// id, and share the paging over a time range and the retention below.

// timeKey is the key of a time-ordered log entry.
func timeKey(kind byte, nanos int64, id string) []byte {
	b := binary.BigEndian.AppendUint64([]byte{kind}, uint64(max(nanos, 0)))
	return append(b, id...)
}

// timeRange is a page request over a time-ordered log: entries at From or
// later and before Until (zero: open), after Cursor (a page's Next), at
// most Limit of them, stopping before MaxBytes of entries (0: no bound; at
// least one entry is returned). field names the cursor in errors.
type timeRange struct {
	From, Until time.Time
	Cursor      string
	Limit       int
	MaxBytes    int
	field       string
}

// scanTime calls fn with the entries of log kind in r, oldest first; fn
// says whether it kept the entry (kept ones count towards r's Limit and
// MaxBytes). It returns the cursor of the next page ("": the range is
// done). Invalid arguments are *FieldError wrapping ErrInvalid.
func (s *Store) scanTime(ctx context.Context, kind byte, r timeRange, fn func(key, v []byte) (bool, error)) (string, error) {
	if r.Limit < 0 {
		return "", &FieldError{Field: "limit", Err: fmt.Errorf("%w: negative limit", ErrInvalid)}
	}
	if !r.From.IsZero() && !r.Until.IsZero() && !r.Until.After(r.From) {
		return "", &FieldError{Field: "to", Err: fmt.Errorf("%w: the end of the range is not after its start", ErrInvalid)}
	}
	start := []byte{kind}
	if !r.From.IsZero() {
		start = timeKey(kind, r.From.UnixNano(), "")
	}
	if r.Cursor != "" {
		after, err := hex.DecodeString(r.Cursor)
		if err != nil || len(after) < 8 {
			return "", &FieldError{Field: "cursor", Err: fmt.Errorf("%w: not a %s cursor", ErrInvalid, r.field)}
		}
		if c := append(append([]byte{kind}, after...), 0); bytes.Compare(c, start) > 0 {
			start = c
		}
	}
	var end []byte
	if !r.Until.IsZero() {
		end = timeKey(kind, r.Until.UnixNano(), "")
	}
	var next string
	err := s.scan(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind}})
		defer it.Close()
		kept, size := 0, 0
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			key := item.Key()
			if end != nil && bytes.Compare(key, end) >= 0 {
				next = "" // the end of the range
				return nil
			}
			if kept == r.Limit || r.MaxBytes > 0 && kept > 0 && size+int(item.ValueSize()) > r.MaxBytes {
				return nil // next is the last entry's
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			next = hex.EncodeToString(key[1:])
			ok, err := fn(key, v)
			if err != nil {
				return err
			}
			if ok {
				kept++
				size += len(v)
			}
		}
		next = "" // the end of the log
		return nil
	})
	return next, err
}

// trimTime applies a time-ordered log's retention: it drops the oldest
// entries beyond maxEntries and those older than maxAge, with the keys
// also(key) returns for each (an index by id). It counts the entries with a
// key-only scan each time (the count limit bounds the scan), so that
// concurrent writers cannot make a kept count drift. The caller serializes
// calls for one log.
func (s *Store) trimTime(ctx context.Context, kind byte, maxEntries int64, maxAge time.Duration, also func(key []byte) []byte) error {
	cutoff := s.opts.Now().Add(-maxAge).UnixNano()
	var drop [][]byte
	err := s.scan(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind}})
		defer it.Close()
		var count int64
		for it.Rewind(); it.Valid(); it.Next() {
			count++
		}
		for it.Rewind(); it.Valid(); it.Next() {
			key := it.Item().Key()
			old := len(key) >= 9 && int64(binary.BigEndian.Uint64(key[1:9])) < cutoff
			if count-int64(len(drop)) <= maxEntries && !old {
				break
			}
			drop = append(drop, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(drop) == 0 {
		return err
	}
	_, err = s.mutate(ctx, func(tx *mutTx) (any, error) {
		for _, k := range drop {
			tx.del(k)
			if also != nil {
				tx.del(also(k))
			}
		}
		return nil, nil
	})
	return err
}
