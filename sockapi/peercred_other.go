//go:build !linux

package sockapi

import "net"

// peerOf cannot read peer credentials on this system: every peer is
// unknown, so an allowlist or a per-governor rule refuses it (fail closed)
// and MaxConnsPerUID does not apply.
func peerOf(net.Conn) (Peer, error) { return Peer{}, nil }
