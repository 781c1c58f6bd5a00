package rules

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter sends log output to t.Log so it appears with the failing test.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// adminFirewall installs a strict firewall like an administrator's script:
// FORWARD policy DROP, INVALID dropped first, replies accepted, plus one
// unrelated rule in mangle FORWARD and nat PREROUTING that must survive.
func adminFirewall(t *testing.T, f Family) {
	t.Helper()
	for _, args := range [][]string{
		{"-P", "FORWARD", "DROP"},
		{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
		{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"-t", "mangle", "-A", "FORWARD", "-p", "udp", "-j", "ACCEPT"},
		{"-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "ACCEPT"},
	} {
		ipt(t, f, args...)
	}
}

// checkListing compares `iptables -t table -S chain` with want.
func checkListing(t *testing.T, f Family, table, chain string, want ...string) {
	t.Helper()
	got := ipt(t, f, "-t", table, "-S", chain)
	if !slices.Equal(got, want) {
		t.Errorf("%s -t %s -S %s:\n got %q\nwant %q", f.command(), table, chain, got, want)
	}
}

// checkInstalled verifies the exact state after Install on top of
// adminFirewall with control ports 21 and 2121 on queue 3.
func checkInstalled(t *testing.T, f Family) {
	t.Helper()
	checkListing(t, f, "filter", "FORWARD",
		"-P FORWARD DROP",
		"-A FORWARD -j FTPALG-ACCEPT",
		"-A FORWARD -m conntrack --ctstate INVALID -j DROP",
		"-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	checkListing(t, f, "mangle", "FORWARD",
		"-P FORWARD ACCEPT",
		"-A FORWARD -j FTPALG-QUEUE",
		"-A FORWARD -p udp -j ACCEPT")
	checkListing(t, f, "nat", "PREROUTING",
		"-P PREROUTING ACCEPT",
		"-A PREROUTING -j FTPALG-DNAT",
		"-A PREROUTING -p udp -j ACCEPT")
	checkListing(t, f, "mangle", ChainQueue,
		"-N FTPALG-QUEUE",
		`-A FTPALG-QUEUE -m connlabel --label "127"`,
		"-A FTPALG-QUEUE -p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 3 --queue-bypass",
		"-A FTPALG-QUEUE -p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 3 --queue-bypass")
	checkListing(t, f, "nat", ChainDNAT, "-N FTPALG-DNAT")
	checkListing(t, f, "filter", ChainAccept, "-N FTPALG-ACCEPT")
}

// checkGone verifies nothing named FTPALG is left in any table.
func checkGone(t *testing.T, f Family) {
	t.Helper()
	if s := save(t, f); strings.Contains(s, "FTPALG") {
		t.Errorf("%s-save still mentions FTPALG:\n%s", f.command(), s)
	}
}

func checkTrue(t *testing.T, c *Chains, want bool) {
	t.Helper()
	got, err := c.Check()
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if got != want {
		t.Errorf("Check() = %v, want %v", got, want)
	}
}

var families = []Family{IPv4, IPv6}

func TestChainsInstallCheckRemove(t *testing.T) {
	if !inFreshNetns(t, "ch") {
		return
	}
	for _, f := range families {
		adminFirewall(t, f)
	}
	cfg := Config{ControlPorts: []uint16{2121, 21}, QueueNum: 3, Bypass: true, IPv4: true, IPv6: true}
	c, err := NewChains(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sweep(); err != nil {
		t.Fatalf("Sweep with nothing to sweep: %v", err)
	}
	checkTrue(t, c, false)

	if err := c.Install(); err != nil {
		t.Fatalf("Install: %v", err)
	}
	for _, f := range families {
		checkInstalled(t, f)
	}
	checkTrue(t, c, true)

	// A second Install changes nothing.
	if err := c.Install(); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	for _, f := range families {
		checkInstalled(t, f)
	}

	// Partial loss, as after an administrator's script deleted a jump or
	// flushed our chain: Check notices, Install repairs.
	for _, damage := range []struct {
		f    Family
		args []string
	}{
		{IPv4, []string{"-D", "FORWARD", "-j", "FTPALG-ACCEPT"}},
		{IPv6, []string{"-t", "nat", "-D", "PREROUTING", "-j", "FTPALG-DNAT"}},
		{IPv4, []string{"-t", "mangle", "-F", "FTPALG-QUEUE"}},
		{IPv6, []string{"-t", "mangle", "-D", "FTPALG-QUEUE", "2"}},
	} {
		ipt(t, damage.f, damage.args...)
		checkTrue(t, c, false)
		if err := c.Install(); err != nil {
			t.Fatalf("Install after %s %v: %v", damage.f, damage.args, err)
		}
		checkTrue(t, c, true)
		checkInstalled(t, damage.f)
	}

	if err := c.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, f := range families {
		checkGone(t, f)
		// The administrator's rules are untouched.
		checkListing(t, f, "filter", "FORWARD",
			"-P FORWARD DROP",
			"-A FORWARD -m conntrack --ctstate INVALID -j DROP",
			"-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	}
	checkTrue(t, c, false)
	if err := c.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestChainsSweepAfterCrash(t *testing.T) {
	if !inFreshNetns(t, "sw") {
		return
	}
	log := testLogger(t)
	cfg := Config{ControlPorts: []uint16{21}, Bypass: true, IPv4: true, IPv6: true}
	c1, err := NewChains(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.Install(); err != nil {
		t.Fatal(err)
	}
	t1, err := NewTable(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []Pinhole{v4NAT, v6NAT, v4Plain} {
		if err := t1.Open(p); err != nil {
			t.Fatal(err)
		}
	}
	// Things a sweep must also cope with: a duplicate jump, and a jump from
	// an administrator's chain.
	for _, f := range families {
		ipt(t, f, "-A", "FORWARD", "-j", ChainAccept)
		ipt(t, f, "-N", "ADMIN")
		ipt(t, f, "-A", "FORWARD", "-j", "ADMIN")
		ipt(t, f, "-A", "ADMIN", "-i", "lo", "-m", "comment", "--comment", "admin jump", "-j", ChainAccept)
	}

	// The daemon dies here. The next run has a different configuration,
	// with IPv6 off: IPv6 leftovers must still go.
	c2, err := NewChains(Config{ControlPorts: []uint16{990}, IPv4: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	for _, f := range families {
		checkGone(t, f)
		checkListing(t, f, "filter", "ADMIN", "-N ADMIN")
		checkListing(t, f, "filter", "FORWARD", "-P FORWARD ACCEPT", "-A FORWARD -j ADMIN")
	}
	if err := c2.Sweep(); err != nil {
		t.Fatalf("second Sweep: %v", err)
	}
}

// Pinholes used by the integration tests, in the rig's addressing:
// client side 198.51.100.0/24 and 2001:db8:2::/64, server side 192.0.2.0/24
// and 2001:db8:1::/64, router .1 on both.
var (
	v4NAT = Pinhole{
		Peer:   netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("198.51.100.1:50000"),
		Target: netip.MustParseAddrPort("192.0.2.10:2121"),
	}
	v4Plain = Pinhole{
		Peer:   netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("192.0.2.10:2121"),
		Target: netip.MustParseAddrPort("192.0.2.10:2121"),
	}
	v6NAT = Pinhole{
		Peer:   netip.MustParseAddr("2001:db8:2::20"),
		Public: netip.MustParseAddrPort("[2001:db8:2::1]:50000"),
		Target: netip.MustParseAddrPort("[2001:db8:1::10]:2121"),
	}
	v6Plain = Pinhole{
		Peer:   netip.MustParseAddr("2001:db8:2::20"),
		Public: netip.MustParseAddrPort("[2001:db8:1::10]:2121"),
		Target: netip.MustParseAddrPort("[2001:db8:1::10]:2121"),
	}
)

// installed sets up the chains for both families and removes them at the end.
func installed(t *testing.T) *Chains {
	t.Helper()
	c, err := NewChains(DefaultConfig(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	return c
}

func TestTableOpenClose(t *testing.T) {
	if !inFreshNetns(t, "pt") {
		return
	}
	installed(t)
	tbl, err := NewTable(DefaultConfig(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		p      Pinhole
		dnat   []string // -S lines of FTPALG-DNAT while open
		accept []string // -S lines of FTPALG-ACCEPT while open
	}{
		{
			name:   "IPv4 NAT",
			p:      v4NAT,
			dnat:   []string{`-A FTPALG-DNAT -s 198.51.100.20/32 -d 198.51.100.1/32 -p tcp -m tcp --dport 50000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 198.51.100.20 -> 198.51.100.1:50000 -> 192.0.2.10:2121" -j DNAT --to-destination 192.0.2.10:2121`},
			accept: []string{`-A FTPALG-ACCEPT -s 198.51.100.20/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW --ctorigdst 198.51.100.1 --ctorigdstport 50000 -m comment --comment "ftpalg 198.51.100.20 -> 198.51.100.1:50000 -> 192.0.2.10:2121" -j ACCEPT`},
		},
		{
			name:   "IPv4 no NAT",
			p:      v4Plain,
			accept: []string{`-A FTPALG-ACCEPT -s 198.51.100.20/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW -m comment --comment "ftpalg 198.51.100.20 -> 192.0.2.10:2121" -j ACCEPT`},
		},
		{
			name:   "IPv6 NAT",
			p:      v6NAT,
			dnat:   []string{`-A FTPALG-DNAT -s 2001:db8:2::20/128 -d 2001:db8:2::1/128 -p tcp -m tcp --dport 50000 -m conntrack --ctstate NEW -m comment --comment "ftpalg 2001:db8:2::20 -> [2001:db8:2::1]:50000 -> [2001:db8:1::10]:2121" -j DNAT --to-destination [2001:db8:1::10]:2121`},
			accept: []string{`-A FTPALG-ACCEPT -s 2001:db8:2::20/128 -d 2001:db8:1::10/128 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW --ctorigdst 2001:db8:2::1 --ctorigdstport 50000 -m comment --comment "ftpalg 2001:db8:2::20 -> [2001:db8:2::1]:50000 -> [2001:db8:1::10]:2121" -j ACCEPT`},
		},
		{
			name:   "IPv6 no NAT",
			p:      v6Plain,
			accept: []string{`-A FTPALG-ACCEPT -s 2001:db8:2::20/128 -d 2001:db8:1::10/128 -p tcp -m tcp --dport 2121 -m conntrack --ctstate NEW -m comment --comment "ftpalg 2001:db8:2::20 -> [2001:db8:1::10]:2121" -j ACCEPT`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.p.Family()
			checkOpen := func(open bool) {
				t.Helper()
				dnat, accept := []string{"-N " + ChainDNAT}, []string{"-N " + ChainAccept}
				if open {
					dnat, accept = append(dnat, tt.dnat...), append(accept, tt.accept...)
				}
				checkListing(t, f, "nat", ChainDNAT, dnat...)
				checkListing(t, f, "filter", ChainAccept, accept...)
			}
			if err := tbl.Open(tt.p); err != nil {
				t.Fatalf("Open: %v", err)
			}
			checkOpen(true)
			// A second reference shares the rules.
			if err := tbl.Open(tt.p); err != nil {
				t.Fatalf("second Open: %v", err)
			}
			checkOpen(true)
			if err := tbl.Close(tt.p); err != nil {
				t.Fatalf("Close: %v", err)
			}
			checkOpen(true)
			if err := tbl.Close(tt.p); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			checkOpen(false)
			if err := tbl.Close(tt.p); err != nil {
				t.Fatalf("Close of closed pinhole: %v", err)
			}
			if n := tbl.Len(); n != 0 {
				t.Errorf("Len() = %d after closing, want 0", n)
			}
		})
	}

	t.Run("rules flushed by admin", func(t *testing.T) {
		if err := tbl.Open(v4NAT); err != nil {
			t.Fatal(err)
		}
		ipt(t, IPv4, "-t", "nat", "-F", ChainDNAT)
		ipt(t, IPv4, "-F", ChainAccept)
		if err := tbl.Close(v4NAT); err != nil {
			t.Fatalf("Close after flush: %v", err)
		}
		if n := tbl.Len(); n != 0 {
			t.Errorf("Len() = %d, want 0", n)
		}
	})

	t.Run("CloseAll", func(t *testing.T) {
		for _, p := range []Pinhole{v4NAT, v4Plain, v6NAT, v6Plain} {
			if err := tbl.Open(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := tbl.CloseAll(); err != nil {
			t.Fatalf("CloseAll: %v", err)
		}
		for _, f := range families {
			checkListing(t, f, "nat", ChainDNAT, "-N "+ChainDNAT)
			checkListing(t, f, "filter", ChainAccept, "-N "+ChainAccept)
		}
		if n := tbl.Len(); n != 0 {
			t.Errorf("Len() = %d after CloseAll, want 0", n)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		bad := v4NAT
		bad.Target = v6NAT.Target
		if err := tbl.Open(bad); !errors.Is(err, ErrInvalidPinhole) {
			t.Errorf("Open(%s) error = %v, want ErrInvalidPinhole", bad, err)
		}
		v4only, err := NewTable(Config{ControlPorts: []uint16{21}, IPv4: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := v4only.Open(v6NAT); !errors.Is(err, ErrFamilyDisabled) {
			t.Errorf("Open(IPv6) on IPv4-only table: error = %v, want ErrFamilyDisabled", err)
		}
	})
}

func TestTableOpenWithoutChains(t *testing.T) {
	if !inFreshNetns(t, "nc") {
		return
	}
	tbl, err := NewTable(DefaultConfig(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.Open(v4NAT); err == nil {
		t.Fatal("Open succeeded without FTPALG chains")
	}
	if n := tbl.Len(); n != 0 {
		t.Errorf("failed Open recorded a pinhole: Len() = %d", n)
	}
	// ACCEPT present but DNAT chain missing: the ACCEPT is rolled back.
	ipt(t, IPv4, "-N", ChainAccept)
	if err := tbl.Open(v4NAT); err == nil {
		t.Fatal("Open succeeded without FTPALG-DNAT")
	}
	checkListing(t, IPv4, "filter", ChainAccept, "-N "+ChainAccept)
	// CloseAll leaves missing chains missing.
	if err := tbl.CloseAll(); err != nil {
		t.Fatalf("CloseAll: %v", err)
	}
	if s := save(t, IPv4); strings.Contains(s, ChainDNAT) {
		t.Errorf("CloseAll created %s:\n%s", ChainDNAT, s)
	}
}

func TestFragmentRestore(t *testing.T) {
	if !inFreshNetns(t, "fr") {
		return
	}
	cfg := Config{ControlPorts: []uint16{21, 2121}, QueueNum: 3, Bypass: true, IPv4: true, IPv6: true}
	for _, f := range families {
		adminFirewall(t, f)
		frag, err := Fragment(cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"--test"}, {"--noflush"}} {
			cmd := exec.Command(f.command()+"-restore", args...)
			cmd.Stdin = strings.NewReader(frag)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s-restore %v rejected the fragment: %v\n%s\n%s", f.command(), args, err, out, frag)
			}
		}
		// Loaded for real, the fragment gives exactly what Install does.
		checkInstalled(t, f)
	}
	c, err := NewChains(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	checkTrue(t, c, true)
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		checkGone(t, f)
	}
}

// TestMeasurePinholeLatency measures how long Open and Close take with real
// iptables: the time an announcing control packet is held. It reports
// figures and asserts nothing about them.
func TestMeasurePinholeLatency(t *testing.T) {
	if os.Getenv("FTPALG_MEASURE") == "" {
		t.Skip("a measurement, not a check: run with FTPALG_MEASURE=1 (make bench-pinholes)")
	}
	if !inFreshNetns(t, "lt") {
		return
	}
	installed(t)
	tbl, err := NewTable(DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for _, tt := range []struct {
		name string
		make func(i int) Pinhole
	}{
		{"IPv4 NAT (ACCEPT+DNAT)", func(i int) Pinhole {
			p := v4NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(50000+i))
			return p
		}},
		{"IPv4 no NAT (ACCEPT)", func(i int) Pinhole {
			p := v4Plain
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(40000+i))
			p.Target = p.Public
			return p
		}},
		{"IPv6 NAT (ACCEPT+DNAT)", func(i int) Pinhole {
			p := v6NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(50000+i))
			return p
		}},
	} {
		var opens, closes []time.Duration
		for i := range n {
			start := time.Now()
			if err := tbl.Open(tt.make(i)); err != nil {
				t.Fatal(err)
			}
			opens = append(opens, time.Since(start))
		}
		for i := range n {
			start := time.Now()
			if err := tbl.Close(tt.make(i)); err != nil {
				t.Fatal(err)
			}
			closes = append(closes, time.Since(start))
		}
		t.Logf("%-24s open  p50 %v p99 %v max %v (n=%d)",
			tt.name, pct(opens, 50), pct(opens, 99), pct(opens, 100), n)
		t.Logf("%-24s close p50 %v p99 %v max %v", tt.name, pct(closes, 50), pct(closes, 99), pct(closes, 100))
	}
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)].Round(10 * time.Microsecond)
}
