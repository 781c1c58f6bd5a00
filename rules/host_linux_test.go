package rules

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// envHostFirewall selects the host's firewall in TestHostPinholeTraffic's
// child: "iptables" (an admin script with INPUT policy DROP) or "nft" (an
// nftables-native ruleset with policy drop and ftpalg's fragment).
const envHostFirewall = "FTPALG_RULES_TEST_HOST_FW"

// Pinholes to endpoints on the firewall host itself (the router namespace
// of TestPinholeTraffic's diagram listens on its own addresses): a routed
// one, as for a passive-mode server or an active-mode client on the host,
// and a NAT'd one to the host's inside address, as for an active-mode
// client on the host behind its own MASQUERADE.
var (
	hostPlain = Pinhole{Peer: netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("198.51.100.1:2121"), Target: netip.MustParseAddrPort("198.51.100.1:2121")}
	hostNAT = Pinhole{Peer: netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("198.51.100.1:50000"), Target: netip.MustParseAddrPort("192.0.2.1:2121")}
	hostPlain6 = Pinhole{Peer: netip.MustParseAddr("2001:db8:2::20"),
		Public: netip.MustParseAddrPort("[2001:db8:2::1]:2121"), Target: netip.MustParseAddrPort("[2001:db8:2::1]:2121")}
)

// TestHostPinholeTraffic sends real TCP connections to a host whose INPUT
// is strict and checks that ftpalg's pinholes (role host) admit exactly the
// expected connection to a local listener, only while open, with both
// backends under an iptables script, and with the nftables backend under an
// nftables-native ruleset, where the fragment's rule is what admits it.
func TestHostPinholeTraffic(t *testing.T) {
	if inChild() {
		hostTrafficBody(t)
		return
	}
	requireRoot(t)
	requireNFT(t)
	for _, fw := range []string{"iptables", "nft"} {
		t.Run(fw, func(t *testing.T) {
			c, r, s := newFNNetns(t, "hc"), newFNNetns(t, "hr"), newFNNetns(t, "hs")
			wireRouterTopology(t, c, r, s)
			if fw == "iptables" {
				for _, f := range families {
					for _, args := range [][]string{
						{"-P", "INPUT", "DROP"},
						{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
						{"-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
						{"-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
						{"-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"},
					} {
						if f == IPv4 && args[2] == "ipv6-icmp" {
							continue
						}
						run(t, "ip", append([]string{"netns", "exec", r, f.command()}, args...)...)
					}
				}
			}
			startServer(t, r, "198.51.100.1:2121", "192.0.2.1:2121", "[2001:db8:2::1]:2121")
			runTestIn2(t, r, envClientNS+"="+c, envHostFirewall+"="+fw)
		})
	}
}

// runTestIn2 is runTestIn for a subtest: the child runs the top-level
// test, which reads its variant from the environment.
func runTestIn2(t *testing.T, ns string, env ...string) {
	t.Helper()
	top, _, _ := strings.Cut(t.Name(), "/")
	ctx := t.Context()
	cmd := execIn(ctx, t, ns, append(env, envChild+"=1"),
		"-test.run=^"+top+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+top) {
		t.Fatalf("test in netns %s failed: %v\n%s", ns, err, out)
	}
	t.Logf("output from netns %s:\n%s", ns, out)
}

func hostTrafficBody(t *testing.T) {
	clientNS := os.Getenv(envClientNS)
	cfg := nftConfig()
	cfg.Role = RoleHost
	type opener interface {
		Open(Pinhole) error
		Close(Pinhole) error
	}
	var backends []struct {
		name string
		fw   opener
	}
	n := newInstalledNFTable(t, cfg, time.Minute)
	backends = append(backends, struct {
		name string
		fw   opener
	}{"nftables", n})
	nftNative := os.Getenv(envHostFirewall) == "nft"
	if nftNative {
		// The admin's nftables-native ruleset, with ftpalg's fragment
		// included in its input chain; no admin iptables rules at all.
		frag, err := NFTFragment(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ruleset := "table inet filter {\n chain input {\n  type filter hook input priority filter; policy drop;\n" +
			"  iif \"lo\" accept\n  ct state invalid drop\n  ct state established,related accept\n" +
			"  meta l4proto ipv6-icmp accept\n" + frag + "\n }\n}\n"
		path := t.TempDir() + "/ruleset.nft"
		if err := os.WriteFile(path, []byte(ruleset), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "nft", "-f", path)
		t.Cleanup(func() { run(t, "nft", "delete", "table", "inet", "filter") })
	} else {
		tbl, err := NewTable(DefaultConfig(), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tbl.CloseAll() })
		backends = append(backends, struct {
			name string
			fw   opener
		}{"iptables", tbl})
	}
	for _, b := range backends {
		for _, tt := range []struct {
			name      string
			p         Pinhole
			otherPeer string
			direct    string // the target reached without the DNAT
		}{
			{"IPv4 local", hostPlain, "198.51.100.21", ""},
			{"IPv4 local NAT", hostNAT, "198.51.100.21", "192.0.2.1:2121"},
			{"IPv6 local", hostPlain6, "2001:db8:2::21", ""},
		} {
			if nftNative && tt.p != hostPlain {
				continue // this variant's subject is the admin's ruleset; one case shows it
			}
			t.Run(b.name+"/"+tt.name, func(t *testing.T) {
				peer, public := tt.p.Peer.String(), tt.p.Public.String()
				if dialFrom(t, clientNS, peer, public) {
					t.Fatalf("%s reached %s before the pinhole was opened", peer, public)
				}
				if err := b.fw.Open(tt.p); err != nil {
					t.Fatalf("Open: %v", err)
				}
				if !dialFrom(t, clientNS, peer, public) {
					t.Errorf("%s could not reach %s through open pinhole %s\n%s", peer, public, tt.p, run(t, "nft", "list", "ruleset"))
				}
				if dialFrom(t, clientNS, tt.otherPeer, public) {
					t.Errorf("%s reached %s through the pinhole for %s", tt.otherPeer, public, peer)
				}
				if tt.direct != "" && dialFrom(t, clientNS, peer, tt.direct) {
					t.Errorf("%s reached %s directly through NAT pinhole %s", peer, tt.direct, tt.p)
				}
				if err := b.fw.Close(tt.p); err != nil {
					t.Fatalf("Close: %v", err)
				}
				// nftables closes by expiring the elements within a jiffy.
				deadline := time.Now().Add(2 * time.Second)
				for dialFrom(t, clientNS, peer, public) {
					if time.Now().After(deadline) {
						t.Fatalf("%s still reaches %s after the pinhole was closed", peer, public)
					}
				}
			})
		}
	}
	if nftNative {
		// Without the fragment's rule the admin's drop wins even though
		// ftpalg's chain marked the packet and iptables would accept it.
		run(t, "nft", "flush", "chain", "inet", "filter", "input")
		run(t, "nft", "add", "rule", "inet", "filter", "input", "ct", "state", "established,related", "accept")
		run(t, "nft", "add", "rule", "inet", "filter", "input", "meta", "l4proto", "ipv6-icmp", "accept")
		if err := n.Open(hostPlain); err != nil {
			t.Fatal(err)
		}
		if dialFrom(t, clientNS, hostPlain.Peer.String(), hostPlain.Public.String()) {
			t.Error("a pinhole passed an nftables policy drop without the fragment's rule")
		}
		if err := n.Close(hostPlain); err != nil {
			t.Fatal(err)
		}
	}
}
