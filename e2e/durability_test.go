package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

type counterDoc struct {
	N      uint64 `codec:"n"`
	Writer int    `codec:"w"`
}

// TestKill9LosesNoAcknowledgedWrite writes under load with compare-and-set
// chains, kills the sidecar with SIGKILL at a random moment, restarts it, and
// checks every key: each acknowledged version is there, at most the one write
// that was in flight per writer went through unacknowledged, and every version
// holds the value written for it (nothing applied twice). The journal must
// hold exactly one entry per version.
//
// It runs twice: with the writers sharing one client, whose connections
// carry many requests at once (the sidecar serves their writes concurrently),
// and with a client of one connection per writer, each sending a request only
// after the last reply (the sidecar serves such a connection's writes on its
// reader; see docs/protocol.md).
func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	t.Run("pipelined", func(t *testing.T) { testKill9(t, false) })
	t.Run("connection per writer", func(t *testing.T) { testKill9(t, true) })
}

func testKill9(t *testing.T, connPerWriter bool) {
	const (
		writers       = 8
		keysPerWriter = 4
		cycles        = 5
	)
	sc := startSidecar(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	key := func(w, k int) string { return fmt.Sprintf("w%d-k%d", w, k) }
	stored := make(map[string]uint64) // version known to be stored before the cycle

	for cycle := 0; cycle < cycles; cycle++ {
		acked := make(map[string]uint64)
		for k, v := range stored {
			acked[k] = v
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		shared := client.New(sc.Socket)
		ctx, cancel := context.WithCancel(context.Background())
		var total int64
		for w := 0; w < writers; w++ {
			c := shared
			if connPerWriter {
				c = &client.Client{Socket: sc.Socket, Conns: 1}
			}
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				if c != shared {
					defer c.Close()
				}
				for i := 0; ; i++ {
					name := key(w, i%keysPerWriter)
					mu.Lock()
					base := acked[name]
					mu.Unlock()
					next := base + 1
					_, err := c.Put(ctx, "durability", name, counterDoc{N: next, Writer: w}, client.IfVersion(base))
					if err != nil {
						return // the sidecar is gone: this write's fate is unknown
					}
					mu.Lock()
					acked[name] = next
					total++
					mu.Unlock()
				}
			}(w)
		}
		// Let the load run, then kill the process in the middle of it.
		deadline := time.Now().Add(10 * time.Second)
		minWrites := int64(200 + rng.IntN(800))
		for {
			mu.Lock()
			n := total
			mu.Unlock()
			if n >= minWrites || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		sc.Kill()
		wg.Wait()
		cancel()
		shared.Close()
		if total == 0 {
			t.Fatalf("cycle %d: no write was acknowledged", cycle)
		}

		sc.Start()
		c := sc.Client()
		var versions uint64
		for w := 0; w < writers; w++ {
			for k := 0; k < keysPerWriter; k++ {
				name := key(w, k)
				want := acked[name]
				rec, err := c.Get(context.Background(), "durability", name)
				if errors.Is(err, wire.ErrNotFound) {
					if want != 0 {
						t.Fatalf("cycle %d: %s lost: acknowledged version %d, now not found", cycle, name, want)
					}
					continue
				}
				if err != nil {
					t.Fatalf("cycle %d: get %s: %v", cycle, name, err)
				}
				if rec.Version < want {
					t.Fatalf("cycle %d: %s lost a write: acknowledged version %d, stored %d", cycle, name, want, rec.Version)
				}
				var doc counterDoc
				if err := rec.Decode(&doc); err != nil {
					t.Fatal(err)
				}
				if doc.N != rec.Version || doc.Writer != w {
					t.Fatalf("cycle %d: %s version %d holds %+v, want n=%d w=%d", cycle, name, rec.Version, doc, rec.Version, w)
				}
				stored[name] = rec.Version
				versions += rec.Version
			}
		}
		// Keys per writer are written in turn, so at most one write per writer
		// was in flight when the process died.
		var extra uint64
		for name, v := range stored {
			extra += v - acked[name]
		}
		if extra > writers {
			t.Fatalf("cycle %d: %d unacknowledged versions stored, at most %d writes were in flight", cycle, extra, writers)
		}
		st, err := c.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if uint64(st.JournalDepth) != versions {
			t.Fatalf("cycle %d: journal holds %d entries, want one per version: %d", cycle, st.JournalDepth, versions)
		}
		t.Logf("cycle %d: %d writes acknowledged, %d stored unacknowledged", cycle, total, extra)
	}
}

// TestGracefulShutdown checks SIGTERM: in-flight writes finish, the process
// exits 0 and removes its socket, and the writes are there after a restart.
func TestGracefulShutdown(t *testing.T) {
	sc := startSidecar(t)
	c := sc.Client()
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		if _, err := c.Put(ctx, "shutdown", fmt.Sprintf("s%d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	if err := sc.Signal(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, sc.Logs())
	}
	if _, err := osStat(sc.Socket); err == nil {
		t.Fatalf("socket %s still exists after shutdown", sc.Socket)
	}
	sc.Start()
	c2 := sc.Client()
	for i := 0; i < 50; i++ {
		rec, err := c2.Get(ctx, "shutdown", fmt.Sprintf("s%d", i))
		if err != nil {
			t.Fatal(err)
		}
		var got int
		if err := rec.Decode(&got); err != nil || got != i {
			t.Fatalf("s%d = %d (%v), want %d", i, got, err, i)
		}
	}
}
