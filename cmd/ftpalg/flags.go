package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/config"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/daemon"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/status"
)

// applyConfig reads --config, if given, into the flags not set on the
// command line.
func (o *options) applyConfig(fs *flag.FlagSet) error {
	if o.configPath == "" {
		return nil
	}
	f, err := config.Load(o.configPath)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := f.Apply(fs); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return nil
}

// defaultStateDir is --state-dir in the initial network namespace.
const defaultStateDir = "/run/ftpalg/state"

// errUsage marks command-line mistakes (exit status 2).
var errUsage = errors.New("usage")

// options are the flags shared by `run` and `rules`.
type options struct {
	outsideIf      string
	publicIPs      string
	controlPorts   string
	queueNum       uint
	queues         uint
	pinholeTimeout time.Duration
	dataPorts      string
	installRules   bool
	failOpen       bool
	logFormat      string
	logLevel       string
	ipv4, ipv6     bool
	tls            string
	maxPerClient   int
	maxPinholes    int
	maxConns       int
	pinholes       string
	queueReader    string
	queueSpin      time.Duration
	acceptMark     string
	queueBypass    bool
	skipPureACKs   bool
	skipHandshake  bool
	kernelSeqAdj   bool
	configPath     string
	stateDir       string
	statusSocket   string
	metricsAddr    string
	role           string
	syncListen     string
	syncPeer       string
}

