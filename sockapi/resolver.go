package sockapi

import (
	"errors"
	"sync"
	"time"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// App-delegated conflict resolution (docs/protocol.md, "Conflict resolution
// by an app"; docs/decisions/0020-app-resolver.md): resolver_register makes
// the connection the app that decides the conflicts of a governor
// (Options.Apps, one app per governor per sidecar), each conflict arrives
// in a push frame carrying the id of the resolver_register, and resolve
// answers it. A goroutine per registration turns conflicts into push
// frames, as runWatch does for changes. The registrations end with the
// connection, whose conflicts then go to the fallback resolver at once.

// maxRegistrations caps the governors one connection decides for.
const maxRegistrations = 64

// connResolvers are a connection's registrations, by governor.
type connResolvers struct {
	mu    sync.Mutex
	byGov map[string]*registration
	wg    sync.WaitGroup
}

// registration is one resolver_register of a connection.
type registration struct {
	id   uint64 // the resolver_register request's id: the id of its push frames
	sess *conflict.AppSession
	done chan struct{} // closed when its goroutine has exited
}

// resolverState returns the connection's registrations, made on first
// use. Only the reader calls it.
func (c *conn) resolverState() *connResolvers {
	if c.resolvers == nil {
		c.resolvers = &connResolvers{byGov: make(map[string]*registration)}
	}
	return c.resolvers
}

// resolving reports whether the connection decides conflicts for some
// governor: such a connection is not idle (see idleButLocking).
func (c *conn) resolving() bool {
	r := c.resolvers
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byGov) > 0
}

