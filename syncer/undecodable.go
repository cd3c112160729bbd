package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// UndecodableKeeper is an optional capability of an Applier (found by type
// assertion): it keeps the remote documents that do not decode, which the
// pull left out or Fetch met (Puller.Undecodable), across restarts. Without
// it the Puller knows them in memory only, and since a governor's stored
// cursor is past the documents its pull left out, a restarted node would
// not know them (the gauge, and which states a read must not take for
// fresh) until each was written again or read. It keeps the count of the
// documents dropped past MaxUndecodable too, so that a restarted node
// still says it met documents it could not remember.
//
// That count never goes down: the documents dropped are not remembered, so
// nothing tells when they are repaired or deleted, and their states stay
// taken for fresh with their governors, the set below the cap again or
// not. It says since when the local store was made, not since a start.
//
// The Puller keeps a document before it stores a cursor past it, and
// forgets one after it stored a later record of the key: a crash in between
// leaves kept a document that is repaired already (its state is not taken
// for fresh until a pull or a read of it clears it), never a cursor past a
// document that is not kept.
//
// Methods must be safe for concurrent use; the Puller makes one call at a
// time. Errors are local failures; a cancelled ctx returns an error wrapping
// ctx.Err().
type UndecodableKeeper interface {
	// KeptUndecodable returns every document kept, in any order. Each one's
	// Err holds the message of the error kept, not the error itself.
	KeptUndecodable(ctx context.Context) ([]*UndecodableError, error)
	// KeepUndecodable keeps docs, each replacing what is kept for its key.
	KeepUndecodable(ctx context.Context, docs []*UndecodableError) error
	// ForgetUndecodable forgets what is kept for keys; a key with nothing
	// kept is no error.
	ForgetUndecodable(ctx context.Context, keys []Key) error
	// DroppedUndecodable returns the count kept of the documents met and
	// not kept because MaxUndecodable states' documents were kept already
	// (PullStats.UndecodableDropped); 0 when none was.
	DroppedUndecodable(ctx context.Context) (uint64, error)
	// AddDroppedUndecodable adds n to that count.
	AddDroppedUndecodable(ctx context.Context, n uint64) error
}

// Undecodable returns the remote document of key that does not decode, when
// the pull left it out of a page or a delivery, or Fetch met it, and has
// seen no later version of key since (nil otherwise): the local copy of key
// is then not what the remote holds, whatever FreshAt says. A later record
// of key pulled or fetched, or a Fetch that finds the document gone, clears
// it. With an UndecodableKeeper the set outlives a restart; it is read back
// before the first pull, so FreshAt never vouches for a governor before it.
func (p *Puller) Undecodable(key Key) *UndecodableError {
	if !p.anyUndecodable.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.undecodable[key]
}

// loadUndecodable reads the set the keeper holds, on the first call.
func (p *Puller) loadUndecodable(ctx context.Context) error {
	p.undecMu.Lock()
	defer p.undecMu.Unlock()
	return p.loadUndecodableLocked(ctx)
}

// loadUndecodableLocked is loadUndecodable with undecMu held. Every change
// of the set loads it first, so none is lost to a later load.
func (p *Puller) loadUndecodableLocked(ctx context.Context) error {
	if p.undecodable != nil {
		return nil
	}
	set := make(map[Key]*UndecodableError)
	if p.keeper != nil {
		docs, err := p.keeper.KeptUndecodable(ctx)
		if err != nil {
			return fmt.Errorf("read the undecodable documents kept: %w", err)
		}
		for _, d := range docs {
			set[d.Key] = d
		}
		dropped, err := p.keeper.DroppedUndecodable(ctx)
		if err != nil {
			return fmt.Errorf("read the count of undecodable documents dropped: %w", err)
		}
		p.mu.Lock()
		p.stats.UndecodableDropped = dropped
		p.mu.Unlock()
		if dropped > 0 {
			p.log.Info("remote documents that did not decode were met and not remembered: their states are taken for fresh",
				"documents", dropped)
		}
		if len(set) > 0 {
			p.log.Warn("remote documents that did not decode when last seen: their states are left out of the pull until repaired",
				"states", len(set))
		}
	}
	p.mu.Lock()
	p.undecodable = set
	p.anyUndecodable.Store(len(set) > 0)
	p.mu.Unlock()
	return nil
}

