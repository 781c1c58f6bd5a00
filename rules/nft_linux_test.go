package rules

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests follow the harness in netns_linux_test.go (re-executing the
// test binary inside namespaces the test creates) with their own namespace
// prefix, "fn", and need the nft tool to read back what the kernel holds:
// nft is an independent decoder of the elements NFTable writes.

// nftConfig is DefaultConfig with nftables pinholes.
func nftConfig() Config {
	cfg := DefaultConfig()
	cfg.AcceptMark = DefaultAcceptMark
	return cfg
}

// requireNFT fails the test when the nft tool is missing.
func requireNFT(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nftables tests need nft (Debian package nftables) to inspect the kernel: %v", err)
	}
}

// newFNNetns creates a namespace named fn<pid><tag>, deleted when the test
// ends.
func newFNNetns(t *testing.T, tag string) string {
	t.Helper()
	name := fmt.Sprintf("fn%d%s", os.Getpid(), tag)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// inFreshFNNetns is inFreshNetns with this file's namespace prefix.
func inFreshFNNetns(t *testing.T, tag string) bool {
	t.Helper()
	if inChild() {
		return true
	}
	requireRoot(t)
	requireNFT(t)
	runTestIn(t, newFNNetns(t, tag))
	return false
}

// nftElements lists a set or map of ftpalg's table in family ("ip" or
// "ip6") as nft prints its elements: "a . b . c" or "a . b : c . d",
// sorted. Expired elements are not listed by the kernel.
func nftElements(t *testing.T, family, kind, name string) []string {
	t.Helper()
	out := run(t, "nft", "-j", "list", kind, family, NFTTableName, name)
	var doc struct {
		Nftables []map[string]struct {
			Elem []json.RawMessage `json:"elem"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parsing nft -j output: %v\n%s", err, out)
	}
	type concat struct {
		Concat []any `json:"concat"`
	}
	type timed struct {
		Elem struct {
			Val concat `json:"val"`
		} `json:"elem"`
	}
	join := func(c concat) string {
		parts := make([]string, len(c.Concat))
		for i, v := range c.Concat {
			parts[i] = fmt.Sprint(v)
		}
		return strings.Join(parts, " . ")
	}
	var elems []string
	for _, obj := range doc.Nftables {
		for _, raw := range obj[kind].Elem {
			if kind == "set" {
				var e timed
				if err := json.Unmarshal(raw, &e); err != nil {
					t.Fatalf("parsing set element %s: %v", raw, err)
				}
				if el := join(e.Elem.Val); !isProbeElement(el) {
					elems = append(elems, el)
				}
				continue
			}
			var pair []json.RawMessage
			var k timed
			var v concat
			if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
				t.Fatalf("parsing map element %s: %v", raw, err)
			}
			if err := errors.Join(json.Unmarshal(pair[0], &k), json.Unmarshal(pair[1], &v)); err != nil {
				t.Fatalf("parsing map element %s: %v", raw, err)
			}
			elems = append(elems, join(k.Elem.Val)+" : "+join(v))
		}
	}
	slices.Sort(elems)
	return elems
}

// isProbeElement reports Install's probe of the kernel's timeout updates
// (the all-zero element it adds and closes with a 1 ms timeout): it may
// still be listed for a moment after Install and is not a pinhole.
func isProbeElement(el string) bool {
	return el == "0.0.0.0 . 0.0.0.0 . 0" || el == ":: . :: . 0"
}

// nftState is what a family's sets and map hold, as nft prints elements.
type nftState struct {
	routed, nat, targets []string
}

// famName is the nft family of f's table.
func famName(f Family) string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// nftListState reads family f's sets and map.
func nftListState(t *testing.T, f Family) nftState {
	t.Helper()
	return nftState{
		routed:  nftElements(t, famName(f), "set", nftSetRouted),
		nat:     nftElements(t, famName(f), "set", nftSetNAT),
		targets: nftElements(t, famName(f), "map", nftMapTargets),
	}
}

// empty reports whether nothing is in the sets and map.
func (s nftState) empty() bool {
	return len(s.routed)+len(s.nat)+len(s.targets) == 0
}

// checkNFTElements compares family f's sets and map with want.
func checkNFTElements(t *testing.T, f Family, want nftState) {
	t.Helper()
	got := nftListState(t, f)
	for _, c := range []struct {
		name      string
		got, want []string
	}{
		{nftSetRouted, got.routed, want.routed},
		{nftSetNAT, got.nat, want.nat},
		{nftMapTargets, got.targets, want.targets},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s %s:\n got %q\nwant %q", famName(f), c.name, c.got, c.want)
		}
	}
}

// closeSettles waits out the jiffy (1 to 10 ms, depending on CONFIG_HZ)
// during which the elements of a pinhole closed by a timeout update still
// match and are still listed.
func closeSettles() {
	time.Sleep(20 * time.Millisecond)
}

// nftTableExists reports whether ftpalg's table exists in family.
func nftTableExists(t *testing.T, family string) bool {
	t.Helper()
	out := run(t, "nft", "list", "tables", family)
	return strings.Contains(out, "table "+family+" "+NFTTableName+"\n")
}

// newInstalledNFTable installs Chains with the mark rule and an NFTable,
// both removed when the test ends.
func newInstalledNFTable(t *testing.T, cfg Config, timeout time.Duration) *NFTable {
	t.Helper()
	c, err := NewChains(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Install(); err != nil {
		t.Fatalf("Chains.Install: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("Chains.Remove: %v", err)
		}
	})
	n, err := NewNFTable(cfg, timeout, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Install(); err != nil {
		t.Fatalf("NFTable.Install: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Remove(); err != nil {
			t.Errorf("NFTable.Remove: %v", err)
		}
	})
	return n
}

func TestNFTableOpenClose(t *testing.T) {
	if !inFreshFNNetns(t, "oc") {
		return
	}
	n := newInstalledNFTable(t, nftConfig(), time.Minute)
	for _, f := range families {
		checkListing(t, f, "filter", ChainAccept, "-N "+ChainAccept,
			`-A FTPALG-ACCEPT -p tcp -m mark --mark 0x20000000/0x20000000 -m conntrack --ctstate NEW -m comment --comment "ftpalg nftables pinholes" -j ACCEPT`)
		checkNFTElements(t, f, nftState{})
	}
	if ok, err := n.Check(); err != nil || !ok {
		t.Errorf("Check() after Install = %v, %v; want true", ok, err)
	}
	// nft must be able to print (and so an administrator to read) what
	// NFTable installed.
	for _, fam := range []string{"ip", "ip6"} {
		out := run(t, "nft", "list", "table", fam, NFTTableName)
		for _, want := range []string{
			"meta mark set meta mark & 0xdfffffff",
			"@" + nftSetRouted + " meta mark set meta mark | 0x20000000",
			"tcp dport . ct original proto-dst @" + nftSetNAT + " meta mark set meta mark | 0x20000000",
			"tcp dport map @" + nftMapTargets,
			"priority filter - 5",
			"priority dstnat - 1",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft list table %s %s lacks %q:\n%s", fam, NFTTableName, want, out)
			}
		}
	}

	v4NATState := nftState{
		nat:     []string{"198.51.100.20 . 192.0.2.10 . 2121 . 50000"},
		targets: []string{"198.51.100.20 . 198.51.100.1 . 50000 : 192.0.2.10 . 2121"},
	}
	v6PlainState := nftState{routed: []string{"2001:db8:2::20 . 2001:db8:1::10 . 2121"}}
	tests := []struct {
		name string
		p    Pinhole
		open nftState // as nft prints it while open
	}{
		{"IPv4 NAT", v4NAT, v4NATState},
		{"IPv4 no NAT", v4Plain, nftState{routed: []string{"198.51.100.20 . 192.0.2.10 . 2121"}}},
		{"IPv6 NAT", v6NAT, nftState{
			nat:     []string{"2001:db8:2::20 . 2001:db8:1::10 . 2121 . 50000"},
			targets: []string{"2001:db8:2::20 . 2001:db8:2::1 . 50000 : 2001:db8:1::10 . 2121"},
		}},
		{"IPv6 no NAT", v6Plain, v6PlainState},
		{"IPv4-mapped spelling", Pinhole{
			Peer:   netip.AddrFrom16(v4NAT.Peer.As16()),
			Public: netip.AddrPortFrom(netip.AddrFrom16(v4NAT.Public.Addr().As16()), v4NAT.Public.Port()),
			Target: netip.AddrPortFrom(netip.AddrFrom16(v4NAT.Target.Addr().As16()), v4NAT.Target.Port()),
		}, v4NATState},
	}
	for _, tt := range tests {
		for _, update := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/update=%v", tt.name, update), func(t *testing.T) {
				n.update = update
				defer func() { n.update = true }()
				f := tt.p.Family()
				if err := n.Open(tt.p); err != nil {
					t.Fatalf("Open: %v", err)
				}
				checkNFTElements(t, f, tt.open)
				// A second reference shares the elements.
				if err := n.Open(tt.p); err != nil {
					t.Fatalf("second Open: %v", err)
				}
				if got := n.Len(); got != 1 {
					t.Errorf("Len() = %d, want 1", got)
				}
				if err := n.Close(tt.p); err != nil {
					t.Fatalf("Close: %v", err)
				}
				checkNFTElements(t, f, tt.open)
				if err := n.Close(tt.p); err != nil {
					t.Fatalf("second Close: %v", err)
				}
				closeSettles()
				checkNFTElements(t, f, nftState{})
				if err := n.Close(tt.p); err != nil {
					t.Fatalf("Close of closed pinhole: %v", err)
				}
				if got := n.Len(); got != 0 {
					t.Errorf("Len() = %d after closing, want 0", got)
				}
			})
		}
	}

	t.Run("elements flushed behind its back", func(t *testing.T) {
		for _, p := range []Pinhole{v4NAT, v4Plain} {
			if err := n.Open(p); err != nil {
				t.Fatal(err)
			}
		}
		run(t, "nft", "flush", "set", "ip", NFTTableName, nftSetNAT)
		// The map element is still there: Close must delete it even
		// though the set element is gone.
		if err := n.Close(v4NAT); err != nil {
			t.Fatalf("Close with set element gone: %v", err)
		}
		closeSettles()
		checkNFTElements(t, IPv4, nftState{routed: []string{"198.51.100.20 . 192.0.2.10 . 2121"}})
		run(t, "nft", "flush", "set", "ip", NFTTableName, nftSetRouted)
		if err := n.Close(v4Plain); err != nil {
			t.Fatalf("Close with nothing left: %v", err)
		}
		if got := n.Len(); got != 0 {
			t.Errorf("Len() = %d, want 0", got)
		}
	})

	t.Run("Install repairs and reopens", func(t *testing.T) {
		for _, p := range []Pinhole{v4NAT, v6Plain} {
			if err := n.Open(p); err != nil {
				t.Fatal(err)
			}
		}
		run(t, "nft", "delete", "table", "ip", NFTTableName)
		if ok, err := n.Check(); err != nil || ok {
			t.Errorf("Check() without the ip table = %v, %v; want false", ok, err)
		}
		if err := n.Install(); err != nil {
			t.Fatalf("Install: %v", err)
		}
		if ok, err := n.Check(); err != nil || !ok {
			t.Errorf("Check() after repair = %v, %v; want true", ok, err)
		}
		checkNFTElements(t, IPv4, v4NATState)
		checkNFTElements(t, IPv6, v6PlainState)
		// Installing over a complete table keeps the elements and does
		// not duplicate rules.
		if err := n.Install(); err != nil {
			t.Fatalf("second Install: %v", err)
		}
		checkNFTElements(t, IPv4, v4NATState)
		if out := run(t, "nft", "list", "chain", "ip", NFTTableName, nftChainMark); strings.Count(out, "meta mark set") != 3 {
			t.Errorf("mark chain after two Installs:\n%s", out)
		}
	})

	t.Run("CloseAll", func(t *testing.T) {
		for _, p := range []Pinhole{v4NAT, v4Plain, v6NAT, v6Plain} {
			if err := n.Open(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.CloseAll(); err != nil {
			t.Fatalf("CloseAll: %v", err)
		}
		for _, f := range families {
			checkNFTElements(t, f, nftState{})
		}
		if got := n.Len(); got != 0 {
			t.Errorf("Len() = %d after CloseAll, want 0", got)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		bad := v4NAT
		bad.Target = v6NAT.Target
		if err := n.Open(bad); !errors.Is(err, ErrInvalidPinhole) {
			t.Errorf("Open(%s) error = %v, want ErrInvalidPinhole", bad, err)
		}
		cfg := nftConfig()
		cfg.IPv6 = false
		v4only, err := NewNFTable(cfg, time.Minute, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := v4only.Open(v6NAT); !errors.Is(err, ErrFamilyDisabled) {
			t.Errorf("Open(IPv6) on IPv4-only NFTable: error = %v, want ErrFamilyDisabled", err)
		}
	})

	t.Run("Remove", func(t *testing.T) {
		if err := n.Open(v4NAT); err != nil {
			t.Fatal(err)
		}
		if err := n.Remove(); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		for _, fam := range []string{"ip", "ip6"} {
			if nftTableExists(t, fam) {
				t.Errorf("table %s %s still exists after Remove", fam, NFTTableName)
			}
		}
		if got := n.Len(); got != 0 {
			t.Errorf("Len() = %d after Remove, want 0", got)
		}
		if err := n.Remove(); err != nil {
			t.Errorf("second Remove: %v", err)
		}
		if err := n.CloseAll(); err != nil {
			t.Errorf("CloseAll without tables: %v", err)
		}
		if ok, err := n.Check(); err != nil || ok {
			t.Errorf("Check() after Remove = %v, %v; want false", ok, err)
		}
		if err := n.Open(v4NAT); !errors.Is(err, ErrNFTables) {
			t.Errorf("Open without tables: error = %v, want ErrNFTables", err)
		}
		if got := n.Len(); got != 0 {
			t.Errorf("failed Open recorded a pinhole: Len() = %d", got)
		}
	})
}

// TestNFTableTimeout checks that the kernel expires an element by itself
// once the pinhole timeout plus NFTTimeoutMargin has passed, and that
// opening the pinhole again restarts the clock, both with the timeout
// updates of Linux 6.10 and later and in the delete-and-add fallback for
// older kernels.
func TestNFTableTimeout(t *testing.T) {
	if !inFreshFNNetns(t, "to") {
		return
	}
	// 3 s (5 s in the kernel with the margin): the check that the
	// refreshed element outlived its first timeout runs 0.3 s after that
	// one and 1.2 s before the refreshed one ends (the update path ends a
	// step early); with 1 s that was 0.2 s, too little for an nft run on a
	// loaded machine (failed twice at load average 11-18).
	const timeout = 3 * time.Second
	n := newInstalledNFTable(t, nftConfig(), timeout)
	if !n.update && kernelAtLeast(t, 6, 10) {
		t.Errorf("Install found no timeout updates on Linux %s", kernelRelease(t))
	}
	for _, update := range []bool{true, false} {
		t.Run(fmt.Sprintf("update=%v", update), func(t *testing.T) {
			n.update = update
			ttl := timeout + NFTTimeoutMargin
			start := time.Now()
			if err := n.Open(v4NAT); err != nil {
				t.Fatal(err)
			}
			time.Sleep(ttl / 2)
			refreshing := time.Now()
			if err := n.Open(v4NAT); err != nil { // refresh
				t.Fatal(err)
			}
			// The kernel restarted the timeouts somewhere in between.
			refreshed := time.Now()
			time.Sleep(ttl/2 + 300*time.Millisecond)
			if got := nftListState(t, IPv4); len(got.nat) != 1 || len(got.targets) != 1 {
				t.Fatalf("element expired %v after opening although it was reopened %v after opening",
					time.Since(start), refreshed.Sub(start))
			}
			earliest, latest := refreshing.Add(ttl), refreshed.Add(ttl)
			if update {
				// The refresh switched the elements to the shorter
				// of the two kernel timeouts.
				earliest, latest = earliest.Add(-nftRefreshStep), latest.Add(-nftRefreshStep)
			}
			waitGone(t, IPv4, earliest, latest)
			// The daemon's Close after the kernel expired the pinhole
			// succeeds.
			for range 2 {
				if err := n.Close(v4NAT); err != nil {
					t.Errorf("Close of expired pinhole: %v", err)
				}
			}
			if n.Len() != 0 {
				t.Errorf("Len() = %d, want 0", n.Len())
			}
		})
	}
}

// kernelRelease returns uname -r.
func kernelRelease(t *testing.T) string {
	t.Helper()
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var maj, min int
	if _, err := fmt.Sscanf(kernelRelease(t), "%d.%d", &maj, &min); err != nil {
		t.Fatalf("parsing kernel release %q: %v", kernelRelease(t), err)
	}
	return maj > major || (maj == major && min >= minor)
}

// waitGone waits until family f's set and map are empty, failing if that
// happens before due or later than one second after it.
//
// The timeout ends between earliest and latest: the test knows when it
// asked for the elements and when the kernel had them, not the instant in
// between (on a loaded machine the two were over 100 ms apart). A listing
// that shows them gone was taken after asking, so "gone before earliest"
// is checked against the time before the listing.
func waitGone(t *testing.T, f Family, earliest, latest time.Time) {
	t.Helper()
	for {
		asked := time.Now()
		empty := nftListState(t, f).empty()
		now := time.Now()
		switch {
		case empty && now.Before(earliest.Add(-100*time.Millisecond)):
			t.Fatalf("%s elements gone %v before their timeout", f, earliest.Sub(now))
		case empty:
			t.Logf("%s elements gone %v after their timeout (%v window)", f, now.Sub(latest).Round(time.Millisecond), latest.Sub(earliest).Round(time.Millisecond))
			return
		case asked.After(latest.Add(time.Second)):
			t.Fatalf("%s elements still present %v after their timeout", f, asked.Sub(latest))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crashTimeout is the pinhole timeout of the process TestNFTableCrash kills.
const crashTimeout = time.Second

// runCrashHelper is the child TestNFTableCrash kills (helper mode
// "nft-crash"): it installs the tables, opens pinholes, prints "ready" and
// waits to be killed.
func runCrashHelper() int {
	n, err := NewNFTable(nftConfig(), crashTimeout, nil)
	if err == nil {
		err = n.Install()
	}
	for _, p := range []Pinhole{v4NAT, v4Plain, v6NAT, v6Plain} {
		if err == nil {
			err = n.Open(p)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

// TestNFTableCrash kills a process holding pinholes open with SIGKILL and
// checks that the kernel drops every element once its timeout passes, and
// that Sweep removes the tables left behind.
func TestNFTableCrash(t *testing.T) {
	if !inFreshFNNetns(t, "cr") {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envHelper+"=nft-crash")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now() // the helper opens its pinholes after this
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper did not start: %q %v", line, err)
	}
	opened := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, f := range families {
		if got := nftListState(t, f); len(got.routed) != 1 || len(got.nat) != 1 || len(got.targets) != 1 {
			t.Fatalf("%s pinholes right after the kill: %+v, want one of each", f, got)
		}
	}
	for _, f := range families {
		waitGone(t, f, started.Add(crashTimeout+NFTTimeoutMargin), opened.Add(crashTimeout+NFTTimeoutMargin))
	}

	// The next run sweeps the tables, whatever families it enables.
	cfg := nftConfig()
	cfg.IPv6 = false
	next, err := NewNFTable(cfg, time.Minute, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	for _, fam := range []string{"ip", "ip6"} {
		if nftTableExists(t, fam) {
			t.Errorf("table %s %s still exists after Sweep", fam, NFTTableName)
		}
	}
	if err := next.Sweep(); err != nil {
		t.Fatalf("second Sweep: %v", err)
	}
}

// newRouterRig builds the topology of TestPinholeTraffic in namespaces with
// this file's prefix and returns them:
//
//	client ns (C)                router ns (R)                 server ns (S)
//	c0 198.51.100.20, .21  ---  r0 198.51.100.1 | r1 192.0.2.1  ---  s0 192.0.2.10:2121
//	   2001:db8:2::20, ::21        2001:db8:2::1 | 2001:db8:1::1      2001:db8:1::10
//
// The router runs an administrator's strict firewall (FORWARD policy DROP,
// INVALID dropped first) plus a port forward of its own: public port 50001
// to the server's 2121, accepted by an ordinary rule.
func newRouterRig(t *testing.T) (c, r, s string) {
	t.Helper()
	c, r, s = newFNNetns(t, "c"), newFNNetns(t, "r"), newFNNetns(t, "s")
	wireRouterTopology(t, c, r, s)
	for _, fw := range []struct {
		f              Family
		public, server string
	}{
		{IPv4, "198.51.100.1", "192.0.2.10"},
		{IPv6, "2001:db8:2::1", "2001:db8:1::10"},
	} {
		to := fw.server + ":2121"
		if fw.f == IPv6 {
			to = "[" + fw.server + "]:2121"
		}
		for _, args := range [][]string{
			{"-P", "FORWARD", "DROP"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "r1", "-o", "r0", "-j", "ACCEPT"},
			{"-t", "nat", "-A", "PREROUTING", "-d", fw.public, "-p", "tcp", "--dport", "50001",
				"-j", "DNAT", "--to-destination", to},
			{"-A", "FORWARD", "-d", fw.server, "-p", "tcp", "--dport", "2121",
				"-m", "conntrack", "--ctstate", "NEW", "--ctorigdstport", "50001", "-j", "ACCEPT"},
		} {
			run(t, "ip", append([]string{"netns", "exec", r, fw.f.command()}, args...)...)
		}
	}
	return c, r, s
}

// dialFrom reports whether src in clientNS reaches the test server's banner
// at dst within one second, before TCP's first SYN retransmission, so a
// pinhole missing when Open returned fails the test rather than being
// rescued by a retry.
func dialFrom(t *testing.T, clientNS, src, dst string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := execIn(ctx, t, clientNS, []string{envHelper + "=dial", envHelperArgs + "=" + src + " " + dst}).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("dial %s -> %s hung", src, dst)
	}
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("dial %s -> %s: %v\n%s", src, dst, err, out)
	}
	t.Logf("dial %s -> %s: ok=%v %s", src, dst, err == nil, strings.TrimSpace(string(out)))
	return err == nil
}

// TestNFTableTraffic sends real TCP connections through a router whose
// iptables firewall has FORWARD policy DROP and checks that an nftables
// pinhole admits exactly the expected connection, routed and NAT'd, IPv4
// and IPv6, only while its element exists, and that its mechanism neither
// relies on an nftables accept nor can be triggered by another rule's mark.
func TestNFTableTraffic(t *testing.T) {
	if inChild() {
		nftTrafficBody(t)
		return
	}
	requireRoot(t)
	requireNFT(t)
	c, r, s := newRouterRig(t)
	startServer(t, s, "192.0.2.10:2121", "[2001:db8:1::10]:2121")
	runTestIn(t, r, envClientNS+"="+c)
}

func nftTrafficBody(t *testing.T) {
	clientNS := os.Getenv(envClientNS)
	cfg := nftConfig()
	n := newInstalledNFTable(t, cfg, time.Minute)
	dial := func(src, dst string) bool {
		t.Helper()
		return dialFrom(t, clientNS, src, dst)
	}

	tests := []struct {
		name           string
		p              Pinhole
		otherPeer      string // a different client address
		public, direct string
		forward        string // the administrator's port forward to the same target
	}{
		{"IPv4 DNAT", v4NAT, "198.51.100.21", "198.51.100.1:50000", "192.0.2.10:2121", ""},
		{"IPv6 DNAT", v6NAT, "2001:db8:2::21", "[2001:db8:2::1]:50000", "[2001:db8:1::10]:2121", ""},
		{"IPv4 routed", v4Plain, "198.51.100.21", "192.0.2.10:2121", "", ""},
		{"IPv6 routed", v6Plain, "2001:db8:2::21", "[2001:db8:1::10]:2121", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer := tt.p.Peer.String()
			if dial(peer, tt.public) {
				t.Fatalf("%s reached %s before the pinhole was opened", peer, tt.public)
			}
			if err := n.Open(tt.p); err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !dial(peer, tt.public) {
				t.Errorf("%s could not reach %s through open pinhole %s; state:\n%s\n%s", peer, tt.public, tt.p,
					run(t, "nft", "list", "ruleset"), strings.Join(ipt(t, tt.p.Family(), "-v", "-S"), "\n"))
			}
			if dial(tt.otherPeer, tt.public) {
				t.Errorf("%s reached %s through pinhole for %s", tt.otherPeer, tt.public, peer)
			}
			if tt.direct != "" && dial(peer, tt.direct) {
				t.Errorf("%s reached %s directly through NAT pinhole %s", peer, tt.direct, tt.p)
			}
			if err := n.Close(tt.p); err != nil {
				t.Fatalf("Close: %v", err)
			}
			// With timeout updates, Close gives the elements
			// nftExpireNow: they stop matching at the next jiffy
			// (10 ms at the lowest HZ), not at once.
			time.Sleep(10*time.Millisecond + nftExpireNow)
			if dial(peer, tt.public) {
				// Diagnostics: a reopened conntrack entry or a live
				// element would show here.
				ct, _ := exec.Command("conntrack", "-L").CombinedOutput()
				t.Errorf("%s reached %s after the pinhole was closed; conntrack:\n%s\nnftables:\n%s",
					peer, tt.public, ct, run(t, "nft", "list", "table", famName(tt.p.Family()), NFTTableName))
			}
		})
	}

	t.Run("kernel timeout closes it", func(t *testing.T) {
		short, err := NewNFTable(cfg, 500*time.Millisecond, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := short.Install(); err != nil { // the same tables: a no-op
			t.Fatal(err)
		}
		opened := time.Now()
		if err := short.Open(v4NAT); err != nil {
			t.Fatal(err)
		}
		if !dial("198.51.100.20", "198.51.100.1:50000") {
			t.Fatal("pinhole with a short timeout did not admit the connection")
		}
		time.Sleep(time.Until(opened.Add(500*time.Millisecond + NFTTimeoutMargin + 100*time.Millisecond)))
		if dial("198.51.100.20", "198.51.100.1:50000") {
			t.Error("pinhole still admits connections after its kernel timeout")
		}
		if err := short.Close(v4NAT); err != nil {
			t.Errorf("Close after expiry: %v", err)
		}
	})

	t.Run("nftables accept does not override iptables DROP", func(t *testing.T) {
		// What NFTable deliberately does not rely on: an accept in an
		// nftables base chain of its own at the forward hook. The
		// counter shows the chain accepted the SYNs; iptables' FORWARD
		// policy dropped them all the same.
		run(t, "nft", "add", "table", "inet", "fnproof")
		defer run(t, "nft", "delete", "table", "inet", "fnproof")
		run(t, "nft", "add", "chain", "inet", "fnproof", "allow",
			"{ type filter hook forward priority filter - 5; policy accept; }")
		run(t, "nft", "add", "rule", "inet", "fnproof", "allow", "tcp", "dport", "2121", "counter", "accept")
		if dial("198.51.100.20", "192.0.2.10:2121") {
			t.Error("an nftables accept overrode iptables' FORWARD policy DROP")
		}
		if out := run(t, "nft", "list", "chain", "inet", "fnproof", "allow"); strings.Contains(out, "packets 0 ") {
			t.Errorf("the nftables accept rule saw no packets, so the test proves nothing:\n%s", out)
		}
	})

	t.Run("another rule's mark opens nothing", func(t *testing.T) {
		mark := fmt.Sprintf("%#x/%#x", cfg.AcceptMark, cfg.AcceptMark)
		for _, f := range families {
			ipt(t, f, "-t", "mangle", "-A", "FORWARD", "-j", "MARK", "--set-xmark", mark)
		}
		defer func() {
			for _, f := range families {
				ipt(t, f, "-t", "mangle", "-D", "FORWARD", "-j", "MARK", "--set-xmark", mark)
			}
		}()
		if dial("198.51.100.20", "192.0.2.10:2121") {
			t.Error("a mangle FORWARD rule setting the accept mark opened the firewall")
		}
		if dial("2001:db8:2::20", "[2001:db8:1::10]:2121") {
			t.Error("a mangle FORWARD rule setting the accept mark opened the IPv6 firewall")
		}
	})

	t.Run("administrator's port forward still works", func(t *testing.T) {
		// pinhole_dnat runs before iptables' nat PREROUTING: packets it
		// does not translate must still reach the administrator's DNAT.
		if !dial("198.51.100.20", "198.51.100.1:50001") {
			t.Error("the administrator's IPv4 port forward broke with ftpalg's nat chain present")
		}
		if !dial("2001:db8:2::20", "[2001:db8:2::1]:50001") {
			t.Error("the administrator's IPv6 port forward broke with ftpalg's nat chain present")
		}
	})

	t.Run("with DataMark the pinhole marks the connection it admits", func(t *testing.T) {
		// Last: installing with DataMark rewrites the shared mark chains.
		dcfg := cfg
		dcfg.DataMark = DefaultAcceptMark
		dm, err := NewNFTable(dcfg, time.Minute, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if !dm.MarksDataConnections() || n.MarksDataConnections() {
			t.Fatalf("MarksDataConnections: %v with DataMark, %v without", dm.MarksDataConnections(), n.MarksDataConnections())
		}
		if err := dm.Install(); err != nil {
			t.Fatal(err)
		}
		for _, fam := range []string{"ip", "ip6"} {
			if out := run(t, "nft", "list", "chain", fam, NFTTableName, nftChainMark); strings.Count(out, "ct mark set ct mark | 0x20000000") != 2 {
				t.Errorf("%s mark chain with DataMark: want ct mark set in both pinhole rules:\n%s", fam, out)
			}
		}
		run(t, "conntrack", "-F")
		run(t, "conntrack", "-F", "-f", "ipv6")
		for _, tt := range []struct {
			p             Pinhole
			peer, dst     string
			family, dport string
		}{
			{v4NAT, "198.51.100.20", "198.51.100.1:50000", "ipv4", "50000"},
			{v6Plain, "2001:db8:2::20", "[2001:db8:1::10]:2121", "ipv6", "2121"},
		} {
			if err := dm.Open(tt.p); err != nil {
				t.Fatal(err)
			}
			if !dial(tt.peer, tt.dst) {
				t.Fatalf("%s could not reach %s through %s", tt.peer, tt.dst, tt.p)
			}
			if err := dm.Close(tt.p); err != nil {
				t.Fatal(err)
			}
			if marks := ctMarks(t, tt.family, tt.peer, tt.dport); len(marks) != 1 || marks[0]&DefaultAcceptMark == 0 {
				t.Errorf("%s -> %s through a pinhole: ct marks %#x, want one entry with %#x", tt.peer, tt.dst, marks, DefaultAcceptMark)
			}
		}
		// The administrator's own port forward is not a pinhole's.
		if !dial("198.51.100.20", "198.51.100.1:50001") {
			t.Fatal("the administrator's port forward broke")
		}
		if marks := ctMarks(t, "ipv4", "198.51.100.20", "50001"); len(marks) != 1 || marks[0]&DefaultAcceptMark != 0 {
			t.Errorf("a port-forwarded connection: ct marks %#x, want one entry without %#x", marks, DefaultAcceptMark)
		}
	})

	for _, f := range families {
		for _, line := range ipt(t, f, "-v", "-S", "FORWARD") {
			if strings.Contains(line, "INVALID") && !strings.Contains(line, "-c 0 0") {
				t.Errorf("%s INVALID drop rule counted packets: %s", f, line)
			}
		}
	}
}

// ctMarks returns the ct marks of the TCP conntrack entries from src to
// the original destination port dport, as conntrack -L prints them.
func ctMarks(t *testing.T, family, src, dport string) []uint32 {
	t.Helper()
	out, err := exec.Command("conntrack", "-L", "-f", family, "-p", "tcp", "-s", src, "--dport", dport).CombinedOutput()
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	var marks []uint32
	for _, m := range regexp.MustCompile(`mark=(\d+)`).FindAllStringSubmatch(string(out), -1) {
		v, err := strconv.ParseUint(m[1], 10, 32)
		if err != nil {
			t.Fatalf("conntrack -L: %v\n%s", err, out)
		}
		marks = append(marks, uint32(v))
	}
	return marks
}

// TestMeasureNFTableLatency measures Open and Close of the netlink backend against
// Table's iptables execs in the same run, over nftLatencyN pinholes of each
// kind, all open at once before they are closed. It reports figures and
// asserts nothing about them: the machines are shared and noisy.
func TestMeasureNFTableLatency(t *testing.T) {
	if os.Getenv("FTPALG_MEASURE") == "" {
		t.Skip("a measurement, not a check: run with FTPALG_MEASURE=1 (make bench-pinholes)")
	}
	if !inFreshFNNetns(t, "lt") {
		return
	}
	const nftLatencyN = 250
	cfg := nftConfig()
	n := newInstalledNFTable(t, cfg, time.Minute) // also installs the chains Table needs
	tbl, err := NewTable(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []struct {
		name string
		make func(i int) Pinhole
	}{
		{"IPv4 NAT", func(i int) Pinhole {
			p := v4NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(50000+i))
			return p
		}},
		{"IPv4 routed", func(i int) Pinhole {
			p := v4Plain
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(40000+i))
			p.Target = p.Public
			return p
		}},
		{"IPv6 NAT", func(i int) Pinhole {
			p := v6NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(50000+i))
			return p
		}},
	}
	backends := []struct {
		name string
		fw   interface {
			Open(Pinhole) error
			Close(Pinhole) error
		}
	}{{"iptables (Table)", tbl}, {"nftables (NFTable)", n}}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-20s %-12s %10s %10s %10s %10s %10s %10s\n",
		"backend", "pinholes", "open p50", "open p99", "open max", "close p50", "close p99", "close max")
	for _, k := range kinds {
		for _, b := range backends {
			var opens, closes []time.Duration
			for i := range nftLatencyN {
				start := time.Now()
				if err := b.fw.Open(k.make(i)); err != nil {
					t.Fatalf("%s Open: %v", b.name, err)
				}
				opens = append(opens, time.Since(start))
			}
			for i := range nftLatencyN {
				start := time.Now()
				if err := b.fw.Close(k.make(i)); err != nil {
					t.Fatalf("%s Close: %v", b.name, err)
				}
				closes = append(closes, time.Since(start))
			}
			fmt.Fprintf(&report, "%-20s %-12s %10v %10v %10v %10v %10v %10v\n", b.name, k.name,
				pct(opens, 50), pct(opens, 99), pct(opens, 100), pct(closes, 50), pct(closes, 99), pct(closes, 100))
		}
	}
	t.Logf("n=%d per row, all open at once before closing:%s", nftLatencyN, report.String())

	// The daemon closes pinholes on a worker goroutine while new ones
	// are opened for packets being held: measure opens, one per
	// millisecond, while closes run at the same pace.
	report.Reset()
	fmt.Fprintf(&report, "\n%-20s %10s %10s %10s %10s %10s\n",
		"backend", "open p50", "open p99", "open max", "close p50", "close p99")
	for _, b := range backends {
		closing := func(i int) Pinhole { return kinds[0].make(i) }
		opening := func(i int) Pinhole { return kinds[0].make(nftLatencyN + i) }
		for i := range nftLatencyN {
			if err := b.fw.Open(closing(i)); err != nil {
				t.Fatal(err)
			}
		}
		paced := func(fn func(Pinhole) error, make func(int) Pinhole) []time.Duration {
			var ds []time.Duration
			for i := range nftLatencyN {
				start := time.Now()
				if err := fn(make(i)); err != nil {
					t.Errorf("%s: %v", b.name, err)
				}
				ds = append(ds, time.Since(start))
				time.Sleep(time.Millisecond)
			}
			return ds
		}
		done := make(chan []time.Duration)
		go func() { done <- paced(b.fw.Close, closing) }()
		opens := paced(b.fw.Open, opening)
		closes := <-done
		for i := range nftLatencyN {
			if err := b.fw.Close(opening(i)); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Fprintf(&report, "%-20s %10v %10v %10v %10v %10v\n", b.name,
			pct(opens, 50), pct(opens, 99), pct(opens, 100), pct(closes, 50), pct(closes, 99))
	}
	t.Logf("IPv4 NAT, %d opens and %d closes concurrently, each stream paced 1 ms apart:%s", nftLatencyN, nftLatencyN, report.String())
}

// TestChainsAcceptMark checks the static FTPALG-ACCEPT rule that Chains
// installs, checks and repairs for NFTable, and that Fragment renders the
// same rule for administrators' scripts.
func TestChainsAcceptMark(t *testing.T) {
	if !inFreshFNNetns(t, "am") {
		return
	}
	cfg := nftConfig()
	mark := `-A FTPALG-ACCEPT -p tcp -m mark --mark 0x20000000/0x20000000 -m conntrack --ctstate NEW -m comment --comment "ftpalg nftables pinholes" -j ACCEPT`
	for _, f := range families {
		adminFirewall(t, f)
	}
	c, err := NewChains(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // Install is idempotent
		if err := c.Install(); err != nil {
			t.Fatalf("Install: %v", err)
		}
		for _, f := range families {
			checkListing(t, f, "filter", ChainAccept, "-N "+ChainAccept, mark)
		}
	}
	checkTrue(t, c, true)
	ipt(t, IPv6, "-F", ChainAccept)
	checkTrue(t, c, false)
	if err := c.Install(); err != nil {
		t.Fatalf("Install after flush: %v", err)
	}
	checkListing(t, IPv6, "filter", ChainAccept, "-N "+ChainAccept, mark)
	checkTrue(t, c, true)
	if err := c.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, f := range families {
		checkGone(t, f)
		frag, err := Fragment(cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(f.command()+"-restore", "--noflush")
		cmd.Stdin = strings.NewReader(frag)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s-restore rejected the fragment: %v\n%s\n%s", f.command(), err, out, frag)
		}
		checkListing(t, f, "filter", ChainAccept, "-N "+ChainAccept, mark)
	}
	checkTrue(t, c, true)
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
}
