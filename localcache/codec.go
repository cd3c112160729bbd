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
//	record:  format=2, flags(bit0 deleted), u version, u syncedVersion,
//	         i syncedAt, u journaled, i updatedAt, change, s origin, s opID,
//	         clock, s value
//	         (format 1, still read: no syncedAt and journaled; a record is
//	         then taken as journaled once when version > syncedVersion)
//	event:   format=1, action(1 put, 2 delete), u from, u to,
//	         change, s origin, s opID, clock, s value
//	         (format 2: s name after the action byte, the name of a put
//	         made by a state machine transition: Event.Action)
//	journal: format=2, flags(bit0 strict), s opID, s batchID, s governor,
//	         s state, u baseVersion, u version, i time
//	         (format 1, still read: no flags)
//	         (format 3, for an entry with a fence (only those; the others
//	         are still written in format 2): then s fence resource,
//	         u fence token)
//	parked:  journal entry as above, then s reason, i parkedAt; an entry
//	         parked for its fence has bit 1 of its flags set and ends with
//	         the rejection: s resource, u token, u current
//	meta:    format=2, u seq, u lamport, u hlc, i states, i journal,
//	         i parked   (format 1, still read: no parked)
//	undecodable: format=1, s document, i written (Unix ns, 0: unknown),
//	         s error (undecodable.go)
//	change:  s actor, s reason, i time
//	clock:   u lamport, u hlc, u n, n × (s node, u count)   (nodes sorted)
//
// Governor and State of records and events are not stored in the value: they
// are in the Badger key.
const (
	formatV1 = 1
	// formatRecordV2 added syncedAt and the journaled count to records.
	formatRecordV2 = 2
	// formatMetaV2 added the parked count to the meta counters.
	formatMetaV2 = 2
	// formatJournalV2 added a flags byte (bit 0: strict) to journal entries.
	formatJournalV2 = 2
	// formatJournalV3 added the fence (resource, token) to fenced journal
	// entries.
	formatJournalV3 = 3
	// formatJournalV4 added a transaction's checks (after the fence, which
	// may be empty) to the first journal entry of a transaction.
	formatJournalV4 = 4
	// parkedFenceRejected is the flag (bit 1) of a parked entry that ends
	// with its fence's rejection.
	parkedFenceRejected = 2
	// journalConfirm is the flag (bit 2) of an entry of a write made with
	// Write.Confirm.
	journalConfirm = 4
	// formatEventV2 added the action's name to events of transitions;
	// other events are still written in format 1.
	formatEventV2 = 2
)

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
	return appendRecord(make([]byte, 0, encodedRecordSize(r)), r)
}

// encodedRecordSize bounds the encoded size of r.
func encodedRecordSize(r *Record) int {
	return 2 + 3*binary.MaxVarintLen64 + 3*binary.MaxVarintLen64 + len(r.Change.Actor) + len(r.Change.Reason) +
		len(r.Origin) + len(r.OpID) + clockSize(r.Clock) + len(r.Value) + 3*binary.MaxVarintLen64
}

// appendRecord appends the encoding of r to b.
func appendRecord(b []byte, r *Record) []byte {
	var flags byte
	if r.Deleted {
		flags |= 1
	}
	b = append(b, formatRecordV2, flags)
	b = binary.AppendUvarint(b, r.Version)
	b = binary.AppendUvarint(b, r.SyncedVersion)
	b = binary.AppendVarint(b, r.SyncedAt)
	b = binary.AppendUvarint(b, uint64(r.journaled))
	b = binary.AppendVarint(b, r.UpdatedAt)
	b = appendChange(b, r.Change)
	b = appendString(b, r.Origin)
	b = appendString(b, r.OpID)
	b = appendClock(b, r.Clock)
	return appendBytes(b, r.Value)
}

func encodeEvent(e *Event) []byte {
	return appendEvent(make([]byte, 0, eventSize(e)), e)
}

// eventSize bounds the encoded size of e.
func eventSize(e *Event) int {
	return 2 + 2*binary.MaxVarintLen64 + 3*binary.MaxVarintLen64 + len(e.Action) + len(e.Change.Actor) +
		len(e.Change.Reason) + len(e.Origin) + len(e.OpID) + clockSize(e.Clock) + len(e.Value) + 3*binary.MaxVarintLen64
}

