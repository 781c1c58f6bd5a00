package rig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
)

// netnsDir is where `ip netns` keeps the bind mounts that name namespaces.
const netnsDir = "/run/netns"

// Option configures a rig.
type Option func(*config)

type config struct {
	prefix       string
	kernelHelper bool
	logger       *slog.Logger
	ruleset      Ruleset
	ports        []uint16
	admin        AdminRules
}

// firewall returns the options the firewall is rendered with.
func (c config) firewall() FirewallOptions {
	return FirewallOptions{KernelHelper: c.kernelHelper, ControlPorts: c.ports, Admin: c.admin}
}

// WithKernelHelper attaches the kernel's FTP conntrack helper to the
// control port (raw PREROUTING CT --helper ftp, and raw OUTPUT where the
// client runs on the firewall host; nft `ct helper set` under
// WithNFTables). Its expectations pass the firewall's RELATED rule, so
// tests can compare ftpalg with the kernel's own ALG.
func WithKernelHelper() Option { return func(c *config) { c.kernelHelper = true } }

// WithNFTables loads the nftables-native ruleset (NFTRules) instead of
// the iptables scripts: no admin iptables rule at all.
func WithNFTables() Option { return func(c *config) { c.ruleset = NFTables } }

// WithControlPorts sets the FTP control ports (default 21): the firewall
// accepts and the kernel helper watches all of them; clients dial the
// first, and servers listen on it (behind DNAT, which maps each to 21, on
// 21), like `ftpalg run --control-ports`.
func WithControlPorts(ports ...uint16) Option {
	return func(c *config) { c.ports = slices.Clone(ports) }
}

// WithAdminRules adds an admin's fragment (for example the output of
// `ftpalg rules`) to the firewall host's ruleset: the nft parts into the
// admin's table and chains, the iptables parts loaded with
// iptables-restore --noflush after the rig's script.
func WithAdminRules(a AdminRules) Option { return func(c *config) { c.admin = a } }

// WithPrefix sets the namespace name prefix (1–6 lowercase letters or
// digits, ending in a letter). Each engineer's tests use their own so
// parallel runs never clash; New defaults to "rig". Namespaces are named
// prefix+PID+4 hex digits+role (c, r, s); a new rig removes those of its
// prefix whose PID is gone.
func WithPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithLogger sets the logger for the rig's setup and teardown steps
// (Debug level); by default the rig is silent.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// Rig is a client–router–server set of network namespaces with addresses,
// routes and the router's firewall in place. Its methods are safe for
// concurrent use.
type Rig struct {
	topo  Topology
	cfg   config
	log   *slog.Logger
	names [3]string // namespace names, indexed by Node-1
	dir   string    // scratch directory removed by Close
	rules [2]string // applied iptables rulesets: IPv4, IPv6 (IPTables)
	nft   string    // applied nftables ruleset (NFTables)

	mu      sync.Mutex
	procs   []*Proc
	servers []*FTPServer
	closed  bool
}

// New builds a rig for a test and registers its teardown (after a diagnostic
// dump when the test failed) with t.Cleanup. It skips the test when not
// running as root and fails it when the rig cannot be built.
func New(t testing.TB, topo Topology, opts ...Option) *Rig {
	t.Helper()
	testenv.RequireRoot(t, "the test rig creates network namespaces, veth pairs and firewall rules")
	cfg := config{prefix: "rig", ruleset: IPTables}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := build(ctx, topo, cfg)
	if err != nil {
		t.Fatalf("building %v rig: %v", topo, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rig %s diagnostics:\n%s", r.names[0], r.Dump())
		}
		if err := r.Close(); err != nil {
			t.Errorf("closing %v rig: %v", topo, err)
		}
	})
	return r
}

// Build builds a rig outside of tests (the demo, benchmark programs). The
// caller must Close it. On error nothing is left behind.
func Build(ctx context.Context, topo Topology, prefix string, opts ...Option) (*Rig, error) {
	cfg := config{ruleset: IPTables}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.prefix = prefix
	return build(ctx, topo, cfg)
}

