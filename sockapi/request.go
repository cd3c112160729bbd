package sockapi

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// This file decodes request bodies: one pass over the msgpack that checks
// the shape of a request and fills a wire.Request, without reflection.
//
// The wire codec alone is too lenient for a protocol (it decodes an array
// positionally into a struct, turns 1 into true, bin into a string, and
// ignores bytes after the first object), too vague in its errors (no field
// names), and slow. The rules, explicit here:
//
//   - the body is exactly one msgpack map, with nothing after it;
//   - its keys are strings; unknown keys are skipped whatever their value
//     (duplicate keys: the last one wins);
//   - each known field has one msgpack type, and nil means "absent" (the
//     zero value): id, if_version, max_staleness_ms, timeout_ms, watch,
//     after, version, token, lease_ms, wait_ms, max_age_ms, keep_events,
//     deadline_ms, conflict_id: non-negative integer;
//     from, to, at: non-negative
//     integer at most math.MaxInt64 (Unix ns); limit: integer
//     (int64); versions: array of at most 64 uint32; keys, items, ops:
//     arrays of maps (not nil); exists (in ops): boolean; fence: a map of resource (str) and token
//     (non-negative integer), other keys skipped;
//     if_absent, delete, bind, dry_run, latest, deleted: boolean; value: any single msgpack
//     object, kept verbatim; every other known field: str (bin is not
//     accepted for strings);
//   - keys and items hold at most Options.MaxBatch entries, ops at most
//     wire.MaxTxnOps (TooLarge otherwise);
//   - maps and arrays nest fewer than wire.MaxDepth levels, counting the
//     request map as level 1 (the codec's own rule), and at most
//     Options.MaxValueDepth levels inside a value.
//
// Whatever this accepts, the wire codec decodes to the same wire.Request
// (FuzzParseRequest checks it), so wire stays the definition of the
// messages. On a violation the scan goes on through the top-level map
// (without interpreting values) to find the id, so the error reply can
// carry it.

// Scanning errors that are not about one field.
var (
	errTruncated   = errors.New("truncated msgpack data")
	errInvalidByte = errors.New("invalid msgpack byte 0xc1")
	errTimestamp   = errors.New("invalid msgpack timestamp: extension type -1 must hold 4, 8 or 12 bytes")
	errTooDeep     = fmt.Errorf("maps and arrays nested %d levels deep or more", wire.MaxDepth)
	errValueDeep   = errors.New("the value nests maps and arrays too deep")
)

// MaxValueDepthLimit is the most Options.MaxValueDepth allows: how deep maps
// and arrays may nest inside an app value (a scalar is depth 0, [1] depth
// 1). Replies carry values deeper than requests do: a list or batch_get
// reply puts each value under the reply map, the records array and the
// record map. So that every reply stays under the codec's limit (levels
// below wire.MaxDepth), a value may use wire.MaxDepth-4 levels, in a put as
// in a batch_put item.
const MaxValueDepthLimit = wire.MaxDepth - 4

// limits are the configurable limits a request body is checked against:
// Options.MaxBatch and Options.MaxValueDepth.
type limits struct {
	batch      int
	valueDepth int
}

// mtype is the type of a msgpack object, as the pre-check classifies it.
type mtype uint8

const (
	tNil mtype = iota
	tBool
	tUint // a non-negative integer, whatever its encoding
	tNeg  // a negative integer
	tFloat
	tStr
	tBin
	tArray
	tMap
	tExt
)

var mtypeNames = [...]string{
	tNil: "nil", tBool: "boolean", tUint: "integer", tNeg: "negative integer",
	tFloat: "float", tStr: "string", tBin: "binary", tArray: "array", tMap: "map", tExt: "extension",
}

func (t mtype) String() string { return mtypeNames[t] }

// scanner reads msgpack headers from b.
type scanner struct {
	b   []byte
	off int
	lim limits
}

