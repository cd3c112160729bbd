package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// deadlineGrace is how long after a phase's deadline a connection may still
// wait for replies before its reads and writes fail: a server that stops
// answering cannot hang the tool.
const deadlineGrace = 10 * time.Second

// maxBatchBytes is how many bytes of pipelined requests one write carries
// at most.
const maxBatchBytes = 64 << 10

// ErrConnFailed is wrapped by a phase's error when a connection broke.
var ErrConnFailed = errors.New("connection failed")

// benchConn is one connection to the sidecar, past the hello.
type benchConn struct {
	nc       net.Conn
	br       *bufio.Reader
	codec    *wire.Codec // decodes replies; owned by whoever reads
	maxFrame int
	rbuf     []byte
	wbuf     []byte
	broken   error // set when the connection failed; it is not used again
}

// dial connects to socket and says hello.
func dial(ctx context.Context, socket string, timeout time.Duration) (*benchConn, *wire.Hello, error) {
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, nil, err
	}
	c := &benchConn{
		nc:       nc,
		br:       bufio.NewReaderSize(nc, 64<<10),
		codec:    wire.NewCodec(),
		maxFrame: wire.DefaultMaxFrame,
	}
	hello, err := c.hello(timeout)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("hello: %w", err)
	}
	if hello.MaxFrame > 0 {
		c.maxFrame = hello.MaxFrame
	}
	return c, hello, nil
}

func (c *benchConn) hello(timeout time.Duration) (*wire.Hello, error) {
	if err := c.nc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	req := wire.Request{ID: 1, Op: wire.OpHello, Versions: []uint32{wire.ProtocolVersion}, Client: "tai-bench"}
	frame, err := c.codec.AppendFrame(nil, &req)
	if err != nil {
		return nil, err
	}
	if _, err := c.nc.Write(frame); err != nil {
		return nil, err
	}
	var resp wire.Response
	if err := c.roundTripReply(&resp); err != nil {
		return nil, err
	}
	switch {
	case resp.Error != nil:
		return nil, resp.Error
	case resp.ID != 1:
		return nil, fmt.Errorf("%w: hello reply has id %d", errBadReply, resp.ID)
	case resp.Hello == nil:
		return nil, fmt.Errorf("%w: hello reply without hello", errBadReply)
	case resp.Hello.Version != wire.ProtocolVersion:
		return nil, fmt.Errorf("server agreed on protocol version %d, want %d", resp.Hello.Version, wire.ProtocolVersion)
	}
	return resp.Hello, c.nc.SetDeadline(time.Time{})
}

// roundTripReply reads one frame and decodes it fully into resp.
func (c *benchConn) roundTripReply(resp *wire.Response) error {
	body, err := wire.ReadFrame(c.br, c.rbuf, c.maxFrame)
	if err != nil {
		return err
	}
	c.rbuf = body
	return c.codec.Decode(body, resp)
}

// call sends one request and decodes its reply in full. It is for setup and
// checks, not for measured traffic.
func (c *benchConn) call(req *wire.Request, timeout time.Duration) (*wire.Response, error) {
	if err := c.nc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	defer c.nc.SetDeadline(time.Time{})
	frame, err := c.codec.AppendFrame(nil, req)
	if err != nil {
		return nil, err
	}
	if _, err := c.nc.Write(frame); err != nil {
		return nil, err
	}
	resp := new(wire.Response)
	if err := c.roundTripReply(resp); err != nil {
		return nil, err
	}
	if resp.ID != req.ID {
		return nil, fmt.Errorf("%w: reply id %d, want %d", errBadReply, resp.ID, req.ID)
	}
	return resp, nil
}

// phase is one stretch of load with one mix.
type phase struct {
	name string
	mix  Mix
	// seq picks keys in order (request n uses key n mod keys) instead of
	// uniformly at random.
	seq bool
	// requests caps the number of requests sent; 0 means no cap.
	requests int64
	// deadline is when no more requests are sent.
	deadline time.Time
}

// phaseResult is what a phase measured.
type phaseResult struct {
	name     string
	elapsed  time.Duration
	hist     [numOps]*Histogram
	errs     map[wire.Code]uint64
	connErrs []error
	// interrupted is set when the context ended the phase early.
	interrupted bool
}

func newPhaseResult(name string) *phaseResult {
	r := &phaseResult{name: name, errs: make(map[wire.Code]uint64)}
	for i := range r.hist {
		r.hist[i] = NewHistogram()
	}
	return r
}

