package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// cliCommand is one client subcommand.
type cliCommand struct {
	args  string // positional arguments, for usage
	nargs int    // how many positionals it takes
	// optional is how many more positionals it may take after nargs.
	optional int
	help     string
	// flags declares the subcommand's flags on fs and returns the function
	// that runs it with its positional arguments.
	flags func(fs *flag.FlagSet) func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error
}

// cliCommands returns the client subcommands by name.
func cliCommands() map[string]cliCommand {
	return map[string]cliCommand{
		"get":    {args: "GOV STATE", nargs: 2, help: "print a state as JSON", flags: getFlags},
		"put":    {args: "GOV STATE VALUE", nargs: 3, help: "store VALUE, a JSON document, as msgpack", flags: putFlags},
		"delete": {args: "GOV STATE", nargs: 2, help: "delete a state", flags: deleteFlags},
		"list":   {args: "GOV", nargs: 1, help: "print a governor's states as JSON lines", flags: listFlags},
		"stats":  {nargs: 0, help: "print the sidecar's statistics as JSON", flags: statsFlags},
		"ping":   {nargs: 0, help: "check that the sidecar answers", flags: pingFlags},
		"watch": {args: "GOV", nargs: 1, help: "print every change of a governor's states as JSON lines, until interrupted",
			flags: watchFlags},
		"pending": {nargs: 0, help: "print the journal (changes not yet in the shared store) as JSON", flags: pendingFlags},
		"failed":  {nargs: 0, help: "print the changes the shared store rejected for good as JSON lines", flags: failedFlags},
		"flush": {nargs: 0, help: "wait until every change written so far is in the shared store",
			flags: flushFlags},
		"events": {args: "GOV [STATE]", nargs: 1, optional: 1,
			help: "print the local event log of a governor (or of one state) as JSON lines", flags: eventsFlags},
		"state-at": {args: "GOV STATE", nargs: 2, help: "print a state as it was at a time (--at) or a version (--version)",
			flags: stateAtFlags},
		"validate": {args: "GOV [STATE]", nargs: 1, optional: 1,
			help: "check the local event log and records; exit status 1 when a rule is broken", flags: validateFlags},
		"history": {args: "export GOV", nargs: 2, help: "print every event of a governor as JSON lines, in the export format",
			flags: historyFlags},
		"lock": {args: "acquire|release|extend|status RES [TOKEN]", nargs: 2, optional: 1,
			help: "take, release, extend or describe a lock (cli_locks.go)", flags: lockFlags},
		"conflicts": {args: "GOV", nargs: 1,
			help: "print the conflict ledger of a governor (conflicts this sidecar settled) as JSON lines", flags: conflictsFlags},
		// cli_txn.go
		"txn": {args: "[OPS|-]", optional: 1,
			help:  "run one transaction of OPS, a JSON array of {op, governor, state, value, if_version, if_absent, exists} (- or none: standard input)",
			flags: txnFlags},
		"txlog": {help: "print the transaction log as JSON lines", flags: txlogFlags},
		// cli_resolver.go
		"resolver": {args: "GOV", nargs: 1,
			help:  "decide the conflicts of a governor delegated to an app (--resolvers GOV=app:FALLBACK) with --exec COMMAND, until interrupted; print each decision as a JSON line",
			flags: resolverFlags},
		// cli_snapshots.go
		"snapshot": {args: "GOV [STATE]", nargs: 1, optional: 1,
			help: "take a snapshot of a state, or of every live state of a governor", flags: snapshotFlags},
		"transition": {args: "GOV STATE", nargs: 2,
			help: "move a state machine from --from to --to, named --action (one compare-and-set)", flags: transitionFlags},
		"cleanup": {args: "GOV [STATE]", nargs: 1, optional: 1,
			help: "remove old local history by --max-age and/or --keep-events; print what was removed", flags: cleanupFlags},
		"replay": {args: "GOV [STATE]", nargs: 1, optional: 1,
			help: "print the retained history (starting snapshots, then events) as JSON lines", flags: replayFlags},
	}
}

