package firestore

import (
	"context"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/syncer"
)

// The conflict ledger: one document per settled conflict,
//
//	{root}/conflicts/{id}
//
// with the conflict's ID (a hash: syncer.ConflictID) as document id, so a
// retried write finds it there. A change that won is committed with its
// record in one transaction (Commit); LogConflicts writes the others.
// Conflicts queries governor (and state) equality with a time range: a real
// project needs composite indexes on (governor, time_ns, id) and (governor,
// state, time_ns, id); the emulator needs none.

// DefaultLedgerTTL is Config.LedgerTTL's default: 90 days.
const DefaultLedgerTTL = 90 * 24 * time.Hour

// ledgerWrites is the most records one LogConflicts transaction writes
// (Firestore allows 500 writes per commit).
const ledgerWrites = 250

// sideDoc is one side of a conflict.
type sideDoc struct {
	Value     []byte           `firestore:"value"`
	Version   int64            `firestore:"version"`
	Deleted   bool             `firestore:"deleted"`
	UpdatedAt int64            `firestore:"updated_at"`
	Origin    string           `firestore:"origin"`
	OpID      string           `firestore:"op_id"`
	Lamport   int64            `firestore:"lamport"`
	HLC       int64            `firestore:"hlc"`
	Vector    map[string]int64 `firestore:"vector"`
}

// baseDoc is the base of a conflict whose value was known.
type baseDoc struct {
	Value   []byte `firestore:"value"`
	Version int64  `firestore:"version"`
	Deleted bool   `firestore:"deleted"`
}

// conflictDoc is a ledger document.
type conflictDoc struct {
	ID          string    `firestore:"id"`
	Governor    string    `firestore:"governor"`
	State       string    `firestore:"state"`
	TimeNS      int64     `firestore:"time_ns"`
	DecidedAt   time.Time `firestore:"decided_at"`
	ExpireAt    time.Time `firestore:"expire_at"` // for a TTL policy: DecidedAt + Config.LedgerTTL
	Node        string    `firestore:"node"`
	Resolver    string    `firestore:"resolver"`
	Reason      string    `firestore:"reason"`
	Winner      string    `firestore:"winner"`
	Merged      []byte    `firestore:"merged"`
	Entries     int64     `firestore:"entries"`
	BaseVersion int64     `firestore:"base_version"`
	Base        *baseDoc  `firestore:"base"`
	Local       sideDoc   `firestore:"local"`
	Remote      sideDoc   `firestore:"remote"`
	Omitted     []string  `firestore:"omitted"`
}

func (r *Remote) conflicts() *firestore.CollectionRef {
	if r.root == "" {
		return r.client.Collection("conflicts")
	}
	return r.client.Doc(r.root).Collection("conflicts")
}

func toSideDoc(s conflict.Side) sideDoc {
	return sideDoc{Value: s.Value, Version: int64(s.Version), Deleted: s.Deleted, UpdatedAt: s.UpdatedAt, Origin: s.Origin,
		OpID: s.OpID, Lamport: int64(s.Clock.Lamport), HLC: int64(s.Clock.HLC), Vector: toVector(s.Clock.Vector)}
}

func fromSideDoc(d sideDoc) conflict.Side {
	if len(d.Value) == 0 {
		d.Value = nil
	}
	return conflict.Side{Value: d.Value, Version: uint64(d.Version), Deleted: d.Deleted, UpdatedAt: d.UpdatedAt,
		Origin: d.Origin, OpID: d.OpID,
		Clock: conflict.Clock{Lamport: uint64(d.Lamport), HLC: uint64(d.HLC), Vector: fromVector(d.Vector)}}
}

// conflictDoc is c as r stores it.
func (r *Remote) conflictDoc(c syncer.ConflictRecord) conflictDoc {
	d := conflictDoc{ID: c.ID, Governor: c.Key.Governor, State: c.Key.State, TimeNS: c.Time.UnixNano(),
		DecidedAt: c.Time, ExpireAt: c.Time.Add(r.ledgerTTL), Node: c.Node, Resolver: c.Resolver, Reason: c.Reason, Winner: c.Winner.String(),
		Merged: c.Merged, Entries: int64(c.Entries), BaseVersion: int64(c.BaseVersion),
		Local: toSideDoc(c.Local), Remote: toSideDoc(c.Remote), Omitted: c.Omitted}
	if c.Base != nil {
		d.Base = &baseDoc{Value: c.Base.Value, Version: int64(c.Base.Version), Deleted: c.Base.Deleted}
	}
	return d
}

