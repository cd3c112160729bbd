package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
)

// adminAddr waits for the sidecar to log the admin endpoint's address.
func adminAddr(t *testing.T, s *sidecar) string {
	t.Helper()
	re := regexp.MustCompile(`msg="admin endpoint".* addr=(\S+)`)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(s.Logs()); m != nil {
			return m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the sidecar did not log its admin address:\n%s", s.Logs())
	return ""
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// metricValue returns the value of the sample whose name and labels
// (exactly as exposed, e.g. `tai_requests_total{tai_op="put",tai_status="ok"}`)
// are given; ok is false when there is none.
func metricValue(exposition, sample string) (float64, bool) {
	for _, line := range strings.Split(exposition, "\n") {
		if rest, found := strings.CutPrefix(line, sample+" "); found {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// The admin endpoint of a real sidecar: /healthz, /readyz, /metrics
// (request counters move with puts and gets; journal gauges present) and
// the status command reading the socket and the endpoint.
func TestAdminEndpointAndStatus(t *testing.T) {
	s := startSidecar(t, "--admin-addr", "127.0.0.1:0")
	addr := adminAddr(t, s)
	base := "http://" + addr

	if code, body := httpGet(t, base+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || !strings.HasPrefix(body, "ready") {
		t.Fatalf("/readyz: %d %q", code, body)
	}

	_, before := httpGet(t, base+"/metrics")
	putsBefore, _ := metricValue(before, `tai_requests_total{tai_op="put",tai_status="ok"}`)

	c := s.Client()
	ctx := context.Background()
	const n = 5
	for i := range n {
		if _, err := c.Put(ctx, "obs", "k"+strconv.Itoa(i), map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "obs", "k"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Get(ctx, "obs", "missing"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}

	code, m := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	puts, ok := metricValue(m, `tai_requests_total{tai_op="put",tai_status="ok"}`)
	if !ok || puts-putsBefore != n {
		t.Errorf("put counter went from %v to %v (present %v), want +%d", putsBefore, puts, ok, n)
	}
	if gets, _ := metricValue(m, `tai_requests_total{tai_op="get",tai_status="ok"}`); gets < n {
		t.Errorf("get counter %v, want >= %d", gets, n)
	}
	if nf, _ := metricValue(m, `tai_requests_total{tai_op="get",tai_status="NotFound"}`); nf != 1 {
		t.Errorf("get NotFound counter %v, want 1", nf)
	}
	if depth, ok := metricValue(m, `tai_journal_depth`); !ok || depth != n {
		t.Errorf("tai_journal_depth = %v (present %v), want %d: local only, every write stays in the journal", depth, ok, n)
	}
	for _, name := range []string{"tai_journal_oldest_age_seconds", "tai_request_duration_seconds_count{tai_op=\"put\"}", "tai_cache_hit_ratio", "tai_states",
		"tai_store_wal_syncs_total", "tai_store_wal_sync_time_seconds_total"} {
		if _, ok := metricValue(m, name); !ok {
			t.Errorf("metric %s missing from /metrics", name)
		}
	}
	// Each commit group is one observation of the log sync histogram (the
	// two are read at slightly different moments of one scrape: a group
	// committed in between may show in one only).
	syncs, _ := metricValue(m, "tai_store_wal_syncs_total")
	if obs, ok := metricValue(m, "tai_store_wal_sync_duration_seconds_count"); !ok || obs < n || obs < syncs-1 || obs > syncs+1 {
		t.Errorf("tai_store_wal_sync_duration_seconds_count = %v (present %v), want tai_store_wal_syncs_total = %v", obs, ok, syncs)
	}
	if !strings.Contains(m, `target_info{service_instance_id=`) {
		t.Errorf("no target_info with the node id")
	}

	out, errOut, err := s.CLI("status", "--admin", addr)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, errOut)
	}
	for _, want := range []string{
		"node:", "version:          tai-sidecar/", "uptime:", "ready:            yes",
		"states:           5", "journal depth:    5 (oldest ", "parked:           0",
		"cache hit ratio:", "shared store:     not configured (local only)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = s.CLI("status")
	if err != nil || !strings.Contains(out, "shared store:     unknown (give --admin ADDR)") || !strings.Contains(out, "journal depth:    5\n") {
		t.Errorf("status without --admin: %v\n%s", err, out)
	}
}

// The admin endpoint on a Unix socket serves the same.
func TestAdminEndpointUnixSocket(t *testing.T) {
	dir := shortTempDir(t)
	s := startSidecar(t, "--admin-addr", "unix:"+dir+"/admin.sock")
	out, errOut, err := s.CLI("status", "--admin", "unix:"+dir+"/admin.sock")
	if err != nil || !strings.Contains(out, "ready:            yes") {
		t.Fatalf("status over the admin socket: %v\n%s%s", err, out, errOut)
	}
}

// A non-loopback admin address is refused unless allowed explicitly.
func TestAdminAddrRefusesRemote(t *testing.T) {
	dir := shortTempDir(t)
	_, errOut, err := runBinary("--socket", dir+"/s.sock", "serve", "--data-dir", dir+"/d", "--admin-addr", "0.0.0.0:0")
	if exitCode(err) != 2 || !strings.Contains(errOut, "not a loopback address") {
		t.Fatalf("exit %d, stderr %q: want a usage error naming the loopback rule", exitCode(err), errOut)
	}
}

// No value, actor or reason an app writes appears in the sidecar's logs,
// even at debug level and on error paths.
func TestLogsCarryNoValues(t *testing.T) {
	s := startSidecar(t, "--admin-addr", "127.0.0.1:0")
	addr := adminAddr(t, s)
	c := s.Client()
	ctx := context.Background()
	const secret = "s3cr3t-7f1e9c-VALUE"
	const actor = "actor-4b2d8a-SECRET"
	opts := []client.WriteOption{client.Actor(actor), client.Reason("reason-" + secret)}
	if _, err := c.Put(ctx, "g", "s", map[string]any{"password": secret}, opts...); err != nil {
		t.Fatal(err)
	}
	// Error paths: a version conflict, a value too large, a bad name.
	if _, err := c.Put(ctx, "g", "s", map[string]any{"password": secret}, append(opts, client.IfVersion(7))...); err == nil {
		t.Fatal("conflicting put succeeded")
	}
	big := strings.Repeat(secret, (2<<20)/len(secret))
	if _, err := c.Put(ctx, "g", "big", big, opts...); err == nil {
		t.Fatal("put of a too large value succeeded")
	}
	if _, err := c.Get(ctx, "g", "s"); err != nil {
		t.Fatal(err)
	}
	httpGet(t, "http://"+addr+"/metrics")
	httpGet(t, "http://"+addr+"/status")
	if err := s.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	logs := s.Logs()
	if !strings.Contains(logs, "stopped") {
		t.Fatalf("sidecar did not stop cleanly:\n%s", logs)
	}
	for _, v := range []string{secret, actor} {
		if strings.Contains(logs, v) {
			t.Errorf("the logs carry %q:\n%s", v, logs)
		}
	}
}

// TestChecklistMetricsScraped: every Prometheus series the guide's
// production checklist tells operators to watch is on /metrics of a real
// sidecar with a shared store, before anything went wrong.
func TestChecklistMetricsScraped(t *testing.T) {
	src, err := os.ReadFile("../docs/guide.md")
	if err != nil {
		t.Fatal(err)
	}
	guide := string(src)
	start := strings.Index(guide, "## Production checklist")
	end := strings.Index(guide, "## Troubleshooting")
	if start < 0 || end < start {
		t.Fatal("docs/guide.md: no production checklist section")
	}
	names := regexp.MustCompile("`(tai_[a-z_]+)`").FindAllStringSubmatch(guide[start:end], -1)
	if len(names) == 0 {
		t.Fatal("the production checklist names no tai_ metric")
	}
	fs := newShared(t)
	s := startSidecar(t, append(fs.args("node-a", "obs"), "--admin-addr", "127.0.0.1:0")...)
	if _, err := s.Client().Put(context.Background(), "obs", "k", 1); err != nil {
		t.Fatal(err)
	}
	base := "http://" + adminAddr(t, s)
	_, m := httpGet(t, base+"/metrics")
	for _, n := range names {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(n[1]) + `[{ ]`).MatchString(m) {
			t.Errorf("the checklist's %s is not on /metrics", n[1])
		}
	}
}
