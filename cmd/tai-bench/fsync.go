package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// fsyncBaseline measures the floor under a durable write: it appends
// cfg.ValueSize-byte records to path and makes each one durable with
// fdatasync before the next, on one goroutine, until cfg.Requests records
// or the deadline. It is what a single writer that syncs every write can do
// on this disk, with no store in between.
func fsyncBaseline(ctx context.Context, path string, size int, requests int64, deadline time.Time) (*phaseResult, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rec := makeValue(size, 1)
	res := newPhaseResult("fsync")
	h := res.hist[opPut]
	start := time.Now()
	for n := int64(0); requests == 0 || n < requests; n++ {
		t0 := time.Now()
		if t0.After(deadline) {
			break
		}
		if n&63 == 0 && ctx.Err() != nil {
			res.interrupted = true
			break
		}
		if _, err := f.Write(rec); err != nil {
			return nil, fmt.Errorf("append: %w", err)
		}
		if err := fdatasync(f); err != nil {
			return nil, fmt.Errorf("fdatasync: %w", err)
		}
		h.Record(uint64(time.Since(t0)))
	}
	res.elapsed = time.Since(start)
	if err := f.Close(); err != nil {
		return nil, err
	}
	return res, nil
}
