package client

import "github.com/tai-state/tai-state/sockapi/wire"

// WithFence makes a write valid only under the lock grant f (Lock.Fence,
// or the fence WithLock passes to its function): the sidecar rejects it with
// an error matching ErrFenceRejected (not retryable) when the lock has been
// granted again since. It rejects it at once when it knows of the newer
// grant; otherwise the shared store rejects the change when it is pushed: a
// write with Synced or StrongWrite then fails with ErrFenceRejected, and an
// asynchronous one is parked on the failed list (Failed) with a reason that
// says FenceRejected. The details are in the *Error's Fence (errors.As):
// the fence and the token it was judged against. A grant whose lease ran
// out is still valid as long as the lock was not granted again: the token
// decides, not the clock. On BatchPut the fence applies to every item; it
// applies to Transition and Txn too.
func WithFence(f Fence) WriteOption {
	return func(o *writeOptions) { o.fence = &f }
}

// wireFence checks a write's fence and returns it as the request carries it
// (nil: none).
func wireFence(f *Fence) (*wire.Fence, error) {
	if f == nil {
		return nil, nil
	}
	if err := wire.ValidateName("fence resource", f.Resource); err != nil {
		e := errorf(wire.CodeInvalidArgument, "%v", err)
		e.Field = "fence.resource"
		return nil, e
	}
	if f.Token == 0 {
		e := errorf(wire.CodeInvalidArgument, "fence token must be greater than 0")
		e.Field = "fence.token"
		return nil, e
	}
	return &wire.Fence{Resource: f.Resource, Token: f.Token}, nil
}
