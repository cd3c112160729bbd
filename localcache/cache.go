package localcache

import (
	"hash/maphash"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// cache is the hot read cache in front of Badger: a bounded, sharded map
// from Key to the latest committed *Record (tombstones included, so reads of
// a deleted hot key are hits too).
//
// Reads take the shard's lock for reading; mutations (fills after a miss,
// write-through from the committer, evictions) take it for writing. A plain
// map under a read lock costs reads less than a sync.Map's lock-free
// lookup, whose trie walk misses the processor's caches at every level.
//
// Cached records are immutable: the store never modifies a *Record after it
// has been published here, and the committer copies app values before it
// stores them, so readers may share Value and Clock.Vector without copying.
//
// Staleness. A reader that misses reads Badger and then fills the cache. If a
// commit lands between its Badger read and its fill, the fill would put an
// old version back over the committer's newer one. To prevent that, every
// shard has a write epoch that the committer bumps (under the shard lock)
// each time it stores a committed record; a reader notes the epoch before it
// reads Badger and fills only if the epoch is unchanged, and only over a
// lower version. The applier updates the cache after the Badger commit;
// until then point reads find the acknowledged record in the store's
// overlay (see Pipeline in commit.go), so a read that starts after an ack
// always sees that version or a later one.
//
// Eviction: CLOCK per shard by byte budget. A hit sets the entry's reference
// bit; the hand clears set bits and evicts the first entry found clear.
type cache struct {
	seed   maphash.Seed
	mask   uint64
	budget int64 // per shard; also the largest cacheable entry
	shards []cacheShard
}

type cacheShard struct {
	m     map[Key]*centry // guarded by mu
	epoch atomic.Uint64
	bytes atomic.Int64 // written under mu, read by Stats

	_      [64]byte // keep the read-path counters off the lock's cache line
	hits   atomic.Uint64
	misses atomic.Uint64
	_      [64]byte

	mu   sync.RWMutex
	ring []*centry
	hand int
}

type centry struct {
	key  Key
	rec  *Record
	size int64
	ref  atomic.Bool
	pos  int // index in ring, guarded by the shard's mu
}

// newCache returns a cache of about budget bytes, or nil when budget <= 0 (a
// nil *cache is valid and caches nothing).
func newCache(budget int64) *cache {
	if budget <= 0 {
		return nil
	}
	n := 16
	if p := 4 * runtime.GOMAXPROCS(0); p > n {
		n = 1 << bits.Len(uint(p-1))
	}
	n = min(n, 256)
	c := &cache{
		seed:   maphash.MakeSeed(),
		mask:   uint64(n - 1),
		budget: max(budget/int64(n), 1),
		shards: make([]cacheShard, n),
	}
	for i := range c.shards {
		c.shards[i].m = make(map[Key]*centry)
	}
	return c
}

func (c *cache) shard(k Key) *cacheShard {
	h := maphash.String(c.seed, k.Governor)
	h ^= maphash.String(c.seed, k.State) * 0x9E3779B97F4A7C15
	return &c.shards[(h^h>>32)&c.mask]
}

// get returns the cached record of k, counting a hit or a miss. The record
// is shared and must not be modified.
func (c *cache) get(k Key) *Record {
	if c == nil {
		return nil
	}
	sh := c.shard(k)
	if e := sh.load(k); e != nil {
		if !e.ref.Load() {
			e.ref.Store(true)
		}
		sh.hits.Add(1)
		return e.rec
	}
	sh.misses.Add(1)
	return nil
}

// peek is get without touching counters or reference bits (the committer's
// lookups are not reads).
func (c *cache) peek(k Key) *Record {
	if c == nil {
		return nil
	}
	if e := c.shard(k).load(k); e != nil {
		return e.rec
	}
	return nil
}

// load returns k's entry, or nil.
func (sh *cacheShard) load(k Key) *centry {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.m[k]
}

// epoch returns the write epoch of k's shard; pass it to fill.
func (c *cache) epoch(k Key) uint64 {
	if c == nil {
		return 0
	}
	return c.shard(k).epoch.Load()
}

// fill caches rec, read from Badger after epoch(k) returned epoch, unless a
// commit has touched k's shard since or a newer version is cached.
func (c *cache) fill(k Key, rec *Record, epoch uint64) {
	if c == nil {
		return
	}
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.epoch.Load() != epoch {
		return
	}
	if e := sh.m[k]; e != nil && e.rec.Version >= rec.Version {
		return
	}
	c.putLocked(sh, k, rec)
}

// set stores a committed record. Only the committer calls it, after the
// Badger commit and before acking.
func (c *cache) set(k Key, rec *Record) {
	if c == nil {
		return
	}
	sh := c.shard(k)
	sh.mu.Lock()
	sh.epoch.Add(1)
	c.putLocked(sh, k, rec)
	sh.mu.Unlock()
}

// invalidate drops k (after a failed commit whose outcome is unknown).
func (c *cache) invalidate(k Key) {
	if c == nil {
		return
	}
	sh := c.shard(k)
	sh.mu.Lock()
	sh.epoch.Add(1)
	if e := sh.m[k]; e != nil {
		sh.removeLocked(e)
	}
	sh.mu.Unlock()
}

func (c *cache) putLocked(sh *cacheShard, k Key, rec *Record) {
	size := recordSize(rec)
	o := sh.m[k]
	if size > c.budget {
		if o != nil {
			sh.removeLocked(o)
		}
		return
	}
	e := &centry{key: k, rec: rec, size: size}
	if o != nil {
		e.pos = o.pos
		e.ref.Store(o.ref.Load())
		sh.ring[e.pos] = e
		sh.bytes.Add(size - o.size)
	} else {
		e.pos = len(sh.ring)
		sh.ring = append(sh.ring, e)
		sh.bytes.Add(size)
	}
	sh.m[k] = e
	for sh.bytes.Load() > c.budget && len(sh.ring) > 1 {
		if sh.hand >= len(sh.ring) {
			sh.hand = 0
		}
		victim := sh.ring[sh.hand]
		if victim == e {
			sh.hand++
			continue
		}
		if victim.ref.Load() {
			victim.ref.Store(false)
			sh.hand++
			continue
		}
		sh.removeLocked(victim) // moves the last entry to hand: look at it next
	}
}

func (sh *cacheShard) removeLocked(e *centry) {
	delete(sh.m, e.key)
	last := len(sh.ring) - 1
	if e.pos != last {
		moved := sh.ring[last]
		moved.pos = e.pos
		sh.ring[e.pos] = moved
	}
	sh.ring[last] = nil
	sh.ring = sh.ring[:last]
	sh.bytes.Add(-e.size)
}

// recordSize estimates the heap a cached record holds: the Record, its
// centry, map slot and ring overhead, the value and strings, and the vector
// clock map (measured on Go 1.26: about 950 bytes for a 256-byte value and
// one vector entry).
func recordSize(r *Record) int64 {
	const (
		overhead  = 400 // Record, centry, map slot, ring slot
		mapHeader = 210 // a small map: header and one group
		perNode   = 48
	)
	n := overhead + len(r.Value) + 2*len(r.Governor) + 2*len(r.State) +
		len(r.Change.Actor) + len(r.Change.Reason) + len(r.Origin) + len(r.OpID)
	if r.Clock.Vector != nil {
		n += mapHeader
		for node := range r.Clock.Vector {
			n += len(node) + perNode
		}
	}
	return int64(n)
}

// stats returns hits, misses and bytes.
func (c *cache) stats() (hits, misses uint64, bytes int64) {
	if c == nil {
		return 0, 0, 0
	}
	for i := range c.shards {
		sh := &c.shards[i]
		hits += sh.hits.Load()
		misses += sh.misses.Load()
		bytes += sh.bytes.Load()
	}
	return hits, misses, bytes
}
