package localcache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func sampleWALOps() []walOp {
	return []walOp{
		{kind: walOpSet, userMeta: 1, key: []byte("s\x00\x01gstate"), value: []byte("record")},
		{kind: walOpSet, key: []byte("j\x00\x00\x00\x00\x00\x00\x00\x07"), value: []byte{}},
		{kind: walOpDelete, key: []byte("e-old")},
		{kind: walOpSet, key: metaCounters, value: bytes.Repeat([]byte{0xff}, 300)},
	}
}

func encodeSampleGroup(seq uint64, ops []walOp) []byte {
	p := appendWALGroupHeader(nil, seq, len(ops))
	for _, op := range ops {
		p = appendWALOp(p, op.kind, op.userMeta, op.key, op.value)
	}
	return p
}

func TestWALCodec(t *testing.T) {
	ops := sampleWALOps()
	for _, tc := range []struct {
		name string
		seq  uint64
		ops  []walOp
	}{
		{"one set", 1, ops[:1]},
		{"mixed", 1<<40 + 3, ops},
		{"empty", 7, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := encodeSampleGroup(tc.seq, tc.ops)
			seed := walSeed(newWALSalt())
			rec := appendWALRecord(nil, seed, payload)
			if len(rec)%8 != 0 || int64(len(rec)) != walRecordSize(len(payload)) {
				t.Fatalf("record of %d bytes: not 8-byte aligned, or not walRecordSize %d", len(rec), walRecordSize(len(payload)))
			}
			// Followed by the zeros of a preallocated segment.
			buf := append(append([]byte(nil), rec...), make([]byte, 64)...)
			got, n, err := decodeWALRecord(buf, seed)
			if err != nil || n != len(rec) || !bytes.Equal(got, payload) {
				t.Fatalf("decode record = %d bytes, n %d, %v; want %d bytes, n %d", len(got), n, err, len(payload), len(rec))
			}
			if _, n, err := decodeWALRecord(buf[n:], seed); n != 0 || err != nil {
				t.Fatalf("after the record: n %d, %v; want the end marker", n, err)
			}
			// Another segment's salt, or none: the record is not one of its.
			for _, other := range []uint32{0, walSeed(newWALSalt())} {
				if _, _, err := decodeWALRecord(buf, other); !errors.Is(err, errWALCorrupt) {
					t.Fatalf("decoded with seed %08x: %v, want a checksum mismatch", other, err)
				}
			}
			seq, dec, err := decodeWALGroup(got)
			if err != nil || seq != tc.seq || len(dec) != len(tc.ops) {
				t.Fatalf("decode group = %d, %d ops, %v", seq, len(dec), err)
			}
			for i := range dec {
				w := tc.ops[i]
				if w.kind == walOpDelete {
					w.value = nil
				}
				if !reflect.DeepEqual(dec[i], w) {
					t.Fatalf("op %d = %+v, want %+v", i, dec[i], w)
				}
			}
		})
	}
	t.Run("damage", func(t *testing.T) {
		payload := encodeSampleGroup(5, ops)
		seed := walSeed(newWALSalt())
		rec := appendWALRecord(nil, seed, payload)
		body := walHeaderSize + len(payload) // the padding after it is not checked
		for i := range body {
			bad := append([]byte(nil), rec...)
			bad[i] ^= 0x40
			if _, n, err := decodeWALRecord(bad, seed); err == nil && n != 0 {
				t.Fatalf("flipped byte %d: decoded", i)
			}
		}
		for cut := 1; cut < body; cut++ {
			if _, n, err := decodeWALRecord(rec[:cut], seed); err == nil && n != 0 {
				t.Fatalf("cut at %d: decoded", cut)
			}
		}
	})
}

