package localcache

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
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
