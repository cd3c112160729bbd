package observe_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tai-state/tai-state/observe"
)

// lockedBuffer is a bytes.Buffer safe for the limiter's timer goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestRateLimit(t *testing.T) {
	var buf lockedBuffer
	h := observe.RateLimit(slog.NewTextHandler(&buf, nil), 3, 200*time.Millisecond)
	log := slog.New(h)
	for i := range 10 {
		// Derived loggers share the limit: one message flooding from many
		// connections is limited as one.
		log.With("conn", i).Warn("read failed")
	}
	log.Info("read failed") // another level: its own limit
	log.Warn("other message")
	out := buf.String()
	if n := strings.Count(out, `msg="read failed"`); n != 4 {
		t.Fatalf("%d records of the flooded message went through, want 3 warnings and 1 info:\n%s", n, out)
	}
	if strings.Contains(out, "suppressed") {
		t.Fatalf("reported before the window ended:\n%s", out)
	}
	// The window ends: a timer reports the 7 dropped records.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "suppressed=7") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	out = buf.String()
	if !strings.Contains(out, `level=WARN msg="repeated log message suppressed" conn=9 message="read failed" suppressed=7`) {
		t.Fatalf("no report of the suppressed records:\n%s", out)
	}
	if strings.Count(out, "suppressed=") != 1 {
		t.Fatalf("only the flooded message is reported:\n%s", out)
	}
	// A new window lets the message through again.
	log.Warn("read failed")
	if n := strings.Count(buf.String(), `msg="read failed"`); n != 5 {
		t.Fatalf("the next window did not let the message through:\n%s", buf.String())
	}
}

func TestRateLimitFlush(t *testing.T) {
	var buf lockedBuffer
	h := observe.RateLimit(slog.NewJSONHandler(&buf, nil), 1, time.Hour)
	log := slog.New(h)
	for range 5 {
		log.Error("store failed")
	}
	h.Flush()
	out := buf.String()
	if strings.Count(out, `"msg":"store failed"`) != 1 || !strings.Contains(out, `"suppressed":4`) {
		t.Fatalf("flush did not report the dropped records:\n%s", out)
	}
}

func TestRateLimitOff(t *testing.T) {
	var buf lockedBuffer
	log := slog.New(observe.RateLimit(slog.NewTextHandler(&buf, nil), 0, time.Second))
	for range 20 {
		log.Info("same")
	}
	if n := strings.Count(buf.String(), "msg=same"); n != 20 {
		t.Fatalf("burst 0 limited: %d of 20 records", n)
	}
}