// define registers the flags. The help texts are the reference documentation
// of each flag; the README quotes them.
func (o *options) define(fs *flag.FlagSet, run bool) {
	fs.StringVar(&o.controlPorts, "control-ports", "21", "comma-separated TCP `ports` of FTP control connections (server side)")
	fs.UintVar(&o.queueNum, "queue-num", 21, "NFQUEUE `number` the control-channel packets are sent to")
	fs.UintVar(&o.queues, "queues", 1, "spread control connections over `n` NFQUEUEs from --queue-num on (--queue-balance: a connection\nstays on one), each read by its own thread and engine; above 1 needs --state-dir=")
	fs.BoolVar(&o.ipv4, "ipv4", true, "handle IPv4 (iptables)")
	fs.BoolVar(&o.ipv6, "ipv6", true, "handle IPv6 (ip6tables)")
	fs.BoolVar(&o.queueBypass, "queue-bypass", false, "while no ftpalg is bound to the queue, let control packets pass unexamined (default false: they are\ndropped and TCP retransmits them, so a restart loses nothing; after a stop for good (SIGINT) nothing is\nqueued; after a handover (SIGTERM), a crash or an error exit control traffic stays dropped until ftpalg\nstarts or `ftpalg cleanup` runs); true keeps control traffic flowing while ftpalg is down, at a cost: a\nPORT or 227 then passes unrewritten and the segments of a rewritten session pass without their\nsequence offsets, which corrupts that session")
	fs.BoolVar(&o.kernelSeqAdj, "kernel-seqadj", true, "hand the sequence mapping of rewritten NAT'd control connections to the kernel's seqadj\n(an nftables table gives their conntrack entries the extension): the kernel maps every later\npacket, their pure ACKs skip the queue, and their window stays strictly tracked. false: ftpalg\nmaps every rewritten connection itself, with BE_LIBERAL")
	fs.BoolVar(&o.skipPureACKs, "skip-pure-acks", true, "let control segments without payload (pure ACKs) of connections ftpalg never rewrote pass\nwithout queueing (an xt_bpf rule ahead of the queue rules); they carry nothing to read or map. false\nqueues every control segment")
	fs.BoolVar(&o.skipHandshake, "skip-handshake", true, "with --skip-pure-acks, let the SYN, SYN/ACK and the client's payload-free FIN of those connections pass\nwithout queueing too: ftpalg picks a connection up at its first payload segment (fresh when its SYN passed\nftpalg's rules, which mark the entry) and ends it when conntrack destroys the entry. false queues them")
	fs.StringVar(&o.pinholes, "pinholes", "nftables", "pinhole `backend`: nftables (set elements with kernel timeouts, ~10µs each; a mark bit\nreaches iptables' FORWARD) or iptables (one rule per pinhole, visible in iptables -S, milliseconds each)")
	fs.StringVar(&o.acceptMark, "accept-mark", "0x20000000", "mark `bit`: set on a pinholed connection's first packet (nftables backend) and in its conntrack mark once it started (its retransmitted SYNs)")
	fs.StringVar(&o.role, "role", "both", "which control connections to handle: both (forwarded ones and those ending on this machine),\nrouter (forwarded only: mangle/filter FORWARD) or host (an FTP server or client on this machine: INPUT/OUTPUT)")
	fs.StringVar(&o.configPath, "config", "", "read settings from this TOML `file` (keys mirror the flags); flags given here override it")
	if !run {
		return
	}
	fs.StringVar(&o.outsideIf, "outside-if", "", "the router's public `interface`; checked at start (optional: addresses come from conntrack)")
	fs.StringVar(&o.publicIPs, "public-ip", "", "override the public `address` found in the kernel's NAT mapping (one per family, comma-separated);\nused only for senders that conntrack shows as translated, or when the mapping cannot be found")
	fs.StringVar(&o.queueReader, "queue-reader", "direct", "how packets are read from the queue: direct (a blocking socket on its own thread,\nthe fastest) or go-nfqueue (github.com/florianl/go-nfqueue, 30-60µs more per packet)")
	fs.DurationVar(&o.queueSpin, "queue-spin", 50*time.Microsecond, "with --queue-reader=direct, keep polling the queue for this `duration` after each packet\n(yielding the CPU) before sleeping: the next packet of a dialog skips a thread wake-up; the poll ends when\nanother thread needs the CPU and pauses while polls keep missing; 0 sleeps at once")
	fs.DurationVar(&o.pinholeTimeout, "pinhole-timeout", 30*time.Second, "close a pinhole whose data connection has not started after this `duration`")
	fs.StringVar(&o.dataPorts, "data-ports", "1024-65535", "`range` of public ports for NAT'd data connections when the announced port is taken")
	fs.BoolVar(&o.installRules, "install-rules", true, "install ftpalg's chains and jumps at start and remove them at exit;\nset false when your firewall script includes the output of 'ftpalg rules'")
	fs.BoolVar(&o.failOpen, "fail-open", false, "accept control packets unexamined when the queue is full, instead of dropping them")
	fs.StringVar(&o.tls, "tls", "pass", "`policy` for AUTH TLS/SSL on the control connection: pass (untouched; its data connections\nare invisible to ftpalg) or refuse (the client gets a 534 reply and may continue in plain FTP)")
	fs.IntVar(&o.maxPerClient, "max-pinholes-per-client", 64, "pending pinholes for one client address (one per parallel session until its data connection starts);\nnewer requests are refused (`n`)")
	fs.IntVar(&o.maxPinholes, "max-pinholes", 1024, "pending pinholes in total; newer requests are refused (`n`)")
	fs.IntVar(&o.maxConns, "max-connections", 65536, "tracked control connections; the least recently active is evicted beyond (`n`)")
	fs.StringVar(&o.stateDir, "state-dir", daemon.RuntimePath(defaultStateDir), "`directory` (on tmpfs) where rewritten connections' sequence offsets survive a restart; empty disables")
	fs.StringVar(&o.statusSocket, "status-socket", daemon.RuntimePath(status.DefaultSocket), "unix `socket` that 'ftpalg status' reads; empty disables")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`addr`/metrics (off when empty)")
	fs.StringVar(&o.syncListen, "sync-listen", "", "HA pair: this router's `addr:port` (UDP, on the sync link) for pinhole sync with the other router's\nftpalg; needs --sync-peer (off when empty)")
	fs.StringVar(&o.syncPeer, "sync-peer", "", "HA pair: the other router's --sync-listen `addr:port`: each pinhole opened here is sent there, and only\ndatagrams from that address are accepted (off when empty)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
}

func parsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: bad port %q in --control-ports", errUsage, f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

func (o *options) rulesConfig() (rules.Config, error) {
	ports, err := parsePorts(o.controlPorts)
	if err != nil {
		return rules.Config{}, err
	}
	if o.queueNum > 65535 {
		return rules.Config{}, fmt.Errorf("%w: --queue-num %d out of range", errUsage, o.queueNum)
	}
	if o.queues < 1 || o.queueNum+o.queues-1 > 65535 {
		return rules.Config{}, fmt.Errorf("%w: --queues %d: want 1 to %d with --queue-num %d", errUsage, o.queues, 65536-o.queueNum, o.queueNum)
	}
	role, err := rules.ParseRole(o.role)
	if err != nil {
		return rules.Config{}, fmt.Errorf("%w: --role %q: want both, router or host", errUsage, o.role)
	}
	rc := rules.Config{ControlPorts: ports, QueueNum: uint16(o.queueNum), Queues: uint16(o.queues), Bypass: o.queueBypass, IPv4: o.ipv4, IPv6: o.ipv6, Role: role, SkipPureACKs: o.skipPureACKs, SkipHandshake: o.skipPureACKs && o.skipHandshake}
	backend, mark, err := o.backend()
	if err != nil {
		return rules.Config{}, err
	}
	rc.DataMark = mark
	if backend == daemon.NFTables {
		rc.AcceptMark = mark
	}
	return rc, nil
}

func (o *options) backend() (daemon.Backend, uint32, error) {
	mark, err := strconv.ParseUint(o.acceptMark, 0, 32)
	if err != nil || mark == 0 || mark&(mark-1) != 0 {
		return 0, 0, fmt.Errorf("%w: --accept-mark %q: want a single bit, like 0x20000000", errUsage, o.acceptMark)
	}
	switch o.pinholes {
	case "nftables":
		return daemon.NFTables, uint32(mark), nil
	case "iptables":
		return daemon.IPTables, uint32(mark), nil
	}
	return 0, 0, fmt.Errorf("%w: --pinholes %q: want nftables or iptables", errUsage, o.pinholes)
}

func (o *options) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: want text or json", errUsage, o.logFormat)
}

