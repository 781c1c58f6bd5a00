package rules

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestPinholeSpecs(t *testing.T) {
	tests := []struct {
		name   string
		p      Pinhole
		accept string
		dnat   string // empty: no DNAT expected
	}{
		{
			name: "IPv4 DNAT",
			p: Pinhole{
				Peer:   netip.MustParseAddr("198.51.100.20"),
				Public: netip.MustParseAddrPort("198.51.100.1:50000"),
				Target: netip.MustParseAddrPort("192.0.2.10:2121"),
			},
			accept: `-s 198.51.100.20/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW --ctorigdst 198.51.100.1 --ctorigdstport 50000 -m comment --comment "ftpalg 198.51.100.20 -> 198.51.100.1:50000 -> 192.0.2.10:2121" -j ACCEPT`,
			dnat:   `-s 198.51.100.20/32 -d 198.51.100.1/32 -p tcp -m tcp --dport 50000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 198.51.100.20 -> 198.51.100.1:50000 -> 192.0.2.10:2121" -j DNAT --to-destination 192.0.2.10:2121`,
		},
		{
			name: "IPv4 port-only DNAT",
			p: Pinhole{
				Peer:   netip.MustParseAddr("198.51.100.20"),
				Public: netip.MustParseAddrPort("192.0.2.10:50001"),
				Target: netip.MustParseAddrPort("192.0.2.10:2121"),
			},
			accept: `-s 198.51.100.20/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW --ctorigdst 192.0.2.10 --ctorigdstport 50001 -m comment --comment "ftpalg 198.51.100.20 -> 192.0.2.10:50001 -> 192.0.2.10:2121" -j ACCEPT`,
			dnat:   `-s 198.51.100.20/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 50001 -m conntrack --ctstate NEW -m comment --comment "ftpalg 198.51.100.20 -> 192.0.2.10:50001 -> 192.0.2.10:2121" -j DNAT --to-destination 192.0.2.10:2121`,
		},
		{
			name: "IPv4 accept only",
			p: Pinhole{
				Peer:   netip.MustParseAddr("192.0.2.10"),
				Public: netip.MustParseAddrPort("198.51.100.20:40000"),
				Target: netip.MustParseAddrPort("198.51.100.20:40000"),
			},
			accept: `-s 192.0.2.10/32 -d 198.51.100.20/32 -p tcp -m tcp --dport 40000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 192.0.2.10 -> 198.51.100.20:40000" -j ACCEPT`,
		},
		{
			name: "IPv6 DNAT",
			p: Pinhole{
				Peer:   netip.MustParseAddr("2001:db8:2::20"),
				Public: netip.MustParseAddrPort("[2001:db8:2::1]:50000"),
				Target: netip.MustParseAddrPort("[2001:db8:1::10]:2121"),
			},
			accept: `-s 2001:db8:2::20/128 -d 2001:db8:1::10/128 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW --ctorigdst 2001:db8:2::1 --ctorigdstport 50000 -m comment --comment "ftpalg 2001:db8:2::20 -> [2001:db8:2::1]:50000 -> [2001:db8:1::10]:2121" -j ACCEPT`,
			dnat:   `-s 2001:db8:2::20/128 -d 2001:db8:2::1/128 -p tcp -m tcp --dport 50000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 2001:db8:2::20 -> [2001:db8:2::1]:50000 -> [2001:db8:1::10]:2121" -j DNAT --to-destination [2001:db8:1::10]:2121`,
		},
		{
			name: "IPv6 accept only",
			p: Pinhole{
				Peer:   netip.MustParseAddr("2001:db8:1::10"),
				Public: netip.MustParseAddrPort("[2001:db8:2::20]:40000"),
				Target: netip.MustParseAddrPort("[2001:db8:2::20]:40000"),
			},
			accept: `-s 2001:db8:1::10/128 -d 2001:db8:2::20/128 -p tcp -m tcp --dport 40000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 2001:db8:1::10 -> [2001:db8:2::20]:40000" -j ACCEPT`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.p.normalize()
			if err != nil {
				t.Fatalf("normalize: %v", err)
			}
			if got := formatRule(n.acceptSpec()); got != tt.accept {
				t.Errorf("accept rule:\n got %s\nwant %s", got, tt.accept)
			}
			if n.NAT() != (tt.dnat != "") {
				t.Fatalf("NAT() = %v, want %v", n.NAT(), tt.dnat != "")
			}
			if tt.dnat != "" {
				if got := formatRule(n.dnatSpec()); got != tt.dnat {
					t.Errorf("dnat rule:\n got %s\nwant %s", got, tt.dnat)
				}
			}
		})
	}
}

