package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// idleServer is the smallest FTP server the memory workload needs: it
// greets, accepts any login and then only answers NOOP and QUIT. vsftpd
// forks two processes per session and would need max_clients raised; a
// hundred thousand goroutines are cheap, and ftpalg cannot tell the
// difference — it tracks the control connection, not the server.
type idleServer struct {
	ln      net.Listener
	wg      sync.WaitGroup
	stopped chan struct{} // closed when accept returns

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	err    error // why accept stopped before Close (EMFILE, ...)
}

// serveIdle starts answering on ln until Close.
func serveIdle(ln net.Listener) *idleServer {
	s := &idleServer{ln: ln, conns: make(map[net.Conn]struct{}), stopped: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *idleServer) accept() {
	defer s.wg.Done()
	defer close(s.stopped)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			if !s.closed {
				s.err = fmt.Errorf("idle FTP server accepting: %w", err)
			}
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve runs one session. Replies are fixed strings: the point is a
// well-formed dialog for the gateway to track, not a working server.
func (s *idleServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	if _, err := io.WriteString(c, "220 ftpalg bench idle server\r\n"); err != nil {
		return
	}
	r := bufio.NewReaderSize(c, 512)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		v, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		var rep string
		switch strings.ToUpper(v) {
		case "USER":
			rep = "331 any password will do\r\n"
		case "PASS":
			rep = "230 logged in\r\n"
		case "TYPE":
			rep = "200 type set\r\n"
		case "NOOP":
			rep = "200 ok\r\n"
		case "QUIT":
			_, _ = io.WriteString(c, "221 bye\r\n")
			return
		default:
			rep = "502 not implemented\r\n"
		}
		if _, err := io.WriteString(c, rep); err != nil {
			return
		}
	}
}

// Stopped is closed once the server no longer accepts: after Close, or
// when Accept failed (Err says why). A server that stopped on its own
// must not keep its listener open: the kernel would go on completing
// handshakes that nobody greets.
func (s *idleServer) Stopped() <-chan struct{} { return s.stopped }

// Sessions returns how many sessions the server holds.
func (s *idleServer) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Err reports why the server stopped accepting before Close, if it did.
func (s *idleServer) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops accepting, closes every session and waits for their
// goroutines.
func (s *idleServer) Close() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// idleEnv dials from the process's own network namespace (the client
// processes run in the rig's client namespace) with TCP keepalive off:
// Go's default probes an idle connection every 15 s from each end, which
// at 100,000 connections is some 25,000 packets a second through the
// router, and the connections would not be idle. Its connections close
// with a reset (SO_LINGER 0): at the end 100,000 of them close at once,
// and a reset is one segment through the router, where a FIN is four
// and a TIME_WAIT socket.
type idleEnv struct{}

func (idleEnv) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetLinger(0); err != nil {
			c.Close()
			return nil, fmt.Errorf("SO_LINGER on the connection to %s: %w", address, err)
		}
	}
	return c, nil
}

func (idleEnv) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// openIdle opens n logged-in control connections to server, parallel at a
// time, each with USER anonymous (331) and PASS (230), and returns them.
// On the first failure it stops and returns the connections it has
// opened so far with the error; the caller closes them either way.
// opened, if not nil, counts the connections logged in so far.
func openIdle(ctx context.Context, env netEnv, server netip.AddrPort, n, parallel int, opened *atomic.Int64) ([]net.Conn, error) {
	held := make([]net.Conn, n)
	jobs := make(chan int)
	errc := make(chan error, parallel)
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Go(func() {
			for i := range jobs {
				c, err := dial(ctx, env, server, netip.Addr{})
				if err == nil {
					_, err = c.cmd("USER anonymous", 331)
					if err == nil {
						_, err = c.cmd("PASS bench@example.com", 230)
					}
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					errc <- fmt.Errorf("idle connection %d to %s: %w", i, server, err)
					return
				}
				held[i] = c.conn
				if opened != nil {
					opened.Add(1)
				}
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case jobs <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return slices.DeleteFunc(held, func(c net.Conn) bool { return c == nil }), err
}

// closeAll closes every connection of cs.
func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
