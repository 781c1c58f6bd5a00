package rules

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// tcpSeg is one TCP segment of a connection between a client and port 21,
// built into an IP packet with valid checksums, so that conntrack tracks
// it (nf_conntrack_checksum verifies them in PREROUTING).
type tcpSeg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    uint8
	opts     []byte // a multiple of 4 bytes
	payload  []byte
}

// packet returns the IPv4 or IPv6 packet (by the addresses' family).
func (s tcpSeg) packet() []byte {
	tcp := make([]byte, 20+len(s.opts)+len(s.payload))
	binary.BigEndian.PutUint16(tcp[0:], s.src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = byte((20+len(s.opts))/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], s.opts)
	copy(tcp[20+len(s.opts):], s.payload)
	src, dst := s.src.Addr().AsSlice(), s.dst.Addr().AsSlice()
	var pseudo []byte // the checksum's pseudo-header
	if s.src.Addr().Is4() {
		pseudo = append(append(append(pseudo, src...), dst...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
	} else {
		pseudo = append(append(append(pseudo, src...), dst...), 0, 0, byte(len(tcp)>>8), byte(len(tcp)), 0, 0, 0, 6)
	}
	binary.BigEndian.PutUint16(tcp[16:], ipChecksum(append(pseudo, tcp...)))
	if s.src.Addr().Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[8], ip[9] = 64, 6
		copy(ip[12:], src)
		copy(ip[16:], dst)
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		return append(ip, tcp...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
	ip[6], ip[7] = 6, 64
	copy(ip[8:], src)
	copy(ip[24:], dst)
	return append(ip, tcp...)
}

// TCP options as stacks send them: a SYN's MSS, SACK permitted,
// timestamps and window scale (20 bytes, Linux's layout), the same padded
// to the 40-byte maximum with an end-of-list and zeros, and the timestamps
// of later segments.
var (
	synOpts = []byte{
		2, 4, 0x05, 0xb4, // MSS 1460
		4, 2, // SACK permitted
		8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
		1,       // NOP
		3, 3, 7, // window scale 7
	}
	synOpts40 = append(append([]byte{1, 1}, synOpts...), append([]byte{0}, make([]byte, 17)...)...)
	tsOpts    = []byte{1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1}
)

// Verdicts of the queue chain for one segment: the rule that let it pass,
// or "queue".
const (
	vSYN       = "syn"        // synSkipSpec
	vACK       = "ack"        // skipSpec
	vKernel    = "kernel"     // kernelSkipSpec
	vFIN       = "fin"        // skipSpec for the client's FIN
	vKernelFIN = "kernel fin" // kernelSkipSpec for the client's FIN
	vQueue     = "queue"      // the NFQUEUE rules
)

// skipRig is a namespace dst that forwards between two links, the
// clients' (192.0.2.0/24, 2001:db8:1::/64) and the servers' (198.51.100.0/24,
// 2001:db8:2::/64), both veths into namespace src, with ftpalg's router fragment loaded (bypass: nothing
// reads the queue, so queued packets pass). Both directions of every
// connection are injected from namespace src through a veth into dst, so
// each segment is exactly the one written, and the rule counters of
// FTPALG-QUEUE say which rule decided it. Forwarded packets end in src,
// which drops them: nothing leaves the two namespaces.
type skipRig struct {
	t        *testing.T
	cfg      Config
	src, dst string
	mac      net.HardwareAddr
	ct       *conntrack.Conn
	names    map[Family]map[string]string // formatRule(spec) -> verdict
	last     map[Family]map[string]int    // counters after the last segment
}

func newSkipRig(t *testing.T, handshake bool) *skipRig {
	t.Helper()
	requireRoot(t)
	r := &skipRig{t: t, src: newNetns(t, "hka"), dst: newNetns(t, "hkb"),
		cfg: Config{ControlPorts: []uint16{21}, QueueNum: 7, Bypass: true, IPv4: true, IPv6: true, Role: RoleRouter,
			SkipPureACKs: true, SkipHandshake: handshake}}
	for _, l := range [][2]string{{"ha0", "hb0"}, {"hc0", "hcli"}, {"hd0", "hsrv"}} {
		run(t, "ip", "-n", r.src, "link", "add", l[0], "type", "veth", "peer", "name", l[1], "netns", r.dst)
		run(t, "ip", "-n", r.src, "link", "set", l[0], "up")
		run(t, "ip", "-n", r.dst, "link", "set", l[1], "up")
	}
	// The endpoints' neighbour entries are static and name no interface
	// of src, which drops what dst forwards to them (another host's MAC).
	for _, args := range [][]string{
		{"addr", "add", "203.0.113.1/24", "dev", "hb0"},
		{"route", "add", "192.0.2.0/24", "dev", "hcli"},
		{"route", "add", "198.51.100.0/24", "dev", "hsrv"},
		{"-6", "route", "add", "2001:db8:1::/64", "dev", "hcli"},
		{"-6", "route", "add", "2001:db8:2::/64", "dev", "hsrv"},
		{"neigh", "add", "192.0.2.10", "lladdr", "02:00:00:00:00:10", "dev", "hcli", "nud", "permanent"},
		{"neigh", "add", "198.51.100.20", "lladdr", "02:00:00:00:00:20", "dev", "hsrv", "nud", "permanent"},
		{"-6", "neigh", "add", "2001:db8:1::10", "lladdr", "02:00:00:00:00:10", "dev", "hcli", "nud", "permanent"},
		{"-6", "neigh", "add", "2001:db8:2::20", "lladdr", "02:00:00:00:00:20", "dev", "hsrv", "nud", "permanent"},
	} {
		run(t, "ip", append([]string{"-n", r.dst}, args...)...)
	}
	// Replies arrive on hb0 too, from addresses routed elsewhere: no
	// reverse path filter.
	run(t, "ip", "netns", "exec", r.dst, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.hb0.rp_filter=0")
	r.mac = macOf(t, r.dst, "hb0")
	r.names = map[Family]map[string]string{}
	for _, f := range r.cfg.Families() {
		frag, err := Fragment(r.cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		restore := exec.Command("ip", "netns", "exec", r.dst, f.command()+"-restore", "--noflush")
		restore.Stdin = strings.NewReader(frag)
		if out, err := restore.CombinedOutput(); err != nil {
			t.Fatalf("%s-restore: %v\n%s\n%s", f.command(), err, out, frag)
		}
		// Counts what conntrack calls INVALID: a segment the test got
		// wrong, which would be queued for want of a conntrack entry
		// whatever the rules say.
		run(t, "ip", "netns", "exec", r.dst, f.command(), "-t", "mangle", "-A", "PREROUTING", "-i", "hb0",
			"-m", "conntrack", "--ctstate", "INVALID")
		names := map[string]string{
			formatRule(skipSpec(f, "21", handshake, false)): vACK,
			formatRule(kernelSkipSpec(f, "21", false)):      vKernel,
		}
		if handshake {
			names[formatRule(synSkipSpec(f, "21"))] = vSYN
			names[formatRule(skipSpec(f, "21", true, true))] = vFIN
			names[formatRule(kernelSkipSpec(f, "21", true))] = vKernelFIN
		}
		for _, spec := range queueSpecs(r.cfg, f) {
			if strings.Contains(formatRule(spec), "NFQUEUE") {
				names[formatRule(spec)] = vQueue
			}
		}
		r.names[f] = names
	}
	inNamespace(t, r.dst, func() (err error) { r.ct, err = conntrack.Dial(nil); return err })
	t.Cleanup(func() { r.ct.Close() })
	r.last = map[Family]map[string]int{IPv4: r.counters(IPv4), IPv6: r.counters(IPv6)}
	return r
}

var saveCounter = regexp.MustCompile(`^\[(\d+):\d+\] (-A .*)$`)

// counters reads the packet counters of the queue chain's rules (by
// formatRule of the spec) and, as "invalid", of the INVALID rule. Every
// rule of queueSpecs must be listed exactly as the spec is written.
func (r *skipRig) counters(f Family) map[string]int {
	r.t.Helper()
	out := run(r.t, "ip", "netns", "exec", r.dst, f.command()+"-save", "-c", "-t", "mangle")
	got := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		m := saveCounter.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		args, err := splitRule(m[2])
		if err != nil {
			r.t.Fatal(err)
		}
		n, _ := strconv.Atoi(m[1])
		switch {
		case args[1] == ChainQueue:
			got[formatRule(args[2:])] = n
		case args[1] == "PREROUTING" && strings.Contains(m[2], "INVALID"):
			got["invalid"] = n
		}
	}
	for _, spec := range queueSpecs(r.cfg, f) {
		if _, ok := got[formatRule(spec)]; !ok {
			r.t.Fatalf("%v: rule %q not listed as written:\n%s", f, formatRule(spec), out)
		}
	}
	return got
}

// inject sends one segment into dst and returns the verdict of the queue
// chain, once the counters show it.
func (r *skipRig) inject(s tcpSeg) string {
	r.t.Helper()
	f := IPv4
	if s.src.Addr().Is6() {
		f = IPv6
	}
	send(r.t, r.src, "ha0", [][]byte{frame(r.mac, f == IPv6, s.packet())})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		now := r.counters(f)
		var moved []string
		for spec, name := range r.names[f] {
			if d := now[spec] - r.last[f][spec]; d != 0 {
				moved = append(moved, fmt.Sprintf("%s+%d", name, d))
			}
		}
		invalid := now["invalid"] - r.last[f]["invalid"]
		if len(moved) == 0 && invalid == 0 {
			if time.Now().After(deadline) {
				r.t.Fatalf("segment %+v never reached the queue chain", s)
			}
			continue
		}
		r.last[f] = now
		if invalid != 0 {
			r.t.Fatalf("conntrack judged segment %+v INVALID (the test's segment is wrong); rules %q", s, moved)
		}
		if len(moved) != 1 || !strings.HasSuffix(moved[0], "+1") {
			r.t.Fatalf("segment %+v: counters moved %q, want one rule by one", s, moved)
		}
		return strings.TrimSuffix(moved[0], "+1")
	}
}

// tcpConn is one connection of the test from a client to port 21, keeping
// each side's next sequence number so that every segment is in window.
type tcpConn struct {
	r        *skipRig
	cli, srv netip.AddrPort
	next     [2]uint32 // client's, server's next sequence number
}

func (r *skipRig) conn(f Family, port uint16) *tcpConn {
	cli, srv := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.20")
	if f == IPv6 {
		cli, srv = netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::20")
	}
	return &tcpConn{r: r, cli: netip.AddrPortFrom(cli, port), srv: netip.AddrPortFrom(srv, 21),
		next: [2]uint32{1000000, 7000000}}
}

// send injects a segment from the server (fromServer) or the client with
// the side's next sequence number and, with ACK, the other's.
func (c *tcpConn) send(fromServer bool, flags uint8, opts []byte, payload string) string {
	c.r.t.Helper()
	from := b2i(fromServer)
	s := tcpSeg{src: c.cli, dst: c.srv, seq: c.next[from], flags: flags, opts: opts, payload: []byte(payload)}
	if fromServer {
		s.src, s.dst = c.srv, c.cli
	}
	if flags&tcpACK != 0 {
		s.ack = c.next[1-from]
	}
	c.next[from] += uint32(len(payload))
	if flags&tcpSYN != 0 {
		c.next[from]++
	}
	if flags&tcpFIN != 0 {
		c.next[from]++
	}
	return c.r.inject(s)
}

// flow returns the connection's conntrack entry, from a dump of the table:
// conntrack.Conn.Get (v0.6.0) never returned in this rig.
func (c *tcpConn) flow() conntrack.Flow {
	c.r.t.Helper()
	flows, err := c.r.ct.Dump(nil)
	if err != nil {
		c.r.t.Fatalf("dumping conntrack: %v", err)
	}
	for _, f := range flows {
		o := f.TupleOrig
		if o.Proto.Protocol == 6 && o.IP.SourceAddress == c.cli.Addr() && o.IP.DestinationAddress == c.srv.Addr() &&
			o.Proto.SourcePort == c.cli.Port() && o.Proto.DestinationPort == c.srv.Port() {
			return f
		}
	}
	c.r.t.Fatalf("no conntrack entry %v -> %v", c.cli, c.srv)
	return conntrack.Flow{}
}

// seen reports whether the connection's entry has LabelSeen (the kernel
// stores the labels as host-endian longs: little-endian here).
func (c *tcpConn) seen() bool {
	l := c.flow().Labels
	return len(l) == 16 && l[LabelSeen/8]&(1<<(LabelSeen%8)) != 0
}

// label sets the bits set and clears the bits clear of the entry's labels,
// as the daemon writes them.
func (c *tcpConn) label(set, clear []int) {
	c.r.t.Helper()
	f := c.flow()
	labels, mask := make([]byte, 16), make([]byte, 16)
	for _, b := range set {
		labels[b/8] |= 1 << (b % 8)
		mask[b/8] |= 1 << (b % 8)
	}
	for _, b := range clear {
		mask[b/8] |= 1 << (b % 8)
	}
	if err := c.r.ct.Update(conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Labels: labels, LabelsMask: mask}); err != nil {
		c.r.t.Fatalf("labelling %v: %v", c.cli, err)
	}
}

// step is one segment of a connection and its verdict without and with
// SkipHandshake, or (seg nil) a label write or check.
type step struct {
	what        string
	fromServer  bool
	flags       uint8
	opts        []byte
	payload     string
	want        [2]string // without, with SkipHandshake
	set, clear  []int     // label write
	seen        *[2]bool  // LabelSeen afterwards, without and with
	isLabelStep bool
}

func seg(what string, fromServer bool, flags uint8, opts []byte, payload, without, with string) step {
	return step{what: what, fromServer: fromServer, flags: flags, opts: opts, payload: payload, want: [2]string{without, with}}
}

func setLabels(set []int, clear ...int) step {
	return step{what: fmt.Sprintf("label +%v -%v", set, clear), set: set, clear: clear, isLabelStep: true}
}

func seen(without, with bool) step {
	return step{what: "check SEEN", seen: &[2]bool{without, with}, isLabelStep: true}
}

// handshake is a connection's opening: without SkipHandshake the SYN and
// SYN/ACK are queued and the ACK sets SEEN; with it the SYN rule lets both
// pass and sets SEEN, and the ACK only tests it.
func handshake(synOptions, synackOptions []byte) []step {
	return []step{
		seg("SYN", false, tcpSYN, synOptions, "", vQueue, vSYN),
		seen(false, true),
		seg("SYN/ACK", true, tcpSYN|tcpACK, synackOptions, "", vQueue, vSYN),
		seg("ACK", false, tcpACK, tsOpts, "", vACK, vACK),
		seen(true, true),
	}
}

func steps(parts ...[]step) []step {
	var all []step
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// skipScenarios are the connections of TestSkipHandshakeKernel, each on
// its own client port so each has its own conntrack entry.
var skipScenarios = []struct {
	name  string
	steps []step
}{
	{"session", steps(handshake(synOpts, synOpts), []step{
		seg("client data", false, tcpPSH|tcpACK, tsOpts, "USER ftp\r\n", vQueue, vQueue),
		seg("server pure ACK", true, tcpACK, tsOpts, "", vACK, vACK),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vFIN),
		seg("server FIN|PSH|ACK with data", true, tcpFIN|tcpPSH|tcpACK, tsOpts, "221 Goodbye.\r\n", vQueue, vQueue),
		seg("client last ACK", false, tcpACK, tsOpts, "", vACK, vACK),
	})},
	// The server closes after its 221: its FIN is queued behind it, the
	// client's skips.
	{"server closes first", steps(handshake(synOpts, synOpts), []step{
		seg("client data", false, tcpPSH|tcpACK, tsOpts, "QUIT\r\n", vQueue, vQueue),
		seg("server data", true, tcpPSH|tcpACK, tsOpts, "221 Goodbye.\r\n", vQueue, vQueue),
		seg("server FIN|ACK", true, tcpFIN|tcpACK, tsOpts, "", vQueue, vQueue),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vFIN),
		seg("server last ACK", true, tcpACK, tsOpts, "", vACK, vACK),
	})},
	{"40-byte SYN options, SYN/ACK without options", handshake(synOpts40, nil)},
	{"SYN with data (TCP Fast Open)", []step{
		seg("SYN with data", false, tcpSYN, synOpts, "USER ftp\r\n", vQueue, vQueue),
		seen(false, false),
		seg("SYN/ACK", true, tcpSYN|tcpACK, synOpts, "", vQueue, vSYN),
		seen(false, true),
	}},
	{"RST", steps(handshake(synOpts, synOpts), []step{
		seg("client RST", false, tcpRST, nil, "", vQueue, vQueue),
	})},
	{"RST|ACK", steps(handshake(synOpts, synOpts), []step{
		seg("server RST|ACK", true, tcpRST|tcpACK, nil, "", vQueue, vQueue),
	})},
	{"FIN with data", steps(handshake(synOpts, synOpts), []step{
		seg("client FIN|PSH|ACK with data", false, tcpFIN|tcpPSH|tcpACK, tsOpts, "QUIT\r\n", vQueue, vQueue),
	})},
	{"rewritten", steps(handshake(synOpts, synOpts), []step{
		setLabels([]int{LabelRewritten}),
		seg("server pure ACK", true, tcpACK, tsOpts, "", vQueue, vQueue),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vQueue),
	})},
	{"kernel-mapped", steps(handshake(synOpts, synOpts), []step{
		setLabels([]int{LabelKernel, LabelRewritten}),
		seg("server pure ACK", true, tcpACK, tsOpts, "", vKernel, vKernel),
		seg("server FIN|ACK", true, tcpFIN|tcpACK, tsOpts, "", vQueue, vQueue),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vKernelFIN),
	})},
	{"kernel-mapped, several edits", steps(handshake(synOpts, synOpts), []step{
		setLabels([]int{LabelKernel, LabelMulti, LabelRewritten}),
		seg("server pure ACK", true, tcpACK, tsOpts, "", vQueue, vQueue),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vQueue),
	})},
	{"SEEN cleared", steps(handshake(synOpts, synOpts), []step{
		setLabels(nil, LabelSeen),
		seen(false, false),
		seg("client pure ACK", false, tcpACK, tsOpts, "", vACK, vQueue),
		seen(true, false),
		seg("client FIN|ACK", false, tcpFIN|tcpACK, tsOpts, "", vQueue, vQueue),
	})},
	// conntrack picks up a connection it never saw open
	// (nf_conntrack_tcp_loose): its entry has labels but not SEEN.
	{"picked up mid-stream", []step{
		seg("client pure ACK", false, tcpACK, tsOpts, "", vACK, vQueue),
		seen(true, false),
		seg("client pure ACK again", false, tcpACK, tsOpts, "", vACK, vQueue),
	}},
}

