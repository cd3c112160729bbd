package localcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"
)

func sampleRecord() *Record {
	return &Record{
		Key:           key("gov", "st"),
		Value:         []byte{0x81, 0xa1, 'a', 0x01},
		Version:       7,
		UpdatedAt:     1_900_000_000_000_000_000,
		Change:        Change{Actor: "alice", Reason: "because", Time: 1_900_000_000_000_000_001},
		Origin:        "node-a",
		OpID:          "node-a-42",
		Clock:         Clock{Lamport: 99, HLC: 123 << 16, Vector: map[string]uint64{"node-a": 5, "node-b": 2, "c": 1}},
		SyncedVersion: 5,
		SyncedAt:      1_899_999_999_000_000_000,
		Pending:       true,
		journaled:     2,
	}
}

func TestCodecRoundTrip(t *testing.T) {
	t.Run("record", func(t *testing.T) {
		for _, r := range []*Record{
			sampleRecord(),
			{Key: key("g", "s"), Version: 3, Deleted: true, Clock: Clock{Vector: map[string]uint64{"n": 3}}, Pending: true, journaled: 1},
			{Key: key("g", "s"), Version: 1, Value: []byte("x"), SyncedVersion: 1, UpdatedAt: -5},
		} {
			got, err := decodeRecord(r.Key, encodeRecord(r))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("decoded %+v, want %+v", got, r)
			}
		}
	})
	t.Run("event", func(t *testing.T) {
		r := sampleRecord()
		for _, e := range []Event{
			{Key: r.Key, Action: ActionPut, FromVersion: 6, ToVersion: 7, Value: r.Value, Change: r.Change, Origin: r.Origin, OpID: r.OpID, Clock: r.Clock},
			{Key: r.Key, Action: ActionDelete, FromVersion: 7, ToVersion: 8, Origin: "n", OpID: "n-1", Clock: Clock{Vector: map[string]uint64{"n": 1}}},
		} {
			got, err := decodeEvent(e.Key, encodeEvent(&e))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("decoded %+v, want %+v", got, e)
			}
		}
	})
	t.Run("journal", func(t *testing.T) {
		j := JournalEntry{Seq: 12, OpID: "n-12", BatchID: "n-11", Key: key("g", "s"), BaseVersion: 4, Version: 5, Time: 77}
		got, err := decodeJournal(12, encodeJournal(&j))
		if err != nil || !reflect.DeepEqual(got, j) {
			t.Fatalf("decoded %+v, %v; want %+v", got, err, j)
		}
		for _, flags := range []struct{ strict, confirm bool }{{true, false}, {false, true}, {true, true}} {
			j.Strict, j.Confirm = flags.strict, flags.confirm
			got, err := decodeJournal(12, encodeJournal(&j))
			if err != nil || !reflect.DeepEqual(got, j) {
				t.Fatalf("decoded %+v, %v; want %+v", got, err, j)
			}
		}
	})
	t.Run("parked", func(t *testing.T) {
		p := ParkedEntry{JournalEntry: JournalEntry{Seq: 12, OpID: "n-12", BatchID: "n-12", Key: key("g", "s"), BaseVersion: 4, Version: 5, Time: 77},
			Reason: "permission denied", ParkedAt: 99}
		got, err := decodeParked(12, encodeParked(&p))
		if err != nil || !reflect.DeepEqual(got, p) {
			t.Fatalf("decoded %+v, %v; want %+v", got, err, p)
		}
	})
	t.Run("meta", func(t *testing.T) {
		m := meta{seq: 1 << 40, lamport: 3, hlc: 1 << 60, states: -1, journal: 1 << 33, parked: 5}
		got, err := decodeMeta(encodeMeta(m))
		if err != nil || got != m {
			t.Fatalf("decoded %+v, %v; want %+v", got, err, m)
		}
	})
}

