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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/test/rig"
)

// memSettle is how long the memory workload lets ftpalg settle before each
// reading (its once-a-second expiry tick, the runtime's background GC).
const memSettle = 2 * time.Second

// idleServerArg makes the bench binary run as one of the memory
// workload's idle FTP servers (main checks for it), listening on a
// comma-separated list of addresses. Processes of their own keep the
// server ends of the connections out of this process's file descriptor
// limit, and several share each address (SO_REUSEPORT) so that none
// needs more than its own limit.
const idleServerArg = "-internal-idle-server"

// idleClientsArg makes the bench binary open and hold one share of the
// memory workload's idle connections: `-internal-idle-clients SERVER
// COUNT PARALLEL`, run in the rig's client namespace, so that the client
// ends, too, are spread over processes.
const idleClientsArg = "-internal-idle-clients"

// idleReady is the line an idle server prints once it listens.
const idleReady = "idle server listening"

// idleClientsReady starts the line a client process prints once all its
// connections are logged in: "idle clients ready: N connections to ADDR".
const idleClientsReady = "idle clients ready:"

// openBudget is how long the memory workload allows per connection,
// beyond startTimeout, for its client processes to open all of theirs
// (they open about 2,000 a second here). A client process fails by
// itself on any exchange that takes opTimeout; this bounds the rest.
const openBudget = 2 * time.Millisecond

// idleClientsProgress starts the line a client process prints every
// idleProgress while it opens its connections.
const idleClientsProgress = "idle clients:"

// idleProgress is how often a client process says how many of its
// connections it has opened.
const idleProgress = 5 * time.Second

// idleStopWait bounds how long a helper may take to exit by itself
// once its stdin is closed (see idleProc.stop).
const idleStopWait = 30 * time.Second

// idleFileSlack is what a client process needs besides its connections'
// sockets (standard streams, the poller, the runtime).
const idleFileSlack = 64

// untilStopped returns a context that ends on SIGTERM or SIGINT (the rig
// stops its processes with SIGTERM), or when stdin reaches its end: the
// parent holds the other end of that pipe, so a parent that dies without
// stopping its helpers still takes them, and their sockets, with it.
func untilStopped(stdin io.Reader) (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	return ctx, cancel
}

// reusePort sets SO_REUSEPORT on a listening socket before its bind, so
// that the idle servers all listen on the same address and port and the
// kernel spreads the connections over them by a hash of their addresses.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}

// idleServerMain listens on every address of addrs (comma-separated),
// says so on w and serves until stopped (see untilStopped). A listener
// that stops accepting on its own (EMFILE: the connections this process
// got exceed its limit) ends the process with that error at once: the
// kernel would otherwise go on completing handshakes with no greeting to
// follow, and the clients would only time out.
func idleServerMain(addrs string, stdin io.Reader, w io.Writer) error {
	if err := raiseFileLimit(0); err != nil {
		return err
	}
	ctx, stop := untilStopped(stdin)
	defer stop()
	lc := net.ListenConfig{Control: reusePort, KeepAlive: -1} // no keepalive: see idleEnv
	var srvs []*idleServer
	closeSrvs := func() error {
		var errs []error
		for _, s := range srvs {
			errs = append(errs, s.Close())
		}
		return errors.Join(errs...)
	}
	for _, a := range strings.Split(addrs, ",") {
		ln, err := lc.Listen(ctx, "tcp", a)
		if err != nil {
			return errors.Join(fmt.Errorf("idle server listening on %s: %w", a, err), closeSrvs())
		}
		srvs = append(srvs, serveIdle(ln))
	}
	fmt.Fprintln(w, idleReady)
	failed := make(chan *idleServer, len(srvs))
	for _, s := range srvs {
		go func() {
			select {
			case <-s.Stopped():
				failed <- s
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-ctx.Done():
		return closeSrvs()
	case s := <-failed:
		// No Close: the exit that follows closes every socket at once,
		// and the parent learns of the failure sooner.
		held := 0
		for _, s := range srvs {
			held += s.Sessions()
		}
		return fmt.Errorf("%w (holding %d sessions)", s.Err(), held)
	}
}

// idleClientsMain is a client process: args are the server's address,
// how many connections to open and how many at a time. It opens them
// (openIdle), prints idleClientsReady with their count on w and holds
// them until stopped (see untilStopped).
func idleClientsMain(args []string, stdin io.Reader, w io.Writer) error {
	if len(args) != 3 {
		return fmt.Errorf("%s wants SERVER COUNT PARALLEL, got %q", idleClientsArg, args)
	}
	server, err := netip.ParseAddrPort(args[0])
	if err != nil {
		return fmt.Errorf("idle clients' server: %w", err)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		return fmt.Errorf("idle clients' count %q: want a positive number", args[1])
	}
	parallel, err := strconv.Atoi(args[2])
	if err != nil || parallel < 1 {
		return fmt.Errorf("idle clients' parallelism %q: want a positive number", args[2])
	}
	if err := raiseFileLimit(n + idleFileSlack); err != nil {
		return err
	}
	ctx, stop := untilStopped(stdin)
	defer stop()
	// A line now and then says how far it got, for the parent's
	// message should it give up waiting.
	var opened atomic.Int64
	tick := time.NewTicker(idleProgress)
	defer tick.Stop()
	go func() {
		for range tick.C {
			fmt.Fprintf(w, "%s %d of %d open\n", idleClientsProgress, opened.Load(), n)
		}
	}()
	held, err := openIdle(ctx, idleEnv{}, server, n, parallel, &opened)
	tick.Stop()
	defer closeAll(held)
	if err != nil {
		return fmt.Errorf("%w (%d of %d open)", err, len(held), n)
	}
	fmt.Fprintf(w, "%s %d connections to %s\n", idleClientsReady, len(held), server)
	<-ctx.Done()
	return nil
}

// idleProc is a helper process of the memory workload (an idle server or
// a client process) with the write end of its stdin (see untilStopped).
type idleProc struct {
	*rig.Proc
	what  string // for messages: "idle server 2", "idle clients 3"
	stdin *os.File
	ready bool
}

// startIdleProc runs the bench binary with args in node's namespace.
func startIdleProc(r *rig.Rig, n rig.Node, what string, args ...string) (*idleProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the bench binary for %s: %w", what, err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe for %s: %w", what, err)
	}
	cmd := r.Exec(n, exe, args...)
	cmd.Stdin = pr
	p, err := r.StartCmd(cmd)
	pr.Close() // the child has its own copy
	if err != nil {
		pw.Close()
		return nil, fmt.Errorf("starting %s: %w", what, err)
	}
	return &idleProc{Proc: p, what: what, stdin: pw}, nil
}

