// Package memremote is an in-memory syncer.Remote for tests, with hooks that
// inject faults: calls that fail as if offline, commits whose reply is lost
// after they were applied, delays, and documents that do not decode.
//
// It follows the same rules as every Remote (syncer.CheckBatch and
// syncer.Decide) and passes the conformance suite in syncer/remotetest.
// Its Changes cursor is exact (a commit number and a state name): it returns
// no record committed before since.
package memremote

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tai-state/tai-state/syncer"
)

// Remote is an in-memory syncer.Remote and syncer.Watcher. The zero value is
// not usable; call New. All methods are safe for concurrent use.
type Remote struct {
	mu     sync.Mutex
	limits syncer.Limits
	seq    uint64 // commit counter: the Changes cursor
	states map[syncer.Key]*entry
	events map[syncer.Key][]syncer.Event
	opIDs  map[string]map[string]bool // governor -> event op ids appended
	notify chan struct{}              // closed and replaced when anything changes

	ledger map[string]syncer.ConflictRecord // conflict records by ID

	// faults
	failNext    int
	loseReplies int
	offline     bool
	delay       time.Duration
	hook        func(op string, key syncer.Key) error
	locks       LockTokens // fence checks (fence.go)
	calls       map[string]int
}

type entry struct {
	rec syncer.Record
	seq uint64
	bad error // set: the document does not decode (PutUndecodable); rec holds its key and time
}

// undecodable returns the error that describes e's document, nil when it
// decodes.
func (e *entry) undecodable() *syncer.UndecodableError {
	if e.bad == nil {
		return nil
	}
	return &syncer.UndecodableError{Key: e.rec.Key, Doc: "memremote/" + e.rec.Key.String(), Time: e.rec.RemoteTime, Err: e.bad}
}

// New returns an empty Remote with Firestore's limits.
func New() *Remote {
	return &Remote{
		limits: syncer.FirestoreLimits(),
		states: make(map[syncer.Key]*entry),
		events: make(map[syncer.Key][]syncer.Event),
		opIDs:  make(map[string]map[string]bool),
		ledger: make(map[string]syncer.ConflictRecord),
		notify: make(chan struct{}),
		calls:  make(map[string]int),
	}
}

// SetLimits replaces the limits that Commit enforces.
func (m *Remote) SetLimits(l syncer.Limits) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limits = l
}

// FailNext makes the next n calls (of any method) fail with
// syncer.ErrUnavailable without doing anything.
func (m *Remote) FailNext(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failNext = n
}

// LoseNextReplies makes the next n Commits take effect and then fail with
// syncer.ErrUnavailable, as when the connection drops after the remote
// committed.
func (m *Remote) LoseNextReplies(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loseReplies = n
}

// SetOffline makes every call fail with syncer.ErrUnavailable while offline
// is true, and breaks running Watches.
func (m *Remote) SetOffline(offline bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.offline = offline
	m.wake()
}

// SetDelay makes every call wait d before it runs (or until its ctx is done).
func (m *Remote) SetDelay(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.delay = d
}

// SetHook installs fn, called at the start of every call with the method
// name ("get", "commit", "changes", "events", "watch") and the key (the first
// change's key for commit, the governor only for changes and watch); a
// non-nil error fails the call with it. nil removes the hook.
func (m *Remote) SetHook(fn func(op string, key syncer.Key) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hook = fn
}

// PutUndecodable replaces key's document, as a commit would, with one that
// does not decode (cause says why), as another tool or version might write
// it: Get and Commit of key fail with syncer.ErrUndecodable, and Changes and
// Watch leave it out, until Forget removes it.
func (m *Remote) PutUndecodable(key syncer.Key, cause error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	m.states[key] = &entry{rec: syncer.Record{Key: key, RemoteTime: time.Now()}, seq: m.seq, bad: cause}
	m.wake()
}

// Forget removes key's document, as deleting it by hand in the remote
// would: it is not a tombstone, the remote no longer has the state.
func (m *Remote) Forget(key syncer.Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.states, key)
}

// Calls returns how many times method op was called.
func (m *Remote) Calls(op string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[op]
}

// wake tells watchers that something changed. m.mu must be held.
func (m *Remote) wake() {
	close(m.notify)
	m.notify = make(chan struct{})
}

// enter counts the call, waits the configured delay and applies the faults.
// It returns with m.mu held when err is nil.
func (m *Remote) enter(ctx context.Context, op string, key syncer.Key) error {
	m.mu.Lock()
	m.calls[op]++
	delay := m.delay
	m.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &syncer.Error{Op: op, Key: key, Kind: syncer.ErrUnavailable, Err: ctx.Err()}
		}
	}
	if err := ctx.Err(); err != nil {
		return &syncer.Error{Op: op, Key: key, Kind: syncer.ErrUnavailable, Err: err}
	}
	m.mu.Lock()
	if m.offline {
		m.mu.Unlock()
		return syncer.Errorf(op, key, syncer.ErrUnavailable, "offline (injected)")
	}
	if m.failNext > 0 {
		m.failNext--
		m.mu.Unlock()
		return syncer.Errorf(op, key, syncer.ErrUnavailable, "injected failure")
	}
	if m.hook != nil {
		if err := m.hook(op, key); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	return nil
}

