package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Watches and per-request consistency, with real sidecars on the Firestore
// emulator.

// nextChange reads one change from w within timeout.
func nextChange(t *testing.T, w *client.Watch, timeout time.Duration) *client.Change {
	t.Helper()
	select {
	case ch, ok := <-w.Changes():
		if !ok {
			t.Fatalf("watch ended: %v", w.Err())
		}
		return ch
	case <-time.After(timeout):
		t.Fatalf("no change within %v", timeout)
	}
	return nil
}

// TestWatchSeesRemoteAndLocal: a watch on sidecar A sees a write made on
// sidecar B (remote) and a write made on A (local), each in version order;
// `tai-sidecar watch` prints the same as JSON lines until interrupted.
func TestWatchSeesRemoteAndLocal(t *testing.T) {
	fs := newShared(t)
	a := startSidecar(t, fs.args("node-a", "w")...)
	b := startSidecar(t, fs.args("node-b", "w")...)
	ca, cb := a.Client(), b.Client()
	ctx := context.Background()

	w, err := ca.Watch(ctx, "w", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// The CLI watch, as a process.
	cmd := exec.Command(sidecarBin, "--socket", a.Socket, "watch", "w", "--prefix", "x")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	// Wait for the watches to be up: local writes show at once.
	if _, err := ca.Put(ctx, "w", "y", "local-1"); err != nil {
		t.Fatal(err)
	}
	if ch := nextChange(t, w, 10*time.Second); ch.State != "y" || ch.Remote || ch.Version != 1 || !strings.HasPrefix(ch.Origin, "node-a~") {
		t.Fatalf("local change: %+v remote=%v", ch.Record.Record, ch.Remote)
	}
	waitCLIWatch(t, cmd, a)

	for i := 1; i <= 3; i++ {
		if _, err := cb.Put(ctx, "w", "x", fmt.Sprintf("remote-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ca.Put(ctx, "w", "y", "local-2"); err != nil {
		t.Fatal(err)
	}
	// Remote changes may be coalesced on their way (the shared store keeps
	// the latest), but arrive in version order and end at version 3.
	var xv, yv uint64 = 0, 1
	deadline := time.Now().Add(30 * time.Second)
	for xv < 3 || yv < 2 {
		ch := nextChange(t, w, time.Until(deadline))
		switch ch.State {
		case "x":
			if !ch.Remote || !strings.HasPrefix(ch.Origin, "node-b~") || ch.Version <= xv {
				t.Fatalf("x: version %d after %d, remote %v, origin %s", ch.Version, xv, ch.Remote, ch.Origin)
			}
			xv = ch.Version
			var v string
			if err := ch.Decode(&v); err != nil || v != fmt.Sprintf("remote-%d", xv) {
				t.Fatalf("x v%d = %q, %v", xv, v, err)
			}
		case "y":
			if ch.Remote || ch.Version != yv+1 {
				t.Fatalf("y: version %d after %d, remote %v", ch.Version, yv, ch.Remote)
			}
			yv = ch.Version
		default:
			t.Fatalf("unexpected change of %s", ch.State)
		}
	}

	// The CLI printed x's changes (not y's: prefix), then exits cleanly on
	// SIGINT.
	var last uint64
	for last < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch exited early: %s", stderr.String())
			}
			var m struct {
				State   string `json:"state"`
				Version uint64 `json:"version"`
				Remote  *bool  `json:"remote"`
				Value   string `json:"value"`
			}
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			if m.State != "x" || m.Remote == nil || !*m.Remote || m.Version <= last || m.Value != fmt.Sprintf("remote-%d", m.Version) {
				t.Fatalf("CLI line %q after version %d", l, last)
			}
			last = m.Version
		case <-time.After(30 * time.Second):
			t.Fatalf("CLI watch printed up to version %d; stderr %s", last, stderr.String())
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("CLI watch after SIGINT: %v; stderr %s", err, stderr.String())
	}
}

// waitCLIWatch waits until the CLI watch process has its watch running
// (the sidecar counts it).
func waitCLIWatch(t *testing.T, cmd *exec.Cmd, s *sidecar) {
	t.Helper()
	c := s.Client()
	eventually(t, 10*time.Second, func() string {
		st, err := c.Stats(context.Background())
		if err != nil {
			return err.Error()
		}
		if st.Requests["watch"] < 2 {
			return fmt.Sprintf("%d watches started", st.Requests["watch"])
		}
		return ""
	})
}

// TestStrongReadAndSyncWrite: a sync put on A returns only once Firestore
// has the record; a strong get on B right after returns it.
func TestStrongReadAndSyncWrite(t *testing.T) {
	fs := newShared(t)
	a := startSidecar(t, fs.args("node-a", "c")...)
	b := startSidecar(t, fs.args("node-b")...) // does not pull "c"
	ca, cb := a.Client(), b.Client()
	ctx := context.Background()

	for i := 1; i <= 3; i++ {
		rec, err := ca.Put(ctx, "c", "k", i, client.Synced(20*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if rec.Pending || rec.Version != uint64(i) {
			t.Fatalf("sync put %d: %+v", i, rec.Record)
		}
		// No waiting: Firestore has it already.
		r, err := fs.get("c", "k")
		if err != nil || r.Version != uint64(i) {
			t.Fatalf("firestore right after sync put %d: %+v, %v", i, r, err)
		}
		got, err := cb.Get(ctx, "c", "k", client.Strong())
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := got.Decode(&v); err != nil || v != i || got.Version != uint64(i) || got.FromCache || got.Stale {
			t.Fatalf("strong get on b after put %d: %d (%v) %+v", i, v, err, got.Record)
		}
	}
	// A plain get on b now answers from its cache, with synced_at.
	got, err := cb.Get(ctx, "c", "k")
	if err != nil || !got.FromCache || got.SyncedAt == 0 || got.Version != 3 {
		t.Fatalf("local get on b: %+v, %v", got, err)
	}
	// A local miss on b reads through. (A governor b holds no state of:
	// b now serves "c", so its watch may deliver a new state of "c" before
	// the get asks.)
	if _, err := ca.Put(ctx, "c-other", "new", "n", client.Synced(0)); err != nil {
		t.Fatal(err)
	}
	got, err = cb.Get(ctx, "c-other", "new")
	if err != nil || got.FromCache || got.Version != 1 {
		t.Fatalf("read-through on b: %+v, %v", got, err)
	}
	if _, err := cb.Get(ctx, "c", "never"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("read-through of a missing state: %v", err)
	}
	// A sync batch_put too.
	recs, err := ca.BatchPut(ctx, []wire.Item{{Governor: "c", State: "b1", Value: mustMsgpack(t, 1)}, {Governor: "c", State: "b2", Value: mustMsgpack(t, 2)}},
		client.Synced(20*time.Second))
	if err != nil || len(recs) != 2 {
		t.Fatalf("sync batch_put: %v", err)
	}
	for _, s := range []string{"b1", "b2"} {
		if r, err := fs.get("c", s); err != nil || r.Version != 1 {
			t.Fatalf("firestore %s right after sync batch_put: %+v, %v", s, r, err)
		}
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestReadsWhileSharedStoreUnreachable: a sidecar whose Firestore cannot
// be reached still writes and reads locally; a bounded read returns the
// local record marked stale, a strong read fails with Unavailable, a sync
// write times out saying the change is durable locally, and pending shows
// the journal.
func TestReadsWhileSharedStoreUnreachable(t *testing.T) {
	fs := newShared(t)
	s := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + closedPort(t)}, fs.args("node-off", "o")...)
	c := s.Client()
	ctx := context.Background()

	if _, err := c.Put(ctx, "o", "k", "v1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := c.Get(ctx, "o", "k", client.Bounded(100*time.Millisecond))
	if err != nil {
		t.Fatalf("bounded read offline: %v", err)
	}
	var v string
	if err := got.Decode(&v); err != nil || v != "v1" || !got.Stale || !got.FromCache || !got.Pending {
		t.Fatalf("bounded read offline: %q %+v", v, got.Record)
	}
	t.Logf("bounded read offline took %v", time.Since(start))

	_, err = c.Get(ctx, "o", "k", client.Strong())
	var e *client.Error
	if !errors.As(err, &e) || e.Code != "Unavailable" || !e.Retryable {
		t.Fatalf("strong read offline: %v", err)
	}
	_, err = c.Get(ctx, "o", "missing")
	if !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "shared store could not be asked") {
		t.Fatalf("local miss offline: %v", err)
	}
	_, err = c.Put(ctx, "o", "k", "v2", client.Synced(300*time.Millisecond))
	if !errors.As(err, &e) || e.Code != "Timeout" || e.Retryable || !strings.Contains(e.Message, "durable locally") {
		t.Fatalf("sync put offline: %v", err)
	}
	got, err = c.Get(ctx, "o", "k")
	if err != nil || got.Version != 2 {
		t.Fatalf("the timed-out sync put is not applied locally: %+v, %v", got, err)
	}
	p, err := c.Pending(ctx)
	if err != nil || !p.SharedStore || p.Depth != 2 || p.OldestSeq == 0 || p.OldestTime == 0 {
		t.Fatalf("pending: %+v, %v", p, err)
	}
	out, _, err := s.CLI("pending")
	if err != nil || !strings.Contains(out, `"depth":2`) {
		t.Fatalf("CLI pending: %q, %v", out, err)
	}
	out, _, err = s.CLI("failed")
	if err != nil || out != "" {
		t.Fatalf("CLI failed: %q, %v", out, err)
	}
}

// TestStrongWrites: compare-and-set against Firestore across two real
// sidecars. The one that is behind has its precondition checked against
// Firestore, not its stale copy.
func TestStrongWrites(t *testing.T) {
	fs := newShared(t)
	a := startSidecar(t, fs.args("node-a")...)
	b := startSidecar(t, fs.args("node-b")...) // pulls nothing until it reads
	ca, cb := a.Client(), b.Client()
	ctx := context.Background()

	rec, err := ca.Put(ctx, "s", "leader", "a", client.IfAbsent(), client.StrongWrite(20*time.Second))
	if err != nil || rec.Version != 1 || rec.Pending {
		t.Fatalf("strong create on a: %+v, %v", rec, err)
	}
	if r, err := fs.get("s", "leader"); err != nil || !strings.HasPrefix(r.Origin, "node-a~") {
		t.Fatalf("firestore right after the strong put: %+v, %v", r, err)
	}
	// b has never seen the state: if_absent holds locally but not in
	// Firestore.
	_, err = cb.Put(ctx, "s", "leader", "b", client.IfAbsent(), client.StrongWrite(20*time.Second))
	var we *wire.Error
	if !errors.Is(err, client.ErrVersionConflict) || !errors.As(err, &we) || *we.Actual != 1 {
		t.Fatalf("strong create on b: %v", err)
	}
	// b's copy was healed by the attempt: a compare-and-set on version 1 wins.
	rec, err = cb.Put(ctx, "s", "leader", "b", client.IfVersion(1), client.StrongWrite(20*time.Second))
	if err != nil || rec.Version != 2 {
		t.Fatalf("strong put on b: %+v, %v", rec, err)
	}
	// a is now behind (it does not pull "s" live... or does: either way
	// its precondition is checked against Firestore).
	_, err = ca.Put(ctx, "s", "leader", "a-again", client.IfVersion(1), client.StrongWrite(20*time.Second))
	if !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("stale strong put on a: %v", err)
	}
	if r, err := fs.get("s", "leader"); err != nil || r.Version != 2 || !strings.HasPrefix(r.Origin, "node-b~") {
		t.Fatalf("firestore at the end: %+v, %v", r, err)
	}
	evs := fs.events("s", "leader")
	if len(evs) != 2 {
		t.Fatalf("%d events in firestore, want 2: a failed strong write reached it", len(evs))
	}
}

// TestSyncWriteLosesConflict: a sync write made while its sidecar cannot
// reach Firestore waits; another sidecar writes the state later and gets
// there first. When the link is back the first write loses the conflict
// (last write wins), and its reply says so: VersionConflict with the shared
// store's version. Before, it was confirmed as if Firestore held it. A sync
// transition waits and loses the same way.
func TestSyncWriteLosesConflict(t *testing.T) {
	fs := newShared(t)
	px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
	a := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, fs.args("node-a", "g")...)
	b := startSidecar(t, fs.args("node-b", "g")...)
	ca, cb := a.Client(), b.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	px.Cut()
	put, transition := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := ca.Put(ctx, "g", "s", "from a", client.Synced(time.Minute))
		put <- err
	}()
	go func() {
		_, err := ca.Transition(ctx, "g", "m", client.Transition{To: "open", Action: "create"}, client.Synced(time.Minute))
		transition <- err
	}()
	eventually(t, 10*time.Second, func() string { // applied on a, waiting for Firestore
		for _, state := range []string{"s", "m"} {
			if r, err := ca.Get(ctx, "g", state); err != nil || !r.Pending {
				return fmt.Sprintf("a's %s: %+v, %v", state, r, err)
			}
		}
		return ""
	})
	// b's writes are later on the clocks (hybrid logical clocks count
	// milliseconds): they win.
	for ms := time.Now().UnixMilli(); time.Now().UnixMilli() <= ms; {
		time.Sleep(100 * time.Microsecond)
	}
	for _, state := range []string{"s", "m"} {
		if _, err := cb.Put(ctx, "g", state, "from b"); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, func() string {
		for _, state := range []string{"s", "m"} {
			if r, err := fs.get("g", state); err != nil || r.Version != 1 || !strings.HasPrefix(r.Origin, "node-b~") {
				return fmt.Sprintf("firestore's %s: %+v, %v", state, r, err)
			}
		}
		return ""
	})
	px.Restore()

	for what, done := range map[string]chan error{"sync write": put, "sync transition": transition} {
		err := <-done
		var we *client.Error
		if !errors.Is(err, client.ErrVersionConflict) || !errors.As(err, &we) || we.Actual == nil || *we.Actual != 1 {
			t.Fatalf("a's %s: %v, want VersionConflict with actual 1", what, err)
		}
	}
	eventually(t, 30*time.Second, func() string {
		for _, state := range []string{"s", "m"} {
			r, err := ca.Get(ctx, "g", state)
			var v string
			if err == nil {
				err = r.Decode(&v)
			}
			if err != nil || v != "from b" || r.Pending {
				return fmt.Sprintf("a's %s holds %q (%+v, %v), want b's write", state, v, r, err)
			}
		}
		return ""
	})
}

