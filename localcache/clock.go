package localcache

import (
	"slices"
	"time"
)

// Clocks. The committer is the only goroutine that issues clock values, so
// these are plain functions over values it owns; the last values issued are
// persisted with every commit (see meta), so none goes backwards across a
// restart.

// lamportNext returns the Lamport time after last.
func lamportNext(last uint64) uint64 { return last + 1 }

// hlcLogicalBits is how many low bits of an HLC value count events within
// one millisecond.
const hlcLogicalBits = 16

// hlcNext returns the hybrid logical clock value to issue after last, at
// wall time now: now's Unix milliseconds in the high bits when the wall clock
// has moved past last, otherwise last+1. It never returns a value <= last,
// whatever the wall clock does (a logical overflow simply carries into the
// millisecond part, which stays close to real time).
func hlcNext(last uint64, now time.Time) uint64 {
	ms := now.UnixMilli()
	if ms < 0 {
		ms = 0
	}
	pt := uint64(ms) << hlcLogicalBits
	if pt > last {
		return pt
	}
	return last + 1
}

// HLCTime returns the wall time (millisecond precision) of a hybrid logical
// clock value.
func HLCTime(hlc uint64) time.Time {
	return time.UnixMilli(int64(hlc >> hlcLogicalBits))
}

// vectorTick returns a new vector: prev with node's entry incremented. prev
// is not modified (it may be shared with the read cache).
func vectorTick(prev map[string]uint64, node string) map[string]uint64 {
	v := make(map[string]uint64, len(prev)+1)
	for n, x := range prev {
		v[n] = x
	}
	v[node]++
	return v
}

func sortedNodes(v map[string]uint64) []string {
	nodes := make([]string, 0, len(v))
	for n := range v {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	return nodes
}
