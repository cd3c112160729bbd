package observe

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// RateLimit wraps h so that, per window, only the first burst records with
// the same level and message go through; later ones are counted and
// dropped. When a window in which records were dropped ends, one record
// reports how many: level of the dropped ones, message "repeated log
// message suppressed", attributes "message" (the dropped message),
// "suppressed" (the count) and "window". The limit is shared by every logger
// derived from the result (With, WithGroup): a message repeated by many
// connections is limited as one.
//
// burst <= 0 or window <= 0 turns the limit off. The report is written by
// a timer at the end of the window; Flush writes pending reports at once
// (call it before exiting).
func RateLimit(h slog.Handler, burst int, window time.Duration) *RateLimited {
	l := &limiter{burst: burst, window: window, now: time.Now, seen: make(map[limitKey]*limitEntry)}
	return &RateLimited{h: h, l: l}
}

// RateLimited is the slog.Handler RateLimit returns.
type RateLimited struct {
	h slog.Handler
	l *limiter
}

type limitKey struct {
	level slog.Level
	msg   string
}

type limitEntry struct {
	start      time.Time
	n          int
	suppressed int
	h          slog.Handler // the handler of the last dropped record: its attributes go with the report
}

type limiter struct {
	burst  int
	window time.Duration
	now    func() time.Time

	mu     sync.Mutex
	seen   map[limitKey]*limitEntry
	timer  *time.Timer
	closed bool
}

// maxKeys bounds the distinct messages tracked in one window; past it,
// records pass unlimited (messages are constants in the code, so this is
// never reached in practice).
const maxKeys = 4096

func (r *RateLimited) Enabled(ctx context.Context, level slog.Level) bool {
	return r.h.Enabled(ctx, level)
}

func (r *RateLimited) Handle(ctx context.Context, rec slog.Record) error {
	if r.l.burst <= 0 || r.l.window <= 0 {
		return r.h.Handle(ctx, rec)
	}
	if !r.l.allow(limitKey{rec.Level, rec.Message}, r.h) {
		return nil
	}
	return r.h.Handle(ctx, rec)
}

func (r *RateLimited) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &RateLimited{h: r.h.WithAttrs(attrs), l: r.l}
}

func (r *RateLimited) WithGroup(name string) slog.Handler {
	return &RateLimited{h: r.h.WithGroup(name), l: r.l}
}

// Flush writes the reports of every window with dropped records now.
func (r *RateLimited) Flush() { r.l.report(true) }

// allow counts one record of k and tells whether it may go through.
func (l *limiter) allow(k limitKey, h slog.Handler) bool {
	now := l.now()
	l.mu.Lock()
	e := l.seen[k]
	if e != nil && now.Sub(e.start) >= l.window && e.suppressed == 0 {
		e = nil // an old window with nothing to report: start anew
	}
	if e != nil && now.Sub(e.start) >= l.window {
		// The window ended with drops not yet reported (the timer is
		// late): report first, then start anew.
		l.mu.Unlock()
		l.report(false)
		l.mu.Lock()
		e = l.seen[k]
	}
	if e == nil {
		if len(l.seen) >= maxKeys {
			l.mu.Unlock()
			return true
		}
		e = &limitEntry{start: now}
		l.seen[k] = e
	}
	e.n++
	if e.n <= l.burst {
		l.mu.Unlock()
		return true
	}
	e.suppressed++
	e.h = h
	if l.timer == nil && !l.closed {
		l.timer = time.AfterFunc(e.start.Add(l.window).Sub(now), func() { l.report(false) })
	}
	l.mu.Unlock()
	return false
}

type limitReport struct {
	k limitKey
	e limitEntry
}

// report writes a record for each ended window (all: every window) that
// dropped records, forgets ended windows, and re-arms the timer for the
// next window end with drops.
func (l *limiter) report(all bool) {
	now := l.now()
	var out []limitReport
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	var next time.Time
	for k, e := range l.seen {
		ended := now.Sub(e.start) >= l.window
		if e.suppressed > 0 && (ended || all) {
			out = append(out, limitReport{k, *e})
			e.suppressed = 0
		}
		if ended {
			delete(l.seen, k)
			continue
		}
		if e.suppressed > 0 {
			if end := e.start.Add(l.window); next.IsZero() || end.Before(next) {
				next = end
			}
		}
	}
	if all {
		l.closed = true
	}
	if !next.IsZero() && !l.closed {
		l.timer = time.AfterFunc(next.Sub(now), func() { l.report(false) })
	}
	l.mu.Unlock()
	for _, r := range out {
		rec := slog.NewRecord(now, r.k.level, "repeated log message suppressed", 0)
		rec.AddAttrs(slog.String("message", r.k.msg), slog.Int("suppressed", r.e.suppressed),
			slog.Duration("window", l.window))
		_ = r.e.h.Handle(context.Background(), rec)
	}
}
