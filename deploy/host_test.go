package deploy

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/rules"
)

// hostConfig is `ftpalg run --role host` with the other defaults.
var hostConfig = rules.Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, IPv6: true,
	AcceptMark: rules.DefaultAcceptMark, DataMark: rules.DefaultAcceptMark, Role: rules.RoleHost, SkipPureACKs: true, SkipHandshake: true}

// host.rules and host6.rules contain exactly what `ftpalg rules --role
// host` prints for their family (jumps written as the "-A" placed where
// they belong), and the pinhole jump comes before every rule that accepts
// or drops new connections in INPUT.
func TestHostFirewallIncludesFragment(t *testing.T) {
	for _, tc := range []struct {
		file string
		fam  rules.Family
	}{{"host.rules", rules.IPv4}, {"host6.rules", rules.IPv6}} {
		t.Run(tc.file, func(t *testing.T) {
			have := checkFileFragment(t, tc.file, hostConfig, tc.fam)
			for _, l := range have["mangle"] {
				if strings.Contains(l, "FORWARD") && strings.Contains(l, "FTPALG") {
					t.Errorf("%s queues forwarded packets: %q", tc.file, l)
				}
			}
			checkJumpFirst(t, tc.file, have["filter"], "INPUT")
		})
	}
}

// ftpalg.nft is exactly what `ftpalg rules --format nft --role host`
// prints, and nftables.conf includes it inside its input chain, after the
// INVALID drop and before the first rule accepting new connections.
func TestNFTablesConfIncludesFragment(t *testing.T) {
	want, err := rules.NFTFragment(hostConfig)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("ftpalg.nft")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("ftpalg.nft differs from `ftpalg rules --format nft --role host`:\n%s", want)
	}
	conf, err := os.ReadFile("nftables.conf")
	if err != nil {
		t.Fatal(err)
	}
	var input []string
	in := false
	for _, l := range strings.Split(string(conf), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "chain input"):
			in = true
		case in && l == "}":
			in = false
		case in && l != "" && !strings.HasPrefix(l, "#"):
			input = append(input, l)
		}
	}
	inc := slices.Index(input, `include "/etc/nftables.d/ftpalg.nft"`)
	inv := slices.IndexFunc(input, func(l string) bool { return strings.HasPrefix(l, "ct state invalid") })
	if !strings.Contains(strings.Join(input, "\n"), "policy drop") || inc < 0 || inv < 0 || inv > inc {
		t.Fatalf("nftables.conf input chain must have policy drop, drop INVALID, then include ftpalg.nft: %q", input)
	}
	for _, l := range input[:inc] {
		if strings.Contains(l, "accept") && !strings.HasPrefix(l, "ct state established") && l != `iif "lo" accept` {
			t.Errorf("nftables.conf: %q accepts before ftpalg's rule", l)
		}
	}
}

// firewalld.nft inserts exactly the rules of `ftpalg rules --format nft
// --role host` into firewalld's input dispatch chain (the last insert goes
// first, so the order is reversed).
func TestFirewalldIncludesFragment(t *testing.T) {
	frag, err := rules.NFTFragment(hostConfig)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(frag, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			want = append(want, l)
		}
	}
	b, err := os.ReadFile("firewalld.nft")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "insert rule inet firewalld filter_INPUT_ZONES "
	var got []string
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		rule, ok := strings.CutPrefix(l, prefix)
		if !ok {
			t.Fatalf("firewalld.nft: %q does not start with %q", l, prefix)
		}
		got = append([]string{rule}, got...)
	}
	if !slices.Equal(got, want) {
		t.Errorf("firewalld.nft inserts\n%q\nwant (from `ftpalg rules --format nft --role host`)\n%q", got, want)
	}
}
