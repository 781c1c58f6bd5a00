package daemon

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/rules"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeFirewall records pinholes like rules.Table, with reference counts.
type fakeFirewall struct {
	mu      sync.Mutex
	refs    map[rules.Pinhole]int
	openErr error
	closed  chan rules.Pinhole
}

func newFakeFirewall() *fakeFirewall {
	return &fakeFirewall{refs: map[rules.Pinhole]int{}, closed: make(chan rules.Pinhole, 100)}
}

func (f *fakeFirewall) Open(p rules.Pinhole) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.openErr != nil {
		return f.openErr
	}
	f.refs[p]++
	return nil
}

func (f *fakeFirewall) Close(p rules.Pinhole) error {
	f.mu.Lock()
	if f.refs[p]--; f.refs[p] <= 0 {
		delete(f.refs, p)
	}
	f.mu.Unlock()
	f.closed <- p
	return nil
}

func (f *fakeFirewall) open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.refs)
}

func (f *fakeFirewall) waitClosed(t *testing.T) rules.Pinhole {
	t.Helper()
	select {
	case p := <-f.closed:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("pinhole not closed")
	}
	return rules.Pinhole{}
}

func newPorts(t testing.TB) *rules.Ports {
	p, err := rules.NewPorts(50000, 50009)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	peer   = netip.MustParseAddr("198.51.100.20")
	public = netip.MustParseAddrPort("198.51.100.1:50001")
	target = netip.MustParseAddrPort("192.0.2.10:40000")
	hole   = rules.Pinhole{Peer: peer, Public: public, Target: target}
	cli0   = conntrack.Conn{Client: netip.MustParseAddrPort("192.0.2.10:40000"), Server: netip.MustParseAddrPort("198.51.100.20:21")}
)

func holeOn(port uint16) rules.Pinhole {
	return rules.Pinhole{Peer: peer, Public: netip.AddrPortFrom(public.Addr(), port), Target: target}
}

// One pending pinhole per control connection: a newer announcement replaces
// it. Per client and in total, the newest request is refused.
func TestPinholeLimits(t *testing.T) {
	fw := newFakeFirewall()
	k := NewPinholes(fw, newPorts(t), time.Minute, Limits{PerClient: 2, Total: 3}, quiet)
	defer k.Stop()
	cli1 := conntrack.Conn{Client: netip.MustParseAddrPort("192.0.2.11:40000"), Server: cli0.Server}
	if err := k.Open(1, cli0, conntrack.PathForward, holeOn(50001), false); err != nil {
		t.Fatal(err)
	}
	if err := k.Admit(1, cli0.Client.Addr()); err != nil {
		t.Fatalf("a replacement must be admitted: %v", err)
	}
	k.Open(1, cli0, conntrack.PathForward, holeOn(50002), false)
	if got := fw.waitClosed(t); got != holeOn(50001) || k.Len() != 1 || k.Stats().Replaced != 1 {
		t.Fatalf("closed %v, %d open, stats %+v", got, k.Len(), k.Stats())
	}
	k.Open(2, cli0, conntrack.PathForward, holeOn(50003), false)
	if err := k.Admit(3, cli0.Client.Addr()); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("third pending pinhole of one client: %v", err)
	}
	k.Open(4, cli1, conntrack.PathForward, holeOn(50004), false)
	if err := k.Admit(5, netip.MustParseAddr("192.0.2.12")); !errors.Is(err, ErrTotalLimit) {
		t.Fatalf("fourth pending pinhole: %v", err)
	}
	if err := k.Admit(4, cli1.Client.Addr()); err != nil {
		t.Fatalf("replacing within the total: %v", err)
	}
}

func TestPinholeUsedClosesAndReleasesPort(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	if _, err := ports.Reserve(public.Addr(), public.Port()); err != nil {
		t.Fatal(err)
	}
	if err := k.Open(1, cli0, conntrack.PathForward, hole, true); err != nil || fw.open() != 1 {
		t.Fatalf("open: %v, %d in firewall", err, fw.open())
	}
	marked := 0
	mark := func() error {
		// The pinhole must still admit the connection while it is marked.
		if fw.open() != 1 {
			t.Error("marked after the pinhole closed")
		}
		marked++
		return errors.New("entry gone")
	}
	if k.Used(netip.MustParseAddr("203.0.113.9"), public, mark) || marked != 0 {
		t.Fatal("a connection from another peer matched the pinhole")
	}
	if !k.Used(peer, public, mark) || marked != 1 {
		t.Fatalf("the data connection did not match its pinhole (marked %d times)", marked)
	}
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v", got)
	}
	if ports.Reserved(public.Addr(), public.Port()) {
		t.Fatal("public port still reserved after close")
	}
	if s := k.Stats(); s.Opened != 1 || s.Used != 1 || len(s.OpenNanos) != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPinholeExpires(t *testing.T) {
	fw := newFakeFirewall()
	k := NewPinholes(fw, newPorts(t), 50*time.Millisecond, Limits{}, quiet)
	defer k.Stop()
	if err := k.Open(1, cli0, conntrack.PathForward, hole, false); err != nil {
		t.Fatal(err)
	}
	fw.waitClosed(t)
	if k.Len() != 0 || k.Stats().Expired != 1 {
		t.Fatalf("len %d stats %+v", k.Len(), k.Stats())
	}
}