// runCLI runs one client subcommand against the sidecar at socket.
//
// args[0] names the subcommand; flags may come before, between or after its
// positional arguments. Results are printed to stdout as JSON (one object,
// or one object per line for list). The returned error is one line: a
// *usageError for a bad command line, otherwise a description of what went
// wrong that still matches the client's errors with errors.Is and errors.As.
func runCLI(ctx context.Context, socket string, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"no command given"}
	}
	name := args[0]
	cmd, ok := cliCommands()[name]
	if !ok {
		return &usageError{fmt.Sprintf("unknown command %q (want get, put, delete, list, watch, stats, pending, failed, flush, events, state-at, validate, history, snapshot, transition, cleanup, replay, lock, conflicts, txn, txlog, resolver, ping or serve; see tai-sidecar help)", name)}
	}
	fs := flag.NewFlagSet("tai-sidecar "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	run := cmd.flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tai-sidecar %s %s [flags]\n  %s\n", name, cmd.args, cmd.help)
		fs.PrintDefaults()
	}
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{name + ": " + err.Error() + " (see tai-sidecar " + name + " -h)"}
	}
	if len(pos) < cmd.nargs || len(pos) > cmd.nargs+cmd.optional {
		want := strconv.Itoa(cmd.nargs)
		if cmd.optional > 0 {
			want = fmt.Sprintf("%d to %d", cmd.nargs, cmd.nargs+cmd.optional)
		}
		return &usageError{strings.TrimSpace(fmt.Sprintf("usage: tai-sidecar %s %s", name, cmd.args)) +
			fmt.Sprintf(" (got %d arguments, want %s)", len(pos), want)}
	}

	c := &client.Client{Socket: socket, Conns: 1, Name: "tai-sidecar-cli/" + version}
	defer c.Close()
	out := json.NewEncoder(stdout)
	out.SetEscapeHTML(false)
	if err := run(ctx, c, pos, out); err != nil {
		return describeError(err, socket)
	}
	return nil
}

// parseArgs parses fs's flags wherever they appear in args and returns the
// positional arguments in order. "--" ends the flags. A negative number
// ("-5", "-1.5e3") is a positional argument, not a flag, so that it can be
// a VALUE.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case len(a) < 2 || a[0] != '-' || json.Valid([]byte(a)):
			pos = append(pos, a)
		default:
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			f := fs.Lookup(name)
			if f == nil {
				continue // fs.Parse reports it
			}
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				continue
			}
			if i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	if err := parseQuietly(fs, flags); err != nil {
		return nil, err
	}
	return append(pos, fs.Args()...), nil
}

// optUint64 is a flag that records whether it was set.
type optUint64 struct {
	v   uint64
	set bool
}

func (o *optUint64) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.v, 10)
}

func (o *optUint64) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return errors.New("not a version number")
	}
	o.v, o.set = v, true
	return nil
}

// writeFlags declares the flags every write takes and returns a function
// that builds its options (a usageError for flags that contradict each
// other).
func writeFlags(fs *flag.FlagSet, absent bool) func() ([]client.WriteOption, error) {
	ifVersion := new(optUint64)
	fs.Var(ifVersion, "if-version", "write only if the state's current version is `N` (0: only if it does not exist)")
	var ifAbsent *bool
	if absent {
		ifAbsent = fs.Bool("if-absent", false, "write only if the state does not exist")
	}
	actor := fs.String("actor", "", "who makes the change")
	reason := fs.String("reason", "", "why the change is made")
	synced := fs.Bool("sync", false, "answer only once the shared store has the change (consistency sync)")
	strong := fs.Bool("strong", false, "compare-and-set against the shared store: check the preconditions there and answer once it has the change (consistency strong)")
	syncTimeout := fs.Duration("sync-timeout", 0, "with --sync or --strong, how long to wait for the shared store (0: the sidecar's default)")
	fence := new(fenceFlag) // cli_fence.go
	fs.Var(fence, "fence", "write under the lock grant `RES:TOKEN` (lock resource and fencing token): rejected with FenceRejected if the lock was granted again since")
	return func() ([]client.WriteOption, error) {
		if *synced && *strong {
			return nil, &usageError{"--sync and --strong are two consistency levels: give one"}
		}
		var opts []client.WriteOption
		if *synced {
			opts = append(opts, client.Synced(*syncTimeout))
		}
		if *strong {
			opts = append(opts, client.StrongWrite(*syncTimeout))
		}
		if ifVersion.set {
			opts = append(opts, client.IfVersion(ifVersion.v))
		}
		if ifAbsent != nil && *ifAbsent {
			opts = append(opts, client.IfAbsent())
		}
		if *actor != "" {
			opts = append(opts, client.Actor(*actor))
		}
		if *reason != "" {
			opts = append(opts, client.Reason(*reason))
		}
		if o := fence.option(); o != nil {
			opts = append(opts, o)
		}
		return opts, nil
	}
}

func getFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	level := fs.String("consistency", "local", "`LEVEL` of the read: local, bounded (with --max-staleness) or strong")
	staleness := fs.Duration("max-staleness", 0, "how old the local copy may be, e.g. 500ms (implies --consistency bounded)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		levelSet, stalenessSet := false, false
		fs.Visit(func(f *flag.Flag) {
			levelSet = levelSet || f.Name == "consistency"
			stalenessSet = stalenessSet || f.Name == "max-staleness"
		})
		if stalenessSet {
			switch {
			case !levelSet:
				*level = wire.ReadBounded
			case *level != wire.ReadBounded:
				return &usageError{fmt.Sprintf("get: --max-staleness applies to --consistency bounded, not %s", *level)}
			}
		}
		var opts []client.ReadOption
		switch *level {
		case wire.ReadLocal:
		case wire.ReadBounded:
			if *staleness <= 0 {
				return &usageError{"get: --consistency bounded needs --max-staleness, e.g. 1s"}
			}
			opts = append(opts, client.Bounded(*staleness))
		case wire.ReadStrong:
			opts = append(opts, client.Strong())
		default:
			return &usageError{fmt.Sprintf("get: --consistency %q: want local, bounded or strong", *level)}
		}
		rec, err := c.Get(ctx, pos[0], pos[1], opts...)
		if err != nil {
			return err
		}
		return printRecord(out, rec)
	}
}

func putFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	writeOpts := writeFlags(fs, true)
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		opts, err := writeOpts()
		if err != nil {
			return err
		}
		value, err := jsonToMsgpack([]byte(pos[2]))
		if err != nil {
			msg := "put: VALUE: " + err.Error()
			if v := strings.TrimSpace(pos[2]); v != "" && !json.Valid([]byte(v)) && !strings.ContainsRune(`{["-0123456789`, rune(v[0])) {
				msg += ` (VALUE is JSON: quote text, as in '"text"')`
			}
			return &usageError{msg}
		}
		rec, err := c.PutRaw(ctx, pos[0], pos[1], value, opts...)
		if err != nil {
			return err
		}
		return printRecord(out, rec)
	}
}

func deleteFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	writeOpts := writeFlags(fs, false)
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		opts, err := writeOpts()
		if err != nil {
			return err
		}
		rec, err := c.Delete(ctx, pos[0], pos[1], opts...)
		if err != nil {
			return err
		}
		return printRecord(out, rec)
	}
}

func listFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	prefix := fs.String("prefix", "", "list only states whose name starts with `P`")
	limit := fs.Int("limit", 0, "print at most `N` states (0: all)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *limit < 0 {
			return &usageError{"list: --limit must not be negative"}
		}
		page := wire.MaxListLimit
		if *limit > 0 {
			page = min(*limit, page)
		}
		n := 0
		for rec, err := range c.ListAll(ctx, pos[0], client.ListOptions{Prefix: *prefix, Limit: page}) {
			if err != nil {
				return err
			}
			if err := printRecord(out, rec); err != nil {
				return err
			}
			if n++; n == *limit {
				break
			}
		}
		return nil
	}
}

func watchFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	prefix := fs.String("prefix", "", "watch only states whose name starts with `P`")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		w, err := c.Watch(ctx, pos[0], *prefix)
		if err != nil {
			return err
		}
		defer w.Close()
		for ch := range w.Changes() {
			remote := ch.Remote
			if err := printRecordAs(out, &ch.Record, &remote); err != nil {
				return err
			}
		}
		if ctx.Err() != nil {
			return nil // interrupted
		}
		return w.Err()
	}
}

func pendingFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	after := fs.Uint64("after", 0, "list the waiting changes after the one with journal sequence number `SEQ`")
	limit := fs.Int("limit", 0, "list at most `N` waiting changes (0: the sidecar's default, 100)")
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		p, err := c.PendingPage(ctx, *after, *limit)
		if err != nil {
			return err
		}
		return printProtocolJSON(out, p)
	}
}

func failedFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	after := fs.Uint64("after", 0, "start after the entry with journal sequence number `SEQ`")
	limit := fs.Int("limit", 0, "print at most `N` entries (0: all)")
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		if *limit < 0 {
			return &usageError{"failed: --limit must not be negative"}
		}
		n, next := 0, *after
		for {
			page := 1000
			if *limit > 0 {
				page = min(*limit-n, page)
			}
			entries, nxt, err := c.Failed(ctx, next, page)
			if err != nil {
				return err
			}
			for _, f := range entries {
				if err := printProtocolJSON(out, f); err != nil {
					return err
				}
				n++
			}
			if nxt == 0 || (*limit > 0 && n >= *limit) {
				return nil
			}
			next = nxt
		}
	}
}

// printProtocolJSON prints v, a wire type, as one JSON object whose keys are
// the protocol's field names (rendered through msgpack, canonical order).
func printProtocolJSON(out *json.Encoder, v any) error {
	h := wire.NewHandle()
	h.Canonical = true
	var b []byte
	if err := codec.NewEncoderBytes(&b, h).Encode(v); err != nil {
		return err
	}
	j, err := msgpackToJSON(b)
	if err != nil {
		return err
	}
	return out.Encode(json.RawMessage(j))
}

func statsFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		// The JSON keys are the protocol's field names, new fields included.
		return printProtocolJSON(out, st)
	}
}

func pingFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		h, err := c.Hello(ctx) // connect first, so the round trip excludes the dial
		if err != nil {
			return err
		}
		start := time.Now()
		if err := c.Ping(ctx); err != nil {
			return err
		}
		rtt := time.Since(start)
		return out.Encode(struct {
			OK       bool    `json:"ok"`
			RTTMs    float64 `json:"rtt_ms"`
			Server   string  `json:"server"`
			NodeID   string  `json:"node_id"`
			Protocol uint32  `json:"protocol"`
		}{true, float64(rtt.Microseconds()) / 1000, h.Server, h.NodeID, h.Version})
	}
}

// recordJSON is how the CLI prints a record.
type recordJSON struct {
	Governor  string          `json:"governor"`
	State     string          `json:"state"`
	Value     json.RawMessage `json:"value,omitempty"`
	Version   uint64          `json:"version"`
	Deleted   bool            `json:"deleted,omitempty"`
	UpdatedAt string          `json:"updated_at"`
	Change    changeJSON      `json:"change"`
	FromCache bool            `json:"from_cache"`
	Pending   bool            `json:"pending"`
	SyncedAt  string          `json:"synced_at,omitempty"`
	AgeMS     *uint64         `json:"age_ms,omitempty"`
	Stale     bool            `json:"stale,omitempty"`
	Remote    *bool           `json:"remote,omitempty"` // watch only
}

type changeJSON struct {
	Actor  string `json:"actor"`
	Reason string `json:"reason"`
	Time   string `json:"time"`
}

func printRecord(out *json.Encoder, rec *client.Record) error {
	return printRecordAs(out, rec, nil)
}

// printRecordAs prints rec, with remote (a watched change) when not nil.
func printRecordAs(out *json.Encoder, rec *client.Record, remote *bool) error {
	r := recordJSON{
		Governor:  rec.Governor,
		State:     rec.State,
		Version:   rec.Version,
		Deleted:   rec.Deleted,
		UpdatedAt: formatNanos(rec.UpdatedAt),
		Change: changeJSON{
			Actor:  rec.Change.Actor,
			Reason: rec.Change.Reason,
			Time:   formatNanos(rec.Change.Time),
		},
		FromCache: rec.FromCache,
		Pending:   rec.Pending,
		AgeMS:     rec.AgeMS,
		Stale:     rec.Stale,
		Remote:    remote,
	}
	if rec.SyncedAt != 0 {
		r.SyncedAt = formatNanos(rec.SyncedAt)
	}
	if len(rec.Value) > 0 {
		v, err := msgpackToJSON(rec.Value)
		if err != nil {
			return fmt.Errorf("render value of %s/%s: %w", rec.Governor, rec.State, err)
		}
		r.Value = v
	}
	return out.Encode(r)
}

