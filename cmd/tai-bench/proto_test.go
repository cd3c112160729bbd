package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// decodeFrame splits one frame off b and decodes its body as a request.
func decodeFrame(t *testing.T, b []byte) (wire.Request, []byte) {
	t.Helper()
	body, err := wire.ReadFrame(bytes.NewReader(b), nil, wire.DefaultMaxFrame)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var req wire.Request
	if err := wire.Unmarshal(body, &req); err != nil {
		t.Fatalf("decode request: %v", err)
	}
	return req, b[wire.HeaderSize+len(body):]
}

func TestTemplatesEncodeTheRequest(t *testing.T) {
	c := wire.NewCodec()
	value := makeValue(256, 9)
	ids := []uint64{idBase | 1<<16, idBase | 12345<<16 | 7, idBase | (1<<46-1)<<16 | 0xffff}
	keys := []uint64{0, 1, 42, 9_999_999_999}
	for op := range numOps {
		t.Run(op.String(), func(t *testing.T) {
			tmpl, err := buildTemplate(c, op, "gov-1", value)
			if err != nil {
				t.Fatal(err)
			}
			// Several requests in one buffer, as a pipelined batch.
			var buf []byte
			for i, id := range ids {
				buf = tmpl.appendTo(buf, id, keys[i])
			}
			rest := buf
			for i, id := range ids {
				var req wire.Request
				req, rest = decodeFrame(t, rest)
				want := wire.Request{ID: id, Op: op.String()}
				if op != opPing {
					want.Governor, want.State = "gov-1", keyName(keys[i])
				}
				if req.ID != want.ID || req.Op != want.Op || req.Governor != want.Governor || req.State != want.State {
					t.Fatalf("request %d = %+v, want %+v", i, req, want)
				}
				if op == opPut && !bytes.Equal(req.Value, value) {
					t.Fatalf("put value = %x, want %x", req.Value, value)
				}
				if op != opPut && req.Value != nil {
					t.Fatalf("%s carries a value", op)
				}
			}
			if len(rest) != 0 {
				t.Fatalf("%d bytes left over", len(rest))
			}
		})
	}
}

func TestAppendToDoesNotAllocate(t *testing.T) {
	tmpl, err := buildTemplate(wire.NewCodec(), opPut, "g", makeValue(256, 1))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 4096)
	id := idBase
	if n := testing.AllocsPerRun(1000, func() { buf = tmpl.appendTo(buf[:0], id, id&0xfff); id += 1 << 16 }); n != 0 {
		t.Fatalf("appendTo allocates %v times", n)
	}
}

func TestKeyName(t *testing.T) {
	for _, tt := range []struct {
		i    uint64
		want string
	}{{0, "k0000000000"}, {7, "k0000000007"}, {1234567890, "k1234567890"}, {maxKeys - 1, "k9999999999"}} {
		if got := keyName(tt.i); got != tt.want {
			t.Errorf("keyName(%d) = %q, want %q", tt.i, got, tt.want)
		}
		if err := wire.ValidateName("state", keyName(tt.i)); err != nil {
			t.Errorf("keyName(%d) is not a valid name: %v", tt.i, err)
		}
	}
}

func TestMakeValue(t *testing.T) {
	for _, size := range []int{2, 3, 100, 256, 257, 258, 259, 1000, 65537, 65538, 65539, 100_000, wire.MaxValueSize} {
		v := makeValue(size, 5)
		if len(v) != size {
			t.Fatalf("makeValue(%d) is %d bytes", size, len(v))
		}
		// A msgpack bin whose length header covers exactly the rest.
		var hdr, n int
		switch v[0] {
		case 0xc4:
			hdr, n = 2, int(v[1])
		case 0xc5:
			hdr, n = 3, int(binary.BigEndian.Uint16(v[1:]))
		case 0xc6:
			hdr, n = 5, int(binary.BigEndian.Uint32(v[1:]))
		default:
			t.Fatalf("makeValue(%d) starts with %#x, not a bin header", size, v[0])
		}
		if hdr+n != size {
			t.Fatalf("makeValue(%d): header of %d bytes announces %d", size, hdr, n)
		}
		if size <= 100_000 {
			var payload []byte
			if err := wire.Unmarshal(v, &payload); err != nil || len(payload) != n {
				t.Fatalf("makeValue(%d) decodes to %d bytes, %v", size, len(payload), err)
			}
		}
	}
	if bytes.Equal(makeValue(300, 1), makeValue(300, 2)) || !bytes.Equal(makeValue(300, 1), makeValue(300, 1)) {
		t.Fatal("makeValue is not a function of its seed")
	}
}

