package ctnetlink

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"golang.org/x/sys/unix"
)

// rig is three network namespaces made for one test:
//
//	in  (192.0.2.10, 192.0.2.20, 2001:db8:1::10, 2001:db8:1::20)
//	 | eth0 -- in0
//	router (192.0.2.1, 198.51.100.1, 2001:db8:1::1, 2001:db8:2::1)
//	 | out0 -- eth0
//	out (198.51.100.20, 198.51.100.30, 2001:db8:2::20, 2001:db8:2::30)
//
// Two addresses per side let one rig hold a client behind MASQUERADE
// (192.0.2.10 to 198.51.100.20), a server behind a port forward (198.51.100.30
// to 198.51.100.1:21 -> 192.0.2.20:21) and plain routing side by side; the
// NAT rules select by port (see natRules).
type rig struct {
	in, router, out string
}

// natRules are the router's NAT rules. Port 21 is NATed (MASQUERADE going
// out, DNAT coming in), 2100 is forwarded with DNAT and SNAT, 2121 is routed
// without NAT.
var natRules = [][]string{
	{"iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-p", "tcp", "--dport", "21", "-j", "MASQUERADE"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "21", "-j", "DNAT", "--to-destination", "192.0.2.20:21"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "2100", "-j", "DNAT", "--to-destination", "192.0.2.20:2100"},
	{"iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "in0", "-d", "192.0.2.20", "-p", "tcp", "--dport", "2100", "-j", "SNAT", "--to-source", "192.0.2.1"},
	{"ip6tables", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-p", "tcp", "--dport", "21", "-j", "MASQUERADE"},
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	testenv.RequireRoot(tb, "creates network namespaces, NAT rules and ctnetlink sockets")
}

func run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newRig builds the namespaces, named "fd" + PID + a hash of the test name so
// parallel test binaries and tests never clash, and removes them at cleanup.
func newRig(tb testing.TB) *rig {
	tb.Helper()
	requireRoot(tb)
	h := fnv.New32a()
	h.Write([]byte(tb.Name()))
	base := fmt.Sprintf("fd%d-%08x-", os.Getpid(), h.Sum32())
	r := &rig{in: base + "in", router: base + "r", out: base + "out"}
	for _, ns := range []string{r.in, r.router, r.out} {
		run(tb, "ip", "netns", "add", ns)
		tb.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				tb.Errorf("removing netns %s: %v\n%s", ns, err, out)
			}
		})
	}
	ipn := func(ns string, args ...string) { run(tb, append([]string{"ip", "-n", ns}, args...)...) }
	ipn(r.router, "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", r.in)
	ipn(r.router, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", r.out)
	for _, a := range [][]string{
		{r.router, "192.0.2.1/24", "in0"}, {r.router, "2001:db8:1::1/64", "in0"},
		{r.router, "198.51.100.1/24", "out0"}, {r.router, "2001:db8:2::1/64", "out0"},
		{r.in, "192.0.2.10/24", "eth0"}, {r.in, "192.0.2.20/24", "eth0"},
		{r.in, "2001:db8:1::10/64", "eth0"}, {r.in, "2001:db8:1::20/64", "eth0"},
		{r.out, "198.51.100.20/24", "eth0"}, {r.out, "198.51.100.30/24", "eth0"},
		{r.out, "2001:db8:2::20/64", "eth0"}, {r.out, "2001:db8:2::30/64", "eth0"},
	} {
		args := []string{"addr", "add", a[1], "dev", a[2]}
		if strings.Contains(a[1], ":") {
			args = append(args, "nodad")
		}
		ipn(a[0], args...)
	}
	for _, l := range [][]string{{r.router, "in0"}, {r.router, "out0"}, {r.in, "eth0"}, {r.out, "eth0"}} {
		ipn(l[0], "link", "set", l[1], "up")
	}
	for _, ns := range []string{r.in, r.router, r.out} {
		ipn(ns, "link", "set", "lo", "up")
	}
	ipn(r.in, "route", "add", "default", "via", "192.0.2.1")
	ipn(r.in, "-6", "route", "add", "default", "via", "2001:db8:1::1")
	ipn(r.out, "route", "add", "default", "via", "198.51.100.1")
	ipn(r.out, "-6", "route", "add", "default", "via", "2001:db8:2::1")
	r.exec(tb, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for _, rule := range natRules {
		r.exec(tb, rule...)
	}
	return r
}

// exec runs a command in the router namespace.
func (r *rig) exec(tb testing.TB, args ...string) string {
	tb.Helper()
	return run(tb, append([]string{"ip", "netns", "exec", r.router}, args...)...)
}

// inNetns runs fn on a thread switched into namespace ns. Sockets fn opens
// stay in ns for their lifetime, whichever thread uses them later. If the
// thread cannot be switched back it stays locked, and the runtime discards
// it when the goroutine ends.
func inNetns(tb testing.TB, ns string, fn func() error) {
	tb.Helper()
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("opening own netns: %v", err)
	}
	defer unix.Close(self)
	target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("opening netns %s: %v", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("entering netns %s: %v", ns, err)
	}
	fnErr := fn()
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		tb.Fatalf("leaving netns %s: %v", ns, err) // thread stays locked: discarded
	}
	runtime.UnlockOSThread()
	if fnErr != nil {
		tb.Fatalf("in netns %s: %v", ns, fnErr)
	}
}