// requests returns the number of replies received.
func (r *phaseResult) requests() uint64 {
	var n uint64
	for _, h := range r.hist {
		n += h.Count()
	}
	return n
}

// failed counts error replies other than NotFound (a normal answer to a
// get of a missing state).
func (r *phaseResult) failed() uint64 {
	var n uint64
	for c, v := range r.errs {
		if c != wire.CodeNotFound {
			n += v
		}
	}
	return n
}

func (r *phaseResult) merge(o *phaseResult) {
	for i := range r.hist {
		r.hist[i].Merge(o.hist[i])
	}
	for c, v := range o.errs {
		r.errs[c] += v
	}
	r.connErrs = append(r.connErrs, o.connErrs...)
}

// engine drives load over a set of connections.
type engine struct {
	conns    []*benchConn
	tmpl     [numOps]template
	keys     uint64
	pipeline int
	seed     uint64
}

// newEngine builds the request templates for governor and value.
func newEngine(conns []*benchConn, governor string, value wire.Raw, keys uint64, pipeline int, seed uint64) (*engine, error) {
	e := &engine{conns: conns, keys: keys, pipeline: pipeline, seed: seed}
	c := wire.NewCodec()
	for op := range numOps {
		t, err := buildTemplate(c, op, governor, value)
		if err != nil {
			return nil, err
		}
		e.tmpl[op] = t
	}
	return e, nil
}

// phaseState is what a phase's connections share.
type phaseState struct {
	ph     phase
	epoch  time.Time
	issued atomic.Int64
	stop   atomic.Bool
}

// next hands out the number of the next request, or false when the phase
// is over.
func (s *phaseState) next(now time.Time) (int64, bool) {
	if s.stop.Load() || now.After(s.ph.deadline) {
		return 0, false
	}
	t := s.issued.Add(1) - 1
	if s.ph.requests > 0 && t >= s.ph.requests {
		return 0, false
	}
	return t, true
}

