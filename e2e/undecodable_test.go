package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// TestUndecodableDocument: a governor's Firestore collection holds, between
// good states, a document another tool wrote that is not a state record. A
// sidecar serving the governor pulls the good states and reports the bad
// one (its log, once; /metrics; /status; the status command); reads of it
// fail with a non-retryable Unavailable that names the document, never
// NotFound; a write of it is refused, and the document is not overwritten.
// After a restart the sidecar still counts it, although its cursor is past
// the document, and does not log it one by one again.
func TestUndecodableDocument(t *testing.T) {
	fs := newShared(t)
	fsClient, _ := firestoretest.Client(t)
	ctx := context.Background()
	a := startSidecar(t, fs.args("node-a", "u")...)
	ca := a.Client()
	pushed := func(state string) {
		t.Helper()
		eventually(t, 30*time.Second, func() string {
			if _, err := fs.get("u", state); err != nil {
				return fmt.Sprintf("u/%s not in Firestore: %v", state, err)
			}
			return ""
		})
	}
	if _, err := ca.Put(ctx, "u", "before", "b"); err != nil {
		t.Fatal(err)
	}
	pushed("before")
	bad := syncer.Key{Governor: "u", State: "bad"}
	firestoretest.PutUndecodable(t, fsClient, fs.root, bad)
	if _, err := ca.Put(ctx, "u", "after", "a"); err != nil {
		t.Fatal(err)
	}
	pushed("after")

	b := startSidecar(t, append(fs.args("node-b", "u"), "--admin-addr", "127.0.0.1:0")...)
	cb := b.Client()
	base := "http://" + adminAddr(t, b)
	type status struct {
		SharedStore struct {
			RecordsPulled      uint64 `json:"records_pulled"`
			UndecodableSkipped uint64 `json:"undecodable_skipped"`
			UndecodableStates  int    `json:"undecodable_states"`
			LastPullError      string `json:"last_pull_error"`
		} `json:"shared_store"`
	}
	var st status
	eventually(t, 30*time.Second, func() string {
		_, body := httpGet(t, base+"/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err.Error()
		}
		if s := st.SharedStore; s.RecordsPulled < 2 || s.UndecodableStates != 1 || s.UndecodableSkipped < 1 {
			return "status: " + body
		}
		return ""
	})
	if st.SharedStore.LastPullError != "" {
		t.Errorf("the pull failed: %s", st.SharedStore.LastPullError)
	}
	for _, state := range []string{"before", "after"} {
		if _, err := cb.Get(ctx, "u", state); err != nil {
			t.Fatalf("get u/%s: %v", state, err)
		}
	}

	doc := fs.root + "/governors/u/states/bad"
	wantUndecodable := func(what string, err error) {
		t.Helper()
		var e *client.Error
		if !errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrNotFound) || !errors.As(err, &e) ||
			e.Retryable || !strings.Contains(e.Message, "does not decode") || !strings.Contains(e.Message, doc) {
			t.Fatalf("%s: %v, want Unavailable, not retryable, naming %s", what, err, doc)
		}
		t.Logf("%s: %v", what, err)
	}
	_, err := cb.Get(ctx, "u", "bad")
	wantUndecodable("get", err)
	_, err = cb.Get(ctx, "u", "bad", client.Bounded(time.Hour))
	wantUndecodable("bounded get", err)
	_, err = cb.Get(ctx, "u", "bad", client.Strong())
	wantUndecodable("strong get", err)
	_, err = cb.Put(ctx, "u", "bad", "over", client.StrongWrite(10*time.Second))
	wantUndecodable("strong put", err)
	if _, err := fs.get("u", "bad"); !errors.Is(err, syncer.ErrUndecodable) {
		t.Fatalf("after the refused write, Firestore's document: %v", err)
	}

	_, m := httpGet(t, base+"/metrics")
	if v, ok := metricValue(m, "tai_pull_undecodable"); !ok || v != 1 {
		t.Errorf("tai_pull_undecodable = %v (present %v), want 1", v, ok)
	}
	if v, ok := metricValue(m, `tai_pull_skipped_total{reason="undecodable"}`); !ok || v < 1 {
		t.Errorf(`tai_pull_skipped_total{reason="undecodable"} = %v (present %v), want >= 1`, v, ok)
	}
	out, errOut, err := b.CLI("status", "--admin", strings.TrimPrefix(base, "http://"))
	if err != nil || !strings.Contains(out, "undecodable:      1 states") {
		t.Errorf("status: %v %s\n%s", err, errOut, out)
	}
	logs := b.Logs()
	if n := strings.Count(logs, "remote document does not decode"); n != 1 || !strings.Contains(logs, doc) {
		t.Errorf("the log names the document %d times, want once:\n%s", n, logs)
	}

	if err := b.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	before := len(b.Logs())
	b.Start()
	base = "http://" + adminAddrAfter(t, b, before)
	eventually(t, 30*time.Second, func() string {
		_, body := httpGet(t, base+"/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err.Error()
		}
		if st.SharedStore.UndecodableStates != 1 {
			return "status after a restart: " + body
		}
		return ""
	})
	out, errOut, err = b.CLI("status", "--admin", strings.TrimPrefix(base, "http://"))
	if err != nil || !strings.Contains(out, "undecodable:      1 states") {
		t.Errorf("status after a restart: %v %s\n%s", err, errOut, out)
	}
	if logs := b.Logs()[before:]; strings.Contains(logs, "remote document does not decode") ||
		!strings.Contains(logs, "did not decode when last seen") {
		t.Errorf("log after a restart: want the documents counted, not named again:\n%s", logs)
	}
}

// adminAddrAfter is adminAddr as logged after the first from bytes of s's
// log: the address of a sidecar started again.
func adminAddrAfter(t *testing.T, s *sidecar, from int) string {
	t.Helper()
	re := regexp.MustCompile(`msg="admin endpoint".* addr=(\S+)`)
	var addr string
	eventually(t, 10*time.Second, func() string {
		if m := re.FindStringSubmatch(s.Logs()[from:]); m != nil {
			addr = m[1]
			return ""
		}
		return "the sidecar did not log its admin address"
	})
	return addr
}
