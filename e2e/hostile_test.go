package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestHostileInputLeavesDataAlone sends the real binary garbage, truncated and
// oversized frames, wrong types, unknown ops, invalid names and oversized
// values. Each gets an error reply or a closed connection; afterwards the
// sidecar still serves and every stored state is byte-for-byte unchanged.
func TestHostileInputLeavesDataAlone(t *testing.T) {
	sc := startSidecar(t)
	c := sc.Client()
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := c.Put(ctx, "app", fmt.Sprintf("s%02d", i), map[string]any{"i": i, "pad": strings.Repeat("x", i*10)}); err != nil {
			t.Fatal(err)
		}
	}
	before := checksum(t, c)

	hello := mustFrame(t, map[string]any{"id": 1, "op": "hello", "versions": []int{1}})
	frame := func(m map[string]any) []byte { return mustFrame(t, m) }
	big := strings.Repeat("v", wire.MaxValueSize+1)
	valueTooBig, err := wire.Marshal(big)
	if err != nil {
		t.Fatal(err)
	}
	deep := any(1)
	for i := 0; i < wire.MaxDepth+10; i++ {
		deep = []any{deep}
	}

	cases := []struct {
		name  string
		input []byte
		// closes: framing is lost, so the server must hang up.
		closes bool
		// code expected in the last reply read before close or timeout ("" = none needed).
		code wire.Code
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), true, ""},
		{"4 GiB length prefix", []byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, true, ""},
		{"empty frame", append(append([]byte{}, hello...), 0, 0, 0, 0), true, ""},
		{"truncated frame", append(append([]byte{}, hello...), 0, 0, 0, 50, 0x81), false, ""},
		{"op before hello", frame(map[string]any{"id": 5, "op": "put", "governor": "app", "state": "s00", "value": 1}), true, wire.CodeProtocol},
		{"not a map", cat(hello, wire.AppendFrameHeader(nil, 1), []byte{0x01}), false, wire.CodeInvalidArgument},
		{"wrong types", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": 7, "state": []int{1}, "value": 1})), false, wire.CodeInvalidArgument},
		{"unknown op", cat(hello, frame(map[string]any{"id": 2, "op": "drop_everything"})), false, wire.CodeUnknownOp},
		{"path-like name", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "app", "state": "../s00", "value": 1})), false, wire.CodeInvalidArgument},
		{"reserved name", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "__app__", "state": "s00", "value": 1})), false, wire.CodeInvalidArgument},
		{"dot name", cat(hello, frame(map[string]any{"id": 2, "op": "delete", "governor": "app", "state": ".."})), false, wire.CodeInvalidArgument},
		{"invalid utf-8 name", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "app", "state": "s\xff", "value": 1})), false, wire.CodeInvalidArgument},
		{"value too large", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "app", "state": "s00", "value": wire.Raw(valueTooBig)})), false, wire.CodeTooLarge},
		{"deep nesting", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "app", "state": "s00", "value": deep})), false, wire.CodeInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("unix", sc.Socket)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			input := tc.input
			// Where framing survives, a ping after the input marks the end of
			// the replies to wait for (except after a truncated frame, which
			// would swallow it).
			waitPing := !tc.closes && tc.code != ""
			if waitPing {
				input = cat(input, frame(map[string]any{"id": pingID, "op": "ping"}))
			}
			if _, err := conn.Write(input); err != nil {
				t.Fatal(err)
			}
			codes, closed := readReplies(t, conn, time.Second, waitPing)
			if waitPing && (closed || len(codes) == 0) {
				t.Fatalf("no reply to the ping after the bad request (closed=%v, replies %v)", closed, codes)
			}
			if tc.closes && !closed {
				t.Errorf("connection not closed after lost framing; replies %v", codes)
			}
			if tc.code != "" {
				found := false
				for _, c := range codes {
					found = found || c == tc.code
				}
				if !found {
					t.Errorf("replies %v, want one with %s", codes, tc.code)
				}
			}
		})
	}

	if err := c.Ping(ctx); err != nil {
		t.Fatalf("sidecar stopped serving: %v\n%s", err, sc.Logs())
	}
	if after := checksum(t, c); after != before {
		t.Fatalf("stored data changed: checksum %x before, %x after", before, after)
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func mustFrame(t *testing.T, m map[string]any) []byte {
	t.Helper()
	body, err := wire.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(wire.AppendFrameHeader(nil, len(body)), body...)
}

// pingID is the request id of the ping that ends a hostile case.
const pingID = 4242

// readReplies reads reply frames until the server closes the connection,
// nothing arrives for idle, or (untilPing) the reply to request pingID came.
// It returns the error codes seen ("" for success).
func readReplies(t *testing.T, conn net.Conn, idle time.Duration, untilPing bool) (codes []wire.Code, closed bool) {
	t.Helper()
	r := bufio.NewReader(conn)
	codec := wire.NewCodec()
	for {
		conn.SetReadDeadline(time.Now().Add(idle))
		body, err := wire.ReadFrame(r, nil, 64<<20)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return codes, false
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF || strings.Contains(err.Error(), "reset") {
				return codes, true
			}
			t.Fatalf("read reply: %v", err)
		}
		var resp wire.Response
		if err := codec.Decode(body, &resp); err != nil {
			t.Fatalf("undecodable reply %x: %v", body, err)
		}
		if resp.Error != nil {
			codes = append(codes, resp.Error.Code)
		} else {
			codes = append(codes, "")
		}
		if untilPing && resp.ID == pingID && resp.Error == nil {
			return codes, false
		}
	}
}

// checksum hashes every state of governor "app" with its version and value.
func checksum(t *testing.T, c *client.Client) [32]byte {
	t.Helper()
	h := sha256.New()
	n := 0
	for rec, err := range c.ListAll(context.Background(), "app", client.ListOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], rec.Version)
		h.Write([]byte(rec.State))
		h.Write(v[:])
		h.Write(rec.Value)
		n++
	}
	if n != 20 {
		t.Fatalf("listed %d states, want 20", n)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
