package wire_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// updateGolden rewrites testdata/golden from the cases below:
//
//	go test ./sockapi/wire -run Golden -update
var updateGolden = flag.Bool("update", false, "rewrite the golden frames in testdata/golden")

// goldenDir holds one file per frame: the whole frame (header and body) as
// annotated hex. Everything after '#' on a line is a comment; the remaining
// hex digits are the frame's bytes.
const goldenDir = "testdata/golden"

// protocolDoc is the protocol specification; its worked example quotes some
// golden files verbatim.
const protocolDoc = "../../docs/protocol.md"

// docExample lists the golden files that docs/protocol.md quotes in its worked
// example, in the order they appear there.
var docExample = []string{
	"req_hello", "resp_hello",
	"req_put", "resp_put",
	"req_get", "resp_get",
}

// Fixed values shared by the golden frames.
const (
	goldenTime = int64(1767225600000000000) // 2026-01-01T00:00:00Z in Unix nanoseconds
	goldenNode = "node-a"
)

func u64(v uint64) *uint64 { return &v }

// mustMarshal encodes an app value the way an app would send it.
func mustMarshal(v any) wire.Raw {
	b, err := wire.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// cartValue is an app document with a fixed field order, so its encoding is
// stable (Go maps are encoded in random order).
type cartValue struct {
	Items int    `codec:"items"`
	Note  string `codec:"note"`
}

type goldenCase struct {
	name string
	want any // *wire.Request or *wire.Response
}

func goldenCases() []goldenCase {
	cart := mustMarshal(cartValue{Items: 3, Note: "gift"})
	putRecord := &wire.Record{
		Governor:  "shop",
		State:     "cart-42",
		Version:   1,
		UpdatedAt: goldenTime,
		Change:    wire.Change{Actor: "web", Reason: "add item", Time: goldenTime},
		Origin:    goldenNode,
		FromCache: true,
		Pending:   true,
	}
	getRecord := *putRecord
	getRecord.Value = cart

	return []goldenCase{
		// Requests, one per op.
		{"req_hello", &wire.Request{ID: 1, Op: wire.OpHello, Versions: []uint32{1}, Client: "example/1.0"}},
		{"req_ping", &wire.Request{ID: 7, Op: wire.OpPing}},
		{"req_put", &wire.Request{
			ID: 2, Op: wire.OpPut, Governor: "shop", State: "cart-42", Value: cart,
			Actor: "web", Reason: "add item",
		}},
		{"req_put_if_version", &wire.Request{
			ID: 8, Op: wire.OpPut, Governor: "shop", State: "cart-42", Value: mustMarshal(true),
			IfVersion: u64(1), Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		}},
		{"req_put_if_absent", &wire.Request{
			ID: 9, Op: wire.OpPut, Governor: "shop", State: "cart-43", Value: mustMarshal([]byte{0x00, 0xff}),
			IfAbsent: true,
		}},
		{"req_get", &wire.Request{ID: 3, Op: wire.OpGet, Governor: "shop", State: "cart-42"}},
		{"req_get_local", &wire.Request{ID: 10, Op: wire.OpGet, Governor: "shop", State: "cart-42", Consistency: "local"}},
		{"req_delete", &wire.Request{
			ID: 11, Op: wire.OpDelete, Governor: "shop", State: "cart-42", IfVersion: u64(2),
			Actor: "cron", Reason: "expired",
		}},
		{"req_batch_get", &wire.Request{ID: 12, Op: wire.OpBatchGet, Keys: []wire.Key{
			{Governor: "shop", State: "cart-42"},
			{Governor: "shop", State: "cart-99"},
		}}},
		{"req_batch_put", &wire.Request{ID: 13, Op: wire.OpBatchPut, Actor: "web", Items: []wire.Item{
			{Governor: "shop", State: "cart-44", Value: mustMarshal(1), IfVersion: u64(0)},
			{Governor: "shop", State: "cart-42", Delete: true},
			{Governor: "shop", State: "cart-45", Value: mustMarshal("x"), IfAbsent: true},
		}}},
		{"req_list", &wire.Request{ID: 14, Op: wire.OpList, Governor: "shop", Prefix: "cart-", Limit: 2, Cursor: "cart-42"}},
		{"req_stats", &wire.Request{ID: 15, Op: wire.OpStats}},

		// Replies.
		{"resp_hello", &wire.Response{ID: 1, Hello: &wire.Hello{
			Version: 1, Server: "tai-sidecar/0.1.0", NodeID: goldenNode,
			MaxFrame: wire.DefaultMaxFrame, MaxValue: wire.MaxValueSize, MaxBatch: wire.MaxBatch,
			IdleTimeoutMS: 300000,
		}}},
		{"resp_ping", &wire.Response{ID: 7}},
		{"resp_put", &wire.Response{ID: 2, Record: putRecord}},
		{"resp_get", &wire.Response{ID: 3, Record: &getRecord}},
		{"resp_batch_get", &wire.Response{ID: 12, Records: []*wire.Record{&getRecord, nil}}},
		{"resp_list", &wire.Response{ID: 14, Records: []*wire.Record{&getRecord}, Cursor: "cart-42"}},
		{"resp_stats", &wire.Response{ID: 15, Stats: &wire.Stats{
			NodeID: goldenNode, Origin: goldenNode + "~k3v7q2m9", Server: "tai-sidecar/0.1.0", UptimeSeconds: 1.5, Connections: 1,
			// One entry per map: maps are encoded in no fixed order.
			Requests: map[string]uint64{"get": 2}, Errors: map[string]uint64{"NotFound": 1},
			States: 1, JournalDepth: 1, Commits: 1, CommitWrites: 1,
		}}},
		{"resp_error_not_found", &wire.Response{ID: 3, Error: &wire.Error{
			Code: wire.CodeNotFound, Message: "state not found", Governor: "shop", State: "cart-99",
		}}},
		{"resp_error_version_conflict", &wire.Response{ID: 8, Error: &wire.Error{
			Code: wire.CodeVersionConflict, Message: "version conflict",
			Governor: "shop", State: "cart-42", Expected: u64(1), Actual: u64(2),
		}}},
		{"resp_error_too_large", &wire.Response{ID: 9, Error: &wire.Error{
			Code: wire.CodeTooLarge, Message: "value is 1000001 bytes", Field: "value", Limit: wire.MaxValueSize,
		}}},
		{"resp_error_invalid_argument", &wire.Response{ID: 13, Error: &wire.Error{
			Code: wire.CodeInvalidArgument, Message: "a delete carries no value", Field: "items[1].value",
		}}},
		{"resp_error_frame_too_large", &wire.Response{ID: 0, Error: &wire.Error{
			Code: wire.CodeTooLarge, Message: "frame too large: 4294967295 bytes announced, limit 4194304",
			Limit: wire.DefaultMaxFrame,
		}}},
		{"resp_error_empty_frame", &wire.Response{ID: 0, Error: &wire.Error{
			Code: wire.CodeProtocol, Message: "empty frame",
		}}},

		// Locks.
		{"req_lock_acquire", &wire.Request{
			ID: 16, Op: wire.OpLockAcquire, Resource: "nightly-report", LeaseMS: 30000, WaitMS: 5000, Bind: true,
		}},
		{"resp_lock_acquire", &wire.Response{ID: 16, Lock: &wire.Lock{
			Resource: "nightly-report", Holder: goldenNode + ".k3v7q2m9x1ab.4", Token: 7, LeaseMS: 30000,
			Expires: goldenTime + 30e9, Deadline: goldenTime + 30e9 - 4e6, Bound: true,
		}}},
		{"resp_error_lock_held", &wire.Response{ID: 16, Error: &wire.Error{
			Code: wire.CodeLockHeld, Retryable: true, Waited: true,
			Message: `lock "nightly-report" is held by node-b.m2x8c4r7t5pq.9 with token 6 for 12s more: the wait ended`,
			Lock: &wire.Lock{Resource: "nightly-report", Holder: "node-b.m2x8c4r7t5pq.9", Token: 6, Held: true,
				Expires: goldenTime + 12e9, RemainingMS: 12000},
		}}},

		// Conflicts decided by an app.
		{"req_resolver_register", &wire.Request{ID: 17, Op: wire.OpResolverRegister, Governor: "shop", DeadlineMS: 2000}},
		{"resp_resolver_register", &wire.Response{ID: 17, Resolver: &wire.Resolver{Governor: "shop", DeadlineMS: 2000}}},
		{"push_conflict", &wire.Response{ID: 17, Push: true, Conflict: &wire.AppConflict{
			ID: 1, Governor: "shop", State: "cart-42", DeadlineMS: 1998,
			// Both sidecars created the state: the base is version 0.
			Local: wire.ConflictSide{Value: mustMarshal(cartValue{Items: 1, Note: "gift"}), Version: 1, UpdatedAt: goldenTime,
				Origin: "node-b", OpID: "node-b-7", Clock: wire.Clock{Lamport: 1, HLC: 115813899878400001, Vector: map[string]uint64{"node-b": 1}}},
			Remote: wire.ConflictSide{Value: mustMarshal(cartValue{Items: 2, Note: "gift"}), Version: 1, UpdatedAt: goldenTime,
				Origin: goldenNode, OpID: "node-a-9", Clock: wire.Clock{Lamport: 1, HLC: 115813899878400000, Vector: map[string]uint64{"node-a": 1}}},
			Base: &wire.ConflictBase{Version: 0},
		}}},
		{"req_resolve", &wire.Request{ID: 18, Op: wire.OpResolve, ConflictID: 1, Choice: wire.ChoiceValue,
			Value: mustMarshal(cartValue{Items: 3, Note: "gift"}), Reason: "both added items"}},
	}
}

// TestGolden checks every golden frame both ways: the file decodes to the
// expected message, and the message encodes to the file's bytes.
func TestGolden(t *testing.T) {
	cases := goldenCases()
	if *updateGolden {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(goldenDir, tc.name+".hex")
			frame, err := wire.NewCodec().AppendFrame(nil, tc.want)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if *updateGolden {
				text, err := annotateFrame(frame)
				if err != nil {
					t.Fatalf("annotate: %v", err)
				}
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}

			text, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			golden, err := parseHex(string(text))
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}

			// Decode: header, then body into a fresh value of the same type.
			body, err := wire.ReadFrame(bytes.NewReader(golden), nil, wire.DefaultMaxFrame)
			if err != nil {
				t.Fatalf("read frame: %v", err)
			}
			if n := wire.HeaderSize + len(body); n != len(golden) {
				t.Fatalf("file holds %d bytes after a frame of %d", len(golden)-n, n)
			}
			got := reflect.New(reflect.TypeOf(tc.want).Elem()).Interface()
			if err := wire.NewCodec().Decode(body, got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded\n  %#v\nwant\n  %#v", got, tc.want)
			}

			// Encode: the expected value gives exactly the golden bytes.
			if !bytes.Equal(frame, golden) {
				t.Errorf("encoded\n  %x\ngolden\n  %x\n(run with -update if the change is intended)", frame, golden)
			}

			// The annotation is derived from the bytes: keep it in step.
			want, err := annotateFrame(golden)
			if err != nil {
				t.Fatalf("annotate: %v", err)
			}
			if string(text) != want {
				t.Errorf("%s: annotation out of date; run with -update. Want:\n%s", path, want)
			}
		})
	}
}

