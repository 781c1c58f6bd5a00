package matrix

import (
	"testing"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestSliceCoverage checks that the default slice keeps its promise:
// every topology, mode, server configuration, client and case at least
// once, only applicable cells, and the 200-file session in both NAT
// directions.
func TestSliceCoverage(t *testing.T) {
	seen := map[string]bool{}
	manyNAT := map[rig.Topology]bool{}
	for _, j := range slice() {
		if ok, why := j.applicable(); !ok {
			t.Errorf("slice cell %v is not applicable: %s", j.cell, why)
		}
		seen[j.topo.String()] = true
		seen[j.srv.String()] = true
		seen[j.client.String()] = true
		seen[j.mode.String()] = true
		for _, k := range j.cases {
			seen[k.String()] = true
			if k == many && j.needsRewrite() {
				manyNAT[j.topo] = true
			}
		}
	}
	var want []string
	for _, x := range topologies() {
		want = append(want, x.String())
	}
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
			t.Errorf("slice never uses %s", w)
		}
	}
	if !manyNAT[rig.ClientNAT] || !manyNAT[rig.ServerForward] {
		t.Errorf("200-file session with rewrites only in %v, want ClientNAT and ServerForward", manyNAT)
	}
}

// TestApplicable pins the N/A rules documented in test/README.md.
func TestApplicable(t *testing.T) {
	tests := []struct {
		c    cell
		want bool
	}{
		{cell{rig.ClientNAT, server{rig.Vsftpd, false}, rig.Curl, rig.PORT}, true},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Curl, rig.PORT}, false},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Tnftp, rig.PASV}, false},
		{cell{rig.Routed6, server{rig.Vsftpd, false}, rig.Lftp, rig.EPRT}, true},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.Lftp, rig.EPRT}, false},
		{cell{rig.Routed, server{rig.Vsftpd, false}, rig.GoFTP, rig.PORT}, false},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PASV}, true},
		{cell{rig.ServerForward, server{rig.ProFTPD, true}, rig.Curl, rig.PORT}, false},
		{cell{rig.Routed, server{rig.ProFTPD, true}, rig.Curl, rig.PASV}, false},
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