// stop ends the process: it closes its stdin, which the process takes as
// its signal to close its connections and exit, and waits up to
// idleStopWait for it to; then SIGTERM to its group and SIGKILL after a
// grace period (rig.Proc.Stop). The wait is needed: all the helpers
// closing their thousands of connections at once send as many segments
// through the router as they had connections, and on one CPU
// (-placement shared) the exit took longer than Stop's grace period. It
// is idempotent.
func (p *idleProc) stop() error {
	if err := p.stdin.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return errors.Join(fmt.Errorf("closing %s's stdin: %w", p.what, err), p.Stop())
	}
	select {
	case <-p.Done():
	case <-time.After(idleStopWait):
	}
	if err := p.Stop(); err != nil {
		return fmt.Errorf("%s: %w", p.what, err)
	}
	return nil
}

// exited fails if the process has exited, with its output (but for a
// client process's progress lines).
func (p *idleProc) exited() error {
	select {
	case <-p.Done():
	default:
		return nil
	}
	var out []string
	for line := range strings.Lines(p.Output()) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, idleClientsProgress) {
			out = append(out, line)
		}
	}
	return fmt.Errorf("%s exited (%v): %s", p.what, p.Err(), strings.Join(out, "\n"))
}

// stopIdle stops every process of ps at once (each may take stopGrace).
func stopIdle(ps []*idleProc) error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() { errs[i] = p.stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// exitedIdle fails if any process of ps has exited.
func exitedIdle(ps []*idleProc) error {
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.exited())
	}
	return errors.Join(errs...)
}

// awaitReady waits until every process of ps has printed a line
// containing ready. It fails as soon as one exits (with its output), watch
// returns an error, ctx ends or timeout passes.
func awaitReady(ctx context.Context, ps []*idleProc, ready string, timeout time.Duration, watch func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var waiting []*idleProc
		var errs []error
		for _, p := range ps {
			if p.ready {
				continue
			}
			if strings.Contains(p.Output(), ready) {
				p.ready = true
				continue
			}
			if err := p.exited(); err != nil {
				errs = append(errs, err)
				continue
			}
			waiting = append(waiting, p)
		}
		if watch != nil {
			err := watch()
			if err == nil && len(errs) > 0 {
				// A client process fails when its server does (a reset
				// once the listener is gone): give the cause a moment
				// to show, so that the message names it.
				err = waitErr(ctx, watch, time.Second)
			}
			errs = append([]error{err}, errs...)
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", describe(waiting), ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("not ready after %v: %s", timeout, describe(waiting))
		case <-tick.C:
		}
	}
}

