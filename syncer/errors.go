package syncer

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors of a Remote. Backends return them wrapped (see *Error and
// *ConflictError); test with errors.Is.
var (
	// ErrNotFound: the remote has never had the state.
	ErrNotFound = errors.New("not found in remote")
	// ErrConflict: a change's base version is not the remote's version.
	ErrConflict = errors.New("remote version conflict")
	// ErrUnavailable: a transient failure (offline, timeout, overload,
	// contention); the call may have taken effect, and retrying is safe.
	ErrUnavailable = errors.New("remote unavailable")
	// ErrPermanent: the request is bad or not allowed; retrying fails again.
	ErrPermanent = errors.New("remote rejected the request")
	// ErrTooLarge: a record or batch is over the remote's Limits. Errors that
	// match it also match ErrPermanent.
	ErrTooLarge = errors.New("too large for remote")
	// ErrUndecodable: the remote holds a document where a record of the key
	// is kept, but it is not a record the backend can read (a field of the
	// wrong type, a missing field, written by another tool or by another
	// version). It is not ErrNotFound: the state exists, and a write must
	// not replace it as if it were absent. Errors that match it also match
	// ErrPermanent: reading it again fails again until the document is
	// repaired or deleted. See UndecodableError.
	ErrUndecodable = errors.New("remote document does not decode")
)

// Error is a failed remote call. Kind is one of the sentinel errors above
// and Err the cause (for example the backend's own error); errors.Is and
// errors.As see both.
type Error struct {
	Op   string // "get", "commit", "changes", "events", "watch"
	Key  Key    // the key concerned, if any
	Kind error
	Err  error
}

func (e *Error) Error() string {
	s := e.Op
	if e.Key != (Key{}) {
		s += " " + e.Key.String()
	}
	s += ": " + e.Kind.Error()
	if e.Err != nil && e.Err != e.Kind {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Kind (and ErrPermanent for ErrTooLarge and
// ErrUndecodable) and the cause.
func (e *Error) Unwrap() []error {
	errs := []error{e.Kind}
	if e.Kind == ErrTooLarge || e.Kind == ErrUndecodable {
		errs = append(errs, ErrPermanent)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Errorf returns an *Error of kind for op and key, with a cause made by
// fmt.Errorf(format, args...).
func Errorf(op string, key Key, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Key: key, Kind: kind, Err: fmt.Errorf(format, args...)}
}

// UndecodableError is a remote document where a record of Key is kept that
// the backend cannot read as a record. A Get or Commit that meets it fails
// with an *Error of kind ErrUndecodable whose cause it is; Changes and Watch
// leave it out of the stream (see SkippedError). It matches ErrUndecodable
// and ErrPermanent.
type UndecodableError struct {
	Key Key
	// Doc names the document as the backend does (Firestore: its path).
	Doc string
	// Time is when the remote last wrote the document (zero when unknown):
	// with Doc, it names the version that does not decode.
	Time time.Time
	// Err says what does not decode.
	Err error
	// What the document should be: "" is a state record.
	What string
}

func (e *UndecodableError) Error() string {
	s := "document " + e.Doc
	if !e.Time.IsZero() {
		s += " (written " + e.Time.UTC().Format(time.RFC3339Nano) + ")"
	}
	what := e.What
	if what == "" {
		what = "state record"
	}
	return s + " is not a " + what + ": " + e.Err.Error()
}

// Unwrap returns ErrUndecodable, ErrPermanent and the cause.
func (e *UndecodableError) Unwrap() []error { return []error{ErrUndecodable, ErrPermanent, e.Err} }

// SkippedError is returned by Changes, with the records and the cursor, when
// documents of the governor were left out of the page because they do not
// decode (Docs, in stream order); a Watch hands them to its fn. The cursor
// returned goes past them: they are not returned again until they are
// written again. Conflicts returns one with the records, for ledger
// documents left out. It matches ErrUndecodable and ErrPermanent.
type SkippedError struct {
	Op       string // "changes", "conflicts"
	Governor string
	Docs     []*UndecodableError
}

func (e *SkippedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d remote document(s) left out: ", e.Op, e.Governor, len(e.Docs))
	for i, d := range e.Docs {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Docs)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(d.Error())
	}
	return b.String()
}

// Unwrap returns the documents' errors.
func (e *SkippedError) Unwrap() []error {
	errs := make([]error, len(e.Docs))
	for i, d := range e.Docs {
		errs[i] = d
	}
	return errs
}

// ConflictError says a change's base version is not the remote's version.
// Commit returns it, describing the first conflicting change of a batch;
// Conflicts counts all of them. It matches ErrConflict.
type ConflictError struct {
	Key       Key
	Expected  uint64 // the change's BaseVersion (0: absent)
	Actual    uint64 // the remote's version (0: absent)
	Exists    bool   // whether the remote holds a record (a tombstone counts)
	Remote    Record // the remote record when Exists
	Conflicts int    // conflicting changes in the batch, >= 1
}

func (e *ConflictError) Error() string {
	s := fmt.Sprintf("%s: remote version conflict: expected %d, actual %d", e.Key, e.Expected, e.Actual)
	if e.Conflicts > 1 {
		s += fmt.Sprintf(" (and %d more conflicts)", e.Conflicts-1)
	}
	return s
}

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// IsTransient reports whether err is worth retrying later (ErrUnavailable).
func IsTransient(err error) bool { return errors.Is(err, ErrUnavailable) }
