// Package firestore is the syncer.Remote backend on Google Cloud Firestore.
//
// Layout, under an optional root document path (for example
// "deployments/prod", so that several deployments and every test can share
// one project):
//
//	{root}/governors/{governor}/states/{state}   one document per state
//	{root}/governors/{governor}/events/{op id}   one document per event
//	{root}/governors/{governor}/states/{state}/snapshots/{version}
//	                                             a snapshot of the state (snapshot.go)
//	{root}/locks/{resource}                      txn/firestorelocks' locks, read to check fences (locks.go)
//	{root}/conflicts/{id}                        the conflict ledger (ledger.go)
//
// A state document holds the app's value as bytes (a Blob) and the metadata
// as typed fields; sync_time is the commit's server timestamp and orders the
// change stream (Changes, Watch). Commit runs in a Firestore transaction
// that reads every target document, decides each change with syncer.Decide
// (op already covered, base-version conflict, or apply), and writes the
// applied states and their events: retried commits are no-ops, and a
// conflict is detected inside the transaction. The lock documents of fenced
// changes are read in the same transaction, so a lock granted again before
// the commit rejects the change. Firestore's limits (500
// writes per commit, 1 MiB per document) are checked before sending.
//
// gRPC and Firestore errors are translated into syncer's errors here and
// nowhere else. The client library honours FIRESTORE_EMULATOR_HOST.
//
// Events asks for a composite index on the events collection group
// (state ascending, to_version ascending) in a real project; the emulator
// needs none.
package firestore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tai-state/tai-state/syncer"
)

// Config says which Firestore database to use and where in it.
type Config struct {
	// ProjectID is the Google Cloud project (required; with the emulator,
	// any id).
	ProjectID string
	// DatabaseID is the Firestore database ("" means "(default)").
	DatabaseID string
	// Root is a document path under which everything is stored, e.g.
	// "deployments/prod": an even number of '/'-separated names ("" for the
	// database root).
	Root string
	// MaxAttempts is how many times a Commit transaction is tried when
	// Firestore aborts it for contention (default 20, more than the
	// client's 5: the emulator and busy keys abort often).
	MaxAttempts int
	// LedgerTTL is how long the conflict ledger keeps a decision: each
	// ledger document's expire_at is its decision time plus LedgerTTL
	// (default DefaultLedgerTTL). Firestore deletes expired documents once
	// a TTL policy on field expire_at of collection group conflicts is
	// enabled (gcloud firestore fields ttls update).
	LedgerTTL time.Duration
	// ClientOptions are passed to the client (credentials and so on); by
	// default the standard Google application default credentials are used.
	ClientOptions []option.ClientOption
}

// Validate checks c.
func (c Config) Validate() error {
	if c.ProjectID == "" {
		return errors.New("firestore: project id is required")
	}
	if c.Root != "" {
		parts := strings.Split(c.Root, "/")
		if len(parts)%2 != 0 {
			return fmt.Errorf("firestore: root %q is not a document path (collection/document/...)", c.Root)
		}
		for _, p := range parts {
			if err := syncer.ValidateName("root", p); err != nil {
				return fmt.Errorf("firestore: %w", err)
			}
		}
	}
	if c.LedgerTTL < 0 {
		return errors.New("firestore: negative LedgerTTL")
	}
	if c.MaxAttempts < 0 {
		return errors.New("firestore: negative MaxAttempts")
	}
	return nil
}

// Remote is a syncer.Remote and syncer.Watcher on Firestore. It is safe for
// concurrent use.
type Remote struct {
	client      *firestore.Client
	ownClient   bool
	root        string
	maxAttempts int
	ledgerTTL   time.Duration
}

// Open connects to the database cfg names. Close the Remote when done.
func Open(ctx context.Context, cfg Config) (*Remote, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	db := cfg.DatabaseID
	if db == "" {
		db = firestore.DefaultDatabaseID
	}
	client, err := firestore.NewClientWithDatabase(ctx, cfg.ProjectID, db, cfg.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("firestore: open project %s database %s: %w", cfg.ProjectID, db, err)
	}
	r := New(client, cfg)
	r.ownClient = true
	return r, nil
}

