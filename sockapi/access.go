package sockapi

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Peer is who is at the other end of a connection, as the kernel reported
// it when the connection was accepted (SO_PEERCRED on Linux). The sidecar
// trusts a peer per uid and gid only: any process running as an allowed
// uid has that uid's rights.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Known is false when the credentials could not be read (not a Unix
	// socket, or a system without SO_PEERCRED). An unknown peer passes no
	// allowlist and no per-governor rule.
	Known bool
}

// Perm is the right an op needs.
type Perm uint8

// Rights. Every op but hello and ping needs exactly one.
const (
	// PermRead: get, batch_get, list, watch, events, state_at, replay, and
	// later ops that only read states.
	PermRead Perm = 1 << iota
	// PermWrite: put, delete, batch_put, transition, and later ops that
	// change states.
	PermWrite
	// PermAdmin: stats, pending, failed, flush, validate, snapshot,
	// cleanup, and later ops about the sidecar itself.
	PermAdmin
	// PermLock: lock_acquire, lock_release, lock_extend, lock_status. Lock
	// resources are names of the deployment that no governor owns, so this
	// right is granted by Access.Locks, not by a governor's rule.
	PermLock
)

func (p Perm) String() string {
	switch p {
	case PermRead:
		return "read"
	case PermWrite:
		return "write"
	case PermAdmin:
		return "admin"
	case PermLock:
		return "lock"
	}
	return fmt.Sprintf("Perm(%d)", uint8(p))
}

// opPerms is the right each op needs; 0 for hello, ping, unwatch (which
// only ends a watch of the same connection, allowed when it started),
// resolver_unregister and resolve (checked in resolver.go) and
// unknown ops (which any connected peer may send). A new op must be listed here:
// TestEveryOpHasAPerm checks it.
var opPerms = [numOps]Perm{
	opGet:      PermRead,
	opBatchGet: PermRead,
	opList:     PermRead,
	opWatch:    PermRead,
	opPut:      PermWrite,
	opDelete:   PermWrite,
	opBatchPut: PermWrite,
	opStats:    PermAdmin,
	opPending:  PermAdmin,
	opFailed:   PermAdmin,
	opFlush:    PermAdmin,
	opValidate: PermAdmin,
	opEvents:   PermRead,
	opStateAt:  PermRead,

	opConflicts: PermRead, // the ledger holds both sides' values

	opLockAcquire: PermLock,
	opLockRelease: PermLock,
	opLockExtend:  PermLock,
	opLockStatus:  PermLock,

	opTransition: PermWrite,
	opReplay:     PermRead,
	opSnapshot:   PermAdmin, // upkeep of the local history
	opCleanup:    PermAdmin,

	// Deciding a governor's conflicts writes it; resolver_register also
	// checks the read right (conflicts carry values), resolve the write
	// right on the conflict's governor, and resolver_unregister only ends
	// a registration of the same connection.
	opResolverRegister: PermWrite,

	// txn: write on the governors it writes, read on those it checks
	// (authorize); txlog names states and actors of every governor.
	opTxn:   PermWrite,
	opTxLog: PermAdmin,
}

// Access is the server's access policy. The zero value allows every peer
// that can open the socket (whose file mode, SocketMode, is the first
// guard) to run every op.
//
// A connection is checked once, when it is accepted: with AllowUIDs or
// AllowGIDs set, a peer whose uid is not in AllowUIDs and whose gid is not
// in AllowGIDs gets a PermissionDenied error frame with id 0 and is closed.
// Then each request is checked against Governors, Default, Admin and Locks; a
// denied request gets a PermissionDenied reply and the connection stays
// open.
//
// tai-sidecar serve reads it from the JSON file named by --access-file,
// whose keys are the field tags.
type Access struct {
	// AllowUIDs and AllowGIDs list the peers that may connect: a peer
	// passes if its uid or its primary gid is listed. Both empty: every
	// peer may connect.
	AllowUIDs []uint32 `json:"allow_uids,omitempty"`
	AllowGIDs []uint32 `json:"allow_gids,omitempty"`
	// Governors restricts reads and writes of the named governors to the
	// uids their rules list. A governor that is not listed follows
	// Default.
	Governors map[string]GovernorAccess `json:"governors,omitempty"`
	// Default, when set, is the rule of every governor not in Governors.
	// nil: governors not listed are open to every connected peer.
	Default *GovernorAccess `json:"default,omitempty"`
	// Admin lists the uids that may run admin ops (stats, pending, failed, flush, validate, snapshot, cleanup, txlog). nil: every
	// connected peer; an empty, non-nil list: nobody.
	Admin []uint32 `json:"admin,omitempty"`
	// Locks lists the uids that may run lock ops. nil: every connected
	// peer; an empty, non-nil list: nobody.
	Locks []uint32 `json:"locks,omitempty"`
}

// GovernorAccess lists the uids that may read and write a governor. A
// right whose list is empty is granted to nobody. Write does not imply
// read: list both for a peer that does both.
type GovernorAccess struct {
	Read  []uint32 `json:"read,omitempty"`
	Write []uint32 `json:"write,omitempty"`
}

// ErrInvalidAccess is wrapped by Access.Validate's errors.
var ErrInvalidAccess = errors.New("invalid access policy")

