package rules

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// These tests follow the harness in netns_linux_test.go with their own
// namespace prefix, "sq" (sq<pid><tag><n>), read the table back with the
// nft tool, and watch its effect through ctnetlink and the conntrack tool
// in a NAT router of their own (see newSeqAdjRig).

// sqNetnsCount makes the names of the namespaces one process creates
// unique.
var sqNetnsCount atomic.Int32

// newSQNetns creates a namespace named sq<pid><tag><n>, deleted when the
// test ends.
func newSQNetns(t *testing.T, tag string) string {
	t.Helper()
	name := fmt.Sprintf("sq%d%s%d", os.Getpid(), tag, sqNetnsCount.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// inFreshSQNetns is inFreshNetns with this file's namespace prefix.
func inFreshSQNetns(t *testing.T, tag string) bool {
	t.Helper()
	if inChild() {
		return true
	}
	requireRoot(t)
	requireNFT(t)
	runTestIn(t, newSQNetns(t, tag))
	return false
}

// newSeqAdj returns a SeqAdjTable for cfg.
func newSeqAdj(t *testing.T, cfg Config) *SeqAdjTable {
	t.Helper()
	tbl, err := NewSeqAdjTable(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// checkSeqAdjInstalled fails unless Installed reports want.
func checkSeqAdjInstalled(t *testing.T, tbl *SeqAdjTable, want bool) {
	t.Helper()
	got, err := tbl.Installed()
	if err != nil {
		t.Fatalf("Installed: %v", err)
	}
	if got != want {
		t.Errorf("Installed() = %v, want %v", got, want)
	}
}

// nftListSeqAdj returns `nft list table inet ftpalg_seqadj` in the
// current namespace, and whether the table exists.
func nftListSeqAdj(t *testing.T) (string, bool) {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", "inet", SeqAdjTableName).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file or directory") {
			return "", false
		}
		t.Fatalf("nft list table inet %s: %v\n%s", SeqAdjTableName, err, out)
	}
	return string(out), true
}

// seqAdjLine is a line nft must list n times: a regular expression
// matching the whole line, leading tabs removed.
type seqAdjLine struct {
	re string
	n  int
}

// seqAdjListing is what nft must list for a table with the given families
// and ports (as nft prints the set's elements).
func seqAdjListing(fams []Family, ports string) []seqAdjLine {
	n := len(fams)
	ls := []seqAdjLine{
		{`table inet ` + SeqAdjTableName + ` \{`, 1},
		{`set ` + SeqAdjSetPorts + ` \{`, 1},
		{`type inet_service`, 1},
		{`elements = \{ ` + regexp.QuoteMeta(ports) + ` \}`, 1},
		{`chain ` + SeqAdjChainPrerouting + ` \{`, 1},
		{`type filter hook prerouting priority mangle; policy accept;`, 1},
		{`chain ` + SeqAdjChainOutput + ` \{`, 1},
		{`type filter hook output priority mangle; policy accept;`, 1},
		{`protocol udp`, n},
		{`dport 9`, n},
		{`timeout 1ms`, n},
		{`size 0`, n},
	}
	for _, f := range fams {
		name := seqAdjExpectName(f)
		nfproto, l3proto := "ipv4", "ip"
		if f == IPv6 {
			nfproto, l3proto = "ipv6", "ip6"
		}
		ls = append(ls,
			seqAdjLine{`ct expectation ` + name + ` \{`, 1},
			seqAdjLine{`l3proto ` + l3proto, 1},
			// One rule in each chain.
			seqAdjLine{`meta nfproto ` + nfproto + ` tcp dport @` + SeqAdjSetPorts + ` ct state new ct expectation set "` + name + `"`, 2},
		)
	}
	return ls
}

// checkSeqAdjListing fails unless listing has each of want's lines as
// often as it says.
func checkSeqAdjListing(t *testing.T, listing string, want []seqAdjLine) {
	t.Helper()
	lines := strings.Split(listing, "\n")
	for _, w := range want {
		re := regexp.MustCompile(`^` + w.re + `$`)
		n := 0
		for _, l := range lines {
			if re.MatchString(strings.TrimLeft(l, "\t")) {
				n++
			}
		}
		if n != w.n {
			t.Errorf("nft listing has %d lines matching %q, want %d:\n%s", n, w.re, w.n, listing)
		}
	}
}

// TestSeqAdjInstallRemove installs the table in a fresh namespace and
// reads it back with nft: Install is one transaction, a second Install
// changes nothing, an Install with another Config replaces what is there,
// Remove removes it and a second Remove does nothing.
func TestSeqAdjInstallRemove(t *testing.T) {
	if !inFreshSQNetns(t, "i") {
		return
	}
	g, err := OpenGeneration()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gen := func() uint32 {
		t.Helper()
		id, err := g.ID()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	tbl := newSeqAdj(t, Config{ControlPorts: []uint16{2121, 21, 21}, IPv4: true, IPv6: true})
	checkSeqAdjInstalled(t, tbl, false)
	before := gen()
	if err := tbl.Install(); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if after := gen(); after != before+1 {
		t.Errorf("Install moved the ruleset generation from %d to %d: want one transaction", before, after)
	}
	first, ok := nftListSeqAdj(t)
	if !ok {
		t.Fatal("no table after Install")
	}
	t.Logf("nft list table inet %s:\n%s", SeqAdjTableName, first)
	checkSeqAdjListing(t, first, seqAdjListing([]Family{IPv4, IPv6}, "21, 2121"))
	checkSeqAdjInstalled(t, tbl, true)

	// Again: one more transaction, the same table.
	before = gen()
	if err := tbl.Install(); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if after := gen(); after != before+1 {
		t.Errorf("second Install moved the ruleset generation from %d to %d: want one transaction", before, after)
	}
	if again, _ := nftListSeqAdj(t); again != first {
		t.Errorf("listing after the second Install:\n%s\nwant the first:\n%s", again, first)
	}
	checkSeqAdjInstalled(t, tbl, true)

	// Another Config replaces the table whole: no IPv6 object or rules
	// are left, and the first table counts as not installed.
	v4 := newSeqAdj(t, Config{ControlPorts: []uint16{990}, IPv4: true})
	if err := v4.Install(); err != nil {
		t.Fatalf("IPv4-only Install: %v", err)
	}
	replaced, _ := nftListSeqAdj(t)
	checkSeqAdjListing(t, replaced, seqAdjListing([]Family{IPv4}, "990"))
	if strings.Contains(replaced, SeqAdjExpectIPv6) || strings.Contains(replaced, "ipv6") || strings.Contains(replaced, "2121") {
		t.Errorf("IPv4-only Install left parts of the first table:\n%s", replaced)
	}
	checkSeqAdjInstalled(t, v4, true)
	checkSeqAdjInstalled(t, tbl, false)
	if err := tbl.Install(); err != nil {
		t.Fatalf("Install over the IPv4-only table: %v", err)
	}
	if back, _ := nftListSeqAdj(t); back != first {
		t.Errorf("listing after reinstalling the first Config:\n%s\nwant:\n%s", back, first)
	}

	// A flushed chain is not installed; Install repairs it.
	run(t, "nft", "flush", "chain", "inet", SeqAdjTableName, SeqAdjChainOutput)
	checkSeqAdjInstalled(t, tbl, false)
	if err := tbl.Install(); err != nil {
		t.Fatalf("Install after a flushed chain: %v", err)
	}
	checkSeqAdjInstalled(t, tbl, true)

	// What nft makes of its own listing: it refuses size 0.
	check := exec.Command("nft", "-c", "-f", "-")
	check.Stdin = strings.NewReader(first)
	if out, err := check.CombinedOutput(); err == nil {
		t.Logf("nft -c accepts its listing of the table")
	} else {
		t.Logf("nft -c refuses its listing of the table (expected: size 0): %v\n%s", err, out)
	}

	if err := tbl.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if l, ok := nftListSeqAdj(t); ok {
		t.Errorf("table still there after Remove:\n%s", l)
	}
	checkSeqAdjInstalled(t, tbl, false)
	before = gen()
	if err := tbl.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if after := gen(); after != before {
		t.Errorf("second Remove moved the ruleset generation from %d to %d", before, after)
	}
	checkSeqAdjInstalled(t, tbl, false)
}

// seqAdjRig is a NAT router between a client and a server, each in its
// own namespace:
//
//	client ns (c)               router ns (r)                       server ns (s)
//	c0 192.0.2.10      ---  in0 192.0.2.1 | out0 198.51.100.1  ---  s0 198.51.100.10 :21 :2121
//	   2001:db8:1::10           2001:db8:1::1 | 2001:db8:2::1          2001:db8:2::10
//
// The router MASQUERADEs everything leaving out0 (iptables and ip6tables),
// and DNATs its own connections to 203.0.113.21 and 2001:db8:3::21 to the
// server (nat OUTPUT). The server has no route to the client's networks,
// so only NAT'd connections reach it. The router also listens on port 21
// itself, for connections without NAT.
type seqAdjRig struct {
	c, r, s string
	ct      *conntrack.Conn // ctnetlink in the router

	mu    sync.Mutex
	conns []net.Conn // accepted by the listeners, closed at the end
}

// The rig's addresses.
var (
	sqClient     = map[Family]netip.Addr{IPv4: netip.MustParseAddr("192.0.2.10"), IPv6: netip.MustParseAddr("2001:db8:1::10")}
	sqRouterIn   = map[Family]netip.Addr{IPv4: netip.MustParseAddr("192.0.2.1"), IPv6: netip.MustParseAddr("2001:db8:1::1")}
	sqServer     = map[Family]netip.Addr{IPv4: netip.MustParseAddr("198.51.100.10"), IPv6: netip.MustParseAddr("2001:db8:2::10")}
	sqDNATPublic = map[Family]netip.Addr{IPv4: netip.MustParseAddr("203.0.113.21"), IPv6: netip.MustParseAddr("2001:db8:3::21")}
)

func newSeqAdjRig(t *testing.T) *seqAdjRig {
	t.Helper()
	requireRoot(t)
	requireNFT(t)
	testenv.RequireTool(t, "conntrack")
	r := &seqAdjRig{c: newSQNetns(t, "c"), r: newSQNetns(t, "r"), s: newSQNetns(t, "s")}
	for _, ns := range []string{r.c, r.r, r.s} {
		// No duplicate address detection: a tentative address would
		// delay the first IPv6 connection.
		run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	run(t, "ip", "netns", "exec", r.r, "sysctl", "-q", "-w",
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for _, args := range [][]string{
		{"-n", r.r, "link", "add", "in0", "type", "veth", "peer", "name", "c0", "netns", r.c},
		{"-n", r.r, "link", "add", "out0", "type", "veth", "peer", "name", "s0", "netns", r.s},
		{"-n", r.c, "addr", "add", "192.0.2.10/24", "dev", "c0"},
		{"-n", r.c, "addr", "add", "2001:db8:1::10/64", "dev", "c0", "nodad"},
		{"-n", r.r, "addr", "add", "192.0.2.1/24", "dev", "in0"},
		{"-n", r.r, "addr", "add", "2001:db8:1::1/64", "dev", "in0", "nodad"},
		{"-n", r.r, "addr", "add", "198.51.100.1/24", "dev", "out0"},
		{"-n", r.r, "addr", "add", "2001:db8:2::1/64", "dev", "out0", "nodad"},
		{"-n", r.s, "addr", "add", "198.51.100.10/24", "dev", "s0"},
		{"-n", r.s, "addr", "add", "2001:db8:2::10/64", "dev", "s0", "nodad"},
		{"-n", r.c, "link", "set", "c0", "up"},
		{"-n", r.c, "link", "set", "lo", "up"},
		{"-n", r.r, "link", "set", "in0", "up"},
		{"-n", r.r, "link", "set", "out0", "up"},
		{"-n", r.r, "link", "set", "lo", "up"},
		{"-n", r.s, "link", "set", "s0", "up"},
		{"-n", r.s, "link", "set", "lo", "up"},
		{"-n", r.c, "route", "add", "default", "via", "192.0.2.1"},
		{"-n", r.c, "-6", "route", "add", "default", "via", "2001:db8:1::1"},
		// Routes for the router's own connections to the DNAT'd
		// addresses, rerouted to the server after nat OUTPUT.
		{"-n", r.r, "route", "add", "203.0.113.0/24", "via", "198.51.100.10"},
		{"-n", r.r, "-6", "route", "add", "2001:db8:3::/64", "via", "2001:db8:2::10"},
	} {
		run(t, "ip", args...)
	}
	for _, f := range []Family{IPv4, IPv6} {
		to := netip.AddrPortFrom(sqServer[f], 21).String()
		for _, args := range [][]string{
			{"-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE"},
			{"-t", "nat", "-A", "OUTPUT", "-d", sqDNATPublic[f].String(), "-p", "tcp", "--dport", "21",
				"-j", "DNAT", "--to-destination", to},
		} {
			run(t, "ip", append([]string{"netns", "exec", r.r, f.command()}, args...)...)
		}
	}
	r.listen(t, r.s, 21)
	r.listen(t, r.s, 2121)
	r.listen(t, r.r, 21)
	// One connection per family to a port no table matches, so that
	// the tests' own connections never wait for neighbour discovery:
	// the router here ignores the client's first IPv6 neighbour
	// solicitation after setup, and the first IPv6 connection waits a
	// second for the retry, table or not.
	for _, f := range []Family{IPv4, IPv6} {
		r.dial(t, r.c, netip.AddrPortFrom(sqServer[f], 2121))
	}
	inNamespace(t, r.r, func() (err error) { r.ct, err = conntrack.Dial(nil); return err })
	t.Cleanup(func() { r.ct.Close() })
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	return r
}

// listen accepts connections to port in ns, one listener per family, and
// keeps them open until the test ends. Not one dual-stack listener: Go
// probes once per process, by binding to ::1, whether IPv6 works, in
// whatever namespace it first asks; in one whose loopback is down (an
// earlier test's), ":port" then means IPv4 only. In the whole package run
// the IPv6 connections were refused.
func (r *seqAdjRig) listen(t *testing.T, ns string, port int) {
	t.Helper()
	for _, network := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		inNamespace(t, ns, func() (err error) { ln, err = net.Listen(network, fmt.Sprintf(":%d", port)); return err })
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				r.mu.Lock()
				r.conns = append(r.conns, c)
				r.mu.Unlock()
			}
		}()
	}
}

// install installs tbl in the router, removed when the test ends.
func (r *seqAdjRig) install(t *testing.T, tbl *SeqAdjTable) {
	t.Helper()
	inNamespace(t, r.r, tbl.Install)
	t.Cleanup(func() {
		inNamespace(t, r.r, tbl.Remove)
	})
}

// dial connects from ns to dst and returns the connection's original
// conntrack tuple (as the dialer sees it: before any NAT on the router)
// and how long the connect took. The connection stays open until the test
// ends.
func (r *seqAdjRig) dial(t *testing.T, ns string, dst netip.AddrPort) (conntrack.Tuple, time.Duration) {
	t.Helper()
	var (
		c    net.Conn
		took time.Duration
	)
	inNamespace(t, ns, func() (err error) {
		start := time.Now()
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", dst.String())
		took = time.Since(start)
		return err
	})
	t.Cleanup(func() { c.Close() })
	t.Logf("connected %v -> %v in %v", c.LocalAddr(), dst, took)
	la := c.LocalAddr().(*net.TCPAddr).AddrPort()
	ra := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: la.Addr().Unmap(), DestinationAddress: ra.Addr().Unmap()},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: la.Port(), DestinationPort: ra.Port()},
	}, took
}

