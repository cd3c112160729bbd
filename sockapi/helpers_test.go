package sockapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// socketDir returns a short temporary directory (socket paths are limited
// to 107 bytes, and t.TempDir's names grow with the test name).
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testServer is a running server on a temporary socket.
type testServer struct {
	t     testing.TB
	srv   *Server
	store Store
	path  string
	errc  chan error
	down  bool
}

// startServer serves store on a fresh socket; the cleanup shuts it down and
// checks that Serve returned nil.
func startServer(t testing.TB, store Store, opts Options) *testServer {
	t.Helper()
	path := filepath.Join(socketDir(t), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ts := &testServer{t: t, srv: NewServer(store, opts), store: store, path: path, errc: make(chan error, 1)}
	ts.srv.onPanic = func(v any) { t.Errorf("server panicked: %v", v) }
	go func() { ts.errc <- ts.srv.Serve(context.Background(), ln) }()
	t.Cleanup(ts.stop)
	return ts
}

// stop shuts the server down and checks Serve's result.
func (ts *testServer) stop() {
	ts.t.Helper()
	if ts.down {
		return
	}
	ts.down = true
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		ts.t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-ts.errc:
		if err != nil {
			ts.t.Errorf("Serve: %v", err)
		}
	case <-time.After(testTimeout):
		ts.t.Error("Serve did not return after Shutdown")
	}
}

// client is a raw protocol client for tests.
type client struct {
	t      testing.TB
	nc     net.Conn
	br     *bufio.Reader
	enc    *wire.Codec
	dec    *wire.Codec
	nextID uint64
}

func (ts *testServer) dial() *client {
	ts.t.Helper()
	nc, err := net.DialTimeout("unix", ts.path, testTimeout)
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { nc.Close() })
	return &client{t: ts.t, nc: nc, br: bufio.NewReader(nc), enc: wire.NewCodec(), dec: wire.NewCodec()}
}

// hello dials and completes the handshake.
func (ts *testServer) hello() *client {
	ts.t.Helper()
	c := ts.dial()
	r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}, Client: "test"})
	if r.Error != nil || r.Hello == nil {
		ts.t.Fatalf("hello: %+v", r)
	}
	return c
}

// id returns a fresh request id.
func (c *client) id() uint64 {
	c.nextID++
	return c.nextID
}

// writeRaw writes bytes as they are.
func (c *client) writeRaw(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// sendBody writes one frame with body b.
func (c *client) sendBody(b []byte) {
	c.t.Helper()
	c.writeRaw(append(wire.AppendFrameHeader(nil, len(b)), b...))
}

// send writes v (a wire.Request, a map, anything msgpack) as one frame.
func (c *client) send(v any) {
	c.t.Helper()
	frame, err := c.enc.AppendFrame(nil, v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.writeRaw(frame)
}

// sendAll writes the frames of vs in one write, as a pipelining client
// does: the server finds them buffered together.
func (c *client) sendAll(vs ...any) {
	c.t.Helper()
	var frames []byte
	for _, v := range vs {
		var err error
		if frames, err = c.enc.AppendFrame(frames, v); err != nil {
			c.t.Fatal(err)
		}
	}
	c.writeRaw(frames)
}

// recv reads one reply.
func (c *client) recv() wire.Response {
	c.t.Helper()
	r, err := c.tryRecv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return r
}

func (c *client) tryRecv() (wire.Response, error) {
	c.nc.SetReadDeadline(time.Now().Add(testTimeout))
	body, err := wire.ReadFrame(c.br, nil, 64<<20)
	if err != nil {
		return wire.Response{}, err
	}
	var r wire.Response
	if err := c.dec.Decode(body, &r); err != nil {
		return wire.Response{}, err
	}
	return r, nil
}

// call sends req with a fresh id and returns its reply.
func (c *client) call(req wire.Request) wire.Response {
	c.t.Helper()
	req.ID = c.id()
	c.send(&req)
	r := c.recv()
	if r.ID != req.ID {
		c.t.Fatalf("reply id %d, want %d (%+v)", r.ID, req.ID, r.Error)
	}
	return r
}

// expectClosed checks that the server closes the connection (after any
// replies already sent, which it returns).
func (c *client) expectClosed() []wire.Response {
	c.t.Helper()
	var got []wire.Response
	for {
		r, err := c.tryRecv()
		if err == nil {
			got = append(got, r)
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
			strings.Contains(err.Error(), "connection reset") {
			return got
		}
		c.t.Fatalf("expected the server to close the connection, got %v", err)
	}
}

// mustMarshal encodes v as msgpack.
func mustMarshal(t testing.TB, v any) wire.Raw {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func u64(v uint64) *uint64 { return &v }

// expectError checks that r is an error reply with code and field.
func expectError(t testing.TB, r wire.Response, code wire.Code, field string) {
	t.Helper()
	if r.Error == nil {
		t.Fatalf("want %s error (field %q), got success %+v", code, field, r)
	}
	if r.Error.Code != code || r.Error.Field != field {
		t.Fatalf("want %s (field %q), got %s (field %q): %s", code, field, r.Error.Code, r.Error.Field, r.Error.Message)
	}
	if r.Record != nil || r.Records != nil || r.Hello != nil || r.Stats != nil || r.Cursor != "" {
		t.Fatalf("error reply carries data: %+v", r)
	}
}
