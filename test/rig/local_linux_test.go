package rig

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// dataPort is a port nothing publishes: a data connection to it must meet
// the firewall host's INPUT policy.
const dataPort = 40123

// rulesets are the two ways the rig writes the firewall host's ruleset.
var rulesets = []struct {
	name string
	opts []Option
}{{"iptables", nil}, {"nft", []Option{WithNFTables()}}}

// peerOf returns the namespace on the far side of the firewall host from
// an FTP endpoint that runs on it: the client for a local server, the
// server for a local client.
func peerOf(topo Topology) Node {
	if topo.ServerNode() == Router {
		return topo.ClientNode()
	}
	return topo.ServerNode()
}

// hostAddr returns the firewall host's address as the peer dials it in
// family f: the server's public address for a local server, the client's
// public address for a local client.
func hostAddr(topo Topology, f Family) netip.Addr {
	ad := topo.Addresses(f)
	if topo.ServerNode() == Router {
		return ad.ServerPublic
	}
	return ad.ClientPublic
}

// peerAddr returns the peer namespace's own address in family f.
func peerAddr(topo Topology, f Family) netip.Addr {
	ad := topo.Addresses(f)
	if peerOf(topo) == Client {
		return ad.ClientNS
	}
	return ad.ServerNS
}

// TestLocalTopologies builds every topology with an FTP endpoint on the
// firewall host, under both rulesets, and checks that it is what it
// claims: the endpoints' addresses are where the topology says, a control
// connection passes (translated as the topology says), and the host's
// INPUT is strict: a connection to a data port is dropped and counted by
// the policy, a stray SYN/ACK is dropped and counted as INVALID, in both
// families, and the nft ruleset leaves iptables' filter table empty.
func TestLocalTopologies(t *testing.T) {
	requireRoot(t)
	for _, topo := range LocalTopologies() {
		for _, rs := range rulesets {
			t.Run(topo.String()+"/"+rs.name, func(t *testing.T) {
				t.Parallel()
				r := New(t, topo, append([]Option{WithPrefix(testPrefix)}, rs.opts...)...)
				checkNodeAddrs(t, r)
				checkControl(t, r)
				for _, get := range []func() (uint64, error){r.InvalidDrops, r.PolicyDrops} {
					if n, err := get(); err != nil || n != 0 {
						t.Fatalf("fresh rig counter = %d, %v; want 0", n, err)
					}
				}
				peer := peerOf(topo)
				if reaches(t, r, peer, netip.AddrPortFrom(hostAddr(topo, topo.Family()), dataPort)) {
					t.Fatalf("a connection from %v to the host's port %d passed its INPUT", peer, dataPort)
				}
				if n := waitCounter(t, r.PolicyDrops, 1); n < 1 {
					t.Errorf("PolicyDrops = %d after a refused SYN, want ≥ 1", n)
				}
				if _, pol, err := r.InputCounters(); err != nil || pol < 1 {
					t.Errorf("INPUT policy drops %d (%v), want ≥ 1", pol, err)
				}
				if n, err := r.InvalidDrops(); err != nil || n != 0 {
					t.Errorf("InvalidDrops = %d (%v) after a plain refused SYN, want 0", n, err)
				}
				for _, f := range []Family{IPv4, IPv6} {
					if err := sendSynAck(r, peer, peerAddr(topo, f), hostAddr(topo, f)); err != nil {
						t.Fatalf("IPv%d: %v", f, err)
					}
				}
				if n := waitCounter(t, r.InvalidDrops, 2); n != 2 {
					t.Errorf("InvalidDrops = %d after two stray SYN/ACKs, want 2", n)
				}
				if inv, _, err := r.InputCounters(); err != nil || inv != 2 {
					t.Errorf("INPUT INVALID drops %d (%v), want 2", inv, err)
				}
				if rs.name == "nft" {
					checkNoIPTablesFilter(t, r)
				}
			})
		}
	}
}

// checkNodeAddrs checks that the client and server addresses of the
// topology's family sit on the nodes the topology runs them in.
func checkNodeAddrs(t *testing.T, r *Rig) {
	t.Helper()
	for _, e := range []struct {
		node Node
		addr netip.Addr
	}{{r.topo.ClientNode(), r.ClientAddr()}, {r.topo.ServerNode(), r.ServerHostAddr()}} {
		out, err := r.Run(t.Context(), e.node, "ip", "-br", "addr")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, e.addr.String()+"/") {
			t.Errorf("%v lacks %v:\n%s", e.node, e.addr, out)
		}
	}
}

