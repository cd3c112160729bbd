package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// seedApp stores the 20 states of governor "app" that checksum expects.
func seedApp(t *testing.T, c *client.Client) {
	t.Helper()
	for i := range 20 {
		if _, err := c.Put(context.Background(), "app", fmt.Sprintf("s%02d", i), map[string]any{"i": i, "pad": strings.Repeat("x", i*10)}); err != nil {
			t.Fatal(err)
		}
	}
}

// rssBytes reads the sidecar's resident set size from /proc.
func (s *sidecar) rssBytes(t *testing.T) int64 {
	t.Helper()
	s.mu.Lock()
	pid := s.cmd.Process.Pid
	s.mu.Unlock()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// maxRSS is the bound on the sidecar's memory during the hostile cases.
const maxRSS = 200 << 20

// TestHostileMoreNames sends the names, nestings and length prefixes that
// TestHostileInputLeavesDataAlone does not: each gets an error reply or a
// closed connection, and the stored data is unchanged.
func TestHostileMoreNames(t *testing.T) {
	sc := startSidecar(t)
	c := sc.Client()
	seedApp(t, c)
	before := checksum(t, c)

	hello := mustFrame(t, map[string]any{"id": 1, "op": "hello", "versions": []int{1}})
	frame := func(m map[string]any) []byte { return mustFrame(t, m) }
	put := func(gov, state string) []byte {
		return cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": gov, "state": state, "value": 1}))
	}
	deepMap := any(1)
	for range wire.MaxDepth + 10 {
		deepMap = map[string]any{"k": deepMap}
	}
	cases := []struct {
		name   string
		input  []byte
		closes bool
		code   wire.Code
	}{
		{"4 GiB length prefix after hello", cat(hello, []byte{0xff, 0xff, 0xff, 0xff}), true, wire.CodeTooLarge},
		{"2 GiB length prefix after hello", cat(hello, []byte{0x80, 0, 0, 0}), true, wire.CodeTooLarge},
		{"slash in state", put("app", "a/b"), false, wire.CodeInvalidArgument},
		{"slash in governor", put("a/b", "s00"), false, wire.CodeInvalidArgument},
		{"parent in governor", put("../x", "s00"), false, wire.CodeInvalidArgument},
		{"reserved state", put("app", "__x__"), false, wire.CodeInvalidArgument},
		{"empty state", put("app", ""), false, wire.CodeInvalidArgument},
		{"empty governor", put("", "s00"), false, wire.CodeInvalidArgument},
		{"invalid utf-8 governor", put("ap\xc3", "s00"), false, wire.CodeInvalidArgument},
		{"overlong utf-8 state", put("app", "\xc0\xaf"), false, wire.CodeInvalidArgument},
		{"invalid utf-8 in batch", cat(hello, frame(map[string]any{"id": 2, "op": "batch_put", "items": []any{
			map[string]any{"governor": "app", "state": "s00", "value": 2},
			map[string]any{"governor": "app", "state": "\xff", "value": 2}}})), false, wire.CodeInvalidArgument},
		{"invalid utf-8 list prefix", cat(hello, frame(map[string]any{"id": 2, "op": "list", "governor": "app", "prefix": "\xfe"})), false, wire.CodeInvalidArgument},
		{"delete path-like", cat(hello, frame(map[string]any{"id": 2, "op": "delete", "governor": "app", "state": "../s00"})), false, wire.CodeInvalidArgument},
		{"deep map in an unknown field", cat(hello, frame(map[string]any{"id": 2, "op": "get", "governor": "app", "state": "s00", "x": deepMap})), false, wire.CodeInvalidArgument},
		{"deep map as value", cat(hello, frame(map[string]any{"id": 2, "op": "put", "governor": "app", "state": "s00", "value": deepMap})), false, wire.CodeInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("unix", sc.Socket)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			input := tc.input
			if !tc.closes {
				input = cat(input, frame(map[string]any{"id": pingID, "op": "ping"}))
			}
			if _, err := conn.Write(input); err != nil {
				t.Fatal(err)
			}
			codes, closed := readReplies(t, conn, 2*time.Second, !tc.closes)
			if tc.closes != closed {
				t.Fatalf("closed=%v, want %v; replies %v", closed, tc.closes, codes)
			}
			found := false
			for _, c := range codes {
				found = found || c == tc.code
			}
			if !found {
				t.Fatalf("replies %v, want one with %s", codes, tc.code)
			}
			if err := c.Ping(context.Background()); err != nil {
				t.Fatalf("sidecar stopped serving: %v", err)
			}
			if after := checksum(t, c); after != before {
				t.Fatalf("stored data changed")
			}
		})
	}
}

