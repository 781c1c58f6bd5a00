package rules

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPinholeTraffic sends real TCP connections through a router namespace
// with a strict firewall and checks that a pinhole admits exactly the
// expected connection, and only while it is open.
//
//	client ns (C)                router ns (R)                 server ns (S)
//	c0 198.51.100.20, .21  ---  r0 198.51.100.1 | r1 192.0.2.1  ---  s0 192.0.2.10:2121
//	   2001:db8:2::20, ::21        2001:db8:2::1 | 2001:db8:1::1      2001:db8:1::10
func TestPinholeTraffic(t *testing.T) {
	if inChild() {
		pinholeTrafficBody(t)
		return
	}
	requireRoot(t)
	c, r, s := newNetns(t, "c"), newNetns(t, "r"), newNetns(t, "s")
	wireRouterTopology(t, c, r, s)
	// The router's firewall, as an administrator would write it.
	for _, f := range families {
		for _, args := range [][]string{
			{"-P", "FORWARD", "DROP"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "r1", "-o", "r0", "-j", "ACCEPT"},
		} {
			run(t, "ip", append([]string{"netns", "exec", r, f.command()}, args...)...)
		}
	}
	startServer(t, s, "192.0.2.10:2121", "[2001:db8:1::10]:2121")
	runTestIn(t, r, envClientNS+"="+c)
}

// startServer runs the listen helper in ns until the test ends.
func startServer(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	cmd := execIn(context.Background(), t, ns,
		[]string{envHelper + "=listen", envHelperArgs + "=" + strings.Join(addrs, " ")})
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting server in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("server in %s did not start: %q %v", ns, line, err)
	}
}

func pinholeTrafficBody(t *testing.T) {
	clientNS := os.Getenv(envClientNS)
	installed(t)
	tbl, err := NewTable(DefaultConfig(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tbl.CloseAll(); err != nil {
			t.Errorf("CloseAll: %v", err)
		}
	})

	// dial reports whether src reaches the server's banner at dst. The
	// dialer gives up after one second, before TCP's first SYN
	// retransmission, so a pinhole that is not in place when Open returns
	// fails the test instead of being rescued by a retry.
	dial := func(src, dst string) bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := execIn(ctx, t, clientNS, []string{envHelper + "=dial", envHelperArgs + "=" + src + " " + dst})
		out, err := cmd.CombinedOutput()
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

	tests := []struct {
		name           string
		p              Pinhole
		otherPeer      string // a different client address
		public, direct string
	}{
		{"IPv4 DNAT", v4NAT, "198.51.100.21", "198.51.100.1:50000", "192.0.2.10:2121"},
		{"IPv6 DNAT", v6NAT, "2001:db8:2::21", "[2001:db8:2::1]:50000", "[2001:db8:1::10]:2121"},
		{"IPv4 routed", v4Plain, "198.51.100.21", "192.0.2.10:2121", ""},
		{"IPv6 routed", v6Plain, "2001:db8:2::21", "[2001:db8:1::10]:2121", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer := tt.p.Peer.String()
			if dial(peer, tt.public) {
				t.Fatalf("%s reached %s before the pinhole was opened", peer, tt.public)
			}
			if err := tbl.Open(tt.p); err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !dial(peer, tt.public) {
				t.Errorf("%s could not reach %s through open pinhole %s; counters:\n%s\n%s", peer, tt.public, tt.p,
					strings.Join(ipt(t, tt.p.Family(), "-t", "nat", "-v", "-S"), "\n"),
					strings.Join(ipt(t, tt.p.Family(), "-v", "-S"), "\n"))
			}
			if dial(tt.otherPeer, tt.public) {
				t.Errorf("%s reached %s through pinhole for %s", tt.otherPeer, tt.public, peer)
			}
			if tt.direct != "" && dial(peer, tt.direct) {
				t.Errorf("%s reached %s directly through NAT pinhole %s", peer, tt.direct, tt.p)
			}
			if err := tbl.Close(tt.p); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if dial(peer, tt.public) {
				t.Errorf("%s reached %s after the pinhole was closed", peer, tt.public)
			}
		})
	}
}

// wireRouterTopology connects the client, router and server namespaces of
// the traffic tests (see TestPinholeTraffic's diagram): veths, addresses,
// routes and forwarding. The client can route to the server's real address,
// so the tests can show that a NAT pinhole does not open the direct path.
func wireRouterTopology(t *testing.T, c, r, s string) {
	t.Helper()
	// No duplicate address detection: a tentative link-local address
	// delays neighbour discovery past the dialer's one-second timeout.
	for _, ns := range []string{c, r, s} {
		run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	for _, args := range [][]string{
		{"-n", r, "link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", c},
		{"-n", r, "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", s},
		{"-n", c, "addr", "add", "198.51.100.20/24", "dev", "c0"},
		{"-n", c, "addr", "add", "198.51.100.21/24", "dev", "c0"},
		{"-n", c, "addr", "add", "2001:db8:2::20/64", "dev", "c0", "nodad"},
		{"-n", c, "addr", "add", "2001:db8:2::21/64", "dev", "c0", "nodad"},
		{"-n", r, "addr", "add", "198.51.100.1/24", "dev", "r0"},
		{"-n", r, "addr", "add", "2001:db8:2::1/64", "dev", "r0", "nodad"},
		{"-n", r, "addr", "add", "192.0.2.1/24", "dev", "r1"},
		{"-n", r, "addr", "add", "2001:db8:1::1/64", "dev", "r1", "nodad"},
		{"-n", s, "addr", "add", "192.0.2.10/24", "dev", "s0"},
		{"-n", s, "addr", "add", "2001:db8:1::10/64", "dev", "s0", "nodad"},
		{"-n", c, "link", "set", "c0", "up"},
		{"-n", c, "link", "set", "lo", "up"},
		{"-n", r, "link", "set", "r0", "up"},
		{"-n", r, "link", "set", "r1", "up"},
		{"-n", r, "link", "set", "lo", "up"},
		{"-n", s, "link", "set", "s0", "up"},
		{"-n", s, "link", "set", "lo", "up"},
		{"-n", c, "route", "add", "192.0.2.0/24", "via", "198.51.100.1"},
		{"-n", c, "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1"},
		{"-n", s, "route", "add", "default", "via", "192.0.2.1"},
		{"-n", s, "-6", "route", "add", "default", "via", "2001:db8:1::1"},
	} {
		run(t, "ip", args...)
	}
	run(t, "ip", "netns", "exec", r, "sysctl", "-q", "-w",
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
}
