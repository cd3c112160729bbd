package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
)

// Per-governor settings come from the config file's per_governor section:
//
//	per_governor:
//	  "*":    {resolver: causal:version, snapshot_every: 100, snapshot_keep: 5}
//	  orders: {resolver: merge, snapshot_every: 20, history_max_age: 720h}
//
// "*" is the entry of every governor without one; a field an entry leaves
// out is "*"'s. The resolvers are the table --resolvers (TAI_RESOLVERS, the
// file key resolvers) also gives, in another form: --resolvers or
// TAI_RESOLVERS replace the file's per_governor resolvers whole, as a flag
// or variable replaces any file value, and a file may not give both.

// Defaults of the snapshot settings (the store's), and their bounds.
const (
	defaultSnapshotEvery = localcache.DefaultSnapshotEvery
	defaultSnapshotKeep  = localcache.DefaultSnapshotKeep
	maxSnapshotEvery     = 1_000_000
	maxSnapshotKeep      = 10_000
)

// SnapshotConfig says, per governor, after how many events a snapshot of a
// state's event log is taken and how many snapshots are kept.
type SnapshotConfig struct {
	Every, Keep int // governors with no entry of their own ("*")
	// Governors are the governors with an entry; a 0 field is "*"'s.
	Governors map[string]SnapshotPolicy
}

// SnapshotPolicy is a governor's snapshot interval and retention.
type SnapshotPolicy struct{ Every, Keep int }

// For returns governor's snapshot interval (events between snapshots) and
// retention (snapshots kept): localcache.Options.Snapshots. It only reads,
// so it is safe for concurrent use.
func (c *SnapshotConfig) For(governor string) (every, keep int) {
	every, keep = c.Every, c.Keep
	if p, ok := c.Governors[governor]; ok {
		if p.Every > 0 {
			every = p.Every
		}
		if p.Keep > 0 {
			keep = p.Keep
		}
	}
	return every, keep
}

// Bounds of the history retention settings.
const (
	maxHistoryKeepEvents = 1_000_000_000
	minHistoryMaxAge     = time.Minute
)

// HistoryConfig says, per governor, what history the store's retention
// rounds remove (localcache.Options.Retention): events older than MaxAge,
// beyond the newest KeepEvents of each state, cut at snapshots. 0: no
// bound of that kind; both 0: keep everything (the default).
type HistoryConfig struct {
	Default localcache.Retention // governors with no entry of their own ("*")
	// Governors are the governors with an entry; a field the entry does
	// not give is Default's.
	Governors map[string]HistoryPolicy
}

// HistoryPolicy is a governor's entry: the fields it gives.
type HistoryPolicy struct {
	MaxAge     *time.Duration // nil: not given
	KeepEvents *int
}

// For returns governor's retention. It only reads, so it is safe for
// concurrent use.
func (c *HistoryConfig) For(governor string) localcache.Retention {
	if p, ok := c.Governors[governor]; ok {
		return p.over(c.Default)
	}
	return c.Default
}

// Bounded reports whether some governor's history has a bound: the
// default's, or an entry's.
func (c *HistoryConfig) Bounded() bool {
	if !c.Default.IsZero() {
		return true
	}
	for _, p := range c.Governors {
		if !p.over(c.Default).IsZero() {
			return true
		}
	}
	return false
}

// over returns r with the fields p gives.
func (p HistoryPolicy) over(r localcache.Retention) localcache.Retention {
	if p.MaxAge != nil {
		r.MaxAge = *p.MaxAge
	}
	if p.KeepEvents != nil {
		r.KeepEvents = *p.KeepEvents
	}
	return r
}

// parseHistory reads entry e's history_max_age and history_keep_events.
func parseHistory(f *configFile, name string, e *governorEntry) (HistoryPolicy, error) {
	var p HistoryPolicy
	if v, ok := e.fields[govHistoryMaxAge]; ok {
		d, err := time.ParseDuration(v.text)
		switch {
		case err != nil:
			err = errors.New("not a duration (e.g. 720h)")
		case d != 0 && d < minHistoryMaxAge:
			err = fmt.Errorf("must be 0 (no bound) or at least %v", minHistoryMaxAge)
		}
		if err != nil {
			return p, f.errAt(v.line, "%s.%s.%s %q: %v", perGovernorKey, name, govHistoryMaxAge, v.text, err)
		}
		p.MaxAge = &d
	}
	if v, ok := e.fields[govHistoryKeepEvents]; ok {
		n, err := parseInt(v.text, 0, maxHistoryKeepEvents)
		if err != nil {
			return p, f.errAt(v.line, "%s.%s.%s %q: %v", perGovernorKey, name, govHistoryKeepEvents, v.text, err)
		}
		keep := int(n)
		p.KeepEvents = &keep
	}
	return p, nil
}

