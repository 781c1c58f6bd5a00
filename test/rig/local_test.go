package rig

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestLocalAddresses pins the address plan and the nodes of the
// topologies with an FTP endpoint on the firewall host.
func TestLocalAddresses(t *testing.T) {
	tests := []struct {
		topo           Topology
		fam            Family
		client, server Node
		// client, client public, server, server public, client ns, server ns
		want [6]string
	}{
		{HostServer, IPv4, Client, Router, [6]string{"198.51.100.30", "198.51.100.30", "198.51.100.1", "198.51.100.1", "198.51.100.30", "192.0.2.20"}},
		{HostServer6, IPv6, Client, Router, [6]string{"2001:db8:2::30", "2001:db8:2::30", "2001:db8:2::1", "2001:db8:2::1", "2001:db8:2::30", "2001:db8:1::20"}},
		{HostClient, IPv4, Router, Server, [6]string{"198.51.100.1", "198.51.100.1", "198.51.100.20", "198.51.100.20", "192.0.2.10", "198.51.100.20"}},
		{HostClient6, IPv6, Router, Server, [6]string{"2001:db8:2::1", "2001:db8:2::1", "2001:db8:2::20", "2001:db8:2::20", "2001:db8:1::10", "2001:db8:2::20"}},
		{RouterLocalClient, IPv4, Router, Server, [6]string{"192.0.2.1", "198.51.100.1", "198.51.100.20", "198.51.100.20", "192.0.2.10", "198.51.100.20"}},
		{RouterLocalClient, IPv6, Router, Server, [6]string{"2001:db8:2::1", "2001:db8:2::1", "2001:db8:2::20", "2001:db8:2::20", "2001:db8:1::10", "2001:db8:2::20"}},
		{RouterLocalServer, IPv4, Client, Router, [6]string{"198.51.100.30", "198.51.100.30", "192.0.2.1", "198.51.100.1", "198.51.100.30", "192.0.2.20"}},
	}
	for _, tc := range tests {
		a := tc.topo.Addresses(tc.fam)
		got := [6]string{a.Client.String(), a.ClientPublic.String(), a.Server.String(),
			a.ServerPublic.String(), a.ClientNS.String(), a.ServerNS.String()}
		if got != tc.want {
			t.Errorf("%v IPv%d: Addresses = %v, want %v", tc.topo, tc.fam, got, tc.want)
		}
		if tc.topo.ClientNode() != tc.client || tc.topo.ServerNode() != tc.server {
			t.Errorf("%v: client on %v, server on %v; want %v, %v", tc.topo, tc.topo.ClientNode(), tc.topo.ServerNode(), tc.client, tc.server)
		}
		if !tc.topo.Local() || tc.topo.Family() != tc.fam && tc.topo != RouterLocalClient {
			t.Errorf("%v: Local %v, family %v", tc.topo, tc.topo.Local(), tc.topo.Family())
		}
	}
	for _, topo := range []Topology{ClientNAT, ServerForward, Routed, Routed6} {
		if topo.Local() || topo.strictInput() || topo.ClientNode() != Client || topo.ServerNode() != Server {
			t.Errorf("%v: local %v, strict INPUT %v", topo, topo.Local(), topo.strictInput())
		}
		a := topo.Addresses(topo.Family())
		if a.ClientNS != a.Client || a.ServerNS != a.Server {
			t.Errorf("%v: namespaces %v/%v, endpoints %v/%v", topo, a.ClientNS, a.ServerNS, a.Client, a.Server)
		}
	}
	if n := len(Topologies()); n != 10 {
		t.Errorf("%d topologies, want 10", n)
	}
}