// checkControl opens a control connection the way a client would: from
// the client node to ServerEndpoint, accepted on the server node at the
// server's own address and port.
func checkControl(t *testing.T, r *Rig) {
	t.Helper()
	checkConnection(t, r, netip.AddrPortFrom(r.ServerHostAddr(), r.ServerPort()), r.ServerEndpoint())
}

// checkConnection listens on the server node at listen, dials dial from
// the client node and checks the addresses each side sees: the client's
// own, and its public one (after NAT where the topology has it) at the
// server.
func checkConnection(t *testing.T, r *Rig, listen, dial netip.AddrPort) {
	t.Helper()
	l, err := r.Listen(r.topo.ServerNode(), "tcp", listen.String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := r.Dial(ctx, r.topo.ClientNode(), "tcp", dial.String())
	if err != nil {
		t.Fatalf("connecting to %v: %v", dial, err)
	}
	defer c.Close()
	if got := netip.MustParseAddrPort(c.LocalAddr().String()).Addr(); got != r.ClientAddr() {
		t.Errorf("client dialled from %v, want %v", got, r.ClientAddr())
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	if got := netip.MustParseAddrPort(peer.String()).Addr().Unmap(); got != r.ClientPublicAddr() {
		t.Errorf("server saw client as %v, want %v", got, r.ClientPublicAddr())
	}
}

// reaches reports whether a TCP connection from node n to target is
// accepted by a listener on the firewall host (any address, that port).
func reaches(t *testing.T, r *Rig, n Node, target netip.AddrPort) bool {
	t.Helper()
	l, err := r.Listen(Router, "tcp", fmt.Sprintf(":%d", target.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	c, err := r.Dial(ctx, n, "tcp", target.String())
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// checkNoIPTablesFilter checks that the nftables-native rig has no
// iptables filter rule in either family: only the default policies.
func checkNoIPTablesFilter(t *testing.T, r *Rig) {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := r.Run(t.Context(), Router, tool, "-S")
		if err != nil {
			t.Fatal(err)
		}
		for l := range strings.Lines(out) {
			if !strings.HasPrefix(l, "-P ") || !strings.HasSuffix(strings.TrimSpace(l), " ACCEPT") {
				t.Errorf("%s -S under WithNFTables: %s", tool, strings.TrimSpace(l))
			}
		}
	}
}

// TestAdminRules checks both hooks for an admin's fragment: a rule passed
// in AdminRules opens one port in the strict INPUT (iptables: loaded with
// --noflush in front of the rig's rules; nft: at the top of the input
// chain, with a set declared in the admin's table), while another port
// stays closed.
func TestAdminRules(t *testing.T) {
	requireRoot(t)
	const open = dataPort + 1
	admin := AdminRules{
		IPTables4: fmt.Sprintf("*filter\n-I INPUT 1 -p tcp --dport %d -j ACCEPT\nCOMMIT\n", open),
		IPTables6: fmt.Sprintf("*filter\n-I INPUT 1 -p tcp --dport %d -j ACCEPT\nCOMMIT\n", open),
		NFTTable:  fmt.Sprintf("set admin_ports {\n\ttype inet_service\n\telements = { %d }\n}\n", open),
		NFTInput:  "tcp dport @admin_ports accept",
	}
	for _, rs := range rulesets {
		t.Run(rs.name, func(t *testing.T) {
			t.Parallel()
			r := New(t, HostServer, append([]Option{WithPrefix(testPrefix), WithAdminRules(admin)}, rs.opts...)...)
			target := netip.AddrPortFrom(r.ServerAddr(), open)
			if !reaches(t, r, Client, target) {
				t.Errorf("port %d the admin opened is closed", open)
			}
			if reaches(t, r, Client, netip.AddrPortFrom(r.ServerAddr(), dataPort)) {
				t.Errorf("port %d passed the admin's firewall", dataPort)
			}
		})
	}
}

// TestControlPorts publishes the router's own server on 198.51.100.1:2121
// (DNAT to its inside address port 21) and a host's server on port 2121,
// under both rulesets.
func TestControlPorts(t *testing.T) {
	requireRoot(t)
	for _, topo := range []Topology{RouterLocalServer, HostServer} {
		for _, rs := range rulesets {
			t.Run(topo.String()+"/"+rs.name, func(t *testing.T) {
				t.Parallel()
				r := New(t, topo, append([]Option{WithPrefix(testPrefix), WithControlPorts(2121, 21)}, rs.opts...)...)
				if got := r.ServerEndpoint().Port(); got != 2121 {
					t.Errorf("client dials port %d, want 2121", got)
				}
				want := uint16(2121)
				if topo == RouterLocalServer {
					want = ControlPort
				}
				if got := r.ServerPort(); got != want {
					t.Errorf("server listens on port %d, want %d", got, want)
				}
				checkControl(t, r)
			})
		}
	}
}
