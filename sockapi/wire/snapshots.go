package wire

// Event sourcing ops (docs/protocol.md, "Snapshots, transitions, cleanup
// and replay").
const (
	// OpSnapshot takes a snapshot of one state, or of every live state of
	// a governor.
	OpSnapshot = "snapshot"
	// OpTransition moves a state machine from one machine state to
	// another: a compare-and-set of the state and its event.
	OpTransition = "transition"
	// OpCleanup removes old local history by age and/or count.
	OpCleanup = "cleanup"
	// OpReplay pages through the retained history of a state or a
	// governor: each state's starting snapshot, then its events.
	OpReplay = "replay"
)

// CodeWrongState: a transition found the machine in another machine state
// than it expected (Error.Machine says which), or found no machine.
const CodeWrongState Code = "WrongState"

// ErrWrongState matches WrongState errors with errors.Is.
var ErrWrongState = &Error{Code: CodeWrongState}

// MachineState is the detail of a WrongState error.
type MachineState struct {
	// Expected is the machine state the transition expected ("": none, the
	// transition creates the machine); Actual the one found ("": the state
	// does not exist, or NotMachine).
	Expected string `codec:"expected"`
	Actual   string `codec:"actual,omitempty"`
	// Version is the state's current version (0: it does not exist).
	Version uint64 `codec:"version"`
	// NotMachine: the state's value is not a machine value (a string, or a
	// map with a string entry "state").
	NotMachine bool `codec:"not_machine,omitempty"`
}

// Snapshot is a state's record at one version, as the snapshot and replay
// replies carry it. The snapshot reply leaves Value out.
type Snapshot struct {
	Governor  string `codec:"governor"`
	State     string `codec:"state"`
	Version   uint64 `codec:"version"`
	Deleted   bool   `codec:"deleted,omitempty"`
	Value     Raw    `codec:"value,omitempty"`
	UpdatedAt int64  `codec:"updated_at"`
	Change    Change `codec:"change"`
	Origin    string `codec:"origin,omitempty"`
	OpID      string `codec:"op_id,omitempty"`
	Clock     Clock  `codec:"clock"`
	// TakenAt is when the snapshot was taken (Unix ns).
	TakenAt int64 `codec:"taken_at"`
}

// SnapshotResult is the snapshot reply.
type SnapshotResult struct {
	// States is how many states were snapshotted (1 for one state), Taken
	// how many of the snapshots are new (the others existed at the
	// state's current version already).
	States int `codec:"states"`
	Taken  int `codec:"taken"`
	// Snapshot is the snapshot of one state (without its value); absent
	// for a governor.
	Snapshot *Snapshot `codec:"snapshot,omitempty"`
}

// CleanupReport is the cleanup reply: what was removed (with dry_run, what
// would be).
type CleanupReport struct {
	DryRun    bool `codec:"dry_run,omitempty"`
	States    int  `codec:"states"`    // states with snapshots examined
	Cleaned   int  `codec:"cleaned"`   // states whose history was cut
	Events    int  `codec:"events"`    // events removed
	Snapshots int  `codec:"snapshots"` // snapshots removed (older than the cuts)
	// Held counts the states whose cut stopped short because a change is
	// still waiting for the shared store.
	Held int `codec:"held"`
	// Merged counts the journal entries merged into later changes of their
	// state (a sidecar without a shared store: see docs/protocol.md).
	Merged int `codec:"merged"`
	// Cuts lists the states cut (the first ones, when the list would not
	// fit a frame).
	Cuts []*CleanupCut `codec:"cuts,omitempty"`
}

// CleanupCut is where one state's retained history now starts: the
// snapshot at Base, and the events after it.
type CleanupCut struct {
	Governor  string `codec:"governor"`
	State     string `codec:"state"`
	Base      uint64 `codec:"base"`
	Events    int    `codec:"events"`
	Snapshots int    `codec:"snapshots"`
}

// ReplayItem is one step of a replay: a state's starting snapshot, or an
// event; exactly one is set.
type ReplayItem struct {
	Snapshot *Snapshot `codec:"snapshot,omitempty"`
	Event    *Event    `codec:"event,omitempty"`
}
