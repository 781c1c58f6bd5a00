package matrix

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ftpalg/ftpalg/test/rig"
)

// caseKind is one workload of the matrix.
type caseKind int

const (
	download caseKind = iota + 1 // 5 MB RETR, compared by SHA-256
	upload                       // 1 MB STOR, compared on the server
	many                         // 200 small RETRs over one control connection
	list                         // LIST of a directory of 10 files
)

func cases() []caseKind { return []caseKind{download, upload, many, list} }

func (k caseKind) String() string {
	switch k {
	case download:
		return "download"
	case upload:
		return "upload"
	case many:
		return "200files"
	case list:
		return "list"
	}
	return fmt.Sprintf("case(%d)", int(k))
}

// server is a server program with one of its configurations.
type server struct {
	kind rig.ServerKind
	// masq is proftpd with MasqueradeAddress set to the router's public
	// address and a PassivePorts range: the manual fix admins use today,
	// which ftpalg must recognise (no 227 rewrite) while still opening the
	// pinhole. Only meaningful behind the port forward.
	masq bool
}

func (s server) String() string {
	if s.masq {
		return s.kind.String() + "+masq"
	}
	return s.kind.String()
}

// cell is one server × client × mode combination on one topology, under
// one way of writing the firewall host's ruleset.
type cell struct {
	topo    rig.Topology
	srv     server
	client  rig.ClientKind
	mode    rig.Mode
	ruleset rig.Ruleset
}

func (c cell) String() string {
	return fmt.Sprintf("%s/%v/%v/%v", c.net(), c.srv, c.client, c.mode)
}

// net names the cell's rig: the topology, with "+nft" under the
// nftables-native ruleset.
func (c cell) net() string {
	if c.ruleset == rig.NFTables {
		return c.topo.String() + "+nft"
	}
	return c.topo.String()
}

// controlPorts returns the cell's rig.WithControlPorts, or nil for port
// 21 alone: the local cells under the nftables ruleset dial port 2121
// with 21 also watched (ftpalg's --control-ports 21,2121), so every local
// path is proven on a second control port too, and on 21 under the
// iptables script.
func (c cell) controlPorts() []uint16 {
	if c.topo.Local() && c.ruleset == rig.NFTables {
		return []uint16{2121, 21}
	}
	return nil
}

// applicable reports whether a cell is meaningful, and if not why. These
// are the N/A cells of the matrix (see test/README.md).
func (c cell) applicable() (bool, string) {
	if ok, why := c.client.Supports(c.mode, c.topo.Family()); !ok {
		return false, why
	}
	if c.srv.masq && (!portForward(c.topo) || c.srv.kind != rig.ProFTPD) {
		return false, "MasqueradeAddress matters only for a server behind the port forward"
	}
	if c.srv.masq && c.mode.Active() {
		return false, "MasqueradeAddress changes passive replies only"
	}
	return true, ""
}

// portForward reports whether the topology publishes its server with DNAT.
func portForward(t rig.Topology) bool { return t == rig.ServerForward || t == rig.RouterLocalServer }

// clientProtected reports whether the firewall protects the client's
// side: a masqueraded client, or a client on a host with a strict INPUT.
func clientProtected(t rig.Topology) bool {
	return t == rig.ClientNAT || t.ClientNode() == rig.Router
}

// needsPinhole reports whether the data connection crosses the firewall
// against its policy, so ftpalg must open a pinhole: toward a protected
// server (inside, or on the firewall host) in passive mode, toward a
// protected client (masqueraded, or on the firewall host) in active mode.
// The other direction is new traffic from the protected side, which the
// firewall accepts anyway; ftpalg must merely not break it.
func (c cell) needsPinhole() bool {
	if clientProtected(c.topo) {
		return c.mode.Active()
	}
	return !c.mode.Active()
}

// needsRewrite reports whether the announced address is a private one the
// peer cannot reach: PORT/EPRT from behind MASQUERADE (also the router's
// own client's), 227 from behind the port forward (also the router's own
// server's) unless the server already announces the public address.
func (c cell) needsRewrite() bool {
	switch {
	case c.topo == rig.ClientNAT || c.topo == rig.RouterLocalClient:
		return c.mode.Active()
	case portForward(c.topo):
		return c.mode == rig.PASV && !c.srv.masq
	}
	return false
}

// allServers are the server configurations of the full matrix.
func allServers() []server {
	return []server{{rig.Vsftpd, false}, {rig.ProFTPD, false}, {rig.PureFTPd, false}, {rig.ProFTPD, true}}
}

// topologies are the rig's forwarded topologies, in the order printed.
func topologies() []rig.Topology {
	return []rig.Topology{rig.ClientNAT, rig.ServerForward, rig.Routed, rig.Routed6}
}

// job is a cell with the cases to run in it.
type job struct {
	cell
	cases []caseKind
}

// fullMatrix returns every applicable cell of the forwarded topologies
// with every case.
func fullMatrix() []job { return applicableJobs(grid(topologies(), rig.IPTables, rig.Clients())) }

// localMatrix returns every applicable cell of the local topologies with
// every case: every client under the iptables script, and curl (which
// has every mode) under the nftables ruleset, whose subject is the
// firewall, not the client.
func localMatrix() []job {
	cells := grid(rig.LocalTopologies(), rig.IPTables, rig.Clients())
	cells = append(cells, grid(rig.LocalTopologies(), rig.NFTables, []rig.ClientKind{rig.Curl})...)
	return applicableJobs(cells)
}

// grid returns every topology × server × client × mode cell under one
// ruleset, applicable or not.
func grid(topos []rig.Topology, rs rig.Ruleset, clients []rig.ClientKind) []cell {
	var out []cell
	for _, t := range topos {
		for _, s := range allServers() {
			for _, c := range clients {
				for _, m := range rig.Modes() {
					out = append(out, cell{t, s, c, m, rs})
				}
			}
		}
	}
	return out
}