func (o *options) daemonConfig(log *slog.Logger) (daemon.Config, error) {
	rc, err := o.rulesConfig()
	if err != nil {
		return daemon.Config{}, err
	}
	lo, hi, err := rules.ParsePortRange(o.dataPorts)
	if err != nil {
		return daemon.Config{}, fmt.Errorf("%w: --data-ports: %w", errUsage, err)
	}
	var pubs []netip.Addr
	if o.publicIPs != "" {
		for _, f := range strings.Split(o.publicIPs, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return daemon.Config{}, fmt.Errorf("%w: --public-ip: %w", errUsage, err)
			}
			pubs = append(pubs, a)
		}
	}
	var tls conntrack.TLSPolicy
	switch o.tls {
	case "pass":
		tls = conntrack.TLSPass
	case "refuse":
		tls = conntrack.TLSRefuse
	default:
		return daemon.Config{}, fmt.Errorf("%w: --tls %q: want pass or refuse", errUsage, o.tls)
	}
	if o.maxPerClient < 1 || o.maxPinholes < 1 || o.maxConns < 1 {
		return daemon.Config{}, fmt.Errorf("%w: --max-pinholes-per-client, --max-pinholes and --max-connections must be at least 1", errUsage)
	}
	backend, mark, _ := o.backend() // checked by rulesConfig
	if o.queueSpin < 0 || o.queueSpin > 10*time.Millisecond {
		return daemon.Config{}, fmt.Errorf("%w: --queue-spin %v: want 0 to 10ms", errUsage, o.queueSpin)
	}
	var reader daemon.QueueReader
	switch o.queueReader {
	case "direct":
		reader = daemon.Direct
	case "go-nfqueue":
		reader = daemon.GoNFQueue
	default:
		return daemon.Config{}, fmt.Errorf("%w: --queue-reader %q: want direct or go-nfqueue", errUsage, o.queueReader)
	}
	var syncListen, syncPeer netip.AddrPort
	for _, f := range []struct {
		name, val string
		dst       *netip.AddrPort
	}{{"sync-listen", o.syncListen, &syncListen}, {"sync-peer", o.syncPeer, &syncPeer}} {
		if f.val == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(f.val)
		if err != nil {
			return daemon.Config{}, fmt.Errorf("%w: --%s %q: want addr:port, like 203.0.113.1:3781: %w", errUsage, f.name, f.val, err)
		}
		*f.dst = ap
	}
	cfg := daemon.Config{
		SyncListen:     syncListen,
		SyncPeer:       syncPeer,
		StateDir:       o.stateDir,
		StatusSocket:   o.statusSocket,
		MetricsAddr:    o.metricsAddr,
		Version:        version,
		Pinholes:       backend,
		QueueReader:    reader,
		QueueSpin:      o.queueSpin,
		AcceptMark:     mark,
		TLS:            tls,
		Limits:         daemon.Limits{PerConnection: 1, PerClient: o.maxPerClient, Total: o.maxPinholes},
		MaxConnections: o.maxConns,
		OutsideIf:      o.outsideIf, PublicIPs: pubs, ControlPorts: rc.ControlPorts, QueueNum: rc.QueueNum, Queues: rc.Queues,
		PinholeTimeout: o.pinholeTimeout, DataPortLo: lo, DataPortHi: hi, InstallRules: o.installRules,
		FailOpen: o.failOpen, QueueBypass: o.queueBypass, SkipPureACKs: rc.SkipPureACKs, SkipHandshake: rc.SkipHandshake, KernelSeqAdj: o.kernelSeqAdj, IPv4: o.ipv4, IPv6: o.ipv6, Role: rc.Role, Log: log,
	}
	if err := cfg.Validate(); err != nil {
		return daemon.Config{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	return cfg, nil
}
