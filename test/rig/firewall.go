package rig

import (
	"fmt"
	"strings"
)

// InvalidDropComment tags the FORWARD rule that drops conntrack INVALID
// packets, so [Rig.InvalidDrops] finds its counter even after ftpalg has
// inserted its own jumps in front of it.
const InvalidDropComment = "rig: invalid drop"

// ControlPort is the FTP control port the router publishes and the
// kernel helper is attached to.
const ControlPort = 21

// FirewallRules returns the router's ruleset for topology t and family f
// in iptables-restore format: the script a careful admin would load, and
// exactly what the rig applies with iptables-restore or ip6tables-restore.
//
// filter FORWARD has policy DROP and, in order: INVALID dropped (tagged
// with [InvalidDropComment] so its counter can be read), ESTABLISHED and
// RELATED accepted, new connections from the inside interface to the
// outside accepted, and, where the server is inside, new connections to
// its control port accepted. Nothing else is forwarded: data connections
// pass only as RELATED (a helper's expectation) or through an ALG's own
// pinholes.
//
// IPv4 NAT: ClientNAT masquerades the inside on the outside interface;
// ServerForward DNATs the router's outside address port 21 to the server
// and masquerades the inside's own outbound connections, as a home or
// office router does. IPv6 never gets NAT.
//
// kernelHelper attaches the kernel's FTP conntrack helper to connections
// to port 21 in raw PREROUTING, for comparing ftpalg against it.
func FirewallRules(t Topology, f Family, kernelHelper bool) (string, error) {
	if !t.valid() {
		return "", fmt.Errorf("firewall for %v: %w", t, ErrTopology)
	}
	ad := t.Addresses(f)
	if !ad.Server.IsValid() {
		return "", fmt.Errorf("firewall for %v family %d: %w", t, int(f), ErrFamily)
	}
	var b strings.Builder
	line := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}

	line("*raw")
	line(":PREROUTING ACCEPT [0:0]")
	line(":OUTPUT ACCEPT [0:0]")
	if kernelHelper {
		line("-A PREROUTING -p tcp --dport %d -j CT --helper ftp", ControlPort)
	}
	line("COMMIT")

	if f == IPv4 {
		line("*nat")
		line(":PREROUTING ACCEPT [0:0]")
		line(":INPUT ACCEPT [0:0]")
		line(":OUTPUT ACCEPT [0:0]")
		line(":POSTROUTING ACCEPT [0:0]")
		switch t {
		case ClientNAT:
			line("-A POSTROUTING -o %s -j MASQUERADE", RouterOutsideIf)
		case ServerForward:
			line("-A PREROUTING -i %s -d %s -p tcp --dport %d -j DNAT --to-destination %s:%d",
				RouterOutsideIf, ad.ServerPublic, ControlPort, ad.Server, ControlPort)
			line("-A POSTROUTING -o %s -j MASQUERADE", RouterOutsideIf)
		}
		line("COMMIT")
	}

	line("*filter")
	line(":INPUT ACCEPT [0:0]")
	line(":FORWARD DROP [0:0]")
	line(":OUTPUT ACCEPT [0:0]")
	line("-A FORWARD -m conntrack --ctstate INVALID -m comment --comment %q -j DROP", InvalidDropComment)
	line("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	line("-A FORWARD -i %s -o %s -m conntrack --ctstate NEW -j ACCEPT", RouterInsideIf, RouterOutsideIf)
	if !t.clientInside() {
		line("-A FORWARD -i %s -o %s -d %s -p tcp --dport %d -m conntrack --ctstate NEW -j ACCEPT",
			RouterOutsideIf, RouterInsideIf, ad.Server, ControlPort)
	}
	line("COMMIT")
	return b.String(), nil
}
