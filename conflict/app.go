package conflict

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The app resolver ("app") hands a conflict to an app that registered for
// its governor (over the sidecar's socket) and waits for its answer until a
// deadline. No app registered, no answer in time, an app that goes away
// while the conflict waits, or an app that declines: the resolver's
// fallback decides, and the decision says why. See
// docs/decisions/0020-app-resolver.md.

// NameApp is the name of the app resolver.
const NameApp = "app"

// Bounds of the time an app has to answer a conflict.
const (
	DefaultAppDeadline = 2 * time.Second
	MinAppDeadline     = 10 * time.Millisecond
	MaxAppDeadline     = 10 * time.Second
)

// An app that lets a conflict's deadline pass is bypassed for a while: the
// fallback decides the governor's conflicts at once, without asking it,
// for appBypassFactor deadlines, doubling with each further miss up to
// maxAppBypass; the first conflict after that is asked again, and an answer
// in time ends the bypass. The push loop settles conflicts one at a time,
// so without it an app that is connected but stuck would hold every push
// up by a deadline per conflict.
const (
	appBypassFactor = 10
	maxAppBypass    = 2 * time.Minute
)

// DefaultAppBacklog is how many conflicts may wait for one app's answer at
// once when AppOptions.Backlog is zero; more go to the fallback at once.
const DefaultAppBacklog = 256

// Errors of the app resolver.
var (
	// ErrAppRegistered: another app is registered for the governor.
	ErrAppRegistered = errors.New("an app is already registered for this governor")
	// ErrNotDelegated: the governor's conflicts are not settled by the
	// app resolver, so a registered app would never be asked.
	ErrNotDelegated = errors.New("the governor's conflicts are not delegated to an app")
	// ErrUnknownConflict: no conflict with that id waits for this app.
	ErrUnknownConflict = errors.New("no such conflict waits for this app")
	// ErrLate: the conflict's deadline passed (the fallback decided).
	ErrLate = errors.New("the answer came after the conflict's deadline")
	// ErrAnswered: the conflict was answered already.
	ErrAnswered = errors.New("the conflict was answered already")
	// ErrAppClosed: the session was closed.
	ErrAppClosed = errors.New("the app's registration was closed")
)

// AppOptions configure an AppHub.
type AppOptions struct {
	// Delegated reports whether a governor's conflicts go to the app
	// resolver (as the resolver or the fallback): Attach refuses the
	// others with ErrNotDelegated. Nil: every governor.
	Delegated func(governor string) bool
	// Backlog caps the conflicts waiting for one app (default
	// DefaultAppBacklog).
	Backlog int
}

// AppHub is the set of apps registered to settle conflicts, at most one per
// governor, and the factory of the app resolver that asks them. It is safe
// for concurrent use.
type AppHub struct {
	opts AppOptions

	mu     sync.Mutex
	byGov  map[string]*AppSession
	nextID uint64 // last conflict id issued
}

// NewAppHub returns a hub with no app registered.
func NewAppHub(opts AppOptions) *AppHub {
	if opts.Backlog <= 0 {
		opts.Backlog = DefaultAppBacklog
	}
	return &AppHub{opts: opts, byGov: make(map[string]*AppSession)}
}

// Factory makes the app resolver, handing to fallback what no app decides.
// Register it in a Registry under NameApp.
func (h *AppHub) Factory(fallback Resolver) Resolver {
	return appResolver{hub: h, fallback: orLWW(fallback)}
}

// AppConflict is a conflict handed to an app: its id (unique in the hub),
// the conflict, and the time by which the answer must arrive.
type AppConflict struct {
	ID       uint64
	Conflict Conflict
	Deadline time.Time
}

// AppChoice is an app's answer to a conflict.
type AppChoice uint8

// Choices. The zero value is not one of them.
const (
	ChooseLocal    AppChoice = iota + 1 // the local change wins
	ChooseRemote                        // the remote record wins
	ChooseValue                         // a new value (AppAnswer.Value) replaces both
	ChooseFallback                      // the app declines: the fallback decides
)

func (c AppChoice) String() string {
	switch c {
	case ChooseLocal:
		return "local"
	case ChooseRemote:
		return "remote"
	case ChooseValue:
		return "value"
	case ChooseFallback:
		return "fallback"
	}
	return fmt.Sprintf("choice(%d)", uint8(c))
}

// AppAnswer is how an app settles a conflict. Value is the merged document
// (a live state, never a tombstone) for ChooseValue. Reason, optional, goes
// into the decision's reason.
type AppAnswer struct {
	Choice AppChoice
	Value  []byte
	Reason string
}