// FuzzWALRecord feeds arbitrary bytes to the record and group decoders:
// they must not panic, and whatever decodes must encode back to the same
// bytes.
func FuzzWALRecord(f *testing.F) {
	f.Add(appendWALRecord(nil, 0, encodeSampleGroup(1, sampleWALOps())))
	f.Add(appendWALRecord(nil, 0, encodeSampleGroup(2, nil)))
	f.Add(appendWALRecord(nil, fuzzWALSeed, encodeSampleGroup(3, sampleWALOps())))
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, seed := range []uint32{0, fuzzWALSeed} {
			payload, n, err := decodeWALRecord(b, seed)
			if err != nil || n == 0 {
				continue
			}
			if again := appendWALRecord(nil, seed, payload); !bytes.Equal(again[:walHeaderSize+len(payload)], b[:walHeaderSize+len(payload)]) {
				t.Fatalf("record re-encodes differently")
			}
			fuzzWALGroup(t, payload)
		}
	})
}

// fuzzWALSeed is the seed of the salted records FuzzWALRecord decodes.
var fuzzWALSeed = walSeed(0x5eed)

// fuzzWALGroup checks that a group payload that decodes re-encodes to the
// same group.
func fuzzWALGroup(t *testing.T, payload []byte) {
	t.Helper()
	seq, ops, err := decodeWALGroup(payload)
	if err != nil {
		return
	}
	seq2, ops2, err := decodeWALGroup(encodeSampleGroup(seq, ops))
	if err != nil || seq2 != seq || len(ops2) != len(ops) {
		t.Fatalf("group re-decodes as %d, %d ops, %v; want %d, %d ops", seq2, len(ops2), err, seq, len(ops))
	}
	for i := range ops {
		if ops[i].kind != ops2[i].kind || ops[i].userMeta != ops2[i].userMeta ||
			!bytes.Equal(ops[i].key, ops2[i].key) || !bytes.Equal(ops[i].value, ops2[i].value) {
			t.Fatalf("op %d re-decodes as %+v, want %+v", i, ops2[i], ops[i])
		}
	}
}

