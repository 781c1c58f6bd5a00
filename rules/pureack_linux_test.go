package rules

import (
	"encoding/binary"
	"net"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TestPureACKKernel injects every layout of TestPureACKPrograms into a
// namespace and checks that the kernel's xt_bpf agrees with the expected
// decision: a raw PREROUTING rule with each family's program counts the
// segments it matches, a rule after it counts the rest.
func TestPureACKKernel(t *testing.T) {
	requireRoot(t)
	src, dst := newNetns(t, "pa"), newNetns(t, "pb")
	run(t, "ip", "-n", src, "link", "add", "pa0", "type", "veth", "peer", "name", "pb0", "netns", dst)
	run(t, "ip", "-n", src, "link", "set", "pa0", "up")
	run(t, "ip", "-n", dst, "link", "set", "pb0", "up")
	for _, cmd := range []string{"iptables", "ip6tables"} {
		prog := pureACK4
		if cmd == "ip6tables" {
			prog = pureACK6
		}
		run(t, "ip", "netns", "exec", dst, cmd, "-t", "raw", "-A", "PREROUTING", "-i", "pb0", "-p", "tcp",
			"-m", "bpf", "--bytecode", prog, "-j", "DROP")
		run(t, "ip", "netns", "exec", dst, cmd, "-t", "raw", "-A", "PREROUTING", "-i", "pb0", "-p", "tcp", "-j", "DROP")
	}
	ifc := macOf(t, dst, "pb0")
	var want [2][2]int // [v6][match]
	var frames [][]byte
	for _, l := range layouts() {
		pkt := segment(l.v6, l.ipOpt, l.tcpOpt, l.payload, l.ext)
		if 14+len(pkt) > 1514 {
			continue // beyond the veth's MTU
		}
		want[b2i(l.v6)][b2i(l.wantMatch())]++
		frames = append(frames, frame(ifc, l.v6, pkt))
	}
	send(t, src, "pa0", frames)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := [2][2]int{}
		for v6, cmd := range []string{"iptables", "ip6tables"} {
			m, rest := counts(t, dst, cmd)
			got[v6][1], got[v6][0] = m, rest
		}
		if got == want {
			t.Logf("kernel matched %d IPv4 and %d IPv6 pure ACKs, queued %d and %d segments with payload or an extension header",
				got[0][1], got[1][1], got[0][0], got[1][0])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rule counters [v4 v6][queued matched] = %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func macOf(t *testing.T, ns, dev string) net.HardwareAddr {
	t.Helper()
	out := run(t, "ip", "-n", ns, "-o", "link", "show", dev)
	m := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no MAC in %q", out)
	}
	hw, err := net.ParseMAC(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

func frame(dst net.HardwareAddr, v6 bool, pkt []byte) []byte {
	f := make([]byte, 14, 14+len(pkt))
	copy(f, dst)
	copy(f[6:], []byte{0x02, 0, 0, 0, 0, 1})
	et := uint16(unix.ETH_P_IP)
	if v6 {
		et = unix.ETH_P_IPV6
	}
	binary.BigEndian.PutUint16(f[12:], et)
	return append(f, pkt...)
}

// send writes the frames on dev in namespace ns through an AF_PACKET socket.
func send(t *testing.T, ns, dev string, frames [][]byte) {
	t.Helper()
	inNamespace(t, ns, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index}
		for _, f := range frames {
			if err := unix.Sendto(s, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
}

// counts returns the packet counters of the two raw PREROUTING rules.
func counts(t *testing.T, ns, cmd string) (matched, rest int) {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, cmd, "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n")
	var n []int
	for _, m := range regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+DROP`).FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		n = append(n, v)
	}
	if len(n) != 2 {
		t.Fatalf("%s raw PREROUTING: want two rules:\n%s", cmd, out)
	}
	return n[0], n[1]
}

// ackPair is a real connection to port 21 of namespace srv with the host
// fragment (SkipPureACKs) loaded there, before the connection opened or
// after it.
type ackPair struct {
	t    *testing.T
	srv  string
	c, s net.Conn
}

func newACKPair(t *testing.T, prefix string, rulesFirst bool) *ackPair {
	t.Helper()
	requireRoot(t)
	cli, srv := newNetns(t, prefix+"a"), newNetns(t, prefix+"b")
	run(t, "ip", "-n", cli, "link", "add", "la0", "type", "veth", "peer", "name", "lb0", "netns", srv)
	run(t, "ip", "-n", cli, "addr", "add", "192.0.2.10/24", "dev", "la0")
	run(t, "ip", "-n", srv, "addr", "add", "192.0.2.20/24", "dev", "lb0")
	run(t, "ip", "-n", cli, "link", "set", "la0", "up")
	run(t, "ip", "-n", srv, "link", "set", "lb0", "up")
	load := func() {
		// Bypass: nothing reads the queue here, so queued packets pass.
		cfg := Config{ControlPorts: []uint16{21}, Bypass: true, IPv4: true, Role: RoleHost, SkipPureACKs: true}
		frag, err := Fragment(cfg, IPv4)
		if err != nil {
			t.Fatal(err)
		}
		restore := exec.Command("ip", "netns", "exec", srv, "iptables-restore", "--noflush")
		restore.Stdin = strings.NewReader(frag)
		if out, err := restore.CombinedOutput(); err != nil {
			t.Fatalf("iptables-restore: %v\n%s\n%s", err, out, frag)
		}
	}
	if rulesFirst {
		load()
	} else {
		// A host firewall that tracks connections before ftpalg starts:
		// conntrack runs in a namespace only once some rule needs it, and
		// without a connlabel rule its entries get no label extension.
		run(t, "ip", "netns", "exec", srv, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	}
	var ln net.Listener
	inNamespace(t, srv, func() (err error) { ln, err = net.Listen("tcp", "192.0.2.20:21"); return err })
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	p := &ackPair{t: t, srv: srv}
	inNamespace(t, cli, func() (err error) {
		p.c, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", "192.0.2.20:21")
		return err
	})
	t.Cleanup(func() { p.c.Close() })
	var ok bool
	if p.s, ok = <-accepted; !ok {
		t.Fatal("no connection accepted")
	}
	t.Cleanup(func() { p.s.Close() })
	if !rulesFirst {
		load()
	}
	return p
}

// exchange has the server talk while the client only reads: each chunk is
// answered by a pure ACK from the client, which arrives in mangle INPUT.
func (p *ackPair) exchange() {
	p.t.Helper()
	buf := make([]byte, 64)
	for i := 0; i < 5; i++ {
		if _, err := p.s.Write([]byte("220 line\r\n")); err != nil {
			p.t.Fatal(err)
		}
		_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := p.c.Read(buf); err != nil {
			p.t.Fatal(err)
		}
	}
}

// counter reads the packet counter of the FTPALG-QUEUE rule whose listing
// matches re.
func (p *ackPair) counter(re string) int {
	p.t.Helper()
	out := run(p.t, "ip", "netns", "exec", p.srv, "iptables", "-t", "mangle", "-L", ChainQueue, "-v", "-x", "-n")
	m := regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+` + re).FindStringSubmatch(out)
	if m == nil {
		p.t.Fatalf("no rule %q in %s:\n%s", re, ChainQueue, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func (p *ackPair) skipped() int          { return p.counter(`RETURN`) }
func (p *ackPair) queuedFromClient() int { return p.counter(`NFQUEUE .*dports 21 `) }

func (p *ackPair) waitFor(what string, cond func() bool) {
	p.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestPureACKSkipLabel installs the host fragment with SkipPureACKs and
// checks, on a real connection to port 21 of the namespace, that the
// client's pure ACKs bypass the queue while the connection has no
// LabelRewritten bit (and that the rule marked it LabelSeen), and are
// queued once it has.
func TestPureACKSkipLabel(t *testing.T) {
	p := newACKPair(t, "l", true)
	p.exchange()
	p.waitFor("a pure ACK to skip the queue", func() bool { return p.skipped() > 0 })

	// Label the connection as rewritten: its pure ACKs must be queued.
	var ct *conntrack.Conn
	inNamespace(t, p.srv, func() (err error) { ct, err = conntrack.Dial(nil); return err })
	defer ct.Close()
	flows, err := ct.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	labels, mask := make([]byte, 16), make([]byte, 16)
	labels[LabelRewritten/8] = 1 << (LabelRewritten % 8) // host-endian longs: little-endian here
	copy(mask, labels)
	n := 0
	for _, f := range flows {
		if f.TupleOrig.Proto.DestinationPort == 21 {
			if len(f.Labels) != 16 || f.Labels[LabelSeen/8]&(1<<(LabelSeen%8)) == 0 {
				t.Errorf("labels %x after skipped pure ACKs: want bit %d (LabelSeen) set by the rule", f.Labels, LabelSeen)
			}
			if err := ct.Update(conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Labels: labels, LabelsMask: mask}); err != nil {
				t.Fatalf("labelling %v: %v", f.TupleOrig, err)
			}
			n++
		}
	}
	if n != 1 {
		t.Fatalf("labelled %d connections to port 21, want 1", n)
	}
	before, queued := p.skipped(), p.queuedFromClient()
	p.exchange()
	p.waitFor("the labelled connection's pure ACKs to be queued", func() bool { return p.queuedFromClient() > queued })
	if after := p.skipped(); after != before {
		t.Errorf("labelled connection: %d pure ACKs skipped the queue", after-before)
	}
}

// TestPureACKNoLabelExtension opens the connection before any connlabel
// rule exists in the namespace, so its conntrack entry has no label
// extension and ftpalg could never mark it rewritten: its pure ACKs must
// all be queued (LabelSeen's --set match fails), none skipped.
func TestPureACKNoLabelExtension(t *testing.T) {
	p := newACKPair(t, "n", false)
	queued := p.queuedFromClient()
	p.exchange()
	p.waitFor("the pure ACKs to be queued", func() bool { return p.queuedFromClient() > queued })
	if n := p.skipped(); n != 0 {
		t.Errorf("%d pure ACKs of an entry without labels skipped the queue, %d queued", n, p.queuedFromClient()-queued)
	}
}

// inNamespace runs fn on a thread in namespace ns; sockets it opens stay
// there.
func inNamespace(t *testing.T, ns string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		errc <- func() error {
			fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				return err
			}
			return fn()
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in netns %s: %v", ns, err)
	}
}
