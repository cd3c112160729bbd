package localcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Write-ahead log.
//
// Every commit group is appended to the log as one record and made durable
// with one fdatasync before it is applied to Badger, which runs without
// syncing (see docs/decisions/0004-write-ahead-log.md). The log lives in
// Dir/wal as segment files named after the sequence number of their first
// group (%016x.wal), preallocated (or recycled, below) so that appending does
// not change the file's size, and written with plain pwrite.
//
// A segment's name also carries a salt, drawn at random each time a file
// becomes a segment (%016x-%016x.wal: first group, salt). A record is
//
//	u32 LE length of payload | u32 LE CRC-32C of salt and payload | payload | zero padding to 8 bytes
//
// (the checksum covers the salt's 8 little-endian bytes, then the payload).
// Only a record written into this use of this segment passes its checksum:
// not an older record left behind the end marker of a recycled segment, nor
// the bytes of a record inside an app's value, which could otherwise pass
// for an acknowledged group behind a torn one. The salt lives in the name
// rather than in the file so that damage to the file cannot change it.
// Segments named without a salt (written by earlier versions) checksum the
// payload alone and are read as such.
//
// and its payload is one group: u64 LE group sequence number, then the
// operations, a uvarint count followed by, per operation, the kind byte
// (walOpSet or walOpDelete), Badger's user meta byte, uvarint key length,
// key, and for sets uvarint value length and value. These are the exact
// Badger key/value sets of the group, meta counters included, so replaying a
// record is idempotent: it sets every key to the value the group gave it.
//
// A zero length field marks the end of the data in a segment: every append
// writes one after its record, in the same pwrite (a fresh segment's
// preallocated rest reads as zeros anyway). The file wal/checkpoint holds the
// sequence number S up to which Badger's files are known to be durable:
// records up to S are skipped on replay and segments holding only such
// records are deleted or recycled.
//
// Recycling. A segment the checkpoint has made obsolete is kept, up to
// walSpareSegments of them, as a spare (wal/*.spare) instead of being
// deleted, and the next new segment reuses it: its old records are
// overwritten in place. A preallocated segment's blocks are unwritten
// extents, and the first write to each block makes fdatasync record the
// extent's conversion in the file's metadata too, a second synchronous write
// on every sync of a group that spans new blocks (a loop of 12 KB pwrite +
// fdatasync: 260 µs a sync on written blocks against 380 to 500 µs on
// fallocated ones). A recycled segment has written blocks wherever it was
// written before. Its old records behind the end marker are never read: a
// clean log ends at the marker, and a torn record followed by them is still a
// torn tail, as their checksums were made with another salt (and their
// sequence numbers are lower than any group the segment holds now).
const (
	walDirName        = "wal"
	walSegmentExt     = ".wal"
	walCheckpointName = "checkpoint"
	walSpareExt       = ".spare"
	walHeaderSize     = 8
	walMaxPayload     = 1 << 30
	// walSegmentSize is the preallocated size of a segment; a larger record
	// gets a segment of its own size.
	walSegmentSize = 16 << 20
	// walRotateBytes: a checkpoint makes the committer start a new segment
	// when the current one holds at least this much, so the old one can go.
	walRotateBytes = 1 << 20
	// walSpareSegments is how many obsolete segments are kept for reuse.
	walSpareSegments = 2

	walOpSet    = 1
	walOpDelete = 2
)

var (
	crc32c = crc32.MakeTable(crc32.Castagnoli)

	// errWALCorrupt says the log holds a damaged record that is not a torn
	// tail: acknowledged groups may be behind it.
	errWALCorrupt = errors.New("write-ahead log corrupt")
	// errWALShort says a buffer ends inside a record.
	errWALShort = errors.New("write-ahead log record truncated")
)

// walOp is one Badger operation of a group.
type walOp struct {
	kind     byte
	userMeta byte
	key      []byte
	value    []byte
}

// appendWALRecord appends the framed record of payload to b, checksummed
// with seed (see walSeed).
func appendWALRecord(b []byte, seed uint32, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Update(seed, crc32c, payload))
	b = append(b, payload...)
	return append(b, make([]byte, walPad(len(payload)))...)
}

