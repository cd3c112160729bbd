package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Multi-key transactions on real sidecars syncing through Firestore.

const (
	txnAccounts = 6
	txnStart    = 1000
)

func account(i int) string { return fmt.Sprintf("acct-%d", i) }

// openAccounts creates the accounts with one strong transaction on c.
func openAccounts(t *testing.T, c *client.Client, gov string) {
	t.Helper()
	ops := make([]client.TxnOp, txnAccounts)
	for i := range ops {
		op, err := client.TxnPut(gov, account(i), txnStart, nil)
		if err != nil {
			t.Fatal(err)
		}
		op.IfAbsent = true
		ops[i] = op
	}
	if _, err := c.Txn(context.Background(), ops, client.StrongWrite(20*time.Second)); err != nil {
		t.Fatalf("open accounts: %v", err)
	}
}

// transfer moves a random amount between two random accounts with one
// transaction at the level opts choose, reading the balances as read
// chooses; it retries on version conflicts, at most 200 times.
func transfer(ctx context.Context, c *client.Client, rng *rand.Rand, gov string, read []client.ReadOption, opts ...client.WriteOption) error {
	for try := 0; try < 200; try++ {
		i, j := rng.IntN(txnAccounts), rng.IntN(txnAccounts-1)
		if j >= i {
			j++
		}
		var bal [2]int
		var ver [2]uint64
		for n, k := range []int{i, j} {
			rec, err := c.Get(ctx, gov, account(k), read...)
			if err != nil {
				return fmt.Errorf("read %s: %w", account(k), err)
			}
			if err := rec.Decode(&bal[n]); err != nil {
				return err
			}
			ver[n] = rec.Version
		}
		amount := rng.IntN(100) + 1
		from, err := client.TxnPut(gov, account(i), bal[0]-amount, &ver[0])
		if err != nil {
			return err
		}
		to, _ := client.TxnPut(gov, account(j), bal[1]+amount, &ver[1])
		_, err = c.Txn(ctx, []client.TxnOp{from, to, client.TxnCheckExists(gov, "open", true)}, opts...)
		if errors.Is(err, client.ErrVersionConflict) {
			continue
		}
		return err
	}
	return errors.New("200 version conflicts in a row")
}

// balances reads every account from a sidecar (local copies) or, with
// c nil, from Firestore: "version:balance" per account, and the total.
func balances(t *testing.T, fs *shared, c *client.Client, gov string) ([]string, int) {
	t.Helper()
	out := make([]string, txnAccounts)
	total := 0
	for i := range out {
		var raw []byte
		var version uint64
		if c == nil {
			r, err := fs.get(gov, account(i))
			if err != nil {
				t.Fatalf("firestore %s: %v", account(i), err)
			}
			raw, version = r.Value, r.Version
		} else {
			rec, err := c.Get(context.Background(), gov, account(i))
			if err != nil {
				t.Fatalf("local %s: %v", account(i), err)
			}
			raw, version = rec.Value, rec.Version
		}
		var n int
		if err := wire.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		out[i] = fmt.Sprintf("%d:%d", version, n)
		total += n
	}
	return out, total
}

