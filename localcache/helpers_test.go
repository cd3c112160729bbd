package localcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// testClock is a settable wall clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// nextMillisecond returns once the wall clock is in a later millisecond
// than when it was called: a write made after it has a later hybrid logical
// clock (which counts milliseconds) than one made before, on any store.
func nextMillisecond() {
	for ms := time.Now().UnixMilli(); time.Now().UnixMilli() <= ms; {
		time.Sleep(100 * time.Microsecond)
	}
}

func openMem(t testing.TB, mod ...func(*Options)) *Store {
	t.Helper()
	o := Options{InMemory: true, NodeID: "n1"}
	for _, f := range mod {
		f(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func openDisk(t testing.TB, dir string, mod ...func(*Options)) *Store {
	t.Helper()
	o := Options{Dir: dir, NodeID: "n1", GCInterval: -1}
	for _, f := range mod {
		f(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return s
}

func closeStore(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func u64(v uint64) *uint64 { return &v }

func key(g, s string) Key { return Key{Governor: g, State: s} }

func mustPut(t testing.TB, s *Store, k Key, v string) Record {
	t.Helper()
	rec, err := s.Write(context.Background(), Write{Key: k, Value: []byte(v)})
	if err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	return rec
}

func mustDelete(t testing.TB, s *Store, k Key) Record {
	t.Helper()
	rec, err := s.Write(context.Background(), Write{Key: k, Delete: true})
	if err != nil {
		t.Fatalf("delete %s: %v", k, err)
	}
	return rec
}

func mustEvents(t testing.TB, s *Store, k Key) []Event {
	t.Helper()
	evs, err := s.Events(context.Background(), k)
	if err != nil {
		t.Fatalf("events %s: %v", k, err)
	}
	return evs
}

func mustJournal(t testing.TB, s *Store) []JournalEntry {
	t.Helper()
	js, err := s.Journal(context.Background(), 0, 1<<30)
	if err != nil {
		t.Fatalf("journal: %v", err)
	}
	return js
}

// gate blocks the committer (through Options.hookGroup) until opened, so
// requests queue up and form one group.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) hook()          { <-g.ch }
func (g *gate) open()          { g.once.Do(func() { close(g.ch) }) }
func (g *gate) opt(o *Options) { o.hookGroup = g.hook }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitApplied waits until every group in the log is applied to Badger.
func waitApplied(t testing.TB, s *Store) {
	t.Helper()
	waitFor(t, "logged groups applied", func() bool { return s.applied.Load() == s.logged.Load() })
}

func wantConflict(t testing.TB, err error, expected, actual uint64) {
	t.Helper()
	var vc *VersionConflictError
	if !errors.As(err, &vc) || !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("err = %v, want version conflict", err)
	}
	if vc.Expected != expected || vc.Actual != actual {
		t.Fatalf("conflict expected/actual = %d/%d, want %d/%d", vc.Expected, vc.Actual, expected, actual)
	}
}

func itoa(i int) string { return fmt.Sprint(i) }
