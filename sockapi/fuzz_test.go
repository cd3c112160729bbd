package sockapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// socketPair returns two connected Unix stream sockets.
func socketPair(tb testing.TB) (a, b *net.UnixConn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			tb.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// fuzzHelloID is the id of the hello the harness sends in framed mode.
const fuzzHelloID = 1 << 60

// fuzzSeed is one seed input of FuzzServeConn.
type fuzzSeed struct {
	name   string
	framed bool
	data   []byte
}

// fuzzSeeds are request bodies of every op, valid and hostile (framed), and
// whole byte streams (not framed). They are also written to
// testdata/fuzz/FuzzServeConn (see TestFuzzCorpus).
func fuzzSeeds(tb testing.TB) []fuzzSeed {
	// Values are structs, not maps: maps encode in random order, and the
	// seed files must not change from run to run.
	v := mustMarshal(tb, struct {
		N    int      `codec:"n"`
		Tags []string `codec:"tags"`
	}{1, []string{"a"}})
	bodies := []struct {
		name string
		body []byte
	}{
		{"ping", mustMarshal(tb, &wire.Request{ID: 2, Op: wire.OpPing})},
		{"get", mustMarshal(tb, &wire.Request{ID: 3, Op: wire.OpGet, Governor: "g", State: "s", Consistency: "local"})},
		{"put", mustMarshal(tb, &wire.Request{ID: 4, Op: wire.OpPut, Governor: "g", State: "s", Value: v, IfVersion: u64(1), Actor: "a", Reason: "r"})},
		{"put-if-absent", mustMarshal(tb, &wire.Request{ID: 5, Op: wire.OpPut, Governor: "g", State: "n", Value: v, IfAbsent: true})},
		{"delete", mustMarshal(tb, &wire.Request{ID: 6, Op: wire.OpDelete, Governor: "g", State: "s", IfVersion: u64(1)})},
		{"batch-get", mustMarshal(tb, &wire.Request{ID: 7, Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "s"}, {Governor: "g", State: "x"}}})},
		{"batch-put", mustMarshal(tb, &wire.Request{ID: 8, Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "a", Value: v}, {Governor: "g", State: "s", Delete: true}}})},
		{"list", mustMarshal(tb, &wire.Request{ID: 9, Op: wire.OpList, Governor: "g", Prefix: "s", Limit: 5, Cursor: "a"})},
		{"stats", mustMarshal(tb, &wire.Request{ID: 10, Op: wire.OpStats})},
		{"hello-again", mustMarshal(tb, &wire.Request{ID: 11, Op: wire.OpHello, Versions: []uint32{1}})},
		{"bad-name-slash", omap(tb, "id", 12, "op", "put", "governor", "g", "state", "a/b", "value", v)},
		{"bad-name-reserved", omap(tb, "id", 13, "op", "put", "governor", "__x__", "state", "s", "value", v)},
		{"deep-value", omap(tb, "id", 14, "op", "put", "governor", "g", "state", "s", "value", nested(200))},
		{"wrong-type-id-last", omap(tb, "op", "put", "governor", 7, "state", "s", "value", v, "id", 15)},
		{"item-delete-with-value", omap(tb, "id", 16, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "s", Value: v, Delete: true}})},
		{"bad-consistency", omap(tb, "id", 17, "op", "put", "governor", "g", "state", "s", "value", v, "consistency", "strong")},
		{"unknown-op", omap(tb, "id", 18, "op", "nope")},
		{"invalid-byte", []byte{0xc1}},
		{"array-body", []byte{0x93, 0x01, 0x02, 0x03}},
		{"huge-map-header", []byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0xa2, 'i', 'd'}},
		{"watch", mustMarshal(tb, &wire.Request{ID: 19, Op: wire.OpWatch, Governor: "g", Prefix: "s"})},
		{"unwatch", mustMarshal(tb, &wire.Request{ID: 20, Op: wire.OpUnwatch, Watch: 19})},
		{"pending", mustMarshal(tb, &wire.Request{ID: 21, Op: wire.OpPending})},
		{"failed", mustMarshal(tb, &wire.Request{ID: 22, Op: wire.OpFailed, After: 3, Limit: 10})},
		{"get-bounded", mustMarshal(tb, &wire.Request{ID: 23, Op: wire.OpGet, Governor: "g", State: "s", Consistency: "bounded", MaxStalenessMS: 250})},
		{"put-sync", mustMarshal(tb, &wire.Request{ID: 24, Op: wire.OpPut, Governor: "g", State: "s", Value: v, Consistency: "sync", TimeoutMS: 100})},
		{"bad-staleness", omap(tb, "id", 25, "op", "get", "governor", "g", "state", "s", "consistency", "bounded", "max_staleness_ms", -1.5)},
	}
	var seeds []fuzzSeed
	for _, b := range bodies {
		seeds = append(seeds, fuzzSeed{"body-" + b.name, true, b.body})
	}
	hello := fuzzFrame(tb, mustMarshal(tb, &wire.Request{ID: 1, Op: wire.OpHello, Versions: []uint32{1}}))
	var session []byte
	session = append(session, hello...)
	for _, b := range bodies[:10] {
		session = append(session, fuzzFrame(tb, b.body)...)
	}
	then := func(b ...byte) []byte { return append(append([]byte{}, hello...), b...) }
	seeds = append(seeds,
		fuzzSeed{"stream-session", false, session},
		fuzzSeed{"stream-4gib-length", false, then(0xff, 0xff, 0xff, 0xff)},
		fuzzSeed{"stream-empty-frame", false, then(0, 0, 0, 0)},
		fuzzSeed{"stream-truncated", false, then(0, 0, 1, 0, 0x80)},
		fuzzSeed{"stream-get-before-hello", false, fuzzFrame(tb, bodies[1].body)},
		fuzzSeed{"stream-http", false, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
	)
	return seeds
}

