package localcache

import (
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestTxnLimitsFitBadger checks that the committer's count of Badger's
// transaction limits agrees with Badger: what fit accepts builds, and not
// much more would, for values on both sides of the value threshold and for
// deletes.
func TestTxnLimitsFitBadger(t *testing.T) {
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	for _, size := range []int{0, 10, valueThreshold - 1, valueThreshold, 4 << 10} {
		var sts []*staged
		for i := range 100_000 {
			k := []byte("s/g/key-" + itoa(i))
			st := &staged{meta: meta{seq: uint64(i), lamport: 1 << 60, hlc: 1 << 62, states: int64(i), journal: int64(i)}}
			if size == 0 {
				st.ops = []kv{{key: k, del: true}}
			} else {
				v := make([]byte, size)
				st.ops = []kv{{key: k, value: v}, {key: append([]byte("e/"), k...), value: v}, {key: append([]byte("j/"), k...), value: v[:8]}}
			}
			sts = append(sts, st)
		}
		n, err := s.limits.fit(sts)
		if err != nil || n == 0 || n == len(sts) {
			t.Fatalf("value size %d: fit %d of %d: %v", size, n, len(sts), err)
		}
		txn, err := s.build(sts[:n])
		if err != nil {
			t.Fatalf("value size %d: %d requests fit, but Badger refused them: %v", size, n, err)
		}
		txn.Discard()
		if _, err := s.build(sts[:n+2]); !errors.Is(err, badger.ErrTxnTooBig) {
			t.Errorf("value size %d: fit took %d requests, and Badger takes %d more (err %v)", size, n, 2, err)
		}
		t.Logf("value size %d: %d requests per transaction", size, n)
	}

	// A request too large for any transaction.
	big := &staged{}
	for i := range int(s.limits.maxCount) {
		big.ops = append(big.ops, kv{key: []byte("s/g/k" + itoa(i)), value: []byte("v")})
	}
	if n, err := s.limits.fit([]*staged{big}); n != 0 || !errors.Is(err, badger.ErrTxnTooBig) {
		t.Errorf("oversized request: fit %d, %v; want 0, ErrTxnTooBig", n, err)
	}
}