// walPad is the padding after a payload of n bytes.
func walPad(n int) int { return (8 - (walHeaderSize+n)%8) % 8 }

// walRecordSize is the size of the record of a payload of n bytes.
func walRecordSize(n int) int64 { return int64(walHeaderSize + n + walPad(n)) }

// walSeed is the checksum seed of a segment with salt: the CRC-32C of the
// salt's 8 bytes, which the checksum of each record continues. A segment
// named without a salt has seed 0: the plain CRC-32C of the payload.
func walSeed(salt uint64) uint32 {
	return crc32.Checksum(binary.LittleEndian.AppendUint64(nil, salt), crc32c)
}

// newWALSalt returns a random salt for a new segment.
func newWALSalt() uint64 {
	for {
		if salt := rand.Uint64(); walSeed(salt) != 0 { // 0 is the seed of an unsalted segment
			return salt
		}
	}
}

// walSegmentName is the file name of the segment whose first group is
// first, with salt.
func walSegmentName(first, salt uint64) string {
	return fmt.Sprintf("%016x-%016x%s", first, salt, walSegmentExt)
}

// parseWALSegmentName parses a segment's file name: its first group and its
// checksum seed (0 for a name without a salt).
func parseWALSegmentName(name string) (first uint64, seed uint32, err error) {
	base, ok := strings.CutSuffix(name, walSegmentExt)
	if !ok {
		return 0, 0, fmt.Errorf("%w: unexpected segment name %q", errWALCorrupt, name)
	}
	firstHex, saltHex, salted := strings.Cut(base, "-")
	first, err = strconv.ParseUint(firstHex, 16, 64)
	if err == nil && len(firstHex) != 16 {
		err = errors.New("bad length")
	}
	if err == nil && salted {
		var salt uint64
		salt, err = strconv.ParseUint(saltHex, 16, 64)
		if err == nil && len(saltHex) != 16 {
			err = errors.New("bad length")
		}
		seed = walSeed(salt)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%w: unexpected segment name %q", errWALCorrupt, name)
	}
	return first, seed, nil
}

// decodeWALRecord reads the record at the start of b, checksummed with seed.
// It returns its payload (aliasing b) and the record's size with padding.
// n == 0 with a nil error means b starts with the end marker (a zero
// length). errWALShort means b ends inside the record; any other error
// means the record is damaged.
func decodeWALRecord(b []byte, seed uint32) (payload []byte, n int, err error) {
	if len(b) < walHeaderSize {
		if len(b) == 0 || allZero(b) {
			return nil, 0, nil
		}
		return nil, 0, errWALShort
	}
	size := binary.LittleEndian.Uint32(b)
	sum := binary.LittleEndian.Uint32(b[4:])
	if size == 0 {
		if sum != 0 {
			return nil, 0, fmt.Errorf("%w: zero length with checksum %08x", errWALCorrupt, sum)
		}
		return nil, 0, nil
	}
	if size > walMaxPayload {
		return nil, 0, fmt.Errorf("%w: record length %d", errWALCorrupt, size)
	}
	end := walHeaderSize + int(size)
	if len(b) < end {
		return nil, 0, errWALShort
	}
	payload = b[walHeaderSize:end]
	if got := crc32.Update(seed, crc32c, payload); got != sum {
		return nil, 0, fmt.Errorf("%w: checksum %08x, want %08x", errWALCorrupt, got, sum)
	}
	return payload, min(len(b), end+walPad(int(size))), nil
}

// appendWALGroupHeader starts a group payload: its sequence number and
// operation count.
func appendWALGroupHeader(b []byte, seq uint64, ops int) []byte {
	b = binary.LittleEndian.AppendUint64(b, seq)
	return binary.AppendUvarint(b, uint64(ops))
}

// appendWALOp appends one operation to a group payload.
func appendWALOp(b []byte, kind, userMeta byte, key, value []byte) []byte {
	b = append(b, kind, userMeta)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	if kind == walOpSet {
		b = binary.AppendUvarint(b, uint64(len(value)))
		b = append(b, value...)
	}
	return b
}

