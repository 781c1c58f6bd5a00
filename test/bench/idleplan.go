package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ftpalg/ftpalg/test/rig"
)

// The memory workload's idle connections are spread over processes and
// server addresses. One process holds only as many sockets as its
// RLIMIT_NOFILE allows, and a container without CAP_SYS_RESOURCE cannot
// raise the hard limit (20,000 on some machines): so the client ends are
// opened by several client processes and the server ends accepted by
// several idle servers sharing each listening address with SO_REUSEPORT.
// And every connection reaches the server from the router's one
// masqueraded address, so towards one server address:21 only the client
// port tells connections apart: the server gets as many addresses as
// the count needs (perServerAddr).

// ErrIdlePlan reports an -idle count the memory workload cannot reach on
// this machine (file limit, port space, addresses, conntrack table).
var ErrIdlePlan = errors.New("idle connections cannot be spread")

const (
	// clientPortRange is the client namespace's ip_local_port_range in
	// the memory workload's rig: every port MASQUERADE keeps unchanged
	// (it maps ports from 1024 up within 1024-65535), instead of the
	// default 32768-60999.
	clientPortRange = "1024 65535"
	// minFileLimit is the smallest RLIMIT_NOFILE the plan works with: a
	// process needs a few descriptors of its own besides its sockets.
	minFileLimit = 256
)

// idleShare is one client process's part: conns connections to the
// server address numbered addr.
type idleShare struct {
	addr  int
	conns int
}

// idlePlan is how the memory workload spreads its connections.
type idlePlan struct {
	addrs   int         // server addresses, the rig's own first
	servers int         // idle server processes, each listening on every address
	clients []idleShare // one per client process
}

// planIdle spreads conns connections for processes whose open file limit
// (the hard RLIMIT_NOFILE, which each raises its soft limit to) is
// fileLimit, clients whose ip_local_port_range holds ports ports, and a
// server subnet with room for maxAddrs addresses.
//
// A client process opens at most 3/4 of its limit: its count is exact.
// Which idle server gets a connection is the kernel's reuseport hash's
// choice, so their mean stays at 2/3 of the limit: at 20,000, 13,333
// connections, whose random spread (about the square root) is far from
// the 6,667 left. 100,000 connections over 8 servers came to 12,239-12,887
// open files each here, for a mean of 12,500.
func planIdle(conns, fileLimit, ports, maxAddrs int) (idlePlan, error) {
	var p idlePlan
	if conns < 1 {
		return p, fmt.Errorf("%d idle connections: %w", conns, ErrIdlePlan)
	}
	if fileLimit < minFileLimit {
		return p, fmt.Errorf("%d idle connections: the open file limit %d is below %d: %w",
			conns, fileLimit, minFileLimit, ErrIdlePlan)
	}
	perClient, perServer := fileLimit*3/4, fileLimit*2/3
	perAddr := perServerAddr(ports)
	if perAddr < 1 {
		return p, fmt.Errorf("%d idle connections: %d client ports: %w", conns, ports, ErrIdlePlan)
	}
	p.addrs = ceilDiv(conns, perAddr)
	if p.addrs > maxAddrs {
		return p, fmt.Errorf("%d idle connections need %d server addresses of at most %d connections each (%d client ports), the subnet has room for %d: %w",
			conns, p.addrs, perAddr, ports, maxAddrs, ErrIdlePlan)
	}
	p.servers = ceilDiv(conns, perServer)
	for a, n := range split(conns, p.addrs) {
		for _, m := range split(n, ceilDiv(n, perClient)) {
			p.clients = append(p.clients, idleShare{addr: a, conns: m})
		}
	}
	return p, nil
}

// perServerAddr is how many connections one server address:21 gets
// when the client has ports ephemeral ports. They all reach the server
// from the router's one masqueraded address (MASQUERADE keeps the client's
// port, which is unique towards that address:21), so the client port
// alone tells them apart. And connect() looks for a free port among those
// of the range's parity first (Linux's __inet_hash_connect leaves the
// other half to bind()), then scans the other half: once the first
// half is full, every further connect() walks through it, and opening
// 50,000 connections to one address took minutes (100,000 over two
// addresses: 163 s) instead of seconds. So an address gets at most 4/5 of
// half the range: 25,804 of 1024-65535.
func perServerAddr(ports int) int { return ports / 2 * 4 / 5 }

// split divides n into k parts that differ by at most one.
func split(n, k int) []int {
	parts := make([]int, k)
	for i := range parts {
		parts[i] = n / k
		if i < n%k {
			parts[i]++
		}
	}
	return parts
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// maxServerAddrs bounds how many addresses serverAddrs looks at: far
// more than any count the conntrack table holds needs.
const maxServerAddrs = 1024

// serverAddrs returns the addresses the idle servers may use: the
// server's own address first, then the next ones of its subnet that the
// rig's plan gives no other node, up to the broadcast address (IPv4) or
// maxServerAddrs. ad is the rig's address plan, so the extra addresses
// are RFC 5737 (or 2001:db8::) ones like the subnet.
func serverAddrs(ad rig.Addresses) ([]netip.Addr, error) {
	subnet := ad.Outside
	if ad.Inside.Contains(ad.Server) {
		subnet = ad.Inside
	}
	if !subnet.Contains(ad.Server) {
		return nil, fmt.Errorf("server address %s is in neither %s nor %s: %w", ad.Server, ad.Inside, ad.Outside, ErrIdlePlan)
	}
	taken := []netip.Addr{ad.Client, ad.ClientPublic, ad.ServerPublic, ad.RouterInside, ad.RouterOutside, ad.ClientNS, ad.ServerNS}
	addrs := []netip.Addr{ad.Server}
	// a.Next() outside the subnet makes a its broadcast address.
	for a := ad.Server.Next(); len(addrs) < maxServerAddrs && subnet.Contains(a.Next()); a = a.Next() {
		if !slices.Contains(taken, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs, nil
}