// TestCodecCorrupt: every truncation and an unknown format are errors, never
// panics or silent garbage.
func TestCodecCorrupt(t *testing.T) {
	r := sampleRecord()
	e := Event{Key: r.Key, Action: ActionPut, FromVersion: 1, ToVersion: 2, Value: r.Value, Clock: r.Clock}
	j := JournalEntry{Seq: 1, OpID: "n-1", Key: r.Key, Version: 1}
	encoded := map[string][]byte{
		"record":  encodeRecord(r),
		"event":   encodeEvent(&e),
		"journal": encodeJournal(&j),
		"parked":  encodeParked(&ParkedEntry{JournalEntry: j, Reason: "r", ParkedAt: 3}),
		"meta":    encodeMeta(meta{seq: 1}),
	}
	decode := func(kind string, b []byte) error {
		var err error
		switch kind {
		case "record":
			_, err = decodeRecord(r.Key, b)
		case "event":
			_, err = decodeEvent(r.Key, b)
		case "journal":
			_, err = decodeJournal(1, b)
		case "parked":
			_, err = decodeParked(1, b)
		case "meta":
			_, err = decodeMeta(b)
		}
		return err
	}
	for kind, b := range encoded {
		t.Run(kind, func(t *testing.T) {
			for n := range len(b) {
				if err := decode(kind, b[:n]); !errors.Is(err, errCorrupt) {
					t.Fatalf("truncated to %d of %d: err = %v", n, len(b), err)
				}
			}
			if err := decode(kind, append(bytes.Clone(b), 0)); !errors.Is(err, errCorrupt) {
				t.Fatalf("trailing byte: err = %v", err)
			}
			bad := bytes.Clone(b)
			bad[0] = 9
			if err := decode(kind, bad); !errors.Is(err, errCorrupt) {
				t.Fatalf("format 9: err = %v", err)
			}
		})
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(sampleRecord()))
	f.Add(encodeRecord(&Record{Deleted: true, Version: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(key("g", "s"), b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to something that decodes the same.
		again, err := decodeRecord(key("g", "s"), encodeRecord(r))
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, r)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	r := sampleRecord()
	f.Add(encodeEvent(&Event{Action: ActionPut, ToVersion: 1, Value: r.Value, Clock: r.Clock, Change: r.Change}))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEvent(key("g", "s"), b)
		if err != nil {
			return
		}
		again, err := decodeEvent(key("g", "s"), encodeEvent(&e))
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, e)
		}
	})
}