// Get implements syncer.Remote.
func (m *Remote) Get(ctx context.Context, key syncer.Key) (syncer.Record, error) {
	if err := syncer.ValidateKey(key); err != nil {
		return syncer.Record{}, &syncer.Error{Op: "get", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if err := m.enter(ctx, "get", key); err != nil {
		return syncer.Record{}, err
	}
	defer m.mu.Unlock()
	e, ok := m.states[key]
	if !ok {
		return syncer.Record{}, &syncer.Error{Op: "get", Key: key, Kind: syncer.ErrNotFound}
	}
	if bad := e.undecodable(); bad != nil {
		return syncer.Record{}, &syncer.Error{Op: "get", Key: key, Kind: syncer.ErrUndecodable, Err: bad}
	}
	return e.rec.Clone(), nil
}

// Commit implements syncer.Remote.
func (m *Remote) Commit(ctx context.Context, b syncer.Batch) ([]syncer.Result, error) {
	var first syncer.Key
	if len(b.Changes) > 0 {
		first = b.Changes[0].Key
	}
	m.mu.Lock()
	lim := m.limits
	m.mu.Unlock()
	if err := syncer.CheckBatch(b, lim); err != nil {
		return nil, err
	}
	if err := m.enter(ctx, "commit", first); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	for _, c := range b.Changes {
		if e, ok := m.states[c.Key]; ok {
			if bad := e.undecodable(); bad != nil {
				return nil, &syncer.Error{Op: "commit", Key: c.Key, Kind: syncer.ErrUndecodable, Err: bad}
			}
		}
	}
	tokens, err := m.lockTokensLocked(ctx, b)
	if err != nil {
		return nil, syncer.Errorf("commit", first, syncer.ErrUnavailable, "read locks: %w", err)
	}
	results, conflict := syncer.Decide(b, func(k syncer.Key) (syncer.Record, bool) {
		if e, ok := m.states[k]; ok {
			return e.rec.Clone(), true
		}
		return syncer.Record{}, false
	}, func(resource string) uint64 { return tokens[resource] })
	if conflict != nil && b.Atomic {
		return results, conflict
	}
	now := time.Now()
	wrote := false
	for i, c := range b.Changes {
		if !syncer.Writable(b, results, i) {
			continue
		}
		if !wrote {
			m.seq++
			wrote = true
		}
		rec := results[i].Remote.Clone()
		rec.RemoteTime = now
		results[i].Remote = rec.Clone()
		m.states[c.Key] = &entry{rec: rec, seq: m.seq}
		if c.Conflict != nil {
			m.logLocked(*c.Conflict)
		}
		ops := m.opIDs[c.Key.Governor]
		if ops == nil {
			ops = make(map[string]bool)
			m.opIDs[c.Key.Governor] = ops
		}
		for _, ev := range c.Events {
			if ops[ev.OpID] {
				continue
			}
			ops[ev.OpID] = true
			ev = ev.Clone()
			ev.Key = c.Key
			evs := append(m.events[c.Key], ev)
			slices.SortStableFunc(evs, func(a, b syncer.Event) int { return cmpU64(a.ToVersion, b.ToVersion) })
			m.events[c.Key] = evs
		}
	}
	if wrote {
		m.wake()
	}
	if m.loseReplies > 0 {
		m.loseReplies--
		return nil, syncer.Errorf("commit", first, syncer.ErrUnavailable, "reply lost (injected)")
	}
	return results, conflict
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Changes implements syncer.Remote. The cursor is the commit counter.
func (m *Remote) Changes(ctx context.Context, governor string, since syncer.Cursor, limit int) ([]syncer.Record, syncer.Cursor, error) {
	from, err := parseCursor(since)
	if err == nil {
		err = syncer.ValidateName("governor", governor)
	}
	if err != nil {
		return nil, since, &syncer.Error{Op: "changes", Key: syncer.Key{Governor: governor}, Kind: syncer.ErrPermanent, Err: err}
	}
	if err := m.enter(ctx, "changes", syncer.Key{Governor: governor}); err != nil {
		return nil, since, err
	}
	defer m.mu.Unlock()
	recs, skipped, next := m.changesLocked(governor, from, limit, syncer.PageBytes)
	if skipped != nil {
		return recs, next, &syncer.SkippedError{Op: "changes", Governor: governor, Docs: skipped}
	}
	return recs, next, nil
}

// changesLocked returns the records of governor after from, at most limit
// documents and none after the record that takes them over maxBytes (0: no
// bound), those that do not decode apart.
func (m *Remote) changesLocked(governor string, from position, limit, maxBytes int) ([]syncer.Record, []*syncer.UndecodableError, syncer.Cursor) {
	if limit <= 0 {
		limit = 1000
	}
	var found []*entry
	for k, e := range m.states {
		if k.Governor == governor && from.before(e) {
			found = append(found, e)
		}
	}
	slices.SortFunc(found, func(a, b *entry) int {
		if c := cmpU64(a.seq, b.seq); c != 0 {
			return c
		}
		return strings.Compare(a.rec.State, b.rec.State)
	})
	if len(found) > limit {
		found = found[:limit]
	}
	if len(found) == 0 {
		return nil, nil, from.cursor()
	}
	recs := make([]syncer.Record, 0, len(found))
	var skipped []*syncer.UndecodableError
	var last *entry
	for i, size := 0, 0; i < len(found) && (maxBytes <= 0 || size <= maxBytes); i++ {
		last = found[i]
		if bad := last.undecodable(); bad != nil {
			skipped = append(skipped, bad)
			continue
		}
		recs = append(recs, last.rec.Clone())
		size += syncer.RecordSize(last.rec)
	}
	return recs, skipped, position{last.seq, last.rec.State}.cursor()
}

// position is a place in the stream of changes: after commit seq's record of
// state (records of one commit are ordered by state name).
type position struct {
	seq   uint64
	state string
}

func (p position) before(e *entry) bool {
	return e.seq > p.seq || (e.seq == p.seq && e.rec.State > p.state)
}

func parseCursor(c syncer.Cursor) (position, error) {
	if c == "" {
		return position{}, nil
	}
	n, state, ok := strings.Cut(string(c), ":")
	seq, err := strconv.ParseUint(n, 10, 64)
	if !ok || err != nil {
		return position{}, fmt.Errorf("bad cursor %q", c)
	}
	return position{seq, state}, nil
}

func (p position) cursor() syncer.Cursor {
	if p == (position{}) {
		return ""
	}
	return syncer.Cursor(strconv.FormatUint(p.seq, 10) + ":" + p.state)
}

// Events implements syncer.Remote.
func (m *Remote) Events(ctx context.Context, key syncer.Key, afterVersion uint64, limit int) ([]syncer.Event, error) {
	if err := syncer.ValidateKey(key); err != nil {
		return nil, &syncer.Error{Op: "events", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if err := m.enter(ctx, "events", key); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if limit <= 0 {
		limit = 1000
	}
	var out []syncer.Event
	size := 0
	for _, e := range m.events[key] {
		if e.ToVersion > afterVersion {
			out = append(out, e.Clone())
			size += syncer.EventSize(e)
			if len(out) == limit || size > syncer.PageBytes {
				break
			}
		}
	}
	return out, nil
}

// Limits implements syncer.Remote.
func (m *Remote) Limits() syncer.Limits {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.limits
}

// Watch implements syncer.Watcher.
func (m *Remote) Watch(ctx context.Context, governor string, since syncer.Cursor, fn func([]syncer.Record, syncer.Cursor, []*syncer.UndecodableError) error) error {
	from, err := parseCursor(since)
	if err == nil {
		err = syncer.ValidateName("governor", governor)
	}
	key := syncer.Key{Governor: governor}
	if err != nil {
		return &syncer.Error{Op: "watch", Key: key, Kind: syncer.ErrPermanent, Err: err}
	}
	if err := m.enter(ctx, "watch", key); err != nil {
		return err
	}
	cursor := from.cursor()
	first := true
	for {
		// m.mu is held here.
		if m.offline {
			m.mu.Unlock()
			return syncer.Errorf("watch", key, syncer.ErrUnavailable, "offline (injected)")
		}
		recs, skipped, next := m.changesLocked(governor, from, 0, 0)
		wait := m.notify
		m.mu.Unlock()
		n := len(recs) + len(skipped)
		if n > 0 || first {
			first = false
			if n > 0 {
				cursor = next
				from, _ = parseCursor(next)
			}
			if err := fn(recs, cursor, skipped); err != nil {
				return err
			}
		}
		if n < 1000 { // a full page: more may be waiting
			select {
			case <-ctx.Done():
				return &syncer.Error{Op: "watch", Key: key, Kind: syncer.ErrUnavailable, Err: ctx.Err()}
			case <-wait:
			}
		}
		m.mu.Lock()
	}
}

var (
	_ syncer.Remote  = (*Remote)(nil)
	_ syncer.Watcher = (*Remote)(nil)
)