// walGroupSeq returns the sequence number of a group payload.
func walGroupSeq(p []byte) (uint64, error) {
	if len(p) < 8 {
		return 0, fmt.Errorf("%w: group of %d bytes", errWALCorrupt, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

// decodeWALGroup decodes a group payload. Keys and values alias p.
func decodeWALGroup(p []byte) (seq uint64, ops []walOp, err error) {
	seq, err = walGroupSeq(p)
	if err != nil {
		return 0, nil, err
	}
	p = p[8:]
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)) { // every operation takes at least 3 bytes
		return 0, nil, fmt.Errorf("%w: group %d: bad operation count", errWALCorrupt, seq)
	}
	p = p[k:]
	bytesField := func() ([]byte, bool) {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return nil, false
		}
		b := p[k : k+int(l) : k+int(l)]
		p = p[k+int(l):]
		return b, true
	}
	ops = make([]walOp, 0, n)
	for i := uint64(0); i < n; i++ {
		if len(p) < 2 {
			return 0, nil, fmt.Errorf("%w: group %d: operation %d truncated", errWALCorrupt, seq, i)
		}
		op := walOp{kind: p[0], userMeta: p[1]}
		p = p[2:]
		var ok bool
		if op.key, ok = bytesField(); !ok || len(op.key) == 0 {
			return 0, nil, fmt.Errorf("%w: group %d: operation %d: bad key", errWALCorrupt, seq, i)
		}
		switch op.kind {
		case walOpSet:
			if op.value, ok = bytesField(); !ok {
				return 0, nil, fmt.Errorf("%w: group %d: operation %d: bad value", errWALCorrupt, seq, i)
			}
		case walOpDelete:
		default:
			return 0, nil, fmt.Errorf("%w: group %d: operation %d: unknown kind %d", errWALCorrupt, seq, i, op.kind)
		}
		ops = append(ops, op)
	}
	if len(p) != 0 {
		return 0, nil, fmt.Errorf("%w: group %d: %d trailing bytes", errWALCorrupt, seq, len(p))
	}
	return seq, ops, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// walSegment is one segment file.
type walSegment struct {
	path  string
	first uint64 // sequence number in the name: of its first group
	last  uint64 // of its last group; first-1 when it holds none
	size  int64  // bytes of records (not the preallocated size)
	seed  uint32 // checksum seed of its records (see walSeed)
}

// wal is the write-ahead log. append is called by one goroutine (the
// committer); checkpoint and close may run concurrently with it.
type wal struct {
	dir string
	log *slog.Logger

	mu         sync.Mutex
	segs       []*walSegment // oldest first; the last one is written to
	f          *os.File      // the last segment, nil until the first append
	capacity   int64         // its preallocated size
	rotate     bool          // start a new segment before the next append
	checkpoint uint64        // last durable checkpoint
	spares     []string      // obsolete segments of walSegmentSize, for reuse
	next       uint64        // sequence number of the next group
	buf        []byte
}

// openWAL opens the log in dir (creating it) and reads its checkpoint and
// segment list. Call replay before append.
func openWAL(dir string, log *slog.Logger) (*wal, error) {
	if err := mkdirSynced(dir, 0o750); err != nil {
		return nil, fmt.Errorf("write-ahead log: %w", err)
	}
	w := &wal{dir: dir, log: log}
	ck, err := readWALCheckpoint(filepath.Join(dir, walCheckpointName))
	if err != nil {
		return nil, err
	}
	w.checkpoint = ck
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("write-ahead log: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasSuffix(name, walSpareExt) {
			w.spares = append(w.spares, filepath.Join(dir, name))
			continue
		}
		if !strings.HasSuffix(name, walSegmentExt) {
			continue
		}
		first, seed, err := parseWALSegmentName(name)
		if err != nil {
			return nil, fmt.Errorf("%w in %s", err, dir)
		}
		w.segs = append(w.segs, &walSegment{path: filepath.Join(dir, name), first: first, last: first - 1, seed: seed})
	}
	slices.SortFunc(w.segs, func(a, b *walSegment) int { return compareU64(a.first, b.first) })
	return w, nil
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// walCheckpointMagic starts the checkpoint file.
var walCheckpointMagic = []byte("taiwalck")

func readWALCheckpoint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("write-ahead log: %w", err)
	}
	if len(b) != 20 || !bytes.Equal(b[:8], walCheckpointMagic) ||
		crc32.Checksum(b[:16], crc32c) != binary.LittleEndian.Uint32(b[16:]) {
		return 0, fmt.Errorf("%w: checkpoint file %s is damaged", errWALCorrupt, path)
	}
	return binary.LittleEndian.Uint64(b[8:]), nil
}