// avail reports whether n more bytes are available.
func (s *scanner) avail(n uint64) bool { return uint64(len(s.b)-s.off) >= n }

func (s *scanner) uintN(n int) (uint64, error) {
	if !s.avail(uint64(n)) {
		return 0, errTruncated
	}
	var v uint64
	for _, c := range s.b[s.off : s.off+n] {
		v = v<<8 | uint64(c)
	}
	s.off += n
	return v, nil
}

// ext consumes an extension's type byte and its n payload bytes. The one
// type the msgpack spec defines, -1 (timestamp), must have a valid length:
// decoders refuse others, so a value holding one could be stored but never
// read back.
func (s *scanner) ext(n uint64) error {
	if !s.avail(1) {
		return errTruncated
	}
	if int8(s.b[s.off]) == -1 && n != 4 && n != 8 && n != 12 {
		return errTimestamp
	}
	return s.skipBytes(n + 1)
}

// skipBytes consumes n payload bytes.
func (s *scanner) skipBytes(n uint64) error {
	if !s.avail(n) {
		return errTruncated
	}
	s.off += int(n)
	return nil
}

// head reads the next object's header and, for scalars, strings, binaries
// and extensions, its payload. It returns the type and:
//   - tUint: the value in u; tNeg: the value in int64(u); tBool: 0 or 1 in u;
//   - tStr, tBin, tExt: the payload length in n (payload ends at s.off);
//   - tArray: the element count in n; tMap: the entry count in n.
func (s *scanner) head() (t mtype, n, u uint64, err error) {
	if !s.avail(1) {
		return 0, 0, 0, errTruncated
	}
	c := s.b[s.off]
	s.off++
	switch {
	case c <= 0x7f:
		return tUint, 0, uint64(c), nil
	case c <= 0x8f:
		return tMap, uint64(c & 0x0f), 0, nil
	case c <= 0x9f:
		return tArray, uint64(c & 0x0f), 0, nil
	case c <= 0xbf:
		n = uint64(c & 0x1f)
		return tStr, n, 0, s.skipBytes(n)
	case c >= 0xe0:
		return tNeg, 0, uint64(int64(int8(c))), nil
	}
	switch c {
	case 0xc0:
		return tNil, 0, 0, nil
	case 0xc1:
		return 0, 0, 0, errInvalidByte
	case 0xc2:
		return tBool, 0, 0, nil
	case 0xc3:
		return tBool, 0, 1, nil
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		if n, err = s.uintN(1 << (c - 0xc4)); err != nil {
			return 0, 0, 0, err
		}
		return tBin, n, 0, s.skipBytes(n)
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32: length, then a type byte
		if n, err = s.uintN(1 << (c - 0xc7)); err != nil {
			return 0, 0, 0, err
		}
		return tExt, n, 0, s.ext(n)
	case 0xca:
		return tFloat, 0, 0, s.skipBytes(4)
	case 0xcb:
		return tFloat, 0, 0, s.skipBytes(8)
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		u, err = s.uintN(1 << (c - 0xcc))
		return tUint, 0, u, err
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		size := 1 << (c - 0xd0)
		if u, err = s.uintN(size); err != nil {
			return 0, 0, 0, err
		}
		// Sign-extend from size bytes.
		shift := uint(64 - 8*size)
		v := int64(u<<shift) >> shift
		if v < 0 {
			return tNeg, 0, uint64(v), nil
		}
		return tUint, 0, uint64(v), nil
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16: type byte, payload
		n = 1 << (c - 0xd4)
		return tExt, n, 0, s.ext(n)
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		if n, err = s.uintN(1 << (c - 0xd9)); err != nil {
			return 0, 0, 0, err
		}
		return tStr, n, 0, s.skipBytes(n)
	case 0xdc, 0xdd: // array 16/32
		n, err = s.uintN(2 << (c - 0xdc))
		return tArray, n, 0, err
	default: // 0xde, 0xdf: map 16/32
		n, err = s.uintN(2 << (c - 0xde))
		return tMap, n, 0, err
	}
}