func formatNanos(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// cliError is a one-line description of a failed command that keeps the
// underlying error for errors.Is and errors.As.
type cliError struct {
	msg string
	err error
}

func (e *cliError) Error() string { return e.msg }
func (e *cliError) Unwrap() error { return e.err }

// describeError turns a client error into one line for the terminal.
func describeError(err error, socket string) error {
	var ue *usageError
	if errors.As(err, &ue) {
		return err
	}
	var msg string
	var ce *client.ConnError
	var we *client.Error
	switch {
	case errors.As(err, &ce):
		cause := ce.Err
		var oe *net.OpError
		if errors.As(cause, &oe) && oe.Err != nil {
			cause = oe.Err
		}
		if ce.Op == "dial" {
			msg = fmt.Sprintf("no sidecar at %s: %v", socket, cause)
		} else {
			msg = fmt.Sprintf("lost the connection to the sidecar at %s (%s): %v", socket, ce.Op, cause)
		}
	case errors.As(err, &we):
		key := we.Governor + "/" + we.State
		if we.State == "" {
			key = we.Governor
		}
		switch we.Code {
		case wire.CodeNotFound:
			msg = "not found: " + key
		case wire.CodeVersionConflict:
			want, got := "expected no state", "found none"
			if we.Expected != nil && *we.Expected != 0 {
				want = fmt.Sprintf("expected version %d", *we.Expected)
			}
			if we.Actual != nil && *we.Actual != 0 {
				got = fmt.Sprintf("actual %d", *we.Actual)
			}
			msg = fmt.Sprintf("version conflict on %s: %s, %s", key, want, got)
		default:
			msg = we.Error()
		}
	default:
		msg = err.Error()
	}
	return &cliError{msg: strings.Join(strings.Fields(msg), " "), err: err}
}

// maxValueNesting is how many maps and arrays a put value may nest: the
// protocol's depth limit less the request map and the value's last level.
const maxValueNesting = wire.MaxDepth - 2

// jsonToMsgpack converts one JSON document to the equivalent msgpack
// document: objects become maps (keeping their key order), arrays arrays,
// strings str, booleans and null themselves. A number written as an integer
// becomes a msgpack integer when it fits in int64 or uint64; every other
// number becomes a float64.
func jsonToMsgpack(data []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readJSON(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: more than one value")
	}
	if v == nil {
		return nil, errors.New("null is not a storable value")
	}
	return wire.Marshal(v)
}

// orderedMap is a JSON object as alternating keys and values; the codec
// writes it as a msgpack map in that order.
type orderedMap []any

// MapBySlice marks orderedMap for the codec.
func (orderedMap) MapBySlice() {}

func readJSON(dec *json.Decoder, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			err = errors.New("empty document")
		}
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth == maxValueNesting {
			return nil, fmt.Errorf("nests more than %d objects and arrays", maxValueNesting)
		}
		if t == '[' {
			arr := []any{}
			for dec.More() {
				v, err := readJSON(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := dec.Token() // ']'
			return arr, err
		}
		m := orderedMap{}
		seen := make(map[string]bool)
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("invalid JSON: %w", err)
			}
			k := kt.(string) // the decoder only yields string keys here
			if seen[k] {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			seen[k] = true
			v, err := readJSON(dec, depth+1)
			if err != nil {
				return nil, err
			}
			m = append(m, k, v)
		}
		_, err := dec.Token() // '}'
		return m, err
	case json.Number:
		return jsonNumber(t)
	default: // string, bool, nil
		return t, nil
	}
}

// jsonNumber converts a JSON number: integers to int64 (or uint64 when only
// that fits), anything else to float64.
func jsonNumber(n json.Number) (any, error) {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i, nil
		}
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return u, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("number %s is out of range", s)
	}
	return f, nil
}

// msgpackToJSON renders one msgpack document as JSON, keeping map order.
// JSON has no counterpart for some msgpack values, so:
//   - bin is a base64 string (standard alphabet, padded);
//   - a map key that is not a str is its JSON rendering as a string (1 ->
//     "1", true -> "true", [1,2] -> "[1,2]");
//   - a float with an integral value keeps a ".0" (2.0), so that putting the
//     output back stores a float again; NaN and infinities are the strings
//     "NaN", "+Inf" and "-Inf";
//   - the msgpack timestamp extension (type -1) is an RFC 3339 string in UTC;
//     any other extension is {"ext": TYPE, "data": BASE64}.
func msgpackToJSON(b []byte) ([]byte, error) {
	r := &mpReader{b: b}
	var out bytes.Buffer
	if err := r.value(&out, 0); err != nil {
		return nil, err
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("msgpack: %d bytes after the document", len(b)-r.off)
	}
	return out.Bytes(), nil
}

