package rig

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestAddresses(t *testing.T) {
	tests := []struct {
		topo Topology
		fam  Family
		// client, client public, server, server public, router inside, router outside
		want [6]string
	}{
		{ClientNAT, IPv4, [6]string{"192.0.2.10", "198.51.100.1", "198.51.100.20", "198.51.100.20", "192.0.2.1", "198.51.100.1"}},
		{ClientNAT, IPv6, [6]string{"2001:db8:1::10", "2001:db8:1::10", "2001:db8:2::20", "2001:db8:2::20", "2001:db8:1::1", "2001:db8:2::1"}},
		{ServerForward, IPv4, [6]string{"198.51.100.30", "198.51.100.30", "192.0.2.20", "198.51.100.1", "192.0.2.1", "198.51.100.1"}},
		{ServerForward, IPv6, [6]string{"2001:db8:2::30", "2001:db8:2::30", "2001:db8:1::20", "2001:db8:1::20", "2001:db8:1::1", "2001:db8:2::1"}},
		{Routed, IPv4, [6]string{"192.0.2.10", "192.0.2.10", "198.51.100.20", "198.51.100.20", "198.51.100.1", "192.0.2.1"}},
		{Routed6, IPv6, [6]string{"2001:db8:1::10", "2001:db8:1::10", "2001:db8:2::20", "2001:db8:2::20", "2001:db8:2::1", "2001:db8:1::1"}},
	}
	for _, tc := range tests {
		t.Run(tc.topo.String()+"/"+string(rune('0'+tc.fam)), func(t *testing.T) {
			a := tc.topo.Addresses(tc.fam)
			got := [6]string{a.Client.String(), a.ClientPublic.String(), a.Server.String(),
				a.ServerPublic.String(), a.RouterInside.String(), a.RouterOutside.String()}
			if got != tc.want {
				t.Errorf("Addresses(%v) = %v, want %v", tc.fam, got, tc.want)
			}
			if a.Inside.Contains(a.Client) == a.Inside.Contains(a.Server) {
				t.Errorf("client %v and server %v on the same side of %v", a.Client, a.Server, a.Inside)
			}
			for _, h := range []netip.Addr{a.Client, a.Server} {
				if !a.Inside.Contains(h) && !a.Outside.Contains(h) {
					t.Errorf("%v is on neither network", h)
				}
			}
			if !a.Inside.Contains(a.RouterInside) || !a.Outside.Contains(a.RouterOutside) {
				t.Errorf("router addresses %v/%v not on %v/%v", a.RouterInside, a.RouterOutside, a.Inside, a.Outside)
			}
		})
	}
	if a := Topology(0).Addresses(IPv4); a.Server.IsValid() {
		t.Errorf("unknown topology has addresses %+v", a)
	}
	if a := ClientNAT.Addresses(Family(5)); a.Server.IsValid() {
		t.Errorf("unknown family has addresses %+v", a)
	}
}

// forwardRules returns the -A FORWARD lines of a ruleset, in order.
func forwardRules(rules string) []string { return chainRules(rules, "FORWARD") }

// checkContains checks that rules contains every string of has and none
// of not.
func checkContains(t *testing.T, rules string, has, not []string) {
	t.Helper()
	for _, s := range has {
		if !strings.Contains(rules, s) {
			t.Errorf("ruleset lacks %q:\n%s", s, rules)
		}
	}
	for _, s := range not {
		if strings.Contains(rules, s) {
			t.Errorf("ruleset has %q:\n%s", s, rules)
		}
	}
}