// noteUndecodable records docs, documents that do not decode, as their
// keys' latest remote documents, and counts them in the stats when skipped
// (left out of a page or a delivery). It keeps them (UndecodableKeeper)
// before it returns: a pull stores a cursor past them only after it. Each
// version of a document is logged once, so a document left out again (a
// poll's overlap, a resync) does not flood the log. When the set holds
// MaxUndecodable states, a document of another state is logged and
// counted, not recorded.
func (p *Puller) noteUndecodable(ctx context.Context, docs []*UndecodableError, skipped bool) error {
	p.undecMu.Lock()
	defer p.undecMu.Unlock()
	if err := p.loadUndecodableLocked(ctx); err != nil {
		return err
	}
	fresh, dropped := p.newUndecodable(docs)
	if p.keeper != nil && len(fresh) > 0 {
		if err := p.keeper.KeepUndecodable(ctx, fresh); err != nil {
			return fmt.Errorf("keep undecodable documents: %w", err)
		}
	}
	if p.keeper != nil && len(dropped) > 0 {
		if err := p.keeper.AddDroppedUndecodable(ctx, uint64(len(dropped))); err != nil {
			return fmt.Errorf("count undecodable documents dropped: %w", err)
		}
	}
	now := time.Now()
	p.mu.Lock()
	for _, d := range fresh {
		p.undecodable[d.Key] = d
	}
	p.anyUndecodable.Store(len(p.undecodable) > 0)
	for _, d := range docs {
		if p.undecodable[d.Key] != nil {
			p.checkedLocked(d.Key, now) // met: there still
		}
	}
	if skipped {
		p.stats.Undecodable += uint64(len(docs))
	}
	p.stats.UndecodableDropped += uint64(len(dropped))
	p.mu.Unlock()
	for _, d := range fresh {
		p.log.Warn("remote document does not decode: the pull leaves it out, reads of its state fail", "key", d.Key.String(),
			"doc", d.Doc, "written", d.Time, "err", d.Err)
	}
	for _, d := range dropped {
		p.log.Warn("remote document does not decode, and is not remembered: too many states' documents do not decode",
			"key", d.Key.String(), "doc", d.Doc, "written", d.Time, "err", d.Err, "remembered", p.opts.MaxUndecodable)
	}
	return nil
}

// newUndecodable splits docs into fresh ones, which the set lacks (new
// documents, new versions), and dropped ones, of states the set has no room
// for; both in the order met. undecMu is held: no one else changes the set,
// so it is read without mu.
func (p *Puller) newUndecodable(docs []*UndecodableError) (fresh, dropped []*UndecodableError) {
	room := p.opts.MaxUndecodable - len(p.undecodable)
	added := make(map[Key]bool) // states fresh adds to the set
	for _, d := range docs {
		prev := p.undecodable[d.Key]
		switch {
		case prev != nil && prev.Doc == d.Doc && prev.Time.Equal(d.Time):
			// Known: met again.
		case prev == nil && !added[d.Key] && room <= 0:
			dropped = append(dropped, d)
		default:
			if prev == nil && !added[d.Key] {
				added[d.Key] = true
				room--
			}
			fresh = append(fresh, d)
		}
	}
	return fresh, dropped
}

// forgetUndecodable forgets the undecodable document of key (it is gone).
func (p *Puller) forgetUndecodable(ctx context.Context, key Key) {
	p.undecMu.Lock()
	defer p.undecMu.Unlock()
	if err := p.loadUndecodableLocked(ctx); err != nil {
		p.log.Warn("undecodable documents: cannot forget one", "key", key.String(), "err", err)
		return
	}
	if p.undecodable[key] != nil {
		p.forgetLocked(ctx, []Key{key})
	}
}

// clearUndecodable forgets the undecodable document of each key that recs
// holds a record of written since (a newer version that decodes).
func (p *Puller) clearUndecodable(ctx context.Context, recs []Record) {
	p.undecMu.Lock()
	defer p.undecMu.Unlock()
	if err := p.loadUndecodableLocked(ctx); err != nil {
		p.log.Warn("undecodable documents: cannot forget the ones repaired", "err", err)
		return
	}
	var keys []Key
	for _, r := range recs {
		if d := p.undecodable[r.Key]; d != nil && !r.RemoteTime.Before(d.Time) {
			keys = append(keys, r.Key)
		}
	}
	if len(keys) > 0 {
		p.forgetLocked(ctx, keys)
	}
}