// TestGoldenCoverage makes sure every op has a golden request and that no
// stray file sits in testdata/golden.
func TestGoldenCoverage(t *testing.T) {
	names := map[string]bool{}
	ops := map[string]bool{}
	for _, tc := range goldenCases() {
		names[tc.name+".hex"] = true
		if r, ok := tc.want.(*wire.Request); ok {
			ops[r.Op] = true
		}
	}
	for _, op := range []string{
		wire.OpHello, wire.OpPing, wire.OpGet, wire.OpPut, wire.OpDelete,
		wire.OpBatchGet, wire.OpBatchPut, wire.OpList, wire.OpStats,
	} {
		if !ops[op] {
			t.Errorf("no golden request for op %q", op)
		}
	}
	files, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !names[f.Name()] {
			t.Errorf("%s/%s belongs to no golden case", goldenDir, f.Name())
		}
	}
}

// TestGoldenDocExample checks that the worked example in docs/protocol.md
// quotes the golden frames exactly, so the document cannot drift from the
// bytes the code produces.
func TestGoldenDocExample(t *testing.T) {
	doc, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	last := -1
	for _, name := range docExample {
		text, err := os.ReadFile(filepath.Join(goldenDir, name+".hex"))
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(doc, text)
		if i < 0 {
			t.Errorf("%s does not quote %s.hex verbatim; its text is:\n%s", protocolDoc, name, text)
			continue
		}
		if i < last {
			t.Errorf("%s: %s.hex is quoted out of order", protocolDoc, name)
		}
		last = i
	}
}

