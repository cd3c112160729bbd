package localcache

import (
	"encoding/binary"
	"errors"
)

// Badger key layout. Every key starts with one byte naming its kind:
//
//	s + enc(key)                         state record (latest version, or tombstone)
//	e + u16 len(gov) gov u16 len(st) st + BE u64 version   event (immutable)
//	j + BE u64 seq                       journal entry
//	f + BE u64 seq                       parked journal entry (the failed list)
//	r + enc(key)                         remote record kept aside while a local write of key is pending
//	c + governor                         change cursor of governor (where pulling resumes)
//	m + name                             meta (counters, node id, format)
//
// enc(key) is BE u16 len(governor) + governor + state: the length prefix
// keeps governors apart without a separator (names may hold any byte but
// '/'), and since the state comes last, "all states of a governor whose name
// starts with p" is one prefix scan in name order.
//
// Event keys length-prefix the state too, so the events of "ab" are exactly
// the keys under their prefix and never interleave with those of "abc".
const (
	kindState   = 's'
	kindEvent   = 'e'
	kindJournal = 'j'
	kindParked  = 'f'
	kindAside   = 'r'
	kindCursor  = 'c'
	kindMeta    = 'm'
)

// Meta keys.
var (
	metaCounters = []byte("mcounters") // counters and clocks, see meta
	metaNode     = []byte("mnode")     // node id
	metaFormat   = []byte("mformat")   // layout version
)

// layoutVersion is stored under metaFormat; Open refuses other versions.
const layoutVersion = 1

// userMetaTombstone is set in Badger's per-entry user meta byte on state
// records that are tombstones, so listings skip them without reading values.
const userMetaTombstone = 1

var errBadKey = errors.New("malformed key")

func stateKey(k Key) []byte {
	b := make([]byte, 0, 3+len(k.Governor)+len(k.State))
	b = append(b, kindState)
	b = binary.BigEndian.AppendUint16(b, uint16(len(k.Governor)))
	b = append(b, k.Governor...)
	return append(b, k.State...)
}

// statePrefix is the prefix of every state key of governor whose name
// starts with prefix.
func statePrefix(governor, prefix string) []byte {
	return stateKey(Key{Governor: governor, State: prefix})
}

// parseStateKey is the inverse of stateKey.
func parseStateKey(b []byte) (Key, error) {
	if len(b) < 3 || b[0] != kindState {
		return Key{}, errBadKey
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	if len(b) < 3+n {
		return Key{}, errBadKey
	}
	return Key{Governor: string(b[3 : 3+n]), State: string(b[3+n:])}, nil
}

func eventPrefix(k Key) []byte {
	b := make([]byte, 0, 5+len(k.Governor)+len(k.State)+8)
	b = append(b, kindEvent)
	b = binary.BigEndian.AppendUint16(b, uint16(len(k.Governor)))
	b = append(b, k.Governor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(k.State)))
	return append(b, k.State...)
}

func eventKey(k Key, version uint64) []byte {
	return binary.BigEndian.AppendUint64(eventPrefix(k), version)
}

func journalKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindJournal}, seq)
}

func parseJournalKey(b []byte) (uint64, error) {
	if len(b) != 9 || b[0] != kindJournal {
		return 0, errBadKey
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}

func parkedKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindParked}, seq)
}

func asideKey(k Key) []byte {
	b := stateKey(k)
	b[0] = kindAside
	return b
}

func cursorKey(governor string) []byte {
	return append([]byte{kindCursor}, governor...)
}
