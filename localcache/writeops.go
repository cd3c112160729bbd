package localcache

import "encoding/binary"

// writeOps returns the three Badger operations of one staged write (its
// state record, its event and its journal entry), with every key and value
// encoded into one allocation. Each slice is capped at its own length, so an
// append to one can never overwrite the next; none is modified afterwards
// (Badger, the write-ahead log and the apply only read them).
func writeOps(rec *Record, ev *Event, j *JournalEntry, userMeta byte) [3]kv {
	k := rec.Key
	stateKeyLen := 3 + len(k.Governor) + len(k.State)
	eventKeyLen := 5 + len(k.Governor) + len(k.State) + 8
	buf := make([]byte, 0, stateKeyLen+eventKeyLen+9+encodedRecordSize(rec)+eventSize(ev)+journalSize(j))
	var ops [3]kv
	cut := func(from int) []byte { return buf[from:len(buf):len(buf)] }

	at := len(buf)
	buf = appendStateKey(buf, k)
	ops[0].key = cut(at)
	at = len(buf)
	buf = appendRecord(buf, rec)
	ops[0].value, ops[0].userMeta = cut(at), userMeta

	at = len(buf)
	buf = binary.BigEndian.AppendUint64(appendVersionedPrefix(buf, kindEvent, k), rec.Version)
	ops[1].key = cut(at)
	at = len(buf)
	buf = appendEvent(buf, ev)
	ops[1].value = cut(at)

	at = len(buf)
	buf = binary.BigEndian.AppendUint64(append(buf, kindJournal), j.Seq)
	ops[2].key = cut(at)
	at = len(buf)
	buf = appendJournal(buf, j)
	ops[2].value = cut(at)
	return ops
}
