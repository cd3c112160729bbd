package localcache

import (
	"bufio"
	"bytes"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// Resident memory of Badger's files.
//
// Badger memory-maps its tables (.sst) and value log files (.vlog) and writes
// them through the mapping, so every page it ever wrote stays in the
// process's resident set: after a million 256-byte writes, close to a
// gigabyte of file-backed RSS, as large as the store itself, which a pod's
// memory accounting and the OOM killer count against the sidecar. Badger has
// no option to avoid the mappings.
//
// After each checkpoint, when the files are synced and their pages clean,
// the store asks the kernel to reclaim the pages of Badger's tables and
// value log files (see releaseMapped, which uses madvise(MADV_PAGEOUT): the
// mapping stays and its contents are preserved; the next access reads the
// page back from the page cache or the disk). Both are only appended to or
// read: the value log file being written faults back in at most the page it
// appends to. Memtable logs (.mem), rewritten in place and soon deleted, are
// left alone. What stays resident is the memtables and whatever was written
// or read since the last checkpoint. Reads the read cache answers never
// touch these pages; reads that miss it may pay a disk read, which is the
// price of a memory budget far below the store's size.

// mappedRange is one mapping of a Badger file that releaseMapped may
// reclaim.
type mappedRange struct {
	start, end uintptr
}

// releasableMappings parses maps (the format of /proc/self/maps) and returns
// the shared mappings of the tables and value log files in dir (an absolute
// path, symlinks resolved).
func releasableMappings(maps io.Reader, dir string) []mappedRange {
	var out []mappedRange
	sc := bufio.NewScanner(maps)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 6 || len(fields[1]) < 4 || fields[1][3] != 's' {
			continue
		}
		path := string(bytes.Join(fields[5:], []byte(" ")))
		if filepath.Dir(path) != dir || !releasableFile(filepath.Base(path)) {
			continue
		}
		lo, hi, ok := strings.Cut(string(fields[0]), "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, mappedRange{start: uintptr(start), end: uintptr(end)})
	}
	return out
}

// releasableFile says whether Badger's file name is a table or a value log
// file.
func releasableFile(name string) bool {
	switch filepath.Ext(name) {
	case ".sst", ".vlog":
		return true
	}
	return false
}
