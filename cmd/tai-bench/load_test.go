package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// fakeServer speaks the wire protocol over a Unix socket with an in-memory
// map. It answers the frames of each read in reverse order, so pipelined
// clients see replies out of order.
type fakeServer struct {
	t    *testing.T
	path string
	ln   net.Listener

	// failPuts makes every put fail with this code.
	failPuts wire.Code
	// closeAfter closes each connection after this many requests (0: never).
	closeAfter int64
	// badID answers with a wrong id.
	badID bool
	// stall stops answering (but keeps reading) after this many requests.
	stall int64

	mu     sync.Mutex
	states map[string][]byte
	reqs   map[string]int64 // by op
	conns  sync.WaitGroup
}

func newFakeServer(t *testing.T, configure func(*fakeServer)) *fakeServer {
	t.Helper()
	s := &fakeServer{t: t, states: make(map[string][]byte), reqs: make(map[string]int64)}
	if configure != nil {
		configure(s)
	}
	dir, err := os.MkdirTemp("", "tb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s.path = filepath.Join(dir, "s.sock") // short: Unix socket paths are limited
	s.ln, err = net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	var accept sync.WaitGroup
	accept.Go(func() {
		for {
			nc, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.conns.Go(func() { s.serve(nc) })
		}
	})
	t.Cleanup(func() {
		s.ln.Close()
		accept.Wait()
		s.conns.Wait()
	})
	return s
}

func (s *fakeServer) count(op string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[op]
}

func (s *fakeServer) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	dec, enc := wire.NewCodec(), wire.NewCodec()
	var n int64
	for {
		// Read every frame that is already buffered, then answer backwards.
		var resps []wire.Response
		for {
			body, err := wire.ReadFrame(br, nil, wire.DefaultMaxFrame)
			if err != nil {
				return
			}
			var req wire.Request
			if err := dec.Decode(body, &req); err != nil {
				return
			}
			n++
			resps = append(resps, s.handle(&req))
			if br.Buffered() == 0 {
				break
			}
		}
		if s.closeAfter > 0 && n >= s.closeAfter {
			return
		}
		if s.stall > 0 && n >= s.stall {
			continue
		}
		var out []byte
		for i := len(resps) - 1; i >= 0; i-- {
			var err error
			if out, err = enc.AppendFrame(out, &resps[i]); err != nil {
				s.t.Errorf("encode reply: %v", err)
				return
			}
		}
		if _, err := nc.Write(out); err != nil {
			return
		}
	}
}

func (s *fakeServer) handle(req *wire.Request) wire.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs[req.Op]++
	resp := wire.Response{ID: req.ID}
	if s.badID {
		resp.ID++
	}
	key := req.Governor + "/" + req.State
	switch req.Op {
	case wire.OpHello:
		resp.Hello = &wire.Hello{Version: wire.ProtocolVersion, Server: "fake", MaxFrame: wire.DefaultMaxFrame,
			MaxValue: wire.MaxValueSize, MaxBatch: wire.MaxBatch}
	case wire.OpPing:
	case wire.OpGet:
		v, ok := s.states[key]
		if !ok {
			resp.Error = wire.Errorf(wire.CodeNotFound, "no state %s", key)
			break
		}
		resp.Record = &wire.Record{Governor: req.Governor, State: req.State, Value: v, Version: 1}
	case wire.OpPut:
		if s.failPuts != "" {
			resp.Error = wire.Errorf(s.failPuts, "put refused")
			break
		}
		s.states[key] = bytes.Clone(req.Value)
		resp.Record = &wire.Record{Governor: req.Governor, State: req.State, Version: 1}
	case wire.OpDelete:
		delete(s.states, key)
		resp.Record = &wire.Record{Governor: req.Governor, State: req.State, Deleted: true}
	default:
		resp.Error = wire.Errorf(wire.CodeUnknownOp, "%s", req.Op)
	}
	return resp
}

// runJSON runs the tool with -json and decodes its report.
func runJSON(t *testing.T, ctx context.Context, args ...string) (*Report, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(ctx, append(args, "-json"), &out, &errOut)
	if out.Len() == 0 {
		return nil, err
	}
	var rep Report
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
		t.Fatalf("report is not JSON: %v\n%s", jerr, out.String())
	}
	return &rep, err
}

