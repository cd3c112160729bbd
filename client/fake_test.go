package client

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// fakeServer speaks the frame protocol on a Unix socket, so that the client
// can be tested without the real sidecar. It answers hello itself and passes
// every other request to handle, which replies (now or later) through the
// fakeConn. newFakeServer's default handler serves a memStore.
type fakeServer struct {
	t     testing.TB
	path  string
	ln    net.Listener
	hello wire.Hello
	store *memStore

	// handle is called on the connection's read goroutine. Set it before the
	// first request.
	handle func(fc *fakeConn, req *wire.Request)

	accepted atomic.Int64 // connections accepted
	requests atomic.Int64 // requests other than hello

	mu    sync.Mutex
	conns map[*fakeConn]struct{}
	wg    sync.WaitGroup
}

type fakeConn struct {
	s  *fakeServer
	nc net.Conn

	mu sync.Mutex
	cd *wire.Codec
}

func newFakeServer(t testing.TB) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{
		t:    t,
		path: path,
		ln:   ln,
		hello: wire.Hello{
			Version:  wire.ProtocolVersion,
			Server:   "fake",
			NodeID:   "fake-node",
			MaxFrame: wire.DefaultMaxFrame,
			MaxValue: wire.MaxValueSize,
			MaxBatch: wire.MaxBatch,
		},
		store: newMemStore(),
		conns: make(map[*fakeConn]struct{}),
	}
	s.handle = func(fc *fakeConn, req *wire.Request) { fc.reply(s.store.serve(req)) }
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		fc := &fakeConn{s: s, nc: nc, cd: wire.NewCodec()}
		s.mu.Lock()
		s.conns[fc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go fc.serve()
	}
}

func (fc *fakeConn) serve() {
	defer fc.s.wg.Done()
	defer fc.close()
	br := bufio.NewReader(fc.nc)
	cd := wire.NewCodec()
	for {
		body, err := wire.ReadFrame(br, nil, wire.DefaultMaxFrame)
		if err != nil {
			return
		}
		req := new(wire.Request)
		if err := cd.Decode(body, req); err != nil {
			fc.s.t.Errorf("fake server: decode request: %v", err)
			return
		}
		if req.Op == wire.OpHello {
			h := fc.s.hello
			fc.reply(&wire.Response{ID: req.ID, Hello: &h})
			continue
		}
		fc.s.requests.Add(1)
		fc.s.handle(fc, req)
	}
}

// reply sends resp; errors (the client went away) are ignored.
func (fc *fakeConn) reply(resp *wire.Response) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	frame, err := fc.cd.AppendFrame(nil, resp)
	if err != nil {
		fc.s.t.Errorf("fake server: encode reply: %v", err)
		return
	}
	fc.nc.Write(frame)
}

func (fc *fakeConn) close() {
	fc.nc.Close()
	fc.s.mu.Lock()
	delete(fc.s.conns, fc)
	fc.s.mu.Unlock()
}

// closeConns closes every open connection from the server side.
func (s *fakeServer) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for fc := range s.conns {
		fc.nc.Close()
	}
}

// openConns returns how many connections are open.
func (s *fakeServer) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *fakeServer) close() {
	s.ln.Close()
	s.closeConns()
	s.wg.Wait()
}

