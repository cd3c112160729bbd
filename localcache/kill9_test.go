package localcache

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// kill9DirEnv, when set, makes TestKill9 the child: it writes to the store
// in that directory and prints every acknowledged write until it is killed.
const kill9DirEnv = "LOCALCACHE_KILL9_DIR"

const (
	kill9Writers = 8
	kill9Keys    = 4 // per writer
)

// TestKill9 runs a child process that writes compare-and-set chains and
// prints each acknowledged version, kills it with SIGKILL in the middle of
// the load, reopens the store and checks every acknowledged write is there
// exactly once: its version, one event per version, one journal entry per
// version, the counters. At most the one write each writer had in flight
// may have gone through unacknowledged.
func TestKill9(t *testing.T) {
	if dir := os.Getenv(kill9DirEnv); dir != "" {
		kill9Child(t, dir)
		return
	}
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	acked := map[Key]uint64{}
	for cycle := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.v=false")
		cmd.Env = append(os.Environ(), kill9DirEnv+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		minAcks := 300 + rng.IntN(700)
		sc := bufio.NewScanner(out)
		n := 0
		deadline := time.Now().Add(20 * time.Second)
		for n < minAcks && time.Now().Before(deadline) && sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "ack" {
				continue
			}
			v, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
			k := key("kill9", f[1])
			acked[k] = max(acked[k], v)
			n++
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		// Acks printed before the kill landed count too.
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "ack" {
				v, _ := strconv.ParseUint(f[2], 10, 64)
				k := key("kill9", f[1])
				acked[k] = max(acked[k], v)
				n++
			}
		}
		_ = cmd.Wait()
		if n < 50 {
			t.Fatalf("cycle %d: only %d acknowledged writes before the kill", cycle, n)
		}

		s := openDisk(t, dir)
		ctx := context.Background()
		got := map[Key]uint64{}
		for w := range kill9Writers {
			for i := range kill9Keys {
				k := key("kill9", kill9Name(w, i))
				rec, err := s.Get(ctx, k)
				if err != nil && acked[k] == 0 {
					continue
				}
				if err != nil || rec.Version < acked[k] || rec.Version > acked[k]+1 {
					t.Fatalf("cycle %d: %s = v%d, %v; acknowledged v%d", cycle, k, rec.Version, err, acked[k])
				}
				got[k] = rec.Version
				acked[k] = rec.Version // the next cycle builds on what is stored
			}
		}
		checkExactlyOnce(t, s, got)
		closeStore(t, s)
		t.Logf("cycle %d: %d acknowledged writes, all present", cycle, n)
	}
}

func kill9Name(w, i int) string { return fmt.Sprintf("w%d-k%d", w, i) }

// kill9Child writes until it is killed. Each writer owns its keys and
// extends their version chains from what is stored.
func kill9Child(t *testing.T, dir string) {
	s, err := Open(Options{Dir: dir, NodeID: "n1", GCInterval: -1, CheckpointInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for w := range kill9Writers {
		wg.Go(func() {
			versions := make([]uint64, kill9Keys)
			for i := range versions {
				if rec, err := s.Get(ctx, key("kill9", kill9Name(w, i))); err == nil {
					versions[i] = rec.Version
				}
			}
			for n := 0; ; n++ {
				i := n % kill9Keys
				name := kill9Name(w, i)
				v := versions[i] + 1
				_, err := s.Write(ctx, Write{Key: key("kill9", name), Value: []byte(name + "@" + itoa(int(v))), IfVersion: u64(v - 1)})
				if err != nil {
					fmt.Fprintln(os.Stderr, "child write:", err)
					os.Exit(3)
				}
				versions[i] = v
				mu.Lock()
				fmt.Fprintf(out, "ack %s %d\n", name, v)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}
