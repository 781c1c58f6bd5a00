package ha

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// Sentinel errors of the package.
var (
	// ErrCommand reports a setup or control command that failed; the
	// message carries its output.
	ErrCommand = errors.New("command failed")
	// ErrKit reports a deploy/ha file that no longer holds a line the rig
	// replaces (the kit changed; the rig must change with it).
	ErrKit = errors.New("deploy/ha file changed")
	// ErrTimeout reports a state the pair did not reach in time.
	ErrTimeout = errors.New("timed out")
	// ErrClosed reports use of a pair after Close.
	ErrClosed = errors.New("pair closed")
)

// Addresses of the rig, as in deploy/ha.
const (
	LANVIP       = "192.0.2.1"
	WANVIP       = "198.51.100.1"
	ClientAddr   = "192.0.2.10"
	ForwardAddr  = "192.0.2.20" // the port-forwarded FTP server (PASV case)
	PortServer   = "198.51.100.20"
	PasvClient   = "198.51.100.30"
	InvalidMatch = "ha: invalid drop"
	// MidStreamMatch tags the drop of TCP segments that would start a
	// connection in the middle (conntrack's loose pickup): on a router
	// taking over, a segment that arrives before conntrackd committed its
	// connection would otherwise create an entry of its own, strict and
	// without the replicated labels. Dropped, it is retransmitted. The
	// same in INPUT: a segment addressed to a virtual address the router
	// has just taken (a PORT data connection to the SNAT address, the
	// port-forwarded server's clients) would otherwise meet the router's
	// own TCP, which resets it (measured: a PORT session in three lost
	// its data connection to such a reset at a hard failure). INPUT drops
	// INVALID ones too: a FIN of a connection conntrack does not know yet
	// starts no entry, so it is INVALID, not NEW, and the reset it met
	// lost the end of PORT data connections at a switchover.
	MidStreamMatch = "ha: mid-stream drop"
	// UnclaimedMatch tags the drop of SYNs to the WAN virtual address that
	// no NAT claimed: a data connection whose pinhole (or the kernel
	// helper's expectation) this router does not have yet, in the moments
	// after it took the address over. The router's own TCP would answer
	// with a reset, and the client's connect fails at once (measured:
	// curl exit 7 on 1 to 5 PASV data connections of a switchover with the
	// kernel helper, 1 in about 30 switchovers with ftpalg, the reset from
	// 198.51.100.1 on the wire). Dropped, the SYN is sent again a second
	// later, when the pinhole is there.
	UnclaimedMatch = "ha: unclaimed syn drop"
)

// Gateway says what makes FTP work through the pair.
type Gateway int

const (
	// KernelHelper attaches the kernel's FTP helper (raw PREROUTING -j CT
	// --helper ftp); conntrackd replicates its expectations.
	KernelHelper Gateway = iota
	// Ftpalg runs ftpalg on both routers.
	Ftpalg
)

func (g Gateway) String() string {
	if g == Ftpalg {
		return "ftpalg"
	}
	return "kernel-helper"
}

// Host is a namespace of the rig that is not a router.
type Host string

// The rig's hosts.
const (
	Client  Host = "c" // LAN client behind SNAT (PORT sessions)
	Forward Host = "f" // LAN server behind the port forward (PASV sessions)
	Server  Host = "s" // WAN server for the PORT sessions
	Remote  Host = "x" // WAN client of the PASV sessions
)

// Options configure a pair.
type Options struct {
	Gateway Gateway
	// FtpalgBin is the ftpalg binary (Gateway Ftpalg).
	FtpalgBin string
	// Kit is the deploy/ha directory.
	Kit string
	// Prefix names the namespaces: prefix+PID+4 hex digits+role.
	Prefix string
	// NoPinSync runs ftpalg without the kit's pinhole sync flags, to
	// measure what is lost without them.
	NoPinSync bool
}

