package e2e

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// rawConn speaks frames to a sidecar without the client, so that the
// sidecar's own checks answer (the client refuses oversized batches itself).
type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
	id uint64
}

func dialRaw(t *testing.T, s *sidecar) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// frame encodes req with the next id.
func (c *rawConn) frame(req wire.Request) []byte {
	c.t.Helper()
	c.id++
	req.ID = c.id
	f, err := wire.NewCodec().AppendFrame(nil, &req)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

func (c *rawConn) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next reply; err is the read's error (end of stream).
func (c *rawConn) read() (wire.Response, error) {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	body, err := wire.ReadFrame(c.br, nil, 64<<20)
	if err != nil {
		return wire.Response{}, err
	}
	var r wire.Response
	if err := wire.NewCodec().Decode(body, &r); err != nil {
		c.t.Fatal(err)
	}
	return r, nil
}

func (c *rawConn) call(req wire.Request) wire.Response {
	c.t.Helper()
	c.write(c.frame(req))
	r, err := c.read()
	if err != nil {
		c.t.Fatalf("%s: %v", req.Op, err)
	}
	if r.ID != c.id {
		c.t.Fatalf("reply id %d, want %d", r.ID, c.id)
	}
	return r
}

func (c *rawConn) hello() *wire.Hello {
	c.t.Helper()
	r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}})
	if r.Error != nil || r.Hello == nil {
		c.t.Fatalf("hello: %+v", r)
	}
	return r.Hello
}

func items(n int) []wire.Item {
	v, _ := wire.Marshal(1)
	out := make([]wire.Item, n)
	for i := range out {
		out[i] = wire.Item{Governor: "app", State: "s" + strings.Repeat("x", i), Value: v}
	}
	return out
}

// binValue is a msgpack bin value of exactly n encoded bytes (n >= 258).
func binValue(t *testing.T, n int) wire.Raw {
	v, err := wire.Marshal(bytes.Repeat([]byte{'x'}, n-3)) // bin 16: 3 header bytes
	if err != nil || len(v) != n {
		t.Fatalf("value of %d bytes: %d, %v", n, len(v), err)
	}
	return v
}

func expectTooLarge(t *testing.T, r wire.Response, code wire.Code, field string, limit int64, msg string) {
	t.Helper()
	if r.Error == nil || r.Error.Code != code || r.Error.Field != field || (limit != 0 && r.Error.Limit != limit) ||
		!strings.Contains(r.Error.Message, msg) {
		t.Fatalf("reply %+v, want %s field %q limit %d message %q", r.Error, code, field, limit, msg)
	}
}

