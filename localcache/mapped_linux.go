package localcache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// pageoutUnsupported is set once the kernel rejected MADV_PAGEOUT.
var pageoutUnsupported atomic.Bool

// releaseMapped asks the kernel to reclaim the resident pages of Badger's
// tables and value log files (see mapped.go) and returns how many
// bytes of mappings it covered. The caller holds ckMu, right after a
// checkpoint synced the files.
//
// MADV_PAGEOUT never discards data, whatever the range holds: should Badger
// unmap a file and the address be reused between reading the maps and the
// call, the advice only makes the kernel reclaim that memory if it can (and
// anonymous memory without swap it cannot). A kernel without MADV_PAGEOUT
// (before 5.4) rejects it with EINVAL: the store then stops trying.
func (s *Store) releaseMapped() (int64, error) {
	if pageoutUnsupported.Load() {
		return 0, nil
	}
	dir, err := filepath.Abs(s.opts.Dir)
	if err == nil {
		dir, err = filepath.EvalSymlinks(dir)
	}
	if err != nil {
		return 0, fmt.Errorf("release mapped files: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("release mapped files: %w", err)
	}
	ranges := releasableMappings(f, dir)
	f.Close()
	var n int64
	for _, r := range ranges {
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_PAGEOUT)
		switch {
		case errno == 0:
			n += int64(r.end - r.start)
		case errors.Is(errno, unix.EINVAL):
			pageoutUnsupported.Store(true)
			return n, fmt.Errorf("release mapped files: madvise(MADV_PAGEOUT): %w", errno)
		}
		// ENOMEM: the file was unmapped meanwhile.
	}
	return n, nil
}
