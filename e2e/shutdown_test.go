package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Graceful shutdown under load: SIGTERM lets the requests in flight finish,
// pushes the journal for at most --flush-timeout and exits 0; a second
// signal exits at once with status 1. Either way every acknowledged write is
// in the local store after a restart, and a write that was not acknowledged
// was applied only where the client says its fate is unknown: the server
// answers every request it read and closes the connection on the others.
//
// The client reports a request it sent as of unknown fate (ConnError with
// Sent) when the connection breaks before the reply is read. A break seen by
// the reader comes after every reply the sidecar wrote was read, so then the
// request was not applied; a break seen by the writer (the sidecar closed
// the connection while more requests were going out) fails the calls
// waiting at once, including those whose reply had already arrived unread.
// Only the latter may have been applied.

// Serve's timeouts in these tests, and how long the tests wait for the exit
// beyond them: a loaded machine and the race detector slow every step.
const (
	shutdownTimeout = 5 * time.Second
	exitMargin      = 10 * time.Second
)

// shutdownLoad starts chain writers on a client of sc (see
// startChainWriters) and returns once they have acknowledged at least want
// versions, or after five seconds, whichever comes first. The writers run
// on until the sidecar goes away; stopLoad ends them.
func shutdownLoad(t *testing.T, sc *sidecar, gov string, want uint64) (*chainWriters, *client.Client) {
	t.Helper()
	c := client.New(sc.Socket)
	cw := startChainWriters(c, gov, 8, 3, map[string]uint64{}, make(chan struct{}))
	deadline := time.Now().Add(5 * time.Second)
	for ackedSum(cw) < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ackedSum(cw) == 0 {
		t.Fatalf("no write acknowledged before the signal\n%s", sc.Logs())
	}
	return cw, c
}

// stopLoad waits for the writers, which end with the sidecar's exit, and
// returns what they acknowledged and how many of their last writes may have
// been applied unacknowledged (see above). Any other end is an error.
func stopLoad(t *testing.T, cw *chainWriters, c *client.Client) (acked map[string]uint64, unknown int) {
	t.Helper()
	cw.wg.Wait()
	c.Close()
	if len(cw.failed) != 8 {
		t.Fatalf("%d of 8 writers saw the shutdown: %v", len(cw.failed), cw.failed)
	}
	for _, err := range cw.failed {
		var ce *client.ConnError
		if !errors.As(err, &ce) {
			t.Fatalf("a writer ended with %v, want a closed connection", err)
		}
		if ce.Op == "write" && ce.Sent {
			unknown++
		}
	}
	t.Logf("%d versions acknowledged, %d writes of unknown fate; writers ended with: %v", ackedSum(cw), unknown, cw.failed)
	return cw.acked, unknown
}

func ackedSum(cw *chainWriters) uint64 {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	var n uint64
	for _, v := range cw.acked {
		n += v
	}
	return n
}

// adopt checks the version of each key of acked that get reads: its
// acknowledged version, or one above it for at most unknown keys, holding
// the value written for that version. It moves acked up to what get read
// and returns the sum of the versions.
func adopt(t *testing.T, where string, acked map[string]uint64, unknown int, get func(name string) (uint64, []byte, error)) int64 {
	t.Helper()
	var sum int64
	for name, v := range acked {
		version, value, err := get(name)
		if err != nil {
			t.Fatalf("%s %s: %v (acknowledged version %d)", where, name, err, v)
		}
		if version == v+1 && unknown > 0 {
			unknown--
			acked[name] = version
		} else if version != v {
			t.Fatalf("%s %s at version %d, acknowledged %d: a write was lost or applied unacknowledged", where, name, version, v)
		}
		var doc counterDoc
		if err := wire.Unmarshal(value, &doc); err != nil || doc.N != version {
			t.Fatalf("%s %s at version %d holds %+v (%v)", where, name, version, doc, err)
		}
		sum += int64(version)
	}
	return sum
}

// checkLocal checks sc's store after a restart (adopt), and that its
// journal holds one entry per version when keep, none otherwise.
func checkLocal(t *testing.T, sc *sidecar, gov string, acked map[string]uint64, unknown int, keep bool) {
	t.Helper()
	c := sc.Client()
	versions := adopt(t, "local", acked, unknown, func(name string) (uint64, []byte, error) {
		rec, err := c.Get(context.Background(), gov, name)
		if err != nil {
			return 0, nil, err
		}
		return rec.Version, []byte(rec.Value), nil
	})
	want := int64(0)
	if keep {
		want = versions
	}
	if d, err := journalDepth(c); err != nil || d != want {
		t.Fatalf("local journal depth %d, %v; want %d", d, err, want)
	}
}

// checkRemote checks Firestore right after the exit (adopt), then each
// key's event log there (checkChains).
func checkRemote(t *testing.T, fs *shared, gov string, acked map[string]uint64, unknown int) {
	t.Helper()
	adopt(t, "firestore", acked, unknown, func(name string) (uint64, []byte, error) {
		r, err := fs.get(gov, name)
		return r.Version, r.Value, err
	})
	fs.checkChains(t, gov, acked)
}