func TestPinholeEndSessionAndStop(t *testing.T) {
	fw := newFakeFirewall()
	k := NewPinholes(fw, newPorts(t), time.Minute, Limits{PerConnection: 2}, quiet)
	other := rules.Pinhole{Peer: peer, Public: netip.MustParseAddrPort("198.51.100.1:50002"), Target: target}
	third := rules.Pinhole{Peer: peer, Public: netip.MustParseAddrPort("198.51.100.1:50003"), Target: target}
	for i, p := range []rules.Pinhole{hole, other, third} {
		if err := k.Open(uint64(1+i/2), cli0, conntrack.PathForward, p, false); err != nil {
			t.Fatal(err)
		}
	}
	k.EndSession(1)
	fw.waitClosed(t)
	fw.waitClosed(t)
	if k.Len() != 1 {
		t.Fatalf("%d open after session 1 ended, want 1", k.Len())
	}
	k.Stop()
	if fw.open() != 0 {
		t.Fatalf("%d pinholes left in the firewall after Stop", fw.open())
	}
}

func TestPinholeOpenFailureReleasesPort(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	fw.openErr = errors.New("iptables: boom")
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	ports.Reserve(public.Addr(), public.Port())
	if err := k.Open(1, cli0, conntrack.PathForward, hole, true); err == nil {
		t.Fatal("open error swallowed")
	}
	if ports.Reserved(public.Addr(), public.Port()) || k.Len() != 0 || k.Stats().Failed != 1 {
		t.Fatal("failed open left state behind")
	}
}

type fakeMapper struct {
	pub netip.Addr
	err error
}

func (m fakeMapper) PublicAddr(ctnetlink.Tuple) (netip.Addr, error) { return m.pub, m.err }

func TestNATResolverOverride(t *testing.T) {
	conn := conntrack.Conn{Client: netip.MustParseAddrPort("192.0.2.10:40000"), Server: netip.MustParseAddrPort("198.51.100.20:21")}
	override := netip.MustParseAddr("203.0.113.5")
	tests := []struct {
		name     string
		mapper   fakeMapper
		override netip.Addr
		want     netip.Addr
		wantErr  bool
	}{
		{"translated", fakeMapper{pub: netip.MustParseAddr("198.51.100.1")}, netip.Addr{}, netip.MustParseAddr("198.51.100.1"), false},
		{"translated, overridden", fakeMapper{pub: netip.MustParseAddr("198.51.100.1")}, override, override, false},
		{"not translated: override unused", fakeMapper{pub: conn.Client.Addr()}, override, conn.Client.Addr(), false},
		{"no entry, override", fakeMapper{err: ctnetlink.ErrNotFound}, override, override, false},
		{"no entry, no override", fakeMapper{err: ctnetlink.ErrNotFound}, netip.Addr{}, netip.Addr{}, true},
		{"netlink failure", fakeMapper{err: errors.New("EPERM")}, override, netip.Addr{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &natResolver{mapper: tt.mapper, override: [2]netip.Addr{tt.override}}
			got, err := n.PublicAddr(conn, true)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %v, %v; want %v (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{ControlPorts: []uint16{21}, PinholeTimeout: time.Second, DataPortLo: 1024, DataPortHi: 2048, IPv4: true, AcceptMark: 1 << 29, Log: quiet}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	sharded := ok
	sharded.QueueNum, sharded.Queues = 65534, 2
	if err := sharded.Validate(); err != nil {
		t.Errorf("two queues ending at 65535: %v", err)
	}
	bad := []func(c *Config){
		func(c *Config) { c.ControlPorts = nil },
		func(c *Config) { c.PinholeTimeout = 0 },
		func(c *Config) { c.DataPortLo, c.DataPortHi = 3000, 2000 },
		func(c *Config) { c.IPv4 = false },
		func(c *Config) {
			c.PublicIPs = []netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")}
		},
		func(c *Config) { c.QueueNum, c.Queues = 65535, 2 },
		func(c *Config) { c.Queues, c.StateDir = 2, "/run/ftpalg/state" },
	}
	for i, mutate := range bad {
		c := ok
		mutate(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("case %d: %v, want ErrConfig", i, err)
		}
	}
}

// A pinhole a previous run left is taken over: its data connection closes
// it (one connection only), and it closes by itself at the time it had
// left. Its public port is left free for the replayed announcement of a
// resumed connection, whose reservation the record then holds until the
// pinhole closes.
func TestPinholeAdopt(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	if err := k.Adopt(hole, time.Minute); err != nil || fw.open() != 1 || k.Len() != 1 {
		t.Fatalf("Adopt: %v, %d in firewall, %d kept", err, fw.open(), k.Len())
	}
	if err := k.Adopt(hole, time.Minute); err != nil || k.Len() != 1 {
		t.Fatalf("adopting it again: %v, %d kept", err, k.Len())
	}
	// The replay: the engine reserves the same public port (free) and
	// announces the same pinhole.
	if got, err := ports.Reserve(public.Addr(), public.Port()); err != nil || got != public.Port() {
		t.Fatalf("the adopted pinhole's public port: %d, %v; want it free", got, err)
	}
	if err := k.Open(3, cli0, conntrack.PathForward, hole, true); err != nil || k.Len() != 1 {
		t.Fatalf("the replayed announcement: %v, %d kept", err, k.Len())
	}
	fw.waitClosed(t) // the extra firewall reference
	if !k.Used(peer, public, nil) {
		t.Fatal("the data connection did not match the adopted pinhole")
	}
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v", got)
	}
	if ports.Reserved(public.Addr(), public.Port()) || k.Used(peer, public, nil) {
		t.Fatal("after its data connection: port still reserved, or the pinhole matched a second connection")
	}

	short := holeOn(50005)
	if err := k.Adopt(short, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got := fw.waitClosed(t); got != short || ports.Reserved(short.Public.Addr(), short.Public.Port()) {
		t.Fatalf("closed %v at its time left; port reserved: %v", got, ports.Reserved(short.Public.Addr(), short.Public.Port()))
	}

}
