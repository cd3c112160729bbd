package sockapi

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// checkEncoding compares the fast encoder with the codec on resp.
func checkEncoding(t *testing.T, resp *wire.Response) {
	t.Helper()
	want, err := wire.NewCodec().AppendFrame(nil, resp)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := appendResponseFrame(nil, resp)
	if !ok {
		t.Fatal("fast path refused the reply")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encodings differ for %+v\nfast:  %x\ncodec: %x", resp, got, want)
	}
}

func TestEncoderMatchesCodec(t *testing.T) {
	uints := []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64}
	ints := []int64{0, 1, 127, 128, 32767, 32768, math.MaxInt32, math.MaxInt32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}
	lens := []int{0, 1, 31, 32, 255, 256, 65535, 65536}
	str := func(n int) string { return strings.Repeat("s", n) }
	val := mustMarshal(t, map[string]any{"k": []any{1, "two", 3.5, nil}})

	for _, u := range uints {
		checkEncoding(t, &wire.Response{ID: u})
		checkEncoding(t, &wire.Response{ID: 1, Record: &wire.Record{Version: u}})
		checkEncoding(t, &wire.Response{ID: 1, Record: &wire.Record{AgeMS: &u}})
		e := wire.Errorf(wire.CodeVersionConflict, "x")
		e.Expected, e.Actual = &u, &u
		checkEncoding(t, &wire.Response{ID: u, Error: e})
	}
	for _, i := range ints {
		checkEncoding(t, &wire.Response{ID: 1, Record: &wire.Record{UpdatedAt: i, Change: wire.Change{Time: i}}})
		checkEncoding(t, &wire.Response{ID: 1, Error: &wire.Error{Code: wire.CodeTooLarge, Limit: i}})
	}
	for _, n := range lens {
		s := str(n)
		checkEncoding(t, &wire.Response{ID: 1, Cursor: s, Records: []*wire.Record{{Governor: s, State: s, Origin: s,
			Change: wire.Change{Actor: s, Reason: s}}}})
		checkEncoding(t, &wire.Response{ID: 1, Error: &wire.Error{Code: wire.CodeInvalidArgument, Message: s, Field: s, Governor: s, State: s}})
	}
	for _, n := range []int{1, 15, 16, 65535, 65536} {
		recs := make([]*wire.Record, n)
		for i := range recs {
			if i%3 != 0 {
				recs[i] = &wire.Record{Governor: "g", State: "s", Value: val, Version: uint64(i), FromCache: true}
			}
		}
		checkEncoding(t, &wire.Response{ID: 9, Records: recs, Cursor: "next"})
	}
	checkEncoding(t, &wire.Response{ID: 3, Record: &wire.Record{Governor: "g", State: "s", Value: val, Version: 4, Deleted: true,
		UpdatedAt: 1700000000000000000, Change: wire.Change{Actor: "a", Reason: "r", Time: 1700000000000000000},
		Origin: "node", FromCache: true, Pending: true}})
	checkEncoding(t, &wire.Response{ID: 3, Record: &wire.Record{Value: wire.Raw{}}}) // empty Raw is omitted

	// Random mixes.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		checkEncoding(t, randomResponse(rng, val))
	}

	// Hello and stats go through the codec.
	if _, ok := appendResponseFrame(nil, &wire.Response{Hello: &wire.Hello{}}); ok {
		t.Fatal("fast path took a hello reply")
	}
	if _, ok := appendResponseFrame(nil, &wire.Response{Stats: &wire.Stats{}}); ok {
		t.Fatal("fast path took a stats reply")
	}
	for _, r := range []*wire.Response{{Pending: &wire.Pending{}}, {Failed: []*wire.Failed{{}}}, {Next: 1}} {
		if _, ok := appendResponseFrame(nil, r); ok {
			t.Fatalf("fast path took %+v", r)
		}
	}
	// Push frames and the sync fields of records.
	checkEncoding(t, &wire.Response{ID: 7, Push: true, Watch: 7, Remote: true, Record: &wire.Record{Governor: "g", State: "s",
		Value: val, Version: 2, SyncedAt: 1700000000000000000, Stale: true}})
	checkEncoding(t, &wire.Response{ID: 7, Push: true, Watch: 7, Error: wire.Errorf(wire.CodeUnavailable, "lagged")})
}

