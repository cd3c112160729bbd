//go:build !linux

package sockapi

import "net"

// rawSockIO is Linux only (see sockio_linux.go); elsewhere connections are
// read and written through net.Conn.
type rawSockIO struct{}

func newRawSockIO(net.Conn) *rawSockIO { return nil }

func (*rawSockIO) serve(func() bool) error { panic("sockapi: no raw socket I/O on this system") }

func (*rawSockIO) guessed() bool { panic("sockapi: no raw socket I/O on this system") }

func (*rawSockIO) pending() bool { panic("sockapi: no raw socket I/O on this system") }

func (*rawSockIO) Read([]byte) (int, error)  { panic("sockapi: no raw socket I/O on this system") }
func (*rawSockIO) Write([]byte) (int, error) { panic("sockapi: no raw socket I/O on this system") }
