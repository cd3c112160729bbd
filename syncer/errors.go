package syncer

import (
	"errors"
	"fmt"
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

// Unwrap returns Kind (and ErrPermanent for ErrTooLarge) and the cause.
func (e *Error) Unwrap() []error {
	errs := []error{e.Kind}
	if e.Kind == ErrTooLarge {
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
