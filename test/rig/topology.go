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

	// The topologies below put an FTP endpoint on the firewall host
	// itself (the router namespace, where ftpalg runs): its control and
	// data connections pass the host's INPUT and OUTPUT chains, not
	// FORWARD. The host's INPUT is strict (policy DROP, INVALID dropped,
	// ESTABLISHED,RELATED and the control port accepted). The namespace
	// that plays neither client nor server is a bystander on the other
	// link (192.0.2.10 or .20): a foreign address hostile tests can name.

	// HostServer runs the FTP server on a host (198.51.100.1, not
	// forwarding) that the client (198.51.100.30) reaches on its link.
	// Passive FTP needs an ALG: the data SYN meets the INPUT policy.
	HostServer
	// HostServer6 is HostServer over IPv6: host 2001:db8:2::1, client
	// 2001:db8:2::30.
	HostServer6
	// HostClient runs the FTP client on a host (198.51.100.1, not
	// forwarding) next to the server (198.51.100.20). Active FTP needs an
	// ALG: the server's data SYN meets the client host's INPUT policy.
	HostClient
	// HostClient6 is HostClient over IPv6: host 2001:db8:2::1, server
	// 2001:db8:2::20.
	HostClient6
	// RouterLocalClient runs the FTP client on the ClientNAT router
	// itself. Its own connections leave with its inside address
	// 192.0.2.1 as source (a route with that src, as when programs bind
	// the LAN address), so its own MASQUERADE turns them into
	// 198.51.100.1, as it does for the LAN (bystander 192.0.2.10). The
	// server is 198.51.100.20. Active FTP needs an ALG twice: the PORT
	// address must be rewritten and the data SYN meets the router's INPUT
	// policy.
	RouterLocalClient
	// RouterLocalServer runs the FTP server on the router itself, on its
	// inside address 192.0.2.1, published on the outside address with
	// DNAT (198.51.100.1:21, or the control port given by
	// WithControlPorts, to 192.0.2.1:21) as a home router publishes its own
	// FTP service; the LAN (bystander 192.0.2.20) is masqueraded as in
	// ServerForward. The client is 198.51.100.30. Passive FTP needs an
	// ALG: the 227 names 192.0.2.1 and the data SYN meets the INPUT policy.
	RouterLocalServer
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
	case HostServer:
		return "HostServer"
	case HostServer6:
		return "HostServer6"
	case HostClient:
		return "HostClient"
	case HostClient6:
		return "HostClient6"
	case RouterLocalClient:
		return "RouterLocalClient"
	case RouterLocalServer:
		return "RouterLocalServer"
	}
	return fmt.Sprintf("Topology(%d)", int(t))
}

func (t Topology) valid() bool { return t >= ClientNAT && t <= RouterLocalServer }

// Topologies returns every topology: the forwarded ones first, then
// LocalTopologies.
func Topologies() []Topology {
	return append([]Topology{ClientNAT, ServerForward, Routed, Routed6}, LocalTopologies()...)
}

// LocalTopologies returns the topologies with an FTP endpoint on the
// firewall host itself.
func LocalTopologies() []Topology {
	return []Topology{HostServer, HostServer6, HostClient, HostClient6, RouterLocalClient, RouterLocalServer}
}

// IPv6 reports whether the client reaches the server over IPv6.
func (t Topology) IPv6() bool { return t == Routed6 || t == HostServer6 || t == HostClient6 }

// traits describe how a topology is wired: one row per topology.
type traits struct {
	// clientNode and serverNode are where the FTP clients and servers run.
	clientNode, serverNode Node
	// clientInside: the client namespace is on the router's inside link
	// (else the server namespace is).
	clientInside bool
	// serverInside: the FTP server sits on the protected side of a
	// forwarding router, so FORWARD publishes its control port.
	serverInside bool
	// forwards: the firewall host routes between its links. The Host
	// topologies are plain hosts: forwarding off, FORWARD empty.
	forwards bool
	// dnat: the router publishes the server's control port on its
	// outside address (IPv4). masquerade: it masquerades its inside on
	// the outside interface (IPv4).
	dnat, masquerade bool
}

