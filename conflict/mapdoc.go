package conflict

import (
	"bytes"
	"encoding/binary"
	"slices"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// maxDepth is the deepest nesting accepted inside a field value (the wire
// protocol's limit, sockapi/wire.MaxDepth).
const maxDepth = 64

// newHandle returns the msgpack settings of the wire protocol
// (sockapi/wire.NewHandle), which app values were accepted with.
func newHandle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true
	h.Raw = true
	h.MaxDepth = maxDepth
	h.MaxInitLen = 1024
	h.SignedInteger = true
	return h
}

// doc is a msgpack map with string keys, field by field: each field's
// value is kept as its encoded bytes, verbatim.
type doc map[string][]byte

// decodeDoc splits b, a msgpack map whose keys are strings, into its fields.
// Anything else (another type, other keys, a repeated key, trailing bytes,
// a malformed document) is ErrNotMergeable.
func decodeDoc(b []byte) (doc, error) {
	if len(b) == 0 {
		return nil, errorf(ErrNotMergeable, "empty value")
	}
	var n, hdr int
	switch t := b[0]; {
	case t >= 0x80 && t <= 0x8f:
		n, hdr = int(t&0x0f), 1
	case t == 0xde && len(b) >= 3:
		n, hdr = int(binary.BigEndian.Uint16(b[1:])), 3
	case t == 0xdf && len(b) >= 5:
		n, hdr = int(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return nil, errorf(ErrNotMergeable, "not a map")
	}
	rest := b[hdr:]
	if n > len(rest)/2 { // every key and value takes at least one byte
		return nil, errorf(ErrNotMergeable, "map of %d fields in %d bytes", n, len(rest))
	}
	d := make(doc, n)
	dec := codec.NewDecoderBytes(rest, newHandle())
	for range n {
		var k, v codec.Raw
		if err := dec.Decode(&k); err != nil {
			return nil, errorf(ErrNotMergeable, "field name: %v", err)
		}
		name, ok := decodeStr(k)
		if !ok {
			return nil, errorf(ErrNotMergeable, "a field name is not a string")
		}
		if err := dec.Decode(&v); err != nil {
			return nil, errorf(ErrNotMergeable, "field %q: %v", name, err)
		}
		if len(v) == 0 {
			// The decoder hands back a nil value as an empty Raw.
			v = codec.Raw{0xc0}
		}
		if _, dup := d[name]; dup {
			return nil, errorf(ErrNotMergeable, "field %q appears twice", name)
		}
		d[name] = v
	}
	if dec.NumBytesRead() != len(rest) {
		return nil, errorf(ErrNotMergeable, "%d bytes after the map", len(rest)-dec.NumBytesRead())
	}
	return d, nil
}

// decodeStr returns the string that k, one encoded msgpack value, holds.
func decodeStr(k []byte) (string, bool) {
	if len(k) == 0 {
		return "", false
	}
	var n, hdr int
	switch t := k[0]; {
	case t >= 0xa0 && t <= 0xbf:
		n, hdr = int(t&0x1f), 1
	case t == 0xd9 && len(k) >= 2:
		n, hdr = int(k[1]), 2
	case t == 0xda && len(k) >= 3:
		n, hdr = int(binary.BigEndian.Uint16(k[1:])), 3
	case t == 0xdb && len(k) >= 5:
		n, hdr = int(binary.BigEndian.Uint32(k[1:])), 5
	default:
		return "", false
	}
	if len(k) != hdr+n {
		return "", false
	}
	return string(k[hdr:]), true
}

// encode returns d as a msgpack map in canonical form: fields sorted by
// name (bytewise), names as msgpack str in their shortest form, values
// verbatim. Equal docs encode to equal bytes.
func (d doc) encode() []byte {
	names := make([]string, 0, len(d))
	size := 5
	for name, v := range d {
		names = append(names, name)
		size += 5 + len(name) + len(v)
	}
	slices.Sort(names)
	out := make([]byte, 0, size)
	switch n := len(names); {
	case n < 16:
		out = append(out, 0x80|byte(n))
	case n < 1<<16:
		out = append(out, 0xde)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, 0xdf)
		out = binary.BigEndian.AppendUint32(out, uint32(n))
	}
	for _, name := range names {
		switch n := len(name); {
		case n < 32:
			out = append(out, 0xa0|byte(n))
		case n < 1<<8:
			out = append(out, 0xd9, byte(n))
		case n < 1<<16:
			out = append(out, 0xda)
			out = binary.BigEndian.AppendUint16(out, uint16(n))
		default:
			out = append(out, 0xdb)
			out = binary.BigEndian.AppendUint32(out, uint32(n))
		}
		out = append(out, name...)
		out = append(out, d[name]...)
	}
	return out
}

// equal reports whether d and o have the same fields with the same bytes.
func (d doc) equal(o doc) bool {
	if len(d) != len(o) {
		return false
	}
	for name, v := range d {
		w, ok := o[name]
		if !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// fieldEqual reports whether a field is the same in two docs: absent from
// both, or present in both with the same bytes.
func fieldEqual(a, b doc, name string) bool {
	x, okx := a[name]
	y, oky := b[name]
	return okx == oky && bytes.Equal(x, y)
}
