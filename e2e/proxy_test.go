package e2e

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// proxy forwards TCP connections from a local address to target, and can cut
// the link (close every connection and refuse new ones) and restore it on the
// same address: for a sidecar, its Firestore goes away and comes back.
type proxy struct {
	t      *testing.T
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	// paused holds every byte in flight until Resume (or Cut); resumed
	// is signalled on mu when it ends.
	paused  bool
	resumed *sync.Cond
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	p := &proxy{t: t, target: target, conns: make(map[net.Conn]struct{})}
	p.resumed = sync.NewCond(&p.mu)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.Cut)
	return p
}

// Addr is the address to connect to instead of target.
func (p *proxy) Addr() string { return p.addr }

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				return
			}
			p.wg.Add(2)
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
}

// track registers a pair of connections, unless the link was cut meanwhile.
func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, gated{p, src}) // ends with an error when the link is cut
	dst.Close()
	src.Close()
}

// gated is a connection's reading side that holds what it read while the
// proxy is paused.
type gated struct {
	p *proxy
	r io.Reader
}

func (g gated) Read(b []byte) (int, error) {
	n, err := g.r.Read(b)
	g.p.mu.Lock()
	for g.p.paused {
		g.p.resumed.Wait()
	}
	g.p.mu.Unlock()
	return n, err
}

// Pause stalls the link: connections stay open and nothing they carry
// arrives until Resume (a partition that heals, without the broken
// connections of Cut).
func (p *proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume delivers what Pause held and lets the link carry bytes again.
func (p *proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.resumed.Broadcast()
	p.mu.Unlock()
}

// Cut closes the listener and every connection: the target is unreachable.
func (p *proxy) Cut() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.paused = false // what was held goes nowhere: the connections close
	p.resumed.Broadcast()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	p.wg.Wait()
}

// Restore listens on the same address again.
func (p *proxy) Restore() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was just released
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}