// opResolverRegister registers the connection to decide the conflicts of
// req.Governor within req.DeadlineMS (0: conflict.DefaultAppDeadline).
// The connection needs the write right on the governor (authorize) and the
// read right (conflicts carry both sides' values).
func (c *conn) opResolverRegister(req *wire.Request) {
	hub := c.s.opts.Apps
	if hub == nil {
		e := wire.Errorf(wire.CodeUnavailable,
			"conflicts need the shared store, and none is configured: this sidecar is local only (tai-sidecar serve --firestore-project)")
		e.Retryable = false
		c.replyError(req.ID, e)
		return
	}
	e := checkName("governor", "governor", req.Governor)
	if e == nil && c.s.opts.Access.restrictsOps() && !c.s.opts.Access.Allows(c.peer, PermRead, req.Governor) {
		e = wire.Errorf(wire.CodePermissionDenied, "uid %d may not read governor %s: an app that decides its conflicts sees their values",
			c.peer.UID, req.Governor)
		e.Governor, e.Field = req.Governor, "governor"
	}
	deadline := time.Duration(req.DeadlineMS) * time.Millisecond
	if e == nil && req.DeadlineMS != 0 && (req.DeadlineMS > uint64(conflict.MaxAppDeadline.Milliseconds()) ||
		deadline < conflict.MinAppDeadline) {
		e = invalid("deadline_ms", "deadline_ms %d is not within [%d, %d]", req.DeadlineMS,
			conflict.MinAppDeadline.Milliseconds(), conflict.MaxAppDeadline.Milliseconds())
	}
	r := c.resolverState()
	if e == nil {
		r.mu.Lock()
		switch n := len(r.byGov); {
		case r.byGov[req.Governor] != nil:
			e = invalid("governor", "this connection already decides the conflicts of governor %s", req.Governor)
		case n >= maxRegistrations:
			e = tooLarge("governor", maxRegistrations, "this connection decides the conflicts of %d governors, the limit", n)
		}
		r.mu.Unlock()
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	sess, err := hub.Attach(req.Governor, deadline)
	if err != nil {
		c.replyError(req.ID, attachError(req.Governor, err))
		return
	}
	reg := &registration{id: req.ID, sess: sess, done: make(chan struct{})}
	r.mu.Lock()
	r.byGov[req.Governor] = reg
	r.wg.Add(1)
	r.mu.Unlock()
	// The reply goes out before any push of this registration.
	c.resp = wire.Response{ID: req.ID, Resolver: &wire.Resolver{Governor: req.Governor,
		DeadlineMS: uint64(sess.Deadline().Milliseconds())}}
	c.out.put(&c.resp, "")
	c.resp = wire.Response{}
	c.log.Debug("resolver registered", "governor", req.Governor, "deadline", sess.Deadline())
	go c.runRegistration(r, reg)
}

// attachError translates an error of conflict.AppHub.Attach.
func attachError(governor string, err error) *wire.Error {
	var e *wire.Error
	switch {
	case errors.Is(err, conflict.ErrAppRegistered):
		e = wire.Errorf(wire.CodeLockHeld, "another connection decides the conflicts of governor %s (one app per governor "+
			"on a sidecar): retry once it has gone", governor)
	case errors.Is(err, conflict.ErrNotDelegated):
		e = invalid("governor", "the conflicts of governor %s are not delegated to an app: configure the sidecar with "+
			"--resolvers %s=app[:fallback]", governor, governor)
	default:
		e = invalid("governor", "%v", err)
	}
	e.Governor = governor
	return e
}

// opResolverUnregister ends the connection's registration for
// req.Governor: its waiting conflicts go to the fallback at once, and no
// push frame of it follows the reply. Ending a registration that does not
// exist succeeds.
func (c *conn) opResolverUnregister(req *wire.Request) {
	if e := checkName("governor", "governor", req.Governor); e != nil {
		c.replyError(req.ID, e)
		return
	}
	if r := c.resolvers; r != nil {
		r.mu.Lock()
		reg := r.byGov[req.Governor]
		delete(r.byGov, req.Governor)
		r.mu.Unlock()
		if reg != nil {
			reg.sess.Close()
			<-reg.done
		}
	}
	c.resp = wire.Response{ID: req.ID}
	c.out.put(&c.resp, "")
}

// opResolve answers a conflict pushed to this connection.
func (c *conn) opResolve(req *wire.Request) {
	a, e := c.parseAnswer(req)
	var reg *registration
	if e == nil {
		if reg = c.registrationOf(req.ConflictID); reg == nil {
			e = wire.Errorf(wire.CodeNotFound, "no conflict %d was handed to this connection", req.ConflictID)
			e.Field = "conflict_id"
		}
	}
	if e == nil {
		if g := reg.sess.Governor(); c.s.opts.Access.restrictsOps() && !c.s.opts.Access.Allows(c.peer, PermWrite, g) {
			e = wire.Errorf(wire.CodePermissionDenied, "uid %d may not write governor %s", c.peer.UID, g)
			e.Governor = g
		}
	}
	if e == nil {
		if err := reg.sess.Answer(req.ConflictID, a); err != nil {
			e = answerError(req.ConflictID, reg.sess, err)
		}
	}
	if e != nil {
		c.replyError(req.ID, e)
		return
	}
	c.resp = wire.Response{ID: req.ID}
	c.out.put(&c.resp, "")
}

// parseAnswer checks a resolve request's fields.
func (c *conn) parseAnswer(req *wire.Request) (conflict.AppAnswer, *wire.Error) {
	var a conflict.AppAnswer
	if req.ConflictID == 0 {
		return a, invalid("conflict_id", "conflict_id (the id of the conflict answered) is required")
	}
	switch req.Choice {
	case wire.ChoiceLocal:
		a.Choice = conflict.ChooseLocal
	case wire.ChoiceRemote:
		a.Choice = conflict.ChooseRemote
	case wire.ChoiceValue:
		a.Choice = conflict.ChooseValue
	case wire.ChoiceFallback:
		a.Choice = conflict.ChooseFallback
	case "":
		return a, invalid("choice", "choice is required: local, remote, value or fallback")
	default:
		return a, invalid("choice", "unknown choice %q: local, remote, value or fallback", clip(req.Choice))
	}
	switch {
	case req.Deleted:
		return a, invalid("deleted", "a resolution cannot be a deletion: choose the side that deletes (local or remote)")
	case a.Choice == conflict.ChooseValue && len(req.Value) == 0:
		return a, invalid("value", "choice value needs a value (msgpack nil is no value)")
	case a.Choice != conflict.ChooseValue && len(req.Value) > 0:
		return a, invalid("value", "a value comes only with choice value")
	case len(req.Value) > c.s.opts.MaxValue:
		return a, tooLarge("value", c.s.opts.MaxValue, "value is %d bytes, limit %d", len(req.Value), c.s.opts.MaxValue)
	}
	if e := checkMeta("reason", req.Reason); e != nil {
		return a, e
	}
	a.Value, a.Reason = req.Value, req.Reason
	return a, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > maxOpEcho {
		return s[:maxOpEcho] + "..."
	}
	return s
}

// registrationOf returns the registration conflict id was handed to.
func (c *conn) registrationOf(id uint64) *registration {
	r := c.resolvers
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, reg := range r.byGov {
		if reg.sess.Has(id) {
			return reg
		}
	}
	return nil
}

// answerError translates an error of conflict.AppSession.Answer.
func answerError(id uint64, sess *conflict.AppSession, err error) *wire.Error {
	var e *wire.Error
	switch {
	case errors.Is(err, conflict.ErrLate):
		e = wire.Errorf(wire.CodeTimeout, "conflict %d: the answer came after its deadline (%v): the fallback resolver decided it",
			id, sess.Deadline())
		e.Retryable = false
	case errors.Is(err, conflict.ErrAnswered):
		e = invalid("conflict_id", "conflict %d was answered already", id)
	case errors.Is(err, conflict.ErrInvalidDecision):
		e = invalid("choice", "%v", err)
	default: // unknown, or the registration ended meanwhile
		e = wire.Errorf(wire.CodeNotFound, "no conflict %d waits for this connection's answer", id)
		e.Field = "conflict_id"
	}
	e.Governor = sess.Governor()
	return e
}

// closeResolvers ends the connection's registrations (it is closing) and
// waits for their goroutines.
func (c *conn) closeResolvers() {
	r := c.resolvers
	if r == nil {
		return
	}
	r.mu.Lock()
	for g, reg := range r.byGov {
		reg.sess.Close()
		delete(r.byGov, g)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// runRegistration turns reg's conflicts into push frames until its session
// ends. A conflict whose deadline has passed is skipped; one too large for
// a frame is declined, so the fallback decides it at once.
func (c *conn) runRegistration(r *connResolvers, reg *registration) {
	defer r.wg.Done()
	defer close(reg.done)
	defer func() {
		if v := recover(); v != nil {
			reg.sess.Close()
			c.recovered(v)
			c.stopReading()
			go c.nc.Close() // see endOnPanic
		}
	}()
	ch := reg.sess.Conflicts()
	for {
		var ac *conflict.AppConflict
		select {
		case <-reg.sess.Done():
			return
		case ac = <-ch:
		}
		left := time.Until(ac.Deadline)
		if left <= 0 {
			continue
		}
		k := ac.Conflict
		size := len(k.Local.Value) + len(k.Remote.Value) + 2*len(k.Key.Governor) + 2*len(k.Key.State)
		if k.Base != nil {
			size += len(k.Base.Value)
		}
		if size > c.s.opts.MaxFrame-frameReserve {
			_ = reg.sess.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseFallback,
				Reason: "the conflict's values do not fit in one frame of this sidecar"})
			continue
		}
		c.out.putPush(&wire.Response{ID: reg.id, Push: true, Conflict: wireAppConflict(ac, left)})
		if len(ch) == 0 && !c.out.flush() {
			reg.sess.Close() // the connection is broken
			continue
		}
		if !c.out.waitRoom() {
			reg.sess.Close()
		}
	}
}

// wireAppConflict converts a conflict handed to an app; left is the time
// left to answer it.
func wireAppConflict(ac *conflict.AppConflict, left time.Duration) *wire.AppConflict {
	k := &ac.Conflict
	w := &wire.AppConflict{
		ID:         ac.ID,
		Governor:   k.Key.Governor,
		State:      k.Key.State,
		DeadlineMS: uint64(max(left.Milliseconds(), 1)),
		Local:      wireSide(k.Local),
		Remote:     wireSide(k.Remote),
	}
	if b := k.Base; b != nil {
		w.Base = &wire.ConflictBase{Value: wire.Raw(b.Value), Version: b.Version, Deleted: b.Deleted}
	}
	return w
}
