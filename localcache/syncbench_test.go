package localcache

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// Sync benchmarks: the local store with the real push and pull loops, over
// Firestore on the emulator (and the in-memory remote, for the loops' own
// cost). bench/RESULTS.md records their figures.
//
//	scripts/emulator.sh run go test -run '^$' -bench Sync -benchtime 3x ./localcache/

func benchRemotes(b *testing.B, bench func(b *testing.B, remote syncer.Remote)) {
	b.Run("memremote", func(b *testing.B) { bench(b, memremote.New()) })
	b.Run("firestore", func(b *testing.B) { bench(b, firestoretest.Open(b)) })
}

func benchStore(b *testing.B, node string) *Store {
	b.Helper()
	s := openDisk(b, b.TempDir(), func(o *Options) { o.NodeID = node })
	b.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// BenchmarkSyncPush: how fast the push loop drains a journal of writes made
// offline (5,000 writes by 16 writers over 1,000 keys per op), and how many
// remote commits it needs per 1,000 writes.
func BenchmarkSyncPush(b *testing.B) { benchRemotes(b, benchSyncPush) }

func benchSyncPush(b *testing.B, remote syncer.Remote) {
	const writes, writers, keys = 5000, 16, 1000
	ctx := context.Background()
	var entries, commits uint64
	var took time.Duration
	for i := range b.N {
		b.StopTimer()
		s := benchStore(b, fmt.Sprint("bench-", i))
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := w; j < writes; j += writers {
					if _, err := s.Write(ctx, Write{Key: key(fmt.Sprint("push-", i), fmt.Sprint("k", j%keys)), Value: []byte("\xa5value")}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		push := syncer.New(s, remote, syncer.Options{})
		b.StartTimer()
		start := time.Now()
		if err := push.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		took += time.Since(start)
		st := push.Stats()
		entries += st.EntriesPushed
		commits += st.Commits
		if d := s.Depth(); d != 0 {
			b.Fatalf("depth %d after the flush", d)
		}
	}
	b.ReportMetric(float64(entries)/took.Seconds(), "entries/s")
	b.ReportMetric(1000*float64(commits)/float64(entries), "commits/1000writes")
}

// BenchmarkSyncLag: the time from a write's acknowledgement on node A until
// node B has it (B's change feed delivers it), with 8 writers on A, each
// writing a new key every 25 ms (new keys: no write is coalesced away), and
// both loops running; p50 and p99 over every write of the run.
func BenchmarkSyncLag(b *testing.B) { benchRemotes(b, benchSyncLag) }

func benchSyncLag(b *testing.B, remote syncer.Remote) {
	const writers = 8
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, bn := benchStore(b, "lag-a"), benchStore(b, "lag-b")
	var loops sync.WaitGroup
	defer loops.Wait()
	defer cancel()
	pushA := syncer.New(a, remote, syncer.Options{})
	pullB := syncer.NewPuller(bn, remote, syncer.PullOptions{Governors: []string{"lag"}})
	loops.Add(2)
	go func() { defer loops.Done(); _ = pushA.Run(ctx) }()
	go func() { defer loops.Done(); _ = pullB.Run(ctx) }()
	sub, err := bn.Subscribe("lag", "", 1<<16, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	// Wait for B's watch to be up before measuring.
	for {
		if _, ok := pullB.FreshAt("lag"); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	var mu sync.Mutex
	acked := make(map[string]time.Time)  // op id -> when A acknowledged it
	seenAt := make(map[string]time.Time) // op id -> when B's feed delivered it
	seen := make(chan struct{})
	total := b.N * writers
	go func() {
		defer close(seen)
		for ch := range sub.C {
			seenAt[ch.Record.OpID] = time.Now()
			if len(seenAt) == total {
				return
			}
		}
	}()
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range b.N {
				rec, err := a.Write(ctx, Write{Key: key("lag", fmt.Sprintf("w%d-%d", w, j)), Value: []byte("\xa1v")})
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				acked[rec.OpID] = time.Now()
				mu.Unlock()
				time.Sleep(25 * time.Millisecond) // a steady load below the emulator's capacity, not a burst
			}
		}()
	}
	wg.Wait()
	select {
	case <-seen:
	case <-time.After(60 * time.Second):
		b.Fatalf("B did not get all %d writes within a minute", total)
	}
	b.StopTimer()
	lags := make([]time.Duration, 0, total)
	for op, t := range acked {
		lags = append(lags, seenAt[op].Sub(t))
	}
	slices.Sort(lags)
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds())/1000, "p99-ms")
}