// walLog builds a log of n groups in dir with the wal type alone and
// returns the offsets of the records in its only segment.
func walLog(t *testing.T, dir string, n int) (segment string, offsets []int64) {
	t.Helper()
	w, err := openWAL(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.replay(func(uint64, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		offsets = append(offsets, w.current().sizeOrZero())
		seq := w.nextSeq()
		if err := w.append(encodeSampleGroup(seq, sampleWALOps()[:1+i%4])); err != nil {
			t.Fatal(err)
		}
	}
	offsets = append(offsets, w.current().size)
	segment = w.current().path
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	return segment, offsets
}

func (s *walSegment) sizeOrZero() int64 {
	if s == nil {
		return 0
	}
	return s.size
}

func replayAll(t *testing.T, dir string) ([]uint64, error) {
	t.Helper()
	w, err := openWAL(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer w.close()
	var seqs []uint64
	_, err = w.replay(func(seq uint64, p []byte) error {
		if _, _, err := decodeWALGroup(p); err != nil {
			return err
		}
		seqs = append(seqs, seq)
		return nil
	})
	return seqs, err
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o750)
		}
		if d.Name() == "LOCK" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o640)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestWALTornTail cuts the last record at every byte, both by truncating
// the file and by zeroing the rest (as a preallocated segment would read):
// replay must end at the group before it and drop the torn bytes.
func TestWALTornTail(t *testing.T) {
	src := t.TempDir()
	seg, offsets := walLog(t, src, 4)
	lastStart, end := offsets[3], offsets[4]
	orig, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	orig = orig[:end+4096] // the preallocated rest is zeros too
	body := lastStart + walHeaderSize + int64(len(encodeSampleGroup(4, sampleWALOps()[:4])))
	for _, mode := range []string{"truncate", "zero"} {
		t.Run(mode, func(t *testing.T) {
			for cut := lastStart; cut <= end; cut++ {
				dir := t.TempDir()
				path := filepath.Join(dir, filepath.Base(seg))
				b := append([]byte(nil), orig...)
				if mode == "truncate" {
					b = b[:cut]
				} else {
					clear(b[cut:])
				}
				if err := os.WriteFile(path, b, 0o640); err != nil {
					t.Fatal(err)
				}
				seqs, err := replayAll(t, dir)
				if err != nil {
					t.Fatalf("cut at %d: %v", cut, err)
				}
				want := 3
				if cut >= body {
					want = 4 // only padding is missing
				}
				if len(seqs) != want || seqs[len(seqs)-1] != uint64(want) {
					t.Fatalf("cut at %d: replayed %v, want 1..%d", cut, seqs, want)
				}
				if info, _ := os.Stat(path); cut < body && mode == "truncate" && info.Size() != lastStart {
					t.Fatalf("cut at %d: torn tail left, file is %d bytes, want %d", cut, info.Size(), lastStart)
				}
			}
		})
	}
}

// TestWALCorruption damages a record with intact records after it: replay
// must refuse, in the last segment and in an earlier one.
func TestWALCorruption(t *testing.T) {
	t.Run("last segment", func(t *testing.T) {
		dir := t.TempDir()
		seg, offsets := walLog(t, dir, 4)
		b, _ := os.ReadFile(seg)
		b[offsets[1]+walHeaderSize+9] ^= 1 // inside the second group
		if err := os.WriteFile(seg, b, 0o640); err != nil {
			t.Fatal(err)
		}
		_, err := replayAll(t, dir)
		if !errors.Is(err, errWALCorrupt) || !strings.Contains(err.Error(), "acknowledged groups follow") {
			t.Fatalf("replay = %v, want corruption", err)
		}
	})
	t.Run("zeroed length in the last segment", func(t *testing.T) {
		// An end marker where the second group's header was: the groups
		// after it must not silently vanish.
		dir := t.TempDir()
		seg, offsets := walLog(t, dir, 4)
		b, _ := os.ReadFile(seg)
		clear(b[offsets[1] : offsets[1]+walHeaderSize])
		if err := os.WriteFile(seg, b, 0o640); err != nil {
			t.Fatal(err)
		}
		_, err := replayAll(t, dir)
		if !errors.Is(err, errWALCorrupt) || !strings.Contains(err.Error(), "acknowledged groups follow") {
			t.Fatalf("replay = %v, want corruption", err)
		}
	})
	t.Run("earlier segment", func(t *testing.T) {
		dir := t.TempDir()
		seg, offsets := walLog(t, dir, 3)
		b, _ := os.ReadFile(seg)
		// A later segment continues the log (named without a salt, as
		// earlier versions wrote them).
		next := appendWALRecord(nil, 0, encodeSampleGroup(4, sampleWALOps()))
		if err := os.WriteFile(filepath.Join(dir, "0000000000000004.wal"), next, 0o640); err != nil {
			t.Fatal(err)
		}
		b[offsets[2]+walHeaderSize+1] ^= 1 // the earlier segment's last group
		if err := os.WriteFile(seg, b, 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := replayAll(t, dir); !errors.Is(err, errWALCorrupt) {
			t.Fatalf("replay = %v, want corruption", err)
		}
	})
	t.Run("missing groups", func(t *testing.T) {
		dir := t.TempDir()
		walLog(t, dir, 2)
		next := appendWALRecord(nil, 0, encodeSampleGroup(9, nil))
		if err := os.WriteFile(filepath.Join(dir, "0000000000000009.wal"), next, 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := replayAll(t, dir); !errors.Is(err, errWALCorrupt) {
			t.Fatalf("replay = %v, want corruption", err)
		}
	})
	t.Run("store refuses to open", func(t *testing.T) {
		dir := t.TempDir()
		s := openDisk(t, dir, func(o *Options) { o.noCheckpoint = true })
		for i := range 5 {
			mustPut(t, s, key("g", "k"+itoa(i)), "v")
		}
		closeStore(t, s)
		segs := walSegments(t, dir)
		b, _ := os.ReadFile(segs[len(segs)-1])
		b[walHeaderSize+3] ^= 1 // the first group
		if err := os.WriteFile(segs[len(segs)-1], b, 0o640); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Options{Dir: dir, NodeID: "n1", GCInterval: -1})
		if !errors.Is(err, errWALCorrupt) || !strings.Contains(err.Error(), "write-ahead log") {
			t.Fatalf("open = %v, want corruption", err)
		}
	})
}

func walSegments(t testing.TB, dir string) []string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, walDirName, "*"+walSegmentExt))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(segs)
	return segs
}

