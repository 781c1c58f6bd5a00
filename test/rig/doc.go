// Package rig builds network-namespace test rigs for ftpalg: a client, a
// router with a strict firewall and a server, each in its own namespace,
// connected by veth pairs and addressed only from the documentation ranges
// (RFC 5737 and 2001:db8::/32).
//
// The rig exists so that end-to-end tests, the demo and the benchmarks all
// exercise the same topologies the product is sold for: a client behind
// MASQUERADE, a server behind a port forward without a configured passive
// address, and a routed firewall over IPv4 and IPv6. The router's firewall
// is the one a careful admin writes (FORWARD policy DROP, INVALID dropped
// first and counted, nf_conntrack_tcp_be_liberal=0), because that is where
// an ALG that gets sequence numbers wrong is caught: its packets become
// INVALID and the counter read by [Rig.InvalidDrops] moves.
//
// Everything a rig creates (namespaces, temporary files, processes) is
// removed by [Rig.Close]; [New] registers Close with the test's Cleanup.
// Processes are stopped by their own process group and then by the PIDs
// still inside the rig's namespaces, never by name.
//
// Creating a rig requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN for
// setns and mounting the namespaces); [New] skips the test otherwise.
package rig
