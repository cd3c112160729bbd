package sockapi

import (
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Benchmarks over a real Unix socket with the in-memory fake store. The
// client reuses one encoded request frame and does not decode replies, so
// the numbers are mostly the server's. Allocations count the whole process:
// one of them per request is the client's (wire.ReadFrame's header).

func benchServer(b *testing.B) *testServer {
	b.Helper()
	store := newFakeStore()
	store.put("bench", "key", map[string]any{"name": "a typical small document", "n": 42, "ok": true})
	return startServer(b, store, Options{})
}

func benchGetFrame(b *testing.B) []byte {
	b.Helper()
	frame, err := wire.NewCodec().AppendFrame(nil, &wire.Request{ID: 7, Op: wire.OpGet, Governor: "bench", State: "key"})
	if err != nil {
		b.Fatal(err)
	}
	return frame
}

// checkFirstReply makes sure the benchmark measures successful gets.
func checkFirstReply(b *testing.B, c *client, frame []byte) {
	b.Helper()
	c.writeRaw(frame)
	if r := c.recv(); r.Error != nil || r.Record == nil {
		b.Fatalf("get: %+v", r)
	}
}

// BenchmarkGetSerial: one connection, one request at a time.
func BenchmarkGetSerial(b *testing.B) {
	ts := benchServer(b)
	c := ts.hello()
	frame := benchGetFrame(b)
	checkFirstReply(b, c, frame)
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.nc.Write(frame); err != nil {
			b.Fatal(err)
		}
		var err error
		if buf, err = wire.ReadFrame(c.br, buf, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetPipelined: one connection, up to 128 requests in flight.
func BenchmarkGetPipelined(b *testing.B) {
	ts := benchServer(b)
	c := ts.hello()
	frame := benchGetFrame(b)
	checkFirstReply(b, c, frame)
	const window = 128
	var burst []byte
	for range 16 {
		burst = append(burst, frame...)
	}
	credits := make(chan struct{}, window/16)
	for range window / 16 {
		credits <- struct{}{}
	}
	b.ReportAllocs()
	b.ResetTimer()
	werr := make(chan error, 1)
	go func() {
		// Write bursts of 16 requests, keeping at most window in flight.
		for sent := 0; sent < b.N; sent += 16 {
			<-credits
			n := min(16, b.N-sent)
			if _, err := c.nc.Write(burst[:n*len(frame)]); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	var buf []byte
	for i := 1; i <= b.N; i++ {
		var err error
		if buf, err = wire.ReadFrame(c.br, buf, 1<<20); err != nil {
			b.Fatal(err)
		}
		if i%16 == 0 {
			credits <- struct{}{}
		}
	}
	if err := <-werr; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkGetConns16: 16 connections, each one request at a time (the
// shape of redis-benchmark -c 16 -t get). With more than 16 CPUs there is
// one connection per goroutine RunParallel starts.
func BenchmarkGetConns16(b *testing.B) {
	ts := benchServer(b)
	frame := benchGetFrame(b)
	procs := runtime.GOMAXPROCS(0)
	par := (16 + procs - 1) / procs
	conns := make(chan *client, par*procs)
	for range par * procs {
		c := ts.hello()
		checkFirstReply(b, c, frame)
		conns <- c
	}
	var failed atomic.Value
	b.ReportAllocs()
	b.SetParallelism(par)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := <-conns
		var buf []byte
		for pb.Next() {
			if _, err := c.nc.Write(frame); err != nil {
				failed.Store(err)
				return
			}
			var err error
			if buf, err = wire.ReadFrame(c.br, buf, 1<<20); err != nil {
				failed.Store(err)
				return
			}
		}
	})
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
