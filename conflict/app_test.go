package conflict_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/conflict"
)

// appConflict is a conflict of governor g on state, the local side later
// (lww keeps it).
func appConflict(state string) conflict.Conflict {
	return conflict.Conflict{
		Key: conflict.Key{Governor: "g", State: state},
		Local: conflict.Side{Value: []byte{0x01}, Version: 2, Origin: "b", OpID: "b-1",
			Clock: conflict.Clock{HLC: 20, Vector: conflict.Vector{"a": 1, "b": 1}}},
		Remote: conflict.Side{Value: []byte{0x02}, Version: 2, Origin: "a", OpID: "a-2",
			Clock: conflict.Clock{HLC: 10, Vector: conflict.Vector{"a": 2}}},
		Base: &conflict.Base{Value: []byte{0x00}, Version: 1},
	}
}

// appSet builds "g=app:<fallback>" over hub.
func appSet(t *testing.T, hub *conflict.AppHub, fallback string) *conflict.Set {
	t.Helper()
	reg := conflict.NewRegistry()
	if err := reg.Register(conflict.NameApp, hub.Factory); err != nil {
		t.Fatal(err)
	}
	cfg, err := conflict.ParseConfig("g=app:" + fallback)
	if err != nil {
		t.Fatal(err)
	}
	set, err := reg.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// answerNext answers the next conflict s hands out with a.
func answerNext(t *testing.T, s *conflict.AppSession, a conflict.AppAnswer) {
	t.Helper()
	go func() {
		ac := <-s.Conflicts()
		if err := s.Answer(ac.ID, a); err != nil {
			t.Errorf("answer %d: %v", ac.ID, err)
		}
	}()
}

// TestAppResolverAnswers: each choice of the app becomes the decision,
// named "app", with the app's reason; a declined conflict goes to the
// fallback.
func TestAppResolverAnswers(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "version")
	s, err := hub.Attach("g", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		answer   conflict.AppAnswer
		winner   conflict.Winner
		resolver string
		reason   string
	}{
		{conflict.AppAnswer{Choice: conflict.ChooseLocal, Reason: "mine"}, conflict.Local, "app", `app chose the local side, v2 by node "b" (op b-1) ("mine")`},
		{conflict.AppAnswer{Choice: conflict.ChooseRemote}, conflict.Remote, "app", `app chose the remote side, v2 by node "a"`},
		{conflict.AppAnswer{Choice: conflict.ChooseValue, Value: []byte{0x03}}, conflict.Merged, "app", "app chose a new value"},
		// version: equal versions go on to version's own fallback, lww.
		{conflict.AppAnswer{Choice: conflict.ChooseFallback, Reason: "no idea"}, conflict.Local, "app>version>lww", `app declined ("no idea"); both sides are at version 2`},
	} {
		answerNext(t, s, tc.answer)
		d, err := set.Resolve(context.Background(), appConflict("s"))
		if err != nil {
			t.Fatal(err)
		}
		if d.Winner != tc.winner || d.Resolver != tc.resolver || !strings.HasPrefix(d.Reason, tc.reason) {
			t.Fatalf("answer %v: decision %+v; want %v by %s, reason %q...", tc.answer.Choice, d, tc.winner, tc.resolver, tc.reason)
		}
		if tc.winner == conflict.Merged && string(d.Value) != "\x03" {
			t.Fatalf("merged value %x", d.Value)
		}
	}
}