// Pair is the running rig.
type Pair struct {
	opts    Options
	base    string
	dir     string
	ns      []string // every namespace, for Close
	Routers [2]*Router

	mu     sync.Mutex
	procs  []*rig.Proc
	closed bool
}

// Start runs name in namespace ns in the background (rig.Proc: its own
// process group, output in a file under the pair's directory); Close
// stops it at the latest.
func (p *Pair) Start(ns, name string, args ...string) (*rig.Proc, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("starting %s in %s: %w", name, ns, ErrClosed)
	}
	pr, err := rig.StartProc(p.dir, exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...))
	if err != nil {
		return nil, err
	}
	p.procs = append(p.procs, pr)
	return pr, nil
}

// Router is one of the two routers: ha1 (priority 150, the first master)
// or ha2.
type Router struct {
	Name string // ha1 or ha2: keepalived's config id
	NS   string
	Dir  string
	p    *Pair

	Keepalived, Conntrackd, Ftpalg *rig.Proc
	ftpalgRuns                     int
	// ftpalgFlags are the kit's (deploy/ha/ftpalg.default) for this
	// router: the pinhole sync addresses.
	ftpalgFlags []string
}

// Build creates the namespaces, links, addresses and firewalls, then starts
// conntrackd, ftpalg (if chosen) and keepalived on both routers and waits
// until ha1 holds both virtual addresses. On error nothing is left.
func Build(ctx context.Context, opts Options) (_ *Pair, err error) {
	if opts.Prefix == "" {
		opts.Prefix = "ha"
	}
	sweepStale(opts.Prefix)
	p := &Pair{opts: opts, base: fmt.Sprintf("%s%d%04x", opts.Prefix, os.Getpid(), rand.N(1<<16))}
	if p.dir, err = os.MkdirTemp("", p.base+"-"); err != nil {
		return nil, fmt.Errorf("building pair %s: %w", p.base, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	for i, name := range []string{"ha1", "ha2"} {
		d := filepath.Join(p.dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("building pair %s: %w", p.base, err)
		}
		p.Routers[i] = &Router{Name: name, NS: p.base + strconv.Itoa(i+1), Dir: d, p: p}
	}
	if err := p.setup(ctx); err != nil {
		return nil, fmt.Errorf("building pair %s: %w", p.base, err)
	}
	for _, r := range p.Routers {
		if err := r.writeKit(); err != nil {
			return nil, err
		}
		if err := r.Start(ctx); err != nil {
			return nil, err
		}
	}
	if err := p.WaitMaster(ctx, p.Routers[0], 20*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// NS returns the namespace of a host.
func (p *Pair) NS(h Host) string { return p.base + string(h) }

// Dir is the scratch directory, removed by Close.
func (p *Pair) Dir() string { return p.dir }

// setup builds the links: a LAN bridge and a WAN bridge in namespaces of
// their own (l, w), the hosts on them, both routers' inside and outside
// legs, and the routers' sync link. Links are created from inside the
// bridge namespaces straight into their peers, so nothing appears in the
// host's namespace.
func (p *Pair) setup(ctx context.Context) error {
	lan, wan := p.base+"l", p.base+"w"
	r1, r2 := p.Routers[0].NS, p.Routers[1].NS
	for _, n := range []string{lan, wan, r1, r2, p.NS(Client), p.NS(Forward), p.NS(Server), p.NS(Remote)} {
		if err := run(ctx, nil, "ip", "netns", "add", n); err != nil {
			return err
		}
		p.ns = append(p.ns, n)
	}
	type leg struct{ bridgeNS, port, peerNS, peerIf string }
	legs := []leg{
		{lan, "pc", p.NS(Client), "eth0"}, {lan, "pf", p.NS(Forward), "eth0"},
		{lan, "p1", r1, "inside"}, {lan, "p2", r2, "inside"},
		{wan, "ps", p.NS(Server), "eth0"}, {wan, "px", p.NS(Remote), "eth0"},
		{wan, "p1", r1, "outside"}, {wan, "p2", r2, "outside"},
	}
	var cmds [][]string
	for _, b := range []string{lan, wan} {
		cmds = append(cmds, []string{"-n", b, "link", "add", "br0", "type", "bridge"}, []string{"-n", b, "link", "set", "br0", "up"})
	}
	for _, l := range legs {
		cmds = append(cmds,
			[]string{"-n", l.bridgeNS, "link", "add", l.port, "type", "veth", "peer", "name", l.peerIf, "netns", l.peerNS},
			[]string{"-n", l.bridgeNS, "link", "set", l.port, "master", "br0", "up"},
			[]string{"-n", l.peerNS, "link", "set", l.peerIf, "up"},
		)
	}
	cmds = append(cmds,
		[]string{"-n", r1, "link", "add", "sync", "type", "veth", "peer", "name", "sync", "netns", r2},
		[]string{"-n", r1, "link", "set", "sync", "up"}, []string{"-n", r2, "link", "set", "sync", "up"},
	)
	for _, a := range []struct{ ns, dev, addr string }{
		{p.NS(Client), "eth0", ClientAddr + "/24"}, {p.NS(Forward), "eth0", ForwardAddr + "/24"},
		{p.NS(Server), "eth0", PortServer + "/24"}, {p.NS(Remote), "eth0", PasvClient + "/24"},
		{r1, "inside", "192.0.2.2/24"}, {r1, "outside", "198.51.100.2/24"}, {r1, "sync", "203.0.113.1/24"},
		{r2, "inside", "192.0.2.3/24"}, {r2, "outside", "198.51.100.3/24"}, {r2, "sync", "203.0.113.2/24"},
	} {
		cmds = append(cmds, []string{"-n", a.ns, "addr", "add", a.addr, "dev", a.dev})
	}
	for _, n := range []string{lan, wan, r1, r2, p.NS(Client), p.NS(Forward), p.NS(Server), p.NS(Remote)} {
		cmds = append(cmds, []string{"-n", n, "link", "set", "lo", "up"})
	}
	// The LAN hosts route through the LAN VIP. The WAN hosts have no
	// route beyond their link: the PORT server sees the LAN only as the
	// WAN VIP (SNAT), the PASV client dials the WAN VIP.
	cmds = append(cmds,
		[]string{"-n", p.NS(Client), "route", "add", "default", "via", LANVIP},
		[]string{"-n", p.NS(Forward), "route", "add", "default", "via", LANVIP},
	)
	for _, c := range cmds {
		if err := run(ctx, nil, "ip", c...); err != nil {
			return err
		}
	}
	for _, r := range p.Routers {
		if err := run(ctx, nil, "ip", "netns", "exec", r.NS, "sysctl", "-q", "-w",
			"net.ipv4.ip_forward=1",
			// Strict TCP window tracking: what the product must survive.
			"net.netfilter.nf_conntrack_tcp_be_liberal=0",
		); err != nil {
			return err
		}
		if err := run(ctx, strings.NewReader(FirewallRules(p.opts.Gateway)), "ip", "netns", "exec", r.NS, "iptables-restore"); err != nil {
			return err
		}
	}
	return nil
}

// FirewallRules is the routers' iptables-restore input: SNAT of the LAN to
// the WAN VIP (SNAT, not MASQUERADE, which would pick the router's own WAN
// address), the port forward of the WAN VIP's port 21, and a strict
// FORWARD. INPUT stays open (VRRP and conntrackd's sync traffic end there)
// but for the kit's two drops: segments that would start a connection in
// the middle, and SYNs to the WAN virtual address that no NAT claimed.
func FirewallRules(g Gateway) string {
	var b strings.Builder
	b.WriteString("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	if g == KernelHelper {
		b.WriteString("-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\n")
	}
	b.WriteString("COMMIT\n")
	b.WriteString(`*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d ` + WANVIP + ` -p tcp --dport 21 -j DNAT --to-destination ` + ForwardAddr + `:21
-A POSTROUTING -s 192.0.2.0/24 -o outside -j SNAT --to-source ` + WANVIP + `
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp ! --syn -m conntrack --ctstate NEW,INVALID -m comment --comment "` + MidStreamMatch + `" -j DROP
-A INPUT -d ` + WANVIP + ` -p tcp --syn -m conntrack --ctstate NEW -m comment --comment "` + UnclaimedMatch + `" -j DROP
-A FORWARD -m conntrack --ctstate INVALID -m comment --comment "` + InvalidMatch + `" -j DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -p tcp ! --syn -m conntrack --ctstate NEW -m comment --comment "` + MidStreamMatch + `" -j DROP
-A FORWARD -i inside -o outside -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i outside -o inside -d ` + ForwardAddr + ` -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
`)
	return b.String()
}

// kitFile reads deploy/ha/name and applies the replacements (old, new
// pairs), each of which must match: the rig runs the kit as shipped, with
// only paths and this router's own addresses changed.
func (p *Pair) kitFile(name string, repl ...string) (string, error) {
	b, err := os.ReadFile(filepath.Join(p.opts.Kit, name))
	if err != nil {
		return "", fmt.Errorf("reading kit file: %w", err)
	}
	s := string(b)
	for i := 0; i+1 < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			return "", fmt.Errorf("%s: %q: %w", name, repl[i], ErrKit)
		}
		s = strings.ReplaceAll(s, repl[i], repl[i+1])
	}
	return s, nil
}

// Paths of a router's daemons, under its directory.
func (r *Router) conntrackdConf() string { return filepath.Join(r.Dir, "conntrackd.conf") }
func (r *Router) keepalivedConf() string { return filepath.Join(r.Dir, "keepalived.conf") }
func (r *Router) notifyScript() string   { return filepath.Join(r.Dir, "ftpalg-ha-notify") }
func (r *Router) ctlSocket() string      { return filepath.Join(r.Dir, "conntrackd.ctl") }

// writeKit writes the router's copies of the deploy/ha files.
func (r *Router) writeKit() error {
	repl := []string{
		"/var/log/conntrackd.log", filepath.Join(r.Dir, "conntrackd.log"),
		"/var/lock/conntrackd.lock", filepath.Join(r.Dir, "conntrackd.lock"),
		"/var/run/conntrackd.ctl", r.ctlSocket(),
	}
	if r.Name == "ha2" {
		repl = append(repl,
			"IPv4_address 203.0.113.1", "IPv4_address 203.0.113.2",
			"IPv4_Destination_Address 203.0.113.2", "IPv4_Destination_Address 203.0.113.1")
	}
	ct, err := r.p.kitFile("conntrackd.conf", repl...)
	if err != nil {
		return err
	}
	ka, err := r.p.kitFile("keepalived.conf",
		"/etc/keepalived/ftpalg-ha-notify", r.notifyScript(),
		"/etc/conntrackd/conntrackd.conf", r.conntrackdConf())
	if err != nil {
		return err
	}
	script, err := r.p.kitFile("ftpalg-ha-notify")
	if err != nil {
		return err
	}
	if r.ftpalgFlags, err = r.kitFtpalgFlags(); err != nil {
		return err
	}
	// The notify script logs what it did where the test can read it.
	script = strings.Replace(script, "set -u\n", "set -u\nexec 2>>"+r.notifyLog()+"\necho \"$(date +%T.%N) $*\" >&2\n", 1)
	for _, f := range []struct {
		path, text string
		mode       os.FileMode
	}{{r.conntrackdConf(), ct, 0o600}, {r.keepalivedConf(), ka, 0o600}, {r.notifyScript(), script, 0o700}} {
		if err := os.WriteFile(f.path, []byte(f.text), f.mode); err != nil {
			return fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	return nil
}

// kitSync is the kit's sync flags as the first router's file has them.
const kitSync = "--sync-listen 203.0.113.1:3781 --sync-peer 203.0.113.2:3781"

// kitFtpalgFlags reads FTPALG_FLAGS from deploy/ha/ftpalg.default, the
// sync addresses swapped on ha2, without the --config of a real router
// (the rig passes its own flags).
func (r *Router) kitFtpalgFlags() ([]string, error) {
	repl := []string{"--config /etc/ftpalg/ftpalg.toml ", ""}
	if r.Name == "ha2" {
		repl = append(repl, kitSync, "--sync-listen 203.0.113.2:3781 --sync-peer 203.0.113.1:3781")
	} else {
		repl = append(repl, kitSync, kitSync)
	}
	s, err := r.p.kitFile("ftpalg.default", repl...)
	if err != nil {
		return nil, err
	}
	m := regexp.MustCompile(`(?m)^FTPALG_FLAGS="([^"]*)"$`).FindStringSubmatch(s)
	if m == nil {
		return nil, fmt.Errorf("ftpalg.default: no FTPALG_FLAGS line: %w", ErrKit)
	}
	if r.p.opts.NoPinSync {
		return nil, nil
	}
	return strings.Fields(m[1]), nil
}

// Start starts conntrackd, ftpalg (Gateway Ftpalg) and keepalived, in that
// order: keepalived's first notification (backup) finds conntrackd
// running, and ftpalg is in place before the router forwards anything.
func (r *Router) Start(ctx context.Context) error {
	var err error
	if r.Conntrackd, err = r.p.Start(r.NS, "conntrackd", "-C", r.conntrackdConf()); err != nil {
		return err
	}
	if err := waitFor(ctx, 10*time.Second, func() bool {
		return exec.Command("ip", "netns", "exec", r.NS, "conntrackd", "-C", r.conntrackdConf(), "-s").Run() == nil
	}); err != nil {
		return fmt.Errorf("%s: conntrackd not answering on %s: %w\n%s", r.Name, r.ctlSocket(), err, r.Conntrackd.Output())
	}
	if r.p.opts.Gateway == Ftpalg {
		if err := r.StartFtpalg(ctx); err != nil {
			return err
		}
	}
	r.Keepalived, err = r.p.Start(r.NS, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
		"--vrrp", "--use-file", r.keepalivedConf(), "--config-id", r.Name,
		"--pid", filepath.Join(r.Dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(r.Dir, "vrrp.pid"),
		"--checkers_pid", filepath.Join(r.Dir, "checkers.pid"), "--bfd_pid", filepath.Join(r.Dir, "bfd.pid"))
	return err
}

// StartFtpalg starts ftpalg with its state directory and status socket
// under the router's directory, and waits until it runs.
func (r *Router) StartFtpalg(ctx context.Context) error {
	r.ftpalgRuns++
	var err error
	args := append([]string{"run", "--log-format", "json",
		"--state-dir", filepath.Join(r.Dir, "state"), "--status-socket", filepath.Join(r.Dir, "status.sock"),
		"--ipv6=false", "--pinhole-timeout", "10s"}, r.ftpalgFlags...)
	r.Ftpalg, err = r.p.Start(r.NS, r.p.opts.FtpalgBin, args...)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 10*time.Second, func() bool {
		return strings.Contains(r.Ftpalg.Output(), `"msg":"ftpalg running"`)
	}); err != nil {
		return fmt.Errorf("%s: ftpalg did not start: %w\n%s", r.Name, err, r.Ftpalg.Output())
	}
	return nil
}

// FailHard is a power cut: the router's links go down, then keepalived,
// conntrackd and ftpalg are SIGKILLed. Nothing it held is handed over; the
// peer must notice the missing VRRP adverts.
func (r *Router) FailHard(ctx context.Context) error {
	for _, dev := range []string{"inside", "outside", "sync"} {
		if err := run(ctx, nil, "ip", "-n", r.NS, "link", "set", dev, "down"); err != nil {
			return err
		}
	}
	var errs []error
	for _, p := range []*rig.Proc{r.Keepalived, r.Conntrackd, r.Ftpalg} {
		if p != nil {
			errs = append(errs, p.Kill())
		}
	}
	return errors.Join(errs...)
}

// Restore brings a router back after FailHard as after a reboot: empty
// conntrack table, links up, ftpalg's leftovers cleaned by the new
// ftpalg's start, the daemons started again. With its higher priority ha1
// then takes the addresses back (failback) once keepalived's
// preempt_delay has passed.
func (r *Router) Restore(ctx context.Context) error {
	if err := run(ctx, nil, "ip", "netns", "exec", r.NS, "conntrack", "-F"); err != nil {
		return err
	}
	for _, f := range []string{"conntrackd.lock", "conntrackd.ctl"} {
		os.Remove(filepath.Join(r.Dir, f)) // left by the SIGKILL, like after a crash
	}
	for _, dev := range []string{"inside", "outside", "sync"} {
		if err := run(ctx, nil, "ip", "-n", r.NS, "link", "set", dev, "up"); err != nil {
			return err
		}
	}
	return r.Start(ctx)
}

// StopKeepalived is a planned switchover: keepalived's SIGTERM makes it
// send adverts with priority 0, so the peer takes over at once.
// conntrackd and ftpalg keep running.
func (r *Router) StopKeepalived() error {
	return r.Keepalived.Signal(syscall.SIGTERM)
}

// StartKeepalived starts keepalived again after StopKeepalived.
func (r *Router) StartKeepalived(ctx context.Context) error {
	var err error
	r.Keepalived, err = r.p.Start(r.NS, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
		"--vrrp", "--use-file", r.keepalivedConf(), "--config-id", r.Name,
		"--pid", filepath.Join(r.Dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(r.Dir, "vrrp.pid"),
		"--checkers_pid", filepath.Join(r.Dir, "checkers.pid"), "--bfd_pid", filepath.Join(r.Dir, "bfd.pid"))
	return err
}

// HoldsVIPs reports whether the router has both virtual addresses.
func (r *Router) HoldsVIPs() bool {
	out, err := exec.Command("ip", "-n", r.NS, "-4", "-o", "addr", "show").Output()
	if err != nil {
		return false
	}
	s := string(out)
	return strings.Contains(s, " "+LANVIP+"/") && strings.Contains(s, " "+WANVIP+"/")
}

// WaitMaster waits until r holds both virtual addresses and its notify
// script has committed (the primary transition logged in notify.log) and
// the other router holds none.
func (p *Pair) WaitMaster(ctx context.Context, r *Router, timeout time.Duration) error {
	other := p.Routers[0]
	if other == r {
		other = p.Routers[1]
	}
	err := waitFor(ctx, timeout, func() bool {
		b, _ := os.ReadFile(r.notifyLog())
		last := ""
		for _, m := range notifyLine.FindAllStringSubmatch(string(b), -1) {
			last = m[1]
		}
		return r.HoldsVIPs() && !other.HoldsVIPs() && last == "primary"
	})
	if err != nil {
		return fmt.Errorf("%s did not become master: %w\n%s", r.Name, err, p.Dump())
	}
	return nil
}

// notifyLine is the line the rig's copy of the notify script logs at each
// call: time and transition.
var notifyLine = regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d+ (\w+) `)

// notifyLog is where the rig's copy of the notify script logs.
func (r *Router) notifyLog() string { return filepath.Join(r.Dir, "notify.log") }

// gateLine is what the notify script logs when it opens its gate.
var gateLine = regexp.MustCompile(`(?m)^ftpalg-ha: iptables: gate opened, (\d+) segments held back$`)

// GateHeld returns how many segments the kit's gate dropped before it last
// opened on r (0 if it never opened): forwarded TCP segments that reached
// r while it was backup or before its commit, which TCP then retransmitted.
func (r *Router) GateHeld() uint64 {
	b, _ := os.ReadFile(r.notifyLog())
	var n uint64
	for _, m := range gateLine.FindAllStringSubmatch(string(b), -1) {
		n, _ = strconv.ParseUint(m[1], 10, 64)
	}
	return n
}

// InvalidDrops returns the router's INVALID drop counter (FORWARD).
func (r *Router) InvalidDrops() (uint64, error) { return r.dropCounter("FORWARD", InvalidMatch) }

// UnclaimedDrops returns how many SYNs to the WAN virtual address the
// router dropped for want of a pinhole or expectation (INPUT).
func (r *Router) UnclaimedDrops() (uint64, error) { return r.dropCounter("INPUT", UnclaimedMatch) }

// dropCounter reads the packet counter of the DROP rule in chain whose
// comment is match.
func (r *Router) dropCounter(chain, match string) (uint64, error) {
	out, err := exec.Command("ip", "netns", "exec", r.NS, "iptables", "-L", chain, "-v", "-n", "-x").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s: iptables -L %s: %w: %w: %s", r.Name, chain, ErrCommand, err, out)
	}
	line := regexp.MustCompile(`^\s*(\d+)\s+\d+\s+DROP\b.*` + regexp.QuoteMeta(match))
	for _, l := range strings.Split(string(out), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			return strconv.ParseUint(m[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %q rule in %s: %w", r.Name, match, chain, ErrCommand)
}

// Run runs a command in a namespace and returns its combined output.
func (p *Pair) Run(ctx context.Context, ns string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %w: %s", cmd, ErrCommand, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Dump returns diagnostics: both routers' addresses, rules with
// counters, conntrack tables and daemon logs.
func (p *Pair) Dump() string {
	var b strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, r := range p.Routers {
		fmt.Fprintf(&b, "===== %s (%s)\n", r.Name, r.NS)
		for _, c := range [][]string{
			{"ip", "-4", "-br", "addr"}, {"iptables-save", "-c"}, {"conntrack", "-L"}, {"conntrack", "-L", "expect"},
			{"conntrackd", "-C", r.conntrackdConf(), "-s"},
		} {
			out, err := p.Run(ctx, r.NS, c[0], c[1:]...)
			fmt.Fprintf(&b, "--- %s (%v)\n%s\n", strings.Join(c, " "), err, out)
		}
		for _, f := range []string{"notify.log", "conntrackd.log"} {
			s, _ := os.ReadFile(filepath.Join(r.Dir, f))
			fmt.Fprintf(&b, "--- %s\n%s\n", f, s)
		}
		for _, pr := range []*rig.Proc{r.Keepalived, r.Conntrackd} {
			if pr != nil {
				fmt.Fprintf(&b, "--- %s\n%s\n", pr.Name(), tail(pr.Output(), 4000))
			}
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Close stops every process, deletes the namespaces and the directory.
func (p *Pair) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	procs := p.procs
	p.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].Stop())
	}
	for _, n := range p.ns {
		errs = append(errs, rig.KillNamespace(n))
		if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w: %s", n, err, bytes.TrimSpace(out)))
		}
	}
	if p.dir != "" {
		errs = append(errs, os.RemoveAll(p.dir))
	}
	return errors.Join(errs...)
}

// run runs a command in the host context (normally `ip`, which enters the
// namespaces itself).
func run(ctx context.Context, stdin *strings.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %w: %s", cmd, ErrCommand, err, bytes.TrimSpace(out))
	}
	return nil
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, ErrTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// sweepStale removes namespaces and directories of this prefix whose
// creating process is gone (a test binary killed by a timeout).
func sweepStale(prefix string) {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `(\d+)[0-9a-f]{4}([cfsxlw12]|-.*)$`)
	gone := func(name string) bool {
		m := re.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.Atoi(m[1])
		return err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if gone(e.Name()) {
				_ = rig.KillNamespace(e.Name())
				_ = exec.Command("ip", "netns", "del", e.Name()).Run()
			}
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && gone(e.Name()) {
				_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
}
