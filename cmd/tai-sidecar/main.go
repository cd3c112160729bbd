// Command tai-sidecar is the tai-state daemon and its command-line client.
//
//	tai-sidecar serve [flags]          run the sidecar
//	tai-sidecar [--socket S] get GOV STATE
//	tai-sidecar [--socket S] put GOV STATE VALUE [--if-version N] [--actor A --reason R]
//	tai-sidecar [--socket S] delete|list|stats|ping ...
//
// Run `tai-sidecar help` for the full list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is the sidecar's release, set with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `tai-sidecar: durable, versioned state for apps in any language.

Usage:
  tai-sidecar serve [flags]                 run the sidecar (see tai-sidecar serve -h)
  tai-sidecar [--socket S] COMMAND [args]   talk to a running sidecar

Commands:
  get GOV STATE [--consistency local|bounded|strong] [--max-staleness D]
                                            print a state as JSON
  put GOV STATE VALUE [--if-version N] [--if-absent] [--actor A] [--reason R] [--fence RES:TOKEN]
      [--sync|--strong] [--sync-timeout D]
                                            store VALUE (JSON) as a msgpack document
  delete GOV STATE [--if-version N] [--actor A] [--reason R] [--fence RES:TOKEN]
      [--sync|--strong] [--sync-timeout D]
                                            delete a state
  list GOV [--prefix P] [--limit N]         list states as JSON lines
  watch GOV [--prefix P]                    print every change as JSON lines until interrupted
  pending                                   print the journal: changes not yet in the shared store
  failed                                    print the changes the shared store rejected for good
  flush [--timeout D]                       wait until every change written so far is in the shared store
  events GOV [STATE] [--from T] [--to T] [--action put|delete|A] [--limit N]
                                            print the local event log as JSON lines (times RFC 3339)
  state-at GOV STATE (--at T | --version N) print a state as it was at a time or a version
  validate GOV [STATE]                      check the local event log and records (exit status 1 on violations)
  history export GOV                        print every event of a governor as JSON lines
  snapshot GOV [STATE]                      take a snapshot of a state (or of every live state)
  transition GOV STATE --to S --action A [--from S] [--value JSON] [--actor A] [--reason R] [--sync|--strong]
                                            move a state machine: one compare-and-set, its event named A
  cleanup GOV [STATE] (--max-age D | --keep-events N) [--dry-run]
                                            remove old local history; print what was removed
  replay GOV [STATE] [--latest]             print the retained history (snapshots, then events) as JSON lines
  lock acquire RES [--lease D] [--wait D]   take a lock (not bound to the CLI's connection); print the grant
  lock release RES TOKEN                    release a grant
  lock extend RES TOKEN [--lease D]         start a new lease on a grant; print it
  lock status RES                           print a lock's holder, token, remaining lease and waiters
  conflicts GOV [--state S] [--since T] [--until T] [--limit N]
                                            print the conflict ledger (conflicts this sidecar settled) as JSON lines
  resolver GOV --exec COMMAND [--deadline D]
                                            decide GOV's conflicts (serve --resolvers GOV=app:FALLBACK): COMMAND reads
                                            each conflict as JSON and prints its answer; print each decision as a JSON line
  txn [OPS|-] [--actor A] [--reason R] [--fence RES:TOKEN] [--sync|--strong]
                                            run one transaction: OPS is a JSON array of
                                            {op: put|delete|check, governor, state, value, if_version, if_absent, exists}
                                            (- or none: read from standard input)
  txlog [--since T] [--until T] [--outcome committed|failed|gave_way] [--governor GOV] [--limit N]
                                            print the transaction log as JSON lines
  stats                                     print the sidecar's statistics
  status [--admin ADDR]                     print a summary: node, uptime, journal, cache, shared store
  config print [--config F] [--format yaml|json] [serve flags]
                                            print serve's effective configuration and where each value came from
  new-incarnation [--data-dir DIR]          give a data dir restored from a copy a new origin, before serving it
  ping                                      check that the sidecar answers
  version                                   print the version

Global flags:
  --socket S    the sidecar's socket (env TAI_SOCKET, default ./tai.sock)
`

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tai-sidecar:", err)
		}
		os.Exit(exitCode(err))
	}
}

// usageError is an error in how the command was called (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

// run is the whole program: it parses args, then serves or runs one client
// command. getenv supplies TAI_* settings, so tests control the environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("tai-sidecar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := fs.String("socket", envOr(getenv, "TAI_SOCKET", "./tai.sock"), "the sidecar's socket")
	if err := parseQuietly(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error() + " (see tai-sidecar help)"}
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return &usageError{"no command given"}
	}
	switch rest[0] {
	case "serve":
		return serve(ctx, rest[1:], givenFlag(fs, "socket"), stdout, stderr, getenv)
	case "config":
		return runConfig(rest[1:], givenFlag(fs, "socket"), stdout, stderr, getenv) // config_print.go
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version":
		fmt.Fprintln(stdout, "tai-sidecar", version)
		return nil
	case "status":
		return runStatus(ctx, *socket, rest[1:], stdout, stderr, getenv) // status.go
	case "new-incarnation":
		return runNewIncarnation(rest[1:], stdout, stderr, getenv) // incarnation.go
	}
	return runCLI(ctx, *socket, rest, stdout, stderr)
}

// parseCommand parses the flags of command cmd, which takes no positional
// argument: -h is flag.ErrHelp (its usage printed), a mistake or an
// argument a one-line usage error naming the command.
func parseCommand(fs *flag.FlagSet, cmd string, args []string) error {
	if err := parseQuietly(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{cmd + ": " + err.Error() + " (see tai-sidecar " + cmd + " -h)"}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("%s: unexpected argument %q", cmd, fs.Arg(0))}
	}
	return nil
}

// parseQuietly parses args into fs. On a mistake it prints nothing: the
// caller reports the error in one line, which a page of usage would bury.
// -h prints fs's usage and returns flag.ErrHelp.
func parseQuietly(fs *flag.FlagSet, args []string) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(out, "Usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
	}
	return err
}

// givenFlag returns the value of fs's flag name if the command line set
// it, else "".
func givenFlag(fs *flag.FlagSet, name string) string {
	v := ""
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			v = f.Value.String()
		}
	})
	return v
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
