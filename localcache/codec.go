package localcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// Values stored in Badger (records, events, journal entries, meta counters)
// use a small hand-written binary encoding, not msgpack:
//
//   - Decoding is on the read path of every cache miss and every listing.
//     A single forward pass over varints with no reflection and no field
//     names is several times faster than a reflective msgpack decode, and
//     allocates only the vector clock map.
//   - Strings and Value alias the buffer they are decoded from. Callers pass
//     buffers they own and never modify (Badger's ValueCopy), so this is safe
//     and saves an allocation per field.
//   - The first byte is a format version, so the layout can change later
//     (decoders switch on it; unknown formats are errors, never guesses).
//
// Layout (uvarint u, varint i, s = uvarint length + bytes):
//
//	record:  format=1, flags(bit0 deleted), u version, u syncedVersion,
//	         i updatedAt, change, s origin, s opID, clock, s value
//	event:   format=1, action(1 put, 2 delete), u from, u to,
//	         change, s origin, s opID, clock, s value
//	journal: format=1, s opID, s batchID, s governor, s state,
//	         u baseVersion, u version, i time
//	change:  s actor, s reason, i time
//	clock:   u lamport, u hlc, u n, n × (s node, u count)   (nodes sorted)
//
// Governor and State of records and events are not stored in the value: they
// are in the Badger key.
const formatV1 = 1

const (
	actionPut    = 1
	actionDelete = 2
)

var errCorrupt = errors.New("corrupt stored value")

// --- encoding ---

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendChange(b []byte, c Change) []byte {
	b = appendString(b, c.Actor)
	b = appendString(b, c.Reason)
	return binary.AppendVarint(b, c.Time)
}

func appendClock(b []byte, c Clock) []byte {
	b = binary.AppendUvarint(b, c.Lamport)
	b = binary.AppendUvarint(b, c.HLC)
	b = binary.AppendUvarint(b, uint64(len(c.Vector)))
	if len(c.Vector) == 1 { // the common case: only this node
		for n, x := range c.Vector {
			b = appendString(b, n)
			b = binary.AppendUvarint(b, x)
		}
		return b
	}
	for _, n := range sortedNodes(c.Vector) {
		b = appendString(b, n)
		b = binary.AppendUvarint(b, c.Vector[n])
	}
	return b
}

func clockSize(c Clock) int {
	n := 3 * binary.MaxVarintLen64
	for node := range c.Vector {
		n += binary.MaxVarintLen64*2 + len(node)
	}
	return n
}

func encodeRecord(r *Record) []byte {
	n := 2 + 3*binary.MaxVarintLen64 + 3*binary.MaxVarintLen64 + len(r.Change.Actor) + len(r.Change.Reason) +
		len(r.Origin) + len(r.OpID) + clockSize(r.Clock) + len(r.Value) + 3*binary.MaxVarintLen64
	b := make([]byte, 0, n)
	var flags byte
	if r.Deleted {
		flags |= 1
	}
	b = append(b, formatV1, flags)
	b = binary.AppendUvarint(b, r.Version)
	b = binary.AppendUvarint(b, r.SyncedVersion)
	b = binary.AppendVarint(b, r.UpdatedAt)
	b = appendChange(b, r.Change)
	b = appendString(b, r.Origin)
	b = appendString(b, r.OpID)
	b = appendClock(b, r.Clock)
	return appendBytes(b, r.Value)
}

func encodeEvent(e *Event) []byte {
	n := 2 + 2*binary.MaxVarintLen64 + 3*binary.MaxVarintLen64 + len(e.Change.Actor) + len(e.Change.Reason) +
		len(e.Origin) + len(e.OpID) + clockSize(e.Clock) + len(e.Value) + 3*binary.MaxVarintLen64
	b := make([]byte, 0, n)
	action := byte(actionPut)
	if e.Action == ActionDelete {
		action = actionDelete
	}
	b = append(b, formatV1, action)
	b = binary.AppendUvarint(b, e.FromVersion)
	b = binary.AppendUvarint(b, e.ToVersion)
	b = appendChange(b, e.Change)
	b = appendString(b, e.Origin)
	b = appendString(b, e.OpID)
	b = appendClock(b, e.Clock)
	return appendBytes(b, e.Value)
}

func encodeJournal(j *JournalEntry) []byte {
	n := 1 + 8*binary.MaxVarintLen64 + len(j.OpID) + len(j.BatchID) + len(j.Key.Governor) + len(j.Key.State)
	b := make([]byte, 0, n)
	b = append(b, formatV1)
	b = appendString(b, j.OpID)
	b = appendString(b, j.BatchID)
	b = appendString(b, j.Key.Governor)
	b = appendString(b, j.Key.State)
	b = binary.AppendUvarint(b, j.BaseVersion)
	b = binary.AppendUvarint(b, j.Version)
	return binary.AppendVarint(b, j.Time)
}

