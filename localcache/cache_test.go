package localcache

import (
	"strings"
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
		n := 0
		sh.m.Range(func(_, v any) bool {
			e := v.(*centry)
			if sh.ring[e.pos] != e {
				t.Fatalf("ring and map disagree about %s", e.key)
			}
			n++
			return true
		})
		if n != len(sh.ring) {
			t.Fatalf("shard %d: %d map entries, %d in ring", i, n, len(sh.ring))
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