// TestGoldenHexParse covers the golden file syntax itself.
func TestGoldenHexParse(t *testing.T) {
	tests := []struct {
		in      string
		want    []byte
		wantErr bool
	}{
		{in: "", want: []byte{}},
		{in: "# only a comment\n", want: []byte{}},
		{in: "00 01  # a b\n  ff\n", want: []byte{0x00, 0x01, 0xff}},
		{in: "0g", wantErr: true},
		{in: "001", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := parseHex(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseHex(%q) = %x, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("parseHex(%q) = %x, want %x", tt.in, got, tt.want)
			}
		})
	}
}

// parseHex reads an annotated hex file: '#' starts a comment, whitespace is
// ignored, every other character must be a hex digit.
func parseHex(s string) ([]byte, error) {
	var digits strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	return hex.DecodeString(digits.String())
}

// annotateFrame renders a frame as annotated hex: one line per msgpack token
// (a map key and a scalar value share a line), indented by nesting, with a
// comment saying what the bytes mean.
func annotateFrame(frame []byte) (string, error) {
	if len(frame) < wire.HeaderSize {
		return "", fmt.Errorf("frame of %d bytes has no header", len(frame))
	}
	n := binary.BigEndian.Uint32(frame)
	if int(n) != len(frame)-wire.HeaderSize {
		return "", fmt.Errorf("header says %d bytes, body has %d", n, len(frame)-wire.HeaderSize)
	}
	a := &annotator{b: frame[wire.HeaderSize:]}
	a.line(0, frame[:wire.HeaderSize], fmt.Sprintf("frame header: body is %d bytes", n))
	if err := a.value(0, nil, ""); err != nil {
		return "", err
	}
	if a.pos != len(a.b) {
		return "", fmt.Errorf("%d trailing bytes after the body", len(a.b)-a.pos)
	}
	return a.out.String(), nil
}

