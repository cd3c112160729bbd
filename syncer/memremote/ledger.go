package memremote

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"github.com/tai-state/tai-state/syncer"
)

// LogConflicts implements syncer.ConflictLog.
func (m *Remote) LogConflicts(ctx context.Context, recs []syncer.ConflictRecord) error {
	for _, r := range recs {
		if err := syncer.CheckConflict(r); err != nil {
			return &syncer.Error{Op: "log conflicts", Key: r.Key, Kind: syncer.ErrPermanent, Err: err}
		}
	}
	var first syncer.Key
	if len(recs) > 0 {
		first = recs[0].Key
	}
	if err := m.enter(ctx, "log conflicts", first); err != nil {
		return err
	}
	defer m.mu.Unlock()
	for _, r := range recs {
		m.logLocked(r)
	}
	return nil
}

// logLocked stores r unless its ID is stored. m.mu is held.
func (m *Remote) logLocked(r syncer.ConflictRecord) {
	if _, ok := m.ledger[r.ID]; !ok {
		m.ledger[r.ID] = syncer.CloneConflict(r)
	}
}

// Conflicts implements syncer.ConflictLog.
func (m *Remote) Conflicts(ctx context.Context, q syncer.ConflictQuery) ([]syncer.ConflictRecord, error) {
	key := syncer.Key{Governor: q.Governor, State: q.State}
	if err := syncer.CheckConflictQuery(q); err != nil {
		return nil, &syncer.Error{Op: "conflicts", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if err := m.enter(ctx, "conflicts", key); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var out []syncer.ConflictRecord
	for _, r := range m.ledger {
		if r.Key.Governor != q.Governor || q.State != "" && r.Key.State != q.State ||
			!q.From.IsZero() && r.Time.Before(q.From) || !q.Until.IsZero() && !r.Time.Before(q.Until) {
			continue
		}
		out = append(out, syncer.CloneConflict(r))
	}
	slices.SortFunc(out, func(a, b syncer.ConflictRecord) int {
		return cmp.Or(a.Time.Compare(b.Time), strings.Compare(a.ID, b.ID))
	})
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
