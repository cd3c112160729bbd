package wire

// App-delegated conflict resolution (docs/protocol.md, "Conflict resolution
// by an app"): an app registers to decide the conflicts of a governor, gets
// each conflict in a push frame, and answers it with resolve.
const (
	// OpResolverRegister registers the connection to decide the conflicts
	// of a governor; OpResolverUnregister ends that.
	OpResolverRegister   = "resolver_register"
	OpResolverUnregister = "resolver_unregister"
	// OpResolve answers a conflict pushed to the connection.
	OpResolve = "resolve"
)

// Choices of a resolve request.
const (
	ChoiceLocal    = "local"    // the local change wins
	ChoiceRemote   = "remote"   // the shared store's record wins
	ChoiceValue    = "value"    // the request's value replaces both
	ChoiceFallback = "fallback" // the app declines: the fallback resolver decides
)

// Resolver is the resolver_register reply: the governor and the time the
// app has to answer each conflict, in milliseconds.
type Resolver struct {
	Governor   string `codec:"governor"`
	DeadlineMS uint64 `codec:"deadline_ms"`
}

// AppConflict is a conflict handed to an app, in a push frame whose id is
// the id of the resolver_register request. ID is what resolve answers
// (conflict_id); DeadlineMS is the time left to answer when the frame was
// sent. Local is this sidecar's change, Remote the shared store's record it
// met, Base the version the local change was made on (absent when this
// sidecar does not know it).
type AppConflict struct {
	ID         uint64        `codec:"id"`
	Governor   string        `codec:"governor"`
	State      string        `codec:"state"`
	DeadlineMS uint64        `codec:"deadline_ms"`
	Local      ConflictSide  `codec:"local"`
	Remote     ConflictSide  `codec:"remote"`
	Base       *ConflictBase `codec:"base,omitempty"`
}
