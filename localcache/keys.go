package localcache

import (
	"encoding/binary"
	"errors"
)

// Badger key layout. Every key starts with one byte naming its kind:
//
//	s + enc(key)                         state record (latest version, or tombstone)
//	e + u16 len(gov) gov u16 len(st) st + BE u64 version   event (immutable)
//	n + u16 len(gov) gov u16 len(st) st + BE u64 version   snapshot (snapshot.go)
//	t + u16 len(gov) gov u16 len(st) st + BE u64 version   time mark of the events up to version (snapshot.go)
//	o + u16 len(gov) gov u16 len(st) st + BE u64 version   snapshot waiting to be copied to the shared store (bootstrap.go)
//	j + BE u64 seq                       journal entry
//	f + BE u64 seq                       parked journal entry (the failed list)
//	r + enc(key)                         remote record kept aside while a local write of key is pending
//	h + enc(key)                         a hole in key's history: BE u64 after, BE u64 through (superseded.go)
//	d + enc(key)                         key's changes whose events leave its history once it settles (superseded.go)
//	c + governor                         change cursor of governor (where pulling resumes)
//	u + enc(key)                         the shared store's document of key, which does not decode (undecodable.go)
//	l + resource                         fence mark: the highest token seen for a lock (fence.go)
//	x + BE u64 time + id                 conflict ledger entry, in decision time order (ledger.go)
//	y + id                               the ledger entry of conflict id: its x key's time (once per id)
//	v + BE u64 time + id                 transaction log entry, in start time order (txlog.go)
//	w + batch id                         an async transaction on its way to the shared store: its v key (txlog.go)
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
	kindSnap    = 'n'
	kindMark    = 't'
	kindSnapOut = 'o'
	kindJournal = 'j'
	kindParked  = 'f'
	kindAside   = 'r'
	kindHole    = 'h'
	kindDefer   = 'd'
	kindCursor  = 'c'
	kindUndec   = 'u'
	kindFence   = 'l'
	kindMeta    = 'm'
	kindLedger  = 'x'
	kindLedgID  = 'y'
	kindTxLog   = 'v'
	kindTxPush  = 'w'
)

// Meta keys.
var (
	metaCounters = []byte("mcounters") // counters and clocks, see meta
	metaNode     = []byte("mnode")     // node id
	metaOrigin   = []byte("morigin")   // origin: node id and incarnation, see Store.Origin
	metaFormat   = []byte("mformat")   // layout version
	// metaUndecDropped is the count of the shared store's documents that
	// do not decode, met and not kept (undecodable.go): BE u64.
	metaUndecDropped = []byte("mundecdropped")
)

// layoutVersion is stored under metaFormat; Open refuses other versions.
const layoutVersion = 1

// userMetaTombstone is set in Badger's per-entry user meta byte on state
// records that are tombstones, so listings skip them without reading values.
const userMetaTombstone = 1

var errBadKey = errors.New("malformed key")

func stateKey(k Key) []byte {
	return appendStateKey(make([]byte, 0, 3+len(k.Governor)+len(k.State)), k)
}

// appendStateKey appends the state key of k to b.
func appendStateKey(b []byte, k Key) []byte {
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

func eventPrefix(k Key) []byte { return versionedPrefix(kindEvent, k) }

func eventKey(k Key, version uint64) []byte {
	return binary.BigEndian.AppendUint64(eventPrefix(k), version)
}

// versionedPrefix is the prefix of the keys of kind (kindEvent, kindSnap,
// kindMark) of state k: kind, then the governor and the state, each after
// its BE u16 length.
func versionedPrefix(kind byte, k Key) []byte {
	return appendVersionedPrefix(make([]byte, 0, 5+len(k.Governor)+len(k.State)+8), kind, k)
}

// appendVersionedPrefix appends the versionedPrefix of kind and k to b.
func appendVersionedPrefix(b []byte, kind byte, k Key) []byte {
	b = append(b, kind)
	b = binary.BigEndian.AppendUint16(b, uint16(len(k.Governor)))
	b = append(b, k.Governor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(k.State)))
	return append(b, k.State...)
}

// versionedKey is the key of kind of state k at version.
func versionedKey(kind byte, k Key, version uint64) []byte {
	return binary.BigEndian.AppendUint64(versionedPrefix(kind, k), version)
}

// governorPrefix is the prefix of every key of kind (see versionedPrefix)
// of governor.
func governorPrefix(kind byte, governor string) []byte {
	b := make([]byte, 0, 3+len(governor))
	b = append(b, kind)
	b = binary.BigEndian.AppendUint16(b, uint16(len(governor)))
	return append(b, governor...)
}

// parseVersionedKey splits a key of kind (see versionedPrefix) into its
// governor, state and version; the names alias b.
func parseVersionedKey(kind byte, b []byte) (governor, state []byte, version uint64, err error) {
	if len(b) < 3 || b[0] != kind {
		return nil, nil, 0, errBadKey
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	b = b[3:]
	if len(b) < n+2 {
		return nil, nil, 0, errBadKey
	}
	governor, b = b[:n], b[n:]
	n = int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) != n+8 {
		return nil, nil, 0, errBadKey
	}
	return governor, b[:n], binary.BigEndian.Uint64(b[n:]), nil
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

func undecodableKey(k Key) []byte {
	b := stateKey(k)
	b[0] = kindUndec
	return b
}

func cursorKey(governor string) []byte {
	return append([]byte{kindCursor}, governor...)
}

// ledgerKey is the key of the ledger entry of conflict id decided at
// nanos (Unix ns, not negative).
func ledgerKey(nanos int64, id string) []byte { return timeKey(kindLedger, nanos, id) }

func ledgerIDKey(id string) []byte {
	return append([]byte{kindLedgID}, id...)
}