// send delivers sig to the process without waiting for it to exit.
func (s *sidecar) send(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// TestShutdownUnderLoadFlushes: SIGTERM in the middle of a write load with
// Firestore reachable. The process exits 0 within its timeouts, and right
// away (no later push) Firestore holds every acknowledged version and
// nothing more; after a restart the local store does too, with an empty
// journal.
func TestShutdownUnderLoadFlushes(t *testing.T) {
	const flush = 15 * time.Second
	fs := newShared(t)
	a := startSidecar(t, append(fs.args("node-a"),
		"--shutdown-timeout", shutdownTimeout.String(), "--flush-timeout", flush.String())...)
	cw, c := shutdownLoad(t, a, "shut", 300)
	start := time.Now()
	if err := a.Signal(syscall.SIGTERM, shutdownTimeout+flush+exitMargin); err != nil {
		t.Fatalf("exit after SIGTERM: %v (status %d)", err, exitCode(err))
	}
	t.Logf("exited 0 %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	acked, unknown := stopLoad(t, cw, c)
	if !strings.Contains(a.Logs(), "journal pushed") {
		t.Fatalf("no complete final push in the logs:\n%s", a.Logs())
	}
	checkRemote(t, fs, "shut", acked, unknown)
	a.Start()
	checkLocal(t, a, "shut", acked, 0, false)
}

// TestShutdownStoreUnreachable: SIGTERM under load while Firestore is cut
// off. The final push cannot finish; the process still exits 0 within its
// timeouts, the journal keeps every write (checked after a restart still cut
// off), and a sidecar restarted with Firestore reachable pushes them all.
func TestShutdownStoreUnreachable(t *testing.T) {
	const flush = 2 * time.Second
	fs := newShared(t)
	px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
	a := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, append(fs.args("node-a"),
		"--shutdown-timeout", shutdownTimeout.String(), "--flush-timeout", flush.String())...)
	// Cut before the first write: no push reaches Firestore, and none is
	// left half done there (a transaction cut off in the middle holds its
	// documents locked for a long time).
	px.Cut()
	cw, c := shutdownLoad(t, a, "unreach", 300)
	start := time.Now()
	if err := a.Signal(syscall.SIGTERM, shutdownTimeout+flush+exitMargin); err != nil {
		t.Fatalf("exit after SIGTERM: %v (status %d)", err, exitCode(err))
	}
	t.Logf("exited 0 %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	acked, unknown := stopLoad(t, cw, c)
	if logs := a.Logs(); strings.Contains(logs, "journal pushed") || !strings.Contains(logs, "final push incomplete") {
		t.Fatalf("the final push did not report that it stopped short:\n%s", logs)
	}

	a.Start() // still cut off: every acknowledged write waits in the journal
	checkLocal(t, a, "unreach", acked, unknown, true)
	// Restart with Firestore reachable: the sidecar keeps nothing unsaved,
	// so SIGKILL does here what SIGTERM would, without a second futile push.
	a.Kill()
	a.Env = nil // the emulator itself
	a.Start()
	fs.checkChains(t, "unreach", acked)
	eventually(t, 30*time.Second, func() string {
		if d, err := journalDepth(a.Client()); err != nil || d != 0 {
			return fmt.Sprintf("journal depth %d, %v after Firestore came back", d, err)
		}
		return ""
	})
}

// TestShutdownSecondSignal: a second signal while the final push waits on
// a Firestore that never answers ends the process at once with status 1
// instead of waiting out --flush-timeout; every acknowledged write is in the
// local store (and its journal) after a restart.
func TestShutdownSecondSignal(t *testing.T) {
	fs := newShared(t)
	hole := newBlackhole(t)
	a := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + hole}, append(fs.args("node-a"),
		"--shutdown-timeout", shutdownTimeout.String(), "--flush-timeout", "5m")...)
	cw, c := shutdownLoad(t, a, "second", 300)
	a.send(syscall.SIGTERM)
	acked, unknown := stopLoad(t, cw, c)
	eventually(t, 20*time.Second, func() string {
		if !strings.Contains(a.Logs(), "pushing the journal before exit") {
			return "the final push has not begun"
		}
		return ""
	})
	err := a.Signal(syscall.SIGINT, exitMargin)
	if exitCode(err) != 1 {
		t.Fatalf("exit after the second signal: %v, want status 1", err)
	}
	logs := a.Logs()
	if !strings.Contains(logs, "second signal") || strings.Contains(logs, "journal pushed") || strings.Contains(logs, "final push incomplete") {
		t.Fatalf("the second signal did not cut the final push short:\n%s", logs)
	}
	a.Start()
	checkLocal(t, a, "second", acked, unknown, true)
}

// newBlackhole listens on a local TCP address that accepts connections and
// never answers: a shared store whose calls hang until their deadline. It
// returns the address.
func newBlackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
