package wire

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrInvalidName is wrapped by ValidateName's errors.
var ErrInvalidName = errors.New("invalid name")

// ValidateName checks a governor or state name against Firestore's rules for
// document ids, so that every name accepted locally can also be synced: not
// empty, at most MaxNameSize bytes of valid UTF-8, no '/', not "." or "..",
// and not of the reserved form __x__. kind ("governor", "state") goes into the
// error message.
func ValidateName(kind, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidName, kind)
	case len(s) > MaxNameSize:
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrInvalidName, kind, len(s), MaxNameSize)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidName, kind)
	case strings.IndexByte(s, '/') >= 0:
		return fmt.Errorf("%w: %s %q contains '/'", ErrInvalidName, kind, s)
	case s == "." || s == "..":
		return fmt.Errorf("%w: %s %q is reserved", ErrInvalidName, kind, s)
	case len(s) >= 4 && strings.HasPrefix(s, "__") && strings.HasSuffix(s, "__"):
		return fmt.Errorf("%w: %s %q matches the reserved form __x__", ErrInvalidName, kind, s)
	}
	return nil
}