// TestSkipHandshakeKernel proves with the kernel's conntrack, xt_tcp,
// xt_bpf and xt_connlabel which control segments skip the queue, with
// SkipPureACKs alone (the rules of before SkipHandshake) and with
// SkipHandshake, IPv4 and IPv6: the SYN and SYN/ACK without payload skip
// and mark the entry SEEN, a SYN with data does not; FINs without payload
// skip unless rewritten (or kernel-mapped with several edits), FINs with
// data and RSTs never; a pure ACK of an entry without SEEN is queued.
func TestSkipHandshakeKernel(t *testing.T) {
	for _, hs := range []bool{false, true} {
		name := "SkipPureACKs"
		if hs {
			name = "SkipHandshake"
		}
		t.Run(name, func(t *testing.T) {
			r := newSkipRig(t, hs)
			n := 0
			for _, f := range r.cfg.Families() {
				for i, sc := range skipScenarios {
					c := r.conn(f, uint16(40001+i))
					for _, st := range sc.steps {
						switch {
						case st.seen != nil:
							if got, want := c.seen(), st.seen[b2i(hs)]; got != want {
								t.Errorf("%v %s: after the previous segment SEEN is %v, want %v", f, sc.name, got, want)
							}
						case st.isLabelStep:
							c.label(st.set, st.clear)
						default:
							if got, want := c.send(st.fromServer, st.flags, st.opts, st.payload), st.want[b2i(hs)]; got != want {
								t.Errorf("%v %s: %s: verdict %s, want %s", f, sc.name, st.what, got, want)
							}
							n++
						}
					}
				}
			}
			t.Logf("%d segments injected", n)
		})
	}
}
