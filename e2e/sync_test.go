package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// Several real sidecars syncing through Firestore (Google's emulator, started
// by scripts/test.sh).

// shared is one test's Firestore root, with a direct handle on it to check
// what the sidecars stored.
type shared struct {
	t      *testing.T
	root   string
	remote *firestore.Remote
}

func newShared(t *testing.T) *shared {
	t.Helper()
	if os.Getenv("FIRESTORE_EMULATOR_HOST") == "" {
		t.Fatal("FIRESTORE_EMULATOR_HOST is not set: run the suite through scripts/test.sh, which starts the Firestore emulator")
	}
	root := "e2e/" + rand.Text()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := firestore.Open(ctx, firestore.Config{ProjectID: firestoretest.Project, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &shared{t: t, root: root, remote: r}
}

// args are the serve flags of a sidecar syncing through s.
func (s *shared) args(node string, governors ...string) []string {
	a := []string{"--firestore-project", firestoretest.Project, "--root", s.root, "--node-id", node}
	if len(governors) > 0 {
		a = append(a, "--governors", strings.Join(governors, ","))
	}
	return a
}

// get reads a state from Firestore itself.
func (s *shared) get(gov, state string) (syncer.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.remote.Get(ctx, syncer.Key{Governor: gov, State: state})
}

func (s *shared) events(gov, state string) []syncer.Event {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := s.remote.Events(ctx, syncer.Key{Governor: gov, State: state}, 0, 0)
	if err != nil {
		s.t.Fatalf("events %s/%s: %v", gov, state, err)
	}
	return evs
}

// wantValue waits until Firestore holds gov/state at version with value
// {i: i}, written under origin.
func (s *shared) wantValue(t *testing.T, gov, state string, version uint64, i int, origin string) {
	t.Helper()
	eventually(t, 30*time.Second, func() string {
		r, err := s.get(gov, state)
		var v map[string]int
		if err == nil {
			err = wire.Unmarshal(r.Value, &v)
		}
		if err != nil || r.Version != version || v["i"] != i || r.Origin != origin {
			return fmt.Sprintf("firestore %s/%s: v%d %v by %s (%v), want v%d {i:%d} by %s", gov, state, r.Version, v,
				r.Origin, err, version, i, origin)
		}
		return ""
	})
}

// eventually calls check until it returns "" or timeout passes, then fails
// with check's last answer.
func eventually(t *testing.T, timeout time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func journalDepth(c *client.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Stats(ctx)
	if err != nil {
		return 0, err
	}
	return st.JournalDepth, nil
}

// TestSyncTwoSidecars: a write on one sidecar reaches Firestore and the other
// sidecar, both ways, and a sidecar with an empty disk serves what Firestore
// holds.
func TestSyncTwoSidecars(t *testing.T) {
	fs := newShared(t)
	a := startSidecar(t, fs.args("node-a", "g")...)
	b := startSidecar(t, fs.args("node-b", "g")...)
	ca, cb := a.Client(), b.Client()
	ctx := context.Background()

	for i := range 20 {
		if _, err := ca.Put(ctx, "g", fmt.Sprintf("s%02d", i), map[string]int{"i": i}, client.Actor("tester")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, func() string {
		for i := range 20 {
			rec, err := cb.Get(ctx, "g", fmt.Sprintf("s%02d", i))
			if err != nil {
				return fmt.Sprintf("b: get s%02d: %v", i, err)
			}
			var v map[string]int
			if err := rec.Decode(&v); err != nil || v["i"] != i || !strings.HasPrefix(rec.Origin, "node-a~") || rec.Pending {
				return fmt.Sprintf("b: s%02d = %+v (%v)", i, v, err)
			}
		}
		return ""
	})
	eventually(t, 30*time.Second, func() string {
		rec, err := ca.Get(ctx, "g", "s00")
		if err != nil || rec.Pending {
			return fmt.Sprintf("a: s00 still pending: %+v, %v", rec, err)
		}
		return ""
	})
	r, err := fs.get("g", "s07")
	if err != nil || r.Version != 1 || !strings.HasPrefix(r.Origin, "node-a~") || r.Change.Actor != "tester" {
		t.Fatalf("firestore s07: %+v, %v", r, err)
	}

	// b changes one and deletes another; a sees both.
	if _, err := cb.Put(ctx, "g", "s01", map[string]int{"i": 100}, client.IfVersion(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Delete(ctx, "g", "s02"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() string {
		rec, err := ca.Get(ctx, "g", "s01")
		if err != nil || rec.Version != 2 || !strings.HasPrefix(rec.Origin, "node-b~") {
			return fmt.Sprintf("a: s01 = %+v, %v", rec, err)
		}
		if _, err := ca.Get(ctx, "g", "s02"); !errors.Is(err, client.ErrNotFound) {
			return fmt.Sprintf("a: s02 not deleted: %v", err)
		}
		return ""
	})

	// A new sidecar with an empty disk serves the governor from Firestore.
	d := startSidecar(t, fs.args("node-d", "g")...)
	cd := d.Client()
	eventually(t, 30*time.Second, func() string {
		n := 0
		for rec, err := range cd.ListAll(ctx, "g", client.ListOptions{}) {
			if err != nil {
				return err.Error()
			}
			n++
			if rec.State == "s01" && rec.Version != 2 {
				return fmt.Sprintf("d: s01 version %d", rec.Version)
			}
		}
		if n != 19 {
			return fmt.Sprintf("d lists %d states, want 19", n)
		}
		return ""
	})
}

// TestLostDataDirSameNodeID: a sidecar whose data dir is lost comes back
// under the same --node-id (a StatefulSet pod on a new volume) and writes a
// state its lost store had written, before pulling it (its new governor
// list leaves it out, so the order is certain). The write must reach
// Firestore: its op id and vector clock entry start again at 1, and under
// the lost store's name Firestore's record (which has seen that name's ops
// up to 3) would take it as already applied and drop it. Each store writes
// under its own origin, "node-id~incarnation", kept across restarts.
func TestLostDataDirSameNodeID(t *testing.T) {
	fs := newShared(t)
	ctx := context.Background()
	lost := startSidecar(t, fs.args("node-a", "g")...)
	c := lost.Client()
	for i := range 3 {
		if _, err := c.Put(ctx, "g", "s", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	var lostOrigin string
	eventually(t, 30*time.Second, func() string {
		r, err := fs.get("g", "s")
		if err != nil || r.Version != 3 {
			return fmt.Sprintf("firestore g/s: %+v, %v", r, err)
		}
		lostOrigin = r.Origin
		return ""
	})
	lost.Kill()

	a := startSidecar(t, fs.args("node-a", "h")...) // a new, empty data dir
	ca := a.Client()
	rec, err := ca.Put(ctx, "g", "s", map[string]int{"i": 100})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec.Origin, "node-a~") || rec.Origin == lostOrigin {
		t.Fatalf("the new store writes as %q; the lost one wrote as %q", rec.Origin, lostOrigin)
	}
	eventually(t, 30*time.Second, func() string {
		r, err := fs.get("g", "s")
		var v map[string]int
		if err == nil {
			err = wire.Unmarshal(r.Value, &v)
		}
		if err != nil || r.Version != 4 || v["i"] != 100 || r.Origin != rec.Origin {
			return fmt.Sprintf("firestore g/s: v%d %v by %s (%v), want v4 {i:100} by %s", r.Version, v, r.Origin, err, rec.Origin)
		}
		return ""
	})

	a.Kill()
	a.Start()
	st, err := a.Client().Stats(ctx)
	if err != nil || st.Origin != rec.Origin {
		t.Fatalf("after a restart on the same data dir: origin %q (%v), want %q", st.Origin, err, rec.Origin)
	}
}

// restoreOlderCopy runs node-a, copies its data dir (a backup) after its
// first write of g/s ({i: 1}) reached Firestore, lets it go on (then, with
// the origin the copy was taken under), loses it, and restores the copy in
// its data dir. It returns the stopped sidecar, a client of it, and that
// origin.
func restoreOlderCopy(t *testing.T, fs *shared, then func(c *client.Client, copied string)) (a *sidecar, c *client.Client, copied string) {
	t.Helper()
	a = startSidecar(t, fs.args("node-a", "g")...)
	c = a.Client() // it dials again after each restart
	copied = putI(t, c, "g", "s", 1).Origin
	fs.wantValue(t, "g", "s", 1, 1, copied)
	if err := a.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(shortTempDir(t), "data")
	copyDataDir(t, a.DataDir, backup)
	a.Start()
	then(c, copied)
	a.Kill()
	copyDataDir(t, backup, a.DataDir)
	return a, c, copied
}

// twiceMore writes g/s twice more ({i: 2}, {i: 3}) and waits for Firestore
// to hold the second.
func twiceMore(t *testing.T, fs *shared) func(c *client.Client, copied string) {
	return func(c *client.Client, copied string) {
		putI(t, c, "g", "s", 2)
		putI(t, c, "g", "s", 3)
		fs.wantValue(t, "g", "s", 3, 3, copied)
	}
}

// putI writes {i: i} to gov/state.
func putI(t *testing.T, c *client.Client, gov, state string, i int) *client.Record {
	t.Helper()
	rec, err := c.Put(context.Background(), gov, state, map[string]int{"i": i})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestRestoredDataDir: node-a's data dir is restored from an older copy
// (restoreOlderCopy), given a new incarnation with `new-incarnation`, and
// the sidecar writes the state again before it can reach Firestore (so the
// write is made on version 1). The write must reach Firestore: under the
// copied store's origin its op id and vector clock entry would be version
// 2's, which Firestore holds already.
func TestRestoredDataDir(t *testing.T) {
	fs := newShared(t)
	a, c, copied := restoreOlderCopy(t, fs, twiceMore(t, fs))
	stdout, stderr, err := runBinary("new-incarnation", "--data-dir", a.DataDir)
	var renewed map[string]string
	if err == nil {
		err = json.Unmarshal([]byte(stdout), &renewed)
	}
	if err != nil || renewed["was"] != copied || renewed["origin"] == copied {
		t.Fatalf("new-incarnation: %q %q %v", stdout, stderr, err)
	}
	a.Env = []string{"FIRESTORE_EMULATOR_HOST=127.0.0.1:1"} // nowhere: the write is made on version 1
	a.Start()
	if rec := putI(t, c, "g", "s", 100); rec.Origin != renewed["origin"] || rec.Version != 2 {
		t.Fatalf("the restored sidecar wrote v%d as %s, want v2 as %s", rec.Version, rec.Origin, renewed["origin"])
	}
	a.Kill()
	a.Env = nil
	a.Start()
	fs.wantValue(t, "g", "s", 4, 100, renewed["origin"])
}

// TestRestoredDataDirUnrenewed: as TestRestoredDataDir, without
// `new-incarnation`. The write, made under the copied origin, is what
// Firestore holds as version 2: its push finds it there as another change
// (another change time), parks it instead of dropping it as already
// applied, and the sidecar draws a new incarnation; the write made again
// reaches Firestore.
func TestRestoredDataDirUnrenewed(t *testing.T) {
	fs := newShared(t)
	ctx := context.Background()
	a, c, copied := restoreOlderCopy(t, fs, twiceMore(t, fs))
	a.SharesOrigin = true
	a.Env = []string{"FIRESTORE_EMULATOR_HOST=127.0.0.1:1"}
	a.Start()
	lost := putI(t, c, "g", "s", 100)
	if lost.Origin != copied {
		t.Fatalf("the restored sidecar wrote as %s, want the copied origin %s", lost.Origin, copied)
	}
	a.Kill()
	a.Env = nil
	a.Start()
	eventually(t, 30*time.Second, func() string {
		failed, _, err := c.Failed(ctx, 0, 10)
		if err != nil {
			return err.Error()
		}
		if len(failed) != 1 || failed[0].State != "s" || failed[0].Version != lost.Version ||
			!strings.Contains(failed[0].Reason, "another store makes changes under this sidecar's origin") {
			return fmt.Sprintf("failed list: %+v", failed)
		}
		return ""
	})
	st, err := c.Stats(ctx)
	if err != nil || st.Origin == copied {
		t.Fatalf("the sidecar still writes as %s (%v)", copied, err)
	}
	again := putI(t, c, "g", "s", 100)
	fs.wantValue(t, "g", "s", 4, 100, again.Origin)
	if again.Origin != st.Origin {
		t.Fatalf("the write made again went as %s, want %s", again.Origin, st.Origin)
	}
}

// TestCopiedDataDirDrawsNewOrigin: as TestRestoredDataDir, but the restored
// data dir is not given a new incarnation. Its first pull of g meets
// node-a's later record of g/s, which counts more changes of its origin
// than it made: it draws a new incarnation by itself. Its write of h/t, a
// state it never held and node-a wrote after the copy, then reaches
// Firestore: under the copied origin it would count as node-a's write of
// h/t, already applied, and be dropped.
func TestCopiedDataDirDrawsNewOrigin(t *testing.T) {
	fs := newShared(t)
	ctx := context.Background()
	a, c, copied := restoreOlderCopy(t, fs, func(c *client.Client, copied string) {
		putI(t, c, "g", "s", 2)
		putI(t, c, "h", "t", 1)
		fs.wantValue(t, "g", "s", 2, 2, copied)
		fs.wantValue(t, "h", "t", 1, 1, copied)
	})
	a.SharesOrigin = true
	a.Start()
	var renewed string
	eventually(t, 30*time.Second, func() string {
		st, err := c.Stats(ctx)
		if err != nil {
			return err.Error()
		}
		if st.Origin == copied {
			return "the restored sidecar still writes as " + copied
		}
		renewed = st.Origin
		return ""
	})
	if rec := putI(t, c, "h", "t", 100); rec.Origin != renewed {
		t.Fatalf("the restored sidecar wrote as %s, want %s", rec.Origin, renewed)
	}
	fs.wantValue(t, "h", "t", 2, 100, renewed)
	if !strings.Contains(a.Logs(), originSharedLog) {
		t.Fatal("the new incarnation was not logged")
	}
}

// copyDataDir replaces to with a copy of the data dir from, as a restore
// from a backup does.
func copyDataDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.RemoveAll(to); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// TestSyncKill9BetweenCommitAndAck kills the real process right after
// Firestore applied its push and before the journal ack; after a restart the
// change is pushed again and recognised: it is in Firestore exactly once.
func TestSyncKill9BetweenCommitAndAck(t *testing.T) {
	fs := newShared(t)
	a := startSidecarEnv(t, []string{"TAI_FAULT=kill-after-remote-commit"}, fs.args("node-a")...)
	c := client.New(a.Socket)
	ctx := context.Background()
	// One atomic batch: one push, and the process kills itself once
	// Firestore has applied it. (The reply races the kill: the batch is
	// durable locally either way, which the restart checks.)
	_, err := c.BatchPut(ctx, []wire.Item{
		{Governor: "g", State: "k", Value: mustMsgpack(t, map[string]int{"n": 0})},
		{Governor: "g", State: "other", Value: mustMsgpack(t, "x")},
	})
	var ce *client.ConnError
	if err != nil && !errors.As(err, &ce) {
		t.Fatalf("batch put: %v", err)
	}
	c.Close()
	_ = a.Wait(30 * time.Second) // killed by its own fault, after the commit
	if !strings.Contains(a.Logs(), "fault injection") {
		t.Fatalf("the fault was not armed:\n%s", a.Logs())
	}
	r, err := fs.get("g", "k")
	if err != nil || r.Version != 1 {
		t.Fatalf("firestore k after the commit: %+v, %v", r, err)
	}

	a.Env = nil
	a.Start()
	ca := a.Client()
	for i := 1; i < 5; i++ {
		if _, err := ca.Put(ctx, "g", "k", map[string]int{"n": i}, client.IfVersion(uint64(i))); err != nil {
			t.Fatalf("put %d after the restart: %v", i, err)
		}
	}
	eventually(t, 30*time.Second, func() string {
		if d, err := journalDepth(ca); err != nil || d != 0 {
			return fmt.Sprintf("journal depth %d, %v", d, err)
		}
		return ""
	})
	r, err = fs.get("g", "k")
	if err != nil || r.Version != 5 {
		t.Fatalf("firestore k: %+v, %v; want version 5", r, err)
	}
	if o, err := fs.get("g", "other"); err != nil || o.Version != 1 {
		t.Fatalf("firestore other: %+v, %v", o, err)
	}
	evs := fs.events("g", "k")
	if len(evs) != 5 {
		t.Fatalf("firestore holds %d events of k, want 5 (one per write)", len(evs))
	}
	seen := map[string]bool{}
	for i, e := range evs {
		if seen[e.OpID] || e.ToVersion != uint64(i+1) {
			t.Fatalf("event %d: %+v (op seen before: %v)", i, e, seen[e.OpID])
		}
		seen[e.OpID] = true
	}
	if rec, err := ca.Get(ctx, "g", "k"); err != nil || rec.Pending || rec.Version != 5 {
		t.Fatalf("local k after restart: %+v, %v", rec, err)
	}
}

// TestSyncConvergence: three sidecars, several clients each writing and
// deleting the same keys at random; after quiescence every sidecar and
// Firestore hold the same value and version of every key.
func TestSyncConvergence(t *testing.T) {
	fs := newShared(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var nodes []*sidecar
	for _, n := range []string{"a", "b", "c"} {
		nodes = append(nodes, startSidecar(t, fs.args("node-"+n, "conv")...))
	}
	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i, n := range nodes {
		c := n.Client()
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := mrand.New(mrand.NewPCG(seed, uint64(10*i+w)))
				for j := range 40 {
					k := keys[rng.IntN(len(keys))]
					if rng.IntN(6) == 0 {
						if _, err := c.Delete(ctx, "conv", k); err != nil && !errors.Is(err, client.ErrNotFound) {
							t.Errorf("seed %d: delete: %v", seed, err)
						}
						continue
					}
					if _, err := c.Put(ctx, "conv", k, fmt.Sprintf("%d/%d/%d", i, w, j)); err != nil {
						t.Errorf("seed %d: put: %v", seed, err)
					}
				}
			}()
		}
	}
	wg.Wait()
	clients := make([]*client.Client, len(nodes))
	for i, n := range nodes {
		clients[i] = n.Client()
	}
	eventually(t, 60*time.Second, func() string {
		for _, c := range clients {
			if d, err := journalDepth(c); err != nil || d != 0 {
				return fmt.Sprintf("seed %d: journal depth %d, %v", seed, d, err)
			}
		}
		for _, k := range keys {
			r, err := fs.get("conv", k)
			if err != nil {
				return fmt.Sprintf("seed %d: firestore %s: %v", seed, k, err)
			}
			for i, c := range clients {
				rec, err := c.Get(ctx, "conv", k)
				switch {
				case r.Deleted && !errors.Is(err, client.ErrNotFound):
					return fmt.Sprintf("seed %d: node %d holds %s (%v), firestore deleted it", seed, i, k, err)
				case r.Deleted:
				case err != nil:
					return fmt.Sprintf("seed %d: node %d: %s: %v", seed, i, k, err)
				case !bytes.Equal(rec.Value, r.Value) || rec.Version != r.Version || rec.Pending:
					return fmt.Sprintf("seed %d: node %d holds %s v%d %x pending=%v, firestore v%d %x", seed, i, k, rec.Version, rec.Value, rec.Pending, r.Version, r.Value)
				}
			}
		}
		return ""
	})
}

func mustMsgpack(t *testing.T, v any) wire.Raw {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chainWriters write compare-and-set chains to their own keys of governor
// gov on c until stop is closed; acked holds the last acknowledged version
// of each key. A write that fails (the sidecar went away) ends its writer.
type chainWriters struct {
	mu     sync.Mutex
	acked  map[string]uint64
	failed []error
	wg     sync.WaitGroup
}

func startChainWriters(c *client.Client, gov string, writers, keys int, acked map[string]uint64, stop <-chan struct{}) *chainWriters {
	cw := &chainWriters{acked: acked}
	for w := range writers {
		cw.wg.Add(1)
		go func() {
			defer cw.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-k%d", w, i%keys)
				cw.mu.Lock()
				base := cw.acked[name]
				cw.mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.Put(ctx, gov, name, counterDoc{N: base + 1, Writer: w}, client.IfVersion(base))
				cancel()
				cw.mu.Lock()
				if err != nil {
					cw.failed = append(cw.failed, err)
					cw.mu.Unlock()
					return
				}
				cw.acked[name] = base + 1
				cw.mu.Unlock()
			}
		}()
	}
	return cw
}

// checkChains waits until Firestore holds every chain at (at least) its
// acknowledged version, then checks each key's event log there: versions 1
// to the last with no gap, every op once, and each version's value the one
// written for it.
//
// It waits up to three minutes: a process killed (or cut off) in the middle
// of a Firestore transaction leaves the documents it read locked until
// Firestore gives up on the transaction (about a minute idle), and the pushes
// of those keys wait that long.
func (s *shared) checkChains(t *testing.T, gov string, acked map[string]uint64) {
	t.Helper()
	eventually(t, 3*time.Minute, func() string {
		for name, v := range acked {
			r, err := s.get(gov, name)
			if err != nil || r.Version < v {
				return fmt.Sprintf("firestore %s: %+v, %v; want version >= %d", name, r.Version, err, v)
			}
		}
		return ""
	})
	for name, v := range acked {
		r, _ := s.get(gov, name)
		if r.Version > v+1 {
			t.Fatalf("%s: firestore at version %d, acknowledged %d: more than the one unacknowledged write", name, r.Version, v)
		}
		evs := s.events(gov, name)
		if uint64(len(evs)) != r.Version {
			t.Fatalf("%s: %d events for version %d: lost or doubled", name, len(evs), r.Version)
		}
		ops := map[string]bool{}
		for i, e := range evs {
			var doc counterDoc
			if err := wire.Unmarshal(e.Value, &doc); err != nil || e.ToVersion != uint64(i+1) || doc.N != e.ToVersion || ops[e.OpID] {
				t.Fatalf("%s: event %d: to_version %d, value %+v (%v), op %s seen before: %v", name, i, e.ToVersion, doc, err, e.OpID, ops[e.OpID])
			}
			ops[e.OpID] = true
		}
	}
}

// TestSyncSurvivesOutage: a sidecar's link to Firestore is cut under load
// and restored; writes go on succeeding locally throughout, and afterwards
// Firestore and another sidecar hold every acknowledged write exactly once.
func TestSyncSurvivesOutage(t *testing.T) {
	fs := newShared(t)
	px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
	a := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, fs.args("node-a")...)
	b := startSidecar(t, fs.args("node-b", "outage")...)
	ca := a.Client()
	acked := map[string]uint64{}
	stop := make(chan struct{})
	cw := startChainWriters(ca, "outage", 4, 3, acked, stop)

	time.Sleep(time.Second)
	px.Cut()
	cw.mu.Lock()
	atCut := 0
	for _, v := range acked {
		atCut += int(v)
	}
	cw.mu.Unlock()
	time.Sleep(2 * time.Second)
	// Offline: local reads answer, and the writes kept being acknowledged.
	if _, err := ca.Get(context.Background(), "outage", "w0-k0"); err != nil {
		t.Fatalf("local read while offline: %v", err)
	}
	if d, err := journalDepth(ca); err != nil || d == 0 {
		t.Fatalf("journal depth while offline %d, %v: want writes waiting", d, err)
	}
	px.Restore()
	time.Sleep(time.Second)
	close(stop)
	cw.wg.Wait()
	if len(cw.failed) > 0 {
		t.Fatalf("writes failed during the outage: %v", cw.failed)
	}
	total := 0
	for _, v := range acked {
		total += int(v)
	}
	t.Logf("%d writes acknowledged, %d before the cut", total, atCut)
	if total <= atCut {
		t.Fatal("no write was acknowledged during the outage")
	}
	fs.checkChains(t, "outage", acked)
	cb := b.Client()
	eventually(t, time.Minute, func() string {
		if d, err := journalDepth(ca); err != nil || d != 0 {
			return fmt.Sprintf("a: journal depth %d, %v", d, err)
		}
		for name, v := range acked {
			rec, err := cb.Get(context.Background(), "outage", name)
			if err != nil || rec.Version != v {
				return fmt.Sprintf("b: %s: %v, %v; want version %d", name, rec, err, v)
			}
		}
		return ""
	})
}

// TestSyncKill9UnderLoad kills a syncing sidecar with SIGKILL at random
// moments under load; after each restart it goes on, and in the end
// Firestore holds every acknowledged write exactly once.
func TestSyncKill9UnderLoad(t *testing.T) {
	fs := newShared(t)
	a := startSidecar(t, fs.args("node-a")...)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 1))
	acked := map[string]uint64{}
	for cycle := range 3 {
		c := client.New(a.Socket)
		stop := make(chan struct{})
		cw := startChainWriters(c, "kill", 4, 3, acked, stop)
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		a.Kill()
		close(stop)
		cw.wg.Wait()
		c.Close()
		a.Start()
		// A write in flight at the kill may have been applied: catch up.
		ca := a.Client()
		for name := range acked {
			rec, err := ca.Get(context.Background(), "kill", name)
			if err != nil {
				t.Fatalf("cycle %d: %s after restart: %v", cycle, name, err)
			}
			if rec.Version < acked[name] || rec.Version > acked[name]+1 {
				t.Fatalf("cycle %d: %s at version %d, acknowledged %d", cycle, name, rec.Version, acked[name])
			}
			acked[name] = rec.Version
		}
	}
	fs.checkChains(t, "kill", acked)
}