// TestAppResolverNoApp: without an app for the governor the fallback
// decides at once, and the decision says so.
func TestAppResolverNoApp(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	other, err := hub.Attach("h", 0) // another governor's app is not asked
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	d, err := set.Resolve(context.Background(), appConflict("s"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Winner != conflict.Local || d.Resolver != "app>lww" ||
		!strings.HasPrefix(d.Reason, `app: no app registered for governor "g"; last write wins`) {
		t.Fatalf("decision %+v", d)
	}
	if len(other.Conflicts()) != 0 {
		t.Fatal("the app of governor h got g's conflict")
	}
}

// TestAppResolverTimeout: an app that does not answer within its deadline
// leaves the conflict to the fallback; its late answer is refused with
// ErrLate, an unknown id with ErrUnknownConflict.
func TestAppResolverTimeout(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := set.Resolve(context.Background(), appConflict("s"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Resolver != "app>lww" || !strings.HasPrefix(d.Reason, "app: no answer within 30ms (timeout); last write wins") {
		t.Fatalf("decision %+v", d)
	}
	ac := <-s.Conflicts()
	if !s.Has(ac.ID) {
		t.Fatalf("session forgot conflict %d", ac.ID)
	}
	if err := s.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseLocal}); !errors.Is(err, conflict.ErrLate) {
		t.Fatalf("late answer: %v, want ErrLate", err)
	}
	if err := s.Answer(ac.ID+100, conflict.AppAnswer{Choice: conflict.ChooseLocal}); !errors.Is(err, conflict.ErrUnknownConflict) {
		t.Fatalf("unknown id: %v, want ErrUnknownConflict", err)
	}
}

// TestAppResolverDisconnect: a session closed while a conflict waits for
// it hands the conflict to the fallback at once (well before the
// deadline), and unregisters the governor, so the next conflict falls back
// without waiting and a new app may register.
func TestAppResolverDisconnect(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", conflict.MaxAppDeadline)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		<-s.Conflicts() // received, never answered: the app goes away
		s.Close()
	}()
	d, err := set.Resolve(context.Background(), appConflict("s"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Resolver != "app>lww" || !strings.HasPrefix(d.Reason, "app: the app went away (disconnected or unregistered) before it answered") {
		t.Fatalf("decision %+v", d)
	}
	if hub.Registered("g") {
		t.Fatal("g still registered after Close")
	}
	if err := s.Answer(1, conflict.AppAnswer{Choice: conflict.ChooseLocal}); !errors.Is(err, conflict.ErrAppClosed) {
		t.Fatalf("answer on a closed session: %v", err)
	}
	s2, err := hub.Attach("g", 0)
	if err != nil {
		t.Fatalf("attach after close: %v", err)
	}
	s2.Close()
	s2.Close() // twice is fine
}

// TestAppHubAttach: one app per governor; the deadline is bounded; a
// governor whose conflicts are not delegated refuses apps; names follow
// the governor rules.
func TestAppHubAttach(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{Delegated: func(g string) bool { return g != "plain" }})
	s, err := hub.Attach("g", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Deadline() != conflict.DefaultAppDeadline || s.Governor() != "g" {
		t.Fatalf("session: deadline %v governor %q", s.Deadline(), s.Governor())
	}
	if _, err := hub.Attach("g", 0); !errors.Is(err, conflict.ErrAppRegistered) {
		t.Fatalf("second attach: %v, want ErrAppRegistered", err)
	}
	if _, err := hub.Attach("plain", 0); !errors.Is(err, conflict.ErrNotDelegated) {
		t.Fatalf("attach to plain: %v, want ErrNotDelegated", err)
	}
	for _, d := range []time.Duration{time.Millisecond, conflict.MaxAppDeadline + time.Millisecond, -time.Second} {
		if _, err := hub.Attach("h", d); err == nil {
			t.Fatalf("attach with deadline %v succeeded", d)
		}
	}
	for _, g := range []string{"", "a/b", "__x__"} {
		if _, err := hub.Attach(g, 0); !errors.Is(err, conflict.ErrInvalidName) {
			t.Fatalf("attach %q: %v, want ErrInvalidName", g, err)
		}
	}
}

// TestAppAnswerValidation: answers that cannot be applied are refused
// without settling the conflict, which a valid answer then settles once.
func TestAppAnswerValidation(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan conflict.Decision, 1)
	go func() {
		d, _ := set.Resolve(context.Background(), appConflict("s"))
		done <- d
	}()
	ac := <-s.Conflicts()
	if ac.Conflict.Key.State != "s" || string(ac.Conflict.Local.Value) != "\x01" || ac.Conflict.Base.Version != 1 ||
		time.Until(ac.Deadline) <= 0 {
		t.Fatalf("conflict handed out: %+v", ac)
	}
	for _, bad := range []conflict.AppAnswer{
		{},
		{Choice: conflict.ChooseFallback + 1},
		{Choice: conflict.ChooseValue},
		{Choice: conflict.ChooseLocal, Value: []byte{1}},
		{Choice: conflict.ChooseFallback, Value: []byte{1}},
	} {
		if err := s.Answer(ac.ID, bad); !errors.Is(err, conflict.ErrInvalidDecision) {
			t.Fatalf("answer %+v: %v, want ErrInvalidDecision", bad, err)
		}
	}
	if err := s.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseRemote}); err != nil {
		t.Fatal(err)
	}
	if err := s.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseLocal}); !errors.Is(err, conflict.ErrAnswered) {
		t.Fatalf("second answer: %v, want ErrAnswered", err)
	}
	if d := <-done; d.Winner != conflict.Remote || d.Resolver != "app" {
		t.Fatalf("decision %+v", d)
	}
}

// TestAppResolverBacklog: conflicts beyond the backlog go to the fallback
// at once.
func TestAppResolverBacklog(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{Backlog: 1})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first := make(chan conflict.Decision, 1)
	go func() {
		d, _ := set.Resolve(context.Background(), appConflict("a"))
		first <- d
	}()
	for len(s.Conflicts()) == 0 {
		time.Sleep(time.Millisecond)
	}
	d, _ := set.Resolve(context.Background(), appConflict("b"))
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "1 conflicts already wait for the app") {
		t.Fatalf("decision over the backlog: %+v", d)
	}
	ac := <-s.Conflicts()
	if err := s.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseRemote}); err != nil {
		t.Fatal(err)
	}
	if d := <-first; d.Resolver != "app" || d.Winner != conflict.Remote {
		t.Fatalf("first decision %+v", d)
	}
}