// TestLimitFlags: the value, batch, depth and read-time limits are set by
// the real binary's flags, variables and config file, lowered and raised,
// and a request over one gets an error that names the field and the limit.
func TestLimitFlags(t *testing.T) {
	sc := startSidecar(t, "--max-batch", "3", "--max-value", "300", "--max-value-depth", "2", "--read-timeout", "1s")
	c := dialRaw(t, sc)
	if h := c.hello(); h.MaxBatch != 3 || h.MaxValue != 300 {
		t.Fatalf("hello announces %+v", h)
	}
	if r := c.call(wire.Request{Op: wire.OpBatchPut, Items: items(3)}); r.Error != nil {
		t.Fatalf("batch at the limit: %v", r.Error)
	}
	expectTooLarge(t, c.call(wire.Request{Op: wire.OpBatchPut, Items: items(4)}), wire.CodeTooLarge, "items", 3, "items has 4 entries, limit 3")
	expectTooLarge(t, c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "app", State: "a"}, {Governor: "app", State: "b"},
		{Governor: "app", State: "c"}, {Governor: "app", State: "d"}}}), wire.CodeTooLarge, "keys", 3, "limit 3")
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "v", Value: binValue(t, 300)}); r.Error != nil {
		t.Fatalf("value at the limit: %v", r.Error)
	}
	expectTooLarge(t, c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "v", Value: binValue(t, 301)}),
		wire.CodeTooLarge, "value", 300, "value is 301 bytes, limit 300")
	deep := wire.Raw{0x91, 0x91, 0x91, 0x01} // [[[1]]]: 3 levels
	expectTooLarge(t, c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "d", Value: deep}),
		wire.CodeInvalidArgument, "value", 0, "more than 2 levels deep")
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "d", Value: deep[1:]}); r.Error != nil {
		t.Fatalf("value at the depth limit: %v", r.Error)
	}
	// A frame begun and not finished within --read-timeout: Timeout, id 0,
	// then the connection is closed.
	f := c.frame(wire.Request{Op: wire.OpPing})
	c.write(f[:len(f)-1])
	r, err := c.read()
	if err != nil || r.ID != 0 || r.Error == nil || r.Error.Code != wire.CodeTimeout || !strings.Contains(r.Error.Message, "read timeout (1s)") {
		t.Fatalf("unfinished frame: %+v, %v", r.Error, err)
	}
	if _, err := c.read(); err == nil {
		t.Fatal("connection still open after the read timeout")
	}
	// The sidecar serves others as before.
	if h := dialRaw(t, sc).hello(); h.MaxBatch != 3 {
		t.Fatalf("second connection: %+v", h)
	}

	// Raised again from the environment.
	sc = startSidecarEnv(t, []string{"TAI_MAX_BATCH=10", "TAI_MAX_VALUE=400"})
	c = dialRaw(t, sc)
	if h := c.hello(); h.MaxBatch != 10 || h.MaxValue != 400 {
		t.Fatalf("hello announces %+v", h)
	}
	if r := c.call(wire.Request{Op: wire.OpBatchPut, Items: items(4)}); r.Error != nil {
		t.Fatalf("4 items with TAI_MAX_BATCH=10: %v", r.Error)
	}
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "v", Value: binValue(t, 301)}); r.Error != nil {
		t.Fatalf("301 bytes with TAI_MAX_VALUE=400: %v", r.Error)
	}

	// From a config file, and a flag over it.
	cfg := filepath.Join(shortTempDir(t), "tai.yaml")
	if err := os.WriteFile(cfg, []byte("max_batch: 5\nmax_value_depth: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sc = startSidecar(t, "--config", cfg, "--max-value-depth", "3")
	c = dialRaw(t, sc)
	if h := c.hello(); h.MaxBatch != 5 || h.MaxValue != wire.MaxValueSize {
		t.Fatalf("hello announces %+v", h)
	}
	expectTooLarge(t, c.call(wire.Request{Op: wire.OpBatchPut, Items: items(6)}), wire.CodeTooLarge, "items", 5, "limit 5")
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "app", State: "d", Value: deep}); r.Error != nil {
		t.Fatalf("3 levels with --max-value-depth 3 over the file's 1: %v", r.Error)
	}
}

// TestConfigFileBinary: config print shows the example file's values, and
// serve refuses an invalid file with a message naming its line.
func TestConfigFileBinary(t *testing.T) {
	out, stderr, err := runBinary("config", "print", "--config", "../docs/examples/tai-sidecar.yaml", "--max-inflight", "9")
	if err != nil {
		t.Fatalf("config print: %v\n%s", err, stderr)
	}
	for _, want := range []string{"max_batch: 500 # file ../docs/examples/tai-sidecar.yaml:", "max_inflight: 9 # flag --max-inflight",
		"resolver: merge:lww # file ../docs/examples/tai-sidecar.yaml:"} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %q:\n%s", want, out)
		}
	}

	dir := shortTempDir(t)
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("max_batch: 5\nmax_batchs: 6\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = runBinary("serve", "--socket", filepath.Join(dir, "s.sock"), "--data-dir", filepath.Join(dir, "data"), "--config", bad)
	if code := exitCode(err); code != 2 || !strings.Contains(stderr, bad+`:2: unknown key "max_batchs"`) {
		t.Fatalf("serve with an invalid file: exit %d, stderr %q", code, stderr)
	}
	_, stderr, err = runBinary("config", "print", "--config", bad)
	if code := exitCode(err); code != 2 || !strings.Contains(stderr, bad+`:2: unknown key "max_batchs"`) {
		t.Fatalf("config print with an invalid file: exit %d, stderr %q", code, stderr)
	}
}
