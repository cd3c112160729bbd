package main

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/conflict"
)

// Name is the name MaxCount is registered under.
const Name = "maxcount"

// MaxCount settles conflicts on documents that hold a counter in the field
// "count" (a msgpack map): Fallback picks the document (nil: last write
// wins), and its count becomes the greater count of both sides, so a
// counter that only grows never loses an increment's high-water mark.
// Anything else (a deletion, a value that is not such a map) is left to
// Fallback. It is deterministic: the greater of two counts, on the
// fallback's deterministic choice, encoded with sorted keys.
type MaxCount struct {
	Fallback conflict.Resolver
}

// Factory is MaxCount's conflict.Factory, for Registry.Register.
func Factory(fallback conflict.Resolver) conflict.Resolver { return MaxCount{Fallback: fallback} }

func handle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{WriteExt: true}
	h.Canonical = true // sorted keys: every node encodes alike
	h.RawToString = true
	h.SignedInteger = true
	h.MaxDepth = 64
	return h
}

// count decodes a side's document and its "count" field.
func count(s conflict.Side) (map[string]any, int64, bool) {
	if s.Deleted {
		return nil, 0, false
	}
	var m map[string]any
	if err := codec.NewDecoderBytes(s.Value, handle()).Decode(&m); err != nil {
		return nil, 0, false
	}
	switch n := m["count"].(type) {
	case int64:
		return m, n, true
	case uint64:
		if n <= 1<<63-1 {
			return m, int64(n), true
		}
	}
	return nil, 0, false
}

// Resolve implements conflict.Resolver.
func (r MaxCount) Resolve(ctx context.Context, c conflict.Conflict) (conflict.Decision, error) {
	fb := r.Fallback
	if fb == nil {
		fb = conflict.LWW{}
	}
	d, err := fb.Resolve(ctx, c)
	if err != nil {
		return conflict.Decision{}, err
	}
	_, lc, lok := count(c.Local)
	_, rc, rok := count(c.Remote)
	if !lok || !rok || d.Winner == conflict.Merged {
		d.Resolver = Name + ">" + d.Resolver
		d.Reason = "no count on both sides; " + d.Reason
		return d, nil
	}
	win := c.Local
	if d.Winner == conflict.Remote {
		win = c.Remote
	}
	doc, wc, _ := count(win)
	top := max(lc, rc)
	reason := fmt.Sprintf("count is the greater of %d and %d; document chosen by %s: %s", lc, rc, d.Resolver, d.Reason)
	if wc == top {
		return conflict.Decision{Winner: d.Winner, Resolver: Name, Reason: reason}, nil
	}
	doc["count"] = top
	var out []byte
	if err := codec.NewEncoderBytes(&out, handle()).Encode(doc); err != nil {
		return conflict.Decision{}, fmt.Errorf("encode: %w", err)
	}
	return conflict.Decision{Winner: conflict.Merged, Value: out, Resolver: Name, Reason: reason}, nil
}
