package syncer

import (
	"testing"
	"time"
)

// TestWatchEndedLeavesANewerWatch: a governor dropped and added again runs
// a new watch while the old one stops; the old one's end leaves the new
// one's live freshness alone.
func TestWatchEndedLeavesANewerWatch(t *testing.T) {
	p := NewPuller(NewMemJournal("n"), nil, PullOptions{})
	then := time.Now().Add(-time.Minute)
	p.setFresh("g", freshness{live: true, watch: 2})
	p.watchEnded("g", 1, then)
	if at, ok := p.FreshAt("g"); !ok || time.Since(at) > time.Second {
		t.Fatalf("fresh at %v (%v) after an older watch ended, want live", at, ok)
	}
	p.watchEnded("g", 2, then)
	if at, ok := p.FreshAt("g"); !ok || !at.Equal(then) {
		t.Fatalf("fresh at %v (%v) after the live watch ended, want %v", at, ok, then)
	}
}
