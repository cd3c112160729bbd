package localcache

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func checkpointFile(t *testing.T, dir string) uint64 {
	t.Helper()
	ck, err := readWALCheckpoint(filepath.Join(dir, walDirName, walCheckpointName))
	if err != nil {
		t.Fatal(err)
	}
	return ck
}

// TestBadgerSyncFailureFailsStore: when a checkpoint cannot sync Badger's
// files, the store fails and never checkpoints again, even once the files
// sync: after a write-back error a later successful fdatasync proves nothing
// about the pages that failed. The log keeps every acknowledged group from
// the last good checkpoint on, and the next Open has them all.
func TestBadgerSyncFailureFailsStore(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openDisk(t, dir, func(o *Options) { o.CheckpointInterval = time.Hour })
	k := key("g", "k")
	for v := uint64(1); v <= 5; v++ {
		putVersion(t, s, k, v)
	}
	waitApplied(t, s)
	if err := s.checkpoint(ckPeriodic); err != nil {
		t.Fatal(err)
	}
	before := checkpointFile(t, dir)
	if before != s.applied.Load() {
		t.Fatalf("checkpoint %d, applied %d", before, s.applied.Load())
	}

	// A ".mem" entry that cannot be opened for syncing (ENXIO) stands in for
	// a write-back error (EIO) on a memtable log.
	l, err := net.Listen("unix", filepath.Join(dir, "99999.mem"))
	if err != nil {
		t.Fatal(err)
	}
	for v := uint64(6); v <= 10; v++ {
		putVersion(t, s, k, v) // acknowledged: the log is fine
	}
	waitApplied(t, s)
	s.ckNotify <- struct{}{} // the checkpoint loop's turn
	waitFor(t, "the store to fail", func() bool { return s.failedErr() != nil })
	if err := s.failedErr(); !errors.Is(err, ErrFailed) {
		t.Fatalf("failure %v does not wrap ErrFailed", err)
	}
	if _, err := s.Write(ctx, Write{Key: k, Value: []byte("refused"), IfVersion: u64(10)}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write after the failure: %v, want ErrFailed", err)
	}

	l.Close() // removes the socket: Badger's files sync again
	if err := s.checkpoint(ckPeriodic); !errors.Is(err, ErrFailed) {
		t.Fatalf("checkpoint of a failed store: %v, want ErrFailed", err)
	}
	if got := checkpointFile(t, dir); got != before {
		t.Fatalf("checkpoint moved from %d to %d after Badger's files failed to sync", before, got)
	}
	if err := s.Close(ctx); err != nil {
		t.Logf("close of a failed store: %v", err)
	}
	if got := checkpointFile(t, dir); got != before {
		t.Fatalf("close moved the checkpoint from %d to %d", before, got)
	}

	s = openDisk(t, dir)
	defer closeStore(t, s)
	checkExactlyOnce(t, s, map[Key]uint64{k: 10})
}

// TestMkdirSynced creates missing parents, accepts an existing directory and
// refuses a file in the way.
func TestMkdirSynced(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b", "c")
	if err := mkdirSynced(deep, 0o750); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(deep); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Fatalf("stat %s: %v, %v", deep, fi, err)
	}
	if err := mkdirSynced(deep, 0o750); err != nil {
		t.Fatalf("existing directory: %v", err)
	}
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mkdirSynced(file, 0o750); err == nil {
		t.Fatal("a file where the directory goes: no error")
	}
	if err := mkdirSynced(filepath.Join(file, "sub"), 0o750); err == nil {
		t.Fatal("a file where a parent goes: no error")
	}
}

// TestValueLogGCSyncFailure: a value log GC pass moves the live values of
// an old value log file into the current one without syncing them. When the
// sync that follows fails, the old file must stay on disk (the moved copies
// may never reach it) and the store fails; the next Open reads every value
// and event.
func TestValueLogGCSyncFailure(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(o *Options) {
		o.CheckpointInterval = time.Hour
		o.valueLogFileSize = 1 << 20 // many files,
		o.memTableSize = 64 << 10    // and tables whose compaction counts the garbage in them
	})
	value := func(k Key, v uint64) string { return k.State + "@" + itoa(int(v)) + ":" + strings.Repeat("v", 2000) }
	want := make(map[Key]uint64)
	for v := uint64(1); v <= 8; v++ {
		for i := range 200 {
			k := key("g", "k"+itoa(i))
			if _, err := s.Write(context.Background(), Write{Key: k, Value: []byte(value(k, v)), IfVersion: u64(v - 1)}); err != nil {
				t.Fatal(err)
			}
			want[k] = v
		}
	}
	waitApplied(t, s)
	if err := s.db.Flatten(1); err != nil { // compactions record each file's garbage
		t.Fatal(err)
	}

	// A pass that syncs: the rewritten file goes once the sync is done.
	before := vlogFiles(t, dir)
	if err := s.gcOnce(); err != nil {
		t.Fatalf("gc pass: %v", err)
	}
	if after := vlogFiles(t, dir); len(after) >= len(before) {
		t.Fatalf("value log files %v after a gc pass, before %v: the test collects nothing", after, before)
	}

	// A pass whose sync fails (see TestBadgerSyncFailureFailsStore).
	l, err := net.Listen("unix", filepath.Join(dir, "99999.mem"))
	if err != nil {
		t.Fatal(err)
	}
	before = vlogFiles(t, dir)
	if err := s.gcOnce(); !errors.Is(err, ErrFailed) {
		t.Fatalf("gc pass with a failing sync: %v, want ErrFailed (ErrNoRewrite: nothing left to collect)", err)
	}
	for _, f := range before {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("value log file %s gone after a gc pass whose sync failed: %v", f, err)
		}
	}
	l.Close()
	if err := s.Close(context.Background()); err != nil {
		t.Logf("close of a failed store: %v", err)
	}

	s = openDisk(t, dir)
	defer closeStore(t, s)
	for k, v := range want {
		rec, err := s.Get(context.Background(), k)
		if err != nil || rec.Version != v || string(rec.Value) != value(k, v) {
			t.Fatalf("%s: v%d, %v; want v%d", k, rec.Version, err, v)
		}
		for i, e := range mustEvents(t, s, k) {
			if e.ToVersion != uint64(i+1) || string(e.Value) != value(k, e.ToVersion) {
				t.Fatalf("%s: event %d is v%d with a wrong value", k, i, e.ToVersion)
			}
		}
	}
}

func vlogFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}