// get reads the router's entry with original tuple orig, waiting a
// bounded time for it to appear. It dumps the table rather than asking
// for the entry: on this kernel (6.18) ctnetlink flags its answer to a
// get NLM_F_MULTI and ends it with an ack, not NLMSG_DONE, and
// ti-mo/conntrack's Get then waits for the end forever.
func (r *seqAdjRig) get(t *testing.T, orig conntrack.Tuple) conntrack.Flow {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		flows, err := r.ct.Dump(nil)
		if err != nil {
			t.Fatalf("dumping the router's conntrack table: %v", err)
		}
		for _, f := range flows {
			if f.TupleOrig.IP == orig.IP && f.TupleOrig.Proto.Protocol == orig.Proto.Protocol &&
				f.TupleOrig.Proto.SourcePort == orig.Proto.SourcePort &&
				f.TupleOrig.Proto.DestinationPort == orig.Proto.DestinationPort {
				return f
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conntrack entry %v in the router", orig)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Sequence adjustments the tests write: all fields non-zero, as
// ti-mo/conntrack only sends a filled one. The connections carry no data
// afterwards, so the offsets the kernel then applies harm nothing.
var (
	sqAdjOrig  = conntrack.SequenceAdjust{Position: 1000, OffsetBefore: 1, OffsetAfter: 7}
	sqAdjReply = conntrack.SequenceAdjust{Direction: true, Position: 2000, OffsetBefore: 2, OffsetAfter: 5}
)

// writeSeqAdj writes a sequence adjustment in both directions to the
// router's entry with original tuple orig, reads the entry back and
// reports whether the kernel took it: the status has IPS_SEQ_ADJUST and
// the entry holds what was written. An entry without the seqadj extension
// must come back with neither.
func (r *seqAdjRig) writeSeqAdj(t *testing.T, orig conntrack.Tuple) bool {
	t.Helper()
	f := r.get(t, orig)
	upd := conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, SeqAdjOrig: sqAdjOrig, SeqAdjReply: sqAdjReply}
	if err := r.ct.Update(upd); err != nil {
		t.Fatalf("writing seqadj to %v: %v", orig, err)
	}
	got := r.get(t, orig)
	same := func(a, b conntrack.SequenceAdjust) bool {
		return a.Position == b.Position && a.OffsetBefore == b.OffsetBefore && a.OffsetAfter == b.OffsetAfter
	}
	took := got.Status&conntrack.StatusSeqAdjust != 0
	t.Logf("%v -> reply %v: status %v, helper %q, seqadj %v / %v", got.TupleOrig, got.TupleReply,
		got.Status, got.Helper.Name, got.SeqAdjOrig, got.SeqAdjReply)
	switch {
	case took && !(same(got.SeqAdjOrig, sqAdjOrig) && same(got.SeqAdjReply, sqAdjReply)):
		t.Errorf("%v: SEQ_ADJUST set, but seqadj reads %v / %v, want %v / %v",
			orig, got.SeqAdjOrig, got.SeqAdjReply, sqAdjOrig, sqAdjReply)
	case !took && (got.SeqAdjOrig != conntrack.SequenceAdjust{} || got.SeqAdjReply != conntrack.SequenceAdjust{Direction: got.SeqAdjReply.Direction}):
		t.Errorf("%v: no SEQ_ADJUST, but seqadj reads %v / %v", orig, got.SeqAdjOrig, got.SeqAdjReply)
	}
	if got.Helper.Name != "" {
		t.Errorf("%v: helper %q, want none", orig, got.Helper.Name)
	}
	return took
}

// expectations returns the number of the router's expectations of family
// f, checking that the conntrack tool and ctnetlink agree. (The tool lists
// IPv4 only unless told the family.)
func (r *seqAdjRig) expectations(t *testing.T, f Family) int {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", r.r, "conntrack", "-L", "expect", "-f", map[Family]string{IPv4: "ipv4", IPv6: "ipv6"}[f])
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("conntrack -L expect: %v\n%s%s", err, out, stderr.String())
	}
	listed := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			listed++
		}
	}
	exps, err := r.ct.DumpExpect()
	if err != nil {
		t.Fatalf("dumping expectations: %v", err)
	}
	dumped := 0
	for _, e := range exps {
		if familyOf(e.TupleMaster.IP.SourceAddress) == f {
			dumped++
		}
	}
	if listed != dumped {
		t.Errorf("conntrack -L expect -f %v lists %d, ctnetlink dumps %d:\n%s%s", f, listed, dumped, out, stderr.String())
	}
	t.Logf("conntrack -L expect -f %v: %d listed: %s%s", f, listed, out, strings.TrimSpace(stderr.String()))
	return listed
}