// New returns a Remote on an existing client (cfg's ProjectID, DatabaseID
// and ClientOptions are not used). Close does not close a client passed in.
func New(client *firestore.Client, cfg Config) *Remote {
	n := cfg.MaxAttempts
	if n == 0 {
		n = 20
	}
	ttl := cfg.LedgerTTL
	if ttl == 0 {
		ttl = DefaultLedgerTTL
	}
	return &Remote{client: client, root: cfg.Root, maxAttempts: n, ledgerTTL: ttl}
}

// Close closes the client if Open made it.
func (r *Remote) Close() error {
	if r.ownClient {
		return r.client.Close()
	}
	return nil
}

func (r *Remote) governor(gov string) *firestore.DocumentRef {
	path := "governors/" + gov
	if r.root != "" {
		path = r.root + "/" + path
	}
	return r.client.Doc(path)
}

func (r *Remote) stateRef(k syncer.Key) *firestore.DocumentRef {
	return r.governor(k.Governor).Collection("states").Doc(k.State)
}

func (r *Remote) eventRef(gov, opID string) *firestore.DocumentRef {
	return r.governor(gov).Collection("events").Doc(opID)
}

// stateDoc is a state document. Numbers are int64 (Firestore's integers);
// syncer.Change.Validate keeps them in range.
type stateDoc struct {
	Governor   string           `firestore:"governor"`
	State      string           `firestore:"state"`
	Value      []byte           `firestore:"value"`
	Version    int64            `firestore:"version"`
	Deleted    bool             `firestore:"deleted"`
	UpdatedAt  int64            `firestore:"updated_at"`
	Actor      string           `firestore:"actor"`
	Reason     string           `firestore:"reason"`
	ChangeTime int64            `firestore:"change_time"`
	Origin     string           `firestore:"origin"`
	OpID       string           `firestore:"op_id"`
	Lamport    int64            `firestore:"lamport"`
	HLC        int64            `firestore:"hlc"`
	Vector     map[string]int64 `firestore:"vector"`
	SyncTime   time.Time        `firestore:"sync_time,serverTimestamp"`
}

// eventDoc is an event document.
type eventDoc struct {
	State       string           `firestore:"state"`
	Action      string           `firestore:"action"`
	FromVersion int64            `firestore:"from_version"`
	ToVersion   int64            `firestore:"to_version"`
	Value       []byte           `firestore:"value"`
	Actor       string           `firestore:"actor"`
	Reason      string           `firestore:"reason"`
	ChangeTime  int64            `firestore:"change_time"`
	Origin      string           `firestore:"origin"`
	OpID        string           `firestore:"op_id"`
	Lamport     int64            `firestore:"lamport"`
	HLC         int64            `firestore:"hlc"`
	Vector      map[string]int64 `firestore:"vector"`
	Transition  string           `firestore:"transition,omitempty"`
	SyncTime    time.Time        `firestore:"sync_time,serverTimestamp"`
}

func toVector(v map[string]uint64) map[string]int64 {
	if len(v) == 0 {
		return nil
	}
	out := make(map[string]int64, len(v))
	for n, x := range v {
		out[n] = int64(x)
	}
	return out
}

func fromVector(v map[string]int64) map[string]uint64 {
	if len(v) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(v))
	for n, x := range v {
		out[n] = uint64(x)
	}
	return out
}

func toStateDoc(rec syncer.Record) stateDoc {
	d := stateDoc{Governor: rec.Governor, State: rec.State, Value: rec.Value, Version: int64(rec.Version),
		Deleted: rec.Deleted, UpdatedAt: rec.UpdatedAt, Actor: rec.Change.Actor, Reason: rec.Change.Reason,
		ChangeTime: rec.Change.Time, Origin: rec.Origin, OpID: rec.OpID, Lamport: int64(rec.Clock.Lamport),
		HLC: int64(rec.Clock.HLC), Vector: toVector(rec.Clock.Vector)}
	if rec.Deleted {
		d.Value = nil
	}
	return d
}

func fromStateDoc(key syncer.Key, d stateDoc) syncer.Record {
	rec := syncer.Record{Key: key, Value: d.Value, Version: uint64(d.Version), Deleted: d.Deleted,
		UpdatedAt: d.UpdatedAt, Change: syncer.ChangeMeta{Actor: d.Actor, Reason: d.Reason, Time: d.ChangeTime},
		Origin: d.Origin, OpID: d.OpID, RemoteTime: d.SyncTime,
		Clock: syncer.Clock{Lamport: uint64(d.Lamport), HLC: uint64(d.HLC), Vector: fromVector(d.Vector)}}
	if rec.Deleted || len(rec.Value) == 0 {
		rec.Value = nil // an empty value and null read back alike
	}
	return rec
}