// Attach registers an app for governor: conflicts of governor that the app
// resolver meets from now on arrive on the session's Conflicts channel, to
// be answered with Answer within deadline (0: DefaultAppDeadline; otherwise
// within [MinAppDeadline, MaxAppDeadline]). It fails with ErrAppRegistered
// when an app is registered for governor, and with ErrNotDelegated. Close
// ends the registration.
func (h *AppHub) Attach(governor string, deadline time.Duration) (*AppSession, error) {
	if err := checkGovernor(governor); err != nil {
		return nil, err
	}
	if deadline == 0 {
		deadline = DefaultAppDeadline
	}
	if deadline < MinAppDeadline || deadline > MaxAppDeadline {
		return nil, fmt.Errorf("deadline %v is not within [%v, %v]", deadline, MinAppDeadline, MaxAppDeadline)
	}
	if h.opts.Delegated != nil && !h.opts.Delegated(governor) {
		return nil, fmt.Errorf("%w: governor %q", ErrNotDelegated, governor)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byGov[governor] != nil {
		return nil, fmt.Errorf("%w: governor %q", ErrAppRegistered, governor)
	}
	s := &AppSession{
		hub:      h,
		governor: governor,
		deadline: deadline,
		ch:       make(chan *AppConflict, h.opts.Backlog),
		done:     make(chan struct{}),
		pending:  make(map[uint64]*appWait),
		settled:  make(map[uint64]error),
	}
	h.byGov[governor] = s
	return s, nil
}

// Registered reports whether an app is registered for governor.
func (h *AppHub) Registered(governor string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byGov[governor] != nil
}

func (h *AppHub) session(governor string) *AppSession {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byGov[governor]
}

func (h *AppHub) newID() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	return h.nextID
}

// maxSettled bounds how many answered or expired conflict ids a session
// remembers to tell a late or repeated answer from an unknown id.
const maxSettled = 4096

// AppSession is one app's registration for one governor (see
// AppHub.Attach). It is safe for concurrent use.
type AppSession struct {
	hub      *AppHub
	governor string
	deadline time.Duration
	ch       chan *AppConflict
	done     chan struct{}

	mu      sync.Mutex
	closed  bool
	pending map[uint64]*appWait
	settled map[uint64]error // ids answered (ErrAnswered) or expired (ErrLate)
	order   []uint64         // settled ids, oldest first
	// bypass, when not zero, is how long after missedAt the app is not
	// asked (see appBypassFactor).
	bypass   time.Duration
	missedAt time.Time
}

// appWait is a conflict waiting for the app's answer.
type appWait struct {
	answer chan AppAnswer // capacity 1
}

// Governor returns the governor the session decides for.
func (s *AppSession) Governor() string { return s.governor }

// Deadline returns how long the app has to answer a conflict.
func (s *AppSession) Deadline() time.Duration { return s.deadline }

// Conflicts returns the conflicts to answer. Its reader must keep up: a
// conflict that finds Backlog conflicts unread goes to the fallback. A
// conflict read after its Deadline may be skipped. The channel is never
// closed: watch Done.
func (s *AppSession) Conflicts() <-chan *AppConflict { return s.ch }

// Done is closed when the session is closed.
func (s *AppSession) Done() <-chan struct{} { return s.done }

// Has reports whether conflict id was handed to this app: it waits for
// the answer, or was answered or expired lately.
func (s *AppSession) Has(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, settled := s.settled[id]
	return s.pending[id] != nil || settled
}

// Answer settles the waiting conflict id with a. It fails with
// ErrUnknownConflict, ErrLate (its deadline passed: the fallback decided),
// ErrAnswered, ErrAppClosed, or ErrInvalidDecision for an answer that
// cannot be applied (an unknown choice, a value with local, remote or
// fallback, or ChooseValue without one).
func (s *AppSession) Answer(id uint64, a AppAnswer) error {
	switch {
	case a.Choice < ChooseLocal || a.Choice > ChooseFallback:
		return errorf(ErrInvalidDecision, "unknown choice %v", a.Choice)
	case a.Choice == ChooseValue && len(a.Value) == 0:
		return errorf(ErrInvalidDecision, "choice value without a value")
	case a.Choice != ChooseValue && len(a.Value) > 0:
		return errorf(ErrInvalidDecision, "a value comes only with choice value, not %v", a.Choice)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrAppClosed
	}
	w := s.pending[id]
	if w == nil {
		if err := s.settled[id]; err != nil {
			return fmt.Errorf("conflict %d: %w", id, err)
		}
		return fmt.Errorf("%w: %d", ErrUnknownConflict, id)
	}
	delete(s.pending, id)
	s.settleLocked(id, ErrAnswered)
	s.bypass = 0  // answered in time
	w.answer <- a // capacity 1, sent once
	return nil
}

