package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Each workload runs once on one gateway and returns one value for its
// row (or rows); the caller repeats it over gateways and repetitions.

// bulk downloads the bulk file over PASV and returns MB/s (10^6 bytes).
// The clock covers PASV, the data connection and the transfer up to the
// 226 reply, not the login: curl would add its process start-up, which is
// a noticeable part of a 200 MB transfer over veth.
func bulk(ctx context.Context, g *gateway, size int64) (float64, error) {
	c, err := g.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.login(); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := c.retr(ctx, pasv, bulkName, size); err != nil {
		return 0, err
	}
	took := time.Since(start)
	return float64(size) / took.Seconds() / 1e6, c.quit()
}

// noopWarmup round trips are sent before the measured ones: the first few
// pay for cold caches and, in ftpalg, for the flow's first packets.
const noopWarmup = 50

// noops sends n NOOPs on one logged-in connection, one at a time, and
// returns each round trip: from the write of "NOOP\r\n" to the read that
// completes the "200" reply.
//
// The timing loop uses blocking read and write system calls on a thread
// of its own instead of Go's network poller, whose park-and-wake cycle
// would add tens of microseconds of scheduling noise to every sample and
// compress the ratios toward 1.
func noops(ctx context.Context, g *gateway, n int) ([]time.Duration, error) {
	c, err := g.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.login(); err != nil {
		return nil, err
	}
	if c.r.Buffered() != 0 {
		return nil, fmt.Errorf("NOOP: %d unexpected bytes after login: %w", c.r.Buffered(), ErrReply)
	}
	tc, ok := c.conn.(*net.TCPConn)
	if !ok {
		return nil, fmt.Errorf("NOOP: control connection is a %T, not TCP", c.conn)
	}
	// File duplicates the descriptor; Fd switches the shared file
	// description to blocking mode. From here on only f is used.
	f, err := tc.File()
	if err != nil {
		return nil, fmt.Errorf("NOOP: duplicating control socket: %w", err)
	}
	defer f.Close()
	fd := int(f.Fd())
	tv := unix.NsecToTimeval(opTimeout.Nanoseconds())
	if err := errors.Join(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)); err != nil {
		return nil, fmt.Errorf("NOOP: socket timeouts: %w", err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	req := []byte("NOOP\r\n")
	buf := make([]byte, 512)
	rtts := make([]time.Duration, 0, n)
	for i := range noopWarmup + n {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		start := time.Now()
		if _, err := retryEINTR(func() (int, error) { return unix.Write(fd, req) }); err != nil {
			return nil, fmt.Errorf("NOOP %d: writing: %w", i, err)
		}
		got := 0
		for got < 2 || buf[got-2] != '\r' || buf[got-1] != '\n' {
			k, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf[got:]) })
			if err != nil {
				return nil, fmt.Errorf("NOOP %d: reading reply: %w", i, err)
			}
			if k == 0 {
				return nil, fmt.Errorf("NOOP %d: connection closed: %w", i, ErrReply)
			}
			got += k
			if got == len(buf) {
				return nil, fmt.Errorf("NOOP %d: reply too long: %w", i, ErrReply)
			}
		}
		took := time.Since(start)
		if !strings.HasPrefix(string(buf[:got]), "200") || strings.Count(string(buf[:got]), "\n") != 1 {
			return nil, fmt.Errorf("NOOP %d: reply %q: %w", i, buf[:got], ErrReply)
		}
		if i >= noopWarmup {
			rtts = append(rtts, took)
		}
	}
	if _, err := retryEINTR(func() (int, error) { return unix.Write(fd, []byte("QUIT\r\n")) }); err != nil {
		return rtts, fmt.Errorf("QUIT: %w", err)
	}
	return rtts, nil
}

// retryEINTR repeats a blocking system call that a signal interrupted.
// The Go runtime signals its threads (SIGURG for preemption), and a
// socket with SO_RCVTIMEO is not restarted automatically.
func retryEINTR(call func() (int, error)) (int, error) {
	for {
		n, err := call()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// sessions runs n complete sessions one after another — connect, login,
// TYPE I, PASV or PORT, RETR of 1 KB, QUIT — and returns sessions per
// second.
func sessions(ctx context.Context, g *gateway, m mode, n int) (float64, error) {
	start := time.Now()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if err := session(ctx, g, m); err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// long fetches n small files on one control connection, each over its own
// data connection set up with m, and returns the total time in seconds
// from the first PASV or PORT to the last 226.
func long(ctx context.Context, g *gateway, m mode, n int) (float64, error) {
	c, err := g.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.login(); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if _, err := c.retr(ctx, m, smallFile(i), smallSize); err != nil {
			return 0, fmt.Errorf("file %d: %w", i, err)
		}
	}
	took := time.Since(start)
	return took.Seconds(), c.quit()
}

// parallelSessions runs n sessions like sessions, spread over clients
// concurrent clients, and returns sessions per second over the whole run
// and each session's duration.
func parallelSessions(ctx context.Context, g *gateway, m mode, clients, n int) (float64, []time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	took := make([]time.Duration, n)
	errc := make(chan error, clients)
	start := time.Now()
	for range clients {
		go func() {
			for i := range next {
				t0 := time.Now()
				if err := session(ctx, g, m); err != nil {
					cancel()
					errc <- fmt.Errorf("session %d: %w", i, err)
					return
				}
				took[i] = time.Since(t0)
			}
			errc <- nil
		}()
	}
	// The first failure is the one to report: the others are sessions
	// it cancelled.
	var first error
	for range clients {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return 0, nil, first
	}
	return float64(n) / time.Since(start).Seconds(), took, nil
}

// session is one complete session of the sessions workloads.
func session(ctx context.Context, g *gateway, m mode) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.login(); err != nil {
		return err
	}
	if _, err := c.retr(ctx, m, smallName, smallSize); err != nil {
		return err
	}
	return c.quit()
}
