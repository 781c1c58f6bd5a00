//go:build linux

// Package e2e holds end-to-end tests that run real FTP servers and clients
// through a router in network namespaces (see package test/rig).
package e2e

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/test/rig"
)

// nsPrefix names this file's namespaces (fc<pid><rand>{c,r,s}).
const nsPrefix = "fc"

// fileSize is large enough that a transfer spans many windows and
// seconds of a broken data path would show, small enough to stay fast.
const fileSize = 5 << 20

// TestBaseline runs the rig without ftpalg. It proves the rig can fail
// (active FTP from behind NAT, passive FTP to a server behind a port
// forward or a firewall, all without an ALG) and can succeed (the same
// with the kernel's FTP helper), each for the reason it claims, with the
// INVALID-drop counter at zero on every successful transfer. Later tests
// replace the kernel helper with ftpalg and must match these results.
func TestBaseline(t *testing.T) {
	tests := []struct {
		name   string
		topo   rig.Topology
		helper bool
		mode   rig.Mode
		upload bool
		vsftpd rig.VsftpdOptions
		wantOK bool
		// check asserts why the transfer succeeded or failed.
		check func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result)
	}{
		{
			name: "ClientNAT/PORT/no-helper/server-refuses",
			topo: rig.ClientNAT, mode: rig.PORT,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				// vsftpd sees PORT 192,0,2,10 from 198.51.100.1.
				wantReply(t, res, "500 Illegal PORT command")
			},
		},
		{
			name: "ClientNAT/PORT/no-helper/firewall-drops",
			topo: rig.ClientNAT, mode: rig.PORT,
			vsftpd: rig.VsftpdOptions{PortPromiscuous: true},
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				// vsftpd tries 192.0.2.10; the router refuses the SYN.
				wantReply(t, res, "425 ")
				wantPolicyDrops(t, r)
			},
		},
		{
			name: "ClientNAT/PORT/kernel-helper",
			topo: rig.ClientNAT, mode: rig.PORT, helper: true, wantOK: true,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				wantCommand(t, res, "PORT 192,0,2,10,")
				wantLog(t, s, `"PORT 198,51,100,1,`)
			},
		},
		{
			name: "ClientNAT/EPRT/kernel-helper",
			topo: rig.ClientNAT, mode: rig.EPRT, helper: true, wantOK: true,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				wantCommand(t, res, "EPRT |1|192.0.2.10|")
				wantLog(t, s, `"EPRT |1|198.51.100.1|`)
			},
		},
		{
			name: "ClientNAT/PORT/kernel-helper/upload",
			topo: rig.ClientNAT, mode: rig.PORT, helper: true, wantOK: true, upload: true,
			vsftpd: rig.VsftpdOptions{Upload: true},
		},
		{
			name: "ServerForward/PASV/no-helper",
			topo: rig.ServerForward, mode: rig.PASV,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				// The server announces its private address; the client's
				// SYN to it is refused by the router.
				wantReply(t, res, "(192,0,2,20,")
				wantPolicyDrops(t, r)
			},
		},
		{
			name: "ServerForward/PASV/kernel-helper",
			topo: rig.ServerForward, mode: rig.PASV, helper: true, wantOK: true,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				wantReply(t, res, "(198,51,100,1,")
			},
		},
		{
			name: "Routed/PASV/no-helper",
			topo: rig.Routed, mode: rig.PASV,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				wantReply(t, res, "(198,51,100,20,")
				wantPolicyDrops(t, r)
			},
		},
		{
			name: "Routed/PASV/kernel-helper",
			topo: rig.Routed, mode: rig.PASV, helper: true, wantOK: true,
		},
		{
			name: "Routed6/EPSV/kernel-helper",
			topo: rig.Routed6, mode: rig.EPSV, helper: true, wantOK: true,
			check: func(t *testing.T, r *rig.Rig, s *rig.FTPServer, res rig.Result) {
				wantReply(t, res, "229 ")
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var opts []rig.Option
			opts = append(opts, rig.WithPrefix(nsPrefix))
			if tc.helper {
				opts = append(opts, rig.WithKernelHelper())
			}
			r := rig.New(t, tc.topo, opts...)
			s, err := r.StartVsftpd(tc.vsftpd)
			if err != nil {
				t.Fatal(err)
			}
			local := t.TempDir()
			var (
				res             rig.Result
				wantSum, gotSum string
			)
			if tc.upload {
				in := filepath.Join(local, "up.bin")
				if wantSum, err = rig.WriteRandomFile(in, fileSize); err != nil {
					t.Fatal(err)
				}
				res, err = r.CurlPut(tc.mode, in, r.URL("upload/up.bin"))
				if err == nil {
					gotSum, err = rig.FileSHA256(filepath.Join(s.UploadDir, "up.bin"))
				}
			} else {
				if wantSum, err = s.CreateFile("5m.bin", fileSize); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(local, "5m.bin")
				res, err = r.CurlGet(tc.mode, r.URL("5m.bin"), out)
				if err == nil {
					gotSum, err = rig.FileSHA256(out)
				}
			}
			t.Logf("%v %v helper=%v: %v, %d bytes, exit %d, err %v",
				tc.topo, tc.mode, tc.helper, res.Duration.Round(1e6), res.Bytes, res.ExitCode, err)
			switch {
			case tc.wantOK && err != nil:
				t.Fatalf("transfer failed: %v", err)
			case tc.wantOK:
				if res.Bytes != fileSize || gotSum != wantSum {
					t.Errorf("transferred %d bytes with SHA-256 %s, want %d bytes with %s", res.Bytes, gotSum, fileSize, wantSum)
				}
				n, err := r.InvalidDrops()
				if err != nil {
					t.Fatal(err)
				}
				if n != 0 {
					t.Errorf("router dropped %d INVALID packets, want 0", n)
				}
			case err == nil:
				t.Fatalf("transfer succeeded (%d bytes), want failure", res.Bytes)
			case !errors.Is(err, rig.ErrTransfer):
				t.Fatalf("transfer failed for the wrong reason: %v", err)
			}
			if tc.check != nil {
				tc.check(t, r, s, res)
			}
		})
	}
}

func wantReply(t *testing.T, res rig.Result, substr string) {
	t.Helper()
	for _, l := range res.Replies {
		if strings.Contains(l, substr) {
			return
		}
	}
	t.Errorf("no server reply contains %q; replies:\n%s", substr, strings.Join(res.Replies, "\n"))
}

func wantCommand(t *testing.T, res rig.Result, prefix string) {
	t.Helper()
	for _, c := range res.Commands {
		if strings.HasPrefix(c, prefix) {
			return
		}
	}
	t.Errorf("client sent no command starting %q; sent:\n%s", prefix, strings.Join(res.Commands, "\n"))
}

func wantLog(t *testing.T, s *rig.FTPServer, substr string) {
	t.Helper()
	if !strings.Contains(s.Log(), substr) {
		t.Errorf("server log lacks %q", substr)
	}
}

// wantPolicyDrops asserts that the router's FORWARD policy refused
// something, i.e. the failure was the firewall's doing.
func wantPolicyDrops(t *testing.T, r *rig.Rig) {
	t.Helper()
	n, err := r.PolicyDrops()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("router's FORWARD policy dropped nothing; the failure was not the firewall's")
	}
}
