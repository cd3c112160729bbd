package localcache

import (
	"bytes"
	"testing"
)

// TestWriteOpsMatchesEncoders checks that the one-allocation encoding of a
// write's operations is byte for byte what the separate encoders produce,
// and that appending to one operation's slices never overwrites the next.
func TestWriteOpsMatchesEncoders(t *testing.T) {
	k := Key{Governor: "gov", State: "a/b"}
	for _, tc := range []struct {
		name     string
		action   string
		value    []byte
		userMeta byte
		fence    Fence
	}{
		{name: "put", action: ActionPut, value: bytes.Repeat([]byte{7}, 300)},
		{name: "delete", action: ActionDelete, userMeta: userMetaTombstone},
		{name: "transition", action: "approve", value: []byte{0x81, 0xa1, 'x', 1}, fence: Fence{Resource: "lock", Token: 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			change := Change{Actor: "me", Reason: "why", Time: 42}
			clock := Clock{Lamport: 3, HLC: 5, Vector: map[string]uint64{"n1": 2, "n2": 1}}
			rec := &Record{Key: k, Value: tc.value, Version: 4, Deleted: tc.action == ActionDelete, UpdatedAt: 42,
				Change: change, Origin: "n1", OpID: "n1-17", Clock: clock, SyncedVersion: 2, SyncedAt: 40,
				Pending: true, journaled: 3}
			ev := Event{Key: k, Action: tc.action, FromVersion: 3, ToVersion: 4, Value: tc.value, Change: change,
				Origin: "n1", OpID: "n1-17", Clock: clock}
			j := JournalEntry{Seq: 17, OpID: "n1-17", BatchID: "n1-16", Key: k, BaseVersion: 3, Version: 4,
				Time: 42, Strict: true, Fence: tc.fence}
			ops := writeOps(rec, &ev, &j, tc.userMeta)
			want := [3]kv{
				{key: stateKey(k), value: encodeRecord(rec), userMeta: tc.userMeta},
				{key: eventKey(k, 4), value: encodeEvent(&ev)},
				{key: journalKey(17), value: encodeJournal(&j)},
			}
			for i := range ops {
				if !bytes.Equal(ops[i].key, want[i].key) || !bytes.Equal(ops[i].value, want[i].value) ||
					ops[i].userMeta != want[i].userMeta || ops[i].del {
					t.Fatalf("op %d = %+v, want %+v", i, ops[i], want[i])
				}
			}
			_ = append(ops[0].key, 0xff)
			_ = append(ops[1].value, 0xff)
			if !bytes.Equal(ops[0].value, want[0].value) || !bytes.Equal(ops[2].key, want[2].key) {
				t.Fatal("an append to one operation changed the next")
			}
			if got, err := decodeRecord(k, ops[0].value); err != nil || got.Version != 4 || !bytes.Equal(got.Value, tc.value) {
				t.Fatalf("decodeRecord = %+v, %v", got, err)
			}
		})
	}
}
