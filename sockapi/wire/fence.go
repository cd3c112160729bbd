package wire

// Fence names the lock grant a write is made under (Request.Fence on put,
// delete and batch_put): the write is rejected with FenceRejected when the
// lock was granted again since, by this sidecar's knowledge and again in the
// shared store when the change is pushed. Resource is the lock's resource
// name (a document id, as ValidateName checks) and Token the grant's fencing
// token (> 0).
type Fence struct {
	Resource string `codec:"resource"`
	Token    uint64 `codec:"token"`
}

// FenceRejection is the detail of a FenceRejected error: the write's fence
// (Resource, Token) and the token it was judged against (Current): the
// highest token the sidecar has seen for Resource, or, when the shared
// store rejected the change, the lock's last granted token there (0: the
// lock has no record).
type FenceRejection struct {
	Resource string `codec:"resource"`
	Token    uint64 `codec:"token"`
	Current  uint64 `codec:"current"`
}