// chainRules returns the -A lines of chain in an iptables-restore script.
func chainRules(rules, chain string) []string {
	var out []string
	for l := range strings.Lines(rules) {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

func TestLocalIPTablesRules(t *testing.T) {
	const (
		lo          = "-A INPUT -i lo -j ACCEPT"
		invalid     = `-A INPUT -m conntrack --ctstate INVALID -m comment --comment "rig: invalid drop" -j DROP`
		established = "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
		ns          = "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-solicitation -j ACCEPT"
		na          = "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-advertisement -j ACCEPT"
		ctl         = "-A INPUT -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT"
		ctl2121     = "-A INPUT -p tcp --dport 2121 -m conntrack --ctstate NEW -j ACCEPT"
		helperPre   = "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp"
		helperOut   = "-A OUTPUT -p tcp --dport 21 -j CT --helper ftp"
	)
	tests := []struct {
		name          string
		topo          Topology
		fam           Family
		o             FirewallOptions
		input         []string
		forward       int // rules in FORWARD
		raw, has, not []string
	}{
		{name: "HostServer/4", topo: HostServer, fam: IPv4,
			input: []string{lo, invalid, established, ctl}, not: []string{"MASQUERADE", "DNAT", "CT --helper"}},
		{name: "HostServer/6/helper", topo: HostServer, fam: IPv6, o: FirewallOptions{KernelHelper: true},
			input: []string{lo, invalid, established, ns, na, ctl}, raw: []string{helperPre}},
		{name: "HostClient/4/helper", topo: HostClient, fam: IPv4, o: FirewallOptions{KernelHelper: true},
			input: []string{lo, invalid, established, ctl}, raw: []string{helperPre, helperOut}},
		{name: "RouterLocalClient/4/helper", topo: RouterLocalClient, fam: IPv4, o: FirewallOptions{KernelHelper: true},
			input: []string{lo, invalid, established, ctl}, forward: 3, raw: []string{helperPre, helperOut},
			has: []string{"-A POSTROUTING -o outside -j MASQUERADE"}},
		{name: "RouterLocalServer/4/2121", topo: RouterLocalServer, fam: IPv4,
			o:     FirewallOptions{KernelHelper: true, ControlPorts: []uint16{2121}},
			input: []string{lo, invalid, established, ctl, ctl2121}, forward: 3,
			raw: []string{"-A PREROUTING -p tcp --dport 2121 -j CT --helper ftp"},
			has: []string{"-A PREROUTING -i outside -d 198.51.100.1 -p tcp --dport 2121 -j DNAT --to-destination 192.0.2.1:21",
				"-A POSTROUTING -o outside -j MASQUERADE"}},
		{name: "RouterLocalServer/6", topo: RouterLocalServer, fam: IPv6,
			input: []string{lo, invalid, established, ns, na, ctl}, forward: 3, not: []string{"*nat"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rules, err := IPTablesRules(tc.topo, tc.fam, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got := chainRules(rules, "INPUT"); !slices.Equal(got, tc.input) {
				t.Errorf("INPUT rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.input, "\n"))
			}
			if !strings.Contains(rules, ":INPUT DROP [0:0]\n") || !strings.Contains(rules, ":FORWARD DROP [0:0]\n") {
				t.Errorf("INPUT or FORWARD policy is not DROP:\n%s", rules)
			}
			if got := len(chainRules(rules, "FORWARD")); got != tc.forward {
				t.Errorf("%d FORWARD rules, want %d", got, tc.forward)
			}
			raw, _, _ := strings.Cut(rules, "COMMIT")
			var gotRaw []string
			for l := range strings.Lines(raw) {
				if strings.HasPrefix(l, "-A ") {
					gotRaw = append(gotRaw, strings.TrimSpace(l))
				}
			}
			if !slices.Equal(gotRaw, tc.raw) {
				t.Errorf("raw rules %q, want %q", gotRaw, tc.raw)
			}
			checkContains(t, rules, tc.has, tc.not)
		})
	}
}

func TestNFTRules(t *testing.T) {
	admin := AdminRules{NFTTable: "set pinholes { type ipv4_addr; }", NFTInput: "ip saddr @pinholes accept", NFTForward: "jump alg_forward", NFT: "table ip other {\n}"}
	rules, err := NFTRules(RouterLocalClient, FirewallOptions{KernelHelper: true, Admin: admin})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table inet filter {\n\tct helper ftp {\n\t\ttype \"ftp\" protocol tcp\n\t\tl3proto inet\n\t}\n\tset pinholes { type ipv4_addr; }\n",
		"\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tip saddr @pinholes accept\n\t\tiif \"lo\" accept\n" +
			"\t\tct state invalid counter drop comment \"rig: invalid drop\"\n\t\tct state established,related accept\n" +
			"\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n\t\ttcp dport 21 ct state new accept\n" +
			"\t\tcounter comment \"rig: policy drop\"\n\t}\n",
		"\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tjump alg_forward\n" +
			"\t\tct state invalid counter drop comment \"rig: invalid drop\"\n",
		"\t\tiifname \"inside\" oifname \"outside\" ct state new accept\n",
		"chain helper_prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\t\ttcp dport 21 ct helper set \"ftp\"\n",
		"chain helper_output {\n\t\ttype filter hook output priority mangle; policy accept;\n\t\ttcp dport 21 ct helper set \"ftp\"\n",
		"\t\toifname \"outside\" masquerade\n",
		"}\ntable ip other {\n}\n",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks\n%s\nin\n%s", want, rules)
		}
	}
	// A server on the host: no forwarding, no helper on output.
	rules, err = NFTRules(HostServer, FirewallOptions{KernelHelper: true, ControlPorts: []uint16{21, 2121}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tcp dport { 21, 2121 } ct state new accept", "tcp dport { 21, 2121 } ct helper set \"ftp\"",
		"chain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n"} {
		if !strings.Contains(rules, want) {
			t.Errorf("HostServer ruleset lacks %q:\n%s", want, rules)
		}
	}
	for _, not := range []string{"helper_output", "table ip nat", "masquerade"} {
		if strings.Contains(rules, not) {
			t.Errorf("HostServer ruleset has %q:\n%s", not, rules)
		}
	}
	// A forwarded topology keeps input open and publishes the inside
	// server in both families.
	rules, err = NFTRules(ServerForward, FirewallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"type filter hook input priority filter; policy accept;\n\t}\n",
		`iifname "outside" oifname "inside" ip daddr 192.0.2.20 tcp dport 21 ct state new accept`,
		`iifname "outside" oifname "inside" ip6 daddr 2001:db8:1::20 tcp dport 21 ct state new accept`,
		`iifname "outside" ip daddr 198.51.100.1 tcp dport 21 dnat to 192.0.2.20:21`} {
		if !strings.Contains(rules, want) {
			t.Errorf("ServerForward ruleset lacks %q:\n%s", want, rules)
		}
	}
	if _, err := NFTRules(Topology(0), FirewallOptions{}); !errors.Is(err, ErrTopology) {
		t.Errorf("unknown topology: err %v, want ErrTopology", err)
	}
}

// nftListing is real `nft -j list table inet filter` output (nftables
// 1.0.6), abridged to the rules: a tagged INVALID drop that counted 2,
// an untagged accept, and the tagged policy counter at 5.
const nftListing = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "filter", "handle": 1}},
{"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 5, "comment": "rig: invalid drop", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"counter": {"packets": 2, "bytes": 80}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 6, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 9, "comment": "rig: policy drop", "expr": [{"counter": {"packets": 5, "bytes": 300}}]}}]}`

func TestParseNFTCounters(t *testing.T) {
	for _, tc := range []struct {
		comment string
		packets uint64
		rules   int
	}{{InvalidDropComment, 2, 1}, {PolicyDropComment, 5, 1}, {"absent", 0, 0}} {
		n, rules, err := parseNFTCounters([]byte(nftListing), tc.comment)
		if err != nil || n != tc.packets || rules != tc.rules {
			t.Errorf("%q: %d packets in %d rules (%v), want %d in %d", tc.comment, n, rules, err, tc.packets, tc.rules)
		}
	}
	noCounter := `{"nftables": [{"rule": {"comment": "rig: invalid drop", "expr": [{"drop": null}]}}]}`
	if _, _, err := parseNFTCounters([]byte(noCounter), InvalidDropComment); !errors.Is(err, ErrCounter) {
		t.Errorf("rule without counter: err %v, want ErrCounter", err)
	}
	if _, _, err := parseNFTCounters([]byte("Error: No such file"), InvalidDropComment); !errors.Is(err, ErrCounter) {
		t.Errorf("not JSON: err %v, want ErrCounter", err)
	}
}
