package chaos_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/earshot/earshot/internal/chaos"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds every wait in these tests; it is only reached on failure.
const waitLimit = 3 * time.Second

// silence is how long a hung connection must stay quiet. It is a read
// deadline, not a sleep: the test proves that nothing arrives within it.
const silence = 200 * time.Millisecond

func TestFaultString(t *testing.T) {
	for _, tc := range []struct {
		f    chaos.Fault
		want string
	}{
		{chaos.Pass(), "pass"},
		{chaos.Fault{}, "pass"},
		{chaos.Kill(), "kill"},
		{chaos.Hang(), "hang"},
		{chaos.Slow(100 * time.Millisecond), "slow(100ms)"},
		{chaos.ResetAfter(10), "reset-after(10)"},
		{chaos.AcceptThenClose(), "accept-then-close"},
	} {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestPass(t *testing.T) {
	p := start(t, echo(t))
	if got := p.Fault(); got != chaos.Pass() {
		t.Fatalf("initial fault %v, want pass", got)
	}
	if !strings.HasPrefix(p.URL(), "http://127.0.0.1:") || p.URL() != "http://"+p.Addr() {
		t.Fatalf("URL %q for Addr %q", p.URL(), p.Addr())
	}
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	roundTrip(t, c, "again")

	// A payload far larger than the copy buffers and socket buffers, written
	// while reading so neither side blocks the other.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(big)
		wrote <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(waitLimit))
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read big echo: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write big: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("big echo differs")
	}
}

func TestKill(t *testing.T) {
	p := start(t, echo(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")

	p.Set(chaos.Kill())
	if got := p.Fault(); got != chaos.Kill() {
		t.Fatalf("fault %v, want kill", got)
	}
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() = %d after kill, want 0", n)
	}
	expectReset(t, c)
	if nc, err := net.DialTimeout("tcp", p.Addr(), waitLimit); err == nil {
		nc.Close()
		t.Fatal("dial succeeded while killed")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while killed: %v, want connection refused", err)
	}

	p.Set(chaos.Pass())
	roundTrip(t, dial(t, p.Addr()), "back")
}

func TestHang(t *testing.T) {
	p := start(t, echo(t))
	old := dial(t, p.Addr())
	roundTrip(t, old, "hello")

	p.Set(chaos.Hang())
	fresh := dial(t, p.Addr())
	waitFor(t, "hung conn accepted", func() bool { return p.Conns() == 2 })
	// One deadline for both, so the test waits for the silence once.
	deadline := time.Now().Add(silence)
	for name, c := range map[string]net.Conn{"open": old, "new": fresh} {
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatalf("%s conn: write: %v", name, err)
		}
		_ = c.SetReadDeadline(deadline)
	}
	for name, c := range map[string]net.Conn{"open": old, "new": fresh} {
		n, err := c.Read(make([]byte, 16))
		if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s conn: read %d bytes, err %v; want nothing until the deadline", name, n, err)
		}
	}
	if n := p.Conns(); n != 2 {
		t.Errorf("Conns() = %d while hung, want 2", n)
	}

	p.Set(chaos.Pass())
	expectReset(t, old)
	expectReset(t, fresh)
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() = %d after leaving hang, want 0", n)
	}
	roundTrip(t, dial(t, p.Addr()), "back")
}

func TestSlow(t *testing.T) {
	const delay = 100 * time.Millisecond
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, p *chaos.Proxy)
	}{
		{"http request on a new conn", func(t *testing.T, p *chaos.Proxy) {
			p.Set(chaos.Slow(delay))
			t0 := time.Now()
			body, err := get(p.URL())
			if err != nil || string(body) != "ok" {
				t.Fatalf("get: %q, %v", body, err)
			}
			if el := time.Since(t0); el < delay {
				t.Errorf("request took %v, want at least %v", el, delay)
			}
		}},
		{"open conn keeps order", func(t *testing.T, p *chaos.Proxy) {
			c := dial(t, p.Addr())
			br := bufio.NewReader(c)
			if body := rawGet(t, c, br); body != "ok" {
				t.Fatalf("body %q", body)
			}
			p.Set(chaos.Slow(delay))
			// Two pipelined requests: both responses come back delayed and
			// in order.
			t0 := time.Now()
			_ = c.SetDeadline(time.Now().Add(waitLimit))
			if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: chaos\r\n\r\nGET /b HTTP/1.1\r\nHost: chaos\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"/a", "/b"} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response for %s: %v", want, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.Header.Get("X-Path"); got != want {
					t.Fatalf("response for %q, want %q", got, want)
				}
			}
			if el := time.Since(t0); el < delay {
				t.Errorf("responses took %v, want at least %v", el, delay)
			}
			p.Set(chaos.Pass())
			if body := rawGet(t, c, br); body != "ok" {
				t.Fatalf("body after pass %q", body)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := httpBackend(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Path", r.URL.Path)
				_, _ = io.WriteString(w, "ok")
			})
			tc.run(t, start(t, backend))
		})
	}
}

