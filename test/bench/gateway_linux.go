package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// ErrFtpalg reports an ftpalg process that did not start, or died.
var ErrFtpalg = errors.New("ftpalg failed")

// startTimeout bounds how long ftpalg may take to log "ftpalg running".
const startTimeout = 15 * time.Second

// gateway is one column of the table: a ClientNAT rig of its own, with or
// without the kernel helper, and with or without ftpalg in the router.
type gateway struct {
	name    string
	kernel  bool   // rig.WithKernelHelper
	runAlg  bool   // run ftpalg in the router
	backend string // --pinholes value, "" to leave the default

	r    *rig.Rig
	srv  *rig.FTPServer
	proc *ftpalgProc // nil without ftpalg
}

// clientEnv opens sockets in a rig's client namespace.
type clientEnv struct{ r *rig.Rig }

func (e clientEnv) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return e.r.Dial(ctx, rig.Client, network, address)
}

func (e clientEnv) Listen(network, address string) (net.Listener, error) {
	return e.r.Listen(rig.Client, network, address)
}

// server returns the control endpoint the client dials.
func (g *gateway) server() netip.AddrPort {
	return netip.AddrPortFrom(g.r.ServerAddr(), rig.ControlPort)
}

// client connects a benchmark FTP client through the gateway.
func (g *gateway) dial(ctx context.Context) (*client, error) {
	return dial(ctx, clientEnv{g.r}, g.server(), g.r.ClientAddr())
}

// setup builds the gateway's rig, starts vsftpd serving the data set, and
// ftpalg when the gateway has it.
func (g *gateway) setup(ctx context.Context, cfg *config, data *dataSet) error {
	var opts []rig.Option
	if g.kernel {
		opts = append(opts, rig.WithKernelHelper())
	}
	r, err := rig.Build(ctx, rig.ClientNAT, cfg.prefix, opts...)
	if err != nil {
		return fmt.Errorf("gateway %s: %w", g.name, err)
	}
	g.r = r
	if err := installSegmentCounters(ctx, r); err != nil {
		return fmt.Errorf("gateway %s: %w", g.name, err)
	}
	// vsftpd's per-command and per-transfer logs are off: the same for
	// every gateway, and it keeps disk writes out of the NOOP tail.
	extra := []string{"log_ftp_protocol=NO", "xferlog_enable=NO"}
	if g.srv, err = r.StartVsftpd(rig.VsftpdOptions{Extra: extra}); err != nil {
		return fmt.Errorf("gateway %s: %w", g.name, err)
	}
	if cfg.placement == placeShared {
		if err := pin(g.srv.Pid(), sharedCPU); err != nil {
			return fmt.Errorf("gateway %s: pinning vsftpd: %w", g.name, err)
		}
	}
	if err := data.linkInto(g.srv.Root); err != nil {
		return fmt.Errorf("gateway %s: %w", g.name, err)
	}
	if g.runAlg {
		if g.proc, err = startFtpalg(ctx, r, cfg.ftpalgBin, g.backend, cfg.nice, cfg.algArgs); err != nil {
			return fmt.Errorf("gateway %s: %w", g.name, err)
		}
	}
	return nil
}

// close tears the rig down (stopping ftpalg first, to collect its final
// statistics).
func (g *gateway) close() error {
	var errs []error
	if g.proc != nil {
		errs = append(errs, g.proc.stop())
	}
	if g.r != nil {
		errs = append(errs, g.r.Close())
	}
	return errors.Join(errs...)
}

// ftpalgProc is ftpalg running in a rig's router namespace.
type ftpalgProc struct {
	p        *rig.Proc
	log      *algLog
	stateDir string
}

