package localcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// State machines (docs/decisions/0015). A state whose value is a machine
// value is one machine, in the machine state the value names:
//
//   - a msgpack string: the machine state is the string ("open");
//   - a msgpack map with a string entry "state": the machine state is that
//     entry ({"state": "open", "owner": "ann"}); the other entries are the
//     machine's data.
//
// A transition moves a machine from an expected machine state to a new
// one with a compare-and-set of the state's version: one write, whose
// event's action is the transition's action.

// MaxActionSize is the longest transition action, and the longest machine
// state name, in bytes.
const MaxActionSize = 256

// maxTransitionAttempts bounds how often a transition re-reads the state
// after its compare-and-set lost to a write that left the machine state
// as expected (a change of the machine's data only).
const maxTransitionAttempts = 16

// ErrWrongState is wrapped by *WrongStateError.
var ErrWrongState = errors.New("wrong machine state")

// WrongStateError says a transition found the machine in another state
// than it expected, or found no machine.
type WrongStateError struct {
	Key Key
	// Expected is the machine state the transition expected ("": the state
	// must not exist); Actual the one found ("": the state does not exist,
	// or NotMachine).
	Expected, Actual string
	// Version is the state's current version (0: it does not exist).
	Version uint64
	// NotMachine: the state exists and its value is not a machine value.
	NotMachine bool
}

func (e *WrongStateError) Error() string {
	actual := fmt.Sprintf("%q", e.Actual)
	switch {
	case e.NotMachine:
		actual = fmt.Sprintf("a value that is not a machine value (version %d)", e.Version)
	case e.Version == 0:
		actual = "no state"
	}
	expected := fmt.Sprintf("%q", e.Expected)
	if e.Expected == "" {
		expected = "no state"
	}
	return fmt.Sprintf("transition %s: %v: expected %s, found %s", e.Key, ErrWrongState, expected, actual)
}

// Unwrap makes errors.Is(err, ErrWrongState) hold.
func (e *WrongStateError) Unwrap() error { return ErrWrongState }

// Transition moves the machine Key from machine state From to To.
type Transition struct {
	Key
	// From is the machine state expected; "" expects no state (the
	// transition creates the machine).
	From string
	// To is the new machine state (required).
	To string
	// Action names the transition; it becomes the action of its event.
	// Required, and not "put" or "delete".
	Action string
	// Value, when set, is the whole new value: a machine value in state To.
	// Empty: the current value with its machine state set to To (a map
	// keeps its other entries byte for byte), or the string To when the
	// machine is created.
	Value         []byte
	Actor, Reason string
	// Fence, when set, is the lock grant the transition is made under, as
	// for Write: a stale one is rejected (*FenceRejectedError) here, before
	// the machine state is judged, and again when it is pushed.
	Fence Fence
	// Confirm is the write's Write.Confirm (a sync transition).
	Confirm bool
}

// WriteFunc stores one write, as Store.Write does.
type WriteFunc func(ctx context.Context, w Write) (Record, error)

// Transition runs t as a compare-and-set through write (nil: s.Write; a
// strong transition passes a write that checks against the shared store):
// it reads the state, checks its machine state against t.From, and writes
// the new value on condition that the version is still the one read. When
// that condition fails, it reads again: the machine state may still be
// t.From (the write changed only the machine's data). Of transitions racing
// from one machine state, exactly one succeeds; the others get a
// *WrongStateError naming the state they find.
//
// A fenced transition is judged by its fence first: a token below the
// store's mark is a *FenceRejectedError whatever the machine state, so a
// holder that lost its lock learns so, not only that the machine moved
// on. The write checks the fence again, in its group.
//
// It returns the new record, without its value. Errors: a *KeyError
// holding a *FieldError (ErrInvalid, ErrTooLarge) for invalid input or a
// *FenceRejectedError (ErrFenceRejected); a *WrongStateError
// (ErrWrongState); a *VersionConflictError after maxTransitionAttempts
// lost races; write's errors.
func (s *Store) Transition(ctx context.Context, t Transition, write WriteFunc) (Record, error) {
	if err := checkTransition(t, s.opts.MaxValueSize); err != nil {
		return Record{}, err
	}
	if !t.Fence.IsZero() {
		mark, err := s.FenceMark(ctx, t.Fence.Resource)
		if err != nil {
			return Record{}, err
		}
		if t.Fence.Token < mark {
			return Record{}, &KeyError{Op: "transition", Key: t.Key,
				Err: &FenceRejectedError{Resource: t.Fence.Resource, Token: t.Fence.Token, Current: mark}}
		}
	}
	if write == nil {
		write = s.Write
	}
	var lastErr error
	for range maxTransitionAttempts {
		cur, err := s.Get(ctx, t.Key)
		var ke *KeyError
		switch {
		case errors.As(err, &ke) && errors.Is(err, ErrNotFound):
			cur = Record{}
		case err != nil:
			return Record{}, err
		}
		w, err := transitionWrite(t, cur)
		if err != nil {
			return Record{}, err
		}
		rec, err := write(ctx, w)
		if !errors.Is(err, ErrVersionConflict) {
			return rec, err
		}
		lastErr = err
	}
	return Record{}, lastErr
}