// waitErr polls watch until it fails, ctx ends or d has passed, and
// returns its last result.
func waitErr(ctx context.Context, watch func() error, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		if err := watch(); err != nil || time.Now().After(end) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// describe names each process of ps with the last line it printed.
func describe(ps []*idleProc) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.what
		if last := lastLine(p.Output()); last != "" {
			s[i] += ": " + last
		}
	}
	return strings.Join(s, "; ")
}

// lastLine returns the last non-empty line of out.
func lastLine(out string) string {
	out = strings.TrimSpace(out)
	return strings.TrimSpace(out[strings.LastIndexByte(out, '\n')+1:])
}

// readyCount parses the count of a client process's ready line.
func readyCount(out string) (int, error) {
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(line, idleClientsReady)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		return strconv.Atoi(f[0])
	}
	return 0, fmt.Errorf("no %q line in %q", idleClientsReady, out)
}

// parsePortRange returns how many ports an ip_local_port_range value
// ("1024 65535", tab-separated when read back) holds.
func parsePortRange(s string) (int, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, fmt.Errorf("port range %q: want two numbers", s)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil || lo < 1 || hi < lo || hi > 65535 {
		return 0, fmt.Errorf("port range %q: want two ports, low first", s)
	}
	return hi - lo + 1, nil
}

// checkConntrack fails unless the router's conntrack table has room for
// conns more connections besides those it holds: each idle control
// connection is an entry until its 5-day established timeout, and a full
// table drops new connections' SYNs, which would show up as client
// timeouts. nf_conntrack_max is the kernel's (the init namespace's), the
// count the router namespace's own; 0 means no limit.
func checkConntrack(ctx context.Context, r *rig.Rig, conns int) error {
	out, err := r.Run(ctx, rig.Router, "cat", "/proc/sys/net/netfilter/nf_conntrack_max", "/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		return fmt.Errorf("reading the router's conntrack limit: %w", err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return fmt.Errorf("router's nf_conntrack_max and nf_conntrack_count: %q", out)
	}
	ctMax, err1 := strconv.Atoi(f[0])
	count, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("router's nf_conntrack_max and nf_conntrack_count %q: %w", out, err)
	}
	// Room for the rest of the router's traffic, too.
	const spare = 1024
	if ctMax > 0 && count+conns+spare > ctMax {
		return fmt.Errorf("%d idle connections: the router's conntrack table holds %d entries of nf_conntrack_max %d: %w",
			conns, count, ctMax, ErrIdlePlan)
	}
	return nil
}

// prepareIdle fits the memory workload's rig to conns connections: it
// widens the client's ip_local_port_range (per namespace), checks the
// router's conntrack table, plans the processes (planIdle) and gives the
// server the extra addresses the plan wants, on its only interface in its
// subnet. It returns the plan and the servers' control endpoints.
func prepareIdle(ctx context.Context, r *rig.Rig, conns int) (idlePlan, []netip.AddrPort, error) {
	if _, err := r.Run(ctx, rig.Client, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range="+clientPortRange); err != nil {
		return idlePlan{}, nil, fmt.Errorf("widening the client's port range: %w", err)
	}
	out, err := r.Run(ctx, rig.Client, "cat", "/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return idlePlan{}, nil, fmt.Errorf("reading the client's port range: %w", err)
	}
	ports, err := parsePortRange(out)
	if err != nil {
		return idlePlan{}, nil, fmt.Errorf("client's ip_local_port_range: %w", err)
	}
	if err := checkConntrack(ctx, r, conns); err != nil {
		return idlePlan{}, nil, err
	}
	ad := r.Addresses()
	cands, err := serverAddrs(ad)
	if err != nil {
		return idlePlan{}, nil, err
	}
	plan, err := planIdle(conns, fileLimitMax(), ports, len(cands))
	if err != nil {
		return plan, nil, err
	}
	bits := ad.Outside.Bits()
	if ad.Inside.Contains(ad.Server) {
		bits = ad.Inside.Bits()
	}
	var eps []netip.AddrPort
	for i, a := range cands[:plan.addrs] {
		if i > 0 { // the first is the server's own
			if _, err := r.Run(ctx, rig.Server, "ip", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", rig.HostIf); err != nil {
				return plan, nil, fmt.Errorf("adding server address %s: %w", a, err)
			}
		}
		eps = append(eps, netip.AddrPortFrom(a, rig.ControlPort))
	}
	return plan, eps, nil
}

