package sockapi

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// omap encodes a msgpack map from key/value pairs, in the order given (Go
// maps encode in random order; some tests need the id before or after a bad
// field).
func omap(t testing.TB, kv ...any) []byte {
	t.Helper()
	if len(kv)%2 != 0 {
		t.Fatal("omap: odd number of arguments")
	}
	n := len(kv) / 2
	var b []byte
	switch {
	case n < 16:
		b = []byte{0x80 | byte(n)}
	default:
		b = []byte{0xde, byte(n >> 8), byte(n)}
	}
	for _, v := range kv {
		b = append(b, mustMarshal(t, v)...)
	}
	return b
}

// nested returns a value of depth nested arrays around 1.
func nested(depth int) wire.Raw {
	return append(bytes.Repeat([]byte{0x91}, depth), 0x01)
}

// badNames are names every request must refuse.
var badNames = map[string]string{
	"empty":        "",
	"slash":        "a/b",
	"dot":          ".",
	"dotdot":       "..",
	"reserved":     "__x__",
	"too long":     strings.Repeat("n", wire.MaxNameSize+1),
	"invalid utf8": "ab\xffcd",
}

func TestInvalidRequests(t *testing.T) {
	store := newFakeStore()
	store.put("g", "s", "existing")
	ts := startServer(t, store, Options{MaxValue: 1000})
	c := ts.hello()
	val := mustMarshal(t, "v")

	type tc struct {
		name   string
		body   []byte
		id     uint64
		code   wire.Code
		field  string
		limit  int64
		substr string
	}
	cases := []tc{
		// Bodies that are not requests.
		{name: "garbage", body: []byte{0xc1, 0xc1, 0xc1}, code: wire.CodeInvalidArgument},
		{name: "random bytes", body: []byte("GET / HTTP/1.1\r\n\r\n"), code: wire.CodeInvalidArgument},
		{name: "array body", body: mustMarshal(t, []any{7, "get", "g", "s"}), code: wire.CodeInvalidArgument, substr: "must be a msgpack map"},
		{name: "scalar body", body: mustMarshal(t, 42), code: wire.CodeInvalidArgument},
		{name: "truncated map", body: omap(t, "id", 9, "op", "get")[:8], id: 9, code: wire.CodeInvalidArgument},
		{name: "trailing bytes", body: append(omap(t, "id", 10, "op", "ping"), 0x01), id: 10, code: wire.CodeInvalidArgument, substr: "after the request map"},
		{name: "non-string key", body: omap(t, "id", 11, 5, "x", "op", "ping"), id: 11, code: wire.CodeInvalidArgument},

		// Wrong field types: the id is recovered before or after the bad field.
		{name: "id string", body: omap(t, "id", "x", "op", "ping"), code: wire.CodeInvalidArgument, field: "id"},
		{name: "id negative", body: omap(t, "id", -4, "op", "ping"), code: wire.CodeInvalidArgument, field: "id"},
		{name: "id float", body: omap(t, "id", 1.5, "op", "ping"), code: wire.CodeInvalidArgument, field: "id"},
		{name: "governor int, id first", body: omap(t, "id", 12, "op", "get", "governor", 5, "state", "s"), id: 12, code: wire.CodeInvalidArgument, field: "governor"},
		{name: "governor int, id last", body: omap(t, "op", "get", "governor", 5, "state", "s", "id", 13), id: 13, code: wire.CodeInvalidArgument, field: "governor"},
		{name: "governor map, id last", body: omap(t, "governor", map[string]int{"a": 1}, "op", "get", "id", 14), id: 14, code: wire.CodeInvalidArgument, field: "governor"},
		{name: "op bin", body: omap(t, "id", 15, "op", []byte("ping")), id: 15, code: wire.CodeInvalidArgument, field: "op"},
		{name: "op array", body: omap(t, "id", 16, "op", []string{"ping"}), id: 16, code: wire.CodeInvalidArgument, field: "op"},
		{name: "if_absent int", body: omap(t, "id", 17, "op", "put", "governor", "g", "state", "n", "value", val, "if_absent", 1), id: 17, code: wire.CodeInvalidArgument, field: "if_absent"},
		{name: "if_version negative", body: omap(t, "id", 18, "op", "put", "governor", "g", "state", "n", "value", val, "if_version", -1), id: 18, code: wire.CodeInvalidArgument, field: "if_version"},
		{name: "if_version string", body: omap(t, "id", 19, "op", "put", "governor", "g", "state", "n", "value", val, "if_version", "1"), id: 19, code: wire.CodeInvalidArgument, field: "if_version"},
		{name: "versions string", body: omap(t, "id", 20, "op", "hello", "versions", "1"), id: 20, code: wire.CodeInvalidArgument, field: "versions"},
		{name: "versions overflow", body: omap(t, "id", 21, "op", "hello", "versions", []uint64{1 << 40}), id: 21, code: wire.CodeInvalidArgument, field: "versions"},
		{name: "keys not maps", body: omap(t, "id", 22, "op", "batch_get", "keys", []string{"a"}), id: 22, code: wire.CodeInvalidArgument, field: "keys[0]"},
		{name: "key state int", body: omap(t, "id", 23, "op", "batch_get", "keys", []any{map[string]any{"governor": "g", "state": 3}}), id: 23, code: wire.CodeInvalidArgument, field: "keys[0].state"},
		{name: "item delete string", body: omap(t, "id", 24, "op", "batch_put", "items", []any{map[string]any{"governor": "g", "state": "s", "delete": "yes"}}), id: 24, code: wire.CodeInvalidArgument, field: "items[0].delete"},
		{name: "items map", body: omap(t, "id", 25, "op", "batch_put", "items", map[string]any{"governor": "g"}), id: 25, code: wire.CodeInvalidArgument, field: "items"},
		{name: "limit string", body: omap(t, "id", 26, "op", "list", "governor", "g", "limit", "10"), id: 26, code: wire.CodeInvalidArgument, field: "limit"},
		{name: "limit overflow", body: omap(t, "id", 27, "op", "list", "governor", "g", "limit", uint64(1<<63)), id: 27, code: wire.CodeInvalidArgument, field: "limit"},

		// Ops and missing fields.
		{name: "unknown op", body: omap(t, "id", 30, "op", "frobnicate"), id: 30, code: wire.CodeUnknownOp},
		{name: "missing op", body: omap(t, "id", 31), id: 31, code: wire.CodeInvalidArgument, field: "op"},
		{name: "missing id", body: omap(t, "op", "ping"), code: wire.CodeInvalidArgument, field: "id"},
		{name: "put without value", body: omap(t, "id", 32, "op", "put", "governor", "g", "state", "n"), id: 32, code: wire.CodeInvalidArgument, field: "value"},
		{name: "put nil value", body: omap(t, "id", 33, "op", "put", "governor", "g", "state", "n", "value", nil), id: 33, code: wire.CodeInvalidArgument, field: "value"},
		{name: "get without state", body: omap(t, "id", 34, "op", "get", "governor", "g"), id: 34, code: wire.CodeInvalidArgument, field: "state"},
		{name: "list without governor", body: omap(t, "id", 35, "op", "list"), id: 35, code: wire.CodeInvalidArgument, field: "governor"},
		{name: "delete with value", body: omap(t, "id", 36, "op", "delete", "governor", "g", "state", "s", "value", val), id: 36, code: wire.CodeInvalidArgument, field: "value"},
		{name: "delete if_absent", body: omap(t, "id", 37, "op", "delete", "governor", "g", "state", "s", "if_absent", true), id: 37, code: wire.CodeInvalidArgument, field: "if_absent"},
		{name: "if_version contradicts if_absent", body: omap(t, "id", 38, "op", "put", "governor", "g", "state", "n", "value", val, "if_version", 3, "if_absent", true), id: 38, code: wire.CodeInvalidArgument, field: "if_version"},
		{name: "actor too long", body: omap(t, "id", 39, "op", "put", "governor", "g", "state", "n", "value", val, "actor", strings.Repeat("a", wire.MaxMetaSize+1)), id: 39, code: wire.CodeTooLarge, field: "actor", limit: wire.MaxMetaSize},
		{name: "reason invalid utf8", body: omap(t, "id", 40, "op", "delete", "governor", "g", "state", "s", "reason", "bad\xff"), id: 40, code: wire.CodeInvalidArgument, field: "reason"},
		{name: "negative limit", body: omap(t, "id", 41, "op", "list", "governor", "g", "limit", -1), id: 41, code: wire.CodeInvalidArgument, field: "limit"},
		{name: "prefix with slash", body: omap(t, "id", 42, "op", "list", "governor", "g", "prefix", "a/"), id: 42, code: wire.CodeInvalidArgument, field: "prefix"},
		{name: "cursor too long", body: omap(t, "id", 43, "op", "list", "governor", "g", "cursor", strings.Repeat("c", maxCursor+1)), id: 43, code: wire.CodeTooLarge, field: "cursor", limit: maxCursor},

		// Consistency levels.
		// Without a shared store, the levels that need one are Unavailable
		// (not retryable); strong writes are not supported at all.
		{name: "get strong", body: omap(t, "id", 50, "op", "get", "governor", "g", "state", "s", "consistency", "strong"), id: 50, code: wire.CodeUnavailable, field: "consistency"},
		{name: "get bounded without bound", body: omap(t, "id", 55, "op", "get", "governor", "g", "state", "s", "consistency", "bounded"), id: 55, code: wire.CodeInvalidArgument, field: "max_staleness_ms"},
		{name: "get bounded", body: omap(t, "id", 56, "op", "get", "governor", "g", "state", "s", "consistency", "bounded", "max_staleness_ms", 100), id: 56, code: wire.CodeUnavailable, field: "consistency"},
		{name: "get async", body: omap(t, "id", 57, "op", "get", "governor", "g", "state", "s", "consistency", "async"), id: 57, code: wire.CodeInvalidArgument, field: "consistency"},
		{name: "put strong", body: omap(t, "id", 58, "op", "put", "governor", "g", "state", "n", "value", val, "consistency", "strong"), id: 58, code: wire.CodeUnavailable, field: "consistency"},
		{name: "staleness wrong type", body: omap(t, "id", 59, "op", "get", "governor", "g", "state", "s", "max_staleness_ms", -1), id: 59, code: wire.CodeInvalidArgument, field: "max_staleness_ms"},
		{name: "list bounded", body: omap(t, "id", 51, "op", "list", "governor", "g", "consistency", "bounded"), id: 51, code: wire.CodeInvalidArgument, field: "consistency"},
		{name: "put sync", body: omap(t, "id", 52, "op", "put", "governor", "g", "state", "n", "value", val, "consistency", "sync"), id: 52, code: wire.CodeUnavailable, field: "consistency"},
		{name: "put local", body: omap(t, "id", 53, "op", "put", "governor", "g", "state", "n", "value", val, "consistency", "local"), id: 53, code: wire.CodeInvalidArgument, field: "consistency"},
		{name: "batch_get strong", body: omap(t, "id", 54, "op", "batch_get", "keys", []wire.Key{{Governor: "g", State: "s"}}, "consistency", "strong"), id: 54, code: wire.CodeUnavailable, field: "consistency"},

		// Watches and the journal ops.
		{name: "watch without governor", body: omap(t, "id", 90, "op", "watch"), id: 90, code: wire.CodeInvalidArgument, field: "governor"},
		{name: "watch prefix with slash", body: omap(t, "id", 91, "op", "watch", "governor", "g", "prefix", "a/"), id: 91, code: wire.CodeInvalidArgument, field: "prefix"},
		{name: "unwatch without watch", body: omap(t, "id", 92, "op", "unwatch"), id: 92, code: wire.CodeInvalidArgument, field: "watch"},
		{name: "unwatch watch negative", body: omap(t, "id", 93, "op", "unwatch", "watch", -3), id: 93, code: wire.CodeInvalidArgument, field: "watch"},
		{name: "failed negative limit", body: omap(t, "id", 94, "op", "failed", "limit", -1), id: 94, code: wire.CodeInvalidArgument, field: "limit"},
		{name: "failed after string", body: omap(t, "id", 95, "op", "failed", "after", "x"), id: 95, code: wire.CodeInvalidArgument, field: "after"},
		{name: "put timeout negative", body: omap(t, "id", 96, "op", "put", "governor", "g", "state", "n", "value", val, "timeout_ms", -1), id: 96, code: wire.CodeInvalidArgument, field: "timeout_ms"},

		// Sizes.
		{name: "value too large", body: omap(t, "id", 60, "op", "put", "governor", "g", "state", "n", "value", valueOfSize(t, 1001)), id: 60, code: wire.CodeTooLarge, field: "value", limit: 1000},
		{name: "item value too large", body: omap(t, "id", 61, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "n", Value: valueOfSize(t, 1001)}}), id: 61, code: wire.CodeTooLarge, field: "items[0].value", limit: 1000},
		{name: "too many items", body: omap(t, "id", 62, "op", "batch_put", "items", manyItems(wire.MaxBatch+1, val)), id: 62, code: wire.CodeTooLarge, field: "items", limit: wire.MaxBatch},
		{name: "too many keys", body: omap(t, "id", 63, "op", "batch_get", "keys", manyKeys(wire.MaxBatch+1)), id: 63, code: wire.CodeTooLarge, field: "keys", limit: wire.MaxBatch},
		{name: "deep value", body: omap(t, "id", 64, "op", "put", "governor", "g", "state", "n", "value", nested(wire.MaxDepth)), id: 64, code: wire.CodeInvalidArgument, field: "value", substr: "levels deep"},
		{name: "deep unknown field, id last", body: omap(t, "op", "ping", "extra", nested(500), "id", 65), id: 65, code: wire.CodeInvalidArgument, field: "extra"},
		{name: "deep item value", body: omap(t, "id", 66, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "n", Value: nested(wire.MaxDepth)}}), id: 66, code: wire.CodeInvalidArgument, field: "items[0].value"},
		{name: "very deep", body: omap(t, "id", 67, "op", "put", "governor", "g", "state", "n", "value", nested(100000)), id: 67, code: wire.CodeInvalidArgument, field: "value"},

		// Batch rules.
		{name: "duplicate items", body: omap(t, "id", 70, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "a", Value: val}, {Governor: "g", State: "a", Delete: true}}), id: 70, code: wire.CodeInvalidArgument, field: "items[1].state"},
		{name: "item delete with value", body: omap(t, "id", 71, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "a", Value: val, Delete: true}}), id: 71, code: wire.CodeInvalidArgument, field: "items[0].value"},
		{name: "item without value", body: omap(t, "id", 72, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "a"}}), id: 72, code: wire.CodeInvalidArgument, field: "items[0].value"},
	}
	// Every bad name, in every place a name goes.
	for what, name := range badNames {
		cases = append(cases,
			tc{name: "get governor " + what, body: omap(t, "id", 100, "op", "get", "governor", name, "state", "s"), id: 100, code: wire.CodeInvalidArgument, field: "governor"},
			tc{name: "get state " + what, body: omap(t, "id", 101, "op", "get", "governor", "g", "state", name), id: 101, code: wire.CodeInvalidArgument, field: "state"},
			tc{name: "put governor " + what, body: omap(t, "id", 102, "op", "put", "governor", name, "state", "s", "value", val), id: 102, code: wire.CodeInvalidArgument, field: "governor"},
			tc{name: "put state " + what, body: omap(t, "id", 103, "op", "put", "governor", "g", "state", name, "value", val), id: 103, code: wire.CodeInvalidArgument, field: "state"},
			tc{name: "delete state " + what, body: omap(t, "id", 104, "op", "delete", "governor", "g", "state", name), id: 104, code: wire.CodeInvalidArgument, field: "state"},
			tc{name: "batch_get key " + what, body: omap(t, "id", 105, "op", "batch_get", "keys", []wire.Key{{Governor: "g", State: "s"}, {Governor: name, State: "s"}}), id: 105, code: wire.CodeInvalidArgument, field: "keys[1].governor"},
			tc{name: "batch_put item " + what, body: omap(t, "id", 106, "op", "batch_put", "items", []wire.Item{{Governor: "g", State: "ok", Value: val}, {Governor: "g", State: name, Value: val}}), id: 106, code: wire.CodeInvalidArgument, field: "items[1].state"},
			tc{name: "list governor " + what, body: omap(t, "id", 107, "op", "list", "governor", name), id: 107, code: wire.CodeInvalidArgument, field: "governor"},
		)
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := store.writes.Load()
			c.sendBody(tc.body)
			r := c.recv()
			if r.ID != tc.id {
				t.Errorf("reply id %d, want %d", r.ID, tc.id)
			}
			expectError(t, r, tc.code, tc.field)
			if r.Error.Limit != tc.limit {
				t.Errorf("limit %d, want %d", r.Error.Limit, tc.limit)
			}
			if !strings.Contains(r.Error.Message, tc.substr) {
				t.Errorf("message %q does not contain %q", r.Error.Message, tc.substr)
			}
			// The connection still serves, and nothing reached the store.
			if p := c.call(wire.Request{Op: wire.OpPing}); p.Error != nil {
				t.Fatalf("ping after error: %v", p.Error)
			}
			if n := store.writes.Load(); n != before {
				t.Fatalf("store received %d writes", n-before)
			}
		})
	}
	if v := store.violationsList(); len(v) != 0 {
		t.Fatalf("invalid writes reached the store: %v", v)
	}
	r := c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "s"})
	if r.Error != nil || r.Record.Version != 1 {
		t.Fatalf("existing state changed: %+v %v", r.Record, r.Error)
	}
}

