package rig

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// InvalidDropComment tags the FORWARD and INPUT rules that drop conntrack
// INVALID packets, so [Rig.InvalidDrops] finds their counters even after
// ftpalg has inserted its own jumps in front of them.
const InvalidDropComment = "rig: invalid drop"

// PolicyDropComment tags the counter-only rule that ends each strict nft
// chain: nftables keeps no counter for a chain policy, so this rule counts
// what falls through to `policy drop` (see [Rig.PolicyDrops]).
const PolicyDropComment = "rig: policy drop"

// ControlPort is the FTP control port the router publishes and the
// kernel helper is attached to, unless WithControlPorts says otherwise.
// Servers behind DNAT always listen on it.
const ControlPort = 21

// NFTTable is the admin's nftables table in the nftables ruleset
// (WithNFTables): `table inet filter`, as in Debian's /etc/nftables.conf.
// Its base chains are "input", "forward" and "output".
const NFTTable = "filter"

// Ruleset selects how the rig writes the firewall host's ruleset.
type Ruleset int

const (
	// IPTables is an iptables-restore script per family (the default),
	// as an admin's script or ufw's before.rules loads it.
	IPTables Ruleset = iota + 1
	// NFTables is one nftables-native ruleset for both families (as in
	// /etc/nftables.conf, or what firewalld and OpenWrt's fw4 generate):
	// no iptables rule at all, `policy drop` base chains in
	// `table inet filter`, NAT in `table ip nat` and the kernel helper, if
	// asked for, as nft `ct helper` objects. An iptables ACCEPT does not
	// override its DROP: an ALG's pinholes must be part of this ruleset
	// (see AdminRules).
	NFTables
)

// String returns the ruleset's name as used in test names.
func (s Ruleset) String() string {
	switch s {
	case IPTables:
		return "iptables"
	case NFTables:
		return "nft"
	}
	return fmt.Sprintf("Ruleset(%d)", int(s))
}

// AdminRules is what an admin adds to the firewall host's ruleset for an
// ALG, for example the fragment `ftpalg rules --format iptables|nft`
// prints. Fields that do not belong to the rig's Ruleset are ignored.
type AdminRules struct {
	// IPTables4 and IPTables6 are iptables-restore input loaded with
	// --noflush right after the rig's own script (IPTables only): tables,
	// chains and rules added to the admin's. Use "-I INPUT 1 ..." to
	// place a rule in front of the rig's.
	IPTables4, IPTables6 string
	// NFTTable is text inside the admin's `table inet filter { }` block,
	// before its chains: the sets, maps and chains the rules below use.
	NFTTable string
	// NFTInput and NFTForward are rules placed at the top of the admin's
	// input and forward chains, before any of the rig's (NFTables only).
	NFTInput, NFTForward string
	// NFT is further top-level ruleset text (other tables), loaded in the
	// same nft transaction after the admin's tables.
	NFT string
}

// FirewallOptions are the settings FirewallRules and NFTRules render.
type FirewallOptions struct {
	// KernelHelper attaches the kernel's FTP helper to new connections to
	// the control ports: in raw PREROUTING, and also in raw OUTPUT where
	// the FTP client runs on the firewall host itself.
	KernelHelper bool
	// ControlPorts are the FTP control ports: the first is the one
	// clients dial; all are accepted and get the helper. Empty means 21.
	ControlPorts []uint16
	// Admin is added to the ruleset (NFTables; IPTables' parts are
	// loaded separately, see AdminRules).
	Admin AdminRules
}

func (o FirewallOptions) ports() []uint16 {
	if len(o.ControlPorts) == 0 {
		return []uint16{ControlPort}
	}
	return o.ControlPorts
}

// listenPort is the port the topology's FTP servers listen on: the
// dialled control port, except behind DNAT, which maps every control port
// to ControlPort.
func listenPort(t Topology, dial uint16) uint16 {
	if t.dnat() {
		return ControlPort
	}
	return dial
}

// acceptPorts are the control ports the filter accepts new connections
// to: every configured port and the servers' listening port.
func (o FirewallOptions) acceptPorts(t Topology) []uint16 {
	ps := append(slices.Clone(o.ports()), listenPort(t, o.ports()[0]))
	slices.Sort(ps)
	return slices.Compact(ps)
}

// FirewallRules returns the router's ruleset for topology t and family f
// in iptables-restore format with the default control port; see
// IPTablesRules.
func FirewallRules(t Topology, f Family, kernelHelper bool) (string, error) {
	return IPTablesRules(t, f, FirewallOptions{KernelHelper: kernelHelper})
}

