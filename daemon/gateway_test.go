package daemon

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

type fakeLiberal struct{ calls []ctnetlink.Tuple }

func (f *fakeLiberal) SetLiberal(t ctnetlink.Tuple) error { f.calls = append(f.calls, t); return nil }

func tcpPacket(t testing.TB, src, dst netip.AddrPort, seq, ack uint32, syn bool, payload string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice())}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, SYN: syn, ACK: !syn, Window: 65535}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestGatewayOpensBeforeVerdict drives a client behind NAT sending PORT: by
// the time Handle returns the rewritten packet, the pinhole is in the
// firewall and the connection is liberal; ending the connection closes it.
func TestGatewayOpensBeforeVerdict(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	pins := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer pins.Stop()
	nat := &natResolver{mapper: fakeMapper{pub: netip.MustParseAddr("198.51.100.1")}, ports: ports}
	lib := &fakeLiberal{}
	gw := NewGateway(conntrack.New(conntrack.Config{VerifyChecksum: true, AllowBeforeLogin: true}, nat), pins, lib, quiet)

	cli, srv := netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.20:21")
	now := time.Now()
	if v, _ := gw.Handle(tcpPacket(t, cli, srv, 100, 0, true, ""), now); v != conntrack.Accept {
		t.Fatalf("SYN: %v", v)
	}
	v, out := gw.Handle(tcpPacket(t, cli, srv, 101, 1, false, "PORT 192,0,2,10,156,64\r\n"), now)
	if v != conntrack.AcceptModified {
		t.Fatalf("PORT: %v", v)
	}
	pkt := gopacket.NewPacket(out, layers.LayerTypeIPv4, gopacket.Default)
	if app := pkt.ApplicationLayer(); app == nil || string(app.Payload()) != "PORT 198,51,100,1,156,64\r\n" {
		t.Fatalf("rewritten packet %v", pkt)
	}
	if fw.open() != 1 {
		t.Fatalf("%d pinholes open when the verdict is given, want 1", fw.open())
	}
	if len(lib.calls) != 1 || lib.calls[0] != (ctnetlink.Tuple{Src: cli, Dst: srv}) {
		t.Fatalf("SetLiberal calls %v", lib.calls)
	}
	gw.Handle(tcpPacket(t, cli, srv, 125, 1, false, ""), now) // nothing new
	gw.Expire(now.Add(48 * time.Hour))                        // idle: the control connection is gone
	fw.waitClosed(t)
	if fw.open() != 0 || ports.Reserved(netip.MustParseAddr("198.51.100.1"), 40000) {
		t.Fatal("pinhole or port of an ended session left behind")
	}
}

// TestShardsSnapshot checks that the shards of one daemon show every
// engine's connections and the sum of their counters, and the pinholes
// they share once.
func TestShardsSnapshot(t *testing.T) {
	pins := NewPinholes(newFakeFirewall(), newPorts(t), time.Minute, Limits{}, quiet)
	defer pins.Stop()
	var shards Shards
	for i := range 2 {
		e := conntrack.New(conntrack.Config{Shard: uint64(i), Shards: 2}, nil)
		shards = append(shards, NewGateway(e, pins, nil, quiet))
	}
	srv := netip.MustParseAddrPort("198.51.100.20:21")
	syn := func(g *Gateway, port uint16) {
		g.Handle(tcpPacket(t, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), port), srv, 100, 0, true, ""), time.Now())
	}
	syn(shards[0], 40000)
	syn(shards[1], 40001)
	syn(shards[1], 40002)
	s := shards.Snapshot()
	if len(s.Conns) != 3 {
		t.Fatalf("%d connections, want 3", len(s.Conns))
	}
	ids := map[uint64]bool{}
	for _, c := range s.Conns {
		ids[c.Session] = true
	}
	if len(ids) != 3 {
		t.Errorf("session IDs %v: not distinct across shards", ids)
	}
	if got := s.Counters["packets"]; got != 3 {
		t.Errorf("packets %d, want 3", got)
	}
	if got := shards.Stats().Flows; got != 3 {
		t.Errorf("Stats().Flows = %d, want 3", got)
	}
}

// TestDataConnectionOnlyFromHandshake: a NEW event closes the pinhole its
// connection came through only if the entry is in its handshake. At a
// takeover conntrackd commits the other router's data connections, each
// reported NEW in its own state (here TIME_WAIT); the synced pinhole with
// the same peer and public port may by then stand for the client's next
// data connection on that port, which must still get in.
func TestDataConnectionOnlyFromHandshake(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	pins := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer pins.Stop()
	gw := NewGateway(conntrack.New(conntrack.Config{}, nil), pins, nil, quiet)
	if err := pins.OpenSynced(42, hole, time.Minute); err != nil {
		t.Fatal(err)
	}
	flow := func(s ctnetlink.TCPState) ctnetlink.NewFlow {
		return ctnetlink.NewFlow{
			Orig:     ctnetlink.Tuple{Src: netip.AddrPortFrom(peer, 38703), Dst: public},
			Reply:    ctnetlink.Tuple{Src: target, Dst: netip.AddrPortFrom(peer, 38703)},
			TCPState: s,
		}
	}
	for _, s := range []ctnetlink.TCPState{ctnetlink.TCPEstablished, ctnetlink.TCPTimeWait, ctnetlink.TCPClose} {
		gw.DataConnection(flow(s))
		if pins.Len() != 1 || fw.open() != 1 {
			t.Fatalf("a committed entry in state %d closed the pinhole", s)
		}
	}
	gw.DataConnection(flow(ctnetlink.TCPSynSent))
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v, want %v", got, hole)
	}
	if s := pins.Stats(); s.SyncUsed != 1 {
		t.Fatalf("stats %+v, want one synced pinhole used", s)
	}
}
