package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tai-state/tai-state/sockapi"
)

// Defaults and bounds of serve's connection limits. docs/security.md lists
// them.
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

// SecurityConfig is the access policy and the connection limits of
// `tai-sidecar serve`.
type SecurityConfig struct {
	MaxConns       int
	MaxConnsPerUID int
	MaxInflight    int
	IdleTimeout    time.Duration
	AccessFile     string
	// Access is the policy: the access file's, with --allow-uid and
	// --allow-gid added to its allowlists.
	Access sockapi.Access
}

// serverOptions sets the limits and the policy in o.
func (c *SecurityConfig) serverOptions(o sockapi.Options) sockapi.Options {
	o.MaxConns = c.MaxConns
	o.MaxConnsPerUID = c.MaxConnsPerUID
	o.MaxInflight = c.MaxInflight
	o.IdleTimeout = c.IdleTimeout
	o.Access = c.Access
	return o
}

// securityFlags holds serve's security flags as given: each is checked
// by config, after parsing, so that every bad value is a usage error (exit
// status 2) naming the flag or variable.
type securityFlags struct {
	values map[string]*flagValue
	uids   *idList
	gids   *idList
}

// flagValue is a flag's text and where it came from.
type flagValue struct {
	env, text string
	fromFlag  bool
}

func (v *flagValue) name(flagName string) string {
	if v.fromFlag {
		return "--" + flagName
	}
	return v.env
}

// idList is a repeatable flag of uids or gids, each occurrence a comma
// list; given on the command line, it replaces its variable's list.
type idList struct {
	env      string
	texts    []string
	fromFlag bool
}

func (l *idList) add(s string) error {
	if !l.fromFlag {
		l.fromFlag, l.texts = true, nil
	}
	l.texts = append(l.texts, s)
	return nil
}

// addSecurityFlags registers serve's access and limit flags on fs. Each has
// a TAI_* variable that sets its default; getenv reads them.
func addSecurityFlags(fs *flag.FlagSet, getenv func(string) string) *securityFlags {
	f := &securityFlags{values: make(map[string]*flagValue)}
	str := func(name, env, def, usage string) {
		v := &flagValue{env: env, text: def}
		if e := getenv(env); e != "" {
			v.text = e
		}
		f.values[name] = v
		fs.Func(name, fmt.Sprintf("%s (env %s; default %s)", usage, env, def), func(s string) error {
			v.text, v.fromFlag = s, true
			return nil
		})
	}
	str("max-conns", "TAI_MAX_CONNS", strconv.Itoa(defaultMaxConns), "most open connections")
	str("max-conns-per-uid", "TAI_MAX_CONNS_PER_UID", strconv.Itoa(defaultMaxConnsPerUID), "most open connections of one peer uid, at most --max-conns")
	str("max-inflight", "TAI_MAX_INFLIGHT", strconv.Itoa(defaultMaxInflight), "most writes running at once on one connection")
	str("idle-timeout", "TAI_IDLE_TIMEOUT", defaultIdleTimeout.String(), "close a connection that sent no request, or took no reply, for this long (1s to 24h)")
	str("access-file", "TAI_ACCESS_FILE", "", "JSON file with the access policy: allowlists and per-governor rights (see docs/security.md)")
	ids := func(name, env, usage string) *idList {
		l := &idList{env: env}
		if e := getenv(env); e != "" {
			l.texts = []string{e}
		}
		fs.Func(name, usage+" (repeatable or a comma list; env "+env+")", l.add)
		return l
	}
	f.uids = ids("allow-uid", "TAI_ALLOW_UIDS", "peer uid allowed to connect; none given: any peer that can open the socket")
	f.gids = ids("allow-gid", "TAI_ALLOW_GIDS", "peer primary gid allowed to connect")
	return f
}

// config checks the flags' values and loads the access file. Its errors
// are *usageError.
func (f *securityFlags) config() (SecurityConfig, error) {
	var c SecurityConfig
	bad := func(flagName string, format string, args ...any) error {
		v := f.values[flagName]
		return &usageError{fmt.Sprintf("serve: %s %q: %s", v.name(flagName), v.text, fmt.Sprintf(format, args...))}
	}
	intIn := func(flagName string, lo, hi int) (int, error) {
		n, err := strconv.Atoi(f.values[flagName].text)
		if err != nil {
			return 0, bad(flagName, "not an integer")
		}
		if n < lo || n > hi {
			return 0, bad(flagName, "out of range [%d, %d]", lo, hi)
		}
		return n, nil
	}
	var err error
	if c.MaxConns, err = intIn("max-conns", 1, maxMaxConns); err != nil {
		return c, err
	}
	if c.MaxConnsPerUID, err = intIn("max-conns-per-uid", 1, maxMaxConns); err != nil {
		return c, err
	}
	if c.MaxConnsPerUID > c.MaxConns {
		if v := f.values["max-conns-per-uid"]; v.fromFlag || v.text != strconv.Itoa(defaultMaxConnsPerUID) {
			return c, bad("max-conns-per-uid", "above --max-conns %d", c.MaxConns)
		}
		c.MaxConnsPerUID = c.MaxConns // the default follows a lower --max-conns
	}
	if c.MaxInflight, err = intIn("max-inflight", 1, maxMaxInflight); err != nil {
		return c, err
	}
	d, err := time.ParseDuration(f.values["idle-timeout"].text)
	if err != nil {
		return c, bad("idle-timeout", "not a duration (e.g. 5m, 90s)")
	}
	if d < minIdleTimeout || d > maxIdleTimeout {
		return c, bad("idle-timeout", "out of range [%v, %v]", minIdleTimeout, maxIdleTimeout)
	}
	c.IdleTimeout = d
	if c.AccessFile = f.values["access-file"].text; c.AccessFile != "" {
		a, err := loadAccess(c.AccessFile)
		if err != nil {
			return c, &usageError{fmt.Sprintf("serve: %s: %v", f.values["access-file"].name("access-file"), err)}
		}
		c.Access = a
	}
	for _, l := range []struct {
		list *idList
		flag string
		dst  *[]uint32
	}{{f.uids, "--allow-uid", &c.Access.AllowUIDs}, {f.gids, "--allow-gid", &c.Access.AllowGIDs}} {
		name := l.flag
		if !l.list.fromFlag {
			name = l.list.env
		}
		ids, err := parseIDs(l.list.texts)
		if err != nil {
			return c, &usageError{fmt.Sprintf("serve: %s: %v", name, err)}
		}
		for _, id := range ids {
			if !slices.Contains(*l.dst, id) {
				*l.dst = append(*l.dst, id)
			}
		}
	}
	return c, nil
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
	for _, l := range [][]uint32{a.AllowUIDs, a.AllowGIDs, a.Admin} {
		if slices.Contains(l, 1<<32-1) {
			return sockapi.Access{}, errors.New("4294967295 is not a uid or gid")
		}
	}
	return a, nil
}
