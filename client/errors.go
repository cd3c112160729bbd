package client

import (
	"errors"
	"fmt"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Error is the error the sidecar replied with. Every failure reported by the
// sidecar is returned as an *Error; read its details with errors.As:
//
//	var e *client.Error
//	if errors.As(err, &e) && e.Code == wire.CodeVersionConflict {
//		log.Printf("expected %d, found %d", *e.Expected, *e.Actual)
//	}
//
// Requests the client rejects before sending them (an invalid name, a value
// over the sidecar's limit) are also reported as an *Error, with the code the
// sidecar would have used.
type Error = wire.Error

// Sentinels for errors.Is. They match any *Error with the same code, so
// errors.Is(err, client.ErrNotFound) holds for every NotFound reply whatever
// its message or key. They are the wire package's values, re-exported so that
// callers need not import it; never modify them.
var (
	ErrNotFound         = wire.ErrNotFound
	ErrVersionConflict  = wire.ErrVersionConflict
	ErrFenceRejected    = wire.ErrFenceRejected
	ErrLockHeld         = wire.ErrLockHeld
	ErrLockLost         = wire.ErrLockLost
	ErrDeadlockDetected = wire.ErrDeadlockDetected
	ErrInvalidArgument  = wire.ErrInvalidArgument
	ErrUnknownOp        = wire.ErrUnknownOp
	ErrTooLarge         = wire.ErrTooLarge
	ErrTimeout          = wire.ErrTimeout
	ErrProtocol         = wire.ErrProtocol
	ErrInternal         = wire.ErrInternal
	// ErrPermissionDenied: the sidecar does not let this process's uid or
	// gid connect, or run the op on the governor (its access settings).
	ErrPermissionDenied = wire.ErrPermissionDenied

	// ErrUnavailable matches both an Unavailable reply and a *ConnError: the
	// sidecar could not be reached, or the connection broke.
	ErrUnavailable = wire.ErrUnavailable
)

// ErrClosed is returned by every call made after Close, and by calls that
// were in flight when Close was called.
var ErrClosed = errors.New("tai-state client: closed")

// ConnError reports that the connection to the sidecar failed: it could not
// be dialled, the handshake failed on I/O, or it broke while a request was
// queued or in flight. errors.Is(err, ErrUnavailable) holds for it, and
// errors.Unwrap returns the underlying cause (for example a *net.OpError, or
// the *Error the sidecar sent before closing the connection).
//
// The broken connection is discarded; the next call dials a new one.
type ConnError struct {
	// Op is the step that failed: "dial", "hello", "read" or "write".
	Op string
	// Socket is the path of the sidecar's socket.
	Socket string
	// Err is the cause.
	Err error
	// Sent is false when the request certainly did not reach the sidecar
	// (it was still queued when the connection broke, or never dialled), so
	// it is safe to send again even if it is not idempotent. When true the
	// request may or may not have been applied.
	Sent bool
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("tai-sidecar at %s: %s: %v", e.Socket, e.Op, e.Err)
}

// Unwrap returns the cause.
func (e *ConnError) Unwrap() error { return e.Err }

// Is reports whether target is an Unavailable error, such as ErrUnavailable.
func (e *ConnError) Is(target error) bool {
	t, ok := target.(*wire.Error)
	return ok && t.Code == wire.CodeUnavailable
}

// CanceledError reports that a call's context ended after its request was
// handed to the connection and before the reply came. errors.Is(err,
// context.DeadlineExceeded) (or context.Canceled) holds for it, as for the
// context errors calls return before that.
type CanceledError struct {
	// Err is the context's error.
	Err error
	// Sent is false when the request certainly did not reach the sidecar
	// (it was still queued), as in ConnError: safe to send again. When true
	// the request may or may not have been applied: read back before
	// retrying a write that is not idempotent.
	Sent bool
}

func (e *CanceledError) Error() string {
	if e.Sent {
		return "tai-state client: " + e.Err.Error() + " (the request was sent: its outcome is unknown)"
	}
	return "tai-state client: " + e.Err.Error() + " (the request was not sent)"
}

// Unwrap returns the context's error.
func (e *CanceledError) Unwrap() error { return e.Err }

// errorf returns a client-side *Error, built like the sidecar's own.
func errorf(code wire.Code, format string, args ...any) *Error {
	return wire.Errorf(code, format, args...)
}

// protocolErrorf reports a reply that breaks the protocol.
func protocolErrorf(format string, args ...any) *Error {
	return errorf(wire.CodeProtocol, format, args...)
}
