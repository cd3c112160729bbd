package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// pythonSyncScript drives the example Python client through the protocol's
// newer parts: it starts a watch with a raw request on its connection, so
// that push frames arrive between its replies (which it must skip), and
// uses pending and the consistency levels.
const pythonSyncScript = `
import sys
sys.path.insert(0, "../examples/python")
import tai_client as tc

c = tc.TaiClient(sys.argv[1])
wid = c.send("watch", {"governor": "py"})
assert c.recv(wid).get("watch") == wid
for i in range(5):
    c.put("py", "s", {"i": i})      # each change also pushes a frame on this connection
rec = c.get("py", "s")
assert rec.version == 5 and rec.value == {"i": 4} and rec.from_cache and rec.synced_at == 0, rec
p = c.pending()
assert p["depth"] == 5 and p["shared_store"] is False, p
entries, nxt = c.failed()
assert entries == [] and nxt == 0
try:
    c.get("py", "s", consistency="strong")
    raise SystemExit("strong read without a shared store succeeded")
except tc.Unavailable as e:
    assert not e.retryable, e
try:
    c.put("py", "s", 1, consistency="sync")
    raise SystemExit("sync write without a shared store succeeded")
except tc.Unavailable as e:
    assert not e.retryable, e
assert c.recv(c.send("unwatch", {"watch": wid})) is not None
print("python sync ok")
`

// TestPythonClientPushFrames: the example Python client keeps working on a
// connection that carries server-push frames, and speaks the new ops.
func TestPythonClientPushFrames(t *testing.T) {
	if err := exec.Command(debianPython, "-c", "import msgpack").Run(); err != nil {
		t.Fatalf("%s cannot import msgpack (%v): install Debian's python3-msgpack (scripts/test.sh does)", debianPython, err)
	}
	sc := startSidecar(t)
	cmd := exec.Command(debianPython, "-c", pythonSyncScript, sc.Socket)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "python sync ok") {
		t.Fatalf("python: %v\n%s", err, out)
	}
}

// pythonIdleScript sleeps past the sidecar's idle timeout between two
// calls: the client must see idle_timeout_ms in hello and dial again rather
// than send on a connection the sidecar has closed.
const pythonIdleScript = `
import sys, time
sys.path.insert(0, "../examples/python")
import tai_client as tc

c = tc.TaiClient(sys.argv[1])
assert c.server.get("idle_timeout_ms") == 1000, c.server
c.put("py", "idle", 1)
first = c._sock
time.sleep(1.6)                     # the sidecar closes an idle connection within 1.125 s
assert c.get("py", "idle").value == 1
assert c._sock is not first, "the idle connection was used again"
c.put("py", "idle", 2)              # a connection in use is kept
assert c._sock is not first
print("python idle ok")
`

// TestPythonClientIdleTimeout: the example Python client replaces a
// connection the sidecar is about to close as idle.
func TestPythonClientIdleTimeout(t *testing.T) {
	if err := exec.Command(debianPython, "-c", "import msgpack").Run(); err != nil {
		t.Fatalf("%s cannot import msgpack (%v): install Debian's python3-msgpack (scripts/test.sh does)", debianPython, err)
	}
	sc := startSidecar(t, "--idle-timeout", "1s")
	cmd := exec.Command(debianPython, "-c", pythonIdleScript, sc.Socket)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "python idle ok") {
		t.Fatalf("python: %v\n%s", err, out)
	}
}
