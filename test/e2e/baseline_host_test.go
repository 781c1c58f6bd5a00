//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// localFileSize is the download of TestBaselineLocal: enough for many
// windows, small enough that 20-odd cases stay quick.
const localFileSize = 1 << 20

// localCase is one TestBaselineLocal case: a data-connection mode on a
// topology with an FTP endpoint on the firewall host, under one ruleset.
type localCase struct {
	topo    rig.Topology
	mode    rig.Mode
	ruleset rig.Ruleset
	server  rig.ServerKind
	client  rig.ClientKind
	// ports is WithControlPorts (nil: 21).
	ports []uint16
	// promiscuous makes vsftpd connect to an untranslated PORT address
	// instead of refusing it, so the host's firewall has to stop it.
	promiscuous bool
	// failure says how the case fails without an ALG: a reply the client
	// must see (and with policy set, a drop the firewall must count);
	// "" for a mode that needs no ALG and must pass either way.
	failure string
	policy  bool
	// helped is what the case must show with the kernel helper: a reply
	// the client sees (passive) or a command the server logs (active).
	helped string
}

func (c localCase) name(helper bool) string {
	n := fmt.Sprintf("%v/%v/%v/%v/%v", c.topo, c.ruleset, c.server, c.client, c.mode)
	if len(c.ports) > 0 {
		n += fmt.Sprintf("/port%d", c.ports[0])
	}
	if c.promiscuous {
		n += "/promiscuous"
	}
	if helper {
		return n + "/kernel-helper"
	}
	return n + "/no-helper"
}

// localCases are the cases of TestBaselineLocal: for every local topology
// the modes that need an ALG, with every server on the host and every
// client on a host, and the modes that need none once each, all under
// both rulesets. Without full only the first case of each topology runs.
func localCases(full bool) []localCase {
	var out []localCase
	add := func(c localCase, slice bool) {
		if !slice && !full {
			return
		}
		for _, rs := range []rig.Ruleset{rig.IPTables, rig.NFTables} {
			c.ruleset = rs
			out = append(out, c)
		}
	}
	// A server on the host: the client's passive data SYN meets INPUT.
	add(localCase{topo: rig.HostServer, mode: rig.PASV, server: rig.Vsftpd, client: rig.Curl,
		failure: "(198,51,100,1,", policy: true, helped: "(198,51,100,1,"}, true)
	add(localCase{topo: rig.HostServer, mode: rig.EPSV, server: rig.ProFTPD, client: rig.Lftp,
		failure: "229 ", policy: true, helped: "229 "}, false)
	add(localCase{topo: rig.HostServer, mode: rig.PASV, server: rig.PureFTPd, client: rig.Ftplib,
		failure: "(198,51,100,1,", policy: true, helped: "(198,51,100,1,"}, false)
	add(localCase{topo: rig.HostServer, mode: rig.EPRT, server: rig.Vsftpd, client: rig.Tnftp}, false)
	add(localCase{topo: rig.HostServer6, mode: rig.EPSV, server: rig.Vsftpd, client: rig.Curl,
		failure: "229 ", policy: true, helped: "229 "}, true)
	add(localCase{topo: rig.HostServer6, mode: rig.EPRT, server: rig.PureFTPd, client: rig.Lftp}, false)
	// A client on the host: the server's active data SYN meets INPUT.
	add(localCase{topo: rig.HostClient, mode: rig.PORT, server: rig.Vsftpd, client: rig.Curl,
		failure: "425 ", policy: true, helped: `"PORT 198,51,100,1,`}, true)
	add(localCase{topo: rig.HostClient, mode: rig.EPRT, server: rig.Vsftpd, client: rig.Tnftp,
		failure: "425 ", policy: true, helped: `"EPRT |1|198.51.100.1|`}, false)
	// proftpd retries the dropped SYN for longer than the client waits,
	// so the client gives up before any 425.
	add(localCase{topo: rig.HostClient, mode: rig.PORT, server: rig.ProFTPD, client: rig.Ftplib,
		failure: "200 PORT command successful", policy: true}, false)
	add(localCase{topo: rig.HostClient, mode: rig.PASV, server: rig.PureFTPd, client: rig.Lftp}, false)
	add(localCase{topo: rig.HostClient6, mode: rig.EPRT, server: rig.Vsftpd, client: rig.Curl,
		failure: "425 ", policy: true, helped: `"EPRT |2|2001:db8:2::1|`}, true)
	add(localCase{topo: rig.HostClient6, mode: rig.EPSV, server: rig.ProFTPD, client: rig.Tnftp}, false)
	// The router's own client behind its own MASQUERADE: the server
	// refuses the untranslated PORT; told to try it, the router's INPUT
	// drops it.
	add(localCase{topo: rig.RouterLocalClient, mode: rig.PORT, server: rig.Vsftpd, client: rig.Curl,
		failure: "500 Illegal PORT command", helped: `"PORT 198,51,100,1,`}, true)
	add(localCase{topo: rig.RouterLocalClient, mode: rig.PORT, server: rig.Vsftpd, client: rig.Curl, promiscuous: true,
		failure: "425 ", policy: true, helped: `"PORT 198,51,100,1,`}, false)
	add(localCase{topo: rig.RouterLocalClient, mode: rig.EPRT, server: rig.Vsftpd, client: rig.Curl,
		failure: "500 Illegal EPRT command", helped: `"EPRT |1|198.51.100.1|`}, false)
	add(localCase{topo: rig.RouterLocalClient, mode: rig.EPSV, server: rig.Vsftpd, client: rig.Tnftp}, false)
	// The router's own server published by DNAT: its 227 names the
	// inside address, and the data SYN to the public one meets INPUT.
	add(localCase{topo: rig.RouterLocalServer, mode: rig.PASV, server: rig.Vsftpd, client: rig.Curl,
		failure: "(192,0,2,1,", policy: true, helped: "(198,51,100,1,"}, true)
	add(localCase{topo: rig.RouterLocalServer, mode: rig.EPSV, server: rig.ProFTPD, client: rig.Curl,
		failure: "229 ", policy: true, helped: "229 "}, false)
	// tnftp would refuse the untranslated 227 itself ("Passive mode
	// address mismatch"); curl tries it, so the firewall must stop it.
	add(localCase{topo: rig.RouterLocalServer, mode: rig.PASV, server: rig.Vsftpd, client: rig.Curl, ports: []uint16{2121},
		failure: "(192,0,2,1,", policy: true, helped: "(198,51,100,1,"}, false)
	add(localCase{topo: rig.RouterLocalServer, mode: rig.PORT, server: rig.PureFTPd, client: rig.Ftplib}, false)
	return out
}