func TestResetAfter(t *testing.T) {
	const size = 1 << 20
	backend := httpBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = w.Write(make([]byte, size))
	})
	for _, tc := range []struct {
		name    string
		n       int64
		midBody bool // the cut falls after the headers
	}{
		// Cut inside the status line: net/http reports the line it got as
		// malformed rather than the reset that followed it.
		{"status line", 10, false},
		{"body start", 200, true},
		{"mid body", 64 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, backend)
			p.Set(chaos.ResetAfter(tc.n))
			body, err := get(p.URL())
			if err == nil || len(body) >= size {
				t.Fatalf("got %d bytes, err %v; want an error before %d bytes", len(body), err, size)
			}
			if tc.midBody && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("err %v, want unexpected EOF or connection reset", err)
			}
		})
	}

	t.Run("only new conns", func(t *testing.T) {
		p := start(t, echo(t))
		old := dial(t, p.Addr())
		roundTrip(t, old, "x")
		p.Set(chaos.ResetAfter(3))
		roundTrip(t, old, "0123456789")

		c := dial(t, p.Addr())
		if _, err := io.WriteString(c, "0123456789"); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(c)
		if len(got) > 3 || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("new conn read %q, err %v; want at most 3 bytes and a reset", got, err)
		}
	})
}

func TestAcceptThenClose(t *testing.T) {
	p := start(t, httpBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	old := dial(t, p.Addr())
	br := bufio.NewReader(old)
	if body := rawGet(t, old, br); body != "ok" {
		t.Fatalf("body %q", body)
	}

	p.Set(chaos.AcceptThenClose())
	body, err := get(p.URL())
	if err == nil {
		t.Fatalf("get succeeded with %q", body)
	}
	// When the FIN wins the race with the request write, net/http reports
	// its unexported errServerClosedIdle instead of the EOF.
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) &&
		!strings.Contains(err.Error(), "server closed idle connection") {
		t.Errorf("get: %v, want EOF or connection reset", err)
	}
	if body := rawGet(t, old, br); body != "ok" {
		t.Fatalf("open conn: body %q", body)
	}
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() = %d, want 1", n)
	}
}

func TestConns(t *testing.T) {
	p := start(t, echo(t))
	var cs []net.Conn
	for i := range 3 {
		c := dial(t, p.Addr())
		roundTrip(t, c, fmt.Sprint(i))
		cs = append(cs, c)
	}
	if n := p.Conns(); n != 3 {
		t.Fatalf("Conns() = %d, want 3", n)
	}
	for i, c := range cs {
		c.Close()
		want := len(cs) - i - 1
		waitFor(t, fmt.Sprintf("%d conns", want), func() bool { return p.Conns() == want })
	}
}

// TestClose checks that Close ends connections in every state; goleak in
// TestMain checks that no goroutine survives.
func TestClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault chaos.Fault
		open  bool // dial before setting the fault
	}{
		{"pass", chaos.Pass(), true},
		{"hang open", chaos.Hang(), true},
		{"hang new", chaos.Hang(), false},
		{"slow queued", chaos.Slow(time.Hour), true},
		{"reset after", chaos.ResetAfter(1 << 20), false},
		{"killed", chaos.Kill(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := chaos.Start(echo(t))
			if err != nil {
				t.Fatal(err)
			}
			var c net.Conn
			if tc.open {
				c = dial(t, p.Addr())
				roundTrip(t, c, "x")
			}
			p.Set(tc.fault)
			if !tc.open {
				c = dial(t, p.Addr())
				waitFor(t, "accept", func() bool { return p.Conns() == 1 })
			}
			// Not on a killed conn: a write would consume its reset error.
			if tc.fault != chaos.Kill() {
				if _, err := io.WriteString(c, "held"); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			// Close ends connections with a FIN, but a killed one was
			// reset before.
			if _, err := readAll(c); tc.fault == chaos.Kill() && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("killed conn: %v, want connection reset", err)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("conn still open after close")
			}
			if err := p.Close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
			p.Set(chaos.Pass()) // no-op after Close
			if nc, err := net.DialTimeout("tcp", p.Addr(), waitLimit); err == nil {
				nc.Close()
				t.Fatal("dial succeeded after close")
			}
		})
	}
}

// start puts a proxy in front of target and closes it when the test ends.
func start(t *testing.T, target string) *chaos.Proxy {
	t.Helper()
	p, err := chaos.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close proxy: %v", err)
		}
	})
	return p
}

// echo starts a TCP echo server that ends when the test does.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  = make(map[net.Conn]struct{})
		closed bool
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				continue
			}
			conns[c] = struct{}{}
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// httpBackend starts an HTTP server that ends when the test does.
func httpBackend(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// get fetches url on a fresh connection that is not kept.
func get(url string) ([]byte, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitLimit}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// rawGet sends GET / on c and returns the body, keeping c open.
func rawGet(t *testing.T, c net.Conn, br *bufio.Reader) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitLimit))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: chaos\r\n\r\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(body)
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and expects it echoed back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitLimit))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// readAll reads c until an error and returns it; unlike io.ReadAll it
// returns io.EOF itself, so callers can tell a FIN from a reset.
func readAll(c net.Conn) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(waitLimit))
	var got []byte
	buf := make([]byte, 4<<10)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
}

// expectReset expects c to be reset with nothing more to read.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	got, err := readAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %q, err %v; want connection reset", got, err)
	}
}

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