// transitionWrite checks t against the current record cur (Version 0: no
// state) and returns the write that makes the transition.
func transitionWrite(t Transition, cur Record) (Write, error) {
	wrong := &WrongStateError{Key: t.Key, Expected: t.From, Version: cur.Version}
	var m machine
	if cur.Version > 0 {
		var ok bool
		if m, ok = parseMachine(cur.Value); !ok {
			wrong.NotMachine = true
			return Write{}, wrong
		}
		wrong.Actual = m.state
	}
	if wrong.Actual != t.From || (t.From == "" && cur.Version > 0) {
		return Write{}, wrong
	}
	value := t.Value
	switch {
	case len(value) > 0:
	case m.isMap:
		value = m.with(cur.Value, t.To)
	default:
		value = appendMsgpackString(nil, t.To)
	}
	w := Write{Key: t.Key, Value: value, Action: t.Action, Actor: t.Actor, Reason: t.Reason, Fence: t.Fence, Confirm: t.Confirm}
	if cur.Version == 0 {
		w.IfAbsent = true
	} else {
		v := cur.Version
		w.IfVersion = &v
	}
	return w, nil
}

// checkTransition validates t (its value's size is checked by the write).
func checkTransition(t Transition, maxValue int) error {
	if err := validateKey("transition", t.Key); err != nil {
		return err
	}
	fail := func(field string, sentinel error, format string, args ...any) error {
		return &KeyError{Op: "transition", Key: t.Key, Err: &FieldError{Field: field,
			Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}}
	}
	for _, f := range []struct{ field, name string }{{"from", t.From}, {"to", t.To}} {
		if err := checkMachineName(f.name); err != nil {
			return fail(f.field, ErrInvalid, "%v", err)
		}
	}
	if t.To == "" {
		return fail("to", ErrInvalid, "the new machine state is required")
	}
	if t.Action == "" {
		return fail("action", ErrInvalid, "the transition's action is required")
	}
	if err := checkWriteAction(Write{Action: t.Action}); err != nil {
		return &KeyError{Op: "transition", Key: t.Key, Err: err}
	}
	if err := checkFence(t.Fence); err != nil {
		return &KeyError{Op: "transition", Key: t.Key, Err: err}
	}
	if len(t.Value) > maxValue {
		return &KeyError{Op: "transition", Key: t.Key, Err: &FieldError{Field: "value", Limit: int64(maxValue),
			Err: fmt.Errorf("%w: value is %d bytes, limit %d", ErrTooLarge, len(t.Value), maxValue)}}
	}
	if len(t.Value) > 0 {
		m, ok := parseMachine(t.Value)
		if !ok {
			return fail("value", ErrInvalid, "the value is not a machine value (a string, or a map with a string entry \"state\")")
		}
		if m.state != t.To {
			return fail("value", ErrInvalid, "the value names machine state %q, not the new state %q", m.state, t.To)
		}
	}
	return nil
}

// checkMachineName checks a machine state name or an action: UTF-8, at
// most MaxActionSize bytes ("" passes: callers decide whether it may be
// empty).
func checkMachineName(s string) error {
	if len(s) > MaxActionSize {
		return fmt.Errorf("%d bytes, limit %d", len(s), MaxActionSize)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	return nil
}

// checkWriteAction checks Write.Action: a name for puts only, never "put"
// or "delete" (which name plain writes).
func checkWriteAction(w Write) error {
	if w.Action == "" {
		return nil
	}
	fail := func(format string, args ...any) error {
		return &FieldError{Field: "action", Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)}
	}
	switch {
	case w.Delete:
		return fail("a delete is not named")
	case w.Action == ActionPut || w.Action == ActionDelete:
		return fail("%q names plain writes: a transition's action is another name", w.Action)
	}
	if err := checkMachineName(w.Action); err != nil {
		return fail("action %v", err)
	}
	return nil
}

// --- machine values ---

// machine is a parsed machine value.
type machine struct {
	state string
	isMap bool
	// start and end delimit the encoded "state" entry's value in a map.
	start, end int
}

// with returns v (a map machine value) with its machine state set to state.
func (m machine) with(v []byte, state string) []byte {
	out := make([]byte, 0, len(v)+len(state)+5)
	out = append(out, v[:m.start]...)
	out = appendMsgpackString(out, state)
	return append(out, v[m.end:]...)
}