// skip skips one object whose enclosing container is at nesting level
// level, enforcing the depth limit. It is iterative: a stack of remaining
// counts, one per open container, bounded by wire.MaxDepth.
func (s *scanner) skip(level int) error {
	var stack [wire.MaxDepth]uint64
	depth := 0 // open containers below level
	remaining := uint64(1)
	for {
		for remaining == 0 {
			if depth == 0 {
				return nil
			}
			depth--
			remaining = stack[depth]
		}
		remaining--
		t, n, _, err := s.head()
		if err != nil {
			return err
		}
		if t != tMap && t != tArray {
			continue
		}
		if level+depth+1 >= wire.MaxDepth {
			return errTooDeep
		}
		if t == tMap {
			n *= 2 // n < 2^32: no overflow
		}
		stack[depth] = remaining
		depth++
		remaining = n
	}
}

// skipLoose skips one object without a depth limit. It needs no stack: a
// container just adds its children to the count of objects left to skip.
// It is only used to look for the id after an error has been found.
func (s *scanner) skipLoose() error {
	remaining := uint64(1)
	for remaining > 0 {
		remaining--
		t, n, _, err := s.head()
		if err != nil {
			return err
		}
		switch t {
		case tMap:
			remaining += 2 * n
		case tArray:
			remaining += n
		}
	}
	return nil
}

// maxVersions caps the hello versions list.
const maxVersions = 64

// fieldError is a request field that has the wrong type or range.
type fieldError struct {
	field string
	msg   string
	// limit is set for a TooLarge error (a batch over Options.MaxBatch).
	limit int64
}

func typeError(field string, want string, got mtype) *fieldError {
	return &fieldError{field: field, msg: fmt.Sprintf("%s must be %s, not %s", field, want, got)}
}

// parseRequest checks a request body against l and decodes it into req
// (reset first), in one pass. It returns the request id (0 when there is
// none or it cannot be read) and, when the body breaks a rule, the error to
// reply with; req is then meaningless. A request it accepts decodes with the
// wire codec to the same wire.Request (FuzzParseRequest checks it).
func (l limits) parseRequest(b []byte, req *wire.Request) (id uint64, werr *wire.Error) {
	*req = wire.Request{}
	s := scanner{b: b, lim: l}
	t, n, _, err := s.head()
	if err != nil {
		return 0, invalid("", "request body is not valid msgpack: %v", err)
	}
	if t != tMap {
		return 0, invalid("", "request body must be a msgpack map, not %s", t)
	}
	var ferr *fieldError
	for i := uint64(0); i < n; i++ {
		kt, kn, _, err := s.head()
		if err != nil {
			return id, bodyError(ferr, err)
		}
		if kt != tStr {
			if ferr == nil {
				ferr = &fieldError{msg: fmt.Sprintf("request map keys must be strings, not %s", kt)}
			}
			if err := s.skipLoose(); err != nil {
				return id, bodyError(ferr, err)
			}
			continue
		}
		key := s.b[s.off-int(kn) : s.off]
		if ferr != nil {
			// An error is already known: only look for the id.
			if string(key) == "id" {
				start := s.off
				if t, _, u, err := s.head(); err == nil && t == tUint {
					id = u
					continue
				}
				s.off = start
			}
			if err := s.skipLoose(); err != nil {
				return id, bodyError(ferr, err)
			}
			continue
		}
		start := s.off
		fe, err := s.decodeTopField(key, req)
		id = req.ID
		if err != nil {
			if err == errTooDeep {
				fe = &fieldError{field: string(key), msg: fmt.Sprintf("%s: %v", key, err)}
			} else {
				return id, bodyError(nil, err)
			}
		}
		if fe != nil {
			ferr = fe
			// Skip the offending value whole and look on for the id.
			s.off = start
			if err := s.skipLoose(); err != nil {
				return id, bodyError(ferr, err)
			}
		}
	}
	if ferr != nil {
		return id, ferr.wire()
	}
	if s.off != len(b) {
		return id, invalid("", "request body has %d bytes after the request map", len(b)-s.off)
	}
	return id, nil
}