// checkExactlyOnce checks that the store holds, per key, version want[k]
// with one event per version, and one journal entry per version overall.
func checkExactlyOnce(t *testing.T, s *Store, want map[Key]uint64) {
	t.Helper()
	ctx := context.Background()
	var total uint64
	for k, v := range want {
		rec, err := s.Get(ctx, k)
		if err != nil || rec.Version != v || string(rec.Value) != k.State+"@"+itoa(int(v)) {
			t.Fatalf("%s = v%d %q, %v; want v%d", k, rec.Version, rec.Value, err, v)
		}
		evs := mustEvents(t, s, k)
		if uint64(len(evs)) != v {
			t.Fatalf("%s: %d events, want %d", k, len(evs), v)
		}
		for i, e := range evs {
			if e.ToVersion != uint64(i+1) || string(e.Value) != k.State+"@"+itoa(i+1) {
				t.Fatalf("%s event %d = v%d %q", k, i, e.ToVersion, e.Value)
			}
		}
		total += v
	}
	js := mustJournal(t, s)
	if uint64(len(js)) != total {
		t.Fatalf("%d journal entries, want %d", len(js), total)
	}
	for i, j := range js {
		if j.Seq != uint64(i+1) {
			t.Fatalf("journal entry %d has seq %d", i, j.Seq)
		}
	}
	if st := s.Stats(); st.States != int64(len(want)) || st.JournalDepth != int64(total) {
		t.Fatalf("stats %+v, want %d states, %d journal entries", st, len(want), total)
	}
}

func putVersion(t *testing.T, s *Store, k Key, v uint64) {
	t.Helper()
	rec, err := s.Write(context.Background(), Write{Key: k, Value: []byte(k.State + "@" + itoa(int(v))), IfVersion: u64(v - 1)})
	if err != nil || rec.Version != v {
		t.Fatalf("put %s v%d: %+v, %v", k, v, rec, err)
	}
}