// forgetLocked removes keys from the set, and from the keeper first: when
// the keeper fails they stay in both, and their states stay taken for not
// fresh until a later pull or read of them clears them again. undecMu is
// held.
func (p *Puller) forgetLocked(ctx context.Context, keys []Key) {
	if p.keeper != nil {
		if err := p.keeper.ForgetUndecodable(ctx, keys); err != nil {
			if ctx.Err() == nil { // not a shutdown
				p.log.Warn("undecodable documents: cannot forget the ones repaired", "states", len(keys), "err", err)
			}
			return
		}
	}
	p.mu.Lock()
	for _, k := range keys {
		delete(p.undecodable, k)
		delete(p.checked, k)
	}
	p.anyUndecodable.Store(len(p.undecodable) > 0)
	p.mu.Unlock()
}

// recheckUndecodable reads again, with Fetch, up to UndecodableRechecks
// states of governor in the set, those checked longest ago first (never
// since the start first), none checked within UndecodableRecheckEvery.
// The pull does not learn that a document was deleted: a query returns no
// deleted document and a watch reports none (Watcher), so without it a
// document deleted by hand would stay in the set until its state was
// written or read again. Fetch forgets a document gone, applies the record
// a document that decodes now holds (which forgets it), and keeps one that
// still does not decode; each counts among the fetches. A failed read ends
// the round, logged: the states wait their turn again. Bounded so, it
// costs a poll a few reads at most, and none while the set is empty.
func (p *Puller) recheckUndecodable(ctx context.Context, governor string) {
	for _, k := range p.dueUndecodable(governor) {
		p.mu.Lock()
		p.checkedLocked(k, time.Now())
		p.mu.Unlock()
		_, _, err := p.Fetch(ctx, k)
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUndecodable) {
			if ctx.Err() == nil {
				p.log.Warn("undecodable documents: cannot read one again", "key", k.String(), "err", err)
			}
			return
		}
	}
}

// dueUndecodable returns the states of governor recheckUndecodable reads,
// in order.
func (p *Puller) dueUndecodable(governor string) []Key {
	type due struct {
		key Key
		at  time.Time
	}
	var ds []due
	horizon := time.Now().Add(-p.opts.UndecodableRecheckEvery)
	p.mu.Lock()
	for k := range p.undecodable {
		if at := p.checked[k]; k.Governor == governor && !at.After(horizon) {
			ds = append(ds, due{k, at})
		}
	}
	p.mu.Unlock()
	slices.SortFunc(ds, func(a, b due) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.key.State, b.key.State)
	})
	ds = ds[:min(len(ds), p.opts.UndecodableRechecks)]
	keys := make([]Key, len(ds))
	for i, d := range ds {
		keys[i] = d.key
	}
	return keys
}

// checkedLocked notes that the document of k was met or read at at. mu is
// held.
func (p *Puller) checkedLocked(k Key, at time.Time) {
	if p.checked == nil {
		p.checked = make(map[Key]time.Time)
	}
	p.checked[k] = at
}

// KeptUndecodable implements UndecodableKeeper.
func (j *MemJournal) KeptUndecodable(ctx context.Context) ([]*UndecodableError, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*UndecodableError
	for _, d := range j.undecodable {
		out = append(out, &d)
	}
	return out, nil
}

// KeepUndecodable implements UndecodableKeeper. It keeps the message of
// each document's Err, as a store on disk does.
func (j *MemJournal) KeepUndecodable(ctx context.Context, docs []*UndecodableError) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.undecodable == nil {
		j.undecodable = make(map[Key]UndecodableError)
	}
	for _, d := range docs {
		kept := *d
		kept.Err = errors.New(d.Err.Error())
		j.undecodable[d.Key] = kept
	}
	return nil
}

// DroppedUndecodable implements UndecodableKeeper.
func (j *MemJournal) DroppedUndecodable(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.undecodableDropped, nil
}

// AddDroppedUndecodable implements UndecodableKeeper.
func (j *MemJournal) AddDroppedUndecodable(ctx context.Context, n uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.undecodableDropped += n
	return nil
}

// ForgetUndecodable implements UndecodableKeeper.
func (j *MemJournal) ForgetUndecodable(ctx context.Context, keys []Key) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, k := range keys {
		delete(j.undecodable, k)
	}
	return nil
}

var _ UndecodableKeeper = (*MemJournal)(nil)