// startIdleServers runs n idle servers in r's server namespace, each
// listening on every endpoint of eps, and waits until all listen.
func startIdleServers(ctx context.Context, r *rig.Rig, eps []netip.AddrPort, n int) ([]*idleProc, error) {
	addrs := make([]string, len(eps))
	for i, ep := range eps {
		addrs[i] = ep.String()
	}
	var ps []*idleProc
	for i := range n {
		p, err := startIdleProc(r, rig.Server, fmt.Sprintf("idle server %d", i+1), idleServerArg, strings.Join(addrs, ","))
		if err != nil {
			return ps, err
		}
		ps = append(ps, p)
	}
	return ps, awaitReady(ctx, ps, idleReady, startTimeout, nil)
}

// startIdleClients runs plan's client processes in r's client namespace,
// parallel connections at a time among them.
func startIdleClients(r *rig.Rig, plan idlePlan, eps []netip.AddrPort, parallel int) ([]*idleProc, error) {
	each := max(1, ceilDiv(parallel, len(plan.clients)))
	var ps []*idleProc
	for i, sh := range plan.clients {
		p, err := startIdleProc(r, rig.Client, fmt.Sprintf("idle clients %d (%d to %s)", i+1, sh.conns, eps[sh.addr]),
			idleClientsArg, eps[sh.addr].String(), strconv.Itoa(sh.conns), strconv.Itoa(each))
		if err != nil {
			return ps, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// openFiles counts the open files of process pid.
func openFiles(pid int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("counting the open files of pid %d: %w", pid, err)
	}
	return len(fds), nil
}

// memory measures ftpalg's resident memory per idle tracked control
// connection. It builds a rig of its own with no vsftpd: idle servers (a
// goroutine per session, in processes of their own) listen on the
// server's port 21 instead, on as many addresses as the count needs, and
// client processes in the client namespace open and hold the
// connections (prepareIdle and planIdle say how many of each).
// ftpalg's VmRSS is read with no connection, then with conns logged-in
// connections idling; the difference per connection is the cost of one
// tracked session.
func memory(ctx context.Context, cfg *config, backend string, conns, parallel int) (res MemoryResult, err error) {
	res = MemoryResult{Conns: conns}
	r, err := rig.Build(ctx, rig.ClientNAT, cfg.prefix)
	if err != nil {
		return res, fmt.Errorf("memory rig: %w", err)
	}
	defer r.Close()
	plan, eps, err := prepareIdle(ctx, r, conns)
	if err != nil {
		return res, err
	}
	for _, ep := range eps {
		res.ServerAddrs = append(res.ServerAddrs, ep.String())
	}
	res.ClientProcs, res.FileLimit = len(plan.clients), fileLimitMax()

	servers, err := startIdleServers(ctx, r, eps, plan.servers)
	defer func() { err = errors.Join(err, stopIdle(servers)) }()
	if err != nil {
		return res, err
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

	start := time.Now()
	clients, err := startIdleClients(r, plan, eps, parallel)
	defer func() { err = errors.Join(err, stopIdle(clients)) }()
	if err != nil {
		return res, err
	}
	timeout := startTimeout + time.Duration(conns)*openBudget
	if err := awaitReady(ctx, clients, idleClientsReady, timeout, func() error {
		return errors.Join(exitedIdle(servers), alg.alive())
	}); err != nil {
		return res, fmt.Errorf("opening %d idle connections: %w", conns, err)
	}
	res.OpenSeconds = time.Since(start).Seconds()
	opened := 0
	for _, p := range clients {
		n, err := readyCount(p.Output())
		if err != nil {
			return res, fmt.Errorf("%s: %w", p.what, err)
		}
		opened += n
	}
	if opened != conns {
		return res, fmt.Errorf("client processes opened %d idle connections, want %d", opened, conns)
	}

	time.Sleep(memSettle)
	// A helper that died meanwhile took its connections with it.
	if err := errors.Join(alg.alive(), exitedIdle(servers), exitedIdle(clients)); err != nil {
		return res, err
	}
	if res.LoadedRSS, res.LoadedAnon, err = alg.memory(); err != nil {
		return res, err
	}
	res.PerConn = float64(res.LoadedRSS-res.BaseRSS) / float64(conns)
	res.PerConnAnon = float64(res.LoadedAnon-res.BaseAnon) / float64(conns)
	for _, p := range servers {
		n, err := openFiles(p.Pid())
		if err != nil {
			return res, err
		}
		res.ServerFiles = append(res.ServerFiles, n)
	}
	if out, err := r.Run(ctx, rig.Router, "cat", "/proc/net/netfilter/nfnetlink_queue"); err == nil {
		res.QueueStats = strings.TrimSpace(out)
	}
	return res, nil
}