// TestCrashBetweenLogAndApply fails a group after it is durable in the log
// and before Badger has it: its writers were acknowledged, point reads see
// the group, the store refuses writes and scans, and the next Open applies
// the group exactly once.
func TestCrashBetweenLogAndApply(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var crash atomic.Bool
	s := openDisk(t, dir, func(o *Options) {
		o.hookAfterWAL = func() error {
			if crash.Load() {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	want := map[Key]uint64{}
	for i := range 4 {
		k := key("g", "k"+itoa(i))
		for v := uint64(1); v <= 3; v++ {
			putVersion(t, s, k, v)
		}
		want[k] = 3
	}
	waitApplied(t, s)
	crash.Store(true)
	k0, kb := key("g", "k0"), key("g", "batch")
	_, err := s.WriteBatch(ctx, []Write{
		{Key: k0, Value: []byte("k0@4"), IfVersion: u64(3)},
		{Key: kb, Value: []byte("batch@1")},
	})
	if err != nil {
		t.Fatalf("write in the crashed group (durable in the log): %v", err)
	}
	waitFor(t, "store failed", func() bool { return s.failedErr() != nil })
	if _, err := s.Write(ctx, Write{Key: key("g", "after"), Value: []byte("x")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write after the failure: %v", err)
	}
	if rec, err := s.Get(ctx, k0); err != nil || rec.Version != 4 {
		t.Fatalf("read of an acknowledged write after the failure: %+v, %v", rec, err)
	}
	if recs, err := s.GetMany(ctx, []Key{kb, key("g", "k1")}); err != nil || recs[0] == nil || recs[0].Version != 1 || recs[1].Version != 3 {
		t.Fatalf("get many after the failure: %v", err)
	}
	if _, _, err := s.List(ctx, "g", "", "", 0, 0); !errors.Is(err, ErrFailed) {
		t.Fatalf("list that would miss an acknowledged write: %v", err)
	}
	if _, err := s.Events(ctx, kb); !errors.Is(err, ErrFailed) {
		t.Fatalf("events that would miss an acknowledged write: %v", err)
	}
	closeStore(t, s)

	want[k0], want[kb] = 4, 1
	for range 2 { // the second Open has nothing left to replay
		s = openDisk(t, dir)
		checkExactlyOnce(t, s, want)
		closeStore(t, s)
	}
	s = openDisk(t, dir)
	defer closeStore(t, s)
	putVersion(t, s, k0, 5)
	want[k0] = 5
	checkExactlyOnce(t, s, want)
	if got := mustJournal(t, s); got[len(got)-1].OpID != s.Origin()+"-"+itoa(len(got)) {
		t.Fatalf("op id after replay: %+v", got[len(got)-1])
	}
}

// TestReplayIdempotent keeps the whole log, so every Open replays groups
// Badger already holds: nothing may be applied twice.
func TestReplayIdempotent(t *testing.T) {
	dir := t.TempDir()
	keep := func(o *Options) { o.noCheckpoint = true }
	want := map[Key]uint64{}
	for round := range 3 {
		s := openDisk(t, dir, keep)
		for i := range 5 {
			k := key("g", "k"+itoa(i))
			putVersion(t, s, k, want[k]+1)
			want[k]++
		}
		checkExactlyOnce(t, s, want)
		closeStore(t, s)
		if n := len(walSegments(t, dir)); n != round+1 {
			t.Fatalf("round %d: %d segments, want %d (one per open)", round, n, round+1)
		}
	}
	s := openDisk(t, dir) // replays everything, then checkpoints
	checkExactlyOnce(t, s, want)
	if n := len(walSegments(t, dir)); n != 0 {
		t.Fatalf("%d segments after the checkpoint at open", n)
	}
	closeStore(t, s)
}

// lastWALRecord reads the last segment of the store in dir and returns its
// path, its bytes and the offsets where its last record starts and ends.
func lastWALRecord(t *testing.T, dir string) (seg string, b []byte, start, end int) {
	t.Helper()
	segs := walSegments(t, dir)
	if len(segs) == 0 {
		t.Fatal("no log segment")
	}
	seg = segs[len(segs)-1]
	_, seed, err := parseWALSegmentName(filepath.Base(seg))
	if err != nil {
		t.Fatal(err)
	}
	if b, err = os.ReadFile(seg); err != nil {
		t.Fatal(err)
	}
	for off := 0; ; {
		_, n, err := decodeWALRecord(b[off:], seed)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		start, end = off, off+n
		off = end
	}
	if end == 0 {
		t.Fatalf("%s holds no record", seg)
	}
	return seg, b, start, end
}

// TestTornTailStore crashes before the last group reached Badger, then cuts
// its record at a few places: Open must succeed with the state as of the
// group before (or with the group, when the record is whole).
func TestTornTailStore(t *testing.T) {
	tmpl := t.TempDir()
	var crash atomic.Bool
	s := openDisk(t, tmpl, func(o *Options) {
		o.hookAfterWAL = func() error {
			if crash.Load() {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	k := key("g", "k")
	putVersion(t, s, k, 1)
	putVersion(t, s, k, 2)
	waitApplied(t, s)
	crash.Store(true)
	// Acknowledged once in the log; its apply fails.
	if _, err := s.Write(context.Background(), Write{Key: k, Value: []byte("k@3"), IfVersion: u64(2)}); err != nil {
		t.Fatalf("crashed write: %v", err)
	}
	closeStore(t, s)
	seg, _, start, end := lastWALRecord(t, tmpl)
	for _, cut := range []int{start, start + 1, start + walHeaderSize, start + walHeaderSize + 20, end - 9, end} {
		dir := t.TempDir()
		copyDir(t, tmpl, dir)
		path := filepath.Join(dir, walDirName, filepath.Base(seg))
		if err := os.Truncate(path, int64(cut)); err != nil {
			t.Fatal(err)
		}
		s := openDisk(t, dir)
		want := uint64(2)
		if cut == end {
			want = 3
		}
		checkExactlyOnce(t, s, map[Key]uint64{k: want})
		putVersion(t, s, k, want+1) // the log goes on
		closeStore(t, s)
	}
}

// TestCheckpointDropsSegments writes enough for several segments with a
// short checkpoint interval: old segments go, and everything survives a
// reopen.
func TestCheckpointDropsSegments(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(o *Options) { o.CheckpointInterval = 20 * time.Millisecond })
	value := strings.Repeat("x", 4000)
	want := map[Key]uint64{}
	seen := map[string]bool{}
	for i := range 1200 { // about 10 MiB of log: rotations at checkpoints
		k := key("g", "k"+itoa(i%50))
		v := want[k] + 1
		if _, err := s.Write(context.Background(), Write{Key: k, Value: []byte(k.State + "@" + itoa(int(v)) + value)}); err != nil {
			t.Fatal(err)
		}
		want[k] = v
		for _, p := range walSegments(t, dir) {
			seen[p] = true
		}
	}
	waitFor(t, "old segments deleted", func() bool {
		return len(walSegments(t, dir)) == 1
	})
	if len(seen) < 3 {
		t.Fatalf("only %d segments were ever written", len(seen))
	}
	closeStore(t, s)
	if segs := walSegments(t, dir); len(segs) != 0 {
		t.Fatalf("segments after close: %v", segs)
	}
	s = openDisk(t, dir)
	defer closeStore(t, s)
	ctx := context.Background()
	for k, v := range want {
		rec, err := s.Get(ctx, k)
		if err != nil || rec.Version != v || !strings.HasPrefix(string(rec.Value), k.State+"@"+itoa(int(v))+"x") {
			t.Fatalf("%s = v%d, %v; want v%d", k, rec.Version, err, v)
		}
	}
	if st := s.Stats(); st.JournalDepth != 1200 || st.States != 50 {
		t.Fatalf("stats %+v", st)
	}
	spares, _ := filepath.Glob(filepath.Join(dir, walDirName, "*"+walSpareExt))
	if len(spares) == 0 || len(spares) > walSpareSegments {
		t.Fatalf("spares after close and reopen: %v", spares)
	}
	// The next writes go to a recycled segment, old records behind them; a
	// copy of the directory taken while the store is open (as a crash leaves
	// it, the segment not closed) replays that segment and has them.
	k := key("g", "k0")
	for range 3 {
		v := want[k] + 1
		if _, err := s.Write(ctx, Write{Key: k, Value: []byte(k.State + "@" + itoa(int(v)) + value)}); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	if left, _ := filepath.Glob(filepath.Join(dir, walDirName, "*"+walSpareExt)); len(left) != len(spares)-1 {
		t.Fatalf("spares %v after writing, want one of %v reused", left, spares)
	}
	crash := t.TempDir()
	copyDir(t, dir, crash)
	s2 := openDisk(t, crash)
	defer closeStore(t, s2)
	if rec, err := s2.Get(ctx, k); err != nil || rec.Version != want[k] {
		t.Fatalf("after a crash %s = v%d, %v; want v%d", k, rec.Version, err, want[k])
	}
}

// TestWALRecyclesSegments checks that a checkpointed segment becomes a spare
// that the next new segment reuses (the same file, its old records still
// behind the new ones), that such a segment replays exactly its new groups
// without a warning, and that a torn record followed by old records is still
// a torn tail.
func TestWALRecyclesSegments(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	warns := func() int { return strings.Count(logs.String(), "level=WARN") }
	open := func() *wal {
		t.Helper()
		w, err := openWAL(dir, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	big := bytes.Repeat([]byte{0xab}, 300<<10) // four of them fill walRotateBytes
	group := func(seq uint64, value []byte) []byte {
		return encodeSampleGroup(seq, []walOp{{kind: walOpSet, key: []byte("k" + itoa(int(seq))), value: value}})
	}
	w := open()
	if _, err := w.replay(func(uint64, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	appendGroups := func(from, to uint64, value []byte) {
		t.Helper()
		for seq := from; seq <= to; seq++ {
			if err := w.append(group(seq, value)); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendGroups(1, 4, big)
	if err := w.advance(4, false); err != nil { // segment 1 is current: it rotates at the next append
		t.Fatal(err)
	}
	appendGroups(5, 8, big)
	if err := w.advance(8, false); err != nil { // segment 1 goes, and becomes a spare
		t.Fatal(err)
	}
	spares, _ := filepath.Glob(filepath.Join(dir, "*"+walSpareExt))
	if len(spares) != 1 {
		t.Fatalf("spares after the checkpoint: %v", spares)
	}
	spareInfo, err := os.Stat(spares[0])
	if err != nil {
		t.Fatal(err)
	}
	appendGroups(9, 9, []byte("nine"))
	appendGroups(10, 10, []byte("ten"))
	seg9s, _ := filepath.Glob(filepath.Join(dir, "0000000000000009-*"+walSegmentExt))
	if len(seg9s) != 1 {
		t.Fatalf("segments of group 9: %v", seg9s)
	}
	seg9 := seg9s[0]
	info, err := os.Stat(seg9)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(spareInfo, info) {
		t.Fatal("segment 9 is a new file, not the spare")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*"+walSpareExt)); len(left) != 0 {
		t.Fatalf("spares left after reuse: %v", left)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(seg9)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, big[:4096]) {
		t.Fatal("segment 9 does not hold segment 1's old records: the test does not exercise them")
	}

	replay := func() []string {
		t.Helper()
		w := open()
		defer w.close()
		var got []string
		if _, err := w.replay(func(seq uint64, p []byte) error {
			_, ops, err := decodeWALGroup(p)
			if err != nil {
				return err
			}
			got = append(got, itoa(int(seq))+"="+string(ops[0].value))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := replay(); !reflect.DeepEqual(got, []string{"9=nine", "10=ten"}) || warns() != 0 {
		t.Fatalf("replayed %v with %d warnings, want [9=nine 10=ten] and none", got, warns())
	}

	// Damage group 10: the old records after it fail their checksums under
	// segment 9's salt, so it is a torn tail, cut off.
	rec9 := walRecordSize(len(group(9, []byte("nine"))))
	b[rec9+walHeaderSize+9] ^= 0xff
	if err := os.WriteFile(seg9, b, 0o640); err != nil {
		t.Fatal(err)
	}
	if got := replay(); !reflect.DeepEqual(got, []string{"9=nine"}) || warns() != 1 {
		t.Fatalf("replayed %v with %d warnings, want [9=nine] and the torn tail's", got, warns())
	}
	if info, _ := os.Stat(seg9); info.Size() != rec9 {
		t.Fatalf("segment 9 is %d bytes after the torn tail, want %d", info.Size(), rec9)
	}
}

// TestTornTailWithEmbeddedRecord: an app's value holding the bytes of a log
// record (with a later sequence number and a checksum that would pass in a
// segment without a salt) must not make the torn record that carries it
// look like damage in front of acknowledged groups: Open drops the torn,
// unacknowledged group and goes on.
func TestTornTailWithEmbeddedRecord(t *testing.T) {
	tmpl := t.TempDir()
	var crash atomic.Bool
	s := openDisk(t, tmpl, func(o *Options) {
		o.hookAfterWAL = func() error {
			if crash.Load() {
				return errors.New("simulated crash")
			}
			return nil
		}
	})
	k := key("g", "k")
	putVersion(t, s, k, 1)
	putVersion(t, s, k, 2)
	waitApplied(t, s)
	next := s.wal.nextSeq()
	var val []byte
	for _, seed := range []uint32{0, walSeed(newWALSalt())} {
		fake := appendWALRecord(nil, seed, encodeSampleGroup(next+1000, []walOp{{kind: walOpSet, key: []byte("x"), value: []byte("y")}}))
		for shift := range 8 { // one copy lands 8-byte aligned in the segment
			val = append(val, bytes.Repeat([]byte{'p'}, shift)...)
			val = append(val, fake...)
		}
	}
	val = append(val, bytes.Repeat([]byte{'z'}, 12000)...) // the record spans several pages
	crash.Store(true)
	if _, err := s.Write(context.Background(), Write{Key: k, Value: val, IfVersion: u64(2)}); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	seg, b, start, _ := lastWALRecord(t, tmpl)
	// Torn: only the first two pages of the last record reached the disk.
	cut := (start/4096 + 2) * 4096
	if findWALRecordAfter(b[:cut], start+walHeaderSize, next, 0) < 0 {
		t.Fatal("the fake records are not where an unsalted segment would take them for groups: the test does not exercise them")
	}
	dir := t.TempDir()
	copyDir(t, tmpl, dir)
	if err := os.Truncate(filepath.Join(dir, walDirName, filepath.Base(seg)), int64(cut)); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkExactlyOnce(t, s, map[Key]uint64{k: 2})
}

// TestWALReadsUnsaltedSegments: segments named without a salt (as earlier
// versions wrote them) replay, and the log goes on in salted segments.
func TestWALReadsUnsaltedSegments(t *testing.T) {
	dir := t.TempDir()
	var b []byte
	for seq := uint64(1); seq <= 3; seq++ {
		b = appendWALRecord(b, 0, encodeSampleGroup(seq, sampleWALOps()[:seq]))
	}
	if err := os.WriteFile(filepath.Join(dir, "0000000000000001"+walSegmentExt), append(b, make([]byte, 64)...), 0o640); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	next, err := w.replay(func(seq uint64, _ []byte) error { seqs = append(seqs, seq); return nil })
	if err != nil || next != 4 || !reflect.DeepEqual(seqs, []uint64{1, 2, 3}) {
		t.Fatalf("replay = %v, next %d, %v", seqs, next, err)
	}
	if err := w.append(encodeSampleGroup(4, sampleWALOps())); err != nil {
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if segs, _ := filepath.Glob(filepath.Join(dir, "0000000000000004-*"+walSegmentExt)); len(segs) != 1 {
		t.Fatalf("group 4 is not in a salted segment of its own: %v", segs)
	}
	if seqs, err := replayAll(t, dir); err != nil || !reflect.DeepEqual(seqs, []uint64{1, 2, 3, 4}) {
		t.Fatalf("replay = %v, %v", seqs, err)
	}
}

// TestWALEmptyLastSegment: a last segment that holds no group (a crash
// came before its first append) is removed at replay, and the segment that
// starts at the same group under a new salt is then the only one.
func TestWALEmptyLastSegment(t *testing.T) {
	dir := t.TempDir()
	walLog(t, dir, 3)
	empty := filepath.Join(dir, walSegmentName(4, newWALSalt()))
	if err := os.WriteFile(empty, make([]byte, 4096), 0o640); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if next, err := w.replay(func(uint64, []byte) error { return nil }); err != nil || next != 4 {
		t.Fatalf("replay: next %d, %v", next, err)
	}
	if _, err := os.Stat(empty); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the empty segment is still there: %v", err)
	}
	if err := w.append(encodeSampleGroup(4, sampleWALOps())); err != nil {
		t.Fatal(err)
	}
	w.close()
	if seqs, err := replayAll(t, dir); err != nil || !reflect.DeepEqual(seqs, []uint64{1, 2, 3, 4}) {
		t.Fatalf("replay = %v, %v", seqs, err)
	}
}

func TestParseWALSegmentName(t *testing.T) {
	salt := newWALSalt()
	for _, tc := range []struct {
		name  string
		first uint64
		seed  uint32
		ok    bool
	}{
		{walSegmentName(7, salt), 7, walSeed(salt), true},
		{"00000000000000ff.wal", 255, 0, true},
		{"ff.wal", 0, 0, false},
		{"00000000000000ff-12.wal", 0, 0, false},
		{"00000000000000ff-zzzzzzzzzzzzzzzz.wal", 0, 0, false},
		{"00000000000000ff.spare", 0, 0, false},
		{"notasegment.wal", 0, 0, false},
	} {
		first, seed, err := parseWALSegmentName(tc.name)
		if (err == nil) != tc.ok || first != tc.first || seed != tc.seed {
			t.Errorf("%s: first %d, seed %08x, %v; want %d, %08x, ok %v", tc.name, first, seed, err, tc.first, tc.seed, tc.ok)
		}
		if err != nil && !errors.Is(err, errWALCorrupt) {
			t.Errorf("%s: %v does not wrap errWALCorrupt", tc.name, err)
		}
	}
}
