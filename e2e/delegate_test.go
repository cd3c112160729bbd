package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// delegateApp is an app that decides the conflicts of a governor on a
// sidecar: start registers it (and returns once it is registered), stop
// makes it go away. reason is what its answers give as their reason.
type delegateApp struct {
	reason string
	start  func(t *testing.T, socket, gov string) (stop func())
}

// counter is the document of the tests' counters.
type counter struct {
	N int `codec:"n"`
}

// sumIncrements is the apps' rule: the base plus both sides' increments.
func sumIncrements(base, local, remote int) int { return base + (local - base) + (remote - base) }

// goDelegate is a Go app: client.ServeConflicts summing counters.
var goDelegate = delegateApp{
	reason: "summed by go",
	start: func(t *testing.T, socket, gov string) func() {
		c := client.New(socket)
		ctx, cancel := context.WithCancel(context.Background())
		registered := make(chan struct{})
		served := make(chan error, 1)
		decide := func(_ context.Context, cf client.Conflict) (client.Resolution, error) {
			var b, l, r counter
			if cf.Base == nil {
				return client.Decline("no base"), nil
			}
			for _, x := range []struct {
				raw []byte
				v   *counter
			}{{cf.Base.Value, &b}, {cf.Local.Value, &l}, {cf.Remote.Value, &r}} {
				if err := wire.Unmarshal(x.raw, x.v); err != nil {
					return client.Resolution{}, err
				}
			}
			return client.NewValue(counter{N: sumIncrements(b.N, l.N, r.N)}, "summed by go")
		}
		go func() {
			served <- c.ServeConflicts(ctx, gov, decide, client.OnRegistered(func(time.Duration) { close(registered) }))
		}()
		select {
		case <-registered:
		case err := <-served:
			t.Fatalf("go app: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("go app: not registered after 30s")
		}
		return func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("go app: %v", err)
			}
			c.Close()
		}
	},
}

// pythonDelegate is examples/python/resolver_example.py run by Debian's
// python3.
var pythonDelegate = delegateApp{
	reason: "summed by python",
	start: func(t *testing.T, socket, gov string) func() {
		if err := exec.Command(debianPython, "-c", "import msgpack").Run(); err != nil {
			t.Fatalf("%s cannot import msgpack (%v): install Debian's python3-msgpack (scripts/test.sh does)", debianPython, err)
		}
		cmd := exec.Command(debianPython, "../examples/python/resolver_example.py", socket, gov)
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		return startApp(t, "python app", cmd, "registered ")
	},
}

// cliSum is the CLI delegate's command: a shell pipeline into python3
// (JSON only, no msgpack) that sums the counters.
const cliSum = `/usr/bin/python3 -c '
import json, sys
c = json.load(sys.stdin)
if c["base"] is None:
    print(json.dumps({"choice": "fallback", "reason": "no base"}))
else:
    b, l, r = c["base"]["value"]["n"], c["local"]["value"]["n"], c["remote"]["value"]["n"]
    print(json.dumps({"choice": "value", "value": {"n": b + (l - b) + (r - b)}, "reason": "summed by cli"}))
'`

// cliDelegate is tai-sidecar resolver --exec: a shell command decides.
var cliDelegate = delegateApp{
	reason: "summed by cli",
	start: func(t *testing.T, socket, gov string) func() {
		cmd := exec.Command(sidecarBin, "--socket", socket, "resolver", gov, "--exec", cliSum)
		return startApp(t, "resolver command", cmd, `{"deadline_ms":`)
	},
}

