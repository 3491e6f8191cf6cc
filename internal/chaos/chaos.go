// Package chaos is a tiny TCP fault-injecting proxy for end-to-end failover
// tests, in the spirit of toxiproxy. A test starts a real backend on
// loopback, puts a Proxy in front of it, points the code under test at
// Proxy.Addr and switches faults at runtime with Proxy.Set to make the
// backend look like a region that dies, hangs, slows down, cuts responses
// or refuses to talk.
//
// The faults:
//
//   - Pass forwards bytes both ways unchanged. It is the default.
//   - Kill closes the listener, so new connects are refused, and resets
//     (TCP RST) every open connection on both sides. Leaving Kill listens
//     again on the same address, so the code under test need not be
//     reconfigured.
//   - Hang stops forwarding on open connections (bytes read are held, never
//     delivered) and accepts new connections without ever dialling the
//     backend for them. Nothing is closed, as with a peer that blackholes
//     traffic. Leaving Hang resets every connection that was open during it,
//     because the held bytes can no longer be delivered in a sane state.
//   - Slow delivers every chunk going from the backend to the client a fixed
//     delay after the proxy read it, like netem delay: pipelined and in
//     order. It affects open and new connections. At most 64 chunks (up to
//     2 MiB) wait per connection, so throughput is capped near 2 MiB per
//     delay; beyond that the backend is slowed by TCP back-pressure.
//   - ResetAfter lets connections accepted while it is set carry n bytes
//     from the backend to the client and then resets both sides, which cuts
//     a response mid-body.
//   - AcceptThenClose accepts new connections and closes them at once
//     without reading; open connections keep working.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// bufSize is the copy buffer per direction and connection, as io.Copy.
	bufSize = 32 << 10
	// queueLen bounds the chunks held for delayed delivery per connection,
	// so a fast backend behind Slow cannot make the proxy buffer without
	// limit; a full queue back-pressures the backend through TCP.
	queueLen = 64
)

type kind uint8

const (
	pass kind = iota // zero, so the zero Fault is Pass
	kill
	hang
	slow
	resetAfter
	acceptThenClose
)

// Fault is a failure mode of a Proxy. Build one with Pass, Kill, Hang, Slow,
// ResetAfter or AcceptThenClose; the zero Fault is Pass.
type Fault struct {
	kind kind
	d    time.Duration // Slow's delay
	n    int64         // ResetAfter's byte budget
}

// Pass forwards bytes both ways unchanged.
func Pass() Fault { return Fault{} }

// Kill refuses new connects and resets every open connection on both sides.
// Setting any other fault afterwards listens again on the same address.
func Kill() Fault { return Fault{kind: kill} }

// Hang holds all bytes on open connections and accepts new connections
// without forwarding anything. Leaving Hang resets the hung connections.
func Hang() Fault { return Fault{kind: hang} }

// Slow delivers each chunk from the backend to the client d after the proxy
// read it, on open and new connections. A negative d counts as zero.
func Slow(d time.Duration) Fault { return Fault{kind: slow, d: max(d, 0)} }

// ResetAfter makes connections accepted while it is set reset both sides
// once n bytes have gone from the backend to the client. A negative n counts
// as zero, which resets as soon as the backend sends anything.
func ResetAfter(n int64) Fault { return Fault{kind: resetAfter, n: max(n, 0)} }

// AcceptThenClose closes new connections right after accepting them, without
// reading; open connections keep working.
func AcceptThenClose() Fault { return Fault{kind: acceptThenClose} }

// String returns a short lower-case name for logs and test names: "pass",
// "kill", "hang", "slow(100ms)", "reset-after(10)" or "accept-then-close".
func (f Fault) String() string {
	switch f.kind {
	case pass:
		return "pass"
	case kill:
		return "kill"
	case hang:
		return "hang"
	case slow:
		return "slow(" + f.d.String() + ")"
	case resetAfter:
		return "reset-after(" + strconv.FormatInt(f.n, 10) + ")"
	case acceptThenClose:
		return "accept-then-close"
	}
	return "fault(" + strconv.Itoa(int(f.kind)) + ")"
}

// Proxy forwards TCP connections from a loopback listener to a target and
// injects the current Fault. Create it with Start; its methods are safe for
// concurrent use.
type Proxy struct {
	target string
	addr   string // fixed at Start so Kill and back keeps the address
	lc     net.ListenConfig
	dialer net.Dialer

	cur atomic.Pointer[Fault] // read per chunk; written under mu
	wg  sync.WaitGroup        // every goroutine the proxy started

	// setMu serialises Set and Close, which wait for the accept goroutine
	// and so cannot hold mu while doing it.
	setMu sync.Mutex

	mu         sync.Mutex
	ln         net.Listener // nil while killed or closed
	acceptDone chan struct{}
	conns      map[*conn]struct{}
	closed     bool
	err        error // first failure to listen again, reported by Close
}