// TestBaselineLocal is TestBaseline for the topologies with an FTP
// endpoint on the firewall host (server on a host, client on a host, the
// router's own client behind its MASQUERADE, the router's own server
// behind its DNAT), under the iptables script and the nftables-native
// ruleset. Every case that needs an ALG fails without one, for the reason
// it claims (the host's INPUT policy drop, counted, or the server's
// refusal of an untranslated PORT), and passes with the kernel's FTP
// helper (attached in raw PREROUTING, and raw OUTPUT for local clients),
// intact and with the INVALID counters of INPUT and FORWARD at zero. The
// modes that need no ALG pass either way. ftpalg must match these
// results.
//
// By default (about 25 s on 2 cores) it runs one ALG-needing case per
// topology: without a helper and with it under the iptables script, and
// with it under the nftables ruleset (TestLocalTopologies in test/rig
// proves that ruleset as strict). FTPALG_BASELINE=full (make baseline)
// runs every case under both rulesets, with and without the helper.
func TestBaselineLocal(t *testing.T) {
	full := os.Getenv("FTPALG_BASELINE") == "full"
	for _, tc := range localCases(full) {
		helpers := []bool{true}
		if tc.failure != "" && (full || tc.ruleset == rig.IPTables) {
			helpers = []bool{false, true}
		}
		for _, helper := range helpers {
			t.Run(tc.name(helper), func(t *testing.T) {
				t.Parallel()
				runLocalCase(t, tc, helper)
			})
		}
	}
}

func runLocalCase(t *testing.T, tc localCase, helper bool) {
	opts := []rig.Option{rig.WithPrefix(nsPrefix)}
	if helper {
		opts = append(opts, rig.WithKernelHelper())
	}
	if tc.ruleset == rig.NFTables {
		opts = append(opts, rig.WithNFTables())
	}
	if tc.ports != nil {
		opts = append(opts, rig.WithControlPorts(tc.ports...))
	}
	r := rig.New(t, tc.topo, opts...)
	var (
		s   *rig.FTPServer
		err error
	)
	if tc.promiscuous {
		s, err = r.StartVsftpd(rig.VsftpdOptions{PortPromiscuous: true})
	} else {
		s, err = r.StartServer(tc.server, rig.ServerOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.CreateFile("1m.bin", localFileSize)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "1m.bin")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := r.RunClient(ctx, tc.client, rig.Job{Op: rig.Get, Mode: tc.mode, Remote: []string{"1m.bin"},
		Local: out, User: s.User, Password: s.Password})
	t.Logf("%s: %v, %d bytes, err %v", tc.name(helper), res.Duration.Round(time.Millisecond), res.Bytes, err)
	wantOK := helper || tc.failure == ""
	switch {
	case wantOK && err != nil:
		t.Fatalf("transfer failed: %v\n%s", err, res.Stderr)
	case wantOK:
		if got, err := rig.FileSHA256(out); err != nil || got != want || res.Bytes != localFileSize {
			t.Errorf("got %d bytes with SHA-256 %s (%v), want %d bytes with %s", res.Bytes, got, err, localFileSize, want)
		}
		if tc.helped != "" {
			if tc.mode.Active() {
				wantLog(t, s, tc.helped)
			} else {
				wantReply(t, res, tc.helped)
			}
		}
	case err == nil:
		t.Fatalf("transfer succeeded (%d bytes), want failure", res.Bytes)
	case !errors.Is(err, rig.ErrTransfer):
		t.Fatalf("transfer failed for the wrong reason: %v", err)
	default:
		wantReply(t, res, tc.failure)
		if tc.policy {
			wantInputPolicyDrops(t, r)
		}
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("firewall host dropped %d INVALID packets (%v), want 0", n, err)
	}
}

// wantInputPolicyDrops asserts that the firewall host's INPUT policy
// refused something: the failure was the host firewall's doing.
func wantInputPolicyDrops(t *testing.T, r *rig.Rig) {
	t.Helper()
	_, n, err := r.InputCounters()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("the host's INPUT policy dropped nothing; the failure was not the firewall's")
	}
}