// bodyError is the reply for a body that stopped being valid msgpack, or
// the field error found before that point.
func bodyError(fe *fieldError, err error) *wire.Error {
	if fe != nil {
		return fe.wire()
	}
	return invalid("", "request body is not valid msgpack: %v", err)
}

func (fe *fieldError) wire() *wire.Error {
	if fe.limit != 0 {
		e := wire.Errorf(wire.CodeTooLarge, "%s", fe.msg)
		e.Field, e.Limit = fe.field, fe.limit
		return e
	}
	return invalid(fe.field, "%s", fe.msg)
}

// decodeTopField decodes the value of top-level field key, which starts at
// s.off, into req. A structural error (truncated, invalid byte, too deep)
// comes back as err; a wrong type or range as a fieldError. msgpack nil
// sets the zero value, as the codec does.
func (s *scanner) decodeTopField(key []byte, req *wire.Request) (*fieldError, error) {
	var fe *fieldError
	var err error
	switch string(key) { // no allocation: the compiler compares in place
	case "id":
		fe, err = s.uintField("id", &req.ID)
	case "op":
		var p []byte
		if p, fe, err = s.str("op"); fe == nil && err == nil {
			req.Op = opString(p) // "" for nil
		}
	case "client":
		fe, err = s.strField("client", &req.Client)
	case "governor":
		fe, err = s.strField("governor", &req.Governor)
	case "state":
		fe, err = s.strField("state", &req.State)
	case "actor":
		fe, err = s.strField("actor", &req.Actor)
	case "reason":
		fe, err = s.strField("reason", &req.Reason)
	case "consistency":
		fe, err = s.strField("consistency", &req.Consistency)
	case "prefix":
		fe, err = s.strField("prefix", &req.Prefix)
	case "cursor":
		fe, err = s.strField("cursor", &req.Cursor)
	case "action":
		fe, err = s.strField("action", &req.Action)
	case "from":
		fe, err = s.nanosField("from", &req.From)
	case "to":
		fe, err = s.nanosField("to", &req.To)
	case "at":
		fe, err = s.nanosField("at", &req.At)
	case "version":
		fe, err = s.uintField("version", &req.Version)
	case "traceparent":
		fe, err = s.strField("traceparent", &req.Traceparent)
	case "if_version":
		fe, err = s.uintPtrField("if_version", &req.IfVersion)
	case "max_staleness_ms":
		fe, err = s.uintField("max_staleness_ms", &req.MaxStalenessMS)
	case "timeout_ms":
		fe, err = s.uintField("timeout_ms", &req.TimeoutMS)
	case "watch":
		fe, err = s.uintField("watch", &req.Watch)
	case "after":
		fe, err = s.uintField("after", &req.After)
	case "if_absent":
		fe, err = s.boolField("if_absent", &req.IfAbsent)
	case "fence":
		fe, err = s.decodeFence(req) // fence.go
	case "resource":
		fe, err = s.strField("resource", &req.Resource)
	case "token":
		fe, err = s.uintField("token", &req.Token)
	case "lease_ms":
		fe, err = s.uintField("lease_ms", &req.LeaseMS)
	case "wait_ms":
		fe, err = s.uintField("wait_ms", &req.WaitMS)
	case "bind":
		fe, err = s.boolField("bind", &req.Bind)
	case "from_state":
		fe, err = s.strField("from_state", &req.FromState)
	case "to_state":
		fe, err = s.strField("to_state", &req.ToState)
	case "max_age_ms":
		fe, err = s.uintField("max_age_ms", &req.MaxAgeMS)
	case "keep_events":
		fe, err = s.uintField("keep_events", &req.KeepEvents)
	case "dry_run":
		fe, err = s.boolField("dry_run", &req.DryRun)
	case "latest":
		fe, err = s.boolField("latest", &req.Latest)
	case "deadline_ms":
		fe, err = s.uintField("deadline_ms", &req.DeadlineMS) // resolver.go
	case "conflict_id":
		fe, err = s.uintField("conflict_id", &req.ConflictID)
	case "choice":
		fe, err = s.strField("choice", &req.Choice)
	case "deleted":
		fe, err = s.boolField("deleted", &req.Deleted)
	case "limit":
		var t mtype
		var u uint64
		if t, _, u, err = s.head(); err != nil {
			break
		}
		switch {
		case t == tNil:
			req.Limit = 0
		case t == tNeg:
			req.Limit = int(int64(u))
		case t != tUint:
			fe = typeError("limit", "an integer", t)
		case u > math.MaxInt64:
			fe = &fieldError{field: "limit", msg: "limit is out of range"}
		default:
			req.Limit = int(u)
		}
	case "value":
		fe, err = s.valueField(&req.Value)
	case "versions":
		fe, err = s.decodeVersions(req)
	case "keys":
		fe, err = s.decodeKeys(req)
	case "items":
		fe, err = s.decodeItems(req)
	case "ops":
		fe, err = s.decodeOps(req) // txn_request.go
	case "outcome":
		fe, err = s.strField("outcome", &req.Outcome)
	default:
		err = s.skip(1)
	}
	return fe, err
}

