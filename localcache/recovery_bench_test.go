package localcache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// benchDataEnv names a directory where BenchmarkEventLog keeps the data dirs
// it builds (events-10000, events-100000, events-1000000) and reuses them on
// later runs; e2e's BenchmarkProcessRecovery starts the sidecar on them.
// Unset, each run builds its data dirs in temporary directories.
const benchDataEnv = "TAI_BENCH_DATA"

// benchStates is how many states the event log data dirs spread their
// events over (every state has events/benchStates versions).
const benchStates = 1000

// benchEpoch is the start of the step clock of the data dirs.
var benchEpoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// BenchmarkEventLog measures, on a store of 10k, 100k and 1M events (1,000
// states of 10, 100 and 1,000 versions, 64-byte values, snapshots every 100
// versions: the default), Open until it returns (a clean stop before);
// StateAt in the middle and near the start of one state's history, and
// StateAtVersion; and a governor scan of every event in pages of
// MaxEventLimit.
func BenchmarkEventLog(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			dir := benchEventDir(b, n)
			b.Run("open", func(b *testing.B) { benchOpen(b, dir) })
			s := openDisk(b, dir)
			defer closeStore(b, s)
			benchStateAtSpread(b, s, n/benchStates)
			b.Run("query", func(b *testing.B) { benchQueryAll(b, s, n) })
		})
	}
}

// benchEventDir returns a data dir holding n events, built once.
func benchEventDir(b *testing.B, n int) string {
	b.Helper()
	root := os.Getenv(benchDataEnv)
	if root == "" {
		root = b.TempDir()
	}
	dir := filepath.Join(root, fmt.Sprintf("events-%d", n))
	done := filepath.Join(root, fmt.Sprintf("events-%d.complete", n))
	if _, err := os.Stat(done); err == nil {
		return dir
	}
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	clock := &stepClock{t: benchEpoch}
	s := openDisk(b, dir, withNow(clock.Now))
	ctx := context.Background()
	value := []byte(strings.Repeat("v", 64))
	ws := make([]Write, 500)
	for range n / benchStates {
		for lo := 0; lo < benchStates; lo += len(ws) {
			for i := range ws {
				ws[i] = Write{Key: key("bench", fmt.Sprintf("s%04d", lo+i)), Value: value}
			}
			if _, err := s.WriteBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
		}
	}
	waitSnapshots(b, s)
	closeStore(b, s)
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("built %s (%d events) in %v", dir, n, time.Since(start).Round(time.Millisecond))
	return dir
}

// benchOpen measures Open of dir, from the call until it returns; Close is
// outside the timing. It reports the median too.
func benchOpen(b *testing.B, dir string) {
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		s := openDisk(b, dir)
		took = append(took, time.Since(start))
		b.StopTimer()
		closeStore(b, s)
		b.StartTimer()
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
}

// benchStateAtSpread measures StateAt and StateAtVersion on state s0500, of
// versions versions, in a store built by benchEventDir.
func benchStateAtSpread(b *testing.B, s *Store, versions int) {
	ctx := context.Background()
	k := key("bench", "s0500")
	at := func(v int) time.Time {
		e, err := s.StateAtVersion(ctx, k, uint64(v))
		if err != nil {
			b.Fatal(err)
		}
		return time.Unix(0, e.Change.Time)
	}
	for _, c := range []struct {
		name string
		at   time.Time
	}{
		{"state_at=middle", at(versions / 2)},
		{"state_at=start", at(1).Add(at(2).Sub(at(1)) / 2)},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.StateAt(ctx, k, c.at); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("state_at=version", func(b *testing.B) {
		v := uint64(0)
		for b.Loop() {
			v = v%uint64(versions) + 1
			if _, err := s.StateAtVersion(ctx, k, v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchQueryAll pages through every event of the governor and reports
// events/s and pages/s.
func benchQueryAll(b *testing.B, s *Store, n int) {
	ctx := context.Background()
	events, pages := 0, 0
	for b.Loop() {
		q := EventQuery{Governor: "bench", Limit: MaxEventLimit}
		for {
			p, err := s.QueryEvents(ctx, q)
			if err != nil {
				b.Fatal(err)
			}
			events += len(p.Events)
			pages++
			if p.Next == "" {
				break
			}
			q.Cursor = p.Next
		}
	}
	if events != n*b.N {
		b.Fatalf("scanned %d events, want %d", events, n*b.N)
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(events)/sec, "events/s")
	b.ReportMetric(float64(pages)/sec, "pages/s")
}
