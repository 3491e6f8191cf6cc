package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Server runs an Engine on a real TCP listener and gives ModeDie its full
// meaning: the listener closes and every connection is reset, and leaving
// ModeDie listens again on the same address.
type Server struct {
	engine *Engine
	addr   string
	log    *zap.Logger

	wg sync.WaitGroup // Serve goroutines

	mu     sync.Mutex
	srv    *http.Server // nil while dead or closed
	conns  map[net.Conn]struct{}
	closed bool
}

// Start listens on addr (such as "127.0.0.1:0") and serves a new Engine
// built from opts. If opts.Mode is ModeDie the server starts dead, holding
// only its address.
func Start(addr string, opts Options) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sim: listen %s: %w", addr, err)
	}
	e := New(opts)
	s := &Server{engine: e, addr: ln.Addr().String(), log: e.log, conns: make(map[net.Conn]struct{})}
	if e.Mode() == ModeDie {
		_ = ln.Close()
	} else {
		s.serve(ln)
	}
	e.setHook(s.onMode)
	return s, nil
}

// Addr is the listening address, "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.addr }

// URL is the base URL, "http://127.0.0.1:PORT".
func (s *Server) URL() string { return "http://" + s.addr }

// Engine is the engine the server runs.
func (s *Server) Engine() *Engine { return s.engine }

// SetMode sets the engine's mode; ModeDie kills the listener and all
// connections, and any other mode after it listens again on the same address.
func (s *Server) SetMode(m Mode) { s.engine.SetMode(m) }

// serve starts an http.Server on ln. s.mu must be held (or s not yet shared).
func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{
		Handler:           s.engine,
		ConnState:         s.connState,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	s.srv = srv
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve", zap.Error(err))
		}
	}()
}

// connState tracks connections so that dying can reset them.
func (s *Server) connState(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch state {
	case http.StateNew:
		s.conns[c] = struct{}{}
	case http.StateHijacked, http.StateClosed: // the engine owns hijacked streams
		delete(s.conns, c)
	}
}

// onMode is the engine's hook: die or revive. The engine has already
// dropped its streams when it dies.
//
// Mode changes are serialised by the engine. The http.Server is closed
// without s.mu held: Close waits for Serve to return, and Serve may be
// inside connState, which takes s.mu.
func (s *Server) onMode(m Mode) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if m == ModeDie && s.srv != nil {
		srv := s.srv
		s.srv = nil
		conns := make([]net.Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			abortConn(c)
		}
		_ = srv.Close()
		s.log.Info("died", zap.String("addr", s.addr))
		return nil
	}
	defer s.mu.Unlock()
	if m != ModeDie && s.srv == nil {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("sim: revive on %s: %w", s.addr, err)
		}
		s.serve(ln)
		s.log.Info("revived", zap.String("addr", s.addr))
	}
	return nil
}

// Close stops the engine (ending hung requests and streams), then the HTTP
// server, and waits for all of their goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()

	s.engine.Close()
	var err error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err = srv.Shutdown(ctx); err != nil {
			err = srv.Close()
		}
		cancel()
	}
	s.wg.Wait()
	return err
}
