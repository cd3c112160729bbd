package client

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// App-delegated conflict resolution: a sidecar configured with the "app"
// resolver for a governor (serve --resolvers 'orders=app:lww') hands each
// true conflict of that governor to the app registered for it, and waits
// for its answer until a deadline; without an answer in time the fallback
// resolver decides. ServeConflicts is that app's loop.

// Conflict is a conflict the sidecar hands to an app: this sidecar's
// change (Local), the shared store's record it met (Remote), and the
// version the local change was made on (Base, nil when the sidecar does
// not know it). Values are msgpack, verbatim: decode them with
// wire.Unmarshal. The answer must arrive before Deadline (this process's
// clock).
type Conflict struct {
	ID       uint64
	Governor string
	State    string
	Local    wire.ConflictSide
	Remote   wire.ConflictSide
	Base     *wire.ConflictBase
	Deadline time.Time
}

// Resolution is an app's answer to a Conflict: Choice is wire.ChoiceLocal,
// wire.ChoiceRemote, wire.ChoiceValue (Value, msgpack, replaces both
// sides) or wire.ChoiceFallback (the sidecar's fallback resolver decides).
// Reason, optional, goes into the conflict ledger's reason.
type Resolution struct {
	Choice string
	Value  []byte
	Reason string
}

// KeepLocal answers that the local change wins.
func KeepLocal(reason string) Resolution { return Resolution{Choice: wire.ChoiceLocal, Reason: reason} }

// KeepRemote answers that the shared store's record wins.
func KeepRemote(reason string) Resolution {
	return Resolution{Choice: wire.ChoiceRemote, Reason: reason}
}

// Decline answers that the sidecar's fallback resolver decides.
func Decline(reason string) Resolution {
	return Resolution{Choice: wire.ChoiceFallback, Reason: reason}
}

// NewValue answers with a new value, v encoded as msgpack, that replaces
// both sides.
func NewValue(v any, reason string) (Resolution, error) {
	b, err := wire.Marshal(v)
	if err != nil {
		return Resolution{}, errorf(wire.CodeInvalidArgument, "encode the resolution's value: %v", err)
	}
	return Resolution{Choice: wire.ChoiceValue, Value: b, Reason: reason}, nil
}

// ResolveFunc decides a conflict. Its context ends at the conflict's
// deadline. An error declines the conflict (the fallback decides, and the
// error's text is the reason).
type ResolveFunc func(ctx context.Context, c Conflict) (Resolution, error)

// ResolverOption configures ServeConflicts.
type ResolverOption func(*resolverOptions)

type resolverOptions struct {
	deadline   time.Duration
	onError    func(Conflict, error)
	registered func(deadline time.Duration)
}

// AnswerWithin asks the sidecar to wait up to d for each answer (0: the
// sidecar's default, 2 s; otherwise 10 ms to 10 s, rounded up to a
// millisecond).
func AnswerWithin(d time.Duration) ResolverOption {
	return func(o *resolverOptions) { o.deadline = d }
}

// OnAnswerError sets a function told about answers the sidecar refused
// (for example one that came after the conflict's deadline, when the
// fallback had decided already). It runs on the answer's goroutine.
func OnAnswerError(f func(Conflict, error)) ResolverOption {
	return func(o *resolverOptions) { o.onError = f }
}

// OnRegistered sets a function called once the sidecar has registered the
// app, with the time it waits for each answer.
func OnRegistered(f func(deadline time.Duration)) ResolverOption {
	return func(o *resolverOptions) { o.registered = f }
}

// conflictBacklog is how many pushed conflicts wait for ServeConflicts's
// loop; more are dropped (the sidecar's fallback decides them at their
// deadline).
const conflictBacklog = 256

