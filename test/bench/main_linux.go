package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/test/rig"
)

// config is the command line.
type config struct {
	ftpalgBin                 string
	algArgs                   []string // extra `ftpalg run` flags
	nice                      int      // ftpalg's nice value
	prefix                    string
	outDir                    string
	reps                      int
	bulkReps                  int
	bulkMB                    int
	noops                     int
	sessions                  int
	clients, parallelSessions int // the parallel workload
	placement                 string
	files                     int
	idle                      int
	parallel                  int
	backends                  string
	workloads                 string
	timeout                   time.Duration
}

// allWorkloads are the names -workloads accepts, in run order.
func allWorkloads() []string {
	return []string{"bulk", "noop", "sessions", "parallel", "long", "memory"}
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: FTPALG_BIN=bin/ftpalg go run ./test/bench [flags]\n\n"+
			"Runs the same FTP workloads through plain NAT, the kernel's FTP helper and ftpalg\n"+
			"in ClientNAT network-namespace rigs and prints them side by side. Needs root.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.ftpalgBin, "ftpalg", os.Getenv("FTPALG_BIN"), "ftpalg binary (default $FTPALG_BIN)")
	fs.Func("ftpalg-arg", "an extra `flag` for ftpalg run, like --queue-spin=0 (repeatable)", func(v string) error {
		cfg.algArgs = append(cfg.algArgs, v)
		return nil
	})
	fs.IntVar(&cfg.nice, "ftpalg-nice", unitNice, "nice `value` ftpalg runs at (deploy/ftpalg.service's Nice=)")
	fs.StringVar(&cfg.prefix, "prefix", "fp", "network namespace name prefix")
	fs.StringVar(&cfg.outDir, "out", "test/bench/out", "directory for bench-<time>.txt and .json")
	fs.IntVar(&cfg.reps, "reps", 3, "repetitions of each workload per gateway (interleaved across gateways)")
	fs.IntVar(&cfg.bulkReps, "bulk-reps", 21, "repetitions of the bulk download per gateway (best and median reported)")
	fs.IntVar(&cfg.bulkMB, "bulk-mb", 200, "size of the bulk download in MB (10^6 bytes)")
	fs.IntVar(&cfg.noops, "noops", 2000, "measured NOOP round trips per repetition")
	fs.IntVar(&cfg.sessions, "sessions", 300, "sequential sessions per repetition and mode")
	fs.StringVar(&cfg.placement, "placement", placeFree, "CPU placement: "+placeFree+" (no pinning) or "+placeShared+" (FTP client and server share CPU 0; ftpalg and the routers' kernel work free)")
	fs.IntVar(&cfg.clients, "clients", 40, "concurrent clients of the parallel workload")
	fs.IntVar(&cfg.parallelSessions, "parallel-sessions", 1000, "sessions per repetition of the parallel workload")
	fs.IntVar(&cfg.files, "files", 1000, "small files fetched by the long session")
	fs.IntVar(&cfg.idle, "idle", 100000, "idle logged-in control connections for the memory workload")
	fs.IntVar(&cfg.parallel, "idle-parallel", 32, "connections opened concurrently by the memory workload")
	fs.StringVar(&cfg.backends, "backends", "",
		`ftpalg --pinholes values to compare, comma-separated (nftables,iptables); "auto" takes those "ftpalg run -help" names; empty runs ftpalg's default only`)
	fs.StringVar(&cfg.workloads, "workloads", strings.Join(allWorkloads(), ","), "workloads to run, comma-separated")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case cfg.ftpalgBin == "":
		return nil, errors.New("no ftpalg binary: set FTPALG_BIN or -ftpalg (make build first)")
	case cfg.reps < 1 || cfg.bulkReps < 1 || cfg.bulkMB < 1 || cfg.noops < 1 || cfg.sessions < 1 || cfg.files < 1 || cfg.idle < 1 || cfg.parallel < 1:
		return nil, errors.New("-reps, -bulk-reps, -bulk-mb, -noops, -sessions, -files, -idle and -idle-parallel must be positive")
	}
	if cfg.placement != placeFree && cfg.placement != placeShared {
		return nil, fmt.Errorf("-placement %q: want %s or %s", cfg.placement, placeFree, placeShared)
	}
	if cfg.clients < 1 || cfg.parallelSessions < cfg.clients {
		return nil, errors.New("-clients must be positive and -parallel-sessions at least -clients")
	}
	for _, w := range strings.Split(cfg.workloads, ",") {
		if !slices.Contains(allWorkloads(), w) {
			return nil, fmt.Errorf("unknown workload %q (have %s)", w, strings.Join(allWorkloads(), ","))
		}
	}
	return cfg, nil
}

func (c *config) runs(w string) bool { return slices.Contains(strings.Split(c.workloads, ","), w) }

