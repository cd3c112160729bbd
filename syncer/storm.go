package syncer

import (
	"context"
	"maps"
	"time"
)

// Conflict storms: many true conflicts on one state in a short time (two
// nodes fighting over it). Each is counted and logged once, when it starts.

// Storm defaults (Options.StormThreshold, Options.StormWindow).
const (
	DefaultStormThreshold = 10
	DefaultStormWindow    = time.Minute
)

// stormSweep is how many states the detector tracks before it forgets
// those whose last conflict is older than the window.
const stormSweep = 1024

// storms detects conflict storms per state. Guarded by Syncer.mu.
type storms struct {
	keys map[Key]*stormKey
}

// stormKey is one state's recent conflicts: the times of the last
// threshold+1 of them, oldest first, and whether a storm is on.
type stormKey struct {
	times []time.Time
	on    bool
}

// note records a conflict of key at now and reports whether it starts a
// storm, and how many conflicts the window holds.
func (st *storms) note(key Key, now time.Time, threshold int, window time.Duration) (started bool, n int) {
	if st.keys == nil {
		st.keys = make(map[Key]*stormKey)
	}
	if len(st.keys) >= stormSweep {
		maps.DeleteFunc(st.keys, func(_ Key, k *stormKey) bool {
			return now.Sub(k.times[len(k.times)-1]) > window
		})
	}
	k := st.keys[key]
	if k == nil {
		k = &stormKey{}
		st.keys[key] = k
	}
	i := 0
	for i < len(k.times) && now.Sub(k.times[i]) > window {
		i++
	}
	k.times = append(k.times[i:], now)
	if len(k.times) > threshold+1 {
		k.times = k.times[len(k.times)-threshold-1:]
	}
	switch {
	case len(k.times) > threshold && !k.on:
		k.on = true
		return true, len(k.times)
	case len(k.times) <= threshold:
		k.on = false
	}
	return false, len(k.times)
}

// noteConflict counts a true conflict of key decided by resolver and
// detects storms.
func (s *Syncer) noteConflict(key Key, resolver string) {
	now := time.Now()
	s.mu.Lock()
	if s.stats.ConflictsByResolver == nil {
		s.stats.ConflictsByResolver = make(map[string]uint64)
	}
	s.stats.ConflictsByResolver[resolver]++
	started, n := s.storms.note(key, now, s.opts.StormThreshold, s.opts.StormWindow)
	if started {
		s.stats.ConflictStorms++
	}
	s.mu.Unlock()
	if started {
		s.log.Warn("conflict storm: one state keeps conflicting (logged once per storm)", "key", key.String(),
			"conflicts", n, "window", s.opts.StormWindow, "threshold", s.opts.StormThreshold)
	}
}

// logConflicts writes the records (nil ones skipped) to the remote's
// ledger.
func (s *Syncer) logConflicts(ctx context.Context, records []*ConflictRecord) error {
	var recs []ConflictRecord
	for _, r := range records {
		if r != nil {
			recs = append(recs, *r)
		}
	}
	if len(recs) == 0 {
		return nil
	}
	cctx, cancel := s.remoteCall(ctx)
	defer cancel()
	return s.remote.LogConflicts(cctx, recs)
}

// remoteCall counts one call to the remote besides Commit (its ledger,
// its events) and bounds it by CommitTimeout.
func (s *Syncer) remoteCall(ctx context.Context) (context.Context, context.CancelFunc) {
	s.mu.Lock()
	s.stats.RemoteCalls++
	s.mu.Unlock()
	return context.WithTimeout(ctx, s.opts.CommitTimeout)
}