// appendEvent appends the encoding of e to b.
func appendEvent(b []byte, e *Event) []byte {
	switch e.Action {
	case ActionPut:
		b = append(b, formatV1, actionPut)
	case ActionDelete:
		b = append(b, formatV1, actionDelete)
	default: // a transition's action
		b = append(b, formatEventV2, actionPut)
		b = appendString(b, e.Action)
	}
	b = binary.AppendUvarint(b, e.FromVersion)
	b = binary.AppendUvarint(b, e.ToVersion)
	b = appendChange(b, e.Change)
	b = appendString(b, e.Origin)
	b = appendString(b, e.OpID)
	b = appendClock(b, e.Clock)
	return appendBytes(b, e.Value)
}

func encodeJournal(j *JournalEntry) []byte {
	return appendJournal(nil, j)
}

func appendJournal(b []byte, j *JournalEntry) []byte { return appendJournalFlags(b, j, 0) }

// journalSize bounds the encoded size of j.
func journalSize(j *JournalEntry) int {
	return 2 + 8*binary.MaxVarintLen64 + len(j.OpID) + len(j.BatchID) + len(j.Key.Governor) + len(j.Key.State) +
		len(j.Fence.Resource)
}

// appendJournalFlags appends j with extra set in its flags.
func appendJournalFlags(b []byte, j *JournalEntry, extra byte) []byte {
	if b == nil {
		b = make([]byte, 0, journalSize(j))
	}
	flags := extra
	if j.Strict {
		flags |= 1
	}
	if j.Confirm {
		flags |= journalConfirm
	}
	format := byte(formatJournalV2)
	if !j.Fence.IsZero() {
		format = formatJournalV3
	}
	if len(j.Checks) > 0 {
		format = formatJournalV4
	}
	b = append(b, format, flags)
	b = appendString(b, j.OpID)
	b = appendString(b, j.BatchID)
	b = appendString(b, j.Key.Governor)
	b = appendString(b, j.Key.State)
	b = binary.AppendUvarint(b, j.BaseVersion)
	b = binary.AppendUvarint(b, j.Version)
	b = binary.AppendVarint(b, j.Time)
	if format >= formatJournalV3 {
		b = appendString(b, j.Fence.Resource)
		b = binary.AppendUvarint(b, j.Fence.Token)
	}
	if format == formatJournalV4 {
		b = appendChecks(b, j.Checks) // txn.go
	}
	return b
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
	f := d.byte()
	if d.err == nil && f != formatV1 && f != formatRecordV2 {
		return nil, fmt.Errorf("%w: record format %d", errCorrupt, f)
	}
	r := &Record{Key: k}
	flags := d.byte()
	r.Deleted = flags&1 != 0
	r.Version = d.uvarint()
	r.SyncedVersion = d.uvarint()
	if f == formatRecordV2 {
		r.SyncedAt = d.varint()
		n := d.uvarint()
		if n > math.MaxUint32 {
			d.fail()
		}
		r.journaled = uint32(n)
	} else if r.Version > r.SyncedVersion {
		r.journaled = 1
	}
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
	r.Pending = r.journaled > 0
	return r, nil
}

// eventAction reads an event's format, action and (format 2) the name of
// its action.
func (d *decoder) eventAction() (string, error) {
	f := d.byte()
	if d.err == nil && f != formatV1 && f != formatEventV2 {
		return "", fmt.Errorf("%w: event format %d", errCorrupt, f)
	}
	var action string
	switch d.byte() {
	case actionPut:
		action = ActionPut
	case actionDelete:
		action = ActionDelete
	default:
		d.fail()
	}
	if f == formatEventV2 {
		switch name := d.string(); {
		case action != ActionPut, name == "", name == ActionPut, name == ActionDelete:
			d.fail() // only puts are named, by a name of their own
		default:
			action = name
		}
	}
	return action, nil
}

// decodeEvent decodes an event of key k from b, which it aliases.
func decodeEvent(k Key, b []byte) (Event, error) {
	d := decoder{b: b}
	action, err := d.eventAction()
	if err != nil {
		return Event{}, err
	}
	e := Event{Key: k, Action: action}
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
	j, _, err := d.journal(seq, "journal entry")
	if err != nil {
		return JournalEntry{}, err
	}
	return j, d.done("journal entry")
}