// sqFamilies runs fn as one subtest per family, named what + family.
func sqFamilies(t *testing.T, what string, fn func(t *testing.T, f Family)) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(what+" "+f.String(), func(t *testing.T) { fn(t, f) })
	}
}

// TestSeqAdjNAT shows the table's effect on connections through a
// MASQUERADE: without it the router's entries ignore a seqadj update, with
// it they take it, no expectation is ever created, and connections in
// quick succession between the same two hosts connect at once.
func TestSeqAdjNAT(t *testing.T) {
	r := newSeqAdjRig(t)
	server := func(f Family) netip.AddrPort { return netip.AddrPortFrom(sqServer[f], 21) }

	// Without the table: the update is silently ignored.
	plain := map[Family]conntrack.Tuple{}
	sqFamilies(t, "without table", func(t *testing.T, f Family) {
		plain[f], _ = r.dial(t, r.c, server(f))
		if r.writeSeqAdj(t, plain[f]) {
			t.Fatalf("%v took a seqadj without the table: the test could not tell", plain[f])
		}
	})

	tbl := newSeqAdj(t, Config{ControlPorts: []uint16{21}, IPv4: true, IPv6: true})
	r.install(t, tbl)
	sqFamilies(t, "with table", func(t *testing.T, f Family) {
		const n = 5
		var slowest time.Duration
		for i := range n {
			tuple, took := r.dial(t, r.c, server(f))
			slowest = max(slowest, took)
			if !r.writeSeqAdj(t, tuple) {
				t.Errorf("connection %d, %v, through MASQUERADE ignored the seqadj update with the table installed", i, tuple)
			}
		}
		t.Logf("%d connections %v -> %v: slowest connect %v", n, sqClient[f], server(f), slowest)
		if slowest > 250*time.Millisecond {
			t.Errorf("a connection took %v to connect: a SYN was dropped (an expectation clash?)", slowest)
		}
		// Right after the connections: an expectation would live a
		// second.
		if n := r.expectations(t, f); n != 0 {
			t.Errorf("%d %v expectations in the router, want none", n, f)
		}
		// An entry confirmed before Install cannot get the extension.
		if r.writeSeqAdj(t, plain[f]) {
			t.Errorf("%v, opened before Install, took a seqadj", plain[f])
		}
	})
}

