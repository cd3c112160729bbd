package main

import (
	"math"
	"math/bits"
)

// subBits sets the histogram's precision: each power of two is split into
// 1<<subBits buckets, so a recorded value is known to within 1/128 (0.8%).
const subBits = 7

const (
	subCount = 1 << subBits
	// numBuckets covers every uint64 value: 64-subBits exponents above the
	// exact range, subCount buckets each, plus the exact range itself.
	numBuckets = (64-subBits)*subCount + subCount
)

// Histogram records latencies in nanoseconds in log-linear buckets, in the
// manner of HdrHistogram: values below 2*subCount are kept exactly, larger
// ones within a relative error of 1/subCount. Recording is a few integer
// operations and never allocates. The zero value is not ready: use
// NewHistogram. A Histogram is not safe for concurrent use; give each
// goroutine its own and Merge them.
type Histogram struct {
	counts []uint64
	total  uint64
	sum    float64
	min    uint64
	max    uint64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{counts: make([]uint64, numBuckets), min: math.MaxUint64}
}

// bucketOf returns the bucket index of v.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	// e >= 1; v>>(e-1) lies in [subCount, 2*subCount).
	e := bits.Len64(v) - subBits
	return (e-1)*subCount + int(v>>(e-1))
}

// bucketBounds returns the smallest and largest value that fall in bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	e := i / subCount
	m := uint64(i - (e-1)*subCount)
	lo = m << (e - 1)
	hi = lo + (uint64(1) << (e - 1)) - 1
	return lo, hi
}

// Record adds one value.
func (h *Histogram) Record(v uint64) {
	h.counts[bucketOf(v)]++
	h.total++
	h.sum += float64(v)
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total }

// Max returns the largest recorded value, 0 when empty.
func (h *Histogram) Max() uint64 { return h.max }

// Min returns the smallest recorded value, 0 when empty.
func (h *Histogram) Min() uint64 {
	if h.total == 0 {
		return 0
	}
	return h.min
}

// Mean returns the mean of the recorded values, 0 when empty.
func (h *Histogram) Mean() float64 {
	if h.total == 0 {
		return 0
	}
	return h.sum / float64(h.total)
}

// Quantile returns the value at quantile q (0 < q <= 1): the largest value
// of the bucket holding the ceil(q*count)-th smallest value, capped at the
// recorded maximum, as HdrHistogram reports it. It is never below the true
// quantile and above it by at most 1/128. An empty histogram returns 0.
func (h *Histogram) Quantile(q float64) uint64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = max(rank, 1)
	rank = min(rank, h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketBounds(i)
			return min(hi, h.max)
		}
	}
	return h.max
}