// replay reads every segment in order, checks the records, truncates a torn
// tail of the last segment, and calls fn with the payload of every group
// after the checkpoint, in order. fn must not keep the payload. It returns
// the sequence number the next group gets.
//
// A damaged record is a torn tail (a write that was never acknowledged) when
// it is in the last segment and no intact record with a later sequence
// number follows it; otherwise the log is corrupt and replay fails.
func (w *wal) replay(fn func(seq uint64, payload []byte) error) (next uint64, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	last := w.checkpoint
	expect := uint64(0) // the next record's sequence number, once one was read
	for i, seg := range w.segs {
		if i+1 < len(w.segs) && w.segs[i+1].first <= w.checkpoint+1 {
			continue // every record is at or below the checkpoint
		}
		b, err := os.ReadFile(seg.path)
		if err != nil {
			return 0, fmt.Errorf("write-ahead log: %w", err)
		}
		isLast := i == len(w.segs)-1
		if expect == 0 && seg.first > w.checkpoint+1 {
			return 0, fmt.Errorf("%w: segment %s starts at group %d, but the checkpoint is %d: groups are missing",
				errWALCorrupt, seg.path, seg.first, w.checkpoint)
		}
		if expect != 0 && seg.first != expect {
			return 0, fmt.Errorf("%w: segment %s starts at group %d, want %d", errWALCorrupt, seg.path, seg.first, expect)
		}
		want := seg.first
		off, seed := 0, seg.seed
		for off < len(b) {
			payload, n, derr := decodeWALRecord(b[off:], seed)
			var seq uint64
			if derr == nil && n > 0 {
				if seq, derr = walGroupSeq(payload); derr == nil && seq != want {
					derr = fmt.Errorf("%w: group %d where %d was expected", errWALCorrupt, seq, want)
				}
			}
			if derr != nil {
				if !isLast || findWALRecordAfter(b, off+walHeaderSize, want, seed) >= 0 {
					return 0, fmt.Errorf("write-ahead log %s at offset %d: %w (acknowledged groups follow it; the log cannot be replayed past it)",
						seg.path, off, errors.Join(errWALCorrupt, derr))
				}
				w.log.Warn("write-ahead log: dropping a torn record at the end of the log (it was never acknowledged)",
					"segment", seg.path, "offset", off, "group", want, "err", derr)
				if err := truncateSync(seg.path, int64(off)); err != nil {
					return 0, err
				}
				break
			}
			if n == 0 {
				// The end marker. In the last segment, nothing written
				// into it since it was started may follow: a length field
				// zeroed by damage would otherwise end the log early,
				// silently dropping acknowledged groups. (Only a salted
				// segment can tell: behind the marker of an unsalted one
				// may lie old records of an earlier use, and app values.)
				if isLast && seed != 0 && findWALRecordAfter(b, off+walHeaderSize, want, seed) >= 0 {
					return 0, fmt.Errorf("write-ahead log %s at offset %d: %w: the log ends here, but acknowledged groups follow (the log cannot be replayed past it)",
						seg.path, off, errWALCorrupt)
				}
				break
			}
			if seq > w.checkpoint {
				if err := fn(seq, payload); err != nil {
					return 0, fmt.Errorf("write-ahead log: replay group %d: %w", seq, err)
				}
			}
			want = seq + 1
			off += n
		}
		seg.last = want - 1
		seg.size = int64(off)
		expect = want
		last = max(last, seg.last)
	}
	if seg := w.current(); seg != nil && seg.last < seg.first {
		// The last segment holds no group (a crash came before its first
		// append): remove it, so that the next segment, which starts at
		// the same group under a new salt, is the only one that does.
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("write-ahead log: remove empty segment: %w", err)
		}
		if err := syncDir(w.dir); err != nil {
			return 0, err
		}
		w.segs = w.segs[:len(w.segs)-1]
	}
	w.next = last + 1
	return w.next, nil
}