// client returns a client of s, closed when the test ends.
func (s *fakeServer) client(conns int) *Client {
	c := &Client{Socket: s.path, Conns: conns, Name: "test"}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// memStore is a tiny in-memory version of the sidecar's semantics, enough
// to exercise every client call.
type memStore struct {
	mu     sync.Mutex
	recs   map[wire.Key]*wire.Record
	now    int64
	counts map[string]uint64
}

func newMemStore() *memStore {
	return &memStore{recs: make(map[wire.Key]*wire.Record), counts: make(map[string]uint64)}
}

func (m *memStore) serve(req *wire.Request) *wire.Response {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[req.Op]++
	resp := &wire.Response{ID: req.ID}
	var err *wire.Error
	switch req.Op {
	case wire.OpPing:
	case wire.OpGet:
		resp.Record, err = m.get(wire.Key{Governor: req.Governor, State: req.State})
	case wire.OpPut, wire.OpDelete:
		resp.Record, err = m.write(wire.Item{
			Governor: req.Governor, State: req.State, Value: req.Value,
			Delete: req.Op == wire.OpDelete, IfVersion: req.IfVersion, IfAbsent: req.IfAbsent,
		}, req.Actor, req.Reason)
	case wire.OpBatchGet:
		for _, k := range req.Keys {
			r, _ := m.get(k)
			resp.Records = append(resp.Records, r)
		}
	case wire.OpBatchPut:
		saved := make(map[wire.Key]*wire.Record, len(m.recs))
		for k, r := range m.recs {
			saved[k] = r
		}
		for _, it := range req.Items {
			var r *wire.Record
			if r, err = m.write(it, req.Actor, req.Reason); err != nil {
				m.recs = saved
				resp.Records = nil
				break
			}
			resp.Records = append(resp.Records, r)
		}
	case wire.OpList:
		resp.Records, resp.Cursor = m.list(req)
	case wire.OpStats:
		counts := make(map[string]uint64, len(m.counts))
		for op, n := range m.counts {
			counts[op] = n
		}
		resp.Stats = &wire.Stats{NodeID: "fake-node", Server: "fake", States: int64(len(m.recs)), Requests: counts}
	default:
		err = wire.Errorf(wire.CodeUnknownOp, "unknown op %q", req.Op)
	}
	if err != nil {
		return &wire.Response{ID: req.ID, Error: err}
	}
	return resp
}

func (m *memStore) get(k wire.Key) (*wire.Record, *wire.Error) {
	r := m.recs[k]
	if r == nil || r.Deleted {
		e := wire.Errorf(wire.CodeNotFound, "no such state")
		e.Governor, e.State = k.Governor, k.State
		return nil, e
	}
	c := *r
	c.FromCache = true
	return &c, nil
}

func (m *memStore) write(it wire.Item, actor, reason string) (*wire.Record, *wire.Error) {
	k := wire.Key{Governor: it.Governor, State: it.State}
	cur := m.recs[k]
	var version uint64
	live := cur != nil && !cur.Deleted
	if cur != nil {
		version = cur.Version
	}
	liveVersion := uint64(0)
	if live {
		liveVersion = version
	}
	conflict := func(expected uint64) (*wire.Record, *wire.Error) {
		e := wire.Errorf(wire.CodeVersionConflict, "precondition failed")
		e.Governor, e.State = k.Governor, k.State
		e.Expected, e.Actual = &expected, &liveVersion
		return nil, e
	}
	switch {
	case it.IfAbsent && live:
		return conflict(0)
	case it.IfVersion != nil && *it.IfVersion != liveVersion:
		return conflict(*it.IfVersion)
	case it.Delete && !live:
		e := wire.Errorf(wire.CodeNotFound, "no such state")
		e.Governor, e.State = k.Governor, k.State
		return nil, e
	}
	m.now++
	r := &wire.Record{
		Governor:  k.Governor,
		State:     k.State,
		Value:     it.Value,
		Version:   version + 1,
		Deleted:   it.Delete,
		UpdatedAt: m.now,
		Change:    wire.Change{Actor: actor, Reason: reason, Time: m.now},
		Origin:    "fake-node",
		Pending:   true,
	}
	if it.Delete {
		r.Value = nil
	}
	m.recs[k] = r
	out := *r
	out.Value = nil
	out.FromCache = true
	return &out, nil
}

func (m *memStore) list(req *wire.Request) ([]*wire.Record, string) {
	var names []string
	for k, r := range m.recs {
		if k.Governor == req.Governor && !r.Deleted && strings.HasPrefix(k.State, req.Prefix) && k.State > req.Cursor {
			names = append(names, k.State)
		}
	}
	sort.Strings(names)
	limit := req.Limit
	if limit == 0 {
		limit = wire.DefaultListLimit
	}
	var next string
	if len(names) > limit {
		names = names[:limit]
		next = names[limit-1]
	}
	out := make([]*wire.Record, len(names))
	for i, n := range names {
		out[i], _ = m.get(wire.Key{Governor: req.Governor, State: n})
	}
	return out, next
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// errorsAsConn returns err's *ConnError, or nil.
func errorsAsConn(err error) *ConnError {
	var ce *ConnError
	if errors.As(err, &ce) {
		return ce
	}
	return nil
}
