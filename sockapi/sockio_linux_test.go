package sockapi

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRawSockIORead: a short read marks the socket empty, so the next read
// reports errWouldBlock without a system call (guessed) and the callback
// waits; bytes sent during the wait wake it. serve starts with a real read,
// which sees the end of stream.
func TestRawSockIORead(t *testing.T) {
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	s := newRawSockIO(b)
	if s == nil {
		t.Fatal("no raw I/O for a Unix socket")
	}
	b.SetReadDeadline(time.Now().Add(testTimeout)) // a bug fails, not hangs
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var steps []string
	buf := make([]byte, 64)
	calls := 0
	read := func() bool {
		calls++
		for {
			n, err := s.Read(buf)
			got = append(got, buf[:n]...)
			switch {
			case err == errWouldBlock && s.guessed():
				steps = append(steps, "guess")
				if calls == 1 {
					go a.Write([]byte(" world")) // wakes the wait
					return false
				}
				return true
			case err == errWouldBlock:
				// EAGAIN after a spurious wake-up (an event that
				// was already pending): fine, wait again.
				return false
			case err == io.EOF:
				steps = append(steps, "eof")
				return true
			case err != nil:
				t.Errorf("read: %v", err)
				return true
			}
			steps = append(steps, "data")
		}
	}
	if err := s.serve(read); err != nil {
		t.Fatal(err)
	}
	if want := "data guess data guess"; string(got) != "hello world" || strings.Join(steps, " ") != want {
		t.Fatalf("read %q in steps %v, want %q in steps %s", got, steps, "hello world", want)
	}
	a.CloseWrite()
	steps = nil
	if err := s.serve(read); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1 || steps[0] != "eof" {
		t.Fatalf("after the peer closed: steps %v", steps)
	}
}

// TestRawSockIOWrite: a write larger than the socket buffer completes as
// the peer reads; a write to a closed peer fails instead of blocking.
func TestRawSockIOWrite(t *testing.T) {
	a, b := socketPair(t)
	defer b.Close()
	s := newRawSockIO(b)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	var wg sync.WaitGroup
	var got []byte
	wg.Add(1)
	go func() {
		defer wg.Done()
		got, _ = io.ReadAll(io.LimitReader(a, int64(len(big))))
	}()
	if n, err := s.Write(big); err != nil || n != len(big) {
		t.Fatalf("write: %d, %v", n, err)
	}
	wg.Wait()
	if !bytes.Equal(got, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(got))
	}
	a.Close()
	var err error
	for range 2 { // the first write may still land in the socket buffer
		if _, err = s.Write([]byte("x")); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write to a closed peer: %v", err)
	}
}

// TestRawSockIODeadlineAndClose: a wait ends with the read deadline, and
// with Close, through the poller as for net.Conn.
func TestRawSockIODeadlineAndClose(t *testing.T) {
	a, b := socketPair(t)
	defer a.Close()
	s := newRawSockIO(b)
	buf := make([]byte, 16)
	pump := func() bool {
		_, err := s.Read(buf)
		return err != errWouldBlock
	}
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := s.serve(pump); !isTimeout(err) {
		t.Fatalf("serve with a deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- s.serve(pump) }()
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("serve after Close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("serve did not return after Close")
	}
}