// opString returns op, without allocating for the known ops.
func opString(p []byte) string {
	switch string(p) {
	case wire.OpHello:
		return wire.OpHello
	case wire.OpPing:
		return wire.OpPing
	case wire.OpGet:
		return wire.OpGet
	case wire.OpPut:
		return wire.OpPut
	case wire.OpDelete:
		return wire.OpDelete
	case wire.OpBatchGet:
		return wire.OpBatchGet
	case wire.OpBatchPut:
		return wire.OpBatchPut
	case wire.OpList:
		return wire.OpList
	case wire.OpStats:
		return wire.OpStats
	case wire.OpWatch:
		return wire.OpWatch
	case wire.OpUnwatch:
		return wire.OpUnwatch
	case wire.OpPending:
		return wire.OpPending
	case wire.OpFailed:
		return wire.OpFailed
	case wire.OpFlush:
		return wire.OpFlush
	case wire.OpEvents:
		return wire.OpEvents
	case wire.OpStateAt:
		return wire.OpStateAt
	case wire.OpValidate:
		return wire.OpValidate
	case wire.OpLockAcquire:
		return wire.OpLockAcquire
	case wire.OpLockRelease:
		return wire.OpLockRelease
	case wire.OpLockExtend:
		return wire.OpLockExtend
	case wire.OpLockStatus:
		return wire.OpLockStatus
	case wire.OpConflicts:
		return wire.OpConflicts
	case wire.OpSnapshot:
		return wire.OpSnapshot
	case wire.OpTransition:
		return wire.OpTransition
	case wire.OpCleanup:
		return wire.OpCleanup
	case wire.OpReplay:
		return wire.OpReplay
	case wire.OpTxn:
		return wire.OpTxn
	case wire.OpTxLog:
		return wire.OpTxLog
	}
	return string(p)
}

// str reads a string or nil. p is the string's bytes (empty, not nil, for
// ""), nil for msgpack nil.
func (s *scanner) str(field string) (p []byte, fe *fieldError, err error) {
	t, n, _, err := s.head()
	switch {
	case err != nil || t == tNil:
		return nil, nil, err
	case t != tStr:
		return nil, typeError(field, "a string", t), nil
	}
	return s.b[s.off-int(n) : s.off : s.off], nil, nil
}

func (s *scanner) strField(field string, dst *string) (*fieldError, error) {
	p, fe, err := s.str(field)
	if fe == nil && err == nil {
		*dst = string(p) // "" for nil
	}
	return fe, err
}