// findWALRecordAfter returns the offset of an intact record checksummed with
// seed at or after from (8-byte aligned) whose sequence number is at least
// seq, or -1.
func findWALRecordAfter(b []byte, from int, seq uint64, seed uint32) int {
	for off := (from + 7) &^ 7; off+walHeaderSize+8 <= len(b); off += 8 {
		size := binary.LittleEndian.Uint32(b[off:])
		if size < 8 || size > walMaxPayload || off+walHeaderSize+int(size) > len(b) {
			continue
		}
		s := binary.LittleEndian.Uint64(b[off+walHeaderSize:])
		if s < seq || s > seq+1<<20 {
			continue
		}
		if payload, n, err := decodeWALRecord(b[off:], seed); err == nil && n > 0 && len(payload) >= 8 {
			return off
		}
	}
	return -1
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("write-ahead log: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("write-ahead log: truncate torn tail: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write-ahead log: truncate torn tail: %w", err)
	}
	return nil
}

// nextSeq is the sequence number the next appended group must carry.
func (w *wal) nextSeq() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// append writes the group payload (whose sequence number is nextSeq) and
// makes it durable with one fdatasync. After an error the log's state on
// disk is unknown: the caller must stop appending.
func (w *wal) append(payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	seq, err := walGroupSeq(payload)
	if err != nil || seq != w.next {
		return fmt.Errorf("write-ahead log: append group %d, want %d", seq, w.next)
	}
	n := walRecordSize(len(payload))
	seg := w.current()
	if w.f == nil || w.rotate || seg.size+n > w.capacity {
		if err := w.startSegment(n); err != nil {
			return err
		}
		seg = w.current()
	}
	w.buf = appendWALRecord(w.buf[:0], seg.seed, payload)
	if seg.size+n < w.capacity {
		// The end marker; a record that fills the segment needs none.
		// Records are 8-byte aligned, so the room left is 0 or at least 8.
		w.buf = append(w.buf, make([]byte, walHeaderSize)...)
	}
	if _, err := w.f.WriteAt(w.buf, seg.size); err != nil {
		return fmt.Errorf("write-ahead log: write group %d: %w", seq, err)
	}
	if err := fdatasync(w.f); err != nil {
		return fmt.Errorf("write-ahead log: sync group %d: %w", seq, err)
	}
	seg.size += n
	seg.last = seq
	w.next = seq + 1
	if cap(w.buf) > 4<<20 {
		w.buf = nil // do not keep a huge group's buffer
	}
	return nil
}

func (w *wal) current() *walSegment {
	if len(w.segs) == 0 {
		return nil
	}
	return w.segs[len(w.segs)-1]
}

// startSegment closes the current segment and starts a new one, named after
// the next group and a new salt, preallocated to hold at least need bytes.
func (w *wal) startSegment(need int64) error {
	if w.f != nil {
		// Every record in it is already synced.
		if err := w.f.Close(); err != nil {
			return fmt.Errorf("write-ahead log: close segment: %w", err)
		}
		w.f = nil
	}
	salt := newWALSalt()
	path := filepath.Join(w.dir, walSegmentName(w.next, salt))
	f, capacity, err := w.reuseSpare(path, need)
	if err != nil {
		return err
	}
	if f == nil {
		if f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o640); err != nil {
			return fmt.Errorf("write-ahead log: new segment: %w", err)
		}
		capacity = max(walSegmentSize, need)
		if err := preallocate(f, capacity); err != nil {
			f.Close()
			return fmt.Errorf("write-ahead log: preallocate segment: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("write-ahead log: sync new segment: %w", err)
		}
	}
	if err := syncDir(w.dir); err != nil {
		f.Close()
		return err
	}
	w.segs = append(w.segs, &walSegment{path: path, first: w.next, last: w.next - 1, seed: walSeed(salt)})
	w.f, w.capacity, w.rotate = f, capacity, false
	return nil
}