// TestThousandsOfIdleConnections fills --max-conns with idle connections:
// the next one is refused with a clear Unavailable frame, memory stays
// bounded, and once idle connections go a fresh client is served.
func TestThousandsOfIdleConnections(t *testing.T) {
	const n = 2000
	sc := startSidecar(t, "--max-conns", strconv.Itoa(n), "--max-conns-per-uid", strconv.Itoa(n), "--log-level", "info")
	c := sc.Client()
	seedApp(t, c)
	before := checksum(t, c)
	c.Close() // its connection would take a slot

	waitConns := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			probe := client.New(sc.Socket)
			st, err := probe.Stats(context.Background())
			probe.Close()
			if err == nil && st.Connections == want+1 { // +1: the probe
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("connections: %v %v, want %d", st, err, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitConns(0)
	rssBefore := sc.rssBytes(t)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range n {
		nc, err := net.Dial("unix", sc.Socket)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, nc)
	}
	// Every one of them was accepted: none got a refusal.
	deadline := time.Now().Add(30 * time.Second)
	for {
		over, err := net.Dial("unix", sc.Socket)
		if err != nil {
			t.Fatal(err)
		}
		over.SetReadDeadline(time.Now().Add(5 * time.Second))
		body, err := wire.ReadFrame(bufio.NewReader(over), nil, 1<<20)
		over.Close()
		if err != nil {
			t.Fatalf("connection over --max-conns: no refusal frame: %v", err)
		}
		var resp wire.Response
		if err := wire.NewCodec().Decode(body, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.ID == 0 && resp.Error != nil && resp.Error.Code == wire.CodeUnavailable &&
			strings.Contains(resp.Error.Message, "too many connections") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("over the cap: %+v %+v", resp, resp.Error)
		}
	}
	// An idle connection costs its goroutine and its read buffer, about
	// 10 KiB; a binary built with -race adds its shadow memory and
	// goroutine state, several times that.
	perConn := int64(32 << 10)
	if raceEnabled {
		perConn = 128 << 10
	}
	rss := sc.rssBytes(t)
	if grew := rss - rssBefore; grew > int64(n)*perConn {
		t.Fatalf("RSS grew %d MiB (%d KiB per connection) with %d idle connections, bound %d KiB per connection",
			grew>>20, grew/int64(n)>>10, n, perConn>>10)
	}
	t.Logf("RSS with %d idle connections: %d MiB (%d MiB before)", n, rss>>20, rssBefore>>20)

	// Free a few slots: the client may open more than one connection.
	for _, nc := range conns[:10] {
		nc.Close()
	}
	conns = conns[10:]
	fresh := client.New(sc.Socket)
	defer fresh.Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := fresh.Ping(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fresh client not served after a slot freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if after := checksum(t, fresh); after != before {
		t.Fatal("stored data changed")
	}
}

// TestClientThatNeverReads pipelines reads of a large state and never
// reads a reply: the sidecar stops reading from it instead of buffering
// every reply, closes it after the idle timeout, and keeps serving others.
func TestClientThatNeverReads(t *testing.T) {
	const idle = 2 * time.Second
	sc := startSidecar(t, "--idle-timeout", idle.String())
	c := sc.Client()
	seedApp(t, c)
	big := strings.Repeat("b", 512<<10)
	if _, err := c.Put(context.Background(), "big", "v", big); err != nil {
		t.Fatal(err)
	}
	before := checksum(t, c)
	rssBefore := sc.rssBytes(t)

	conn, err := net.Dial("unix", sc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if uc, ok := conn.(*net.UnixConn); ok {
		uc.SetReadBuffer(4 << 10) // keep what the kernel holds for us small
	}
	// 2000 gets of 512 KiB: 1 GiB of replies if the sidecar buffered them.
	const gets = 2000
	var input []byte
	input = append(input, mustFrame(t, map[string]any{"id": 1, "op": "hello", "versions": []int{1}})...)
	for i := range gets {
		input = append(input, mustFrame(t, map[string]any{"id": i + 2, "op": "get", "governor": "big", "state": "v"})...)
	}
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(input); err != nil {
		t.Fatalf("writing the pipelined requests: %v", err)
	}

	// Meanwhile other clients are served.
	start := time.Now()
	for time.Since(start) < idle+time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Get(ctx, "app", "s01")
		cancel()
		if err != nil {
			t.Fatalf("other client not served while one does not read: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rss := sc.rssBytes(t); rss > rssBefore+64<<20 || rss > maxRSS {
		t.Fatalf("RSS grew from %d to %d MiB: replies are buffered without bound", rssBefore>>20, rss>>20)
	}

	// The idle timeout has passed: reading now drains what was sent before
	// the sidecar stopped, then the end of the connection.
	got := 0
	br := bufio.NewReaderSize(conn, 1<<20)
	conn.SetReadDeadline(time.Now().Add(idle + 10*time.Second))
	for {
		if _, err := wire.ReadFrame(br, nil, 8<<20); err != nil {
			break
		}
		got++
	}
	if got > gets/4 {
		t.Fatalf("read %d of %d replies: the sidecar kept serving a peer that did not read", got, gets)
	}
	t.Logf("the sidecar sent %d of %d replies before closing", got, gets)
	if _, err := conn.Write(mustFrame(t, map[string]any{"id": 9999, "op": "ping"})); err == nil {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := wire.ReadFrame(br, nil, 8<<20); err == nil {
			t.Fatal("connection still served after the idle timeout")
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if after := checksum(t, c); after != before {
		t.Fatal("stored data changed")
	}
}