// Start listens on 127.0.0.1 on a free port and forwards every accepted
// connection to target ("host:port"), dialled per connection.
func Start(target string) (*Proxy, error) {
	p := &Proxy{target: target, conns: make(map[*conn]struct{})}
	p.cur.Store(&Fault{})
	ln, err := p.lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("chaos: listen: %w", err)
	}
	p.addr = ln.Addr().String()
	p.mu.Lock()
	p.serveListener(ln)
	p.mu.Unlock()
	return p, nil
}

// Addr returns the proxy's listening address as host:port. It stays the
// same across Kill.
func (p *Proxy) Addr() string { return p.addr }

// URL returns "http://" + Addr(), for HTTP and WebSocket clients.
func (p *Proxy) URL() string { return "http://" + p.addr }

// Fault returns the current fault.
func (p *Proxy) Fault() Fault { return *p.cur.Load() }

// Conns returns the number of open client connections, hung ones included.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Set switches to fault f and returns once it took effect: after Kill the
// listener is closed and every connection reset; after leaving Kill the
// proxy listens again; after leaving Hang the hung connections are reset.
// If listening again fails, the proxy stays killed and Close reports the
// error. Set after Close does nothing.
func (p *Proxy) Set(f Fault) {
	p.setMu.Lock()
	defer p.setMu.Unlock()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	old := *p.cur.Load()
	// Connections are reset before the new fault is published, so no pipe
	// can see the new fault and forward bytes a hung connection held.
	if f.kind == kill || (old.kind == hang && f.kind != hang) {
		for c := range p.conns {
			c.end(true)
			delete(p.conns, c)
		}
	}
	var stopped chan struct{}
	if f.kind == kill && p.ln != nil {
		_ = p.ln.Close()
		p.ln, stopped = nil, p.acceptDone
	}
	p.cur.Store(&f)
	if f.kind != kill && p.ln == nil {
		ln, err := p.lc.Listen(context.Background(), "tcp", p.addr)
		if err != nil {
			// The truth is that nothing listens, so say Kill.
			p.cur.Store(&Fault{kind: kill})
			if p.err == nil {
				p.err = fmt.Errorf("chaos: listen again on %s: %w", p.addr, err)
			}
		} else {
			p.serveListener(ln)
		}
	}
	p.mu.Unlock()

	// The accept goroutine takes mu to register a connection, so wait for
	// it only after unlocking.
	if stopped != nil {
		<-stopped
	}
}

// Close stops the listener, closes every connection and returns once every
// goroutine the proxy started has ended. It returns the first error met
// listening again after Kill, if any. Close is idempotent.
func (p *Proxy) Close() error {
	p.setMu.Lock()
	defer p.setMu.Unlock()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.end(false)
		delete(p.conns, c)
	}
	p.mu.Unlock()

	p.wg.Wait()
	return p.err
}

// serveListener makes ln the live listener and starts its accept goroutine.
// The caller holds mu.
func (p *Proxy) serveListener(ln net.Listener) {
	done := make(chan struct{})
	p.ln, p.acceptDone = ln, done
	p.wg.Add(1)
	go p.accept(ln, done)
}

func (p *Proxy) accept(ln net.Listener, done chan struct{}) {
	defer p.wg.Done()
	defer close(done)
	for {
		cc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Resource exhaustion (EMFILE and the like) passes; back off
			// rather than spin, as net/http does.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		if p.ln != ln {
			// Killed or closed between Accept and here: the connection
			// belongs to a listener that is gone.
			p.mu.Unlock()
			reset(cc)
			continue
		}
		f := *p.cur.Load()
		if f.kind == acceptThenClose {
			p.mu.Unlock()
			_ = cc.Close()
			continue
		}
		c := newConn(cc, f)
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// conn is one client connection and, once dialled, its backend connection.
type conn struct {
	client net.Conn
	start  Fault // the fault when accepted, for Hang and ResetAfter
	ctx    context.Context
	cancel context.CancelFunc // aborts the backend dial
	done   chan struct{}      // closed by end

	mu    sync.Mutex
	back  net.Conn
	ended bool
}

func newConn(client net.Conn, start Fault) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{client: client, start: start, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// end closes both sides, with an RST if rst, and wakes everything waiting
// on the connection. Only the first call does anything; it never blocks, so
// it may run under Proxy.mu.
func (c *conn) end(rst bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	close(c.done)
	c.cancel()
	shut(c.client, rst)
	if c.back != nil {
		shut(c.back, rst)
	}
}

// attach records the dialled backend connection, or resets it and reports
// false if the connection ended while dialling.
func (c *conn) attach(back net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		reset(back)
		return false
	}
	c.back = back
	return true
}

func (p *Proxy) serve(c *conn) {
	defer p.wg.Done()
	defer p.forget(c)
	if c.start.kind == hang {
		// Accepted while hung: never dial, just hold the socket open until
		// the fault changes or the proxy closes.
		<-c.done
		return
	}
	back, err := p.dialer.DialContext(c.ctx, "tcp", p.target)
	if err != nil {
		// Ended while dialling, or the backend is down: the client sees a
		// reset, as from a proxy with nothing behind it.
		c.end(true)
		return
	}
	if !c.attach(back) {
		return
	}
	upDone := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(upDone)
		p.up(c, back)
	}()
	p.down(c, back)
	<-upDone
	c.end(false)
}