func TestFirewallRules(t *testing.T) {
	const (
		invalid     = `-A FORWARD -m conntrack --ctstate INVALID -m comment --comment "rig: invalid drop" -j DROP`
		established = "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
		outbound    = "-A FORWARD -i inside -o outside -m conntrack --ctstate NEW -j ACCEPT"
		helper      = "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp"
	)
	tests := []struct {
		name    string
		topo    Topology
		fam     Family
		helper  bool
		forward []string
		has     []string
		hasNot  []string
	}{
		{
			name: "ClientNAT/4", topo: ClientNAT, fam: IPv4,
			forward: []string{invalid, established, outbound},
			has:     []string{"-A POSTROUTING -o outside -j MASQUERADE"},
			hasNot:  []string{"DNAT", helper},
		},
		{
			name: "ClientNAT/4/helper", topo: ClientNAT, fam: IPv4, helper: true,
			forward: []string{invalid, established, outbound},
			has:     []string{helper},
		},
		{
			name: "ServerForward/4", topo: ServerForward, fam: IPv4,
			forward: []string{invalid, established, outbound,
				"-A FORWARD -i outside -o inside -d 192.0.2.20 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT"},
			has: []string{
				"-A PREROUTING -i outside -d 198.51.100.1 -p tcp --dport 21 -j DNAT --to-destination 192.0.2.20:21",
				"-A POSTROUTING -o outside -j MASQUERADE",
			},
		},
		{
			name: "Routed/4", topo: Routed, fam: IPv4,
			forward: []string{invalid, established, outbound,
				"-A FORWARD -i outside -o inside -d 198.51.100.20 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT"},
			hasNot: []string{"*nat\n-", "MASQUERADE", "DNAT"},
		},
		{
			name: "Routed6/6/helper", topo: Routed6, fam: IPv6, helper: true,
			forward: []string{invalid, established, outbound,
				"-A FORWARD -i outside -o inside -d 2001:db8:2::20 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT"},
			has:    []string{helper},
			hasNot: []string{"*nat", "MASQUERADE", "DNAT"},
		},
		{
			name: "ServerForward/6", topo: ServerForward, fam: IPv6,
			forward: []string{invalid, established, outbound,
				"-A FORWARD -i outside -o inside -d 2001:db8:1::20 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT"},
			hasNot: []string{"*nat"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rules, err := FirewallRules(tc.topo, tc.fam, tc.helper)
			if err != nil {
				t.Fatal(err)
			}
			if got := forwardRules(rules); !slices.Equal(got, tc.forward) {
				t.Errorf("FORWARD rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.forward, "\n"))
			}
			if !strings.Contains(rules, ":FORWARD DROP [0:0]\n") {
				t.Error("FORWARD policy is not DROP")
			}
			checkContains(t, rules, tc.has, tc.hasNot)
			if n := strings.Count(rules, "COMMIT\n"); n != strings.Count(rules, "\n*")+1 {
				t.Errorf("%d COMMITs for %d tables", n, strings.Count(rules, "\n*")+1)
			}
		})
	}
	if _, err := FirewallRules(Topology(99), IPv4, false); !errors.Is(err, ErrTopology) {
		t.Errorf("unknown topology: err %v, want ErrTopology", err)
	}
	if _, err := FirewallRules(Routed, Family(0), false); !errors.Is(err, ErrFamily) {
		t.Errorf("unknown family: err %v, want ErrFamily", err)
	}
}

// listing is real `iptables -L FORWARD -v -n -x` output (iptables 1.8.9,
// nft backend) with a jump ftpalg might insert in front.
const listing = `Chain FORWARD (policy DROP 17 packets, 1020 bytes)
    pkts      bytes target     prot opt in     out     source               destination         
     412    30118 FTPALG     6    --  *      *       0.0.0.0/0            0.0.0.0/0           
       3      156 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate INVALID /* rig: invalid drop */
    9000 12345678 ACCEPT     0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate RELATED,ESTABLISHED
`

func TestParseChainListing(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    chainCounters
		wantErr bool
	}{
		{name: "counts", out: listing, want: chainCounters{policyPackets: 17, rulePackets: 3}},
		{name: "zero", out: strings.NewReplacer("17 packets", "0 packets", "       3      156 DROP", "       0        0 DROP").Replace(listing)},
		{name: "no rule", out: strings.ReplaceAll(listing, "/* rig: invalid drop */", ""), wantErr: true},
		{name: "no header", out: strings.SplitN(listing, "\n", 2)[1], wantErr: true},
		{name: "bad policy", out: strings.Replace(listing, "17 packets", "x packets", 1), wantErr: true},
		{name: "bad rule counter", out: strings.Replace(listing, "       3      156 DROP", "       y      156 DROP", 1), wantErr: true},
		{name: "two chains", out: listing + "\n" + listing, wantErr: true},
		{name: "empty", out: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseChainListing(tc.out, InvalidDropComment)
			if tc.wantErr {
				if !errors.Is(err, ErrCounter) {
					t.Fatalf("err = %v, want ErrCounter", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseCurlTranscript(t *testing.T) {
	const stderr = "03:10:30.580241 * Connected to 2001:db8:2::20 port 21 (#0)\n" +
		"03:10:30.581683 < 220 ftpalg test rig\r\n" +
		"03:10:30.581863 > USER anonymous\n" +
		"> PWD\n" +
		"03:10:30.583490 * Connect data stream passively\n" +
		"03:10:30.584329 < 229 Entering Extended Passive Mode (|||60900|)\n" +
		"03:10:30.586119 { [102400 bytes data]\n" +
		"curl: (28) Failed\n"
	cmds, replies := parseCurlTranscript(stderr)
	if want := []string{"USER anonymous", "PWD"}; !slices.Equal(cmds, want) {
		t.Errorf("commands %q, want %q", cmds, want)
	}
	if want := []string{"220 ftpalg test rig", "229 Entering Extended Passive Mode (|||60900|)"}; !slices.Equal(replies, want) {
		t.Errorf("replies %q, want %q", replies, want)
	}
	res := Result{Commands: cmds}
	if !res.Sent("pwd") || res.Sent("PASV") || res.Sent("PW") {
		t.Errorf("Sent misreports commands %q", cmds)
	}
	if got := curlError(stderr); got != "curl: (28) Failed" {
		t.Errorf("curlError = %q", got)
	}
}

func TestCurlArgs(t *testing.T) {
	tests := []struct {
		mode        Mode
		has, hasNot []string
	}{
		{PORT, []string{"--ftp-port", "--disable-eprt"}, []string{"--disable-epsv"}},
		{EPRT, []string{"--ftp-port"}, []string{"--disable-eprt"}},
		{PASV, []string{"--disable-epsv", "--no-ftp-skip-pasv-ip"}, []string{"--ftp-port"}},
		{EPSV, []string{"--ftp-pasv"}, []string{"--disable-epsv", "--ftp-port"}},
	}
	for _, tc := range tests {
		args, err := curlArgs(tc.mode)
		if err != nil {
			t.Fatalf("%v: %v", tc.mode, err)
		}
		for _, a := range tc.has {
			if !slices.Contains(args, a) {
				t.Errorf("%v: args %q lack %s", tc.mode, args, a)
			}
		}
		for _, a := range tc.hasNot {
			if slices.Contains(args, a) {
				t.Errorf("%v: args %q have %s", tc.mode, args, a)
			}
		}
		if tc.mode.Active() != slices.Contains(args, "--ftp-port") {
			t.Errorf("%v: Active() disagrees with args %q", tc.mode, args)
		}
	}
	if _, err := curlArgs(Mode(0)); !errors.Is(err, ErrMode) {
		t.Errorf("unknown mode: err %v, want ErrMode", err)
	}
}

func TestValidPrefix(t *testing.T) {
	for p, want := range map[string]bool{
		"fc": true, "rig": true, "a1b2c": true,
		"": false, "toolong": false, "FC": false, "f-c": false, "f c": false, "fc/": false, "fc1": false,
	} {
		if got := validPrefix(p); got != want {
			t.Errorf("validPrefix(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestWriteRandomFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	sum, err := WriteRandomFile(path, 100_003)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 100_003 || fi.Mode().Perm() != 0o644 {
		t.Errorf("file size %d mode %v, want 100003 and 0644", fi.Size(), fi.Mode().Perm())
	}
	got, err := FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != sum {
		t.Errorf("FileSHA256 = %s, WriteRandomFile said %s", got, sum)
	}
	other, err := WriteRandomFile(path+"2", 100_003)
	if err != nil {
		t.Fatal(err)
	}
	if other == sum {
		t.Error("two random files have the same digest")
	}
	if _, err := FileSHA256(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("hashing a missing file succeeded")
	}
}