func FuzzDecodeJournal(f *testing.F) {
	f.Add(encodeJournal(&JournalEntry{OpID: "n-1", BatchID: "n-1", Key: key("g", "s"), Version: 1}))
	f.Add(encodeJournal(&JournalEntry{OpID: "n-2", BatchID: "n-2", Key: key("g", "s"), Version: 2, Strict: true,
		Fence: Fence{Resource: "lock", Token: 7}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := decodeJournal(1, b)
		if err != nil {
			return
		}
		if again, err := decodeJournal(1, encodeJournal(&j)); err != nil || !reflect.DeepEqual(again, j) {
			t.Fatalf("re-decode %+v, %v; want %+v", again, err, j)
		}
	})
}

func TestKeys(t *testing.T) {
	for _, k := range []Key{key("g", "s"), key("a", ""), key("gov\x00", "st\xff"), key("g", "é/…")} {
		got, err := parseStateKey(stateKey(k))
		if err != nil || got != k {
			t.Fatalf("parseStateKey(stateKey(%q)) = %q, %v", k, got, err)
		}
	}
	// Governors never share a prefix: "ab"+"c" is not "a"+"bc".
	if bytes.HasPrefix(stateKey(key("ab", "c")), statePrefix("a", "")) {
		t.Fatal("governor a's prefix matches governor ab")
	}
	// Event keys of one state sort by version and exclude longer names.
	if bytes.HasPrefix(eventKey(key("g", "ab"), 1), eventPrefix(key("g", "a"))) {
		t.Fatal("events of g/a include g/ab's")
	}
	if bytes.Compare(eventKey(key("g", "a"), 2), eventKey(key("g", "a"), 256)) >= 0 {
		t.Fatal("event keys do not sort by version")
	}
	if seq, err := parseJournalKey(journalKey(258)); err != nil || seq != 258 {
		t.Fatalf("journal key round trip: %d, %v", seq, err)
	}
	for _, bad := range [][]byte{nil, {kindState}, {kindState, 0, 5, 'a'}, {kindEvent, 0, 0}} {
		if _, err := parseStateKey(bad); err == nil {
			t.Fatalf("parseStateKey(%q) succeeded", bad)
		}
	}
}

func TestClocks(t *testing.T) {
	t0 := time.UnixMilli(1_000_000)
	pt := uint64(1_000_000) << 16
	tests := []struct {
		name string
		last uint64
		now  time.Time
		want uint64
	}{
		{"first", 0, t0, pt},
		{"wall moved on", pt + 5, t0.Add(time.Millisecond), pt + 1<<16},
		{"same millisecond", pt, t0.Add(500 * time.Microsecond), pt + 1},
		{"wall went back", pt + 3, t0.Add(-time.Hour), pt + 4},
		{"logical overflow carries", pt | 0xffff, t0, pt + 1<<16},
		{"before 1970", 0, time.Unix(-5, 0), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hlcNext(tt.last, tt.now); got != tt.want {
				t.Fatalf("hlcNext(%#x, %v) = %#x, want %#x", tt.last, tt.now, got, tt.want)
			}
		})
	}
	t.Run("monotonic", func(t *testing.T) {
		var last uint64
		walls := []time.Time{t0, t0, t0.Add(-time.Second), t0.Add(time.Millisecond), t0, t0.Add(time.Hour), t0}
		for _, w := range walls {
			next := hlcNext(last, w)
			if next <= last {
				t.Fatalf("hlc went from %#x to %#x", last, next)
			}
			last = next
		}
		if !HLCTime(last).Equal(t0.Add(time.Hour)) {
			t.Fatalf("HLCTime = %v, want %v", HLCTime(last), t0.Add(time.Hour))
		}
	})
	t.Run("lamport", func(t *testing.T) {
		if lamportNext(0) != 1 || lamportNext(41) != 42 {
			t.Fatal("lamportNext")
		}
	})
	t.Run("vector", func(t *testing.T) {
		prev := map[string]uint64{"a": 2, "b": 5}
		next := vectorTick(prev, "a")
		if !reflect.DeepEqual(next, map[string]uint64{"a": 3, "b": 5}) {
			t.Fatalf("tick = %v", next)
		}
		if prev["a"] != 2 {
			t.Fatal("tick modified its input")
		}
		if v := vectorTick(nil, "n"); !reflect.DeepEqual(v, map[string]uint64{"n": 1}) {
			t.Fatalf("tick of nil = %v", v)
		}
		c := Clock{Vector: prev}.Clone()
		c.Vector["a"] = 100
		if prev["a"] != 2 {
			t.Fatal("Clone shares the vector")
		}
	})
}

// TestCodecFormat1: records and meta counters written before format 2 still
// decode; a record is then taken as pending once when its version is ahead of
// the synced one.
func TestCodecFormat1(t *testing.T) {
	v1 := []byte{formatV1, 0}
	v1 = binary.AppendUvarint(v1, 7) // version
	v1 = binary.AppendUvarint(v1, 5) // synced version
	v1 = binary.AppendVarint(v1, 11) // updated at
	v1 = appendChange(v1, Change{Actor: "a"})
	v1 = appendString(v1, "node-a")
	v1 = appendString(v1, "node-a-7")
	v1 = appendClock(v1, Clock{Lamport: 1, Vector: map[string]uint64{"node-a": 7}})
	v1 = appendBytes(v1, []byte{0xc0})
	r, err := decodeRecord(key("g", "s"), v1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != 7 || r.SyncedVersion != 5 || r.SyncedAt != 0 || !r.Pending || r.journaled != 1 || r.OpID != "node-a-7" || r.UpdatedAt != 11 {
		t.Fatalf("decoded %+v", r)
	}

	m1 := []byte{formatV1}
	for _, x := range []uint64{9, 8, 7} {
		m1 = binary.AppendUvarint(m1, x)
	}
	m1 = binary.AppendVarint(m1, 3)
	m1 = binary.AppendVarint(m1, 2)
	m, err := decodeMeta(m1)
	if err != nil || m != (meta{seq: 9, lamport: 8, hlc: 7, states: 3, journal: 2}) {
		t.Fatalf("decoded %+v, %v", m, err)
	}
}
