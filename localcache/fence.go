package localcache

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tai-state/tai-state/syncer"
)

// Fenced writes (docs/decisions/0013-fenced-writes.md).
//
// A write may carry a Fence: the lock grant (resource, token) it is made
// under. The store keeps, per resource, the highest token it has seen: from
// the fenced writes it accepted and from ObserveFence (the sidecar calls it
// when it grants a lock). A write whose token is lower is rejected while it
// is staged, against the marks as the group sees them, so it touches
// nothing; an accepted write with a higher token raises the mark in the
// same Badger transaction (and write-ahead log group) that stores the
// write. The journal entry carries the fence, and the push checks it again
// against the lock in the shared store.

// Fence names the lock grant a write is made under (Write.Fence).
type Fence = syncer.Fence

// FenceRejectedError is a write rejected for its fence: Current is the
// highest token the store has seen for Resource (or, for a change the
// shared store parked, the lock's last token there). It matches
// ErrFenceRejected.
type FenceRejectedError = syncer.FenceRejectedError

// ErrFenceRejected: a write's fence is stale (see FenceRejectedError).
var ErrFenceRejected = syncer.ErrFenceRejected

// formatFenceMark is the only format of a fence mark value: format=1,
// u token.
const formatFenceMark = 1

func fenceKey(resource string) []byte {
	return append([]byte{kindFence}, resource...)
}

func encodeFenceMark(token uint64) []byte {
	return binary.AppendUvarint([]byte{formatFenceMark}, token)
}

func decodeFenceMark(b []byte) (uint64, error) {
	d := decoder{b: b}
	if f := d.byte(); d.err == nil && f != formatFenceMark {
		return 0, fmt.Errorf("%w: fence mark format %d", errCorrupt, f)
	}
	t := d.uvarint()
	return t, d.done("fence mark")
}

// fenceMark returns the mark of resource through get (a group's or a
// mutation's view), 0 when there is none.
func fenceMark(get func([]byte) ([]byte, error), resource string) (uint64, error) {
	v, err := get(fenceKey(resource))
	if err != nil || v == nil {
		return 0, err
	}
	t, err := decodeFenceMark(v)
	if err != nil {
		return 0, fmt.Errorf("fence mark of %q: %w", resource, err)
	}
	return t, nil
}

// stageFence checks the fence of write w of a request being staged against
// the mark of its resource: as g sees it, or as an earlier write of the
// same request raised it (marks). A stale fence is a *KeyError wrapping a
// *FenceRejectedError. A higher token raises the mark: its operation is
// added to st.
func stageFence(g *groupView, st *staged, marks map[string]uint64, op string, w *Write) error {
	f := w.Fence
	cur, ok := marks[f.Resource]
	if !ok {
		var err error
		if cur, err = fenceMark(g.get, f.Resource); err != nil {
			return fmt.Errorf("localcache: write %s: %w", w.Key, err)
		}
	}
	if f.Token < cur {
		return &KeyError{Op: op, Key: w.Key, Err: &FenceRejectedError{Resource: f.Resource, Token: f.Token, Current: cur}}
	}
	marks[f.Resource] = f.Token
	if f.Token > cur {
		st.ops = append(st.ops, kv{key: fenceKey(f.Resource), value: encodeFenceMark(f.Token)})
		st.fenced = true
	}
	return nil
}

// checkFence validates a write's fence, when it has one.
func checkFence(f Fence) error {
	if f.IsZero() {
		return nil
	}
	if err := f.Validate(); err != nil {
		return &FieldError{Field: "fence", Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	return nil
}

// ObserveFence raises the store's mark of resource to token, durably: from
// then on a write fenced with a lower token is rejected
// (*FenceRejectedError). A token not above the mark changes nothing. The
// sidecar calls it when it grants a lock, so that the previous holder's
// late writes are rejected here even before it wrote under the new grant.
// Errors: an invalid resource name or a zero token is a *FieldError
// wrapping ErrInvalid; otherwise as Write's.
func (s *Store) ObserveFence(ctx context.Context, resource string, token uint64) error {
	if err := checkFence(Fence{Resource: resource, Token: token}); err != nil {
		return err
	}
	_, err := s.mutate(ctx, func(tx *mutTx) (any, error) {
		cur, err := fenceMark(tx.get, resource)
		if err != nil {
			return nil, err
		}
		if token > cur {
			tx.set(fenceKey(resource), encodeFenceMark(token))
		}
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("localcache: observe fence %q: %w", resource, err)
	}
	return nil
}

// FenceMark returns the highest token the store has seen for resource (0:
// none): the lowest token a fenced write of resource may carry.
func (s *Store) FenceMark(ctx context.Context, resource string) (uint64, error) {
	var t uint64
	err := s.scan(ctx, func(txn *badger.Txn) error {
		var err error
		t, err = fenceMark(func(k []byte) ([]byte, error) { return getValue(txn, k) }, resource)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("localcache: fence mark %q: %w", resource, err)
	}
	return t, nil
}

// parkedRemote is the local record of the remote record a fence rejection
// reported (nil: the shared store has none).
func parkedRemote(r *syncer.Record) *Record {
	if r.Version == 0 {
		return nil
	}
	return fromSyncRecord(*r)
}