func TestDecodeReply(t *testing.T) {
	c := wire.NewCodec()
	value := makeValue(256, 3)
	five := uint64(5)
	tests := []struct {
		name     string
		resp     any
		wantID   uint64
		wantCode wire.Code
		fast     bool // peekReply handles it without a full decode
	}{
		{"small id", wire.Response{ID: 7}, 7, "", true},
		{"uint8 id", wire.Response{ID: 200}, 200, "", true},
		{"uint16 id", wire.Response{ID: 60000}, 60000, "", true},
		{"uint32 id", wire.Response{ID: 1 << 31}, 1 << 31, "", true},
		{"uint64 id", wire.Response{ID: idBase | 99<<16 | 3}, idBase | 99<<16 | 3, "", true},
		{"get reply", wire.Response{ID: idBase | 1, Record: &wire.Record{Governor: "g", State: "s", Value: value, Version: 3}}, idBase | 1, "", true},
		{"put reply", wire.Response{ID: idBase | 2, Record: &wire.Record{Governor: "g", State: "s", Version: 4}}, idBase | 2, "", true},
		{"not found", wire.Response{ID: idBase | 3, Error: wire.Errorf(wire.CodeNotFound, "no state g/s")}, idBase | 3, wire.CodeNotFound, false},
		{"conflict", wire.Response{ID: 4, Error: &wire.Error{Code: wire.CodeVersionConflict, Expected: &five, Actual: &five}}, 4, wire.CodeVersionConflict, false},
		// Another encoder's field order: error before id.
		{"error first", map[string]any{"error": map[string]any{"code": "Internal"}, "id": uint64(9)}, 9, wire.CodeInternal, false},
		// A value that contains the bytes of the error key goes the slow way.
		{"error key in a value", wire.Response{ID: 10, Record: &wire.Record{Value: []byte("\xa5error")}}, 10, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := wire.Marshal(tt.resp)
			if err != nil {
				t.Fatal(err)
			}
			var r reply
			r.Error = &wire.Error{Code: "stale"} // must be cleared
			if err := decodeReply(c, body, &r); err != nil {
				t.Fatal(err)
			}
			if r.ID != tt.wantID {
				t.Fatalf("id = %#x, want %#x", r.ID, tt.wantID)
			}
			var code wire.Code
			if r.Error != nil {
				code = r.Error.Code
			}
			if code != tt.wantCode {
				t.Fatalf("error code = %q, want %q", code, tt.wantCode)
			}
			_, hasErr, ok := peekReply(body)
			if tt.fast && !ok {
				t.Fatalf("peekReply did not recognise the codec's encoding")
			}
			if tt.wantCode != "" && ok && !hasErr {
				t.Fatalf("peekReply missed the error")
			}
		})
	}
}

func TestDecodeReplyRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{{0xc1}, {0x81, 0xa2, 'i', 'd', 0xa1, 'x'}, {0x81, 0xa2, 'i'}, {0xa3, 'a', 'b', 'c'}} {
		var r reply
		if err := decodeReply(wire.NewCodec(), b, &r); !errors.Is(err, errBadReply) {
			t.Errorf("decodeReply(%x) = %v, want errBadReply", b, err)
		}
	}
}

func FuzzDecodeReply(f *testing.F) {
	for _, resp := range []wire.Response{
		{ID: 1},
		{ID: idBase | 5, Record: &wire.Record{Governor: "g", State: "s", Value: makeValue(20, 1)}},
		{ID: 2, Error: wire.Errorf(wire.CodeTooLarge, "big")},
	} {
		b, err := wire.Marshal(resp)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, hasErr, ok := peekReply(b)
		var full reply
		err := wire.NewCodec().Decode(b, &full)
		if ok && !hasErr && err == nil {
			// The fast path must agree with a full decode.
			if full.ID != id || full.Error != nil {
				t.Fatalf("peek: id %#x no error; decode: id %#x error %v", id, full.ID, full.Error)
			}
		}
		var r reply
		_ = decodeReply(wire.NewCodec(), b, &r)
	})
}

func BenchmarkEncodeRequestCodec(b *testing.B) {
	c := wire.NewCodec()
	req := wire.Request{ID: idBase, Op: "put", Governor: "bench", State: keyName(1), Value: makeValue(256, 1)}
	var buf []byte
	for b.Loop() {
		buf, _ = c.AppendFrame(buf[:0], &req)
		req.ID++
	}
}

func BenchmarkEncodeRequestTemplate(b *testing.B) {
	tmpl, _ := buildTemplate(wire.NewCodec(), opPut, "bench", makeValue(256, 1))
	var buf []byte
	id := idBase
	for b.Loop() {
		buf = tmpl.appendTo(buf[:0], id, id&0xffff)
		id += 1 << 16
	}
}

func BenchmarkDecodeReplyCodec(b *testing.B) {
	c := wire.NewCodec()
	body, _ := wire.Marshal(wire.Response{ID: idBase | 1, Record: &wire.Record{Governor: "bench", State: keyName(1), Value: makeValue(256, 1), Version: 3}})
	var r wire.Response
	for b.Loop() {
		r = wire.Response{}
		_ = c.Decode(body, &r)
	}
}

func BenchmarkDecodeReplyFast(b *testing.B) {
	c := wire.NewCodec()
	body, _ := wire.Marshal(wire.Response{ID: idBase | 1, Record: &wire.Record{Governor: "bench", State: keyName(1), Value: makeValue(256, 1), Version: 3}})
	var r reply
	for b.Loop() {
		_ = decodeReply(c, body, &r)
	}
}