// TestSeqAdjOnlyControlPorts checks that the table leaves connections to
// other ports alone, and that a control connection no NAT rewrites gets no
// seqadj either (nf_nat_setup_info() adds it only when the tuple changes).
func TestSeqAdjOnlyControlPorts(t *testing.T) {
	r := newSeqAdjRig(t)
	r.install(t, newSeqAdj(t, Config{ControlPorts: []uint16{21}, IPv4: true, IPv6: true}))
	sqFamilies(t, "ports", func(t *testing.T, f Family) {
		other, _ := r.dial(t, r.c, netip.AddrPortFrom(sqServer[f], 2121))
		if r.writeSeqAdj(t, other) {
			t.Errorf("%v, not to a control port, took a seqadj", other)
		}
		local, _ := r.dial(t, r.c, netip.AddrPortFrom(sqRouterIn[f], 21))
		if r.writeSeqAdj(t, local) {
			t.Errorf("%v, to the router itself without NAT, took a seqadj", local)
		}
		control, _ := r.dial(t, r.c, netip.AddrPortFrom(sqServer[f], 21))
		if !r.writeSeqAdj(t, control) {
			t.Errorf("%v, to the control port through MASQUERADE, ignored the seqadj update", control)
		}
	})
}

// TestSeqAdjLocalOutput checks the output chain: the router's own
// connections, DNAT'd in nat OUTPUT, get seqadj with the table, not once
// the output chain is flushed (prerouting never sees them), and again
// after Install repaired it.
func TestSeqAdjLocalOutput(t *testing.T) {
	r := newSeqAdjRig(t)
	tbl := newSeqAdj(t, Config{ControlPorts: []uint16{21}, IPv4: true, IPv6: true})
	r.install(t, tbl)
	public := func(f Family) netip.AddrPort { return netip.AddrPortFrom(sqDNATPublic[f], 21) }
	took := func(t *testing.T, f Family) {
		tuple, _ := r.dial(t, r.r, public(f))
		if !r.writeSeqAdj(t, tuple) {
			t.Errorf("the router's own connection %v, DNAT'd in nat OUTPUT, ignored the seqadj update", tuple)
		}
	}
	sqFamilies(t, "with table", took)
	run(t, "ip", "netns", "exec", r.r, "nft", "flush", "chain", "inet", SeqAdjTableName, SeqAdjChainOutput)
	var ok bool
	inNamespace(t, r.r, func() (err error) { ok, err = tbl.Installed(); return err })
	if ok {
		t.Errorf("Installed() = true with the output chain flushed")
	}
	sqFamilies(t, "output flushed", func(t *testing.T, f Family) {
		tuple, _ := r.dial(t, r.r, public(f))
		if r.writeSeqAdj(t, tuple) {
			t.Errorf("the router's own connection %v took a seqadj without the output chain's rules", tuple)
		}
	})
	inNamespace(t, r.r, tbl.Install)
	sqFamilies(t, "reinstalled", took)
}
