// Package rules owns ftpalg's iptables state: the static chains that send FTP
// control packets to the NFQUEUE and hold pinholes, the per-data-connection
// pinhole rules themselves, and the allocator for public ports announced on
// the NAT'd side.
//
// ftpalg never edits the administrator's rules. Everything lives in chains
// whose names start with FTPALG, reached by one jump from each built-in chain:
//
//	mangle FORWARD    -> FTPALG-QUEUE   NFQUEUE for the control ports (both directions)
//	mangle INPUT      -> FTPALG-QUEUE   the same for connections ending on this machine
//	mangle OUTPUT     -> FTPALG-QUEUE   and starting on it (INPUT and OUTPUT skip lo)
//	nat    PREROUTING -> FTPALG-DNAT    one DNAT per NAT'd pinhole
//	filter FORWARD    -> FTPALG-ACCEPT  one ACCEPT per pinhole
//	filter INPUT      -> FTPALG-ACCEPT  the same chain, for local endpoints
//
// The queue hooks sit in mangle FORWARD, INPUT and OUTPUT, after conntrack
// and DNAT and before SNAT, so the daemon sees one consistent address view
// for both directions of a control connection (see Role). The filter jumps
// are inserted first so pinholes are reached before a policy DROP; pinhole
// rules only match conntrack state NEW, so INVALID packets still fall
// through to the administrator's own rules.
//
// The same chains exist for IPv6 through ip6tables. Administrators who manage
// the whole ruleset themselves use [Fragment] to include the chains in their
// own iptables-restore script.
package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Names of the chains ftpalg owns. They are part of the product's contract:
// administrators reference them from their own firewall scripts.
const (
	ChainQueue  = "FTPALG-QUEUE"  // in table mangle, jumped to from FORWARD
	ChainDNAT   = "FTPALG-DNAT"   // in table nat, jumped to from PREROUTING
	ChainAccept = "FTPALG-ACCEPT" // in table filter, jumped to from FORWARD
)

// DefaultControlPort is the FTP control port queued when none is configured.
const DefaultControlPort = 21

// maxMultiport is the kernel's limit on ports in one multiport match
// (XT_MULTI_PORTS); longer lists are split over several rules.
const maxMultiport = 15

var (
	// ErrInvalidConfig reports a Config that cannot be turned into rules.
	ErrInvalidConfig = errors.New("invalid rules config")
	// ErrInvalidPinhole reports a Pinhole with missing, mixed-family or
	// otherwise unusable addresses.
	ErrInvalidPinhole = errors.New("invalid pinhole")
	// ErrFamilyDisabled reports a pinhole for an address family that the
	// Config does not enable.
	ErrFamilyDisabled = errors.New("address family not enabled")
	// ErrIPTablesMissing reports that the iptables or ip6tables binary needed
	// for an enabled family is not installed.
	ErrIPTablesMissing = errors.New("iptables binary not found")
	// ErrUnsupported reports use of the kernel-facing parts on a platform
	// other than Linux.
	ErrUnsupported = errors.New("iptables rules are only supported on Linux")
	// ErrNoFreePort reports that every port of the data port range is
	// reserved on the requested public address.
	ErrNoFreePort = errors.New("no free port in range")
	// ErrInvalidPortRange reports a malformed or empty port range.
	ErrInvalidPortRange = errors.New("invalid port range")
	// ErrInvalidAddress reports an unusable address given to Ports.
	ErrInvalidAddress = errors.New("invalid address")
)

// Family is an IP address family, selecting iptables or ip6tables.
type Family uint8

// The address families ftpalg handles.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	default:
		return fmt.Sprintf("Family(%d)", uint8(f))
	}
}