var topologyTraits = map[Topology]traits{
	ClientNAT:         {clientNode: Client, serverNode: Server, clientInside: true, forwards: true, masquerade: true},
	ServerForward:     {clientNode: Client, serverNode: Server, serverInside: true, forwards: true, dnat: true, masquerade: true},
	Routed:            {clientNode: Client, serverNode: Server, serverInside: true, forwards: true},
	Routed6:           {clientNode: Client, serverNode: Server, serverInside: true, forwards: true},
	HostServer:        {clientNode: Client, serverNode: Router},
	HostServer6:       {clientNode: Client, serverNode: Router},
	HostClient:        {clientNode: Router, serverNode: Server, clientInside: true},
	HostClient6:       {clientNode: Router, serverNode: Server, clientInside: true},
	RouterLocalClient: {clientNode: Router, serverNode: Server, clientInside: true, forwards: true, masquerade: true},
	RouterLocalServer: {clientNode: Client, serverNode: Router, forwards: true, dnat: true, masquerade: true},
}

// ClientNode returns the namespace the FTP clients run in: the router
// (the firewall host) for HostClient, HostClient6 and RouterLocalClient,
// else Client. It is 0 for an unknown topology.
func (t Topology) ClientNode() Node { return topologyTraits[t].clientNode }

// ServerNode returns the namespace the FTP servers run in: the router
// (the firewall host) for HostServer, HostServer6 and RouterLocalServer,
// else Server. It is 0 for an unknown topology.
func (t Topology) ServerNode() Node { return topologyTraits[t].serverNode }

// Local reports whether an FTP endpoint runs on the firewall host, so its
// connections pass INPUT and OUTPUT.
func (t Topology) Local() bool { return t.ClientNode() == Router || t.ServerNode() == Router }

func (t Topology) forwards() bool { return topologyTraits[t].forwards }

// strictInput reports whether the firewall host's INPUT is strict (policy
// DROP): in every topology with a local endpoint. The forwarded ones
// keep INPUT open as before, their subject being FORWARD.
func (t Topology) strictInput() bool { return t.Local() }

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
	// ClientNS and ServerNS are the addresses of the client and server
	// namespaces' eth0. They equal Client and Server where those run in
	// their own namespace; where one runs on the router (the local
	// topologies), its namespace is a bystander on the router's other link.
	ClientNS, ServerNS netip.Addr
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
	case HostServer, HostServer6, HostClient, HostClient6, RouterLocalClient, RouterLocalServer:
		ad = localAddresses(t, f, a, b)
	default:
		return Addresses{}
	}
	if !ad.ClientNS.IsValid() {
		ad.ClientNS = ad.Client
	}
	if !ad.ServerNS.IsValid() {
		ad.ServerNS = ad.Server
	}
	return ad
}

// localAddresses is the address plan of the topologies with an FTP
// endpoint on the firewall host, which is .1 on both networks: A inside,
// B outside. The endpoint on the host uses the address facing its peer
// (the router's own client its inside one, for its MASQUERADE; the
// router's own server its inside one, behind DNAT); the namespace it
// leaves idle is a bystander on the inside.
func localAddresses(t Topology, f Family, a, b netip.Prefix) Addresses {
	ad := Addresses{RouterInside: host(a, "1"), RouterOutside: host(b, "1"), Inside: a, Outside: b}
	switch t {
	case HostServer, HostServer6:
		ad.Client, ad.Server, ad.ServerNS = host(b, "30"), ad.RouterOutside, host(a, "20")
	case HostClient, HostClient6:
		ad.Client, ad.Server, ad.ClientNS = ad.RouterOutside, host(b, "20"), host(a, "10")
	case RouterLocalClient:
		ad.Client, ad.Server, ad.ClientNS = ad.RouterInside, host(b, "20"), host(a, "10")
		if f == IPv6 {
			// No NAT66: the router's own IPv6 client leaves with its
			// outside address.
			ad.Client = ad.RouterOutside
		}
	case RouterLocalServer:
		ad.Client, ad.Server, ad.ServerNS = host(b, "30"), ad.RouterInside, host(a, "20")
	}
	ad.ClientPublic, ad.ServerPublic = ad.Client, ad.Server
	if f == IPv4 && t == RouterLocalClient {
		ad.ClientPublic = ad.RouterOutside
	}
	if f == IPv4 && t == RouterLocalServer {
		ad.ServerPublic = ad.RouterOutside
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

func (t Topology) clientInside() bool { return topologyTraits[t].clientInside }
func (t Topology) serverInside() bool { return topologyTraits[t].serverInside }
func (t Topology) dnat() bool         { return topologyTraits[t].dnat }
func (t Topology) masquerade() bool   { return topologyTraits[t].masquerade }
