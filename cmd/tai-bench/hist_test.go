package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestBucketBoundsContainValue(t *testing.T) {
	values := []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 1 << 20, 123456789, 1<<40 + 7, math.MaxUint64 - 1, math.MaxUint64}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		values = append(values, r.Uint64()>>r.UintN(64))
	}
	for _, v := range values {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of [0, %d)", v, i, numBuckets)
		}
		lo, hi := bucketBounds(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d with bounds [%d, %d]", v, i, lo, hi)
		}
		// The bucket is narrow: at most 1/subCount of its values.
		if lo > 0 && float64(hi-lo) > float64(lo)/subCount {
			t.Fatalf("bucket %d [%d, %d] is wider than 1/%d of its values", i, lo, hi, subCount)
		}
	}
}

func TestBucketsAreContiguous(t *testing.T) {
	prevHi := uint64(0)
	for i := 0; i < numBuckets; i++ {
		lo, hi := bucketBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d, %d]: bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		prevHi = hi
	}
	if prevHi != math.MaxUint64 {
		t.Fatalf("last bucket ends at %d, want MaxUint64", prevHi)
	}
}

func TestQuantile(t *testing.T) {
	tests := []struct {
		name   string
		values []uint64
		q      float64
		want   uint64
	}{
		{"empty", nil, 0.5, 0},
		{"one value", []uint64{42}, 0.99, 42},
		{"exact range median", seq(1, 100), 0.5, 50},
		{"exact range p99", seq(1, 100), 0.99, 99},
		{"max", seq(1, 100), 1, 100},
		{"tiny q is the min", seq(1, 100), 0.0001, 1},
		{"outlier at p99.9", append(slices.Repeat([]uint64{10}, 999), 1_000_000), 0.999, 10},
		{"outlier above p99.9", append(slices.Repeat([]uint64{10}, 998), 1_000_000, 1_000_000), 0.999, 1_000_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistogram()
			for _, v := range tt.values {
				h.Record(v)
			}
			if got := h.Quantile(tt.q); got != tt.want {
				t.Fatalf("Quantile(%v) = %d, want %d", tt.q, got, tt.want)
			}
		})
	}
}

func TestQuantileErrorBound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	h := NewHistogram()
	var vals []uint64
	for range 100_000 {
		// Latency-like: log-uniform from 1 µs to 100 ms.
		v := uint64(math.Exp(math.Log(1e3) + r.Float64()*(math.Log(1e8)-math.Log(1e3))))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 0.9999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/subCount {
			t.Errorf("q=%v: got %d, exact %d: want within +1/%d", q, got, exact, subCount)
		}
	}
	if h.Min() != vals[0] || h.Max() != vals[len(vals)-1] {
		t.Errorf("min/max = %d/%d, want %d/%d", h.Min(), h.Max(), vals[0], vals[len(vals)-1])
	}
}

func TestMerge(t *testing.T) {
	a, b, all := NewHistogram(), NewHistogram(), NewHistogram()
	for i := uint64(1); i <= 5000; i++ {
		v := i * 997
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
		all.Record(v)
	}
	a.Merge(b)
	a.Merge(NewHistogram())
	if a.Count() != all.Count() || a.Min() != all.Min() || a.Max() != all.Max() || a.Mean() != all.Mean() {
		t.Fatalf("merged count/min/max/mean %d/%d/%d/%v, want %d/%d/%d/%v",
			a.Count(), a.Min(), a.Max(), a.Mean(), all.Count(), all.Min(), all.Max(), all.Mean())
	}
	for _, q := range []float64{0.1, 0.5, 0.99, 0.999} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Fatalf("merged Quantile(%v) = %d, want %d", q, a.Quantile(q), all.Quantile(q))
		}
	}
}

func TestEmptyHistogram(t *testing.T) {
	h := NewHistogram()
	if h.Count() != 0 || h.Min() != 0 || h.Max() != 0 || h.Mean() != 0 || h.Quantile(0.99) != 0 {
		t.Fatalf("empty histogram: count %d min %d max %d mean %v p99 %d",
			h.Count(), h.Min(), h.Max(), h.Mean(), h.Quantile(0.99))
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	h := NewHistogram()
	v := uint64(12345)
	if n := testing.AllocsPerRun(1000, func() { h.Record(v); v += 7919 }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for v := from; v <= to; v++ {
		s = append(s, v)
	}
	return s
}

func BenchmarkRecord(b *testing.B) {
	h := NewHistogram()
	v := uint64(1)
	for b.Loop() {
		h.Record(v)
		v = v*6364136223846793005 + 1442695040888963407
	}
}