// command is the iptables binary that manages f.
func (f Family) command() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// familyOf returns the family of an address; IPv4-mapped IPv6 addresses
// count as IPv4 because that is how they appear on the wire.
func familyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Config selects what the chains match and which families get them.
type Config struct {
	// ControlPorts are the FTP control ports whose packets are queued, in
	// both directions (destination port from clients, source port from
	// servers).
	ControlPorts []uint16
	// QueueNum is the NFQUEUE number the daemon listens on, the first of
	// Queues.
	QueueNum uint16
	// Queues, when above 1, spreads control packets over the queues
	// QueueNum to QueueNum+Queues-1 with --queue-balance, whose hash of
	// the two addresses (sorted, so both directions agree) keeps a
	// connection on one queue: one daemon shard per queue.
	Queues uint16
	// Bypass adds --queue-bypass, so control packets pass unmodified rather
	// than being dropped while no daemon listens on the queue.
	Bypass bool
	// IPv4 and IPv6 enable the rules for each family.
	IPv4, IPv6 bool
	// Role selects the paths queued and the built-in chains jumped from:
	// forwarded connections, connections ending on this machine, or both
	// (the zero value).
	Role Role
	// AcceptMark, when non-zero, is the single packet mark bit with which
	// NFTable's nftables chain flags pinhole packets; FTPALG-ACCEPT then
	// holds one static rule accepting NEW TCP packets with that bit set
	// (see NFTable). Zero, for Table's per-pinhole iptables rules, adds
	// nothing.
	AcceptMark uint32
	// DataMark, when non-zero, is the single conntrack mark bit set on a
	// data connection that came through a pinhole: by NFTable's own rules
	// at its first packet, or, with Table, by the daemon through ctnetlink
	// before it closes the pinhole. FTPALG-ACCEPT then holds one
	// static rule accepting NEW TCP packets of entries with that bit. A
	// NEW packet of an existing entry is a retransmitted SYN (conntrack
	// calls a packet NEW until it has seen a reply), so the connection
	// the pinhole admitted survives a lost SYN or SYN/ACK, and any other
	// connection, a new entry without the bit, is refused: what the
	// kernel helper's expectations give with RELATED. Both backends.
	DataMark uint32
	// SkipPureACKs lets control segments without payload of connections
	// that carry no LabelRewritten bit pass without queueing (skipSpec):
	// fewer queue crossings, same decisions. Only for a daemon that sets
	// the label before it releases a connection's first rewritten packet.
	SkipPureACKs bool
	// SkipHandshake (with SkipPureACKs; ignored without) lets the SYN and
	// SYN/ACK of a control connection pass without queueing when they
	// carry no payload (synSkipSpec), marking the entry LabelSeen, and lets
	// the client's FIN without payload pass like pure ACKs (a server's
	// would overtake its 221, see ackMatch); RST and every segment with
	// payload (a SYN with TCP Fast Open data too) are still queued. The pure-ACK rule then tests LabelSeen instead of setting it,
	// so SEEN means "this entry's SYN or SYN/ACK passed ftpalg's rules".
	// Only for a daemon that does not need to see them: it must pick a
	// connection up at its first payload segment, treat LabelSeen on its
	// entry as proof that the connection is fresh (it opened while these
	// rules were loaded, so no login passed unseen) and its absence as a
	// connection of unknown history, and end a connection when conntrack
	// reports its entry destroyed (a DESTROY event), since it does not see
	// the client's FIN of a connection it never rewrote or whose numbers
	// the kernel maps (LabelKernel without LabelMulti).
	SkipHandshake bool
}

// DefaultConfig returns the configuration used when the operator sets
// nothing: port 21, queue 0, bypass off (fail closed), both families. The
// command adds SkipPureACKs and SkipHandshake (its --skip-pure-acks and
// --skip-handshake are on by default); a program that does not label
// rewritten connections must leave the first off, one that needs to see
// handshakes and FINs the second.
func DefaultConfig() Config {
	return Config{
		ControlPorts: []uint16{DefaultControlPort},
		IPv4:         true,
		IPv6:         true,
	}
}

// Validate reports whether the configuration can be rendered into rules.
func (c Config) Validate() error {
	if len(c.ControlPorts) == 0 {
		return fmt.Errorf("%w: no control ports", ErrInvalidConfig)
	}
	if slices.Contains(c.ControlPorts, 0) {
		return fmt.Errorf("%w: control port 0", ErrInvalidConfig)
	}
	if !c.IPv4 && !c.IPv6 {
		return fmt.Errorf("%w: neither IPv4 nor IPv6 enabled", ErrInvalidConfig)
	}
	if c.Role > RoleHost {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, c.Role)
	}
	if c.AcceptMark&(c.AcceptMark-1) != 0 {
		return fmt.Errorf("%w: accept mark %#x is not a single bit", ErrInvalidConfig, c.AcceptMark)
	}
	if c.DataMark&(c.DataMark-1) != 0 {
		return fmt.Errorf("%w: data connection mark %#x is not a single bit", ErrInvalidConfig, c.DataMark)
	}
	if int(c.QueueNum)+int(max(c.Queues, 1))-1 > 65535 {
		return fmt.Errorf("%w: queues %d to %d: the last NFQUEUE number is 65535", ErrInvalidConfig, c.QueueNum, int(c.QueueNum)+int(c.Queues)-1)
	}
	return nil
}

// queueTarget is the NFQUEUE target's queue selection.
func (c Config) queueTarget() []string {
	if c.Queues > 1 {
		return []string{"--queue-balance", fmt.Sprintf("%d:%d", c.QueueNum, int(c.QueueNum)+int(c.Queues)-1)}
	}
	return []string{"--queue-num", strconv.Itoa(int(c.QueueNum))}
}

// Families returns the enabled families, IPv4 first.
func (c Config) Families() []Family {
	var fs []Family
	if c.IPv4 {
		fs = append(fs, IPv4)
	}
	if c.IPv6 {
		fs = append(fs, IPv6)
	}
	return fs
}

// enabled reports whether f is enabled in c.
func (c Config) enabled(f Family) bool {
	return (f == IPv4 && c.IPv4) || (f == IPv6 && c.IPv6)
}

// controlPorts returns the configured ports sorted and without duplicates, so
// rendered rules do not depend on how the operator listed them.
func (c Config) controlPorts() []uint16 {
	ps := slices.Clone(c.ControlPorts)
	slices.Sort(ps)
	return slices.Compact(ps)
}