// governorSources says where each per-governor value came from, for
// config print.
type governorSources struct {
	file *configFile // nil: none
	// resolvers gave the resolver table unless fromFile is set.
	resolvers *setting
	// fromFile: the table is per_governor's resolvers.
	fromFile bool
}

// resolveGovernors applies the file's per_governor section to c, after
// every setting is parsed; resolvers is the --resolvers setting.
func (c *Config) resolveGovernors(f *configFile, resolvers *setting) (*governorSources, error) {
	c.Snapshots = SnapshotConfig{Every: defaultSnapshotEvery, Keep: defaultSnapshotKeep}
	c.History = HistoryConfig{}
	src := &governorSources{file: f, resolvers: resolvers}
	if f == nil {
		return src, nil
	}
	var table conflict.Config
	var resolverAt *fileValue
	for _, name := range slices.Sorted(maps.Keys(f.governors)) {
		e := f.governors[name]
		var p SnapshotPolicy
		for _, fld := range []struct {
			key string
			hi  int64
			dst *int
		}{{govSnapshotEvery, maxSnapshotEvery, &p.Every}, {govSnapshotKeep, maxSnapshotKeep, &p.Keep}} {
			v, ok := e.fields[fld.key]
			if !ok {
				continue
			}
			n, err := parseInt(v.text, 1, fld.hi)
			if err != nil {
				return nil, f.errAt(v.line, "%s.%s.%s %q: %v", perGovernorKey, name, fld.key, v.text, err)
			}
			*fld.dst = int(n)
		}
		if name == "*" {
			c.Snapshots.Every, c.Snapshots.Keep = orDefault(p.Every, c.Snapshots.Every), orDefault(p.Keep, c.Snapshots.Keep)
		} else if p != (SnapshotPolicy{}) {
			if c.Snapshots.Governors == nil {
				c.Snapshots.Governors = make(map[string]SnapshotPolicy)
			}
			c.Snapshots.Governors[name] = p
		}
		h, err := parseHistory(f, name, e)
		if err != nil {
			return nil, err
		}
		if name == "*" {
			c.History.Default = h.over(c.History.Default)
		} else if h != (HistoryPolicy{}) {
			if c.History.Governors == nil {
				c.History.Governors = make(map[string]HistoryPolicy)
			}
			c.History.Governors[name] = h
		}

		v, ok := e.fields[govResolver]
		if !ok {
			continue
		}
		ch, err := parseChoice(name, v.text)
		if err != nil {
			return nil, f.errAt(v.line, "%s.%s.%s %q: %v", perGovernorKey, name, govResolver, v.text, err)
		}
		if name == "*" {
			table.Default = ch
		} else {
			if table.Governors == nil {
				table.Governors = make(map[string]conflict.Choice)
			}
			table.Governors[name] = ch
		}
		if resolverAt == nil {
			resolverAt = &fileValue{text: name, line: v.line}
		}
	}
	switch {
	case resolverAt == nil || resolvers.src > fromFile:
		// No resolvers in per_governor, or a flag or variable replaces them.
	case resolvers.src == fromFile:
		return nil, fmt.Errorf("%s and %s:%d: %s.%s.%s both set the resolvers: keep one of them",
			resolvers.where, f.path, resolverAt.line, perGovernorKey, resolverAt.text, govResolver)
	default:
		c.Sync.Resolvers, src.fromFile = table, true
	}
	return src, nil
}

// parseChoice reads a per_governor resolver, resolver[:fallback] as in
// --resolvers, and checks its names against the built-in resolvers.
func parseChoice(governor, s string) (conflict.Choice, error) {
	res, fb, hasFallback := strings.Cut(s, ":")
	ch := conflict.Choice{Resolver: strings.TrimSpace(res), Fallback: strings.TrimSpace(fb)}
	if ch.Resolver == "" || hasFallback && ch.Fallback == "" {
		return ch, fmt.Errorf("want resolver[:fallback], e.g. causal:version")
	}
	one := conflict.Config{Default: ch}
	if governor != "*" {
		one = conflict.Config{Governors: map[string]conflict.Choice{governor: ch}}
	}
	reg, err := knownResolvers() // serve_apps.go
	if err != nil {
		return ch, err
	}
	return ch, one.Validate(reg)
}

// orDefault is v, or def when v is 0 (not given).
func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}