// parseMachine reads v as a machine value: one whole msgpack value that is
// a string, or a map with exactly one string key "state" whose value is a
// string.
func parseMachine(v []byte) (machine, bool) {
	if len(v) == 0 {
		return machine{}, false
	}
	if s, end, ok := msgpackString(v, 0); ok {
		return machine{state: s}, end == len(v)
	}
	n, off, ok := msgpackMapHeader(v)
	if !ok {
		return machine{}, false
	}
	m := machine{isMap: true}
	found := false
	for range n {
		key, keyEnd, isStr := msgpackString(v, off)
		if isStr && key == "state" {
			s, end, ok := msgpackString(v, keyEnd)
			if !ok || found {
				return machine{}, false // not a string, or "state" twice
			}
			m.state, m.start, m.end, found = s, keyEnd, end, true
			off = end
			continue
		}
		var err error
		if off, err = skipMsgpack(v, off, 0); err != nil {
			return machine{}, false
		}
		if off, err = skipMsgpack(v, off, 0); err != nil {
			return machine{}, false
		}
	}
	return m, found && off == len(v)
}

// msgpackString reads a string at off: its text and where it ends.
func msgpackString(v []byte, off int) (string, int, bool) {
	if off >= len(v) {
		return "", 0, false
	}
	c := v[off]
	var n, head int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n, head = int(c&0x1f), 1
	case c == 0xd9 || c == 0xda || c == 0xdb:
		size := 1 << (c - 0xd9)
		l, ok := bigEndian(v, off+1, size)
		if !ok {
			return "", 0, false
		}
		n, head = l, 1+size
	default:
		return "", 0, false
	}
	start := off + head
	if n > len(v)-start {
		return "", 0, false
	}
	return string(v[start : start+n]), start + n, true
}

// msgpackMapHeader reads a map header at the start of v: its number of
// entries and where they start.
func msgpackMapHeader(v []byte) (n, off int, ok bool) {
	switch c := v[0]; {
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f), 1, true
	case c == 0xde:
		n, ok = bigEndian(v, 1, 2)
		return n, 3, ok
	case c == 0xdf:
		n, ok = bigEndian(v, 1, 4)
		return n, 5, ok
	}
	return 0, 0, false
}

// bigEndian reads a size-byte (1, 2 or 4) unsigned length at off.
func bigEndian(v []byte, off, size int) (int, bool) {
	if off+size > len(v) {
		return 0, false
	}
	switch size {
	case 1:
		return int(v[off]), true
	case 2:
		return int(binary.BigEndian.Uint16(v[off:])), true
	}
	return int(binary.BigEndian.Uint32(v[off:])), true
}

var errMsgpack = errors.New("malformed msgpack")

// skipMsgpack returns where the msgpack value at off ends, checking that it
// is whole and nested at most wire.MaxDepth deep.
func skipMsgpack(v []byte, off, depth int) (int, error) {
	if off >= len(v) || depth > wire.MaxDepth {
		return 0, errMsgpack
	}
	c := v[off]
	off++
	// data: bytes that follow the header; items: nested values that follow.
	data, items := 0, 0
	length := func(size int) bool {
		n, ok := bigEndian(v, off, size)
		off += size
		data = n
		return ok
	}
	ok := true
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
	case c >= 0x80 && c <= 0x8f:
		items = 2 * int(c&0x0f)
	case c >= 0x90 && c <= 0x9f:
		items = int(c & 0x0f)
	case c >= 0xa0 && c <= 0xbf:
		data = int(c & 0x1f)
	case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
		ok = length(1 << (c - 0xc4))
	case c >= 0xc7 && c <= 0xc9: // ext 8/16/32: length, type, data
		ok = length(1 << (c - 0xc7))
		data++
	case c == 0xca:
		data = 4
	case c == 0xcb:
		data = 8
	case c >= 0xcc && c <= 0xcf: // uint 8/16/32/64
		data = 1 << (c - 0xcc)
	case c >= 0xd0 && c <= 0xd3: // int 8/16/32/64
		data = 1 << (c - 0xd0)
	case c >= 0xd4 && c <= 0xd8: // fixext 1/2/4/8/16: type, data
		data = 1 + 1<<(c-0xd4)
	case c >= 0xd9 && c <= 0xdb: // str 8/16/32
		ok = length(1 << (c - 0xd9))
	case c == 0xdc || c == 0xdd: // array 16/32
		ok = length(2 << (c - 0xdc))
		items, data = data, 0
	case c == 0xde || c == 0xdf: // map 16/32
		ok = length(2 << (c - 0xde))
		items, data = 2*data, 0
	default: // 0xc1: never used
		ok = false
	}
	if !ok || data > len(v)-off || items > len(v)-off {
		return 0, errMsgpack
	}
	off += data
	for range items {
		var err error
		if off, err = skipMsgpack(v, off, depth+1); err != nil {
			return 0, err
		}
	}
	return off, nil
}

// appendMsgpackString appends s as a msgpack string.
func appendMsgpackString(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = append(b, 0xda)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0xdb)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, s...)
}