// --- decoding ---

// decoder reads the encoding above from a buffer it may alias. The first
// error sticks; later reads return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint() int64 {
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// string aliases the buffer (see the comment at the top of this file).
func (d *decoder) string() string {
	v := d.bytes()
	if len(v) == 0 {
		return ""
	}
	return unsafe.String(&v[0], len(v))
}

func (d *decoder) change() Change {
	return Change{Actor: d.string(), Reason: d.string(), Time: d.varint()}
}

func (d *decoder) clock() Clock {
	c := Clock{Lamport: d.uvarint(), HLC: d.uvarint()}
	n := d.uvarint()
	// Each entry takes at least 2 bytes: never trust a count the buffer
	// cannot hold.
	if d.err != nil || n > uint64(len(d.b))/2 || n > math.MaxInt32 {
		d.fail()
		return c
	}
	if n > 0 {
		c.Vector = make(map[string]uint64, n)
		for range n {
			node := d.string()
			c.Vector[node] = d.uvarint()
		}
	}
	return c
}

func (d *decoder) format(what string) error {
	if f := d.byte(); d.err == nil && f != formatV1 {
		return fmt.Errorf("%w: %s format %d", errCorrupt, what, f)
	}
	return nil
}

func (d *decoder) done(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	if d.err != nil {
		return fmt.Errorf("%w: %s", d.err, what)
	}
	return nil
}

// decodeRecord decodes a record of key k from b, which it aliases.
func decodeRecord(k Key, b []byte) (*Record, error) {
	d := decoder{b: b}
	if err := d.format("record"); err != nil {
		return nil, err
	}
	r := &Record{Key: k}
	flags := d.byte()
	r.Deleted = flags&1 != 0
	r.Version = d.uvarint()
	r.SyncedVersion = d.uvarint()
	r.UpdatedAt = d.varint()
	r.Change = d.change()
	r.Origin = d.string()
	r.OpID = d.string()
	r.Clock = d.clock()
	if v := d.bytes(); len(v) > 0 {
		r.Value = v
	}
	if err := d.done("record"); err != nil {
		return nil, err
	}
	r.Pending = r.Version > r.SyncedVersion
	return r, nil
}

// decodeEvent decodes an event of key k from b, which it aliases.
func decodeEvent(k Key, b []byte) (Event, error) {
	d := decoder{b: b}
	if err := d.format("event"); err != nil {
		return Event{}, err
	}
	e := Event{Key: k}
	switch d.byte() {
	case actionPut:
		e.Action = ActionPut
	case actionDelete:
		e.Action = ActionDelete
	default:
		d.fail()
	}
	e.FromVersion = d.uvarint()
	e.ToVersion = d.uvarint()
	e.Change = d.change()
	e.Origin = d.string()
	e.OpID = d.string()
	e.Clock = d.clock()
	if v := d.bytes(); len(v) > 0 {
		e.Value = v
	}
	return e, d.done("event")
}

// decodeJournal decodes the journal entry seq from b, which it aliases.
func decodeJournal(seq uint64, b []byte) (JournalEntry, error) {
	d := decoder{b: b}
	if err := d.format("journal entry"); err != nil {
		return JournalEntry{}, err
	}
	j := JournalEntry{Seq: seq}
	j.OpID = d.string()
	j.BatchID = d.string()
	j.Key.Governor = d.string()
	j.Key.State = d.string()
	j.BaseVersion = d.uvarint()
	j.Version = d.uvarint()
	j.Time = d.varint()
	return j, d.done("journal entry")
}

// meta is the state persisted under metaCounters in every commit, so Open
// needs no scan and clocks never go backwards across restarts.
type meta struct {
	seq     uint64 // last journal sequence number used (op ids derive from it)
	lamport uint64 // last Lamport time issued
	hlc     uint64 // last hybrid logical clock value issued
	states  int64  // live states
	journal int64  // journal entries not yet acked
}

func encodeMeta(m meta) []byte {
	b := make([]byte, 0, 1+5*binary.MaxVarintLen64)
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, m.seq)
	b = binary.AppendUvarint(b, m.lamport)
	b = binary.AppendUvarint(b, m.hlc)
	b = binary.AppendVarint(b, m.states)
	return binary.AppendVarint(b, m.journal)
}

func decodeMeta(b []byte) (meta, error) {
	d := decoder{b: b}
	if err := d.format("meta"); err != nil {
		return meta{}, err
	}
	m := meta{seq: d.uvarint(), lamport: d.uvarint(), hlc: d.uvarint(), states: d.varint(), journal: d.varint()}
	return m, d.done("meta")
}
