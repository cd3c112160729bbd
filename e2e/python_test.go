package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// debianPython is the interpreter that sees Debian's python3-msgpack.
const debianPython = "/usr/bin/python3"

// TestPythonClient runs the example Python client's smoke test against a real
// sidecar: apps in other languages speak the protocol from docs/protocol.md.
func TestPythonClient(t *testing.T) {
	if err := exec.Command(debianPython, "-c", "import msgpack").Run(); err != nil {
		t.Fatalf("%s cannot import msgpack (%v): install Debian's python3-msgpack (scripts/test.sh does)", debianPython, err)
	}
	sc := startSidecar(t)
	cmd := exec.Command(debianPython, "../examples/python/smoke_test.py", sc.Socket)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("python smoke test:\n%s", out)
	if err != nil {
		t.Fatalf("python smoke test failed: %v", err)
	}
	if !strings.Contains(string(out), "0 failed") {
		t.Fatalf("python smoke test did not report success")
	}
}
