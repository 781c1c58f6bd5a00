package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// idleServer is the smallest FTP server the memory workload needs: it
// greets, accepts any login and then only answers NOOP and QUIT. vsftpd
// forks two processes per session and would need max_clients raised; ten
// thousand goroutines are cheap, and ftpalg cannot tell the difference —
// it tracks the control connection, not the server.
type idleServer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	err    error // why accept stopped before Close (EMFILE, ...)
}

// serveIdle starts answering on ln until Close.
func serveIdle(ln net.Listener) *idleServer {
	s := &idleServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *idleServer) accept() {
	defer s.wg.Done()
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