// reuseSpare turns a spare into the segment at path, for a record of need
// bytes: it ends the spare's old data at its start (a zero length field,
// synced) and only then renames it, so that neither name ever shows old
// records as the start of a segment (and those behind the marker fail
// their checksums under the new name's salt). The caller syncs the
// directory. It returns a nil file when no spare fits; a spare that cannot
// be reused is removed.
func (w *wal) reuseSpare(path string, need int64) (*os.File, int64, error) {
	if len(w.spares) == 0 || need > walSegmentSize {
		return nil, 0, nil
	}
	spare := w.spares[len(w.spares)-1]
	w.spares = w.spares[:len(w.spares)-1]
	f, err := os.OpenFile(spare, os.O_RDWR, 0)
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && fi.Size() != walSegmentSize {
			err = fmt.Errorf("size %d, want %d", fi.Size(), walSegmentSize)
		}
		if err == nil {
			_, err = f.WriteAt(make([]byte, walHeaderSize), 0)
		}
		if err == nil {
			err = fdatasync(f)
		}
		if err == nil {
			err = os.Rename(spare, path)
		}
		if err == nil {
			return f, walSegmentSize, nil
		}
		f.Close()
	}
	w.log.Warn("write-ahead log: a spare segment cannot be reused; starting a new one", "spare", spare, "err", err)
	if err := os.Remove(spare); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("write-ahead log: remove spare segment: %w", err)
	}
	return nil, 0, nil
}

// retire disposes of a segment whose groups are all checkpointed: it keeps
// it as a spare while there are fewer than walSpareSegments and it has the
// standard size, and removes it otherwise. The caller syncs the directory.
func (w *wal) retire(seg *walSegment) error {
	if len(w.spares) < walSpareSegments {
		if fi, err := os.Stat(seg.path); err == nil && fi.Size() == walSegmentSize {
			spare := strings.TrimSuffix(seg.path, walSegmentExt) + walSpareExt
			if err := os.Rename(seg.path, spare); err == nil {
				w.spares = append(w.spares, spare)
				return nil
			}
		}
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write-ahead log: remove segment: %w", err)
	}
	return nil
}

// size returns the bytes of records in the log.
func (w *wal) size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for _, s := range w.segs {
		n += s.size
	}
	return n
}

// advance records that every group up to s is durable in Badger: it writes
// the checkpoint file, then deletes the segments holding only groups up to
// s. With final set (the log is no longer appended to) the current segment
// may go too; otherwise a current segment holding groups up to s and at
// least walRotateBytes is closed at the next append, so that a later
// checkpoint can delete it.
func (w *wal) advance(s uint64, final bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s >= w.next {
		return fmt.Errorf("write-ahead log: checkpoint %d beyond the last group %d", s, w.next-1)
	}
	if s > w.checkpoint {
		if err := writeWALCheckpoint(w.dir, s); err != nil {
			return err
		}
		w.checkpoint = s
	}
	keep := w.segs[:0:0]
	removed := false
	for i, seg := range w.segs {
		current := i == len(w.segs)-1 && w.f != nil // being appended to
		if seg.last > s || (current && !final) {
			keep = append(keep, seg)
			continue
		}
		if current && w.f != nil {
			if err := w.f.Close(); err != nil {
				return fmt.Errorf("write-ahead log: close segment: %w", err)
			}
			w.f = nil
		}
		if err := w.retire(seg); err != nil {
			w.segs = append(keep, w.segs[i:]...)
			return err
		}
		removed = true
	}
	w.segs = keep
	if cur := w.current(); cur != nil && !final && cur.first <= s && cur.size >= walRotateBytes {
		w.rotate = true
	}
	if removed {
		return syncDir(w.dir)
	}
	return nil
}

func writeWALCheckpoint(dir string, s uint64) error {
	b := append([]byte(nil), walCheckpointMagic...)
	b = binary.LittleEndian.AppendUint64(b, s)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32c))
	tmp := filepath.Join(dir, walCheckpointName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write-ahead log: checkpoint: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, walCheckpointName))
	}
	if err != nil {
		return fmt.Errorf("write-ahead log: checkpoint: %w", err)
	}
	return syncDir(dir)
}

// close closes the current segment (its records are all synced).
func (w *wal) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// mkdirSynced creates dir and any missing parents, as os.MkdirAll does, and
// syncs the parent of every directory it creates, so that a crash cannot
// take back a directory whose files were synced.
func mkdirSynced(dir string, perm fs.FileMode) error {
	dir = filepath.Clean(dir)
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: errors.New("not a directory")}
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSynced(parent, perm); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// syncDir fsyncs a directory, making file creations, renames and removals
// in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
