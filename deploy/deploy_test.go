package deploy

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/rules"
)

// tableRules returns the lines of an iptables-restore file by table:
// chain declarations (":NAME ...", reduced to ":NAME") and rules.
func tableRules(t *testing.T, text string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	table := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case line == "COMMIT":
			table = ""
		case table == "":
			t.Fatalf("line outside a table: %q", line)
		case strings.HasPrefix(line, ":"):
			out[table] = append(out[table], strings.Fields(line)[0])
		default:
			out[table] = append(out[table], line)
		}
	}
	return out
}

// The example firewalls contain exactly what `ftpalg rules` prints for
// the default flags, with each "-I CHAIN 1" jump written as the "-A" the
// file places before the rules it must precede.
func TestFirewallIncludesFragment(t *testing.T) {
	for _, tc := range []struct {
		file string
		fam  rules.Family
	}{
		{"firewall.rules", rules.IPv4},
		{"firewall6.rules", rules.IPv6},
	} {
		t.Run(tc.file, func(t *testing.T) {
			cfg := rules.Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, IPv6: true, AcceptMark: rules.DefaultAcceptMark,
				DataMark: rules.DefaultAcceptMark, SkipPureACKs: true, SkipHandshake: true}
			have := checkFileFragment(t, tc.file, cfg, tc.fam)
			checkJumpFirst(t, tc.file, have["filter"], "FORWARD")
			checkJumpFirst(t, tc.file, have["filter"], "INPUT")
		})
	}
}

// checkFileFragment reads a firewall file, checks that it has every line
// of `ftpalg rules` for cfg and fam (checkHasFragment), and returns its
// lines by table.
func checkFileFragment(t *testing.T, file string, cfg rules.Config, fam rules.Family) map[string][]string {
	t.Helper()
	frag, err := rules.Fragment(cfg, fam)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	have := tableRules(t, string(b))
	checkHasFragment(t, file, have, frag)
	return have
}

// checkHasFragment checks that a firewall file (its lines by table) has
// every line of an `ftpalg rules` fragment, each "-I CHAIN 1" jump written
// as the "-A" the file places before the rules it must precede.
func checkHasFragment(t *testing.T, file string, have map[string][]string, frag string) {
	t.Helper()
	for table, lines := range tableRules(t, frag) {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 3 && f[0] == "-I" && f[2] == "1" {
				l = strings.Join(append([]string{"-A", f[1]}, f[3:]...), " ")
			}
			if !slices.Contains(have[table], l) {
				t.Errorf("%s: table %s lacks %q (from `ftpalg rules`)", file, table, l)
			}
		}
	}
}

// checkJumpFirst checks that in a filter chain the pinhole jump comes after
// the INVALID drop and precedes every rule that accepts or drops new
// connections (only loopback, INVALID, replies and ICMPv6's neighbour
// discovery may come first).
func checkJumpFirst(t *testing.T, file string, filter []string, chain string) {
	t.Helper()
	var in []string
	for _, l := range filter {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			in = append(in, l)
		}
	}
	jump := slices.Index(in, "-A "+chain+" -j "+rules.ChainAccept)
	invalid := -1
	for i, l := range in {
		if strings.Contains(l, "INVALID") && invalid < 0 {
			invalid = i
		}
		if i < jump && !strings.Contains(l, "INVALID") && !strings.Contains(l, "RELATED,ESTABLISHED") &&
			!strings.Contains(l, "ipv6-icmp") && !strings.Contains(l, " -i lo ") {
			t.Errorf("%s: %s rule %q comes before the jump to %s", file, chain, l, rules.ChainAccept)
		}
	}
	if jump < 0 || invalid < 0 || invalid > jump {
		t.Errorf("%s: %s must drop INVALID and then jump to %s: %q", file, chain, rules.ChainAccept, in)
	}
}

// unitValues returns the values of key in the unit file, in order.
func unitValues(t *testing.T, key string) []string {
	t.Helper()
	b, err := os.ReadFile("ftpalg.service")
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// unitCaps returns the unit's CapabilityBoundingSet as setpriv names
// (net_admin).
func unitCaps(t *testing.T) []string {
	t.Helper()
	vals := unitValues(t, "CapabilityBoundingSet")
	if len(vals) != 1 {
		t.Fatalf("want one CapabilityBoundingSet line, got %q", vals)
	}
	var caps []string
	for _, c := range strings.Fields(vals[0]) {
		caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return caps
}

func TestUnitFile(t *testing.T) {
	want := map[string]string{
		"ExecStart":               "/usr/local/sbin/ftpalg run $FTPALG_FLAGS",
		"EnvironmentFile":         "-/etc/default/ftpalg",
		"Restart":                 "on-failure",
		"RuntimeDirectory":        "ftpalg",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"RestrictAddressFamilies": "AF_NETLINK AF_UNIX AF_INET AF_INET6",
		"MemoryDenyWriteExecute":  "yes",
	}
	for k, v := range want {
		if got := unitValues(t, k); len(got) != 1 || got[0] != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if caps := unitCaps(t); !slices.Equal(caps, []string{"net_admin"}) {
		t.Errorf("capabilities %q, want exactly net_admin", caps)
	}
}
