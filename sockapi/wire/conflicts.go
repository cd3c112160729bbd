package wire

// OpConflicts pages through the conflict ledger of a governor: the true
// conflicts this sidecar's pushes settled (docs/protocol.md, "conflicts").
const OpConflicts = "conflicts"

// Conflict is one entry of the conflict ledger: a local change that met a
// concurrent change in the shared store, and how it was settled.
type Conflict struct {
	// ID identifies the conflict (the same in the shared store's ledger).
	ID       string `codec:"id"`
	Governor string `codec:"governor"`
	State    string `codec:"state"`
	// Time is when it was decided (Unix ns), Node the sidecar that did.
	Time int64  `codec:"time"`
	Node string `codec:"node"`
	// Resolver names who decided, e.g. "merge>lww", "strict"; Reason says
	// why (nodes, versions, clocks and field names, never values).
	Resolver string `codec:"resolver"`
	Reason   string `codec:"reason"`
	// Winner is "local" (the local change), "remote" (the shared store's
	// record) or "merged" (Merged, made from both).
	Winner string `codec:"winner"`
	// Entries is how many local changes the local side stands for.
	Entries int `codec:"entries"`
	// BaseVersion is the version the local change was made on (0: the
	// state did not exist); Base is that version with its value, when it
	// was known.
	BaseVersion uint64        `codec:"base_version"`
	Base        *ConflictBase `codec:"base,omitempty"`
	Local       ConflictSide  `codec:"local"`
	Remote      ConflictSide  `codec:"remote"`
	Merged      Raw           `codec:"merged,omitempty"`
	// Value and Deleted are the outcome: the value the decision kept (the
	// winner's, or Merged), or a tombstone.
	Value   Raw  `codec:"value,omitempty"`
	Deleted bool `codec:"deleted,omitempty"`
	// Omitted names the values left out to keep the entry within the size
	// limit: "base", "local", "remote", "merged".
	Omitted []string `codec:"omitted,omitempty"`
}

// ConflictSide is one side of a conflict.
type ConflictSide struct {
	Value     Raw    `codec:"value,omitempty"`
	Version   uint64 `codec:"version"`
	Deleted   bool   `codec:"deleted,omitempty"`
	UpdatedAt int64  `codec:"updated_at"`
	Origin    string `codec:"origin"`
	OpID      string `codec:"op_id"`
	Clock     Clock  `codec:"clock"`
}

// ConflictBase is the version a local change was made on, with its value.
type ConflictBase struct {
	Value   Raw    `codec:"value,omitempty"`
	Version uint64 `codec:"version"`
	Deleted bool   `codec:"deleted,omitempty"`
}
