package sockapi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// errWouldBlock is returned by a non-blocking source (see rawSockIO) when
// the socket has no more bytes for now. It is never a failure: the reader
// waits for the socket to become readable and calls again.
var errWouldBlock = errors.New("sockapi: read would block")

// frameReader reads frames like wire.ReadFrame (same limits, same errors)
// from a buffered source, without copying when it can, and can be resumed:
// when the source returns errWouldBlock mid-frame, next returns it with
// nothing lost, and the next call carries on where it stopped.
//
// A body that fits in br's buffer together with its header is returned in
// place and stays valid only until the next call, so it must be fully used
// (parseRequest copies what it keeps) before the next frame is read. A
// larger body is read into a buffer of its own, reused for the next large
// frame if it is at most keepBuffer bytes.
type frameReader struct {
	br  *bufio.Reader
	max int

	big     []byte // the body of a frame larger than br's buffer
	got     int    // bytes of big read so far
	reading bool   // a large body is being read into big
}

// buffered reports whether a whole frame is already buffered, so that next
// cannot block or return errWouldBlock.
func (f *frameReader) buffered() bool {
	if f.reading {
		return false
	}
	n := f.br.Buffered()
	if n < wire.HeaderSize {
		return false
	}
	hdr, err := f.br.Peek(wire.HeaderSize)
	if err != nil {
		return false
	}
	return uint64(n) >= wire.HeaderSize+uint64(binary.BigEndian.Uint32(hdr))
}

// started reports whether part of a frame has arrived: buffered bytes, or
// a large body being read.
func (f *frameReader) started() bool { return f.reading || f.br.Buffered() > 0 }

// next returns the next frame's body. A clean end of stream before a header
// returns io.EOF; an end inside a frame io.ErrUnexpectedEOF; errWouldBlock
// means "call again once the source is readable". The body stays valid
// until the next call.
func (f *frameReader) next() ([]byte, error) {
	if !f.reading {
		hdr, err := f.br.Peek(wire.HeaderSize)
		if err != nil {
			if err == io.EOF && len(hdr) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 {
			return nil, wire.ErrEmptyFrame
		}
		if uint64(n) > uint64(f.max) {
			return nil, fmt.Errorf("%w: %d bytes announced, limit %d", wire.ErrFrameTooLarge, n, f.max)
		}
		if size := wire.HeaderSize + int(n); size <= f.br.Size() {
			// Nothing is consumed until the whole frame is there.
			frame, err := f.br.Peek(size)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return nil, err
			}
			f.br.Discard(size) // the bytes stay in place until br next fills
			return frame[wire.HeaderSize:], nil
		}
		f.br.Discard(wire.HeaderSize)
		if cap(f.big) < int(n) {
			f.big = make([]byte, n)
		}
		f.big, f.got, f.reading = f.big[:n], 0, true
	}
	n, err := io.ReadFull(f.br, f.big[f.got:])
	f.got += n
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	f.reading = false
	body := f.big
	if cap(body) > keepBuffer {
		f.big = nil // do not keep a large buffer for an idle connection
	}
	return body, nil
}
