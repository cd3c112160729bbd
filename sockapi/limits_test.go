package sockapi

import (
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// parseRequest parses b with the largest limits the protocol allows.
func parseRequest(b []byte, req *wire.Request) (uint64, *wire.Error) {
	return limits{batch: wire.MaxBatch, valueDepth: MaxValueDepthLimit}.parseRequest(b, req)
}

// TestConfiguredLimits: value size, batch size and value depth follow
// Options, are announced in hello, and a request over one gets an error
// naming the field and the limit.
func TestConfiguredLimits(t *testing.T) {
	ts := startServer(t, newFakeStore(), Options{MaxValue: 100, MaxBatch: 3, MaxValueDepth: 2})
	c := ts.dial()
	r := c.call(wire.Request{Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}})
	if r.Hello == nil || r.Hello.MaxValue != 100 || r.Hello.MaxBatch != 3 {
		t.Fatalf("hello %+v", r.Hello)
	}
	tooLarge := func(r wire.Response, field string, limit int64, msg string) {
		t.Helper()
		expectError(t, r, wire.CodeTooLarge, field)
		if r.Error.Limit != limit || !strings.Contains(r.Error.Message, msg) {
			t.Fatalf("limit %d, message %q; want %d and %q", r.Error.Limit, r.Error.Message, limit, msg)
		}
	}

	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: valueOfSize(t, 100)}); r.Error != nil {
		t.Fatalf("value at the limit: %v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "s", Value: valueOfSize(t, 101)})
	tooLarge(r, "value", 100, "value is 101 bytes, limit 100")
	r = c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "t", Value: valueOfSize(t, 101)}}})
	tooLarge(r, "items[0].value", 100, "limit 100")

	val := mustMarshal(t, 1)
	if r := c.call(wire.Request{Op: wire.OpBatchPut, Items: manyItems(3, val)}); r.Error != nil {
		t.Fatalf("batch at the limit: %v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpBatchPut, Items: manyItems(4, val)})
	tooLarge(r, "items", 3, "items has 4 entries, limit 3")
	if r := c.call(wire.Request{Op: wire.OpBatchGet, Keys: manyKeys(3)}); r.Error != nil {
		t.Fatalf("batch_get at the limit: %v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpBatchGet, Keys: manyKeys(4)})
	tooLarge(r, "keys", 3, "keys has 4 entries, limit 3")

	if r := c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "d", Value: nested(2)}); r.Error != nil {
		t.Fatalf("value at the depth limit: %v", r.Error)
	}
	r = c.call(wire.Request{Op: wire.OpPut, Governor: "g", State: "d", Value: nested(3)})
	expectError(t, r, wire.CodeInvalidArgument, "value")
	if !strings.Contains(r.Error.Message, "more than 2 levels deep") {
		t.Fatalf("message %q does not name the limit", r.Error.Message)
	}
	r = c.call(wire.Request{Op: wire.OpBatchPut, Items: []wire.Item{{Governor: "g", State: "d", Value: nested(3)}}})
	expectError(t, r, wire.CodeInvalidArgument, "items[0].value")

	// Nothing refused reached the store.
	if r := c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "d"}); r.Error != nil || r.Record.Version != 1 {
		t.Fatalf("get d: %+v", r)
	}
	if r := c.call(wire.Request{Op: wire.OpGet, Governor: "g", State: "t"}); r.Error == nil || r.Error.Code != wire.CodeNotFound {
		t.Fatalf("get t: %+v", r)
	}
}

// TestLimitDefaultsAndBounds: zero options take the protocol's limits, and
// values above them are lowered to them.
func TestLimitDefaultsAndBounds(t *testing.T) {
	for _, o := range []Options{{}, {MaxBatch: wire.MaxBatch + 1, MaxValueDepth: MaxValueDepthLimit + 1, MaxValue: wire.MaxValueSize + 1}} {
		o = o.withDefaults()
		if o.MaxBatch != wire.MaxBatch || o.MaxValueDepth != MaxValueDepthLimit || o.MaxValue != wire.MaxValueSize || o.ReadTimeout != 0 {
			t.Errorf("options %+v", o)
		}
	}
	if got := (Options{MaxFrame: 64 << 10}).withDefaults().MaxValue; got != MaxValueFor(64<<10) || got != 64<<10-frameReserve {
		t.Errorf("MaxValue with a 64 KiB frame: %d", got)
	}
}

// TestReadTimeout: a peer that begins a frame and does not finish it in
// ReadTimeout gets a Timeout error with id 0 and is closed; a peer that
// sends nothing, or finishes its frames, is not.
func TestReadTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ping := func(c *client) {
		t.Helper()
		if r := c.call(wire.Request{Op: wire.OpPing}); r.Error != nil {
			t.Fatalf("ping: %v", r.Error)
		}
	}
	pingFrame := func(c *client) []byte {
		frame, err := wire.NewCodec().AppendFrame(nil, &wire.Request{ID: c.id(), Op: wire.OpPing})
		if err != nil {
			t.Fatal(err)
		}
		return frame
	}

	t.Run("unfinished frame", func(t *testing.T) {
		for _, idle := range []time.Duration{0, time.Hour} {
			ts := startServer(t, newFakeStore(), Options{ReadTimeout: timeout, IdleTimeout: idle})
			c := ts.hello()
			frame := pingFrame(c)
			c.writeRaw(frame[:len(frame)-2])
			got := c.expectClosed()
			if len(got) != 1 || got[0].ID != 0 || got[0].Error == nil || got[0].Error.Code != wire.CodeTimeout ||
				!strings.Contains(got[0].Error.Message, "read timeout (200ms)") {
				t.Fatalf("idle timeout %v: replies %+v", idle, got)
			}
		}
	})
	t.Run("header only", func(t *testing.T) {
		ts := startServer(t, newFakeStore(), Options{ReadTimeout: timeout})
		c := ts.hello()
		c.writeRaw(pingFrame(c)[:2])
		if got := c.expectClosed(); len(got) != 1 || got[0].Error == nil || got[0].Error.Code != wire.CodeTimeout {
			t.Fatalf("replies %+v", got)
		}
	})
	t.Run("idle timeout first", func(t *testing.T) {
		// The idle deadline comes before the frame's: the connection is
		// closed as idle, without a reply.
		ts := startServer(t, newFakeStore(), Options{ReadTimeout: time.Hour, IdleTimeout: time.Second})
		c := ts.hello()
		frame := pingFrame(c)
		c.writeRaw(frame[:len(frame)-1])
		if got := c.expectClosed(); len(got) != 0 {
			t.Fatalf("replies %+v", got)
		}
	})
	t.Run("finished frames and silence", func(t *testing.T) {
		ts := startServer(t, newFakeStore(), Options{ReadTimeout: timeout})
		c := ts.hello()
		// A frame sent in two parts, well within the timeout, is served;
		// its deadline then ends with it: silence between frames is not
		// limited by ReadTimeout.
		frame := pingFrame(c)
		c.writeRaw(frame[:3])
		time.Sleep(timeout / 4)
		c.writeRaw(frame[3:])
		if r := c.recv(); r.Error != nil || r.ID != c.nextID {
			t.Fatalf("reply %+v", r)
		}
		time.Sleep(3 * timeout)
		ping(c)
		time.Sleep(3 * timeout)
		ping(c)
	})
}
