package localcache

import (
	"strings"
	"sync"
	"testing"
)

func TestCacheBudget(t *testing.T) {
	c := newCache(64 << 10)
	value := []byte(strings.Repeat("v", 200))
	for i := range 5000 {
		k := key("g", "k"+itoa(i))
		c.set(k, &Record{Key: k, Value: value, Version: 1})
		if i%3 == 0 { // keep some entries referenced
			c.get(key("g", "k"+itoa(i/2)))
		}
	}
	for i := range c.shards {
		sh := &c.shards[i]
		if b := sh.bytes.Load(); b > c.budget {
			t.Fatalf("shard %d holds %d bytes, budget %d", i, b, c.budget)
		}
		for _, e := range sh.m {
			if sh.ring[e.pos] != e {
				t.Fatalf("ring and map disagree about %s", e.key)
			}
		}
		if len(sh.m) != len(sh.ring) {
			t.Fatalf("shard %d: %d map entries, %d in ring", i, len(sh.m), len(sh.ring))
		}
	}
	_, _, total := c.stats()
	if total > 64<<10 || total < 32<<10 {
		t.Fatalf("cache holds %d bytes, budget %d", total, 64<<10)
	}
	// The last entry written is always there.
	if c.get(key("g", "k4999")) == nil {
		t.Fatal("newest entry evicted")
	}
}

func TestCacheOversized(t *testing.T) {
	c := newCache(16 << 10)
	k := key("g", "big")
	c.set(k, &Record{Key: k, Value: []byte("small"), Version: 1})
	c.set(k, &Record{Key: k, Value: make([]byte, 8<<10), Version: 2})
	if r := c.peek(k); r != nil {
		t.Fatalf("oversized record cached (or stale v%d kept)", r.Version)
	}
}

func TestCacheFillRules(t *testing.T) {
	c := newCache(1 << 20)
	k := key("g", "k")
	rec := func(v uint64) *Record { return &Record{Key: k, Value: []byte("x"), Version: v} }

	ep := c.epoch(k)
	c.fill(k, rec(1), ep)
	if r := c.peek(k); r == nil || r.Version != 1 {
		t.Fatalf("fill with current epoch: %v", r)
	}

	ep = c.epoch(k)
	c.set(k, rec(3)) // a commit lands between the read and the fill
	c.fill(k, rec(2), ep)
	if r := c.peek(k); r.Version != 3 {
		t.Fatalf("stale fill replaced v3 with v%d", r.Version)
	}

	c.fill(k, rec(2), c.epoch(k)) // current epoch but older than cached
	if r := c.peek(k); r.Version != 3 {
		t.Fatalf("fill downgraded v3 to v%d", r.Version)
	}

	c.invalidate(k)
	if c.peek(k) != nil {
		t.Fatal("invalidate left the entry")
	}

	var none *cache // a disabled cache
	none.set(k, rec(1))
	if none.get(k) != nil || none.peek(k) != nil {
		t.Fatal("nil cache returned a record")
	}
}

// TestCacheConcurrent reads, writes and drops entries from many goroutines
// at once with a budget small enough to evict all the time (run with
// -race): a writer sees its own write or nothing, a reader never gets
// another key's record, and the shards' maps, rings and byte counts agree
// at the end.
func TestCacheConcurrent(t *testing.T) {
	c := newCache(64 << 10)
	const writers, readers, perWriter, versions = 4, 4, 50, 200
	value := []byte(strings.Repeat("v", 256))
	keyOf := func(w, i int) Key { return key("g", "w"+itoa(w)+"-"+itoa(i)) }
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for v := uint64(1); v <= versions; v++ {
				for i := range perWriter {
					k := keyOf(w, i)
					c.set(k, &Record{Key: k, Version: v, Value: value})
					if got := c.get(k); got != nil && got.Version != v {
						t.Errorf("%s: wrote v%d, read v%d", k, v, got.Version)
						return
					}
				}
			}
		})
	}
	var readerWG sync.WaitGroup
	for r := range readers {
		readerWG.Go(func() {
			for n := r; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := keyOf(n%writers, n%perWriter)
				if rec := c.get(k); rec != nil && rec.Key != k {
					t.Errorf("get %s returned %s", k, rec.Key)
					return
				}
				if n%97 == 0 {
					c.invalidate(k)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readerWG.Wait()
	for i := range c.shards {
		sh := &c.shards[i]
		if len(sh.m) != len(sh.ring) {
			t.Fatalf("shard %d: %d map entries, %d in ring", i, len(sh.m), len(sh.ring))
		}
		var bytes int64
		for _, e := range sh.ring {
			if sh.m[e.key] != e {
				t.Fatalf("shard %d: ring and map disagree about %s", i, e.key)
			}
			bytes += e.size
		}
		if bytes != sh.bytes.Load() || bytes > c.budget {
			t.Fatalf("shard %d: entries of %d bytes, counted %d, budget %d", i, bytes, sh.bytes.Load(), c.budget)
		}
	}
}