// run runs one phase on every connection that still works and returns what
// it measured. Its error wraps ErrConnFailed when a connection broke for any
// reason but the context's end.
func (e *engine) run(ctx context.Context, ph phase) (*phaseResult, error) {
	st := &phaseState{ph: ph, epoch: time.Now()}
	var live []*benchConn
	for _, c := range e.conns {
		if c.broken == nil {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return nil, fmt.Errorf("%w: no connection left", ErrConnFailed)
	}
	for _, c := range live {
		if err := c.nc.SetDeadline(ph.deadline.Add(deadlineGrace)); err != nil {
			return nil, err
		}
	}

	// On cancellation, stop issuing and unblock every read and write.
	done := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-ctx.Done():
			st.stop.Store(true)
			for _, c := range live {
				c.nc.SetDeadline(time.Now())
			}
		case <-done:
		}
	})

	results := make([]*phaseResult, len(live))
	var wg sync.WaitGroup
	for i, c := range live {
		results[i] = newPhaseResult(ph.name)
		rng := rand.New(rand.NewPCG(e.seed, uint64(i)))
		wg.Go(func() {
			var err error
			if e.pipeline <= 1 {
				err = e.runSerial(c, st, rng, results[i])
			} else {
				err = e.runPipelined(c, st, rng, results[i])
			}
			if err != nil && !(st.stop.Load() && errors.Is(err, os.ErrDeadlineExceeded)) {
				c.broken = err
				results[i].connErrs = append(results[i].connErrs, err)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(st.epoch)
	close(done)
	watch.Wait()

	total := newPhaseResult(ph.name)
	total.elapsed = elapsed
	total.interrupted = ctx.Err() != nil
	for _, r := range results {
		total.merge(r)
	}
	if total.interrupted {
		for _, c := range live {
			c.broken = ctx.Err() // a reply may still be on its way
		}
	}
	if len(total.connErrs) > 0 {
		return total, fmt.Errorf("%w: %d of %d connections in phase %s, first: %v",
			ErrConnFailed, len(total.connErrs), len(live), ph.name, total.connErrs[0])
	}
	return total, nil
}

// choose returns the op and key of request number t.
func (e *engine) choose(st *phaseState, rng *rand.Rand, t int64) (opKind, uint64) {
	op, single := st.ph.mix.single()
	if !single {
		op = st.ph.mix.pick(rng.Uint32N(st.ph.mix.Total))
	}
	if st.ph.seq {
		return op, uint64(t) % e.keys
	}
	return op, rng.Uint64N(e.keys)
}

// runSerial sends one request at a time and waits for its reply.
func (e *engine) runSerial(c *benchConn, st *phaseState, rng *rand.Rand, res *phaseResult) error {
	var r reply
	for seq := uint64(1); ; seq++ {
		start := time.Now()
		t, ok := st.next(start)
		if !ok {
			return nil
		}
		op, key := e.choose(st, rng, t)
		id := idBase | seq<<16
		c.wbuf = e.tmpl[op].appendTo(c.wbuf[:0], id, key)
		if _, err := c.nc.Write(c.wbuf); err != nil {
			return err
		}
		body, err := wire.ReadFrame(c.br, c.rbuf, c.maxFrame)
		if err != nil {
			return err
		}
		c.rbuf = body
		lat := time.Since(start)
		if err := decodeReply(c.codec, body, &r); err != nil {
			return err
		}
		if r.ID != id {
			return fmt.Errorf("%w: reply id %#x, want %#x", errBadReply, r.ID, id)
		}
		if r.Error != nil {
			res.errs[r.Error.Code]++
		}
		res.hist[op].Record(uint64(lat))
	}
}

// slot is one request in flight on a pipelined connection. The writer fills
// it before the request is sent and the reader reads it once the reply is
// in; the atomics order the two.
type slot struct {
	id    atomic.Uint64
	op    atomic.Uint32
	start atomic.Int64 // nanoseconds since the phase's epoch
}

// runPipelined keeps up to e.pipeline requests in flight: this goroutine
// writes (batching whatever is ready into one write) and a second one reads.
// Replies may come in any order; a reply's id names its slot.
func (e *engine) runPipelined(c *benchConn, st *phaseState, rng *rand.Rand, res *phaseResult) error {
	p := e.pipeline
	slots := make([]slot, p)
	free := make(chan uint16, p) // slots ready for a request
	sent := make(chan struct{}, p)
	dead := make(chan struct{}) // closed when the reader fails
	for i := range p {
		free <- uint16(i)
	}

	var rerr error
	var reader sync.WaitGroup
	reader.Go(func() {
		rerr = e.readReplies(c, st, slots, free, sent, res)
		if rerr != nil {
			close(dead)
		}
	})

	var werr error
	batch := make([]uint16, 0, p)
	seq := uint64(1)
	stopped := false
	for !stopped && werr == nil {
		var s uint16
		select {
		case s = <-free:
		case <-dead:
			stopped = true
			continue
		}
		c.wbuf = c.wbuf[:0]
		batch = batch[:0]
		for {
			t, ok := st.next(time.Now())
			if !ok {
				free <- s
				stopped = true
				break
			}
			op, key := e.choose(st, rng, t)
			id := idBase | seq<<16 | uint64(s)
			seq++
			sl := &slots[s]
			sl.id.Store(id)
			sl.op.Store(uint32(op))
			c.wbuf = e.tmpl[op].appendTo(c.wbuf, id, key)
			batch = append(batch, s)
			if len(c.wbuf) >= maxBatchBytes {
				break
			}
			var more bool
			select {
			case s, more = <-free:
			default:
			}
			if !more {
				break
			}
		}
		if len(batch) == 0 {
			continue
		}
		// Stamp the batch just before it leaves.
		now := int64(time.Since(st.epoch))
		for _, s := range batch {
			slots[s].start.Store(now)
			sent <- struct{}{}
		}
		if _, err := c.nc.Write(c.wbuf); err != nil {
			werr = err
			c.nc.Close() // the reader is waiting for replies that cannot come
		}
	}
	close(sent)
	reader.Wait()
	if werr != nil {
		return werr
	}
	return rerr
}

// readReplies reads one reply for every token on sent until sent is closed.
func (e *engine) readReplies(c *benchConn, st *phaseState, slots []slot, free chan<- uint16, sent <-chan struct{}, res *phaseResult) error {
	var r reply
	for range sent {
		body, err := wire.ReadFrame(c.br, c.rbuf, c.maxFrame)
		if err != nil {
			return err
		}
		c.rbuf = body
		now := int64(time.Since(st.epoch))
		if err := decodeReply(c.codec, body, &r); err != nil {
			return err
		}
		s := r.ID & 0xffff
		if s >= uint64(len(slots)) || slots[s].id.Load() != r.ID {
			return fmt.Errorf("%w: reply id %#x matches no request in flight", errBadReply, r.ID)
		}
		sl := &slots[s]
		if r.Error != nil {
			res.errs[r.Error.Code]++
		}
		res.hist[sl.op.Load()].Record(uint64(max(now-sl.start.Load(), 0)))
		free <- uint16(s)
	}
	return nil
}
