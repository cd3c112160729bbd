package sockapi

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawSockIO reads and writes a connection's socket with raw system calls,
// waiting for readiness through the runtime's network poller as net.Conn
// does: deadlines and Close work the same.
//
// Why. Serving a get costs a few microseconds of work and, through net.Conn,
// three or four system calls, which dominate its CPU cost (more so in a
// virtual machine, where each one is a trip through the hypervisor):
//
//   - net.Conn issues read(2) and write(2) as blocking system calls although
//     the socket is non-blocking. Each marks the goroutine's P as in a
//     syscall and wakes the runtime's monitor thread from its idle sleep,
//     which then polls every 20 µs for a while to retake Ps from syscalls
//     (with a thread handoff when it does). A raw system call on a
//     non-blocking socket cannot block: it keeps the P and wakes nobody.
//   - Every net.Conn Read starts with a read(2), even right after a reply to
//     a client that is waiting for it, so most of them fail with EAGAIN
//     before the goroutine parks. serve runs the connection's whole read
//     loop inside one RawConn.Read instead: a read that returned less than
//     it asked for has emptied the socket, and the loop then waits for the
//     poller without trying again. This is safe because the poller is
//     edge-triggered and nothing resets its readiness inside one
//     RawConn.Read: bytes that arrive after the short read raise a new
//     event, which either wakes the wait or is already pending when it
//     starts. The one thing a short read cannot tell is an end of stream
//     (or error) that arrived together with its bytes: their single event
//     was used up by the wake-up that led to the read. Such a wait has a
//     deadline, probeDelay, after which the loop reads again.
//
// Read is only called from inside serve's callback, on the reader goroutine.
// Write may be called from any goroutine, one at a time (the outbox
// serialises writers), concurrently with the reader.
type rawSockIO struct {
	nc net.Conn
	rc syscall.RawConn

	// Reader state (serve's goroutine only).
	fd      uintptr // valid while serve's callback runs
	drained bool    // the last read emptied the socket
	guess   bool    // the last errWouldBlock came from drained, not EAGAIN

	// Writer state (one writer at a time).
	writeFn func(fd uintptr) bool // bound once: Write allocates nothing
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
}

// newRawSockIO returns raw I/O for a Unix or TCP socket, or nil for any other
// connection (which is then read and written through its own methods).
func newRawSockIO(nc net.Conn) *rawSockIO {
	var rc syscall.RawConn
	var err error
	switch c := nc.(type) {
	case *net.UnixConn:
		rc, err = c.SyscallConn()
	case *net.TCPConn:
		rc, err = c.SyscallConn()
	default:
		return nil
	}
	if err != nil {
		return nil
	}
	s := &rawSockIO{nc: nc, rc: rc}
	s.writeFn = s.doWrite
	return s
}

// serve calls pump each time the socket may be readable, until pump returns
// true (done). pump reads through Read, which returns errWouldBlock when
// the socket is empty; pump then returns false to wait. serve returns the
// poller's error: the read deadline passed or the connection was closed.
func (s *rawSockIO) serve(pump func() bool) error {
	return s.rc.Read(func(fd uintptr) bool {
		s.fd = fd
		return pump()
	})
}

// Read reads at most len(p) bytes without blocking. It returns errWouldBlock
// when the socket is empty, or known to be empty because the previous read
// was short; io.EOF once the peer has closed its side.
func (s *rawSockIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.guess = false
	if s.drained {
		s.drained, s.guess = false, true
		return 0, errWouldBlock
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, s.fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			if n == 0 {
				return 0, io.EOF
			}
			s.drained = int(n) < len(p)
			return int(n), nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, errWouldBlock
		}
		return 0, s.opError("read", e)
	}
}

// pending reports whether the socket holds bytes not read yet, without
// reading them (reader only, inside serve's callback).
func (s *rawSockIO) pending() bool {
	var b [1]byte
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, s.fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return e == 0 && n > 0
}

// guessed reports whether the last errWouldBlock rested on a short read
// rather than on EAGAIN: the socket may hold an end of stream or an error
// whose poller event is used up (see probeDelay).
func (s *rawSockIO) guessed() bool { return s.guess }

// Write writes all of p, waiting for room in the socket as needed.
func (s *rawSockIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wbuf, s.wn, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	n, errno := s.wn, s.werrno
	s.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, s.opError("write", errno)
	}
	return n, nil
}

// doWrite is Write's callback: false means "no room, wait".
func (s *rawSockIO) doWrite(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		rest := s.wbuf[s.wn:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			s.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.werrno = e
		return true
	}
	return true
}

func (s *rawSockIO) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: s.nc.LocalAddr().Network(), Source: s.nc.LocalAddr(), Addr: s.nc.RemoteAddr(),
		Err: os.NewSyscallError(op, errno)}
}
