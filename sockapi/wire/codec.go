package wire

import (
	"github.com/hashicorp/go-msgpack/v2/codec"
)

// MaxDepth is the deepest nesting of maps and arrays accepted in a message,
// values included. Deeper documents are rejected with InvalidArgument.
const MaxDepth = 64

// Raw is an encoded msgpack object carried as-is: app values travel and are
// stored in this form, so the sidecar never reinterprets them.
type Raw = codec.Raw

// NewHandle returns the msgpack settings used on the wire. Every encoder and
// decoder of protocol messages must be built from it.
func NewHandle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true // str and bin are distinct types (msgpack spec 2013+)
	h.Raw = true      // Raw values are written verbatim
	h.MaxDepth = MaxDepth
	h.MaxInitLen = 1024 // never pre-allocate what a length prefix merely claims
	h.SignedInteger = true
	return h
}

// Codec encodes and decodes messages. It reuses its buffers, so it is not safe
// for concurrent use: keep one per connection direction.
type Codec struct {
	h   *codec.MsgpackHandle
	dec *codec.Decoder
	enc *codec.Encoder
	out []byte
}

// NewCodec returns a Codec using NewHandle's settings.
func NewCodec() *Codec {
	h := NewHandle()
	c := &Codec{h: h}
	c.dec = codec.NewDecoderBytes(nil, h)
	c.enc = codec.NewEncoderBytes(&c.out, h)
	return c
}

// ReplyNesting is how many levels of maps and arrays a reply may put above
// an app value: a value at the sidecar's depth limit (MaxDepth-4) sits, in a replay or
// conflict-ledger reply, four levels below the reply's top (reply, list,
// item, side). A decoder of replies allows MaxDepth plus this margin.
const ReplyNesting = 8

// NewReplyCodec returns a Codec for a client's side of a connection: it
// decodes replies nested up to MaxDepth+ReplyNesting deep, so that every
// value the sidecar accepted comes back whatever reply carries it.
func NewReplyCodec() *Codec {
	c := NewCodec()
	c.h.MaxDepth = MaxDepth + ReplyNesting
	return c
}

// Decode decodes one msgpack object from b into v.
func (c *Codec) Decode(b []byte, v any) error {
	c.dec.ResetBytes(b)
	return c.dec.Decode(v)
}

// AppendFrame encodes v as a frame body and appends the whole frame, header
// included, to dst.
func (c *Codec) AppendFrame(dst []byte, v any) ([]byte, error) {
	c.out = c.out[:0]
	c.enc.ResetBytes(&c.out)
	if err := c.enc.Encode(v); err != nil {
		return dst, err
	}
	dst = AppendFrameHeader(dst, len(c.out))
	return append(dst, c.out...), nil
}

// Marshal encodes v as a standalone msgpack document (for example an app value).
func Marshal(v any) ([]byte, error) {
	var out []byte
	err := codec.NewEncoderBytes(&out, NewHandle()).Encode(v)
	return out, err
}

// Unmarshal decodes a standalone msgpack document into v.
func Unmarshal(b []byte, v any) error {
	return codec.NewDecoderBytes(b, NewHandle()).Decode(v)
}