func fuzzFrame(tb testing.TB, body []byte) []byte {
	return append(wire.AppendFrameHeader(nil, len(body)), body...)
}

// FuzzServeConn feeds arbitrary bytes to a server connection. framed wraps
// data as one request body after a hello; otherwise data is the whole
// stream. Invariants: no panic (recovered panics are reported through the
// server's hook too); the connection ends; every reply is a valid frame
// with a Response; no invalid write reaches the store; in framed mode the
// request gets exactly one reply, and if that reply is a request error
// (InvalidArgument, TooLarge, UnknownOp, ProtocolError) the store received
// no write at all.
func FuzzServeConn(f *testing.F) {
	// testdata/fuzz/FuzzServeConn holds these seeds and the inputs fuzzing found.
	hello := fuzzFrame(f, mustMarshal(f, &wire.Request{ID: fuzzHelloID, Op: wire.OpHello, Versions: []uint32{1}}))
	f.Fuzz(func(t *testing.T, framed bool, data []byte) {
		store := newFakeStore()
		store.put("g", "s", "v")
		store.put("g", "s2", 2)
		srv := NewServer(store, Options{MaxFrame: minMaxFrame, MaxValue: 4096, MaxInflight: 4})
		var panicked atomic.Value
		srv.onPanic = func(v any) { panicked.Store(fmt.Sprint(v)) }
		input := data
		if framed {
			input = append(append(append([]byte{}, hello...), wire.AppendFrameHeader(nil, len(data))...), data...)
		}

		cl, sv := socketPair(t)
		defer cl.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		c := newConn(ctx, srv, sv, 1)
		srv.mu.Lock()
		srv.conns[c] = struct{}{}
		srv.connWG.Add(1)
		srv.mu.Unlock()
		served := make(chan struct{})
		go func() {
			c.serve()
			close(served)
		}()
		go func() {
			cl.Write(input) // fails if the server closed first; that is fine
			cl.CloseWrite()
		}()

		deadline := time.Now().Add(testTimeout)
		cl.SetReadDeadline(deadline)
		br := bufio.NewReader(cl)
		dec := wire.NewCodec()
		var replies []wire.Response
		for {
			body, err := wire.ReadFrame(br, nil, 1<<20)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection did not end (input %x)", input)
				}
				t.Fatalf("reading replies: %v", err)
			}
			var r wire.Response
			if err := dec.Decode(body, &r); err != nil {
				t.Fatalf("reply %x does not decode: %v", body, err)
			}
			if r.Error != nil && (r.Record != nil || r.Records != nil || r.Hello != nil || r.Stats != nil) {
				t.Fatalf("error reply with data: %+v", r)
			}
			replies = append(replies, r)
		}
		select {
		case <-served:
		case <-time.After(time.Until(deadline)):
			t.Fatal("serve did not return")
		}
		if v := panicked.Load(); v != nil {
			t.Fatalf("panic: %v", v)
		}
		if v := store.violationsList(); len(v) != 0 {
			t.Fatalf("invalid writes reached the store: %v", v)
		}
		if !framed {
			return
		}
		if len(replies) != 2 || replies[0].ID != fuzzHelloID || replies[0].Hello == nil {
			t.Fatalf("want the hello reply and one more, got %+v", replies)
		}
		if e := replies[1].Error; e != nil {
			switch e.Code {
			case wire.CodeInvalidArgument, wire.CodeTooLarge, wire.CodeUnknownOp, wire.CodeProtocol:
				if n := store.writes.Load(); n != 0 {
					t.Fatalf("request refused with %s, yet the store received %d writes", e.Code, n)
				}
			}
		}
	})
}