func toEventDoc(e syncer.Event) eventDoc {
	return eventDoc{State: e.State, Action: e.Action, FromVersion: int64(e.FromVersion), ToVersion: int64(e.ToVersion),
		Value: e.Value, Actor: e.Change.Actor, Reason: e.Change.Reason, ChangeTime: e.Change.Time, Origin: e.Origin,
		OpID: e.OpID, Lamport: int64(e.Clock.Lamport), HLC: int64(e.Clock.HLC), Vector: toVector(e.Clock.Vector),
		Transition: e.Transition}
}

func fromEventDoc(gov string, d eventDoc) syncer.Event {
	if len(d.Value) == 0 {
		d.Value = nil
	}
	return syncer.Event{Key: syncer.Key{Governor: gov, State: d.State}, Action: d.Action,
		FromVersion: uint64(d.FromVersion), ToVersion: uint64(d.ToVersion), Value: d.Value,
		Change: syncer.ChangeMeta{Actor: d.Actor, Reason: d.Reason, Time: d.ChangeTime}, Origin: d.Origin, OpID: d.OpID,
		Clock:      syncer.Clock{Lamport: uint64(d.Lamport), HLC: uint64(d.HLC), Vector: fromVector(d.Vector)},
		Transition: d.Transition}
}

// decodeState reads a state snapshot (which must exist). A document that is
// not a state record fails with ErrUndecodable (see readState).
func decodeState(op string, key syncer.Key, snap *firestore.DocumentSnapshot) (syncer.Record, error) {
	rec, bad := readState(key, snap)
	if bad != nil {
		return syncer.Record{}, &syncer.Error{Op: op, Key: key, Kind: syncer.ErrUndecodable, Err: bad}
	}
	return rec, nil
}

// readState reads a state snapshot (which must exist), or says why it is not
// a state record: its fields do not decode into one (a wrong type, a number
// out of range), or what a record must have is missing (a version, the
// origin and op id that make commits idempotent, a commit time).
func readState(key syncer.Key, snap *firestore.DocumentSnapshot) (syncer.Record, *syncer.UndecodableError) {
	var d stateDoc
	err := snap.DataTo(&d)
	if err == nil {
		err = d.check()
	}
	if err != nil {
		return syncer.Record{}, &syncer.UndecodableError{Key: key, Doc: docPath(snap.Ref), Time: snap.UpdateTime, Err: err}
	}
	return fromStateDoc(key, d), nil
}

// check reports what makes d, decoded from a document, no state record that
// Commit writes.
func (d stateDoc) check() error {
	switch {
	case d.Version <= 0:
		return fmt.Errorf("version %d: missing, or not a version (1 or more)", d.Version)
	case d.Origin == "" || d.OpID == "":
		return errors.New("no origin or no op_id")
	case d.SyncTime.IsZero():
		return errors.New("no sync_time")
	case d.Lamport < 0 || d.HLC < 0:
		return errors.New("negative lamport or hlc")
	}
	for n, x := range d.Vector {
		if x < 0 {
			return fmt.Errorf("negative vector entry %q", n)
		}
	}
	return nil
}

// docPath is ref's path in its database (the full resource name without
// "projects/P/databases/D/documents/"), as the console shows it.
func docPath(ref *firestore.DocumentRef) string {
	if _, p, ok := strings.Cut(ref.Path, "/documents/"); ok {
		return p
	}
	return ref.Path
}

