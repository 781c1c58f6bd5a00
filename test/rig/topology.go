package rig

import (
	"fmt"
	"net/netip"
	"strings"
)

// Topology selects how client, router and server are wired and which
// NAT and firewall rules the router applies.
//
// Every topology is dual-stack: IPv4 and IPv6 addresses are configured on
// all nodes and both families get the same strict firewall (IPv6 never gets
// NAT). The topology decides which family the client uses to reach the
// server ([Rig.ServerAddr]) and which side of the router is protected.
//
// The router's "inside" interface faces the protected network: hosts there
// may open new connections outward, hosts on the "outside" may only reach
// the published control port. For ClientNAT that is the client's network;
// for ServerForward, Routed and Routed6 it is the server's network.
type Topology int

const (
	// ClientNAT puts the client (192.0.2.10) behind a router that
	// masquerades it to 198.51.100.1; the server (198.51.100.20) is on the
	// outside. Active FTP from the client needs an ALG.
	ClientNAT Topology = iota + 1
	// ServerForward puts the server (192.0.2.20) behind a router that
	// forwards 198.51.100.1:21 to it with DNAT (and masquerades the
	// inside's own outbound connections); the client (198.51.100.30) dials
	// the router. The server has no passive address configured, so its 227
	// reply names 192.0.2.20 and passive FTP needs an ALG.
	ServerForward
	// Routed routes between client (192.0.2.10) and server
	// (198.51.100.20) without NAT. The firewall protects the server: only
	// port 21 is published, so passive data connections need an ALG.
	Routed
	// Routed6 is Routed over IPv6: client 2001:db8:1::10, server
	// 2001:db8:2::20, router 2001:db8:1::1 / 2001:db8:2::1, no NAT66.
	Routed6
)

// String returns the topology's Go name, used in namespace logs and
// subtest names.
func (t Topology) String() string {
	switch t {
	case ClientNAT:
		return "ClientNAT"
	case ServerForward:
		return "ServerForward"
	case Routed:
		return "Routed"
	case Routed6:
		return "Routed6"
	}
	return fmt.Sprintf("Topology(%d)", int(t))
}

func (t Topology) valid() bool { return t >= ClientNAT && t <= Routed6 }

// IPv6 reports whether the client reaches the server over IPv6.
func (t Topology) IPv6() bool { return t == Routed6 }

// Node names one of the rig's three namespaces.
type Node int

const (
	// Client is the FTP client's namespace.
	Client Node = iota + 1
	// Router is the namespace that forwards, filters and NATs; ftpalg runs here.
	Router
	// Server is the FTP server's namespace.
	Server
)

// String returns the node's role name.
func (n Node) String() string {
	switch n {
	case Client:
		return "client"
	case Router:
		return "router"
	case Server:
		return "server"
	}
	return fmt.Sprintf("Node(%d)", int(n))
}

func (n Node) valid() bool { return n >= Client && n <= Server }

// Interface names. The router's are fixed because each namespace has its
// own interface name space; the rig never creates links in the host's
// namespace, so names cannot clash between parallel rigs.
const (
	// RouterInsideIf is the router's interface toward the protected network.
	RouterInsideIf = "inside"
	// RouterOutsideIf is the router's interface toward the unprotected network.
	RouterOutsideIf = "outside"
	// HostIf is the only non-loopback interface of client and server.
	HostIf = "eth0"
)

// The two networks. Network A (192.0.2.0/24, 2001:db8:1::/64) is always
// the one that is private in the NAT topologies; network B (198.51.100.0/24,
// 2001:db8:2::/64) is the "internet" side.
var (
	netA4 = netip.MustParsePrefix("192.0.2.0/24")
	netB4 = netip.MustParsePrefix("198.51.100.0/24")
	netA6 = netip.MustParsePrefix("2001:db8:1::/64")
	netB6 = netip.MustParsePrefix("2001:db8:2::/64")
)

// Family is an address family of the rig's dual-stack plan.
type Family int

const (
	// IPv4 selects the RFC 5737 addresses.
	IPv4 Family = 4
	// IPv6 selects the 2001:db8::/32 addresses.
	IPv6 Family = 6
)

// Addresses is a topology's address plan for one family.
type Addresses struct {
	// Client is the client's own address.
	Client netip.Addr
	// ClientPublic is the client's address as the server sees it
	// (the router's outside address under ClientNAT, else Client).
	ClientPublic netip.Addr
	// Server is the server's own address.
	Server netip.Addr
	// ServerPublic is the address the client dials for the control
	// connection (the router's outside address under ServerForward, else
	// Server).
	ServerPublic netip.Addr
	// RouterInside and RouterOutside are the router's addresses on its
	// inside and outside interfaces.
	RouterInside, RouterOutside netip.Addr
	// Inside and Outside are the networks on either side of the router.
	Inside, Outside netip.Prefix
}

// host returns the address in p whose last byte (IPv4) or last group
// (IPv6) reads as n: host(192.0.2.0/24, "10") is 192.0.2.10 and
// host(2001:db8:1::/64, "10") is 2001:db8:1::10, so both families of the
// plan look alike.
func host(p netip.Prefix, n string) netip.Addr {
	if p.Addr().Is4() {
		return netip.MustParseAddr(strings.TrimSuffix(p.Addr().String(), "0") + n)
	}
	return netip.MustParseAddr(p.Addr().String() + n)
}

// Addresses returns the topology's address plan for family f. It returns
// the zero Addresses for an unknown topology or family.
func (t Topology) Addresses(f Family) Addresses {
	var a, b netip.Prefix
	switch f {
	case IPv4:
		a, b = netA4, netB4
	case IPv6:
		a, b = netA6, netB6
	default:
		return Addresses{}
	}
	var ad Addresses
	switch t {
	case ClientNAT:
		ad = Addresses{
			Client: host(a, "10"), Server: host(b, "20"),
			RouterInside: host(a, "1"), RouterOutside: host(b, "1"),
			Inside: a, Outside: b,
		}
		ad.ClientPublic, ad.ServerPublic = ad.Client, ad.Server
		if f == IPv4 {
			ad.ClientPublic = ad.RouterOutside
		}
	case ServerForward:
		ad = Addresses{
			Client: host(b, "30"), Server: host(a, "20"),
			RouterInside: host(a, "1"), RouterOutside: host(b, "1"),
			Inside: a, Outside: b,
		}
		ad.ClientPublic, ad.ServerPublic = ad.Client, ad.Server
		if f == IPv4 {
			ad.ServerPublic = ad.RouterOutside
		}
	case Routed, Routed6:
		ad = Addresses{
			Client: host(a, "10"), Server: host(b, "20"),
			RouterInside: host(b, "1"), RouterOutside: host(a, "1"),
			Inside: b, Outside: a,
		}
		ad.ClientPublic, ad.ServerPublic = ad.Client, ad.Server
	default:
		return Addresses{}
	}
	return ad
}

// Family returns the family the client uses to reach the server.
func (t Topology) Family() Family {
	if t.IPv6() {
		return IPv6
	}
	return IPv4
}

// clientInside reports whether the client sits on the router's inside.
func (t Topology) clientInside() bool { return t == ClientNAT }
