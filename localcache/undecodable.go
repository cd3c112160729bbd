package localcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// The shared store's documents that do not decode, as the pull found them
// (syncer.UndecodableKeeper), are kept under kindUndec, one per state, so
// that a restarted sidecar still counts them and does not take their
// states for fresh: its cursors are past them, and the pull will not meet
// them again. The puller bounds how many there are (PullOptions.MaxUndecodable),
// and the count of the documents it met past that bound and did not keep
// is kept under metaUndecDropped, so that a restarted sidecar still says it
// met them.

// maxUndecodableErr is how much of a document's decode error is kept: it
// says what does not decode, and its length is the shared store's to choose.
const maxUndecodableErr = 1024

// KeptUndecodable implements syncer.UndecodableKeeper.
func (s *Store) KeptUndecodable(ctx context.Context) ([]*syncer.UndecodableError, error) {
	var out []*syncer.UndecodableError
	err := s.scan(ctx, func(txn *badger.Txn) error {
		out = nil
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindUndec}, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key := it.Item().KeyCopy(nil)
			key[0] = kindState
			k, err := parseStateKey(key)
			if err != nil {
				return fmt.Errorf("undecodable document key %x: %w", it.Item().Key(), err)
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			d, err := decodeUndecodable(k, v)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localcache: undecodable documents: %w", err)
	}
	return out, nil
}

// KeepUndecodable implements syncer.UndecodableKeeper. A document of a key
// with a name no app may use is not kept: no read asks about its state.
func (s *Store) KeepUndecodable(ctx context.Context, docs []*syncer.UndecodableError) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		for _, d := range docs {
			if k := Key(d.Key); validateKey("keep undecodable", k) == nil {
				tx.set(undecodableKey(k), encodeUndecodable(d))
			}
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: keep undecodable documents: %w", err)
	}
	return nil
}

// ForgetUndecodable implements syncer.UndecodableKeeper.
func (s *Store) ForgetUndecodable(ctx context.Context, keys []syncer.Key) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		for _, k := range keys {
			if validateKey("forget undecodable", Key(k)) == nil {
				tx.del(undecodableKey(Key(k)))
			}
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: forget undecodable documents: %w", err)
	}
	return nil
}

// DroppedUndecodable implements syncer.UndecodableKeeper.
func (s *Store) DroppedUndecodable(ctx context.Context) (uint64, error) {
	var n uint64
	err := s.scan(ctx, func(txn *badger.Txn) error {
		v, err := getValue(txn, metaUndecDropped)
		if err != nil || v == nil {
			return err
		}
		n, err = decodeUndecDropped(v)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("localcache: count of undecodable documents dropped: %w", err)
	}
	return n, nil
}

// AddDroppedUndecodable implements syncer.UndecodableKeeper.
func (s *Store) AddDroppedUndecodable(ctx context.Context, n uint64) error {
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		v, err := tx.get(metaUndecDropped)
		if err != nil {
			return nil, err
		}
		var old uint64
		if v != nil {
			if old, err = decodeUndecDropped(v); err != nil {
				return nil, err
			}
		}
		tx.set(metaUndecDropped, binary.BigEndian.AppendUint64(nil, old+n))
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: count undecodable documents dropped: %w", err)
	}
	return nil
}

func decodeUndecDropped(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: count of undecodable documents dropped: %d bytes", errCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

var _ syncer.UndecodableKeeper = (*Store)(nil)

func encodeUndecodable(d *syncer.UndecodableError) []byte {
	msg := d.Err.Error()
	if len(msg) > maxUndecodableErr {
		msg = strings.ToValidUTF8(msg[:maxUndecodableErr], "") // a cut rune goes
	}
	var written int64
	if !d.Time.IsZero() {
		written = d.Time.UnixNano()
	}
	b := make([]byte, 0, 1+len(d.Doc)+len(msg)+20)
	b = append(b, formatV1)
	b = appendString(b, d.Doc)
	b = binary.AppendVarint(b, written)
	return appendString(b, msg)
}

// decodeUndecodable decodes the document of k kept in b (which it does not
// alias: the strings are copied).
func decodeUndecodable(k Key, b []byte) (*syncer.UndecodableError, error) {
	d := decoder{b: b}
	if f := d.byte(); d.err == nil && f != formatV1 {
		return nil, fmt.Errorf("%w: undecodable document of %s: format %d", errCorrupt, k, f)
	}
	out := &syncer.UndecodableError{Key: syncer.Key(k), Doc: string(d.bytes())}
	if written := d.varint(); written != 0 {
		out.Time = time.Unix(0, written).UTC()
	}
	out.Err = errors.New(string(d.bytes()))
	if err := d.done("undecodable document of " + k.String()); err != nil {
		return nil, err
	}
	return out, nil
}