// Get implements syncer.Remote.
func (r *Remote) Get(ctx context.Context, key syncer.Key) (syncer.Record, error) {
	if err := syncer.ValidateKey(key); err != nil {
		return syncer.Record{}, &syncer.Error{Op: "get", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	snap, err := r.stateRef(key).Get(ctx)
	if err != nil {
		return syncer.Record{}, translate(ctx, "get", key, err)
	}
	return decodeState("get", key, snap)
}

// Commit implements syncer.Remote.
func (r *Remote) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	if err := syncer.CheckBatch(b, r.Limits()); err != nil {
		return nil, err
	}
	if len(b.Changes) == 0 {
		return []syncer.Result{}, nil
	}
	refs := make([]*firestore.DocumentRef, len(b.Changes))
	for i, c := range b.Changes {
		refs[i] = r.stateRef(c.Key)
	}
	locks := syncer.FenceResources(b)
	reads := refs
	for _, res := range locks { // read with the states: the fence check is part of the transaction
		reads = append(reads[:len(reads):len(reads)], LockRef(r.client, r.root, res))
	}
	var results []syncer.Result
	var conflict error
	errDecode := errors.New("decode")
	var decodeErr error
	err := r.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		snaps, err := tx.GetAll(reads)
		if err != nil {
			return err
		}
		tokens, err := lockTokens(locks, snaps[len(refs):])
		if err != nil {
			decodeErr = &syncer.Error{Op: "commit", Key: b.Changes[0].Key, Kind: syncer.ErrPermanent, Err: err}
			return errDecode
		}
		snaps = snaps[:len(refs)]
		current := make(map[syncer.Key]syncer.Record, len(snaps))
		for i, snap := range snaps {
			if !snap.Exists() {
				continue
			}
			rec, err := decodeState("commit", b.Changes[i].Key, snap)
			if err != nil {
				decodeErr = err
				return errDecode
			}
			current[b.Changes[i].Key] = rec
		}
		results, conflict = syncer.Decide(b, func(k syncer.Key) (syncer.Record, bool) {
			rec, ok := current[k]
			return rec, ok
		}, func(resource string) uint64 { return tokens[resource] })
		if conflict != nil && b.Atomic {
			return conflict // rolls back; not retried
		}
		for i, c := range b.Changes {
			if !syncer.Writable(b, results, i) {
				continue
			}
			if err := tx.Set(refs[i], toStateDoc(results[i].Remote)); err != nil {
				return err
			}
			for _, e := range c.Events {
				e.Key = c.Key
				if err := tx.Set(r.eventRef(c.Key.Governor, e.OpID), toEventDoc(e)); err != nil {
					return err
				}
			}
			if c.Conflict != nil { // the ledger record of the conflict the change won
				if err := tx.Set(r.conflicts().Doc(c.Conflict.ID), r.conflictDoc(*c.Conflict)); err != nil {
					return err
				}
			}
		}
		return nil
	}, firestore.MaxAttempts(r.maxAttempts))
	switch {
	case err == nil:
		// A transaction does not report its commit time, which becomes the
		// written documents' sync_time: the records written get the time
		// the commit returned, which is at most a round trip later.
		now := time.Now()
		for i := range results {
			if results[i].Status == syncer.Applied && results[i].Remote.RemoteTime.IsZero() {
				results[i].Remote.RemoteTime = now
			}
		}
		return results, conflict
	case errors.Is(err, errDecode):
		return nil, decodeErr
	case conflict != nil && (errors.Is(err, syncer.ErrConflict) || errors.Is(err, syncer.ErrFenceRejected)):
		return results, conflict
	}
	return nil, commitError(ctx, b, err)
}

// commitError translates a failed commit of b. Firestore does not say which
// write of a batch it refused, so the error names a key only when b holds
// one change: the push loop parks the change an error names, and isolates
// the changes of a larger batch to find the culprit. Only an InvalidArgument
// is about the request itself; every other refusal (PermissionDenied,
// Unauthenticated, FailedPrecondition, Unimplemented, OutOfRange, ...) is
// about the credentials or the database and refuses every change alike,
// so it is an outage to wait out rather than a reason to set changes aside
// for good.
func commitError(ctx context.Context, b syncer.Batch, err error) error {
	var key syncer.Key
	if len(b.Changes) == 1 {
		key = b.Changes[0].Key
	}
	e := translate(ctx, "commit", key, err).(*syncer.Error)
	if st, ok := status.FromError(err); ok && e.Kind == syncer.ErrPermanent && st.Code() != codes.InvalidArgument {
		e.Kind = syncer.ErrUnavailable
	}
	return e
}

// cursor is a position in a governor's change stream: after the state
// document named state committed at time t.
type cursor struct {
	t     time.Time
	state string
}

func parseCursor(c syncer.Cursor) (cursor, error) {
	if c == "" {
		return cursor{}, nil
	}
	n, state, ok := strings.Cut(string(c), " ")
	ns, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil {
		return cursor{}, fmt.Errorf("bad cursor %q", c)
	}
	return cursor{time.Unix(0, ns).UTC(), state}, nil
}

func (c cursor) String() syncer.Cursor {
	if c.t.IsZero() {
		return ""
	}
	return syncer.Cursor(strconv.FormatInt(c.t.UnixNano(), 10) + " " + c.state)
}

