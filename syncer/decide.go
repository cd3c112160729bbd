package syncer

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Backend helpers: the rules every Remote applies the same way. They live
// here, not in each backend, so that backends cannot drift apart.

// MaxNameBytes is the longest governor or state name (Firestore's document
// id limit).
const MaxNameBytes = 1500

// ValidateName checks a governor, state or event id against the document-id
// rules of the remote: not empty, at most MaxNameBytes bytes, valid UTF-8, no
// '/', not "." or "..", not of the form __x__.
func ValidateName(kind, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", kind)
	case len(s) > MaxNameBytes:
		return fmt.Errorf("%s is longer than %d bytes", kind, MaxNameBytes)
	case !utfValid(s):
		return fmt.Errorf("%s is not valid UTF-8", kind)
	case strings.Contains(s, "/"):
		return fmt.Errorf("%s %q contains '/'", kind, s)
	case s == "." || s == "..":
		return fmt.Errorf("%s may not be %q", kind, s)
	case len(s) >= 4 && strings.HasPrefix(s, "__") && strings.HasSuffix(s, "__"):
		return fmt.Errorf("%s %q has the reserved form __x__", kind, s)
	}
	return nil
}

func utfValid(s string) bool { return utf8.ValidString(s) }

// ValidateKey checks both names of key.
func ValidateKey(key Key) error {
	if err := ValidateName("governor", key.Governor); err != nil {
		return err
	}
	return ValidateName("state", key.State)
}