// startFtpalg runs `ftpalg run` in the router at log level info (what an
// admin runs; debug would add a line per connection) with the JSON log the
// pinhole latencies are read from, and waits until it serves.
func startFtpalg(ctx context.Context, r *rig.Rig, bin, backend string, nice int, extra []string) (*ftpalgProc, error) {
	args := []string{"run", "--log-format", "json", "--log-level", "info"}
	// A rewrite's state is written before its packet is released, to
	// --state-dir under /run: tmpfs on a router (6 µs a write here), but
	// a disk on some VMs (95 µs on this one). /dev/shm is tmpfs
	// everywhere, so every machine measures the router's case.
	stateDir, err := os.MkdirTemp("/dev/shm", "ftpalg-bench-")
	if err != nil {
		return nil, fmt.Errorf("state directory for ftpalg: %w", err)
	}
	started := false
	defer func() {
		if !started {
			os.RemoveAll(stateDir)
		}
	}()
	args = append(args, "--state-dir", stateDir)
	if backend != "" {
		args = append(args, "--pinholes", backend)
	}
	args = append(args, extra...)
	cmd := r.Exec(rig.Router, "nice", append([]string{"-n", strconv.Itoa(nice), bin}, args...)...)
	a := &ftpalgProc{log: &algLog{}, stateDir: stateDir}
	cmd.Stdout, cmd.Stderr = a.log, a.log
	p, err := r.StartCmd(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting ftpalg: %w", err)
	}
	a.p = p
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !a.log.Running() {
		select {
		case <-p.Done():
			return nil, fmt.Errorf("ftpalg exited at start (%v): %w: %s", p.Err(), ErrFtpalg, a.log.Tail())
		case <-deadline.C:
			return nil, fmt.Errorf("ftpalg not running after %v: %w: %s", startTimeout, ErrFtpalg, a.log.Tail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
	started = true
	return a, nil
}

// alive fails if ftpalg has exited.
func (a *ftpalgProc) alive() error {
	select {
	case <-a.p.Done():
		return fmt.Errorf("ftpalg exited (%v): %w: %s", a.p.Err(), ErrFtpalg, a.log.Tail())
	default:
		return nil
	}
}

// cpu returns the CPU time ftpalg's threads have used: the sum of the
// first field (nanoseconds on a CPU) of each /proc/PID/task/TID/schedstat.
func (a *ftpalgProc) cpu() (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", a.p.Pid()))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("listing ftpalg's threads: %w", errors.Join(err, ErrFtpalg))
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// stop sends SIGINT and waits for the exit, so the final statistics
// record is logged. The rig's Close kills it if it hangs.
func (a *ftpalgProc) stop() error {
	defer os.RemoveAll(a.stateDir)
	select {
	case <-a.p.Done():
		return nil
	default:
	}
	if err := syscall.Kill(a.p.Pid(), syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping ftpalg (pid %d): %w", a.p.Pid(), err)
	}
	select {
	case <-a.p.Done():
		if err := a.p.Err(); err != nil {
			return fmt.Errorf("ftpalg exit after SIGINT: %w: %w: %s", err, ErrFtpalg, a.log.Tail())
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("ftpalg (pid %d) still running 10s after SIGINT: %w", a.p.Pid(), ErrFtpalg)
	}
}

// queued returns how many packets the kernel has put on ftpalg's queue so
// far (the id_sequence column of the router's
// /proc/net/netfilter/nfnetlink_queue): proof of what entered userspace.
func (g *gateway) queued(ctx context.Context) (uint64, error) {
	out, err := g.r.Run(ctx, rig.Router, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return 0, err
	}
	return parseQueued(out)
}

// memory returns ftpalg's resident set size and its anonymous part, in
// bytes, from /proc/<pid>/status. `ip netns exec` execs the program, so the
// rig's PID is ftpalg's own; the command name is checked to be sure.
func (a *ftpalgProc) memory() (rss, anon int64, err error) {
	pid := a.p.Pid()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading ftpalg's command name: %w", err)
	}
	if c := strings.TrimSpace(string(comm)); c != "ftpalg" {
		return 0, 0, fmt.Errorf("pid %d is %q, not ftpalg: %w", pid, c, ErrFtpalg)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading ftpalg's status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "RssAnon") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parsing %s %q: %w", k, v, err)
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			anon = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading ftpalg's status: %w", err)
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status: %w", pid, ErrFtpalg)
	}
	return rss, anon, nil
}

// pinholeBackends returns the values of ftpalg's --pinholes flag
// named in `ftpalg run -help`, or nil when the binary has no such flag.
// The flag package prints a flag's usage on the lines after its name.
func pinholeBackends(bin string) ([]string, error) {
	out, err := exec.Command(bin, "run", "-help").CombinedOutput()
	if len(out) == 0 && err != nil {
		return nil, fmt.Errorf("running %s run -help: %w", bin, err)
	}
	return parseBackends(string(out)), nil
}

// dataSet is the files every gateway's vsftpd serves, written once and
// hard-linked into each FTP root so all gateways read the same (cached)
// bytes.
type dataSet struct {
	dir   string
	bulk  int64
	files int
}

const (
	bulkName  = "bulk.bin"
	smallName = "1k.bin"
	smallDir  = "small"
	smallSize = 1024
)

func smallFile(i int) string { return fmt.Sprintf("%s/f%04d.bin", smallDir, i) }

// newDataSet writes the bulk file, the 1 KB session file and files small
// files into a fresh temporary directory.
func newDataSet(bulk int64, files int) (*dataSet, error) {
	dir, err := os.MkdirTemp("", "ftpalg-bench-data-")
	if err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	d := &dataSet{dir: dir, bulk: bulk, files: files}
	if err := os.Mkdir(filepath.Join(dir, smallDir), 0o755); err != nil {
		d.remove()
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	if _, err := rig.WriteRandomFile(filepath.Join(dir, bulkName), bulk); err != nil {
		d.remove()
		return nil, err
	}
	names := []string{smallName}
	for i := range files {
		names = append(names, smallFile(i))
	}
	for _, n := range names {
		if _, err := rig.WriteRandomFile(filepath.Join(dir, n), smallSize); err != nil {
			d.remove()
			return nil, err
		}
	}
	return d, nil
}

func (d *dataSet) remove() error { return os.RemoveAll(d.dir) }

// linkInto makes the data set appear under root (hard links; a copy when
// root is on another file system).
func (d *dataSet) linkInto(root string) error {
	sub := filepath.Join(root, smallDir)
	if err := os.Mkdir(sub, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", sub, err)
	}
	if err := os.Chmod(sub, 0o755); err != nil { // undo the umask: the anonymous user reads it
		return fmt.Errorf("chmod %s: %w", sub, err)
	}
	names := []string{bulkName, smallName}
	for i := range d.files {
		names = append(names, smallFile(i))
	}
	for _, n := range names {
		src, dst := filepath.Join(d.dir, n), filepath.Join(root, n)
		err := os.Link(src, dst)
		if errors.Is(err, syscall.EXDEV) {
			err = copyFile(src, dst)
		}
		if err != nil {
			return fmt.Errorf("serving %s: %w", n, err)
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