func TestLoadCountsEveryRequest(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"serial", []string{"-c", "4", "-P", "1"}},
		{"pipelined", []string{"-c", "4", "-P", "16"}},
		{"one connection deep pipeline", []string{"-c", "1", "-P", "200"}},
		{"many connections", []string{"-c", "64", "-P", "4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t, nil)
			args := append([]string{"-socket", srv.path, "-n", "3000", "-keys", "100", "-ops", "get=3,put=1", "-warmup"}, tt.args...)
			rep, err := runJSON(t, t.Context(), args...)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Requests != 3000 {
				t.Fatalf("report counts %d requests, want 3000", rep.Requests)
			}
			gets, puts := rep.PerOp["get"].Count, rep.PerOp["put"].Count
			if gets+puts != 3000 || gets < 1800 || puts < 400 {
				t.Fatalf("gets %d puts %d: want 3000 in a 3:1 mix", gets, puts)
			}
			// The server saw the warmup's puts plus the measured ones, and
			// the check get.
			if got := srv.count("put"); got != 100+int64(puts) {
				t.Fatalf("server saw %d puts, want %d", got, 100+puts)
			}
			if got := srv.count("get"); got != int64(gets)+1 {
				t.Fatalf("server saw %d gets, want %d", got, gets+1)
			}
			if len(rep.Errors) != 0 {
				t.Fatalf("errors %v, want none (every key was warmed)", rep.Errors)
			}
			if len(rep.Setup) != 1 || rep.Setup[0].Name != "warmup" || rep.Setup[0].Requests != 100 {
				t.Fatalf("setup = %+v, want one warmup of 100 puts", rep.Setup)
			}
			p := rep.PerOp["get"]
			if !(p.P50Us > 0 && p.P50Us <= p.P99Us && p.P99Us <= p.P999Us && p.P999Us <= p.MaxUs) {
				t.Fatalf("get latencies out of order: %+v", p)
			}
		})
	}
}

func TestHotOverwritesEveryKey(t *testing.T) {
	srv := newFakeServer(t, nil)
	rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "3", "-P", "4", "-keys", "50",
		"-hot", "7", "-ops", "get", "-n", "500")
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.count("put"); got != 350 {
		t.Fatalf("server saw %d puts, want 50 keys x 7", got)
	}
	srv.mu.Lock()
	n := len(srv.states)
	srv.mu.Unlock()
	if n != 50 {
		t.Fatalf("%d states written, want 50", n)
	}
	if rep.Requests != 500 || rep.PerOp["get"].Count != 500 || len(rep.Errors) != 0 {
		t.Fatalf("report: %d requests, %+v, errors %v", rep.Requests, rep.PerOp, rep.Errors)
	}
}

func TestSeqWritesEachKeyOnce(t *testing.T) {
	srv := newFakeServer(t, nil)
	rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "5", "-P", "8", "-keys", "1000",
		"-seq", "-ops", "put", "-n", "1000")
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	n := len(srv.states)
	srv.mu.Unlock()
	if n != 1000 || rep.Requests != 1000 {
		t.Fatalf("%d states after %d puts, want 1000 distinct keys", n, rep.Requests)
	}
}

func TestErrorsAreCountedByCode(t *testing.T) {
	srv := newFakeServer(t, func(s *fakeServer) { s.failPuts = wire.CodeUnavailable })
	rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "2", "-P", "3", "-keys", "10",
		"-ops", "get=1,put=1", "-n", "400")
	if err == nil || !strings.Contains(err.Error(), "requests failed") {
		t.Fatalf("run = %v, want a failed-requests error", err)
	}
	puts, gets := rep.PerOp["put"].Count, rep.PerOp["get"].Count
	// Nothing was stored: every get misses and every put fails.
	if rep.Errors["Unavailable"] != puts || rep.Errors["NotFound"] != gets || puts+gets != 400 {
		t.Fatalf("errors %v with %d puts and %d gets", rep.Errors, puts, gets)
	}
}

func TestNotFoundIsNotAFailure(t *testing.T) {
	srv := newFakeServer(t, nil)
	rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "2", "-ops", "get", "-n", "100")
	if err != nil {
		t.Fatalf("gets of missing keys: %v", err)
	}
	if rep.Errors["NotFound"] != 100 {
		t.Fatalf("errors %v, want 100 NotFound", rep.Errors)
	}
}

func TestDurationBoundsTheRun(t *testing.T) {
	srv := newFakeServer(t, nil)
	start := time.Now()
	rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "2", "-P", "2", "-ops", "ping", "-duration", "300ms")
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a 300ms run took %v", took)
	}
	if rep.Seconds < 0.3 || rep.Requests == 0 || rep.PerOp["ping"].Count != rep.Requests {
		t.Fatalf("report: %.3fs, %d requests, %+v", rep.Seconds, rep.Requests, rep.PerOp)
	}
}

