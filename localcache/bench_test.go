package localcache

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkGetHot reads a few hot keys, each overwritten many times, from an
// on-disk store: with the cache these are served without Badger.
func BenchmarkGetHot(b *testing.B) {
	for _, bc := range []struct {
		name  string
		cache int64
	}{{"cache", 0}, {"nocache", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			s := openDisk(b, b.TempDir(), func(o *Options) { o.CacheBytes = bc.cache })
			defer closeStore(b, s)
			ctx := context.Background()
			value := []byte(strings.Repeat("v", 256))
			const hot = 16
			keys := make([]Key, hot)
			for i := range keys {
				keys[i] = key("bench", "hot-"+itoa(i))
			}
			for range 50 { // many overwrites: many versions below the latest
				ws := make([]Write, hot)
				for i, k := range keys {
					ws[i] = Write{Key: k, Value: value}
				}
				if _, err := s.WriteBatch(ctx, ws); err != nil {
					b.Fatal(err)
				}
			}
			var n atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(n.Add(1))
				for pb.Next() {
					i++
					if _, err := s.Get(ctx, keys[i%hot]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkWriteParallel measures acknowledged (durable) writes of
// 256-byte values from 1, 16 and 128 goroutines, each writing one at a time,
// on disk. writes/commit shows how many writers share each sync.
func BenchmarkWriteParallel(b *testing.B) {
	for _, writers := range []int{1, 16, 128} {
		b.Run("writers="+itoa(writers), func(b *testing.B) {
			s := openDisk(b, b.TempDir())
			defer closeStore(b, s)
			ctx := context.Background()
			value := []byte(strings.Repeat("v", 256))
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for w := range writers {
				wg.Go(func() {
					prefix := "w" + itoa(w) + "-"
					for i := 0; next.Add(1) <= int64(b.N); i++ {
						if _, err := s.Write(ctx, Write{Key: key("bench", prefix+itoa(i%1000)), Value: value}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			st := s.Stats()
			if st.Commits > 0 {
				b.ReportMetric(float64(st.CommitWrites)/float64(st.Commits), "writes/commit")
			}
		})
	}
}

// BenchmarkCacheGet measures lookups in the read cache alone: 10,000 cached
// states read in a scattered order from parallel goroutines, about what a
// get of a stored key costs before the socket.
func BenchmarkCacheGet(b *testing.B) {
	c := newCache(DefaultCacheBytes)
	const n = 10000
	keys := make([]Key, n)
	value := []byte(strings.Repeat("v", 256))
	for i := range keys {
		keys[i] = key("bench", "state-"+itoa(i))
		c.set(keys[i], &Record{Key: keys[i], Version: 1, Value: value})
	}
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			i = (i + 7919) % n // a stride that visits every key out of order
			if c.get(keys[i]) == nil {
				b.Error("miss")
				return
			}
		}
	})
}