// journal reads a journal entry (format 1, 2 or 3) and its flags.
func (d *decoder) journal(seq uint64, what string) (JournalEntry, byte, error) {
	f := d.byte()
	if d.err == nil && f != formatV1 && f != formatJournalV2 && f != formatJournalV3 && f != formatJournalV4 {
		return JournalEntry{}, 0, fmt.Errorf("%w: %s format %d", errCorrupt, what, f)
	}
	j := JournalEntry{Seq: seq}
	var flags byte
	if f >= formatJournalV2 {
		flags = d.byte()
		j.Strict = flags&1 != 0
		j.Confirm = flags&journalConfirm != 0
	}
	j.OpID = d.string()
	j.BatchID = d.string()
	j.Key.Governor = d.string()
	j.Key.State = d.string()
	j.BaseVersion = d.uvarint()
	j.Version = d.uvarint()
	j.Time = d.varint()
	if f == formatJournalV3 {
		j.Fence.Resource = d.string()
		j.Fence.Token = d.uvarint()
		if d.err == nil && j.Fence.IsZero() {
			d.fail() // format 3 is written for fenced entries only
		}
	}
	if f == formatJournalV4 {
		j.Fence.Resource = d.string()
		j.Fence.Token = d.uvarint()
		j.Checks = d.checks() // txn.go
	}
	return j, flags, nil
}

func encodeParked(p *ParkedEntry) []byte {
	var flags byte
	if p.FenceRejected != nil {
		flags = parkedFenceRejected
	}
	b := appendJournalFlags(make([]byte, 0, 64+len(p.OpID)+len(p.BatchID)+len(p.Key.Governor)+len(p.Key.State)+len(p.Reason)), &p.JournalEntry, flags)
	b = appendString(b, p.Reason)
	b = binary.AppendVarint(b, p.ParkedAt)
	if r := p.FenceRejected; r != nil {
		b = appendString(b, r.Resource)
		b = binary.AppendUvarint(b, r.Token)
		b = binary.AppendUvarint(b, r.Current)
	}
	return b
}

func decodeParked(seq uint64, b []byte) (ParkedEntry, error) {
	d := decoder{b: b}
	j, flags, err := d.journal(seq, "parked entry")
	if err != nil {
		return ParkedEntry{}, err
	}
	p := ParkedEntry{JournalEntry: j}
	p.Reason = d.string()
	p.ParkedAt = d.varint()
	if flags&parkedFenceRejected != 0 {
		p.FenceRejected = &FenceRejectedError{Resource: d.string(), Token: d.uvarint(), Current: d.uvarint()}
	}
	return p, d.done("parked entry")
}

// meta is the state persisted under metaCounters in every commit, so Open
// needs no scan and clocks never go backwards across restarts.
type meta struct {
	seq     uint64 // last journal sequence number used (op ids derive from it)
	lamport uint64 // last Lamport time issued
	hlc     uint64 // last hybrid logical clock value issued
	states  int64  // live states
	journal int64  // journal entries not yet acked
	parked  int64  // journal entries parked (rejected by the shared store)
}

func encodeMeta(m meta) []byte {
	b := make([]byte, 0, 1+6*binary.MaxVarintLen64)
	b = append(b, formatMetaV2)
	b = binary.AppendUvarint(b, m.seq)
	b = binary.AppendUvarint(b, m.lamport)
	b = binary.AppendUvarint(b, m.hlc)
	b = binary.AppendVarint(b, m.states)
	b = binary.AppendVarint(b, m.journal)
	return binary.AppendVarint(b, m.parked)
}

func decodeMeta(b []byte) (meta, error) {
	d := decoder{b: b}
	f := d.byte()
	if d.err == nil && f != formatV1 && f != formatMetaV2 {
		return meta{}, fmt.Errorf("%w: meta format %d", errCorrupt, f)
	}
	m := meta{seq: d.uvarint(), lamport: d.uvarint(), hlc: d.uvarint(), states: d.varint(), journal: d.varint()}
	if f == formatMetaV2 {
		m.parked = d.varint()
	}
	return m, d.done("meta")
}
