package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning the heap to the system when the sidecar goes quiet.
//
// The Go heap grows to about twice what is live between collections (GOGC
// 100), and keeps the pages it grew to while no collection runs: after a
// burst of writes the sidecar stays as large as at the burst's height, for
// minutes, though most of it is garbage. The runtime's own scavenger hands
// back only what lies above the last collection's goal. So once allocation
// has (nearly) stopped for a whole interval after a busy one, and enough of
// the heap would come back, the sidecar collects and releases every free
// page at once (debug.FreeOSMemory): one collection per burst, on no
// request's path. Nearly: Badger's compactions go on allocating for a while
// after a burst of writes, so an interval is quiet when it allocated less
// than a sixteenth of the busiest interval since the last release (and less
// than idleAllocBytes in any case).

const (
	// idleInterval is how often allocation is looked at: a whole interval
	// with less than idleAllocBytes allocated, or less than 1/idleQuietShare
	// of the busiest interval since the last release, is quiet.
	idleInterval   = 2 * time.Second
	idleAllocBytes = 1 << 20
	idleQuietShare = 16
	// idleMinRelease is the least heap a release must be able to return:
	// free pages and the unused parts of spans, which a collection frees.
	idleMinRelease = 16 << 20
)

// heapSample is what releaseIdleHeap reads of the runtime.
type heapSample struct {
	allocs      uint64 // bytes allocated since the start, cumulative
	reclaimable uint64 // heap the system could get back: free and unused
}

// idleRelease decides when a quiet sidecar releases its heap.
type idleRelease struct {
	sample  func() heapSample
	release func()
	last    uint64 // allocs at the last look
	busy    bool   // an interval since the last release was not quiet
	peak    uint64 // the most allocated in one interval since the last release
}

// tick looks at the heap once and releases it if the sidecar went quiet
// after being busy. It returns what it read, and whether it released.
func (r *idleRelease) tick() (heapSample, bool) {
	s := r.sample()
	grew := s.allocs - r.last
	r.last = s.allocs
	if grew >= max(idleAllocBytes, r.peak/idleQuietShare) {
		r.busy = true
		r.peak = max(r.peak, grew)
		return s, false
	}
	if !r.busy || s.reclaimable < idleMinRelease {
		return s, false
	}
	r.busy, r.peak = false, 0
	r.release()
	return s, true
}

// releaseIdleHeap runs idle releases every idleInterval until ctx ends.
func releaseIdleHeap(ctx context.Context, log *slog.Logger) error {
	r := &idleRelease{sample: readHeapSample, release: debug.FreeOSMemory}
	r.last = r.sample().allocs
	return onTicks(ctx, idleInterval, func() {
		if s, released := r.tick(); released {
			log.Debug("quiet: free heap returned to the system", "reclaimable_bytes", s.reclaimable)
		}
	})
}

var heapMetrics = []string{"/gc/heap/allocs:bytes", "/memory/classes/heap/free:bytes", "/memory/classes/heap/unused:bytes"}

func readHeapSample() heapSample {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return heapSample{allocs: v(0), reclaimable: v(1) + v(2)}
}
