package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var osStat = os.Stat

// TestSocketIsNeverStolen: a second sidecar refuses a live socket, the first
// keeps serving; a stale socket left by a killed sidecar is replaced; a file
// that is not a socket is never removed.
func TestSocketIsNeverStolen(t *testing.T) {
	sc := startSidecar(t)
	fi, err := os.Stat(sc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	other := filepath.Join(filepath.Dir(sc.DataDir), "data2")
	out, err := exec.Command(sidecarBin, "serve", "--socket", sc.Socket, "--data-dir", other).CombinedOutput()
	if exitCode(err) == 0 {
		t.Fatalf("second sidecar on a live socket exited 0:\n%s", out)
	}
	if !strings.Contains(string(out), "socket") {
		t.Errorf("second sidecar's error does not mention the socket:\n%s", out)
	}
	if _, _, err := sc.CLI("ping"); err != nil {
		t.Fatalf("first sidecar stopped answering: %v", err)
	}

	sc.Kill() // leaves a stale socket file behind
	if _, err := os.Stat(sc.Socket); err != nil {
		t.Fatalf("expected a stale socket after SIGKILL: %v", err)
	}
	sc.Start() // must replace it

	plain := filepath.Join(filepath.Dir(sc.DataDir), "plain")
	if err := os.WriteFile(plain, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sidecarBin, "serve", "--socket", plain, "--data-dir", other)
	done := make(chan error, 1)
	var outb syncBuffer
	cmd.Stdout, cmd.Stderr = &outb, &outb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if exitCode(err) == 0 {
			t.Fatalf("sidecar on a regular file exited 0:\n%s", outb.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("sidecar on a regular file did not refuse it")
	}
	if b, err := os.ReadFile(plain); err != nil || string(b) != "keep me" {
		t.Fatalf("regular file at the socket path was touched: %q, %v", b, err)
	}
}
