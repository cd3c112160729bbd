package localcache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// stepClock is a wall clock that moves one millisecond per reading, so
// change times grow along a state's versions.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

// fillState writes n versions of k with 64-byte values, from 64 writers at
// once (they share write-ahead log syncs). It returns the change times of
// the first and last versions.
func fillState(b *testing.B, s *Store, k Key, n int) (first, last time.Time) {
	b.Helper()
	ctx := context.Background()
	value := []byte(strings.Repeat("v", 64))
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := 0
	per := n / 64
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := per
			if w == 0 {
				m += n - per*64
			}
			for range m {
				if _, err := s.Write(ctx, Write{Key: k, Value: value}); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if errs > 0 {
		b.Fatalf("%d writers failed", errs)
	}
	e1, err := s.StateAtVersion(ctx, k, 1)
	if err != nil {
		b.Fatal(err)
	}
	en, err := s.StateAtVersion(ctx, k, uint64(n))
	if err != nil {
		b.Fatal(err)
	}
	return time.Unix(0, e1.Change.Time), time.Unix(0, en.Change.Time)
}

// BenchmarkStateAt measures StateAt on one state of 10k and 100k events, on
// disk, for a time in the middle of its history (half the events are newer),
// near its start (all but a few are newer: the worst case without
// snapshots) and at the present (the current record answers); and
// StateAtVersion (one event lookup). snapshots=off takes no snapshots, so
// StateAt reads every event after the time; snapshots=100 (the default)
// has a snapshot and a time mark every 100 versions, and StateAt reads the
// marks and at most two stretches of about 100 events.
func BenchmarkStateAt(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, every := range []int{0, DefaultSnapshotEvery} {
			name := fmt.Sprintf("events=%d/snapshots=%d", n, every)
			if every == 0 {
				name = fmt.Sprintf("events=%d/snapshots=off", n)
			}
			b.Run(name, func(b *testing.B) { benchStateAt(b, n, every) })
		}
	}
}

func benchStateAt(b *testing.B, n, every int) {
	clock := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := openDisk(b, b.TempDir(), withNow(clock.Now), withSnapshots(every, DefaultSnapshotKeep))
	defer closeStore(b, s)
	k := key("bench", "s")
	first, last := fillState(b, s, k, n)
	waitSnapshots(b, s)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		at   time.Time
	}{
		{"middle", first.Add(last.Sub(first) / 2)},
		{"start", first.Add(time.Millisecond)},
		{"now", last},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.StateAt(ctx, k, c.at); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("version", func(b *testing.B) {
		b.ReportAllocs()
		v := uint64(0)
		for b.Loop() {
			v = v%uint64(n) + 1
			if _, err := s.StateAtVersion(ctx, k, v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEventQuery measures a governor scan: QueryEvents pages of
// MaxEventLimit over 100k events (1,000 states of 100 versions), unfiltered
// and with a time filter that keeps a tenth of them. It reports events/s
// read and returned.
func BenchmarkEventQuery(b *testing.B) {
	clock := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := openDisk(b, b.TempDir(), withNow(clock.Now))
	defer closeStore(b, s)
	ctx := context.Background()
	const states, versions = 1000, 100
	value := []byte(strings.Repeat("v", 64))
	start := clock.Now()
	for v := range versions {
		for lo := 0; lo < states; lo += 500 {
			ws := make([]Write, 500)
			for i := range ws {
				ws[i] = Write{Key: key("bench", fmt.Sprintf("s%04d", lo+i)), Value: value}
			}
			if _, err := s.WriteBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
		}
		_ = v
	}
	end := clock.Now()
	for _, c := range []struct {
		name string
		q    EventQuery
	}{
		{"all", EventQuery{Governor: "bench", Limit: MaxEventLimit}},
		{"tenth", EventQuery{Governor: "bench", Limit: MaxEventLimit, From: start.Add(end.Sub(start) * 9 / 10)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			total, returned := 0, 0
			for b.Loop() {
				q := c.q
				for {
					p, err := s.QueryEvents(ctx, q)
					if err != nil {
						b.Fatal(err)
					}
					returned += len(p.Events)
					if p.Next == "" {
						break
					}
					q.Cursor = p.Next
				}
				total += states * versions
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(total)/sec, "scanned/s")
			b.ReportMetric(float64(returned)/sec, "events/s")
		})
	}
}