// changesQuery returns the states of gov committed after c, in commit order.
//
// The stream is the documents whose sync_time is a timestamp (a range filter
// matches only values of its own type): one whose sync_time is missing or of
// another type, which the cursor could not go past, is never in it; Get and
// Commit report it (ErrUndecodable).
func (r *Remote) changesQuery(gov string, c cursor) firestore.Query {
	q := r.governor(gov).Collection("states").Where("sync_time", ">=", time.Time{}).
		OrderBy("sync_time", firestore.Asc).OrderBy(firestore.DocumentID, firestore.Asc)
	if !c.t.IsZero() {
		q = q.StartAfter(c.t, c.state)
	}
	return q
}

// streamCursor returns the position of snap in the change stream, when its
// sync_time says it (a document that does not decode may still have one).
func streamCursor(snap *firestore.DocumentSnapshot) (cursor, bool) {
	v, err := snap.DataAt("sync_time")
	t, ok := v.(time.Time)
	if err != nil || !ok {
		return cursor{}, false
	}
	return cursor{t, snap.Ref.ID}, true
}

func (c cursor) after(d cursor) bool {
	return c.t.After(d.t) || c.t.Equal(d.t) && c.state > d.state
}

// Changes implements syncer.Remote. Its cursor is the commit time (sync_time)
// and name of the last state returned or left out; it relies on Firestore's
// commit timestamps, which a query sees in order. A document that does not
// decode is left out (a *syncer.SkippedError with the page), and the cursor
// goes past it by its sync_time.
func (r *Remote) Changes(ctx context.Context, governor string, since syncer.Cursor, limit int) ([]syncer.Record, syncer.Cursor, error) {
	key := syncer.Key{Governor: governor}
	c, err := parseCursor(since)
	if err == nil {
		err = syncer.ValidateName("governor", governor)
	}
	if err != nil {
		return nil, since, &syncer.Error{Op: "changes", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if limit <= 0 {
		limit = 1000
	}
	// Read one document at a time, so that a page cut by its bytes stops
	// the query's stream there.
	it := r.changesQuery(governor, c).Limit(limit).Documents(ctx)
	defer it.Stop()
	var recs []syncer.Record
	var skipped []*syncer.UndecodableError
	for size := 0; size <= syncer.PageBytes; {
		snap, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, since, translate(ctx, "changes", key, err)
		}
		rec, bad := readState(syncer.Key{Governor: governor, State: snap.Ref.ID}, snap)
		if bad != nil {
			skipped = append(skipped, bad)
			if at, ok := streamCursor(snap); ok && at.after(c) {
				c = at
			}
			continue
		}
		recs = append(recs, rec)
		size += syncer.RecordSize(rec)
		c = cursor{rec.RemoteTime, snap.Ref.ID}
	}
	if skipped != nil {
		return recs, c.String(), &syncer.SkippedError{Op: "changes", Governor: governor, Docs: skipped}
	}
	return recs, c.String(), nil
}

// Watch implements syncer.Watcher with a Firestore snapshot listener. A
// document that does not decode is handed to fn as skipped, once per
// version the listener delivers.
func (r *Remote) Watch(ctx context.Context, governor string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	key := syncer.Key{Governor: governor}
	c, err := parseCursor(since)
	if err == nil {
		err = syncer.ValidateName("governor", governor)
	}
	if err != nil {
		return &syncer.Error{Op: "watch", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	it := r.changesQuery(governor, c).Snapshots(ctx)
	defer it.Stop()
	for {
		qs, err := it.Next()
		if err != nil {
			return translate(ctx, "watch", key, err)
		}
		var recs []syncer.Record
		var skipped []*syncer.UndecodableError
		for _, ch := range qs.Changes {
			if ch.Kind == firestore.DocumentRemoved {
				continue // states are never removed from the query's range
			}
			rec, bad := readState(syncer.Key{Governor: governor, State: ch.Doc.Ref.ID}, ch.Doc)
			if bad != nil {
				skipped = append(skipped, bad)
				if at, ok := streamCursor(ch.Doc); ok && at.after(c) {
					c = at
				}
				continue
			}
			recs = append(recs, rec)
		}
		slices.SortFunc(recs, func(a, b syncer.Record) int {
			if n := a.RemoteTime.Compare(b.RemoteTime); n != 0 {
				return n
			}
			return strings.Compare(a.State, b.State)
		})
		if n := len(recs); n > 0 {
			if last := (cursor{recs[n-1].RemoteTime, recs[n-1].State}); last.after(c) {
				c = last
			}
		}
		if err := fn(recs, c.String(), skipped); err != nil {
			return err
		}
	}
}

// Events implements syncer.Remote.
func (r *Remote) Events(ctx context.Context, key syncer.Key, afterVersion uint64, limit int) ([]syncer.Event, error) {
	if err := syncer.ValidateKey(key); err != nil {
		return nil, &syncer.Error{Op: "events", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if afterVersion > math.MaxInt64 {
		return nil, syncer.Errorf("events", key, syncer.ErrPermanent, "version %d out of range", afterVersion)
	}
	if limit <= 0 {
		limit = 1000
	}
	q := r.governor(key.Governor).Collection("events").Where("state", "==", key.State).
		Where("to_version", ">", int64(afterVersion)).OrderBy("to_version", firestore.Asc).Limit(limit)
	// Read one document at a time, so that a page cut by its bytes stops
	// the query's stream there.
	it := q.Documents(ctx)
	defer it.Stop()
	var evs []syncer.Event
	for size := 0; size <= syncer.PageBytes; {
		snap, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, translate(ctx, "events", key, err)
		}
		var d eventDoc
		if err := snap.DataTo(&d); err != nil {
			return nil, &syncer.Error{Op: "events", Key: key, Kind: syncer.ErrUndecodable,
				Err: &syncer.UndecodableError{Key: key, Doc: docPath(snap.Ref), Time: snap.UpdateTime, Err: err}}
		}
		e := fromEventDoc(key.Governor, d)
		evs = append(evs, e)
		size += syncer.EventSize(e)
	}
	return evs, nil
}

// Limits implements syncer.Remote: Firestore's.
func (r *Remote) Limits() syncer.Limits { return syncer.FirestoreLimits() }

// translate maps an error of the client library to syncer's errors.
func translate(ctx context.Context, op string, key syncer.Key, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return &syncer.Error{Op: op, Key: key, Kind: syncer.ErrUnavailable, Err: err}
	}
	return &syncer.Error{Op: op, Key: key, Kind: Kind(err), Err: err}
}

// Kind returns the syncer error kind for an error of the Firestore client:
// ErrNotFound, ErrUnavailable for what may succeed later (Unavailable,
// DeadlineExceeded, Aborted: transaction contention, ResourceExhausted:
// quota, Canceled, Internal, Unknown, and the InvalidArgument of a
// transaction that expired before its commit: see expiredTransaction),
// ErrTooLarge for a request over Firestore's size limits, ErrPermanent
// otherwise (InvalidArgument, PermissionDenied, Unauthenticated,
// FailedPrecondition: a missing index, AlreadyExists, OutOfRange,
// Unimplemented). A commit refused for other reasons than its content is
// an outage (see commitError).
func Kind(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return syncer.ErrUnavailable // a transport error outside gRPC
	}
	switch st.Code() {
	case codes.NotFound:
		return syncer.ErrNotFound
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted,
		codes.Canceled, codes.Internal, codes.Unknown:
		return syncer.ErrUnavailable
	case codes.InvalidArgument:
		msg := strings.ToLower(st.Message())
		if strings.Contains(msg, "exceeds the maximum") || strings.Contains(msg, "too big") ||
			strings.Contains(msg, "too large") || strings.Contains(msg, "too many") {
			return syncer.ErrTooLarge
		}
		if expiredTransaction(msg) {
			return syncer.ErrUnavailable
		}
		return syncer.ErrPermanent
	}
	return syncer.ErrPermanent
}

var (
	_ syncer.Remote  = (*Remote)(nil)
	_ syncer.Watcher = (*Remote)(nil)
)

// expiredTransaction reports whether msg, the lower-cased message of an
// InvalidArgument, says that the transaction a call used had expired or
// been closed: Firestore ends a transaction that lived or idled too long
// ("The referenced transaction has expired or is no longer valid"), and
// its emulator one that waited too long for its locks ("Transaction is
// invalid or closed"). Nothing of it was committed and a new transaction
// may succeed: the commit is retried, not parked for good.
func expiredTransaction(msg string) bool {
	return strings.Contains(msg, "transaction") && (strings.Contains(msg, "expired") ||
		strings.Contains(msg, "no longer valid") || strings.Contains(msg, "invalid or closed"))
}
