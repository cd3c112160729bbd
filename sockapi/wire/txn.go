package wire

// Transactions (docs/protocol.md, "txn" and "txlog"): puts, deletes and
// checks of several states, all or nothing, and the log of the
// transactions a sidecar ran.
const (
	OpTxn   = "txn"
	OpTxLog = "txlog"
)

// Operations of a txn.
const (
	TxnPut    = "put"
	TxnDelete = "delete"
	TxnCheck  = "check"
)

// Transaction outcomes, in the txn log. An async transaction is committed
// when it is durable on the sidecar; it becomes gave_way if it then gives
// way in the shared store (another sidecar changed a state it wrote or
// checked first: nothing of it was applied there, and the sidecar's copies
// became the shared store's), or failed if the shared store refused it for
// good (it is on the failed list).
const (
	TxnCommitted = "committed"
	TxnFailed    = "failed"
	TxnGaveWay   = "gave_way"
)

// TxnOp is one operation of a txn request. A put carries Value; a delete
// none; both may carry if_version or if_absent. A check writes nothing and
// carries exactly one of IfVersion (the state's version must be this; 0:
// absent) and Exists (the state must exist, or must not).
type TxnOp struct {
	Op        string  `codec:"op"`
	Governor  string  `codec:"governor"`
	State     string  `codec:"state"`
	Value     Raw     `codec:"value,omitempty"`
	IfVersion *uint64 `codec:"if_version,omitempty"`
	IfAbsent  bool    `codec:"if_absent,omitempty"`
	Exists    *bool   `codec:"exists,omitempty"`
}

// TxnResult is the part of a txn reply beside the records: the
// transaction's id (in the txn log) and how many attempts it took (more
// than 1 only for a strong transaction that lost to concurrent changes).
type TxnResult struct {
	ID       string `codec:"id"`
	Attempts int    `codec:"attempts"`
}

// TxnLogEntry is one transaction in the txlog reply: when it started (Unix
// ns) and how long it took, who ran it and at which level, its operations
// (with the versions written, when it committed), its attempts, its
// outcome ("committed" or "failed") and a failure's error code and
// message.
type TxnLogEntry struct {
	ID          string     `codec:"id"`
	Time        int64      `codec:"time"`
	DurationNS  int64      `codec:"duration_ns"`
	Actor       string     `codec:"actor,omitempty"`
	Reason      string     `codec:"reason,omitempty"`
	Consistency string     `codec:"consistency"`
	Ops         []TxnLogOp `codec:"ops"`
	Attempts    int        `codec:"attempts"`
	Outcome     string     `codec:"outcome"`
	Code        string     `codec:"code,omitempty"`
	Error       string     `codec:"error,omitempty"`
}

// TxnLogOp is one operation of a logged transaction.
type TxnLogOp struct {
	Op       string `codec:"op"`
	Governor string `codec:"governor"`
	State    string `codec:"state"`
	Version  uint64 `codec:"version,omitempty"`
}
