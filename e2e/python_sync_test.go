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
