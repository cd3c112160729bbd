package txn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// scriptedWait is a WaitBackend whose calls fail as scripted: tryErrs
// failures of Try before each answer, pokeErrs failures of Poke, and
// viewErrs of View. The lock is held by "b" until granted is set; the
// graph holds the cycle a -> r -> b -> s -> a when cycle is set.
type scriptedWait struct {
	mu                          sync.Mutex
	tryErrs, pokeErrs, viewErrs int
	tries, pokes, views, poked  int
	granted, cycle              bool
	wake                        chan struct{}
}

var errDown = fmt.Errorf("store: %w", ErrUnavailable)

func (w *scriptedWait) held() *HeldError {
	return &HeldError{Resource: "r", Holder: "b", Token: 1, Remaining: time.Hour}
}

func (w *scriptedWait) Try(context.Context) (Grant, *HeldError, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tries++
	if w.tryErrs > 0 {
		w.tryErrs--
		return Grant{}, nil, errDown
	}
	if w.granted {
		return Grant{Resource: "r", Holder: "a", Token: 2}, nil, nil
	}
	return Grant{}, w.held(), nil
}

func (w *scriptedWait) View(_ context.Context, fn func(WaitGraph) error) error {
	w.mu.Lock()
	w.views++
	fail := w.viewErrs > 0
	if fail {
		w.viewErrs--
	}
	cycle := w.cycle
	w.mu.Unlock()
	if fail {
		return errDown
	}
	return fn(scriptedGraph{cycle})
}

func (w *scriptedWait) Poke(_ context.Context, waiter string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pokes++
	if w.pokeErrs > 0 {
		w.pokeErrs--
		return errDown
	}
	w.poked++
	w.granted = true // the victim gives way; a is next
	signal(w.wake)
	return nil
}

func (w *scriptedWait) Record(context.Context, Deadlock) error { return nil }
func (w *scriptedWait) Wake() <-chan struct{}                  { return w.wake }
func (w *scriptedWait) Poked() bool                            { return false }

type scriptedGraph struct{ cycle bool }

func (g scriptedGraph) HolderOf(resource string) (string, error) {
	switch {
	case resource == "r":
		return "b", nil
	case resource == "s" && g.cycle:
		return "a", nil
	}
	return "", nil
}

func (g scriptedGraph) WaitingFor(waiter string) (string, error) {
	if waiter == "b" && g.cycle {
		return "s", nil
	}
	return "", nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestWaitRetriesAFailedPoke: the victim of a deadlock this waiter found
// ("b", the larger name) is poked again until the poke goes through; it
// was poked once, and the deadlock stayed if that failed.
func TestWaitRetriesAFailedPoke(t *testing.T) {
	w := &scriptedWait{pokeErrs: 2, cycle: true, wake: make(chan struct{}, 1)}
	g, err := Wait(context.Background(), w, quiet, "a", time.Minute, w.held())
	if err != nil || g.Token != 2 {
		t.Fatalf("wait: %+v, %v; want the lock once the victim was poked", g, err)
	}
	if w.pokes != 3 || w.poked != 1 {
		t.Fatalf("%d pokes, %d through; want 3 and 1", w.pokes, w.poked)
	}
}

// TestWaitOutlastsAStoreHiccup: a failed read of the lock or of the graph
// does not end a wait; a failure that lasts past the wait's end does.
func TestWaitOutlastsAStoreHiccup(t *testing.T) {
	w := &scriptedWait{tryErrs: 2, viewErrs: 1, wake: make(chan struct{}, 1)}
	go func() {
		time.Sleep(300 * time.Millisecond)
		w.mu.Lock()
		w.granted = true
		w.mu.Unlock()
		signal(w.wake)
	}()
	g, err := Wait(context.Background(), w, quiet, "a", time.Minute, w.held())
	if err != nil || g.Token != 2 {
		t.Fatalf("wait through failed calls: %+v, %v", g, err)
	}
	w.mu.Lock()
	if w.views < 2 {
		t.Errorf("%d walks of the graph, want the failed one walked again", w.views)
	}
	w.mu.Unlock()

	w = &scriptedWait{tryErrs: 1 << 30, wake: make(chan struct{}, 1)}
	start := time.Now()
	_, err = Wait(context.Background(), w, quiet, "a", 250*time.Millisecond, w.held())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("wait with the store down throughout: %v, want Unavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("it ended after %v", d)
	}
}