// IPTablesRules returns the firewall host's ruleset for topology t and
// family f in iptables-restore format: the script a careful admin would
// load, and exactly what the rig applies with iptables-restore or
// ip6tables-restore (the Ruleset IPTables).
//
// filter FORWARD has policy DROP and, in order: INVALID dropped (tagged
// with [InvalidDropComment] so its counter can be read), ESTABLISHED and
// RELATED accepted, new connections from the inside interface to the
// outside accepted, and, where the server is inside, new connections to
// its control port accepted. Nothing else is forwarded: data connections
// pass only as RELATED (a helper's expectation) or through an ALG's own
// pinholes. The Host topologies do not forward: their FORWARD is empty.
//
// filter INPUT is open in the forwarded topologies. Where an FTP endpoint
// runs on the firewall host (Topology.Local) it is strict, as on a host
// with ufw or an admin's script: policy DROP; loopback accepted; INVALID
// dropped (tagged like FORWARD's); ESTABLISHED and RELATED accepted; IPv6
// neighbour discovery accepted; new connections to the control ports
// accepted. OUTPUT is open.
//
// IPv4 NAT: the inside is masqueraded on the outside interface where the
// router serves a LAN (ClientNAT, ServerForward, RouterLocal*);
// ServerForward and RouterLocalServer DNAT the router's outside address
// and control ports to the server's address port 21. IPv6 never gets NAT.
func IPTablesRules(t Topology, f Family, o FirewallOptions) (string, error) {
	ad, err := firewallAddresses(t, f)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	line := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}

	line("*raw")
	line(":PREROUTING ACCEPT [0:0]")
	line(":OUTPUT ACCEPT [0:0]")
	if o.KernelHelper {
		for _, p := range o.ports() {
			line("-A PREROUTING -p tcp --dport %d -j CT --helper ftp", p)
		}
		if t.ClientNode() == Router {
			for _, p := range o.ports() {
				line("-A OUTPUT -p tcp --dport %d -j CT --helper ftp", p)
			}
		}
	}
	line("COMMIT")

	if f == IPv4 {
		line("*nat")
		line(":PREROUTING ACCEPT [0:0]")
		line(":INPUT ACCEPT [0:0]")
		line(":OUTPUT ACCEPT [0:0]")
		line(":POSTROUTING ACCEPT [0:0]")
		if t.dnat() {
			for _, p := range o.ports() {
				line("-A PREROUTING -i %s -d %s -p tcp --dport %d -j DNAT --to-destination %s:%d",
					RouterOutsideIf, ad.ServerPublic, p, ad.Server, ControlPort)
			}
		}
		if t.masquerade() {
			line("-A POSTROUTING -o %s -j MASQUERADE", RouterOutsideIf)
		}
		line("COMMIT")
	}

	input := "ACCEPT"
	if t.strictInput() {
		input = "DROP"
	}
	line("*filter")
	line(":INPUT %s [0:0]", input)
	line(":FORWARD DROP [0:0]")
	line(":OUTPUT ACCEPT [0:0]")
	if t.strictInput() {
		line("-A INPUT -i lo -j ACCEPT")
		line("-A INPUT -m conntrack --ctstate INVALID -m comment --comment %q -j DROP", InvalidDropComment)
		line("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
		if f == IPv6 {
			line("-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-solicitation -j ACCEPT")
			line("-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-advertisement -j ACCEPT")
		}
		for _, p := range o.acceptPorts(t) {
			line("-A INPUT -p tcp --dport %d -m conntrack --ctstate NEW -j ACCEPT", p)
		}
	}
	if t.forwards() {
		line("-A FORWARD -m conntrack --ctstate INVALID -m comment --comment %q -j DROP", InvalidDropComment)
		line("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
		line("-A FORWARD -i %s -o %s -m conntrack --ctstate NEW -j ACCEPT", RouterInsideIf, RouterOutsideIf)
		if t.serverInside() {
			for _, p := range o.acceptPorts(t) {
				line("-A FORWARD -i %s -o %s -d %s -p tcp --dport %d -m conntrack --ctstate NEW -j ACCEPT",
					RouterOutsideIf, RouterInsideIf, ad.Server, p)
			}
		}
	}
	line("COMMIT")
	return b.String(), nil
}

func firewallAddresses(t Topology, f Family) (Addresses, error) {
	if !t.valid() {
		return Addresses{}, fmt.Errorf("firewall for %v: %w", t, ErrTopology)
	}
	ad := t.Addresses(f)
	if !ad.Server.IsValid() {
		return ad, fmt.Errorf("firewall for %v family %d: %w", t, int(f), ErrFamily)
	}
	return ad, nil
}

// NFTRules returns the firewall host's nftables-native ruleset for
// topology t, both families in one (the Ruleset NFTables), for `nft -f`.
// It is the same policy as IPTablesRules, written as an nftables.conf
// user writes it:
//
//	table inet filter {
//		chain input {
//			type filter hook input priority filter; policy drop;
//			<AdminRules.NFTInput>
//			iif "lo" accept
//			ct state invalid counter drop comment "rig: invalid drop"
//			ct state established,related accept
//			icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//			tcp dport 21 ct state new accept
//			counter comment "rig: policy drop"
//		}
//		chain forward { ... policy drop; the FORWARD rules of IPTablesRules ... }
//		chain output { type filter hook output priority filter; policy accept; }
//	}
//	table ip nat { ... MASQUERADE and DNAT as IPTablesRules ... }
//
// The input chain is strict only where Topology.Local; the forwarded
// topologies keep `policy accept` there. With KernelHelper a `ct helper`
// object "ftp" is assigned in a prerouting chain (and an output chain
// where the client runs on the host) at priority mangle.
func NFTRules(t Topology, o FirewallOptions) (string, error) {
	ad4, err := firewallAddresses(t, IPv4)
	if err != nil {
		return "", err
	}
	ad6 := t.Addresses(IPv6)
	var b strings.Builder
	line := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("\t", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	block := func(indent int, text string) {
		for l := range strings.Lines(text) {
			if l = strings.TrimSpace(l); l != "" {
				line(indent, "%s", l)
			}
		}
	}
	accept := nftSet(o.acceptPorts(t))
	counterTail := func() { line(2, "counter comment %q", PolicyDropComment) }

	line(0, "table inet %s {", NFTTable)
	if o.KernelHelper {
		line(1, "ct helper ftp {")
		line(2, `type "ftp" protocol tcp`)
		line(2, "l3proto inet")
		line(1, "}")
	}
	block(1, o.Admin.NFTTable)

	line(1, "chain input {")
	if t.strictInput() {
		line(2, "type filter hook input priority filter; policy drop;")
	} else {
		line(2, "type filter hook input priority filter; policy accept;")
	}
	block(2, o.Admin.NFTInput)
	if t.strictInput() {
		line(2, `iif "lo" accept`)
		line(2, "ct state invalid counter drop comment %q", InvalidDropComment)
		line(2, "ct state established,related accept")
		line(2, "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept")
		line(2, "tcp dport %s ct state new accept", accept)
		counterTail()
	}
	line(1, "}")

	line(1, "chain forward {")
	line(2, "type filter hook forward priority filter; policy drop;")
	block(2, o.Admin.NFTForward)
	if t.forwards() {
		line(2, "ct state invalid counter drop comment %q", InvalidDropComment)
		line(2, "ct state established,related accept")
		line(2, "iifname %q oifname %q ct state new accept", RouterInsideIf, RouterOutsideIf)
		if t.serverInside() {
			for _, a := range []netip.Addr{ad4.Server, ad6.Server} {
				line(2, "iifname %q oifname %q %s daddr %s tcp dport %s ct state new accept",
					RouterOutsideIf, RouterInsideIf, nftFamily(a), a, accept)
			}
		}
		counterTail()
	}
	line(1, "}")

	line(1, "chain output {")
	line(2, "type filter hook output priority filter; policy accept;")
	line(1, "}")

	if o.KernelHelper {
		// Priority mangle: after conntrack has the connection, before
		// DNAT rewrites a published control port (2121 -> 21), as raw
		// PREROUTING is for iptables. At priority filter the rule would
		// see the port after DNAT and never match.
		dial := nftSet(o.ports())
		line(1, "chain helper_prerouting {")
		line(2, "type filter hook prerouting priority mangle; policy accept;")
		line(2, `tcp dport %s ct helper set "ftp"`, dial)
		line(1, "}")
		if t.ClientNode() == Router {
			line(1, "chain helper_output {")
			line(2, "type filter hook output priority mangle; policy accept;")
			line(2, `tcp dport %s ct helper set "ftp"`, dial)
			line(1, "}")
		}
	}
	line(0, "}")

	if t.dnat() || t.masquerade() {
		line(0, "table ip nat {")
		line(1, "chain prerouting {")
		line(2, "type nat hook prerouting priority dstnat; policy accept;")
		if t.dnat() {
			line(2, "iifname %q ip daddr %s tcp dport %s dnat to %s:%d",
				RouterOutsideIf, ad4.ServerPublic, nftSet(o.ports()), ad4.Server, ControlPort)
		}
		line(1, "}")
		line(1, "chain postrouting {")
		line(2, "type nat hook postrouting priority srcnat; policy accept;")
		if t.masquerade() {
			line(2, "oifname %q masquerade", RouterOutsideIf)
		}
		line(1, "}")
		line(0, "}")
	}
	block(0, o.Admin.NFT)
	return b.String(), nil
}

// nftSet writes ports as one port or an anonymous set.
func nftSet(ports []uint16) string {
	if len(ports) == 1 {
		return strconv.Itoa(int(ports[0]))
	}
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

func nftFamily(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}
