package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tai-state/tai-state/client"
)

// statusUsage is the help of `tai-sidecar status`.
const statusUsage = `usage: tai-sidecar [--socket S] status [--admin ADDR]
  print a summary of a running sidecar: the stats op over its socket and,
  with --admin (its --admin-addr: host:port or unix:PATH), its readiness
  and the state of the shared store.
`

// runStatus prints a human summary of the sidecar at socket.
func runStatus(ctx context.Context, socket string, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("tai-sidecar status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage) }
	adminAddr := fs.String("admin", getenv("TAI_ADMIN_ADDR"), "the sidecar's admin endpoint (env TAI_ADMIN_ADDR)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the sidecar")
	if err := parseCommand(fs, "status", args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := client.New(socket)
	defer c.Close()
	st, err := c.Stats(ctx)
	if err != nil {
		return describeError(err, socket) // worded as every client command words it
	}
	var adm *adminStatus
	var admErr error
	if *adminAddr != "" {
		adm, admErr = fetchAdminStatus(ctx, *adminAddr)
	}

	w := &tabbed{w: stdout}
	w.line("node", st.NodeID)
	w.line("version", st.Server)
	w.line("uptime", (time.Duration(st.UptimeSeconds) * time.Second).String())
	if adm != nil {
		w.line("ready", yesNo(adm.Ready)+" ("+adm.ReadyReason+")")
	}
	w.line("states", fmt.Sprint(st.States))
	journal := fmt.Sprint(st.JournalDepth)
	if adm != nil && adm.OldestPendingSec > 0 {
		journal += fmt.Sprintf(" (oldest %s)", roundAge(adm.OldestPendingSec))
	}
	w.line("journal depth", journal)
	w.line("parked", fmt.Sprint(st.Parked))
	if adm != nil && adm.OriginRenewals > 0 {
		w.line("origin", fmt.Sprintf("%s (new incarnations since start: %d; another store wrote under this "+
			"sidecar's origin, a copy of its data dir: the log says more)", st.Origin, adm.OriginRenewals))
	}
	if r := adm.historyRetention(); r.Rounds > 0 {
		line := fmt.Sprintf("%d events, %d snapshots removed since start", r.EventsRemoved, r.SnapshotsRemoved)
		if r.JournalMerged > 0 {
			line += fmt.Sprintf("; %d journal entries merged", r.JournalMerged)
		}
		if r.Errors > 0 {
			line += fmt.Sprintf(" (%d governor cleanups failed: the log says why)", r.Errors)
		}
		w.line("history retention", line)
	}
	hits, misses := st.CacheHits, st.CacheMisses
	if n := hits + misses; n > 0 {
		w.line("cache hit ratio", fmt.Sprintf("%.1f%% (%d hits, %d misses)", 100*float64(hits)/float64(n), hits, misses))
	} else {
		w.line("cache hit ratio", "no reads yet")
	}
	var reqs, errs uint64
	for _, n := range st.Requests {
		reqs += n
	}
	for _, n := range st.Errors {
		errs += n
	}
	w.line("connections", fmt.Sprint(st.Connections))
	w.line("requests", fmt.Sprintf("%d (%d errors)", reqs, errs))
	switch {
	case *adminAddr == "":
		w.line("shared store", "unknown (give --admin ADDR)")
	case admErr != nil:
		w.line("shared store", "unknown (admin endpoint: "+admErr.Error()+")")
	case adm.SharedStore == nil:
		w.line("shared store", "not configured (local only)")
	default:
		s := adm.SharedStore
		reach := "unreachable"
		if s.Reachable {
			reach = "reachable"
		} else if s.LastAnswer.IsZero() && s.LastFailure.IsZero() {
			reach = "not contacted yet"
		}
		if !s.LastFailure.IsZero() {
			reach += fmt.Sprintf("; last failure %s ago (%s)", since(s.LastFailure), s.FailureOutcome)
		}
		w.line("shared store", "configured, "+reach)
		if !s.LastPushSuccess.IsZero() {
			w.line("last push", since(s.LastPushSuccess)+" ago")
		}
		lastErr, at := s.LastPushError, s.LastPushErrorAt
		if s.LastPullErrorAt.After(at) {
			lastErr, at = s.LastPullError, s.LastPullErrorAt
		}
		if lastErr == "" {
			w.line("last sync error", "none")
		} else {
			w.line("last sync error", fmt.Sprintf("%s ago: %s", since(at), lastErr))
		}
		w.line("synced", fmt.Sprintf("%d entries pushed, %d records pulled, %d conflicts", s.EntriesPushed, s.RecordsPulled, s.Conflicts))
		if s.UndecodableStates > 0 || s.UndecodableDropped > 0 {
			line := fmt.Sprintf("%d states: their shared-store documents do not decode and are left out of the pull (the log names them)",
				s.UndecodableStates)
			if s.UndecodableDropped > 0 {
				line += fmt.Sprintf("; %d more documents met since this data dir was made that were not remembered (too many)",
					s.UndecodableDropped)
			}
			w.line("undecodable", line)
		}
	}
	return w.err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func since(t time.Time) string { return roundAge(time.Since(t).Seconds()) }

func roundAge(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// tabbed prints aligned "name: value" lines.
type tabbed struct {
	w   io.Writer
	err error
}

func (t *tabbed) line(name, value string) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, "%-17s %s\n", name+":", value)
	}
}

// maxStatusBody caps the admin endpoint's /status reply.
const maxStatusBody = 1 << 20

// fetchAdminStatus reads /status from the admin endpoint at addr
// (host:port or unix:PATH).
func fetchAdminStatus(ctx context.Context, addr string) (*adminStatus, error) {
	tr := &http.Transport{}
	base := "http://" + addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		base = "http://admin"
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: %s", resp.Status)
	}
	var st adminStatus
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatusBody)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /status: %w", err)
	}
	return &st, nil
}
