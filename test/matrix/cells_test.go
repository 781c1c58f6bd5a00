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

// cell is one server × client × mode combination on one topology.
type cell struct {
	topo   rig.Topology
	srv    server
	client rig.ClientKind
	mode   rig.Mode
}

func (c cell) String() string {
	return fmt.Sprintf("%v/%v/%v/%v", c.topo, c.srv, c.client, c.mode)
}

// applicable reports whether a cell is meaningful, and if not why. These
// are the N/A cells of the matrix (see test/README.md).
func (c cell) applicable() (bool, string) {
	if ok, why := c.client.Supports(c.mode, c.topo.Family()); !ok {
		return false, why
	}
	if c.srv.masq && (c.topo != rig.ServerForward || c.srv.kind != rig.ProFTPD) {
		return false, "MasqueradeAddress matters only for a server behind the port forward"
	}
	if c.srv.masq && c.mode.Active() {
		return false, "MasqueradeAddress changes passive replies only"
	}
	return true, ""
}

// needsPinhole reports whether the data connection crosses the firewall
// against its policy, so ftpalg must open a pinhole: toward an inside
// server in passive mode, toward a masqueraded client in active mode.
// The other direction is new inside-to-outside traffic, which the
// firewall accepts anyway; ftpalg must merely not break it.
func (c cell) needsPinhole() bool {
	if c.topo == rig.ClientNAT {
		return c.mode.Active()
	}
	return !c.mode.Active()
}

// needsRewrite reports whether the announced address is a private one the
// peer cannot reach: PORT/EPRT from behind MASQUERADE, 227 from behind the
// port forward unless the server already announces the public address.
func (c cell) needsRewrite() bool {
	switch {
	case c.topo == rig.ClientNAT:
		return c.mode.Active()
	case c.topo == rig.ServerForward:
		return c.mode == rig.PASV && !c.srv.masq
	}
	return false
}

// allServers are the server configurations of the full matrix.
func allServers() []server {
	return []server{{rig.Vsftpd, false}, {rig.ProFTPD, false}, {rig.PureFTPd, false}, {rig.ProFTPD, true}}
}

// topologies are the rig's topologies, in the order printed.
func topologies() []rig.Topology {
	return []rig.Topology{rig.ClientNAT, rig.ServerForward, rig.Routed, rig.Routed6}
}

// job is a cell with the cases to run in it.
type job struct {
	cell
	cases []caseKind
}

// fullMatrix returns every applicable cell with every case.
func fullMatrix() []job {
	var out []job
	for _, t := range topologies() {
		for _, s := range allServers() {
			for _, c := range rig.Clients() {
				for _, m := range rig.Modes() {
					ce := cell{t, s, c, m}
					if ok, _ := ce.applicable(); ok {
						out = append(out, job{ce, cases()})
					}
				}
			}
		}
	}
	return out
}

// notApplicable returns the skipped cells of the full grid with reasons,
// grouped by reason.
func notApplicable() map[string][]cell {
	out := map[string][]cell{}
	for _, t := range topologies() {
		for _, s := range allServers() {
			for _, c := range rig.Clients() {
				for _, m := range rig.Modes() {
					ce := cell{t, s, c, m}
					if ok, why := ce.applicable(); !ok {
						out[why] = append(out[why], ce)
					}
				}
			}
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
		{cell{rig.ClientNAT, server{rig.Vsftpd, false}, rig.Curl, rig.PORT}, all},
		{cell{rig.ClientNAT, server{rig.PureFTPd, false}, rig.Tnftp, rig.EPRT}, []caseKind{download, list}},
		{cell{rig.ClientNAT, server{rig.ProFTPD, false}, rig.Ftplib, rig.EPSV}, []caseKind{download}},
		{cell{rig.ServerForward, server{rig.Vsftpd, false}, rig.GoFTP, rig.PASV}, []caseKind{download, upload, many}},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PASV}, []caseKind{download, list}},
		{cell{rig.ServerForward, server{rig.PureFTPd, false}, rig.Lftp, rig.EPSV}, []caseKind{download, upload}},
		{cell{rig.Routed, server{rig.ProFTPD, false}, rig.Lftp, rig.PASV}, []caseKind{download, list}},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.Ftplib, rig.PORT}, []caseKind{download, upload}},
		{cell{rig.Routed6, server{rig.PureFTPd, false}, rig.Curl, rig.EPSV}, []caseKind{download, list}},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Tnftp, rig.EPRT}, []caseKind{download, upload}},
		{cell{rig.Routed6, server{rig.ProFTPD, false}, rig.GoFTP, rig.EPSV}, []caseKind{download}},
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
