package main

import (
	"runtime/metrics"
	"testing"
)

// TestIdleRelease: the heap is released once per quiet spell after a busy
// one, and only when enough of it would come back.
func TestIdleRelease(t *testing.T) {
	var s heapSample
	released := 0
	r := &idleRelease{sample: func() heapSample { return s }, release: func() { released++ }}
	steps := []struct {
		alloc, reclaimable uint64
		want               bool
	}{
		{0, 64 << 20, false},                  // quiet from the start: nothing to release for
		{idleAllocBytes, 64 << 20, false},     // busy
		{100, 64 << 20, true},                 // quiet after busy: release
		{100, 64 << 20, false},                // still quiet: once is enough
		{8 << 20, 64 << 20, false},            // busy again
		{0, idleMinRelease - 1, false},        // quiet, too little to return
		{0, 64 << 20, true},                   // more to return, still quiet after the busy spell
		{idleAllocBytes - 1, 64 << 20, false}, // below the threshold: quiet, and nothing new since the release
		{160 << 20, 64 << 20, false},          // a burst
		{8 << 20, 64 << 20, true},             // its tail, under a sixteenth of it: quiet, release
		{8 << 20, 64 << 20, false},            // the same pace with no burst before: busy
		{4 << 20, 64 << 20, false},            // over a sixteenth of that: still busy
		{256 << 10, 64 << 20, true},           // under both thresholds: quiet, release
	}
	for i, st := range steps {
		s.allocs += st.alloc
		s.reclaimable = st.reclaimable
		if _, got := r.tick(); got != st.want {
			t.Fatalf("step %d (%+v): released %v, want %v", i, st, got, st.want)
		}
	}
	if released != 4 {
		t.Fatalf("%d releases, want 4", released)
	}
}

// TestReadHeapSample: the runtime's metrics are read (an unknown name would
// read as zero) and allocation shows.
func TestReadHeapSample(t *testing.T) {
	known := make(map[string]bool)
	for _, d := range metrics.All() {
		known[d.Name] = d.Kind == metrics.KindUint64
	}
	for _, name := range heapMetrics {
		if !known[name] {
			t.Errorf("%s is not a uint64 metric of this runtime", name)
		}
	}
	before := readHeapSample()
	sink = make([]byte, 4<<20)
	after := readHeapSample()
	if after.allocs-before.allocs < 4<<20 {
		t.Fatalf("allocated 4 MiB, the sample moved %d bytes", after.allocs-before.allocs)
	}
}

var sink []byte