// Validate checks one change (not its size: see CheckLimits).
func (c Change) Validate() error {
	if err := ValidateKey(c.Key); err != nil {
		return err
	}
	if c.BaseVersion > math.MaxInt64 {
		return fmt.Errorf("base version %d is out of range", c.BaseVersion)
	}
	if !c.Fence.IsZero() {
		if err := c.Fence.Validate(); err != nil {
			return err
		}
	}
	if c.CheckOnly {
		return nil
	}
	r := c.Record
	if r.Key != (Key{}) && r.Key != c.Key {
		return fmt.Errorf("record key %s is not the change's key %s", r.Key, c.Key)
	}
	if r.Version <= c.BaseVersion {
		return fmt.Errorf("record version %d is not above base version %d", r.Version, c.BaseVersion)
	}
	if r.Origin == "" || r.OpID == "" {
		return fmt.Errorf("record needs an origin and an op id")
	}
	if r.Clock.Vector[r.Origin] == 0 {
		return fmt.Errorf("record's vector clock has no entry for its origin %q", r.Origin)
	}
	if err := int64Range(r.Version, r.Clock); err != nil {
		return err
	}
	if cr := c.Conflict; cr != nil {
		if err := ValidateName("conflict id", cr.ID); err != nil {
			return err
		}
		if cr.Key != c.Key {
			return fmt.Errorf("conflict record of %s on a change of %s", cr.Key, c.Key)
		}
	}
	for i, e := range c.Events {
		if e.Key != (Key{}) && e.Key != c.Key {
			return fmt.Errorf("event %d: key %s is not the change's key %s", i, e.Key, c.Key)
		}
		if err := ValidateName("event op id", e.OpID); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if e.Action != ActionPut && e.Action != ActionDelete {
			return fmt.Errorf("event %d: unknown action %q", i, e.Action)
		}
		if e.FromVersion > math.MaxInt64 {
			return fmt.Errorf("event %d: version out of range", i)
		}
		if err := int64Range(e.ToVersion, e.Clock); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	return nil
}

// int64Range rejects numbers that a remote storing signed 64-bit integers
// (Firestore) cannot hold.
func int64Range(version uint64, c Clock) error {
	if version > math.MaxInt64 || c.Lamport > math.MaxInt64 || c.HLC > math.MaxInt64 {
		return fmt.Errorf("version or clock out of range")
	}
	for n, x := range c.Vector {
		if x > math.MaxInt64 {
			return fmt.Errorf("vector clock entry %q out of range", n)
		}
	}
	return nil
}

// RecordSize estimates, from above, the bytes a record takes in the remote
// (value, metadata, names and field overhead).
func RecordSize(r Record) int {
	return 512 + 2*(len(r.Governor)+len(r.State)) + len(r.Value) + len(r.Change.Actor) +
		len(r.Change.Reason) + len(r.Origin) + len(r.OpID) + vectorSize(r.Clock.Vector)
}

// EventSize estimates, from above, the bytes an event takes in the remote.
func EventSize(e Event) int {
	return 512 + 2*(len(e.Governor)+len(e.State)) + 2*len(e.OpID) + len(e.Value) +
		len(e.Change.Actor) + len(e.Change.Reason) + len(e.Origin) + vectorSize(e.Clock.Vector)
}

func vectorSize(v map[string]uint64) int {
	n := 0
	for node := range v {
		n += len(node) + 16
	}
	return n
}

// Writes counts the documents a batch writes: one per change that is not
// CheckOnly, plus one per event and one per conflict record.
func Writes(b Batch) int {
	n := 0
	for _, c := range b.Changes {
		if !c.CheckOnly {
			n += 1 + len(c.Events)
			if c.Conflict != nil {
				n++
			}
		}
	}
	return n
}

// BatchSize estimates, from above, the bytes a batch carries.
func BatchSize(b Batch) int {
	n := 0
	for _, c := range b.Changes {
		if c.CheckOnly {
			n += 64 + len(c.Key.Governor) + len(c.Key.State)
			continue
		}
		r := c.Record
		r.Key = c.Key
		n += RecordSize(r)
		for _, e := range c.Events {
			e.Key = c.Key
			n += EventSize(e)
		}
		if c.Conflict != nil {
			n += ConflictSize(*c.Conflict)
		}
	}
	return n
}

// CheckBatch validates every change of b, rejects a key that appears twice,
// and checks b against lim. The error is an *Error of kind ErrPermanent or
// ErrTooLarge.
func CheckBatch(b Batch, lim Limits) error {
	seen := make(map[Key]bool, len(b.Changes))
	for _, c := range b.Changes {
		if err := c.Validate(); err != nil {
			return &Error{Op: "commit", Key: c.Key, Kind: ErrPermanent, Err: err}
		}
		if seen[c.Key] {
			return Errorf("commit", c.Key, ErrPermanent, "key appears twice in one batch")
		}
		seen[c.Key] = true
		if c.CheckOnly {
			continue
		}
		r := c.Record
		r.Key = c.Key
		if n := RecordSize(r); lim.MaxRecordBytes > 0 && n > lim.MaxRecordBytes {
			return Errorf("commit", c.Key, ErrTooLarge, "record of ~%d bytes, limit %d", n, lim.MaxRecordBytes)
		}
		for _, e := range c.Events {
			e.Key = c.Key
			if n := EventSize(e); lim.MaxRecordBytes > 0 && n > lim.MaxRecordBytes {
				return Errorf("commit", c.Key, ErrTooLarge, "event %s of ~%d bytes, limit %d", e.OpID, n, lim.MaxRecordBytes)
			}
		}
		if c.Conflict != nil {
			if n := ConflictSize(*c.Conflict); lim.MaxRecordBytes > 0 && n > lim.MaxRecordBytes {
				return Errorf("commit", c.Key, ErrTooLarge, "conflict record of ~%d bytes, limit %d", n, lim.MaxRecordBytes)
			}
		}
	}
	if n := Writes(b); lim.MaxWrites > 0 && n > lim.MaxWrites {
		return Errorf("commit", Key{}, ErrTooLarge, "batch writes %d documents, limit %d", n, lim.MaxWrites)
	}
	if n := BatchSize(b); lim.MaxBatchBytes > 0 && n > lim.MaxBatchBytes {
		return Errorf("commit", Key{}, ErrTooLarge, "batch of ~%d bytes, limit %d", n, lim.MaxBatchBytes)
	}
	return nil
}

// Covers reports whether the remote record already has change c's op: its
// last op id is c's, or its vector clock entry for c's origin has reached
// c's. Every Change counts its own op in Record.Clock.Vector[Record.Origin]
// (Validate requires it), so a record written by c, or by anything made after
// seeing c, covers c.
func Covers(remote Record, c Change) bool {
	if c.Record.OpID != "" && remote.OpID == c.Record.OpID {
		return true
	}
	n := c.Record.Clock.Vector[c.Record.Origin]
	return n > 0 && remote.Clock.Vector[c.Record.Origin] >= n
}

// Decide decides every change of a checked batch (see CheckBatch) against
// the remote's current records, as every Remote's Commit does. A change
// that writes conflicts unless its base version is the remote's version and
// its vector clock has seen the remote record's (every node's entry at
// least as high): a matching version number alone does not say the change
// was made on that record (a write made on a local value that later lost a
// conflict has the winner's version number as its base). cur returns
// the current record of a key and whether one exists, and lock the last
// token granted on a lock (0: no record; nil: no lock has one), read in the
// same transaction, for the changes with a Fence. A change whose op the
// remote already covers is AlreadyApplied whatever its fence; otherwise a
// fence that fails CheckFence makes it FenceRejected. For Applied changes
// that write, the Result's Remote is the record to store (Key set; the
// backend sets RemoteTime). When some change conflicts or is
// FenceRejected, Decide also returns the error for Commit to return (see
// Remote.Commit); in an Atomic batch every change that would have been
// Applied is then Skipped, and nothing may be written.
func Decide(b Batch, cur func(Key) (Record, bool), lock func(resource string) uint64) ([]Result, error) {
	results := make([]Result, len(b.Changes))
	var conflict *ConflictError
	var rejected *FenceRejectedError
	for i, c := range b.Changes {
		remote, exists := cur(c.Key)
		res := Result{Key: c.Key, Exists: exists, Remote: remote}
		var version uint64
		if exists {
			version = remote.Version
		}
		switch {
		case !c.CheckOnly && exists && Covers(remote, c):
			res.Status = AlreadyApplied
		case !c.Fence.IsZero() && fenceRejected(c.Fence, lock, &res):
			if rejected == nil {
				rejected = res.Rejected
			}
		case version != c.BaseVersion || !c.CheckOnly && exists && !dominates(c.Record.Clock.Vector, remote.Clock.Vector) ||
			c.CheckOnly && exists && c.Record.OpID != "" && remote.OpID != c.Record.OpID:
			res.Status = Conflict
			if conflict == nil {
				conflict = &ConflictError{Key: c.Key, Expected: c.BaseVersion, Actual: version,
					Exists: exists, Remote: remote}
			}
			conflict.Conflicts++
		default:
			res.Status = Applied
			if !c.CheckOnly {
				res.Exists = true
				res.Remote = c.Record
				res.Remote.Key = c.Key
				if res.Remote.Deleted {
					res.Remote.Value = nil
				}
			}
		}
		results[i] = res
	}
	if conflict == nil && rejected == nil {
		return results, nil
	}
	if b.Atomic {
		for i, c := range b.Changes {
			if results[i].Status != Applied {
				continue // conflicts, and ops the remote already has
			}
			remote, exists := cur(c.Key)
			results[i] = Result{Key: c.Key, Status: Skipped, Exists: exists, Remote: remote}
		}
	}
	if conflict != nil {
		return results, conflict
	}
	return results, rejected
}

// fenceRejected judges fence f with CheckFence against lock's last token
// (nil lock: no lock has a record) and, when it fails, makes res
// FenceRejected.
func fenceRejected(f Fence, lock func(string) uint64, res *Result) bool {
	var last uint64
	if lock != nil {
		last = lock(f.Resource)
	}
	err := CheckFence(f, last)
	if err == nil {
		return false
	}
	res.Status, res.Rejected = FenceRejected, err.(*FenceRejectedError)
	return true
}

// Writable reports whether result i of a decided batch is to be written.
func Writable(b Batch, results []Result, i int) bool {
	return results[i].Status == Applied && !b.Changes[i].CheckOnly
}

// FirestoreLimits returns the limits of one Firestore commit: 500 writes,
// 1 MiB per document, 10 MiB per request (less room for the request's framing).
func FirestoreLimits() Limits {
	return Limits{MaxWrites: 500, MaxRecordBytes: 1 << 20, MaxBatchBytes: 9 << 20}
}
