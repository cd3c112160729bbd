package sockapi

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestWorkers: a job never waits for another (each blocks until all have
// started), idle workers take later jobs (rounds of 50 jobs never need more
// than 50 workers), and every worker exits once quit
// is closed.
func TestWorkers(t *testing.T) {
	before := runtime.NumGoroutine()
	quit := make(chan struct{})
	w := newWorkers(quit)
	for round := range 3 {
		const n = 50
		var started, done sync.WaitGroup
		started.Add(n)
		done.Add(n)
		for range n {
			w.run(func() {
				defer done.Done()
				started.Done()
				started.Wait() // every job of the round runs at once
			})
		}
		finished := make(chan struct{})
		go func() { done.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: jobs waited for each other", round)
		}
		time.Sleep(100 * time.Millisecond) // the workers go idle
		if got := runtime.NumGoroutine() - before; got < 1 || got > n {
			t.Fatalf("round %d: %d workers for %d jobs at a time, want idle workers kept and reused", round, got, n)
		}
	}
	close(quit)
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after quit, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
