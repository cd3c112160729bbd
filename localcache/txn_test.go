package localcache

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

func boolp(b bool) *bool { return &b }

func wantMissing(t *testing.T, s *Store, k Key) {
	t.Helper()
	if rec, err := s.Get(context.Background(), k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("%s: %+v, %v; want not found", k, rec, err)
	}
}

// TestTxnAllOrNothing: a failing check or precondition writes nothing (no
// record, event or journal entry); a transaction that holds writes all of
// it, journaled as one strict batch whose first entry carries the checked
// versions.
func TestTxnAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	a, b, c, z := key("g", "a"), key("g", "b"), key("g", "c"), key("g", "z")
	mustPut(t, s, a, "1")
	depth := s.Depth()

	_, err := s.WriteTxn(ctx, Txn{
		Writes: []Write{{Key: b, Value: []byte("x")}, {Key: c, Value: []byte("y"), IfVersion: u64(0)}},
		Checks: []TxnCheck{{Key: a, IfVersion: u64(2)}},
	})
	wantConflict(t, err, 2, 1)
	_, err = s.WriteTxn(ctx, Txn{Writes: []Write{{Key: b, Value: []byte("x")}, {Key: a, Value: []byte("2"), IfVersion: u64(5)}}})
	wantConflict(t, err, 5, 1)
	_, err = s.WriteTxn(ctx, Txn{Writes: []Write{{Key: b, Value: []byte("x")}}, Checks: []TxnCheck{{Key: z, Exists: boolp(true)}}})
	wantConflict(t, err, 0, 0)
	_, err = s.WriteTxn(ctx, Txn{Writes: []Write{{Key: b, Value: []byte("x")}}, Checks: []TxnCheck{{Key: a, Exists: boolp(false)}}})
	wantConflict(t, err, 0, 1)
	_, err = s.WriteTxn(ctx, Txn{Writes: []Write{{Key: b, Value: []byte("x")}, {Key: z, Delete: true}}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("txn deleting a missing state: %v, want not found", err)
	}
	wantMissing(t, s, b)
	wantMissing(t, s, c)
	if s.Depth() != depth || len(mustEvents(t, s, b)) != 0 {
		t.Fatalf("failed transactions left journal depth %d (want %d), events of b %d", s.Depth(), depth, len(mustEvents(t, s, b)))
	}

	recs, err := s.WriteTxn(ctx, Txn{
		Writes: []Write{{Key: b, Value: []byte("x"), IfAbsent: true}, {Key: a, Delete: true, IfVersion: u64(1)}},
		Checks: []TxnCheck{{Key: z, IfVersion: u64(0)}, {Key: c, Exists: boolp(false)}},
	})
	if err != nil || len(recs) != 2 || recs[0].Key != b || recs[0].Version != 1 || recs[1].Key != a || !recs[1].Deleted {
		t.Fatalf("txn: %+v, %v", recs, err)
	}
	wantMissing(t, s, a)
	journal := mustJournal(t, s)
	if len(journal) != 3 {
		t.Fatalf("journal has %d entries, want 3", len(journal))
	}
	first, second := journal[1], journal[2]
	if first.BatchID == "" || first.BatchID != second.BatchID || !first.Strict || !second.Strict {
		t.Fatalf("transaction entries %+v, %+v: want one strict batch", first, second)
	}
	want := []CheckedVersion{{Key: z}, {Key: c}}
	if len(first.Checks) != 2 || first.Checks[0] != want[0] || first.Checks[1] != want[1] || second.Checks != nil {
		t.Fatalf("checks journaled %+v / %+v, want %+v on the first entry", first.Checks, second.Checks, want)
	}
	pending, err := s.Pending(ctx, 0, 0)
	if err != nil || len(pending) != 3 || len(pending[1].Checks) != 2 || pending[1].Checks[0].Version != 0 {
		t.Fatalf("pending: %+v, %v", pending, err)
	}

	// A transaction of checks only writes nothing.
	if recs, err := s.WriteTxn(ctx, Txn{Checks: []TxnCheck{{Key: b, IfVersion: u64(1)}, {Key: a, Exists: boolp(false)}}}); err != nil || len(recs) != 0 {
		t.Fatalf("checks only: %+v, %v", recs, err)
	}
	_, err = s.WriteTxn(ctx, Txn{Checks: []TxnCheck{{Key: b, IfVersion: u64(2)}}})
	wantConflict(t, err, 2, 1)
}