// TestRecordAge: through the real binary and the Firestore emulator, a read
// says how far behind the shared store its record may be: about nothing
// while the sidecar watches the governor live, 0 for a record read from the
// shared store; a local-only sidecar does not know, and says nothing.
func TestRecordAge(t *testing.T) {
	fs := newShared(t)
	s := startSidecar(t, fs.args("node-a", "ages")...)
	c := s.Client()
	ctx := context.Background()
	if _, err := c.Put(ctx, "ages", "k", 1, client.Synced(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The watch goes live once it has delivered its first snapshot.
	eventually(t, 30*time.Second, func() string {
		rec, err := c.Get(ctx, "ages", "k")
		if err != nil {
			return err.Error()
		}
		if age, ok := rec.Age(); !ok || age > time.Second {
			return fmt.Sprintf("age of a live governor's copy: %v (known %v)", age, ok)
		}
		return ""
	})
	rec, err := c.Get(ctx, "ages", "k", client.Strong())
	if age, ok := rec.Age(); err != nil || !ok || age != 0 || rec.FromCache {
		t.Fatalf("strong read: %+v, %v: age %v (known %v), want 0", rec, err, age, ok)
	}
	out, errOut, err := s.CLI("get", "ages", "k")
	if err != nil || !strings.Contains(out, `"age_ms":`) {
		t.Fatalf("CLI get: %v\n%s%s", err, out, errOut)
	}

	local := startSidecar(t)
	lc := local.Client()
	if _, err := lc.Put(ctx, "ages", "k", 1); err != nil {
		t.Fatal(err)
	}
	if rec, err := lc.Get(ctx, "ages", "k"); err != nil || rec.AgeMS != nil {
		t.Fatalf("local-only get: %+v, %v; want no age", rec, err)
	}
}
