package syncer

import (
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
)

// TestStormDetector: a storm starts when the window holds more than the
// threshold, is reported once while it lasts, ends when the rate drops, and
// a later burst is a new storm; states are apart, and old states are
// forgotten.
func TestStormDetector(t *testing.T) {
	var st storms
	k, other := Key{Governor: "g", State: "hot"}, Key{Governor: "g", State: "other"}
	t0 := time.Unix(1_700_000_000, 0)
	const threshold, window = 3, time.Minute
	starts := 0
	note := func(key Key, at time.Time) int {
		started, n := st.note(key, at, threshold, window)
		if started {
			starts++
		}
		return n
	}
	for i := range 3 {
		note(k, t0.Add(time.Duration(i)*time.Second))
		note(other, t0.Add(time.Duration(i)*time.Second))
	}
	if starts != 0 {
		t.Fatalf("%d storms at the threshold", starts)
	}
	for i := range 10 { // a burst: one storm
		if n := note(k, t0.Add(time.Duration(3+i)*time.Second)); n != threshold+1 {
			t.Fatalf("window holds %d, want %d (kept bounded)", n, threshold+1)
		}
	}
	if starts != 1 {
		t.Fatalf("%d storms for one burst", starts)
	}
	// Quiet for longer than the window: over; a new burst is a new storm.
	later := t0.Add(time.Hour)
	for i := range 5 {
		note(k, later.Add(time.Duration(i)*time.Second))
	}
	if starts != 2 {
		t.Fatalf("%d storms after a second burst, want 2", starts)
	}
	// Many states: the old ones are forgotten.
	for i := range stormSweep + 10 {
		note(Key{Governor: "g", State: string(rune('a'+i%26)) + time.Duration(i).String()}, later.Add(2*time.Hour))
	}
	if len(st.keys) > stormSweep+10 || st.keys[other] != nil {
		t.Fatalf("%d states tracked; old state kept: %v", len(st.keys), st.keys[other] != nil)
	}
}

// TestFitConflict: values are left out, least needed first, until the
// record fits; the caller's base is not changed.
func TestFitConflict(t *testing.T) {
	big := func(c byte) []byte { return []byte(string(make([]byte, 1000)) + string(c)) }
	base := &conflict.Base{Version: 1, Value: big('b')}
	r := ConflictRecord{ID: "x", Key: Key{Governor: "g", State: "s"}, Winner: conflict.Remote, Base: base,
		Local: conflict.Side{Value: big('l')}, Remote: conflict.Side{Value: big('r')}}
	full := ConflictSize(r)
	FitConflict(&r, full)
	if r.Omitted != nil {
		t.Fatalf("omitted %v from a record that fits", r.Omitted)
	}
	FitConflict(&r, full-1500)
	if len(r.Omitted) != 2 || r.Omitted[0] != "base" || r.Omitted[1] != "local" || r.Base.Value != nil ||
		r.Local.Value != nil || r.Remote.Value == nil || base.Value == nil {
		t.Fatalf("omitted %v; base %v local %v remote %v; caller's base %v", r.Omitted, r.Base.Value != nil,
			r.Local.Value != nil, r.Remote.Value != nil, base.Value != nil)
	}
	FitConflict(&r, 1)
	if len(r.Omitted) != 3 || r.Remote.Value != nil {
		t.Fatalf("omitted %v", r.Omitted)
	}
}