func manyItems(n int, val wire.Raw) []wire.Item {
	items := make([]wire.Item, n)
	for i := range items {
		items[i] = wire.Item{Governor: "g", State: "s" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Value: val}
	}
	return items
}

func manyKeys(n int) []wire.Key {
	keys := make([]wire.Key, n)
	for i := range keys {
		keys[i] = wire.Key{Governor: "g", State: "s"}
	}
	return keys
}

// TestBrokenFraming covers input after which framing is lost: the server
// replies with id 0 when it can and closes the connection, and keeps
// serving other connections.
func TestBrokenFraming(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{MaxFrame: 64 << 10})
	put := func(c *client) []byte {
		f, err := c.enc.AppendFrame(nil, &wire.Request{ID: 99, Op: wire.OpPut, Governor: "g", State: "s", Value: mustMarshal(t, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	header := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

	cases := []struct {
		name  string
		input func(c *client) []byte
		code  wire.Code // "" for a quiet close
		limit int64
	}{
		{"4 GiB length", func(*client) []byte { return header(0xffffffff) }, wire.CodeTooLarge, 64 << 10},
		{"just over max frame", func(*client) []byte { return header(64<<10 + 1) }, wire.CodeTooLarge, 64 << 10},
		{"huge length then a valid write", func(c *client) []byte { return append(header(1<<31), put(c)...) }, wire.CodeTooLarge, 64 << 10},
		{"empty frame", func(*client) []byte { return header(0) }, wire.CodeProtocol, 0},
		{"empty frame then a valid write", func(c *client) []byte { return append(header(0), put(c)...) }, wire.CodeProtocol, 0},
		{"truncated body", func(c *client) []byte { f := put(c); return f[:len(f)-3] }, "", 0},
		{"truncated header", func(*client) []byte { return []byte{0, 0} }, "", 0},
		{"length covering a valid write", func(c *client) []byte { f := put(c); return append(header(uint32(len(f)+100)), f...) }, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := store.writes.Load()
			c := ts.hello()
			c.writeRaw(tc.input(c))
			c.nc.(interface{ CloseWrite() error }).CloseWrite()
			got := c.expectClosed()
			if tc.code == "" {
				if len(got) != 0 {
					t.Fatalf("want a quiet close, got %+v", got)
				}
			} else {
				if len(got) != 1 {
					t.Fatalf("want one error reply, got %+v", got)
				}
				if got[0].ID != 0 {
					t.Fatalf("reply id %d, want 0", got[0].ID)
				}
				expectError(t, got[0], tc.code, "")
				if got[0].Error.Limit != tc.limit {
					t.Fatalf("limit %d, want %d", got[0].Error.Limit, tc.limit)
				}
			}
			if n := store.writes.Load(); n != before {
				t.Fatalf("store received %d writes", n-before)
			}
			// The server still serves.
			if r := ts.hello().call(wire.Request{Op: wire.OpPing}); r.Error != nil {
				t.Fatal(r.Error)
			}
		})
	}

	t.Run("without closing the write side", func(t *testing.T) {
		// The server must close by itself after a framing error, even if the
		// peer keeps the connection open.
		c := ts.hello()
		c.writeRaw(header(0xfffffff0))
		got := c.expectClosed()
		if len(got) != 1 || got[0].Error == nil || got[0].Error.Code != wire.CodeTooLarge {
			t.Fatalf("got %+v", got)
		}
	})
}

// TestDepthBoundary pins the nesting limits. A value may nest
// MaxValueDepthLimit levels, in a put as in a batch_put item, so that every
// reply carrying it (list: reply map, records array, record map, value)
// stays within what the codec decodes. Elsewhere the limit is the codec's:
// fewer than wire.MaxDepth levels, the request map being level 1.
func TestDepthBoundary(t *testing.T) {
	store := newFakeStore()
	ts := startServer(t, store, Options{})
	c := ts.hello()
	deepest := nested(MaxValueDepthLimit)
	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "a", Value: deepest}); r.Error != nil {
		t.Fatalf("value at the depth limit refused: %v", r.Error)
	}
	if r := c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "b", Value: deepest}}}); r.Error != nil {
		t.Fatalf("item value at the depth limit refused: %v", r.Error)
	}
	// Every reply carrying it decodes.
	if r := c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "a"}); r.Error != nil || !bytes.Equal(r.Record.Value, deepest) {
		t.Fatalf("get: %v", r.Error)
	}
	if r := c.call(wire.Request{Op: wire.OpBatchGet, Keys: []wire.Key{{Governor: "g", State: "a"}}}); r.Error != nil || !bytes.Equal(r.Records[0].Value, deepest) {
		t.Fatalf("batch_get: %v", r.Error)
	}
	if r := c.call(wire.Request{Op: wire.OpList, Governor: "g"}); r.Error != nil || len(r.Records) != 2 {
		t.Fatalf("list: %v", r.Error)
	}
	// One level more is refused.
	over := nested(MaxValueDepthLimit + 1)
	expectError(t, c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "c", Value: over}), wire.CodeInvalidArgument, "value")
	expectError(t, c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "c", Value: over}}}),
		wire.CodeInvalidArgument, "items[0].value")
	// Unknown fields: up to the codec's limit.
	ok := omap(t, "id", 1000, "op", "ping", "x", nested(wire.MaxDepth-2))
	c.sendBody(ok)
	if r := c.recv(); r.Error != nil {
		t.Fatalf("unknown field at the limit refused: %v", r.Error)
	}
	c.sendBody(omap(t, "id", 1001, "op", "ping", "x", nested(wire.MaxDepth-1)))
	expectError(t, c.recv(), wire.CodeInvalidArgument, "x")
}
