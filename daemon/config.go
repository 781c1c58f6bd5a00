package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/rules"
)

// ErrConfig reports an unusable configuration.
var ErrConfig = errors.New("invalid configuration")

// Config is what `ftpalg run` is told.
type Config struct {
	OutsideIf    string       // the router's public interface (checked at start; optional)
	PublicIPs    []netip.Addr // overrides of the looked-up public address, one per family
	ControlPorts []uint16     // server ports of FTP control connections
	QueueNum     uint16       // NFQUEUE number, the first of Queues
	// Queues is how many NFQUEUEs (QueueNum on) share the control
	// packets, one Shards member each; 0 means 1.
	Queues         uint16
	PinholeTimeout time.Duration // how long an unused pinhole stays open
	DataPortLo     uint16        // range for public data ports on NAT'd addresses
	DataPortHi     uint16
	InstallRules   bool // install and remove our chains and jumps
	FailOpen       bool // accept packets when the queue is full instead of dropping them
	// QueueBypass lets control packets pass unexamined while no ftpalg is
	// attached to the queue (restart, crash); without it they are dropped
	// and TCP retransmits them once ftpalg is back.
	QueueBypass bool
	// SkipPureACKs lets control segments without payload of connections
	// never rewritten pass without queueing (rules.Config.SkipPureACKs);
	// the daemon labels a connection REWRITTEN before it releases its
	// first rewritten packet, so from then on they are queued.
	SkipPureACKs bool
	// SkipHandshake (with SkipPureACKs) lets the SYN, the SYN/ACK and
	// the client's FIN without payload of those connections pass too
	// (rules.Config.SkipHandshake): the engine picks a connection up at
	// its first payload segment, fresh when the SYN rule marked its entry
	// SEEN, and ends it when conntrack destroys the entry
	// (conntrack.Config.SkipHandshake).
	SkipHandshake bool
	// KernelSeqAdj hands the sequence mapping of rewritten NAT'd control
	// connections to the kernel's seqadj (rules.SeqAdjTable gives their
	// entries the extension), which maps every later packet itself; ftpalg
	// maps the rest, with BE_LIBERAL, as without it.
	KernelSeqAdj bool
	IPv4, IPv6   bool
	// Role selects which control connections are handled: forwarded,
	// ending on this machine, or both (the zero value).
	Role           rules.Role
	TLS            conntrack.TLSPolicy // what to do with AUTH TLS/SSL
	Limits         Limits              // pending pinholes
	MaxConnections int                 // tracked control connections; 0 means the engine's default
	Pinholes       Backend             // how pinholes are installed
	QueueReader    QueueReader         // how queued packets are read
	QueueSpin      time.Duration       // how long the direct reader polls before sleeping
	AcceptMark     uint32              // packet mark bit the nftables backend uses to reach FTPALG-ACCEPT, and the conntrack mark bit of admitted data connections (both backends; 0 turns that off)
	StateDir       string              // where rewritten connections' state survives a restart; "" disables
	StatusSocket   string              // unix socket for `ftpalg status`; "" disables
	MetricsAddr    string              // Prometheus listen address; "" disables
	// SyncListen and SyncPeer are this router's and the other router's
	// pinhole sync addresses (UDP) in an HA pair; both unset disables.
	SyncListen, SyncPeer netip.AddrPort
	Version              string
	Log                  *slog.Logger
}

// Backend is how pinholes are put into the kernel.
type Backend uint8

const (
	// NFTables keeps pinholes as elements of nftables sets with kernel
	// timeouts, added and removed in one netlink message each (tens of
	// microseconds); they expire by themselves if ftpalg dies. A packet
	// mark bit carries the decision to the static ACCEPT rule in
	// iptables' FORWARD, because an accept in another table's chain does
	// not override iptables' DROP.
	NFTables Backend = iota
	// IPTables adds and deletes one iptables rule per pinhole (visible in
	// iptables -S; milliseconds per rule, and a crash leaves them until the
	// next start sweeps them).
	IPTables
)

func (b Backend) String() string {
	if b == IPTables {
		return "iptables"
	}
	return "nftables"
}

// QueueReader is how ftpalg reads the NFQUEUE.
type QueueReader uint8

const (
	// Direct reads with package nfq: a blocking socket on a thread of
	// its own, verdicts of packets read together written together.
	Direct QueueReader = iota
	// GoNFQueue reads with github.com/florianl/go-nfqueue, through Go's
	// network poller: 30-60 µs more per packet on an idle machine.
	GoNFQueue
)

func (r QueueReader) String() string {
	if r == GoNFQueue {
		return "go-nfqueue"
	}
	return "direct"
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case len(c.ControlPorts) == 0:
		return fmt.Errorf("%w: no control ports", ErrConfig)
	case c.PinholeTimeout <= 0:
		return fmt.Errorf("%w: pinhole timeout must be positive", ErrConfig)
	case c.DataPortLo == 0 || c.DataPortHi < c.DataPortLo:
		return fmt.Errorf("%w: data port range %d-%d", ErrConfig, c.DataPortLo, c.DataPortHi)
	case !c.IPv4 && !c.IPv6:
		return fmt.Errorf("%w: neither IPv4 nor IPv6", ErrConfig)
	case c.Log == nil:
		return fmt.Errorf("%w: no logger", ErrConfig)
	case c.Pinholes == NFTables && c.AcceptMark == 0, c.AcceptMark&(c.AcceptMark-1) != 0:
		return fmt.Errorf("%w: --accept-mark %#x must be a single bit", ErrConfig, c.AcceptMark)
	case int(c.QueueNum)+int(c.queues())-1 > 65535:
		return fmt.Errorf("%w: --queue %d with --queues %d: NFQUEUE numbers end at 65535", ErrConfig, c.QueueNum, c.queues())
	case c.SyncListen.IsValid() != c.SyncPeer.IsValid():
		return fmt.Errorf("%w: --sync-listen and --sync-peer go together", ErrConfig)
	case c.SyncPeer.IsValid() && (c.SyncPeer.Port() == 0 || c.SyncPeer.Addr().Unmap().Is4() != c.SyncListen.Addr().Unmap().Is4()):
		return fmt.Errorf("%w: --sync-peer %v with --sync-listen %v: want a port and one address family", ErrConfig, c.SyncPeer, c.SyncListen)
	case c.queues() > 1 && c.StateDir != "":
		// A saved connection cannot be put into the shard whose queue
		// will see it: the kernel's hash is seeded per rule.
		return fmt.Errorf("%w: --queues %d needs --state-dir= (empty): saved connections cannot be assigned to a queue", ErrConfig, c.queues())
	}
	var seen [2]bool
	for _, a := range c.PublicIPs {
		i := 0
		if a.Is6() && !a.Is4In6() {
			i = 1
		}
		if seen[i] {
			return fmt.Errorf("%w: more than one --public-ip for one address family", ErrConfig)
		}
		seen[i] = true
	}
	return nil
}

// queues is Queues with its default.
func (c *Config) queues() uint16 { return max(c.Queues, 1) }

func (c *Config) overrides() [2]netip.Addr {
	var o [2]netip.Addr
	for _, a := range c.PublicIPs {
		a = a.Unmap()
		if a.Is4() {
			o[0] = a
		} else {
			o[1] = a
		}
	}
	return o
}

// skipHandshake reports whether the queue rules skip handshakes and FINs:
// only beside the pure-ACK rules, whose label tests they share.
func (c *Config) skipHandshake() bool { return c.SkipHandshake && c.SkipPureACKs }
