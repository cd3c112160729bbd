package sockapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// SocketMode is the mode of the socket Listen creates: owner and group may
// connect.
const SocketMode fs.FileMode = 0o660

// maxSocketPath is the longest socket path the kernel accepts (sun_path
// less its terminating NUL).
const maxSocketPath = 107

// Listen errors.
var (
	// ErrSocketInUse: a server answers on the path; it is never replaced.
	ErrSocketInUse = errors.New("sockapi: socket is in use by a live server")
	// ErrNotSocket: the path exists and is not a socket; it is never removed.
	ErrNotSocket = errors.New("sockapi: path exists and is not a socket")
)

// Listen listens on a Unix socket at path, with mode SocketMode.
//
// If path exists: a socket that accepts a connection is live and Listen
// fails with ErrSocketInUse; a socket whose dial is refused (ECONNREFUSED) is
// stale and is replaced; anything else (a regular file, a directory, a
// symlink, a socket that cannot be probed) fails with an error and is left
// alone.
//
// The socket never exists at path with a wider mode than SocketMode, and the
// umask is not touched (it is process-wide, so changing it would race with
// every goroutine creating files). Instead Listen binds in a fresh private
// directory (mode 0700) next to path, chmods the socket there, and then
// hard-links it to path. link(2) fails if path exists, so a socket that
// appeared since the stale check is never replaced. The private directory is
// removed before Listen returns. Because of that directory the bind path is
// up to 13 bytes longer than path: path's directory plus 13 bytes must fit
// in maxSocketPath.
//
// Two servers starting at once on one path must not both take a stale
// socket for theirs: the second would remove the first's live socket. So
// the check, the removal and the link run under an exclusive lock (flock)
// of path's directory; a second Listen waits for it (at most
// dirLockWait), then finds the first's socket live.
//
// Closing the listener removes path, if path is still the socket Listen
// created.
func Listen(path string) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("sockapi: socket path %q is %d bytes, limit %d", path, len(path), maxSocketPath)
	}
	unlock, err := lockDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("sockapi: listen %s: %w", path, err)
	}
	defer unlock()
	if err := clearStale(path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), "")
	if err != nil {
		return nil, fmt.Errorf("sockapi: listen %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	tmpPath := filepath.Join(tmp, "s")
	if len(tmpPath) > maxSocketPath {
		return nil, fmt.Errorf("sockapi: socket path %q: directory name too long to bind safely (limit %d bytes for the directory plus 13)",
			path, maxSocketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("sockapi: listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmpPath, SocketMode); err != nil {
		return fail(fmt.Errorf("sockapi: listen %s: %w", path, err))
	}
	if err := os.Link(tmpPath, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fail(fmt.Errorf("%w: %s appeared while listening", ErrSocketInUse, path))
		}
		return fail(fmt.Errorf("sockapi: listen %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("sockapi: listen %s: %w", path, err))
	}
	return &unixListener{UnixListener: ln, path: path, fi: fi}, nil
}

// clearStale removes a stale socket at path and refuses anything else.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sockapi: listen %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is %s", ErrNotSocket, path, describeFileType(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nobody listens: a server died without removing its socket.
		if testHookStale != nil {
			testHookStale()
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sockapi: remove stale socket %s: %w", path, err)
		}
		return nil
	case errors.Is(err, syscall.ENOENT):
		return nil // removed meanwhile
	default:
		// EAGAIN (a live server with a full backlog), EACCES, ...: not
		// provably stale.
		return fmt.Errorf("sockapi: probe existing socket %s: %w", path, err)
	}
}

// testHookStale, when set, runs after a socket was found stale and before
// it is removed; testHookLockHeld when lockDir finds the lock held.
var testHookStale, testHookLockHeld func()

// dirLockWait bounds how long Listen waits for another Listen in the same
// directory (which holds the lock for a few milliseconds).
const dirLockWait = 10 * time.Second

// lockDir takes an exclusive flock of directory dir, waiting at most
// dirLockWait, and returns its release. A directory that cannot be opened
// for reading, or a file system without flock, goes without the lock (as
// before it existed): only a lock held too long is an error.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return func() {}, nil
	}
	fd := int(f.Fd())
	deadline := time.Now().Add(dirLockWait)
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return func() { syscall.Flock(fd, syscall.LOCK_UN); f.Close() }, nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
			f.Close()
			return func() {}, nil
		case time.Now().After(deadline):
			f.Close()
			return nil, fmt.Errorf("lock directory %s: held by another process for over %v", dir, dirLockWait)
		case testHookLockHeld != nil:
			testHookLockHeld()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// unixListener reports path as its address and removes it on Close.
type unixListener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	once sync.Once
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close stops listening and removes the socket file, unless path now names
// another file (a newer server's socket).
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}

// describeFileType names the type of a file that is in a socket's way.
func describeFileType(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link (not followed)"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "a device"
	}
	return "not a socket (" + m.Type().String() + ")"
}