// ServeConflicts registers this process with the sidecar as the app that
// decides the conflicts of gov, and calls fn for each, on its own
// goroutine, until ctx ends (it then returns nil; if ctx ends before the
// sidecar confirmed the registration, the error saying so, which errors.Is
// matches with ctx.Err()) or the connection fails (it returns why). The registration lives on a connection of its own; it
// ends when ServeConflicts returns. One app per governor per sidecar: if
// another holds gov, it fails at once with ErrLockHeld (retryable: the
// other may go away); a governor the sidecar does not delegate is
// ErrInvalidArgument, a sidecar without a shared store ErrUnavailable.
func (c *Client) ServeConflicts(ctx context.Context, gov string, fn ResolveFunc, opts ...ResolverOption) error {
	var o resolverOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := validName("governor", gov, gov, ""); err != nil {
		return err
	}
	ms := uint64((max(o.deadline, 0) + time.Millisecond - 1) / time.Millisecond) // rounded up
	if o.deadline < 0 || o.deadline > 0 && (ms < 10 || ms > 10_000) {
		e := errorf(wire.CodeInvalidArgument, "answer deadline %v is not 0 (the sidecar's default) or within [10ms, 10s]", o.deadline)
		e.Field = "deadline_ms"
		return e
	}
	s, err := c.openResolver(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	req := &wire.Request{Op: wire.OpResolverRegister, Governor: gov, DeadlineMS: ms}
	resp, err := s.do(ctx, req)
	if err != nil {
		return err
	}
	if resp.Resolver == nil {
		return protocolErrorf("resolver_register reply carries no resolver")
	}
	if o.registered != nil {
		o.registered(time.Duration(resp.Resolver.DeadlineMS) * time.Millisecond)
	}
	var answers sync.WaitGroup
	defer answers.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.cn.closing:
			s.cn.mu.Lock()
			err := s.cn.errFor(true)
			s.cn.mu.Unlock()
			return err
		case ac := <-s.conflicts:
			cf := Conflict{ID: ac.ID, Governor: ac.Governor, State: ac.State, Local: ac.Local, Remote: ac.Remote,
				Base: ac.Base, Deadline: s.taken(ac.ID).Add(time.Duration(ac.DeadlineMS) * time.Millisecond)}
			answers.Go(func() { s.answer(ctx, cf, fn, o.onError) })
		}
	}
}

// resolverSession is ServeConflicts's connection.
type resolverSession struct {
	c         *Client
	cn        *conn
	conflicts chan *wire.AppConflict

	mu       sync.Mutex
	received map[uint64]time.Time // when each conflict arrived, until taken
}

// openResolver dials a connection for ServeConflicts. Client.Close closes
// it too.
func (c *Client) openResolver(ctx context.Context) (*resolverSession, error) {
	s := &resolverSession{c: c, conflicts: make(chan *wire.AppConflict, conflictBacklog),
		received: make(map[uint64]time.Time)}
	cn, err := c.dialSession(ctx, func(cn *conn) { cn.resolver = s })
	if err != nil {
		return nil, err
	}
	s.cn = cn
	return s, nil
}

// close closes the connection: the sidecar ends the registration.
func (s *resolverSession) close() { s.c.closeSession(s.cn) }

// push takes a conflict pushed on the session's connection. The
// connection's reader calls it: it does not block, and drops a conflict
// the loop has no room for.
func (s *resolverSession) push(resp *wire.Response) {
	ac := resp.Conflict
	s.mu.Lock()
	s.received[ac.ID] = time.Now()
	s.mu.Unlock()
	select {
	case s.conflicts <- ac:
	default:
		s.taken(ac.ID)
	}
}

// taken forgets when conflict id arrived.
func (s *resolverSession) taken(id uint64) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.received[id]
	delete(s.received, id)
	return t
}

// do sends req on the session's connection and waits for its reply.
func (s *resolverSession) do(ctx context.Context, req *wire.Request) (*wire.Response, error) {
	req.ID = s.c.ids.Add(1)
	frame, err := s.c.encode(req)
	if err != nil {
		return nil, err
	}
	if err := checkLimits(req, len(frame)-wire.HeaderSize, &s.cn.hello); err != nil {
		return nil, err
	}
	cl := &call{id: req.ID, frame: frame, done: make(chan struct{})}
	if err := s.cn.send(cl); err != nil {
		return nil, err
	}
	return reply(s.cn.wait(ctx, cl))
}

// answer runs fn on cf and sends its resolution; an error of fn declines.
func (s *resolverSession) answer(ctx context.Context, cf Conflict, fn ResolveFunc, onError func(Conflict, error)) {
	fctx, cancel := context.WithDeadline(ctx, cf.Deadline)
	res, err := fn(fctx, cf)
	cancel()
	if err != nil {
		res = Decline(clipReason(err.Error()))
	}
	req := &wire.Request{Op: wire.OpResolve, ConflictID: cf.ID, Choice: res.Choice, Value: res.Value,
		Reason: clipReason(res.Reason)}
	_, err = s.do(ctx, req)
	if err != nil && onError != nil && !errors.Is(err, context.Canceled) {
		onError(cf, err)
	}
}

// clipReason shortens a reason to what the sidecar accepts.
func clipReason(r string) string {
	if len(r) <= wire.MaxMetaSize {
		return r
	}
	return strings.ToValidUTF8(r[:wire.MaxMetaSize], "") // a cut UTF-8 sequence goes
}
