package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// memSettle is how long the memory workload lets ftpalg settle before each
// reading (its once-a-second expiry tick, the runtime's background GC).
const memSettle = 2 * time.Second

// idleServerArg makes the bench binary run as the memory workload's idle
// FTP server (main checks for it). A process of its own keeps the server
// ends of the connections out of this process's file descriptor limit.
const idleServerArg = "-internal-idle-server"

// idleReady is the line the idle server prints once it listens.
const idleReady = "idle server listening"

// idleServerMain listens on addr, says so on w and serves until killed
// (the rig stops it with SIGTERM).
func idleServerMain(addr string, w io.Writer) error {
	if err := raiseFileLimit(0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := serveIdle(ln)
	fmt.Fprintln(w, idleReady)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return errors.Join(s.Err(), s.Close())
}

// startIdleServer runs the idle server in r's server namespace on addr.
func startIdleServer(ctx context.Context, r *rig.Rig, addr netip.AddrPort) (*rig.Proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the bench binary for the idle server: %w", err)
	}
	p, err := r.Start(rig.Server, exe, idleServerArg, addr.String())
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(startTimeout)
	for !strings.Contains(p.Output(), idleReady) {
		select {
		case <-p.Done():
			return nil, fmt.Errorf("idle server exited (%v): %s", p.Err(), p.Output())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("idle server not listening after %v: %s", startTimeout, p.Output())
		}
	}
	return p, nil
}

// memory measures ftpalg's resident memory per idle tracked control
// connection. It builds a rig of its own with no vsftpd: the idle server
// (a goroutine per session, in a process of its own) listens on the
// server's port 21 instead.
// ftpalg's VmRSS is read with no connection, then with conns logged-in
// connections idling; the difference per connection is the cost of one
// tracked session.
func memory(ctx context.Context, cfg *config, backend string, conns, parallel int) (MemoryResult, error) {
	res := MemoryResult{Conns: conns}
	r, err := rig.Build(ctx, rig.ClientNAT, cfg.prefix)
	if err != nil {
		return res, fmt.Errorf("memory rig: %w", err)
	}
	defer r.Close()
	server := netip.AddrPortFrom(r.ServerHostAddr(), rig.ControlPort)
	srv, err := startIdleServer(ctx, r, server)
	if err != nil {
		return res, err
	}
	idleErr := func() error {
		select {
		case <-srv.Done():
			return fmt.Errorf("idle server exited (%v): %s", srv.Err(), srv.Output())
		default:
			return nil
		}
	}
	// Room for every connection, so that the figure is memory per
	// tracked connection and not per evicted one.
	args := append(slices.Clone(cfg.algArgs), fmt.Sprintf("--max-connections=%d", conns+conns/10))
	alg, err := startFtpalg(ctx, r, cfg.ftpalgBin, backend, cfg.nice, args)
	if err != nil {
		return res, err
	}
	defer alg.stop()

	time.Sleep(memSettle)
	if res.BaseRSS, res.BaseAnon, err = alg.memory(); err != nil {
		return res, err
	}

	env := clientEnv{r}
	held := make([]net.Conn, conns)
	defer func() {
		for _, c := range held {
			if c != nil {
				c.Close()
			}
		}
	}()
	start := time.Now()
	jobs := make(chan int)
	errc := make(chan error, parallel)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				c, err := dial(ctx, env, server, r.ClientAddr())
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
					errc <- fmt.Errorf("idle connection %d: %w", i, err)
					return
				}
				held[i] = c.conn
			}
		}()
	}
	var openErr error
feed:
	for i := range conns {
		select {
		case jobs <- i:
		case openErr = <-errc:
			break feed
		case <-ctx.Done():
			openErr = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if openErr == nil {
		select {
		case openErr = <-errc:
		default:
		}
	}
	if openErr != nil {
		return res, errors.Join(openErr, idleErr(), alg.alive())
	}
	res.OpenSeconds = time.Since(start).Seconds()

	time.Sleep(memSettle)
	if err := alg.alive(); err != nil {
		return res, err
	}
	if res.LoadedRSS, res.LoadedAnon, err = alg.memory(); err != nil {
		return res, err
	}
	res.PerConn = float64(res.LoadedRSS-res.BaseRSS) / float64(conns)
	res.PerConnAnon = float64(res.LoadedAnon-res.BaseAnon) / float64(conns)
	if out, err := r.Run(ctx, rig.Router, "cat", "/proc/net/netfilter/nfnetlink_queue"); err == nil {
		res.QueueStats = strings.TrimSpace(out)
	}
	return res, nil
}