// validPrefix accepts 1–6 lowercase letters and digits ending in a
// letter, so that the PID after it can be told apart (see parseName).
func validPrefix(p string) bool {
	if len(p) == 0 || len(p) > 6 || p[len(p)-1] < 'a' || p[len(p)-1] > 'z' {
		return false
	}
	for _, c := range p {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// parseName splits a namespace name prefix+PID+4 hex digits+role, or a
// scratch directory name prefix+PID+4 hex digits+"-"+random, and returns
// the PID of the process that made it.
func parseName(prefix, name string) (pid int, ok bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	if base, _, isDir := strings.Cut(rest, "-"); isDir {
		rest = base
	} else {
		if len(rest) == 0 || !strings.ContainsRune("crs", rune(rest[len(rest)-1])) {
			return 0, false
		}
		rest = rest[:len(rest)-1]
	}
	if len(rest) < 5 {
		return 0, false
	}
	digits, hex := rest[:len(rest)-4], rest[len(rest)-4:]
	if _, err := strconv.ParseUint(hex, 16, 16); err != nil {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// sweepStale removes what earlier rigs with this prefix left behind when
// their process died before Close (a test binary killed by a timeout or a
// closed pipe): namespaces, the processes inside them and scratch
// directories, but only where the PID in the name no longer exists.
func sweepStale(prefix string, log *slog.Logger) {
	gone := func(name string) bool {
		pid, ok := parseName(prefix, name)
		return ok && pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH
	}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if !gone(e.Name()) {
				continue
			}
			err := errors.Join(killNamespace(e.Name()), exec.Command("ip", "netns", "del", e.Name()).Run())
			log.Debug("rig removed stale namespace", "namespace", e.Name(), "err", err)
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && gone(e.Name()) {
				err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
				log.Debug("rig removed stale directory", "dir", e.Name(), "err", err)
			}
		}
	}
}

func build(ctx context.Context, topo Topology, cfg config) (_ *Rig, err error) {
	if !topo.valid() {
		return nil, fmt.Errorf("building rig: %v: %w", topo, ErrTopology)
	}
	if !validPrefix(cfg.prefix) {
		return nil, fmt.Errorf("building rig with prefix %q: %w", cfg.prefix, ErrPrefix)
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sweepStale(cfg.prefix, log)
	r := &Rig{topo: topo, cfg: cfg, log: log}
	// PID plus a random suffix: unique across processes and across the
	// rigs of one process (parallel subtests).
	base := fmt.Sprintf("%s%d%04x", cfg.prefix, os.Getpid(), rand.N(1<<16))
	for i, role := range []byte{'c', 'r', 's'} {
		r.names[i] = base + string(role)
	}
	if slices.Contains(cfg.ports, 0) {
		return nil, fmt.Errorf("building rig with control ports %v: %w", cfg.ports, ErrConfig)
	}
	switch cfg.ruleset {
	case IPTables:
		for i, f := range []Family{IPv4, IPv6} {
			if r.rules[i], err = IPTablesRules(topo, f, cfg.firewall()); err != nil {
				return nil, err
			}
		}
	case NFTables:
		if r.nft, err = NFTRules(topo, cfg.firewall()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("building rig with %v: %w", cfg.ruleset, ErrConfig)
	}
	r.dir, err = os.MkdirTemp("", base+"-")
	if err != nil {
		return nil, fmt.Errorf("building rig %s: %w", base, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	if err := r.setup(ctx); err != nil {
		return nil, fmt.Errorf("building rig %s: %w", base, err)
	}
	log.Debug("rig built", "topology", topo, "namespaces", r.names, "kernel_helper", cfg.kernelHelper, "ruleset", cfg.ruleset)
	return r, nil
}

// setup creates the namespaces, links, addresses, routes, sysctls and
// firewall. Links are created from inside the router's namespace straight
// into the peers' namespaces, so nothing ever appears in the host's.
func (r *Rig) setup(ctx context.Context) error {
	for _, n := range r.names {
		if err := r.host(ctx, nil, "ip", "netns", "add", n); err != nil {
			return err
		}
		// No duplicate address detection on these private links: it
		// keeps even link-local addresses tentative for a second after
		// link-up, and the first IPv6 SYN is lost meanwhile.
		if err := r.host(ctx, nil, "ip", "netns", "exec", n, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
			return err
		}
	}
	insideHost, outsideHost := Server, Client
	if r.topo.clientInside() {
		insideHost, outsideHost = Client, Server
	}
	rt := r.NS(Router)
	for _, l := range []struct {
		routerIf string
		peer     Node
	}{{RouterInsideIf, insideHost}, {RouterOutsideIf, outsideHost}} {
		if err := r.host(ctx, nil, "ip", "-n", rt, "link", "add", l.routerIf, "type", "veth",
			"peer", "name", HostIf, "netns", r.NS(l.peer)); err != nil {
			return err
		}
	}
	// Links go up first: their carrier (and with it IPv6) becomes ready
	// asynchronously, so the rest of the setup overlaps that wait.
	for _, n := range []Node{Client, Router, Server} {
		devs := []string{"lo", HostIf}
		if n == Router {
			devs = []string{"lo", RouterInsideIf, RouterOutsideIf}
		}
		for _, d := range devs {
			if err := r.host(ctx, nil, "ip", "-n", r.NS(n), "link", "set", d, "up"); err != nil {
				return err
			}
		}
	}
	type addr struct {
		node Node
		dev  string
		a    netip.Addr
		p    netip.Prefix
	}
	var addrs []addr
	type route struct {
		node Node
		via  netip.Addr
	}
	var routes []route
	for _, f := range []Family{IPv4, IPv6} {
		ad := r.topo.Addresses(f)
		in, out := ad.ClientNS, ad.ServerNS
		if !r.topo.clientInside() {
			in, out = ad.ServerNS, ad.ClientNS
		}
		addrs = append(addrs,
			addr{Router, RouterInsideIf, ad.RouterInside, ad.Inside},
			addr{Router, RouterOutsideIf, ad.RouterOutside, ad.Outside},
			addr{insideHost, HostIf, in, ad.Inside},
			addr{outsideHost, HostIf, out, ad.Outside},
		)
		// A plain host (the Host topologies) is no gateway: its
		// neighbours reach it on their link and have no default route,
		// so what they send elsewhere fails at once (ENETUNREACH)
		// instead of dying at a host that does not forward. proftpd's
		// start-up name lookups would otherwise wait 20 s for DNS.
		if r.topo.forwards() {
			routes = append(routes, route{insideHost, ad.RouterInside}, route{outsideHost, ad.RouterOutside})
		}
	}
	for _, a := range addrs {
		args := []string{"-n", r.NS(a.node), "addr", "add", netip.PrefixFrom(a.a, a.p.Bits()).String(), "dev", a.dev}
		if a.a.Is6() {
			// Skip duplicate address detection: nothing else is on
			// these links, and DAD would delay first use by ~1s.
			args = append(args, "nodad")
		}
		if err := r.host(ctx, nil, "ip", args...); err != nil {
			return err
		}
	}
	for _, rt := range routes {
		if err := r.host(ctx, nil, "ip", "-n", r.NS(rt.node), "route", "add", "default", "via", rt.via.String()); err != nil {
			return err
		}
	}
	if r.topo == RouterLocalClient {
		// The router's own programs leave with its inside address, so
		// its MASQUERADE translates them like the LAN's.
		ad := r.topo.Addresses(IPv4)
		if err := r.host(ctx, nil, "ip", "-n", rt, "route", "replace", ad.Outside.String(),
			"dev", RouterOutsideIf, "src", ad.RouterInside.String()); err != nil {
			return err
		}
	}
	forward := "0"
	if r.topo.forwards() {
		forward = "1"
	}
	if err := r.host(ctx, nil, "ip", "netns", "exec", rt, "sysctl", "-q", "-w",
		"net.ipv4.ip_forward="+forward,
		"net.ipv6.conf.all.forwarding="+forward,
		// Strict TCP window tracking: what the product must survive.
		"net.netfilter.nf_conntrack_tcp_be_liberal=0",
	); err != nil {
		return err
	}
	if err := r.loadFirewall(ctx); err != nil {
		return err
	}
	return r.waitOperUp(ctx)
}

// loadFirewall loads the router's ruleset, then the admin's additions.
func (r *Rig) loadFirewall(ctx context.Context) error {
	rt := r.NS(Router)
	if r.cfg.ruleset == NFTables {
		return r.host(ctx, strings.NewReader(r.nft), "ip", "netns", "exec", rt, "nft", "-f", "-")
	}
	admin := []string{r.cfg.admin.IPTables4, r.cfg.admin.IPTables6}
	for i, tool := range []string{"iptables-restore", "ip6tables-restore"} {
		if err := r.host(ctx, strings.NewReader(r.rules[i]), "ip", "netns", "exec", rt, tool); err != nil {
			return err
		}
		if strings.TrimSpace(admin[i]) == "" {
			continue
		}
		if err := r.host(ctx, strings.NewReader(admin[i]), "ip", "netns", "exec", rt, tool, "--noflush"); err != nil {
			return fmt.Errorf("loading the admin's rules: %w", err)
		}
	}
	return nil
}

// waitOperUp waits until every veth end is operationally up. The kernel
// reports carrier changes through linkwatch, which batches them for up to
// a second; until then IPv6 ignores the link (no link-local address,
// neighbor solicitations unanswered) and the first IPv6 SYN through the
// rig would wait a full retransmission timeout.
func (r *Rig) waitOperUp(ctx context.Context) error {
	for _, n := range []Node{Client, Router, Server} {
		for {
			out, err := exec.CommandContext(ctx, "ip", "-n", r.NS(n), "-br", "link", "show").Output()
			if err != nil {
				return fmt.Errorf("listing links in %s: %w", r.NS(n), err)
			}
			if allUp(string(out)) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("links in %s not up: %w: %s", r.NS(n), ctx.Err(), out)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// allUp reports whether every non-loopback link in `ip -br link show`
// output ("eth0@if2  UP  ea:6b:... <...>") is in operational state UP.
func allUp(brief string) bool {
	for line := range strings.Lines(brief) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] == "lo" {
			continue
		}
		if f[1] != "UP" {
			return false
		}
	}
	return true
}

// host runs a command in the host context (usually `ip ...`, which enters
// the namespaces itself) and wraps its output into the error.
func (r *Rig) host(ctx context.Context, stdin *strings.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	r.log.Debug("rig command", "cmd", cmd.String(), "err", err)
	if err != nil {
		return fmt.Errorf("%s: %w: %w: %s", cmd, ErrCommand, err, bytes.TrimSpace(out))
	}
	return nil
}

// Topology returns the rig's topology.
func (r *Rig) Topology() Topology { return r.topo }

// NS returns the name of node's network namespace (as used by
// `ip netns exec`), or "" for an unknown node.
func (r *Rig) NS(n Node) string {
	if !n.valid() {
		return ""
	}
	return r.names[n-1]
}

// Dir returns the rig's scratch directory, removed by Close.
func (r *Rig) Dir() string { return r.dir }

// Addresses returns the address plan of the family the client uses to
// reach the server.
func (r *Rig) Addresses() Addresses { return r.topo.Addresses(r.topo.Family()) }

// ServerAddr returns the address the client dials for the control
// connection (198.51.100.1 under ServerForward).
func (r *Rig) ServerAddr() netip.Addr { return r.Addresses().ServerPublic }

// ServerHostAddr returns the server's own address (what it announces in
// 227 replies when no passive address is configured).
func (r *Rig) ServerHostAddr() netip.Addr { return r.Addresses().Server }

// ClientAddr returns the client's own address (what it announces in PORT).
func (r *Rig) ClientAddr() netip.Addr { return r.Addresses().Client }

// ClientPublicAddr returns the client's address as the server sees it
// (198.51.100.1 under ClientNAT).
func (r *Rig) ClientPublicAddr() netip.Addr { return r.Addresses().ClientPublic }

// RouterInside returns the name of the router's interface toward the
// protected network.
func (r *Rig) RouterInside() string { return RouterInsideIf }

// RouterOutside returns the name of the router's interface toward the
// unprotected network.
func (r *Rig) RouterOutside() string { return RouterOutsideIf }

// Firewall returns the ruleset applied to the router for family f, in
// iptables-restore format, or "" for an unknown family or under
// WithNFTables (see NFTRuleset).
func (r *Rig) Firewall(f Family) string {
	switch f {
	case IPv4:
		return r.rules[0]
	case IPv6:
		return r.rules[1]
	}
	return ""
}

// NFTRuleset returns the nftables ruleset applied to the router under
// WithNFTables, or "".
func (r *Rig) NFTRuleset() string { return r.nft }

// Ruleset returns how the router's firewall is written.
func (r *Rig) Ruleset() Ruleset { return r.cfg.ruleset }

// KernelHelper reports whether the rig attached the kernel's FTP helper.
func (r *Rig) KernelHelper() bool { return r.cfg.kernelHelper }

// ControlPort returns the control port clients dial (21 unless
// WithControlPorts).
func (r *Rig) ControlPort() uint16 { return r.cfg.firewall().ports()[0] }

// ControlPorts returns every configured control port.
func (r *Rig) ControlPorts() []uint16 { return slices.Clone(r.cfg.firewall().ports()) }

// ServerPort returns the port the FTP servers listen on: ControlPort,
// except behind DNAT, where it is 21.
func (r *Rig) ServerPort() uint16 { return listenPort(r.topo, r.ControlPort()) }

// ServerEndpoint returns the address and port the client dials for the
// control connection.
func (r *Rig) ServerEndpoint() netip.AddrPort {
	return netip.AddrPortFrom(r.ServerAddr(), r.ControlPort())
}

// URL returns an ftp:// URL for path (relative to the server's FTP root)
// on the address the client dials.
func (r *Rig) URL(path string) string {
	return "ftp://" + r.ServerEndpoint().String() + "/" + strings.TrimPrefix(path, "/")
}

// Exec returns a command that runs name in node's namespace through
// `ip netns exec`. The command is not started. For an unknown node the
// command fails when started.
func (r *Rig) Exec(n Node, name string, args ...string) *exec.Cmd {
	return r.ExecContext(context.Background(), n, name, args...)
}

// ExecContext is Exec with a context that kills the command.
func (r *Rig) ExecContext(ctx context.Context, n Node, name string, args ...string) *exec.Cmd {
	ns := r.NS(n)
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	if ns == "" {
		cmd.Err = fmt.Errorf("running %s in %v: %w", name, n, ErrNode)
	}
	return cmd
}

// Run runs name in node's namespace and returns its combined output. A
// non-zero exit is an error wrapping ErrCommand that includes the output.
func (r *Rig) Run(ctx context.Context, n Node, name string, args ...string) (string, error) {
	cmd := r.ExecContext(ctx, n, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %v: %w: %w: %s", name, n, ErrCommand, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// InvalidDrops returns how many packets the router's rules tagged
// InvalidDropComment have dropped: in FORWARD and, where an FTP endpoint
// runs on the firewall host, INPUT; IPv4 and IPv6 together; from the
// iptables or the nftables ruleset. It must stay 0 for any flow an ALG
// touches.
func (r *Rig) InvalidDrops() (uint64, error) {
	c, err := r.filterCounters()
	return c.rulePackets, err
}

// PolicyDrops returns how many packets fell through to the DROP policy of
// FORWARD and a strict INPUT, IPv4 and IPv6 together: connections the
// firewall refused. Under WithNFTables it reads the counter rule tagged
// PolicyDropComment that ends each strict chain.
func (r *Rig) PolicyDrops() (uint64, error) {
	c, err := r.filterCounters()
	return c.policyPackets, err
}

// InputCounters returns the INVALID and policy drops of the firewall
// host's INPUT alone (zero where INPUT is open).
func (r *Rig) InputCounters() (invalid, policy uint64, err error) {
	if !r.topo.strictInput() {
		return 0, 0, nil
	}
	c, err := r.chainCounters("INPUT", "input")
	return c.rulePackets, c.policyPackets, err
}

func (r *Rig) filterCounters() (chainCounters, error) {
	if r.cfg.ruleset == NFTables {
		return r.nftCounters("")
	}
	var sum chainCounters
	var chains []string
	if r.topo.forwards() {
		chains = append(chains, "FORWARD")
	}
	if r.topo.strictInput() {
		chains = append(chains, "INPUT")
	}
	for _, chain := range chains {
		c, err := r.chainCounters(chain, "")
		if err != nil {
			return sum, err
		}
		sum.rulePackets += c.rulePackets
		sum.policyPackets += c.policyPackets
	}
	return sum, nil
}

// chainCounters reads one iptables chain of both families, or under
// WithNFTables the nft chain nftChain.
func (r *Rig) chainCounters(chain, nftChain string) (chainCounters, error) {
	if r.cfg.ruleset == NFTables {
		return r.nftCounters(nftChain)
	}
	var sum chainCounters
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := r.Run(context.Background(), Router, tool, "-L", chain, "-v", "-n", "-x")
		if err != nil {
			return sum, fmt.Errorf("reading %s counters: %w", chain, err)
		}
		c, err := parseChainListing(out, InvalidDropComment)
		if err != nil {
			return sum, fmt.Errorf("reading %s %s counters: %w", tool, chain, err)
		}
		sum.rulePackets += c.rulePackets
		sum.policyPackets += c.policyPackets
	}
	return sum, nil
}

// nftCounters reads the tagged counters of the admin's nft table: of one
// chain, or of all when chain is "".
func (r *Rig) nftCounters(chain string) (chainCounters, error) {
	args := []string{"-j", "list", "table", "inet", NFTTable}
	if chain != "" {
		args = []string{"-j", "list", "chain", "inet", NFTTable, chain}
	}
	out, err := r.Run(context.Background(), Router, "nft", args...)
	if err != nil {
		return chainCounters{}, fmt.Errorf("reading nft counters: %w", err)
	}
	var c chainCounters
	var n int
	if c.rulePackets, n, err = parseNFTCounters([]byte(out), InvalidDropComment); err == nil && n == 0 {
		err = fmt.Errorf("no nft rule tagged %q: %w", InvalidDropComment, ErrCounter)
	}
	if err != nil {
		return c, err
	}
	c.policyPackets, _, err = parseNFTCounters([]byte(out), PolicyDropComment)
	return c, err
}

// Dump returns diagnostics for a failed test: the router's rules with
// counters, its conntrack table and expectations, every node's addresses
// and routes, the FTP servers' logs and the tracked processes' output.
// It never fails; errors are included in the text.
func (r *Rig) Dump() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	section := func(n Node, name string, args ...string) {
		fmt.Fprintf(&b, "==== %v: %s %s\n", n, name, strings.Join(args, " "))
		out, err := r.ExecContext(ctx, n, name, args...).CombinedOutput()
		b.Write(out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	fmt.Fprintf(&b, "topology %v, kernel helper %v, ruleset %v, namespaces %v\n", r.topo, r.cfg.kernelHelper, r.cfg.ruleset, r.names)
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"raw", "nat", "filter"} {
			if tool == "ip6tables" && table == "nat" {
				continue
			}
			section(Router, tool, "-t", table, "-L", "-v", "-n", "-x")
		}
	}
	section(Router, "nft", "list", "ruleset")
	section(Router, "conntrack", "-L", "-f", "ipv4")
	section(Router, "conntrack", "-L", "-f", "ipv6")
	section(Router, "conntrack", "-L", "expect")
	for _, n := range []Node{Client, Router, Server} {
		section(n, "ip", "-br", "addr")
		section(n, "ip", "route")
		section(n, "ip", "-6", "route")
		section(n, "ss", "-tanp")
	}
	r.mu.Lock()
	servers := append([]*FTPServer(nil), r.servers...)
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	for _, s := range servers {
		fmt.Fprintf(&b, "==== %v log %s\n%s\n", s.Kind, s.LogPath, s.Log())
	}
	for _, p := range procs {
		fmt.Fprintf(&b, "==== output of %s (pid %d)\n%s\n", p.name, p.Pid(), p.Output())
	}
	return b.String()
}

// Close stops every process the rig started, kills whatever is still
// running inside its namespaces, deletes the namespaces (and with them
// the links, rules and conntrack entries) and removes the scratch
// directory. It is idempotent.
func (r *Rig) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	procs := r.procs
	r.procs, r.servers = nil, nil
	r.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range r.names {
		if n == "" {
			continue
		}
		if _, err := os.Stat(netnsDir + "/" + n); err != nil {
			continue // never created (failed build)
		}
		if err := killNamespace(n); err != nil {
			errs = append(errs, err)
		}
		out, err := exec.Command("ip", "netns", "del", n).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w: %s", n, err, bytes.TrimSpace(out)))
		}
	}
	if r.dir != "" {
		if err := os.RemoveAll(r.dir); err != nil {
			errs = append(errs, fmt.Errorf("removing rig directory: %w", err))
		}
	}
	r.log.Debug("rig closed", "namespaces", r.names, "errors", len(errs))
	return errors.Join(errs...)
}

// killNamespace SIGKILLs the processes still inside namespace ns (children
// a tracked process left behind, such as vsftpd sessions). They are ours:
// only the rig puts processes into its namespaces.
func killNamespace(ns string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			return fmt.Errorf("listing processes in namespace %s: %w", ns, err)
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survive in namespace %s", pids, ns)
		}
		for _, s := range pids {
			pid, err := strconv.Atoi(s)
			if err != nil || pid <= 1 {
				continue
			}
			_ = killPID(pid) // ESRCH: already gone
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// track registers p for Close, or reports that the rig is closed.
func (r *Rig) track(p *Proc) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.procs = append(r.procs, p)
	return nil
}
