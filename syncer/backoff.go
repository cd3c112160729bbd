package syncer

import (
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential backoff with full jitter: after the n-th
// consecutive failure (n >= 1) the wait is a random duration in
// [d/2, d], where d = Min * 2^(n-1), capped at Max. The random half keeps
// many sidecars that lost the remote together from retrying in step.
type Backoff struct {
	Min, Max time.Duration
}

// withDefaults fills in the defaults both loops use: 100 ms doubling up to
// 30 s (or Min, when that is larger).
func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 100 * time.Millisecond
	}
	if b.Max < b.Min {
		b.Max = max(30*time.Second, b.Min)
	}
	return b
}

// Delay returns the wait after the n-th consecutive failure (0 for n <= 0).
func (b Backoff) Delay(n int) time.Duration {
	if n <= 0 || b.Min <= 0 {
		return 0
	}
	d := b.Min
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	half := d / 2
	return half + rand.N(d-half+1)
}