func fromConflictDoc(d conflictDoc) syncer.ConflictRecord {
	c := syncer.ConflictRecord{ID: d.ID, Key: syncer.Key{Governor: d.Governor, State: d.State},
		Time: time.Unix(0, d.TimeNS), Node: d.Node, Resolver: d.Resolver, Reason: d.Reason, Merged: d.Merged,
		Entries: int(d.Entries), BaseVersion: uint64(d.BaseVersion), Local: fromSideDoc(d.Local),
		Remote: fromSideDoc(d.Remote), Omitted: d.Omitted}
	if len(c.Merged) == 0 {
		c.Merged = nil
	}
	for _, w := range []conflict.Winner{conflict.Local, conflict.Remote, conflict.Merged} {
		if w.String() == d.Winner {
			c.Winner = w
		}
	}
	if d.Base != nil {
		c.Base = &conflict.Base{Value: d.Base.Value, Version: uint64(d.Base.Version), Deleted: d.Base.Deleted}
		if len(c.Base.Value) == 0 {
			c.Base.Value = nil
		}
	}
	return c
}

// LogConflicts implements syncer.ConflictLog: in transactions that write
// the records not stored yet.
func (r *Remote) LogConflicts(ctx context.Context, recs []syncer.ConflictRecord) error {
	for _, c := range recs {
		if err := syncer.CheckConflict(c); err != nil {
			return &syncer.Error{Op: "log conflicts", Key: c.Key, Kind: syncer.ErrPermanent, Err: err}
		}
		if n := syncer.ConflictSize(c); n > r.Limits().MaxRecordBytes {
			return syncer.Errorf("log conflicts", c.Key, syncer.ErrTooLarge, "conflict record of ~%d bytes, limit %d",
				n, r.Limits().MaxRecordBytes)
		}
	}
	for len(recs) > 0 {
		chunk := recs[:min(len(recs), ledgerWrites)]
		recs = recs[len(chunk):]
		refs := make([]*firestore.DocumentRef, len(chunk))
		for i, c := range chunk {
			refs[i] = r.conflicts().Doc(c.ID)
		}
		err := r.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
			snaps, err := tx.GetAll(refs)
			if err != nil {
				return err
			}
			for i, snap := range snaps {
				if snap.Exists() {
					continue
				}
				if err := tx.Create(refs[i], r.conflictDoc(chunk[i])); err != nil {
					return err
				}
			}
			return nil
		}, firestore.MaxAttempts(r.maxAttempts))
		if err != nil {
			return translate(ctx, "log conflicts", chunk[0].Key, err)
		}
	}
	return nil
}

// Conflicts implements syncer.ConflictLog.
func (r *Remote) Conflicts(ctx context.Context, q syncer.ConflictQuery) ([]syncer.ConflictRecord, error) {
	key := syncer.Key{Governor: q.Governor, State: q.State}
	if err := syncer.CheckConflictQuery(q); err != nil {
		return nil, &syncer.Error{Op: "conflicts", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	fq := r.conflicts().Where("governor", "==", q.Governor)
	if q.State != "" {
		fq = fq.Where("state", "==", q.State)
	}
	if !q.From.IsZero() {
		fq = fq.Where("time_ns", ">=", q.From.UnixNano())
	}
	if !q.Until.IsZero() {
		fq = fq.Where("time_ns", "<", q.Until.UnixNano())
	}
	snaps, err := fq.OrderBy("time_ns", firestore.Asc).OrderBy("id", firestore.Asc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, translate(ctx, "conflicts", key, err)
	}
	out := make([]syncer.ConflictRecord, 0, len(snaps))
	var skipped []*syncer.UndecodableError
	for _, snap := range snaps {
		c, err := decodeConflict(snap)
		if err != nil {
			// Written by another tool or version: the rest of the
			// ledger is still read.
			skipped = append(skipped, &syncer.UndecodableError{Key: key, Doc: snap.Ref.Path, Time: snap.UpdateTime, Err: err,
				What: "conflict record"})
			continue
		}
		out = append(out, c)
	}
	if len(skipped) > 0 {
		return out, &syncer.SkippedError{Op: "conflicts", Governor: q.Governor, Docs: skipped}
	}
	return out, nil
}

// decodeConflict reads snap as a conflict record: one that does not decode,
// or is not one (no key, id or winner), is an error.
func decodeConflict(snap *firestore.DocumentSnapshot) (syncer.ConflictRecord, error) {
	var d conflictDoc
	if err := snap.DataTo(&d); err != nil {
		return syncer.ConflictRecord{}, err
	}
	c := fromConflictDoc(d)
	if err := syncer.CheckConflict(c); err != nil {
		return syncer.ConflictRecord{}, err
	}
	return c, nil
}
