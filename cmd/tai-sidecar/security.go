package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tai-state/tai-state/sockapi"
)

// Defaults and bounds of serve's connection limits (config_settings.go
// defines the settings). docs/security.md lists them.
const (
	defaultMaxConns       = 1024
	defaultMaxConnsPerUID = 256
	defaultMaxInflight    = 128
	defaultIdleTimeout    = 5 * time.Minute
	maxMaxConns           = 1 << 20
	maxMaxInflight        = 1 << 16
	minIdleTimeout        = time.Second
	maxIdleTimeout        = 24 * time.Hour
	// maxAccessFile bounds the access file: a policy is a few kilobytes.
	maxAccessFile = 1 << 20
)

// SecurityConfig is the access policy and the connection and request
// limits of `tai-sidecar serve`.
type SecurityConfig struct {
	MaxConns       int
	MaxConnsPerUID int
	MaxInflight    int
	IdleTimeout    time.Duration
	ReadTimeout    time.Duration
	MaxValue       int
	MaxBatch       int
	MaxValueDepth  int
	AccessFile     string
	// AllowUIDs and AllowGIDs are --allow-uid and --allow-gid as given.
	AllowUIDs, AllowGIDs []uint32
	// Access is the policy: the access file's, with AllowUIDs and
	// AllowGIDs added to its allowlists.
	Access sockapi.Access
}

// serverOptions sets the limits and the policy in o.
func (c *SecurityConfig) serverOptions(o sockapi.Options) sockapi.Options {
	o.MaxConns = c.MaxConns
	o.MaxConnsPerUID = c.MaxConnsPerUID
	o.MaxInflight = c.MaxInflight
	o.IdleTimeout = c.IdleTimeout
	o.ReadTimeout = c.ReadTimeout
	o.MaxValue = c.MaxValue
	o.MaxBatch = c.MaxBatch
	o.MaxValueDepth = c.MaxValueDepth
	o.Access = c.Access
	return o
}

// parseIDs reads uids or gids: decimal numbers, in comma lists.
func parseIDs(texts []string) ([]uint32, error) {
	var ids []uint32
	for _, t := range texts {
		for s := range strings.SplitSeq(t, ",") {
			s = strings.TrimSpace(s)
			id, err := parseID(s)
			if err != nil {
				return nil, err
			}
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// parseID reads one numeric uid or gid. 4294967295 is (uid_t)-1, which no
// process runs as.
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%q is not a numeric uid or gid (0 to 4294967294)", s)
	}
	return uint32(n), nil
}

// loadAccess reads and checks an access file. Unknown keys are errors: a
// misspelt key would otherwise silently grant more than meant.
func loadAccess(path string) (sockapi.Access, error) {
	f, err := os.Open(path)
	if err != nil {
		return sockapi.Access{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAccessFile+1))
	if err != nil {
		return sockapi.Access{}, err
	}
	if len(b) > maxAccessFile {
		return sockapi.Access{}, fmt.Errorf("larger than %d bytes", maxAccessFile)
	}
	return parseAccess(b)
}

func parseAccess(b []byte) (sockapi.Access, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var a sockapi.Access
	if err := dec.Decode(&a); err != nil {
		return sockapi.Access{}, fmt.Errorf("not a valid access policy: %w", err)
	}
	if dec.More() {
		return sockapi.Access{}, errors.New("not a valid access policy: more than one JSON value")
	}
	if err := a.Validate(); err != nil {
		return sockapi.Access{}, err
	}
	for _, l := range [][]uint32{a.AllowUIDs, a.AllowGIDs, a.Admin, a.Locks} {
		if slices.Contains(l, 1<<32-1) {
			return sockapi.Access{}, errors.New("4294967295 is not a uid or gid")
		}
	}
	return a, nil
}
