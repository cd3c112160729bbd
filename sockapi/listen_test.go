package sockapi

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

func TestListenMode(t *testing.T) {
	for _, umask := range []int{0, 0o022, 0o077} {
		t.Run(fs.FileMode(umask).String(), func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			dir := socketDir(t)
			path := filepath.Join(dir, "s.sock")
			ln, err := Listen(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
				t.Fatalf("mode %v, want socket 0660", fi.Mode())
			}
			if ln.Addr().String() != path {
				t.Fatalf("Addr %q, want %q", ln.Addr(), path)
			}
			// The private bind directory is gone.
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("directory holds %v", entries)
			}
			// It accepts connections.
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestListenLiveSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before, _ := os.Lstat(path)
	if _, err := Listen(path); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("Listen on a live socket: %v, want ErrSocketInUse", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("live socket was replaced (%v)", err)
	}
	// The original listener still works.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestListenStaleSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "s.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // the file stays, nobody listens: stale
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestListenRefusesNonSocket(t *testing.T) {
	dir := socketDir(t)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("precious"), 0o600)
	sub := filepath.Join(dir, "dir")
	os.Mkdir(sub, 0o700)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	for _, path := range []string{file, sub, link} {
		if _, err := Listen(path); !errors.Is(err, ErrNotSocket) {
			t.Fatalf("Listen(%s): %v, want ErrNotSocket", filepath.Base(path), err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("file touched: %q %v", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != fs.ModeSymlink {
		t.Fatalf("symlink touched: %v", err)
	}
}

func TestListenCloseUnlinks(t *testing.T) {
	path := filepath.Join(socketDir(t), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	// Close does not remove a newer file at the same path.
	ln, err = Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	ln2, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed another listener's socket: %v", err)
	}
}

func TestListenPathTooLong(t *testing.T) {
	dir := socketDir(t)
	if _, err := Listen(filepath.Join(dir, strings.Repeat("x", 120))); err == nil {
		t.Fatal("Listen accepted a path over the limit")
	}
	// Short enough for the kernel, but not for the private bind directory.
	long := filepath.Join(dir, strings.Repeat("d", 100-len(dir)-1)) // path 102 bytes, bind path ~113
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(long, "s")); err == nil {
		t.Fatal("Listen accepted a directory too long to bind in safely")
	}
	entries, _ := os.ReadDir(long)
	if len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

// TestListenRacesOverAStaleSocket: two servers start at once on a path
// holding a stale socket. Both found it stale before; the second removed
// the first's new socket and linked its own, so the first listened on a
// socket nobody could reach. Now exactly one listens, and the other gets
// ErrSocketInUse.
func TestListenRacesOverAStaleSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "s.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()

	// The first Listen stops between finding the socket stale and removing
	// it; the second runs meanwhile.
	firstStale, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	testHookStale = func() {
		if calls.Add(1) == 1 {
			close(firstStale)
			<-release
		}
	}
	// The second Listen, with the fix, finds the directory locked.
	secondWaits := make(chan struct{})
	var waits sync.Once
	testHookLockHeld = func() { waits.Do(func() { close(secondWaits) }) }
	t.Cleanup(func() { testHookStale, testHookLockHeld = nil, nil })
	type result struct {
		ln  net.Listener
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() { ln, err := Listen(path); first <- result{ln, err} }()
	<-firstStale
	go func() { ln, err := Listen(path); second <- result{ln, err} }()
	select {
	case r := <-second:
		if r.ln != nil {
			r.ln.Close()
		}
		close(release)
		t.Fatalf("the second Listen finished while the first held the path: %v", r.err)
	case <-secondWaits:
	}
	close(release)
	r1, r2 := <-first, <-second
	if r1.err != nil {
		t.Fatalf("first Listen: %v", r1.err)
	}
	defer r1.ln.Close()
	if !errors.Is(r2.err, ErrSocketInUse) {
		if r2.ln != nil {
			r2.ln.Close()
		}
		t.Fatalf("second Listen: %v, want ErrSocketInUse", r2.err)
	}
	// The path is the first's socket.
	accepted := make(chan error, 1)
	go func() {
		c, err := r1.ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("the first listener did not get the connection: %v", err)
	}
}