type annotator struct {
	b   []byte
	pos int
	out strings.Builder
}

// Layout of an annotated line.
const (
	annotateBytesPerLine = 16
	annotateCommentCol   = 56
)

// line writes raw at the given depth, wrapping long byte runs; the comment
// goes on the first line.
func (a *annotator) line(depth int, raw []byte, comment string) {
	indent := strings.Repeat("  ", depth)
	for first := true; first || len(raw) > 0; first = false {
		chunk := raw[:min(len(raw), annotateBytesPerLine)]
		raw = raw[len(chunk):]
		h := make([]string, len(chunk))
		for i, c := range chunk {
			h[i] = fmt.Sprintf("%02x", c)
		}
		s := indent + strings.Join(h, " ")
		if first && comment != "" {
			s += strings.Repeat(" ", max(1, annotateCommentCol-len(s))) + "# " + comment
		}
		a.out.WriteString(strings.TrimRight(s, " ") + "\n")
	}
}

// value annotates one msgpack object. prefix holds the bytes of the map key
// that precedes it (written on the same line when the value is a scalar) and
// label the key's rendering.
func (a *annotator) value(depth int, prefix []byte, label string) error {
	start := a.pos
	kind, n, desc, err := a.token()
	if err != nil {
		return err
	}
	head := append(append([]byte(nil), prefix...), a.b[start:a.pos]...)
	if label != "" {
		label += ": "
	}
	switch kind {
	case "map":
		a.line(depth, head, fmt.Sprintf("%smap, %s", label, plural(n, "entry", "entries")))
		for range n {
			kstart := a.pos
			kk, _, kdesc, err := a.token()
			if err != nil {
				return err
			}
			if kk == "map" || kk == "array" {
				return fmt.Errorf("offset %d: container used as a map key", kstart)
			}
			if err := a.value(depth+1, a.b[kstart:a.pos], kdesc); err != nil {
				return err
			}
		}
	case "array":
		a.line(depth, head, fmt.Sprintf("%sarray, %s", label, plural(n, "item", "items")))
		for range n {
			if err := a.value(depth+1, nil, ""); err != nil {
				return err
			}
		}
	default:
		a.line(depth, head, label+desc)
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// token reads one msgpack header and, for scalars, the payload. It returns the
// kind ("map", "array" or "scalar"), the entry count of a container and a
// description of a scalar.
func (a *annotator) token() (kind string, n int, desc string, err error) {
	need := func(k int) ([]byte, error) {
		if a.pos+k > len(a.b) {
			return nil, fmt.Errorf("offset %d: need %d bytes, have %d", a.pos, k, len(a.b)-a.pos)
		}
		p := a.b[a.pos : a.pos+k]
		a.pos += k
		return p, nil
	}
	uintN := func(k int) (uint64, error) {
		p, err := need(k)
		if err != nil {
			return 0, err
		}
		var v uint64
		for _, c := range p {
			v = v<<8 | uint64(c)
		}
		return v, nil
	}
	payload := func(isStr bool, k int) (string, error) {
		p, err := need(k)
		if err != nil {
			return "", err
		}
		if isStr {
			return strconv.Quote(string(p)), nil
		}
		return fmt.Sprintf("bin, %d bytes", len(p)), nil
	}
	p, err := need(1)
	if err != nil {
		return "", 0, "", err
	}
	b := p[0]
	var v uint64
	switch {
	case b <= 0x7f:
		return "scalar", 0, strconv.Itoa(int(b)), nil
	case b >= 0xe0:
		return "scalar", 0, strconv.Itoa(int(int8(b))), nil
	case b&0xf0 == 0x80:
		return "map", int(b & 0x0f), "", nil
	case b&0xf0 == 0x90:
		return "array", int(b & 0x0f), "", nil
	case b&0xe0 == 0xa0:
		desc, err = payload(true, int(b&0x1f))
		return "scalar", 0, desc, err
	}
	switch b {
	case 0xc0:
		return "scalar", 0, "nil", nil
	case 0xc2:
		return "scalar", 0, "false", nil
	case 0xc3:
		return "scalar", 0, "true", nil
	case 0xcc, 0xcd, 0xce, 0xcf:
		v, err = uintN(1 << (b - 0xcc))
		return "scalar", 0, fmt.Sprintf("%d (uint%d)", v, 8<<(b-0xcc)), err
	case 0xd0, 0xd1, 0xd2, 0xd3:
		size := 1 << (b - 0xd0)
		v, err = uintN(size)
		s := int64(v<<(64-8*size)) >> (64 - 8*size) // sign-extend
		return "scalar", 0, fmt.Sprintf("%d (int%d)", s, 8*size), err
	case 0xca:
		v, err = uintN(4)
		return "scalar", 0, fmt.Sprintf("%g (float32)", math.Float32frombits(uint32(v))), err
	case 0xcb:
		v, err = uintN(8)
		return "scalar", 0, fmt.Sprintf("%g (float64)", math.Float64frombits(v)), err
	case 0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6:
		isStr := b >= 0xd9
		base := byte(0xc4)
		if isStr {
			base = 0xd9
		}
		if v, err = uintN(1 << (b - base)); err != nil {
			return "", 0, "", err
		}
		desc, err = payload(isStr, int(v))
		return "scalar", 0, desc, err
	case 0xdc, 0xdd:
		v, err = uintN(2 << (b - 0xdc))
		return "array", int(v), "", err
	case 0xde, 0xdf:
		v, err = uintN(2 << (b - 0xde))
		return "map", int(v), "", err
	}
	return "", 0, "", fmt.Errorf("offset %d: type byte %#02x not used in golden frames", a.pos-1, b)
}