func TestBrokenConnectionFailsTheRun(t *testing.T) {
	for _, p := range []string{"1", "8"} {
		t.Run("P="+p, func(t *testing.T) {
			srv := newFakeServer(t, func(s *fakeServer) { s.closeAfter = 20 })
			rep, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "2", "-P", p, "-ops", "ping", "-n", "1000")
			if !errors.Is(err, ErrConnFailed) {
				t.Fatalf("run = %v, want ErrConnFailed", err)
			}
			if rep == nil || len(rep.ConnErrors) != 2 {
				t.Fatalf("report %+v, want two connection errors", rep)
			}
		})
	}
}

func TestWrongReplyIDFailsTheRun(t *testing.T) {
	for _, p := range []string{"1", "8"} {
		t.Run("P="+p, func(t *testing.T) {
			srv := newFakeServer(t, func(s *fakeServer) { s.badID = true })
			// The hello reply itself carries the wrong id.
			_, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "1", "-P", p, "-ops", "ping", "-n", "10")
			if !errors.Is(err, errBadReply) {
				t.Fatalf("run = %v, want errBadReply", err)
			}
		})
	}
}

func TestCancelStopsAStalledRun(t *testing.T) {
	for _, p := range []string{"1", "8"} {
		t.Run("P="+p, func(t *testing.T) {
			srv := newFakeServer(t, func(s *fakeServer) { s.stall = 50 })
			ctx, cancel := context.WithCancel(t.Context())
			var stopped atomic.Bool
			done := make(chan struct{})
			go func() {
				defer close(done)
				// Poll until the server has stopped answering (after the hello
				// and 49 pings), then cancel.
				deadline := time.Now().Add(10 * time.Second)
				for srv.count("ping") < 49 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				stopped.Store(true)
				cancel()
			}()
			start := time.Now()
			rep, err := runJSON(t, ctx, "-socket", srv.path, "-c", "1", "-P", p, "-ops", "ping", "-duration", "1m")
			<-done
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("cancelled run took %v", took)
			}
			if !stopped.Load() {
				t.Fatal("run ended before it was cancelled")
			}
			if err != nil {
				t.Fatalf("run = %v, want a clean stop", err)
			}
			if !rep.Interrupted || rep.Requests == 0 || rep.Requests > 49 {
				t.Fatalf("report: interrupted %v, %d requests", rep.Interrupted, rep.Requests)
			}
		})
	}
}

func TestCheckValueCatchesWrongData(t *testing.T) {
	srv := newFakeServer(t, nil)
	// Another writer stored a different value under the first key.
	srv.mu.Lock()
	srv.states["bench/"+keyName(0)] = []byte{0xc4, 0x01, 0x00}
	srv.mu.Unlock()
	srv.failPuts = wire.CodeUnavailable // the warmup cannot fix it
	_, err := runJSON(t, t.Context(), "-socket", srv.path, "-c", "1", "-keys", "1", "-ops", "get", "-n", "10", "-warmup")
	if err == nil {
		t.Fatal("run succeeded over wrong data")
	}
}

func TestFlagsAreValidated(t *testing.T) {
	for _, args := range [][]string{
		{"-c", "0"}, {"-c", "5000"}, {"-c", "1000", "-P", "100"}, {"-P", "0"}, {"-P", "70000"}, {"-d", "1"}, {"-d", "2000000"},
		{"-keys", "0"}, {"-duration", "0s"}, {"-duration", "2h"}, {"-n", "-1"}, {"-hot", "-1"},
		{"-ops", "nope"}, {"-governor", "a/b"}, {"-socket", ""}, {"extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), args, &out, &errOut)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("run(%q) = %v, want a usage error", args, err)
			}
		})
	}
}

func TestNoSidecarIsAClearError(t *testing.T) {
	_, err := runJSON(t, t.Context(), "-socket", filepath.Join(t.TempDir(), "none.sock"), "-n", "1")
	if err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("run = %v, want a connect error", err)
	}
}

func TestTextReport(t *testing.T) {
	srv := newFakeServer(t, nil)
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-socket", srv.path, "-c", "2", "-ops", "get=1,put=1", "-n", "200", "-warmup", "-keys", "20"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"200 requests in", "ops/s", "p99 µs", "get", "put", "errors: none"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(errOut.String(), "warmup: 20 puts") {
		t.Errorf("stderr lacks the warmup line: %s", errOut.String())
	}
}

func TestFsyncBaseline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	rep, err := runJSON(t, t.Context(), "-fsync-baseline", path, "-d", "100", "-n", "25")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 2500 {
		t.Fatalf("file is %d bytes, want 25 records of 100", fi.Size())
	}
	s := rep.PerOp["append+fdatasync"]
	if rep.Mode != "fsync" || rep.Requests != 25 || s.Count != 25 || s.P50Us <= 0 || rep.OpsPerSec <= 0 {
		t.Fatalf("report %+v", rep)
	}
}
