package sockapi

import (
	"encoding/binary"
	"math"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// This file is a fast path for encoding the common replies (records,
// errors, pings, push frames) without reflection: encoding dominated the cost of a get.
// It writes exactly the bytes the wire codec writes for the same value:
// fields sorted by name (the codec sorts the fields of every struct it
// encodes as a map), omitempty fields left out, the smallest msgpack form
// of each number and length (TestEncoderMatchesCodec and
// FuzzEncodeResponse compare the two). Hello, stats, pending, failed,
// flush, events, state_at, validate, lock, snapshot, cleanup and replay
// replies, and errors with lock, fence or machine details, which are rare,
// go through the codec.

// appendResponseFrame appends resp as a whole frame. ok is false (and b is
// returned unchanged) for a reply this fast path does not handle.
func appendResponseFrame(b []byte, resp *wire.Response) (_ []byte, ok bool) {
	if resp.Hello != nil || resp.Stats != nil || resp.Pending != nil || resp.Failed != nil || resp.Next != 0 ||
		resp.FlushedSeq != 0 || resp.Events != nil || resp.Past != nil || resp.Report != nil {
		return b, false
	}
	if resp.Conflicts != nil {
		return b, false // conflicts replies (conflicts.go)
	}
	if resp.Txn != nil || resp.TxLog != nil {
		return b, false // txn and txlog replies (txn.go, txlog.go)
	}
	if resp.Resolver != nil || resp.Conflict != nil {
		return b, false // resolver_register replies, conflicts pushed to apps (resolver.go)
	}
	if resp.Lock != nil || resp.Error != nil && (resp.Error.Lock != nil || resp.Error.Waited || resp.Error.Deadlock != nil) {
		return b, false // lock replies and lock error details (locks.go)
	}
	if resp.Error != nil && resp.Error.Fence != nil {
		return b, false // fence rejection details (fence.go)
	}
	if resp.Snapshot != nil || resp.Cleanup != nil || resp.Replay != nil || resp.Done || resp.Error != nil && resp.Error.Machine != nil {
		return b, false // snapshot, cleanup and replay replies, WrongState details (snapshots.go)
	}
	start := len(b)
	b = append(b, 0, 0, 0, 0) // header, filled in below
	b = appendResponse(b, resp)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-wire.HeaderSize))
	return b, true
}

func appendResponse(b []byte, r *wire.Response) []byte {
	n := 1
	if r.Cursor != "" {
		n++
	}
	if r.Error != nil {
		n++
	}
	if r.Record != nil {
		n++
	}
	if len(r.Records) > 0 {
		n++
	}
	for _, set := range [...]bool{r.Push, r.Remote, r.Watch != 0} {
		if set {
			n++
		}
	}
	b = appendMapHeader(b, n)
	if r.Cursor != "" {
		b = appendStr(b, "cursor")
		b = appendStr(b, r.Cursor)
	}
	if r.Error != nil {
		b = appendStr(b, "error")
		b = appendError(b, r.Error)
	}
	b = appendStr(b, "id")
	b = appendUint(b, r.ID)
	if r.Push {
		b = appendStr(b, "push")
		b = append(b, 0xc3)
	}
	if r.Record != nil {
		b = appendStr(b, "record")
		b = appendRecord(b, r.Record)
	}
	if len(r.Records) > 0 {
		b = appendStr(b, "records")
		b = appendArrayHeader(b, len(r.Records))
		for _, rec := range r.Records {
			if rec == nil {
				b = append(b, 0xc0)
			} else {
				b = appendRecord(b, rec)
			}
		}
	}
	if r.Remote {
		b = appendStr(b, "remote")
		b = append(b, 0xc3)
	}
	if r.Watch != 0 {
		b = appendStr(b, "watch")
		b = appendUint(b, r.Watch)
	}
	return b
}

