package matrix

import (
	"slices"
	"testing"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestSliceCoverage checks that the default slice keeps its promise:
// every topology, mode, server configuration, client and case at least
// once, only applicable cells, and the 200-file session in both NAT
// directions.
func TestSliceCoverage(t *testing.T) {
	var nets []string
	for _, x := range topologies() {
		nets = append(nets, x.String())
	}
	missing, manyNAT := coverage(t, slice(), nets)
	for _, w := range missing {
		t.Errorf("slice never uses %s", w)
	}
	if !manyNAT[rig.ClientNAT] || !manyNAT[rig.ServerForward] {
		t.Errorf("200-file session with rewrites only in %v, want ClientNAT and ServerForward", manyNAT)
	}
}

// coverage checks that every job is applicable and returns what the jobs
// never use of nets (rig names, see cell.net) and of every server
// configuration, client, mode and case, and the topologies whose 200-file
// session has rewrites.
func coverage(t *testing.T, jobs []job, nets []string) (missing []string, manyRewrite map[rig.Topology]bool) {
	t.Helper()
	seen := map[string]bool{}
	manyRewrite = map[rig.Topology]bool{}
	for _, j := range jobs {
		if ok, why := j.applicable(); !ok {
			t.Errorf("slice cell %v is not applicable: %s", j.cell, why)
		}
		for _, s := range []string{j.net(), j.srv.String(), j.client.String(), j.mode.String()} {
			seen[s] = true
		}
		for _, k := range j.cases {
			seen[k.String()] = true
			if k == many && j.needsRewrite() {
				manyRewrite[j.topo] = true
			}
		}
	}
	want := slices.Clone(nets)
	for _, x := range allServers() {
		want = append(want, x.String())
	}
	for _, x := range rig.Clients() {
		want = append(want, x.String())
	}
	for _, x := range rig.Modes() {
		want = append(want, x.String())
	}
	for _, x := range cases() {
		want = append(want, x.String())
	}
	for _, w := range want {
		if !seen[w] {
			missing = append(missing, w)
		}
	}
	return missing, manyRewrite
}

// TestApplicable pins the N/A rules documented in test/README.md.
func TestApplicable(t *testing.T) {
	tests := []struct {
		c    cell
		want bool
	}{
		{cell{rig.ClientNAT, server{rig.Vsftpd, false}, rig.Curl, rig.PORT, rig.IPTables}, true},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Curl, rig.PORT, rig.IPTables}, false},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Tnftp, rig.PASV, rig.IPTables}, false},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Lftp, rig.EPRT, rig.IPTables}, true},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.Lftp, rig.EPRT, rig.IPTables}, false},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.GoFTP, rig.PORT, rig.IPTables}, false},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PASV, rig.IPTables}, true},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PORT, rig.IPTables}, false},
		{cell{rig.Routed, server{rig.ProFTPD, true}, rig.Curl, rig.PASV, rig.IPTables}, false},
	}
	for _, tc := range tests {
		if got, why := tc.c.applicable(); got != tc.want {
			t.Errorf("%v applicable = %v (%s), want %v", tc.c, got, why, tc.want)
		}
	}
	if n := len(fullMatrix()); n != 190 {
		t.Errorf("full matrix has %d cells, want 190", n)
	}
}

// TestLocalSliceCoverage checks the local slice the way TestSliceCoverage
// checks the forwarded one: every local topology under both rulesets,
// every server configuration, client, mode and case at least once, only
// applicable cells, and the 200-file session through both of the
// router's own rewrites.
func TestLocalSliceCoverage(t *testing.T) {
	var nets []string
	for _, x := range rig.LocalTopologies() {
		nets = append(nets, x.String(), x.String()+"+nft")
	}
	missing, manyRewrite := coverage(t, localSlice(), nets)
	for _, w := range missing {
		t.Errorf("local slice never uses %s", w)
	}
	if !manyRewrite[rig.RouterLocalClient] || !manyRewrite[rig.RouterLocalServer] {
		t.Errorf("200-file session with rewrites only in %v, want RouterLocalClient and RouterLocalServer", manyRewrite)
	}
}

// TestLocalCells pins what the local cells need from an ALG and how many
// there are.
func TestLocalCells(t *testing.T) {
	tests := []struct {
		c                cell
		pinhole, rewrite bool
	}{
		{cell{rig.HostServer, server{rig.Vsftpd, false}, rig.Curl, rig.PASV, rig.IPTables}, true, false},
		{cell{rig.HostServer, server{rig.Vsftpd, false}, rig.Curl, rig.PORT, rig.IPTables}, false, false},
		{cell{rig.HostClient6, server{rig.Vsftpd, false}, rig.Curl, rig.EPRT, rig.NFTables}, true, false},
		{cell{rig.HostClient, server{rig.Vsftpd, false}, rig.Curl, rig.EPSV, rig.IPTables}, false, false},
		{cell{rig.RouterLocalClient, server{rig.Vsftpd, false}, rig.Curl, rig.PORT, rig.IPTables}, true, true},
		{cell{rig.RouterLocalClient, server{rig.Vsftpd, false}, rig.Curl, rig.PASV, rig.IPTables}, false, false},
		{cell{rig.RouterLocalServer, server{rig.Vsftpd, false}, rig.Curl, rig.PASV, rig.IPTables}, true, true},
		{cell{rig.RouterLocalServer, server{rig.Vsftpd, false}, rig.Curl, rig.EPSV, rig.IPTables}, true, false},
		{cell{rig.RouterLocalServer, server{rig.ProFTPD, true}, rig.Curl, rig.PASV, rig.IPTables}, true, false},
	}
	for _, tc := range tests {
		if ok, why := tc.c.applicable(); !ok {
			t.Errorf("%v not applicable: %s", tc.c, why)
		}
		if tc.c.needsPinhole() != tc.pinhole || tc.c.needsRewrite() != tc.rewrite {
			t.Errorf("%v: pinhole %v, rewrite %v; want %v, %v", tc.c, tc.c.needsPinhole(), tc.c.needsRewrite(), tc.pinhole, tc.rewrite)
		}
	}
	if got := (cell{rig.HostServer, server{rig.ProFTPD, true}, rig.Curl, rig.PASV, rig.IPTables}); func() bool { ok, _ := got.applicable(); return ok }() {
		t.Errorf("%v applicable: MasqueradeAddress without a port forward", got)
	}
	n, nft := 0, 0
	for _, j := range localMatrix() {
		n++
		if j.ruleset == rig.NFTables {
			nft++
		}
		// The nft cells prove a second control port on every local path.
		if want := j.ruleset == rig.NFTables; (j.controlPorts() != nil) != want {
			t.Errorf("%v: control ports %v", j.cell, j.controlPorts())
		}
	}
	for _, j := range fullMatrix() {
		if j.controlPorts() != nil {
			t.Errorf("forwarded %v: control ports %v, want 21 alone", j.cell, j.controlPorts())
		}
	}
	if n != 330 || nft != 62 {
		t.Errorf("local matrix has %d cells, %d under nft; want 330, 62", n, nft)
	}
}