func main() {
	// The memory workload re-runs this binary in the rig's namespaces as
	// its idle FTP servers and client processes.
	switch {
	case len(os.Args) == 3 && os.Args[1] == idleServerArg:
		if err := idleServerMain(os.Args[2], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench idle server:", err)
			os.Exit(1)
		}
		return
	case len(os.Args) >= 2 && os.Args[1] == idleClientsArg:
		if err := idleClientsMain(os.Args[2:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench idle clients:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("requires root: the benchmark builds network namespaces, veth pairs and firewall rules")
	}
	if cfg.runs("memory") {
		// The rig checks again with what it finds; this fails at once
		// rather than after the other workloads.
		if err := checkIdlePlan(cfg.idle); err != nil {
			return err
		}
	}
	if cfg.placement == placeShared {
		if runtime.NumCPU() < 2 {
			return errors.New("-placement shared needs at least 2 CPUs")
		}
		if err := pinSelf(sharedCPU); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	progress := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	rep := &Report{
		Started: time.Now(), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Params: Params{Reps: cfg.reps, BulkReps: cfg.bulkReps, BulkBytes: int64(cfg.bulkMB) * 1e6, NOOPs: cfg.noops,
			Sessions: cfg.sessions, Files: cfg.files, IdleConns: cfg.idle, Workloads: cfg.workloads, FtpalgArgs: cfg.algArgs, FtpalgNice: cfg.nice,
			Placement: cfg.placement, Clients: cfg.clients, ParallelSessions: cfg.parallelSessions},
		Pinholes: map[string]map[string]Summary{}, FtpalgStats: map[string]map[string]any{},
	}
	rep.Host, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		rep.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if out, err := exec.Command(cfg.ftpalgBin, "version").Output(); err == nil {
		rep.Ftpalg = strings.TrimSpace(string(out))
	} else {
		return fmt.Errorf("running %s version: %w", cfg.ftpalgBin, err)
	}

	backends, err := chooseBackends(cfg)
	if err != nil {
		return err
	}
	gws := []*gateway{{name: gwPlain}, {name: gwKernel, kernel: true}}
	for _, b := range backends {
		name := gwFtpalg
		if b != "" && len(backends) > 1 {
			name += "/" + b
		}
		gws = append(gws, &gateway{name: name, runAlg: true, backend: b})
	}
	for _, g := range gws {
		rep.Gateways = append(rep.Gateways, g.name)
	}

	b := &bench{cfg: cfg, rep: rep, gws: gws, progress: progress}
	runErr := b.run(ctx)
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.judge()
	if err := rep.WriteText(stdout); err != nil {
		return errors.Join(runErr, err)
	}
	txt, js, err := rep.Save(cfg.outDir)
	if err != nil {
		return errors.Join(runErr, err)
	}
	progress("saved %s and %s", txt, js)
	return runErr
}

// chooseBackends returns the --pinholes values to bench, [""] for
// the binary's only (or default) one.
func chooseBackends(cfg *config) ([]string, error) {
	if cfg.backends != "auto" {
		var out []string
		for _, b := range strings.Split(cfg.backends, ",") {
			if b = strings.TrimSpace(b); b != "" && !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
		if len(out) == 0 {
			return []string{""}, nil
		}
		return out, nil
	}
	found, err := pinholeBackends(cfg.ftpalgBin)
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return []string{""}, nil
	}
	return found, nil
}

// fileLimitMax returns the hard RLIMIT_NOFILE (0 if unreadable).
func fileLimitMax() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return int(min(lim.Max, 1<<20))
}

// checkIdlePlan fails if -idle connections cannot be spread over the
// memory workload's processes and server addresses with this process's
// file limit and the client port range the workload sets (planIdle).
func checkIdlePlan(conns int) error {
	ports, err := parsePortRange(clientPortRange)
	if err != nil {
		return err
	}
	cands, err := serverAddrs(rig.ClientNAT.Addresses(rig.IPv4))
	if err != nil {
		return err
	}
	if _, err := planIdle(conns, fileLimitMax(), ports, len(cands)); err != nil {
		return fmt.Errorf("-idle: %w", err)
	}
	return nil
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to at least n, or to the
// hard limit for n <= 0: the memory workload's idle servers and client
// processes each hold thousands of sockets. Raising the hard limit needs
// CAP_SYS_RESOURCE, which containers often drop; planIdle keeps each
// process's share under the hard limit, so that it need not.
func raiseFileLimit(n int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading the open file limit: %w", err)
	}
	if n <= 0 { // as high as allowed
		n = fileLimitMax()
	}
	if lim.Cur >= uint64(n) {
		return nil
	}
	cur := lim.Cur
	lim.Cur = uint64(n)
	lim.Max = max(lim.Max, lim.Cur)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising the open file limit from %d to %d (hard limit %d): %w", cur, n, fileLimitMax(), err)
	}
	return nil
}