func (s *scanner) uintField(field string, dst *uint64) (*fieldError, error) {
	t, _, u, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		*dst = 0
	case t == tUint:
		*dst = u
	default:
		return typeError(field, "a non-negative integer", t), nil
	}
	return nil, nil
}

// nanosField reads a time in Unix nanoseconds: a non-negative integer that
// fits an int64, or nil (0).
func (s *scanner) nanosField(field string, dst *int64) (*fieldError, error) {
	t, _, u, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		*dst = 0
	case t != tUint:
		return typeError(field, "a non-negative integer (Unix ns)", t), nil
	case u > math.MaxInt64:
		return &fieldError{field: field, msg: field + " is out of range"}, nil
	default:
		*dst = int64(u)
	}
	return nil, nil
}

func (s *scanner) uintPtrField(field string, dst **uint64) (*fieldError, error) {
	t, _, u, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		*dst = nil
	case t == tUint:
		*dst = &u
	default:
		return typeError(field, "a non-negative integer", t), nil
	}
	return nil, nil
}

func (s *scanner) boolField(field string, dst *bool) (*fieldError, error) {
	t, _, u, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		*dst = false
	case t == tBool:
		*dst = u == 1
	default:
		return typeError(field, "a boolean", t), nil
	}
	return nil, nil
}

// rawField copies one object, of any type, into dst (nil for msgpack
// nil). The object may nest at most s.lim.valueDepth levels (errValueDeep).
func (s *scanner) rawField(dst *wire.Raw) error {
	start := s.off
	// skip(level) allows wire.MaxDepth-1-level levels below level.
	if err := s.skip(wire.MaxDepth - 1 - s.lim.valueDepth); err != nil {
		if err == errTooDeep {
			err = errValueDeep
		}
		return err
	}
	if s.b[start] == 0xc0 {
		*dst = nil
	} else {
		*dst = bytes.Clone(s.b[start:s.off])
	}
	return nil
}

// valueField decodes an app value; a value nested too deep is a field
// error.
func (s *scanner) valueField(dst *wire.Raw) (*fieldError, error) {
	err := s.rawField(dst)
	if err == errValueDeep {
		return &fieldError{field: "value", msg: fmt.Sprintf("value nests maps and arrays more than %d levels deep (the limit)",
			s.lim.valueDepth)}, nil
	}
	return nil, err
}

func (s *scanner) decodeVersions(req *wire.Request) (*fieldError, error) {
	t, n, _, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		req.Versions = nil
		return nil, nil
	case t != tArray:
		return typeError("versions", "an array", t), nil
	case n > maxVersions:
		return &fieldError{field: "versions", msg: fmt.Sprintf("versions lists %d versions, limit %d", n, maxVersions)}, nil
	}
	vs := make([]uint32, n)
	for i := range vs {
		t, _, u, err := s.head()
		if err != nil {
			return nil, err
		}
		if t != tUint {
			return typeError(fmt.Sprintf("versions[%d]", i), "a uint32", t), nil
		}
		if u > math.MaxUint32 {
			return &fieldError{field: "versions", msg: fmt.Sprintf("versions[%d] is out of range", i)}, nil
		}
		vs[i] = uint32(u)
	}
	req.Versions = vs
	return nil, nil
}

// listHead reads the header of keys, items or ops: an array of at most
// s.lim.batch entries (ops: wire.MaxTxnOps), or nil (n < 0).
func (s *scanner) listHead(field string) (n int, fe *fieldError, err error) {
	limit := s.lim.batch
	if field == "ops" {
		limit = wire.MaxTxnOps
	}
	t, u, _, err := s.head()
	switch {
	case err != nil:
		return 0, nil, err
	case t == tNil:
		return -1, nil, nil
	case t != tArray:
		return 0, typeError(field, "an array", t), nil
	case u > uint64(limit):
		return 0, &fieldError{field: field, limit: int64(limit),
			msg: fmt.Sprintf("%s has %d entries, limit %d", field, u, limit)}, nil
	}
	return int(u), nil, nil
}