func TestQueueSpecs(t *testing.T) {
	many := make([]uint16, 0, 17)
	for p := uint16(1); p <= 17; p++ {
		many = append(many, 100+p)
	}
	tests := []struct {
		name string
		cfg  Config
		fam  Family // zero: IPv4
		want []string
	}{
		{
			name: "default",
			cfg:  DefaultConfig(),
			want: []string{
				// No --queue-bypass: fail closed while no ftpalg is bound.
				"-m connlabel --label 127",
				"-p tcp -m multiport --dports 21 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 21 -j NFQUEUE --queue-num 0",
			},
		},
		{
			name: "sorted deduplicated no bypass",
			cfg:  Config{ControlPorts: []uint16{2121, 21, 2121}, QueueNum: 7, IPv4: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 7",
				"-p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 7",
			},
		},
		{
			name: "split at multiport limit",
			cfg:  Config{ControlPorts: many, QueueNum: 65535, Bypass: true, IPv6: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --dports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -j NFQUEUE --queue-num 65535 --queue-bypass",
				"-p tcp -m multiport --dports 116,117 -j NFQUEUE --queue-num 65535 --queue-bypass",
				"-p tcp -m multiport --sports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -j NFQUEUE --queue-num 65535 --queue-bypass",
				"-p tcp -m multiport --sports 116,117 -j NFQUEUE --queue-num 65535 --queue-bypass",
			},
		},
		{
			name: "two queues",
			cfg:  Config{ControlPorts: []uint16{21}, QueueNum: 4, Queues: 2, IPv4: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --dports 21 -j NFQUEUE --queue-balance 4:5",
				"-p tcp -m multiport --sports 21 -j NFQUEUE --queue-balance 4:5",
			},
		},
		{
			name: "pure ACKs skip, IPv6",
			cfg:  Config{ControlPorts: []uint16{21, 2121}, SkipPureACKs: true, IPv6: true},
			fam:  IPv6,
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --ports 21,2121 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 --set -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 21,2121 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0",
			},
		},
		{
			// Exactly the rules of before SkipHandshake existed.
			name: "pure ACKs skip, IPv4",
			cfg:  Config{ControlPorts: []uint16{21}, SkipPureACKs: true, IPv4: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --ports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 121 --set -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 21 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 21 -j NFQUEUE --queue-num 0",
			},
		},
		{
			name: "handshake without pure-ACK skip: ignored",
			cfg:  Config{ControlPorts: []uint16{21}, SkipHandshake: true, IPv4: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --dports 21 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 21 -j NFQUEUE --queue-num 0",
			},
		},
		{
			name: "handshake skip, IPv4",
			cfg:  Config{ControlPorts: []uint16{21}, QueueNum: 3, Bypass: true, SkipPureACKs: true, SkipHandshake: true, IPv4: true},
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --ports 21 -m tcp --tcp-flags FIN,SYN,RST SYN -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 121 --set -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --dports 21 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK4 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 21 -j NFQUEUE --queue-num 3 --queue-bypass",
				"-p tcp -m multiport --sports 21 -j NFQUEUE --queue-num 3 --queue-bypass",
			},
		},
		{
			name: "handshake skip, IPv6, split at multiport limit",
			cfg:  Config{ControlPorts: many, SkipPureACKs: true, SkipHandshake: true, IPv6: true},
			fam:  IPv6,
			want: []string{
				"-m connlabel --label 127",
				"-p tcp -m multiport --ports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -m tcp --tcp-flags FIN,SYN,RST SYN -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 --set -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --dports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --ports 116,117 -m tcp --tcp-flags FIN,SYN,RST SYN -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 --set -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 116,117 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --ports 116,117 -m tcp --tcp-flags FIN,SYN,RST,ACK ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 116,117 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 121 -m connlabel ! --label 127 -j RETURN",
				"-p tcp -m multiport --dports 116,117 -m tcp --tcp-flags FIN,SYN,RST,ACK FIN,ACK -m bpf --bytecode \"" + pureACK6 + "\" -m connlabel --label 120 -m connlabel ! --label 122 -j RETURN",
				"-p tcp -m multiport --dports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --dports 116,117 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 101,102,103,104,105,106,107,108,109,110,111,112,113,114,115 -j NFQUEUE --queue-num 0",
				"-p tcp -m multiport --sports 116,117 -j NFQUEUE --queue-num 0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			fam := tt.fam
			if fam == 0 {
				fam = IPv4
			}
			for _, s := range queueSpecs(tt.cfg, fam) {
				got = append(got, formatRule(s))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("queueSpecs:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		line    string
		want    []string
		wantErr bool
	}{
		{line: "-A FORWARD -j FTPALG-ACCEPT", want: []string{"-A", "FORWARD", "-j", "FTPALG-ACCEPT"}},
		{line: "-P FORWARD DROP", want: []string{"-P", "FORWARD", "DROP"}},
		{line: `-A X -m comment --comment "a b \"c\" \\d" -j Y`, want: []string{"-A", "X", "-m", "comment", "--comment", `a b "c" \d`, "-j", "Y"}},
		{line: `-A X -m comment --comment ""`, want: []string{"-A", "X", "-m", "comment", "--comment", ""}},
		{line: "  -A  X  ", want: []string{"-A", "X"}},
		{line: "", want: nil},
		{line: `-A X --comment "open`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.line)
		if (err != nil) != tt.wantErr {
			t.Errorf("splitRule(%q) error = %v, wantErr %v", tt.line, err, tt.wantErr)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

// TestFormatSplitRoundTrip checks that what formatRule writes (into
// fragments) splitRule reads back, for awkward comment text.
func TestFormatSplitRoundTrip(t *testing.T) {
	for _, arg := range []string{"plain", "", "two words", `q"uote`, `back\slash`, "tab\there", "it's"} {
		spec := []string{"-m", "comment", "--comment", arg, "-j", "ACCEPT"}
		got, err := splitRule(formatRule(spec))
		if err != nil {
			t.Fatalf("splitRule(formatRule(%q)): %v", spec, err)
		}
		if !slices.Equal(got, spec) {
			t.Errorf("round trip of %q gave %q (via %s)", spec, got, formatRule(spec))
		}
	}
}

func TestJumpTarget(t *testing.T) {
	tests := []struct {
		line   string
		chain  string
		target string
		spec   string
		ok     bool
	}{
		{line: "-A FORWARD -j FTPALG-ACCEPT", chain: "FORWARD", target: "FTPALG-ACCEPT", spec: "-j FTPALG-ACCEPT", ok: true},
		{line: "-A MINE -i eth0 -g FTPALG-DNAT", chain: "MINE", target: "FTPALG-DNAT", spec: "-i eth0 -g FTPALG-DNAT", ok: true},
		{line: `-A MINE -m comment --comment -j -j ACCEPT`, chain: "MINE", target: "ACCEPT", spec: "-m comment --comment -j -j ACCEPT", ok: true},
		{line: "-A FORWARD -i eth0", ok: false},
		{line: "-P FORWARD DROP", ok: false},
		{line: "-N FTPALG-ACCEPT", ok: false},
	}
	for _, tt := range tests {
		args, err := splitRule(tt.line)
		if err != nil {
			t.Fatal(err)
		}
		chain, target, spec, ok := jumpTarget(args)
		if ok != tt.ok || chain != tt.chain || target != tt.target || strings.Join(spec, " ") != tt.spec {
			t.Errorf("jumpTarget(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
				tt.line, chain, target, spec, ok, tt.chain, tt.target, tt.spec, tt.ok)
		}
	}
}

func TestChainNames(t *testing.T) {
	tests := []struct {
		name    string
		listing string
		want    []string
	}{
		{"iptables-legacy", "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n-N FTPALG-DNAT\n-A PREROUTING -j FTPALG-DNAT\n",
			[]string{"PREROUTING", "OUTPUT", "FTPALG-DNAT"}},
		// iptables-nft 1.8.9 when an nftables ruleset has its own base
		// chains in table ip nat: the warning comes first.
		{"nft warning first", "# Table `nat' contains incompatible base-chains, use 'nft' tool to list them.\n" +
			"-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-N FTPALG-DNAT\n-A PREROUTING -j FTPALG-DNAT\n",
			[]string{"PREROUTING", "INPUT", "FTPALG-DNAT"}},
		{"no trailing newline", "-P INPUT DROP", []string{"INPUT"}},
		{"empty", "", nil},
		{"truncated declaration", "-N\n-P\n", nil},
	}
	for _, tt := range tests {
		if got := chainNames(tt.listing); !slices.Equal(got, tt.want) {
			t.Errorf("%s: chainNames = %q, want %q", tt.name, got, tt.want)
		}
	}
}
