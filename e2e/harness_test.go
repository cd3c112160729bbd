// Package e2e tests the real tai-sidecar binary: built once, started as a
// separate process, talked to over its socket, killed and restarted.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
)

// sidecarBin is the sidecar built by TestMain.
var sidecarBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tai-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	sidecarBin = filepath.Join(dir, "tai-sidecar")
	args := []string{"build", "-o", sidecarBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/tai-sidecar")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tai-sidecar:", err)
		return 1
	}
	// A binary built with -race sleeps a second at exit unless told not to;
	// the tests run the CLI and restart sidecars hundreds of times. Every
	// process they start inherits this.
	gorace := "atexit_sleep_ms=0"
	if v := os.Getenv("GORACE"); v != "" {
		gorace = v + " " + gorace
	}
	os.Setenv("GORACE", gorace)
	return m.Run()
}

// sidecar is one running tai-sidecar process.
type sidecar struct {
	t       testing.TB
	Socket  string
	DataDir string
	args    []string
	// Env is added to the test's environment at each Start.
	Env []string
	// SharesOrigin says the test runs the sidecar on a copy of a data dir
	// another sidecar went on with (see originSharedLog).
	SharesOrigin bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	logs *syncBuffer
}

// startSidecar starts a sidecar with its own socket and data dir in a
// temporary directory, waits until it answers, and stops it at the end of the
// test.
func startSidecar(t testing.TB, extra ...string) *sidecar {
	t.Helper()
	return startSidecarEnv(t, nil, extra...)
}

// startSidecarEnv is startSidecar with env added to the process environment.
func startSidecarEnv(t testing.TB, env []string, extra ...string) *sidecar {
	t.Helper()
	dir := shortTempDir(t)
	s := &sidecar{
		t:       t,
		Socket:  filepath.Join(dir, "tai.sock"),
		DataDir: filepath.Join(dir, "data"),
		args:    extra,
		Env:     env,
	}
	s.Start()
	t.Cleanup(func() {
		s.Kill()
		if strings.Contains(s.Logs(), originSharedLog) && !s.SharesOrigin {
			t.Errorf("the sidecar took its origin for another store's, and drew a new incarnation")
		}
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", s.Logs())
		}
	})
	return s
}

// originSharedLog is what a sidecar logs when it meets proof that another
// store makes changes under its origin (localcache/origin.go): in a test
// that does not copy a data dir, a false alarm.
const originSharedLog = "another store makes changes under this store's origin"

// shortTempDir returns a temporary directory with a short path: a Unix socket
// path must fit in 108 bytes, and t.TempDir's can be longer.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tai-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Start starts the process (again) and waits until it answers a ping.
func (s *sidecar) Start() {
	s.t.Helper()
	s.launch()
	s.waitReady(30 * time.Second)
}

// launch starts the process (again) without waiting for it.
func (s *sidecar) launch() {
	s.t.Helper()
	s.mu.Lock()
	// Every log record is kept (--log-burst 0): a failing test prints them.
	args := append([]string{"serve", "--socket", s.Socket, "--data-dir", s.DataDir, "--log-level", "debug", "--log-burst", "0"},
		s.args...)
	cmd := exec.Command(sidecarBin, args...)
	cmd.Env = append(os.Environ(), s.Env...)
	if s.logs == nil {
		s.logs = &syncBuffer{}
	}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		s.t.Fatal(err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		err := cmd.Wait()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(done)
	}(s.done)
	s.mu.Unlock()
}

func (s *sidecar) waitReady(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-s.done:
			s.t.Fatalf("sidecar exited before it was ready: %v\n%s", s.err, s.Logs())
		default:
		}
		c := client.New(s.Socket)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx)
		cancel()
		c.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sidecar not ready after %v: %v\n%s", timeout, err, s.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Wait waits up to timeout for the process to exit by itself and returns
// its exit error.
func (s *sidecar) Wait(timeout time.Duration) error {
	s.t.Helper()
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	select {
	case <-done:
	case <-time.After(timeout):
		s.t.Fatalf("sidecar still running after %v", timeout)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Kill sends SIGKILL and waits for the process to go.
func (s *sidecar) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Signal sends sig and waits up to timeout for the process to exit, returning
// its exit error (nil for status 0).
func (s *sidecar) Signal(sig syscall.Signal, timeout time.Duration) error {
	s.t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(timeout):
		s.t.Fatalf("sidecar did not exit within %v of %v", timeout, sig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Client returns a client of this sidecar, closed at the end of the test.
func (s *sidecar) Client() *client.Client {
	c := client.New(s.Socket)
	s.t.Cleanup(func() { c.Close() })
	return c
}

// CLI runs the binary as a client of this sidecar.
func (s *sidecar) CLI(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(sidecarBin, append([]string{"--socket", s.Socket}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func (s *sidecar) Logs() string { return s.logs.String() }

// exitCode returns the exit status in err from exec, 0 for nil.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// runBinary runs the binary with args and returns what it printed.
func runBinary(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(sidecarBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}
