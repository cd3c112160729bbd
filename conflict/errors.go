package conflict

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrInvalidClock: a clock value from elsewhere is out of range (see
	// Limit) or malformed.
	ErrInvalidClock = errors.New("invalid clock")
	// ErrUnknownResolver: no resolver is registered under the name.
	ErrUnknownResolver = errors.New("unknown resolver")
	// ErrInvalidName: a resolver or governor name is not acceptable.
	ErrInvalidName = errors.New("invalid name")
	// ErrDuplicate: a resolver is already registered under the name.
	ErrDuplicate = errors.New("resolver already registered")
	// ErrInvalidConfig: a resolver configuration cannot be parsed or used.
	ErrInvalidConfig = errors.New("invalid resolver configuration")
	// ErrInvalidDecision: a resolver returned a decision that cannot be
	// applied (no winner, or a merged decision without a value).
	ErrInvalidDecision = errors.New("invalid decision")
	// ErrNotMergeable: a value is not a msgpack map with string keys, so
	// the merge resolver cannot merge it field by field.
	ErrNotMergeable = errors.New("value is not a mergeable msgpack map")
)

// errorf returns an error wrapping sentinel, with a message.
func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}