func (p *Proxy) forget(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// hold reports whether bytes may be forwarded now. Under Hang it holds them
// until the connection ends (leaving Hang ends it) and reports false.
func (p *Proxy) hold(c *conn) bool {
	if p.cur.Load().kind != hang {
		return true
	}
	<-c.done
	return false
}

// up copies client to backend, passing a half-close on.
func (p *Proxy) up(c *conn, back net.Conn) {
	buf := make([]byte, bufSize)
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			if !p.hold(c) {
				return
			}
			if _, werr := back.Write(buf[:n]); werr != nil {
				c.end(true)
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				closeWrite(back)
			} else {
				c.end(true) // pass a reset on; a no-op if we ended it
			}
			return
		}
	}
}

// chunk is a piece of backend output waiting for its delivery time.
type chunk struct {
	b    []byte
	due  time.Time
	last bool // reset the connection once b is written (ResetAfter)
}

// delayer writes queued chunks to the client at their due time. It exists
// only once a connection has seen Slow, so Pass stays a plain copy.
type delayer struct {
	q       chan chunk
	pending atomic.Int64 // queued or being written; zero means in order to bypass
	done    chan struct{}
}

// down copies backend to client, applying Slow, Hang and ResetAfter, and
// passes a half-close on once everything queued is written.
func (p *Proxy) down(c *conn, back net.Conn) {
	var (
		buf   = make([]byte, bufSize)
		limit = int64(-1)
		sent  int64
		d     *delayer
		eof   bool
	)
	if c.start.kind == resetAfter {
		limit = c.start.n
	}
	for {
		n, err := back.Read(buf)
		if n > 0 {
			at := time.Now() // Slow counts from the read, as netem
			b, last := buf[:n], false
			if limit >= 0 && sent+int64(n) >= limit {
				b, last = b[:limit-sent], true
			}
			sent += int64(len(b))
			if !p.deliver(c, &d, b, at, last) || last {
				break
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				eof = true
			} else {
				c.end(true)
			}
			break
		}
	}
	if d != nil {
		close(d.q)
		<-d.done
	}
	if eof {
		closeWrite(c.client) // fails harmlessly if the connection ended
	}
}

// deliver writes b to the client now, or queues it for the delayer when Slow
// is set or earlier chunks are still queued (order is kept). It reports
// false once the connection has ended.
func (p *Proxy) deliver(c *conn, dp **delayer, b []byte, at time.Time, last bool) bool {
	f := p.cur.Load()
	d := *dp
	if f.kind != slow && (d == nil || d.pending.Load() == 0) {
		if !p.hold(c) {
			return false
		}
		if len(b) > 0 {
			if _, err := c.client.Write(b); err != nil {
				c.end(true)
				return false
			}
		}
		if last {
			c.end(true)
			return false
		}
		return true
	}
	if d == nil {
		d = &delayer{q: make(chan chunk, queueLen), done: make(chan struct{})}
		*dp = d
		p.wg.Add(1)
		go p.delay(c, d)
	}
	var wait time.Duration
	if f.kind == slow {
		wait = f.d
	}
	d.pending.Add(1)
	select {
	case d.q <- chunk{b: bytes.Clone(b), due: at.Add(wait), last: last}:
		return true
	case <-c.done:
		return false
	}
}

// delay is the delayer goroutine of one connection; it ends when the queue
// is closed or the connection ends.
func (p *Proxy) delay(c *conn, d *delayer) {
	defer p.wg.Done()
	defer close(d.done)
	for ch := range d.q {
		if wait := time.Until(ch.due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return
			}
		}
		if !p.hold(c) {
			return
		}
		if len(ch.b) > 0 {
			if _, err := c.client.Write(ch.b); err != nil {
				c.end(true)
				return
			}
		}
		if ch.last {
			c.end(true)
			return
		}
		d.pending.Add(-1)
	}
}

// shut closes nc, with an RST instead of a FIN if rst.
func shut(nc net.Conn, rst bool) {
	if rst {
		reset(nc)
		return
	}
	_ = nc.Close()
}

// reset closes nc with an RST: linger 0 makes the kernel drop unsent data
// and abort, which the peer reads as ECONNRESET.
func reset(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = nc.Close()
}

// closeWrite half-closes nc so the peer reads EOF while the other direction
// keeps flowing.
func closeWrite(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = nc.Close()
}