// TestAppResolverConcurrent: many conflicts at once on one app, which
// answers those of even states with a value made from their index and
// leaves the odd ones to time out; meanwhile the app re-registers (close
// and attach) under the resolvers' feet. Every decision is the app's or
// the fallback's, never mixed up between conflicts. Run with -race.
func TestAppResolverConcurrent(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	var app sync.WaitGroup
	app.Go(func() {
		for {
			select {
			case <-stop:
				return
			case ac := <-s.Conflicts():
				var i int
				fmt.Sscanf(ac.Conflict.Key.State, "s%d", &i)
				if i%2 == 1 {
					continue
				}
				go func() {
					if err := s.Answer(ac.ID, conflict.AppAnswer{Choice: conflict.ChooseValue, Value: []byte(ac.Conflict.Key.State)}); err != nil {
						t.Errorf("answer %s: %v", ac.Conflict.Key.State, err)
					}
				}()
			}
		}
	})
	const n = 200
	var wg sync.WaitGroup
	decisions := make([]conflict.Decision, n)
	for i := range n {
		wg.Go(func() {
			d, err := set.Resolve(context.Background(), appConflict(fmt.Sprintf("s%d", i)))
			if err != nil {
				t.Errorf("resolve %d: %v", i, err)
			}
			decisions[i] = d
		})
	}
	// Another governor's app comes and goes meanwhile.
	for range 20 {
		o, err := hub.Attach("h", 0)
		if err != nil {
			t.Fatal(err)
		}
		o.Close()
	}
	wg.Wait()
	close(stop)
	app.Wait()
	for i, d := range decisions {
		if i%2 == 0 {
			if d.Resolver != "app" || d.Winner != conflict.Merged || string(d.Value) != fmt.Sprintf("s%d", i) {
				t.Fatalf("conflict %d: %+v", i, d)
			}
			continue
		}
		if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "timeout") || d.Winner != conflict.Local {
			t.Fatalf("conflict %d: %+v", i, d)
		}
	}
}

// TestAppResolverContext: a push that stops (its context ends) stops
// waiting for the app, and the fallback decides.
func TestAppResolverContext(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	s, err := hub.Attach("g", conflict.MaxAppDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-s.Conflicts()
		cancel()
	}()
	d, _ := set.Resolve(ctx, appConflict("s"))
	if d.Resolver != "app>lww" || !strings.Contains(d.Reason, "no answer before the push was stopped") {
		t.Fatalf("decision %+v", d)
	}
}

// TestAppResolverBypass: an app that lets a deadline pass is not asked for
// a while (the fallback decides at once and says why); then it is asked
// again, and an answer in time ends the bypass.
func TestAppResolverBypass(t *testing.T) {
	hub := conflict.NewAppHub(conflict.AppOptions{})
	set := appSet(t, hub, "lww")
	const deadline = 100 * time.Millisecond
	s, err := hub.Attach("g", deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if d, err := set.Resolve(ctx, appConflict("s1")); err != nil || !strings.Contains(d.Reason, "timeout") {
		t.Fatalf("first conflict: %+v, %v", d, err)
	}
	missed := <-s.Conflicts()
	for _, state := range []string{"s2", "s3"} {
		d, err := set.Resolve(ctx, appConflict(state))
		if err != nil || d.Resolver != "app>lww" || !strings.HasPrefix(d.Reason, "app: not asked: the app let a conflict's deadline pass") {
			t.Fatalf("%s while bypassed: %+v, %v", state, d, err)
		}
	}
	select {
	case ac := <-s.Conflicts():
		t.Fatalf("conflict %d (%s) handed to a bypassed app", ac.ID, ac.Conflict.Key.State)
	default:
	}
	if err := s.Answer(missed.ID, conflict.AppAnswer{Choice: conflict.ChooseLocal}); !errors.Is(err, conflict.ErrLate) {
		t.Fatalf("late answer: %v", err)
	}

	// After the bypass (10 deadlines) it is asked again; it answers now.
	time.Sleep(10*deadline + 10*time.Millisecond)
	for _, state := range []string{"s4", "s5"} {
		answerNext(t, s, conflict.AppAnswer{Choice: conflict.ChooseRemote})
		d, err := set.Resolve(ctx, appConflict(state))
		if err != nil || d.Resolver != conflict.NameApp || d.Winner != conflict.Remote {
			t.Fatalf("%s after the bypass: %+v, %v", state, d, err)
		}
	}
}