// mpReader walks a msgpack document.
type mpReader struct {
	b   []byte
	off int
}

var errTruncated = errors.New("msgpack: truncated document")

func (r *mpReader) next(n int) ([]byte, error) {
	if n < 0 || len(r.b)-r.off < n {
		return nil, errTruncated
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

// uint reads an n-byte big-endian unsigned integer.
func (r *mpReader) uint(n int) (uint64, error) {
	p, err := r.next(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// length reads an n-byte length.
func (r *mpReader) length(n int) (int, error) {
	v, err := r.uint(n)
	if err != nil {
		return 0, err
	}
	if v > uint64(len(r.b)) {
		return 0, errTruncated // no length can exceed the document
	}
	return int(v), nil
}

func (r *mpReader) value(out *bytes.Buffer, depth int) error {
	if depth > wire.MaxDepth {
		return fmt.Errorf("msgpack: nested deeper than %d", wire.MaxDepth)
	}
	p, err := r.next(1)
	if err != nil {
		return err
	}
	c := p[0]
	switch {
	case c <= 0x7f:
		out.WriteString(strconv.Itoa(int(c)))
		return nil
	case c >= 0xe0:
		out.WriteString(strconv.Itoa(int(int8(c))))
		return nil
	case c >= 0x80 && c <= 0x8f:
		return r.mapBody(out, int(c&0x0f), depth)
	case c >= 0x90 && c <= 0x9f:
		return r.arrayBody(out, int(c&0x0f), depth)
	case c >= 0xa0 && c <= 0xbf:
		return r.str(out, int(c&0x1f))
	}
	switch c {
	case 0xc0:
		out.WriteString("null")
	case 0xc2:
		out.WriteString("false")
	case 0xc3:
		out.WriteString("true")
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		n, err := r.length(1 << (c - 0xc4))
		if err != nil {
			return err
		}
		data, err := r.next(n)
		if err != nil {
			return err
		}
		writeJSONString(out, base64.StdEncoding.EncodeToString(data))
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32
		n, err := r.length(1 << (c - 0xc7))
		if err != nil {
			return err
		}
		return r.ext(out, n)
	case 0xca:
		v, err := r.uint(4)
		if err != nil {
			return err
		}
		writeFloat(out, float64(math.Float32frombits(uint32(v))), 32)
	case 0xcb:
		v, err := r.uint(8)
		if err != nil {
			return err
		}
		writeFloat(out, math.Float64frombits(v), 64)
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		v, err := r.uint(1 << (c - 0xcc))
		if err != nil {
			return err
		}
		out.WriteString(strconv.FormatUint(v, 10))
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		n := 1 << (c - 0xd0)
		v, err := r.uint(n)
		if err != nil {
			return err
		}
		shift := 64 - 8*n // sign-extend
		out.WriteString(strconv.FormatInt(int64(v<<shift)>>shift, 10))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16
		return r.ext(out, 1<<(c-0xd4))
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		n, err := r.length(1 << (c - 0xd9))
		if err != nil {
			return err
		}
		return r.str(out, n)
	case 0xdc, 0xdd: // array 16/32
		n, err := r.length(2 << (c - 0xdc))
		if err != nil {
			return err
		}
		return r.arrayBody(out, n, depth)
	case 0xde, 0xdf: // map 16/32
		n, err := r.length(2 << (c - 0xde))
		if err != nil {
			return err
		}
		return r.mapBody(out, n, depth)
	default: // 0xc1 is never used
		return fmt.Errorf("msgpack: invalid type byte 0x%02x", c)
	}
	return nil
}

func (r *mpReader) str(out *bytes.Buffer, n int) error {
	p, err := r.next(n)
	if err != nil {
		return err
	}
	writeJSONString(out, string(p))
	return nil
}

func (r *mpReader) arrayBody(out *bytes.Buffer, n, depth int) error {
	out.WriteByte('[')
	for i := range n {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := r.value(out, depth+1); err != nil {
			return err
		}
	}
	out.WriteByte(']')
	return nil
}

func (r *mpReader) mapBody(out *bytes.Buffer, n, depth int) error {
	out.WriteByte('{')
	var key bytes.Buffer
	for i := range n {
		if i > 0 {
			out.WriteByte(',')
		}
		if r.off >= len(r.b) {
			return errTruncated
		}
		if c := r.b[r.off]; c >= 0xa0 && c <= 0xbf || c >= 0xd9 && c <= 0xdb {
			if err := r.value(out, depth+1); err != nil { // a str key
				return err
			}
		} else {
			key.Reset()
			if err := r.value(&key, depth+1); err != nil {
				return err
			}
			if k := key.Bytes(); k[0] == '"' {
				out.Write(k) // rendered as a string already (bin, timestamp)
			} else {
				writeJSONString(out, key.String())
			}
		}
		out.WriteByte(':')
		if err := r.value(out, depth+1); err != nil {
			return err
		}
	}
	out.WriteByte('}')
	return nil
}

func (r *mpReader) ext(out *bytes.Buffer, n int) error {
	p, err := r.next(1 + n)
	if err != nil {
		return err
	}
	typ, data := int8(p[0]), p[1:]
	if typ == -1 {
		if t, ok := msgpackTimestamp(data); ok {
			writeJSONString(out, t.UTC().Format(time.RFC3339Nano))
			return nil
		}
	}
	fmt.Fprintf(out, `{"ext":%d,"data":`, typ)
	writeJSONString(out, base64.StdEncoding.EncodeToString(data))
	out.WriteByte('}')
	return nil
}

// msgpackTimestamp decodes the body of a timestamp extension.
func msgpackTimestamp(d []byte) (time.Time, bool) {
	switch len(d) {
	case 4:
		return time.Unix(int64(binary.BigEndian.Uint32(d)), 0), true
	case 8:
		v := binary.BigEndian.Uint64(d)
		return time.Unix(int64(v&(1<<34-1)), int64(v>>34)), true
	case 12:
		return time.Unix(int64(binary.BigEndian.Uint64(d[4:])), int64(binary.BigEndian.Uint32(d[:4]))), true
	}
	return time.Time{}, false
}

func writeFloat(out *bytes.Buffer, f float64, bits int) {
	switch {
	case math.IsNaN(f):
		out.WriteString(`"NaN"`)
	case math.IsInf(f, 1):
		out.WriteString(`"+Inf"`)
	case math.IsInf(f, -1):
		out.WriteString(`"-Inf"`)
	default:
		s := strconv.FormatFloat(f, 'g', -1, bits)
		out.WriteString(s)
		if !strings.ContainsAny(s, ".eE") {
			out.WriteString(".0")
		}
	}
}

// writeJSONString writes s as a JSON string, without escaping HTML
// characters. Invalid UTF-8 becomes U+FFFD.
func writeJSONString(out *bytes.Buffer, s string) {
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	enc.Encode(s)               // a string always encodes
	out.Truncate(out.Len() - 1) // Encode's newline
}

func flushFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	timeout := fs.Duration("timeout", 0, "wait at most `D` (0: the sidecar's default)")
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		if *timeout < 0 {
			return &usageError{"flush: --timeout must not be negative"}
		}
		seq, err := c.Flush(ctx, *timeout)
		if err != nil {
			return err
		}
		return out.Encode(struct {
			FlushedSeq uint64 `json:"flushed_seq"`
		}{seq})
	}
}

// timeFlag is an RFC 3339 time flag; the zero time when not set.
type timeFlag struct{ t time.Time }

func (f *timeFlag) String() string {
	if f.t.IsZero() {
		return ""
	}
	return f.t.Format(time.RFC3339Nano)
}

func (f *timeFlag) Set(s string) error {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("want an RFC 3339 time such as 2030-01-02T15:04:05Z: %w", err)
	}
	f.t = t
	return nil
}

func eventsFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	var from, to timeFlag
	fs.Var(&from, "from", "only changes at or after `T` (RFC 3339)")
	fs.Var(&to, "to", "only changes before `T` (RFC 3339)")
	action := fs.String("action", "", "only `A` events: put, delete, or a transition's action")
	limit := fs.Int("limit", 0, "print at most `N` events (0: all)")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if *limit < 0 {
			return &usageError{"events: --limit must not be negative"}
		}
		opts := client.EventsOptions{From: from.t, To: to.t, Action: *action, Limit: localcache.MaxEventLimit}
		if len(pos) > 1 {
			opts.State = pos[1]
		}
		if *limit > 0 {
			opts.Limit = min(*limit, opts.Limit)
		}
		return printEvents(ctx, c, pos[0], opts, *limit, out)
	}
}

func historyFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		if pos[0] != "export" {
			return &usageError{fmt.Sprintf("history: unknown subcommand %q (want export)", pos[0])}
		}
		return printEvents(ctx, c, pos[1], client.EventsOptions{Limit: localcache.MaxEventLimit}, 0, out)
	}
}

// printEvents prints the events opts selects, every page, at most limit of
// them (0: all), as the lines localcache.Store.Export writes.
func printEvents(ctx context.Context, c *client.Client, gov string, opts client.EventsOptions, limit int, out *json.Encoder) error {
	conv := localcache.NewJSONValues()
	n := 0
	for e, err := range c.EventsAll(ctx, gov, opts) {
		if err != nil {
			return err
		}
		if err := out.Encode(exportedEvent(e, conv)); err != nil {
			return err
		}
		if n++; n == limit {
			break
		}
	}
	return nil
}

// exportedEvent converts an event of the events reply to the shape of an
// export line, as localcache.Export writes it.
func exportedEvent(e *wire.Event, conv *localcache.JSONValues) localcache.ExportedEvent {
	return localcache.ExportEvent(localcache.Event{
		Key:         localcache.Key{Governor: e.Governor, State: e.State},
		Action:      e.Action,
		FromVersion: e.FromVersion,
		ToVersion:   e.Version,
		Value:       e.Value,
		Change:      localcache.Change{Actor: e.Change.Actor, Reason: e.Change.Reason, Time: e.Change.Time},
		Origin:      e.Origin,
		OpID:        e.OpID,
		Clock:       localcache.Clock{Lamport: e.Clock.Lamport, HLC: e.Clock.HLC, Vector: e.Clock.Vector},
	}, conv)
}

