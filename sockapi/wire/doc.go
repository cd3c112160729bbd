// Package wire defines tai-sidecar's wire protocol: frames, the msgpack
// messages they carry, error codes and name rules.
//
// It is the only package a client needs: it imports neither Badger nor
// Firestore. The protocol itself is specified in docs/protocol.md; this
// package is its Go rendering, and the codec settings live here, in one place.
package wire
