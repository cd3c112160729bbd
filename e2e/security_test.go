package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestAllowUIDRefusesOthers runs the binary with --allow-uid naming a uid
// other than ours: our connection gets one PermissionDenied frame with id
// 0 and is closed, and the client reports it.
func TestAllowUIDRefusesOthers(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "tai.sock")
	other := fmt.Sprint(os.Getuid() + 1)
	logs := &syncBuffer{}
	cmd := exec.Command(sidecarBin, "serve", "--socket", sock, "--data-dir", filepath.Join(dir, "data"),
		"--allow-uid", other, "--allow-gid", fmt.Sprint(os.Getgid()+1))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", logs)
		}
	})

	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not listening: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer conn.Close()
	body, err := wire.ReadFrame(conn, nil, 1<<20)
	if err != nil {
		t.Fatalf("no refusal frame: %v", err)
	}
	var resp wire.Response
	if err := wire.NewCodec().Decode(body, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.ID != 0 || resp.Error == nil || resp.Error.Code != wire.CodePermissionDenied || resp.Error.Retryable {
		t.Fatalf("refusal %+v %+v, want PermissionDenied with id 0, not retryable", resp, resp.Error)
	}
	if _, closed := readReplies(t, conn, 5*time.Second, false); !closed {
		t.Fatal("refused connection left open")
	}

	c := client.New(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The client reports the refusal, or (when its hello write races the
	// close) a broken connection.
	if err := c.Ping(ctx); !errors.Is(err, client.ErrPermissionDenied) && !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("client ping: %v, want the PermissionDenied refusal", err)
	}
	// The refusal is logged as the connection is closed: give the log
	// line a moment to reach the pipe.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "connection refused: peer not allowed"); {
		if time.Now().After(deadline) {
			t.Fatalf("refusal not logged:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAccessFileReadOnlyGovernor gives our uid read on governor "ro" and
// read and write on "rw", nothing on any other governor and no stats: a
// put to "ro" is PermissionDenied, a get from it works.
func TestAccessFileReadOnlyGovernor(t *testing.T) {
	uid := os.Getuid()
	policy := filepath.Join(shortTempDir(t), "access.json")
	if err := os.WriteFile(policy, fmt.Appendf(nil, `{
		"allow_uids": [%d],
		"governors": {"ro": {"read": [%[1]d]}, "rw": {"read": [%[1]d], "write": [%[1]d]}},
		"default": {},
		"admin": []
	}`, uid), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := startSidecar(t, "--access-file", policy)
	c := sc.Client()
	ctx := context.Background()

	if _, err := c.Put(ctx, "rw", "s", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "ro", "s", 1); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("put to read-only governor: %v, want PermissionDenied", err)
	}
	if _, err := c.Get(ctx, "ro", "s"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get from read-only governor: %v, want NotFound (allowed, nothing there)", err)
	}
	if _, err := c.Get(ctx, "rw", "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "elsewhere", "s"); !isCode(err, wire.CodePermissionDenied) {
		t.Fatalf("get from a governor with no rule: %v, want PermissionDenied", err)
	}
	if _, err := c.Stats(ctx); !isCode(err, wire.CodePermissionDenied) {
		t.Fatalf("stats without admin: %v, want PermissionDenied", err)
	}
	if n := strings.Count(sc.Logs(), "request denied"); n != 1 {
		t.Fatalf("denials logged %d times, want once for this peer", n)
	}
}

// TestSecurityFlagsValidated: a bad value is a usage error, exit status 2.
func TestSecurityFlagsValidated(t *testing.T) {
	for _, args := range [][]string{
		{"--allow-uid", "root"},
		{"--max-conns", "0"},
		{"--idle-timeout", "forever"},
		{"--access-file", "/nonexistent/access.json"},
	} {
		_, stderr, err := runBinary(append([]string{"serve", "--socket", filepath.Join(shortTempDir(t), "s.sock")}, args...)...)
		if code := exitCode(err); code != 2 || !strings.Contains(stderr, args[0]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message naming the flag", args, code, stderr)
		}
	}
}

func isCode(err error, code wire.Code) bool {
	var e *wire.Error
	return errors.As(err, &e) && e.Code == code
}