// TestTxnBankTransfers: clients of three sidecars move money between
// accounts with transactions (if_version on both accounts, a check that the
// bank is open), async and strong. At the end Firestore and every sidecar
// hold the same balances, and the total is what it was. Strong transactions
// that lose to concurrent changes are tried again: the txlog shows attempts
// above 1.
func TestTxnBankTransfers(t *testing.T) {
	for _, level := range []string{wire.WriteAsync, wire.WriteStrong} {
		t.Run(level, func(t *testing.T) {
			fs := newShared(t)
			gov := "bank"
			var clients []*client.Client
			for _, n := range []string{"node-a", "node-b", "node-c"} {
				clients = append(clients, startSidecar(t, fs.args(n, gov)...).Client())
			}
			ctx := context.Background()
			if _, err := clients[0].Put(ctx, gov, "open", true, client.StrongWrite(20*time.Second)); err != nil {
				t.Fatal(err)
			}
			openAccounts(t, clients[0], gov)
			eventually(t, 30*time.Second, func() string {
				for i, c := range clients {
					if _, total := balancesOrZero(c, gov); total != txnAccounts*txnStart {
						return fmt.Sprintf("sidecar %d holds a total of %d", i, total)
					}
				}
				return ""
			})

			var opts []client.WriteOption
			var read []client.ReadOption
			if level == wire.WriteStrong {
				opts = append(opts, client.StrongWrite(30*time.Second))
				read = append(read, client.Strong())
			}
			const workersPerNode, transfers = 2, 12
			var wg sync.WaitGroup
			errs := make(chan error, len(clients)*workersPerNode)
			for n, c := range clients {
				for w := range workersPerNode {
					wg.Go(func() {
						rng := rand.New(rand.NewPCG(uint64(n), uint64(w)))
						for range transfers {
							if err := transfer(ctx, c, rng, gov, read, opts...); err != nil {
								errs <- fmt.Errorf("sidecar %d worker %d: %w", n, w, err)
								return
							}
						}
					})
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}

			eventually(t, 60*time.Second, func() string {
				want, total := balances(t, fs, nil, gov)
				if total != txnAccounts*txnStart {
					return fmt.Sprintf("firestore total %d, want %d: %v", total, txnAccounts*txnStart, want)
				}
				for i, c := range clients {
					if d, err := journalDepth(c); err != nil || d != 0 {
						return fmt.Sprintf("sidecar %d: journal depth %d, %v", i, d, err)
					}
					got, _ := balances(t, fs, c, gov)
					if strings.Join(got, " ") != strings.Join(want, " ") {
						return fmt.Sprintf("sidecar %d holds %v, firestore %v", i, got, want)
					}
				}
				return ""
			})
			// The txlogs tell the truth: every transfer is committed or
			// (async) gave way in Firestore, and exactly the committed
			// ones were applied there (each raised two accounts' versions).
			outcomes := map[string]int{}
			for _, c := range clients {
				for e, err := range c.TxLogAll(ctx, client.TxLogOptions{Governor: gov}) {
					if err != nil {
						t.Fatal(err)
					}
					if e.Consistency == level {
						outcomes[e.Outcome]++
					}
				}
			}
			if level == wire.WriteStrong {
				outcomes[wire.TxnCommitted]-- // openAccounts'
			}
			if n := outcomes[wire.TxnCommitted] + outcomes[wire.TxnGaveWay]; n != len(clients)*workersPerNode*transfers {
				t.Fatalf("txlogs: %v, want %d transfers committed or gave way", outcomes, len(clients)*workersPerNode*transfers)
			}
			final, _ := balances(t, fs, nil, gov)
			versions := 0
			for _, vb := range final {
				v, _, _ := strings.Cut(vb, ":")
				n, _ := strconv.Atoi(v)
				versions += n - 1 // version 1: opened
			}
			if outcomes[wire.TxnCommitted] != versions/2 {
				t.Fatalf("txlogs: %v; firestore applied %d transfers (%v)", outcomes, versions/2, final)
			}
			t.Logf("%s transfers: %v", level, outcomes)
			if level == wire.WriteStrong {
				strongContention(t, clients, gov)
			}
		})
	}
}

// balancesOrZero is the total of a sidecar's local accounts, 0 while one
// is missing.
func balancesOrZero(c *client.Client, gov string) ([]int, int) {
	total := 0
	var out []int
	for i := range txnAccounts {
		rec, err := c.Get(context.Background(), gov, account(i))
		if err != nil {
			return nil, 0
		}
		var n int
		if err := rec.Decode(&n); err != nil {
			return nil, 0
		}
		out = append(out, n)
		total += n
	}
	return out, total
}

// strongContention has writers on every sidecar set one state with strong
// transactions without preconditions until one of them needed more than
// one attempt (bounded), and checks that the txlog says so.
func strongContention(t *testing.T, clients []*client.Client, gov string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	retried := 0
	for n, c := range clients {
		for w := range 2 {
			wg.Go(func() {
				for i := range 40 {
					mu.Lock()
					done := retried > 0
					mu.Unlock()
					if done || ctx.Err() != nil {
						return
					}
					op, _ := client.TxnPut(gov, "hot", fmt.Sprintf("%d-%d-%d", n, w, i), nil)
					res, err := c.Txn(ctx, []client.TxnOp{op, client.TxnCheckExists(gov, "open", true)}, client.StrongWrite(30*time.Second))
					if err != nil && !errors.Is(err, client.ErrUnavailable) {
						t.Errorf("hot txn: %v", err)
						return
					}
					if err == nil && res.Attempts > 1 {
						mu.Lock()
						retried++
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	if retried == 0 {
		t.Fatal("no strong transaction needed a second attempt under contention")
	}
	seen := false
	for _, c := range clients {
		for e, err := range c.TxLogAll(context.Background(), client.TxLogOptions{Governor: gov}) {
			if err != nil {
				t.Fatal(err)
			}
			seen = seen || e.Attempts > 1 && e.Outcome == wire.TxnCommitted
		}
	}
	if !seen {
		t.Fatal("no txlog entry shows more than one attempt")
	}
}

// TestTxnStrongUnavailableWhenCut: a strong transaction with Firestore
// unreachable fails with Unavailable and writes nothing; an async one is
// accepted, survives kill -9 whole, and reaches Firestore once the sidecar
// restarts with Firestore reachable.
func TestTxnStrongUnavailableWhenCut(t *testing.T) {
	fs := newShared(t)
	px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
	a := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, fs.args("node-a", "t")...)
	px.Cut() // before the first write: no push is left half done in Firestore
	c := a.Client()
	ctx := context.Background()
	x, _ := client.TxnPut("t", "x", 1, nil)
	y, _ := client.TxnPut("t", "y", 2, nil)
	_, err := c.Txn(ctx, []client.TxnOp{x, y}, client.StrongWrite(10*time.Second))
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeUnavailable {
		t.Fatalf("strong txn with Firestore cut: %v, want Unavailable", err)
	}
	if _, err := c.Get(ctx, "t", "x"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("x after the failed strong txn: %v", err)
	}
	res, err := c.Txn(ctx, []client.TxnOp{x, y, client.TxnCheckVersion("t", "z", 0)})
	if err != nil || len(res.Records) != 2 || !res.Records[0].Pending {
		t.Fatalf("async txn with Firestore cut: %+v, %v", res, err)
	}
	a.Kill()
	a.Env = nil // Firestore reachable again
	a.Start()
	c = a.Client()
	for _, s := range []string{"x", "y"} {
		if rec, err := c.Get(ctx, "t", s); err != nil || rec.Version != 1 {
			t.Fatalf("%s after kill -9: %+v, %v", s, rec, err)
		}
	}
	eventually(t, 30*time.Second, func() string {
		if d, err := journalDepth(c); err != nil || d != 0 {
			return fmt.Sprintf("journal depth %d, %v", d, err)
		}
		return ""
	})
	for _, s := range []string{"x", "y"} {
		if r, err := fs.get("t", s); err != nil || r.Version != 1 || len(fs.events("t", s)) != 1 {
			t.Fatalf("firestore %s: %+v, %v", s, r, err)
		}
	}
	if log, _, err := c.TxLog(ctx, client.TxLogOptions{Outcome: wire.TxnFailed}); err != nil || len(log) != 1 ||
		log[0].Code != string(wire.CodeUnavailable) || log[0].Consistency != wire.WriteStrong {
		t.Fatalf("txlog of failed transactions after the restart: %+v, %v", log, err)
	}
}

// TestTxnKill9AfterRemoteCommit: the sidecar dies right after Firestore
// applied an async transaction, before the journal ack. After the restart
// the transaction is there whole, and Firestore holds it exactly once.
func TestTxnKill9AfterRemoteCommit(t *testing.T) {
	fs := newShared(t)
	a := startSidecarEnv(t, []string{"TAI_FAULT=kill-after-remote-commit"}, fs.args("node-a")...)
	c := client.New(a.Socket)
	ctx := context.Background()
	x, _ := client.TxnPut("k", "x", 1, nil)
	y, _ := client.TxnPut("k", "y", 2, nil)
	_, err := c.Txn(ctx, []client.TxnOp{x, y, client.TxnCheckExists("k", "z", false)})
	var ce *client.ConnError
	if err != nil && !errors.As(err, &ce) {
		t.Fatalf("txn: %v", err)
	}
	c.Close()
	_ = a.Wait(30 * time.Second) // killed by its own fault, after the commit
	if !strings.Contains(a.Logs(), "fault injection") {
		t.Fatalf("the fault was not armed:\n%s", a.Logs())
	}
	a.Env = nil
	a.Start()
	ca := a.Client()
	eventually(t, 30*time.Second, func() string {
		if d, err := journalDepth(ca); err != nil || d != 0 {
			return fmt.Sprintf("journal depth %d, %v", d, err)
		}
		return ""
	})
	for _, s := range []string{"x", "y"} {
		r, err := fs.get("k", s)
		if err != nil || r.Version != 1 || len(fs.events("k", s)) != 1 {
			t.Fatalf("firestore %s: %+v, %v; want one version, one event", s, r, err)
		}
		if rec, err := ca.Get(ctx, "k", s); err != nil || rec.Pending || rec.Version != 1 {
			t.Fatalf("local %s after the restart: %+v, %v", s, rec, err)
		}
	}
}
