package localcache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkWriteSnapshots measures acknowledged writes of 256-byte values
// from 16 goroutines, each overwriting its own state, on disk, with no
// automatic snapshots and with one every 100 (the default) and every 10
// versions: the cost snapshots add to the write path and, taken in the
// background, to the machine. snapshots/s is how many were taken.
func BenchmarkWriteSnapshots(b *testing.B) {
	for _, every := range []int{0, DefaultSnapshotEvery, 10} {
		name := fmt.Sprintf("snapshots=%d", every)
		if every == 0 {
			name = "snapshots=off"
		}
		b.Run(name, func(b *testing.B) {
			s := openDisk(b, b.TempDir(), withSnapshots(every, DefaultSnapshotKeep))
			defer closeStore(b, s)
			ctx := context.Background()
			value := []byte(strings.Repeat("v", 256))
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for w := range 16 {
				wg.Go(func() {
					k := key("bench", "hot-"+itoa(w))
					for next.Add(1) <= int64(b.N) {
						if _, err := s.Write(ctx, Write{Key: k, Value: value}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			waitSnapshots(b, s)
			b.StopTimer()
			taken := 0
			for w := range 16 {
				taken += len(markVersionsOf(b, s, key("bench", "hot-"+itoa(w))))
			}
			b.ReportMetric(float64(taken)/b.Elapsed().Seconds(), "snapshots/s")
		})
	}
}