// startApp starts cmd, an app that prints a line starting with registered
// once it decides conflicts, and waits for that line. The rest of its
// output is shown if the test fails. The returned function stops it.
func startApp(t *testing.T, name string, cmd *exec.Cmd, registered string) func() {
	t.Helper()
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, stderr.String())
		}
	})
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, registered) {
			t.Fatalf("%s: first line %q (closed: %v), want %s...; stderr:\n%s", name, l, !ok, registered, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not registered after 30s; stderr:\n%s", name, stderr.String())
	}
	go func() { // the rest of its output goes with stderr, shown on failure
		for l := range lines {
			stderr.Write([]byte(l + "\n"))
		}
	}()
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// TestDelegateGoApp, TestDelegatePythonApp and TestDelegateCLI (tai-sidecar
// resolver --exec with a shell command): two sidecars on the
// emulator, governor cnt delegated to an app with lww as the fallback
// (--resolvers cnt=app:lww). b loses Firestore, both sidecars change the
// same counter, b gets Firestore back and its push meets the conflict: the
// app registered on b sums both increments, and after quiescence both
// sidecars and Firestore hold the sum, and b's ledger (and Firestore's)
// names resolver app with the app's reason. With the app gone, the next
// such conflict is decided by lww, and the ledger says why.
func TestDelegateGoApp(t *testing.T)     { testDelegate(t, goDelegate) }
func TestDelegatePythonApp(t *testing.T) { testDelegate(t, pythonDelegate) }
func TestDelegateCLI(t *testing.T)       { testDelegate(t, cliDelegate) }

func testDelegate(t *testing.T, app delegateApp) {
	const gov = "cnt"
	fs := newShared(t)
	px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
	args := func(node string) []string {
		return append(fs.args(node, gov), "--resolvers", gov+"=app:lww", "--flush-timeout", "100ms")
	}
	a := startSidecar(t, args("node-a")...)
	b := startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, args("node-b")...)
	ca, cb := a.Client(), b.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	put := func(c *client.Client, who, state string, n int) {
		t.Helper()
		if _, err := c.Put(ctx, gov, state, counter{N: n}); err != nil {
			t.Fatalf("%s: put %s = %d: %v", who, state, n, err)
		}
	}
	// conflict makes b and a add bInc and aInc to a counter at 10, b first
	// while it cannot reach Firestore, then brings b back.
	conflict := func(state string, bInc, aInc int) {
		t.Helper()
		put(ca, "a", state, 10)
		// b's listener restarted after the previous cut; one that misses a
		// change (the emulator's sometimes do) is caught up by the pull
		// loop's resync within a minute.
		eventually(t, 90*time.Second, func() string {
			rb, errB := cb.Get(ctx, gov, state)
			ra, errA := ca.Get(ctx, gov, state)
			if errB != nil || errA != nil || rb.Version != 1 || ra.Pending {
				return fmt.Sprintf("%s at 10 not everywhere yet: a %+v %v, b %+v %v", state, ra, errA, rb, errB)
			}
			return ""
		})
		px.Cut()
		put(cb, "b", state, 10+bInc)
		put(ca, "a", state, 10+aInc)
		eventually(t, 30*time.Second, func() string {
			if r, err := ca.Get(ctx, gov, state); err != nil || r.Pending {
				return fmt.Sprintf("a: %s not in Firestore yet: %+v %v", state, r, err)
			}
			return ""
		})
		px.Restore()
	}
	// settled waits until both sidecars and Firestore hold n for state.
	settled := func(state string, n int) {
		t.Helper()
		eventually(t, 90*time.Second, func() string {
			for who, c := range map[string]*client.Client{"a": ca, "b": cb} {
				r, err := c.Get(ctx, gov, state)
				var got counter
				if err == nil {
					err = r.Decode(&got)
				}
				if err != nil || r.Pending || got.N != n {
					return fmt.Sprintf("%s: %s = %+v (%+v, %v), want n=%d", who, state, got, r, err, n)
				}
			}
			rec, err := fs.get(gov, state)
			var got counter
			if err == nil {
				err = wire.Unmarshal(rec.Value, &got)
			}
			if err != nil || got.N != n {
				return fmt.Sprintf("firestore: %s = %+v, %v; want n=%d", state, got, err, n)
			}
			return ""
		})
	}
	// ledger returns b's one ledger entry of state, after checking that a
	// decided nothing and that Firestore's ledger has the same entry.
	ledger := func(state string) *wire.Conflict {
		t.Helper()
		if es, _, err := ca.Conflicts(ctx, gov, client.ConflictsOptions{State: state}); err != nil || len(es) != 0 {
			t.Fatalf("a's ledger of %s: %+v, %v", state, es, err)
		}
		es, _, err := cb.Conflicts(ctx, gov, client.ConflictsOptions{State: state})
		if err != nil || len(es) != 1 {
			t.Fatalf("b's ledger of %s: %+v, %v", state, es, err)
		}
		recs, err := fs.remote.Conflicts(ctx, syncer.ConflictQuery{Governor: gov, State: state})
		if err != nil || len(recs) != 1 || recs[0].ID != es[0].ID || recs[0].Resolver != es[0].Resolver ||
			recs[0].Reason != es[0].Reason {
			t.Fatalf("Firestore's ledger of %s: %+v, %v; want b's %+v", state, recs, err, es[0])
		}
		return es[0]
	}

	stop := app.start(t, b.Socket, gov)
	conflict("c1", 3, 5)
	want := sumIncrements(10, 13, 15)
	settled("c1", want)
	e := ledger("c1")
	var v counter
	if e.Resolver != "app" || e.Winner != "merged" || !strings.HasPrefix(e.Node, "node-b~") || !strings.Contains(e.Reason, app.reason) ||
		wire.Unmarshal(e.Value, &v) != nil || v.N != want {
		t.Fatalf("ledger entry of c1: resolver %q winner %q node %q reason %q value %d; want app, merged, %d, reason with %q",
			e.Resolver, e.Winner, e.Node, e.Reason, v.N, want, app.reason)
	}

	// The app goes away: lww decides, a's later write wins.
	stop()
	conflict("c2", 3, 5)
	settled("c2", 15)
	e = ledger("c2")
	if e.Resolver != "app>lww" || e.Winner != "remote" || !strings.HasPrefix(e.Reason, `app: no app registered for governor "cnt"; last write wins`) {
		t.Fatalf("ledger entry of c2: resolver %q winner %q reason %q; want app>lww, remote, no app registered",
			e.Resolver, e.Winner, e.Reason)
	}
	st, err := cb.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ConflictsByResolver["app"] != 1 || st.ConflictsByResolver["app>lww"] != 1 {
		t.Fatalf("b's conflicts by resolver: %v", st.ConflictsByResolver)
	}
}

// TestDelegateRefusals: through the real binary, registering for a
// governor that is not delegated, or for one another app holds, is
// refused with a typed error, and a local-only sidecar refuses apps.
func TestDelegateRefusals(t *testing.T) {
	fs := newShared(t)
	s := startSidecar(t, append(fs.args("node-r", "cnt"), "--resolvers", "cnt=app:lww")...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	noop := func(context.Context, client.Conflict) (client.Resolution, error) { return client.Decline(""), nil }
	if err := s.Client().ServeConflicts(ctx, "other", noop); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("governor not delegated: %v", err)
	}
	stop := goDelegate.start(t, s.Socket, "cnt")
	defer stop()
	if err := s.Client().ServeConflicts(ctx, "cnt", noop); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("second app: %v", err)
	}
	local := startSidecar(t)
	if err := local.Client().ServeConflicts(ctx, "cnt", noop); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("local-only sidecar: %v", err)
	}
}
