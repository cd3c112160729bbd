package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
)

// BenchmarkProcessRecovery measures the time from exec of tai-sidecar until
// its socket answers a ping: on an empty data dir; on the event log data
// dirs that localcache's BenchmarkEventLog keeps in $TAI_BENCH_DATA
// (events-10000, events-100000, events-1000000), after a clean stop; and
// after kill -9 in the middle of writes from 16 clients, when Open replays
// the write-ahead log written since the last checkpoint, on an empty data
// dir and on a copy of the 1M-event one. p50-ms is the
// median; replayed-groups the mean number of log groups replayed.
func BenchmarkProcessRecovery(b *testing.B) {
	b.Run("empty", func(b *testing.B) {
		s := benchSidecar(b, filepath.Join(shortTempDir(b), "data"))
		benchRestarts(b, s, nil)
	})
	root := os.Getenv("TAI_BENCH_DATA")
	sizes := []int{10_000, 100_000, 1_000_000}
	for _, n := range sizes {
		if dir := benchEventDir(root, n); dir != "" {
			b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
				benchRestarts(b, benchSidecar(b, dir), nil)
			})
		}
	}
	b.Run("kill9/events=0", func(b *testing.B) {
		s := benchSidecar(b, filepath.Join(shortTempDir(b), "data"))
		benchRestarts(b, s, func() { writeThenKill(b, s, time.Second) })
	})
	// The writes go to a copy: the data dir stays as the other measures
	// expect it.
	if dir := benchEventDir(root, sizes[len(sizes)-1]); dir != "" {
		b.Run(fmt.Sprintf("kill9/events=%d", sizes[len(sizes)-1]), func(b *testing.B) {
			data := filepath.Join(shortTempDir(b), "data")
			if err := os.CopyFS(data, os.DirFS(dir)); err != nil {
				b.Fatal(err)
			}
			s := benchSidecar(b, data)
			benchRestarts(b, s, func() { writeThenKill(b, s, time.Second) })
		})
	}
}

// benchEventDir returns the data dir of n events that localcache's
// BenchmarkEventLog built under root, or "" when there is none.
func benchEventDir(root string, n int) string {
	if root == "" {
		return ""
	}
	dir := filepath.Join(root, fmt.Sprintf("events-%d", n))
	if _, err := os.Stat(dir + ".complete"); err != nil {
		return ""
	}
	return dir
}

// benchSidecar returns a sidecar, not started, on dataDir.
func benchSidecar(b *testing.B, dataDir string) *sidecar {
	s := &sidecar{t: b, Socket: filepath.Join(shortTempDir(b), "tai.sock"), DataDir: dataDir}
	b.Cleanup(s.Kill)
	return s
}

// benchRestarts starts s b.N times and times each start until the first
// ping is answered. Between starts, stop (outside the timing) stops the
// process; nil stops it with SIGTERM.
func benchRestarts(b *testing.B, s *sidecar, stop func()) {
	if stop == nil {
		stop = func() {
			if err := s.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
				b.Fatalf("stop: %v\n%s", err, s.Logs())
			}
		}
	}
	s.Start()
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		stop()
		b.StartTimer()
		start := time.Now()
		s.launch()
		waitPing(b, s)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	groups := 0
	for _, m := range replayedRE.FindAllStringSubmatch(s.Logs(), -1) {
		g, _ := strconv.Atoi(m[1])
		groups += g
	}
	b.ReportMetric(float64(groups)/float64(len(took)), "replayed-groups")
}

var replayedRE = regexp.MustCompile(`write-ahead log replayed.*?groups=(\d+)`)

// waitPing polls s's socket every millisecond until it answers a ping.
func waitPing(b *testing.B, s *sidecar) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c := client.New(s.Socket)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx)
		cancel()
		c.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("sidecar not serving after 60s: %v\n%s", err, s.Logs())
		}
		time.Sleep(time.Millisecond)
	}
}

// writeThenKill writes from 16 clients for d, then kills s with SIGKILL
// while they write.
func writeThenKill(b *testing.B, s *sidecar, d time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			c := client.New(s.Socket)
			defer c.Close()
			for i := 0; ctx.Err() == nil; i++ {
				_, _ = c.Put(ctx, "bench", fmt.Sprintf("w%02d-%03d", w, i%100), i)
			}
		})
	}
	time.Sleep(d)
	s.Kill()
	cancel()
	wg.Wait()
}