func applicableJobs(cells []cell) []job {
	var out []job
	for _, ce := range cells {
		if ok, _ := ce.applicable(); ok {
			out = append(out, job{ce, cases()})
		}
	}
	return out
}

// notApplicable returns the skipped cells of the full grid, the local
// topologies included, with reasons, grouped by reason.
func notApplicable() map[string][]cell {
	cells := grid(topologies(), rig.IPTables, rig.Clients())
	cells = append(cells, grid(rig.LocalTopologies(), rig.IPTables, rig.Clients())...)
	out := map[string][]cell{}
	for _, ce := range cells {
		if ok, why := ce.applicable(); !ok {
			out[why] = append(out[why], ce)
		}
	}
	return out
}

// slice is the representative subset `go test ./...` runs: every
// topology, mode, server (and the MasqueradeAddress configuration) and
// client at least once, the NAT rewrites in both directions, and the
// 200-file session once per NAT direction.
func slice() []job {
	all := cases()
	return []job{
		{cell{rig.ClientNAT, server{rig.Vsftpd, false}, rig.Curl, rig.PORT, rig.IPTables}, all},
		{cell{rig.ClientNAT, server{rig.PureFTPd, false}, rig.Tnftp, rig.EPRT, rig.IPTables}, []caseKind{download, list}},
		{cell{rig.ClientNAT, server{rig.ProFTPD, false}, rig.Ftplib, rig.EPSV, rig.IPTables}, []caseKind{download}},
		{cell{rig.ServerForward, server{rig.Vsftpd, false}, rig.GoFTP, rig.PASV, rig.IPTables}, []caseKind{download, upload, many}},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PASV, rig.IPTables}, []caseKind{download, list}},
		{cell{rig.ServerForward, server{rig.PureFTPd, false}, rig.Lftp, rig.EPSV, rig.IPTables}, []caseKind{download, upload}},
		{cell{rig.Routed, server{rig.ProFTPD, false}, rig.Lftp, rig.PASV, rig.IPTables}, []caseKind{download, list}},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.Ftplib, rig.PORT, rig.IPTables}, []caseKind{download, upload}},
		{cell{rig.Routed6, server{rig.PureFTPd, false}, rig.Curl, rig.EPSV, rig.IPTables}, []caseKind{download, list}},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Tnftp, rig.EPRT, rig.IPTables}, []caseKind{download, upload}},
		{cell{rig.Routed6, server{rig.ProFTPD, false}, rig.GoFTP, rig.EPSV, rig.IPTables}, []caseKind{download}},
	}
}

// localSlice is the representative subset of the local topologies: every
// local topology, under both rulesets, every server on the host, every
// client on a host, every mode, and the rewrites of the router's own
// client and server.
func localSlice() []job {
	all := cases()
	return []job{
		{cell{rig.HostServer, server{rig.Vsftpd, false}, rig.Curl, rig.PASV, rig.IPTables}, all},
		{cell{rig.HostServer, server{rig.ProFTPD, false}, rig.Lftp, rig.EPSV, rig.IPTables}, []caseKind{download}},
		{cell{rig.HostServer, server{rig.PureFTPd, false}, rig.Curl, rig.PASV, rig.NFTables}, []caseKind{download, list}},
		{cell{rig.HostServer6, server{rig.PureFTPd, false}, rig.GoFTP, rig.EPSV, rig.IPTables}, []caseKind{download}},
		{cell{rig.HostServer6, server{rig.Vsftpd, false}, rig.Curl, rig.EPRT, rig.NFTables}, []caseKind{download}},
		{cell{rig.HostClient, server{rig.Vsftpd, false}, rig.Tnftp, rig.PORT, rig.IPTables}, []caseKind{download, upload}},
		{cell{rig.HostClient, server{rig.ProFTPD, false}, rig.Curl, rig.EPRT, rig.NFTables}, []caseKind{download}},
		{cell{rig.HostClient6, server{rig.Vsftpd, false}, rig.Lftp, rig.EPRT, rig.IPTables}, []caseKind{download}},
		{cell{rig.HostClient6, server{rig.PureFTPd, false}, rig.Curl, rig.EPSV, rig.NFTables}, []caseKind{download}},
		{cell{rig.RouterLocalClient, server{rig.Vsftpd, false}, rig.Ftplib, rig.PORT, rig.IPTables}, []caseKind{download, many}},
		{cell{rig.RouterLocalClient, server{rig.PureFTPd, false}, rig.Curl, rig.EPRT, rig.NFTables}, []caseKind{download}},
		{cell{rig.RouterLocalServer, server{rig.Vsftpd, false}, rig.Curl, rig.PASV, rig.IPTables}, []caseKind{download, many}},
		{cell{rig.RouterLocalServer, server{rig.ProFTPD, true}, rig.Tnftp, rig.PASV, rig.NFTables}, []caseKind{download}},
	}
}

// filter keeps the jobs whose "topology/server/client/mode/case" names
// contain every comma-separated term of spec (case-insensitive). An empty
// spec keeps everything.
func filter(jobs []job, spec string) []job {
	if spec == "" {
		return jobs
	}
	terms := strings.Split(strings.ToLower(spec), ",")
	var out []job
	for _, j := range jobs {
		var keep []caseKind
		for _, k := range j.cases {
			name := strings.ToLower(j.cell.String() + "/" + k.String())
			if !slices.ContainsFunc(terms, func(t string) bool { return !strings.Contains(name, t) }) {
				keep = append(keep, k)
			}
		}
		if len(keep) > 0 {
			out = append(out, job{j.cell, keep})
		}
	}
	return out
}
