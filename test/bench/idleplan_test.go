package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

func TestPlanIdle(t *testing.T) {
	const wide = 65535 - 1024 + 1
	tests := []struct {
		name                     string
		conns, limit, ports      int
		addrs, servers, clients  int
		perClientMax, perAddrMax int
	}{
		// This machine: a hard limit of 20,000 and the widened range.
		{name: "100k at 20000", conns: 100000, limit: 20000, ports: wide, addrs: 4, servers: 8, clients: 8},
		{name: "30k at 20000", conns: 30000, limit: 20000, ports: wide, addrs: 2, servers: 3, clients: 2},
		{name: "one", conns: 1, limit: 20000, ports: wide, addrs: 1, servers: 1, clients: 1},
		// A generous limit: one process of each kind per address.
		{name: "100k at 1M", conns: 100000, limit: 1 << 20, ports: wide, addrs: 4, servers: 1, clients: 4},
		// The default 32768-60999 range leaves 11,292 per address.
		{name: "default range", conns: 100000, limit: 20000, ports: 60999 - 32768 + 1, addrs: 9, servers: 8, clients: 9},
		// A container's 1024: 768 per client process.
		{name: "limit 1024", conns: 10000, limit: 1024, ports: wide, addrs: 1, servers: 15, clients: 14},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planIdle(tt.conns, tt.limit, tt.ports, 200)
			if err != nil {
				t.Fatal(err)
			}
			if p.addrs != tt.addrs || p.servers != tt.servers || len(p.clients) != tt.clients {
				t.Errorf("plan = %d addresses, %d servers, %d clients; want %d, %d, %d",
					p.addrs, p.servers, len(p.clients), tt.addrs, tt.servers, tt.clients)
			}
			total := 0
			perAddr := make([]int, p.addrs)
			for _, c := range p.clients {
				total += c.conns
				perAddr[c.addr] += c.conns
				if c.conns > tt.limit*3/4 {
					t.Errorf("client process of %d connections, limit %d", c.conns, tt.limit)
				}
			}
			if total != tt.conns {
				t.Errorf("client processes open %d in all, want %d", total, tt.conns)
			}
			for a, n := range perAddr {
				if n > perServerAddr(tt.ports) {
					t.Errorf("address %d gets %d connections, more than %d", a, n, perServerAddr(tt.ports))
				}
			}
			if mean := tt.conns / p.servers; mean > tt.limit*2/3 {
				t.Errorf("idle servers hold %d on average, limit %d", mean, tt.limit)
			}
		})
	}
}

func TestPlanIdleRefuses(t *testing.T) {
	for _, tt := range []struct {
		name                       string
		conns, limit, ports, addrs int
	}{
		{"no connections", 0, 20000, 64512, 200},
		{"file limit", 1000, 100, 64512, 200},
		{"no ports", 1000, 20000, 1, 200},
		{"addresses", 1000000, 20000, 64512, 10},
	} {
		if _, err := planIdle(tt.conns, tt.limit, tt.ports, tt.addrs); !errors.Is(err, ErrIdlePlan) {
			t.Errorf("%s: err = %v, want ErrIdlePlan", tt.name, err)
		}
	}
}

func TestSplit(t *testing.T) {
	got := split(10, 4)
	want := []int{3, 3, 2, 2}
	if len(got) != len(want) {
		t.Fatalf("split(10, 4) = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("split(10, 4) = %v, want %v", got, want)
		}
	}
}

// TestServerAddrs checks that the extra server addresses stay in the
// server's RFC 5737 subnet and clear of the plan's other addresses.
func TestServerAddrs(t *testing.T) {
	ad := rig.ClientNAT.Addresses(rig.IPv4)
	addrs, err := serverAddrs(ad)
	if err != nil {
		t.Fatal(err)
	}
	if addrs[0] != ad.Server {
		t.Errorf("first address %s, want the server's %s", addrs[0], ad.Server)
	}
	// 198.51.100.20 up to .254.
	if len(addrs) != 235 {
		t.Errorf("%d addresses, want 235", len(addrs))
	}
	subnet := netip.MustParsePrefix("198.51.100.0/24")
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if !subnet.Contains(a) || a == netip.MustParseAddr("198.51.100.255") {
			t.Errorf("address %s outside %s's hosts", a, subnet)
		}
		if a == ad.RouterOutside || a == ad.ClientPublic || seen[a] {
			t.Errorf("address %s taken", a)
		}
		seen[a] = true
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string]int{"1024 65535": 64512, "32768\t60999\n": 28232, "5 5": 1} {
		if got, err := parsePortRange(in); err != nil || got != want {
			t.Errorf("parsePortRange(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1024", "60999 32768", "0 10", "1 70000", "a b"} {
		if _, err := parsePortRange(in); err == nil {
			t.Errorf("parsePortRange(%q): no error", in)
		}
	}
}

func TestReadyCount(t *testing.T) {
	out := "idle clients: 5000 of 12500 open\n" + idleClientsReady + " 12500 connections to 198.51.100.20:21\n"
	if n, err := readyCount(out); err != nil || n != 12500 {
		t.Errorf("readyCount = %d, %v; want 12500", n, err)
	}
	if _, err := readyCount("idle clients: 5000 of 12500 open\n"); err == nil {
		t.Error("readyCount without a ready line: no error")
	}
}

// TestOpenIdle opens connections the way a client process does, and
// stops when its context ends.
func TestOpenIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveIdle(ln)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server := netip.MustParseAddrPort(ln.Addr().String())
	var opened atomic.Int64
	held, err := openIdle(ctx, idleEnv{}, server, 50, 4, &opened)
	defer closeAll(held)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 50 || opened.Load() != 50 {
		t.Errorf("opened %d (counted %d), want 50", len(held), opened.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Sessions() != 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.Sessions(); n != 50 {
		t.Errorf("server holds %d sessions, want 50", n)
	}

	// A cancelled context (the parent closed stdin) stops the opening.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	some, err := openIdle(cctx, idleEnv{}, netip.MustParseAddrPort(mute.Addr().String()), 10, 2, nil)
	closeAll(some)
	if err == nil {
		t.Error("openIdle with a cancelled context: no error")
	}
}
