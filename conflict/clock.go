package conflict

import (
	"fmt"
	"sync"
	"time"
)

// Limit bounds the clock values accepted from elsewhere: Lamport and HLC
// values and vector entries at or above it are refused (ErrInvalidClock). It
// leaves 2^62 ticks of room, so an accepted value can never make a clock
// wrap, and every value fits the signed 64-bit integers the remote stores.
// An HLC reaches it in the year 4200.
const Limit = 1 << 62

// HLCLogicalBits is how many low bits of an HLC value count events within
// one millisecond.
const HLCLogicalBits = 16

// MakeHLC returns the HLC value of wall time t (millisecond precision) with
// logical counter c (its low HLCLogicalBits bits).
func MakeHLC(t time.Time, c uint16) uint64 { return physical(t) | uint64(c) }

// HLCTime returns the wall time (millisecond precision) of an HLC value.
func HLCTime(h uint64) time.Time { return time.UnixMilli(int64(h >> HLCLogicalBits)) }

// HLCSkew returns how far h is ahead of the wall clock (negative: behind).
// A large positive skew on an observed value means the node that issued it
// has a clock running fast; its values still order correctly.
func HLCSkew(h uint64, wall time.Time) time.Duration {
	return time.Duration(int64(h>>HLCLogicalBits)-wall.UnixMilli()) * time.Millisecond
}

// physical returns wall's Unix milliseconds in the high bits: 0 before
// 1970, and 0 (the wall clock is ignored) when it would reach Limit.
func physical(wall time.Time) uint64 {
	ms := wall.UnixMilli()
	if ms <= 0 || ms >= Limit>>HLCLogicalBits {
		return 0
	}
	return uint64(ms) << HLCLogicalBits
}

// NextHLC returns the HLC value to issue for a local event after last, at
// wall time: the wall time when it has moved past last, otherwise last+1
// (the logical counter; its overflow carries into the millisecond part,
// which stays close to real time). It is always greater than last.
func NextHLC(last uint64, wall time.Time) uint64 {
	return max(last+1, physical(wall))
}

// ObserveHLC returns the HLC value of receiving remote after last, at wall
// time: the standard algorithm's receive event, greater than both last and
// remote. A remote value at or above Limit is refused with ErrInvalidClock
// (and last returned).
func ObserveHLC(last, remote uint64, wall time.Time) (uint64, error) {
	if remote >= Limit {
		return last, fmt.Errorf("%w: hybrid logical clock %d, at least %d", ErrInvalidClock, remote, uint64(Limit))
	}
	return max(last+1, remote+1, physical(wall)), nil
}

// HLC is a hybrid logical clock: values are Unix milliseconds << 16 | a
// logical counter. Every value it issues is greater than every value it
// issued or observed before, so it never goes backwards even when the wall
// clock does, and stays close to the wall time of the fastest clock seen.
// It is safe for concurrent use.
type HLC struct {
	mu   sync.Mutex
	last uint64
}

// NewHLC returns a clock that continues from last (a persisted value, or 0).
func NewHLC(last uint64) *HLC { return &HLC{last: last} }

// Now issues a value for a local event at wall time.
func (c *HLC) Now(wall time.Time) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = NextHLC(c.last, wall)
	return c.last
}

// Observe records the receipt of remote (another node's value) at wall time
// and returns the value of the receipt, greater than remote and than every
// earlier value. A remote value at or above Limit is refused with
// ErrInvalidClock and leaves the clock as it was.
func (c *HLC) Observe(remote uint64, wall time.Time) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := ObserveHLC(c.last, remote, wall)
	if err != nil {
		return c.last, err
	}
	c.last = v
	return v, nil
}

// Last returns the last value issued or observed (the value to persist).
func (c *HLC) Last() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Lamport is a Lamport clock: every value it issues is greater than every
// value it issued or observed before. It is safe for concurrent use.
type Lamport struct {
	mu   sync.Mutex
	last uint64
}

// NewLamport returns a clock that continues from last (a persisted value,
// or 0).
func NewLamport(last uint64) *Lamport { return &Lamport{last: last} }

// Tick issues the value of a local event.
func (c *Lamport) Tick() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last++
	return c.last
}

// Observe records the receipt of remote (another node's value) and returns
// the value of the receipt: max(last, remote)+1. A remote value at or above
// Limit is refused with ErrInvalidClock and leaves the clock as it was.
func (c *Lamport) Observe(remote uint64) (uint64, error) {
	if remote >= Limit {
		return c.Last(), fmt.Errorf("%w: Lamport time %d, at least %d", ErrInvalidClock, remote, uint64(Limit))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = max(c.last, remote) + 1
	return c.last, nil
}

// Last returns the last value issued or observed (the value to persist).
func (c *Lamport) Last() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Clock is the set of clocks a change carries: its Lamport time and HLC
// (per event) and the state's vector clock after it.
type Clock struct {
	Lamport uint64
	HLC     uint64
	Vector  Vector
}

// Clone returns c with its own copy of Vector.
func (c Clock) Clone() Clock {
	c.Vector = c.Vector.Clone()
	return c
}

// Validate checks clocks received from another process (see Limit).
func (c Clock) Validate() error {
	if c.Lamport >= Limit {
		return fmt.Errorf("%w: Lamport time %d, at least %d", ErrInvalidClock, c.Lamport, uint64(Limit))
	}
	if c.HLC >= Limit {
		return fmt.Errorf("%w: hybrid logical clock %d, at least %d", ErrInvalidClock, c.HLC, uint64(Limit))
	}
	return c.Vector.Validate()
}
