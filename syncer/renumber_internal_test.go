package syncer

import "testing"

func TestRenumberingsKeepTheLatest(t *testing.T) {
	var r renumberings
	k := Key{Governor: "g", State: "s"}
	r.add(k, 1, "", 9) // no op: nothing a check could name
	if _, ok := r.get(k, 1, ""); ok {
		t.Fatal("a renumbering without an op was kept")
	}
	for v := uint64(1); v <= maxRenumberings+10; v++ {
		r.add(k, v, "op", v+100)
	}
	r.add(k, maxRenumberings+10, "op", 7) // again: updated, not added twice
	for v := uint64(1); v <= 10; v++ {
		if _, ok := r.get(k, v, "op"); ok {
			t.Fatalf("version %d kept past the bound", v)
		}
	}
	for v := uint64(11); v < maxRenumberings+10; v++ {
		if got, ok := r.get(k, v, "op"); !ok || got != v+100 {
			t.Fatalf("version %d: %d, %v; want %d", v, got, ok, v+100)
		}
	}
	if got, _ := r.get(k, maxRenumberings+10, "op"); got != 7 {
		t.Fatalf("updated renumbering: %d, want 7", got)
	}
	if len(r.m) != maxRenumberings || len(r.ring) != maxRenumberings {
		t.Fatalf("%d kept, %d in the ring; want %d", len(r.m), len(r.ring), maxRenumberings)
	}
}
