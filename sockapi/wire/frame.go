package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of a frame header: the body length as a big-endian
// uint32.
const HeaderSize = 4

// DefaultMaxFrame is the default cap on a frame body, in bytes. A peer that
// announces a larger frame has lost framing (or is hostile) and the
// connection is closed after an error frame.
const DefaultMaxFrame = 4 << 20

// ErrFrameTooLarge is returned by ReadFrame when the header announces a body
// larger than the cap. The body has not been read: framing is lost.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrEmptyFrame is returned by ReadFrame for a zero-length body, which no
// message can have.
var ErrEmptyFrame = errors.New("empty frame")

// ReadFrame reads one frame from r and returns its body. The body is read into
// buf when it fits (buf may be nil) and is valid until the next call that
// reuses buf. max caps the body size; ReadFrame never allocates more than max
// bytes, whatever the header says.
//
// A clean end of stream before any header byte returns io.EOF; a stream that
// ends inside a frame returns io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, buf []byte, max int) ([]byte, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, ErrEmptyFrame
	}
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("%w: %d bytes announced, limit %d", ErrFrameTooLarge, n, max)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// AppendFrameHeader appends the header of a frame whose body is n bytes long.
func AppendFrameHeader(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}
