package wire

// Lock ops: leased, fenced, exclusive locks on named resources, shared by
// every sidecar of a deployment (docs/protocol.md, "Locks").
const (
	// OpLockAcquire takes a lock, waiting up to wait_ms for it.
	OpLockAcquire = "lock_acquire"
	// OpLockRelease gives a grant up.
	OpLockRelease = "lock_release"
	// OpLockExtend starts a new lease on a grant.
	OpLockExtend = "lock_extend"
	// OpLockStatus describes a resource's lock.
	OpLockStatus = "lock_status"
)

// Lock describes a lock. In lock_acquire and lock_extend replies it is the
// grant; in a lock_release reply, the grant given up; in a lock_status
// reply, the lock's state; in a LockHeld or LockLost error, the lock as the
// sidecar found it; in a push frame, the bound grant that was lost.
type Lock struct {
	Resource string `codec:"resource"`
	// Holder is the grant's holder, or the current holder ("" when free).
	Holder string `codec:"holder,omitempty"`
	// Token is the grant's fencing token; in a status or an error, the last
	// token granted on the resource (0: none known).
	Token uint64 `codec:"token,omitempty"`
	// LeaseMS is the grant's lease, in milliseconds.
	LeaseMS uint64 `codec:"lease_ms,omitempty"`
	// Expires is when the lease ends by the shared store's clock (Unix ns),
	// as closely as the store tells it.
	Expires int64 `codec:"expires,omitempty"`
	// Deadline is when the holder must stop relying on a grant, by the
	// sidecar's clock (Unix ns): the time the sidecar sent the request to
	// the store plus the lease.
	Deadline int64 `codec:"deadline,omitempty"`
	// Bound: the grant is bound to the connection (renewed while it lives,
	// released when it closes).
	Bound bool `codec:"bound,omitempty"`
	// Held, RemainingMS, Waiters: lock_status (RemainingMS also in
	// LockHeld errors): whether a lease runs, how long it still runs, and
	// the holders waiting for the lock.
	Held        bool     `codec:"held,omitempty"`
	RemainingMS uint64   `codec:"remaining_ms,omitempty"`
	Waiters     []string `codec:"waiters,omitempty"`
	// Next: lock_status and LockHeld errors: the waiter a released lock is
	// being handed to (Held is then false; in an error, RemainingMS is how
	// long the handoff may still take).
	Next string `codec:"next,omitempty"`
}

// Deadlock is the detail of a DeadlockDetected error: the cycle of waits
// found, starting with the victim's own wait.
type Deadlock struct {
	Victim string     `codec:"victim"`
	Cycle  []WaitEdge `codec:"cycle"`
}

// WaitEdge is one wait of a deadlock: Waiter waits for Resource, which
// Holder holds.
type WaitEdge struct {
	Waiter   string `codec:"waiter"`
	Resource string `codec:"resource"`
	Holder   string `codec:"holder"`
}