// pastJSON is how state-at prints a past state.
type pastJSON struct {
	Governor       string          `json:"governor"`
	State          string          `json:"state"`
	Value          json.RawMessage `json:"value,omitempty"`
	Version        uint64          `json:"version"`
	UpdatedAt      string          `json:"updated_at"`
	Change         changeJSON      `json:"change"`
	Origin         string          `json:"origin,omitempty"`
	OpID           string          `json:"op_id,omitempty"`
	Exact          bool            `json:"exact"`
	UnknownThrough uint64          `json:"unknown_through,omitempty"`
}

func stateAtFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	var at timeFlag
	fs.Var(&at, "at", "the state as it was at `T` (RFC 3339)")
	var ver optUint64
	fs.Var(&ver, "version", "the state as it was at version `N`")
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		var (
			p   *wire.PastState
			err error
		)
		switch {
		case at.t.IsZero() == !ver.set:
			return &usageError{"state-at: give exactly one of --at and --version"}
		case ver.set:
			p, err = c.StateAtVersion(ctx, pos[0], pos[1], ver.v)
		default:
			p, err = c.StateAt(ctx, pos[0], pos[1], at.t)
		}
		if err != nil {
			return err
		}
		r := &p.Record
		pj := pastJSON{
			Governor: r.Governor, State: r.State, Version: r.Version, UpdatedAt: formatNanos(r.UpdatedAt),
			Change: changeJSON{Actor: r.Change.Actor, Reason: r.Change.Reason, Time: formatNanos(r.Change.Time)},
			Origin: r.Origin, OpID: p.OpID, Exact: p.Exact, UnknownThrough: p.UnknownThrough,
		}
		if len(r.Value) > 0 {
			if pj.Value, err = msgpackToJSON(r.Value); err != nil {
				return fmt.Errorf("render value of %s/%s: %w", r.Governor, r.State, err)
			}
		}
		return out.Encode(pj)
	}
}

func validateFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		state := ""
		if len(pos) > 1 {
			state = pos[1]
		}
		rep, err := c.Validate(ctx, pos[0], state)
		if err != nil {
			return err
		}
		if err := printProtocolJSON(out, rep); err != nil {
			return err
		}
		if !rep.OK {
			return fmt.Errorf("validate: %d violations found", rep.ViolationCount)
		}
		return nil
	}
}