func appendRecord(b []byte, r *wire.Record) []byte {
	n := 7 // change, from_cache, governor, pending, state, updated_at, version
	if r.Deleted {
		n++
	}
	if r.Origin != "" {
		n++
	}
	if len(r.Value) > 0 {
		n++
	}
	if r.Stale {
		n++
	}
	if r.SyncedAt != 0 {
		n++
	}
	if r.AgeMS != nil {
		n++
	}
	b = appendMapHeader(b, n)
	if r.AgeMS != nil {
		b = appendStr(b, "age_ms")
		b = appendUint(b, *r.AgeMS)
	}
	b = appendStr(b, "change")
	c := &r.Change
	n = 1
	if c.Actor != "" {
		n++
	}
	if c.Reason != "" {
		n++
	}
	b = appendMapHeader(b, n)
	if c.Actor != "" {
		b = appendStr(b, "actor")
		b = appendStr(b, c.Actor)
	}
	if c.Reason != "" {
		b = appendStr(b, "reason")
		b = appendStr(b, c.Reason)
	}
	b = appendStr(b, "time")
	b = appendInt(b, c.Time)
	if r.Deleted {
		b = appendStr(b, "deleted")
		b = append(b, 0xc3)
	}
	b = appendStr(b, "from_cache")
	b = appendBool(b, r.FromCache)
	b = appendStr(b, "governor")
	b = appendStr(b, r.Governor)
	if r.Origin != "" {
		b = appendStr(b, "origin")
		b = appendStr(b, r.Origin)
	}
	b = appendStr(b, "pending")
	b = appendBool(b, r.Pending)
	if r.Stale {
		b = appendStr(b, "stale")
		b = append(b, 0xc3)
	}
	b = appendStr(b, "state")
	b = appendStr(b, r.State)
	if r.SyncedAt != 0 {
		b = appendStr(b, "synced_at")
		b = appendInt(b, r.SyncedAt)
	}
	b = appendStr(b, "updated_at")
	b = appendInt(b, r.UpdatedAt)
	if len(r.Value) > 0 {
		b = appendStr(b, "value")
		b = append(b, r.Value...) // Raw: verbatim
	}
	b = appendStr(b, "version")
	b = appendUint(b, r.Version)
	return b
}

func appendError(b []byte, e *wire.Error) []byte {
	n := 3 // code, message, retryable
	for _, set := range [...]bool{e.Actual != nil, e.Expected != nil, e.Field != "", e.Governor != "", e.Limit != 0, e.State != ""} {
		if set {
			n++
		}
	}
	b = appendMapHeader(b, n)
	if e.Actual != nil {
		b = appendStr(b, "actual")
		b = appendUint(b, *e.Actual)
	}
	b = appendStr(b, "code")
	b = appendStr(b, string(e.Code))
	if e.Expected != nil {
		b = appendStr(b, "expected")
		b = appendUint(b, *e.Expected)
	}
	if e.Field != "" {
		b = appendStr(b, "field")
		b = appendStr(b, e.Field)
	}
	if e.Governor != "" {
		b = appendStr(b, "governor")
		b = appendStr(b, e.Governor)
	}
	if e.Limit != 0 {
		b = appendStr(b, "limit")
		b = appendInt(b, e.Limit)
	}
	b = appendStr(b, "message")
	b = appendStr(b, e.Message)
	b = appendStr(b, "retryable")
	b = appendBool(b, e.Retryable)
	if e.State != "" {
		b = appendStr(b, "state")
		b = appendStr(b, e.State)
	}
	return b
}

// msgpack primitives, in the forms the codec chooses (wire.NewHandle:
// str8 allowed, positive signed integers in signed forms).

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 256:
		b = append(b, 0xd9, byte(n))
	case n < 65536:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, s...)
}

func appendMapHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n < 65536:
		return append(b, 0xde, byte(n>>8), byte(n))
	}
	return append(b, 0xdf, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendArrayHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 65536:
		return append(b, 0xdc, byte(n>>8), byte(n))
	}
	return append(b, 0xdd, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= math.MaxInt8:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v > math.MaxInt8:
		switch {
		case v <= math.MaxInt16:
			return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
		case v <= math.MaxInt32:
			return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
		}
		return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
	case v >= -32:
		return append(b, byte(v)) // positive or negative fixint
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}