// entryHead reads the header of entry i of a keys or items list: a map
// (nil is not accepted), whose key count it returns.
func (s *scanner) entryHead(field string, i int) (uint64, *fieldError, error) {
	t, m, _, err := s.head()
	if err != nil {
		return 0, nil, err
	}
	if t != tMap {
		return 0, typeError(fmt.Sprintf("%s[%d]", field, i), "a map", t), nil
	}
	return m, nil, nil
}

// entryKey reads a map key of entry i of a keys or items list.
func (s *scanner) entryKey(field string, i int) ([]byte, *fieldError, error) {
	kt, kn, _, err := s.head()
	if err != nil {
		return nil, nil, err
	}
	if kt != tStr {
		return nil, &fieldError{field: fmt.Sprintf("%s[%d]", field, i),
			msg: fmt.Sprintf("%s[%d]: map keys must be strings, not %s", field, i, kt)}, nil
	}
	return s.b[s.off-int(kn) : s.off], nil, nil
}

// inEntry prefixes a field error found inside entry i of a list.
func inEntry(fe *fieldError, field string, i int) *fieldError {
	if fe != nil {
		fe.field = fmt.Sprintf("%s[%d].%s", field, i, fe.field)
		fe.msg = fmt.Sprintf("%s[%d].%s", field, i, fe.msg)
	}
	return fe
}

// entryLevel is the nesting level of the maps in keys and items.
const entryLevel = 3

// decodeList decodes field, an array of maps, into a new []T. (Entry fields
// are decoded by a direct call, not a func value: passing the scanner to an
// indirect call would move it to the heap on every request.)
func decodeList[T wire.Key | wire.Item | wire.TxnOp](s *scanner, field string) ([]T, *fieldError, error) {
	n, fe, err := s.listHead(field)
	if fe != nil || err != nil || n < 0 {
		return nil, fe, err
	}
	list := make([]T, n)
	for i := range list {
		m, fe, err := s.entryHead(field, i)
		if fe != nil || err != nil {
			return nil, fe, err
		}
		for range m {
			key, fe, err := s.entryKey(field, i)
			if fe != nil || err != nil {
				return nil, fe, err
			}
			if fe, err := decodeEntryField(s, string(key), &list[i]); fe != nil || err != nil {
				return nil, inEntry(fe, field, i), err
			}
		}
	}
	return list, nil, nil
}

// decodeEntryField decodes the field named key of a keys or items entry,
// skipping fields it does not know.
func decodeEntryField[T wire.Key | wire.Item | wire.TxnOp](s *scanner, key string, e *T) (*fieldError, error) {
	switch e := any(e).(type) {
	case *wire.Key:
		switch key {
		case "governor":
			return s.strField("governor", &e.Governor)
		case "state":
			return s.strField("state", &e.State)
		}
	case *wire.Item:
		switch key {
		case "governor":
			return s.strField("governor", &e.Governor)
		case "state":
			return s.strField("state", &e.State)
		case "value":
			return s.valueField(&e.Value)
		case "delete":
			return s.boolField("delete", &e.Delete)
		case "if_version":
			return s.uintPtrField("if_version", &e.IfVersion)
		case "if_absent":
			return s.boolField("if_absent", &e.IfAbsent)
		}
	case *wire.TxnOp:
		if known, fe, err := s.txnOpField(key, e); known { // txn_request.go
			return fe, err
		}
	}
	return nil, s.skip(entryLevel)
}

func (s *scanner) decodeKeys(req *wire.Request) (fe *fieldError, err error) {
	req.Keys, fe, err = decodeList[wire.Key](s, "keys")
	return fe, err
}

func (s *scanner) decodeItems(req *wire.Request) (fe *fieldError, err error) {
	req.Items, fe, err = decodeList[wire.Item](s, "items")
	return fe, err
}
