package firestore

import (
	"bytes"
	"context"
	"fmt"
	"math"

	"cloud.google.com/go/firestore"

	"github.com/tai-state/tai-state/syncer"
)

// Snapshots live under their state's document:
//
//	{root}/governors/{governor}/states/{state}/snapshots/{version}
//
// with the version as 20 decimal digits, so document ids sort in version
// order. A snapshot document holds the fields of a state document (the
// record at that version) plus taken_at; the subcollection does not change
// the state document, nor the change stream.

// snapshotDoc is a snapshot document.
type snapshotDoc struct {
	stateDoc
	TakenAt int64 `firestore:"taken_at"`
}

func (r *Remote) snapshots(k syncer.Key) *firestore.CollectionRef {
	return r.stateRef(k).Collection("snapshots")
}

func snapshotID(version uint64) string { return fmt.Sprintf("%020d", version) }

// PutSnapshot implements syncer.HistoryRemote: in one transaction it reads
// the event of snap's op and the snapshot document, and writes the snapshot
// when the event made snap's version (same state, version and value) and
// no snapshot of that version exists. Then it deletes the state's
// snapshots beyond the keep newest.
func (r *Remote) PutSnapshot(ctx context.Context, snap syncer.Snapshot, keep int) (syncer.SnapshotStatus, error) {
	k := snap.Key
	if err := syncer.ValidateKey(k); err != nil {
		return 0, &syncer.Error{Op: "put snapshot", Key: k, Kind: syncer.ErrPermanent, Err: err}
	}
	if snap.Version == 0 || snap.Version > math.MaxInt64 || snap.OpID == "" {
		return 0, syncer.Errorf("put snapshot", k, syncer.ErrPermanent, "snapshot of version %d, op %q: not storable", snap.Version, snap.OpID)
	}
	if err := syncer.ValidateName("op id", snap.OpID); err != nil {
		return 0, &syncer.Error{Op: "put snapshot", Key: k, Kind: syncer.ErrPermanent, Err: err}
	}
	ref := r.snapshots(k).Doc(snapshotID(snap.Version))
	evRef := r.eventRef(k.Governor, snap.OpID)
	var status syncer.SnapshotStatus
	err := r.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		docs, err := tx.GetAll([]*firestore.DocumentRef{evRef, ref})
		if err != nil {
			return err
		}
		ev, cur := docs[0], docs[1]
		switch {
		case cur.Exists():
			status = syncer.SnapshotExists
			return nil
		case !ev.Exists():
			status = syncer.SnapshotUnsynced
			return nil
		}
		var d eventDoc
		if err := ev.DataTo(&d); err != nil {
			return fmt.Errorf("decode %s: %w", ev.Ref.Path, err)
		}
		value := snap.Value
		if snap.Deleted {
			value = nil
		}
		if d.State != k.State || uint64(d.ToVersion) != snap.Version || !bytes.Equal(d.Value, value) ||
			(d.Action == syncer.ActionDelete) != snap.Deleted {
			status = syncer.SnapshotMismatch
			return nil
		}
		status = syncer.SnapshotStored
		return tx.Create(ref, snapshotDoc{stateDoc: toStateDoc(snap.Record), TakenAt: snap.TakenAt})
	}, firestore.MaxAttempts(r.maxAttempts))
	if err != nil {
		return 0, translate(ctx, "put snapshot", k, err)
	}
	if status == syncer.SnapshotStored && keep > 0 {
		if err := r.trimSnapshots(ctx, k, keep); err != nil {
			return status, err
		}
	}
	return status, nil
}

// trimSnapshots deletes the snapshots of k beyond the keep newest (a
// state has about keep of them: the listing is small).
func (r *Remote) trimSnapshots(ctx context.Context, k syncer.Key, keep int) error {
	docs, err := r.snapshots(k).OrderBy(firestore.DocumentID, firestore.Asc).Select().Documents(ctx).GetAll()
	if err != nil {
		return translate(ctx, "trim snapshots", k, err)
	}
	for len(docs) > keep {
		if _, err := docs[0].Ref.Delete(ctx); err != nil {
			return translate(ctx, "trim snapshots", k, err)
		}
		docs = docs[1:]
	}
	return nil
}

// Snapshots implements syncer.HistoryRemote.
func (r *Remote) Snapshots(ctx context.Context, k syncer.Key, afterVersion, maxVersion uint64) ([]syncer.Snapshot, error) {
	if err := syncer.ValidateKey(k); err != nil {
		return nil, &syncer.Error{Op: "snapshots", Key: k, Kind: syncer.ErrPermanent, Err: err}
	}
	q := r.snapshots(k).OrderBy(firestore.DocumentID, firestore.Asc)
	if afterVersion > 0 {
		q = q.StartAfter(snapshotID(afterVersion))
	}
	if maxVersion < math.MaxInt64 {
		q = q.EndAt(snapshotID(maxVersion))
	}
	docs, err := q.Documents(ctx).GetAll()
	if err != nil {
		return nil, translate(ctx, "snapshots", k, err)
	}
	out := make([]syncer.Snapshot, 0, len(docs))
	for _, doc := range docs {
		var d snapshotDoc
		if err := doc.DataTo(&d); err != nil {
			return nil, &syncer.Error{Op: "snapshots", Key: k, Kind: syncer.ErrUndecodable,
				Err: &syncer.UndecodableError{Key: k, Doc: docPath(doc.Ref), Time: doc.UpdateTime, Err: err}}
		}
		out = append(out, syncer.Snapshot{Record: fromStateDoc(k, d.stateDoc), TakenAt: d.TakenAt})
	}
	return out, nil
}

var _ syncer.HistoryRemote = (*Remote)(nil)
