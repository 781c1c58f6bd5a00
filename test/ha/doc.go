// Package ha builds a two-router test rig for ftpalg: a pair of routers
// that share a LAN and a WAN address through keepalived (VRRP) and
// replicate their conntrack tables through conntrackd (FTFW mode over a
// link of their own), each in its own network namespace, with clients and
// FTP servers on both sides.
//
// It exists to prove what an admin who runs such a pair gets: whether FTP
// sessions that ftpalg (or the kernel's FTP helper) rewrote survive a hard
// failure of the master, a planned switchover and a failback, and whether
// data connections announced on the old master but started on the new
// one get through (ftpalg's pinhole sync, package pinsync). The daemons
// run from the very files of deploy/ha, changed only in paths, so the kit
// the admin installs is the kit that is tested.
//
// Topology (IPv4; all addresses from RFC 5737):
//
//	client 192.0.2.10 ─┐                          ┌─ PORT server 198.51.100.20 (no route to the LAN)
//	fwd server 192.0.2.20 ─ LAN bridge ─ ha1, ha2 ─ WAN bridge ─ PASV client 198.51.100.30
//	                    VIP 192.0.2.1     (sync link     VIP 198.51.100.1
//	                                      203.0.113.0/24)
//
// The routers SNAT the LAN to the WAN VIP and forward the WAN VIP's port 21
// to the forwarded server; FORWARD is strict (policy DROP, INVALID dropped
// and counted) with nf_conntrack_tcp_be_liberal=0.
package ha