// FuzzFrameReader checks that the server's in-place, resumable frame reader
// agrees with wire.ReadFrame on any stream: same bodies, same errors, also
// when the source delivers the stream in pieces with errWouldBlock between
// them (as a non-blocking socket does).
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0x80}, uint16(100), uint16(16), uint8(0))
	f.Add([]byte{0, 0, 0, 0}, uint16(100), uint16(16), uint8(1))
	f.Add([]byte{0, 0, 0, 40, 1, 2, 3}, uint16(100), uint16(16), uint8(3))
	f.Add(bytes.Repeat([]byte{0, 0, 0, 3, 1, 2, 3}, 10), uint16(3), uint16(16), uint8(5))
	f.Add(append([]byte{0, 0, 0, 30}, bytes.Repeat([]byte{7}, 30)...), uint16(100), uint16(16), uint8(7))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint16(100), uint16(16), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, max, bufSize uint16, chunk uint8) {
		want := bytes.NewReader(data)
		src := io.Reader(bytes.NewReader(data))
		if chunk > 0 {
			src = &choppyReader{data: data, chunk: int(chunk)}
		}
		fr := frameReader{br: bufio.NewReaderSize(src, int(bufSize)), max: int(max)}
		for {
			wb, werr := wire.ReadFrame(want, nil, int(max))
			gb, gerr := fr.next()
			for blocked := 0; gerr == errWouldBlock; blocked++ {
				if blocked > len(data)+1 {
					t.Fatal("errWouldBlock forever")
				}
				gb, gerr = fr.next()
			}
			if (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
				t.Fatalf("errors differ: wire %v, server %v", werr, gerr)
			}
			if werr != nil {
				return
			}
			if !bytes.Equal(wb, gb) {
				t.Fatalf("bodies differ: %x vs %x", wb, gb)
			}
		}
	})
}

// choppyReader hands out data at most chunk bytes at a time, with
// errWouldBlock before every piece, like a non-blocking socket that the peer
// writes in small pieces.
type choppyReader struct {
	data    []byte
	chunk   int
	blocked bool
}

func (r *choppyReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if !r.blocked {
		r.blocked = true
		return 0, errWouldBlock
	}
	r.blocked = false
	n := copy(p, r.data[:min(len(r.data), r.chunk)])
	r.data = r.data[n:]
	return n, nil
}

var updateCorpus = flag.Bool("update-corpus", false, "write the fuzz seed corpus files in testdata/fuzz")

// TestFuzzCorpus checks that testdata/fuzz/FuzzServeConn holds every seed
// of fuzzSeeds; -update-corpus writes them.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzServeConn")
	for _, s := range fuzzSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\nbool(%v)\n[]byte(%q)\n", s.framed, s.data)
		path := filepath.Join(dir, "seed-"+s.name)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("%s is missing or stale (%v): run go test ./sockapi -run TestFuzzCorpus -update-corpus", path, err)
		}
	}
}