// openClient opens a Client in the router namespace.
func (r *rig) openClient(tb testing.TB) *Client {
	tb.Helper()
	var c *Client
	inNetns(tb, r.router, func() (err error) {
		c, err = Open(nil)
		return err
	})
	tb.Cleanup(func() { c.Close() })
	return c
}

// flow is one case of the rig: a TCP connection from dialer to target, which
// the router translates to listen.
type flow struct {
	name      string
	clientNS  func(*rig) string
	local     string // client's address
	target    string // address:port the client dials
	serverNS  func(*rig) string
	listen    string // address:port the server listens on
	pubClient string // what the server must see for the client
	pubServer string // what the client must see for the server
}

func nsIn(r *rig) string  { return r.in }
func nsOut(r *rig) string { return r.out }

var flows = []flow{
	{
		name:     "no NAT",
		clientNS: nsIn, local: "192.0.2.10", target: "198.51.100.20:2121",
		serverNS: nsOut, listen: "198.51.100.20:2121",
		pubClient: "192.0.2.10", pubServer: "198.51.100.20",
	},
	{
		name:     "MASQUERADE",
		clientNS: nsIn, local: "192.0.2.10", target: "198.51.100.20:21",
		serverNS: nsOut, listen: "198.51.100.20:21",
		pubClient: "198.51.100.1", pubServer: "198.51.100.20",
	},
	{
		name:     "DNAT port forward",
		clientNS: nsOut, local: "198.51.100.30", target: "198.51.100.1:21",
		serverNS: nsIn, listen: "192.0.2.20:21",
		pubClient: "198.51.100.30", pubServer: "198.51.100.1",
	},
	{
		name:     "DNAT and SNAT",
		clientNS: nsOut, local: "198.51.100.30", target: "198.51.100.1:2100",
		serverNS: nsIn, listen: "192.0.2.20:2100",
		pubClient: "192.0.2.1", pubServer: "198.51.100.1",
	},
	{
		name:     "IPv6 MASQUERADE",
		clientNS: nsIn, local: "2001:db8:1::10", target: "[2001:db8:2::20]:21",
		serverNS: nsOut, listen: "[2001:db8:2::20]:21",
		pubClient: "2001:db8:2::1", pubServer: "2001:db8:2::20",
	},
}

// conn is an established connection through the router.
type conn struct {
	cli, srv *net.TCPConn
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// seen is the tuple the client's packets have in mangle FORWARD: the
// client's own address (pre-SNAT) to the real server (post-DNAT).
func (c conn) seen() Tuple {
	return Tuple{Src: addrPort(c.cli.LocalAddr()), Dst: addrPort(c.srv.LocalAddr())}
}

// dial connects through the router as f describes.
// dialEntry opens a connection of f and looks up its conntrack entry.
func (r *rig) dialEntry(tb testing.TB, c *Client, f flow) (conn, Entry) {
	tb.Helper()
	cn := r.dial(tb, f)
	e, _, err := c.Lookup(cn.seen())
	if err != nil {
		tb.Fatal(err)
	}
	return cn, e
}

func (r *rig) dial(tb testing.TB, f flow) conn {
	tb.Helper()
	return r.dialFrom(tb, f, 0)
}

// dialFrom is dial from the client's port port (0: any).
func (r *rig) dialFrom(tb testing.TB, f flow, port int) conn {
	tb.Helper()
	var ln net.Listener
	inNetns(tb, f.serverNS(r), func() (err error) {
		ln, err = net.Listen("tcp", f.listen)
		return err
	})
	tb.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		// One connection per listener; closing it frees the port for
		// the next dial of the same flow.
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var cli net.Conn
	inNetns(tb, f.clientNS(r), func() (err error) {
		d := net.Dialer{
			Timeout:   5 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.ParseIP(f.local), Port: port},
		}
		cli, err = d.Dial("tcp", f.target)
		return err
	})
	tb.Cleanup(func() { cli.Close() })
	var srv net.Conn
	select {
	case c, ok := <-accepted:
		if !ok {
			tb.Fatalf("accept on %s failed", f.listen)
		}
		srv = c
	case <-time.After(5 * time.Second):
		tb.Fatalf("no connection accepted on %s", f.listen)
	}
	tb.Cleanup(func() { srv.Close() })
	return conn{cli: cli.(*net.TCPConn), srv: srv.(*net.TCPConn)}
}
