//go:build !linux

package localcache

import "os"

// fdatasync falls back to fsync where fdatasync is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// preallocate extends f to size bytes (reads of the new part return zeros).
func preallocate(f *os.File, size int64) error { return f.Truncate(size) }