// TestTxnValidation: a key twice (written, or written and checked), too
// many operations or writes, and malformed checks are refused before
// anything is written.
func TestTxnValidation(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	a := key("g", "a")
	put := Write{Key: a, Value: []byte("v")}
	for name, tc := range map[string]struct {
		txn  Txn
		want error
	}{
		"write twice":       {Txn{Writes: []Write{put, put}}, ErrInvalid},
		"write and check":   {Txn{Writes: []Write{put}, Checks: []TxnCheck{{Key: a, IfVersion: u64(0)}}}, ErrInvalid},
		"check twice":       {Txn{Checks: []TxnCheck{{Key: a, IfVersion: u64(0)}, {Key: a, Exists: boolp(true)}}}, ErrInvalid},
		"check without":     {Txn{Checks: []TxnCheck{{Key: a}}}, ErrInvalid},
		"check with both":   {Txn{Checks: []TxnCheck{{Key: a, IfVersion: u64(1), Exists: boolp(true)}}}, ErrInvalid},
		"bad check name":    {Txn{Checks: []TxnCheck{{Key: key("g", "a/b"), IfVersion: u64(1)}}}, ErrInvalid},
		"put without value": {Txn{Writes: []Write{{Key: a}}}, ErrInvalid},
		"too many ops":      {Txn{Checks: manyChecks(501)}, ErrTooLarge},
		"too many writes":   {Txn{Writes: manyWrites(251)}, ErrTooLarge},
	} {
		if _, err := s.WriteTxn(ctx, tc.txn); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	var fe *FieldError
	if _, err := s.WriteTxn(ctx, Txn{Checks: manyChecks(501)}); !errors.As(err, &fe) || fe.Limit != 500 {
		t.Fatalf("501 operations: %v, want a limit of 500", err)
	}
	if _, err := s.WriteTxn(ctx, Txn{Writes: manyWrites(250), Checks: manyChecks(250)}); err != nil {
		t.Fatalf("250 writes and 250 checks: %v", err)
	}
	if s.Depth() != 250 {
		t.Fatalf("journal depth %d, want 250", s.Depth())
	}
}

func manyChecks(n int) []TxnCheck {
	out := make([]TxnCheck, n)
	for i := range out {
		out[i] = TxnCheck{Key: key("checked", itoa(i)), IfVersion: u64(0)}
	}
	return out
}

func manyWrites(n int) []Write {
	out := make([]Write, n)
	for i := range out {
		out[i] = Write{Key: key("written", itoa(i)), Value: []byte("v")}
	}
	return out
}

// TestTxnTransfersKeepSum: many goroutines move money between accounts
// with read-check-write transactions (if_version on both accounts, a check
// that the bank is open); the total never changes, and every committed
// transfer is one version step of each account.
func TestTxnTransfersKeepSum(t *testing.T) {
	ctx := context.Background()
	s := openMem(t)
	const accounts, workers, transfers, start = 6, 12, 40, 1000
	open := key("bank", "open")
	mustPut(t, s, open, "yes")
	keys := make([]Key, accounts)
	for i := range keys {
		keys[i] = key("bank", "acct-"+itoa(i))
		mustPut(t, s, keys[i], strconv.Itoa(start))
	}
	var committed, conflicts atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range transfers {
				for {
					i, j := rng.IntN(accounts), rng.IntN(accounts-1)
					if j >= i {
						j++
					}
					recs, err := s.GetMany(ctx, []Key{keys[i], keys[j]})
					if err != nil {
						t.Error(err)
						return
					}
					from, _ := strconv.Atoi(string(recs[0].Value))
					to, _ := strconv.Atoi(string(recs[1].Value))
					amount := rng.IntN(50) + 1
					_, err = s.WriteTxn(ctx, Txn{
						Writes: []Write{
							{Key: keys[i], Value: []byte(strconv.Itoa(from - amount)), IfVersion: u64(recs[0].Version)},
							{Key: keys[j], Value: []byte(strconv.Itoa(to + amount)), IfVersion: u64(recs[1].Version)},
						},
						Checks: []TxnCheck{{Key: open, Exists: boolp(true)}},
					})
					if errors.Is(err, ErrVersionConflict) {
						conflicts.Add(1)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					committed.Add(1)
					break
				}
			}
		})
	}
	wg.Wait()
	recs, err := s.GetMany(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	sum, versions := 0, uint64(0)
	for _, r := range recs {
		v, _ := strconv.Atoi(string(r.Value))
		sum += v
		versions += r.Version - 1
	}
	if sum != accounts*start {
		t.Fatalf("total %d, want %d", sum, accounts*start)
	}
	if committed.Load() != workers*transfers || versions != uint64(2*committed.Load()) {
		t.Fatalf("%d transfers committed (want %d), %d account versions written (want 2 per transfer)",
			committed.Load(), workers*transfers, versions)
	}
	t.Logf("%d transfers, %d retried after a conflict", committed.Load(), conflicts.Load())
}

// TestTxnJournalAfterRestart: a transaction's entries and checks are
// durable: after a reopen the journal still holds them whole.
func TestTxnJournalAfterRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openDisk(t, dir)
	a, b, c := key("g", "a"), key("g", "b"), key("g", "c")
	mustPut(t, s, c, "1")
	if _, err := s.WriteTxn(ctx, Txn{Writes: []Write{{Key: a, Value: []byte("1")}, {Key: b, Value: []byte("2")}},
		Checks: []TxnCheck{{Key: c, IfVersion: u64(1)}}}); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	s = openDisk(t, dir)
	defer closeStore(t, s)
	pending, err := s.Pending(ctx, 0, 0)
	if err != nil || len(pending) != 3 {
		t.Fatalf("pending after reopen: %+v, %v", pending, err)
	}
	txn := pending[1:]
	if txn[0].BatchID != txn[1].BatchID || !txn[0].Strict || len(txn[0].Checks) != 1 || txn[0].Checks[0].Version != 1 ||
		txn[0].Checks[0].Key.State != "c" || txn[0].Checks[0].OpID != s.Origin()+"-1" {
		t.Fatalf("transaction entries after reopen: %+v", txn)
	}
}