func randomResponse(rng *rand.Rand, val wire.Raw) *wire.Response {
	str := func() string {
		if rng.IntN(3) == 0 {
			return ""
		}
		return strings.Repeat("x", rng.IntN(300))
	}
	rec := func() *wire.Record {
		if rng.IntN(4) == 0 {
			return nil
		}
		r := &wire.Record{Governor: str(), State: str(), Version: rng.Uint64() >> rng.IntN(64),
			Deleted: rng.IntN(2) == 0, UpdatedAt: rng.Int64() >> rng.IntN(64) * int64(1-2*rng.IntN(2)),
			Change: wire.Change{Actor: str(), Reason: str(), Time: rng.Int64() >> rng.IntN(64)}, Origin: str(),
			FromCache: rng.IntN(2) == 0, Pending: rng.IntN(2) == 0, Stale: rng.IntN(2) == 0,
			SyncedAt: rng.Int64() >> rng.IntN(64) * int64(rng.IntN(2))}
		if rng.IntN(2) == 0 {
			r.Value = val
		}
		if rng.IntN(2) == 0 {
			age := rng.Uint64() >> rng.IntN(64)
			r.AgeMS = &age
		}
		return r
	}
	resp := &wire.Response{ID: rng.Uint64() >> rng.IntN(64), Cursor: str()}
	if rng.IntN(3) == 0 {
		resp.Push, resp.Remote = rng.IntN(2) == 0, rng.IntN(2) == 0
		resp.Watch = rng.Uint64() >> rng.IntN(64)
	}
	switch rng.IntN(3) {
	case 0:
		e := wire.Errorf(wire.CodeVersionConflict, "%s", str())
		e.Governor, e.State, e.Field = str(), str(), str()
		if rng.IntN(2) == 0 {
			x, y := rng.Uint64(), rng.Uint64()>>rng.IntN(64)
			e.Expected, e.Actual = &x, &y
		}
		e.Limit = rng.Int64() >> rng.IntN(64)
		resp.Error = e
	case 1:
		resp.Record = rec()
	case 2:
		for range rng.IntN(20) {
			resp.Records = append(resp.Records, rec())
		}
	}
	return resp
}

// FuzzEncodeResponse compares the fast encoder with the codec on replies
// built from fuzzed fields.
func FuzzEncodeResponse(f *testing.F) {
	f.Add(uint64(1), "g", "s", []byte{0x01}, uint64(3), int64(-5), "actor", "", "cursor", "VersionConflict", uint64(2), true)
	f.Add(uint64(math.MaxUint64), "", "", []byte{}, uint64(math.MaxUint64), int64(math.MinInt64), "", "r", "", "", uint64(0), false)
	f.Fuzz(func(t *testing.T, id uint64, gov, state string, value []byte, version uint64, at int64, actor, reason, cursor, code string, n uint64, flag bool) {
		rec := &wire.Record{Governor: gov, State: state, Value: value, Version: version, Deleted: flag, UpdatedAt: at,
			Change: wire.Change{Actor: actor, Reason: reason, Time: -at}, Origin: cursor, FromCache: flag, Pending: !flag}
		checkEncoding(t, &wire.Response{ID: id, Record: rec})
		checkEncoding(t, &wire.Response{ID: id, Records: []*wire.Record{rec, nil, rec}, Cursor: cursor})
		e := &wire.Error{Code: wire.Code(code), Message: reason, Retryable: flag, Governor: gov, State: state,
			Field: actor, Limit: at}
		if flag {
			e.Expected, e.Actual = &version, &n
		}
		checkEncoding(t, &wire.Response{ID: id, Error: e})
	})
}