// bypassedLocked returns how much longer the app is bypassed (0: it is
// asked). s.mu must be held.
func (s *AppSession) bypassedLocked(now time.Time) time.Duration {
	if s.bypass == 0 {
		return 0
	}
	return max(s.missedAt.Add(s.bypass).Sub(now), 0)
}

// missed notes a deadline the app let pass: it is bypassed for longer.
func (s *AppSession) missed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bypass = min(max(2*s.bypass, appBypassFactor*s.deadline), maxAppBypass)
	s.missedAt = time.Now()
}

// Close ends the registration: conflicts waiting for the app go to the
// fallback at once, and new ones no longer reach it. It is safe to call
// more than once.
func (s *AppSession) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.pending = nil
	s.mu.Unlock()
	// Off the hub before done closes: whoever sees done (a conflict that
	// was waiting for this app) finds the governor without an app.
	h := s.hub
	h.mu.Lock()
	if h.byGov[s.governor] == s {
		delete(h.byGov, s.governor)
	}
	h.mu.Unlock()
	close(s.done)
}

// settleLocked remembers how id ended. s.mu must be held.
func (s *AppSession) settleLocked(id uint64, how error) {
	if len(s.order) >= maxSettled {
		delete(s.settled, s.order[0])
		s.order = s.order[1:]
	}
	s.settled[id] = how
	s.order = append(s.order, id)
}

// ask hands c to the app and waits for its answer until the deadline, ctx
// or the session ends. The error says why no answer came.
func (s *AppSession) ask(ctx context.Context, c Conflict) (AppAnswer, error) {
	id := s.hub.newID()
	w := &appWait{answer: make(chan AppAnswer, 1)}
	timer := time.NewTimer(s.deadline)
	defer timer.Stop()
	ac := &AppConflict{ID: id, Conflict: c.Clone(), Deadline: time.Now().Add(s.deadline)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return AppAnswer{}, errors.New("the app went away (disconnected or unregistered)")
	}
	if left := s.bypassedLocked(time.Now()); left > 0 {
		ago := time.Since(s.missedAt)
		s.mu.Unlock()
		return AppAnswer{}, fmt.Errorf("not asked: the app let a conflict's deadline pass %v ago, and is asked again in %v",
			ago.Round(time.Millisecond), left.Round(time.Millisecond))
	}
	s.pending[id] = w
	s.mu.Unlock()
	select {
	case s.ch <- ac:
	default:
		s.forget(id, ErrLate)
		return AppAnswer{}, fmt.Errorf("%d conflicts already wait for the app", cap(s.ch))
	}
	var why error
	timedOut := false
	select {
	case a := <-w.answer:
		return a, nil
	case <-timer.C:
		why = fmt.Errorf("no answer within %v (timeout)", s.deadline)
		timedOut = true
	case <-s.done:
		why = errors.New("the app went away (disconnected or unregistered) before it answered")
	case <-ctx.Done():
		why = fmt.Errorf("no answer before the push was stopped (%w)", context.Cause(ctx))
	}
	s.forget(id, ErrLate)
	// An answer that came in before forget counts.
	select {
	case a := <-w.answer:
		return a, nil
	default:
		if timedOut {
			s.missed()
		}
		return AppAnswer{}, why
	}
}

// forget withdraws conflict id, remembering it as how.
func (s *AppSession) forget(id uint64, how error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if _, ok := s.pending[id]; ok {
		delete(s.pending, id)
		s.settleLocked(id, how)
	}
}

// appResolver asks the app registered for the conflict's governor.
type appResolver struct {
	hub      *AppHub
	fallback Resolver
}

func (r appResolver) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	s := r.hub.session(c.Key.Governor)
	if s == nil {
		return fallback(ctx, NameApp, r.fallback, c, fmt.Sprintf("app: no app registered for governor %q", c.Key.Governor))
	}
	a, err := s.ask(ctx, c)
	if err != nil {
		return fallback(ctx, NameApp, r.fallback, c, "app: "+err.Error())
	}
	why := ""
	if a.Reason != "" {
		why = fmt.Sprintf(" (%q)", a.Reason)
	}
	switch a.Choice {
	case ChooseLocal:
		return pick(NameApp, Local, "app chose the local side, "+describe(c.Local)+why), nil
	case ChooseRemote:
		return pick(NameApp, Remote, "app chose the remote side, "+describe(c.Remote)+why), nil
	case ChooseValue:
		return Decision{Winner: Merged, Value: a.Value, Resolver: NameApp,
			Reason: fmt.Sprintf("app chose a new value over %s and %s%s", describe(c.Local), describe(c.Remote), why)}, nil
	}
	return fallback(ctx, NameApp, r.fallback, c, "app declined"+why)
}