// Validate checks that every governor named in the policy is a valid
// governor name: a rule for a name that no request can carry would never
// apply, which is almost certainly a mistake.
func (a *Access) Validate() error {
	for g := range a.Governors {
		if err := wire.ValidateName("governor", g); err != nil {
			return fmt.Errorf("%w: governors: %w", ErrInvalidAccess, err)
		}
	}
	return nil
}

// restrictsPeers reports whether connections are checked against an
// allowlist.
func (a *Access) restrictsPeers() bool { return len(a.AllowUIDs) > 0 || len(a.AllowGIDs) > 0 }

// restrictsOps reports whether requests are checked at all.
func (a *Access) restrictsOps() bool {
	return len(a.Governors) > 0 || a.Default != nil || a.Admin != nil || a.Locks != nil
}

// AllowsPeer reports whether p may connect.
func (a *Access) AllowsPeer(p Peer) bool {
	if !a.restrictsPeers() {
		return true
	}
	return p.Known && (slices.Contains(a.AllowUIDs, p.UID) || slices.Contains(a.AllowGIDs, p.GID))
}

// Allows reports whether p may use right perm on governor. governor is
// ignored for PermAdmin and PermLock; perm 0 is always allowed.
func (a *Access) Allows(p Peer, perm Perm, governor string) bool {
	switch perm {
	case 0:
		return true
	case PermAdmin:
		return a.Admin == nil || p.Known && slices.Contains(a.Admin, p.UID)
	case PermLock:
		return a.Locks == nil || p.Known && slices.Contains(a.Locks, p.UID)
	}
	rule, ok := a.Governors[governor]
	if !ok {
		if a.Default == nil {
			return true
		}
		rule = *a.Default
	}
	if !p.Known {
		return false
	}
	if perm == PermWrite {
		return slices.Contains(rule.Write, p.UID)
	}
	return slices.Contains(rule.Read, p.UID)
}

// authorize checks req against the access policy. It returns nil or the
// PermissionDenied error to reply with. The request has passed decoding
// only: names may be invalid, and such a name is then not echoed (the
// op's own checks report it to an allowed peer).
func (c *conn) authorize(op int, req *wire.Request) *wire.Error {
	a := &c.s.opts.Access
	perm := opPerms[op]
	if perm == 0 || !a.restrictsOps() {
		return nil
	}
	deny := func(field, governor string) *wire.Error {
		e := wire.Errorf(wire.CodePermissionDenied, "uid %d may not %s", c.peer.UID, perm)
		if !c.peer.Known {
			e.Message = "peer credentials unknown: " + perm.String() + " denied"
		}
		if governor != "" && wire.ValidateName("governor", governor) == nil {
			e.Message += " governor " + governor
			e.Governor = governor
		}
		e.Field = field
		c.s.logDenied(c.peer, "request denied", "op", req.Op, "perm", perm.String(), "governor", e.Governor)
		return e
	}
	switch {
	case perm == PermAdmin, perm == PermLock:
		if !a.Allows(c.peer, perm, "") {
			return deny("", "")
		}
	case op == opBatchGet:
		for i := range req.Keys {
			if g := req.Keys[i].Governor; !a.Allows(c.peer, perm, g) {
				return deny(fmt.Sprintf("keys[%d].governor", i), g)
			}
		}
	case op == opBatchPut:
		for i := range req.Items {
			if g := req.Items[i].Governor; !a.Allows(c.peer, perm, g) {
				return deny(fmt.Sprintf("items[%d].governor", i), g)
			}
		}
	case op == opTxn:
		for i, o := range req.Ops {
			p := PermWrite
			if o.Op == wire.TxnCheck {
				p = PermRead
			}
			if !a.Allows(c.peer, p, o.Governor) {
				perm = p
				return deny(fmt.Sprintf("ops[%d].governor", i), o.Governor)
			}
		}
	default:
		if !a.Allows(c.peer, perm, req.Governor) {
			return deny("governor", req.Governor)
		}
	}
	return nil
}

// deniedLog remembers the peers whose denials were logged, so that a peer
// that keeps sending denied requests is logged once, not per request.
type deniedLog struct {
	mu   sync.Mutex
	seen map[peerID]struct{}
}

// peerID names a peer for logging: a process, by uid and pid.
type peerID struct {
	uid uint32
	pid int32
}

// maxDeniedPeers bounds deniedLog: when full it forgets every peer, so a
// peer may be logged again later, but memory stays bounded.
const maxDeniedPeers = 4096

// first reports whether p was not logged yet, and records it.
func (d *deniedLog) first(p Peer) bool {
	id := peerID{p.UID, p.PID}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.seen[id]; ok {
		return false
	}
	if d.seen == nil || len(d.seen) >= maxDeniedPeers {
		d.seen = make(map[peerID]struct{})
	}
	d.seen[id] = struct{}{}
	return true
}

// logDenied logs a denial the first time it happens for p.
func (s *Server) logDenied(p Peer, msg string, args ...any) {
	if !s.denied.first(p) {
		return
	}
	args = append(args, "uid", p.UID, "gid", p.GID, "pid", p.PID, "known", p.Known)
	s.log.Warn(msg+" (logged once per peer process)", args...)
}
