package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// fuzzFrame returns body with its header.
func fuzzFrame(body []byte) []byte {
	return append(wire.AppendFrameHeader(nil, len(body)), body...)
}

func fuzzMarshal(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// frameSeed is one seed input of FuzzReadFrame.
type frameSeed struct {
	name string
	data []byte
	max  uint32
}

// fuzzFrameSeeds are streams of frames: valid requests of every op, and
// broken framing.
func fuzzFrameSeeds(tb testing.TB) []frameSeed {
	var session []byte
	for _, b := range fuzzRequestSeeds(tb)[:9] {
		session = append(session, fuzzFrame(b.body)...)
	}
	return []frameSeed{
		{"empty-stream", []byte{}, 1024},
		{"one-frame", fuzzFrame([]byte{0x80}), 1024},
		{"two-frames-at-cap", append(fuzzFrame([]byte("abc")), fuzzFrame([]byte("defg"))...), 4},
		{"session", session, 1024},
		{"4gib-length", []byte{0xff, 0xff, 0xff, 0xff}, wire.DefaultMaxFrame},
		{"over-cap", append([]byte{0, 0, 4, 1}, make([]byte, 1025)...), 1024},
		{"empty-frame", []byte{0, 0, 0, 0}, 1024},
		{"truncated-body", []byte{0, 0, 0, 9, 1, 2}, 1024},
		{"truncated-header", []byte{0, 0}, 1024},
	}
}

// FuzzReadFrame reads frames from arbitrary bytes with an arbitrary cap.
// Invariants: no panic; every body is non-empty and within the cap; the
// bodies read, re-framed, are exactly the bytes consumed; a stream ends with
// io.EOF only at a frame boundary; errors are the documented ones.
func FuzzReadFrame(f *testing.F) {
	// testdata/fuzz/FuzzReadFrame holds the seeds of fuzzFrameSeeds.
	f.Fuzz(func(t *testing.T, data []byte, max uint32) {
		max %= 1 << 20 // keep allocations small; the cap logic is the same
		r := bytes.NewReader(data)
		var buf, consumed []byte
		for {
			before := r.Len()
			body, err := wire.ReadFrame(r, buf, int(max))
			if err != nil {
				switch {
				case errors.Is(err, io.EOF):
					if before != 0 {
						t.Fatalf("io.EOF with %d bytes left", before)
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if before == 0 {
						t.Fatal("io.ErrUnexpectedEOF at a frame boundary")
					}
				case errors.Is(err, wire.ErrEmptyFrame):
					if binary.BigEndian.Uint32(data[len(consumed):]) != 0 {
						t.Fatal("ErrEmptyFrame for a non-empty frame")
					}
				case errors.Is(err, wire.ErrFrameTooLarge):
					if n := binary.BigEndian.Uint32(data[len(consumed):]); n <= max {
						t.Fatalf("ErrFrameTooLarge for %d bytes, cap %d", n, max)
					}
				default:
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(body) == 0 || len(body) > int(max) {
				t.Fatalf("body of %d bytes, cap %d", len(body), max)
			}
			consumed = append(consumed, fuzzFrame(body)...)
			if !bytes.Equal(consumed, data[:len(consumed)]) {
				t.Fatal("bodies do not match the input")
			}
			buf = body
		}
	})
}

// requestSeed is one seed input of FuzzDecodeRequest.
type requestSeed struct {
	name string
	body []byte
}

// fuzzRequestSeeds are valid request bodies, one per op (the first nine),
// plus hostile ones.
func fuzzRequestSeeds(tb testing.TB) []requestSeed {
	// A struct, not a map: maps encode in random order, and the seed files
	// must not change from run to run.
	v := fuzzMarshal(tb, struct {
		A int   `codec:"a"`
		B []any `codec:"b"`
	}{1, []any{"x", 2.5, nil, true}})
	reqs := []wire.Request{
		{ID: 1, Op: wire.OpHello, Versions: []uint32{1}, Client: "fuzz/1"},
		{ID: 2, Op: wire.OpPing},
		{ID: 3, Op: wire.OpGet, Governor: "g", State: "s", Consistency: "local"},
		{ID: 4, Op: wire.OpPut, Governor: "g", State: "s", Value: v, IfVersion: new(uint64), Actor: "a", Reason: "r"},
		{ID: 5, Op: wire.OpDelete, Governor: "g", State: "s", IfAbsent: true},
		{ID: 6, Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "s"}, {Governor: "g", State: "t"}}},
		{ID: 7, Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "s", Value: v}, {Governor: "g", State: "t", Delete: true}}},
		{ID: 8, Op: wire.OpList, Governor: "g", Prefix: "p", Limit: 10, Cursor: "c"},
		{ID: 9, Op: wire.OpStats, Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
	}
	var seeds []requestSeed
	for _, r := range reqs {
		seeds = append(seeds, requestSeed{strings.ReplaceAll(r.Op, "_", "-"), fuzzMarshal(tb, &r)})
	}
	return append(seeds,
		requestSeed{"invalid-byte", []byte{0xc1}},
		requestSeed{"id-string", []byte{0x81, 0xa2, 'i', 'd', 0xa1, 'x'}},
		requestSeed{"op-bin", []byte{0x82, 0xa2, 'i', 'd', 0x01, 0xa2, 'o', 'p', 0xc4, 0}},
		requestSeed{"deep", append(bytes.Repeat([]byte{0x91}, 100), 0x01)},
		requestSeed{"huge-map-header", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		requestSeed{"array-body", []byte{0x92, 0x01, 0xa3, 'g', 'e', 't'}},
	)
}

// FuzzDecodeRequest decodes arbitrary bodies into a Request with one reused
// Codec, as a connection does. Invariants: no panic; a failed decode leaves
// the codec usable (the next valid body decodes); a decoded request
// re-encodes and decodes to the same request.
func FuzzDecodeRequest(f *testing.F) {
	// testdata/fuzz/FuzzDecodeRequest holds the seeds of fuzzRequestSeeds.
	valid := fuzzMarshal(f, &wire.Request{ID: 42, Op: wire.OpGet, Governor: "g", State: "s"})
	c := wire.NewCodec()
	f.Fuzz(func(t *testing.T, body []byte) {
		var req wire.Request
		err := c.Decode(body, &req)
		var after wire.Request
		if err := c.Decode(valid, &after); err != nil || after.ID != 42 || after.State != "s" {
			t.Fatalf("codec unusable after decoding %x: %v", body, err)
		}
		if err != nil {
			return
		}
		re, err := wire.Marshal(&req)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var again wire.Request
		if err := wire.Unmarshal(re, &again); err != nil {
			t.Fatalf("decode re-encoded request: %v", err)
		}
		if again.ID != req.ID || again.Op != req.Op || again.Governor != req.Governor || again.State != req.State ||
			!bytes.Equal(again.Value, req.Value) || len(again.Keys) != len(req.Keys) || len(again.Items) != len(req.Items) ||
			again.Limit != req.Limit || again.IfAbsent != req.IfAbsent || (again.IfVersion == nil) != (req.IfVersion == nil) {
			t.Fatalf("round trip changed the request:\n%+v\n%+v", req, again)
		}
		if len(req.Value) > 0 {
			// A Raw value is exactly one complete msgpack object. (Not
			// decoded into an any: app values are opaque, and the codec
			// refuses some valid documents there, such as duplicate keys.)
			var v wire.Raw
			if err := wire.Unmarshal(req.Value, &v); err != nil || !bytes.Equal(v, req.Value) {
				t.Fatalf("value %x is not one msgpack object: %v", []byte(req.Value), err)
			}
		}
	})
}

var updateCorpus = flag.Bool("update-corpus", false, "write the fuzz seed corpus files in testdata/fuzz")

// TestFuzzCorpus checks that testdata/fuzz holds every seed of the fuzz
// targets; -update-corpus writes them.
func TestFuzzCorpus(t *testing.T) {
	files := map[string]string{}
	for _, s := range fuzzFrameSeeds(t) {
		files[filepath.Join("FuzzReadFrame", "seed-"+s.name)] = fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\n", s.data, s.max)
	}
	for _, s := range fuzzRequestSeeds(t) {
		files[filepath.Join("FuzzDecodeRequest", "seed-"+s.name)] = fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.body)
	}
	for name, content := range files {
		path := filepath.Join("testdata", "fuzz", name)
		if *updateCorpus {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("%s is missing or stale (%v): run go test ./sockapi/wire -run TestFuzzCorpus -update-corpus", path, err)
		}
	}
}
