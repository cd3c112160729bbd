package wire

import "fmt"

// Code is a typed error code. Codes are stable strings: clients switch on them.
type Code string

// Error codes. docs/protocol.md says when each is sent.
const (
	CodeNotFound         Code = "NotFound"
	CodeVersionConflict  Code = "VersionConflict"
	CodeFenceRejected    Code = "FenceRejected"
	CodeLockHeld         Code = "LockHeld"
	CodeDeadlockDetected Code = "DeadlockDetected"
	CodeUnavailable      Code = "Unavailable"
	CodeInvalidArgument  Code = "InvalidArgument"
	CodeUnknownOp        Code = "UnknownOp"
	CodeTooLarge         Code = "TooLarge"
	CodeTimeout          Code = "Timeout"
	CodeProtocol         Code = "ProtocolError"
	CodeInternal         Code = "Internal"
	// CodePermissionDenied: the peer's uid or gid may not connect, or may
	// not run this op on this governor (sockapi.Access).
	CodePermissionDenied Code = "PermissionDenied"
	// CodeLockLost: a lock grant is no longer current (its lease ended, or
	// another grant took the lock): lock_release, lock_extend, and the push
	// frame of a lost bound lock.
	CodeLockLost Code = "LockLost"
)

// Retryable reports whether a request that failed with c may succeed if sent
// again unchanged.
func (c Code) Retryable() bool {
	switch c {
	case CodeUnavailable, CodeTimeout, CodeLockHeld, CodeDeadlockDetected:
		return true
	}
	return false
}

// Error is an error reply. It is also the error the Go client returns, so
// callers can use errors.Is with the Err* values below, and errors.As to read
// the details.
type Error struct {
	Code      Code   `codec:"code"`
	Message   string `codec:"message"`
	Retryable bool   `codec:"retryable"`

	// Key names the state the error is about, when there is one.
	Governor string `codec:"governor,omitempty"`
	State    string `codec:"state,omitempty"`
	// VersionConflict: the version the request required and the one found
	// (0: the state does not exist).
	Expected *uint64 `codec:"expected,omitempty"`
	Actual   *uint64 `codec:"actual,omitempty"`
	// Field names the offending request field for InvalidArgument and TooLarge.
	Field string `codec:"field,omitempty"`
	// Limit is the limit that was passed, for TooLarge.
	Limit int64 `codec:"limit,omitempty"`
	// Lock is the lock as found, for LockHeld and LockLost; Waited is set
	// on a LockHeld after the request waited wait_ms in vain.
	Lock   *Lock `codec:"lock,omitempty"`
	Waited bool  `codec:"waited,omitempty"`
	// Deadlock is the cycle of waits, for DeadlockDetected.
	Deadlock *Deadlock `codec:"deadlock,omitempty"`
	// Fence is the rejected fence and the token it was judged against,
	// for FenceRejected.
	Fence *FenceRejection `codec:"fence,omitempty"`
	// Machine is the machine state expected and found, for WrongState.
	Machine *MachineState `codec:"machine,omitempty"`
}

// Errorf returns an Error with code c, its retryable flag and a message.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...), Retryable: c.Retryable()}
}

func (e *Error) Error() string {
	s := string(e.Code)
	switch {
	case e.State != "":
		s += " " + e.Governor + "/" + e.State
	case e.Governor != "":
		s += " " + e.Governor // an error about a whole governor
	}
	if e.Code == CodeVersionConflict && e.Expected != nil && e.Actual != nil {
		s += fmt.Sprintf(" (expected version %d, actual %d)", *e.Expected, *e.Actual)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is matches errors by code, so errors.Is(err, wire.ErrNotFound) holds for
// any NotFound reply.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrNotFound         = &Error{Code: CodeNotFound}
	ErrVersionConflict  = &Error{Code: CodeVersionConflict}
	ErrFenceRejected    = &Error{Code: CodeFenceRejected}
	ErrLockHeld         = &Error{Code: CodeLockHeld}
	ErrDeadlockDetected = &Error{Code: CodeDeadlockDetected}
	ErrUnavailable      = &Error{Code: CodeUnavailable}
	ErrInvalidArgument  = &Error{Code: CodeInvalidArgument}
	ErrUnknownOp        = &Error{Code: CodeUnknownOp}
	ErrTooLarge         = &Error{Code: CodeTooLarge}
	ErrTimeout          = &Error{Code: CodeTimeout}
	ErrProtocol         = &Error{Code: CodeProtocol}
	ErrInternal         = &Error{Code: CodeInternal}
	ErrPermissionDenied = &Error{Code: CodePermissionDenied}
	ErrLockLost         = &Error{Code: CodeLockLost}
)
