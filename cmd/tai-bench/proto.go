package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Request frames are built from templates so that the send path is a copy
// and two patches, with no reflection and no allocation: each template is a
// whole frame encoded once by wire.Codec, with an id that the codec writes
// as a fixed-width uint64 and a state name of fixed width. Sending request n
// for key k copies the template and overwrites the id's 8 bytes and the
// name's digits in place. The bytes on the wire are exactly what wire.Codec
// would produce for the same request with that id, apart from the id's
// integer width, which msgpack leaves to the encoder.

const (
	// idBase is set in every request id so that the codec encodes ids as
	// 0xcf + 8 bytes (ids above MaxUint32 need the full width). Ids stay
	// below 1<<63 so that no decoder can mistake them for negative numbers.
	idBase = uint64(1) << 62
	// markerID is the id encoded into templates, found again by its bytes.
	markerID = idBase | 0x0123456789abcd
	// keyDigits is the number of decimal digits in a state name.
	keyDigits = 10
	// maxKeys is the largest keyspace that keyDigits digits can name.
	maxKeys = 10_000_000_000
)

// keyName returns the name of state i: "k" and keyDigits digits.
func keyName(i uint64) string {
	b := make([]byte, 1+keyDigits)
	b[0] = 'k'
	putDigits(b[1:], i)
	return string(b)
}

// putDigits writes i as len(dst) decimal digits, zero-padded.
func putDigits(dst []byte, i uint64) {
	for j := len(dst) - 1; j >= 0; j-- {
		dst[j] = byte('0' + i%10)
		i /= 10
	}
}

// template is one op's request frame with the offsets of its id and of the
// state name's digits (keyOff < 0 when the op names no state).
type template struct {
	frame  []byte
	idOff  int
	keyOff int
}

// appendTo appends the request with this id for state key to dst.
func (t *template) appendTo(dst []byte, id, key uint64) []byte {
	off := len(dst)
	dst = append(dst, t.frame...)
	binary.BigEndian.PutUint64(dst[off+t.idOff:], id)
	if t.keyOff >= 0 {
		putDigits(dst[off+t.keyOff:off+t.keyOff+keyDigits], key)
	}
	return dst
}

// buildTemplate encodes the request for op with codec and locates its
// patchable fields.
func buildTemplate(c *wire.Codec, op opKind, governor string, value wire.Raw) (template, error) {
	req := wire.Request{ID: markerID, Op: op.String()}
	if op != opPing {
		req.Governor = governor
		req.State = keyName(0)
	}
	if op == opPut {
		req.Value = value
	}
	frame, err := c.AppendFrame(nil, &req)
	if err != nil {
		return template{}, fmt.Errorf("encode %s request: %w", op, err)
	}
	var idPat []byte
	idPat = append(idPat, 0xa2, 'i', 'd', 0xcf)
	idPat = binary.BigEndian.AppendUint64(idPat, markerID)
	t := template{frame: frame, keyOff: -1}
	i := bytes.Index(frame, idPat)
	if i < 0 {
		return template{}, fmt.Errorf("%s request: id not encoded as a fixed-width uint64", op)
	}
	t.idOff = i + 4
	if op != opPing {
		var keyPat []byte
		keyPat = append(keyPat, 0xa5, 's', 't', 'a', 't', 'e', 0xa0|byte(1+keyDigits))
		keyPat = append(keyPat, keyName(0)...)
		j := bytes.Index(frame, keyPat)
		if j < 0 {
			return template{}, fmt.Errorf("%s request: state name not found in the encoding", op)
		}
		t.keyOff = j + len(keyPat) - keyDigits
	}
	return t, nil
}

// makeValue returns a msgpack bin document of exactly size bytes (size >= 2)
// filled with pseudo-random bytes from seed.
func makeValue(size int, seed uint64) wire.Raw {
	v := make([]byte, 0, size+8)
	switch n := size - 2; {
	case n < 1<<8:
		v = append(v, 0xc4, byte(n))
	case size-3 < 1<<16:
		v = append(v, 0xc5)
		v = binary.BigEndian.AppendUint16(v, uint16(size-3))
	default:
		v = append(v, 0xc6)
		v = binary.BigEndian.AppendUint32(v, uint32(size-5))
	}
	r := rand.NewPCG(seed, 0x7a1)
	for len(v) < size {
		v = binary.LittleEndian.AppendUint64(v, r.Uint64())
	}
	return v[:size:size]
}

// reply is the part of a response the load generator looks at.
type reply struct {
	ID    uint64      `codec:"id"`
	Error *wire.Error `codec:"error,omitempty"`
}

// errBadReply is returned for a reply that is not a msgpack map with an id.
var errBadReply = errors.New("malformed reply")

// peekReply reads a reply's id and whether it carries an error, without
// decoding it, when the reply starts the way wire.Codec writes a Response: a
// fixmap whose first key is "id" with an unsigned value. ok is false when the
// reply has another shape; decode it in full then.
func peekReply(b []byte) (id uint64, hasErr, ok bool) {
	if len(b) < 5 || b[0]&0xf0 != 0x80 || b[1] != 0xa2 || b[2] != 'i' || b[3] != 'd' {
		return 0, false, false
	}
	n := int(b[0] & 0x0f)
	if n == 0 {
		return 0, false, false // an empty map: the bytes after it are not its keys
	}
	p := 5
	switch t := b[4]; {
	case t < 0x80:
		id = uint64(t)
	case t == 0xcc && len(b) >= 6:
		id, p = uint64(b[5]), 6
	case t == 0xcd && len(b) >= 7:
		id, p = uint64(binary.BigEndian.Uint16(b[5:])), 7
	case t == 0xce && len(b) >= 9:
		id, p = uint64(binary.BigEndian.Uint32(b[5:])), 9
	case t == 0xcf && len(b) >= 13:
		id, p = binary.BigEndian.Uint64(b[5:]), 13
	default:
		return 0, false, false
	}
	if n == 1 {
		return id, false, true
	}
	rest := b[p:]
	// A second "id" key would win over the first in a full decode; in any
	// string encoding its bytes show as they are. The same holds for an
	// "error" key. A match inside a value only costs a full decode.
	if bytes.Contains(rest, []byte("id")) {
		return 0, false, false
	}
	return id, bytes.Contains(rest, []byte("error")), true
}

// decodeReply returns the id and error of a reply, on the fast path when it
// can, through the codec otherwise.
func decodeReply(c *wire.Codec, b []byte, r *reply) error {
	id, hasErr, ok := peekReply(b)
	if ok && !hasErr {
		r.ID, r.Error = id, nil
		return nil
	}
	r.ID, r.Error = 0, nil
	if err := c.Decode(b, r); err != nil {
		return fmt.Errorf("%w: %v", errBadReply, err)
	}
	return nil
}
